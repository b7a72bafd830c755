"""Plain containers passed from the meta-architecture to the knowledge terms.

Shapes use: B images, G ground-truth boxes in the whole batch, R sampled RoIs in the whole
batch, A anchors per image, C classes (background excluded), D_S / D_T channels of the
student / teacher FPN levels.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes, Instances


@dataclass
class GroundTruth:
    """Every GT box of the batch, flattened in image order.

    boxes (G, 4) XYXY in input-image pixels; classes (G,) in [0, C); image_index (G,);
    levels (G,): index into the instance levels (Detectron2's FPN level rule, canonical size
    224 at canonical level 4, clamped to the levels that exist).
    """

    boxes: torch.Tensor
    classes: torch.Tensor
    image_index: torch.Tensor
    levels: torch.Tensor
    box_lists: List[Boxes]

    @classmethod
    def from_instances(cls, instances: List[Instances], min_level: int, max_level: int):
        box_lists = [x.gt_boxes for x in instances]
        device = box_lists[0].tensor.device
        boxes = torch.cat([b.tensor for b in box_lists]) if box_lists else torch.zeros(0, 4)
        classes = torch.cat([x.gt_classes for x in instances]).long()
        image_index = torch.repeat_interleave(
            torch.arange(len(instances), device=device),
            torch.tensor([len(x) for x in instances], device=device),
        )
        levels = cls.levels_of(box_lists, min_level, max_level)
        return cls(boxes, classes, image_index, levels, box_lists)

    @staticmethod
    def levels_of(box_lists: List[Boxes], min_level: int, max_level: int) -> torch.Tensor:
        """Level index (offset from min_level) of every box: sqrt(area) 224 -> level 4."""
        if sum(len(b) for b in box_lists) == 0:
            return torch.zeros(0, dtype=torch.long, device=box_lists[0].tensor.device)
        return assign_boxes_to_levels(box_lists, min_level, max_level, 224, 4)

    def __len__(self):
        return self.boxes.shape[0]


@dataclass
class RoIResponse:
    """Faster R-CNN: the RoIs the student's ROI head sampled for its loss, seen by both models.

    student_logits / teacher_logits (R, C+1); student_deltas / teacher_deltas (R, 4C) or
    (R, 4) for class-agnostic regression, both in the student's box encoding; gt_classes (R,) in [0, C], C = background;
    gt_boxes (R, 4) matched GT box; proposal_boxes (R, 4); levels (R,) instance-level index;
    student_feats (R, D_S) / teacher_feats (R, D_T): the box pooler's 7x7 ROIAlign output
    averaged over space (raw FPN features, before any adaptation).
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    student_deltas: torch.Tensor
    teacher_deltas: torch.Tensor
    gt_classes: torch.Tensor
    gt_boxes: torch.Tensor
    proposal_boxes: torch.Tensor
    levels: torch.Tensor
    student_feats: torch.Tensor
    teacher_feats: torch.Tensor
    weights: Optional[torch.Tensor] = None  # (R,) robust weights, 1 for background


@dataclass
class AnchorResponse:
    """RetinaNet: every anchor of every image, levels concatenated as in Detectron2.

    student_logits / teacher_logits (B, A, C); labels (B, A) in {-1 ignore, 0..C-1, C bg};
    matched_gt (B, A) index into the batch's flattened GT (-1 where none); anchors: list of
    per-level :class:`Boxes`; normalizer: the focal loss's normaliser (number of foreground
    anchors, as Detectron2's RetinaNet computes it).
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    labels: torch.Tensor
    matched_gt: torch.Tensor
    anchors: List[Boxes]
    normalizer: float
    weights: Optional[torch.Tensor] = None  # (B, A) robust weights, 1 for background


@dataclass
class DistillBatch:
    """What the knowledge terms see at one training step.

    student_features / teacher_features: raw FPN outputs, name -> (B, D, H, W).
    instance_feats_student (G, D_S) / instance_feats_teacher (G, D_T): GT boxes ROIAligned
    (7x7, averaged) at their assigned level; None when no active term needs them.
    gt_weights (G,): robust weights of Eq. 8 (all 1 without prototypes).
    """

    gt: GroundTruth
    student_features: Dict[str, torch.Tensor]
    teacher_features: Dict[str, torch.Tensor]
    feature_strides: Dict[str, int]
    gt_weights: torch.Tensor
    instance_feats_student: Optional[torch.Tensor] = None
    instance_feats_teacher: Optional[torch.Tensor] = None
    rois: Optional[RoIResponse] = None
    anchors: Optional[AnchorResponse] = None
    extras: Dict[str, object] = field(default_factory=dict)
