"""The teacher: a Detectron2 LazyConfig teacher (a local ``.py`` or a model-zoo name) and the
strict but tolerant loading of teacher checkpoints."""
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.modeling import build_model
from helpers import ROOT, calibrate_batchnorm, distill_cfg, make_batch, make_teacher, tiny_cfg, train_losses

from gkd_d2.config import load_config
from gkd_d2.config_files import resolve_config_file
from gkd_d2.teacher import build_teacher_cfg, lazy_teacher_cfg, load_lazy_teacher_config, load_teacher_weights

# A tiny RetinaNet as a Detectron2 LazyConfig: the model zoo's RetinaNet, shrunk to the
# students of tests/helpers.py (ResNet-18, 32-channel FPN, 2 anchors per location, 3 classes).
TINY_LAZY_RETINANET = """
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import ResNet

model = model_zoo.get_config("common/models/retinanet.py").model
model.backbone.bottom_up.stem.norm = "BN"
model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="BN")
model.backbone.out_channels = 32
model.backbone.top_block.in_channels = 512
model.head.input_shape = [ShapeSpec(channels=32)] * 5
model.head.conv_dims = [32]
model.head.num_anchors = 2
model.anchor_generator.sizes = [[x, x * 1.5] for x in [8, 16, 32, 64, 128]]
model.anchor_generator.aspect_ratios = [1.0]
model.num_classes = 3
"""


@pytest.mark.slow
def test_lazyconfig_teacher_distils(tmp_path):
    py = tmp_path / "tiny_retinanet.py"
    py.write_text(TINY_LAZY_RETINANET)
    cfg = distill_cfg((str(py), ""), arch="RetinaNet")
    torch.manual_seed(0)
    teacher = instantiate(load_lazy_teacher_config(cfg).model)
    calibrate_batchnorm(teacher)
    DetectionCheckpointer(teacher, save_dir=str(tmp_path)).save("lazy_teacher")
    cfg.DISTILL.TEACHER.WEIGHTS = str(tmp_path / "lazy_teacher.pth")
    model = build_model(cfg)
    assert type(model.teacher).__name__ == "RetinaNet"
    assert model.teacher_cfg.INPUT.FORMAT == "BGR" and not model.flip_teacher_channels
    assert model.teacher_cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
    # the saved weights were loaded (not a fresh random init), and the teacher is frozen
    for k, v in teacher.state_dict().items():
        assert torch.equal(model.teacher.state_dict()[k], v), k
    assert not any(p.requires_grad for p in model.teacher.parameters())
    losses = train_losses(model, make_batch(((2, 0), (3, 1))))
    for key in ("loss_kd_feature", "loss_kd_response", "loss_kd_global", "loss_cls"):
        assert key in losses and torch.isfinite(losses[key]), key
    # DISTILL.TEACHER.OPTS are LazyConfig overrides: 5 classes no longer match the student's 3
    cfg.DISTILL.TEACHER.OPTS = ["model.num_classes=5"]
    with pytest.raises(ValueError, match="teacher predicts 5 classes|number of classes"):
        build_model(cfg)


def test_lazyconfig_model_zoo_name_resolves_offline():
    cfg = load_config(os.path.join(ROOT, "configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml"))
    name = "new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py"
    cfg.DISTILL.TEACHER.CONFIG_FILE = name
    cfg.DISTILL.TEACHER.OPTS = ["model.roi_heads.num_classes", "5"]  # KEY VALUE pairs work too
    assert resolve_config_file(name).endswith(name) and os.path.isfile(resolve_config_file(name))
    lazy = load_lazy_teacher_config(cfg)
    assert lazy.model.roi_heads.num_classes == 5
    node = build_teacher_cfg(cfg)  # what meta_arch reads: a yacs node
    assert node == lazy_teacher_cfg(cfg, lazy)
    assert node.INPUT.FORMAT == "BGR" and node.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    cfg.DISTILL.TEACHER.CONFIG_FILE = "new_baselines/no_such_config.py"
    with pytest.raises(FileNotFoundError, match="no_such_config.py"):
        load_lazy_teacher_config(cfg)


# ---------------------------------------------------------------- tolerant checkpoint loading
@pytest.mark.slow
def test_teacher_checkpoint_without_num_batches_tracked_loads(tmp_path):
    cfg_path, weights = make_teacher(tmp_path, "GeneralizedRCNN")
    ckpt = torch.load(weights, weights_only=False)
    dropped = [k for k in ckpt["model"] if k.endswith("num_batches_tracked")]
    assert dropped  # BN teacher: the buffers exist, and are removed here
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if k not in dropped}
    torch.save(ckpt, tmp_path / "no_nbt.pth")
    cfg = distill_cfg((cfg_path, str(tmp_path / "no_nbt.pth")))
    teacher = build_model(build_teacher_cfg(cfg))
    load_teacher_weights(teacher, str(tmp_path / "no_nbt.pth"))  # Detectron2 accepts it: so do we
    for k, v in ckpt["model"].items():
        assert torch.equal(teacher.state_dict()[k], v), k


@pytest.mark.slow
def test_shape_mismatch_is_not_also_reported_missing(tmp_path):
    cfg_path, weights = make_teacher(tmp_path, "GeneralizedRCNN", num_classes=4)
    teacher = build_model(tiny_cfg(fpn_channels=32))  # 3 classes
    with pytest.raises(ValueError, match="number of classes.*cls_score") as e:
        load_teacher_weights(teacher, weights)
    assert "Missing from the checkpoint" not in str(e.value), str(e.value)
