"""Demo distillation as a LazyConfig: the pair of configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml.

The student is written out as a Detectron2 LazyConfig model (the same network as
configs/Demo/student_faster_rcnn_R18_FPN.yaml: ResNet-18, 64-channel FPN, light heads); the
teacher is read from its yaml (configs/Demo/teacher_faster_rcnn_R34_FPN.yaml) by
``build_detector``, which takes a LazyConfig ``.py`` or a model-zoo name the same way.

    python tools/lazyconfig_train_net.py --config-file configs/LazyConfig/Demo/gkd_faster_rcnn_R34_to_R18_FPN.py
    python tools/lazyconfig_train_net.py --config-file ... --resume      # after a Ctrl-C
    python tools/lazyconfig_train_net.py --config-file ... train.max_iter=50 distill.PGM.NUM_PROTOTYPES=5

It expects the demo's student and teacher trained alone first (tools/demo.py prints their
commands); ``train.init_checkpoint`` and ``model.teacher_weights`` point at them.
"""
import os

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.data import get_detection_dataset_dicts
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import ShapeSpec
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, StandardROIHeads
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf
import torch

from gkd_d2 import DistillationDetector
from gkd_d2.lazy import build_detector

DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "Demo")
NUM_CLASSES = 5
SIZE = 160  # images are 160 x 160

student = L(GeneralizedRCNN)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="BN"),
            stages=L(ResNet.make_default_stages)(depth=18, norm="BN"),
            out_features=["res2", "res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res2", "res3", "res4", "res5"],
        out_channels=64,
        norm="BN",
        top_block=L(LastLevelMaxPool)(),
    ),
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(StandardRPNHead)(in_channels=64, num_anchors=3),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[12], [24], [48], [96], [160]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=128,
        positive_fraction=0.5,
        pre_nms_topk=(600, 300),
        post_nms_topk=(200, 150),
        nms_thresh=0.7,
    ),
    roi_heads=L(StandardROIHeads)(
        num_classes=NUM_CLASSES,
        batch_size_per_image=64,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
        box_in_features=["p2", "p3", "p4", "p5"],
        box_pooler=L(ROIPooler)(
            output_size=7, scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32), sampling_ratio=0, pooler_type="ROIAlignV2"
        ),
        box_head=L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=64, height=7, width=7), conv_dims=[], fc_dims=[256, 256]
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=256),
            test_score_thresh=0.01,
            test_topk_per_image=50,
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes=NUM_CLASSES,
        ),
    ),
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)

# The options of the yaml DISTILL node, same names (defaults: gkd_d2/config.py).
distill = dict(
    KNOWLEDGE=["feature", "response", "global"],
    PGM=dict(MAX_SAMPLES=200, MIN_SIZE=16),
)

model = L(DistillationDetector)(
    student=student,
    teacher=L(build_detector)(
        config_file=os.path.join(DEMO, "teacher_faster_rcnn_R34_FPN.yaml"), device="${train.device}"
    ),
    teacher_weights="output/demo/teacher_faster_rcnn/model_final.pth",
    distill="${distill}",
    max_iter="${train.max_iter}",
)

# gkd_d2's generated data (the yaml DATASETS.SYNTHETIC node): 160 px images, five classes.
datasets = dict(SYNTHETIC=dict(ROOT="datasets/gkd_synth", NUM_TRAIN=2000, NUM_VAL=200))

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="gkd_synth_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(SIZE,), max_size=SIZE, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
    ),
    total_batch_size=4,
    num_workers=1,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="gkd_synth_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=SIZE, max_size=SIZE)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=1,
)
dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}", output_dir="${train.output_dir}/inference"
)

optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.01,
    momentum=0.9,
    weight_decay=1e-4,
)

train = dict(
    output_dir="output/demo/lazy_gkd_faster_rcnn",
    # the demo student trained alone (configs/Demo/student_faster_rcnn_R18_FPN.yaml)
    init_checkpoint="output/demo/student_faster_rcnn/model_final.pth",
    max_iter=300,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=100000, max_to_keep=100),
    eval_period=0,  # 0: evaluate once, at the end
    log_period=20,
    device="cpu",
    seed=0,
)

# the paper's fine-tuning schedule, scaled: warm-up 5%, steps at 2/3 and 11/12
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[200, 275], num_updates="${train.max_iter}"),
    warmup_length=15 / 300,
    warmup_factor=0.001,
)
