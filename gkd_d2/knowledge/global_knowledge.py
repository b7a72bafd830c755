"""``global``: global knowledge of the Robust Distillation Module (Eq. 6).

For the batch's GT instances at their assigned levels, the coefficients ``beta`` on the
prototypes of that level in both spaces (``gkd_d2.prototypes.relations``) and::

    L_global = mean_{i, j} w_i smoothL1(beta_S,ij - beta_T,ij)

with w the robust weights of Eq. 8 (:func:`~gkd_d2.knowledge.losses.global_knowledge_loss`).
"""
from detectron2.config import configurable

from .base import KnowledgeTerm, check_weight, register_knowledge
from .losses import global_knowledge_loss


@register_knowledge("global")
class GlobalKnowledge(KnowledgeTerm):
    needs_instances = True
    needs_prototypes = True

    @configurable
    def __init__(self, *, weight):
        super().__init__()
        self.weight = weight

    @classmethod
    def from_config(cls, cfg, spec):
        return {"weight": check_weight(cfg.DISTILL.GLOBAL.WEIGHT, "DISTILL.GLOBAL.WEIGHT")}

    def forward(self, batch, prototypes=None):
        rel = prototypes.relations(
            batch.instance_feats_teacher, batch.instance_feats_student, batch.gt.level_index
        )
        loss = global_knowledge_loss(rel.beta_t, rel.beta_s, rel.slot_valid, batch.gt_weights)
        return {"loss_kd_global": self.weight * loss}
