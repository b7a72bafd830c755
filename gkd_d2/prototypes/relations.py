"""Instances expressed on the prototypes: the coefficients beta and the robust weights (Eq. 8).

For an instance i (feature x_i, class c_i, level l_i) and the prototypes P of level l_i (all
classes, concatenated in the same order in both spaces)::

    beta_T,ij = cos(x_T,i, P_T,j)            beta_S,ij = cos(x_S,i, P_S,j)
    w_i = clamp(1 - | max_{j in c_i} beta_T,ij - max_{j in c_i} beta_S,ij |, 0, 1)   (Eq. 8)
          (1 when class c_i has no prototype at level l_i; detached)

The global-knowledge loss on these coefficients (Eq. 6) is a loss:
``gkd_d2.knowledge.losses.global_knowledge_loss``.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Relations:
    """beta_t, beta_s (N, S) with S = C*K prototype slots of the instance's level;
    slot_valid (N, S) bool; slot_class (S,) the class of each slot."""

    beta_t: torch.Tensor
    beta_s: torch.Tensor
    slot_valid: torch.Tensor
    slot_class: torch.Tensor


def prototype_coefficients(feats, prototypes, level_index):
    """beta (N, M): cosine of each instance with every prototype slot of its own level.

    feats (N, D); prototypes (L, M, D) (empty slots are zero rows, giving beta 0);
    level_index (N,) long in [0, L).
    """
    num_levels, m, d = prototypes.shape
    with torch.autocast(feats.device.type, enabled=False):  # float32 under mixed precision too
        x = F.normalize(feats.float(), dim=1)
        p = F.normalize(prototypes.float(), dim=2).reshape(num_levels * m, d)
        beta_all = (x @ p.t()).view(-1, num_levels, m)  # (N, L, M)
    return beta_all[torch.arange(x.shape[0], device=x.device), level_index]


def relations(feats_t, feats_s, protos_t, protos_s, valid, level_index) -> Relations:
    """beta of N instances against every prototype slot of their level, both spaces.

    feats_t (N, D_T), feats_s (N, D_S) (gradients flow through feats_s); protos_t (L, C, K, D_T),
    protos_s (L, C, K, D_S), valid (L, C, K) bool; level_index (N,).
    """
    num_levels, c, k = valid.shape
    beta_t = prototype_coefficients(feats_t, protos_t.reshape(num_levels, c * k, -1), level_index)
    beta_s = prototype_coefficients(feats_s, protos_s.reshape(num_levels, c * k, -1), level_index)
    slot_valid = valid.reshape(num_levels, c * k)[level_index]
    slot_class = torch.arange(c, device=valid.device).repeat_interleave(k)
    return Relations(beta_t, beta_s, slot_valid, slot_class)


def robust_weights(beta_t, beta_s, slot_valid, slot_class, classes):
    """Eq. 8 per instance, detached. beta_* (N, M); slot_valid (N, M) bool; slot_class (M,);
    classes (N,) (a value outside [0, C), e.g. background, gives weight 1)."""
    in_class = slot_valid & (slot_class[None, :] == classes[:, None])  # (N, M)
    neg_inf = torch.finfo(beta_t.dtype).min
    max_t = beta_t.detach().masked_fill(~in_class, neg_inf).max(dim=1).values
    max_s = beta_s.detach().masked_fill(~in_class, neg_inf).max(dim=1).values
    w = (1 - (max_t - max_s).abs()).clamp(0, 1)
    return torch.where(in_class.any(dim=1), w, torch.ones_like(w))
