#!/usr/bin/env python
"""The gkd_d2 demo, on CPU in minutes, in the paper's regime: distillation fine-tunes a student
that is already trained on the task, and is compared with the same fine-tuning without it.

1. generates the synthetic "ambiguous instances" dataset (COCO json + PNG images);
2. trains a small teacher (ResNet-34 FPN) from scratch;
3. trains the student (ResNet-18 FPN, 64 channels) alone: the trained student;
4. fine-tunes that student alone for ``--finetune-iters`` (the fair control);
5. fine-tunes the same student for as long with global knowledge (feature + response + global
   terms, gkd_d2's default options, prototypes regenerated every epoch);
6. evaluates the four with Detectron2's COCOEvaluator and prints one table.

    python tools/demo.py                        # RetinaNet (the fastest to train on a CPU)
    python tools/demo.py --detector faster_rcnn
    python tools/demo.py --iters 2000 --teacher-iters 3000   # longer: higher AP

Everything is trained from scratch (no ImageNet weights here), so absolute APs after a few
minutes of CPU training are low. The training set is large (2000 images) because with a few
hundred images from-scratch detectors memorise them (AP 13.5 on the training images, 1.6 on
validation).

Each stage is an ordinary ``tools/train_net.py`` run of a config in ``configs/Demo`` (the
commands are printed), so a stage that already finished is reused unless ``--retrain``.
"""
import argparse
import json
import logging
import os
import sys
import time

import torch
from detectron2.utils.logger import setup_logger

from gkd_d2 import DistillationCheckpointer, DistillTrainer
from gkd_d2.config import DEMO_CONFIGS, load_config
from gkd_d2.data.builtin import register_datasets_from_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
FINETUNE_ALONE, FINETUNE_GKD = "student fine-tuned alone", "student + global knowledge"


def load_cfg(path, opts):
    cfg = load_config(os.path.join(ROOT, path), opts)
    cfg.freeze()
    return cfg


def schedule(iters):
    """Step the learning rate down at 75% and 92% of the run, warm up over at most 20%."""
    return [
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.STEPS", f"({int(iters * 0.75)}, {int(iters * 0.92)})",
        "SOLVER.WARMUP_ITERS", str(min(100, max(1, iters // 5))),
    ]


def finetune_schedule(iters):
    """The paper's fine-tuning schedule, scaled: warm-up 5%, steps at 2/3 and 11/12."""
    return [
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.STEPS", f"({int(iters * 2 / 3)}, {int(iters * 11 / 12)})",
        "SOLVER.WARMUP_ITERS", str(max(1, iters // 20)),
    ]


def train_and_evaluate(cfg, retrain):
    """Train (unless a finished run is there) and evaluate with COCOEvaluator: params, APs."""
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if os.path.isfile(final) and not retrain:
        print(f"[demo]   reusing {final} (--retrain to train again); evaluating it", flush=True)
        model = DistillTrainer.build_model(cfg)
        DistillationCheckpointer(model).load(final)
        results = DistillTrainer.test(cfg, model)
    else:
        trainer = DistillTrainer(cfg)
        trainer.resume_or_load(resume=False)  # MODEL.WEIGHTS: the trained student, when fine-tuning
        trainer.train()  # Detectron2's EvalHook evaluates DATASETS.TEST after the last step
        results = trainer._last_eval_results
        model = trainer.model
    bbox = results["bbox"]  # one test dataset: DefaultTrainer.test returns its results
    net = model.student if hasattr(model, "student") else model
    params = sum(p.numel() for p in net.parameters()) / 1e6
    return {"params_M": params, **{k: bbox[k] for k in METRICS}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", choices=sorted(DEMO_CONFIGS), default="retinanet")
    parser.add_argument("--iters", type=int, default=800, help="iterations of the student trained alone")
    parser.add_argument("--finetune-iters", type=int, default=300,
                        help="iterations of both fine-tunings of the trained student (alone / distilled)")
    parser.add_argument("--teacher-iters", type=int, default=1200)
    parser.add_argument("--num-train", type=int, default=2000, help="synthetic training images")
    parser.add_argument("--num-val", type=int, default=200, help="synthetic validation images")
    parser.add_argument("--output", default="output/demo")
    parser.add_argument("--retrain", action="store_true", help="ignore finished stages")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0, help="SEED of every stage (-1: a random one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup_logger(name="fvcore")
    setup_logger(name="gkd_d2")
    setup_logger()
    logging.getLogger("detectron2").setLevel(logging.INFO)

    teacher_yaml, student_yaml, gkd_yaml = DEMO_CONFIGS[args.detector]
    out = os.path.join(args.output, args.detector)
    common = [  # every stage: the data and the seed
        "DATASETS.SYNTHETIC.NUM_TRAIN", str(args.num_train),
        "DATASETS.SYNTHETIC.NUM_VAL", str(args.num_val),
        "SEED", str(args.seed),
    ]
    teacher_dir, student_dir = os.path.join(out, "teacher"), os.path.join(out, "student")
    finetune = finetune_schedule(args.finetune_iters) + [
        "MODEL.WEIGHTS", os.path.join(student_dir, "model_final.pth"),
        "DISTILL.TEACHER.WEIGHTS", os.path.join(teacher_dir, "model_final.pth"),
    ]
    stages = [
        ("teacher", teacher_yaml, schedule(args.teacher_iters) + ["OUTPUT_DIR", teacher_dir]),
        ("trained student", student_yaml, schedule(args.iters) + ["OUTPUT_DIR", student_dir]),
        (  # the control: the same wrapper and schedule without any knowledge term
            FINETUNE_ALONE,
            gkd_yaml,
            finetune + ["OUTPUT_DIR", os.path.join(out, "finetune"), "DISTILL.KNOWLEDGE", "[]",
                        "DISTILL.PGM.ENABLED", "False"],
        ),
        (FINETUNE_GKD, gkd_yaml, finetune + ["OUTPUT_DIR", os.path.join(out, "gkd")]),
    ]
    table = {}
    start = time.perf_counter()
    for i, (name, yaml, opts) in enumerate(stages, 1):
        cfg = load_cfg(yaml, common + opts)
        if i == 1:
            register_datasets_from_cfg(cfg)
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        print(
            f"\n[demo] {i}/{len(stages)} {name}: {cfg.SOLVER.MAX_ITER} iterations "
            f"({time.perf_counter() - start:.0f} s so far)\n"
            f"[demo]   = python tools/train_net.py --config-file {yaml} {' '.join(common + opts)}",
            flush=True,
        )
        table[name] = train_and_evaluate(cfg, args.retrain)
        print(f"[demo] {name}: AP {table[name]['AP']:.1f} on {cfg.DATASETS.TEST[0]}", flush=True)

    header = f"{'model':<28}{'params':>8}" + "".join(f"{m:>7}" for m in METRICS)
    lines = [header, "-" * len(header)]
    for name, r in table.items():
        lines.append(
            f"{name:<28}{r['params_M']:>7.1f}M" + "".join(f"{r[m]:>7.1f}" for m in METRICS)
        )
    gain = table[FINETUNE_GKD]["AP"] - table[FINETUNE_ALONE]["AP"]
    lines.append(f"\ndistillation gain: {gain:+.1f} AP over the student fine-tuned alone "
                 f"({time.perf_counter() - start:.0f} s in all, {args.detector})")
    report = "\n".join(lines)
    print(f"\n[demo] COCO box AP on {args.num_val} synthetic validation images\n{report}")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(table, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
