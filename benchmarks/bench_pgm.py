#!/usr/bin/env python
"""PGM speed and memory: gkd_d2's pursuit vs the formula computed directly.

    python benchmarks/bench_pgm.py [--device cuda] [--n 800] [--dim 256]

N instances, D channels in both spaces, exactly 60% of them candidates, K = 10, alpha = 10.
The reference builds, every round, the candidates x D x N error tensors ``w a - r`` of Eq. 4
for all candidates at once (vectorised, the obvious way to write the formula); gkd_d2 works
from the candidates x N inner products only. Both must choose the same indices. Time is the
median of 3 runs; peak memory is measured in a fresh subprocess per implementation (peak RSS
above the baseline after inputs are built) on CPU, and with max_memory_allocated on CUDA.
Writes benchmarks/results/pgm_<device>.json.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, machine  # noqa: E402

from gkd_d2.prototypes.pgm import matching_pursuit, pursuit_coefficients  # noqa: E402


def reference_pursuit(x_t, x_s, candidates, k, alpha):
    """Eq. 4 evaluated literally: E_p = sum_n ||w_T a - r_T||^2 + ||w_S b - r_S||^2 + alpha (w_T - w_S)^2."""
    r_t, r_s = x_t.clone(), x_s.clone()
    a, b = x_t[candidates], x_s[candidates]
    available = torch.ones(len(candidates), dtype=torch.bool, device=x_t.device)
    chosen = []
    for _ in range(min(k, len(candidates))):
        u = torch.einsum("cd,nd->cn", a, r_t)
        v = torch.einsum("cd,nd->cn", b, r_s)
        w_t, w_s = pursuit_coefficients(u, v, alpha)
        err_t = w_t[:, None, :] * a[:, :, None] - r_t.t()[None]  # (C, D, N)
        err_s = w_s[:, None, :] * b[:, :, None] - r_s.t()[None]
        energy = err_t.pow(2).sum((1, 2)) + err_s.pow(2).sum((1, 2)) + alpha * (w_t - w_s).pow(2).sum(1)
        energy = energy.masked_fill(~available, float("inf"))
        p = int(torch.argmin(energy))
        available[p] = False
        chosen.append(p)
        r_t -= w_t[p][:, None] * a[p][None]
        r_s -= w_s[p][:, None] * b[p][None]
    return candidates[torch.tensor(chosen, device=candidates.device)]


IMPLS = {"gkd_d2": matching_pursuit, "reference": reference_pursuit}


def inputs(n, dim, device):
    g = torch.Generator().manual_seed(0)
    x_t = F.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
    x_s = F.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
    candidates = torch.randperm(n, generator=g)[: int(0.6 * n)].sort().values.to(device)
    return x_t, x_s, candidates


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_one(impl, n, dim, device, k, alpha):
    """Time (median of 3) and peak memory (MiB) of one implementation, plus its choice."""
    x_t, x_s, cand = inputs(n, dim, device)
    fn = IMPLS[impl]
    sync(device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        chosen = fn(x_t, x_s, cand, k, alpha)
        sync(device)
        times.append(time.perf_counter() - t)
    if device.startswith("cuda"):
        peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"time_s": statistics.median(times), "peak_MiB": peak, "chosen": chosen.tolist()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--worker", choices=sorted(IMPLS))
    args = parser.parse_args()
    if args.worker:  # child process: one implementation, fresh memory accounting
        print(json.dumps(run_one(args.worker, args.n, args.dim, args.device, args.k, args.alpha)))
        return
    res = {}
    for impl in IMPLS:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", impl, "--device", args.device, "--n", str(args.n),
             "--dim", str(args.dim), "--k", str(args.k), "--alpha", str(args.alpha)],
            capture_output=True, text=True, check=True,
        ).stdout
        res[impl] = json.loads(out.strip().splitlines()[-1])
    fast, ref = res["gkd_d2"], res["reference"]
    result = {
        **machine(args.device),
        "N": args.n, "D": args.dim, "candidates": int(0.6 * args.n), "K": args.k, "alpha": args.alpha,
        "time_gkd_d2_s": fast["time_s"], "time_reference_s": ref["time_s"],
        "speedup": ref["time_s"] / fast["time_s"],
        "peak_mem_gkd_d2_MiB": fast["peak_MiB"], "peak_mem_reference_MiB": ref["peak_MiB"],
        "memory_ratio": ref["peak_MiB"] / max(fast["peak_MiB"], 1e-3),
        "indices_identical": fast["chosen"] == ref["chosen"],
        "chosen": fast["chosen"],
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"pgm_{args.device.split(':')[0]}.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"PGM pursuit, N={args.n} D={args.dim} candidates={int(0.6 * args.n)} K={args.k} on {result['hardware']}")
    print(f"{'':12}{'time (s)':>12}{'peak MiB':>12}")
    print(f"{'gkd_d2':12}{fast['time_s']:>12.4f}{fast['peak_MiB']:>12.1f}")
    print(f"{'reference':12}{ref['time_s']:>12.4f}{ref['peak_MiB']:>12.1f}")
    print(f"speedup {result['speedup']:.0f}x, memory {result['memory_ratio']:.0f}x less, "
          f"identical indices: {result['indices_identical']}")


if __name__ == "__main__":
    main()
