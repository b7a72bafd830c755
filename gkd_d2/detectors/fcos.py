"""FCOS family: Detectron2's ``FCOS`` as a student or a teacher, and its yacs-config builder.

Detectron2 builds FCOS only from a LazyConfig; ``MODEL.META_ARCHITECTURE: "FCOS"`` here builds
the same :class:`detectron2.modeling.meta_arch.fcos.FCOS` (with its ``FCOSHead``) from
``MODEL.FCOS`` (defaults in ``gkd_d2/config.py``) and the yacs backbone (``MODEL.BACKBONE``,
e.g. ``build_retinanet_resnet_fpn_backbone``), so every Detectron2 tool (``DefaultTrainer``,
``DefaultPredictor``, checkpoints) works with it.

Response knowledge applies to the **positive** locations (those FCOS matches to a GT box):
FCOS has no ignored locations, and its background locations carry no class.
"""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS as D2FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.structures import Boxes, Instances

from .dense import DenseFamily, flat_gt_index


@META_ARCH_REGISTRY.register()
class FCOS(D2FCOS):
    """Detectron2's FCOS, buildable from a yacs config (``MODEL.FCOS``)."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness):
        """Detectron2's FCOS losses on float32 predictions: under mixed precision its GIoU loss
        (fvcore) fails on half-precision boxes ("Index put requires the source and destination
        dtypes match"). A no-op in float32."""
        pred_logits, pred_anchor_deltas, pred_centerness = (
            [x.float() for x in xs] for xs in (pred_logits, pred_anchor_deltas, pred_centerness)
        )
        return super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in c.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.FCOS.IN_FEATURES={list(c.IN_FEATURES)}: the backbone has no level "
                f"{missing} (it outputs {list(shapes)})."
            )
        in_shapes = [shapes[f] for f in c.IN_FEATURES]
        head = FCOSHead(
            input_shape=in_shapes,
            conv_dims=[in_shapes[0].channels] * c.NUM_CONVS,
            num_classes=c.NUM_CLASSES,
            norm=c.HEAD_NORM,
            prior_prob=c.PRIOR_PROB,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(c.IN_FEATURES),
            "num_classes": c.NUM_CLASSES,
            "center_sampling_radius": c.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": c.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": c.FOCAL_LOSS_GAMMA,
            "test_score_thresh": c.SCORE_THRESH_TEST,
            "test_topk_candidates": c.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": c.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }


def label_locations(model, anchors: List[Boxes], gt_instances: List[Instances]):
    """Detectron2's ``FCOS.label_anchors`` (same matching rule), also returning each location's
    matched GT. Returns labels list[(A,)] in {0..C-1, C}, matched boxes list[(A, 4)] and
    matched_gt (B, A) index into the batch's flattened GT (-1 for background)."""
    labels, boxes, matched = [], [], []
    num_locations = sum(len(a) for a in anchors)
    for inst in gt_instances:  # images
        if len(inst) > 0:
            quality = model._match_anchors(inst.gt_boxes, anchors)  # Detectron2's matching rule
            match_quality, idx = quality.max(dim=0)
            idx[match_quality < 1e-5] = -1
            boxes_i = inst.gt_boxes.tensor[idx.clip(min=0)]
            labels_i = inst.gt_classes[idx.clip(min=0)]
            labels_i[idx < 0] = model.num_classes
        else:
            device = anchors[0].tensor.device
            boxes_i = torch.zeros(num_locations, 4, device=device)
            labels_i = torch.full((num_locations,), model.num_classes, dtype=torch.long, device=device)
            idx = torch.full((num_locations,), -1, dtype=torch.long, device=device)
        labels.append(labels_i)
        boxes.append(boxes_i)
        matched.append(idx)
    return labels, boxes, flat_gt_index(matched, gt_instances, [i >= 0 for i in matched])


class FCOSFamily(DenseFamily):
    name = "fcos"
    num_classes_option = "MODEL.FCOS.NUM_CLASSES"

    @classmethod
    def matches(cls, model) -> bool:
        return isinstance(model, D2FCOS)

    @property
    def dims_per_anchor(self):
        return [self.num_classes, 4, 1]

    def label_and_loss(self, predictions, feats, gt_instances):
        model = self.model
        pred_logits, pred_deltas, pred_centerness = predictions
        anchors = model.anchor_generator(feats)
        labels, matched_boxes, matched_gt = label_locations(model, anchors, gt_instances)
        losses = model.losses(anchors, pred_logits, labels, pred_deltas, matched_boxes, pred_centerness)
        labels = torch.stack(labels)
        return losses, labels, matched_gt, matched_gt >= 0
