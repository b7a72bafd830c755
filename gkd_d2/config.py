"""Every option of gkd_d2 and its default: the ``DISTILL`` node (the paper's method and the
comparison methods), ``MODEL.FCOS`` (Detectron2's FCOS from a yacs config) and the synthetic
demo data nodes. This module imports nothing from gkd_d2; the checks of the values live in
:mod:`gkd_d2.validation`.

Call :func:`add_distill_config` on a Detectron2 ``CfgNode`` before merging a gkd_d2 yaml, the
same way Detectron2's projects do (``add_pointrend_config``, ``add_deeplab_config``)::

    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.merge_from_file("configs/COCO/gkd_faster_rcnn_R101_to_R50_FPN_2x.yaml")

or, the same in one call, ``cfg = load_config(path, opts)``. Formulas and defaults:
``docs/method.md`` and the docstrings of ``gkd_d2/knowledge`` and ``gkd_d2/prototypes``.
"""
import os

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

# Student meta-architectures the wrapper can drive.
SUPPORTED_STUDENTS = ("GeneralizedRCNN", "RetinaNet", "FCOS")


def add_distill_config(cfg):
    """Add the ``DISTILL`` node, ``MODEL.FCOS`` and the synthetic data nodes to ``cfg`` in place."""
    _C = cfg
    _C.DISTILL = CN()
    # Meta-architecture of the student; the student is built from this same cfg
    # (MODEL.BACKBONE, MODEL.RESNETS, MODEL.ROI_HEADS, ...) and loads MODEL.WEIGHTS.
    _C.DISTILL.STUDENT_ARCHITECTURE = "GeneralizedRCNN"

    _C.DISTILL.TEACHER = CN()
    # A Detectron2 yaml: a local path, or a model-zoo name such as
    # "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml". Or a Detectron2 LazyConfig .py (local, or
    # a model-zoo name such as "new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py"): its ``model``
    # is instantiated. A relative path not found from the working directory is resolved
    # against the folder of the yaml that sets it (load_config).
    _C.DISTILL.TEACHER.CONFIG_FILE = ""
    # Teacher checkpoint: local .pth/.pkl, or a URL (detectron2://..., https://...).
    _C.DISTILL.TEACHER.WEIGHTS = ""
    # Extra "KEY VALUE" overrides applied to the teacher's config after CONFIG_FILE (for a
    # LazyConfig teacher: "key=value" strings, e.g. "model.num_classes=20", or KEY VALUE pairs).
    _C.DISTILL.TEACHER.OPTS = []

    # Active knowledge terms, any combination (names: gkd_d2.knowledge.KNOWLEDGE_REGISTRY).
    # The default is the paper's full method: local feature + local response + global.
    _C.DISTILL.KNOWLEDGE = ["feature", "response", "global"]
    # Defaults follow what the authors' release trains (docs/method.md, "The authors' release");
    # the paper-text reading the project first built stays available through the options below.
    #
    # Multiply the terms of ATTENUATED_TERMS by (1 - iter / SOLVER.MAX_ITER) (the release: on,
    # feature and global terms; the response term is not attenuated).
    _C.DISTILL.ATTENUATION = True
    _C.DISTILL.ATTENUATED_TERMS = ["feature", "global"]
    # Multiply the feature foreground mask and the response losses by the robust weights of
    # Eq. 8 when prototypes exist (the "+prototypes" variants of the paper's Table 4).
    _C.DISTILL.ROBUST_WEIGHTS = True
    # Keep the student's BatchNorm layers in eval mode while training (running statistics used
    # and not updated; affine parameters still train), as Detectron2 freezes pre-trained
    # backbones and the release trains (norm_eval). The student is then the same function in
    # training as at the prototype refresh and at test time: teacher == student gives robust
    # weights 1 and zero response / global losses. False for a student trained from scratch.
    _C.DISTILL.FREEZE_STUDENT_BN = True

    # Instance vectors of PGM, the robust weights and the global term: each box ROIAligned 7x7 at
    # its level, then "mean" over the grid (METHOD.md section 1, a D-vector) or "flatten" (the
    # 49 D grid: keeps the layout, which tells shapes apart on the replica's data). gkd_d2/pooling.py
    _C.DISTILL.INSTANCE_POOLING = "mean"
    # The FPN level of a GT box (its instance feature, its prototypes, its foreground mask):
    # "release" (the authors' release): the levels are every FPN output of the student (Faster
    # R-CNN P2-P6, RetinaNet / FCOS P3-P7), a box of side s = sqrt((w + 1)(h + 1)) goes to the
    # first + floor(log2(s / 56)). "detectron2": the head's levels (Faster R-CNN P2-P5) and
    # Detectron2's FPN rule floor(4 + log2(sqrt(area) / 224)): the same level for Faster R-CNN
    # (but P6), one level finer for RetinaNet / FCOS. gkd_d2/pooling.py
    _C.DISTILL.INSTANCE_LEVELS = "release"

    # Local feature knowledge, Eq. 7: decoupled foreground/background imitation of every FPN
    # level through an adaptation conv.
    _C.DISTILL.FEATURE = CN()
    _C.DISTILL.FEATURE.WEIGHT = 1.0  # lambda_feat
    _C.DISTILL.FEATURE.GAMMA_FG = 1.0
    _C.DISTILL.FEATURE.GAMMA_BG = 4.0
    # Kernel size of the adaptation conv (odd). The paper's is 3; 1 costs 9x less arithmetic,
    # which is most of the feature term's cost at COCO scale (benchmarks/RESULTS.md, "Cost").
    _C.DISTILL.FEATURE.ADAPTER_KERNEL = 3
    # ReLU after the adaptation conv: the paper's text has one, the release does not (a ReLU
    # cannot output the negative half of the teacher's maps: an irreducible floor in L_feat).
    _C.DISTILL.FEATURE.ADAPTER_RELU = False
    # Initialisation of the adaptation conv: "default" (PyTorch's Conv2d init, what the release
    # trains: its own init is never applied) or "kaiming" (Kaiming normal fan-out, zero bias;
    # 1.4-1.5x the feature loss at iteration 0, benchmarks/investigations/probe_adapter_init.py).
    _C.DISTILL.FEATURE.ADAPTER_INIT = "default"
    # How the levels' losses combine: "mean" or "sum"; "" = the release's: mean for two-stage
    # students (Faster R-CNN), sum for dense ones (RetinaNet, FCOS).
    _C.DISTILL.FEATURE.LEVEL_REDUCTION = ""
    # FPN levels to imitate; empty = every level both backbones output.
    _C.DISTILL.FEATURE.IN_FEATURES = []

    # Local response knowledge: RoI class logits (Faster R-CNN), anchor / location logits (dense).
    _C.DISTILL.RESPONSE = CN()
    _C.DISTILL.RESPONSE.WEIGHT = 1.0  # lambda_resp
    _C.DISTILL.RESPONSE.TEMPERATURE = 2.0
    # "release": positive RoIs / anchors / locations only; T^2 KL(softmax(z_T/T) || softmax(z_S/T))
    # averaged over the classes, times the robust weight, averaged over the positives.
    # "paper": every sampled RoI (KL summed over the C+1 classes, averaged over RoIs); dense:
    # per-class binary KL over every non-ignored anchor (FCOS: positive locations) divided by
    # the focal loss's normaliser.
    _C.DISTILL.RESPONSE.FORM = "release"

    # Global knowledge, Eq. 6: instance/prototype relations of teacher and student.
    _C.DISTILL.GLOBAL = CN()
    _C.DISTILL.GLOBAL.WEIGHT = 5.0  # lambda_global
    # "paper": each GT instance at its assigned level, mean over (instance, prototype) of
    # w smoothL1(beta_S - beta_T). "release": each instance at every level, per level the mean
    # of smoothL1(w beta_S, w beta_T), summed over levels.
    _C.DISTILL.GLOBAL.FORM = "paper"

    # Prototype Generation Module and its refresh schedule.
    _C.DISTILL.PGM = CN()
    _C.DISTILL.PGM.ENABLED = True
    _C.DISTILL.PGM.NUM_PROTOTYPES = 10  # K
    _C.DISTILL.PGM.ALPHA = 10.0
    _C.DISTILL.PGM.SIGMA = 0.1
    _C.DISTILL.PGM.QUANTILE = 0.4
    _C.DISTILL.PGM.MAX_SAMPLES = 800  # instances per class
    _C.DISTILL.PGM.MIN_SIZE = 30  # shorter box side, pixels, at the test-time input scale
    # Which instances: "uniform" (per class at random among the eligible ones) or "compact" (as
    # many per class, from far fewer images: what a refresh reads). gkd_d2/prototypes/instances.py
    _C.DISTILL.PGM.SAMPLING = "uniform"
    # Iterations between refreshes; 0 = one epoch = ceil(#images / SOLVER.IMS_PER_BATCH).
    _C.DISTILL.PGM.PERIOD = 0
    _C.DISTILL.PGM.SEED = 0
    _C.DISTILL.PGM.BATCH_SIZE = 4  # images per extraction batch (per process)
    # Dataset the instances are sampled from; empty = DATASETS.TRAIN.
    _C.DISTILL.PGM.DATASETS = []
    # How the prototypes are chosen: "pgm" (the paper's PGM), or the baselines of its Table 6:
    # "kmeans", "random", "ambiguous" (the smallest instances). gkd_d2/prototypes/selection.py
    _C.DISTILL.PGM.SELECTION = "pgm"

    # Visualisation of the prototypes and robust weights (gkd_d2/visualization/hook.py).
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
    # Synthetic "shapes" data (ten learnable classes, an ambiguous minority; data/shapes.py):
    # datasets named gkd_shapes_train / gkd_shapes_val are generated and registered from these.
    # Same keys as DATASETS.SYNTHETIC (ROOT, NUM_TRAIN, NUM_VAL, IMAGE_SIZE 160, SEED 0).
    _C.DATASETS.SHAPES = _C.DATASETS.SYNTHETIC.clone()
    _C.DATASETS.SHAPES.ROOT = "datasets/gkd_shapes"
    _C.DATASETS.SHAPES.NUM_TRAIN = 2000
    _C.DATASETS.SHAPES.NUM_VAL = 200
    # Your own COCO-format datasets, registered by tools/train_net.py, export_student.py and
    # visualize_prototypes.py (gkd_d2.data.register_datasets_from_cfg) with Detectron2's
    # register_coco_instances: a list of [name, json_file, image_root] triples, e.g.
    #   COCO_JSON: [["my_train", "data/train.json", "data/train/"], ["my_val", "data/val.json", "data/val/"]]
    # then DATASETS.TRAIN: ("my_train",). Relative paths are relative to the working directory.
    _C.DATASETS.COCO_JSON = []

    # ---- The comparison methods (the "zoo"), with their papers' defaults.
    # Chen et al. 2017, "Learning Efficient Object Detection Models with Knowledge Distillation".
    _C.DISTILL.CHEN = CN()
    _C.DISTILL.CHEN.CLS_WEIGHT = 1.0
    _C.DISTILL.CHEN.MU = 0.5  # L_cls = mu L_hard + (1 - mu) L_soft
    _C.DISTILL.CHEN.BG_WEIGHT = 1.5  # w_background in the soft cross-entropy
    _C.DISTILL.CHEN.TEMPERATURE = 1.0
    _C.DISTILL.CHEN.REG_WEIGHT = 0.5  # nu
    _C.DISTILL.CHEN.MARGIN = 0.0  # m
    _C.DISTILL.CHEN.HINT_WEIGHT = 1.0
    _C.DISTILL.CHEN.HINT_LOSS = "l2"  # "l2" or "l1"
    _C.DISTILL.CHEN.HINT_IN_FEATURES = []  # empty: every shared FPN level
    # FitNet (Romero et al. 2015): hints over whole feature maps through a 3x3 conv regressor.
    _C.DISTILL.FITNET = CN()
    _C.DISTILL.FITNET.WEIGHT = 1.0
    _C.DISTILL.FITNET.IN_FEATURES = []
    # FGFI (Wang et al. 2019): imitation of near-object anchor locations.
    _C.DISTILL.FGFI = CN()
    _C.DISTILL.FGFI.WEIGHT = 0.01
    _C.DISTILL.FGFI.PSI = 0.5
    # DeFeat (Guo et al. 2021): decoupled foreground/background features and responses.
    # GAMMA_FG / GAMMA_BG = 1 / 4 keep the *ratio* of the official VOC config (3 / 12), not its
    # values.
    _C.DISTILL.DEFEAT = CN()
    _C.DISTILL.DEFEAT.FEAT_WEIGHT = 1.0
    _C.DISTILL.DEFEAT.GAMMA_FG = 1.0
    _C.DISTILL.DEFEAT.GAMMA_BG = 4.0
    _C.DISTILL.DEFEAT.RESP_FG_WEIGHT = 1.0
    _C.DISTILL.DEFEAT.RESP_BG_WEIGHT = 1.0
    _C.DISTILL.DEFEAT.TEMPERATURE = 2.0
    # RKD (Park et al. 2019): distance- and angle-wise relations of GT-instance features.
    _C.DISTILL.RKD = CN()
    _C.DISTILL.RKD.DIST_WEIGHT = 1.0
    _C.DISTILL.RKD.ANGLE_WEIGHT = 2.0
    # Vanilla KD (Hinton et al. 2015) on RoI class logits.
    _C.DISTILL.KD = CN()
    _C.DISTILL.KD.WEIGHT = 1.0
    _C.DISTILL.KD.TEMPERATURE = 2.0

    # Detectron2's FCOS meta-architecture, built from these options (gkd_d2.detectors.fcos;
    # Detectron2 itself builds FCOS only from a LazyConfig). Defaults: Detectron2's FCOS.
    _C.MODEL.FCOS = CN()
    _C.MODEL.FCOS.NUM_CLASSES = 80
    _C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    _C.MODEL.FCOS.NUM_CONVS = 4
    _C.MODEL.FCOS.HEAD_NORM = "GN"  # "" (none), "GN", "BN", ...
    _C.MODEL.FCOS.PRIOR_PROB = 0.01
    _C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    _C.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
    _C.MODEL.FCOS.SCORE_THRESH_TEST = 0.2
    _C.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
    _C.MODEL.FCOS.NMS_THRESH_TEST = 0.6
    add_shapes_difficulty_config(cfg)


def add_shapes_difficulty_config(cfg):
    """``DATASETS.SHAPES``'s difficulty: the arguments of the "shapes" generator
    (gkd_d2/data/shapes.py, ``generate_shapes_coco``; mapping and checks:
    gkd_d2/data/shapes_options.py). The defaults are the generator's: the demo's data."""
    s = cfg.DATASETS.SHAPES
    s.MIN_OBJECTS = 1  # objects attempted per image, uniform in MIN_OBJECTS..MAX_OBJECTS
    s.MAX_OBJECTS = 4
    s.AMBIGUOUS_PROB = 0.25  # an object made small, blurred, occluded or truncated
    s.MIN_SIZE = 6.0  # diameter range (px) of the small objects
    s.SMALL_MAX = 12.0
    s.MIN_CLEAR = 28.0  # diameter range of the others: MIN_CLEAR .. MAX_SIZE_FRAC * image side
    s.MAX_SIZE_FRAC = 0.5
    s.LOOKALIKE_PROB = 0.0  # an object's class drawn among the look-alike pairs' four
    s.LOOKALIKE_DETAIL = 1.0  # scale (0, 1] of the detail telling a pair apart (hole, notch)


def load_config(config_file: str, opts=()) -> CN:
    """Detectron2's default config + :func:`add_distill_config` + ``config_file`` + ``opts``
    (``KEY VALUE`` pairs): what ``tools/`` and ``benchmarks/`` start from. Not frozen."""
    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    resolve_teacher_config_file(cfg, config_file)
    return cfg


def _yaml_setting(config_file, keys):
    """``(value, folder of the yaml that sets it)`` of the option ``keys`` (a tuple of names)
    in ``config_file`` and its ``_BASE_`` chain, with yacs's precedence (a file overrides its
    bases, a later base an earlier one); None when no file of the chain sets it."""
    with CN._open_cfg(config_file) as f:
        text = f.read()
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError:  # python tags: what merge_from_file also accepts
        data = yaml.unsafe_load(text)
    data = data if isinstance(data, dict) else {}
    found = None
    bases = data.get("_BASE_", [])
    for base in bases if isinstance(bases, list) else [bases]:
        base = os.path.expanduser(base)
        if not base.startswith(("/", "https://", "http://")):  # as CfgNode.load_yaml_with_base
            base = os.path.join(os.path.dirname(config_file), base)
        found = _yaml_setting(base, keys) or found
    node = data
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return found
        node = node[key]
    return node, os.path.dirname(os.path.abspath(config_file))


def resolve_teacher_config_file(cfg, config_file):
    """Make a relative ``DISTILL.TEACHER.CONFIG_FILE`` that does not exist from the working
    directory relative to the yaml (of ``config_file``'s ``_BASE_`` chain) that sets it, as
    yacs resolves ``_BASE_``: the config then works from any directory. Model-zoo names, paths
    found from the working directory and values given on the command line are left alone."""
    value = cfg.DISTILL.TEACHER.CONFIG_FILE
    if not value or os.path.isabs(value) or os.path.isfile(value):
        return
    setting = _yaml_setting(config_file, ("DISTILL", "TEACHER", "CONFIG_FILE"))
    if setting is None or setting[0] != value:
        return
    candidate = os.path.join(setting[1], value)
    if os.path.isfile(candidate):
        cfg.DISTILL.TEACHER.CONFIG_FILE = os.path.abspath(candidate)


#: The demo's (teacher, student alone, distillation) configs per detector, relative to the
#: repository root: used by ``tools/demo.py`` and ``benchmarks/``.
DEMO_CONFIGS = {
    "faster_rcnn": (
        "configs/Demo/teacher_faster_rcnn_R34_FPN.yaml",
        "configs/Demo/student_faster_rcnn_R18_FPN.yaml",
        "configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml",
    ),
    "retinanet": (
        "configs/Demo/teacher_retinanet_R34_FPN.yaml",
        "configs/Demo/student_retinanet_R18_FPN.yaml",
        "configs/Demo/gkd_retinanet_R34_to_R18_FPN.yaml",
    ),
    "fcos": (
        "configs/Demo/teacher_fcos_R34_FPN.yaml",
        "configs/Demo/student_fcos_R18_FPN.yaml",
        "configs/Demo/gkd_fcos_R34_to_R18_FPN.yaml",
    ),
}

#: Nodes gkd_d2 adds that stock Detectron2 does not know.
GKD_ONLY_NODES = (
    ("DISTILL",), ("DATASETS", "SYNTHETIC"), ("DATASETS", "SHAPES"), ("DATASETS", "COCO_JSON"), ("MODEL", "FCOS")
)


def plain_detectron2_config(cfg) -> CN:
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
