"""A warning when a knowledge loss dwarfs the detection losses at the start of training.

A teacher with random weights, one trained on another task, or a loss weight far too large for
the pair gives ``loss_kd_*`` values thousands (or 10^7) times the student's own losses; training
then follows the teacher's noise and the detection losses do not move. The rule of thumb
(``docs/tuning.md``): a knowledge term more than 10x the sum of the detection
losses is a sign to lower its weight. :class:`LossScaleHook` checks it over the first iterations
and warns once per run, naming the term and the ratio.
"""
import logging
from typing import Dict, List, Tuple

from detectron2.engine import HookBase

__all__ = ["LossScaleHook", "loss_scale_outliers"]

logger = logging.getLogger(__name__)

KD_PREFIX = "loss_kd_"


def loss_scale_outliers(losses: Dict[str, float], max_ratio: float = 10.0) -> List[Tuple[str, float, float]]:
    """``[(name, value, ratio), ...]`` of the knowledge losses (``loss_kd_*``) of ``losses`` (one
    iteration's ``loss_*`` scalars) more than ``max_ratio`` times the sum of the detection losses
    (every other ``loss_*``), largest ratio first; empty when that sum is not positive."""
    detection = sum(v for k, v in losses.items() if k.startswith("loss_") and not k.startswith(KD_PREFIX))
    if not detection > 0:
        return []
    out = [(k, v, v / detection) for k, v in losses.items() if k.startswith(KD_PREFIX) and v > max_ratio * detection]
    return sorted(out, key=lambda x: -x[2])


def _weight_options(name: str) -> str:
    """The config node of a knowledge loss's weight, e.g. loss_kd_feature -> DISTILL.FEATURE."""
    return "DISTILL." + name[len(KD_PREFIX):].split("_")[0].upper()


class LossScaleHook(HookBase):
    """Over the first ``iterations`` steps of the run, compare each ``loss_kd_*`` with the sum of
    the detection losses (the scalars the trainer puts in the event storage, averaged over
    processes: the main process checks) and warn once when one is more than ``max_ratio`` times
    larger. Nothing else changes."""

    def __init__(self, max_ratio: float = 10.0, iterations: int = 20):
        self.max_ratio = float(max_ratio)
        self.iterations = int(iterations)
        self.warned = False
        self._first = None

    def before_train(self):
        self._first = self.trainer.iter

    def after_step(self):
        it = self.trainer.iter
        if self.warned or self._first is None or it >= self._first + self.iterations:
            return
        losses = {k: v for k, (v, i) in self.trainer.storage.latest().items() if i == it and k.startswith("loss_")}
        found = loss_scale_outliers(losses, self.max_ratio)
        if not found:
            return
        self.warned = True
        detection = sorted(k for k in losses if not k.startswith(KD_PREFIX))
        total = sum(losses[k] for k in detection)
        terms = "; ".join(f"{k} = {v:.4g} is {r:.3g}x" for k, v, r in found)
        logger.warning(
            "Loss scale at iteration %d: %s the sum of the detection losses (%.4g = %s), more than "
            "%gx. The teacher may not match the student (random or other-task weights: "
            "DISTILL.TEACHER.WEIGHTS), or the term's weight is too large for this pair: lower it "
            "(%s options; docs/tuning.md). This warning is given once.",
            it, terms, total, " + ".join(detection), self.max_ratio,
            ", ".join(dict.fromkeys(_weight_options(k) for k, _, _ in found)),
        )
