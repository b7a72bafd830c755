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
import torch.nn.functional as F
from detectron2.modeling.box_regression import Box2BoxTransform

from .base import KnowledgeTerm, check_weight, register_knowledge


def weighted_soft_cross_entropy(student_logits, teacher_logits, class_weights, temperature):
    """mean_i - sum_c w_c P_T,ic log P_S,ic. logits (R, C+1), class_weights (C+1,)."""
    t = temperature
    p_t = F.softmax(teacher_logits / t, dim=1)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    return -(class_weights * p_t * log_p_s).sum(dim=1).sum() / max(1, student_logits.shape[0])


def class_deltas(deltas: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(R, 4) deltas of each RoI's class from (R, 4C) class-specific or (R, 4) agnostic deltas."""
    if deltas.shape[1] == 4:
        return deltas
    return deltas.view(deltas.shape[0], -1, 4)[torch.arange(len(classes), device=deltas.device), classes]


def bounded_regression(student_deltas, teacher_deltas, targets, margin):
    """(F,) per-RoI L_b: ||R_S - y||^2 where it is not below ||R_T - y||^2 - m, else 0."""
    err_s = (student_deltas - targets).pow(2).sum(dim=1)
    err_t = (teacher_deltas.detach() - targets).pow(2).sum(dim=1)
    return torch.where(err_s + margin > err_t, err_s, torch.zeros_like(err_s))


@register_knowledge("chen_cls")
class ChenClassification(KnowledgeTerm):
    needs_response = True
    students = ("rcnn",)
    teachers = ("rcnn", "cascade")

    def __init__(self, cfg, spec):
        super().__init__()
        c = cfg.DISTILL.CHEN
        self.weight = check_weight(c.CLS_WEIGHT, "DISTILL.CHEN.CLS_WEIGHT")
        if not 0 < c.MU <= 1:
            raise ValueError(f"DISTILL.CHEN.MU={c.MU} must be in (0, 1].")
        if not c.TEMPERATURE > 0:
            raise ValueError(f"DISTILL.CHEN.TEMPERATURE={c.TEMPERATURE} must be > 0.")
        self.soft_scale = (1 - c.MU) / c.MU
        self.temperature = float(c.TEMPERATURE)
        w = torch.ones(spec.num_classes + 1)
        w[-1] = check_weight(c.BG_WEIGHT, "DISTILL.CHEN.BG_WEIGHT")
        self.register_buffer("class_weights", w, persistent=False)

    def forward(self, batch, prototypes=None):
        r = batch.rois
        soft = weighted_soft_cross_entropy(
            r.student_logits, r.teacher_logits, self.class_weights, self.temperature
        )
        return {"loss_kd_chen_cls": self.weight * self.soft_scale * soft}


@register_knowledge("chen_reg")
class ChenRegression(KnowledgeTerm):
    needs_response = True
    students = ("rcnn",)
    teachers = ("rcnn", "cascade")

    def __init__(self, cfg, spec):
        super().__init__()
        c = cfg.DISTILL.CHEN
        self.weight = check_weight(c.REG_WEIGHT, "DISTILL.CHEN.REG_WEIGHT")
        self.margin = float(c.MARGIN)
        self.num_classes = spec.num_classes
        self.box_coder = Box2BoxTransform(weights=cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS)

    def forward(self, batch, prototypes=None):
        r = batch.rois
        fg = (r.gt_classes >= 0) & (r.gt_classes < self.num_classes)
        cls = r.gt_classes[fg]
        targets = self.box_coder.get_deltas(r.proposal_boxes[fg], r.gt_boxes[fg])
        l_b = bounded_regression(
            class_deltas(r.student_deltas[fg], cls), class_deltas(r.teacher_deltas[fg], cls), targets, self.margin
        )
        loss = l_b.sum() / max(1, r.gt_classes.shape[0]) + 0 * r.student_deltas.sum()
        return {"loss_kd_chen_reg": self.weight * loss}
