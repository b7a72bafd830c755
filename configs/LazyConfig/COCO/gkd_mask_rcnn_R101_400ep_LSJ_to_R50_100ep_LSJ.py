"""Detectron2's new baselines distilled: the R101-FPN 400-epoch LSJ Mask R-CNN (model zoo,
48.9 box AP) teaches the R50-FPN 100-epoch LSJ Mask R-CNN (46.7 box AP), both from
Detectron2's model zoo (configs and weights are model-zoo names and URLs).

The paper's regime, as configs/COCO/gkd_faster_rcnn_R101_to_R50_FPN_2x.yaml: the student
starts from its trained weights and is fine-tuned with distillation for a 2x-length schedule
(24 COCO epochs: 45k iterations of 64 images, lr 0.08 = the yaml pair's 0.02 at 16 images,
scaled; steps at 2/3 and 11/12), with the new baseline's own data pipeline (LSJ, 1024 px),
SyncBN and mixed precision.

    python tools/lazyconfig_train_net.py --config-file THIS --num-gpus 8
"""
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from gkd_d2 import DistillationDetector
from gkd_d2.lazy import build_detector

STUDENT = "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"
TEACHER = "new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py"

_student = model_zoo.get_config(STUDENT)
dataloader, optimizer, train = _student.dataloader, _student.optimizer, _student.train

# The options of the yaml DISTILL node, same names (defaults: gkd_d2/config.py).
distill = dict(
    KNOWLEDGE=["feature", "response", "global"],
    # a refresh reads every image holding a sampled instance: 'compact' reads far fewer
    PGM=dict(SAMPLING="compact"),
)

model = L(DistillationDetector)(
    student=_student.model,
    teacher=L(build_detector)(config_file=TEACHER, device="${train.device}"),
    teacher_weights=model_zoo.get_checkpoint_url(TEACHER),
    distill="${distill}",
    max_iter="${train.max_iter}",
)

train.init_checkpoint = model_zoo.get_checkpoint_url(STUDENT)
train.output_dir = "output/coco_lazy_gkd_mask_rcnn_R101_LSJ_to_R50_LSJ"
train.max_iter = 45000
train.eval_period = 5000
train.checkpointer = dict(period=5000, max_to_keep=3)
train.device = "cuda"
train.seed = 0
optimizer.lr = 0.08

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[30000, 41250], num_updates="${train.max_iter}"
    ),
    warmup_length=500 / 45000,
    warmup_factor=0.067,
)
