"""Settings that used to be accepted silently: an empty DISTILL.KNOWLEDGE (teacher loaded and PGM
run for nothing) and a knowledge loss orders of magnitude above the detection losses."""
import logging

import pytest
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers import distill_cfg

import gkd_d2.meta_arch
from gkd_d2.loss_scale import LossScaleHook, loss_scale_outliers


class Records(logging.Handler):
    def __init__(self, logger_name):
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(logger_name)
        self.messages = []

    def emit(self, record):
        if record.levelno == logging.WARNING:
            self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


# ------------------------------------------------------------------------ DISTILL.KNOWLEDGE []
def test_empty_knowledge_is_refused_before_the_teacher_is_loaded(rcnn_teacher, monkeypatch):
    loaded = []
    monkeypatch.setattr(gkd_d2.meta_arch, "build_teacher_model", lambda cfg: loaded.append(cfg))
    monkeypatch.setattr(gkd_d2.meta_arch, "load_teacher_weights", lambda *a: loaded.append(a))
    cfg = distill_cfg(rcnn_teacher, knowledge=[])
    with pytest.raises(ValueError) as info:
        build_model(cfg)
    msg = str(info.value)
    assert msg.startswith("DISTILL.KNOWLEDGE is empty: no knowledge term, so the teacher would be loaded and the "
                          "prototypes (DISTILL.PGM.ENABLED True) generated for nothing."), msg
    assert "train it with Detectron2's own tools and config (MODEL.META_ARCHITECTURE GeneralizedRCNN" in msg
    assert "set DISTILL.PGM.ENABLED False as well" in msg
    assert not loaded


def test_empty_knowledge_without_pgm_is_the_control_run_and_says_so(rcnn_teacher):
    cfg = distill_cfg(rcnn_teacher, knowledge=[])
    cfg.DISTILL.PGM.ENABLED = False
    with Records("gkd_d2.validation") as records:
        model = build_model(cfg)
    assert len(model.knowledge) == 0 and model.prototypes is None
    assert records.messages == [
        "DISTILL.KNOWLEDGE is empty and DISTILL.PGM.ENABLED False: the student trains alone inside the "
        "distillation wrapper (a control run); the teacher is built but never run."
    ]


# ---------------------------------------------------------------------------------- loss scale
def test_loss_scale_outliers_exact():
    losses = {"loss_cls": 0.5, "loss_box_reg": 1.5, "loss_kd_feature": 4e7, "loss_kd_global": 20.0,
              "loss_kd_response": 21.0}
    assert loss_scale_outliers(losses) == [("loss_kd_feature", 4e7, 2e7), ("loss_kd_response", 21.0, 10.5)]
    assert loss_scale_outliers(losses, max_ratio=1e8) == []
    assert loss_scale_outliers({"loss_kd_feature": 5.0}) == []  # no detection loss to compare with
    assert loss_scale_outliers({"loss_cls": 0.0, "loss_kd_feature": 5.0}) == []


class FakeTrainer:
    def __init__(self, storage):
        self.storage, self.iter = storage, 0


def run_hook(steps, start=0, **kw):
    """Warnings of a LossScaleHook over ``steps`` (one dict of loss scalars per iteration)."""
    hook = LossScaleHook(**kw)
    with EventStorage(start) as storage, Records("gkd_d2.loss_scale") as records:
        hook.trainer = FakeTrainer(storage)
        hook.trainer.iter = start
        hook.before_train()
        for i, losses in enumerate(steps, start):
            hook.trainer.iter = storage.iter = i
            storage.put_scalars(cur_iter=i, **losses)
            hook.after_step()
    return records.messages


def test_loss_scale_warns_once_naming_the_term_and_ratio():
    ok = {"loss_cls": 1.0, "loss_box_reg": 1.0, "loss_kd_feature": 19.0}
    bad = {"loss_cls": 1.0, "loss_box_reg": 1.0, "loss_kd_feature": 2e7, "loss_kd_global": 1.0}
    warnings = run_hook([ok, ok, bad, bad, bad])
    assert warnings == [
        "Loss scale at iteration 2: loss_kd_feature = 2e+07 is 1e+07x the sum of the detection losses (2 = "
        "loss_box_reg + loss_cls), more than 10x. The teacher may not match the student (random or other-task "
        "weights: DISTILL.TEACHER.WEIGHTS), or the term's weight is too large for this pair: lower it "
        "(DISTILL.FEATURE options; docs/tuning.md). This warning is given once."
    ]
    # only the first iterations of the run are checked (here 2, from a resumed run's start)
    assert run_hook([ok, ok, bad], start=100, iterations=2) == []
    assert len(run_hook([ok, bad], start=100, iterations=2)) == 1
