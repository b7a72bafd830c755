#!/usr/bin/env python
"""CPU/GPU-scale replica of the paper's comparison (Tables 1, 2, 4): AP of each method.

    python benchmarks/investigations/quality.py --detector faster_rcnn --device cuda --seeds 0 1 \
        --methods student gkd feature response global defeat kd fitnet fgfi rkd chen

Data: the synthetic "ambiguous instances" COCO dataset (``--num-train`` images of
``--image-size`` px, 64... validation images). Models: the demo's teacher (ResNet-34 FPN-128)
trained once from scratch, and the demo's student (ResNet-18 FPN-64) trained from scratch for
every row and seed with the same schedule. Each row appends a record
``{detector, method, seed, AP, AP50, AP75, APs, APm, APl, device, ...}`` to
``benchmarks/investigations/results/quality.json`` (replacing an older record of the same row).
"""
import argparse
import logging
import os
import sys

import torch
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from common import DEMO_CONFIGS, INVESTIGATION_RESULTS as RESULTS, METHODS, METRICS, load_cfg, machine, save, train_eval  # noqa: E402

from gkd_d2 import DistillationCheckpointer, DistillTrainer  # noqa: E402
from gkd_d2.data.builtin import register_datasets_from_cfg  # noqa: E402

# This replica trains every student from scratch (the regime before benchmarks/replica.py) with
# the paper-text forms its recorded figures were measured with: these options reproduce them.
FROM_SCRATCH_OPTS = [
    "MODEL.WEIGHTS", "", "DISTILL.FREEZE_STUDENT_BN", "False", "DISTILL.ATTENUATION", "False",
    "DISTILL.RESPONSE.FORM", "paper", "DISTILL.FEATURE.ADAPTER_RELU", "True",
    "DISTILL.FEATURE.LEVEL_REDUCTION", "mean",
]


def from_scratch_schedule(iters, ims, lr):
    """The schedule this replica's records were measured with (warm-up 10%, at most 200
    iterations; steps at 3/4 and 23/25); the current runs use :mod:`gkd_d2.schedule`."""
    return [
        "SOLVER.MAX_ITER", str(iters), "SOLVER.IMS_PER_BATCH", str(ims), "SOLVER.BASE_LR", str(lr),
        "SOLVER.STEPS", f"({int(iters * 0.75)}, {int(iters * 0.92)})",
        "SOLVER.WARMUP_ITERS", str(min(200, iters // 10)),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", choices=sorted(DEMO_CONFIGS), default="faster_rcnn")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=["student", "gkd"])
    p.add_argument("--teacher-iters", type=int, default=3000)
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--ims-per-batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=300)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--output", default="output/quality")
    p.add_argument("--teacher-weights", default="", help="a teacher already trained on this data (else trained here)")
    p.add_argument("--workers", type=int, default=4, help="DATALOADER.NUM_WORKERS")
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides of the distillation runs")
    p.add_argument("--results", default=os.path.join(RESULTS, "quality.json"),
                   help="the json list the records go to (another file for a separate experiment)")
    p.add_argument("--tag", default="", help="appended to the method name of the records (with --opts)")
    args = p.parse_args()
    setup_logger()
    setup_logger(name="gkd_d2")
    logging.getLogger("detectron2").setLevel(logging.INFO)
    teacher_yaml, student_yaml, gkd_yaml = DEMO_CONFIGS[args.detector]
    out = os.path.join(args.output, args.detector)
    common = [
        "MODEL.DEVICE", args.device, "DATALOADER.NUM_WORKERS", str(args.workers),
        "DATASETS.SYNTHETIC.ROOT", os.path.join(args.output, "data"),
        "DATASETS.SYNTHETIC.NUM_TRAIN", str(args.num_train), "DATASETS.SYNTHETIC.NUM_VAL", str(args.num_val),
        "DATASETS.SYNTHETIC.IMAGE_SIZE", str(args.image_size),
    ]
    path = args.results
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    info = machine(args.device)
    base = {"detector": args.detector, "device": info["hardware"],
            "train_images": args.num_train, "val_images": args.num_val, "image_size": args.image_size}

    teacher_dir = os.path.join(out, "teacher")
    teacher_w = args.teacher_weights or os.path.join(teacher_dir, "model_final.pth")
    cfg = load_cfg(teacher_yaml, common + from_scratch_schedule(args.teacher_iters, args.ims_per_batch, args.lr) + ["OUTPUT_DIR", teacher_dir])
    register_datasets_from_cfg(cfg)
    if not os.path.isfile(teacher_w):
        seed_all_rng(0)
        ap, sec = train_eval(cfg)
        save({**base, "method": "teacher", "seed": 0, "iters": args.teacher_iters, "train_s": sec, **ap}, path)
        print("teacher", ap, f"{sec:.0f}s", flush=True)
    elif "teacher" in args.methods:  # a finished teacher: evaluate it for its row
        model = DistillTrainer.build_model(cfg)
        DistillationCheckpointer(model).load(teacher_w)
        bbox = DistillTrainer.test(cfg, model)["bbox"]
        ap = {k: float(bbox[k]) for k in METRICS}
        save({**base, "method": "teacher", "seed": 0, "iters": args.teacher_iters, "weights": teacher_w, **ap}, path)
        print("teacher", ap, flush=True)
    for seed in args.seeds:
        for method in [m for m in args.methods if m != "teacher"]:
            run_dir = os.path.join(out, f"{method}{args.tag if method != 'student' else ''}_s{seed}")
            opts = common + from_scratch_schedule(args.iters, args.ims_per_batch, args.lr) + ["OUTPUT_DIR", run_dir, "SEED", str(seed)]
            if method == "student":
                cfg = load_cfg(student_yaml, opts)
            else:
                knowledge, pgm, selection = METHODS[method]
                cfg = load_cfg(gkd_yaml, opts + FROM_SCRATCH_OPTS + ["DISTILL.TEACHER.WEIGHTS", teacher_w, "DISTILL.PGM.ENABLED", str(pgm),
                                                 "DISTILL.PGM.SELECTION", selection])
                cfg.DISTILL.KNOWLEDGE = knowledge
                cfg.merge_from_list(list(args.opts))
            name = method if method == "student" else method + args.tag
            seed_all_rng(seed)
            ap, sec = train_eval(cfg)
            record = {**base, "method": name, "seed": seed, "iters": args.iters, "train_s": sec, **ap}
            save({**record, "opts": list(args.opts)} if args.opts and method != "student" else record, path)
            print(name, seed, ap, f"{sec:.0f}s", flush=True)


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    main()
