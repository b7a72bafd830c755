"""Seeing the prototypes: galleries, relation discrepancy (Figure 1, right), robust-weight overlays.

Shapes: L instance levels (``model.instance_levels``), C classes, K prototype slots per
(level, class), N instances, T random trials, D_T / D_S teacher / student channels.

- :func:`sampled_instance_features`: the PGM instance pool (same sampling as
  :class:`~gkd_d2.prototypes.refresh.PrototypeGenerator`) pooled at every level in both models.
- :func:`robust_weight_stats`: mean / min of the Eq. 8 robust weights per (level, class).
- :func:`prototype_gallery`: one PNG per level, one row per class, one column per slot, each cell
  the crop of the prototype instance from its source image.
- :func:`relation_discrepancy` / :func:`bank_discrepancy`: per instance,
  ``|max_j beta_T,ij - max_j beta_S,ij|`` over the bases of its class (= 1 - robust weight), with
  the PGM prototypes as bases and with as many randomly chosen instances of the same class.
- :func:`discrepancy_histogram`: the paper's Figure 1 (right) as a PNG.
- :class:`RobustWeightOverlayHook`: during training, the first ``DISTILL.VIS.OVERLAY_IMAGES``
  training images with every GT box coloured by its robust weight.

Plots use matplotlib's object API (``Figure`` + Agg canvas, no ``pyplot``: the global backend is
never changed); the gallery is drawn with PIL so its pixel size is exact.
"""

import logging
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.engine import HookBase
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils import comm

from .knowledge.global_knowledge import prototype_coefficients, robust_weights
from .prototypes.instances import (
    ImageInstances,
    extract_features_from_cfg,
    load_test_inputs,
    sample_instances_from_cfg,
)
from .prototypes.refresh import unwrap_model
from .structures import GroundTruth

logger = logging.getLogger(__name__)

__all__ = [
    "InstanceFeatures",
    "RelationDiscrepancy",
    "RobustWeightOverlayHook",
    "bank_discrepancy",
    "discrepancy_histogram",
    "draw_robust_weights",
    "image_robust_weights",
    "prototype_gallery",
    "random_bases",
    "relation_discrepancy",
    "robust_weight_stats",
    "sampled_instance_features",
]


# --------------------------------------------------------------------------------------------
# instance pool
# --------------------------------------------------------------------------------------------
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
    student = model.student
    was_training = student.training
    student.eval()
    try:
        feats_t = extract_features_from_cfg(cfg, model, model.teacher_features, records)
        feats_s = extract_features_from_cfg(cfg, model, model.student_features, records)
    finally:
        student.train(was_training)

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


# --------------------------------------------------------------------------------------------
# relation discrepancy (Figure 1, right)
# --------------------------------------------------------------------------------------------
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

    prototypes (..., N): with the PGM prototypes as bases; random (T, ..., N): with, per class,
    the same number of randomly chosen instances of that class (one draw per trial);
    has_bases (..., N) bool: the class has prototypes (elsewhere both are 0 and meaningless);
    random_index (T, ..., C, K): the rows drawn as random bases (-1 = none).
    """

    prototypes: torch.Tensor
    random: torch.Tensor
    has_bases: torch.Tensor
    random_index: torch.Tensor

    def values(self):
        """(prototype values (M,), random values (T*M,)) of the instances that have bases, numpy."""
        mask = self.has_bases
        proto = self.prototypes[mask]
        rand = self.random[:, mask].reshape(-1)
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

    Returns prototypes (L, N), random (T, L, N), has_bases (L, N), random_index (T, L, C, K).
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
        torch.stack([r.prototypes for r in per_level]),
        torch.stack([r.random for r in per_level], dim=1),
        torch.stack([r.has_bases for r in per_level]),
        torch.stack([r.random_index for r in per_level], dim=1),
    )


def _new_figure(width_in, height_in, dpi=100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def discrepancy_histogram(with_prototypes, with_random, path, bins=40, title=None) -> dict:
    """Figure 1 (right): overlaid histograms of the relation discrepancy with PGM prototypes and
    with random instances as bases, the means in the legend, written to ``path`` (PNG).

    with_prototypes (M,), with_random (M',): values in [0, 1], e.g. from
    ``RelationDiscrepancy.values()``.
    Returns ``{"path", "prototypes", "random" (float64 arrays), "mean_prototypes", "mean_random"}``
    (a mean is NaN for an empty array).
    """
    proto = np.asarray(with_prototypes, dtype=np.float64).reshape(-1)
    rand = np.asarray(with_random, dtype=np.float64).reshape(-1)
    mean_p = float(proto.mean()) if proto.size else float("nan")
    mean_r = float(rand.mean()) if rand.size else float("nan")
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    # densities, so several random trials (more values) compare with one prototype set
    if rand.size:
        ax.hist(
            rand,
            bins=edges,
            density=True,
            alpha=0.55,
            color="tab:orange",
            label=f"random instances (mean {mean_r:.3f}, n={rand.size})",
        )
    if proto.size:
        ax.hist(
            proto,
            bins=edges,
            density=True,
            alpha=0.55,
            color="tab:blue",
            label=f"PGM prototypes (mean {mean_p:.3f}, n={proto.size})",
        )
    for m, colour in ((mean_r, "tab:orange"), (mean_p, "tab:blue")):
        if np.isfinite(m):
            ax.axvline(m, color=colour, linestyle="--", linewidth=1.2)
    ax.set_xlim(0, 1)
    ax.set_xlabel(
        r"discrepancy $|\max_j \beta_{T,ij} - \max_j \beta_{S,ij}|$ (= 1 - robust weight)"
    )
    ax.set_ylabel("density")
    ax.set_title(title or "Teacher/student relation discrepancy by choice of bases")
    if proto.size or rand.size:
        ax.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return {
        "path": path,
        "prototypes": proto,
        "random": rand,
        "mean_prototypes": mean_p,
        "mean_random": mean_r,
    }


# --------------------------------------------------------------------------------------------
# gallery
# --------------------------------------------------------------------------------------------
def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _xyxy(ann):
    return np.asarray(
        BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS), dtype=np.float64
    )


def _cell_image(image, box, cell_size, margin):
    """(cell, cell, 3) uint8: ``box`` (XYXY) cropped from ``image`` (H, W, 3) with ``margin`` x
    its longer side around it, fitted in the cell (aspect kept), the box drawn in yellow."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    pad = margin * max(x1 - x0, y1 - y0) + 2
    cx0, cy0 = int(max(0, math.floor(x0 - pad))), int(max(0, math.floor(y0 - pad)))
    cx1, cy1 = int(min(w, math.ceil(x1 + pad))), int(min(h, math.ceil(y1 + pad)))
    crop = Image.fromarray(
        np.ascontiguousarray(image[cy0 : max(cy1, cy0 + 1), cx0 : max(cx1, cx0 + 1)])
    )
    scale = cell_size / max(crop.width, crop.height)
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    crop = crop.resize(size, Image.BILINEAR)
    cell = Image.new("RGB", (cell_size, cell_size), (40, 40, 40))
    ox, oy = (cell_size - size[0]) // 2, (cell_size - size[1]) // 2
    cell.paste(crop, (ox, oy))
    draw = ImageDraw.Draw(cell)
    draw.rectangle(
        [
            ox + (x0 - cx0) * scale,
            oy + (y0 - cy0) * scale,
            ox + (x1 - cx0) * scale - 1,
            oy + (y1 - cy0) * scale - 1,
        ],
        outline=(255, 220, 0),
        width=2,
    )
    return cell


def prototype_gallery(
    model,
    dataset_dicts: Sequence[dict],
    class_names: Optional[Sequence[str]],
    output_dir: str,
    cfg=None,
    features: Optional[InstanceFeatures] = None,
    cell_size: int = 96,
    label_width: int = 190,
    header_height: int = 30,
    margin: float = 0.25,
    prefix: str = "gallery_",
) -> dict:
    """One PNG per instance level, ``output_dir/{prefix}{level}.png``, of the prototypes of a
    filled :class:`PrototypeBank` (``model.prototypes``).

    Layout (exact pixel size): width ``label_width + K * cell_size``, height
    ``header_height + C * cell_size``; row c = class c, column k = slot k. A cell is the crop of
    the prototype instance (found by ``source`` = (image id, annotation index) in
    ``dataset_dicts``; an image without ``image_id`` has its position as id, as in sampling)
    with a ``margin`` x box-size context, the box in yellow, ``img <id> #<ann>`` written under
    it; empty slots are grey. The label column gives the class name and the mean / min of the
    Eq. 8 robust weights of the class's sampled instances pooled at that level, against the
    current prototypes (:func:`robust_weight_stats`), and how many there are.

    ``features`` (from :func:`sampled_instance_features`) or ``cfg`` (to compute them) is needed
    for the statistics. Returns ``{"paths": {level: path}, "mean", "min", "count": (L, C)}``.
    """
    from PIL import Image, ImageDraw

    model = unwrap_model(model)
    bank = model.prototypes
    if bank is None:
        raise ValueError(
            "prototype_gallery: the model has no PrototypeBank (DISTILL.PGM.ENABLED is False)."
        )
    if features is None:
        if cfg is None:
            raise ValueError(
                "prototype_gallery needs `features` or `cfg` for the robust-weight statistics."
            )
        features = sampled_instance_features(cfg, model, dataset_dicts)
    stats = robust_weight_stats(bank, features)
    num_levels, c, k = bank.valid.shape
    names = list(class_names) if class_names is not None else []
    names += [f"class {i}" for i in range(len(names), c)]
    by_id = {int(d.get("image_id", i)): d for i, d in enumerate(dataset_dicts)}
    valid = bank.valid.cpu()
    source = bank.source.cpu()
    images = {}

    def image_of(image_id):
        if image_id not in images:
            images[image_id] = utils.read_image(by_id[image_id]["file_name"], format="RGB")
        return images[image_id]

    # label fonts and line positions follow the cell size so three lines fit in a row
    big_px, small_px = max(9, min(14, cell_size // 5)), max(8, min(11, cell_size // 6))
    big, small = _font(big_px), _font(small_px)
    line_y = [2, 2 + big_px + 5, 2 + big_px + 5 + small_px + 3]
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    for li, level in enumerate(bank.levels):
        canvas = Image.new(
            "RGB", (label_width + k * cell_size, header_height + c * cell_size), (255, 255, 255)
        )
        draw = ImageDraw.Draw(canvas)
        draw.text((6, 4), f"level {level}", fill=(0, 0, 0), font=big)
        for j in range(k):
            draw.text(
                (label_width + j * cell_size + cell_size // 2 - 8, 6),
                f"#{j}",
                fill=(0, 0, 0),
                font=small,
            )
        for ci in range(c):
            y = header_height + ci * cell_size
            n = int(stats["count"][li, ci])
            lines = [f"n={n} sampled, {int(valid[li, ci].sum())} protos"]
            if n:
                lines.insert(
                    0,
                    f"w mean {float(stats['mean'][li, ci]):.3f}  "
                    f"min {float(stats['min'][li, ci]):.3f}",
                )
            draw.text((6, y + line_y[0]), names[ci], fill=(0, 0, 0), font=big)
            for t, line in enumerate(lines):
                draw.text((6, y + line_y[1 + t]), line, fill=(60, 60, 60), font=small)
            draw.line([(0, y), (canvas.width, y)], fill=(200, 200, 200))
            for j in range(k):  # drawing cells (not training code)
                x = label_width + j * cell_size
                if not bool(valid[li, ci, j]):
                    draw.rectangle(
                        [x + 1, y + 1, x + cell_size - 2, y + cell_size - 2], fill=(225, 225, 225)
                    )
                    draw.text(
                        (x + 6, y + cell_size // 2 - 6), "empty", fill=(130, 130, 130), font=small
                    )
                    continue
                image_id, ann = int(source[li, ci, j, 0]), int(source[li, ci, j, 1])
                if image_id not in by_id:
                    draw.rectangle(
                        [x + 1, y + 1, x + cell_size - 2, y + cell_size - 2], fill=(255, 210, 210)
                    )
                    draw.text(
                        (x + 4, y + cell_size // 2 - 6),
                        f"img {image_id}?",
                        fill=(150, 0, 0),
                        font=small,
                    )
                    continue
                box = _xyxy(by_id[image_id]["annotations"][ann])
                canvas.paste(
                    _cell_image(image_of(image_id), box, cell_size - 2, margin), (x + 1, y + 1)
                )
                label = f"img {image_id} #{ann}"
                tw = draw.textlength(label, font=small)
                ty = y + cell_size - small_px - 4
                draw.rectangle([x + 1, ty, x + 3 + tw, y + cell_size - 2], fill=(0, 0, 0))
                draw.text((x + 2, ty), label, fill=(255, 255, 255), font=small)
        path = os.path.join(output_dir, f"{prefix}{level}.png")
        canvas.save(path)
        paths[level] = path
    return {"paths": paths, "mean": stats["mean"], "min": stats["min"], "count": stats["count"]}


# --------------------------------------------------------------------------------------------
# robust-weight overlays during training
# --------------------------------------------------------------------------------------------
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
        boxes = np.asarray([_xyxy(a) for a in anns], dtype=np.float32).reshape(-1, 4)
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
    gt = GroundTruth.from_instances(instances, model._min_level, model._max_level)
    weights = torch.ones(len(gt))
    has = torch.zeros(len(gt), dtype=torch.bool)
    if len(gt) and model.prototypes is not None:
        student = model.student
        was_training = student.training
        student.eval()
        try:
            inst_s = model.pool_instances(model.student_features(inputs), gt)
            inst_t = model.pool_instances(model.teacher_features(inputs), gt)
        finally:
            student.train(was_training)
        weights = (
            model.prototypes.robust_weights(inst_t, inst_s, gt.levels, gt.classes).float().cpu()
        )
        has = model.prototypes.valid.any(dim=2)[gt.levels, gt.classes].cpu()
    counts = [len(r.classes) for r in records]
    split = lambda t: torch.split(t.cpu(), counts)  # noqa: E731
    out = []
    per_image = zip(inputs, records, *map(split, (gt.boxes, gt.classes, gt.levels, weights, has)))
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


def draw_robust_weights(item: ImageRobustWeights, path, title=None, cmap="RdYlGn", min_side=384):
    """Write ``item``'s image (shorter side displayed at about ``min_side`` px) with every GT box
    outlined in the colour of its robust weight (``cmap`` over [0, 1], red = low) and the value
    written at its top-left corner, a colour bar on the right. Boxes whose class has no prototype
    at their level (weight 1 by definition) are dashed. Boxes are one vectorised
    ``PolyCollection``; only the text labels are placed one by one."""
    from matplotlib import colormaps
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import Normalize

    h, w = item.image.shape[:2]
    scale = max(1.0, min_side / max(1, min(h, w)))
    fig = _new_figure(w * scale / 100 + 1.6, h * scale / 100 + 0.6)
    ax = fig.add_axes([0.02, 0.02, 0.78, 0.90])
    ax.imshow(item.image, interpolation="nearest")
    ax.set_axis_off()
    norm = Normalize(0.0, 1.0)
    colours = colormaps[cmap](norm(item.weights))
    b = item.boxes.reshape(-1, 4)
    verts = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], axis=1)
    styles = np.where(item.has_prototypes, "solid", "dashed").tolist()
    ax.add_collection(
        PolyCollection(
            verts,
            closed=True,
            facecolors="none",
            edgecolors=colours,
            linewidths=2,
            linestyles=styles or "solid",
        )
    )
    for (x0, y0), wt, col in zip(b[:, :2], item.weights, colours):
        ax.text(
            x0,
            y0,
            f"{wt:.2f}",
            color="black",
            fontsize=8,
            va="bottom",
            ha="left",
            bbox=dict(facecolor=col, alpha=0.85, pad=1, edgecolor="none"),
        )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(title or f"image {item.image_id}", fontsize=9)
    from matplotlib.cm import ScalarMappable

    cax = fig.add_axes([0.84, 0.08, 0.04, 0.80])
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="robust weight (Eq. 8)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


class RobustWeightOverlayHook(HookBase):
    """Draw the robust weights of the GT boxes of the first ``DISTILL.VIS.OVERLAY_IMAGES``
    images of ``DATASETS.TRAIN`` (0 = the hook does nothing).

    When: in ``after_step``. With ``DISTILL.VIS.OVERLAY_PERIOD = 0`` (default), after every
    prototype refresh: whenever ``model.prototypes.last_refresh_iter`` differs from the value
    seen last (``before_train`` records the value a ``--resume`` restored, so a restart does not
    redraw). With ``OVERLAY_PERIOD = P > 0``, every P iterations (after iterations P-1, 2P-1, ...)
    whatever the prototypes. A model without prototypes gets no overlays.

    What: :func:`image_robust_weights` (test-time transform, each GT box pooled at its assigned
    level in both models, ``model.prototypes.robust_weights``), then :func:`draw_robust_weights`
    to ``OUTPUT_DIR/robust_weights/iter_{iter:07d}/{image_id}.png``. Only the main process
    computes and writes; the student is put back into its previous train/eval mode.
    """

    def __init__(self, cfg, dataset_dicts: Optional[Sequence[dict]] = None):
        v = cfg.DISTILL.VIS
        self.num_images = int(v.OVERLAY_IMAGES)
        self.period = int(v.OVERLAY_PERIOD)
        if self.num_images < 0 or self.period < 0:
            raise ValueError(
                f"DISTILL.VIS.OVERLAY_IMAGES={self.num_images} and DISTILL.VIS.OVERLAY_PERIOD="
                f"{self.period} must be >= 0."
            )
        self.output_dir = os.path.join(cfg.OUTPUT_DIR, "robust_weights")
        self.image_format = cfg.INPUT.FORMAT
        self.short_edge, self.max_size = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
        self._train_names = list(cfg.DATASETS.TRAIN)
        self._dicts = list(dataset_dicts)[: self.num_images] if dataset_dicts is not None else None
        self._seen = None

    def _bank(self):
        return getattr(unwrap_model(self.trainer.model), "prototypes", None)

    def _images(self):
        if self._dicts is None:
            dicts = []
            for name in self._train_names:
                if len(dicts) >= self.num_images:
                    break
                dicts += DatasetCatalog.get(name)
            self._dicts = dicts[: self.num_images]
        return self._dicts

    def before_train(self):
        bank = self._bank()
        if bank is not None:
            self._seen = int(bank.last_refresh_iter)

    def after_step(self):
        if self.num_images <= 0 or not comm.is_main_process():
            return
        bank = self._bank()
        if bank is None:
            return
        it = self.trainer.iter
        if self.period > 0:
            due = (it + 1) % self.period == 0
        else:
            last = int(bank.last_refresh_iter)
            due = last >= 0 and last != self._seen
            self._seen = last
        if due:
            self.write_overlays(it)

    def write_overlays(self, iteration: int) -> List[str]:
        """Compute and write the overlays of ``iteration``; returns the written paths."""
        items = image_robust_weights(
            self.trainer.model, self._images(), self.image_format, self.short_edge, self.max_size
        )
        folder = os.path.join(self.output_dir, f"iter_{iteration:07d}")
        paths = [
            draw_robust_weights(
                item,
                os.path.join(folder, f"{item.image_id}.png"),
                title=f"image {item.image_id}, iter {iteration}: robust weights "
                "(dashed: class without prototypes)",
            )
            for item in items  # images
        ]
        logger.info("Robust-weight overlays of %d images written to %s", len(paths), folder)
        return paths
