"""Config nodes of the comparison methods (``DISTILL.<METHOD>``), with their papers' defaults."""
from detectron2.config import CfgNode as CN


def add_knowledge_zoo_config(cfg):
    _C = cfg
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
