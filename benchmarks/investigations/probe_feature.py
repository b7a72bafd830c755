#!/usr/bin/env python
"""How much of the feature term (Eq. 7) can the student remove at all? Probe trained runs.

The paper's adaptation layer ends in a ReLU, so it can only output values >= 0, while FPN
outputs are signed (the demo FPNs are batch-normalised: about half of every teacher map is
negative). For a trained run of ``benchmarks/investigations/quality.py`` this measures, on validation images
(test-time inputs, every imitated level):

- ``mse``: mean over elements of ``(F_T - A(F_S))^2``, what Eq. 7 averages;
- ``floor``: mean of ``min(F_T, 0)^2``, the part no ReLU adapter can remove (its best output
  for a negative target is 0), and ``floor_share = floor / mse``;
- ``teacher_negative``: the share of teacher elements below 0;
- ``r2``: ``1 - mse / v``, ``v`` the teacher's variance around its per-channel means (what an
  adapter that outputs a constant per channel leaves): the share of the teacher's maps the
  student reproduces (1: all of it, 0: no better than the channel means);
- ``r2_linear``: the same R^2 for the best 1x1 linear map (with bias) from the student's map to
  the teacher's, fitted by least squares (ridge 1e-3 of the mean diagonal) on the first half of the images and measured on the
  second: how much of the teacher's maps is linearly readable from the student's, with or
  without imitation (runs without a feature term, such as the control, get only this).

    python benchmarks/investigations/probe_feature.py --detector faster_rcnn --runs feature_s0 gkd_s0
    python benchmarks/investigations/probe_feature.py --detector faster_rcnn --output output/replica/shapes \
        --dataset shapes --runs feature~ft1200_s0 gkd~ft1200_s0
"""
import json
import os
import sys

import torch

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
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


def per_channel_variance(s1, s2, n_c) -> float:
    """Mean over channels of the variance around each channel's mean. s1, s2: (C,) sums of x and x^2."""
    return float((s2 / n_c - (s1 / n_c) ** 2).mean())


def linear_r2(model, inputs, levels, step=8):
    """{level: held-out R^2 of the least-squares 1x1 map [F_S, 1] -> F_T} (fit on the first half
    of ``inputs``, measured on the second)."""
    half = len(inputs) // 2

    def flat(x):  # (B, C, H, W) -> (BHW, C), float64
        return x.double().permute(0, 2, 3, 1).reshape(-1, x.shape[1])

    def maps(batch):
        """{level: ([F_S, 1] (BHW, C_S + 1), F_T (BHW, C_T))}."""
        s, t = model.student_features(batch), model.teacher_features(batch)
        return {lv: (torch.nn.functional.pad(flat(s[lv]), (0, 1), value=1.0), flat(t[lv])) for lv in levels}

    xtx, xty = {}, {}
    for start in range(0, half, step):
        for lv, (x, y) in maps(inputs[start : min(start + step, half)]).items():
            xtx[lv] = xtx.get(lv, 0) + x.T @ x
            xty[lv] = xty.get(lv, 0) + x.T @ y
    ridge = {lv: 1e-3 * xtx[lv].diagonal().mean() * torch.eye(len(xtx[lv]), dtype=torch.float64) for lv in levels}
    w = {lv: torch.linalg.solve(xtx[lv] + ridge[lv], xty[lv]) for lv in levels}  # least squares, a slight ridge
    sse, s1, s2, n = {}, {}, {}, {}
    for start in range(half, len(inputs), step):
        for lv, (x, y) in maps(inputs[start : start + step]).items():
            sse[lv] = sse.get(lv, 0) + (y - x @ w[lv]).pow(2).sum()
            s1[lv], s2[lv] = s1.get(lv, 0) + y.sum(0), s2.get(lv, 0) + y.pow(2).sum(0)
            n[lv] = n.get(lv, 0) + y.shape[0]
    return {lv: 1.0 - float(sse[lv] / (n[lv] * s1[lv].numel())) / per_channel_variance(s1[lv], s2[lv], n[lv])
            for lv in levels}


def main():
    p = probe_parser(__doc__)
    p.add_argument("--images", type=int, default=64, help="validation images used")
    args = p.parse_args()
    cfg, model = probe_model(args, ["feature"], prototypes=False)
    _, inputs, _ = validation_inputs(cfg, model.num_classes, args.images)
    rows = []
    levels = list(model.knowledge["feature"].levels)
    for run in args.runs:
        state = run_state(args, run)
        if not any(k.startswith("student.") for k in state):  # a plain detector checkpoint: the student
            state = {"student." + k: v for k, v in state.items()}
        keep = {k: v for k, v in state.items() if k.startswith(("student.", "knowledge.feature."))}
        missing = model.load_state_dict(keep, strict=False).missing_keys
        if any(k.startswith("student.") for k in missing):
            raise ValueError(f"{run}: the checkpoint does not hold the student's weights")
        row = {"run": run}
        if not any(k.startswith("knowledge.feature.") for k in missing):  # the run trained adapters
            total = None
            for start in range(0, len(inputs), 8):
                part = feature_floor(model, inputs[start : start + 8])
                total = part if total is None else {
                    k: tuple(a + b for a, b in zip(total[k], v)) for k, v in part.items()
                }
            for name, ((mse, floor, neg, n), (s1, s2), n_c) in total.items():
                row[name] = {"mse": float(mse / n), "floor": float(floor / n), "floor_share": float(floor / mse),
                             "teacher_negative": float(neg / n),
                             "r2": 1.0 - float(mse / n) / per_channel_variance(s1, s2, n_c)}
        for name, r2 in linear_r2(model, inputs, levels).items():
            row.setdefault(name, {})["r2_linear"] = r2
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_probe("probe_feature", args, {"images": len(inputs), "rows": rows})


if __name__ == "__main__":
    main()
