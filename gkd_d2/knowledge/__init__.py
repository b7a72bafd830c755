"""Knowledge terms selectable in ``cfg.DISTILL.KNOWLEDGE`` (registered on import).

The paper's global-knowledge method: ``feature``, ``response``, ``global``. The comparison
methods: ``chen_cls``, ``chen_reg``, ``chen_hint`` (Chen et al. 2017), ``fitnet``, ``fgfi``,
``defeat``, ``rkd``, ``kd``. Any combination is valid. Every formula is in ``losses.py``; the
adaptation layers in ``adapters.py``; one term per module.
"""
from .base import (
    KNOWLEDGE_REGISTRY,
    DistillSpec,
    KnowledgeTerm,
    build_knowledge_terms,
    knowledge_class,
    register_knowledge,
)
from .chen import ChenClassification, ChenRegression
from .defeat import DeFeat
from .feature import FeatureKnowledge
from .fgfi import FineGrainedImitation
from .global_knowledge import GlobalKnowledge
from .hint import ChenHint, FitNet
from .kd import VanillaKD
from .response import ResponseKnowledge
from .rkd import RelationalKD
