"""``global``: global knowledge of the Robust Distillation Module (Eq. 6).

For the batch's GT instances at their assigned levels, the coefficients ``beta`` on the
prototypes of that level in both spaces (``gkd_d2.prototypes.relations``) and::

    L_global = mean_{i, j} w_i smoothL1(beta_S,ij - beta_T,ij)

with w the robust weights of Eq. 8 (:func:`~gkd_d2.knowledge.losses.global_knowledge_loss`).

``DISTILL.GLOBAL.FORM = "release"``: the form of the authors' released code (which its config
never trains): every instance at **every** instance level against that level's prototypes, with
the robust weight recomputed at each level from that level's features and prototypes; per level
the mean of ``smoothL1(w beta_S, w beta_T)``, summed over the levels
(:func:`~gkd_d2.knowledge.losses.global_knowledge_loss_every_level`). The levels are the
instance levels: with ``DISTILL.INSTANCE_LEVELS release`` the release's (P2-P6 for Faster
R-CNN, P3-P7 for RetinaNet / FCOS).
"""
import torch
from detectron2.config import configurable

from .base import KnowledgeTerm, check_weight, register_knowledge
from ..prototypes.relations import robust_weights
from .losses import global_knowledge_loss, global_knowledge_loss_every_level

GLOBAL_FORMS = ("paper", "release")


@register_knowledge("global")
class GlobalKnowledge(KnowledgeTerm):
    needs_instances = True
    needs_prototypes = True

    @configurable
    def __init__(self, *, weight, form="paper"):
        super().__init__()
        if form not in GLOBAL_FORMS:
            raise ValueError(f"DISTILL.GLOBAL.FORM={form!r}: choose one of {list(GLOBAL_FORMS)}.")
        self.weight, self.form = weight, form
        self.needs_instances_at_every_level = form == "release"

    @classmethod
    def from_config(cls, cfg, spec):
        return {
            "weight": check_weight(cfg.DISTILL.GLOBAL.WEIGHT, "DISTILL.GLOBAL.WEIGHT"),
            "form": cfg.DISTILL.GLOBAL.FORM,
        }

    def forward(self, batch, prototypes=None):
        if self.form == "release":
            x_t, x_s = batch.instance_feats_teacher_every_level, batch.instance_feats_student_every_level
            num_levels, g = x_t.shape[:2]
            level_index = torch.arange(num_levels, device=x_t.device).repeat_interleave(g)
            rel = prototypes.relations(x_t.flatten(0, 1), x_s.flatten(0, 1), level_index)
            classes = batch.gt.classes.repeat(num_levels)  # (L G,), level-major as the features
            weights = robust_weights(rel.beta_t, rel.beta_s, rel.slot_valid, rel.slot_class, classes)
            loss = global_knowledge_loss_every_level(
                rel.beta_t, rel.beta_s, rel.slot_valid, weights, level_index, num_levels
            )
            return {"loss_kd_global": self.weight * loss}
        rel = prototypes.relations(
            batch.instance_feats_teacher, batch.instance_feats_student, batch.gt.level_index
        )
        loss = global_knowledge_loss(rel.beta_t, rel.beta_s, rel.slot_valid, batch.gt_weights)
        return {"loss_kd_global": self.weight * loss}
