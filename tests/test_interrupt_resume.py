"""Ctrl-C during training, then --resume: the same final state as an uninterrupted run."""
import os
import signal

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
from helpers import distill_cfg, make_teacher

from gkd_d2 import DistillTrainer
from gkd_d2.data.generated.synthetic import SYNTHETIC_CLASSES, register_synthetic_dataset
from gkd_d2.resume import TrainingInterrupted

DATASET = "gkd_test_interrupt_train"


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own SIGINT handler, as in an interactive run. A process started in the
    background (``cmd &``, nohup) inherits SIGINT ignored, and the trainer rightly restores
    whatever it found; these tests pin what they start from."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    register_synthetic_dataset(
        DATASET, str(tmp_path_factory.mktemp("synth")), num_images=6, image_size=64, seed=5
    )
    return make_teacher(
        tmp_path_factory.mktemp("teacher"), "GeneralizedRCNN", num_classes=len(SYNTHETIC_CLASSES)
    )


def run_cfg(teacher, out):
    cfg = distill_cfg(teacher)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(SYNTHETIC_CLASSES)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (DATASET,), ()
    cfg.OUTPUT_DIR = str(out)
    cfg.SOLVER.MAX_ITER = 7
    cfg.SOLVER.BASE_LR = 0.0005
    cfg.DISTILL.FEATURE.WEIGHT = 1e-4  # random teacher: huge feature maps
    cfg.SOLVER.STEPS = (5,)  # the LR drop happens after the restart
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000  # only the interrupt and the final checkpoint
    cfg.DISTILL.PGM.PERIOD = 4  # prototypes refreshed at 0 and, after the restart, at 4
    cfg.INPUT.RANDOM_FLIP = "horizontal"  # random augmentation in the main process
    return cfg


class SendSignalAt(HookBase):
    """Deliver ``sig`` to this process after iteration ``at`` (as Ctrl-C would)."""

    def __init__(self, at, sig=signal.SIGINT):
        self.at, self.sig = at, sig

    def after_step(self):
        if self.trainer.iter == self.at:
            os.kill(os.getpid(), self.sig)


def final_state(out):
    return torch.load(os.path.join(out, "model_final.pth"), weights_only=False)


def assert_same(a, b, path="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_and_resume_equals_uninterrupted_run(setup, tmp_path, sig):
    seed_all_rng(0)
    DistillTrainer(run_cfg(setup, tmp_path / "straight")).train()
    reference = final_state(tmp_path / "straight")

    seed_all_rng(0)
    cfg = run_cfg(setup, tmp_path / "interrupted")
    trainer = DistillTrainer(cfg)
    trainer.register_hooks([SendSignalAt(2, sig)])  # runs after GracefulInterruptHook
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train()
    # the signal arrived after step 2's hooks: step 3 completes, then the run stops
    assert info.value.iteration == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    with open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")) as f:
        assert f.read() == "model_0000003.pth"
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))

    seed_all_rng(12345)  # a new process: other seeds, other initial weights
    resumed = DistillTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    resumed.train()
    final = final_state(tmp_path / "interrupted")

    assert final["iteration"] == reference["iteration"] == 6
    assert int(final["model"]["prototypes.last_refresh_iter"]) == 4
    # weights (student, adapters, prototypes), optimizer, LR scheduler, RNG, sampler: identical
    assert final.keys() == reference.keys()
    for key in ("model", "trainer", "train_sampler"):  # trainer: optimizer + LR scheduler
        assert_same(final[key], reference[key], key)
    assert torch.equal(final["rng"]["torch"], reference["rng"]["torch"])


@pytest.mark.slow
def test_second_signal_aborts_at_once(setup, tmp_path):
    cfg = run_cfg(setup, tmp_path)
    trainer = DistillTrainer(cfg)

    class TwoSignals(HookBase):
        def after_step(self):
            if self.trainer.iter == 1:
                os.kill(os.getpid(), signal.SIGINT)  # graceful: handled by the hook
                os.kill(os.getpid(), signal.SIGINT)  # default handler again: KeyboardInterrupt

    trainer.register_hooks([TwoSignals()])
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.train()
    assert not isinstance(info.value, TrainingInterrupted)
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
