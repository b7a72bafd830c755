"""DistillationDetector: a Detectron2 student and a frozen teacher in one meta-architecture.

``cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"``; the student is built from the same
cfg with ``DISTILL.STUDENT_ARCHITECTURE`` as its meta-architecture, the teacher from
``DISTILL.TEACHER.CONFIG_FILE`` / ``DISTILL.TEACHER.WEIGHTS``. What differs between detector
families (Faster R-CNN, RetinaNet, FCOS) is behind :mod:`gkd_d2.detectors`.

Training: the student's own Detectron2 losses plus one ``loss_kd_*`` entry per active knowledge
term (``DISTILL.KNOWLEDGE``). Inference: exactly what the student alone returns.
"""
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage
from torch import nn

from .detectors import family_of
from .detectors.levels import TeacherLevels, feature_levels
from .lazy import fill_student_options
from .knowledge import DistillSpec, build_knowledge_terms, knowledge_class
from .pooling import instance_dim, pool_instances
from .prototypes.bank import PrototypeBank
from .structures import DistillBatch, GroundTruth
from .teacher import build_teacher_model, file_sha256, freeze, load_teacher_weights, model_input_format
from .validation import distill_root, validate_distill_config

__all__ = ["DistillationDetector", "build_student"]


def build_student(cfg) -> nn.Module:
    """The student: ``cfg`` with ``MODEL.META_ARCHITECTURE = DISTILL.STUDENT_ARCHITECTURE``."""
    student_cfg = cfg.clone()
    student_cfg.defrost()
    student_cfg.MODEL.META_ARCHITECTURE = cfg.DISTILL.STUDENT_ARCHITECTURE
    student_cfg.freeze()
    return META_ARCH_REGISTRY.get(student_cfg.MODEL.META_ARCHITECTURE)(student_cfg).to(
        torch.device(cfg.MODEL.DEVICE)
    )


@META_ARCH_REGISTRY.register()
class DistillationDetector(nn.Module):
    """Student + frozen teacher + knowledge terms (+ prototypes).

    Submodules: ``student`` (trained), ``teacher`` (frozen, eval mode, no gradients),
    ``knowledge`` (ModuleDict of terms, with their adaptation layers), ``prototypes``
    (:class:`PrototypeBank`, or None when ``DISTILL.PGM.ENABLED`` is False).
    ``instance_levels`` / ``feature_levels``: level *names*; ``strides``: name -> stride.
    """

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: nn.Module,
        teacher_weights: str,
        distill,
        max_iter: int = 0,
        input_format: Optional[str] = None,
        teacher_input_format: Optional[str] = None,
        teacher_cfg=None,
        teacher_option: str = "DISTILL.TEACHER.CONFIG_FILE",
        weights_option: str = "DISTILL.TEACHER.WEIGHTS",
    ):
        """
        Args:
            student: a Detectron2 GeneralizedRCNN, RetinaNet or FCOS (trained).
            teacher: a Detectron2 detector of the same classes; ``teacher_weights`` (a local
                file or a URL) is loaded into it strictly, then it is frozen.
            distill: the options of the ``DISTILL`` node (a yacs node, or a dict of overrides of
                its defaults with the same names: ``KNOWLEDGE``, ``PGM.NUM_PROTOTYPES``, ...):
                the knowledge terms, their weights, the prototype options, the levels.
            max_iter: the schedule's length, for ``DISTILL.ATTENUATION``.
            input_format / teacher_input_format: channel orders ("BGR" / "RGB") the student and
                the teacher read; None = the model's ``input_format`` (else BGR).
            teacher_cfg: the teacher's yacs config (or the node standing for a LazyConfig
                teacher), kept as ``self.teacher_cfg``; None when built from objects.
            teacher_option / weights_option: the option names errors and checks cite.
        """
        super().__init__()
        cfg = distill_root(distill)
        if cfg is not distill:  # built from objects: the MODEL options terms read, from the student
            cfg = fill_student_options(cfg.clone(), student)
        validate_distill_config(cfg)
        self.distill_options = cfg.DISTILL
        self.student = student
        self.teacher, self.teacher_cfg = teacher, teacher_cfg
        self.teacher_weights, self.weights_option = str(teacher_weights), weights_option
        load_teacher_weights(self.teacher, self.teacher_weights, weights_option)
        freeze(self.teacher)
        self._teacher_sha256 = None
        self.student_family = family_of(self.student, "DISTILL.STUDENT_ARCHITECTURE")
        self.student_family.check_student()
        self.teacher_family = family_of(self.teacher, teacher_option)
        self.instance_pooling = str(cfg.DISTILL.INSTANCE_POOLING)
        self.student_family.instance_pooling = self.teacher_family.instance_pooling = self.instance_pooling
        self.student_family.instance_level_rule = str(cfg.DISTILL.INSTANCE_LEVELS)
        self.num_classes = self.student_family.num_classes
        if self.teacher_family.num_classes != self.num_classes:
            raise ValueError(
                f"The teacher predicts {self.teacher_family.num_classes} classes but the student "
                f"{self.num_classes}: the teacher config ({teacher_option} / OPTS) and "
                f"the student's {self.student_family.num_classes_option} must agree."
            )
        self.flip_teacher_channels = self._check_input_format(
            input_format or model_input_format(student), teacher_input_format or model_input_format(teacher)
        )
        if any(knowledge_class(n).needs_response for n in cfg.DISTILL.KNOWLEDGE):
            self.student_family.check_response_teacher(self.teacher_family)
        spec = self._build_spec(cfg)
        self.feature_levels, self.instance_levels, self.strides = (
            spec.feature_levels, spec.instance_levels, spec.strides
        )
        self.knowledge = build_knowledge_terms(cfg, spec)
        self.needs_response = any(t.needs_response for t in self.knowledge.values())
        self.prototypes = None
        if cfg.DISTILL.PGM.ENABLED:
            first = self.instance_levels[0]
            self.prototypes = PrototypeBank(
                self.instance_levels,
                self.num_classes,
                cfg.DISTILL.PGM.NUM_PROTOTYPES,
                instance_dim(spec.teacher_shapes[self.teacher_levels.source[first]].channels, self.instance_pooling),
                instance_dim(spec.student_shapes[first].channels, self.instance_pooling),
            )
        self.needs_instances = self.prototypes is not None or any(
            t.needs_instances for t in self.knowledge.values()
        )
        self.needs_every_level = any(t.needs_instances_at_every_level for t in self.knowledge.values())
        self.attenuated_terms = set(cfg.DISTILL.ATTENUATED_TERMS) if cfg.DISTILL.ATTENUATION else set()
        self.max_iter = int(max_iter)
        self.freeze_student_bn = bool(cfg.DISTILL.FREEZE_STUDENT_BN)
        # lean checkpoints: the frozen teacher comes from its own file, not from checkpoints
        self._register_state_dict_hook(_drop_teacher_state)
        self._register_load_state_dict_pre_hook(_drop_teacher_keys)
        self.register_load_state_dict_post_hook(_teacher_not_missing)
        self.train()

    @classmethod
    def from_config(cls, cfg):
        validate_distill_config(cfg)
        student = build_student(cfg)
        teacher, teacher_cfg = build_teacher_model(cfg)
        return {
            "student": student,
            "teacher": teacher,
            "teacher_weights": cfg.DISTILL.TEACHER.WEIGHTS,
            "distill": cfg,  # the whole config: some terms read the student's MODEL options
            "max_iter": cfg.SOLVER.MAX_ITER,
            "input_format": cfg.INPUT.FORMAT,
            "teacher_input_format": teacher_cfg.INPUT.FORMAT,
            "teacher_cfg": teacher_cfg,
        }

    @property
    def teacher_sha256(self) -> str:
        """sha256 of the teacher's weights file (a URL: of its local cached copy)."""
        if self._teacher_sha256 is None:
            self._teacher_sha256 = file_sha256(self.teacher_weights)
        return self._teacher_sha256

    def teacher_record(self) -> Dict[str, str]:
        """What a checkpoint keeps of the teacher: its weights' path, sha256 and option name."""
        return {"weights": self.teacher_weights, "sha256": self.teacher_sha256, "option": self.weights_option}

    def _check_input_format(self, s: str, t: str) -> bool:
        """True when the teacher reads the other channel order (RGB vs BGR)."""
        if s != t and {s, t} != {"RGB", "BGR"}:
            raise ValueError(
                f"INPUT.FORMAT of the student ({s}) and of the teacher config ({t}) are incompatible."
            )
        return s != t

    def _build_spec(self, cfg) -> DistillSpec:
        """Levels (:mod:`gkd_d2.detectors.levels`): feature maps at the shared levels,
        instances at the student's, read from the teacher's ``self.teacher_levels``."""
        s_shapes = self.student.backbone.output_shape()
        t_shapes = self.teacher.backbone.output_shape()
        inst = self.student_family.instance_levels
        self.teacher_levels = TeacherLevels(inst, s_shapes, t_shapes, self.student_family.name)
        s_div, t_div = self.student.backbone.size_divisibility, self.teacher.backbone.size_divisibility
        if s_div != t_div:
            raise ValueError(
                f"Teacher and student backbones pad images differently (size_divisibility {t_div} "
                f"vs {s_div}); their feature maps would not align."
            )
        return DistillSpec(
            student_type=self.student_family.name,
            teacher_type=self.teacher_family.name,
            num_classes=self.num_classes,
            student_shapes=dict(s_shapes),
            teacher_shapes=dict(t_shapes),
            feature_levels=feature_levels(cfg, s_shapes, t_shapes),
            instance_levels=inst,
            strides={f: s_shapes[f].stride for f in s_shapes},
            prototypes_enabled=bool(cfg.DISTILL.PGM.ENABLED),
        )

    @property
    def device(self):
        return self.student.device

    def train(self, mode: bool = True):
        """Switch the student and the knowledge terms; the teacher always stays in eval mode,
        and with ``DISTILL.FREEZE_STUDENT_BN`` so do the student's BatchNorm layers."""
        super().train(mode)
        self.teacher.eval()
        if self.freeze_student_bn:
            for m in self.student.modules():
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)):
                    m.eval()
        return self

    def forward(self, batched_inputs: List[Dict]):
        """Training: dict of losses (student's + ``loss_kd_*``). Eval: the student's output."""
        if not self.training:
            return self.student(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        images = self.student.preprocess_image(batched_inputs)
        s_feats = self.student.backbone(images.tensor)
        if not len(self.knowledge):  # DISTILL.KNOWLEDGE []: the student alone (a control run)
            return self.student_family.training_step(images, s_feats, gt_instances, False)[0]
        t_feats = self.teacher_features(batched_inputs)
        batch = self.distill_batch(self.ground_truth(gt_instances), s_feats, t_feats)
        losses, response = self.student_family.training_step(
            images, s_feats, gt_instances, record_response=self.needs_response
        )
        if response is not None:
            self.teacher_family.add_teacher_response(response, t_feats)
            response.assign_robust_weights(batch.gt_weights, self.prototypes)
            batch.response = response
        for name, term in self.knowledge.items():
            scale = self.attenuation_factor() if name in self.attenuated_terms else 1.0
            for key, value in term(batch, self.prototypes).items():
                losses[key] = value * scale
        if self.prototypes is not None and len(batch.gt):
            get_event_storage().put_scalar("kd/robust_weight_mean", float(batch.gt_weights.mean()))
        return losses

    def ground_truth(self, gt_instances) -> GroundTruth:
        """The batch's GT boxes, each with its instance-level index (``DISTILL.INSTANCE_LEVELS``)."""
        family = self.student_family
        return GroundTruth.from_instances(gt_instances, *family.level_range, rule=family.instance_level_rule)

    def distill_batch(self, gt: GroundTruth, s_feats, t_feats) -> DistillBatch:
        """Features, GT and (when needed) GT instance features and their robust weights."""
        batch = DistillBatch(gt, s_feats, t_feats, self.strides, torch.ones(len(gt), device=self.device))
        if self.needs_instances:
            batch.instance_feats_student = self.pool_instances(s_feats, gt)
            with torch.no_grad():
                batch.instance_feats_teacher = self.pool_instances(t_feats, gt)
            if self.needs_every_level:
                boxes = [b.tensor for b in gt.box_lists]
                batch.instance_feats_student_every_level = pool_instances(
                    s_feats, self.instance_levels, self.strides, boxes, reduce=self.instance_pooling
                )
                with torch.no_grad():
                    batch.instance_feats_teacher_every_level = pool_instances(
                        t_feats, self.instance_levels, self.strides, boxes, reduce=self.instance_pooling
                    )
            if self.prototypes is not None and len(gt):
                batch.gt_weights = self.prototypes.robust_weights(
                    batch.instance_feats_teacher, batch.instance_feats_student, gt.level_index, gt.classes
                )
        return batch

    def pool_instances(self, features, gt: GroundTruth) -> torch.Tensor:
        """(G, D'): GT boxes ROIAligned 7x7 at their assigned level, averaged over space (D' = D)
        or flattened (D' = 49 D; ``DISTILL.INSTANCE_POOLING``)."""
        boxes = [b.tensor for b in gt.box_lists]
        return pool_instances(features, self.instance_levels, self.strides, boxes, gt.level_index, self.instance_pooling)

    @torch.no_grad()
    def teacher_features(self, batched_inputs) -> Dict[str, torch.Tensor]:
        """The teacher's FPN features of the batch, preprocessed with the teacher's own
        pixel mean/std (and channel order), with every student instance level it lacks
        (resampled from the level it is read from: ``self.teacher_levels``)."""
        if self.flip_teacher_channels:
            batched_inputs = [{**x, "image": x["image"].flip(0)} for x in batched_inputs]
        features = self.teacher.backbone(self.teacher.preprocess_image(batched_inputs).tensor)
        return self.teacher_levels(features)

    def student_features(self, batched_inputs) -> Dict[str, torch.Tensor]:
        """The student's raw FPN features of the batch (its own preprocessing)."""
        return self.student.backbone(self.student.preprocess_image(batched_inputs).tensor)

    def attenuation_factor(self) -> float:
        """1 - iter / max_iter: the factor of the terms in ``DISTILL.ATTENUATED_TERMS``."""
        return max(0.0, 1.0 - get_event_storage().iter / max(1, self.max_iter))


def _drop_teacher_state(module, state_dict, prefix, local_metadata):
    """state_dict hook: no ``teacher.*`` entries (the teacher is rebuilt from its own file)."""
    for key in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
        del state_dict[key]
    return state_dict


def _drop_teacher_keys(state_dict, prefix, *args):
    """load_state_dict pre-hook: ``teacher.*`` entries of older checkpoints are ignored."""
    for key in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
        del state_dict[key]


def _teacher_not_missing(module, incompatible_keys):
    """load_state_dict post-hook: the teacher's own tensors are never missing."""
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if ".teacher." not in "." + k]
