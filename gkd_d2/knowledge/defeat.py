"""DeFeat (Guo et al. 2021): decoupled foreground/background features and responses.

Features: Eq. 7's decoupled loss (``feature.decoupled_feature_loss``) with binary GT masks, or
robust-weighted masks with prototypes ("DeFeat +prototypes", ``DISTILL.ROBUST_WEIGHTS``), through
its own 3x3 adaptation layers.

Responses, each part averaged over its own samples:

- Faster R-CNN: ``T^2 KL(p_T || p_S)`` over foreground RoIs (weighted by robust weights) and
  over background RoIs, separately;
- RetinaNet: the sigmoid response of ``response.py`` over foreground anchors (normalised by
  their number) and background anchors (normalised by theirs), separately.
"""
import torch

from .base import KnowledgeTerm, check_weight, register_knowledge
from .feature import build_adapters, decoupled_feature_loss, level_masks
from .response import anchor_binary_kl, roi_kl, weighted_anchor_sum


@register_knowledge("defeat")
class DeFeat(KnowledgeTerm):
    needs_response = True

    def __init__(self, cfg, spec):
        super().__init__()
        c = cfg.DISTILL.DEFEAT
        self.feat_weight = check_weight(c.FEAT_WEIGHT, "DISTILL.DEFEAT.FEAT_WEIGHT")
        self.gamma_fg = check_weight(c.GAMMA_FG, "DISTILL.DEFEAT.GAMMA_FG")
        self.gamma_bg = check_weight(c.GAMMA_BG, "DISTILL.DEFEAT.GAMMA_BG")
        self.fg_weight = check_weight(c.RESP_FG_WEIGHT, "DISTILL.DEFEAT.RESP_FG_WEIGHT")
        self.bg_weight = check_weight(c.RESP_BG_WEIGHT, "DISTILL.DEFEAT.RESP_BG_WEIGHT")
        self.temperature = float(c.TEMPERATURE)
        if not self.temperature > 0:
            raise ValueError(f"DISTILL.DEFEAT.TEMPERATURE={self.temperature} must be > 0.")
        self.use_robust_weights = bool(cfg.DISTILL.ROBUST_WEIGHTS)
        self.num_classes = spec.num_classes
        self.levels = list(spec.feature_levels)
        self.instance_levels = list(spec.instance_levels)
        self.adapters = build_adapters(spec, kernel_size=3, relu=False)

    def forward(self, batch, prototypes=None):
        weights = batch.gt_weights if self.use_robust_weights else torch.ones_like(batch.gt_weights)
        masks = level_masks(batch, self.levels, self.instance_levels, weights)
        feat = torch.stack(
            [
                decoupled_feature_loss(
                    self.adapters[f](batch.student_features[f]),
                    batch.teacher_features[f],
                    masks[f],
                    self.gamma_fg,
                    self.gamma_bg,
                )
                for f in self.levels
            ]
        ).mean()
        fg_loss, bg_loss = self._responses(batch)
        return {
            "loss_kd_defeat_feat": self.feat_weight * feat,
            "loss_kd_defeat_resp_fg": self.fg_weight * fg_loss,
            "loss_kd_defeat_resp_bg": self.bg_weight * bg_loss,
        }

    def _responses(self, batch):
        t = self.temperature
        if batch.rois is not None:
            r = batch.rois
            fg = (r.gt_classes >= 0) & (r.gt_classes < self.num_classes)
            w = r.weights if self.use_robust_weights else torch.ones_like(r.weights)
            fg_loss = roi_kl(r.student_logits[fg], r.teacher_logits[fg], w[fg], t)
            bg_loss = roi_kl(r.student_logits[~fg], r.teacher_logits[~fg], torch.ones_like(w[~fg]), t)
            return fg_loss, bg_loss
        a = batch.anchors
        fg = (a.labels >= 0) & (a.labels < self.num_classes)
        bg = a.labels == self.num_classes
        w = a.weights if self.use_robust_weights else torch.ones_like(a.weights)
        per_anchor = anchor_binary_kl(a.student_logits, a.teacher_logits, t)  # once for both parts
        fg_loss = weighted_anchor_sum(per_anchor, w, fg, float(fg.sum()))
        bg_loss = weighted_anchor_sum(per_anchor, torch.ones_like(w), bg, float(bg.sum()))
        return fg_loss, bg_loss
