"""What the dense (one-stage) families share: per-anchor / per-location class logits.

A dense detector (Detectron2's ``DenseDetector``: RetinaNet, FCOS) predicts, on every level of
``head_in_features``, per location and anchor, C class logits. The response record is a
:class:`~gkd_d2.structures.DenseResponse`; the teacher answers with its own head's logits on
the same anchors, so teacher and student must have the same anchors on the same levels.
"""
from typing import List

import torch
from detectron2.layers import cat
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from ..structures import DenseResponse
from .base import DetectorFamily


def dense_predictions(model, features, dims_per_anchor):
    """The head's outputs on ``features`` (name -> map), each transposed to a list over levels
    of (B, Hi*Wi*A, K) (``dims_per_anchor`` the K of each output), and the head's input maps."""
    feats = [features[f] for f in model.head_in_features]
    outputs = model.head(feats)
    return [[permute_to_N_HWA_K(x, k) for x in out] for out, k in zip(outputs, dims_per_anchor)], feats


# Heads whose forward computes the class logits of a level as cls_score(cls_subnet(x)),
# independently of their box branch (Detectron2's RetinaNet and FCOS heads).
_HEADS_WITH_CLASS_BRANCH = (RetinaNetHead.forward, FCOSHead.forward)


def dense_class_logits(model, features, num_classes):
    """(B, A, C): the head's class logits on every anchor of ``features`` (name -> map).

    What the teacher's response needs: for Detectron2's RetinaNet / FCOS heads only their
    classification branch runs (``cls_score(cls_subnet(x))`` per level, the same values as the
    whole head); the box branch, as costly as the class one, is skipped. Any other head runs
    whole."""
    head = model.head
    feats = [features[f] for f in model.head_in_features]
    if type(head).forward in _HEADS_WITH_CLASS_BRANCH:
        logits = [head.cls_score(head.cls_subnet(x)) for x in feats]  # levels
    else:
        logits = head(feats)[0]
    return cat([permute_to_N_HWA_K(x, num_classes) for x in logits], dim=1)


class DenseFamily(DetectorFamily):
    """Base of the dense families; subclasses give ``dims_per_anchor`` and ``label_and_loss``."""

    @property
    def dims_per_anchor(self) -> List[int]:
        """K of each head output, class logits first."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def instance_levels(self) -> List[str]:
        return list(self.model.head_in_features)

    @property
    def anchors_per_location(self):
        return self.model.anchor_generator.num_anchors

    def check_response_teacher(self, teacher):
        if type(teacher) is not type(self):
            raise ValueError(
                f"DISTILL.KNOWLEDGE: response knowledge needs a teacher of the student's kind "
                f"(student {self.name}, teacher {teacher.name}); drop the response "
                "terms or use a matching teacher."
            )
        if self.anchors_per_location != teacher.anchors_per_location or (
            self.instance_levels != teacher.instance_levels
        ):
            raise ValueError(
                f"{self.name} response knowledge needs the same anchors on the same levels in "
                "teacher and student (MODEL.ANCHOR_GENERATOR, the head's IN_FEATURES)."
            )

    def label_and_loss(self, predictions, feats, gt_instances):
        """Detectron2's labelling and losses. Returns (losses, labels (B, A), matched_gt (B, A)
        index into the batch's flattened GT or -1, response_mask (B, A) bool)."""
        raise NotImplementedError

    def training_step(self, images, features, gt_instances, record_response):
        predictions, feats = dense_predictions(self.model, features, self.dims_per_anchor)
        losses, labels, matched_gt, response_mask = self.label_and_loss(predictions, feats, gt_instances)
        if not record_response:
            return losses, None
        response = DenseResponse(
            student_logits=cat(predictions[0], dim=1),
            labels=labels,
            matched_gt=matched_gt,
            response_mask=response_mask,
            normalizer=float(getattr(self.model, "loss_normalizer", 1.0)),
        )
        return losses, response

    @torch.no_grad()
    def add_teacher_response(self, response: DenseResponse, features):
        """The teacher's class logits on every anchor: (B, A, C) (its box branch is skipped)."""
        response.teacher_logits = dense_class_logits(self.model, features, self.num_classes)


def flat_gt_index(per_image_index, gt_instances, valid_per_image):
    """(B, A): per-image matched GT indices offset into the batch's flattened GT; -1 where
    ``valid_per_image`` is False. Inputs are lists over images of (A,) tensors."""
    offsets = torch.cumsum(torch.tensor([0] + [len(x) for x in gt_instances[:-1]]), 0).tolist()
    return torch.stack(
        [
            torch.where(v, idx + off, torch.full_like(idx, -1))
            for idx, v, off in zip(per_image_index, valid_per_image, offsets)  # images
        ]
    )
