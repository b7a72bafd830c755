"""The pure functions of the knowledge terms: every loss formula, and the masks they weight.

Each function takes tensors and returns tensors (no config, no model); the terms in this
package (``feature.py``, ``response.py``, ...) call them with their options. Shapes: B images,
G GT boxes, R RoIs, A anchors (or locations) per image, C classes, D channels, (H, W) a level.

- local feature knowledge (Eq. 7): :func:`decoupled_feature_loss`, :func:`level_masks`,
  :func:`weighted_box_mask`;
- local response knowledge: :func:`roi_kl` (RoIs), :func:`anchor_binary_kl`,
  :func:`sigmoid_response` (anchors / locations);
- global knowledge (Eq. 6): :func:`global_knowledge_loss` (the coefficients and the robust
  weights of Eq. 8 live with the prototypes: ``gkd_d2.prototypes.relations``);
- Chen et al.: :func:`weighted_soft_cross_entropy`, :func:`bounded_regression`;
- hints (FitNet, Chen): :func:`hint_loss`; FGFI: :func:`imitation_masks`,
  :func:`masked_imitation_loss`; RKD: :func:`rkd_losses`.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, pairwise_iou


# ----------------------------------------------------------------------------- masks


def box_cells(boxes: torch.Tensor, stride: int):
    """Cell ranges a box covers on a map of ``stride``: ``[floor(x1/s), max(floor(x2/s), floor(x1/s)+1))``.

    boxes (G, 4) XYXY pixels -> x0, x1, y0, y1, each (G,) long (half-open ranges).
    """
    lo = torch.floor(boxes / stride).long()
    x0, y0, x2, y2 = lo.unbind(1)
    return x0, torch.maximum(x2, x0 + 1), y0, torch.maximum(y2, y0 + 1)


def weighted_box_mask(
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    weights: torch.Tensor,
    stride: int,
    num_images: int,
    height: int,
    width: int,
) -> torch.Tensor:
    """M (B, H, W): at each cell, the largest weight of the boxes covering it (0 elsewhere).

    boxes (G, 4) XYXY pixels of the boxes assigned to this level; image_index (G,);
    weights (G,) >= 0. No Python loop over boxes: coverage is (G, H, W) comparisons, reduced
    per image with ``scatter_reduce_(amax)``.
    """
    mask = boxes.new_zeros(num_images, height, width)
    if boxes.shape[0] == 0:
        return mask
    x0, x1, y0, y1 = box_cells(boxes, stride)
    xs = torch.arange(width, device=boxes.device)
    ys = torch.arange(height, device=boxes.device)
    cover_x = (xs[None] >= x0[:, None]) & (xs[None] < x1[:, None])  # (G, W)
    cover_y = (ys[None] >= y0[:, None]) & (ys[None] < y1[:, None])  # (G, H)
    cover = cover_y[:, :, None] & cover_x[:, None, :]  # (G, H, W)
    values = (cover.to(mask.dtype) * weights.to(mask.dtype)[:, None, None]).flatten(1)
    index = image_index[:, None].expand_as(values)
    mask.view(num_images, -1).scatter_reduce_(0, index, values, "amax", include_self=True)
    return mask

# ----------------------------------------------------------------------------- feature (Eq. 7)

def decoupled_feature_loss(
    student: torch.Tensor, teacher: torch.Tensor, fg_mask: torch.Tensor, gamma_fg: float, gamma_bg: float
) -> torch.Tensor:
    """gamma_fg L_fg + gamma_bg L_bg for one level.

    student (adapted), teacher: (B, D, H, W); fg_mask (B, H, W) with values in [0, 1].
    """
    err = (teacher - student).float().pow(2).mean(dim=1)  # (B, H, W): sum over C / (C * cells)
    bg_mask = (fg_mask <= 0).to(err.dtype)
    fg = (fg_mask * err).sum() / (2 * fg_mask.sum()).clamp(min=1)
    bg = (bg_mask * err).sum() / (2 * bg_mask.sum()).clamp(min=1)
    return gamma_fg * fg + gamma_bg * bg


def level_masks(batch, levels, instance_levels, weights) -> Dict[str, torch.Tensor]:
    """Foreground mask (B, H, W) of every imitated level (names ``levels``) from the GT boxes of
    ``batch`` (a :class:`~gkd_d2.structures.DistillBatch`) assigned to it; ``weights`` (G,)."""
    gt = batch.gt
    masks = {}
    for name in levels:
        feat = batch.teacher_features[name]
        if name in instance_levels:
            on_level = gt.level_index == instance_levels.index(name)
        else:  # e.g. P6 of Faster R-CNN: no GT is ever assigned there, background only
            on_level = torch.zeros_like(gt.level_index, dtype=torch.bool)
        masks[name] = weighted_box_mask(
            gt.boxes[on_level],
            gt.image_index[on_level],
            weights[on_level],
            batch.feature_strides[name],
            feat.shape[0],
            feat.shape[2],
            feat.shape[3],
        )
    return masks

def decoupled_feature_losses(adapters, batch, levels, instance_levels, weights, gamma_fg, gamma_bg):
    """(L,): Eq. 7 of every imitated level, the student's map through ``adapters[level]``, the
    foreground mask from :func:`level_masks` with ``weights`` (G,)."""
    masks = level_masks(batch, levels, instance_levels, weights)
    return torch.stack(
        [
            decoupled_feature_loss(
                adapters[f](batch.student_features[f]), batch.teacher_features[f], masks[f], gamma_fg, gamma_bg
            )
            for f in levels
        ]
    )


# ----------------------------------------------------------------------------- response

def roi_kl(student_logits, teacher_logits, weights, temperature: float) -> torch.Tensor:
    """mean_i w_i T^2 KL(p_T,i || p_S,i). logits (R, C+1), weights (R,). 0 when R == 0."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * t * t  # (R,)
    return (weights * kl).sum() / max(1, kl.shape[0])


def _logsigmoid_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """``x <- log(sigmoid(x))`` in place, as ``min(x, 0) - log(1 + exp(-|x|))``; ``scratch`` is
    a tensor of x's shape it may overwrite. Allocation-free (CPU ``log1p``, which
    ``F.logsigmoid`` uses, runs at a fifth of ``log``'s speed); absolute error below 1e-6."""
    torch.abs(x, out=scratch).neg_().exp_().add_(1.0).log_()
    return x.clamp_(max=0.0).sub_(scratch)


class _AnchorBinaryKL(torch.autograd.Function):
    """Per anchor: ``T^2 sum_c KL(Bernoulli(sigmoid(t_c/T)) || Bernoulli(sigmoid(s_c/T)))``.

    The same value as ``T^2 sum_c [BCE(s_c/T, p_c) - H(p_c)]``, computed as
    ``T^2 sum_c [log sig(y) - log sig(x) + (1 - sig(y)) (x - y)]`` with ``x = s/T``, ``y = t/T``,
    in four (B, A, C) buffers and in-place arithmetic: a RetinaNet step at COCO scale has
    2 images x 120k-200k anchors x 80 classes, and the composite BCE ops of PyTorch allocate a
    new buffer per elementary op. Gradient: ``d/ds = T (sig(x) - sig(y))``, none for the teacher.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, temperature: float):
        dtype = torch.promote_types(student_logits.dtype, torch.float32)  # half -> float32
        s = student_logits.detach().to(dtype)
        y = teacher_logits.detach().to(dtype) / temperature
        q = torch.neg(y).sigmoid_()  # 1 - p_T
        kl = torch.div(s, temperature).sub_(y).mul_(q)  # (1 - p_T)(x - y)
        scratch = torch.empty_like(y)
        kl.add_(_logsigmoid_(y, scratch))  # + log sig(y); y is consumed
        torch.div(s, temperature, out=y)
        kl.sub_(_logsigmoid_(y, scratch))  # - log sig(x)
        ctx.save_for_backward(student_logits, q)
        ctx.temperature = temperature
        return kl.sum(dim=-1).mul_(temperature * temperature)  # float32 even for half logits

    @staticmethod
    def backward(ctx, grad_per_anchor):
        student_logits, q = ctx.saved_tensors
        t = ctx.temperature
        # sig(x) - sig(y) = q - sig(-x)
        grad = torch.div(student_logits.to(q.dtype), -t).sigmoid_().neg_().add_(q)
        grad.mul_(grad_per_anchor.to(q.dtype).unsqueeze(-1) * t)
        return grad.to(student_logits.dtype), None, None


def anchor_binary_kl(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """logits (B, A, C) -> (B, A): ``T^2 sum_c KL(sigmoid(z_T,c/T) || sigmoid(z_S,c/T))``,
    the binary KL of every class summed per anchor. Differentiable in the student's logits only."""
    return _AnchorBinaryKL.apply(student_logits, teacher_logits, float(temperature))


def sigmoid_response(student_logits, teacher_logits, weights, valid, normalizer, temperature):
    """sum over valid anchors, classes of w T^2 [BCE(s/T, p_T) - H(p_T)] / normalizer.

    logits (B, A, C); weights, valid (B, A).
    """
    per_anchor = anchor_binary_kl(student_logits, teacher_logits, temperature)  # (B, A)
    return weighted_anchor_sum(per_anchor, weights, valid, normalizer)


def weighted_anchor_sum(per_anchor, weights, valid, normalizer) -> torch.Tensor:
    """sum over valid anchors of w * per_anchor / max(1, normalizer); all (B, A)."""
    return (per_anchor * weights * valid.to(per_anchor.dtype)).sum() / max(1.0, normalizer)

def class_mean_kl(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """(N,) ``T^2 mean_k p_T,k (log p_T,k - log p_S,k)``: the softmax KL of each row divided by
    the number of classes K (the release's response). logits (N, K)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).mean(dim=1) * t * t


def positive_response(student_logits, teacher_logits, weights, positive, temperature: float):
    """The release's response: ``sum_{i positive} w_i class_mean_kl_i / max(1, #positive)``.

    logits (..., K) (RoIs (R, C+1), or anchors (B, A, C)); weights, positive (...) with the
    logits' leading shape. 0 (still in the graph) without positives.
    """
    k = student_logits.shape[-1]
    s = student_logits.reshape(-1, k)[positive.reshape(-1)]
    t = teacher_logits.reshape(-1, k)[positive.reshape(-1)]
    w = weights.reshape(-1)[positive.reshape(-1)].to(s.dtype)
    return (w * class_mean_kl(s, t, temperature)).sum() / max(1, s.shape[0])


# ----------------------------------------------------------------------------- global (Eq. 6)

def global_knowledge_loss(beta_t, beta_s, slot_valid, weights):
    """Eq. 6: mean over valid (i, j) of w_i smoothL1(beta_S,ij - beta_T,ij); 0 if none."""
    err = F.smooth_l1_loss(beta_s, beta_t.detach(), beta=1.0, reduction="none")
    mask = slot_valid.to(err.dtype)
    return (weights.detach()[:, None] * err * mask).sum() / mask.sum().clamp(min=1)


def global_knowledge_loss_every_level(beta_t, beta_s, slot_valid, weights, level_index, num_levels):
    """Eq. 6 as the release computes it: every instance at every level; per level l, the mean
    over valid (i, j) of ``smoothL1(w_i beta_S,ij, w_i beta_T,ij)``; summed over the levels.

    beta_* (N, M) and slot_valid (N, M) of N = L x G (instance, level) pairs; weights (N,);
    level_index (N,) in [0, num_levels).
    """
    w = weights.detach()[:, None].to(beta_s.dtype)
    err = F.smooth_l1_loss(w * beta_s, w * beta_t.detach(), beta=1.0, reduction="none")
    mask = slot_valid.to(err.dtype)
    per_level = err.new_zeros(num_levels).index_add_(0, level_index, (err * mask).sum(dim=1))
    count = err.new_zeros(num_levels).index_add_(0, level_index, mask.sum(dim=1))
    return (per_level / count.clamp(min=1)).sum()

# ----------------------------------------------------------------------------- Chen et al. 2017

def weighted_soft_cross_entropy(student_logits, teacher_logits, class_weights, temperature):
    """mean_i - sum_c w_c P_T,ic log P_S,ic. logits (R, C+1), class_weights (C+1,)."""
    t = temperature
    p_t = F.softmax(teacher_logits.float() / t, dim=1)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    return -(class_weights * p_t * log_p_s).sum(dim=1).sum() / max(1, student_logits.shape[0])


def class_deltas(deltas: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(R, 4) deltas of each RoI's class from (R, 4C) class-specific or (R, 4) agnostic deltas."""
    if deltas.shape[1] == 4:
        return deltas
    return deltas.view(deltas.shape[0], -1, 4)[torch.arange(len(classes), device=deltas.device), classes]


def bounded_regression(student_deltas, teacher_deltas, targets, margin):
    """(F,) per-RoI L_b: ||R_S - y||^2 where it is not below ||R_T - y||^2 - m, else 0."""
    err_s = (student_deltas.float() - targets).pow(2).sum(dim=1)
    err_t = (teacher_deltas.detach().float() - targets).pow(2).sum(dim=1)
    return torch.where(err_s + margin > err_t, err_s, torch.zeros_like(err_s))

# ----------------------------------------------------------------------------- hints, FGFI

def hint_loss(adapted: torch.Tensor, teacher: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Mean squared (``l2``) or absolute (``l1``) error per element. Shapes (B, D_T, H, W)."""
    if kind == "l1":
        return F.l1_loss(adapted.float(), teacher.float())
    return F.mse_loss(adapted.float(), teacher.float())

def imitation_masks(gt_boxes: List[Boxes], anchors: List[Boxes], shapes, num_anchors: int, psi: float):
    """list over levels of (B, H, W) bool masks: cells with an anchor of IoU > psi * max IoU.

    gt_boxes: per image; anchors: per level (H*W*A, 4), same for every image; shapes: per
    level (H, W).
    """
    all_anchors = Boxes.cat(anchors)
    sizes = [h * w * num_anchors for h, w in shapes]
    per_image = []
    for gt in gt_boxes:
        if len(gt) == 0:
            per_image.append(torch.zeros(len(all_anchors), dtype=torch.bool, device=all_anchors.device))
            continue
        iou = pairwise_iou(gt, all_anchors)  # (G_i, N)
        per_image.append((iou > psi * iou.max(dim=1, keepdim=True).values).any(dim=0))
    marks = torch.stack(per_image)  # (B, N)
    return [
        m.view(len(gt_boxes), h, w, num_anchors).any(dim=3)
        for m, (h, w) in zip(marks.split(sizes, dim=1), shapes)
    ]


def masked_imitation_loss(students, teachers, masks) -> torch.Tensor:
    """sum over levels, masked cells and channels of squared error / (2 * #masked cells)."""
    total = sum((m[:, None] * (t - s).float().pow(2)).sum() for s, t, m in zip(students, teachers, masks))
    cells = sum(m.sum() for m in masks)
    return total / (2 * cells.clamp(min=1))

# ----------------------------------------------------------------------------- RKD

def distance_relations(x: torch.Tensor) -> torch.Tensor:
    """(G, G) pairwise distances divided by their mean over i != j.

    ``x`` is centred first (distances do not change): above 25 rows ``torch.cdist`` computes
    ``|a|^2 + |b|^2 - 2 a.b``, which loses the distances to cancellation when the features share
    a large common offset. The diagonal is set to exactly 0 (cdist's is sqrt of a rounding
    error there)."""
    x = x - x.mean(dim=0, keepdim=True)
    g = x.shape[0]
    off_diag = ~torch.eye(g, dtype=torch.bool, device=x.device)
    d = torch.cdist(x, x).masked_fill(~off_diag, 0.0)
    mean = d[off_diag].mean().clamp(min=1e-12)
    return d / mean


def angle_relations(x: torch.Tensor) -> torch.Tensor:
    """(G, G, G): psi[j, i, k] = cos of the angle at x_j between x_i - x_j and x_k - x_j.

    The differences are taken directly (no cdist): a common offset cancels exactly."""
    e = F.normalize(x[None, :, :] - x[:, None, :], dim=2)  # e[j, i] = unit(x_i - x_j)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_losses(x_s: torch.Tensor, x_t: torch.Tensor):
    """(L_dist, L_angle) between student (G, D_S) and teacher (G, D_T) instance features."""
    zero = x_s.sum() * 0
    g = x_s.shape[0]
    if g < 2:
        return zero, zero
    x_t = x_t.detach().float()
    dist = F.smooth_l1_loss(distance_relations(x_s.float()), distance_relations(x_t))
    if g < 3:
        return dist, zero
    angle = F.smooth_l1_loss(angle_relations(x_s.float()), angle_relations(x_t))
    return dist, angle
