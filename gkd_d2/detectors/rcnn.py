"""Two-stage family: ``GeneralizedRCNN`` with ``StandardROIHeads`` (Faster / Mask R-CNN), and
``CascadeROIHeads`` as a teacher (its last stage answers).

The student's training step is Detectron2's own (RPN, then ROI heads), run on precomputed
features with forward hooks on the box pooler and predictor, so the response record holds the
RoIs the ROI head sampled for its loss, their pooled features and the student's logits/deltas.
"""
from typing import List

import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from torch import nn

from ..pooling import assign_level_index, level_range, reduce_grid
from ..structures import RoIResponse
from .base import DetectorFamily, capture_outputs


def box_coder(model):
    """The Box2BoxTransform of the (last) box predictor of an R-CNN."""
    predictor = model.roi_heads.box_predictor
    return (predictor[-1] if isinstance(predictor, nn.ModuleList) else predictor).box2box_transform


def reencode_deltas(deltas, proposals, src, dst):
    """Deltas (R, 4k) of box coder ``src`` re-expressed in coder ``dst``'s encoding (same boxes).

    A cascade's last stage, for instance, uses other BBOX_REG_WEIGHTS than a Faster R-CNN.
    """
    if tuple(src.weights) == tuple(dst.weights) and src.scale_clamp == dst.scale_clamp:
        return deltas
    k = deltas.shape[1] // 4
    boxes = src.apply_deltas(deltas, proposals)  # (R, 4k)
    encoded = dst.get_deltas(proposals.repeat_interleave(k, dim=0), boxes.reshape(-1, 4))
    return encoded.reshape(-1, 4 * k)


class RCNNFamily(DetectorFamily):
    """"rcnn" (StandardROIHeads) or "cascade" (CascadeROIHeads, teacher only)."""
    num_classes_option = "MODEL.ROI_HEADS.NUM_CLASSES"

    @classmethod
    def matches(cls, model) -> bool:
        if not isinstance(model, GeneralizedRCNN):
            return False
        heads = model.roi_heads
        if isinstance(heads, CascadeROIHeads) or (
            isinstance(heads, StandardROIHeads) and heads.box_pooler is not None
        ):
            return True
        raise ValueError(
            f"ROI heads {type(heads).__name__} are not supported; gkd_d2 needs an "
            "FPN detector with StandardROIHeads (or CascadeROIHeads for a teacher)."
        )

    @property
    def name(self):
        return "cascade" if isinstance(self.model.roi_heads, CascadeROIHeads) else "rcnn"

    @property
    def num_classes(self) -> int:
        return self.model.roi_heads.num_classes

    @property
    def instance_levels(self) -> List[str]:
        """The box head's levels (P2-P5) under Detectron2's rule; every FPN output (P2-P6) under
        the release's, whose prototypes and instances live on every level of its neck."""
        if self.instance_level_rule == "release":
            shapes = self.model.backbone.output_shape()
            return sorted(shapes, key=lambda f: shapes[f].stride)
        return list(self.model.roi_heads.box_in_features)

    def roi_level_index(self, box_lists) -> torch.Tensor:
        """(R,) index into ``instance_levels`` of each RoI's box-pooler level (Detectron2's rule
        over the box head's levels, as its ROIPooler assigns them)."""
        heads = self.model.roi_heads
        shapes = self.model.backbone.output_shape()
        first = self.instance_levels.index(heads.box_in_features[0])
        box_range = level_range([shapes[f].stride for f in heads.box_in_features])
        return assign_level_index(box_lists, *box_range) + first

    def check_student(self):
        if self.name == "cascade":
            raise ValueError(
                "DISTILL.STUDENT_ARCHITECTURE: CascadeROIHeads is supported for the teacher "
                "only; give the student StandardROIHeads."
            )

    def check_response_teacher(self, teacher):
        if not isinstance(teacher, RCNNFamily):
            raise ValueError(
                f"DISTILL.KNOWLEDGE: response knowledge needs a teacher of the student's kind "
                f"(student {self.name}, teacher {teacher.name}); drop the response "
                "terms or use a matching teacher."
            )

    def training_step(self, images, features, gt_instances, record_response):
        """Detectron2's GeneralizedRCNN training forward on precomputed features; with
        ``record_response`` also the :class:`RoIResponse` of the sampled RoIs (student side)."""
        student = self.model
        proposals, proposal_losses = student.proposal_generator(images, features, gt_instances)
        heads = student.roi_heads
        if not record_response:
            _, detector_losses = heads(images, features, proposals, gt_instances)
            return {**detector_losses, **proposal_losses}, None
        with capture_outputs(pooled=heads.box_pooler, predictions=heads.box_predictor) as cap:
            sampled, detector_losses = heads(images, features, proposals, gt_instances)
        box_lists = [p.proposal_boxes for p in sampled]
        scores, deltas = cap["predictions"]
        response = RoIResponse(
            student_logits=scores,
            student_deltas=deltas,
            gt_classes=torch.cat([p.gt_classes for p in sampled]),
            # images without GT have no gt_boxes: their RoIs are all background anyway
            gt_boxes=torch.cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in sampled]
            ),
            proposal_boxes=torch.cat([b.tensor for b in box_lists]),
            box_lists=box_lists,
            level_index=self.roi_level_index(box_lists),
            student_feats=reduce_grid(cap["pooled"], self.instance_pooling),
            box_coder=box_coder(student),
        )
        return {**detector_losses, **proposal_losses}, response

    @torch.no_grad()
    def add_teacher_response(self, response: RoIResponse, features):
        """The teacher's box pooler + box head + predictor (last stage of a cascade) on the
        student's RoIs; deltas re-encoded in the student's box coder."""
        heads = self.model.roi_heads
        pooled = heads.box_pooler([features[f] for f in heads.box_in_features], response.box_lists)
        if isinstance(heads, CascadeROIHeads):
            box_head, predictor = heads.box_head[-1], heads.box_predictor[-1]
        else:
            box_head, predictor = heads.box_head, heads.box_predictor
        scores, deltas = predictor(box_head(pooled))
        response.teacher_logits = scores
        response.teacher_deltas = reencode_deltas(
            deltas, response.proposal_boxes, box_coder(self.model), response.box_coder
        )
        response.teacher_feats = reduce_grid(pooled, self.instance_pooling)
