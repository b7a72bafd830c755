#!/usr/bin/env python
"""The RetinaNet response term's per-anchor binary KL: this project's fused autograd function
against the same formula written with PyTorch's composite ops, in one run.

    python benchmarks/investigations/bench_anchor_kl.py [--device cuda] [--iters 5]

Shape: the COCO-scale step of ``bench_cost.py --scale coco``: two 800 x 800 images, 9 anchors
per cell on P3-P7 (120,087 anchors per image), 80 classes, i.e. (2, 120087, 80) logits.
Timed: forward + backward of ``sum(w * KL)`` with a random per-anchor weight, median of
``--iters`` interleaved runs. Also: the largest difference between the two values and
gradients. Results: ``benchmarks/investigations/results/anchor_kl.json`` under the device kind.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from common import INVESTIGATION_RESULTS as RESULTS, machine  # noqa: E402

from gkd_d2.knowledge.losses import anchor_binary_kl  # noqa: E402

ANCHORS_PER_IMAGE = sum(9 * s * s for s in (100, 50, 25, 13, 7))  # P3-P7 of an 800 px image
T = 2.0


def composite_binary_kl(zs, zt, t):
    """The same KL with PyTorch's composite ops: T^2 sum_c [BCE(zs/T, p_T) - H(p_T)], (B, A)."""
    p = torch.sigmoid(zt / t)
    kl = F.binary_cross_entropy_with_logits(zs / t, p, reduction="none") - F.binary_cross_entropy_with_logits(
        zt / t, p, reduction="none"
    )
    return kl.sum(-1) * t * t


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    shape = (2, ANCHORS_PER_IMAGE, 80)
    zs = (torch.randn(shape, generator=g) * 3).to(args.device)
    zt = (torch.randn(shape, generator=g) * 3).to(args.device)
    w = torch.rand(shape[:2], generator=g).to(args.device)
    fns = {"fused": anchor_binary_kl, "composite": composite_binary_kl}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run(fn):
        x = zs.clone().requires_grad_()
        sync()
        start = time.perf_counter()
        loss = (fn(x, zt, T) * w).sum()
        loss.backward()
        sync()
        return time.perf_counter() - start, loss.detach(), x.grad

    times = {k: [] for k in fns}
    for _ in range(args.iters + 1):  # the first round is a warm-up
        for k, fn in fns.items():
            times[k].append(run(fn)[0])
    (_, l_fused, g_fused), (_, l_comp, g_comp) = run(fns["fused"]), run(fns["composite"])
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    out = {
        **machine(args.device),
        "shape": list(shape),
        "iters": args.iters,
        "fwd_bwd_s": med,
        "speedup": med["composite"] / med["fused"],
        "max_rel_loss_diff": float((l_fused - l_comp).abs() / l_comp.abs()),
        "max_abs_grad_diff": float((g_fused - g_comp).abs().max()),
    }
    print(json.dumps(out, indent=1))
    path = os.path.join(RESULTS, "anchor_kl.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    results[args.device.split(":")[0]] = out
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
