#!/usr/bin/env python
"""Do the robust weights (Eq. 8) single out the noisy instances on the replica's data?

The paper's Robust Distillation Module rests on one claim: the discrepancy between the
teacher's and the student's relations to the prototypes is large on the instances whose
knowledge is noisy (small, blurred, occluded, truncated, or ones the teacher gets wrong), so
``w = 1 - |max_c beta_T - max_c beta_S|`` down-weights exactly those in the local terms. This
probe measures it on a trained replica pair (``benchmarks/replica.py``, shapes data): for every
validation GT instance (no size filter), pooled at its assigned level as in training, against
prototypes that PGM regenerates for the pair (the refresh hook's call at the start of a
fine-tuning), it reports the mean robust weight

- on clear and on ambiguous instances (the data's own ``ambiguous`` flag) and by reason;
- on the instances the teacher classifies right / wrong (``probe_common.own_view``: Faster R-CNN,
  its box head's best foreground class on the GT box; RetinaNet, its classification head at the
  anchor of highest IoU with the box) -- the soft labels the response term would pass on;
- ``auc_ambiguous`` / ``auc_teacher_wrong``: the probability that a random ambiguous (teacher-
  wrong) instance gets a lower weight than a random clear (teacher-right) one (0.5: the weights
  do not tell them apart; 1: every noisy instance below every clean one);
- ``low_share``: the share of instances with ``w < 0.8`` and how many of those are ambiguous.

One row per ``--runs`` folder (a student's ``model_final.pth`` under ``--output``): the student
of the pair is that run's, the teacher the replica's.

    python benchmarks/investigations/probe_robust.py --detector faster_rcnn --runs student-pretrained gkd~ft1200_s0

Writes ``benchmarks/investigations/results/probe_robust_<detector>.json``.
"""
import json
import os
import sys

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from common import INVESTIGATION_RESULTS as RESULTS, machine  # noqa: E402
from probe_common import own_view, replica_checkpoints, replica_probe_cfg, replica_probe_parser, validation_inputs  # noqa: E402

from gkd_d2 import DistillationCheckpointer, DistillTrainer  # noqa: E402
from gkd_d2.pooling import assign_level_index, pool_instances  # noqa: E402
from gkd_d2.prototypes import PrototypeRefresher  # noqa: E402

REASONS = ("small", "blurred", "occluded", "truncated")


def parse_args():
    p = replica_probe_parser(__doc__)
    p.add_argument("--runs", nargs="+", default=["student-pretrained"], help="run folders under --output")
    return p.parse_args()


def auc(low, high):
    """P(a random ``low`` value < a random ``high`` value), ties counted half. low, high: (n,), (m,)."""
    if len(low) == 0 or len(high) == 0:
        return float("nan")
    lt = (low[:, None] < high[None, :]).float().mean()
    eq = (low[:, None] == high[None, :]).float().mean()
    return float(lt + 0.5 * eq)


def main():
    args = parse_args()
    teacher_w, *run_weights = replica_checkpoints(args, [args.teacher, *args.runs])
    cfg = replica_probe_cfg(args, teacher_w)
    torch.set_grad_enabled(False)
    model = DistillTrainer.build_model(cfg).eval()
    num_classes = model.num_classes

    records, inputs, boxes = validation_inputs(cfg, num_classes)
    by_id = {d["image_id"]: d for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])}
    anns = [by_id[r.image_id]["annotations"][j] for r in records for j in r.ann_index]
    classes = torch.as_tensor(np.concatenate([r.classes for r in records])).long()
    amb = torch.tensor([bool(a["ambiguous"]) for a in anns])
    levels = assign_level_index([Boxes(b) for b in boxes], *model.student_family.level_range)
    step = int(cfg.DISTILL.PGM.BATCH_SIZE)

    chunks = range(0, len(inputs), step)
    chunk_levels = torch.split(levels, [sum(len(b) for b in boxes[s : s + step]) for s in chunks])

    def pooled(features_fn):
        """(N, D) every instance pooled at its assigned level, as in training."""
        return torch.cat([
            pool_instances(features_fn(inputs[s : s + step]), model.instance_levels, model.strides,
                           boxes[s : s + step], index, model.instance_pooling)
            for s, index in zip(chunks, chunk_levels)
        ])

    x_t = pooled(model.teacher_features)
    right = own_view(model.teacher, inputs, boxes, step)[0] == classes  # the teacher's own class per box
    print(f"{len(classes)} instances ({int(amb.sum())} ambiguous), teacher right on "
          f"{float(right[~amb].float().mean()):.2f} clear / {float(right[amb].float().mean()):.2f} ambiguous",
          flush=True)
    refresher = PrototypeRefresher(cfg)
    rows = []
    for run, weights in zip(args.runs, run_weights):
        DistillationCheckpointer(model).load(weights)
        model.eval()
        refresher.refresh(model, iteration=0)
        w = model.prototypes.robust_weights(x_t, pooled(model.student_features), levels, classes).cpu()
        low = w < 0.8
        row = {
            "run": run,
            "w_mean": float(w.mean()), "w_clear": float(w[~amb].mean()), "w_ambiguous": float(w[amb].mean()),
            "w_by_reason": {r: float(w[torch.tensor([r in a["ambiguity"] for a in anns])].mean()) for r in REASONS},
            "w_teacher_right": float(w[right].mean()), "w_teacher_wrong": float(w[~right].mean()),
            "auc_ambiguous": auc(w[amb], w[~amb]), "auc_teacher_wrong": auc(w[~right], w[right]),
            "low_share": float(low.float().mean()),
            "low_ambiguous_share": float(amb[low].float().mean()) if low.any() else float("nan"),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    path = args.results or os.path.join(RESULTS, f"probe_robust_{args.detector}.json")
    with open(path, "w") as f:
        json.dump({
            "machine": machine("cpu"), "teacher": teacher_w, "instances": len(classes),
            "ambiguous": int(amb.sum()), "teacher_right_clear": float(right[~amb].float().mean()),
            "teacher_right_ambiguous": float(right[amb].float().mean()), "rows": rows,
        }, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
