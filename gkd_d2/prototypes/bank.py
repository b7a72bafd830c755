"""PrototypeBank: the prototypes of every (level, class), kept as fixed-shape buffers.

Fixed shapes (L levels, C classes, K slots) make the prototypes part of the model's
``state_dict``: they are written in every checkpoint and restored by ``--resume`` with no
special code. Slots a (level, class) did not fill stay zero with ``valid`` False.
"""
import torch
from torch import nn

from .relations import Relations, relations, robust_weights


class PrototypeBank(nn.Module):
    """Buffers:

    teacher (L, C, K, D_T), student (L, C, K, D_S): raw (un-normalised) prototype features;
    valid (L, C, K) bool; source (L, C, K, 2) long: (image id, annotation index) of each
    prototype instance, -1 when empty; last_refresh_iter (): iteration of the last
    regeneration, -1 = never.
    """

    def __init__(self, levels, num_classes, num_prototypes, dim_teacher, dim_student):
        super().__init__()
        self.levels = list(levels)
        shape = (len(self.levels), num_classes, num_prototypes)
        self.register_buffer("teacher", torch.zeros(*shape, dim_teacher))
        self.register_buffer("student", torch.zeros(*shape, dim_student))
        self.register_buffer("valid", torch.zeros(*shape, dtype=torch.bool))
        self.register_buffer("source", torch.full((*shape, 2), -1, dtype=torch.long))
        self.register_buffer("last_refresh_iter", torch.tensor(-1, dtype=torch.long))

    @property
    def num_classes(self):
        return self.valid.shape[1]

    @property
    def num_prototypes(self):
        """K, the slots per (level, class): ``DISTILL.PGM.NUM_PROTOTYPES`` of the model's config."""
        return self.valid.shape[2]

    def is_empty(self):
        return not bool(self.valid.any())

    @torch.no_grad()
    def set_prototypes(self, level, cls, feats_t, feats_s, sources):
        """Fill (level, cls) with k <= K prototypes: feats_t (k, D_T), feats_s (k, D_S),
        sources (k, 2). Remaining slots are cleared."""
        k = feats_t.shape[0]
        for buf in (self.teacher, self.student):
            buf[level, cls].zero_()
        self.valid[level, cls] = False
        self.source[level, cls] = -1
        self.teacher[level, cls, :k] = feats_t.to(self.teacher)
        self.student[level, cls, :k] = feats_s.to(self.student)
        self.valid[level, cls, :k] = True
        self.source[level, cls, :k] = sources.to(self.source)

    def relations(self, feats_t, feats_s, level_index) -> Relations:
        """beta of each instance against every prototype of its level, both spaces
        (:func:`gkd_d2.prototypes.relations.relations`).

        feats_t (N, D_T), feats_s (N, D_S) (gradients flow through feats_s), level_index (N,).
        """
        return relations(feats_t, feats_s, self.teacher, self.student, self.valid, level_index)

    def robust_weights(self, feats_t, feats_s, level_index, classes):
        """Eq. 8 for N instances (classes (N,), background or unknown -> 1). Returns (N,)."""
        if feats_t.shape[0] == 0 or self.is_empty():
            return torch.ones(feats_t.shape[0], device=self.valid.device)
        rel = self.relations(feats_t, feats_s, level_index)
        return robust_weights(rel.beta_t, rel.beta_s, rel.slot_valid, rel.slot_class, classes)
