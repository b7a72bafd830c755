"""Datasets: the synthetic "ambiguous instances" COCO data of the demo, tests and benchmarks."""
from .builtin import register_datasets_from_cfg
from .synthetic import SYNTHETIC_CLASSES, generate_synthetic_coco, register_synthetic_dataset
