"""Registering the datasets a config names: the synthetic demo data on demand, and the
COCO-format datasets listed in ``DATASETS.COCO_JSON``."""
import os

from .shapes import SHAPES_CLASSES, register_shapes_dataset
from .generated import load_coco_json_checked
from .shapes_options import shapes_generator_kwargs
from .synthetic import SYNTHETIC_CLASSES, register_synthetic_dataset

#: dataset name -> (config key of its size, seed offset, sub-folder)
SYNTHETIC_SPLITS = {
    "gkd_synth_train": ("NUM_TRAIN", 0, "train"),
    "gkd_synth_val": ("NUM_VAL", 1000, "val"),
}
#: the same for the "shapes" data (``cfg.DATASETS.SHAPES``)
SHAPES_SPLITS = {
    "gkd_shapes_train": ("NUM_TRAIN", 0, "train"),
    "gkd_shapes_val": ("NUM_VAL", 1000, "val"),
}
#: the generated datasets a demo config can train on: key -> (config node, train name, val name,
#: classes); ``tools/demo.py --dataset`` and ``benchmarks/replica.py --dataset`` take the keys
GENERATED_DATASETS = {
    "synth": ("SYNTHETIC", "gkd_synth_train", "gkd_synth_val", SYNTHETIC_CLASSES),
    "shapes": ("SHAPES", "gkd_shapes_train", "gkd_shapes_val", SHAPES_CLASSES),
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


def coco_json_datasets(cfg):
    """``DATASETS.COCO_JSON`` as ``{name: (json_file, image_root)}`` (absolute paths, from the
    working directory); a malformed entry is a ``ValueError`` naming the option."""
    out = {}
    for i, entry in enumerate(cfg.DATASETS.get("COCO_JSON", [])):
        parts = list(entry) if isinstance(entry, (list, tuple)) else None
        if not parts or len(parts) != 3 or not all(isinstance(p, str) and p for p in parts):
            raise ValueError(
                f"DATASETS.COCO_JSON[{i}] = {entry!r}: each entry must be a [name, json_file, "
                "image_root] triple of non-empty strings, e.g. "
                '[["my_train", "data/train.json", "data/train_images"]].'
            )
        name, json_file, image_root = parts
        if name in out:
            raise ValueError(f"DATASETS.COCO_JSON: dataset '{name}' is listed twice.")
        out[name] = (os.path.abspath(os.path.expanduser(json_file)), os.path.abspath(os.path.expanduser(image_root)))
    return out


def gkd_dataset_files(cfg):
    """``{name: (json_file, image_root)}`` of every dataset name gkd_d2 itself registers from
    ``cfg`` (synthetic, shapes, ``DATASETS.COCO_JSON``): names stock Detectron2 does not know.
    Nothing is generated or registered."""
    files = {}
    for splits, node in ((SYNTHETIC_SPLITS, "SYNTHETIC"), (SHAPES_SPLITS, "SHAPES")):
        if node in cfg.DATASETS:
            for name, (_, _, folder) in splits.items():
                root = os.path.abspath(os.path.join(cfg.DATASETS[node].ROOT, folder))
                files[name] = (os.path.join(root, "annotations.json"), os.path.join(root, "images"))
    files.update(coco_json_datasets(cfg))
    return files


def _check_json_end(json_file, name):
    """A cheap test for a truncated json (the whole file is parsed only when the dataset is
    loaded): a COCO json is one object, so its last non-blank byte is ``}``."""
    with open(json_file, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 256))
        tail = f.read().rstrip()
    if not tail.endswith(b"}"):
        raise ValueError(
            f"DATASETS.COCO_JSON: the json file '{json_file}' of dataset '{name}' is truncated "
            "or not a COCO json (it does not end with '}')."
        )


def register_coco_json_datasets(cfg):
    """Register every ``DATASETS.COCO_JSON`` entry as Detectron2's ``register_coco_instances``
    does (metadata ``json_file``, ``image_root``, ``evaluator_type="coco"``; ``thing_classes``
    once loaded), with errors that name the path: a missing json file or image folder at once,
    a truncated json at once, any other corrupt json when the dataset is loaded. Registering the
    same entry again is a no-op; a name already registered with other files is an error."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name, (json_file, image_root) in coco_json_datasets(cfg).items():
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if (meta.get("json_file", None), meta.get("image_root", None)) == (json_file, image_root):
                continue
            raise ValueError(
                f"DATASETS.COCO_JSON: dataset '{name}' is already registered (json_file="
                f"{meta.get('json_file', None)}, image_root={meta.get('image_root', None)}); "
                "use another name."
            )
        if not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"DATASETS.COCO_JSON: the json file '{json_file}' of dataset '{name}' does not exist."
            )
        if not os.path.isdir(image_root):
            raise FileNotFoundError(
                f"DATASETS.COCO_JSON: the image folder '{image_root}' of dataset '{name}' does not exist."
            )
        _check_json_end(json_file, name)
        DatasetCatalog.register(
            name, lambda j=json_file, r=image_root, n=name: load_coco_json_checked(j, r, n)
        )
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")


def register_datasets_from_cfg(cfg):
    """Generate (once) and register every ``gkd_synth_*`` dataset ``cfg`` uses, from
    ``cfg.DATASETS.SYNTHETIC``, every ``gkd_shapes_*`` one from ``cfg.DATASETS.SHAPES``, and
    every ``DATASETS.COCO_JSON`` entry (:func:`register_coco_json_datasets`).
    Other names must already be registered (Detectron2's builtin COCO / VOC names are, when
    their files are under ``$DETECTRON2_DATASETS``)."""
    register_coco_json_datasets(cfg)
    families = (
        (SYNTHETIC_SPLITS, "SYNTHETIC", register_synthetic_dataset),
        (SHAPES_SPLITS, "SHAPES", register_shapes_dataset),
    )
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) + list(cfg.DISTILL.PGM.DATASETS)
    for name in dict.fromkeys(names):
        for splits, node, register in families:
            if name in splits:
                s = cfg.DATASETS[node]
                size_key, seed_offset, folder = splits[name]
                register(
                    name,
                    os.path.join(s.ROOT, folder),
                    num_images=int(s[size_key]),
                    image_size=int(s.IMAGE_SIZE),
                    seed=int(s.SEED) + seed_offset,
                    **shapes_generator_kwargs(s),
                )
