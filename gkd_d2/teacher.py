"""Building and freezing the teacher from its own Detectron2 config and weights.

The teacher's config is a yacs yaml (``build_teacher_cfg``) or a Detectron2 LazyConfig ``.py``
(``load_lazy_teacher_config``, its ``model`` instantiated); either may be a model-zoo name.
"""
import hashlib
import logging
import os
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from .config import add_distill_config
from .config_files import resolve_config_file

logger = logging.getLogger(__name__)

# Keys a Detectron2 checkpoint may legitimately lack (they are recomputed by the model, or,
# for BatchNorm's num_batches_tracked, unused in eval mode; Detectron2 accepts them too).
_IGNORED_MISSING = ("pixel_mean", "pixel_std", "anchor_generator.cell_anchors", "num_batches_tracked")


def is_lazy_config(path) -> bool:
    """Whether ``DISTILL.TEACHER.CONFIG_FILE`` names a LazyConfig (a ``.py`` file)."""
    return str(path).endswith(".py")


def build_teacher_cfg(cfg):
    """The teacher's own config: ``DISTILL.TEACHER.CONFIG_FILE`` + ``DISTILL.TEACHER.OPTS``.

    The teacher runs on the student's ``MODEL.DEVICE``. For a LazyConfig teacher: see
    :func:`lazy_teacher_cfg` (a small yacs node describing it).
    """
    if is_lazy_config(cfg.DISTILL.TEACHER.CONFIG_FILE):
        return lazy_teacher_cfg(cfg, load_lazy_teacher_config(cfg))
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


def _lazy_overrides(opts):
    """``DISTILL.TEACHER.OPTS`` as LazyConfig overrides: ``"key=value"`` strings, or yacs-style
    ``KEY VALUE`` pairs joined into them."""
    opts = [str(o) for o in opts]
    if all("=" in o for o in opts):
        return opts
    if len(opts) % 2:
        raise ValueError(
            f"DISTILL.TEACHER.OPTS={opts}: for a LazyConfig teacher give 'key=value' strings "
            "(e.g. 'model.num_classes=20') or an even number of KEY VALUE items."
        )
    return [f"{k}={v}" for k, v in zip(opts[::2], opts[1::2])]


def load_lazy_teacher_config(cfg):
    """The LazyConfig of ``DISTILL.TEACHER.CONFIG_FILE`` (a local ``.py`` or a model-zoo name
    such as ``new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py``) with ``DISTILL.TEACHER.OPTS``
    applied; its ``model`` is what :func:`build_teacher` instantiates."""
    path = resolve_config_file(cfg.DISTILL.TEACHER.CONFIG_FILE)
    lazy = LazyConfig.load(path)
    if "model" not in lazy:
        raise ValueError(
            f"DISTILL.TEACHER.CONFIG_FILE='{cfg.DISTILL.TEACHER.CONFIG_FILE}': the LazyConfig "
            "has no 'model' entry to instantiate."
        )
    if cfg.DISTILL.TEACHER.OPTS:
        lazy = LazyConfig.apply_overrides(lazy, _lazy_overrides(cfg.DISTILL.TEACHER.OPTS))
    return lazy


def lazy_input_format(lazy) -> str:
    """The channel order a LazyConfig model reads: ``model.input_format``, else
    ``dataloader.train.mapper.image_format``, else Detectron2's default ``BGR``."""
    fmt = lazy.model.get("input_format", None)
    if fmt is None:
        try:
            fmt = lazy.dataloader.train.mapper.image_format
        except Exception:  # no dataloader / mapper / key in this config
            fmt = None
    return str(fmt) if fmt else "BGR"


def lazy_teacher_cfg(cfg, lazy):
    """A yacs node standing for a LazyConfig teacher's config, with what gkd_d2 reads from a
    teacher config: ``INPUT.FORMAT``, ``MODEL.META_ARCHITECTURE`` (the class ``model``
    instantiates), ``MODEL.DEVICE``, ``MODEL.WEIGHTS``, and ``LAZY_CONFIG`` (the file)."""
    target = lazy.model.get("_target_", None)
    arch = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    node = CfgNode(
        {
            "INPUT": {"FORMAT": lazy_input_format(lazy)},
            "MODEL": {
                "META_ARCHITECTURE": arch.rsplit(".", 1)[-1],
                "DEVICE": cfg.MODEL.DEVICE,
                "WEIGHTS": cfg.DISTILL.TEACHER.WEIGHTS,
            },
            "LAZY_CONFIG": resolve_config_file(cfg.DISTILL.TEACHER.CONFIG_FILE),
        }
    )
    node.freeze()
    return node


class TeacherCheckpointer(DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` that refuses partial loads.

    Detectron2 skips checkpoint tensors whose shape differs from the model's with a warning;
    for a teacher that silently means random weights, so here it is an error that names the
    tensors (typically a different number of classes than the teacher config says). Like
    Detectron2, it accepts checkpoints without ``pixel_mean`` / ``pixel_std``, cell anchors or
    BatchNorm's ``num_batches_tracked``.
    """

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        problems = [
            f"'{k}': checkpoint {tuple(shape_ckpt)} vs teacher model {tuple(shape_model)}"
            for k, shape_ckpt, shape_model in incompatible.incorrect_shapes
        ]
        mismatched = {k for k, _, _ in incompatible.incorrect_shapes}
        missing = [  # a tensor of the wrong shape is reported once, under "Shapes differ"
            k
            for k in incompatible.missing_keys
            if k not in mismatched and not any(s in k for s in _IGNORED_MISSING)
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


def load_teacher_weights(teacher, weights, option="DISTILL.TEACHER.WEIGHTS"):
    """Load ``weights`` (local file or URL) into ``teacher``, strictly.

    Raises:
        ValueError / FileNotFoundError / RuntimeError with a message naming ``option``.
    """
    if not weights:
        raise ValueError(
            f"{option} is empty: a teacher needs trained weights "
            "(a local .pth/.pkl file or a detectron2:// model-zoo URL)."
        )
    scheme = urlparse(weights).scheme
    if scheme in ("", "file") and not os.path.isfile(weights):
        raise FileNotFoundError(f"{option}='{weights}': no such file.")
    try:
        TeacherCheckpointer(teacher).load(weights)
    except (OSError, ConnectionError) as e:
        raise RuntimeError(
            f"{option}='{weights}' could not be read ({e}). Without network "
            f"access, download the checkpoint elsewhere and point {option} at "
            "the local file."
        ) from e


def file_sha256(weights) -> str:
    """sha256 (hex) of a weights file; for a URL, of the local copy Detectron2 downloaded."""
    path = PathManager.get_local_path(weights)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_input_format(model) -> str:
    """The channel order a built detector reads: its ``input_format``, else Detectron2's BGR."""
    return str(getattr(model, "input_format", None) or "BGR")


def build_teacher_model(cfg):
    """The teacher of ``cfg``, its weights not loaded yet: ``(teacher, teacher_cfg)``.

    ``teacher_cfg`` is the teacher's yacs config, or for a LazyConfig teacher the node of
    :func:`lazy_teacher_cfg` (``INPUT.FORMAT``, ``MODEL.META_ARCHITECTURE``, ...).
    """
    if is_lazy_config(cfg.DISTILL.TEACHER.CONFIG_FILE):
        lazy = load_lazy_teacher_config(cfg)
        teacher_cfg = lazy_teacher_cfg(cfg, lazy)
        teacher = instantiate(lazy.model).to(torch.device(cfg.MODEL.DEVICE))
    else:
        teacher_cfg = build_teacher_cfg(cfg)
        teacher = build_model(teacher_cfg)
    return teacher, teacher_cfg


def build_teacher(cfg):
    """Build the frozen teacher of ``cfg``: returns ``(teacher, teacher_cfg)``
    (:func:`build_teacher_model` with ``DISTILL.TEACHER.WEIGHTS`` loaded).

    The teacher has ``requires_grad=False`` everywhere and is in eval mode; the distillation
    wrapper keeps it there.
    """
    teacher, teacher_cfg = build_teacher_model(cfg)
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
