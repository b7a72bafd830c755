"""Building and freezing the teacher from its own Detectron2 config and weights."""
import logging
import os
from urllib.parse import urlparse

import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from .config import add_distill_config

logger = logging.getLogger(__name__)

# Keys a Detectron2 checkpoint may legitimately lack (they are recomputed by the model).
_IGNORED_MISSING = ("pixel_mean", "pixel_std", "anchor_generator.cell_anchors")


def resolve_config_file(path):
    """Return a readable yaml for ``path``: a local file or a model-zoo name.

    Raises:
        FileNotFoundError: naming ``DISTILL.TEACHER.CONFIG_FILE`` when neither exists.
    """
    if not path:
        raise ValueError(
            "DISTILL.TEACHER.CONFIG_FILE is empty: set it to the teacher's Detectron2 yaml "
            "(a local file or a model-zoo name like 'COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml')."
        )
    if os.path.isfile(path):
        return path
    try:
        return model_zoo.get_config_file(path)
    except RuntimeError:
        raise FileNotFoundError(
            f"DISTILL.TEACHER.CONFIG_FILE='{path}' is neither an existing file nor a "
            "Detectron2 model-zoo config name."
        ) from None


def build_teacher_cfg(cfg):
    """The teacher's own config: ``DISTILL.TEACHER.CONFIG_FILE`` + ``DISTILL.TEACHER.OPTS``.

    The teacher runs on the student's ``MODEL.DEVICE``.
    """
    teacher_cfg = get_cfg()
    add_distill_config(teacher_cfg)  # MODEL.FCOS, for an FCOS teacher
    teacher_cfg.set_new_allowed(True)  # teacher yamls may carry project-specific keys
    teacher_cfg.merge_from_file(resolve_config_file(cfg.DISTILL.TEACHER.CONFIG_FILE))
    if cfg.DISTILL.TEACHER.OPTS:
        teacher_cfg.merge_from_list(list(cfg.DISTILL.TEACHER.OPTS))
    teacher_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    teacher_cfg.MODEL.WEIGHTS = cfg.DISTILL.TEACHER.WEIGHTS
    teacher_cfg.freeze()
    return teacher_cfg


class TeacherCheckpointer(DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` that refuses partial loads.

    Detectron2 skips checkpoint tensors whose shape differs from the model's with a warning;
    for a teacher that silently means random weights, so here it is an error that names the
    tensors (typically a different number of classes than the teacher config says).
    """

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        problems = [
            f"'{k}': checkpoint {tuple(shape_ckpt)} vs teacher model {tuple(shape_model)}"
            for k, shape_ckpt, shape_model in incompatible.incorrect_shapes
        ]
        missing = [
            k for k in incompatible.missing_keys if not any(s in k for s in _IGNORED_MISSING)
        ]
        if problems or missing:
            msg = "The teacher weights do not match DISTILL.TEACHER.CONFIG_FILE."
            if problems:
                msg += " Shapes differ (is the number of classes the same?): " + "; ".join(
                    problems[:6]
                )
            if missing:
                msg += f" Missing from the checkpoint: {missing[:6]}"
                msg += " ..." if len(missing) > 6 else ""
            raise ValueError(msg)
        return incompatible


def load_teacher_weights(teacher, weights):
    """Load ``weights`` (local file or URL) into ``teacher``, strictly.

    Raises:
        ValueError / FileNotFoundError / RuntimeError with a message naming
        ``DISTILL.TEACHER.WEIGHTS``.
    """
    if not weights:
        raise ValueError(
            "DISTILL.TEACHER.WEIGHTS is empty: a teacher needs trained weights "
            "(a local .pth/.pkl file or a detectron2:// model-zoo URL)."
        )
    scheme = urlparse(weights).scheme
    if scheme in ("", "file") and not os.path.isfile(weights):
        raise FileNotFoundError(f"DISTILL.TEACHER.WEIGHTS='{weights}': no such file.")
    try:
        TeacherCheckpointer(teacher).load(weights)
    except (OSError, ConnectionError) as e:
        raise RuntimeError(
            f"DISTILL.TEACHER.WEIGHTS='{weights}' could not be read ({e}). Without network "
            "access, download the checkpoint elsewhere and point DISTILL.TEACHER.WEIGHTS at "
            "the local file."
        ) from e


def build_teacher(cfg):
    """Build the frozen teacher of ``cfg``: returns ``(teacher, teacher_cfg)``.

    The teacher has ``requires_grad=False`` everywhere and is in eval mode; the distillation
    wrapper keeps it there.
    """
    teacher_cfg = build_teacher_cfg(cfg)
    teacher = build_model(teacher_cfg)
    load_teacher_weights(teacher, cfg.DISTILL.TEACHER.WEIGHTS)
    freeze(teacher)
    logger.info(
        "Teacher %s (%s) loaded from %s",
        teacher_cfg.MODEL.META_ARCHITECTURE,
        cfg.DISTILL.TEACHER.CONFIG_FILE,
        cfg.DISTILL.TEACHER.WEIGHTS,
    )
    return teacher, teacher_cfg


def freeze(model: torch.nn.Module):
    """No gradients, eval mode."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model
