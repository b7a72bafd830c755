"""Registering the datasets a config names: the generated data on demand
(:mod:`gkd_d2.data.generated`) and the COCO-format datasets listed in ``DATASETS.COCO_JSON``
(:mod:`gkd_d2.data.coco`)."""
from .coco import coco_json_datasets, register_coco_json_datasets
from .generated.registration import generated_dataset_files, register_generated_from_cfg


def gkd_dataset_files(cfg):
    """``{name: (json_file, image_root)}`` of every dataset name gkd_d2 itself registers from
    ``cfg`` (synthetic, shapes, ``DATASETS.COCO_JSON``): names stock Detectron2 does not know.
    Nothing is generated or registered."""
    files = generated_dataset_files(cfg)
    files.update(coco_json_datasets(cfg))
    return files


def register_datasets_from_cfg(cfg):
    """Register every ``DATASETS.COCO_JSON`` entry (:func:`register_coco_json_datasets`), then
    generate (once) and register every ``gkd_synth_*`` / ``gkd_shapes_*`` dataset ``cfg`` uses
    (:func:`register_generated_from_cfg`). Other names must already be registered (Detectron2's
    builtin COCO / VOC names are, when their files are under ``$DETECTRON2_DATASETS``)."""
    register_coco_json_datasets(cfg)
    register_generated_from_cfg(cfg)
