"""Hint learning over whole feature maps: FitNet and the hint term of Chen et al. 2017.

``L_hint = mean over levels of mean_{b,c,h,w} |A(F_S) - F_T|^p`` with p = 2 (L2) or 1 (L1);
``A`` is a 1x1 conv (Chen et al.: used even when the widths already match) or a 3x3 conv
regressor (FitNet).
"""
import torch
import torch.nn.functional as F

from .base import KnowledgeTerm, check_weight, register_knowledge
from .feature import build_adapters


def hint_loss(adapted: torch.Tensor, teacher: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Mean squared (``l2``) or absolute (``l1``) error per element. Shapes (B, D_T, H, W)."""
    if kind == "l1":
        return F.l1_loss(adapted, teacher)
    return F.mse_loss(adapted, teacher)


def _levels(option_value, spec, option):
    levels = list(option_value) or list(spec.feature_levels)
    missing = [f for f in levels if f not in spec.student_shapes or f not in spec.teacher_shapes]
    if missing:
        raise ValueError(f"{option}: levels {missing} are not output by both backbones.")
    return levels


class _HintTerm(KnowledgeTerm):
    kernel_size = 1
    kind = "l2"

    def forward(self, batch, prototypes=None):
        losses = [
            hint_loss(self.adapters[f](batch.student_features[f]), batch.teacher_features[f], self.kind)
            for f in self.levels
        ]
        return {self.loss_key: self.weight * torch.stack(losses).mean()}


@register_knowledge("chen_hint")
class ChenHint(_HintTerm):
    """``chen_hint``: Chen et al.'s hint learning with a 1x1 adaptation layer."""

    loss_key = "loss_kd_chen_hint"

    def __init__(self, cfg, spec):
        super().__init__()
        c = cfg.DISTILL.CHEN
        self.weight = check_weight(c.HINT_WEIGHT, "DISTILL.CHEN.HINT_WEIGHT")
        if c.HINT_LOSS not in ("l1", "l2"):
            raise ValueError(f"DISTILL.CHEN.HINT_LOSS='{c.HINT_LOSS}': use 'l1' or 'l2'.")
        self.kind = c.HINT_LOSS
        self.levels = _levels(c.HINT_IN_FEATURES, spec, "DISTILL.CHEN.HINT_IN_FEATURES")
        self.adapters = build_adapters(spec, kernel_size=1, relu=False, levels=self.levels)


@register_knowledge("fitnet")
class FitNet(_HintTerm):
    """``fitnet``: L2 hints on full feature maps through a 3x3 conv regressor."""

    loss_key = "loss_kd_fitnet"

    def __init__(self, cfg, spec):
        super().__init__()
        c = cfg.DISTILL.FITNET
        self.weight = check_weight(c.WEIGHT, "DISTILL.FITNET.WEIGHT")
        self.levels = _levels(c.IN_FEATURES, spec, "DISTILL.FITNET.IN_FEATURES")
        self.adapters = build_adapters(spec, kernel_size=3, relu=False, levels=self.levels)
