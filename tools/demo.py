#!/usr/bin/env python
"""The gkd_d2 demo: about 15 minutes on two CPU cores, in the paper's regime: a student already
trained on the task is fine-tuned with distillation from a bigger teacher, and compared with the
same fine-tuning without it.

1. generates the "shapes" data (COCO json + PNG images, 96 px, ten classes);
2. trains the teacher, a ResNet-34 FPN-128, from scratch;
3. trains the student, a half-width ResNet-18 FPN-64 (0.21 of the teacher's FLOPs), alone;
4. fine-tunes that student alone for ``--finetune-iters`` (the fair control);
5. fine-tunes the same student for as long with global knowledge (feature + response + global
   terms, gkd_d2's default options, prototypes regenerated every epoch);
6. evaluates the four with Detectron2's COCOEvaluator and prints one table.

    python tools/demo.py                        # Faster R-CNN
    python tools/demo.py --detector retinanet
    python tools/demo.py --seed 1               # another seed of every stage

The models are those of ``configs/MakeDemo`` (the seed and the schedules come from the command
line). Each stage is an ordinary ``tools/train_net.py`` run (the commands are printed), so a
stage that already finished is reused unless ``--retrain``. Each stage runs in its own process
with its log in ``<OUTPUT_DIR>/log.txt``; its progress (iterations, time left) is printed here.
With ``--jobs 2`` (the default on two or more cores) the teacher trains on one thread while the
student, then its fine-tuning alone, train on the other, after which the teacher takes every
thread; the fine-tuning with global knowledge, which needs both, then takes every thread.
``--jobs 1``: one stage after the other. ``benchmarks/demo_gain.py`` records the demo's gain on
several seeds (``benchmarks/results/demo.json``).
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
from detectron2.engine import HookBase
from detectron2.utils.logger import setup_logger

from gkd_d2 import DistillationCheckpointer, DistillTrainer
from gkd_d2.config import load_config
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.data.generated import GENERATED_DATASETS, generated_dataset_opts
from gkd_d2.schedule import METRICS, finetune_schedule, schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the demo's (teacher, student alone, distillation) configs per detector
MAKE_DEMO_CONFIGS = {
    det: (f"configs/MakeDemo/teacher_{det}_R34_FPN.yaml", f"configs/MakeDemo/student_{det}_R18w32_FPN.yaml",
          f"configs/MakeDemo/gkd_{det}_R34_to_R18w32_FPN.yaml")
    for det in ("faster_rcnn", "retinanet")
}
FINETUNE_ALONE, FINETUNE_GKD = "student fine-tuned alone", "student + global knowledge"


def load_cfg(path, opts):
    cfg = load_config(os.path.join(ROOT, path), opts)
    cfg.freeze()
    return cfg


class ConsoleProgress(HookBase):
    """Prints the stage's progress to ``stream`` (the console, while the stage's own output goes
    to its log file) every ``every`` seconds and after the last step:
    ``[demo]   teacher: iteration 200/600, 0.71 s/it, about 5 min left``."""

    def __init__(self, stage, stream, every=60.0):
        self.stage, self.stream, self.every = stage, stream, every

    def before_train(self):
        self._first = None  # (time, iteration) after the first step: the rate leaves out its set-up

    def after_step(self):
        now, it, total = time.perf_counter(), self.trainer.iter + 1, self.trainer.max_iter
        if self._first is None:
            self._first = self._last = now, it
            return
        if now - self._last[0] < self.every and it < total:
            return
        self._last = now, it
        per_iter = (now - self._first[0]) / max(1, it - self._first[1])
        left = per_iter * (total - it)
        left = f"about {left / 60:.0f} min left" if left >= 90 else f"about {left:.0f} s left"
        print(f"[demo]   {self.stage}: iteration {it}/{total}, {per_iter:.2f} s/it, {left}",
              file=self.stream, flush=True)


class MoreThreads(HookBase):
    """Raises the stage's torch threads to ``threads`` once ``event`` (a multiprocessing Event)
    is set: the teacher takes the second core when the stages beside it have finished."""

    def __init__(self, event, threads, period=10):
        self.event, self.threads, self.period = event, threads, period

    def after_step(self):
        if self.event is not None and self.trainer.iter % self.period == 0 and self.event.is_set():
            torch.set_num_threads(self.threads)
            self.event = None


def train_and_evaluate(cfg, retrain, hooks=()):
    """Train (unless a finished run is there) and evaluate with COCOEvaluator: params, APs.
    ``hooks``: added to the trainer (:class:`ConsoleProgress`, :class:`MoreThreads`)."""
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if os.path.isfile(final) and not retrain:
        print(f"[demo]   reusing {final} (--retrain to train again); evaluating it", flush=True)
        model = DistillTrainer.build_model(cfg)
        DistillationCheckpointer(model).load(final)
        results = DistillTrainer.test(cfg, model)
    else:
        trainer = DistillTrainer(cfg)
        trainer.register_hooks(list(hooks))
        trainer.resume_or_load(resume=False)  # MODEL.WEIGHTS: the trained student, when fine-tuning
        trainer.train()  # Detectron2's EvalHook evaluates DATASETS.TEST after the last step
        results = trainer._last_eval_results
        model = trainer.model
    bbox = results["bbox"]  # one test dataset: DefaultTrainer.test returns its results
    net = model.student if hasattr(model, "student") else model
    params = sum(p.numel() for p in net.parameters()) / 1e6
    return {"params_M": params, **{k: bbox[k] for k in METRICS}}


def run_stage(name, yaml, opts, retrain, threads, more_threads=None):
    """One stage in its own process (spawned): its stdout / stderr go to OUTPUT_DIR/log.txt, its
    progress to the console. ``more_threads``: (event, threads) for :class:`MoreThreads`.
    Returns :func:`train_and_evaluate`'s row and ``seconds``, the stage's time in its process.
    The stage's full config goes to OUTPUT_DIR/config.yaml (``tools/export_student.py`` reads it)."""
    cfg = load_cfg(yaml, opts)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    log = open(os.path.join(cfg.OUTPUT_DIR, "log.txt"), "a", buffering=1)
    console = sys.stdout
    sys.stdout = sys.stderr = log
    torch.set_num_threads(threads)
    setup_logger(name="fvcore")
    setup_logger(name="gkd_d2")
    setup_logger()
    logging.getLogger("detectron2").setLevel(logging.INFO)
    register_datasets_from_cfg(cfg)  # already generated by the parent: registers only
    hooks = [ConsoleProgress(name, console)] + ([MoreThreads(*more_threads)] if more_threads else [])
    began = time.perf_counter()
    row = {**train_and_evaluate(cfg, retrain, hooks), "seconds": time.perf_counter() - began}
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")  # as train_net.py's default_setup
    with open(path + ".tmp", "w") as f:
        f.write(cfg.dump())
    os.replace(path + ".tmp", path)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", choices=sorted(MAKE_DEMO_CONFIGS), default="faster_rcnn")
    parser.add_argument("--iters", type=int, default=400, help="iterations of the student trained alone")
    parser.add_argument("--finetune-iters", type=int, default=200,
                        help="iterations of both fine-tunings of the trained student (alone / distilled)")
    parser.add_argument("--teacher-iters", type=int, default=600)
    parser.add_argument("--dataset", choices=sorted(GENERATED_DATASETS), default="shapes",
                        help="the generated data: 'shapes' (ten classes a small detector learns, a minority of "
                             "ambiguous instances; gkd_d2/data/generated/shapes.py) or 'synth' (ambiguous instances, "
                             "hard for every detector; gkd_d2/data/generated/synthetic.py)")
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

    teacher_yaml, student_yaml, gkd_yaml = MAKE_DEMO_CONFIGS[args.detector]
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
    start = time.perf_counter()
    print(f"[demo] the '{args.dataset}' data: {args.num_train} + {args.num_val} images (generated once)", flush=True)
    register_datasets_from_cfg(load_cfg(teacher_yaml, common))  # generates the data, once
    table = {}
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited thread pools

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=spawn, max_tasks_per_child=1) as pool, spawn.Manager() as manager:

        def launch(stage, threads, more_threads=None):
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
            return name, log, pool.submit(run_stage, name, yaml, opts, args.retrain, threads, more_threads)

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
            alone_done = manager.Event()  # then the teacher takes every thread
            running_teacher = launch(teacher, half, (alone_done, args.threads))
            finish(launch(student, half))
            finish(launch(control, half))
            alone_done.set()
            finish(running_teacher)
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
