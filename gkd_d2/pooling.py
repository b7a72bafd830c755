"""Instance pooling, the one place it is done: boxes ROIAligned 7x7 on FPN maps, averaged over
space (``"mean"``, METHOD.md section 1: a D-vector) or kept as the flattened 7x7 grid
(``"flatten"``: a 49 D-vector, ``DISTILL.INSTANCE_POOLING``).

Used by the meta-architecture (GT instances and RoIs at their assigned level), the prototype
refresh (every sampled instance at every level) and the visualisation and probes. The op is
Detectron2's ``ROIAlignV2`` (``ROIAlign(7, 1/stride, sampling_ratio=0, aligned=True)``), the
same one its ``ROIPooler`` runs.
"""
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes

POOL_SIZE = 7
INSTANCE_POOLINGS = ("mean", "flatten")
#: Detectron2's FPN level rule: a box of sqrt(area) 224 goes to level 4 (P4).
CANONICAL_BOX_SIZE, CANONICAL_LEVEL = 224, 4
#: ``DISTILL.INSTANCE_LEVELS``: the rule that gives a GT box its instance level.
INSTANCE_LEVEL_RULES = ("release", "detectron2")
#: The release's rule: a box of side 56 <= s < 112 goes to the first instance level.
RELEASE_FINEST_SCALE = 56


def level_range(strides: Sequence[int]):
    """(min, max) log2 level of FPN maps of ``strides`` (e.g. strides 4..32 -> (2, 5))."""
    levels = [int(round(torch.log2(torch.tensor(float(s))).item())) for s in strides]
    return min(levels), max(levels)


def release_level_index(boxes: torch.Tensor, num_levels: int) -> torch.Tensor:
    """(N,) the authors' release's level of every box, counted from the first instance level:
    ``clamp(floor(log2(sqrt((w + 1)(h + 1)) / 56 + 1e-6)), 0, num_levels - 1)``.

    boxes (N, 4) XYXY. For RetinaNet (P3-P7) a box of side s goes to P(3 + floor(log2(s/56))),
    one level coarser than Detectron2's rule; for Faster R-CNN (P2-P6) to P(2 + ...), as
    Detectron2's but up to P6.
    """
    side = ((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)).clamp(min=0).sqrt()
    level = torch.floor(torch.log2(side / RELEASE_FINEST_SCALE + 1e-6))
    return level.clamp(min=0, max=num_levels - 1).long()


def assign_level_index(
    box_lists: List[Boxes], min_level: int, max_level: int, rule: str = "detectron2"
) -> torch.Tensor:
    """(N,) index into the levels min_level..max_level (log2 strides) of every box of
    ``box_lists`` (per image), by ``rule``: ``"detectron2"`` (Detectron2's FPN rule,
    ``floor(4 + log2(sqrt(area) / 224))`` clamped) or ``"release"`` (:func:`release_level_index`)."""
    if sum(len(b) for b in box_lists) == 0:
        return torch.zeros(0, dtype=torch.long, device=box_lists[0].tensor.device)
    if rule == "release":
        return release_level_index(torch.cat([b.tensor for b in box_lists]), max_level - min_level + 1)
    if rule != "detectron2":
        raise ValueError(f"DISTILL.INSTANCE_LEVELS={rule!r}: choose one of {list(INSTANCE_LEVEL_RULES)}.")
    return assign_boxes_to_levels(box_lists, min_level, max_level, CANONICAL_BOX_SIZE, CANONICAL_LEVEL)


def reduce_grid(pooled: torch.Tensor, reduce: str) -> torch.Tensor:
    """(N, D, 7, 7) ROIAligned grids -> (N, D) spatial means (``"mean"``) or (N, 49 D) (``"flatten"``)."""
    if reduce == "mean":
        return pooled.mean(dim=(2, 3))
    if reduce == "flatten":
        return pooled.flatten(1)
    raise ValueError(f"instance pooling {reduce!r}: expected one of {INSTANCE_POOLINGS}")


def instance_dim(channels: int, reduce: str) -> int:
    """Length of an instance vector pooled from a ``channels``-wide FPN level."""
    return channels if reduce == "mean" else channels * POOL_SIZE * POOL_SIZE


def _rois(boxes: List[torch.Tensor], device, dtype) -> torch.Tensor:
    """(N, 5) (image index, x0, y0, x1, y1) from per-image (k_b, 4) boxes."""
    index = torch.repeat_interleave(
        torch.arange(len(boxes)), torch.tensor([len(b) for b in boxes], dtype=torch.long)
    )
    flat = torch.cat([b.reshape(-1, 4).to(device) for b in boxes]) if boxes else torch.zeros(0, 4)
    return torch.cat([index.to(device=device, dtype=flat.dtype)[:, None], flat], dim=1).to(dtype)


def pool_instances(
    features: Dict[str, torch.Tensor],
    level_names: Sequence[str],
    strides: Dict[str, int],
    boxes: List[torch.Tensor],
    level_index: Optional[torch.Tensor] = None,
    reduce: str = "mean",
) -> torch.Tensor:
    """Instance features from FPN maps ``features`` (name -> (B, D, H, W)).

    boxes: per image (k_b, 4) XYXY in input pixels (N boxes in all, in image order).
    With ``level_index`` (N,) (index into ``level_names``): each box pooled at its own level,
    (N, D'). Without: every box pooled at every level, (L, N, D'). ``reduce``: ``"mean"`` over
    the 7x7 grid (D' = D) or ``"flatten"`` it (D' = 49 D, channel-major).
    """
    first = features[level_names[0]]
    rois = _rois(boxes, first.device, first.dtype)
    aligners = [ROIAlign((POOL_SIZE, POOL_SIZE), 1.0 / strides[f], 0, aligned=True) for f in level_names]
    if level_index is None:
        return torch.stack(
            [reduce_grid(a(features[f], rois), reduce) for a, f in zip(aligners, level_names)]
        )
    out = first.new_zeros(rois.shape[0], first.shape[1], POOL_SIZE, POOL_SIZE)
    for i, (a, f) in enumerate(zip(aligners, level_names)):  # levels, not boxes
        inds = torch.nonzero(level_index == i, as_tuple=True)[0]
        if len(inds):
            out[inds] = a(features[f], rois[inds])
    return reduce_grid(out, reduce)
