"""The synthetic "ambiguous instances" dataset: valid COCO, deterministic, actually hard,
registered with its extra annotation fields, and safe to (re-)register from several processes."""
import json
import multiprocessing as mp
import os
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools.coco import COCO

from gkd_d2.data.generated.synthetic import (
    EXTRA_ANNOTATION_KEYS,
    SYNTHETIC_CLASSES,
    generate_synthetic_coco,
    register_synthetic_dataset,
)


def unique(prefix):
    return f"gkd_test_synth_{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def coco50(tmp_path_factory):
    root = tmp_path_factory.mktemp("s50")
    return root, generate_synthetic_coco(str(root), 50, image_size=128, seed=0)


def test_valid_coco_with_boxes_inside_images(coco50):
    root, path = coco50
    coco = COCO(path)
    assert sorted(coco.getImgIds()) == list(range(1, 51))
    cats = coco.loadCats(coco.getCatIds())
    assert [c["id"] for c in cats] == list(range(1, len(SYNTHETIC_CLASSES) + 1))
    assert [c["name"] for c in cats] == list(SYNTHETIC_CLASSES)
    anns = coco.dataset["annotations"]
    assert len({a["id"] for a in anns}) == len(anns) > 100
    for a in anns:
        x, y, w, h = a["bbox"]
        img = coco.imgs[a["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= img["width"] and y + h <= img["height"]
        assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h
    for img in coco.dataset["images"][:5]:
        assert img["file_name"] == f"{img['id']:06d}.png"
        with Image.open(root / "images" / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"]) == (128, 128) and im.mode == "RGB"


def test_contains_every_kind_of_ambiguous_instance(coco50):
    anns = json.load(open(coco50[1]))["annotations"]
    short = np.array([min(a["bbox"][2], a["bbox"][3]) for a in anns])
    assert (short < 20).sum() >= 10  # small
    assert (short >= 40).sum() >= 5  # ... and not only small ones
    assert sum(a["visible_fraction"] < 1 for a in anns) >= 10  # occluded
    assert sum(a["blurred"] for a in anns) >= 10
    assert sum(a["truncated"] for a in anns) >= 10
    assert min(a["visible_fraction"] for a in anns) >= 0.25
    assert all(isinstance(a[k], bool) for a in anns for k in ("blurred", "truncated"))
    counts = np.bincount([a["category_id"] for a in anns], minlength=len(SYNTHETIC_CLASSES) + 1)[1:]
    assert counts.min() >= 10, counts  # every class, not just present once


def test_flags_are_consistent_with_the_boxes(coco50):
    coco = json.load(open(coco50[1]))
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    unexplained = 0
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        if a["truncated"]:  # truncated boxes were clipped: they touch the border
            assert x == 0 or y == 0 or x + w == 128 or y + h == 128
        if a["visible_fraction"] < 1:  # occluded: some other object overlaps the amodal box
            others = [b["bbox"] for b in by_image[a["image_id"]] if b is not a]
            unexplained += not any(
                min(x + w, bx + bw) > max(x, bx) and min(y + h, by + bh) > max(y, by) for bx, by, bw, bh in others
            )
    assert unexplained <= 2  # only occluders that were dropped themselves


def test_deterministic_by_seed_and_rectangular_images(tmp_path):
    a = generate_synthetic_coco(str(tmp_path / "a"), 3, image_size=(48, 64), seed=4)
    b = generate_synthetic_coco(str(tmp_path / "b"), 3, image_size=(48, 64), seed=4)
    c = generate_synthetic_coco(str(tmp_path / "c"), 3, image_size=(48, 64), seed=5)
    d = generate_synthetic_coco(str(tmp_path / "d"), 2, image_size=(48, 64), seed=4)
    assert open(a, "rb").read() == open(b, "rb").read() != open(c, "rb").read()
    for i in range(1, 4):
        name = f"images/{i:06d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
        if i < 3:  # image i depends on (seed, i) only: a smaller set is a prefix
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "d" / name).read_bytes()
        with Image.open(tmp_path / "a" / name) as im:
            assert im.size == (64, 48)
    coco = json.load(open(a))
    assert all((im["height"], im["width"]) == (48, 64) for im in coco["images"])
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and x + w <= 64 and 0 <= y and y + h <= 48


def test_registration_keeps_extra_fields_and_is_idempotent(tmp_path):
    name = unique("reg")
    root = str(tmp_path / "reg")
    register_synthetic_dataset(name, root, num_images=6, image_size=64, seed=1)
    stamp_mtime = os.stat(f"{root}/params.json").st_mtime_ns
    register_synthetic_dataset(name, root, num_images=6, image_size=(64, 64), seed=1, blur_prob=0.25)  # same
    assert os.stat(f"{root}/params.json").st_mtime_ns == stamp_mtime
    dicts = DatasetCatalog.get(name)
    raw = json.load(open(f"{root}/annotations.json"))
    assert len(dicts) == 6
    raw_by_image = {}
    for a in raw["annotations"]:
        raw_by_image.setdefault(a["image_id"], []).append(a)
    n = 0
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and (d["height"], d["width"]) == (64, 64)
        expected = raw_by_image.get(d["image_id"], [])
        assert len(d["annotations"]) == len(expected)
        for got, want in zip(d["annotations"], expected):
            assert got["bbox"] == want["bbox"] and got["category_id"] == want["category_id"] - 1
            for k in EXTRA_ANNOTATION_KEYS:
                assert got[k] == want[k], k
            n += 1
    assert n == len(raw["annotations"]) > 0
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == list(SYNTHETIC_CLASSES) and meta.evaluator_type == "coco"
    assert meta.json_file == os.path.abspath(f"{root}/annotations.json")
    assert meta.image_root == os.path.abspath(f"{root}/images")
    with pytest.raises(ValueError, match=name):
        register_synthetic_dataset(name, root, num_images=7, image_size=64, seed=1)
    with pytest.raises(ValueError, match=name):
        register_synthetic_dataset(name, str(tmp_path / "elsewhere"), num_images=6, image_size=64, seed=1)
    with pytest.raises(TypeError):
        register_synthetic_dataset(unique("bad"), root, num_images=6, image_size=64, seed=1, no_such_knob=3)


def test_root_is_reused_when_params_match_and_regenerated_otherwise(tmp_path):
    root = str(tmp_path / "data")
    os.makedirs(root)  # an existing empty folder is fine
    register_synthetic_dataset(unique("a"), root, num_images=3, image_size=48, seed=2)
    first = open(f"{root}/annotations.json", "rb").read()
    mtime = os.stat(f"{root}/annotations.json").st_mtime_ns
    b = unique("b")
    register_synthetic_dataset(b, root, num_images=3, image_size=48, seed=2)  # reused, not rewritten
    assert os.stat(f"{root}/annotations.json").st_mtime_ns == mtime
    assert len(DatasetCatalog.get(b)) == 3
    c = unique("c")
    register_synthetic_dataset(c, root, num_images=4, image_size=48, seed=2, blur_prob=0.9)  # regenerated
    assert json.load(open(f"{root}/params.json"))["num_images"] == 4
    assert len(DatasetCatalog.get(c)) == 4 and open(f"{root}/annotations.json", "rb").read() != first
    assert sorted(os.listdir(tmp_path)) == ["data"]  # no temporary folders left behind
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not generated")
    with pytest.raises(RuntimeError, match="refusing"):
        register_synthetic_dataset(unique("d"), str(foreign), num_images=2, image_size=48, seed=2)
    assert (foreign / "notes.txt").read_text() == "not generated"


def _register_in_child(root, barrier, queue):
    try:
        barrier.wait(timeout=30)
        name = unique("proc")
        register_synthetic_dataset(name, root, num_images=12, image_size=64, seed=9)
        queue.put(len(DatasetCatalog.get(name)))
    except BaseException as e:  # report, do not hang the parent
        queue.put(repr(e))


def test_concurrent_registration_from_several_processes(tmp_path):
    root = str(tmp_path / "shared")
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_register_in_child, args=(root, barrier, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert results == [12, 12, 12]
    assert sorted(os.listdir(tmp_path)) == ["shared"]
    assert sorted(os.listdir(root)) == ["annotations.json", "images", "params.json"]
    assert len(os.listdir(f"{root}/images")) == 12
    ref = generate_synthetic_coco(str(tmp_path / "ref"), 12, image_size=64, seed=9)
    assert open(ref, "rb").read() == open(f"{root}/annotations.json", "rb").read()


def test_truncated_synthetic_json_is_regenerated(tmp_path):
    root = tmp_path / "synth"
    register_synthetic_dataset("gkd_test_stamp_a", str(root), num_images=3, image_size=64, seed=1)
    good = (root / "annotations.json").read_text()
    stamp = json.loads((root / "params.json").read_text())
    assert len(stamp["annotations_sha256"]) == 64
    (root / "annotations.json").write_text(good[: len(good) // 2])  # truncated, stamp intact
    register_synthetic_dataset("gkd_test_stamp_b", str(root), num_images=3, image_size=64, seed=1)
    assert (root / "annotations.json").read_text() == good  # regenerated, not reused
    assert len(DatasetCatalog.get("gkd_test_stamp_b")) == 3
    # truncated after registration: the loader's error names the file
    (root / "annotations.json").write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"annotations\.json.*not valid json"):
        DatasetCatalog.get("gkd_test_stamp_b")
