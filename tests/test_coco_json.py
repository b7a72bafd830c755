"""Your own COCO-format datasets (``DATASETS.COCO_JSON``): registered from the config, and every
error (malformed entry, missing, truncated or corrupt json, missing image folder, name taken)
names the file or the option."""
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers import ROOT, tiny_cfg

from gkd_d2.config import load_config
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.data.coco import load_coco_json_checked
from gkd_d2.data.generated.synthetic import SYNTHETIC_CLASSES


def test_corrupt_json_errors_name_the_file(coco_json_files, tmp_path):
    text, _, images = coco_json_files
    truncated = tmp_path / "truncated.json"
    truncated.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=f"{truncated}.*not valid json"):
        load_coco_json_checked(str(truncated), images, "x")
    cfg = tiny_cfg()

    def register(name, json_file, image_root):
        cfg.DATASETS.COCO_JSON = [[name, str(json_file), str(image_root)]]
        register_datasets_from_cfg(cfg)

    with pytest.raises(ValueError, match=f"'{truncated}' of dataset 'user_trunc' is truncated"):
        register("user_trunc", truncated, images)
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path / 'missing.json'}' of dataset 'user_missing'"):
        register("user_missing", tmp_path / "missing.json", images)
    good = tmp_path / "good.json"
    good.write_text(text)
    with pytest.raises(FileNotFoundError, match=f"image folder '{tmp_path / 'no_images'}'"):
        register("user_noimg", good, tmp_path / "no_images")
    # corrupt in the middle (still ends with '}'): registered, fails on loading, naming the file
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(text[:100] + "#" + text[101:])
    register("user_corrupt", corrupt, images)
    with pytest.raises(ValueError, match=f"{corrupt}.*user_corrupt.*not valid json"):
        DatasetCatalog.get("user_corrupt")
    cfg.DATASETS.COCO_JSON = [["user_bad_entry", str(good)]]
    with pytest.raises(ValueError, match=r"DATASETS.COCO_JSON\[0\]"):
        register_datasets_from_cfg(cfg)


def test_coco_json_datasets_from_config(coco_json_files, tmp_path):
    _, json_file, images = coco_json_files
    cfg = load_config(
        os.path.join(ROOT, "configs/Demo/student_retinanet_R18_FPN.yaml"),
        ["DATASETS.COCO_JSON", f"[['user_cfg_train', '{json_file}', '{images}']]",
         "DATASETS.TRAIN", "('user_cfg_train',)", "DATASETS.TEST", "()"],
    )
    register_datasets_from_cfg(cfg)
    register_datasets_from_cfg(cfg)  # again: a no-op
    dicts = DatasetCatalog.get("user_cfg_train")
    assert len(dicts) == 6 and all(os.path.isfile(d["file_name"]) for d in dicts)
    meta = MetadataCatalog.get("user_cfg_train")
    assert meta.thing_classes == list(SYNTHETIC_CLASSES) and meta.evaluator_type == "coco"
    # the same name with other files is refused
    cfg.defrost()
    cfg.DATASETS.COCO_JSON = [["user_cfg_train", json_file, str(tmp_path)]]
    with pytest.raises(ValueError, match="'user_cfg_train' is already registered"):
        register_datasets_from_cfg(cfg)
