"""The synthetic "ambiguous instances" dataset: valid COCO, deterministic, actually hard."""
import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools.coco import COCO

from gkd_d2.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic_coco, register_synthetic_dataset


@pytest.fixture(scope="module")
def coco50(tmp_path_factory):
    root = tmp_path_factory.mktemp("s50")
    return root, generate_synthetic_coco(str(root), 50, image_size=128, seed=0)


def test_valid_coco_with_boxes_inside_images(coco50):
    _, path = coco50
    coco = COCO(path)
    assert len(coco.getImgIds()) == 50
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SYNTHETIC_CLASSES)
    for a in coco.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        img = coco.imgs[a["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= img["width"] and y + h <= img["height"]


def test_contains_every_kind_of_ambiguous_instance(coco50):
    anns = json.load(open(coco50[1]))["annotations"]
    short = np.array([min(a["bbox"][2], a["bbox"][3]) for a in anns])
    assert (short < 20).sum() >= 10  # small
    assert sum(a["visible_fraction"] < 1 for a in anns) >= 10  # occluded
    assert sum(a["blurred"] for a in anns) >= 10
    assert sum(a["truncated"] for a in anns) >= 10
    assert min(a["visible_fraction"] for a in anns) >= 0.25
    assert set(a["category_id"] for a in anns) == set(range(1, len(SYNTHETIC_CLASSES) + 1))


def test_deterministic_by_seed(tmp_path):
    a = generate_synthetic_coco(str(tmp_path / "a"), 3, image_size=(48, 64), seed=4)
    b = generate_synthetic_coco(str(tmp_path / "b"), 3, image_size=(48, 64), seed=4)
    c = generate_synthetic_coco(str(tmp_path / "c"), 3, image_size=(48, 64), seed=5)
    assert open(a, "rb").read() == open(b, "rb").read() != open(c, "rb").read()
    for i in range(3):
        name = f"images/{i:06d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_registration_keeps_extra_fields_and_is_idempotent(tmp_path):
    root = str(tmp_path / "reg")
    register_synthetic_dataset("gkd_test_synth_reg", root, num_images=4, image_size=64, seed=1)
    register_synthetic_dataset("gkd_test_synth_reg", root, num_images=4, image_size=64, seed=1)
    dicts = DatasetCatalog.get("gkd_test_synth_reg")
    raw = json.load(open(f"{root}/annotations.json"))
    assert len(dicts) == 4
    assert sum(len(d["annotations"]) for d in dicts) == len(raw["annotations"])
    first = dicts[0]["annotations"][0]
    raw_first = next(a for a in raw["annotations"] if a["image_id"] == dicts[0]["image_id"])
    assert first["bbox"] == raw_first["bbox"] and first["category_id"] == raw_first["category_id"] - 1
    assert {"visible_fraction", "blurred", "truncated"} <= set(first)
    meta = MetadataCatalog.get("gkd_test_synth_reg")
    assert meta.thing_classes == list(SYNTHETIC_CLASSES) and meta.evaluator_type == "coco"
    with pytest.raises(ValueError, match="gkd_test_synth_reg"):
        register_synthetic_dataset("gkd_test_synth_reg", root, num_images=5, image_size=64, seed=1)
