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
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from ..data.images import read_image
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


SAMPLINGS = ("uniform", "compact")


def check_sampling(sampling: str) -> str:
    """``DISTILL.PGM.SAMPLING`` must name one of :data:`SAMPLINGS`."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"DISTILL.PGM.SAMPLING={sampling!r}: choose one of {', '.join(SAMPLINGS)}.")
    return sampling


def class_counts(dataset_dicts: Sequence[dict], num_classes: int) -> np.ndarray:
    """(num_classes,) int64: the non-crowd annotations of each class (contiguous ids) in
    ``dataset_dicts``, whatever their size."""
    ids = [a["category_id"] for d in dataset_dicts for a in d.get("annotations", ()) if not a.get("iscrowd", 0)]
    return np.bincount(np.asarray(ids, dtype=np.int64), minlength=num_classes)[:num_classes]


def _annotation_table(dataset_dicts: Sequence[dict], test_short_edge: int, test_max_size: int):
    """(image index, annotation index, class, shorter side at the test scale) of every non-crowd
    annotation, each an (n,) array. One pass of Python over the annotations; boxes are converted
    per ``bbox_mode`` in bulk."""
    img_idx, ann_idx, cls, boxes, modes, scales = [], [], [], [], [], []
    for i, d in enumerate(dataset_dicts):
        anns = d.get("annotations", [])
        if not anns:
            continue
        newh, _ = T.ResizeShortestEdge.get_output_shape(d["height"], d["width"], test_short_edge, test_max_size)
        scale = newh / d["height"]
        for j, a in enumerate(anns):
            if a.get("iscrowd", 0):
                continue
            img_idx.append(i)
            ann_idx.append(j)
            cls.append(a["category_id"])
            boxes.append(a["bbox"][:4])
            modes.append(int(a["bbox_mode"]))
            scales.append(scale)
    boxes, modes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(modes)
    for mode in np.unique(modes):
        if mode != BoxMode.XYXY_ABS:
            boxes[modes == mode] = BoxMode.convert(boxes[modes == mode], BoxMode(mode), BoxMode.XYXY_ABS)
    short = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * np.asarray(scales)
    return (
        np.asarray(img_idx, dtype=np.int64),
        np.asarray(ann_idx, dtype=np.int64),
        np.asarray(cls, dtype=np.int64),
        short,
        boxes,
    )


def _uniform_choice(cls, eligible, num_classes, max_samples, rng) -> np.ndarray:
    """Per class, ``max_samples`` of its eligible annotations uniformly at random (all if fewer)."""
    chosen = []
    for c in range(num_classes):
        rows = np.flatnonzero((cls == c) & eligible)
        if len(rows) > max_samples:
            rows = rng.choice(rows, max_samples, replace=False)
        chosen.append(rows)
    return np.concatenate(chosen)


def _compact_choice(img_idx, cls, eligible, num_classes, max_samples, num_images, rng) -> np.ndarray:
    """Per class, ``max_samples`` eligible annotations (all if fewer) from as few images as a
    greedy pass finds: classes from the rarest up; a class first takes its annotations in images
    chosen already (uniformly among them), then whole images of its own in a random order."""
    taken = np.zeros(num_images, dtype=bool)  # images read already
    counts = np.bincount(cls[eligible], minlength=num_classes)
    chosen = []
    for c in np.argsort(counts, kind="stable"):
        rows = np.flatnonzero((cls == c) & eligible)
        if len(rows) > max_samples:
            free = rows[taken[img_idx[rows]]]
            if len(free) >= max_samples:
                rows = rng.choice(free, max_samples, replace=False)
            else:  # then new images in a random order, the instances of one image together
                new = rows[~taken[img_idx[rows]]]
                image_rank = rng.permutation(num_images)[img_idx[new]]
                order = np.lexsort((rng.random(len(new)), image_rank))
                rows = np.concatenate([free, new[order[: max_samples - len(free)]]])
        taken[img_idx[rows]] = True
        chosen.append(rows)
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def sample_instances(
    dataset_dicts: Sequence[dict],
    num_classes: int,
    max_samples: int,
    min_size: float,
    seed: int,
    test_short_edge: int,
    test_max_size: int,
    sampling: str = "uniform",
) -> List[ImageInstances]:
    """Per class at most ``max_samples`` instances with shorter side >= ``min_size`` pixels at
    the test-time scale, drawn with ``seed``. Returns one record per image that has a sampled
    instance, in dataset order (crowd boxes are never sampled).

    ``sampling``: ``"uniform"``, each class's instances uniformly at random among its eligible
    ones; ``"compact"``, the same number per class from far fewer images (a refresh reads every
    image with a sampled instance): rarest class first, each class takes its instances in the
    images chosen already before it adds images of its own (:func:`_compact_choice`).
    """
    check_sampling(sampling)
    img_idx, ann_idx, cls, short, xyxy = _annotation_table(dataset_dicts, test_short_edge, test_max_size)
    rng = np.random.default_rng(seed)
    eligible = short >= min_size
    if sampling == "uniform":
        chosen = _uniform_choice(cls, eligible, num_classes, max_samples, rng)
    else:
        chosen = _compact_choice(img_idx, cls, eligible, num_classes, max_samples, len(dataset_dicts), rng)
    chosen = np.sort(chosen)

    records = []
    bounds = np.flatnonzero(np.diff(img_idx[chosen])) + 1
    for sel in np.split(chosen, bounds) if len(chosen) else []:
        i = int(img_idx[sel[0]])
        d = dataset_dicts[i]
        records.append(
            ImageInstances(
                file_name=d["file_name"],
                image_id=int(d.get("image_id", i)),
                height=d["height"],
                width=d["width"],
                boxes=xyxy[sel].astype(np.float32),
                classes=cls[sel],
                ann_index=ann_idx[sel],
            )
        )
    return records


def sample_instances_from_cfg(cfg, dataset_dicts: Sequence[dict], num_classes: int) -> List[ImageInstances]:
    """:func:`sample_instances` with ``DISTILL.PGM.MAX_SAMPLES / MIN_SIZE / SEED / SAMPLING`` and the
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
        str(p.SAMPLING),
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
        model.instance_pooling,
    )


def load_test_inputs(records: Sequence[ImageInstances], image_format, short_edge, max_size):
    """Detectron2 model inputs (test-time resize) and the transformed boxes of each record."""
    resize = T.ResizeShortestEdge(short_edge, max_size)
    inputs, boxes = [], []
    for r in records:
        image = read_image(r.file_name, format=image_format)
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
    reduce: str = "mean",
) -> torch.Tensor:
    """(L, N, D') features of every sampled instance of ``records`` (in record order), on CPU;
    ``reduce`` as in :func:`gkd_d2.pooling.pool_instances`.

    ``features_fn`` maps a list of Detectron2 inputs to the FPN features (teacher or student).
    """
    chunks = []
    for start in range(0, len(records), batch_size):
        part = records[start : start + batch_size]
        inputs, boxes = load_test_inputs(part, image_format, short_edge, max_size)
        chunks.append(pool_instances(features_fn(inputs), levels, strides, boxes, reduce=reduce).float().cpu())
    if not chunks:
        return torch.zeros(len(levels), 0, 0)
    return torch.cat(chunks, dim=1)
