"""DistillationDetector: a Detectron2 student and a frozen teacher in one meta-architecture.

``cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"``; the student is built from the same
cfg with ``DISTILL.STUDENT_ARCHITECTURE`` as its meta-architecture, the teacher from
``DISTILL.TEACHER.CONFIG_FILE`` / ``DISTILL.TEACHER.WEIGHTS``.

Training: the student's own Detectron2 losses plus one ``loss_kd_*`` entry per active knowledge
term (``DISTILL.KNOWLEDGE``). Inference: exactly what the student alone returns.
"""
import logging
from typing import Dict, List

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.poolers import ROIPooler
from detectron2.utils.events import get_event_storage
from torch import nn

from .config import SUPPORTED_STUDENTS, validate_distill_config
from .detectors import (
    box_coder,
    detector_type,
    instance_levels,
    num_classes,
    rcnn_student_forward,
    rcnn_teacher_on_rois,
    reencode_deltas,
    retinanet_student_forward,
    retinanet_teacher_logits,
)
from .knowledge import KNOWLEDGE_REGISTRY, DistillSpec, build_knowledge_terms
from .prototypes.bank import PrototypeBank
from .structures import AnchorResponse, DistillBatch, GroundTruth, RoIResponse
from .teacher import build_teacher

logger = logging.getLogger(__name__)

__all__ = ["DistillationDetector", "build_student"]


def build_student(cfg) -> nn.Module:
    """The student: ``cfg`` with ``MODEL.META_ARCHITECTURE = DISTILL.STUDENT_ARCHITECTURE``."""
    arch = cfg.DISTILL.STUDENT_ARCHITECTURE
    if arch not in SUPPORTED_STUDENTS:
        raise ValueError(
            f"DISTILL.STUDENT_ARCHITECTURE='{arch}' is not supported; "
            f"choose one of {list(SUPPORTED_STUDENTS)}."
        )
    student_cfg = cfg.clone()
    student_cfg.defrost()
    student_cfg.MODEL.META_ARCHITECTURE = arch
    student_cfg.freeze()
    return META_ARCH_REGISTRY.get(arch)(student_cfg).to(torch.device(cfg.MODEL.DEVICE))


def _mean_pool(x: torch.Tensor) -> torch.Tensor:
    """(N, D, 7, 7) ROIAlign output -> (N, D) instance feature."""
    return x.mean(dim=(2, 3))


@META_ARCH_REGISTRY.register()
class DistillationDetector(nn.Module):
    """Student + frozen teacher + knowledge terms (+ prototypes).

    Submodules: ``student`` (trained), ``teacher`` (frozen, eval mode, no gradients),
    ``knowledge`` (ModuleDict of terms, with their adaptation layers), ``prototypes``
    (:class:`PrototypeBank`, or None when ``DISTILL.PGM.ENABLED`` is False).
    """

    def __init__(self, cfg):
        super().__init__()
        validate_distill_config(cfg)
        self.student = build_student(cfg)
        self.teacher, self.teacher_cfg = build_teacher(cfg)
        self.student_type = detector_type(self.student, "DISTILL.STUDENT_ARCHITECTURE")
        if self.student_type == "cascade":
            raise ValueError(
                "DISTILL.STUDENT_ARCHITECTURE: CascadeROIHeads is supported for the teacher "
                "only; give the student StandardROIHeads."
            )
        self.teacher_type = detector_type(self.teacher, "DISTILL.TEACHER.CONFIG_FILE")
        self.num_classes = num_classes(self.student)
        n_teacher = num_classes(self.teacher)
        if n_teacher != self.num_classes:
            raise ValueError(
                f"The teacher predicts {n_teacher} classes but the student {self.num_classes}: "
                "the teacher config (DISTILL.TEACHER.CONFIG_FILE / OPTS) and the student's "
                "MODEL.ROI_HEADS.NUM_CLASSES / MODEL.RETINANET.NUM_CLASSES must agree."
            )
        self._flip_teacher_channels = self._check_input_format(cfg)
        known = [n for n in cfg.DISTILL.KNOWLEDGE if n in KNOWLEDGE_REGISTRY]
        if any(KNOWLEDGE_REGISTRY.get(n).needs_response for n in known):
            self._check_response_pair()
        spec = self._build_spec(cfg)
        self.feature_levels = spec.feature_levels
        self.instance_levels = spec.instance_levels
        self.strides = spec.strides
        self.knowledge = build_knowledge_terms(cfg, spec)
        self.needs_response = any(t.needs_response for t in self.knowledge.values())
        self.prototypes = None
        if cfg.DISTILL.PGM.ENABLED:
            level = self.instance_levels[0]
            self.prototypes = PrototypeBank(
                self.instance_levels,
                self.num_classes,
                cfg.DISTILL.PGM.NUM_PROTOTYPES,
                spec.teacher_shapes[level].channels,
                spec.student_shapes[level].channels,
            )
        self.needs_instances = self.prototypes is not None or any(
            t.needs_instances for t in self.knowledge.values()
        )
        # ROIAlign 7x7 of GT boxes at their assigned level (no parameters).
        self.instance_pooler = ROIPooler(
            output_size=7,
            scales=tuple(1.0 / self.strides[f] for f in self.instance_levels),
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
        )
        levels = [self.student.backbone.output_shape()[f].stride for f in self.instance_levels]
        self._min_level = int(torch.log2(torch.tensor(float(levels[0]))).item())
        self._max_level = int(torch.log2(torch.tensor(float(levels[-1]))).item())
        self.attenuation = bool(cfg.DISTILL.ATTENUATION)
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self.train()

    # --------------------------------------------------------------------------- build checks
    def _check_input_format(self, cfg) -> bool:
        s, t = cfg.INPUT.FORMAT, self.teacher_cfg.INPUT.FORMAT
        if s == t:
            return False
        if {s, t} == {"RGB", "BGR"}:
            return True
        raise ValueError(
            f"INPUT.FORMAT of the student ({s}) and of the teacher config ({t}) are incompatible."
        )

    def _build_spec(self, cfg) -> DistillSpec:
        s_shapes = self.student.backbone.output_shape()
        t_shapes = self.teacher.backbone.output_shape()
        levels = list(cfg.DISTILL.FEATURE.IN_FEATURES) or [f for f in s_shapes if f in t_shapes]
        inst = instance_levels(self.student)
        missing = [f for f in set(levels) | set(inst) if f not in s_shapes or f not in t_shapes]
        if missing or not levels:
            raise ValueError(
                "The FPN level names of the teacher and the student differ: student outputs "
                f"{list(s_shapes)}, teacher outputs {list(t_shapes)}, distillation needs "
                f"{sorted(set(levels) | set(inst))} in both (DISTILL.FEATURE.IN_FEATURES)."
            )
        bad = [f for f in levels + inst if s_shapes[f].stride != t_shapes[f].stride]
        if bad:
            raise ValueError(f"Teacher and student strides differ on FPN levels {bad}.")
        if self.student.backbone.size_divisibility != self.teacher.backbone.size_divisibility:
            raise ValueError(
                "Teacher and student backbones pad images differently (size_divisibility "
                f"{self.teacher.backbone.size_divisibility} vs "
                f"{self.student.backbone.size_divisibility}); their feature maps would not align."
            )
        return DistillSpec(
            student_type=self.student_type,
            teacher_type=self.teacher_type,
            num_classes=self.num_classes,
            student_shapes=dict(s_shapes),
            teacher_shapes=dict(t_shapes),
            feature_levels=levels,
            instance_levels=inst,
            strides={f: s_shapes[f].stride for f in s_shapes},
            prototypes_enabled=bool(cfg.DISTILL.PGM.ENABLED),
        )

    def _check_response_pair(self):
        ok = (self.student_type == "retinanet") == (self.teacher_type == "retinanet")
        if not ok:
            raise ValueError(
                f"DISTILL.KNOWLEDGE: response knowledge needs a teacher of the student's kind "
                f"(student {self.student_type}, teacher {self.teacher_type}); drop the response "
                "terms or use a matching teacher."
            )
        if self.student_type == "retinanet":
            s, t = self.student, self.teacher
            if s.anchor_generator.num_anchors != t.anchor_generator.num_anchors or list(
                s.head_in_features
            ) != list(t.head_in_features):
                raise ValueError(
                    "RetinaNet response knowledge needs the same anchors on the same levels in "
                    "teacher and student (MODEL.ANCHOR_GENERATOR, MODEL.RETINANET.IN_FEATURES)."
                )

    # --------------------------------------------------------------------------- nn.Module
    @property
    def device(self):
        return self.student.device

    def train(self, mode: bool = True):
        """Switch the student and the knowledge terms; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    # --------------------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[Dict]):
        """Training: dict of losses (student's + ``loss_kd_*``). Eval: the student's output."""
        if not self.training:
            return self.student(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        student = self.student
        images = student.preprocess_image(batched_inputs)
        s_feats = student.backbone(images.tensor)
        t_feats = self.teacher_features(batched_inputs)
        gt = GroundTruth.from_instances(gt_instances, self._min_level, self._max_level)

        batch = DistillBatch(
            gt=gt,
            student_features=s_feats,
            teacher_features=t_feats,
            feature_strides=self.strides,
            gt_weights=torch.ones(len(gt), device=self.device),
        )
        if self.needs_instances and len(gt):
            batch.instance_feats_student = self.pool_instances(s_feats, gt)
            with torch.no_grad():
                batch.instance_feats_teacher = self.pool_instances(t_feats, gt)
            if self.prototypes is not None:
                batch.gt_weights = self.prototypes.robust_weights(
                    batch.instance_feats_teacher,
                    batch.instance_feats_student,
                    gt.levels,
                    gt.classes,
                )
        elif self.needs_instances:
            d_s = s_feats[self.instance_levels[0]].shape[1]
            d_t = t_feats[self.instance_levels[0]].shape[1]
            batch.instance_feats_student = s_feats[self.instance_levels[0]].new_zeros(0, d_s)
            batch.instance_feats_teacher = t_feats[self.instance_levels[0]].new_zeros(0, d_t)

        if self.student_type == "retinanet":
            losses = self._retinanet_losses(images, s_feats, t_feats, gt_instances, batch)
        else:
            losses = self._rcnn_losses(images, s_feats, t_feats, gt_instances, batch)

        scale = self.attenuation_factor()
        for name, term in self.knowledge.items():
            for key, value in term(batch, self.prototypes).items():
                losses[key] = value * scale
        self._log_robust_weights(batch)
        return losses

    @torch.no_grad()
    def teacher_features(self, batched_inputs) -> Dict[str, torch.Tensor]:
        """The teacher's FPN features of the batch, preprocessed with the teacher's own
        pixel mean/std (and channel order)."""
        if self._flip_teacher_channels:
            batched_inputs = [{**x, "image": x["image"].flip(0)} for x in batched_inputs]
        images = self.teacher.preprocess_image(batched_inputs)
        return self.teacher.backbone(images.tensor)

    def student_features(self, batched_inputs) -> Dict[str, torch.Tensor]:
        """The student's raw FPN features of the batch (its own preprocessing)."""
        images = self.student.preprocess_image(batched_inputs)
        return self.student.backbone(images.tensor)

    def pool_instances(self, features, gt: GroundTruth) -> torch.Tensor:
        """(G, D): GT boxes ROIAligned 7x7 at their assigned level, averaged over space."""
        maps = [features[f] for f in self.instance_levels]
        return _mean_pool(self.instance_pooler(maps, gt.box_lists))

    def attenuation_factor(self) -> float:
        """1 - iter / max_iter with DISTILL.ATTENUATION, else 1."""
        if not self.attenuation:
            return 1.0
        try:
            it = get_event_storage().iter
        except AssertionError:  # outside a trainer
            return 1.0
        return max(0.0, 1.0 - it / max(1, self.max_iter))

    def _rcnn_losses(self, images, s_feats, t_feats, gt_instances, batch):
        losses, sampled, cap = rcnn_student_forward(
            self.student, images, s_feats, gt_instances, capture=self.needs_response
        )
        if not self.needs_response:
            return losses
        box_lists = [p.proposal_boxes for p in sampled]
        with torch.no_grad():
            t_pooled, t_scores, t_deltas = rcnn_teacher_on_rois(self.teacher, t_feats, box_lists)
        s_scores, s_deltas = cap["predictions"]
        proposal_boxes = torch.cat([b.tensor for b in box_lists])
        t_deltas = reencode_deltas(t_deltas, proposal_boxes, box_coder(self.teacher), box_coder(self.student))
        rois = RoIResponse(
            student_logits=s_scores,
            teacher_logits=t_scores,
            student_deltas=s_deltas,
            teacher_deltas=t_deltas,
            gt_classes=torch.cat([p.gt_classes for p in sampled]),
            # images without GT have no gt_boxes: their RoIs are all background anyway
            gt_boxes=torch.cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in sampled]
            ),
            proposal_boxes=proposal_boxes,
            levels=GroundTruth.levels_of(box_lists, self._min_level, self._max_level),
            student_feats=_mean_pool(cap["pooled"]),
            teacher_feats=_mean_pool(t_pooled),
        )
        rois.weights = torch.ones_like(rois.gt_classes, dtype=s_scores.dtype)
        if self.prototypes is not None:
            rois.weights = self.prototypes.robust_weights(
                rois.teacher_feats, rois.student_feats.detach(), rois.levels, rois.gt_classes
            )
        batch.rois = rois
        return losses

    def _retinanet_losses(self, images, s_feats, t_feats, gt_instances, batch):
        losses, anchors, s_logits, labels, matched = retinanet_student_forward(
            self.student, images, s_feats, gt_instances
        )
        if not self.needs_response:
            return losses
        with torch.no_grad():
            t_logits = retinanet_teacher_logits(self.teacher, t_feats)
        weights = torch.ones_like(matched, dtype=s_logits.dtype)
        fg = matched >= 0
        weights[fg] = batch.gt_weights[matched[fg]].to(weights.dtype)
        normalizer = float(getattr(self.student, "loss_normalizer", 1.0))
        batch.anchors = AnchorResponse(
            student_logits=s_logits,
            teacher_logits=t_logits,
            labels=labels,
            matched_gt=matched,
            anchors=anchors,
            normalizer=normalizer,
            weights=weights,
        )
        return losses

    def _log_robust_weights(self, batch):
        if self.prototypes is None or len(batch.gt) == 0:
            return
        try:
            storage = get_event_storage()
        except AssertionError:
            return
        storage.put_scalar("kd/robust_weight_mean", float(batch.gt_weights.mean()))
