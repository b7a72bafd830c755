"""What users ran into (issue 15): LazyConfig teachers, datasets from the config, corrupt json,
config.yaml kept on a failed build, --resume after KEY VALUE pairs, tolerant teacher loading,
class names in PGM warnings, teacher configs relative to their yaml, precise RKD distances."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from helpers import (
    ROOT,
    calibrate_batchnorm,
    distill_cfg,
    make_batch,
    make_teacher,
    pgm_warnings_without_class,
    save_plain_config,
    tiny_cfg,
    train_losses,
)

from gkd_d2.config import load_config
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.data.coco import load_coco_json_checked
from gkd_d2.data.generated.synthetic import SYNTHETIC_CLASSES, generate_synthetic_coco, register_synthetic_dataset
from gkd_d2.knowledge.losses import distance_relations
from gkd_d2.teacher import (
    build_teacher_cfg,
    lazy_teacher_cfg,
    load_lazy_teacher_config,
    load_teacher_weights,
    resolve_config_file,
)

# A tiny RetinaNet as a Detectron2 LazyConfig: the model zoo's RetinaNet, shrunk to the
# students of tests/helpers.py (ResNet-18, 32-channel FPN, 2 anchors per location, 3 classes).
TINY_LAZY_RETINANET = """
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import ResNet

model = model_zoo.get_config("common/models/retinanet.py").model
model.backbone.bottom_up.stem.norm = "BN"
model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="BN")
model.backbone.out_channels = 32
model.backbone.top_block.in_channels = 512
model.head.input_shape = [ShapeSpec(channels=32)] * 5
model.head.conv_dims = [32]
model.head.num_anchors = 2
model.anchor_generator.sizes = [[x, x * 1.5] for x in [8, 16, 32, 64, 128]]
model.anchor_generator.aspect_ratios = [1.0]
model.num_classes = 3
"""


def _load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """A small COCO-format dataset on disk: (json text, json path, image folder)."""
    root = tmp_path_factory.mktemp("coco")
    json_file = generate_synthetic_coco(str(root), num_images=6, image_size=64, seed=5)
    return open(json_file).read(), json_file, str(root / "images")


# ------------------------------------------------------------------------- LazyConfig teachers
def test_lazyconfig_teacher_distils(tmp_path):
    py = tmp_path / "tiny_retinanet.py"
    py.write_text(TINY_LAZY_RETINANET)
    cfg = distill_cfg((str(py), ""), arch="RetinaNet")
    torch.manual_seed(0)
    teacher = instantiate(load_lazy_teacher_config(cfg).model)
    calibrate_batchnorm(teacher)
    DetectionCheckpointer(teacher, save_dir=str(tmp_path)).save("lazy_teacher")
    cfg.DISTILL.TEACHER.WEIGHTS = str(tmp_path / "lazy_teacher.pth")
    model = build_model(cfg)
    assert type(model.teacher).__name__ == "RetinaNet"
    assert model.teacher_cfg.INPUT.FORMAT == "BGR" and not model.flip_teacher_channels
    assert model.teacher_cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
    # the saved weights were loaded (not a fresh random init), and the teacher is frozen
    for k, v in teacher.state_dict().items():
        assert torch.equal(model.teacher.state_dict()[k], v), k
    assert not any(p.requires_grad for p in model.teacher.parameters())
    losses = train_losses(model, make_batch(((2, 0), (3, 1))))
    for key in ("loss_kd_feature", "loss_kd_response", "loss_kd_global", "loss_cls"):
        assert key in losses and torch.isfinite(losses[key]), key
    # DISTILL.TEACHER.OPTS are LazyConfig overrides: 5 classes no longer match the student's 3
    cfg.DISTILL.TEACHER.OPTS = ["model.num_classes=5"]
    with pytest.raises(ValueError, match="teacher predicts 5 classes|number of classes"):
        build_model(cfg)


def test_lazyconfig_model_zoo_name_resolves_offline():
    cfg = load_config(os.path.join(ROOT, "configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml"))
    name = "new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py"
    cfg.DISTILL.TEACHER.CONFIG_FILE = name
    cfg.DISTILL.TEACHER.OPTS = ["model.roi_heads.num_classes", "5"]  # KEY VALUE pairs work too
    assert resolve_config_file(name).endswith(name) and os.path.isfile(resolve_config_file(name))
    lazy = load_lazy_teacher_config(cfg)
    assert lazy.model.roi_heads.num_classes == 5
    node = build_teacher_cfg(cfg)  # what meta_arch reads: a yacs node
    assert node == lazy_teacher_cfg(cfg, lazy)
    assert node.INPUT.FORMAT == "BGR" and node.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    cfg.DISTILL.TEACHER.CONFIG_FILE = "new_baselines/no_such_config.py"
    with pytest.raises(FileNotFoundError, match="no_such_config.py"):
        load_lazy_teacher_config(cfg)


# --------------------------------------------------------- CONFIG_FILE relative to its yaml
def test_teacher_config_file_relative_to_the_yaml_that_sets_it(tmp_path, monkeypatch):
    base = os.path.join(ROOT, "configs", "Base-Distill-RCNN-FPN.yaml")
    a, b, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "elsewhere"
    for d in (a, b, elsewhere):
        d.mkdir()
    save_plain_config(tiny_cfg(), a / "teacher.yaml")
    (a / "gkd.yaml").write_text(f'_BASE_: "{base}"\nDISTILL:\n  TEACHER:\n    CONFIG_FILE: "teacher.yaml"\n')
    # the key is set by a base in another folder: relative to that base
    (b / "child.yaml").write_text('_BASE_: "../a/gkd.yaml"\nSOLVER:\n  MAX_ITER: 7\n')
    monkeypatch.chdir(elsewhere)
    for yaml_file in (a / "gkd.yaml", b / "child.yaml"):
        cfg = load_config(str(yaml_file))
        assert cfg.DISTILL.TEACHER.CONFIG_FILE == str(a / "teacher.yaml"), yaml_file
        assert build_teacher_cfg(cfg).MODEL.RESNETS.DEPTH == 18  # the teacher config is found
    # a child that sets its own value wins, resolved against the child's folder
    save_plain_config(tiny_cfg(depth=34), b / "teacher.yaml")
    (b / "own.yaml").write_text('_BASE_: "../a/gkd.yaml"\nDISTILL:\n  TEACHER:\n    CONFIG_FILE: "teacher.yaml"\n')
    assert load_config(str(b / "own.yaml")).DISTILL.TEACHER.CONFIG_FILE == str(b / "teacher.yaml")
    # a value from the command line is the user's, relative to the working directory
    cfg = load_config(str(a / "gkd.yaml"), ["DISTILL.TEACHER.CONFIG_FILE", "other.yaml"])
    assert cfg.DISTILL.TEACHER.CONFIG_FILE == "other.yaml"
    # found from the working directory: unchanged (what the repository's configs rely on)
    monkeypatch.chdir(a)
    assert load_config(str(a / "gkd.yaml")).DISTILL.TEACHER.CONFIG_FILE == "teacher.yaml"


# ------------------------------------------------------------------ tolerant teacher loading
def test_teacher_checkpoint_without_num_batches_tracked_loads(tmp_path):
    cfg_path, weights = make_teacher(tmp_path, "GeneralizedRCNN")
    ckpt = torch.load(weights, weights_only=False)
    dropped = [k for k in ckpt["model"] if k.endswith("num_batches_tracked")]
    assert dropped  # BN teacher: the buffers exist, and are removed here
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if k not in dropped}
    torch.save(ckpt, tmp_path / "no_nbt.pth")
    cfg = distill_cfg((cfg_path, str(tmp_path / "no_nbt.pth")))
    teacher = build_model(build_teacher_cfg(cfg))
    load_teacher_weights(teacher, str(tmp_path / "no_nbt.pth"))  # Detectron2 accepts it: so do we
    for k, v in ckpt["model"].items():
        assert torch.equal(teacher.state_dict()[k], v), k


def test_shape_mismatch_is_not_also_reported_missing(tmp_path):
    cfg_path, weights = make_teacher(tmp_path, "GeneralizedRCNN", num_classes=4)
    teacher = build_model(tiny_cfg(fpn_channels=32))  # 3 classes
    with pytest.raises(ValueError, match="number of classes.*cls_score") as e:
        load_teacher_weights(teacher, weights)
    assert "Missing from the checkpoint" not in str(e.value), str(e.value)


# --------------------------------------------------------------------- corrupt json, stamps
def test_truncated_synthetic_json_is_regenerated(tmp_path):
    root = tmp_path / "synth"
    register_synthetic_dataset("gkd_edge_stamp_a", str(root), num_images=3, image_size=64, seed=1)
    good = (root / "annotations.json").read_text()
    stamp = json.loads((root / "params.json").read_text())
    assert len(stamp["annotations_sha256"]) == 64
    (root / "annotations.json").write_text(good[: len(good) // 2])  # truncated, stamp intact
    register_synthetic_dataset("gkd_edge_stamp_b", str(root), num_images=3, image_size=64, seed=1)
    assert (root / "annotations.json").read_text() == good  # regenerated, not reused
    assert len(DatasetCatalog.get("gkd_edge_stamp_b")) == 3
    # truncated after registration: the loader's error names the file
    (root / "annotations.json").write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"annotations\.json.*not valid json"):
        DatasetCatalog.get("gkd_edge_stamp_b")


def test_corrupt_json_errors_name_the_file(coco, tmp_path):
    text, _, images = coco
    truncated = tmp_path / "truncated.json"
    truncated.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=f"{truncated}.*not valid json"):
        load_coco_json_checked(str(truncated), images, "x")
    cfg = tiny_cfg()

    def register(name, json_file, image_root):
        cfg.DATASETS.COCO_JSON = [[name, str(json_file), str(image_root)]]
        register_datasets_from_cfg(cfg)

    with pytest.raises(ValueError, match=f"'{truncated}' of dataset 'edge_trunc' is truncated"):
        register("edge_trunc", truncated, images)
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path / 'missing.json'}' of dataset 'edge_missing'"):
        register("edge_missing", tmp_path / "missing.json", images)
    good = tmp_path / "good.json"
    good.write_text(text)
    with pytest.raises(FileNotFoundError, match=f"image folder '{tmp_path / 'no_images'}'"):
        register("edge_noimg", good, tmp_path / "no_images")
    # corrupt in the middle (still ends with '}'): registered, fails on loading, naming the file
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(text[:100] + "#" + text[101:])
    register("edge_corrupt", corrupt, images)
    with pytest.raises(ValueError, match=f"{corrupt}.*edge_corrupt.*not valid json"):
        DatasetCatalog.get("edge_corrupt")
    cfg.DATASETS.COCO_JSON = [["edge_bad_entry", str(good)]]
    with pytest.raises(ValueError, match=r"DATASETS.COCO_JSON\[0\]"):
        register_datasets_from_cfg(cfg)


def test_coco_json_datasets_from_config(coco, tmp_path):
    _, json_file, images = coco
    cfg = load_config(
        os.path.join(ROOT, "configs/Demo/student_retinanet_R18_FPN.yaml"),
        ["DATASETS.COCO_JSON", f"[['edge_cfg_train', '{json_file}', '{images}']]",
         "DATASETS.TRAIN", "('edge_cfg_train',)", "DATASETS.TEST", "()"],
    )
    register_datasets_from_cfg(cfg)
    register_datasets_from_cfg(cfg)  # again: a no-op
    dicts = DatasetCatalog.get("edge_cfg_train")
    assert len(dicts) == 6 and all(os.path.isfile(d["file_name"]) for d in dicts)
    meta = MetadataCatalog.get("edge_cfg_train")
    assert meta.thing_classes == list(SYNTHETIC_CLASSES) and meta.evaluator_type == "coco"
    # the same name with other files is refused
    cfg.defrost()
    cfg.DATASETS.COCO_JSON = [["edge_cfg_train", json_file, str(tmp_path)]]
    with pytest.raises(ValueError, match="'edge_cfg_train' is already registered"):
        register_datasets_from_cfg(cfg)


# ------------------------------------------------------------------------------ PGM warning
def test_pgm_warning_names_the_class(coco, rcnn_teacher_5, tmp_path):
    _, json_file, images = coco
    cfg = distill_cfg(rcnn_teacher_5)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(SYNTHETIC_CLASSES)
    cfg.DATASETS.COCO_JSON = [["edge_pgm_train", json_file, images]]
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("edge_pgm_train",), ()
    register_datasets_from_cfg(cfg)
    missing = 2
    warnings, model = pgm_warnings_without_class(cfg, DatasetCatalog.get("edge_pgm_train"), missing)
    name = SYNTHETIC_CLASSES[missing]
    assert any(f"class {missing} has no instance" in w and f"'{name}'" in w for w in warnings), warnings


@pytest.fixture(scope="module")
def rcnn_teacher_5(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher5"), "GeneralizedRCNN", num_classes=len(SYNTHETIC_CLASSES))


# ---------------------------------------------------------------------------------- RKD
def test_rkd_distances_precise_with_large_offset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=g) + 1000.0  # > 25 rows: cdist's matrix-product path
    xd = x.double()
    ref = torch.cdist(xd, xd, compute_mode="donot_use_mm_for_euclid_dist")
    off = ~torch.eye(40, dtype=torch.bool)
    ref = ref / ref[off].mean()
    d = distance_relations(x)
    assert (d.double() - ref).abs().max() < 1e-5
    assert (d.diagonal() == 0).all()
    # uncentred, the same float32 features lose the distances (what the centring fixes)
    raw = torch.cdist(x, x)
    assert ((raw / raw[off].mean()).double() - ref)[off].abs().max() > 1e-3


# --------------------------------------------------------------------------- tools/train_net
def test_resume_and_eval_only_after_key_value_pairs():
    train_net = _load_module(os.path.join(ROOT, "tools", "train_net.py"), "gkd_train_net_tool")
    args = train_net.parse_args(["--config-file", "c.yaml", "SOLVER.MAX_ITER", "5", "--resume"])
    assert args.resume and args.opts == ["SOLVER.MAX_ITER", "5"]
    args = train_net.parse_args(["--config-file", "c.yaml", "A", "1", "--eval-only", "B", "2"])
    assert args.eval_only and not args.resume and args.opts == ["A", "1", "B", "2"]
    with pytest.raises(SystemExit):  # any other option after the pairs: an error with a hint
        train_net.parse_args(["--config-file", "c.yaml", "A", "1", "--num-gpus", "2"])


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_failed_build_keeps_config_yaml_and_names_the_json(coco, tmp_path, damage):
    """A truncated json fails at registration, one corrupt in the middle when the trainer builds
    its data loader: both name the file, and an earlier run's config.yaml stays as it was."""
    text, _, images = coco
    bad = tmp_path / f"{damage}.json"
    bad.write_text(text[: len(text) // 2] if damage == "truncated" else text[:100] + "#" + text[101:])
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("# the config of an earlier run\n")
    (out / "model_final.pth").write_bytes(b"earlier weights")
    proc = subprocess.run(
        [
            sys.executable, "tools/train_net.py",
            "--config-file", "configs/Demo/student_faster_rcnn_R18_FPN.yaml",
            "DATASETS.COCO_JSON", f"[['edge_run_train', '{bad}', '{images}']]",
            "DATASETS.TRAIN", "('edge_run_train',)", "DATASETS.TEST", "()",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "SOLVER.MAX_ITER", "1",
            "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out),
            "--resume",  # after the KEY VALUE pairs: taken as the flag
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert "odd length" not in log
    assert str(bad) in log.splitlines()[-1], log[-3000:]  # the error itself names the json
    assert (out / "config.yaml").read_text() == "# the config of an earlier run\n"
    assert (out / "model_final.pth").read_bytes() == b"earlier weights"
