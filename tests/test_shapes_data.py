"""The "shapes" dataset (gkd_d2/data/shapes.py): deterministic, learnable classes with a
minority of ambiguous instances whose flags tell the truth, registered from the config with its
extra fields, and regenerated when its files are damaged."""
import json
import os
import uuid

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from gkd_d2 import add_distill_config
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.data.generated.shapes import (
    AMBIGUITY_REASONS,
    SHAPES_CLASSES,
    SHAPES_EXTRA_ANNOTATION_KEYS,
    SHAPES_LOOKALIKE_PAIRS,
    generate_shapes_coco,
    register_shapes_dataset,
    shape_mask,
)


def files(root):
    """{relative path: bytes} of every generated file under ``root``."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = f.read()
    return out


SIZE = 160  # the sample's image size (the replica's)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """200 images of 160 px, seed 0, the default parameters: (annotations, categories)."""
    root = tmp_path_factory.mktemp("shapes200")
    coco = json.load(open(generate_shapes_coco(str(root), 200, image_size=SIZE, seed=0)))
    assert [im["id"] for im in coco["images"]] == list(range(1, 201))
    return coco["annotations"], coco["categories"]


def test_deterministic_by_seed(tmp_path):
    a, b, c = (generate_shapes_coco(str(tmp_path / k), 6, image_size=(72, 96), seed=s) for k, s in
               (("a", 3), ("b", 3), ("c", 4)))
    fa, fb = files(tmp_path / "a"), files(tmp_path / "b")
    assert fa == fb and len(fa) == 7  # byte-identical json and PNGs
    assert open(a, "rb").read() != open(c, "rb").read()
    with Image.open(tmp_path / "a" / "images" / "000001.png") as im:
        assert im.size == (96, 72) and im.mode == "RGB"


def test_first_images_of_a_larger_set_are_those_of_a_smaller_one(tmp_path):
    small = json.load(open(generate_shapes_coco(str(tmp_path / "s"), 3, image_size=80, seed=1)))
    large = json.load(open(generate_shapes_coco(str(tmp_path / "l"), 7, image_size=80, seed=1)))
    strip = lambda anns: [{k: v for k, v in a.items() if k != "id"} for a in anns]  # noqa: E731
    assert strip(small["annotations"]) == strip([a for a in large["annotations"] if a["image_id"] <= 3])
    for i in range(1, 4):
        name = f"images/{i:06d}.png"
        assert files(tmp_path / "s")[name] == files(tmp_path / "l")[name]
    assert len(large["annotations"]) > len(small["annotations"])


@pytest.mark.slow
def test_ten_balanced_classes_with_lookalike_pairs(sample):
    anns, cats = sample
    assert len(SHAPES_CLASSES) >= 10 and [c["name"] for c in cats] == list(SHAPES_CLASSES)
    assert [c["id"] for c in cats] == list(range(1, len(SHAPES_CLASSES) + 1))
    lookalike = {c["name"]: c["lookalike"] for c in cats}
    for a, b in SHAPES_LOOKALIKE_PAIRS:
        assert lookalike[a] == b and lookalike[b] == a
    assert sum(bool(v) for v in lookalike.values()) == 2 * len(SHAPES_LOOKALIKE_PAIRS)
    counts = np.bincount([a["category_id"] for a in anns], minlength=len(SHAPES_CLASSES) + 1)[1:]
    assert len(anns) > 300
    assert counts.min() >= 0.6 * counts.mean() and counts.max() <= 1.4 * counts.mean(), counts


def test_ambiguous_instances_are_a_minority_of_every_kind(sample):
    anns, _ = sample
    share = np.mean([a["ambiguous"] for a in anns])
    assert 0.15 <= share <= 0.3, share  # about 21% with the defaults
    for reason in AMBIGUITY_REASONS:
        assert sum(reason in a["ambiguity"] for a in anns) >= 0.02 * len(anns), reason
    clear = [a for a in anns if not a["ambiguous"]]
    # clear instances are large enough to show their shape (28-80 px at 160 px); small ones
    # really are small
    sizes = [a["object_size"] for a in clear]
    assert 28 <= min(sizes) and max(sizes) <= 80 and 36 <= np.median(sizes) <= 52, np.percentile(sizes, [0, 50, 100])
    assert np.median([min(a["bbox"][2:]) for a in clear]) >= 30
    assert max(a["object_size"] for a in anns if "small" in a["ambiguity"]) <= 12


def test_few_objects_per_image(sample):
    """1-4 objects per image (plus an occluder on top of each one made occluded): calm scenes a
    from-scratch detector learns in the replica's schedule."""
    anns, _ = sample
    per_image = np.bincount([a["image_id"] for a in anns], minlength=201)[1:]
    assert per_image.max() <= 8 and 1.6 <= per_image.mean() <= 2.6, np.bincount(per_image)
    assert (per_image == 0).mean() < 0.03  # almost every image has an annotation


def test_real_within_class_variation(sample):
    """Every class comes in many sizes and proportions (deformation, stroke widths); its boxes'
    aspect ratios are not one fixed value."""
    anns, _ = sample
    for c in range(1, len(SHAPES_CLASSES) + 1):
        clear = [a for a in anns if a["category_id"] == c and not a["ambiguous"]]
        sizes = [a["object_size"] for a in clear]
        aspect = [a["bbox"][2] / a["bbox"][3] for a in clear]
        assert max(sizes) / min(sizes) > 1.8, (SHAPES_CLASSES[c - 1], sizes)
        assert max(aspect) / min(aspect) > 1.25, (SHAPES_CLASSES[c - 1], aspect)


def test_ambiguity_flags_agree_with_the_measurements(sample):
    anns, _ = sample
    for a in anns:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
        assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h
        assert a["ambiguous"] == bool(a["ambiguity"]) and set(a["ambiguity"]) <= set(AMBIGUITY_REASONS)
        assert ("small" in a["ambiguity"]) == (a["object_size"] <= 12)
        assert ("blurred" in a["ambiguity"]) == a["blurred"]
        assert ("occluded" in a["ambiguity"]) == (a["visible_fraction"] < 0.75)
        assert 0.25 <= a["visible_fraction"] <= 1
        if "truncated" in a["ambiguity"]:  # cut by the border: the box was clipped there
            assert a["truncated"] and (x == 0 or y == 0 or x + w == SIZE or y + h == SIZE)


def test_lookalike_pairs_differ_only_in_a_detail_that_is_there_at_large_size():
    g = (np.arange(400) + 0.5) / 200 - 1.0  # 400 x 400 samples of [-1, 1]^2
    u, v = np.meshgrid(g, g)
    cell = (2.0 / 400) ** 2
    for big, small in SHAPES_LOOKALIKE_PAIRS:
        a, b = shape_mask(big, u, v), shape_mask(small, u, v)
        assert not (b & ~a).any()  # the look-alike is the shape minus its detail
        detail = a & ~b
        share = detail.sum() / a.sum()
        assert 0.1 < share < 0.3, (big, small, share)  # a detail, not a different shape
        # the detail spans 20-50% of the diameter: 13+ px on a 64 px object, at most 6 px (less
        # than a P3 cell) on a small one (<= 12 px); it covers hundreds of pixels at 64 px
        rows, cols = np.nonzero(detail)
        span = max(rows.ptp(), cols.ptp()) / 400
        assert 0.2 <= span <= 0.5, (big, small, span)
        assert detail.sum() * cell * 32**2 > 100
    # the detail is where it should be: the ring's centre, the notched square's corner
    at = lambda name, x, y: bool(shape_mask(name, np.array(x), np.array(y)))  # noqa: E731
    assert at("disc", 0.0, 0.0) and not at("ring", 0.0, 0.0) and at("ring", 0.0, 0.8)
    assert at("square", 0.6, 0.6) and not at("notched_square", 0.6, 0.6) and at("notched_square", -0.6, 0.6)
    # and every other pair of classes differs by more than such a detail
    for i, p in enumerate(SHAPES_CLASSES):
        for q in SHAPES_CLASSES[i + 1 :]:
            if (p, q) not in SHAPES_LOOKALIKE_PAIRS:
                assert (shape_mask(p, u, v) ^ shape_mask(q, u, v)).mean() > 0.1, (p, q)


def shapes_cfg(root):
    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.DATASETS.TRAIN = ("gkd_shapes_train",)
    cfg.DATASETS.TEST = ("gkd_shapes_val",)
    cfg.DATASETS.SHAPES.ROOT = str(root)
    cfg.DATASETS.SHAPES.NUM_TRAIN = 5
    cfg.DATASETS.SHAPES.NUM_VAL = 3
    cfg.DATASETS.SHAPES.IMAGE_SIZE = 64
    cfg.DATASETS.SHAPES.SEED = 7
    return cfg


def test_registered_from_cfg_with_the_extra_fields(tmp_path):
    for name in ("gkd_shapes_train", "gkd_shapes_val"):
        if name in DatasetCatalog.list():  # registered by another test of the same pytest run
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_datasets_from_cfg(shapes_cfg(tmp_path / "data"))
    train, val = DatasetCatalog.get("gkd_shapes_train"), DatasetCatalog.get("gkd_shapes_val")
    assert len(train) == 5 and len(val) == 3
    assert os.path.isfile(tmp_path / "data" / "train" / "params.json")
    anns = [a for d in train + val for a in d["annotations"]]
    assert anns and all(set(SHAPES_EXTRA_ANNOTATION_KEYS) <= set(a) for a in anns)
    assert all(isinstance(a["ambiguity"], list) and isinstance(a["ambiguous"], bool) for a in anns)
    meta = MetadataCatalog.get("gkd_shapes_val")
    assert meta.thing_classes == list(SHAPES_CLASSES) and meta.evaluator_type == "coco"
    assert meta.lookalike_pairs == [(0, 1), (2, 3)]
    assert meta.shapes_params["seed"] == 1007 and meta.shapes_params["image_size"] == [64, 64]
    # the train and val splits differ (other seeds)
    assert open(os.path.join(meta.image_root, "000001.png"), "rb").read() != open(
        os.path.join(MetadataCatalog.get("gkd_shapes_train").image_root, "000001.png"), "rb").read()
    register_datasets_from_cfg(shapes_cfg(tmp_path / "data"))  # again: a no-op
    other = shapes_cfg(tmp_path / "data")
    other.DATASETS.SHAPES.NUM_VAL = 4
    with pytest.raises(ValueError, match="gkd_shapes_val"):
        register_datasets_from_cfg(other)


def test_damaged_files_are_regenerated_and_intact_ones_reused(tmp_path):
    root = tmp_path / "d"
    name = lambda: f"gkd_test_shapes_{uuid.uuid4().hex[:8]}"  # noqa: E731
    register_shapes_dataset(name(), root, 4, image_size=64, seed=2)
    json_file = root / "annotations.json"
    good = json_file.read_bytes()
    mtime = os.stat(json_file).st_mtime_ns
    register_shapes_dataset(name(), root, 4, image_size=64, seed=2)
    assert os.stat(json_file).st_mtime_ns == mtime  # reused
    json_file.write_bytes(good[: len(good) // 2])  # truncated json, stamp untouched
    n = name()
    register_shapes_dataset(n, root, 4, image_size=64, seed=2)
    assert json_file.read_bytes() == good and len(DatasetCatalog.get(n)) == 4
    os.remove(root / "images" / "000003.png")  # a missing image
    register_shapes_dataset(name(), root, 4, image_size=64, seed=2)
    assert (root / "images" / "000003.png").is_file()
    register_shapes_dataset(name(), root, 5, image_size=64, seed=2)  # other parameters
    assert json.loads(json_file.read_bytes())["images"][-1]["id"] == 5
    (root / "notes.txt").write_text("not generated")
    with pytest.raises(RuntimeError, match="refusing"):
        register_shapes_dataset(name(), root, 6, image_size=64, seed=2)


@pytest.mark.parametrize("detector", ["faster_rcnn", "retinanet", "fcos"])
def test_generated_dataset_opts_point_student_and_teacher_at_the_data(detector):
    """tools/demo.py --dataset and benchmarks/replica.py --dataset: the demo configs (5 classes
    of the synthetic data) switched to the ten shapes classes for the student and the teacher."""
    from gkd_d2.config import load_config
    from gkd_d2.data.generated import DEMO_CONFIGS, generated_dataset_opts
    from gkd_d2.teacher import build_teacher_cfg

    cfg = load_config(DEMO_CONFIGS[detector][2], generated_dataset_opts("shapes", root="/tmp/x"))
    heads = {"faster_rcnn": "ROI_HEADS", "retinanet": "RETINANET", "fcos": "FCOS"}[detector]
    assert cfg.MODEL[heads].NUM_CLASSES == build_teacher_cfg(cfg).MODEL[heads].NUM_CLASSES == len(SHAPES_CLASSES)
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST, cfg.DATASETS.SHAPES.ROOT) == (
        ("gkd_shapes_train",), ("gkd_shapes_val",), "/tmp/x"
    )
    with pytest.raises(ValueError, match="unknown generated dataset 'coco'"):
        generated_dataset_opts("coco")
