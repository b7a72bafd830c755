cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1
D="DATASETS.SYNTHETIC.ROOT /tmp/trace/data DATASETS.SYNTHETIC.NUM_TRAIN 64 DATASETS.SYNTHETIC.NUM_VAL 8 DATALOADER.NUM_WORKERS 0 SEED 0"
LEGACY="MODEL.WEIGHTS '' DISTILL.FREEZE_STUDENT_BN False DISTILL.ATTENUATION False DISTILL.RESPONSE.FORM paper DISTILL.FEATURE.ADAPTER_RELU True DISTILL.FEATURE.LEVEL_REDUCTION mean SOLVER.STEPS '(220,280)' SOLVER.WARMUP_ITERS 100"
for det in retinanet faster_rcnn; do
  eval .venv/bin/python benchmarks/loss_trace.py --config configs/Demo/gkd_${det}_R34_to_R18_FPN.yaml --out /tmp/trace/head_$det.json $D SOLVER.MAX_ITER 20 DISTILL.TEACHER.WEIGHTS /tmp/trace/teacher_$det/model_final.pth OUTPUT_DIR /tmp/trace/out_head_$det DISTILL.PGM.PERIOD 10 $LEGACY > /tmp/trace/head_$det.log 2>&1
  .venv/bin/python benchmarks/loss_trace.py --compare /tmp/trace/before_$det.json /tmp/trace/head_$det.json >> /tmp/trace/head_compare.txt 2>&1
done
