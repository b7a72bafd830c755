"""Registering the datasets a config names: the synthetic demo data on demand."""
import os

from .synthetic import register_synthetic_dataset

#: dataset name -> (config key of its size, seed offset, sub-folder)
SYNTHETIC_SPLITS = {
    "gkd_synth_train": ("NUM_TRAIN", 0, "train"),
    "gkd_synth_val": ("NUM_VAL", 1000, "val"),
}


def register_datasets_from_cfg(cfg):
    """Generate (once) and register every ``gkd_synth_*`` dataset ``cfg`` uses, from
    ``cfg.DATASETS.SYNTHETIC``. Other names must already be registered (Detectron2's builtin
    COCO / VOC names are, when their files are under ``$DETECTRON2_DATASETS``)."""
    s = cfg.DATASETS.SYNTHETIC
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) + list(cfg.DISTILL.PGM.DATASETS)
    for name in dict.fromkeys(names):
        if name in SYNTHETIC_SPLITS:
            size_key, seed_offset, folder = SYNTHETIC_SPLITS[name]
            register_synthetic_dataset(
                name,
                os.path.join(s.ROOT, folder),
                num_images=int(s[size_key]),
                image_size=int(s.IMAGE_SIZE),
                seed=int(s.SEED) + seed_offset,
            )
