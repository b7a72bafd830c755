"""DeFeat (Guo et al. 2021): decoupled foreground/background features and responses.

Features: Eq. 7's decoupled loss (``feature.decoupled_feature_loss``) with binary GT masks, or
robust-weighted masks with prototypes ("DeFeat +prototypes", ``DISTILL.ROBUST_WEIGHTS``), through
its own 3x3 adaptation layers.

Responses, each part averaged over its own samples:

- Faster R-CNN: ``T^2 KL(p_T || p_S)`` over foreground RoIs (weighted by robust weights) and
  over background RoIs, separately;
- RetinaNet, FCOS: the sigmoid response of ``response.py`` over foreground anchors / locations
  (normalised by their number) and background ones (normalised by theirs), separately.
"""
import torch
from detectron2.config import configurable

from .adapters import build_adapters
from .base import KnowledgeTerm, check_temperature, check_weight, register_knowledge
from .losses import anchor_binary_kl, decoupled_feature_losses, roi_kl, weighted_anchor_sum


@register_knowledge("defeat")
class DeFeat(KnowledgeTerm):
    needs_response = True

    @configurable
    def __init__(
        self,
        *,
        spec,
        feat_weight=1.0,
        gamma_fg=1.0,
        gamma_bg=4.0,
        resp_fg_weight=1.0,
        resp_bg_weight=1.0,
        temperature=2.0,
        use_robust_weights=True,
    ):
        super().__init__()
        self.feat_weight, self.gamma_fg, self.gamma_bg = feat_weight, gamma_fg, gamma_bg
        self.fg_weight, self.bg_weight = resp_fg_weight, resp_bg_weight
        self.temperature = temperature
        self.use_robust_weights = use_robust_weights
        self.num_classes = spec.num_classes
        self.levels = list(spec.feature_levels)
        self.instance_levels = list(spec.instance_levels)
        self.adapters = build_adapters(spec, kernel_size=3, relu=False)

    @classmethod
    def from_config(cls, cfg, spec):
        c = cfg.DISTILL.DEFEAT
        return {
            "spec": spec,
            "feat_weight": check_weight(c.FEAT_WEIGHT, "DISTILL.DEFEAT.FEAT_WEIGHT"),
            "gamma_fg": check_weight(c.GAMMA_FG, "DISTILL.DEFEAT.GAMMA_FG"),
            "gamma_bg": check_weight(c.GAMMA_BG, "DISTILL.DEFEAT.GAMMA_BG"),
            "resp_fg_weight": check_weight(c.RESP_FG_WEIGHT, "DISTILL.DEFEAT.RESP_FG_WEIGHT"),
            "resp_bg_weight": check_weight(c.RESP_BG_WEIGHT, "DISTILL.DEFEAT.RESP_BG_WEIGHT"),
            "temperature": check_temperature(c.TEMPERATURE, "DISTILL.DEFEAT.TEMPERATURE"),
            "use_robust_weights": bool(cfg.DISTILL.ROBUST_WEIGHTS),
        }

    def forward(self, batch, prototypes=None):
        weights = batch.gt_weights if self.use_robust_weights else torch.ones_like(batch.gt_weights)
        feat = decoupled_feature_losses(
            self.adapters, batch, self.levels, self.instance_levels, weights, self.gamma_fg, self.gamma_bg
        ).mean()
        fg_loss, bg_loss = self._responses(batch.response)
        return {
            "loss_kd_defeat_feat": self.feat_weight * feat,
            "loss_kd_defeat_resp_fg": self.fg_weight * fg_loss,
            "loss_kd_defeat_resp_bg": self.bg_weight * bg_loss,
        }

    def _responses(self, r):
        t = self.temperature
        w = r.weights if self.use_robust_weights else torch.ones_like(r.weights)
        if r.per_roi:
            fg = (r.gt_classes >= 0) & (r.gt_classes < self.num_classes)
            fg_loss = roi_kl(r.student_logits[fg], r.teacher_logits[fg], w[fg], t)
            bg_loss = roi_kl(r.student_logits[~fg], r.teacher_logits[~fg], torch.ones_like(w[~fg]), t)
            return fg_loss, bg_loss
        fg = (r.labels >= 0) & (r.labels < self.num_classes)
        bg = r.labels == self.num_classes
        per_anchor = anchor_binary_kl(r.student_logits, r.teacher_logits, t)  # once for both parts
        fg_loss = weighted_anchor_sum(per_anchor, w, fg, float(fg.sum()))
        bg_loss = weighted_anchor_sum(per_anchor, torch.ones_like(w), bg, float(bg.sum()))
        return fg_loss, bg_loss
