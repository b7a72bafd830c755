"""Datasets: your own COCO-format data (``DATASETS.COCO_JSON``, :mod:`gkd_d2.data.coco`) and the
generated data of the demo, tests and benchmarks (:mod:`gkd_d2.data.generated`), registered
from a config by :func:`register_datasets_from_cfg`."""
from .builtin import gkd_dataset_files, register_datasets_from_cfg
from .coco import load_coco_json_checked, register_coco_json_datasets
