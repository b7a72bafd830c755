"""Hint learning over whole feature maps: FitNet and the hint term of Chen et al. 2017.

``L_hint = mean over levels of mean_{b,c,h,w} |A(F_S) - F_T|^p`` with p = 2 (L2) or 1 (L1);
``A`` is a 1x1 conv (Chen et al.: used even when the widths already match) or a 3x3 conv
regressor (FitNet).
"""
import torch
from detectron2.config import configurable

from .adapters import build_adapters
from .base import KnowledgeTerm, check_weight, register_knowledge
from .losses import hint_loss


def hint_levels(option_value, spec, option):
    """The levels of a hint term: ``option_value`` or every imitated level; each must be output
    by both backbones."""
    levels = list(option_value) or list(spec.feature_levels)
    missing = [f for f in levels if f not in spec.student_shapes or f not in spec.teacher_shapes]
    if missing:
        raise ValueError(f"{option}: levels {missing} are not output by both backbones.")
    return levels


class HintTerm(KnowledgeTerm):
    """Hints on whole maps of ``levels`` through one ``kernel_size`` conv per level."""

    loss_key = "loss_kd_hint"
    kernel_size = 1

    @configurable
    def __init__(self, *, spec, levels, weight=1.0, kind="l2"):
        super().__init__()
        if kind not in ("l1", "l2"):
            raise ValueError(f"DISTILL.CHEN.HINT_LOSS='{kind}': use 'l1' or 'l2'.")
        self.weight, self.kind, self.levels = weight, kind, list(levels)
        self.adapters = build_adapters(spec, kernel_size=self.kernel_size, relu=False, levels=self.levels)

    def forward(self, batch, prototypes=None):
        losses = [
            hint_loss(self.adapters[f](batch.student_features[f]), batch.teacher_features[f], self.kind)
            for f in self.levels
        ]
        return {self.loss_key: self.weight * torch.stack(losses).mean()}


@register_knowledge("chen_hint")
class ChenHint(HintTerm):
    """``chen_hint``: Chen et al.'s hint learning with a 1x1 adaptation layer."""

    loss_key = "loss_kd_chen_hint"
    kernel_size = 1

    @classmethod
    def from_config(cls, cfg, spec):
        c = cfg.DISTILL.CHEN
        return {
            "spec": spec,
            "levels": hint_levels(c.HINT_IN_FEATURES, spec, "DISTILL.CHEN.HINT_IN_FEATURES"),
            "weight": check_weight(c.HINT_WEIGHT, "DISTILL.CHEN.HINT_WEIGHT"),
            "kind": c.HINT_LOSS,
        }


@register_knowledge("fitnet")
class FitNet(HintTerm):
    """``fitnet``: L2 hints on full feature maps through a 3x3 conv regressor."""

    loss_key = "loss_kd_fitnet"
    kernel_size = 3

    @classmethod
    def from_config(cls, cfg, spec):
        c = cfg.DISTILL.FITNET
        return {
            "spec": spec,
            "levels": hint_levels(c.IN_FEATURES, spec, "DISTILL.FITNET.IN_FEATURES"),
            "weight": check_weight(c.WEIGHT, "DISTILL.FITNET.WEIGHT"),
        }
