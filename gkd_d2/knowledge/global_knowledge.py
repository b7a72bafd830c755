"""Robust Distillation Module: global knowledge (Eq. 6) and robust weights (Eq. 8).

For an instance i (feature x_i, class c_i, level l_i) and the prototypes P of level l_i (all
classes, concatenated in the same order in both spaces)::

    beta_T,ij = cos(x_T,i, P_T,j)            beta_S,ij = cos(x_S,i, P_S,j)
    w_i = clamp(1 - | max_{j in c_i} beta_T,ij - max_{j in c_i} beta_S,ij |, 0, 1)   (Eq. 8)
          (1 when class c_i has no prototype at level l_i; detached)
    L_global = mean_{i, j} w_i smoothL1(beta_S,ij - beta_T,ij)                       (Eq. 6)
"""
import torch
import torch.nn.functional as F

from .base import KnowledgeTerm, check_weight, register_knowledge


def prototype_coefficients(feats, prototypes, levels):
    """beta (N, M): cosine of each instance with every prototype slot of its own level.

    feats (N, D); prototypes (L, M, D) (empty slots are zero rows, giving beta 0);
    levels (N,) long in [0, L).
    """
    num_levels, m, d = prototypes.shape
    x = F.normalize(feats.float(), dim=1)
    p = F.normalize(prototypes.float(), dim=2).reshape(num_levels * m, d)
    beta_all = (x @ p.t()).view(-1, num_levels, m)  # (N, L, M)
    return beta_all[torch.arange(x.shape[0], device=x.device), levels]


def robust_weights(beta_t, beta_s, slot_valid, slot_class, classes):
    """Eq. 8 per instance, detached. beta_* (N, M); slot_valid (N, M) bool; slot_class (M,);
    classes (N,) (a value outside [0, C), e.g. background, gives weight 1)."""
    in_class = slot_valid & (slot_class[None, :] == classes[:, None])  # (N, M)
    neg_inf = torch.finfo(beta_t.dtype).min
    max_t = beta_t.detach().masked_fill(~in_class, neg_inf).max(dim=1).values
    max_s = beta_s.detach().masked_fill(~in_class, neg_inf).max(dim=1).values
    w = (1 - (max_t - max_s).abs()).clamp(0, 1)
    return torch.where(in_class.any(dim=1), w, torch.ones_like(w))


def global_knowledge_loss(beta_t, beta_s, slot_valid, weights):
    """Eq. 6: mean over valid (i, j) of w_i smoothL1(beta_S,ij - beta_T,ij); 0 if none."""
    err = F.smooth_l1_loss(beta_s, beta_t.detach(), beta=1.0, reduction="none")
    mask = slot_valid.to(err.dtype)
    return (weights.detach()[:, None] * err * mask).sum() / mask.sum().clamp(min=1)


@register_knowledge("global")
class GlobalKnowledge(KnowledgeTerm):
    """``global``: Eq. 6 on the batch's GT instances at their assigned levels."""

    needs_instances = True
    needs_prototypes = True

    def __init__(self, cfg, spec):
        super().__init__()
        self.weight = check_weight(cfg.DISTILL.GLOBAL.WEIGHT, "DISTILL.GLOBAL.WEIGHT")

    def forward(self, batch, prototypes=None):
        gt = batch.gt
        rel = prototypes.relations(
            batch.instance_feats_teacher, batch.instance_feats_student, gt.levels
        )
        loss = global_knowledge_loss(rel.beta_t, rel.beta_s, rel.slot_valid, batch.gt_weights)
        return {"loss_kd_global": self.weight * loss}
