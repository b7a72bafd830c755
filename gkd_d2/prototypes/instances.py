"""Instances for PGM: sampling GT boxes from a dataset and pooling their features.

An instance is one GT box of one image. PGM samples, per class, at most ``MAX_SAMPLES``
instances whose shorter side is at least ``MIN_SIZE`` pixels at the test-time input scale
(seeded), and pools each at **every** instance level: ROIAlign 7x7, averaged over space (``gkd_d2.pooling``).
Images go through the test-time transform (shortest-edge resize, no flip) so features are
repeatable across refreshes.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from ..pooling import pool_instances


@dataclass
class ImageInstances:
    """The sampled instances of one image.

    boxes (k, 4) XYXY in original image pixels; classes (k,) contiguous ids;
    ann_index (k,) position of the box among the image's annotations.
    """

    file_name: str
    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    ann_index: np.ndarray


def sample_instances(
    dataset_dicts: Sequence[dict],
    num_classes: int,
    max_samples: int,
    min_size: float,
    seed: int,
    test_short_edge: int,
    test_max_size: int,
) -> List[ImageInstances]:
    """Per class at most ``max_samples`` instances with shorter side >= ``min_size`` pixels at
    the test-time scale, chosen uniformly at random with ``seed``. Returns one record per image
    that has a sampled instance, in dataset order (crowd boxes are never sampled)."""
    img_idx, ann_idx, cls, short = [], [], [], []
    for i, d in enumerate(dataset_dicts):
        h, w = d["height"], d["width"]
        newh, neww = T.ResizeShortestEdge.get_output_shape(h, w, test_short_edge, test_max_size)
        scale = newh / h
        for j, a in enumerate(d.get("annotations", [])):
            if a.get("iscrowd", 0):
                continue
            x0, y0, x1, y1 = BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            img_idx.append(i)
            ann_idx.append(j)
            cls.append(a["category_id"])
            short.append(min(x1 - x0, y1 - y0) * scale)
    img_idx, ann_idx, cls, short = map(np.asarray, (img_idx, ann_idx, cls, short))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        eligible = np.flatnonzero((cls == c) & (short >= min_size))
        if len(eligible) > max_samples:
            eligible = np.sort(rng.choice(eligible, max_samples, replace=False))
        chosen.append(eligible)
    chosen = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=int)

    records = []
    for i in np.unique(img_idx[chosen]) if len(chosen) else []:
        sel = chosen[img_idx[chosen] == i]
        d = dataset_dicts[i]
        anns = d["annotations"]
        boxes = [
            BoxMode.convert(anns[j]["bbox"], anns[j]["bbox_mode"], BoxMode.XYXY_ABS)
            for j in ann_idx[sel]
        ]
        records.append(
            ImageInstances(
                file_name=d["file_name"],
                image_id=int(d.get("image_id", i)),
                height=d["height"],
                width=d["width"],
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                classes=cls[sel],
                ann_index=ann_idx[sel],
            )
        )
    return records


def sample_instances_from_cfg(cfg, dataset_dicts: Sequence[dict], num_classes: int) -> List[ImageInstances]:
    """:func:`sample_instances` with ``DISTILL.PGM.MAX_SAMPLES / MIN_SIZE / SEED`` and the
    test-time input size of ``cfg``."""
    p = cfg.DISTILL.PGM
    return sample_instances(
        dataset_dicts,
        num_classes,
        int(p.MAX_SAMPLES),
        float(p.MIN_SIZE),
        int(p.SEED),
        cfg.INPUT.MIN_SIZE_TEST,
        cfg.INPUT.MAX_SIZE_TEST,
    )


def extract_features_from_cfg(cfg, model, features_fn, records: Sequence[ImageInstances]) -> torch.Tensor:
    """:func:`extract_features` at ``model``'s instance levels and strides, with the input format,
    test-time size and ``DISTILL.PGM.BATCH_SIZE`` of ``cfg``. (L, N, D) on CPU."""
    return extract_features(
        records,
        features_fn,
        model.instance_levels,
        model.strides,
        cfg.INPUT.FORMAT,
        cfg.INPUT.MIN_SIZE_TEST,
        cfg.INPUT.MAX_SIZE_TEST,
        int(cfg.DISTILL.PGM.BATCH_SIZE),
    )


def load_test_inputs(records: Sequence[ImageInstances], image_format, short_edge, max_size):
    """Detectron2 model inputs (test-time resize) and the transformed boxes of each record."""
    resize = T.ResizeShortestEdge(short_edge, max_size)
    inputs, boxes = [], []
    for r in records:
        image = utils.read_image(r.file_name, format=image_format)
        tfm = resize.get_transform(image)
        image = tfm.apply_image(image)
        inputs.append(
            {
                "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "height": r.height,
                "width": r.width,
            }
        )
        boxes.append(torch.as_tensor(tfm.apply_box(r.boxes), dtype=torch.float32))
    return inputs, boxes


@torch.no_grad()
def extract_features(
    records: Sequence[ImageInstances],
    features_fn: Callable[[List[dict]], Dict[str, torch.Tensor]],
    levels: Sequence[str],
    strides: Dict[str, int],
    image_format: str,
    short_edge: int,
    max_size: int,
    batch_size: int,
) -> torch.Tensor:
    """(L, N, D) features of every sampled instance of ``records`` (in record order), on CPU.

    ``features_fn`` maps a list of Detectron2 inputs to the FPN features (teacher or student).
    """
    chunks = []
    for start in range(0, len(records), batch_size):
        part = records[start : start + batch_size]
        inputs, boxes = load_test_inputs(part, image_format, short_edge, max_size)
        chunks.append(pool_instances(features_fn(inputs), levels, strides, boxes).float().cpu())
    if not chunks:
        return torch.zeros(len(levels), 0, 0)
    return torch.cat(chunks, dim=1)
