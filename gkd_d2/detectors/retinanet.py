"""RetinaNet family: Detectron2's ``RetinaNet``; response knowledge on every non-ignored anchor."""
from typing import List

import torch
from detectron2.modeling import RetinaNet
from detectron2.structures import Boxes, Instances, pairwise_iou

from .dense import DenseFamily, flat_gt_index


def label_anchors(model, anchors: List[Boxes], gt_instances: List[Instances]):
    """Detectron2's ``RetinaNet.label_anchors``, also returning each anchor's matched GT.

    Returns labels list[(A,)] in {-1, 0..C-1, C}, matched boxes list[(A, 4)], and
    matched_gt (B, A): index into the batch's flattened GT, -1 for background/ignored.
    """
    anchors = Boxes.cat(anchors)
    labels, boxes, matched = [], [], []
    for gt in gt_instances:  # images
        quality = pairwise_iou(gt.gt_boxes, anchors)
        idx, anchor_labels = model.anchor_matcher(quality)
        del quality
        if len(gt) > 0:
            boxes_i = gt.gt_boxes.tensor[idx]
            labels_i = gt.gt_classes[idx]
            labels_i[anchor_labels == 0] = model.num_classes
            labels_i[anchor_labels == -1] = -1
        else:
            boxes_i = torch.zeros_like(anchors.tensor)
            labels_i = torch.zeros_like(idx) + model.num_classes
        labels.append(labels_i)
        boxes.append(boxes_i)
        matched.append(idx)
    fg = [(lab >= 0) & (lab != model.num_classes) for lab in labels]
    return labels, boxes, flat_gt_index(matched, gt_instances, fg)


class RetinaNetFamily(DenseFamily):
    name = "retinanet"
    num_classes_option = "MODEL.RETINANET.NUM_CLASSES"

    @property
    def dims_per_anchor(self):
        return [self.num_classes, 4]

    @classmethod
    def matches(cls, model) -> bool:
        return isinstance(model, RetinaNet)

    def label_and_loss(self, predictions, feats, gt_instances):
        model = self.model
        pred_logits, pred_deltas = predictions
        anchors = model.anchor_generator(feats)
        labels, matched_boxes, matched_gt = label_anchors(model, anchors, gt_instances)
        losses = model.losses(anchors, pred_logits, labels, pred_deltas, matched_boxes)
        labels = torch.stack(labels)
        return losses, labels, matched_gt, labels >= 0
