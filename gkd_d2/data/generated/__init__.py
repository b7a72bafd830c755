"""Generated COCO data for the demo, the tests and the benchmarks: the "ambiguous instances"
data (``synthetic.py``) and the "shapes" data (``shapes.py``: learnable classes, an ambiguous
minority), their files on disk (``storage.py``), their registration from a config
(``registration.py``) and the demo's configs (``demo.py``)."""
from .demo import DEMO_CONFIGS, generated_dataset_opts
from .registration import GENERATED_DATASETS, generated_dataset_files, register_generated_from_cfg
from .shapes import SHAPES_CLASSES, generate_shapes_coco, register_shapes_dataset
from .synthetic import SYNTHETIC_CLASSES, generate_synthetic_coco, register_synthetic_dataset
