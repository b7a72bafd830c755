"""Mask R-CNN students and teachers (``MODEL.MASK_ON``, StandardROIHeads' mask head): the
student's mask loss trains, distillation on boxes is what it is without masks, the export keeps
the mask head."""
import importlib.util
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import BitMasks
from helpers import (
    ROOT,
    calibrate_batchnorm,
    distill_cfg,
    fill_prototypes_from_batch,
    make_batch,
    save_plain_config,
    tiny_cfg,
    train_losses,
)

from gkd_d2 import DistillationCheckpointer

MASK_HEAD = "roi_heads.mask_head."


def with_mask_head(cfg):
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    return cfg


def with_masks(batch):
    """Give every GT box a mask: the ellipse inscribed in the box (BitMasks)."""
    for x in batch:
        inst = x["instances"]
        h, w = inst.image_size
        yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        masks = []
        for x0, y0, x1, y1 in inst.gt_boxes.tensor.tolist():
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            masks.append(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1)
        inst.gt_masks = BitMasks(torch.stack(masks))
    return batch


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A tiny Mask R-CNN teacher and its Faster R-CNN twin (the same weights without the mask
    head): {"mask": (yaml, pth), "box": (yaml, pth)}."""
    tmp = tmp_path_factory.mktemp("mask_teacher")
    torch.manual_seed(0)
    cfg = with_mask_head(tiny_cfg("GeneralizedRCNN", fpn_channels=32))
    model = build_model(cfg)
    calibrate_batchnorm(model)
    DetectionCheckpointer(model, save_dir=str(tmp)).save("mask")
    twin = tiny_cfg("GeneralizedRCNN", fpn_channels=32)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(MASK_HEAD)}
    torch.save({"model": state}, tmp / "box.pth")
    return {
        "mask": (save_plain_config(cfg, tmp / "mask.yaml"), str(tmp / "mask.pth")),
        "box": (save_plain_config(twin, tmp / "box.yaml"), str(tmp / "box.pth")),
    }


def mask_student_cfg(teacher):
    cfg = with_mask_head(distill_cfg(teacher, "GeneralizedRCNN"))
    # random teachers have huge features: a small feature weight and clipping keep it stable
    cfg.DISTILL.FEATURE.WEIGHT = 1e-4
    cfg.SOLVER.MAX_ITER = 20
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    return cfg


@pytest.mark.slow
def test_mask_student_trains_its_mask_loss_with_distillation(teachers):
    cfg = mask_student_cfg(teachers["mask"])
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.student.roi_heads.mask_on and model.teacher.roi_heads.mask_on
    batch = with_masks(make_batch(((3, 0), (2, 1))))
    fill_prototypes_from_batch(model, batch)
    optimizer = build_optimizer(cfg, model)
    mask_losses = []
    for it in range(20):
        losses = train_losses(model, batch, it)
        assert {"loss_mask", "loss_cls", "loss_kd_feature", "loss_kd_response", "loss_kd_global"} <= set(
            losses
        )
        assert all(torch.isfinite(v) for v in losses.values()), (it, losses)
        mask_losses.append(float(losses["loss_mask"]))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert abs(mask_losses[0] - 0.693) < 0.05  # untrained: sigmoid BCE of logits near 0, ln 2
    assert sum(mask_losses[-5:]) / 5 < 0.85 * mask_losses[0], mask_losses


@pytest.mark.slow
def test_mask_heads_change_nothing_for_box_distillation(teachers):
    """Mask R-CNN student + Mask R-CNN teacher vs Faster R-CNN student + Faster R-CNN teacher,
    all shared weights equal: every loss but loss_mask is the same (the teacher's box head
    answers as usual; the student's mask head adds its loss and nothing else)."""
    torch.manual_seed(0)
    with_masks_model = build_model(mask_student_cfg(teachers["mask"]))
    box_cfg = distill_cfg(teachers["box"], "GeneralizedRCNN")
    box_cfg.DISTILL.FEATURE.WEIGHT = 1e-4
    box_model = build_model(box_cfg)
    missing, unexpected = with_masks_model.load_state_dict(box_model.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(k.startswith(("student." + MASK_HEAD, "teacher." + MASK_HEAD)) for k in missing)
    batch = with_masks(make_batch(((3, 0), (2, 1)), seed=1))
    for model in (with_masks_model, box_model):
        fill_prototypes_from_batch(model, batch)
    torch.manual_seed(1)  # same RPN / ROI sampling in both
    masked = train_losses(with_masks_model, batch)
    torch.manual_seed(1)
    boxes_only = train_losses(box_model, batch)
    assert set(masked) == set(boxes_only) | {"loss_mask"}
    for key, value in boxes_only.items():
        assert torch.allclose(masked[key], value, rtol=1e-5, atol=1e-7), key
    assert boxes_only["loss_kd_response"] > 0 and boxes_only["loss_kd_global"] > 0


@pytest.mark.slow
def test_export_keeps_the_mask_head(teachers, tmp_path):
    cfg = mask_student_cfg(teachers["mask"])
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # an untrained student still detects something
    torch.manual_seed(0)
    model = build_model(cfg)
    DistillationCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    config_file = tmp_path / "distill.yaml"
    config_file.write_text(cfg.dump())
    path = os.path.join(ROOT, "tools", "export_student.py")
    spec = importlib.util.spec_from_file_location("export_student", path)
    export_student = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_student)
    config, weights = export_student.export(
        str(config_file), str(tmp_path / "model_final.pth"), str(tmp_path / "out")
    )

    stock = get_cfg()  # stock Detectron2 config: no gkd_d2 node
    stock.merge_from_file(config)
    assert stock.MODEL.MASK_ON and stock.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    exported = torch.load(weights, weights_only=False)["model"]
    student = model.student.state_dict()
    mask_keys = [k for k in student if k.startswith(MASK_HEAD)]
    assert mask_keys and set(exported) == set(student)
    for k in mask_keys:
        assert torch.equal(exported[k], student[k]), k

    plain = build_model(stock)
    DetectionCheckpointer(plain).load(stock.MODEL.WEIGHTS)
    plain.eval()
    model.eval()
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in make_batch(((1, 0), (1, 1)), seed=2)]
    with torch.no_grad():
        ours, theirs = model(batch), plain(batch)
    for a, b in zip(ours, theirs):
        a, b = a["instances"], b["instances"]
        assert b.has("pred_masks") and len(b) > 0
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.pred_masks, b.pred_masks)
