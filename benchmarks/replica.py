#!/usr/bin/env python
"""Replica v2: the paper's regime on the demo models. Distillation fine-tunes a student that is
already trained on the task, and every row is compared with the same student fine-tuned for the
same schedule without distillation (``student-finetune``, the fair control).

    python benchmarks/replica.py --detector retinanet --dataset synth --seeds 0 1 2 \
        --rows student-finetune gkd response response+global

1. the teacher (demo ResNet-34 FPN-128) and the student (ResNet-18 FPN-64) are each trained
   alone (``--teacher-iters``, ``--student-iters``), evaluated at six evenly spaced points; the
   records ``teacher`` and ``student-pretrained`` keep the curve (``curve``: [[iter, AP], ...])
   so the plateau shows (the last two points);
2. every row starts from that same trained student and runs ``--iters`` iterations (by default
   as many as the student was trained, the paper's ratio: 24 epochs of distillation after a
   24-epoch student; on a quarter of that the default feature term's first transient fills
   most of the run, ``benchmarks/NOTES.md``) with the same schedule (warm-up 5%, steps at 2/3
   and 11/12, as the paper's 500 / 16 / 22 of 24 epochs); ``student-finetune`` has no knowledge term (``DISTILL.KNOWLEDGE []``, the same
   wrapper, the same frozen BatchNorm), the others have the gkd_d2 defaults except the terms
   of their row (``common.METHODS``) and ``--opts``; ``--student-weights`` starts them from
   another student instead (a second round from a control's exported student, to see whether
   the student has reached its plateau and whether distillation still helps there).

Records go to ``benchmarks/results/quality_finetune.json``, one per (detector, dataset, method,
seed): ``{detector, dataset, method, seed, AP, AP50, AP75, APs, APm, APl, device, date}`` plus
``opts`` when options other than the defaults were given. A finished row is skipped unless
``--rerun``. ``--dataset``: ``synth`` (the "ambiguous instances" data) or ``shapes`` (learnable
classes, an ambiguous minority).
"""
import argparse
import json
import logging
import os
import sys

import torch
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    DATA_SIZES, DEMO_CONFIGS, METHODS, METRICS, RESULTS, data_opts, load_cfg, machine, plateau_search, save,
    train_eval,
)

from gkd_d2.data.builtin import register_datasets_from_cfg  # noqa: E402
from gkd_d2.data.generated import GENERATED_DATASETS  # noqa: E402
from gkd_d2.schedule import FINETUNE_STEPS, TRAIN_STEPS, schedule  # noqa: E402

ROWS = ["student-finetune"] + list(METHODS)
KEY = ("detector", "dataset", "method", "seed", "device")


def solver(iters, ims, lr, steps=TRAIN_STEPS):
    """The shared schedule rule (:mod:`gkd_d2.schedule`) with the replica's batch and learning rate."""
    return schedule(iters, steps) + ["SOLVER.IMS_PER_BATCH", str(ims), "SOLVER.BASE_LR", str(lr)]


def eval_curve(output_dir, iters):
    """[[iteration, AP], ...] of the evaluations in OUTPUT_DIR/metrics.json."""
    curve = []
    for line in open(os.path.join(output_dir, "metrics.json")):
        m = json.loads(line)
        if "bbox/AP" in m:
            curve.append([min(m["iteration"] + 1, iters), m["bbox/AP"]])
    return curve


def finished(path, record):
    if not os.path.isfile(path):
        return False
    return any(all(r.get(k) == record[k] for k in KEY) for r in json.load(open(path)))


def pretrain(name, yaml, opts, iters, args, base, path, out=None):
    """Train one model alone for ITERS, evaluated 6 times. Returns (weights, record): the record
    keeps the curve. A run whose model_final.pth exists is not trained again."""
    out = out or os.path.join(args.output, name)
    weights = os.path.join(out, "model_final.pth")
    record = {**base, "method": name, "seed": 0, "iters": iters}
    if not os.path.isfile(weights):
        cfg = load_cfg(yaml, opts + solver(iters, args.ims_per_batch, args.lr)
                       + ["OUTPUT_DIR", out, "TEST.EVAL_PERIOD", str(max(1, iters // 6))])
        seed_all_rng(0)
        ap, sec = train_eval(cfg)
        record.update(train_s=sec, curve=eval_curve(out, iters), **ap)
        save(record, path, KEY)
        print(name, ap, "curve", record["curve"], flush=True)
    else:
        old = [r for r in json.load(open(path)) if all(r.get(k) == record.get(k) for k in (*KEY, "iters"))] \
            if os.path.isfile(path) else []
        record = old[-1] if old else {**record, "curve": eval_curve(out, iters)}
        record.setdefault("AP", record["curve"][-1][1] if record.get("curve") else float("nan"))
    return weights, record


def pretrain_to_plateau(name, yaml, opts, first, args, base, path):
    """``pretrain`` for FIRST iterations, then, with ``--plateau-tol``, for twice as long and
    again until the AP of two successive schedules differs by less than the tolerance (each in its
    own folder ``<name>_it<iters>``). The record of ``name`` is the last schedule's, with
    ``plateau: {tol, schedules: [[iters, AP], ...], reached}``; with ``--plateau-tol`` the name
    (record and folder) carries the ``--schedule-tag``. Returns (weights, iters)."""
    if args.plateau_tol > 0:
        name += args.schedule_tag
    records = {}

    def train(n):
        out = os.path.join(args.output, name if n == first else f"{name}_it{n}")
        weights, records[n] = pretrain(name, yaml, opts, n, args, base, path, out)
        return weights, records[n]["AP"]

    weights, iters, schedules, reached = plateau_search(train, first, args.plateau_tol, args.max_pretrain_iters)
    if args.plateau_tol > 0:
        save({**records[iters], "plateau": {"tol": args.plateau_tol, "schedules": schedules, "reached": reached}},
             path, KEY)
        print(name, "plateau" if reached else "NO plateau by --max-pretrain-iters", schedules, flush=True)
    return weights, iters


def reuse_teacher(weights, yaml, opts, iters, args, base, path, source):
    """A teacher trained elsewhere with the same schedule on the same data: evaluated, recorded
    as ``teacher`` (with ``weights_from``; its curve is the run's own, when it has one)."""
    out = os.path.join(args.output, "teacher" + args.tag)
    record = {**base, "method": "teacher" + args.tag, "seed": 0}
    if not finished(path, record) or args.rerun:
        from detectron2.modeling import build_model
        from detectron2.checkpoint import DetectionCheckpointer
        from gkd_d2 import DistillTrainer

        cfg = load_cfg(yaml, opts + ["OUTPUT_DIR", out])
        model = build_model(cfg)
        DetectionCheckpointer(model).load(weights)
        bbox = DistillTrainer.test(cfg, model)["bbox"]
        ap = {k: float(bbox[k]) for k in METRICS}
        metrics = os.path.join(os.path.dirname(weights), "metrics.json")
        curve = eval_curve(os.path.dirname(weights), iters) if os.path.isfile(metrics) else []
        save({**record, "iters": iters, "weights_from": source, "curve": curve, **ap}, path, KEY)
        print("teacher (reused)", ap, "curve", curve, flush=True)
    return weights


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", choices=sorted(DEMO_CONFIGS), default="retinanet")
    p.add_argument("--dataset", choices=sorted(GENERATED_DATASETS), default="synth")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=["student-finetune", "gkd"], choices=ROWS)
    p.add_argument("--teacher-iters", type=int, default=2400)
    p.add_argument("--student-iters", type=int, default=2400)
    p.add_argument("--iters", type=int, default=0,
                   help="fine-tuning iterations of every row (default: --student-iters, the paper's 1:1)")
    p.add_argument("--ims-per-batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01, help="pre-training and fine-tuning learning rate")
    p.add_argument("--num-train", type=int, default=DATA_SIZES[0])
    p.add_argument("--num-val", type=int, default=DATA_SIZES[1])
    p.add_argument("--image-size", type=int, default=DATA_SIZES[2])
    p.add_argument("--workers", type=int, default=0, help="DATALOADER.NUM_WORKERS")
    p.add_argument("--plateau-tol", type=float, default=0.0,
                   help="train the teacher and the student alone on doubled schedules until two successive "
                        "schedules' AP differ by less than this (e.g. 0.3), then fine-tune every row as long "
                        "as the student was trained; needs a --schedule-tag; 0: one schedule each")
    p.add_argument("--max-pretrain-iters", type=int, default=38400,
                   help="with --plateau-tol: the longest schedule tried")
    p.add_argument("--output", default="")
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides of the distillation rows")
    p.add_argument("--tag", default="",
                   help="appended to the method names (with --opts, or with --teacher-weights: the rows of "
                        "another teacher, its record 'teacher<tag>'; the control is shared)")
    p.add_argument("--schedule-tag", default="",
                   help="appended to every row name, the control's included: the rows of another fine-tuning "
                        "schedule (e.g. --iters 1200 --schedule-tag '~ft1200'), paired with their own control")
    p.add_argument("--results", default=os.path.join(RESULTS, "quality_finetune.json"))
    p.add_argument("--rerun", action="store_true", help="run rows that have a record already")
    p.add_argument("--teacher-weights", default="",
                   help="a teacher already trained with --teacher-iters on this data (e.g. by investigations/probe_data.py)")
    p.add_argument("--student-weights", default="",
                   help="start every row from this plain Detectron2 student checkpoint instead of the "
                        "pre-trained student (e.g. a control's student exported with tools/export_student.py, "
                        "for a second round of fine-tuning); needs its own --schedule-tag, and each record "
                        "keeps the path as student_weights")
    args = p.parse_args()
    if args.student_weights and not args.schedule_tag:
        p.error("--student-weights needs a --schedule-tag of its own: its rows must not share the records "
                "of the rows that start from the pre-trained student")
    if args.plateau_tol > 0 and not args.schedule_tag:
        p.error("--plateau-tol needs a --schedule-tag of its own (e.g. '~plateau'): its teacher, student and rows "
                "must not replace the records of the fixed schedules")
    if args.student_weights and not os.path.isfile(args.student_weights):
        p.error(f"--student-weights: no such file: {args.student_weights}")
    args.output = args.output or os.path.join("output", "replica", args.dataset, args.detector)
    setup_logger()
    setup_logger(name="gkd_d2")
    logging.getLogger("detectron2").setLevel(logging.INFO)

    teacher_yaml, student_yaml, gkd_yaml = DEMO_CONFIGS[args.detector]
    common = data_opts(args.dataset, args.device, args.workers, args.num_train, args.num_val, args.image_size)
    path = args.results
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    base = {"detector": args.detector, "dataset": args.dataset, "device": machine(args.device)["hardware"]}
    register_datasets_from_cfg(load_cfg(teacher_yaml, common))

    if args.teacher_weights:
        teacher_w = reuse_teacher(args.teacher_weights, teacher_yaml, common + solver(
            args.teacher_iters, args.ims_per_batch, args.lr), args.teacher_iters, args, base, path,
            args.teacher_weights)
    else:
        teacher_w, args.teacher_iters = pretrain_to_plateau("teacher", teacher_yaml, common, args.teacher_iters, args,
                                                            base, path)
    if args.student_weights:
        student_w = args.student_weights
    else:
        student_w, args.student_iters = pretrain_to_plateau("student-pretrained", student_yaml, common,
                                                            args.student_iters, args, base, path)
    args.iters = args.iters or args.student_iters
    finetune = solver(args.iters, args.ims_per_batch, args.lr, FINETUNE_STEPS)
    for seed in args.seeds:
        for row in args.rows:
            name = (row if row == "student-finetune" else row + args.tag) + args.schedule_tag
            record = {**base, "method": name, "seed": seed}
            if finished(path, record) and not args.rerun:
                print("done already:", name, seed, flush=True)
                continue
            run_dir = os.path.join(args.output, f"{name}_s{seed}")
            opts = common + finetune + [
                "OUTPUT_DIR", run_dir, "SEED", str(seed), "MODEL.WEIGHTS", student_w,
                "DISTILL.TEACHER.WEIGHTS", teacher_w,
            ]
            if row == "student-finetune":
                knowledge, pgm, selection = [], False, "pgm"
            else:
                knowledge, pgm, selection = METHODS[row]
            cfg = load_cfg(gkd_yaml, opts + ["DISTILL.PGM.ENABLED", str(pgm), "DISTILL.PGM.SELECTION", selection])
            cfg.DISTILL.KNOWLEDGE = list(knowledge)
            if row != "student-finetune":
                cfg.merge_from_list(list(args.opts))
            seed_all_rng(seed)
            ap, sec = train_eval(cfg)
            record = {**record, "iters": args.iters, "train_s": sec, **ap}
            if args.opts and row != "student-finetune":
                record["opts"] = list(args.opts)
            if args.student_weights:
                record["student_weights"] = args.student_weights
            save(record, path, KEY)
            print(name, seed, {k: round(ap[k], 2) for k in METRICS}, f"{sec:.0f}s", flush=True)


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    main()
