"""Local response knowledge: the teacher's classification outputs as soft targets.

Faster R-CNN (``roi_kl``): on the RoIs the student's ROI head sampled, both models' box pooler
+ box head + predictor; per RoI ``KL_i = T^2 KL(softmax(z_T/T) || softmax(z_S/T))`` over the
C+1 classes; ``L_resp = mean_i omega_i KL_i``.

RetinaNet (``sigmoid_response``): per anchor and class, binary cross-entropy of
``sigmoid(z_S/T)`` against ``sigmoid(z_T/T)`` times ``T^2``, weighted by the robust weight of the
anchor's matched GT, over non-ignored anchors, divided by the focal loss's normaliser. The
teacher's own entropy is subtracted (a constant: same gradient), so the loss is a binary KL
divergence and is exactly 0 when student and teacher agree. That per-anchor KL is one fused
autograd function (``anchor_binary_kl``): it runs over every anchor and class, as much work
as the focal loss itself.
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


def _logsigmoid_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """``x <- log(sigmoid(x))`` in place, as ``min(x, 0) - log(1 + exp(-|x|))``; ``scratch`` is
    a tensor of x's shape it may overwrite. Allocation-free (CPU ``log1p``, which
    ``F.logsigmoid`` uses, runs at a fifth of ``log``'s speed); absolute error below 1e-6."""
    torch.abs(x, out=scratch).neg_().exp_().add_(1.0).log_()
    return x.clamp_(max=0.0).sub_(scratch)


class _AnchorBinaryKL(torch.autograd.Function):
    """Per anchor: ``T^2 sum_c KL(Bernoulli(sigmoid(t_c/T)) || Bernoulli(sigmoid(s_c/T)))``.

    The same value as ``T^2 sum_c [BCE(s_c/T, p_c) - H(p_c)]``, computed as
    ``T^2 sum_c [log sig(y) - log sig(x) + (1 - sig(y)) (x - y)]`` with ``x = s/T``, ``y = t/T``,
    in four (B, A, C) buffers and in-place arithmetic: a RetinaNet step at COCO scale has
    2 images x 120k-200k anchors x 80 classes, and the composite BCE ops of PyTorch allocate a
    new buffer per elementary op. Gradient: ``d/ds = T (sig(x) - sig(y))``, none for the teacher.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, temperature: float):
        dtype = torch.promote_types(student_logits.dtype, torch.float32)  # half -> float32
        s = student_logits.detach().to(dtype)
        y = teacher_logits.detach().to(dtype) / temperature
        q = torch.neg(y).sigmoid_()  # 1 - p_T
        kl = torch.div(s, temperature).sub_(y).mul_(q)  # (1 - p_T)(x - y)
        scratch = torch.empty_like(y)
        kl.add_(_logsigmoid_(y, scratch))  # + log sig(y); y is consumed
        torch.div(s, temperature, out=y)
        kl.sub_(_logsigmoid_(y, scratch))  # - log sig(x)
        ctx.save_for_backward(student_logits, q)
        ctx.temperature = temperature
        return kl.sum(dim=-1).mul_(temperature * temperature)  # float32 even for half logits

    @staticmethod
    def backward(ctx, grad_per_anchor):
        student_logits, q = ctx.saved_tensors
        t = ctx.temperature
        # sig(x) - sig(y) = q - sig(-x)
        grad = torch.div(student_logits.to(q.dtype), -t).sigmoid_().neg_().add_(q)
        grad.mul_(grad_per_anchor.to(q.dtype).unsqueeze(-1) * t)
        return grad.to(student_logits.dtype), None, None


def anchor_binary_kl(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """logits (B, A, C) -> (B, A): ``T^2 sum_c KL(sigmoid(z_T,c/T) || sigmoid(z_S,c/T))``,
    the binary KL of every class summed per anchor. Differentiable in the student's logits only."""
    return _AnchorBinaryKL.apply(student_logits, teacher_logits, float(temperature))


def sigmoid_response(student_logits, teacher_logits, weights, valid, normalizer, temperature):
    """sum over valid anchors, classes of w T^2 [BCE(s/T, p_T) - H(p_T)] / normalizer.

    logits (B, A, C); weights, valid (B, A).
    """
    per_anchor = anchor_binary_kl(student_logits, teacher_logits, temperature)  # (B, A)
    return weighted_anchor_sum(per_anchor, weights, valid, normalizer)


def weighted_anchor_sum(per_anchor, weights, valid, normalizer) -> torch.Tensor:
    """sum over valid anchors of w * per_anchor / max(1, normalizer); all (B, A)."""
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
