"""Detector families behind one interface (:class:`DetectorFamily`): what differs between
Faster / Mask R-CNN (``rcnn.py``; Cascade as a teacher), RetinaNet (``retinanet.py``) and FCOS
(``fcos.py``, which also registers a yacs-buildable ``FCOS`` meta-architecture). Adding a family
is one module here and one entry in :data:`FAMILIES`.
"""
from .base import DetectorFamily
from .fcos import FCOS, FCOSFamily
from .rcnn import RCNNFamily, box_coder, reencode_deltas
from .retinanet import RetinaNetFamily, label_anchors

FAMILIES = (RCNNFamily, RetinaNetFamily, FCOSFamily)


def family_of(model, option: str) -> DetectorFamily:
    """The family of a built model; anything unsupported is an error naming ``option``."""
    for family in FAMILIES:
        try:
            if family.matches(model):
                return family(model)
        except ValueError as e:
            raise ValueError(f"{option}: {e}") from None
    raise ValueError(
        f"{option}: meta-architecture {type(model).__name__} is not supported; use "
        "GeneralizedRCNN (Faster / Mask R-CNN), RetinaNet or FCOS."
    )
