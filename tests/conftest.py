"""Shared fixtures: tiny CPU detectors, teacher checkpoints and hand-made batches.

Everything is small (64 px images, ResNet-18 trunks, 32/16-channel FPNs, tiny heads) so the
whole suite runs in minutes on 2 cores; the code paths are the ones real configs use.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(2)

from helpers import make_teacher  # noqa: E402


@pytest.fixture(scope="session")
def rcnn_teacher(tmp_path_factory):
    """(config path, weights path) of a tiny Faster R-CNN teacher (random weights)."""
    return make_teacher(tmp_path_factory.mktemp("rcnn_teacher"), "GeneralizedRCNN")


@pytest.fixture(scope="session")
def retina_teacher(tmp_path_factory):
    """(config path, weights path) of a tiny RetinaNet teacher (random weights)."""
    return make_teacher(tmp_path_factory.mktemp("retina_teacher"), "RetinaNet")


@pytest.fixture(scope="session")
def fcos_teacher(tmp_path_factory):
    """(config path, weights path) of a tiny FCOS teacher (random weights)."""
    return make_teacher(tmp_path_factory.mktemp("fcos_teacher"), "FCOS")


@pytest.fixture(scope="session")
def coco_json_files(tmp_path_factory):
    """A small COCO-format dataset on disk (6 images of the synthetic data, 64 px):
    (json text, json path, image folder)."""
    from gkd_d2.data.generated.synthetic import generate_synthetic_coco

    root = tmp_path_factory.mktemp("coco")
    json_file = generate_synthetic_coco(str(root), num_images=6, image_size=64, seed=5)
    with open(json_file) as f:
        return f.read(), json_file, str(root / "images")
