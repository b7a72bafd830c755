"""The capacity pair (configs/Capacity): the narrow ResNet FPN backbones, the student's FLOPs
against its teacher's, the harder shapes data's options, the equal-schedule search of
benchmarks/capacity_gap.py, and a distillation model built from the pair."""
import collections
import json
import os
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from helpers import ROOT, calibrate_batchnorm, fill_prototypes_from_batch, make_batch, save_plain_config, train_losses

from gkd_d2 import add_distill_config
from gkd_d2.config import load_config
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.data.generated.shapes import SHAPES_CLASSES, generate_shapes_coco
from gkd_d2.data.generated.silhouettes import shape_params as _shape_params
from gkd_d2.data.generated.shapes_options import SHAPES_DIFFICULTY_OPTIONS, shapes_generator_kwargs

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import capacity_gap  # noqa: E402
from common import CAPACITY_CONFIGS  # noqa: E402


def capacity_cfg(path, opts=()):
    return load_config(os.path.join(ROOT, path), ["MODEL.DEVICE", "cpu", *opts])


def narrow_cfg(depth=18, stem=32, res2=32, fpn=64, retinanet=False):
    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.STEM_OUT_CHANNELS, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = depth, stem, res2
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.FPN.OUT_CHANNELS = fpn
    levels = ["res3", "res4", "res5"] if retinanet else ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = levels
    cfg.MODEL.BACKBONE.NAME = ("build_retinanet_narrow_resnet_fpn_backbone" if retinanet
                               else "build_narrow_resnet_fpn_backbone")
    return cfg


# ---------------------------------------------------------------------------------------------
# the narrow backbones
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("retinanet", [False, True])
def test_narrow_fpn_outputs_the_documented_levels_strides_and_channels(retinanet):
    torch.manual_seed(0)
    backbone = build_backbone(narrow_cfg(retinanet=retinanet), ShapeSpec(channels=3))
    levels = [3, 4, 5, 6, 7] if retinanet else [2, 3, 4, 5, 6]
    shapes = backbone.output_shape()
    assert list(shapes) == [f"p{k}" for k in levels]
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {f"p{k}": (64, 2**k) for k in levels}
    trunk = backbone.bottom_up.output_shape()
    widths = {"res2": (32, 4), "res3": (64, 8), "res4": (128, 16), "res5": (256, 32)}
    assert {k: (s.channels, s.stride) for k, s in trunk.items()} == {k: widths[k] for k in trunk}
    assert backbone.bottom_up.stem.out_channels == 32
    out = backbone(torch.randn(2, 3, 128, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        f"p{k}": (2, 64, -(-128 // 2**k), -(-96 // 2**k)) for k in levels}
    assert all(torch.isfinite(v).all() for v in out.values())


def test_narrow_resnet_blocks_per_depth():
    for depth, blocks in ((10, [1, 1, 1, 1]), (18, [2, 2, 2, 2]), (34, [3, 4, 6, 3])):
        trunk = build_backbone(narrow_cfg(depth=depth), ShapeSpec(channels=3)).bottom_up
        assert [len(getattr(trunk, f"res{k}")) for k in range(2, 6)] == blocks


def test_full_width_narrow_resnet34_is_detectron2s_resnet34():
    """Same modules and parameter shapes: a ResNet-34 checkpoint loads into either."""
    ours = narrow_cfg(depth=34, stem=64, res2=64, fpn=128)
    theirs = ours.clone()
    theirs.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    a, b = (build_backbone(c, ShapeSpec(channels=3)).state_dict() for c in (ours, theirs))
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}


@pytest.mark.parametrize("key, value, match", [
    ("DEPTH", 50, "MODEL.RESNETS.DEPTH = 50"),
    ("RES2_OUT_CHANNELS", 0, "MODEL.RESNETS.RES2_OUT_CHANNELS"),
    ("NUM_GROUPS", 32, "NUM_GROUPS 1"),
])
def test_narrow_resnet_bad_option_names_it(key, value, match):
    cfg = narrow_cfg()
    cfg.MODEL.RESNETS[key] = value
    with pytest.raises(ValueError, match=match):
        BACKBONE_REGISTRY.get("build_narrow_resnet_backbone")(cfg, ShapeSpec(channels=3))


# ---------------------------------------------------------------------------------------------
# the pair's FLOPs and levels
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("detector", sorted(CAPACITY_CONFIGS))
@pytest.mark.slow
def test_student_costs_at_most_a_quarter_of_the_teacher(detector):
    teacher_yaml, student_yaml, _ = CAPACITY_CONFIGS[detector]
    t, s = (capacity_gap.model_flops(capacity_cfg(p), 64) for p in (teacher_yaml, student_yaml))
    assert 0.05 < s["gflops"] / t["gflops"] <= 0.25, (s, t)
    assert s["params_m"] < t["params_m"] / 4
    assert sum(t["components_gflops"].values()) == pytest.approx(t["gflops"], rel=1e-3)


@pytest.mark.slow
def test_flops_count_does_not_depend_on_the_random_weights():
    """Faster R-CNN's box head always sees POST_NMS_TOPK_TEST proposals (a randomly initialised
    ResNet-34 teacher's own RPN keeps only a few): its count is the layers' multiply-adds."""
    cfg = capacity_cfg(CAPACITY_CONFIGS["faster_rcnn"][0])
    n, c, fc, k = cfg.MODEL.RPN.POST_NMS_TOPK_TEST, cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.FC_DIM, 10
    box_head = n * (7 * 7 * c * fc + fc * fc + fc * (k + 1) + fc * 4 * k)  # 2 FC layers, class and box outputs
    assert capacity_gap.model_flops(cfg, 64)["components_gflops"]["roi_heads"] == round(box_head / 1e9, 4)


@pytest.mark.parametrize("detector", sorted(CAPACITY_CONFIGS))
def test_student_outputs_the_teachers_levels(detector):
    shapes = [build_backbone(capacity_cfg(p), ShapeSpec(channels=3)).output_shape()
              for p in CAPACITY_CONFIGS[detector][:2]]
    assert {k: v.stride for k, v in shapes[0].items()} == {k: v.stride for k, v in shapes[1].items()}
    assert {v.channels for v in shapes[0].values()} == {128} and {v.channels for v in shapes[1].values()} == {64}


def test_committed_flops_record_meets_the_target():
    data = json.load(open(os.path.join(ROOT, "benchmarks", "results", "capacity_gap.json")))
    for detector in CAPACITY_CONFIGS:
        d = data[detector]
        assert d["flops_ratio"] == pytest.approx(d["student_gflops"] / d["teacher_gflops"], abs=1e-3)
        assert d["flops_ratio"] <= 0.25
    assert data["image_size"] == 160 and data["machine"]["date"] == data["date"]


# ---------------------------------------------------------------------------------------------
# the harder shapes data
# ---------------------------------------------------------------------------------------------
def test_default_difficulty_options_are_the_generators_defaults():
    """The demo's data does not change: the config's defaults are the generator's."""
    import inspect

    cfg = get_cfg()
    add_distill_config(cfg)
    defaults = {k: p.default for k, p in inspect.signature(generate_shapes_coco).parameters.items()}
    assert shapes_generator_kwargs(cfg.DATASETS.SHAPES) == {a: defaults[a] for a in SHAPES_DIFFICULTY_OPTIONS.values()}
    assert shapes_generator_kwargs(cfg.DATASETS.SYNTHETIC) == {}


@pytest.fixture(scope="module")
def hard_and_default(tmp_path_factory):
    """(options, annotations per image, annotations) of 40 images of the capacity data and of
    the default data, 160 px."""
    node = capacity_cfg(CAPACITY_CONFIGS["retinanet"][0]).DATASETS.SHAPES
    out = {}
    for name, kw in (("hard", shapes_generator_kwargs(node)), ("default", {})):
        path = generate_shapes_coco(str(tmp_path_factory.mktemp(name)), 40, 160, 3, **kw)
        anns = json.load(open(path))["annotations"]
        per_image = collections.Counter(a["image_id"] for a in anns)
        out[name] = (kw, [per_image.get(i, 0) for i in range(1, 41)], anns)
    return out


@pytest.mark.slow
def test_harder_data_has_more_and_smaller_objects_within_the_bounds(hard_and_default):
    kw, counts, anns = hard_and_default["hard"]
    _, default_counts, default_anns = hard_and_default["default"]
    assert (kw["min_objects"], kw["max_objects"], kw["min_clear"], kw["max_size_frac"]) == (3, 8, 16.0, 0.3)
    # each attempted object adds at most itself and one occluder
    assert max(counts) <= 2 * kw["max_objects"] and np.mean(counts) >= 2 * np.mean(default_counts)
    sizes = np.array([a["object_size"] for a in anns])
    assert sizes.min() >= kw["min_size"] and sizes.max() <= kw["max_size_frac"] * 160 + 1e-6
    clear = np.array([a["object_size"] for a in anns if "small" not in a["ambiguity"]])
    assert clear.min() >= kw["min_clear"]
    assert np.median(sizes) < 0.7 * np.median([a["object_size"] for a in default_anns])


def test_harder_data_draws_more_lookalikes(hard_and_default):
    lookalike_ids = {SHAPES_CLASSES.index(n) + 1 for n in ("disc", "ring", "square", "notched_square")}
    share = {k: np.mean([a["category_id"] in lookalike_ids for a in v[2]]) for k, v in hard_and_default.items()}
    # 0.4 + 0.6 * 4/10 = 0.64 expected (occluders uniform), 0.4 by default
    assert share["hard"] > 0.55 and share["default"] < 0.5


def test_lookalike_detail_scales_only_the_telling_detail():
    for name, key in (("ring", "hole"), ("notched_square", "notch")):
        full = _shape_params(np.random.default_rng(1), name)[key]
        assert _shape_params(np.random.default_rng(1), name, 0.6)[key] == pytest.approx(0.6 * full)
    assert _shape_params(np.random.default_rng(1), "cross", 0.6) == _shape_params(np.random.default_rng(1), "cross")


@pytest.mark.parametrize("key, value, match", [
    ("MAX_OBJECTS", 0, "DATASETS.SHAPES.MIN_OBJECTS = 1, DATASETS.SHAPES.MAX_OBJECTS = 0"),
    ("MIN_CLEAR", 10.0, "DATASETS.SHAPES.MIN_CLEAR = 10.0"),
    ("LOOKALIKE_PROB", 1.5, "DATASETS.SHAPES.LOOKALIKE_PROB = 1.5"),
    ("LOOKALIKE_DETAIL", 0.0, "DATASETS.SHAPES.LOOKALIKE_DETAIL = 0.0"),
])
def test_bad_difficulty_option_names_it(key, value, match, tmp_path):
    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.DATASETS.SHAPES[key] = value
    with pytest.raises(ValueError, match=match):
        shapes_generator_kwargs(cfg.DATASETS.SHAPES)
    cfg.DATASETS.SHAPES.ROOT = str(tmp_path / "data")
    cfg.DATASETS.TRAIN = ("gkd_shapes_train",)
    with pytest.raises(ValueError, match=match):
        register_datasets_from_cfg(cfg)
    assert not os.path.exists(tmp_path / "data")  # nothing written


def test_registration_generates_with_the_configs_options(tmp_path):
    names = ("gkd_shapes_train", "gkd_shapes_val")
    for name in names:
        if name in DatasetCatalog.list():  # registered by another test
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    cfg = capacity_cfg(CAPACITY_CONFIGS["faster_rcnn"][0], [
        "DATASETS.SHAPES.ROOT", str(tmp_path / "data"), "DATASETS.SHAPES.NUM_TRAIN", "4",
        "DATASETS.SHAPES.NUM_VAL", "2", "DATASETS.SHAPES.IMAGE_SIZE", "96"])
    try:
        register_datasets_from_cfg(cfg)
        params = MetadataCatalog.get("gkd_shapes_train").shapes_params
        assert {k: params[k] for k in ("min_objects", "max_objects", "lookalike_prob", "lookalike_detail")} == {
            "min_objects": 3, "max_objects": 8, "lookalike_prob": 0.4, "lookalike_detail": 0.6}
        assert len(DatasetCatalog.get("gkd_shapes_val")) == 2
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


# ---------------------------------------------------------------------------------------------
# the equal-schedule search of benchmarks/capacity_gap.py --train
# ---------------------------------------------------------------------------------------------
def test_equal_schedules_extend_the_shorter_ladder():
    teacher_ap = {100: 20.0, 200: 30.0, 400: 36.0, 800: 36.1}  # plateau at 800
    student_ap = {100: 15.0, 200: 22.0, 400: 22.2, 800: 22.3}  # plateau at 400
    calls = []

    def train(ap, who):
        def run(n):
            calls.append((who, n))
            return f"{who}{n}", ap[n]
        return run

    t_w, s_w, s_n, plateau, gap = capacity_gap.equal_schedules(
        train(teacher_ap, "t"), train(student_ap, "s"), 100, 0.3, 10000)
    assert (t_w, s_w, s_n, gap) == ("t800", "s400", 400, 13.8)
    assert calls == [("t", 100), ("t", 200), ("t", 400), ("t", 800), ("s", 100), ("s", 200), ("s", 400), ("s", 800)]
    assert plateau["teacher"] and plateau["student"] and plateau["equal_schedule_iters"] == 800
    assert plateau["student_schedules"][-1] == [800, 22.3] and plateau["student_plateau_iters"] == 400


@pytest.mark.slow
def test_train_mode_fills_gap_plateau_and_rows(tmp_path, monkeypatch):
    """``--train`` end to end on 8 images of 64 px and 8- / 16-iteration schedules (a minute)."""
    monkeypatch.chdir(tmp_path)  # main() moves to the repository root; this puts it back after
    results = str(tmp_path / "capacity_gap.json")
    try:
        capacity_gap.main([
            "--train", "--detectors", "retinanet", "--iters", "8", "--max-iters", "16", "--seeds", "0",
            "--rows", "student-finetune", "gkd", "--results", results, "--out-dir", str(tmp_path / "out"),
            "--opts", "DATASETS.SHAPES.ROOT", str(tmp_path / "data"), "DATASETS.SHAPES.NUM_TRAIN", "8",
            "DATASETS.SHAPES.NUM_VAL", "4", "DATASETS.SHAPES.IMAGE_SIZE", "64", "SOLVER.IMS_PER_BATCH", "2"])
    finally:
        for name in ("gkd_shapes_train", "gkd_shapes_val"):
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
    d = json.load(open(results))["retinanet"]
    p = d["plateau"]
    assert p["equal_schedule_iters"] == 16 and [n for n, _ in p["teacher_schedules"]] == [8, 16]
    assert [n for n, _ in p["student_schedules"]] == [8, 16]
    assert d["equal_schedule_gap_ap"] == pytest.approx(p["teacher_schedules"][-1][1] - p["student_schedules"][-1][1], abs=0.01)
    assert sorted((r["method"], r["seed"], r["iters"]) for r in d["rows"]) == [("gkd", 0, 16), ("student-finetune", 0, 16)]
    assert d["flops_ratio"] <= 0.25 and os.path.isfile(tmp_path / "out" / "retinanet" / "teacher_it16" / "model_final.pth")


# ---------------------------------------------------------------------------------------------
# distillation with the pair
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("detector", sorted(CAPACITY_CONFIGS))
@pytest.mark.slow
def test_distillation_with_the_pair_gives_finite_losses(detector, tmp_path):
    teacher_yaml, _, gkd_yaml = CAPACITY_CONFIGS[detector]
    torch.manual_seed(0)
    teacher_cfg = capacity_cfg(teacher_yaml)
    teacher = build_model(teacher_cfg)
    calibrate_batchnorm(teacher, steps=3)
    DetectionCheckpointer(teacher, save_dir=str(tmp_path)).save("teacher")
    cfg = capacity_cfg(gkd_yaml, [
        "MODEL.WEIGHTS", "", "DISTILL.TEACHER.WEIGHTS", str(tmp_path / "teacher.pth"),
        "DISTILL.TEACHER.CONFIG_FILE", save_plain_config(teacher_cfg, tmp_path / "teacher.yaml"),
        "DISTILL.PGM.NUM_PROTOTYPES", "2", "DISTILL.PGM.MIN_SIZE", "4", "DISTILL.FREEZE_STUDENT_BN", "False"])
    model = build_model(cfg)
    # the adapters map the student's 64 channels onto the teacher's 128
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels == 64
             and m.out_channels == 128 and m.kernel_size == (3, 3)]
    assert convs
    batch = make_batch(((3, 0), (2, 1)), seed=3)
    fill_prototypes_from_batch(model, batch)
    losses = train_losses(model, batch)
    assert {"loss_kd_feature", "loss_kd_response", "loss_kd_global"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_kd_feature"] > 0 and losses["loss_kd_global"] > 0
    sum(losses.values()).backward()
