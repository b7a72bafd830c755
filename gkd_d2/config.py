"""The ``DISTILL`` config node: every option of gkd_d2, with the paper's defaults.

Call :func:`add_distill_config` on a Detectron2 ``CfgNode`` before merging a gkd_d2 yaml, the
same way Detectron2's projects do (``add_pointrend_config``, ``add_deeplab_config``)::

    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.merge_from_file("configs/COCO/gkd_faster_rcnn_R101_to_R50_FPN_2x.yaml")

Formulas and defaults: ``METHOD.md`` (shared with the project) and the docstrings of
``gkd_d2/knowledge`` and ``gkd_d2/prototypes``.
"""
from detectron2.config import CfgNode as CN

# Student meta-architectures the wrapper can drive.
SUPPORTED_STUDENTS = ("GeneralizedRCNN", "RetinaNet")


def add_distill_config(cfg):
    """Add the ``DISTILL`` node (and the synthetic demo data node) to ``cfg`` in place."""
    _C = cfg
    _C.DISTILL = CN()
    # Meta-architecture of the student; the student is built from this same cfg
    # (MODEL.BACKBONE, MODEL.RESNETS, MODEL.ROI_HEADS, ...) and loads MODEL.WEIGHTS.
    _C.DISTILL.STUDENT_ARCHITECTURE = "GeneralizedRCNN"

    _C.DISTILL.TEACHER = CN()
    # A Detectron2 yaml: a local path, or a model-zoo name such as
    # "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml".
    _C.DISTILL.TEACHER.CONFIG_FILE = ""
    # Teacher checkpoint: local .pth/.pkl, or a URL (detectron2://..., https://...).
    _C.DISTILL.TEACHER.WEIGHTS = ""
    # Extra "KEY VALUE" overrides applied to the teacher's config after CONFIG_FILE.
    _C.DISTILL.TEACHER.OPTS = []

    # Active knowledge terms, any combination (names: gkd_d2.knowledge.KNOWLEDGE_REGISTRY).
    # The default is the paper's full method: local feature + local response + global.
    _C.DISTILL.KNOWLEDGE = ["feature", "response", "global"]
    # Multiply every distillation loss by (1 - iter / SOLVER.MAX_ITER).
    _C.DISTILL.ATTENUATION = False
    # Multiply the feature foreground mask and the response losses by the robust weights of
    # Eq. 8 when prototypes exist (the "+prototypes" variants of the paper's Table 4).
    _C.DISTILL.ROBUST_WEIGHTS = True

    # Local feature knowledge, Eq. 7: decoupled foreground/background imitation of every FPN
    # level through a 3x3 conv + ReLU adaptation layer.
    _C.DISTILL.FEATURE = CN()
    _C.DISTILL.FEATURE.WEIGHT = 1.0  # lambda_feat
    _C.DISTILL.FEATURE.GAMMA_FG = 1.0
    _C.DISTILL.FEATURE.GAMMA_BG = 4.0
    # Kernel size of the adaptation conv (odd). The paper's is 3; 1 costs 9x less arithmetic,
    # which is most of the feature term's cost at COCO scale (benchmarks/RESULTS.md, "Cost").
    _C.DISTILL.FEATURE.ADAPTER_KERNEL = 3
    # FPN levels to imitate; empty = every level both backbones output.
    _C.DISTILL.FEATURE.IN_FEATURES = []

    # Local response knowledge: RoI class logits (Faster R-CNN) or anchor logits (RetinaNet).
    _C.DISTILL.RESPONSE = CN()
    _C.DISTILL.RESPONSE.WEIGHT = 1.0  # lambda_resp
    _C.DISTILL.RESPONSE.TEMPERATURE = 2.0

    # Global knowledge, Eq. 6: instance/prototype relations of teacher and student.
    _C.DISTILL.GLOBAL = CN()
    _C.DISTILL.GLOBAL.WEIGHT = 5.0  # lambda_global

    # Prototype Generation Module and its refresh schedule.
    _C.DISTILL.PGM = CN()
    _C.DISTILL.PGM.ENABLED = True
    _C.DISTILL.PGM.NUM_PROTOTYPES = 10  # K
    _C.DISTILL.PGM.ALPHA = 10.0
    _C.DISTILL.PGM.SIGMA = 0.1
    _C.DISTILL.PGM.QUANTILE = 0.4
    _C.DISTILL.PGM.MAX_SAMPLES = 800  # instances per class
    _C.DISTILL.PGM.MIN_SIZE = 30  # shorter box side, pixels, at the test-time input scale
    # Iterations between refreshes; 0 = one epoch = ceil(#images / SOLVER.IMS_PER_BATCH).
    _C.DISTILL.PGM.PERIOD = 0
    _C.DISTILL.PGM.SEED = 0
    _C.DISTILL.PGM.BATCH_SIZE = 4  # images per extraction batch (per process)
    # Dataset the instances are sampled from; empty = DATASETS.TRAIN.
    _C.DISTILL.PGM.DATASETS = []
    # How the prototypes are chosen: "pgm" (the paper's PGM), or the baselines of its Table 6:
    # "kmeans", "random", "ambiguous" (the smallest instances). gkd_d2/prototypes/selection.py
    _C.DISTILL.PGM.SELECTION = "pgm"

    # Visualisation of the prototypes and robust weights (gkd_d2/visualization.py).
    _C.DISTILL.VIS = CN()
    # RobustWeightOverlayHook: draw the robust weights (Eq. 8) of the GT boxes of the first
    # OVERLAY_IMAGES images of DATASETS.TRAIN to OUTPUT_DIR/robust_weights/iter_*/; 0 = off.
    _C.DISTILL.VIS.OVERLAY_IMAGES = 0
    # When to draw: 0 = after every prototype refresh (PrototypeBank.last_refresh_iter changed),
    # P > 0 = every P iterations.
    _C.DISTILL.VIS.OVERLAY_PERIOD = 0

    # Synthetic "ambiguous instances" data of the demo and tests: datasets named
    # gkd_synth_train / gkd_synth_val are generated and registered from these values.
    _C.DATASETS.SYNTHETIC = CN()
    _C.DATASETS.SYNTHETIC.ROOT = "datasets/gkd_synth"
    _C.DATASETS.SYNTHETIC.NUM_TRAIN = 256
    _C.DATASETS.SYNTHETIC.NUM_VAL = 64
    _C.DATASETS.SYNTHETIC.IMAGE_SIZE = 160
    _C.DATASETS.SYNTHETIC.SEED = 0

    # The comparison methods of the knowledge zoo (Chen, FitNet, FGFI, DeFeat, RKD, KD).
    from .knowledge.zoo_config import add_knowledge_zoo_config

    add_knowledge_zoo_config(cfg)


def validate_distill_config(cfg):
    """Check the ``DISTILL.PGM`` and ``DISTILL.VIS`` options at build time; errors name the option and the fix.

    (Loss weights are checked by each knowledge term, the teacher/student pair by
    :class:`gkd_d2.DistillationDetector`.)
    """
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
    from .prototypes.selection import SELECTIONS

    rules.append(("SELECTION", p.SELECTION in SELECTIONS, f"choose one of {list(SELECTIONS)}"))
    for key, ok, fix in rules:
        if not ok:
            raise ValueError(f"DISTILL.PGM.{key}={p[key]!r}: {fix}.")
    for key in ("OVERLAY_IMAGES", "OVERLAY_PERIOD"):
        if cfg.DISTILL.VIS[key] < 0:
            raise ValueError(f"DISTILL.VIS.{key}={cfg.DISTILL.VIS[key]}: must be >= 0 (0 = off).")

