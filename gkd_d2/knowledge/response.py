"""Local response knowledge: the teacher's classification outputs as soft targets.

Faster R-CNN (``roi_kl``): on the RoIs the student's ROI head sampled, both models' box pooler
+ box head + predictor; per RoI ``KL_i = T^2 KL(softmax(z_T/T) || softmax(z_S/T))`` over the
C+1 classes; ``L_resp = mean_i omega_i KL_i``.

RetinaNet (``sigmoid_response``): per anchor and class, binary cross-entropy of
``sigmoid(z_S/T)`` against ``sigmoid(z_T/T)`` times ``T^2``, weighted by the robust weight of the
anchor's matched GT, over non-ignored anchors, divided by the focal loss's normaliser. The
teacher's own entropy is subtracted (a constant: same gradient), so the loss is a binary KL
divergence and is exactly 0 when student and teacher agree.
"""
import torch
import torch.nn.functional as F

from .base import KnowledgeTerm, check_weight, register_knowledge


def roi_kl(student_logits, teacher_logits, weights, temperature: float) -> torch.Tensor:
    """mean_i w_i T^2 KL(p_T,i || p_S,i). logits (R, C+1), weights (R,). 0 when R == 0."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * t * t  # (R,)
    return (weights * kl).sum() / max(1, kl.shape[0])


def sigmoid_response(student_logits, teacher_logits, weights, valid, normalizer, temperature):
    """sum over valid anchors, classes of w T^2 [BCE(s/T, p_T) - H(p_T)] / normalizer.

    logits (B, A, C); weights, valid (B, A).
    """
    t = temperature
    target = torch.sigmoid(teacher_logits / t)
    bce = F.binary_cross_entropy_with_logits(student_logits / t, target, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher_logits / t, target, reduction="none")
    per_anchor = (bce - entropy).sum(dim=-1) * t * t  # (B, A)
    return (per_anchor * weights * valid.to(per_anchor.dtype)).sum() / max(1.0, normalizer)


@register_knowledge("response")
class ResponseKnowledge(KnowledgeTerm):
    """``response``: RoI KL (Faster R-CNN) or anchor sigmoid distillation (RetinaNet),
    weighted per RoI / anchor by the robust weights of Eq. 8 (1 without prototypes)."""

    needs_response = True
    teachers = ("rcnn", "cascade", "retinanet")

    def __init__(self, cfg, spec):
        super().__init__()
        self.weight = check_weight(cfg.DISTILL.RESPONSE.WEIGHT, "DISTILL.RESPONSE.WEIGHT")
        self.temperature = float(cfg.DISTILL.RESPONSE.TEMPERATURE)
        if not self.temperature > 0:
            raise ValueError(f"DISTILL.RESPONSE.TEMPERATURE={self.temperature} must be > 0.")
        self.use_robust_weights = bool(cfg.DISTILL.ROBUST_WEIGHTS)

    def forward(self, batch, prototypes=None):
        if batch.rois is not None:
            r = batch.rois
            w = r.weights if self.use_robust_weights else torch.ones_like(r.weights)
            loss = roi_kl(r.student_logits, r.teacher_logits, w, self.temperature)
        else:
            a = batch.anchors
            w = a.weights if self.use_robust_weights else torch.ones_like(a.weights)
            loss = sigmoid_response(
                a.student_logits, a.teacher_logits, w, a.labels >= 0, a.normalizer, self.temperature
            )
        return {"loss_kd_response": self.weight * loss}
