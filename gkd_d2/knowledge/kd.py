"""Vanilla KD (Hinton et al. 2015) on the RoI class logits of Faster R-CNN.

``L_kd = mean_i omega_i T^2 KL(softmax(z_T,i / T) || softmax(z_S,i / T))`` over the RoIs the
student sampled; omega = 1, or the robust weights of Eq. 8 with prototypes ("KD +prototypes",
Table 4 of the paper; ``DISTILL.ROBUST_WEIGHTS``).
"""
import torch
from detectron2.config import configurable

from .base import KnowledgeTerm, check_temperature, check_weight, register_knowledge
from .losses import roi_kl


@register_knowledge("kd")
class VanillaKD(KnowledgeTerm):
    needs_response = True
    students = ("rcnn",)
    teachers = ("rcnn", "cascade")

    @configurable
    def __init__(self, *, weight=1.0, temperature=2.0, use_robust_weights=True):
        super().__init__()
        self.weight, self.temperature, self.use_robust_weights = weight, temperature, use_robust_weights

    @classmethod
    def from_config(cls, cfg, spec):
        return {
            "weight": check_weight(cfg.DISTILL.KD.WEIGHT, "DISTILL.KD.WEIGHT"),
            "temperature": check_temperature(cfg.DISTILL.KD.TEMPERATURE, "DISTILL.KD.TEMPERATURE"),
            "use_robust_weights": bool(cfg.DISTILL.ROBUST_WEIGHTS),
        }

    def forward(self, batch, prototypes=None):
        r = batch.response
        w = r.weights if self.use_robust_weights else torch.ones_like(r.weights)
        return {"loss_kd_kd": self.weight * roi_kl(r.student_logits, r.teacher_logits, w, self.temperature)}
