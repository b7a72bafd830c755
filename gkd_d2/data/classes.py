"""The class count of a run's datasets against the model's ``NUM_CLASSES``.

Detectron2 never compares them: a model with more classes than its dataset trains silently and
fails only at evaluation ("A prediction has class=8, but the dataset only has 3 classes"), after
its checkpoints, ``config.yaml`` and ``metrics.json`` have replaced an earlier run's. The trainer
runs :func:`check_dataset_classes` once its training set is loaded, before anything is written to
``OUTPUT_DIR``; ``--eval-only`` before the model is built.

A dataset's class count is ``len(thing_classes)`` of its metadata. A COCO json fills it when it is
loaded, its category ids (1..10, or 3, 7, 42) mapped to the contiguous ids 0..n-1; a dataset
without ``thing_classes`` is checked by its largest ``category_id``.
"""
from typing import Iterable, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["NUM_CLASSES_OPTIONS", "check_dataset_classes", "dataset_classes", "num_classes_option"]

#: the config option of the class count of each meta-architecture gkd_d2 builds from a yaml
NUM_CLASSES_OPTIONS = {
    "GeneralizedRCNN": "MODEL.ROI_HEADS.NUM_CLASSES",
    "RetinaNet": "MODEL.RETINANET.NUM_CLASSES",
    "FCOS": "MODEL.FCOS.NUM_CLASSES",
}


def num_classes_option(cfg):
    """``(option, value)`` of the class count of the model ``cfg`` trains (the student of a
    distillation config), or None for a meta-architecture not in :data:`NUM_CLASSES_OPTIONS`."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "DistillationDetector":
        arch = cfg.DISTILL.STUDENT_ARCHITECTURE
    option = NUM_CLASSES_OPTIONS.get(arch)
    if option is None:
        return None
    node = cfg
    for key in option.split("."):
        node = node[key]
    return option, int(node)


def dataset_classes(name: str, dicts: Optional[Sequence[dict]] = None):
    """``(count, thing_classes)`` of dataset ``name``; ``thing_classes`` None when its metadata
    has none, the count then ``1 + the largest category_id`` of its annotations (a lower bound).
    The dataset is loaded (``dicts`` when given) only when its metadata lacks ``thing_classes``:
    loading a COCO json is what sets them."""
    meta = MetadataCatalog.get(name)
    classes = meta.get("thing_classes", None)
    if classes is None:
        if dicts is None:
            dicts = DatasetCatalog.get(name)
        classes = meta.get("thing_classes", None)
    if classes is not None:
        return len(classes), list(classes)
    ids = [a["category_id"] for d in dicts for a in d.get("annotations", ())]
    return (max(ids) + 1 if ids else 0), None


def _splits(cfg):
    """``{dataset name: option naming it}``: DATASETS.TRAIN, DATASETS.TEST, DISTILL.PGM.DATASETS."""
    out = {}
    pgm = cfg.DISTILL.PGM.DATASETS if "DISTILL" in cfg and cfg.DISTILL.PGM.ENABLED else ()
    for option, names in (("DATASETS.TRAIN", cfg.DATASETS.TRAIN), ("DATASETS.TEST", cfg.DATASETS.TEST),
                          ("DISTILL.PGM.DATASETS", pgm)):
        for n in names:
            out.setdefault(n, option)
    return out


def check_dataset_classes(cfg, names: Optional[Iterable[str]] = None):
    """Raise ``ValueError`` when a dataset of ``cfg`` (``names``, default every dataset of
    DATASETS.TRAIN, DATASETS.TEST and DISTILL.PGM.DATASETS) has another number of classes than
    the model. The message names the dataset, both numbers and the options to change (the
    student's ``NUM_CLASSES`` and, for distillation, the teacher's through
    ``DISTILL.TEACHER.OPTS``; the model build has checked that teacher and student agree)."""
    found = num_classes_option(cfg)
    if found is None:
        return
    option, n_model = found
    splits = _splits(cfg)
    for name in splits if names is None else names:
        n_data, classes = dataset_classes(name)
        if classes is not None and n_data == n_model:
            continue
        if classes is None and n_data <= n_model:
            continue
        what = f"{n_data} classes {classes}" if classes is not None else f"category ids up to {n_data - 1}"
        if cfg.MODEL.META_ARCHITECTURE == "DistillationDetector":
            who = (
                f"the student and the teacher predict {n_model} ({option}={n_model}, and the teacher's "
                "config, DISTILL.TEACHER.CONFIG_FILE with DISTILL.TEACHER.OPTS)"
            )
            fix = (
                f"set {option} {n_data} and a teacher trained on these {n_data} classes "
                f"(e.g. DISTILL.TEACHER.OPTS \"['{option}', '{n_data}']\" for a teacher of this family)"
            )
        else:
            who = f"the model predicts {n_model} ({option}={n_model})"
            fix = f"set {option} {n_data}"
        raise ValueError(
            f"Dataset '{name}' ({splits.get(name, 'DATASETS')}) has {what}, but {who}: {fix}. "
            "No checkpoint, config.yaml or metrics.json was written."
        )
