"""Every config in configs/ builds its model and runs one training step (tiny CPU setting).

Weight loading is skipped (no network, no trained teachers here) and the networks are
shrunk (ResNet-18 trunks, 16-channel FPN, 64 px inputs), but the structure each config
describes is what gets built: meta-architecture, student/teacher kinds, heads (cascade
included), knowledge terms and prototype settings.
"""
import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from helpers import ROOT, make_batch, train_losses

import gkd_d2.teacher
from gkd_d2 import add_distill_config

CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)
SHRINK = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.NUM_GROUPS", "1", "MODEL.RESNETS.WIDTH_PER_GROUP", "64",
    "MODEL.RESNETS.STRIDE_IN_1X1", "True", "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.RETINANET.NUM_CONVS", "1",
    "MODEL.FCOS.NUM_CONVS", "1", "MODEL.FCOS.HEAD_NORM", "",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
]


def test_every_config_is_covered():
    assert len(CONFIGS) > 40
    assert any("cascade" in c for c in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_and_trains_one_step(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # teacher CONFIG_FILEs are relative to the repository root
    monkeypatch.setattr(gkd_d2.teacher, "load_teacher_weights", lambda model, weights: None)
    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(SHRINK)
    if cfg.MODEL.META_ARCHITECTURE == "DistillationDetector":
        cfg.DISTILL.TEACHER.OPTS = list(cfg.DISTILL.TEACHER.OPTS) + SHRINK
        cfg.DISTILL.PGM.NUM_PROTOTYPES = 2
    torch.manual_seed(0)
    model = build_model(cfg)
    losses = train_losses(model, make_batch(((2, 0), (1, 1))))
    for k, v in losses.items():
        assert torch.isfinite(v), f"{path}: {k}"
    if cfg.MODEL.META_ARCHITECTURE == "DistillationDetector":
        for name in cfg.DISTILL.KNOWLEDGE:
            assert any(k.startswith(f"loss_kd_{name}") for k in losses), f"{path}: {name}"
        assert (model.prototypes is not None) == cfg.DISTILL.PGM.ENABLED
    sum(losses.values()).backward()
