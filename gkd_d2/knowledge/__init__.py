"""Knowledge terms selectable in ``cfg.DISTILL.KNOWLEDGE`` (registered on import)."""
from .base import (
    KNOWLEDGE_REGISTRY,
    DistillSpec,
    KnowledgeTerm,
    build_knowledge_terms,
    register_knowledge,
)
from .feature import FeatureKnowledge
from .global_knowledge import GlobalKnowledge
from .response import ResponseKnowledge
