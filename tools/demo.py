#!/usr/bin/env python
"""The gkd_d2 demo, on CPU in minutes, in the paper's regime: distillation fine-tunes a student
that is already trained on the task, and is compared with the same fine-tuning without it.

1. generates the "shapes" dataset (COCO json + PNG images; ``--dataset synth``: the harder
   "ambiguous instances" data);
2. trains a small teacher (ResNet-34 FPN) from scratch;
3. trains the student (ResNet-18 FPN, 64 channels) alone: the trained student;
4. fine-tunes that student alone for ``--finetune-iters`` (the fair control);
5. fine-tunes the same student for as long with global knowledge (feature + response + global
   terms, gkd_d2's default options, prototypes regenerated every epoch);
6. evaluates the four with Detectron2's COCOEvaluator and prints one table.

    python tools/demo.py                        # Faster R-CNN
    python tools/demo.py --detector retinanet
    python tools/demo.py --teacher-iters 2400 --iters 1200 --finetune-iters 1200   # the replica's lengths

Everything is trained from scratch (no ImageNet weights here), so absolute APs after a few
minutes of CPU training are low, and the teacher, trained for minutes too, knows the classes
only a little better than the student: the demo shows the pipeline, ``benchmarks/replica.py``
measures the gain (teachers trained for hours, several seeds).

Each stage is an ordinary ``tools/train_net.py`` run of a config in ``configs/Demo`` (the
commands are printed), so a stage that already finished is reused unless ``--retrain``.
Each stage runs in its own process with its log in ``<OUTPUT_DIR>/log.txt``. With ``--jobs 2``
(the default on two or more cores) the teacher trains on half the threads while the student,
then its fine-tuning alone, train on the other half (the control's unused teacher is the
trained student, so it need not wait for the teacher); the fine-tuning with global knowledge,
which needs both, then takes every thread. ``--jobs 1``: one stage after the other.
"""
import argparse
import json
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from detectron2.utils.logger import setup_logger

from gkd_d2 import DistillationCheckpointer, DistillTrainer
from gkd_d2.config import DEMO_CONFIGS, load_config
from gkd_d2.data.builtin import GENERATED_DATASETS, generated_dataset_opts, register_datasets_from_cfg

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


def run_stage(yaml, opts, retrain, threads):
    """One stage in its own process (spawned): its stdout / stderr go to OUTPUT_DIR/log.txt.
    Returns :func:`train_and_evaluate`'s row and ``seconds``, the stage's time in its process.
    The stage's full config goes to OUTPUT_DIR/config.yaml (``tools/export_student.py`` reads it)."""
    cfg = load_cfg(yaml, opts)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    log = open(os.path.join(cfg.OUTPUT_DIR, "log.txt"), "a", buffering=1)
    sys.stdout = sys.stderr = log
    torch.set_num_threads(threads)
    setup_logger(name="fvcore")
    setup_logger(name="gkd_d2")
    setup_logger()
    logging.getLogger("detectron2").setLevel(logging.INFO)
    register_datasets_from_cfg(cfg)  # already generated by the parent: registers only
    began = time.perf_counter()
    row = {**train_and_evaluate(cfg, retrain), "seconds": time.perf_counter() - began}
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")  # as train_net.py's default_setup
    with open(path + ".tmp", "w") as f:
        f.write(cfg.dump())
    os.replace(path + ".tmp", path)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", choices=sorted(DEMO_CONFIGS), default="faster_rcnn")
    parser.add_argument("--iters", type=int, default=220, help="iterations of the student trained alone")
    parser.add_argument("--finetune-iters", type=int, default=220,
                        help="iterations of both fine-tunings of the trained student (alone / distilled)")
    parser.add_argument("--teacher-iters", type=int, default=440)
    parser.add_argument("--dataset", choices=sorted(GENERATED_DATASETS), default="shapes",
                        help="the generated data: 'shapes' (ten classes a small detector learns, a minority of "
                             "ambiguous instances; gkd_d2/data/shapes.py) or 'synth' (ambiguous instances, "
                             "hard for every detector; gkd_d2/data/synthetic.py)")
    parser.add_argument("--num-train", type=int, default=2000, help="generated training images")
    parser.add_argument("--num-val", type=int, default=200, help="generated validation images")
    parser.add_argument("--output", default="output/demo")
    parser.add_argument("--retrain", action="store_true", help="ignore finished stages")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads in all")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count()),
                        help="1: the two fine-tunings one after the other; 2: side by side")
    parser.add_argument("--seed", type=int, default=0, help="SEED of every stage (-1: a random one)")
    args = parser.parse_args()
    if args.jobs not in (1, 2) or args.threads < 1:
        parser.error(f"--jobs must be 1 or 2 (got {args.jobs}), --threads at least 1 (got {args.threads})")
    short = {k: v for k, v in vars(args).items() if k.endswith("iters") and v < 10}
    if short:  # fewer leave the learning-rate steps of the schedules on top of each other
        parser.error(f"every schedule needs at least 10 iterations (got {short})")
    setup_logger(name="gkd_d2")

    teacher_yaml, student_yaml, gkd_yaml = DEMO_CONFIGS[args.detector]
    out = os.path.join(args.output, args.detector)
    node = GENERATED_DATASETS[args.dataset][0]
    common = generated_dataset_opts(args.dataset) + [  # every stage: the data and the seed
        f"DATASETS.{node}.NUM_TRAIN", str(args.num_train),
        f"DATASETS.{node}.NUM_VAL", str(args.num_val),
        "SEED", str(args.seed),
    ]
    teacher_dir, student_dir = os.path.join(out, "teacher"), os.path.join(out, "student")
    student_weights = os.path.join(student_dir, "model_final.pth")
    finetune = finetune_schedule(args.finetune_iters) + ["MODEL.WEIGHTS", student_weights]
    teacher = ("teacher", teacher_yaml, schedule(args.teacher_iters) + ["OUTPUT_DIR", teacher_dir])
    student = ("trained student", student_yaml, schedule(args.iters) + ["OUTPUT_DIR", student_dir])
    # The fair control: the same wrapper (frozen student BatchNorm), schedule and seed, without any
    # knowledge term. Its teacher is never run, so the trained student stands in for it: the
    # control can start before the teacher has finished.
    control = (FINETUNE_ALONE, gkd_yaml, finetune + [
        "OUTPUT_DIR", os.path.join(out, "finetune"), "DISTILL.KNOWLEDGE", "[]", "DISTILL.PGM.ENABLED", "False",
        "DISTILL.TEACHER.CONFIG_FILE", os.path.join(ROOT, student_yaml), "DISTILL.TEACHER.WEIGHTS", student_weights,
    ])
    distilled = (FINETUNE_GKD, gkd_yaml, finetune + [
        "OUTPUT_DIR", os.path.join(out, "gkd"), "DISTILL.TEACHER.CONFIG_FILE", os.path.join(ROOT, teacher_yaml),
        "DISTILL.TEACHER.WEIGHTS", os.path.join(teacher_dir, "model_final.pth"),
    ])
    register_datasets_from_cfg(load_cfg(teacher_yaml, common))  # generates the data, once
    table = {}
    start = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited thread pools

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=spawn) as pool:

        def launch(stage, threads):
            name, yaml, opts = stage
            opts = common + opts
            cfg = load_cfg(yaml, opts)
            log = os.path.join(cfg.OUTPUT_DIR, "log.txt")
            print(
                f"\n[demo] {name}: {cfg.SOLVER.MAX_ITER} iterations, {threads} thread(s), log in {log} "
                f"({time.perf_counter() - start:.0f} s so far)\n"
                f"[demo]   = python tools/train_net.py --config-file {yaml} {' '.join(opts)}",
                flush=True,
            )
            return name, log, pool.submit(run_stage, yaml, opts, args.retrain, threads)

        def finish(launched):
            name, log, future = launched
            try:
                table[name] = future.result()
            except Exception as e:
                sys.exit(f"[demo] {name} failed ({type(e).__name__}: {e}); its log: {log}")
            print(f"[demo] {name}: AP {table[name]['AP']:.1f} in {table[name]['seconds']:.0f} s "
                  f"({time.perf_counter() - start:.0f} s so far)", flush=True)

        if args.jobs == 2:  # the teacher on one core; the student, then its fine-tuning alone, on the other
            half = max(1, args.threads // 2)
            running_teacher, running_student = launch(teacher, half), launch(student, half)
            finish(running_student)
            running_control = launch(control, half)
            finish(running_teacher)
            finish(running_control)
        else:
            for stage in (teacher, student, control):
                finish(launch(stage, args.threads))
        finish(launch(distilled, args.threads))  # needs the teacher and the student: every thread

    order = [teacher[0], student[0], FINETUNE_ALONE, FINETUNE_GKD]
    table = {name: table[name] for name in order}
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
    print(f"\n[demo] COCO box AP on {args.num_val} validation images of the '{args.dataset}' data\n{report}")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(table, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
