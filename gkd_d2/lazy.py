"""Distillation from Detectron2 LazyConfigs (``.py`` configs, ``tools/lazyconfig_train_net.py``).

A distillation LazyConfig has Detectron2's usual entries (``model``, ``dataloader``,
``optimizer``, ``lr_multiplier``, ``train``) plus ``distill``: the options of the yaml
``DISTILL`` node, same names (``KNOWLEDGE``, ``PGM.NUM_PROTOTYPES``, ``FEATURE.WEIGHT``, ...),
as overrides of gkd_d2's defaults. ``model`` instantiates a :class:`DistillationDetector`::

    model = L(DistillationDetector)(
        student=<a LazyCall'd Detectron2 model, e.g. model_zoo.get_config(...).model>,
        teacher=L(build_detector)(config_file="new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py"),
        teacher_weights="detectron2://new_baselines/...pkl",
        distill="${distill}",
        max_iter="${train.max_iter}",
    )

and an optional ``datasets`` entry (the yaml ``DATASETS`` sub-nodes ``SYNTHETIC``, ``SHAPES``,
``COCO_JSON``) registers gkd_d2's generated datasets and your own COCO-format json files.

:func:`distill_view` gives the yacs config the training hooks read (the prototype refresh, the
robust-weight pictures): ``DISTILL`` from ``distill``, ``DATASETS.TRAIN`` / ``TEST``,
``SOLVER.IMS_PER_BATCH`` / ``MAX_ITER``, the test-time input size and ``OUTPUT_DIR`` from the
LazyConfig's dataloaders and ``train``.
"""
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from torch import nn

from .config import add_distill_config
from .config_files import resolve_config_file
from .data.classes import dataset_classes
from .teacher import is_lazy_config
from .validation import _plain, distill_root

__all__ = ["build_detector", "distill_view", "dataset_names", "student_lazy_model"]


def build_detector(config_file: str = "", model=None, opts=(), device: str = "cpu") -> nn.Module:
    """A Detectron2 detector (weights not loaded), for ``L(build_detector)(...)`` in a LazyConfig:

    - ``model``: a LazyConfig model (instantiated by ``instantiate`` before this call), or
    - ``config_file``: a yacs yaml or a LazyConfig ``.py``, local or a model-zoo name
      (``COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml``, ``new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py``),
      with ``opts`` (yacs ``KEY VALUE`` items, or LazyConfig ``key=value`` strings) applied.

    The model goes to ``device``; its ``input_format`` is the config's (``INPUT.FORMAT``).
    """
    if (model is None) == (not config_file):
        raise ValueError("build_detector: give exactly one of config_file (a yaml / .py config) or model.")
    if model is None:
        path = resolve_config_file(config_file)
        if is_lazy_config(path):
            lazy = LazyConfig.apply_overrides(LazyConfig.load(path), [str(o) for o in opts])
            model = instantiate(lazy.model)
        else:
            cfg = get_cfg()
            add_distill_config(cfg)
            cfg.set_new_allowed(True)
            cfg.merge_from_file(path)
            cfg.merge_from_list([str(o) for o in opts])
            cfg.MODEL.DEVICE = device
            model = build_model(cfg)
            model.input_format = cfg.INPUT.FORMAT
    return model.to(torch.device(device))


def dataset_names(loader_cfg):
    """The dataset names of a LazyConfig dataloader (``dataset.names``: a str or a list)."""
    try:
        names = loader_cfg.dataset.names
    except Exception:  # a dataset built otherwise: nothing to register or sample by name
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def model_num_classes(model):
    """The number of classes a Detectron2 detector predicts (``roi_heads.num_classes`` of an
    R-CNN, ``num_classes`` of a dense detector), or None."""
    for part in (getattr(model, "roi_heads", None), model):
        n = getattr(part, "num_classes", None)
        if n is not None:
            return int(n)
    return None


def check_lazy_dataset_classes(lazy, student):
    """Raise ``ValueError`` when a dataset of ``dataloader.train`` / ``dataloader.test`` has
    another number of classes than the built ``student`` (the model build has checked that the
    teacher agrees with it), naming the dataset, both numbers and what to change; the run has
    written nothing yet."""
    n_model = model_num_classes(student)
    if n_model is None:
        return
    for split in ("train", "test"):
        if split not in lazy.dataloader:
            continue
        for name in dataset_names(lazy.dataloader[split]):
            n_data, classes = dataset_classes(name)
            if (n_data == n_model) if classes is not None else (n_data <= n_model):
                continue
            what = f"{n_data} classes {classes}" if classes is not None else f"category ids up to {n_data - 1}"
            raise ValueError(
                f"Dataset '{name}' (dataloader.{split}.dataset.names) has {what}, but the student and "
                f"the teacher predict {n_model}: set the student's num_classes to {n_data} (e.g. "
                f"model.student.roi_heads.num_classes={n_data}, or model.student.num_classes for a dense "
                "detector) and use a teacher trained on these classes. No checkpoint or config.yaml "
                "was written."
            )


def _test_size(lazy):
    """(short edge, max size) of the test mapper's ResizeShortestEdge, else of the train one."""
    for split in ("test", "train"):
        try:
            augs = lazy.dataloader[split].mapper.augmentations
        except Exception:
            continue
        for aug in augs:
            target = aug.get("_target_", None) if hasattr(aug, "get") else None
            if target in (T.ResizeShortestEdge, "detectron2.data.transforms.ResizeShortestEdge"):
                short = aug.short_edge_length
                short = short if isinstance(short, int) else max(short)
                return int(short), int(aug.get("max_size", 1333))
            if target in (T.ResizeScale, "detectron2.data.transforms.ResizeScale"):
                side = int(max(aug.target_height, aug.target_width))
                return side, side
    return 800, 1333


def distill_view(lazy):
    """The yacs config of a distillation LazyConfig that gkd_d2's hooks and dataset registration
    read (module doc); validated like a yaml config."""
    cfg = distill_root(lazy.get("distill", None))
    cfg.DISTILL.TEACHER.WEIGHTS = str(lazy.model.get("teacher_weights", ""))
    datasets = _plain(lazy.get("datasets", None) or {})
    if "COCO_JSON" in datasets:
        datasets["COCO_JSON"] = [list(e) for e in datasets["COCO_JSON"]]
    cfg.DATASETS.merge_from_other_cfg(type(cfg)(datasets))
    cfg.DATASETS.TRAIN = dataset_names(lazy.dataloader.train)
    cfg.DATASETS.TEST = dataset_names(lazy.dataloader.test) if "test" in lazy.dataloader else ()
    cfg.SOLVER.IMS_PER_BATCH = int(lazy.dataloader.train.total_batch_size)
    cfg.SOLVER.MAX_ITER = int(lazy.train.max_iter)
    cfg.INPUT.FORMAT = str(lazy.dataloader.train.mapper.get("image_format", "BGR"))
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = _test_size(lazy)
    cfg.MODEL.DEVICE = str(lazy.train.get("device", "cuda"))
    cfg.OUTPUT_DIR = str(lazy.train.output_dir)
    cfg.SEED = int(lazy.train.get("seed", -1))
    cfg.freeze()
    return cfg


def student_lazy_model(lazy):
    """The LazyConfig node of the student of a distillation LazyConfig's ``model``; an error
    when the student is not a plain LazyCall'd Detectron2 model (e.g. ``build_detector`` of a
    yaml: export that student with the yaml path)."""
    student = lazy.model.get("student", None)
    target = student.get("_target_", None) if student is not None and hasattr(student, "get") else None
    name = target if isinstance(target, str) else getattr(target, "__qualname__", "")
    if student is None or not name or name.endswith("build_detector"):
        raise ValueError(
            "model.student is not a LazyCall'd Detectron2 model (it is "
            f"{name or type(student).__name__}): a stock LazyConfig student can only be exported "
            "from one; write the student as e.g. model_zoo.get_config(...).model."
        )
    return student


def fill_student_options(cfg, student):
    """Set the ``MODEL`` options some knowledge terms read (``chen_reg``: the box coder's
    weights; ``fgfi``: the anchor levels and anchors) from a built ``student``, for a model
    built from objects rather than from a yaml config."""
    rpn = getattr(student, "proposal_generator", None)
    generator = getattr(rpn, "anchor_generator", None) or getattr(student, "anchor_generator", None)
    if rpn is not None:
        cfg.MODEL.RPN.IN_FEATURES = list(rpn.in_features)
        predictor = student.roi_heads.box_predictor
        cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = tuple(predictor.box2box_transform.weights)
    if hasattr(student, "head_in_features"):
        cfg.MODEL.RETINANET.IN_FEATURES = list(student.head_in_features)
    if generator is not None and hasattr(generator, "cell_anchors"):
        sizes, ratios = [], []
        for cell in generator.cell_anchors:  # (A, 4) boxes centred on 0, size-major order
            w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
            sizes.append(sorted({round(float(s), 4) for s in (w * h).sqrt()}))
            ratios.append(list(dict.fromkeys(round(float(r), 4) for r in h / w)))
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = sizes
        cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = ratios
        cfg.MODEL.ANCHOR_GENERATOR.OFFSET = float(generator.offset)
    return cfg
