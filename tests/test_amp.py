"""Mixed precision: the distillation step under autocast (bfloat16 on this CPU; float16 on CUDA
runs the same code under Detectron2's AMPTrainer), and DistillTrainer with SOLVER.AMP.ENABLED."""
import pytest
import torch
from detectron2.modeling import build_model
from helpers import TEACHER_FIXTURES, distill_cfg, fill_prototypes_from_batch, make_batch, train_losses

from gkd_d2 import DistillTrainer
from gkd_d2.amp import CPUAMPTrainer
from gkd_d2.knowledge.losses import decoupled_feature_loss

ARCHS = ["GeneralizedRCNN", "RetinaNet", "FCOS"]


@pytest.mark.parametrize("arch", ARCHS)
def test_autocast_step_has_half_teacher_and_float32_losses_close_to_full_precision(arch, request):
    torch.manual_seed(0)
    model = build_model(distill_cfg(request.getfixturevalue(TEACHER_FIXTURES[arch]), arch))
    fill_prototypes_from_batch(model, make_batch(((3, 0), (3, 1))))
    batch = make_batch(((2, 0), (3, 1)))
    full = train_losses(model, batch)
    dtypes = []
    teacher_features = model.teacher_features

    def spy(inputs):
        out = teacher_features(inputs)
        dtypes.extend(v.dtype for v in out.values())
        return out

    model.teacher_features = spy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = train_losses(model, batch)
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the teacher ran in half precision
    assert set(half) == set(full)
    for name, value in half.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    for name in ("loss_kd_feature", "loss_kd_response", "loss_kd_global"):
        assert half[name].item() == pytest.approx(full[name].item(), rel=0.1, abs=1e-3), name
    sum(half.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.student.parameters() if p.grad is not None)


def test_feature_loss_of_half_maps_reduces_in_float32():
    # 256 x 64 x 64 squared errors of 300: a float16 sum would overflow (max 65504).
    student = torch.zeros(1, 256, 64, 64, dtype=torch.float16)
    teacher = torch.full_like(student, 300.0)
    mask = torch.zeros(1, 64, 64)
    loss = decoupled_feature_loss(student, teacher, mask, 1.0, 4.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(4.0 * 300.0**2 / 2)


def test_trainer_with_amp_enabled_trains_on_the_cpu(tmp_path, request):
    from detectron2.data import DatasetCatalog

    from gkd_d2.data.synthetic import SYNTHETIC_CLASSES, register_synthetic_dataset

    name = "gkd_test_amp_train"
    if name not in DatasetCatalog.list():
        register_synthetic_dataset(name, str(tmp_path / "data"), num_images=4, image_size=64, seed=5)
    from helpers import make_teacher

    (tmp_path / "teacher").mkdir()
    teacher = make_teacher(tmp_path / "teacher", "GeneralizedRCNN", num_classes=len(SYNTHETIC_CLASSES))
    cfg = distill_cfg(teacher)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(SYNTHETIC_CLASSES)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (name,), ()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH = 2, 1e-4, 2
    cfg.DATALOADER.NUM_WORKERS = 0
    trainer = DistillTrainer(cfg)
    assert isinstance(trainer._trainer, CPUAMPTrainer)
    trainer.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in trainer.model.student.state_dict().items()}
    trainer.train()
    history = trainer.storage.history("total_loss").values()
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(v)) for v, _ in history)
    after = trainer.model.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the student was trained
    assert (tmp_path / "out" / "model_final.pth").is_file()
