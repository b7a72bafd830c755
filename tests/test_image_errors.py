"""A missing, truncated or non-image file fails with an error naming it, wherever gkd_d2 reads
images: the training and test data loaders (also in a loader worker) and the prototype refresh."""
import logging
import os

import pytest
import torch
from detectron2.modeling import build_model
from helpers import distill_cfg, tiny_cfg
from user_runs import coco_with_category_ids, copy_dataset

from gkd_d2 import PrototypeRefresher
from gkd_d2.data.coco import load_coco_json_checked
from gkd_d2.data.images import CheckedDatasetMapper, ImageReadError, read_image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(json, image folder) of 6 images whose categories are 3 contiguous classes."""
    return coco_with_category_ids(tmp_path_factory.mktemp("images"), [1, 2, 3])


def damaged(dataset, tmp_path, how):
    """A private copy of ``dataset`` whose first image is ``how`` ("truncated", "missing",
    "not_an_image"); returns (its dataset dicts, the damaged path)."""
    json_file, images = copy_dataset(*dataset, tmp_path / how)
    dicts = load_coco_json_checked(json_file, images, None)
    path = dicts[0]["file_name"]
    if how == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif how == "missing":
        os.remove(path)
    else:
        open(path, "w").write("not an image\n")
    return dicts, path


REASONS = {"truncated": "OSError: image file is truncated", "missing": "no such file", "not_an_image": "UnidentifiedImageError"}


@pytest.mark.parametrize("how", list(REASONS))
def test_read_image_names_the_file(dataset, tmp_path, how):
    dicts, path = damaged(dataset, tmp_path, how)
    with pytest.raises(ImageReadError) as info:
        read_image(path, "BGR")
    assert info.value.file_name == path
    assert str(info.value).startswith(f"Cannot read image '{path}' ({REASONS[how]}")
    assert isinstance(info.value, OSError)  # callers catching OSError still do
    # an intact image of the same dataset reads as Detectron2 reads it
    image = read_image(dicts[1]["file_name"], "BGR")
    assert image.shape == (64, 64, 3) and image.dtype.name == "uint8"


@pytest.mark.parametrize("is_train", [True, False])
def test_dataset_mapper_names_the_file(dataset, tmp_path, is_train):
    cfg = tiny_cfg()
    dicts, path = damaged(dataset, tmp_path, "truncated")
    mapper = CheckedDatasetMapper(cfg, is_train)
    out = mapper(dicts[1])  # the intact ones map as Detectron2's DatasetMapper does
    assert tuple(out["image"].shape) == (3, 64, 64) and ("instances" in out) == is_train
    with pytest.raises(ImageReadError, match=f"Cannot read image '{path}' \\(OSError: image file is truncated"):
        mapper(dicts[0])


def test_loader_worker_error_names_the_file(dataset, tmp_path):
    """In a data-loader worker: PyTorch re-raises the worker's error in the main process as
    ``type(error)(message)``; the class and the file name survive."""
    cfg = tiny_cfg()
    dicts, path = damaged(dataset, tmp_path, "missing")
    loader = torch.utils.data.DataLoader(dicts, batch_size=None, num_workers=1, collate_fn=CheckedDatasetMapper(cfg, True))
    with pytest.raises(ImageReadError, match=f"Cannot read image '{path}' \\(no such file\\)"):
        list(loader)


@pytest.mark.slow
def test_prototype_refresh_names_the_file(dataset, rcnn_teacher, tmp_path):
    cfg = distill_cfg(rcnn_teacher)
    dicts, path = damaged(dataset, tmp_path, "truncated")
    model = build_model(cfg)
    logging.getLogger("gkd_d2").setLevel(logging.ERROR)  # no PGM chatter
    try:
        with pytest.raises(ImageReadError, match=f"Cannot read image '{path}' \\(OSError: image file is truncated"):
            PrototypeRefresher(cfg, dataset_dicts=dicts).refresh(model, 0)
    finally:
        logging.getLogger("gkd_d2").setLevel(logging.NOTSET)
    assert int(model.prototypes.last_refresh_iter) == -1  # nothing filled

