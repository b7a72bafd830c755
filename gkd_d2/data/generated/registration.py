"""The generated datasets a config names: ``gkd_synth_*`` from ``DATASETS.SYNTHETIC`` and
``gkd_shapes_*`` from ``DATASETS.SHAPES``, generated once and registered on demand."""
import os

from .shapes import SHAPES_CLASSES, register_shapes_dataset
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
#: config node -> (its splits, the function that generates and registers one)
_FAMILIES = {
    "SYNTHETIC": (SYNTHETIC_SPLITS, register_synthetic_dataset),
    "SHAPES": (SHAPES_SPLITS, register_shapes_dataset),
}
#: the generated datasets a demo config can train on: key -> (config node, train name, val name,
#: classes); ``tools/demo.py --dataset`` and ``benchmarks/replica.py --dataset`` take the keys
GENERATED_DATASETS = {
    "synth": ("SYNTHETIC", "gkd_synth_train", "gkd_synth_val", SYNTHETIC_CLASSES),
    "shapes": ("SHAPES", "gkd_shapes_train", "gkd_shapes_val", SHAPES_CLASSES),
}


def generated_dataset_files(cfg):
    """``{name: (json_file, image_root)}`` of every generated dataset ``cfg`` describes (absolute
    paths, from the working directory). Nothing is generated or registered."""
    files = {}
    for node, (splits, _) in _FAMILIES.items():
        if node in cfg.DATASETS:
            for name, (_, _, folder) in splits.items():
                root = os.path.abspath(os.path.join(cfg.DATASETS[node].ROOT, folder))
                files[name] = (os.path.join(root, "annotations.json"), os.path.join(root, "images"))
    return files


def register_generated_from_cfg(cfg):
    """Generate (once) and register every ``gkd_synth_*`` dataset ``cfg`` uses (``DATASETS.TRAIN``,
    ``TEST``, ``DISTILL.PGM.DATASETS``), from ``cfg.DATASETS.SYNTHETIC``, and every
    ``gkd_shapes_*`` one from ``cfg.DATASETS.SHAPES``; other names are left alone."""
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) + list(cfg.DISTILL.PGM.DATASETS)
    for name in dict.fromkeys(names):
        for node, (splits, register) in _FAMILIES.items():
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
