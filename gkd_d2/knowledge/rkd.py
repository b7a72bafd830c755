"""Relational KD (Park et al. 2019) on the GT instances of the batch.

With x_i the instance features (G, D) of one model:

- distance-wise: ``psi_D(i, j) = ||x_i - x_j|| / mu``, mu the mean distance over pairs i != j;
  ``L_dist = smoothL1(psi_D^S, psi_D^T)`` averaged over pairs;
- angle-wise: ``psi_A(i, j, k) = <e_ij, e_kj>`` with ``e_ij = (x_i - x_j) / ||x_i - x_j||``;
  ``L_angle = smoothL1(psi_A^S, psi_A^T)`` averaged over triplets.

Teacher relations are targets (no gradient). Fewer than 2 (3) instances give 0. The paper's
"RKD +prototypes" is the global knowledge term (relations to prototypes instead of to the
batch): ``DISTILL.KNOWLEDGE: ["global"]``.
"""
import torch
import torch.nn.functional as F

from .base import KnowledgeTerm, check_weight, register_knowledge


def distance_relations(x: torch.Tensor) -> torch.Tensor:
    """(G, G) pairwise distances divided by their mean over i != j."""
    d = torch.cdist(x, x)
    g = x.shape[0]
    off_diag = ~torch.eye(g, dtype=torch.bool, device=x.device)
    mean = d[off_diag].mean().clamp(min=1e-12)
    return d / mean


def angle_relations(x: torch.Tensor) -> torch.Tensor:
    """(G, G, G): psi[j, i, k] = cos of the angle at x_j between x_i - x_j and x_k - x_j."""
    e = F.normalize(x[None, :, :] - x[:, None, :], dim=2)  # e[j, i] = unit(x_i - x_j)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_losses(x_s: torch.Tensor, x_t: torch.Tensor):
    """(L_dist, L_angle) between student (G, D_S) and teacher (G, D_T) instance features."""
    zero = x_s.sum() * 0
    g = x_s.shape[0]
    if g < 2:
        return zero, zero
    x_t = x_t.detach().float()
    dist = F.smooth_l1_loss(distance_relations(x_s.float()), distance_relations(x_t))
    if g < 3:
        return dist, zero
    angle = F.smooth_l1_loss(angle_relations(x_s.float()), angle_relations(x_t))
    return dist, angle


@register_knowledge("rkd")
class RelationalKD(KnowledgeTerm):
    needs_instances = True

    def __init__(self, cfg, spec):
        super().__init__()
        self.dist_weight = check_weight(cfg.DISTILL.RKD.DIST_WEIGHT, "DISTILL.RKD.DIST_WEIGHT")
        self.angle_weight = check_weight(cfg.DISTILL.RKD.ANGLE_WEIGHT, "DISTILL.RKD.ANGLE_WEIGHT")

    def forward(self, batch, prototypes=None):
        dist, angle = rkd_losses(batch.instance_feats_student, batch.instance_feats_teacher)
        return {
            "loss_kd_rkd_dist": self.dist_weight * dist,
            "loss_kd_rkd_angle": self.angle_weight * angle,
        }
