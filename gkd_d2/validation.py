"""Checks of the ``DISTILL`` options at build time; every error names the option and the fix.

Loss weights and term options are checked by each knowledge term (``knowledge/base.py``), the
teacher/student pair by the detector families (``detectors/``).
"""
import logging
import weakref

from detectron2.config import CfgNode
from detectron2.config import get_cfg

from .config import SUPPORTED_STUDENTS, add_distill_config
from .knowledge import KNOWLEDGE_REGISTRY
from .pooling import INSTANCE_LEVEL_RULES, INSTANCE_POOLINGS
from .prototypes.instances import check_sampling
from .prototypes.selection import check_selection

logger = logging.getLogger(__name__)
#: configs already told they are a control run (a model build validates its config twice)
_CONTROL_RUNS_TOLD = weakref.WeakValueDictionary()


def check_knowledge_terms(cfg):
    """An empty ``DISTILL.KNOWLEDGE`` with ``DISTILL.PGM.ENABLED`` is an error: no term would use
    the teacher or the prototypes, which would be loaded and computed for nothing. Without PGM it
    is the control run of ``tools/demo.py`` and ``benchmarks/`` (the student fine-tuned in the
    same wrapper: frozen BatchNorm, same schedule and seed; the teacher is built, never run)."""
    if list(cfg.DISTILL.KNOWLEDGE):
        return
    if not cfg.DISTILL.PGM.ENABLED:
        if _CONTROL_RUNS_TOLD.get(id(cfg)) is cfg:
            return
        _CONTROL_RUNS_TOLD[id(cfg)] = cfg
        logger.warning(
            "DISTILL.KNOWLEDGE is empty and DISTILL.PGM.ENABLED False: the student trains alone "
            "inside the distillation wrapper (a control run); the teacher is built but never run."
        )
        return
    arch = cfg.DISTILL.STUDENT_ARCHITECTURE
    raise ValueError(
        "DISTILL.KNOWLEDGE is empty: no knowledge term, so the teacher would be loaded and the "
        "prototypes (DISTILL.PGM.ENABLED True) generated for nothing. Name the terms to distil "
        "(e.g. DISTILL.KNOWLEDGE \"['feature', 'response', 'global']\"). To train the student "
        "alone, train it with Detectron2's own tools and config (MODEL.META_ARCHITECTURE "
        f"{arch}, no DISTILL node: tools/train_net.py --config-file <the student's yaml>); for a "
        "control run inside the distillation wrapper, set DISTILL.PGM.ENABLED False as well."
    )


def validate_distill_config(cfg):
    """Check ``DISTILL.KNOWLEDGE`` (:func:`check_knowledge_terms`), ``DISTILL.STUDENT_ARCHITECTURE``,
    ``DISTILL.PGM`` and ``DISTILL.VIS``."""
    check_knowledge_terms(cfg)
    arch = cfg.DISTILL.STUDENT_ARCHITECTURE
    if arch not in SUPPORTED_STUDENTS:
        raise ValueError(
            f"DISTILL.STUDENT_ARCHITECTURE='{arch}' is not supported; "
            f"choose one of {list(SUPPORTED_STUDENTS)}."
        )
    p = cfg.DISTILL.PGM
    rules = [
        ("NUM_PROTOTYPES", p.NUM_PROTOTYPES >= 1, "must be >= 1"),
        ("ALPHA", p.ALPHA >= 0, "must be >= 0"),
        ("SIGMA", p.SIGMA > 0, "must be > 0"),
        ("QUANTILE", 0 <= p.QUANTILE < 1, "must be in [0, 1)"),
        ("MAX_SAMPLES", p.MAX_SAMPLES >= 1, "must be >= 1"),
        ("MIN_SIZE", p.MIN_SIZE >= 0, "must be >= 0 (pixels)"),
        ("PERIOD", p.PERIOD >= 0, "must be >= 1 iteration, or 0 for one epoch of DATASETS.TRAIN"),
        ("BATCH_SIZE", p.BATCH_SIZE >= 1, "must be >= 1"),
    ]
    for key, ok, fix in rules:
        if not ok:
            raise ValueError(f"DISTILL.PGM.{key}={p[key]!r}: {fix}.")
    check_selection(p.SELECTION)
    if cfg.DISTILL.INSTANCE_POOLING not in INSTANCE_POOLINGS:
        raise ValueError(
            f"DISTILL.INSTANCE_POOLING={cfg.DISTILL.INSTANCE_POOLING!r}: choose one of {list(INSTANCE_POOLINGS)}."
        )
    if cfg.DISTILL.INSTANCE_LEVELS not in INSTANCE_LEVEL_RULES:
        raise ValueError(
            f"DISTILL.INSTANCE_LEVELS={cfg.DISTILL.INSTANCE_LEVELS!r}: choose one of {list(INSTANCE_LEVEL_RULES)}."
        )
    check_sampling(p.SAMPLING)
    unknown = [n for n in cfg.DISTILL.ATTENUATED_TERMS if n not in cfg.DISTILL.KNOWLEDGE and n not in KNOWLEDGE_REGISTRY]
    if unknown:
        raise ValueError(f"DISTILL.ATTENUATED_TERMS: unknown knowledge terms {unknown}.")
    for key in ("OVERLAY_IMAGES", "OVERLAY_PERIOD"):
        if cfg.DISTILL.VIS[key] < 0:
            raise ValueError(f"DISTILL.VIS.{key}={cfg.DISTILL.VIS[key]}: must be >= 0 (0 = off).")


def distill_root(distill) -> CfgNode:
    """A config whose ``DISTILL`` node holds ``distill``'s options: a whole gkd_d2 config is
    returned as is; a ``DISTILL`` node, or a dict of overrides of its defaults with the same
    names (a LazyConfig's ``distill`` entry, e.g. ``{"PGM": {"NUM_PROTOTYPES": 5}}``), is merged
    into gkd_d2's defaults. Unknown names are an error naming them."""
    if isinstance(distill, CfgNode) and "DISTILL" in distill:
        return distill
    cfg = get_cfg()
    add_distill_config(cfg)
    overrides = CfgNode(_plain(distill or {}))
    try:
        cfg.DISTILL.merge_from_other_cfg(overrides)
    except KeyError as e:
        raise KeyError(f"distill: {e.args[0]} (the names are those of the yaml DISTILL node)") from None
    return cfg


def _plain(value):
    """Nested dicts / lists of a DictConfig or CfgNode as plain python (tuples for lists)."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value
