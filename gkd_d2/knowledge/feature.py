"""``feature``: local feature knowledge (paper Eq. 7), decoupled foreground/background imitation.

Per FPN level l, an adaptation ``A_l`` (conv D_S -> D_T, kernel ``DISTILL.FEATURE.ADAPTER_KERNEL``;
+ ReLU with ``ADAPTER_RELU``, the paper's text; PyTorch's init as the release, or Kaiming with
``ADAPTER_INIT``) maps the student map to the teacher's width; with
``E = (F_T - A_l(F_S))^2`` per element and the foreground mask ``M_l`` (largest robust weight of
the GT boxes assigned to l covering a cell) broadcast over the channels::

    L_fg = sum(M * E) / max(1, 2 sum M)
    L_bg = sum((1 - [M > 0]) * E) / max(1, 2 sum(1 - [M > 0]))
    L_feat = mean_l or sum_l (gamma_fg L_fg + gamma_bg L_bg)

The levels are averaged for two-stage students and summed for dense ones, as the release does
(``DISTILL.FEATURE.LEVEL_REDUCTION`` overrides).

Formulas: :func:`~gkd_d2.knowledge.losses.decoupled_feature_losses` (per level
:func:`~gkd_d2.knowledge.losses.decoupled_feature_loss`, masks :func:`~gkd_d2.knowledge.losses.level_masks`).
"""
import torch
from detectron2.config import configurable

from .adapters import adapter_init, adapter_kernel, build_adapters
from .base import KnowledgeTerm, check_weight, register_knowledge
from .losses import decoupled_feature_losses


@register_knowledge("feature")
class FeatureKnowledge(KnowledgeTerm):
    """Eq. 7, foreground weighted by the robust weights (1 without prototypes)."""

    @configurable
    def __init__(
        self,
        *,
        spec,
        weight,
        gamma_fg,
        gamma_bg,
        adapter_kernel_size=3,
        adapter_relu=False,
        adapter_init="default",
        level_reduction="mean",
        use_robust_weights=True,
    ):
        super().__init__()
        if level_reduction not in ("mean", "sum"):
            raise ValueError(
                f"DISTILL.FEATURE.LEVEL_REDUCTION={level_reduction!r}: choose 'mean' or 'sum' (or '')."
            )
        self.weight, self.gamma_fg, self.gamma_bg = weight, gamma_fg, gamma_bg
        self.levels = list(spec.feature_levels)
        self.instance_levels = list(spec.instance_levels)
        self.use_robust_weights = use_robust_weights
        self.level_reduction = level_reduction
        self.adapters = build_adapters(spec, kernel_size=adapter_kernel_size, relu=adapter_relu, init=adapter_init)

    @classmethod
    def from_config(cls, cfg, spec):
        c = cfg.DISTILL.FEATURE
        return {
            "spec": spec,
            "weight": check_weight(c.WEIGHT, "DISTILL.FEATURE.WEIGHT"),
            "gamma_fg": check_weight(c.GAMMA_FG, "DISTILL.FEATURE.GAMMA_FG"),
            "gamma_bg": check_weight(c.GAMMA_BG, "DISTILL.FEATURE.GAMMA_BG"),
            "adapter_kernel_size": adapter_kernel(c.ADAPTER_KERNEL),
            "adapter_relu": bool(c.ADAPTER_RELU),
            "adapter_init": adapter_init(c.ADAPTER_INIT),
            # the release: mean over levels for two-stage students, sum for dense ones
            "level_reduction": c.LEVEL_REDUCTION or ("mean" if spec.student_type == "rcnn" else "sum"),
            "use_robust_weights": bool(cfg.DISTILL.ROBUST_WEIGHTS),
        }

    def forward(self, batch, prototypes=None):
        weights = batch.gt_weights if self.use_robust_weights else torch.ones_like(batch.gt_weights)
        losses = decoupled_feature_losses(
            self.adapters, batch, self.levels, self.instance_levels, weights, self.gamma_fg, self.gamma_bg
        )
        return {"loss_kd_feature": self.weight * (losses.mean() if self.level_reduction == "mean" else losses.sum())}
