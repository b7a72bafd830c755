"""Builders for the tests: tiny configs, teacher checkpoints, batches with GT boxes."""
import os

import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import gkd_d2  # noqa: F401  (registers the meta-architectures)
from gkd_d2 import add_distill_config
from gkd_d2.export import plain_detectron2_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 3
#: the base config of each student / teacher meta-architecture
BASE_CONFIGS = {
    "GeneralizedRCNN": "Base-RCNN-FPN.yaml",
    "RetinaNet": "Base-RetinaNet.yaml",
    "FCOS": "Base-FCOS.yaml",
}
#: the fixture shared by the whole test run (conftest.py) of a tiny teacher of each meta-architecture
TEACHER_FIXTURES = {"GeneralizedRCNN": "rcnn_teacher", "RetinaNet": "retina_teacher", "FCOS": "fcos_teacher"}


def tiny_cfg(arch="GeneralizedRCNN", fpn_channels=16, depth=18, norm="BN"):
    """A plain Detectron2 config of a tiny FPN detector (CPU, 64 px inputs)."""
    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", BASE_CONFIGS[arch]))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.FPN.OUT_CHANNELS = fpn_channels
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.RETINANET.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.FCOS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.FCOS.NUM_CONVS = 1
    cfg.MODEL.FCOS.HEAD_NORM = ""  # GroupNorm's 32 groups do not divide a 16-channel FPN
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 32
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    if arch == "GeneralizedRCNN":
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    else:
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[x, x * 1.5] for x in [8, 16, 32, 64, 128]]
        cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MAX_ITER = 10
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def save_plain_config(cfg, path):
    """Write ``cfg`` without the gkd_d2 nodes: a config any Detectron2 can read."""
    with open(path, "w") as f:
        f.write(plain_detectron2_config(cfg).dump())
    return str(path)


@torch.no_grad()
def calibrate_batchnorm(model, steps=30):
    """Set BN running statistics from random images, as training would: a random-init teacher
    evaluated with running_var = 1 has exploding activations."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
            m.reset_running_stats()
    model.train()
    for i in range(steps):
        images = [x["image"] for x in make_batch(((0, 0), (0, 0)), seed=100 + i)]
        model.backbone(model.preprocess_image([{"image": im} for im in images]).tensor)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    model.eval()


def make_teacher(tmp_dir, arch, seed=0, fpn_channels=32, num_classes=NUM_CLASSES, norm="BN"):
    """Build a tiny teacher with random weights, save its yaml and a .pth checkpoint."""
    torch.manual_seed(seed)
    cfg = tiny_cfg(arch, fpn_channels=fpn_channels, norm=norm)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.FCOS.NUM_CLASSES = num_classes
    model = build_model(cfg)
    if norm == "BN":
        calibrate_batchnorm(model)
    cfg_path = save_plain_config(cfg, os.path.join(tmp_dir, "teacher.yaml"))
    DetectionCheckpointer(model, save_dir=str(tmp_dir)).save("teacher")
    return cfg_path, os.path.join(str(tmp_dir), "teacher.pth")


def distill_cfg(
    teacher, arch="GeneralizedRCNN", knowledge=("feature", "response", "global"), freeze_bn=False, **kw
):
    """A DistillationDetector config: tiny student of ``arch`` with ``teacher`` = (yaml, pth).

    The tiny students start from random weights (the from-scratch regime), so their BatchNorm
    trains by default here (``freeze_bn=False``); ``freeze_bn=True`` is gkd_d2's default, for a
    student that was trained on the task first."""
    cfg = tiny_cfg(arch, **kw)
    cfg.DISTILL.FREEZE_STUDENT_BN = freeze_bn
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.DISTILL.STUDENT_ARCHITECTURE = arch
    cfg.DISTILL.TEACHER.CONFIG_FILE, cfg.DISTILL.TEACHER.WEIGHTS = teacher
    cfg.DISTILL.KNOWLEDGE = list(knowledge)
    cfg.DISTILL.PGM.NUM_PROTOTYPES = 3
    cfg.DISTILL.PGM.MIN_SIZE = 4
    return cfg


def pgm_warnings_without_class(cfg, dicts, missing):
    """(warnings, model): the warnings a prototype refresh of a model built from ``cfg`` logs
    when class ``missing`` is removed from ``dicts``, and that model."""
    import logging

    from gkd_d2 import PrototypeRefresher

    dicts = [{**d, "annotations": [a for a in d["annotations"] if a["category_id"] != missing]} for d in dicts]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("gkd_d2.prototypes.refresh")
    log.addHandler(handler)
    model = build_model(cfg)
    try:
        PrototypeRefresher(cfg, dataset_dicts=dicts).refresh(model, 0)
    finally:
        log.removeHandler(handler)
    return [r.getMessage() for r in records if r.levelno == logging.WARNING], model


def train_losses(model, batch, it=0):
    """The training losses of ``model`` on ``batch`` at iteration ``it``."""
    model.train()
    with EventStorage(it):
        return model(batch)


def fill_prototypes_from_batch(model, batch):
    """Make GT instances of ``batch`` the prototypes of their (level, class)."""
    gt = model.ground_truth([x["instances"] for x in batch])
    with torch.no_grad():
        model.eval()
        s = model.student
        s_feats = s.backbone(s.preprocess_image(batch).tensor)
        fs = model.pool_instances(s_feats, gt)
        ft = model.pool_instances(model.teacher_features(batch), gt)
    for i in range(len(gt)):
        lvl, c = int(gt.level_index[i]), int(gt.classes[i])
        model.prototypes.set_prototypes(lvl, c, ft[i : i + 1], fs[i : i + 1], torch.tensor([[0, i]]))
    model.prototypes.last_refresh_iter.fill_(0)


def make_batch(boxes_per_image=((2, 2),), size=64, seed=0):
    """Detectron2 training inputs with random images and given GT.

    boxes_per_image: for each image, a sequence of (num_boxes, ...) -- we use a list of
    (n, first_class) pairs to generate n random boxes of classes first_class, first_class+1...
    """
    g = torch.Generator().manual_seed(seed)
    batch = []
    for n, first_cls in boxes_per_image:
        image = torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8)
        xy = torch.rand(n, 2, generator=g) * size * 0.5
        wh = 8 + torch.rand(n, 2, generator=g) * size * 0.4
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1))
        inst.gt_classes = (torch.arange(n) + first_cls) % NUM_CLASSES
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch


def composite_binary_kl(zs, zt, t):
    """The RetinaNet response KL written with PyTorch's own (composite) ops, the oracle for
    ``anchor_binary_kl``: ``T^2 sum_c [BCE(zs/T, p_T) - H(p_T)]``, (B, A, C) -> (B, A)."""
    p = torch.sigmoid(zt / t)
    bce = F.binary_cross_entropy_with_logits(zs / t, p, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(zt / t, p, reduction="none")
    return (bce - entropy).sum(-1) * t * t
