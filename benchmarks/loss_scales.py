#!/usr/bin/env python
"""How large each default distillation loss is next to the detector's own losses.

    python benchmarks/loss_scales.py --scale demo --detectors faster_rcnn retinanet fcos \
        [--teacher-weights T.pth --student-weights S.pth]
    python benchmarks/loss_scales.py --scale coco --detectors faster_rcnn retinanet

The distillation config of each detector with **default** options (``DISTILL.KNOWLEDGE`` the
full method, the release's recipe) trains ``--iters`` SGD steps (the config's learning rate,
momentum 0.9) on fresh random batches of the scale's shape (``bench_cost.py``: demo 4 x 160 px,
COCO 2 x 800 px with 80 classes), with every prototype slot filled. At iterations 0 and the
last, each ``loss_kd_*`` is divided by the sum of the detection losses (the student's own
``loss_*``). A default term above 10x the detection losses is a sign its weight is off for the regime.

Weights: random (COCO scale: the zoo's FrozenBN with zero-initialised residuals, as
``bench_cost.py``), or trained checkpoints of the demo models (``--teacher-weights``,
``--student-weights``: the paper's regime, where the student is trained before distillation).
Records go to ``benchmarks/results/loss_scales.json``, one per (scale, detector, weights).

    python benchmarks/loss_scales.py --metrics output/replica/shapes/retinanet/gkd_s0 --detectors retinanet

reads a real training run instead: the losses Detectron2 logged in its ``metrics.json`` (each the
median of the last 20 iterations) at the first and the last logged iteration up to
``--iters`` (the replica's fine-tuning of a trained student with the defaults, on real batches).
"""
import argparse
import json
import os
import sys
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    RESULTS, SCALES, fill_prototypes, load_cfg, machine, random_batch, save, tame_frozen_bn, zoo_or_project_cfg,
)

from gkd_d2 import DistillationCheckpointer  # noqa: E402


def loss_ratios(losses):
    """{kd term: its value / sum of detection losses}, and that sum."""
    detection = sum(float(v.detach()) for k, v in losses.items() if not k.startswith("loss_kd_"))
    return {k: float(v.detach()) / detection for k, v in losses.items() if k.startswith("loss_kd_")}, detection


def run(detector, scale, iters, device, teacher_weights="", student_weights=""):
    configs, boxes, size, _ = SCALES[scale]
    teacher_yaml, _, gkd_yaml = configs[detector]
    num_classes = 80 if scale == "coco" else 5
    if not teacher_weights:  # random teacher, saved so the wrapper loads it the usual way
        tmp = tempfile.mkdtemp()
        teacher = tame_frozen_bn(build_model(zoo_or_project_cfg(teacher_yaml, ["MODEL.DEVICE", device])))
        DetectionCheckpointer(teacher, save_dir=tmp).save("teacher")
        teacher_weights = os.path.join(tmp, "teacher.pth")
    cfg = load_cfg(gkd_yaml, ["MODEL.DEVICE", device, "DISTILL.TEACHER.WEIGHTS", teacher_weights])
    model = build_model(cfg)
    if student_weights:
        DistillationCheckpointer(model).load(student_weights)
    else:
        tame_frozen_bn(model.student)
    model.train()
    fill_prototypes(model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=0.9)
    record = {}
    for it in range(iters):
        data = random_batch(boxes, size, num_classes=min(num_classes, 3), seed=100 + it)
        with EventStorage(it):
            losses = model(data)
        if it in (0, iters - 1):
            ratios, detection = loss_ratios(losses)
            record[f"iter{it}"] = {
                "detection_losses": detection,
                "kd": {k: float(losses[k]) for k in ratios},
                "ratio": ratios,
            }
            print(detector, scale, it, f"detection {detection:.3f}",
                  {k: f"{v:.3g}" for k, v in ratios.items()}, flush=True)
        opt.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)  # the demo configs' clipping, for both scales
        opt.step()
    return record


def from_metrics(run_dir, last_iter):
    """``{iterN: {...}}`` of a training run's ``metrics.json``: the first logged iteration and the
    last one <= ``last_iter``."""
    logged = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.json"))]
    logged = [m for m in logged if any(k.startswith("loss_kd_") for k in m) and m["iteration"] <= last_iter]
    record = {}
    for m in (logged[0], logged[-1]):
        losses = {k: torch.tensor(v) for k, v in m.items() if k.startswith("loss_")}
        ratios, detection = loss_ratios(losses)
        record[f"iter{m['iteration']}"] = {
            "detection_losses": detection, "kd": {k: m[k] for k in ratios}, "ratio": ratios,
        }
        print(run_dir, m["iteration"], f"detection {detection:.3f}", {k: f"{v:.3g}" for k, v in ratios.items()})
    return record


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="demo")
    p.add_argument("--detectors", nargs="+", default=["faster_rcnn", "retinanet"])
    p.add_argument("--iters", type=int, default=21, help="the last one is reported with iteration 0")
    p.add_argument("--device", default="cpu")
    p.add_argument("--teacher-weights", default="")
    p.add_argument("--student-weights", default="")
    p.add_argument("--metrics", default="", help="a training run's OUTPUT_DIR: its logged losses")
    args = p.parse_args()
    info = machine(args.device)
    if args.metrics:
        record = from_metrics(args.metrics, args.iters - 1)
        save(
            {"scale": args.scale, "detector": args.detectors[0], "weights": f"trained, real batches ({args.metrics})",
             "iters": args.iters, "device": info["hardware"], **record},
            os.path.join(RESULTS, "loss_scales.json"),
            key_fields=("scale", "detector", "weights", "device"),
        )
        return
    weights = "trained" if args.student_weights else "random"
    for detector in args.detectors:
        record = run(detector, args.scale, args.iters, args.device, args.teacher_weights, args.student_weights)
        save(
            {"scale": args.scale, "detector": detector, "weights": weights, "iters": args.iters,
             "device": info["hardware"], **record},
            os.path.join(RESULTS, "loss_scales.json"),
            key_fields=("scale", "detector", "weights", "device"),
        )


if __name__ == "__main__":
    main()
