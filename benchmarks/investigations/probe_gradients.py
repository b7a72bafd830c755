#!/usr/bin/env python
"""Does each knowledge term pull the student the way its detection loss does? (Replica pair.)

The replica found that imitating the teacher's FPN maps (the default feature term, FitNet,
FGFI, DeFeat) helps RetinaNet a lot and costs Faster R-CNN AP, on the same data with teachers
of the same make. This probe measures the first-order reason at the point where a fine-tuning
starts: the replica's teacher, the trained student, PGM's prototypes regenerated for the pair
(as the refresh hook does at iteration 0), the gkd defaults, the student in training mode.

On ``--batches`` training batches (the training loader, augmentation included) it takes the
gradient of the detection losses (their sum, as the trainer adds them) and of every
``loss_kd_*`` term (weighted, attenuation at iteration 0 = 1) with respect to the student's
parameters, in three groups: ``bottom_up`` (the ResNet), ``fpn`` (the rest of the backbone)
and ``heads`` (RPN + RoI heads, or RetinaNet's head). Per group and term:

- ``norm_ratio``: ||g_term|| / ||g_det||, per batch, averaged (how hard each term pulls);
- ``cos_same``: cosine of g_term and g_det on the same batch, averaged over batches;
- ``cos_heldout``: cosine of the term's gradient summed over the first half of the batches
  and the detection gradient summed over the second half (other images): does a step along
  the term lower the detection loss on images it did not see, to first order? The detection
  gradient's own ``cos_heldout`` (first half against second half) is the ceiling: how
  consistent the detection direction is between batches at all.

    python benchmarks/investigations/probe_gradients.py --detector faster_rcnn
    python benchmarks/investigations/probe_gradients.py --detector retinanet \
        --teacher output/probe_data_v3_t4800/retinanet/teacher/model_final.pth

Writes ``benchmarks/investigations/results/probe_gradients_<detector>.json``.
"""
import json
import os
import sys
from collections import defaultdict

import torch
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from common import INVESTIGATION_RESULTS as RESULTS, machine  # noqa: E402
from probe_common import replica_checkpoints, replica_probe_cfg, replica_probe_parser  # noqa: E402

from gkd_d2 import DistillationCheckpointer, DistillTrainer  # noqa: E402
from gkd_d2.prototypes import PrototypeRefresher  # noqa: E402

GROUPS = ("bottom_up", "fpn", "heads")


def parse_args():
    p = replica_probe_parser(__doc__)
    p.add_argument("--student", default="student-pretrained", help="the student's folder under --output, or a .pth")
    p.add_argument("--knowledge", nargs="+", default=None,
                   help="DISTILL.KNOWLEDGE (default: the config's, i.e. the gkd defaults)")
    p.add_argument("--batches", type=int, default=16, help="training batches (an even number)")
    return p.parse_args()


def group_of(name: str) -> str:
    """'bottom_up' / 'fpn' / 'heads' for a parameter name of the student."""
    if name.startswith("backbone.bottom_up."):
        return "bottom_up"
    return "fpn" if name.startswith("backbone.") else "heads"


def flat_grads(loss, params):
    """(P,) the gradient of ``loss`` w.r.t. ``params``, zeros where it does not reach."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def cosine(a, b) -> float:
    """cos(a, b) in float64; NaN where either is zero (a term that does not reach the group)."""
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm())) if a.norm() > 0 and b.norm() > 0 else float("nan")


def main():
    args = parse_args()
    if args.batches < 2 or args.batches % 2:
        sys.exit("probe_gradients: --batches must be an even number >= 2")
    teacher_w, student_w = replica_checkpoints(args, [args.teacher, args.student])
    cfg = replica_probe_cfg(args, teacher_w)
    cfg.SOLVER.IMS_PER_BATCH = 4
    if args.knowledge is not None:
        cfg.DISTILL.KNOWLEDGE = list(args.knowledge)
    seed_all_rng(0)
    model = DistillTrainer.build_model(cfg)
    DistillationCheckpointer(model).load(student_w)
    if model.prototypes is not None:
        with torch.no_grad():
            PrototypeRefresher(cfg).refresh(model, iteration=0)
    model.train()
    named = [(n, p) for n, p in model.student.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    slices, start = defaultdict(list), 0  # group -> the slices of the flat (P,) gradient it owns
    for n, p in named:
        slices[group_of(n)].append(slice(start, start + p.numel()))
        start += p.numel()

    def split(vec):
        return {g: torch.cat([vec[s] for s in slices[g]]) for g in GROUPS}

    half = args.batches // 2
    sums = [defaultdict(lambda: 0.0), defaultdict(lambda: 0.0)]  # per half: term -> summed (P,) gradient
    per_batch = defaultdict(lambda: defaultdict(list))  # term -> group -> [(norm_ratio, cos_same)]
    values = defaultdict(list)
    loader = iter(DistillTrainer.build_train_loader(cfg))
    with EventStorage(0):
        for b in range(args.batches):
            losses = model(next(loader))
            det = sum(v for k, v in losses.items() if not k.startswith("loss_kd_"))
            terms = {"detection": det, **{k: v for k, v in losses.items() if k.startswith("loss_kd_")}}
            grads = {k: flat_grads(v, params) for k, v in terms.items()}
            g_det = split(grads["detection"])
            for k, g in grads.items():
                values[k].append(float(terms[k].detach()))
                sums[b // half][k] = sums[b // half][k] + g
                for group, vec in split(g).items():
                    per_batch[k][group].append((float(vec.norm() / g_det[group].norm()), cosine(vec, g_det[group])))
            print(f"batch {b}: " + ", ".join(f"{k} {float(v):.3f}" for k, v in terms.items()), flush=True)
    det_b = split(sums[1]["detection"])
    rows = {}
    for k in per_batch:
        a = split(sums[0][k])
        rows[k] = {
            "loss": sum(values[k]) / len(values[k]),
            **{g: {
                "norm_ratio": sum(r for r, _ in per_batch[k][g]) / args.batches,
                "cos_same": sum(c for _, c in per_batch[k][g]) / args.batches,
                "cos_heldout": cosine(a[g], det_b[g]),
            } for g in GROUPS},
        }
        print(k, json.dumps(rows[k]), flush=True)
    path = args.results or os.path.join(RESULTS, f"probe_gradients_{args.detector}.json")
    with open(path, "w") as f:
        json.dump({
            "machine": machine("cpu"), "teacher": teacher_w, "student": student_w,
            "knowledge": list(cfg.DISTILL.KNOWLEDGE), "batches": args.batches,
            "params": {g: sum(s.stop - s.start for s in slices[g]) for g in GROUPS}, "terms": rows,
        }, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
