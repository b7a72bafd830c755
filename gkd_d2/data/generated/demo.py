"""The demo's configs (``configs/Demo``) and the overrides that point them at a generated
dataset: what ``tools/demo.py`` and ``benchmarks/`` run."""
from .registration import GENERATED_DATASETS

#: The demo's (teacher, student alone, distillation) configs per detector, relative to the
#: repository root.
DEMO_CONFIGS = {
    "faster_rcnn": (
        "configs/Demo/teacher_faster_rcnn_R34_FPN.yaml",
        "configs/Demo/student_faster_rcnn_R18_FPN.yaml",
        "configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml",
    ),
    "retinanet": (
        "configs/Demo/teacher_retinanet_R34_FPN.yaml",
        "configs/Demo/student_retinanet_R18_FPN.yaml",
        "configs/Demo/gkd_retinanet_R34_to_R18_FPN.yaml",
    ),
    "fcos": (
        "configs/Demo/teacher_fcos_R34_FPN.yaml",
        "configs/Demo/student_fcos_R18_FPN.yaml",
        "configs/Demo/gkd_fcos_R34_to_R18_FPN.yaml",
    ),
}


def generated_dataset_opts(dataset, root=None):
    """Config overrides (a flat ``[KEY, VALUE, ...]`` list for ``merge_from_list`` or
    ``tools/train_net.py``) that point a ``configs/Demo`` config at the generated ``dataset``
    (a key of :data:`GENERATED_DATASETS`): its train / val splits, generated under ``root``
    (default: the config's ``DATASETS.<node>.ROOT``), and its number of classes for every
    detector family, in the student's config and in the teacher's (``DISTILL.TEACHER.OPTS``)."""
    if dataset not in GENERATED_DATASETS:
        raise ValueError(f"unknown generated dataset '{dataset}' (one of {sorted(GENERATED_DATASETS)})")
    node, train_name, val_name, classes = GENERATED_DATASETS[dataset]
    n = str(len(classes))
    num_classes = ["MODEL.RETINANET.NUM_CLASSES", n, "MODEL.ROI_HEADS.NUM_CLASSES", n, "MODEL.FCOS.NUM_CLASSES", n]
    opts = ["DATASETS.TRAIN", f"('{train_name}',)", "DATASETS.TEST", f"('{val_name}',)"]
    if root:
        opts += [f"DATASETS.{node}.ROOT", root]
    return opts + num_classes + ["DISTILL.TEACHER.OPTS", str(num_classes)]
