#!/usr/bin/env bash
# The quality tables of benchmarks/RESULTS.md, one command per table, exactly as they were run
# on the 2-core CPU machine (see benchmarks/NOTES.md for the scale and what it shows).
#
#   bash benchmarks/investigations/quality_cpu.sh faster_rcnn          # Faster R-CNN: Tables 1, 3 and 4
#   bash benchmarks/investigations/quality_cpu.sh faster_rcnn-tests    #   tests of NOTES.md: lambda_feat 0.1, PGM period 100
#   bash benchmarks/investigations/quality_cpu.sh faster_rcnn-teacher3600  # a teacher trained 3x longer
#   bash benchmarks/investigations/quality_cpu.sh faster_rcnn-teacher3600-local  #   the local-knowledge rows with it
#   bash benchmarks/investigations/quality_cpu.sh faster_rcnn-teacher3600-tests  #   attenuation, 1x1 adapters
#   bash benchmarks/investigations/quality_cpu.sh faster_rcnn-teacher3600-modules  #   module ablation, KD + prototypes
#   bash benchmarks/investigations/quality_cpu.sh faster_rcnn-teacher3600-seeds23  #   seeds 2, 3 of the two best rows
#   bash benchmarks/investigations/quality_cpu.sh teacher3600-feature  # feature imitation alone, both detectors
#   bash benchmarks/investigations/quality_cpu.sh teacher3600-weights  # loss weights of the full method, re-tuned
#   bash benchmarks/investigations/quality_cpu.sh retinanet            # RetinaNet: Tables 2 and 4, paper's default weights
#   bash benchmarks/investigations/quality_cpu.sh retinanet-resp0.02   #   rows with lambda_resp = 0.02
#   bash benchmarks/investigations/quality_cpu.sh retinanet-tests      #   test of NOTES.md: PGM period 100
#   bash benchmarks/investigations/quality_cpu.sh retinanet-teacher3600  # a RetinaNet teacher trained 3x longer
#   bash benchmarks/investigations/quality_cpu.sh retinanet-teacher3600-local  #   the other local rows with it
#   bash benchmarks/investigations/quality_cpu.sh retinanet-teacher3600-global  #   global knowledge alone with it
#   bash benchmarks/investigations/quality_cpu.sh retinanet-teacher3600-modules  #   module ablation, lambda_resp 0.02
#   bash benchmarks/investigations/quality_cpu.sh prototypes-teacher3600  #   Table 6 with it
#   bash benchmarks/investigations/quality_cpu.sh prototypes           # Table 6: prototype choice (RetinaNet)
#
# Extra arguments go to every benchmarks/investigations/quality.py call of the table (e.g. --seeds 0, or
# --device cuda). Records land in benchmarks/investigations/results/quality.json (a finished row of the same
# detector, method, seed and device is replaced); then `python benchmarks/report.py`. Each
# detector's teacher is trained once, into output/quality/<detector>/teacher (the RetinaNet rows
# of 2026-11-23 used the demo's teacher, same data and schedule, copied there).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SCALE=(--teacher-iters 1200 --iters 800 --ims-per-batch 4 --lr 0.01 --num-train 2000 --num-val 200 --workers 1)
table=${1:?usage: quality_cpu.sh TABLE [quality.py args] (tables: see the head of this script)}
shift
T3600=(--teacher-iters 3600 --output output/quality_t3600 --results benchmarks/investigations/results/quality_teacher3600.json)
q() { "$PY" benchmarks/investigations/quality.py "${SCALE[@]}" --seeds 0 1 "$@"; }
if [[ $table == *teacher3600* ]]; then  # same data as the other tables, its own teachers and rows
  mkdir -p output/quality_t3600 && ln -sfn ../quality/data output/quality_t3600/data
fi
case "$table" in
  faster_rcnn)
    q --detector faster_rcnn --methods teacher student gkd defeat feature fitnet chen kd fgfi rkd response global \
      feature+global response+global feature+response defeat+prototypes kd+prototypes "$@" ;;
  faster_rcnn-tests)
    q --detector faster_rcnn --methods gkd --opts DISTILL.FEATURE.WEIGHT 0.1 --tag=-feat0.1 "$@"
    q --detector faster_rcnn --methods global --opts DISTILL.PGM.PERIOD 100 --tag=-period100 "$@" ;;
  faster_rcnn-teacher3600)  # student rows do not depend on the teacher: see the faster_rcnn table
    q "${T3600[@]}" --detector faster_rcnn --methods teacher response global gkd "$@"
    q "${T3600[@]}" --detector faster_rcnn --methods gkd --opts DISTILL.FEATURE.WEIGHT 0.1 --tag=-feat0.1 "$@"
    q "${T3600[@]}" --detector faster_rcnn --methods global --opts DISTILL.PGM.PERIOD 100 --tag=-period100 "$@" ;;
  faster_rcnn-teacher3600-local)  # kd is the response row's loss (bit-identical APs, faster_rcnn table)
    q "${T3600[@]}" --detector faster_rcnn --methods chen defeat fitnet fgfi rkd "$@" ;;
  faster_rcnn-teacher3600-tests)  # the paper's release attenuates; 1x1 adapters are the cheap option
    q "${T3600[@]}" --detector faster_rcnn --methods gkd --opts DISTILL.ATTENUATION True --tag=-atten "$@"
    q "${T3600[@]}" --detector faster_rcnn --methods gkd --opts DISTILL.FEATURE.ADAPTER_KERNEL 1 --tag=-adapter1x1 "$@" ;;
  faster_rcnn-teacher3600-modules)  # which of the three terms the full method's gain comes from
    q "${T3600[@]}" --detector faster_rcnn --methods response+global feature+response kd+prototypes "$@" ;;
  faster_rcnn-teacher3600-seeds23)  # response vs response + global: is the difference more than noise?
    q "${T3600[@]}" --detector faster_rcnn --methods response response+global --seeds 2 3 "$@" ;;
  teacher3600-feature)
    q "${T3600[@]}" --detector faster_rcnn --methods feature "$@"
    q "${T3600[@]}" --detector retinanet --methods feature "$@" ;;
  teacher3600-weights)  # lambda_resp 0.02 was tuned with the weaker RetinaNet teacher; lambda_feat lower still
    q "${T3600[@]}" --detector retinanet --methods gkd --opts DISTILL.RESPONSE.WEIGHT 0.05 --tag=-resp0.05 "$@"
    q "${T3600[@]}" --detector retinanet --methods gkd --opts DISTILL.RESPONSE.WEIGHT 0.1 --tag=-resp0.1 "$@"
    q "${T3600[@]}" --detector faster_rcnn --methods gkd --opts DISTILL.FEATURE.WEIGHT 0.01 --tag=-feat0.01 "$@"
    q "${T3600[@]}" --detector retinanet --methods gkd --opts DISTILL.RESPONSE.WEIGHT 0.2 --tag=-resp0.2 "$@"
    q "${T3600[@]}" --detector retinanet --methods response --opts DISTILL.RESPONSE.WEIGHT 0.1 --tag=-resp0.1 "$@" ;;
  retinanet)  # chen and kd are RoI methods: they refuse a RetinaNet teacher
    q --detector retinanet --methods teacher student gkd defeat feature fitnet fgfi rkd global defeat+prototypes "$@" ;;
  retinanet-resp0.02)
    q --detector retinanet --methods gkd response --opts DISTILL.RESPONSE.WEIGHT 0.02 --tag=-resp0.02 "$@" ;;
  retinanet-tests)
    q --detector retinanet --methods global --opts DISTILL.PGM.PERIOD 100 --tag=-period100 "$@" ;;
  retinanet-teacher3600)
    q "${T3600[@]}" --detector retinanet --methods teacher "$@"
    q "${T3600[@]}" --detector retinanet --methods gkd response --opts DISTILL.RESPONSE.WEIGHT 0.02 --tag=-resp0.02 "$@"
    q "${T3600[@]}" --detector retinanet --methods defeat gkd "$@" ;;
  retinanet-teacher3600-local)  # defeat is in the retinanet-teacher3600 table
    q "${T3600[@]}" --detector retinanet --methods fgfi fitnet rkd "$@" ;;
  retinanet-teacher3600-global)
    q "${T3600[@]}" --detector retinanet --methods global "$@" ;;
  retinanet-teacher3600-modules)  # the full method's (gkd-resp0.02) gain: global term or feature term?
    q "${T3600[@]}" --detector retinanet --methods feature+response response+global --opts DISTILL.RESPONSE.WEIGHT 0.02 --tag=-resp0.02 "$@" ;;
  prototypes-teacher3600)  # its PGM row is gkd-resp0.02 of the retinanet-teacher3600 table
    q "${T3600[@]}" --detector retinanet --methods gkd-kmeans gkd-random gkd-ambiguous --opts DISTILL.RESPONSE.WEIGHT 0.02 --tag=-resp0.02 "$@" ;;
  prototypes)  # its PGM row is gkd-resp0.02, from the retinanet-resp0.02 table
    q --detector retinanet --methods gkd-kmeans gkd-random gkd-ambiguous --opts DISTILL.RESPONSE.WEIGHT 0.02 --tag=-resp0.02 "$@" ;;
  *)
    echo "quality_cpu.sh: unknown table '$table' (see the head of this script for the list)" >&2
    exit 2 ;;
esac
