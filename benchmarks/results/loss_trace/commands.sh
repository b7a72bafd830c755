#!/usr/bin/env bash
# Reproduces legacy_options_*.json (see README.md here); compares with reference_84ca447_*.json.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1
OUT=${OUT:-/tmp/trace}
D="DATASETS.SYNTHETIC.ROOT $OUT/data DATASETS.SYNTHETIC.NUM_TRAIN 64 DATASETS.SYNTHETIC.NUM_VAL 8 DATALOADER.NUM_WORKERS 0 SEED 0"
LEGACY="MODEL.WEIGHTS '' DISTILL.FREEZE_STUDENT_BN False DISTILL.ATTENUATION False DISTILL.RESPONSE.FORM paper DISTILL.FEATURE.ADAPTER_RELU True DISTILL.FEATURE.LEVEL_REDUCTION mean SOLVER.STEPS '(220,280)' SOLVER.WARMUP_ITERS 100"
for det in retinanet faster_rcnn; do
  [ -f "$OUT/teacher_$det/model_final.pth" ] || eval .venv/bin/python tools/train_net.py \
    --config-file configs/Demo/teacher_${det}_R34_FPN.yaml $D SOLVER.MAX_ITER 40 SOLVER.WARMUP_ITERS 10 \
    TEST.EVAL_PERIOD 0 OUTPUT_DIR "$OUT/teacher_$det"
  eval .venv/bin/python benchmarks/loss_trace.py --config configs/Demo/gkd_${det}_R34_to_R18_FPN.yaml \
    --out "$OUT/head_$det.json" $D SOLVER.MAX_ITER 20 DISTILL.TEACHER.WEIGHTS "$OUT/teacher_$det/model_final.pth" \
    OUTPUT_DIR "$OUT/out_head_$det" DISTILL.PGM.PERIOD 10 $LEGACY
  .venv/bin/python benchmarks/loss_trace.py --compare benchmarks/results/loss_trace/reference_84ca447_$det.json "$OUT/head_$det.json"
done
