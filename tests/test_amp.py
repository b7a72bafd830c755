"""Mixed precision: the distillation step under autocast (bfloat16 on this CPU; float16 on CUDA
runs the same code under Detectron2's AMPTrainer), and DistillTrainer with SOLVER.AMP.ENABLED."""
import logging

import pytest
import torch
from detectron2.modeling import build_model
from helpers import TEACHER_FIXTURES, distill_cfg, fill_prototypes_from_batch, make_batch, train_losses

from gkd_d2 import DistillTrainer
from gkd_d2.amp import CPUAMPTrainer
from gkd_d2.knowledge.losses import decoupled_feature_loss

ARCHS = ["GeneralizedRCNN", "RetinaNet", "FCOS"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_autocast_step_has_half_teacher_and_float32_losses_close_to_full_precision(arch, request):
    torch.manual_seed(0)
    model = build_model(distill_cfg(request.getfixturevalue(TEACHER_FIXTURES[arch]), arch))
    fill_prototypes_from_batch(model, make_batch(((3, 0), (3, 1))))
    # 128 px, not 64: at 64 px RetinaNet's P6 is 1x1, and PyTorch's bfloat16 CPU backward of the
    # 3x3 stride-2 P7 convolution of a 1x1 map returns NaN weight gradients at random (about 6% of
    # calls on an AMD EPYC with avx512_bf16, torch 2.14.1), which CPUAMPTrainer skips
    batch = make_batch(((2, 0), (3, 1)), size=128)
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


@pytest.mark.slow
def test_trainer_with_amp_enabled_trains_on_the_cpu(tmp_path, request):
    from detectron2.data import DatasetCatalog

    from gkd_d2.data.generated.synthetic import SYNTHETIC_CLASSES, register_synthetic_dataset

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


class _NaNGradient(torch.autograd.Function):
    """Identity forward; a NaN gradient backward, as the bfloat16 kernel gives at random."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


class _TwoParamModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.good = torch.nn.Parameter(torch.ones(3))
        self.bad = torch.nn.Parameter(torch.ones(3))
        self.poison = False

    def forward(self, data):
        bad = _NaNGradient.apply(self.bad) if self.poison else self.bad
        return {"loss_a": (self.good * data).sum(), "loss_b": (bad * data).sum()}


def test_cpu_amp_step_is_skipped_when_a_gradient_is_not_finite(caplog):
    from detectron2.utils.events import EventStorage

    model = _TwoParamModel()
    trainer = CPUAMPTrainer(model, [torch.ones(3)] * 4, torch.optim.SGD(model.parameters(), lr=0.5))
    with EventStorage(0) as storage:
        trainer.storage, trainer.iter = storage, 0
        trainer.run_step()  # finite: a step, d(loss)/d(param) = 1 -> 1 - 0.5
        assert torch.equal(model.good.detach(), torch.full((3,), 0.5)) and trainer.skipped_steps == 0
        model.poison, trainer.iter = True, 1
        amp_logger = logging.getLogger("gkd_d2.amp")  # setup_logger may stop propagation at "gkd_d2"
        amp_logger.addHandler(caplog.handler)
        try:
            trainer.run_step()  # losses finite, one gradient NaN: no parameter moves
        finally:
            amp_logger.removeHandler(caplog.handler)
        assert torch.equal(model.good.detach(), torch.full((3,), 0.5))
        assert torch.equal(model.bad.detach(), torch.full((3,), 0.5))
        assert trainer.skipped_steps == 1 and storage.latest()["amp/skipped_steps"][0] == 1
        assert "iteration 1: non-finite gradients in 1 parameter(s) (bad)" in caplog.text
        model.poison, trainer.iter = False, 2
        trainer.run_step()  # finite again: steps resume
        assert torch.equal(model.bad.detach(), torch.zeros(3)) and trainer.skipped_steps == 1
