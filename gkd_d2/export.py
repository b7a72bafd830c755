"""The plain Detectron2 config of a model gkd_d2 trained: what an exported student (or a
teacher config written for stock Detectron2) is saved with (``tools/export_student.py``)."""
from detectron2.config import CfgNode

#: Nodes gkd_d2 adds (:func:`gkd_d2.config.add_distill_config`) that stock Detectron2 does not know.
GKD_ONLY_NODES = (
    ("DISTILL",), ("DATASETS", "SYNTHETIC"), ("DATASETS", "SHAPES"), ("DATASETS", "COCO_JSON"), ("MODEL", "FCOS")
)


def plain_detectron2_config(cfg) -> CfgNode:
    """A copy of ``cfg`` without the gkd_d2-only nodes (:data:`GKD_ONLY_NODES`): what an exported
    student or a plain teacher config is written with. ``MODEL.FCOS`` stays when the model (or
    the distilled student) is an FCOS: it is that model's own description."""
    fcos = "FCOS" in (cfg.MODEL.META_ARCHITECTURE, cfg.get("DISTILL", {}).get("STUDENT_ARCHITECTURE"))
    out = cfg.clone()
    out.defrost()
    for path in GKD_ONLY_NODES[:-1] if fcos else GKD_ONLY_NODES:
        node = out
        for key in path[:-1]:
            node = node.get(key, {})
        if path[-1] in node:
            node.pop(path[-1])
    return out
