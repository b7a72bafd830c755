"""The interface of a detector family: what the wrapper needs from a student or a teacher.

A family wraps one built Detectron2 model (``family.model``) and answers, without the wrapper
naming any family:

- ``num_classes``, ``instance_levels`` (level *names* GT instances are assigned to),
  ``level_range`` (their log2 levels), ``level_index(box_lists)`` (each box's level by
  ``instance_level_rule``, ``DISTILL.INSTANCE_LEVELS``);
- ``check_student()`` and ``check_response_teacher(teacher)``: pair checks, errors naming the
  options that fix them;
- ``training_step(images, features, gt_instances, record_response)``: Detectron2's own
  training forward of the student on precomputed backbone features, returning its losses and,
  when asked, the response record (``RoIResponse`` / ``DenseResponse``) of the samples its
  loss used;
- ``add_teacher_response(response, features)``: the teacher's outputs on those same samples.
"""
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch

from ..pooling import assign_level_index, level_range


class DetectorFamily:
    """Base class; subclasses set ``name`` (what ``KnowledgeTerm.students/teachers`` list) and
    implement the methods below."""

    name = ""
    #: the config option of the class count, for error messages
    num_classes_option = ""
    #: how RoI grids become the vectors robust weights are computed from (the meta-architecture
    #: sets ``DISTILL.INSTANCE_POOLING``; gkd_d2/pooling.py)
    instance_pooling = "mean"
    #: how a GT box gets its instance level, ``"release"`` or ``"detectron2"`` (the
    #: meta-architecture sets ``DISTILL.INSTANCE_LEVELS``; gkd_d2/pooling.py)
    instance_level_rule = "detectron2"

    def __init__(self, model):
        self.model = model

    @classmethod
    def matches(cls, model) -> bool:
        """Whether ``model`` belongs to this family (errors for a near miss, e.g. other heads)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def instance_levels(self) -> List[str]:
        raise NotImplementedError

    @property
    def level_range(self) -> Tuple[int, int]:
        """(min, max) log2 level of the instance levels (e.g. P2-P5 -> (2, 5))."""
        shapes = self.model.backbone.output_shape()
        return level_range([shapes[f].stride for f in self.instance_levels])

    def level_index(self, box_lists) -> torch.Tensor:
        """(N,) index into ``instance_levels`` of every box of ``box_lists`` (per image
        ``Boxes``), by ``instance_level_rule``."""
        return assign_level_index(box_lists, *self.level_range, rule=self.instance_level_rule)

    def check_student(self) -> None:
        """Raise if this family cannot be a student."""

    def check_response_teacher(self, teacher: "DetectorFamily") -> None:
        """Raise if response knowledge cannot be read from ``teacher`` for this student."""
        raise NotImplementedError

    def training_step(
        self, images, features: Dict[str, torch.Tensor], gt_instances, record_response: bool
    ) -> Tuple[Dict[str, torch.Tensor], Optional[object]]:
        raise NotImplementedError

    @torch.no_grad()
    def add_teacher_response(self, response, features: Dict[str, torch.Tensor]) -> None:
        raise NotImplementedError


@contextmanager
def capture_outputs(**modules):
    """Record each module's forward output under its keyword while the block runs."""
    captured: Dict[str, object] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, key=key: captured.__setitem__(key, out))
        for key, m in modules.items()
    ]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()
