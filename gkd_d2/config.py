"""Every option of gkd_d2 and its default: the ``DISTILL`` node (the paper's method and the
comparison methods), ``MODEL.FCOS`` (Detectron2's FCOS from a yacs config) and the dataset
nodes. The checks of the values live in :mod:`gkd_d2.validation`; reading yaml files (the
teacher's ``CONFIG_FILE``) in :mod:`gkd_d2.config_files`.

Call :func:`add_distill_config` on a Detectron2 ``CfgNode`` before merging a gkd_d2 yaml, the
same way Detectron2's projects do (``add_pointrend_config``, ``add_deeplab_config``)::

    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.merge_from_file("configs/COCO/gkd_faster_rcnn_R101_to_R50_FPN_2x.yaml")

or, the same in one call, ``cfg = load_config(path, opts)``. Formulas and defaults:
``docs/method.md`` and the docstrings of ``gkd_d2/knowledge`` and ``gkd_d2/prototypes``.
"""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .config_files import anchor_teacher_config_file

# Student meta-architectures the wrapper can drive.
SUPPORTED_STUDENTS = ("GeneralizedRCNN", "RetinaNet", "FCOS")


def add_distill_config(cfg):
    """Add the ``DISTILL`` node, ``MODEL.FCOS`` and the dataset nodes to ``cfg`` in place."""
    add_method_config(cfg)
    add_term_config(cfg)
    add_pgm_config(cfg)
    add_zoo_config(cfg)
    add_fcos_config(cfg)
    add_dataset_config(cfg)


def add_method_config(cfg):
    """``DISTILL``: the student, the teacher, the active terms and what they share."""
    cfg.DISTILL = CN()
    # Meta-architecture of the student; the student is built from this same cfg
    # (MODEL.BACKBONE, MODEL.RESNETS, MODEL.ROI_HEADS, ...) and loads MODEL.WEIGHTS.
    cfg.DISTILL.STUDENT_ARCHITECTURE = "GeneralizedRCNN"

    cfg.DISTILL.TEACHER = CN()
    # A Detectron2 yaml: a local path, or a model-zoo name such as
    # "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml". Or a Detectron2 LazyConfig .py (local, or
    # a model-zoo name such as "new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py"): its ``model``
    # is instantiated. A relative path not found from the working directory is resolved
    # against the folder of the yaml that sets it (load_config).
    cfg.DISTILL.TEACHER.CONFIG_FILE = ""
    # Teacher checkpoint: local .pth/.pkl, or a URL (detectron2://..., https://...).
    cfg.DISTILL.TEACHER.WEIGHTS = ""
    # Extra "KEY VALUE" overrides applied to the teacher's config after CONFIG_FILE (for a
    # LazyConfig teacher: "key=value" strings, e.g. "model.num_classes=20", or KEY VALUE pairs).
    cfg.DISTILL.TEACHER.OPTS = []

    # Active knowledge terms, any combination (names: gkd_d2.knowledge.KNOWLEDGE_REGISTRY).
    # The default is the paper's full method: local feature + local response + global.
    cfg.DISTILL.KNOWLEDGE = ["feature", "response", "global"]
    # Defaults follow what the authors' release trains (docs/method.md, "The authors' release");
    # the paper-text reading the project first built stays available through the options below.
    #
    # Multiply the terms of ATTENUATED_TERMS by (1 - iter / SOLVER.MAX_ITER) (the release: on,
    # feature and global terms; the response term is not attenuated).
    cfg.DISTILL.ATTENUATION = True
    cfg.DISTILL.ATTENUATED_TERMS = ["feature", "global"]
    # Multiply the feature foreground mask and the response losses by the robust weights of
    # Eq. 8 when prototypes exist (the "+prototypes" variants of the paper's Table 4).
    cfg.DISTILL.ROBUST_WEIGHTS = True
    # Keep the student's BatchNorm layers in eval mode while training (running statistics used
    # and not updated; affine parameters still train), as Detectron2 freezes pre-trained
    # backbones and the release trains (norm_eval). The student is then the same function in
    # training as at the prototype refresh and at test time: teacher == student gives robust
    # weights 1 and zero response / global losses. False for a student trained from scratch.
    cfg.DISTILL.FREEZE_STUDENT_BN = True

    # Instance vectors of PGM, the robust weights and the global term: each box ROIAligned 7x7 at
    # its level, then "mean" over the grid (METHOD.md section 1, a D-vector) or "flatten" (the
    # 49 D grid: keeps the layout, which tells shapes apart on the replica's data). gkd_d2/pooling.py
    cfg.DISTILL.INSTANCE_POOLING = "mean"
    # The FPN level of a GT box (its instance feature, its prototypes, its foreground mask):
    # "release" (the authors' release): the levels are every FPN output of the student (Faster
    # R-CNN P2-P6, RetinaNet / FCOS P3-P7), a box of side s = sqrt((w + 1)(h + 1)) goes to the
    # first + floor(log2(s / 56)). "detectron2": the head's levels (Faster R-CNN P2-P5) and
    # Detectron2's FPN rule floor(4 + log2(sqrt(area) / 224)): the same level for Faster R-CNN
    # (but P6), one level finer for RetinaNet / FCOS. gkd_d2/pooling.py
    cfg.DISTILL.INSTANCE_LEVELS = "release"


def add_term_config(cfg):
    """``DISTILL.FEATURE``, ``RESPONSE``, ``GLOBAL``: the paper's three knowledge terms."""
    # Local feature knowledge, Eq. 7: decoupled foreground/background imitation of every FPN
    # level through an adaptation conv.
    cfg.DISTILL.FEATURE = CN()
    cfg.DISTILL.FEATURE.WEIGHT = 1.0  # lambda_feat
    cfg.DISTILL.FEATURE.GAMMA_FG = 1.0
    cfg.DISTILL.FEATURE.GAMMA_BG = 4.0
    # Kernel size of the adaptation conv (odd). The paper's is 3; 1 costs 9x less arithmetic,
    # which is most of the feature term's cost at COCO scale (benchmarks/RESULTS.md, "Cost").
    cfg.DISTILL.FEATURE.ADAPTER_KERNEL = 3
    # ReLU after the adaptation conv: the paper's text has one, the release does not (a ReLU
    # cannot output the negative half of the teacher's maps: an irreducible floor in L_feat).
    cfg.DISTILL.FEATURE.ADAPTER_RELU = False
    # Initialisation of the adaptation conv: "default" (PyTorch's Conv2d init, what the release
    # trains: its own init is never applied) or "kaiming" (Kaiming normal fan-out, zero bias;
    # 1.4-1.5x the feature loss at iteration 0, benchmarks/investigations/probe_adapter_init.py).
    cfg.DISTILL.FEATURE.ADAPTER_INIT = "default"
    # How the levels' losses combine: "mean" or "sum"; "" = the release's: mean for two-stage
    # students (Faster R-CNN), sum for dense ones (RetinaNet, FCOS).
    cfg.DISTILL.FEATURE.LEVEL_REDUCTION = ""
    # FPN levels to imitate; empty = every level both backbones output.
    cfg.DISTILL.FEATURE.IN_FEATURES = []

    # Local response knowledge: RoI class logits (Faster R-CNN), anchor / location logits (dense).
    cfg.DISTILL.RESPONSE = CN()
    cfg.DISTILL.RESPONSE.WEIGHT = 1.0  # lambda_resp
    cfg.DISTILL.RESPONSE.TEMPERATURE = 2.0
    # "release": positive RoIs / anchors / locations only; T^2 KL(softmax(z_T/T) || softmax(z_S/T))
    # averaged over the classes, times the robust weight, averaged over the positives.
    # "paper": every sampled RoI (KL summed over the C+1 classes, averaged over RoIs); dense:
    # per-class binary KL over every non-ignored anchor (FCOS: positive locations) divided by
    # the focal loss's normaliser.
    cfg.DISTILL.RESPONSE.FORM = "release"

    # Global knowledge, Eq. 6: instance/prototype relations of teacher and student.
    cfg.DISTILL.GLOBAL = CN()
    cfg.DISTILL.GLOBAL.WEIGHT = 5.0  # lambda_global
    # "paper": each GT instance at its assigned level, mean over (instance, prototype) of
    # w smoothL1(beta_S - beta_T). "release": each instance at every level, per level the mean
    # of smoothL1(w beta_S, w beta_T), summed over levels.
    cfg.DISTILL.GLOBAL.FORM = "paper"


def add_pgm_config(cfg):
    """``DISTILL.PGM`` (the prototypes and their refresh) and ``DISTILL.VIS`` (their pictures)."""
    # Prototype Generation Module and its refresh schedule.
    cfg.DISTILL.PGM = CN()
    cfg.DISTILL.PGM.ENABLED = True
    cfg.DISTILL.PGM.NUM_PROTOTYPES = 10  # K
    cfg.DISTILL.PGM.ALPHA = 10.0
    cfg.DISTILL.PGM.SIGMA = 0.1
    cfg.DISTILL.PGM.QUANTILE = 0.4
    cfg.DISTILL.PGM.MAX_SAMPLES = 800  # instances per class
    cfg.DISTILL.PGM.MIN_SIZE = 30  # shorter box side, pixels, at the test-time input scale
    # Which instances: "uniform" (per class at random among the eligible ones) or "compact" (as
    # many per class, from far fewer images: what a refresh reads). gkd_d2/prototypes/instances.py
    cfg.DISTILL.PGM.SAMPLING = "uniform"
    # Iterations between refreshes; 0 = one epoch = ceil(#images / SOLVER.IMS_PER_BATCH).
    cfg.DISTILL.PGM.PERIOD = 0
    cfg.DISTILL.PGM.SEED = 0
    cfg.DISTILL.PGM.BATCH_SIZE = 4  # images per extraction batch (per process)
    # Dataset the instances are sampled from; empty = DATASETS.TRAIN.
    cfg.DISTILL.PGM.DATASETS = []
    # How the prototypes are chosen: "pgm" (the paper's PGM), or the baselines of its Table 6:
    # "kmeans", "random", "ambiguous" (the smallest instances). gkd_d2/prototypes/selection.py
    cfg.DISTILL.PGM.SELECTION = "pgm"

    # Visualisation of the prototypes and robust weights (gkd_d2/visualization/hook.py).
    cfg.DISTILL.VIS = CN()
    # RobustWeightOverlayHook: draw the robust weights (Eq. 8) of the GT boxes of the first
    # OVERLAY_IMAGES images of DATASETS.TRAIN to OUTPUT_DIR/robust_weights/iter_*/; 0 = off.
    cfg.DISTILL.VIS.OVERLAY_IMAGES = 0
    # When to draw: 0 = after every prototype refresh (PrototypeBank.last_refresh_iter changed),
    # P > 0 = every P iterations.
    cfg.DISTILL.VIS.OVERLAY_PERIOD = 0


def add_zoo_config(cfg):
    """The comparison methods (the "zoo"), with their papers' defaults."""
    # Chen et al. 2017, "Learning Efficient Object Detection Models with Knowledge Distillation".
    cfg.DISTILL.CHEN = CN()
    cfg.DISTILL.CHEN.CLS_WEIGHT = 1.0
    cfg.DISTILL.CHEN.MU = 0.5  # L_cls = mu L_hard + (1 - mu) L_soft
    cfg.DISTILL.CHEN.BG_WEIGHT = 1.5  # w_background in the soft cross-entropy
    cfg.DISTILL.CHEN.TEMPERATURE = 1.0
    cfg.DISTILL.CHEN.REG_WEIGHT = 0.5  # nu
    cfg.DISTILL.CHEN.MARGIN = 0.0  # m
    cfg.DISTILL.CHEN.HINT_WEIGHT = 1.0
    cfg.DISTILL.CHEN.HINT_LOSS = "l2"  # "l2" or "l1"
    cfg.DISTILL.CHEN.HINT_IN_FEATURES = []  # empty: every shared FPN level
    # FitNet (Romero et al. 2015): hints over whole feature maps through a 3x3 conv regressor.
    cfg.DISTILL.FITNET = CN()
    cfg.DISTILL.FITNET.WEIGHT = 1.0
    cfg.DISTILL.FITNET.IN_FEATURES = []
    # FGFI (Wang et al. 2019): imitation of near-object anchor locations.
    cfg.DISTILL.FGFI = CN()
    cfg.DISTILL.FGFI.WEIGHT = 0.01
    cfg.DISTILL.FGFI.PSI = 0.5
    # DeFeat (Guo et al. 2021): decoupled foreground/background features and responses.
    # GAMMA_FG / GAMMA_BG = 1 / 4 keep the *ratio* of the official VOC config (3 / 12), not its
    # values.
    cfg.DISTILL.DEFEAT = CN()
    cfg.DISTILL.DEFEAT.FEAT_WEIGHT = 1.0
    cfg.DISTILL.DEFEAT.GAMMA_FG = 1.0
    cfg.DISTILL.DEFEAT.GAMMA_BG = 4.0
    cfg.DISTILL.DEFEAT.RESP_FG_WEIGHT = 1.0
    cfg.DISTILL.DEFEAT.RESP_BG_WEIGHT = 1.0
    cfg.DISTILL.DEFEAT.TEMPERATURE = 2.0
    # RKD (Park et al. 2019): distance- and angle-wise relations of GT-instance features.
    cfg.DISTILL.RKD = CN()
    cfg.DISTILL.RKD.DIST_WEIGHT = 1.0
    cfg.DISTILL.RKD.ANGLE_WEIGHT = 2.0
    # Vanilla KD (Hinton et al. 2015) on RoI class logits.
    cfg.DISTILL.KD = CN()
    cfg.DISTILL.KD.WEIGHT = 1.0
    cfg.DISTILL.KD.TEMPERATURE = 2.0


def add_fcos_config(cfg):
    """``MODEL.FCOS``: Detectron2's FCOS, built from a yacs config."""
    # Detectron2's FCOS meta-architecture, built from these options (gkd_d2.detectors.fcos;
    # Detectron2 itself builds FCOS only from a LazyConfig). Defaults: Detectron2's FCOS.
    cfg.MODEL.FCOS = CN()
    cfg.MODEL.FCOS.NUM_CLASSES = 80
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    cfg.MODEL.FCOS.NUM_CONVS = 4
    cfg.MODEL.FCOS.HEAD_NORM = "GN"  # "" (none), "GN", "BN", ...
    cfg.MODEL.FCOS.PRIOR_PROB = 0.01
    cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    cfg.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
    cfg.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.2
    cfg.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
    cfg.MODEL.FCOS.NMS_THRESH_TEST = 0.6


def add_dataset_config(cfg):
    """``DATASETS.SYNTHETIC``, ``DATASETS.SHAPES`` (generated data) and ``DATASETS.COCO_JSON``."""
    # Synthetic "ambiguous instances" data of the demo and tests: datasets named
    # gkd_synth_train / gkd_synth_val are generated and registered from these values.
    cfg.DATASETS.SYNTHETIC = CN()
    cfg.DATASETS.SYNTHETIC.ROOT = "datasets/gkd_synth"
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN = 256
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 64
    cfg.DATASETS.SYNTHETIC.IMAGE_SIZE = 160
    cfg.DATASETS.SYNTHETIC.SEED = 0
    # Synthetic "shapes" data (ten learnable classes, an ambiguous minority; data/generated/shapes.py):
    # datasets named gkd_shapes_train / gkd_shapes_val are generated and registered from these.
    # Same keys as DATASETS.SYNTHETIC (ROOT, NUM_TRAIN, NUM_VAL, IMAGE_SIZE 160, SEED 0).
    cfg.DATASETS.SHAPES = cfg.DATASETS.SYNTHETIC.clone()
    cfg.DATASETS.SHAPES.ROOT = "datasets/gkd_shapes"
    cfg.DATASETS.SHAPES.NUM_TRAIN = 2000
    cfg.DATASETS.SHAPES.NUM_VAL = 200
    # Your own COCO-format datasets, registered by tools/train_net.py, export_student.py and
    # visualize_prototypes.py (gkd_d2.data.register_datasets_from_cfg) with Detectron2's
    # register_coco_instances: a list of [name, json_file, image_root] triples, e.g.
    #   COCO_JSON: [["my_train", "data/train.json", "data/train/"], ["my_val", "data/val.json", "data/val/"]]
    # then DATASETS.TRAIN: ("my_train",). Relative paths are relative to the working directory.
    cfg.DATASETS.COCO_JSON = []
    add_shapes_difficulty_config(cfg)


def add_shapes_difficulty_config(cfg):
    """``DATASETS.SHAPES``'s difficulty: the arguments of the "shapes" generator
    (gkd_d2/data/generated/shapes.py, ``generate_shapes_coco``; mapping and checks:
    gkd_d2/data/generated/shapes_options.py). The defaults are the generator's: the demo's data."""
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
    (``KEY VALUE`` pairs): what ``tools/`` and ``benchmarks/`` start from. A relative teacher
    ``CONFIG_FILE`` is anchored to the yaml that sets it
    (:func:`gkd_d2.config_files.anchor_teacher_config_file`). Not frozen."""
    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    anchor_teacher_config_file(cfg, config_file)
    return cfg
