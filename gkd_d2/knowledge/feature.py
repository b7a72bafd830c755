"""Local feature knowledge (paper Eq. 7): decoupled foreground/background imitation.

Per FPN level l, an adaptation ``A_l`` (3x3 conv D_S -> D_T + ReLU; the kernel size is
``DISTILL.FEATURE.ADAPTER_KERNEL``) maps the student map to the
teacher's width; with ``E = (F_T - A_l(F_S))^2`` per element and the foreground mask ``M_l``
(largest robust weight of the GT boxes assigned to l covering a cell) broadcast over the
channels::

    L_fg = sum(M * E) / max(1, 2 sum M)
    L_bg = sum((1 - [M > 0]) * E) / max(1, 2 sum(1 - [M > 0]))
    L_feat = mean_l (gamma_fg L_fg + gamma_bg L_bg)

Both sums run over the broadcast (B, C, H, W) tensors, so the loss is a masked mean squared
error per element (divided by 2); it is computed as the per-cell mean over channels.
"""
from typing import Dict

import torch
from torch import nn

from .base import KnowledgeTerm, check_weight, register_knowledge
from .masks import weighted_box_mask


def build_adapters(spec, kernel_size: int, relu: bool, levels=None) -> nn.ModuleDict:
    """One conv per level (default: every imitated level), student width -> teacher width."""
    adapters = nn.ModuleDict()
    for name in spec.feature_levels if levels is None else levels:
        conv = nn.Conv2d(
            spec.student_shapes[name].channels,
            spec.teacher_shapes[name].channels,
            kernel_size,
            padding=kernel_size // 2,
        )
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        adapters[name] = nn.Sequential(conv, nn.ReLU()) if relu else conv
    return adapters


def adapter_kernel(value) -> int:
    """DISTILL.FEATURE.ADAPTER_KERNEL: an odd positive int, so the adapter keeps the map size."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(
            f"DISTILL.FEATURE.ADAPTER_KERNEL={value!r}: the adapter's kernel size must be an odd "
            "positive integer (3 as in the paper, or 1), so that it keeps the feature map's size."
        )
    return value


def decoupled_feature_loss(
    student: torch.Tensor, teacher: torch.Tensor, fg_mask: torch.Tensor, gamma_fg: float, gamma_bg: float
) -> torch.Tensor:
    """gamma_fg L_fg + gamma_bg L_bg for one level.

    student (adapted), teacher: (B, D, H, W); fg_mask (B, H, W) with values in [0, 1].
    """
    err = (teacher - student).pow(2).mean(dim=1)  # (B, H, W): sum over C / (C * cells)
    bg_mask = (fg_mask <= 0).to(err.dtype)
    fg = (fg_mask * err).sum() / (2 * fg_mask.sum()).clamp(min=1)
    bg = (bg_mask * err).sum() / (2 * bg_mask.sum()).clamp(min=1)
    return gamma_fg * fg + gamma_bg * bg


def level_masks(batch, levels, instance_levels, weights) -> Dict[str, torch.Tensor]:
    """Foreground mask of every imitated level from the GT boxes assigned to it."""
    gt = batch.gt
    masks = {}
    for name in levels:
        feat = batch.teacher_features[name]
        if name in instance_levels:
            on_level = gt.levels == instance_levels.index(name)
        else:  # e.g. P6 of Faster R-CNN: no GT is ever assigned there, background only
            on_level = torch.zeros_like(gt.levels, dtype=torch.bool)
        masks[name] = weighted_box_mask(
            gt.boxes[on_level],
            gt.image_index[on_level],
            weights[on_level],
            batch.feature_strides[name],
            feat.shape[0],
            feat.shape[2],
            feat.shape[3],
        )
    return masks


@register_knowledge("feature")
class FeatureKnowledge(KnowledgeTerm):
    """``feature``: Eq. 7, foreground weighted by the robust weights (1 without prototypes)."""

    def __init__(self, cfg, spec):
        super().__init__()
        c = cfg.DISTILL.FEATURE
        self.weight = check_weight(c.WEIGHT, "DISTILL.FEATURE.WEIGHT")
        self.gamma_fg = check_weight(c.GAMMA_FG, "DISTILL.FEATURE.GAMMA_FG")
        self.gamma_bg = check_weight(c.GAMMA_BG, "DISTILL.FEATURE.GAMMA_BG")
        self.levels = list(spec.feature_levels)
        self.instance_levels = list(spec.instance_levels)
        self.use_robust_weights = bool(cfg.DISTILL.ROBUST_WEIGHTS)
        self.adapters = build_adapters(spec, kernel_size=adapter_kernel(c.ADAPTER_KERNEL), relu=True)

    def forward(self, batch, prototypes=None):
        weights = batch.gt_weights if self.use_robust_weights else torch.ones_like(batch.gt_weights)
        masks = level_masks(batch, self.levels, self.instance_levels, weights)
        losses = [
            decoupled_feature_loss(
                self.adapters[name](batch.student_features[name]),
                batch.teacher_features[name],
                masks[name],
                self.gamma_fg,
                self.gamma_bg,
            )
            for name in self.levels
        ]
        return {"loss_kd_feature": self.weight * torch.stack(losses).mean()}
