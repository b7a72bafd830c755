"""Datasets: the synthetic "ambiguous instances" COCO data of the demo, tests and benchmarks,
and the "shapes" data (learnable classes, an ambiguous minority)."""
from .builtin import register_datasets_from_cfg
from .shapes import SHAPES_CLASSES, generate_shapes_coco, register_shapes_dataset
from .synthetic import SYNTHETIC_CLASSES, generate_synthetic_coco, register_synthetic_dataset
