"""Which FPN levels of the teacher distillation reads, whatever the two detector families.

**Feature maps** (``feature``, ``fitnet``, ``defeat``, ... terms) are compared cell by cell, so
they are read only at levels both backbones output with the same name and stride (default: all
of them; ``DISTILL.FEATURE.IN_FEATURES`` chooses).

**Instances** (GT boxes and prototypes) live on the **student's** instance levels: P2-P5 for a
Faster R-CNN box head, P3-P7 for RetinaNet / FCOS; each box goes to one of them by Detectron2's
FPN rule. A teacher of another family may lack some (a Faster R-CNN FPN ends at P6, a RetinaNet
/ FCOS FPN starts at P3). For a student level of stride ``s`` the teacher is read at

1. its level of the same name, when that has stride ``s``;
2. else its level of stride ``s`` (the same scale under another name);
3. else its level of the nearest stride, at most one octave away (``s/2`` or ``2s``; the finer
   on a tie), resampled to stride ``s``: a finer level by 2x2 average pooling (a Faster R-CNN
   teacher's P6 for a dense student's P7), a coarser one by 2x bilinear upsampling (a dense
   teacher's P3 for a Faster R-CNN student's P2). Both are aligned with ROIAlign's pixel
   centres (``aligned=True``), so ROIAlign at stride ``s`` on the resampled map samples the
   same image points as ROIAlign on the teacher level itself (the average pooling adds a 2x2
   box filter, the upsampling a second bilinear interpolation).

The resampled maps are added to the teacher's features under the student's level name
(:meth:`TeacherLevels.__call__`, run by ``DistillationDetector.teacher_features``), so every
reader of ``model.teacher_features`` at ``model.instance_levels`` / ``model.strides`` (the GT
instances of a step, the prototype refresh, the visualisation) pools the teacher the same way:
the instances and the prototypes of global knowledge come from the same teacher levels. A
student level with no teacher level within one octave is an error naming the options that fix it.
"""
import logging
import math
from typing import Dict, List

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

#: the option that sets a student family's instance levels
INSTANCE_LEVEL_OPTIONS = {
    "rcnn": "MODEL.ROI_HEADS.IN_FEATURES",
    "retinanet": "MODEL.RETINANET.IN_FEATURES",
    "fcos": "MODEL.FCOS.IN_FEATURES",
}


def _levels(shapes) -> str:
    return ", ".join(f"{name} (stride {s.stride})" for name, s in shapes.items())


def feature_levels(cfg, s_shapes, t_shapes) -> List[str]:
    """``DISTILL.FEATURE.IN_FEATURES``, or every level of the same name and stride in both."""
    chosen = list(cfg.DISTILL.FEATURE.IN_FEATURES)
    shared = [f for f in s_shapes if f in t_shapes and s_shapes[f].stride == t_shapes[f].stride]
    bad = [f for f in chosen if f not in shared]
    if bad:
        raise ValueError(
            f"The FPN level names of the teacher and the student differ on "
            f"DISTILL.FEATURE.IN_FEATURES={chosen}: {bad} is not a level both output with the same "
            f"stride (student {_levels(s_shapes)}; teacher {_levels(t_shapes)}). List shared levels "
            "only, or [] for all of them."
        )
    if not (chosen or shared):
        raise ValueError(
            f"The FPN levels of the teacher and the student share no name and stride (student "
            f"{_levels(s_shapes)}; teacher {_levels(t_shapes)}): their feature maps cannot be "
            "compared. Give the teacher an FPN with the student's levels "
            "(DISTILL.TEACHER.CONFIG_FILE / DISTILL.TEACHER.OPTS)."
        )
    return chosen or shared


class TeacherLevels:
    """Where the teacher is read for each student instance level (rules in the module doc).

    ``source``: student level -> teacher level; ``ratio``: student level -> student stride /
    teacher stride (1: read as is, 2: 2x2 average pooling, 1/2: 2x upsampling).
    """

    def __init__(self, student_levels, s_shapes, t_shapes, student_family: str):
        self.source: Dict[str, str] = {}
        self.ratio: Dict[str, float] = {}
        for f in student_levels:
            stride = s_shapes[f].stride
            if f in t_shapes and t_shapes[f].stride == stride:
                self.source[f] = f
            else:  # same stride under another name, else the nearest (finer on a tie)
                name = min(
                    t_shapes, key=lambda t: (abs(math.log2(t_shapes[t].stride / stride)), t_shapes[t].stride)
                )
                if t_shapes[name].stride not in (stride, stride // 2, stride * 2):
                    option = INSTANCE_LEVEL_OPTIONS.get(student_family, "the student's instance levels")
                    raise ValueError(
                        f"The teacher has no FPN level within one octave of the student's instance "
                        f"level {f} (stride {stride}): teacher {_levels(t_shapes)}. Instances are "
                        f"pooled at the student's levels ({option}: {list(student_levels)}) and read "
                        "from the teacher's level of the same or the nearest stride (at most 2x "
                        f"apart): choose student levels accordingly in {option}, or give the "
                        "teacher an FPN covering them (DISTILL.TEACHER.CONFIG_FILE / "
                        "DISTILL.TEACHER.OPTS)."
                    )
                self.source[f] = name
            self.ratio[f] = stride / t_shapes[self.source[f]].stride
        how = {1: "", 2: ", averaged 2x2", 0.5: ", upsampled 2x"}
        moved = [
            f"{f} <- {t} (stride {t_shapes[t].stride}{how[self.ratio[f]]})"
            for f, t in self.source.items()
            if t != f
        ]
        if moved:
            logger.info("Teacher read at the student's instance levels: %s", ", ".join(moved))

    def __call__(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The teacher's FPN features plus, under the student's name, every instance level
        read from another teacher level (resampled to the student's stride)."""
        out = dict(features)
        for f, t in self.source.items():
            if t == f:
                continue
            x, r = features[t], self.ratio[f]
            if r == 2:  # finer teacher level: pixel (i, j) averages teacher pixels 2i..2i+1, 2j..2j+1
                out[f] = F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
            elif r == 0.5:  # coarser teacher level: pixel centres stay where they are in the image
                out[f] = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            else:
                out[f] = x
        return out
