"""gkd_d2: knowledge distillation of Detectron2 detectors with global knowledge.

Importing the package registers ``DistillationDetector`` and a yacs-buildable ``FCOS`` in
Detectron2's ``META_ARCH_REGISTRY``, the narrow ResNet backbones (``gkd_d2.narrow_resnet``) in
``BACKBONE_REGISTRY`` and the knowledge terms in ``KNOWLEDGE_REGISTRY``.
"""
from .config import add_distill_config, load_config
from .checkpoint import DistillationCheckpointer
from .meta_arch import DistillationDetector
from . import narrow_resnet  # noqa: F401  (registers the narrow backbones)
from .prototypes import (
    PrototypeBank,
    PrototypeRefresher,
    PrototypeRefreshHook,
    generate_prototypes,
)
from .engine import DistillTrainer, build_evaluator

__all__ = [
    "add_distill_config",
    "load_config",
    "DistillationCheckpointer",
    "DistillationDetector",
    "DistillTrainer",
    "PrototypeBank",
    "PrototypeRefresher",
    "PrototypeRefreshHook",
    "build_evaluator",
    "generate_prototypes",
]
__version__ = "0.1.0"
