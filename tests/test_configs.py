"""Every yaml in configs/: it loads with gkd_d2's options, its ``_BASE_`` files exist, each key
it sets is an option, a distillation config's teacher config builds with the same number of
classes as the student, and every config builds its model and runs one training step (tiny CPU
setting).

For the training step, weight loading is skipped (no network, no trained teachers here) and the
networks are shrunk (ResNet-18 trunks, 16-channel FPN, 64 px inputs), but the structure each
config describes is what gets built: meta-architecture, student/teacher kinds, heads (cascade
included), knowledge terms and prototype settings.
"""
import glob
import os

import pytest
import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from helpers import ROOT, make_batch, train_losses

import gkd_d2.meta_arch
from gkd_d2 import add_distill_config
from gkd_d2.config import SUPPORTED_STUDENTS, load_config
from gkd_d2.teacher import build_teacher_cfg
from gkd_d2.validation import validate_distill_config

YAMLS = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
)
CONFIGS = [p for p in YAMLS if not os.path.basename(p).startswith("Base-")]
#: the config whose training step runs without -m 'not slow' (the others take seconds each and
#: are marked slow; test_meta_arch.py trains every student family without them)
QUICK = {"configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml"}
#: the option holding the number of classes of each meta-architecture
NUM_CLASSES_OPTION = {
    "GeneralizedRCNN": ("ROI_HEADS", "NUM_CLASSES"),
    "RetinaNet": ("RETINANET", "NUM_CLASSES"),
    "FCOS": ("FCOS", "NUM_CLASSES"),
}
SHRINK = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.NUM_GROUPS", "1", "MODEL.RESNETS.WIDTH_PER_GROUP", "64",
    "MODEL.RESNETS.STRIDE_IN_1X1", "True", "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.RETINANET.NUM_CONVS", "1",
    "MODEL.FCOS.NUM_CONVS", "1", "MODEL.FCOS.HEAD_NORM", "",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
]


def read_yaml(path):
    with open(path) as f:
        text = f.read()
    try:
        return yaml.safe_load(text) or {}
    except yaml.constructor.ConstructorError:  # python tags, as Detectron2's Base-RetinaNet has
        return yaml.unsafe_load(text) or {}


def unknown_keys(data, node, prefix=""):
    """The dotted keys of the yaml mapping ``data`` that the config ``node`` does not have."""
    out = []
    for key, value in data.items():
        if prefix == "" and key == "_BASE_":
            continue
        if key not in node:
            out.append(prefix + key)
        elif isinstance(node[key], CfgNode):
            if not isinstance(value, dict):
                out.append(f"{prefix}{key} (a node, set to {value!r})")
            else:
                out += unknown_keys(value, node[key], f"{prefix}{key}.")
    return out


def num_classes(cfg, arch):
    node, key = NUM_CLASSES_OPTION[arch]
    return cfg.MODEL[node][key]


@pytest.mark.parametrize("path", YAMLS)
def test_yaml_bases_exist_and_every_key_is_an_option(path):
    data = read_yaml(os.path.join(ROOT, path))
    bases = data.get("_BASE_", [])
    for base in bases if isinstance(bases, list) else [bases]:
        assert os.path.isfile(os.path.join(ROOT, os.path.dirname(path), base)), f"{path}: _BASE_ {base} not found"
    defaults = get_cfg()
    add_distill_config(defaults)
    assert unknown_keys(data, defaults) == [], path
    load_config(os.path.join(ROOT, path))  # and yacs accepts every value (types, _BASE_ chain)


def is_distillation(path):
    """By name: ``gkd_*`` configs and the comparison methods' (``zoo/``)."""
    return os.path.basename(path).startswith("gkd_") or "/zoo/" in path


@pytest.mark.parametrize("path", [p for p in CONFIGS if not is_distillation(p)])
def test_plain_config_is_a_plain_detector(path):
    cfg = load_config(os.path.join(ROOT, path))
    assert cfg.MODEL.META_ARCHITECTURE in NUM_CLASSES_OPTION, path
    assert "DISTILL" not in read_yaml(os.path.join(ROOT, path)), path


@pytest.mark.parametrize("path", [p for p in CONFIGS if is_distillation(p)])
def test_distillation_config_has_a_teacher_of_its_classes(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # teacher CONFIG_FILEs are relative to the repository root
    cfg = load_config(path)
    assert cfg.MODEL.META_ARCHITECTURE == "DistillationDetector", path
    assert cfg.DISTILL.STUDENT_ARCHITECTURE in SUPPORTED_STUDENTS
    validate_distill_config(cfg)
    teacher_cfg = build_teacher_cfg(cfg)  # CONFIG_FILE resolves, TEACHER.OPTS are options
    teacher_arch = teacher_cfg.MODEL.META_ARCHITECTURE
    assert teacher_arch in NUM_CLASSES_OPTION, f"{path}: teacher {teacher_arch}"
    assert num_classes(teacher_cfg, teacher_arch) == num_classes(cfg, cfg.DISTILL.STUDENT_ARCHITECTURE), path


@pytest.mark.parametrize("path", [p if p in QUICK else pytest.param(p, marks=pytest.mark.slow) for p in CONFIGS])
def test_config_builds_and_trains_one_step(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # teacher CONFIG_FILEs are relative to the repository root
    monkeypatch.setattr(gkd_d2.meta_arch, "load_teacher_weights", lambda model, weights, option=None: None)
    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(SHRINK)
    if cfg.MODEL.META_ARCHITECTURE == "DistillationDetector":
        cfg.DISTILL.TEACHER.OPTS = list(cfg.DISTILL.TEACHER.OPTS) + SHRINK
        cfg.DISTILL.PGM.NUM_PROTOTYPES = 2
    torch.manual_seed(0)
    model = build_model(cfg)
    losses = train_losses(model, make_batch(((2, 0), (1, 1))))
    for k, v in losses.items():
        assert torch.isfinite(v), f"{path}: {k}"
    if cfg.MODEL.META_ARCHITECTURE == "DistillationDetector":
        for name in cfg.DISTILL.KNOWLEDGE:
            assert any(k.startswith(f"loss_kd_{name}") for k in losses), f"{path}: {name}"
        assert (model.prototypes is not None) == cfg.DISTILL.PGM.ENABLED
    sum(losses.values()).backward()
