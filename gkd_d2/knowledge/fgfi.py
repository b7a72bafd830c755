"""FGFI (Wang et al. 2019): imitate the teacher at the locations near objects.

For each GT box, the IoU of every anchor with it; the anchors whose IoU exceeds
``psi * (max IoU of that GT)`` (psi = 0.5) mark their feature-map cell. Over the marked cells I::

    L_fgfi = sum_{l, cells in I, c} (A_l(F_S) - F_T)^2 / (2 N_p),   N_p = number of marked cells

The anchors are the student's: the RPN's for Faster R-CNN, the head's for RetinaNet
(``MODEL.ANCHOR_GENERATOR``); the adaptation is a 3x3 conv per level. FCOS has anchor points,
not anchor boxes, so FGFI does not apply to it.
"""
from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.modeling.anchor_generator import build_anchor_generator

from .adapters import build_adapters
from .base import KnowledgeTerm, check_weight, register_knowledge
from .losses import imitation_masks, masked_imitation_loss


@register_knowledge("fgfi")
class FineGrainedImitation(KnowledgeTerm):
    students = ("rcnn", "retinanet")

    @configurable
    def __init__(self, *, spec, levels, anchor_generator, weight=0.01, psi=0.5):
        super().__init__()
        if not 0 < psi <= 1:
            raise ValueError(f"DISTILL.FGFI.PSI={psi} must be in (0, 1].")
        missing = [f for f in levels if f not in spec.teacher_shapes]
        if missing:
            raise ValueError(
                f"DISTILL.KNOWLEDGE 'fgfi': the teacher has no FPN level {missing}, which FGFI imitates "
                "(the student's anchor levels, MODEL.RPN.IN_FEATURES / MODEL.RETINANET.IN_FEATURES): "
                "drop 'fgfi' or use a teacher that outputs those levels."
            )
        self.weight, self.psi, self.levels = weight, float(psi), list(levels)
        self.anchor_generator = anchor_generator
        self.adapters = build_adapters(spec, kernel_size=3, relu=False, levels=self.levels)

    @classmethod
    def from_config(cls, cfg, spec):
        c = cfg.DISTILL.FGFI
        if spec.student_type == "retinanet":
            levels = list(cfg.MODEL.RETINANET.IN_FEATURES)
        else:
            levels = list(cfg.MODEL.RPN.IN_FEATURES)
        return {
            "spec": spec,
            "levels": levels,
            "anchor_generator": build_anchor_generator(cfg, [spec.student_shapes[f] for f in levels]),
            "weight": check_weight(c.WEIGHT, "DISTILL.FGFI.WEIGHT"),
            "psi": c.PSI,
        }

    def forward(self, batch, prototypes=None) -> Dict[str, torch.Tensor]:
        feats = [batch.student_features[f] for f in self.levels]
        anchors = self.anchor_generator(feats)
        num_anchors = self.anchor_generator.num_anchors[0]
        shapes = [tuple(f.shape[2:]) for f in feats]
        with torch.no_grad():
            masks = imitation_masks(batch.gt.box_lists, anchors, shapes, num_anchors, self.psi)
        students = [self.adapters[f](x) for f, x in zip(self.levels, feats)]
        teachers = [batch.teacher_features[f] for f in self.levels]
        masks = [m.to(students[0].dtype) for m in masks]
        return {"loss_kd_fgfi": self.weight * masked_imitation_loss(students, teachers, masks)}
