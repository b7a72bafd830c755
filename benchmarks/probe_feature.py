#!/usr/bin/env python
"""How much of the feature term (Eq. 7) can the student remove at all? Probe trained runs.

The paper's adaptation layer ends in a ReLU, so it can only output values >= 0, while FPN
outputs are signed (the demo FPNs are batch-normalised: about half of every teacher map is
negative). For a trained run of ``benchmarks/quality.py`` this measures, on validation images
(test-time inputs, every imitated level):

- ``mse``: mean over elements of ``(F_T - A(F_S))^2``, what Eq. 7 averages;
- ``floor``: mean of ``min(F_T, 0)^2``, the part no ReLU adapter can remove (its best output
  for a negative target is 0), and ``floor_share = floor / mse``;
- ``teacher_negative``: the share of teacher elements below 0;
- ``r2``: ``1 - mse / v``, ``v`` the teacher's variance around its per-channel means (what an
  adapter that outputs a constant per channel leaves): the share of the teacher's maps the
  student reproduces (1: all of it, 0: no better than the channel means).

    python benchmarks/probe_feature.py --detector faster_rcnn --runs feature_s0 gkd_s0
    python benchmarks/probe_feature.py --detector faster_rcnn --output output/replica/shapes \
        --dataset shapes --runs feature~ft1200_s0 gkd~ft1200_s0
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_common import probe_model, probe_parser, run_state, validation_inputs, write_probe  # noqa: E402


def feature_floor(model, inputs):
    """Per imitated level: sums of (F_T - A(F_S))^2, min(F_T, 0)^2, [F_T < 0], the element count,
    and the teacher's per-channel sums and sums of squares (C,) and per-channel count."""
    term = model.knowledge["feature"]
    s_feats, t_feats = model.student_features(inputs), model.teacher_features(inputs)
    out = {}
    for name in term.levels:
        t = t_feats[name].float()
        a = term.adapters[name](s_feats[name]).float()
        sums = torch.stack(
            [(t - a).pow(2).sum(), t.clamp(max=0).pow(2).sum(), (t < 0).float().sum(), torch.tensor(t.numel())]
        )
        per_channel = torch.stack([t.sum((0, 2, 3)), t.pow(2).sum((0, 2, 3))])  # (2, C)
        out[name] = (sums, per_channel, torch.tensor(t.numel() / t.shape[1], dtype=torch.float64))
    return out


def main():
    p = probe_parser(__doc__)
    p.add_argument("--images", type=int, default=64, help="validation images used")
    args = p.parse_args()
    cfg, model = probe_model(args, ["feature"], prototypes=False)
    _, inputs, _ = validation_inputs(cfg, model.num_classes, args.images)
    rows = []
    for run in args.runs:
        state = run_state(args, run)
        keep = {k: v for k, v in state.items() if k.startswith(("student.", "knowledge.feature."))}
        missing = model.load_state_dict(keep, strict=False).missing_keys
        if any(k.startswith(("student.", "knowledge.feature.")) for k in missing):
            raise ValueError(f"{run}: the checkpoint has no feature-term adapters (run without 'feature')")
        total = None
        for start in range(0, len(inputs), 8):
            part = feature_floor(model, inputs[start : start + 8])
            total = part if total is None else {
                k: tuple(a + b for a, b in zip(total[k], v)) for k, v in part.items()
            }
        row = {"run": run}
        for name, ((mse, floor, neg, n), (s1, s2), n_c) in total.items():
            variance = float((s2 / n_c - (s1 / n_c) ** 2).mean())  # around the per-channel means
            row[name] = {"mse": float(mse / n), "floor": float(floor / n), "floor_share": float(floor / mse),
                         "teacher_negative": float(neg / n), "r2": 1.0 - float(mse / n) / variance}
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_probe("probe_feature", args, {"images": len(inputs), "rows": rows})


if __name__ == "__main__":
    main()
