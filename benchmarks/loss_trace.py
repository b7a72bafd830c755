#!/usr/bin/env python
"""Every loss of the first N training iterations of a config, to JSON; or the comparison of two
such traces. A refactor that claims "no behaviour change" must leave the trace unchanged.

    python benchmarks/loss_trace.py --config configs/Demo/gkd_retinanet_R34_to_R18_FPN.yaml \
        --out trace.json SOLVER.MAX_ITER 20 DISTILL.TEACHER.WEIGHTS teacher.pth SEED 0 ...
    python benchmarks/loss_trace.py --compare before.json after.json

With ``SEED`` fixed, ``DATALOADER.NUM_WORKERS 0`` and ``OMP_NUM_THREADS=1`` a CPU run is
repeatable bit for bit. ``kd/pgm_seconds`` (a wall time) is not compared.
"""
import argparse
import json
import sys

from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from gkd_d2 import DistillTrainer
from gkd_d2.config import load_config
from gkd_d2.data.builtin import register_datasets_from_cfg


class LossRecorder(HookBase):
    """After each step, the latest value of every ``loss*`` and ``kd/*`` scalar."""

    def __init__(self):
        self.records = []

    def after_step(self):
        latest = self.trainer.storage.latest()
        self.records.append({k: float(v[0]) for k, v in latest.items() if k.startswith(("loss", "kd/"))})


def record(config, opts, out):
    cfg = load_config(config, opts)
    cfg.freeze()
    setup_logger()
    register_datasets_from_cfg(cfg)
    seed_all_rng(cfg.SEED)
    recorder = LossRecorder()
    trainer = DistillTrainer(cfg)
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(out, "w") as f:
        json.dump(recorder.records, f, indent=1)


def compare(a_path, b_path) -> int:
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    worst = 0.0
    for i, (x, y) in enumerate(zip(a, b)):
        for key in sorted((set(x) | set(y)) - {"kd/pgm_seconds"}):
            if key not in x or key not in y:
                print(f"iteration {i}: {key} only in one trace")
                return 1
            worst = max(worst, abs(x[key] - y[key]) / max(1e-12, abs(x[key])))
    print(f"{len(a)} vs {len(b)} iterations, largest relative difference {worst:.3g}")
    return int(len(a) != len(b) or worst > 0)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config")
    p.add_argument("--out")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"))
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args()
    sys.exit(compare(*args.compare) if args.compare else record(args.config, args.opts, args.out))
