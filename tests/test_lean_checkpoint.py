"""Lean checkpoints: the student, adapters, prototypes and training state, not the frozen
teacher (rebuilt from its own weights file, whose sha256 the checkpoint records)."""
import logging
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers import ROOT, distill_cfg, fill_prototypes_from_batch, make_batch, make_teacher, train_losses

from gkd_d2 import DistillationCheckpointer
from gkd_d2.checkpoint import TeacherChangedError
from gkd_d2.config import load_config
from gkd_d2.teacher import build_teacher_cfg

MiB = 2**20


def trained(cfg, seed=0):
    """A model of ``cfg`` with prototypes and one optimiser step (weights unlike a fresh build)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    fill_prototypes_from_batch(model, make_batch(((3, 0), (3, 1))))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with EventStorage(0):
        sum(train_losses(model, make_batch(((2, 0),))).values()).backward()
    opt.step()
    return model


@pytest.mark.slow
def test_demo_checkpoint_is_the_size_of_the_student(tmp_path):
    yaml = os.path.join(ROOT, "configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml")
    cfg = load_config(yaml, ["MODEL.WEIGHTS", ""])
    teacher = build_model(build_teacher_cfg(cfg))
    DetectionCheckpointer(teacher, save_dir=str(tmp_path)).save("teacher")
    cfg.DISTILL.TEACHER.WEIGHTS = str(tmp_path / "teacher.pth")
    model = build_model(cfg)
    DetectionCheckpointer(model.student, save_dir=str(tmp_path)).save("student")
    DistillationCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    sizes = {n: os.path.getsize(tmp_path / f"{n}.pth") / MiB for n in ("teacher", "student", "model_final")}
    print("checkpoint %.1f MiB, student %.1f MiB, teacher %.1f MiB" % tuple(sizes[n] for n in ("model_final", "student", "teacher")))
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert not any(k.startswith("teacher.") for k in ckpt["model"])
    # the student plus its adapters (a few 3x3 convs D_S -> D_T) and prototypes; no teacher
    assert sizes["student"] <= sizes["model_final"] < 1.25 * sizes["student"]
    assert sizes["model_final"] < sizes["student"] + 0.5 * sizes["teacher"]
    record = ckpt["teacher_weights"]
    assert record["weights"] == cfg.DISTILL.TEACHER.WEIGHTS and record["option"] == "DISTILL.TEACHER.WEIGHTS"
    import hashlib

    assert record["sha256"] == hashlib.sha256((tmp_path / "teacher.pth").read_bytes()).hexdigest()


@pytest.mark.slow
def test_round_trip_gives_the_same_losses_and_old_checkpoints_load(rcnn_teacher, tmp_path):
    cfg = distill_cfg(rcnn_teacher)
    model = trained(cfg)
    DistillationCheckpointer(model, save_dir=str(tmp_path)).save("model_x")
    fresh = build_model(cfg)
    DistillationCheckpointer(fresh).resume_or_load(str(tmp_path / "model_x.pth"), resume=False)
    batch = make_batch(((2, 0), (3, 1)), seed=3)
    losses = []
    for m in (model, fresh):
        torch.manual_seed(7)
        losses.append({k: v.item() for k, v in train_losses(m, batch, it=3).items()})
    assert losses[0] == losses[1] and "loss_kd_global" in losses[0]

    # an older checkpoint with the teacher inside: its teacher.* tensors are ignored
    old = dict(model.state_dict())
    old.update({f"teacher.{k}": v + 1 for k, v in model.teacher.state_dict().items() if v.is_floating_point()})
    torch.save({"model": old}, tmp_path / "old.pth")
    again = build_model(cfg)
    teacher_before = {k: v.clone() for k, v in again.teacher.state_dict().items()}
    DistillationCheckpointer(again).load(str(tmp_path / "old.pth"))
    assert all(torch.equal(teacher_before[k], v) for k, v in again.teacher.state_dict().items())
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    again.load_state_dict(old, strict=True)  # plain torch too: no missing or unexpected keys
    again.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.slow
def test_changed_teacher_is_an_error_on_resume_and_a_warning_on_load(tmp_path, caplog):
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    teacher = make_teacher(teacher_dir, "GeneralizedRCNN", seed=0)
    cfg = distill_cfg(teacher)
    run = tmp_path / "run"
    run.mkdir()
    model = trained(cfg)
    DistillationCheckpointer(model, save_dir=str(run)).save("model_0000009")
    old_sha = model.teacher_sha256
    make_teacher(teacher_dir, "GeneralizedRCNN", seed=1)  # the same file, other weights
    fresh = build_model(cfg)
    new_sha = fresh.teacher_sha256
    assert new_sha != old_sha
    with pytest.raises(TeacherChangedError) as e:
        DistillationCheckpointer(fresh, save_dir=str(run)).resume_or_load("", resume=True)
    assert old_sha in str(e.value) and new_sha in str(e.value) and "DISTILL.TEACHER.WEIGHTS" in str(e.value)
    with caplog.at_level(logging.WARNING):
        DistillationCheckpointer(fresh).load(str(run / "model_0000009.pth"))
    assert any(old_sha in r.getMessage() and new_sha in r.getMessage() for r in caplog.records)
    assert torch.equal(fresh.student.backbone.fpn_output2.weight, model.student.backbone.fpn_output2.weight)
    # the unchanged file (moved elsewhere) resumes
    make_teacher(teacher_dir, "GeneralizedRCNN", seed=0)
    moved = tmp_path / "moved.pth"
    os.replace(teacher[1], moved)
    cfg.DISTILL.TEACHER.WEIGHTS = str(moved)
    DistillationCheckpointer(build_model(cfg), save_dir=str(run)).resume_or_load("", resume=True)
