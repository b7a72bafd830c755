"""Analysis of the prototypes: the numbers the pictures and the probes show.

Shapes: L instance levels (``model.instance_levels``), C classes, K prototype slots per
(level, class), N instances, T random trials, D_T / D_S teacher / student channels.

- :func:`sampled_instance_features`: the PGM instance pool (same sampling as
  :class:`~gkd_d2.prototypes.refresh.PrototypeRefresher`) pooled at every level in both models.
- :func:`robust_weight_stats`: mean / min of the Eq. 8 robust weights per (level, class).
- :func:`relation_discrepancy` / :func:`bank_discrepancy`: per instance,
  ``|max_j beta_T,ij - max_j beta_S,ij|`` over the bases of its class (= 1 - robust weight), with
  the PGM prototypes as bases and with as many randomly chosen instances of the same class.
- :func:`image_robust_weights`: the robust weight of every GT box of some images, as training
  sees them.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, BoxMode, Instances

from ..prototypes.instances import (
    ImageInstances,
    extract_features_from_cfg,
    load_test_inputs,
    sample_instances_from_cfg,
)
from ..prototypes.relations import prototype_coefficients, robust_weights
from ..utils import eval_mode, unwrap_model


@dataclass
class InstanceFeatures:
    """The sampled PGM instances, pooled at every instance level.

    teacher (L, N, D_T), student (L, N, D_S) (CPU, float32); classes, image_ids, ann_index (N,)
    long: class, image id and annotation index (the provenance ``PrototypeBank.source`` uses);
    levels: the L level names.
    """

    teacher: torch.Tensor
    student: torch.Tensor
    classes: torch.Tensor
    image_ids: torch.Tensor
    ann_index: torch.Tensor
    levels: List[str]

    def __len__(self):
        return int(self.classes.shape[0])


@torch.no_grad()
def sampled_instance_features(cfg, model, dataset_dicts: Sequence[dict]) -> InstanceFeatures:
    """Sample instances exactly as PGM does (``DISTILL.PGM.MAX_SAMPLES / MIN_SIZE / SEED``, test
    transform) and pool them at every level in both models. The student is in eval mode while
    its features are computed and goes back to its previous mode."""
    model = unwrap_model(model)
    records = sample_instances_from_cfg(cfg, dataset_dicts, model.num_classes)
    with eval_mode(model.student):
        feats_t = extract_features_from_cfg(cfg, model, model.teacher_features, records)
        feats_s = extract_features_from_cfg(cfg, model, model.student_features, records)

    def cat(field):
        parts = [np.asarray(getattr(r, field)).reshape(-1) for r in records]
        return torch.as_tensor(np.concatenate(parts) if parts else np.zeros(0)).long()

    image_ids = torch.as_tensor(
        np.concatenate([np.full(len(r.classes), r.image_id) for r in records])
        if records
        else np.zeros(0)
    ).long()
    return InstanceFeatures(
        feats_t, feats_s, cat("classes"), image_ids, cat("ann_index"), list(model.instance_levels)
    )


@torch.no_grad()
def robust_weight_stats(bank, feats: InstanceFeatures) -> Dict[str, torch.Tensor]:
    """Eq. 8 robust weights of every pooled instance at **every** level against that level's
    prototypes (``bank.robust_weights``), summarised per (level, class).

    Returns ``weights`` (L, N), and ``mean``, ``min`` (L, C) float (NaN where the class has no
    sampled instance) and ``count`` (L, C) long. Classes without prototypes at a level have
    weight 1, as in training.
    """
    num_levels, n = feats.teacher.shape[:2]
    c = bank.num_classes
    device = bank.valid.device
    levels = torch.arange(num_levels, device=device).repeat_interleave(n)
    classes = feats.classes.to(device).repeat(num_levels)
    w = bank.robust_weights(
        feats.teacher.reshape(num_levels * n, -1).to(device),
        feats.student.reshape(num_levels * n, -1).to(device),
        levels,
        classes,
    ).float()
    cell = levels * c + classes
    count = torch.zeros(num_levels * c, dtype=torch.long, device=device).index_add_(
        0, cell, torch.ones_like(cell)
    )
    total = torch.zeros(num_levels * c, device=device).index_add_(0, cell, w)
    low = torch.full((num_levels * c,), float("inf"), device=device).scatter_reduce(
        0, cell, w, reduce="amin", include_self=True
    )
    nan = torch.full_like(total, float("nan"))
    mean = torch.where(count > 0, total / count.clamp(min=1), nan)
    low = torch.where(count > 0, low, nan)
    return {
        "weights": w.view(num_levels, n).cpu(),
        "mean": mean.view(num_levels, c).cpu(),
        "min": low.view(num_levels, c).cpu(),
        "count": count.view(num_levels, c).cpu(),
    }


def _class_discrepancy(feats_t, feats_s, classes, bases_t, bases_s, valid):
    """(N,): 1 - Eq. 8 weight of each instance against the valid bases of its own class.

    bases_t (C, K, D_T), bases_s (C, K, D_S), valid (C, K). Equals
    ``min(1, |max_j beta_T,ij - max_j beta_S,ij|)``; 0 where the class has no base.
    """
    c, k = valid.shape
    n = feats_t.shape[0]
    levels = torch.zeros(n, dtype=torch.long, device=feats_t.device)
    beta_t = prototype_coefficients(feats_t, bases_t.reshape(1, c * k, -1), levels)
    beta_s = prototype_coefficients(feats_s, bases_s.reshape(1, c * k, -1), levels)
    slot_valid = valid.reshape(1, c * k).expand(n, c * k)
    slot_class = torch.arange(c, device=feats_t.device).repeat_interleave(k)
    return 1 - robust_weights(beta_t, beta_s, slot_valid, slot_class, classes)


def random_bases(feats_t, feats_s, classes, counts, num_slots=None, generator=None):
    """For every class c, ``counts[c]`` distinct instances of class c drawn uniformly at random
    (fewer when the class has fewer instances), vectorised (no loop over instances or classes).

    feats_t (N, D_T), feats_s (N, D_S), classes (N,) (values outside [0, C) are never drawn),
    counts (C,) long, num_slots K (default ``max(counts)``), generator: a CPU
    ``torch.Generator`` (seeded by the caller). Returns ``bases_t`` (C, K, D_T), ``bases_s``
    (C, K, D_S), ``valid`` (C, K) bool and ``index`` (C, K) long, the chosen rows (-1 = none).
    """
    device = feats_t.device
    c = counts.numel()
    k = int(num_slots) if num_slots is not None else (int(counts.max()) if c else 0)
    key = torch.rand(classes.shape[0], generator=generator, dtype=torch.float64).to(device)
    rows = torch.nonzero((classes >= 0) & (classes < c)).flatten()
    cls = classes[rows]
    order = torch.argsort(cls.double() + key[rows])  # grouped by class, random inside a class
    rows, cls = rows[order], cls[order]
    per_class = torch.bincount(cls, minlength=c)
    starts = torch.cumsum(per_class, 0) - per_class
    rank = torch.arange(rows.numel(), device=device) - starts[cls]
    take = rank < torch.minimum(counts.to(device)[cls], torch.tensor(k, device=device))
    index = torch.full((c, k), -1, dtype=torch.long, device=device)
    index[cls[take], rank[take]] = rows[take]
    valid = index >= 0
    bases_t = feats_t.new_zeros(c, k, feats_t.shape[1])
    bases_s = feats_s.new_zeros(c, k, feats_s.shape[1])
    bases_t[valid] = feats_t[index[valid]]
    bases_s[valid] = feats_s[index[valid]]
    return bases_t, bases_s, valid, index


@dataclass
class RelationDiscrepancy:
    """Per-instance discrepancy of relations, ``|max_j beta_T,ij - max_j beta_S,ij|`` over the
    bases j of the instance's class, clamped to 1 (exactly ``1 - robust weight`` of Eq. 8).

    with_prototypes (..., N): with the PGM prototypes as bases; with_random (T, ..., N): with, per class,
    the same number of randomly chosen instances of that class (one draw per trial);
    has_bases (..., N) bool: the class has prototypes (elsewhere both are 0 and meaningless);
    random_index (T, ..., C, K): the rows drawn as random bases (-1 = none).
    """

    with_prototypes: torch.Tensor
    with_random: torch.Tensor
    has_bases: torch.Tensor
    random_index: torch.Tensor

    def values(self):
        """(prototype values (M,), random values (T*M,)) of the instances that have bases, numpy."""
        mask = self.has_bases
        proto = self.with_prototypes[mask]
        rand = self.with_random[:, mask].reshape(-1)
        return proto.cpu().numpy(), rand.cpu().numpy()


@torch.no_grad()
def relation_discrepancy(
    feats_t,
    feats_s,
    classes,
    bank_level_t,
    bank_level_s,
    valid,
    num_random_trials=1,
    seed=0,
    generator=None,
) -> RelationDiscrepancy:
    """Discrepancy of relations of N instances at one level, with PGM prototypes and random bases.

    feats_t (N, D_T), feats_s (N, D_S), classes (N,); bank_level_t (C, K, D_T), bank_level_s
    (C, K, D_S), valid (C, K): one level of a :class:`PrototypeBank`. Random bases: per trial and
    class c, ``valid[c].sum()`` instances of class c drawn from these N instances (an instance
    may be its own base, like a prototype instance is its prototype's: it then has 0 in both).
    ``generator`` (a CPU ``torch.Generator``) overrides ``seed``.
    """
    feats_t, feats_s = feats_t.float(), feats_s.float()
    classes = classes.to(feats_t.device).long()
    bank_level_t = bank_level_t.to(feats_t.device)
    bank_level_s = bank_level_s.to(feats_t.device)
    valid = valid.to(feats_t.device).bool()
    c, k = valid.shape
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    in_range = (classes >= 0) & (classes < c)
    has_bases = valid.any(dim=1)[classes.clamp(0, max(c - 1, 0))] & in_range
    proto = _class_discrepancy(feats_t, feats_s, classes, bank_level_t, bank_level_s, valid)
    counts = valid.sum(dim=1)
    rand, index = [], []
    for _ in range(int(num_random_trials)):  # trials, not boxes
        b_t, b_s, b_valid, idx = random_bases(feats_t, feats_s, classes, counts, k, generator)
        rand.append(_class_discrepancy(feats_t, feats_s, classes, b_t, b_s, b_valid))
        index.append(idx)
    n = feats_t.shape[0]
    rand = torch.stack(rand) if rand else feats_t.new_zeros(0, n)
    index = torch.stack(index) if index else torch.zeros(0, c, k, dtype=torch.long)
    zero = torch.zeros_like(proto)
    return RelationDiscrepancy(
        torch.where(has_bases, proto, zero), torch.where(has_bases, rand, zero), has_bases, index
    )


@torch.no_grad()
def bank_discrepancy(
    bank, feats: InstanceFeatures, num_random_trials=1, seed=0
) -> RelationDiscrepancy:
    """:func:`relation_discrepancy` of every pooled instance at every level against that level's
    prototypes (each (level, class) has its own prototypes, as PGM builds them).

    Returns with_prototypes (L, N), with_random (T, L, N), has_bases (L, N), random_index (T, L, C, K).
    One seeded generator is used for all levels and trials, in level order.
    """
    generator = torch.Generator().manual_seed(int(seed))
    device = bank.valid.device
    per_level = [
        relation_discrepancy(
            feats.teacher[l].to(device),
            feats.student[l].to(device),
            feats.classes.to(device),
            bank.teacher[l],
            bank.student[l],
            bank.valid[l],
            num_random_trials,
            generator=generator,
        )
        for l in range(feats.teacher.shape[0])  # levels, not boxes
    ]
    return RelationDiscrepancy(
        torch.stack([r.with_prototypes for r in per_level]),
        torch.stack([r.with_random for r in per_level], dim=1),
        torch.stack([r.has_bases for r in per_level]),
        torch.stack([r.random_index for r in per_level], dim=1),
    )


def annotation_xyxy(ann):
    return np.asarray(
        BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS), dtype=np.float64
    )


@dataclass
class ImageRobustWeights:
    """One image at the test-time scale: image (H, W, 3) uint8 RGB; boxes (k, 4) XYXY in its
    pixels; classes, levels (k,) long; weights (k,) float (Eq. 8, assigned level);
    has_prototypes (k,) bool: the box's class has prototypes at its level (else its weight is 1
    by definition)."""

    image_id: int
    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    levels: np.ndarray
    weights: np.ndarray
    has_prototypes: np.ndarray


def _gt_record(d, index):
    """All non-crowd GT boxes of a dataset dict, as an :class:`ImageInstances`."""
    anns = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
    modes = {a["bbox_mode"] for a in anns}
    if len(modes) == 1:  # the usual case: one conversion of the (k, 4) array
        raw = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = BoxMode.convert(raw, modes.pop(), BoxMode.XYXY_ABS).astype(np.float32)
    else:
        boxes = np.asarray([annotation_xyxy(a) for a in anns], dtype=np.float32).reshape(-1, 4)
    return ImageInstances(
        file_name=d["file_name"],
        image_id=int(d.get("image_id", index)),
        height=d["height"],
        width=d["width"],
        boxes=boxes,
        classes=np.asarray([a["category_id"] for a in anns], dtype=np.int64),
        ann_index=np.flatnonzero([not a.get("iscrowd", 0) for a in d.get("annotations", [])]),
    )


@torch.no_grad()
def image_robust_weights(
    model, dataset_dicts: Sequence[dict], image_format, short_edge, max_size
) -> List[ImageRobustWeights]:
    """Robust weights of every GT box of ``dataset_dicts`` (one batch), the way training sees
    them: test-time resize, each box ROIAligned at its assigned level in both models
    (``model.pool_instances`` / :class:`GroundTruth`), ``model.prototypes.robust_weights``.
    The student is in eval mode meanwhile and returns to its previous mode."""
    model = unwrap_model(model)
    records = [_gt_record(d, i) for i, d in enumerate(dataset_dicts)]
    if not records:
        return []
    inputs, boxes = load_test_inputs(records, image_format, short_edge, max_size)
    instances = []
    for x, b, r in zip(inputs, boxes, records):  # images, not boxes
        inst = Instances(tuple(x["image"].shape[1:]))
        inst.gt_boxes = Boxes(b.to(model.device))
        inst.gt_classes = torch.as_tensor(r.classes, dtype=torch.long, device=model.device)
        instances.append(inst)
    gt = model.ground_truth(instances)
    weights = torch.ones(len(gt))
    has = torch.zeros(len(gt), dtype=torch.bool)
    if len(gt) and model.prototypes is not None:
        with eval_mode(model.student):
            inst_s = model.pool_instances(model.student_features(inputs), gt)
            inst_t = model.pool_instances(model.teacher_features(inputs), gt)
        weights = (
            model.prototypes.robust_weights(inst_t, inst_s, gt.level_index, gt.classes).float().cpu()
        )
        has = model.prototypes.valid.any(dim=2)[gt.level_index, gt.classes].cpu()
    counts = [len(r.classes) for r in records]
    split = lambda t: torch.split(t.cpu(), counts)  # noqa: E731
    out = []
    per_image = zip(inputs, records, *map(split, (gt.boxes, gt.classes, gt.level_index, weights, has)))
    for x, r, b, c, lv, w, hp in per_image:  # images
        image = x["image"].permute(1, 2, 0).numpy()
        image = utils.convert_image_to_rgb(image, image_format)
        out.append(
            ImageRobustWeights(
                r.image_id,
                np.ascontiguousarray(image).astype(np.uint8),
                b.numpy(),
                c.numpy(),
                lv.numpy(),
                w.numpy(),
                hp.numpy(),
            )
        )
    return out

