"""Chen et al. 2017: class-weighted soft cross-entropy and teacher-bounded regression on RoIs.

Classification, ``L_cls = mu L_hard(P_S, y) + (1 - mu) L_soft(P_S, P_T)`` with
``L_soft = - sum_c w_c P_T,c log P_S,c`` (P softened by temperature T, ``w_background = 1.5``,
``w_c = 1`` otherwise), averaged over the sampled RoIs. Detectron2's own ``loss_cls`` already is
L_hard with weight 1, so ``chen_cls`` adds ``(1 - mu) / mu * L_soft``: the total is L_cls / mu
(mu = 0.5: L_hard + L_soft).

Regression with teacher bounds, on foreground RoIs with the deltas of their GT class and the
targets y of the student's box coder::

    L_b = ||R_S - y||^2   if ||R_S - y||^2 + m > ||R_T - y||^2   else 0
    L_reg = smoothL1(R_S, y) + nu L_b

The smooth-L1 part is Detectron2's ``loss_box_reg``; ``chen_reg`` adds ``nu L_b``, summed over
foreground RoIs and divided by the number of sampled RoIs (Detectron2's normalisation).
"""
import torch
from detectron2.config import configurable
from detectron2.modeling.box_regression import Box2BoxTransform

from .base import KnowledgeTerm, check_temperature, check_weight, register_knowledge
from .losses import bounded_regression, class_deltas, weighted_soft_cross_entropy


@register_knowledge("chen_cls")
class ChenClassification(KnowledgeTerm):
    """``chen_cls``: adds ``(1 - mu) / mu * L_soft`` to Detectron2's ``loss_cls``."""

    needs_response = True
    students = ("rcnn",)
    teachers = ("rcnn", "cascade")

    @configurable
    def __init__(self, *, num_classes, weight=1.0, mu=0.5, bg_weight=1.5, temperature=1.0):
        super().__init__()
        if not 0 < mu <= 1:
            raise ValueError(f"DISTILL.CHEN.MU={mu} must be in (0, 1].")
        self.weight = weight
        self.soft_scale = (1 - mu) / mu
        self.temperature = temperature
        w = torch.ones(num_classes + 1)
        w[-1] = bg_weight
        self.register_buffer("class_weights", w, persistent=False)

    @classmethod
    def from_config(cls, cfg, spec):
        c = cfg.DISTILL.CHEN
        return {
            "num_classes": spec.num_classes,
            "weight": check_weight(c.CLS_WEIGHT, "DISTILL.CHEN.CLS_WEIGHT"),
            "mu": c.MU,
            "bg_weight": check_weight(c.BG_WEIGHT, "DISTILL.CHEN.BG_WEIGHT"),
            "temperature": check_temperature(c.TEMPERATURE, "DISTILL.CHEN.TEMPERATURE"),
        }

    def forward(self, batch, prototypes=None):
        r = batch.response
        soft = weighted_soft_cross_entropy(
            r.student_logits, r.teacher_logits, self.class_weights, self.temperature
        )
        return {"loss_kd_chen_cls": self.weight * self.soft_scale * soft}


@register_knowledge("chen_reg")
class ChenRegression(KnowledgeTerm):
    """``chen_reg``: adds ``nu L_b`` to Detectron2's ``loss_box_reg``."""

    needs_response = True
    students = ("rcnn",)
    teachers = ("rcnn", "cascade")

    @configurable
    def __init__(self, *, num_classes, box_reg_weights, weight=0.5, margin=0.0):
        super().__init__()
        self.weight = weight
        self.margin = float(margin)
        self.num_classes = num_classes
        self.box_coder = Box2BoxTransform(weights=box_reg_weights)

    @classmethod
    def from_config(cls, cfg, spec):
        c = cfg.DISTILL.CHEN
        return {
            "num_classes": spec.num_classes,
            "box_reg_weights": cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS,
            "weight": check_weight(c.REG_WEIGHT, "DISTILL.CHEN.REG_WEIGHT"),
            "margin": c.MARGIN,
        }

    def forward(self, batch, prototypes=None):
        r = batch.response
        fg = (r.gt_classes >= 0) & (r.gt_classes < self.num_classes)
        cls = r.gt_classes[fg]
        targets = self.box_coder.get_deltas(r.proposal_boxes[fg], r.gt_boxes[fg])
        l_b = bounded_regression(
            class_deltas(r.student_deltas[fg], cls), class_deltas(r.teacher_deltas[fg], cls), targets, self.margin
        )
        loss = l_b.sum() / max(1, r.gt_classes.shape[0]) + 0 * r.student_deltas.sum()
        return {"loss_kd_chen_reg": self.weight * loss}
