"""What differs between the detector families the wrapper drives.

Faster R-CNN (``GeneralizedRCNN`` + ``StandardROIHeads``; ``CascadeROIHeads`` as a teacher) and
``RetinaNet``. The student's training forward is Detectron2's own, split open so the wrapper
can see the backbone features, the RoIs the ROI head sampled and the anchors' labels.
"""
from contextlib import contextmanager
from typing import Dict, List

import torch
from detectron2.layers import cat
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from detectron2.structures import Boxes, Instances, pairwise_iou
from torch import nn


def detector_type(model, option: str) -> str:
    """"rcnn", "cascade" or "retinanet"; anything else is an error naming ``option``."""
    if isinstance(model, RetinaNet):
        return "retinanet"
    if isinstance(model, GeneralizedRCNN):
        heads = model.roi_heads
        if isinstance(heads, CascadeROIHeads):
            return "cascade"
        if isinstance(heads, StandardROIHeads) and heads.box_pooler is not None:
            return "rcnn"
        raise ValueError(
            f"{option}: ROI heads {type(heads).__name__} are not supported; gkd_d2 needs an "
            "FPN detector with StandardROIHeads (or CascadeROIHeads for a teacher)."
        )
    raise ValueError(
        f"{option}: meta-architecture {type(model).__name__} is not supported; use "
        "GeneralizedRCNN (Faster R-CNN) or RetinaNet."
    )


def num_classes(model) -> int:
    return model.num_classes if isinstance(model, RetinaNet) else model.roi_heads.num_classes


def instance_levels(model) -> List[str]:
    """FPN levels instances are assigned to: the box pooler's (P2-P5) or the head's (P3-P7)."""
    if isinstance(model, RetinaNet):
        return list(model.head_in_features)
    return list(model.roi_heads.box_in_features)


@contextmanager
def capture_outputs(**modules):
    """Record each module's forward output under its keyword while the block runs."""
    captured: Dict[str, object] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, key=key: captured.__setitem__(key, out))
        for key, m in modules.items()
    ]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------- Faster R-CNN
def rcnn_student_forward(student, images, features, gt_instances, capture: bool):
    """Detectron2's GeneralizedRCNN training forward on precomputed features.

    Returns (losses, sampled proposals (list[Instances] with proposal_boxes, gt_classes,
    gt_boxes), captured {"pooled": (R, D_S, 7, 7), "predictions": (scores (R, C+1),
    deltas (R, 4C))} or None).
    """
    proposals, proposal_losses = student.proposal_generator(images, features, gt_instances)
    heads = student.roi_heads
    if capture:
        with capture_outputs(pooled=heads.box_pooler, predictions=heads.box_predictor) as cap:
            sampled, detector_losses = heads(images, features, proposals, gt_instances)
    else:
        cap = None
        sampled, detector_losses = heads(images, features, proposals, gt_instances)
    return {**detector_losses, **proposal_losses}, sampled, cap


def rcnn_teacher_on_rois(teacher, features, box_lists: List[Boxes]):
    """The teacher's box pooler + box head + predictor on given RoIs (last stage of a cascade).

    Returns pooled (R, D_T, 7, 7), scores (R, C+1), deltas (R, 4C) or (R, 4).
    """
    heads = teacher.roi_heads
    pooled = heads.box_pooler([features[f] for f in heads.box_in_features], box_lists)
    if isinstance(heads, CascadeROIHeads):
        box_head, predictor = heads.box_head[-1], heads.box_predictor[-1]
    else:
        box_head, predictor = heads.box_head, heads.box_predictor
    scores, deltas = predictor(box_head(pooled))
    return pooled, scores, deltas


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


# ----------------------------------------------------------------------------- RetinaNet
def label_anchors(model, anchors: List[Boxes], gt_instances: List[Instances]):
    """Detectron2's ``RetinaNet.label_anchors``, also returning each anchor's matched GT.

    Returns labels list[(A,)] in {-1, 0..C-1, C}, matched boxes list[(A, 4)], and
    matched_gt (B, A): index into the batch's flattened GT, -1 for background/ignored.
    """
    anchors = Boxes.cat(anchors)
    labels, boxes, matched = [], [], []
    offset = 0
    for gt in gt_instances:
        quality = pairwise_iou(gt.gt_boxes, anchors)
        idx, anchor_labels = model.anchor_matcher(quality)
        del quality
        if len(gt) > 0:
            boxes_i = gt.gt_boxes.tensor[idx]
            labels_i = gt.gt_classes[idx]
            labels_i[anchor_labels == 0] = model.num_classes
            labels_i[anchor_labels == -1] = -1
            matched_i = idx + offset
            matched_i[(labels_i < 0) | (labels_i == model.num_classes)] = -1
        else:
            boxes_i = torch.zeros_like(anchors.tensor)
            labels_i = torch.zeros_like(idx) + model.num_classes
            matched_i = torch.full_like(idx, -1)
        labels.append(labels_i)
        boxes.append(boxes_i)
        matched.append(matched_i)
        offset += len(gt)
    return labels, boxes, torch.stack(matched)


def retinanet_student_forward(student, images, features, gt_instances):
    """Detectron2's RetinaNet training forward on precomputed features.

    Returns (losses, anchors list[Boxes], logits (B, A, C), labels (B, A), matched_gt (B, A)).
    """
    feats = [features[f] for f in student.head_in_features]
    predictions = student.head(feats)
    pred_logits, pred_deltas = student._transpose_dense_predictions(
        predictions, [student.num_classes, 4]
    )
    anchors = student.anchor_generator(feats)
    labels, matched_boxes, matched_gt = label_anchors(student, anchors, gt_instances)
    losses = student.losses(anchors, pred_logits, labels, pred_deltas, matched_boxes)
    return losses, anchors, cat(pred_logits, dim=1), torch.stack(labels), matched_gt


def retinanet_teacher_logits(teacher, features):
    """The teacher's classification logits on every anchor: (B, A, C)."""
    predictions = teacher.head([features[f] for f in teacher.head_in_features])
    logits, _ = teacher._transpose_dense_predictions(predictions, [teacher.num_classes, 4])
    return cat(logits, dim=1)
