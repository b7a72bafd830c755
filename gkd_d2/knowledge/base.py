"""The registry of knowledge terms and what every term is given.

A knowledge term is an ``nn.Module`` registered in :data:`KNOWLEDGE_REGISTRY` under the name
used in ``DISTILL.KNOWLEDGE``. Its options come through Detectron2's ``@configurable``: it is
built as ``Term(cfg, spec)`` (``from_config`` reads the options and checks them, errors naming
the option) or directly from keyword arguments, without a model. It is called as
``term(batch, prototypes)`` with a :class:`gkd_d2.structures.DistillBatch` and the
:class:`gkd_d2.prototypes.PrototypeBank` (or None), and returns ``{"loss_kd_<name>...": Tensor}``
already multiplied by its own weight (lambda).
"""
from dataclasses import dataclass
from typing import Dict, List, Tuple

from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

KNOWLEDGE_REGISTRY = Registry("DISTILL_KNOWLEDGE")
KNOWLEDGE_REGISTRY.__doc__ = "Knowledge terms selectable in cfg.DISTILL.KNOWLEDGE."

#: every detector family a term may apply to (gkd_d2.detectors); "cascade" is a teacher only
ALL_STUDENTS = ("rcnn", "retinanet", "fcos")
ALL_TEACHERS = ("rcnn", "cascade", "retinanet", "fcos")


def register_knowledge(name: str):
    """Class decorator: register a term under the name users write in DISTILL.KNOWLEDGE."""

    def deco(cls):
        KNOWLEDGE_REGISTRY._do_register(name, cls)
        return cls

    return deco


@dataclass
class DistillSpec:
    """Static facts about the teacher/student pair, fixed at build time.

    student_type / teacher_type: family names of ``gkd_d2.detectors`` ("rcnn", "cascade"
    (teacher only), "retinanet", "fcos"). feature_levels: names of the FPN levels imitated by
    feature terms (both backbones output them). instance_levels: names of the levels GT
    instances and RoIs are assigned to (P2-P5 for Faster R-CNN box heads, P3-P7 for the dense
    heads); a level *index* (``GroundTruth.level_index``) counts in this list.
    strides: level name -> stride.
    """

    student_type: str
    teacher_type: str
    num_classes: int
    student_shapes: Dict[str, ShapeSpec]
    teacher_shapes: Dict[str, ShapeSpec]
    feature_levels: List[str]
    instance_levels: List[str]
    strides: Dict[str, int]
    prototypes_enabled: bool


class KnowledgeTerm(nn.Module):
    """Base class: declares what a term needs so the wrapper computes only that."""

    #: needs the RoI / anchor / location outputs of both models (``batch.response``)
    needs_response: bool = False
    #: needs GT instance features pooled from both models (RDM's x_S, x_T)
    needs_instances: bool = False
    #: needs them pooled at every instance level as well (the release's global form)
    needs_instances_at_every_level: bool = False
    #: can only run with prototypes (DISTILL.PGM.ENABLED)
    needs_prototypes: bool = False
    #: detector families of the student the term applies to
    students: Tuple[str, ...] = ALL_STUDENTS
    #: detector families of the teacher the term can read from
    teachers: Tuple[str, ...] = ALL_TEACHERS


def build_knowledge_terms(cfg, spec: DistillSpec) -> nn.ModuleDict:
    """Instantiate ``cfg.DISTILL.KNOWLEDGE``; errors name the option and the problem."""
    names = list(cfg.DISTILL.KNOWLEDGE)
    if len(set(names)) != len(names):
        raise ValueError(f"DISTILL.KNOWLEDGE={names} lists a term twice.")
    terms = nn.ModuleDict()
    for name in names:
        cls = knowledge_class(name)
        if spec.student_type not in cls.students:
            raise ValueError(
                f"DISTILL.KNOWLEDGE: '{name}' does not apply to a {spec.student_type} student "
                f"(it needs one of {list(cls.students)})."
            )
        if spec.teacher_type not in cls.teachers:
            raise ValueError(
                f"DISTILL.KNOWLEDGE: '{name}' cannot read a {spec.teacher_type} teacher "
                f"(it needs one of {list(cls.teachers)})."
            )
        if cls.needs_prototypes and not spec.prototypes_enabled:
            raise ValueError(
                f"DISTILL.KNOWLEDGE: '{name}' needs prototypes; set DISTILL.PGM.ENABLED True."
            )
        terms[name] = cls(cfg, spec)
    return terms


def knowledge_class(name: str):
    """The registered term class of ``name``; an unknown name is an error listing the known ones."""
    if name not in KNOWLEDGE_REGISTRY:
        available = sorted(n for n, _ in KNOWLEDGE_REGISTRY)
        raise ValueError(f"DISTILL.KNOWLEDGE: unknown knowledge term '{name}'. Available: {available}")
    return KNOWLEDGE_REGISTRY.get(name)


def check_weight(value, option):
    """Loss weights must be finite and >= 0."""
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{option}={value}: loss weights must be finite and >= 0.")
    return float(value)


def check_temperature(value, option):
    """Temperatures must be > 0."""
    if not value > 0:
        raise ValueError(f"{option}={value} must be > 0.")
    return float(value)
