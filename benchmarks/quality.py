#!/usr/bin/env python
"""CPU/GPU-scale replica of the paper's comparison (Tables 1, 2, 4): AP of each method.

    python benchmarks/quality.py --detector faster_rcnn --device cuda --seeds 0 1 \
        --methods student gkd feature response global defeat kd fitnet fgfi rkd chen

Data: the synthetic "ambiguous instances" COCO dataset (``--num-train`` images of
``--image-size`` px, 64... validation images). Models: the demo's teacher (ResNet-34 FPN-128)
trained once from scratch, and the demo's student (ResNet-18 FPN-64) trained from scratch for
every row and seed with the same schedule. Each row appends a record
``{detector, method, seed, AP, AP50, AP75, APs, APm, APl, device, ...}`` to
``benchmarks/results/quality.json`` (replacing an older record of the same row).
"""
import argparse
import datetime
import fcntl
import json
import logging
import os
import sys
import time

import torch
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, load_cfg, machine  # noqa: E402

from gkd_d2 import DistillationCheckpointer, DistillTrainer  # noqa: E402
from gkd_d2.config import DEMO_CONFIGS  # noqa: E402
from gkd_d2.data.builtin import register_datasets_from_cfg  # noqa: E402
from gkd_d2.utils import unwrap_model  # noqa: E402

CONFIGS = DEMO_CONFIGS  # the name probe_data.py imports
# method name -> (DISTILL.KNOWLEDGE, prototypes on, DISTILL.PGM.SELECTION)
METHODS = {
    "gkd": (["feature", "response", "global"], True, "pgm"),
    # module ablation (Table 3)
    "feature": (["feature"], False, "pgm"),
    "response": (["response"], False, "pgm"),
    "global": (["global"], True, "pgm"),
    "feature+global": (["feature", "global"], True, "pgm"),
    "response+global": (["response", "global"], True, "pgm"),
    "feature+response": (["feature", "response"], False, "pgm"),
    # prototype ablation (Table 6): the full method with other prototypes
    "gkd-kmeans": (["feature", "response", "global"], True, "kmeans"),
    "gkd-random": (["feature", "response", "global"], True, "random"),
    "gkd-ambiguous": (["feature", "response", "global"], True, "ambiguous"),
    # local-knowledge methods (Tables 1, 2) and their +prototypes variants (Table 4)
    "chen": (["chen_cls", "chen_reg", "chen_hint"], False, "pgm"),
    "fitnet": (["fitnet"], False, "pgm"),
    "fgfi": (["fgfi"], False, "pgm"),
    "defeat": (["defeat"], False, "pgm"),
    "defeat+prototypes": (["defeat"], True, "pgm"),
    "rkd": (["rkd"], False, "pgm"),
    "kd": (["kd"], False, "pgm"),
    "kd+prototypes": (["kd"], True, "pgm"),
}
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# This replica trains every student from scratch (the regime before benchmarks/replica.py) with
# the paper-text forms its recorded figures were measured with: these options reproduce them.
FROM_SCRATCH_OPTS = [
    "MODEL.WEIGHTS", "", "DISTILL.FREEZE_STUDENT_BN", "False", "DISTILL.ATTENUATION", "False",
    "DISTILL.RESPONSE.FORM", "paper", "DISTILL.FEATURE.ADAPTER_RELU", "True",
    "DISTILL.FEATURE.LEVEL_REDUCTION", "mean",
]


def schedule(iters, ims, lr):
    return [
        "SOLVER.MAX_ITER", str(iters), "SOLVER.IMS_PER_BATCH", str(ims), "SOLVER.BASE_LR", str(lr),
        "SOLVER.STEPS", f"({int(iters * 0.75)}, {int(iters * 0.92)})",
        "SOLVER.WARMUP_ITERS", str(min(200, iters // 10)),
    ]


def train_eval(cfg):
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model = unwrap_model(trainer.model)
    bbox = DistillTrainer.test(cfg, model)["bbox"]
    return {k: float(bbox[k]) for k in METRICS}, seconds


def save(record, path, key_fields=("detector", "method", "seed", "device")):
    """Add ``record`` to the json list at ``path``, replacing the record with the same
    ``key_fields``; safe for several processes sharing one results file (an exclusive lock around
    read-modify-write, and the new list renamed into place). ``date`` is set to now: when the
    row finished."""
    record = {**record, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    key = lambda r: tuple(r.get(k) for k in key_fields)  # noqa: E731
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = json.load(open(path)) if os.path.isfile(path) else []
        records = [r for r in records if key(r) != key(record)] + [record]
        with open(path + ".tmp", "w") as f:
            json.dump(records, f, indent=1)
        os.replace(path + ".tmp", path)


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
    cfg = load_cfg(teacher_yaml, common + schedule(args.teacher_iters, args.ims_per_batch, args.lr) + ["OUTPUT_DIR", teacher_dir])
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
            opts = common + schedule(args.iters, args.ims_per_batch, args.lr) + ["OUTPUT_DIR", run_dir, "SEED", str(seed)]
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
