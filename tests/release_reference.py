"""A reference of the authors' released code (DAVAR-Lab-ML, ``third_party/kd/mmdet``), written from
its formulas as ``docs/method.md`` states them: plain torch, one box / instance / level at a time,
no gkd_d2 import. ``tests/test_release_fidelity.py`` feeds it the tensors gkd_d2's default terms
see and compares; the places where gkd_d2 departs on purpose are the table of ``docs/method.md``
("gkd_d2 and the release, row by row"), each pinned there by a test of gkd_d2's side.

Shapes: G boxes, D channels, (H, W) a level, M prototype slots of a level, K classes of a logit row.
"""
import math

import torch
import torch.nn.functional as F


def level_of_box(box, num_levels):
    """``_map_roi_levels``: floor(log2(sqrt((w + 1)(h + 1)) / 56 + 1e-6)) in [0, num_levels)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    scale = math.sqrt((x2 - x1 + 1) * (y2 - y1 + 1))
    return min(max(math.floor(math.log2(scale / 56 + 1e-6)), 0), num_levels - 1)


def gt_mask(boxes, levels, weights, level, stride, height, width):
    """``get_gt_mask`` of one image and level, (H, W): cells ``[int(x1/s), min(int(x2/s), W))``
    (rows alike) take the box's weight, a later box overwriting an earlier one; a box under one
    cell wide or high marks the single cell ``(int(y1/s), int(x1/s))`` with the larger weight."""
    mask = torch.zeros(height, width, dtype=torch.float64)
    for box, lvl, w in zip(boxes, levels, weights):
        if lvl != level:
            continue
        lx, ly = max(int(float(box[0]) / stride), 0), max(int(float(box[1]) / stride), 0)
        rx, ry = min(int(float(box[2]) / stride), width), min(int(float(box[3]) / stride), height)
        if lx == rx or ly == ry:
            mask[ly, lx] = max(float(mask[ly, lx]), float(w))
        else:
            mask[ly:ry, lx:rx] = float(w)
    return mask


def feature_level_loss(student_adapted, teacher, mask, gamma_fg, gamma_bg):
    """``KDLoss`` with ``p_str='decouple'`` for one level: the mask repeated over the C channels,
    ``fg = sum((S - T)^2 M) / max(1, 2 sum M_rep)``, ``bg`` alike on ``1 - [M > 0]``.

    student_adapted, teacher (B, C, H, W); mask (B, H, W)."""
    c = teacher.shape[1]
    m = mask.to(teacher.dtype)[:, None].repeat(1, c, 1, 1)
    onehot = (m > 0).to(m.dtype)
    err = (student_adapted - teacher) ** 2
    fg = (err * m).sum() / max(1.0, float(m.sum() * 2))
    bg = (err * (1 - onehot)).sum() / max(1.0, float((1 - onehot).sum() * 2))
    return gamma_fg * fg + gamma_bg * bg


def feature_loss(per_level, two_stage):
    """Two-stage strategy: the mean over the neck's levels; one-stage: their sum."""
    total = sum(per_level)
    return total / len(per_level) if two_stage else total


def response_loss(student_logits, teacher_logits, weights, temperature):
    """``knowledge_distillation_kl_div_loss`` on the positive samples it is given, (P, K) logits:
    ``mean_i w_i T^2 mean_k KL_k``."""
    t = temperature
    target = F.softmax(teacher_logits / t, dim=1)
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), target, reduction="none").mean(1) * t * t
    return (kl * weights).mean()


def robust_weight(x_t, x_s, protos_t, protos_s):
    """``1 - |max_j cos(x_T, P_T,j) - max_j cos(x_S, P_S,j)|`` over the instance's class's
    prototypes ``protos_* (k, D)`` of the level (not clamped)."""
    st = (F.normalize(x_s[None], dim=1) @ F.normalize(protos_s, dim=1).t()).max()
    tc = (F.normalize(x_t[None], dim=1) @ F.normalize(protos_t, dim=1).t()).max()
    return 1 - (st - tc).abs()


def global_level_loss(feats_t, feats_s, classes, protos_t, protos_s, proto_classes):
    """``r2i_om_loss`` of one level: each instance's weight from this level's features and its
    class's prototypes of this level, then ``smooth_l1(cos_S w, cos_T w)`` averaged over every
    (instance, prototype of the level). feats_* (G, D); protos_* (M, D); proto_classes (M,)."""
    weights = torch.stack(
        [
            robust_weight(feats_t[i], feats_s[i], protos_t[proto_classes == c], protos_s[proto_classes == c])
            for i, c in enumerate(classes.tolist())
        ]
    )[:, None]
    dist_s = F.normalize(feats_s, dim=1) @ F.normalize(protos_s, dim=1).t()
    dist_t = F.normalize(feats_t, dim=1) @ F.normalize(protos_t, dim=1).t()
    return F.smooth_l1_loss(dist_s * weights, dist_t * weights, reduction="mean")


def matching_pursuit(feats_a, feats_b, num_prototypes=10, alpha=10.0, exclude_chosen=False):
    """``_generate_prototypes_single`` in float64: density filter (sigma 0.1, quantile 0.4), then
    the (K, D, N) greedy pursuit. The release may pick an instance again; ``exclude_chosen``
    adds gkd_d2's one change (a chosen candidate is not offered again). Returns the indices."""
    a = F.normalize(feats_a.double(), dim=1)
    b = F.normalize(feats_b.double(), dim=1)
    dens_a = torch.exp(-(((1 - a @ a.t()) / 0.1) ** 2)).sum(1)
    dens_b = torch.exp(-(((1 - b @ b.t()) / 0.1) ** 2)).sum(1)
    middle = int(len(dens_a) * 0.4)
    proposal = torch.where((dens_a > dens_a.sort().values[middle]) & (dens_b > dens_b.sort().values[middle]))[0]
    pa, pb = a.t()[:, proposal], b.t()[:, proposal]  # (Da, P), (Db, P)
    res_a, res_b = a.t().clone(), b.t().clone()  # (Da, N), (Db, N)
    chosen = []
    rounds = min(num_prototypes, len(proposal)) if exclude_chosen else num_prototypes
    for _ in range(rounds if len(proposal) else 0):
        inner_a, inner_b = pa.t() @ res_a, pb.t() @ res_b  # (P, N)
        w_a = (alpha * (inner_a + inner_b) + inner_a) / (1 + 2 * alpha)
        w_b = (alpha * (inner_a + inner_b) + inner_b) / (1 + 2 * alpha)
        err_a = pa.t()[:, :, None] * w_a[:, None, :] - res_a[None]  # (P, Da, N)
        err_b = pb.t()[:, :, None] * w_b[:, None, :] - res_b[None]
        err = (err_a**2).sum((1, 2)) + (err_b**2).sum((1, 2)) + alpha * ((w_a - w_b) ** 2).sum(1)
        if exclude_chosen:
            err[[p for p in range(len(proposal)) if int(proposal[p]) in chosen]] = float("inf")
        g = int(torch.argmin(err))
        chosen.append(int(proposal[g]))
        res_a = res_a - pa[:, g : g + 1] @ w_a[g : g + 1]
        res_b = res_b - pb[:, g : g + 1] @ w_b[g : g + 1]
    return chosen
