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
from detectron2.config import configurable

from .base import KnowledgeTerm, check_weight, register_knowledge
from .losses import rkd_losses


@register_knowledge("rkd")
class RelationalKD(KnowledgeTerm):
    needs_instances = True

    @configurable
    def __init__(self, *, dist_weight=1.0, angle_weight=2.0):
        super().__init__()
        self.dist_weight, self.angle_weight = dist_weight, angle_weight

    @classmethod
    def from_config(cls, cfg, spec):
        return {
            "dist_weight": check_weight(cfg.DISTILL.RKD.DIST_WEIGHT, "DISTILL.RKD.DIST_WEIGHT"),
            "angle_weight": check_weight(cfg.DISTILL.RKD.ANGLE_WEIGHT, "DISTILL.RKD.ANGLE_WEIGHT"),
        }

    def forward(self, batch, prototypes=None):
        dist, angle = rkd_losses(batch.instance_feats_student, batch.instance_feats_teacher)
        return {
            "loss_kd_rkd_dist": self.dist_weight * dist,
            "loss_kd_rkd_angle": self.angle_weight * angle,
        }
