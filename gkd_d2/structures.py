"""Plain containers passed from the meta-architecture to the knowledge terms.

Shapes use: B images, G ground-truth boxes in the whole batch, R sampled RoIs in the whole
batch, A anchors (RetinaNet) or locations (FCOS) per image, C classes (background excluded),
D_S / D_T channels of the student / teacher FPN levels. A *level index* counts in the
instance levels (``DistillationDetector.instance_levels``, a list of level *names*).
"""
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional

import torch
from detectron2.structures import Boxes, Instances

from .pooling import assign_level_index


@dataclass
class GroundTruth:
    """Every GT box of the batch, flattened in image order.

    boxes (G, 4) XYXY in input-image pixels; classes (G,) in [0, C); image_index (G,);
    level_index (G,): index into the instance levels (``DISTILL.INSTANCE_LEVELS``: the release's
    rule or Detectron2's FPN rule, :func:`gkd_d2.pooling.assign_level_index`); box_lists: per image.
    """

    boxes: torch.Tensor
    classes: torch.Tensor
    image_index: torch.Tensor
    level_index: torch.Tensor
    box_lists: List[Boxes]

    @classmethod
    def from_instances(cls, instances: List[Instances], min_level: int, max_level: int, rule: str = "detectron2"):
        """``instances``: per image, with ``gt_boxes`` and ``gt_classes``; levels min..max (log2),
        each box's level by ``rule`` (:func:`gkd_d2.pooling.assign_level_index`)."""
        box_lists = [x.gt_boxes for x in instances]
        device = box_lists[0].tensor.device
        boxes = torch.cat([b.tensor for b in box_lists])
        classes = torch.cat([x.gt_classes for x in instances]).long()
        image_index = torch.repeat_interleave(
            torch.arange(len(instances), device=device),
            torch.tensor([len(x) for x in instances], device=device),
        )
        level_index = assign_level_index(box_lists, min_level, max_level, rule)
        return cls(boxes, classes, image_index, level_index, box_lists)

    def __len__(self):
        return self.boxes.shape[0]


@dataclass
class RoIResponse:
    """Two-stage detectors: the RoIs the student's ROI head sampled for its loss, seen by both.

    student_logits / teacher_logits (R, C+1); student_deltas / teacher_deltas (R, 4C) or
    (R, 4) for class-agnostic regression, both in the student's box encoding (``box_coder``,
    the student's ``Box2BoxTransform``); gt_classes (R,) in [0, C], C = background; gt_boxes
    (R, 4) matched GT box; proposal_boxes (R, 4); level_index (R,); student_feats (R, D_S) /
    teacher_feats (R, D_T): the box pooler's 7x7 ROIAlign output averaged over space (raw FPN
    features, before any adaptation). The teacher's fields are filled by the teacher's family.
    """

    per_roi: ClassVar[bool] = True

    student_logits: torch.Tensor
    student_deltas: torch.Tensor
    gt_classes: torch.Tensor
    gt_boxes: torch.Tensor
    proposal_boxes: torch.Tensor
    box_lists: List[Boxes]
    level_index: torch.Tensor
    student_feats: torch.Tensor
    box_coder: object
    teacher_logits: Optional[torch.Tensor] = None
    teacher_deltas: Optional[torch.Tensor] = None
    teacher_feats: Optional[torch.Tensor] = None
    weights: Optional[torch.Tensor] = None  # (R,) robust weights, 1 for background

    def positives(self) -> torch.Tensor:
        """(R,) bool: the RoIs matched to a GT box (foreground)."""
        return (self.gt_classes >= 0) & (self.gt_classes < self.student_logits.shape[1] - 1)

    def assign_robust_weights(self, gt_weights, prototypes):
        """Eq. 8 of every RoI from its pooled features against its matched GT class's
        prototypes (1 for background, or without prototypes)."""
        self.weights = torch.ones_like(self.gt_classes, dtype=self.student_logits.dtype)
        if prototypes is not None:
            self.weights = prototypes.robust_weights(
                self.teacher_feats, self.student_feats.detach(), self.level_index, self.gt_classes
            )


@dataclass
class DenseResponse:
    """Dense detectors (RetinaNet, FCOS): every anchor / location of every image, levels
    concatenated as in Detectron2.

    student_logits / teacher_logits (B, A, C); labels (B, A) in {-1 ignore, 0..C-1, C bg};
    matched_gt (B, A) index into the batch's flattened GT (-1 where none); response_mask (B, A)
    bool: where response knowledge applies (the family decides: RetinaNet every non-ignored
    anchor, FCOS the positive locations); normalizer: the focal loss's normaliser (number of
    foreground anchors, as Detectron2 computes it).
    """

    per_roi: ClassVar[bool] = False

    student_logits: torch.Tensor
    labels: torch.Tensor
    matched_gt: torch.Tensor
    response_mask: torch.Tensor
    normalizer: float
    teacher_logits: Optional[torch.Tensor] = None
    weights: Optional[torch.Tensor] = None  # (B, A) robust weights, 1 for background

    def positives(self) -> torch.Tensor:
        """(B, A) bool: the anchors / locations matched to a GT box (foreground)."""
        return (self.labels >= 0) & (self.labels < self.student_logits.shape[-1])

    def assign_robust_weights(self, gt_weights, prototypes):
        """Each anchor takes the robust weight of its matched GT (1 for background)."""
        weights = torch.ones_like(self.matched_gt, dtype=self.student_logits.dtype)
        fg = self.matched_gt >= 0
        weights[fg] = gt_weights[self.matched_gt[fg]].to(weights.dtype)
        self.weights = weights


@dataclass
class DistillBatch:
    """What the knowledge terms see at one training step.

    student_features / teacher_features: raw FPN outputs, name -> (B, D, H, W).
    instance_feats_student (G, D_S) / instance_feats_teacher (G, D_T): GT boxes ROIAligned
    (7x7, averaged) at their assigned level; None when no active term needs them.
    instance_feats_student_every_level (L, G, D_S) / ..._teacher_... (L, G, D_T): the same boxes
    pooled at every instance level, when a term needs them.
    gt_weights (G,): robust weights of Eq. 8 (all 1 without prototypes).
    response: a :class:`RoIResponse` or :class:`DenseResponse` when a term needs responses.
    """

    gt: GroundTruth
    student_features: Dict[str, torch.Tensor]
    teacher_features: Dict[str, torch.Tensor]
    feature_strides: Dict[str, int]
    gt_weights: torch.Tensor
    instance_feats_student: Optional[torch.Tensor] = None
    instance_feats_teacher: Optional[torch.Tensor] = None
    instance_feats_student_every_level: Optional[torch.Tensor] = None
    instance_feats_teacher_every_level: Optional[torch.Tensor] = None
    response: Optional[object] = None
