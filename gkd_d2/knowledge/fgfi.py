"""FGFI (Wang et al. 2019): imitate the teacher at the locations near objects.

For each GT box, the IoU of every anchor with it; the anchors whose IoU exceeds
``psi * (max IoU of that GT)`` (psi = 0.5) mark their feature-map cell. Over the marked cells I::

    L_fgfi = sum_{l, cells in I, c} (A_l(F_S) - F_T)^2 / (2 N_p),   N_p = number of marked cells

The anchors are the student's: the RPN's for Faster R-CNN, the head's for RetinaNet
(``MODEL.ANCHOR_GENERATOR``); the adaptation is a 3x3 conv per level.
"""
from typing import Dict, List

import torch
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.structures import Boxes, pairwise_iou

from .base import KnowledgeTerm, check_weight, register_knowledge
from .feature import build_adapters


def imitation_masks(gt_boxes: List[Boxes], anchors: List[Boxes], shapes, num_anchors: int, psi: float):
    """list over levels of (B, H, W) bool masks: cells with an anchor of IoU > psi * max IoU.

    gt_boxes: per image; anchors: per level (H*W*A, 4), same for every image; shapes: per
    level (H, W).
    """
    all_anchors = Boxes.cat(anchors)
    sizes = [h * w * num_anchors for h, w in shapes]
    per_image = []
    for gt in gt_boxes:
        if len(gt) == 0:
            per_image.append(torch.zeros(len(all_anchors), dtype=torch.bool, device=all_anchors.device))
            continue
        iou = pairwise_iou(gt, all_anchors)  # (G_i, N)
        per_image.append((iou > psi * iou.max(dim=1, keepdim=True).values).any(dim=0))
    marks = torch.stack(per_image)  # (B, N)
    return [
        m.view(len(gt_boxes), h, w, num_anchors).any(dim=3)
        for m, (h, w) in zip(marks.split(sizes, dim=1), shapes)
    ]


def masked_imitation_loss(students, teachers, masks) -> torch.Tensor:
    """sum over levels, masked cells and channels of squared error / (2 * #masked cells)."""
    total = sum((m[:, None] * (t - s).pow(2)).sum() for s, t, m in zip(students, teachers, masks))
    cells = sum(m.sum() for m in masks)
    return total / (2 * cells.clamp(min=1))


@register_knowledge("fgfi")
class FineGrainedImitation(KnowledgeTerm):
    def __init__(self, cfg, spec):
        super().__init__()
        c = cfg.DISTILL.FGFI
        self.weight = check_weight(c.WEIGHT, "DISTILL.FGFI.WEIGHT")
        if not 0 < c.PSI <= 1:
            raise ValueError(f"DISTILL.FGFI.PSI={c.PSI} must be in (0, 1].")
        self.psi = float(c.PSI)
        if spec.student_type == "retinanet":
            self.levels = list(cfg.MODEL.RETINANET.IN_FEATURES)
        else:
            self.levels = list(cfg.MODEL.RPN.IN_FEATURES)
        missing = [f for f in self.levels if f not in spec.teacher_shapes]
        if missing:
            raise ValueError(f"DISTILL.KNOWLEDGE 'fgfi': the teacher has no FPN level {missing}.")
        self.anchor_generator = build_anchor_generator(cfg, [spec.student_shapes[f] for f in self.levels])
        self.adapters = build_adapters(spec, kernel_size=3, relu=False, levels=self.levels)

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
