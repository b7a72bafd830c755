#!/usr/bin/env bash
# The quality tables of benchmarks/RESULTS.md, one command per table, exactly as they were run
# on the 2-core CPU machine (see benchmarks/NOTES.md for the scale and what it shows).
#
#   bash benchmarks/quality_cpu.sh faster_rcnn          # Faster R-CNN table (Tables 1, 3, 4)
#   bash benchmarks/quality_cpu.sh retinanet            # RetinaNet table, paper's default weights
#   bash benchmarks/quality_cpu.sh retinanet-resp0.02   # RetinaNet rows with lambda_resp = 0.02
#   bash benchmarks/quality_cpu.sh prototypes           # Table 6: prototype choice (RetinaNet)
#
# Extra arguments go to benchmarks/quality.py (e.g. --seeds 0 --methods student gkd, or
# --device cuda). Records land in benchmarks/results/quality.json (a finished row of the same
# detector, method, seed and device is replaced); then `python benchmarks/report.py`. Each
# detector's teacher is trained once, into output/quality/<detector>/teacher (the RetinaNet rows
# of 2026-11-23 used the demo's teacher, same data and schedule, copied there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SCALE=(--teacher-iters 1200 --iters 800 --ims-per-batch 4 --lr 0.01 --num-train 2000 --num-val 200 --workers 1)
table=${1:?usage: quality_cpu.sh faster_rcnn|retinanet|retinanet-resp0.02|prototypes [quality.py args]}
shift
case "$table" in
  faster_rcnn)
    exec "$PY" benchmarks/quality.py --detector faster_rcnn "${SCALE[@]}" --seeds 0 1 \
      --methods teacher student gkd defeat feature fitnet chen kd fgfi rkd response global "$@" ;;
  retinanet)  # chen and kd are RoI methods: they refuse a RetinaNet teacher
    exec "$PY" benchmarks/quality.py --detector retinanet "${SCALE[@]}" --seeds 0 1 \
      --methods teacher student gkd defeat feature fitnet fgfi rkd global "$@" ;;
  retinanet-resp0.02)
    exec "$PY" benchmarks/quality.py --detector retinanet "${SCALE[@]}" --seeds 0 1 \
      --methods gkd response --opts DISTILL.RESPONSE.WEIGHT 0.02 --tag=-resp0.02 "$@" ;;
  prototypes)  # its PGM row is gkd-resp0.02, from the retinanet-resp0.02 table
    exec "$PY" benchmarks/quality.py --detector retinanet "${SCALE[@]}" --seeds 0 1 \
      --methods gkd-kmeans gkd-random gkd-ambiguous --opts DISTILL.RESPONSE.WEIGHT 0.02 --tag=-resp0.02 "$@" ;;
  *)
    echo "quality_cpu.sh: unknown table '$table' (faster_rcnn, retinanet, retinanet-resp0.02, prototypes)" >&2
    exit 2 ;;
esac
