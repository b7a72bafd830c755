#!/usr/bin/env python
"""The capacity pair (``configs/Capacity``): how much cheaper the student is than its teacher, and,
with ``--train``, how far apart they are when both are trained alike.

    python benchmarks/capacity_gap.py                  # FLOPs only (a minute on a CPU)
    python benchmarks/capacity_gap.py --train --detectors retinanet --seeds 0 1 2   # CPU hours

FLOPs (always): each detector's teacher and student are built from their configs (random
weights, inference mode) and counted with Detectron2's wrapper of fvcore's
``FlopCountAnalysis`` (``detectron2.utils.analysis``) on one ``--image-size`` px image (the
configs' test size, 160): one multiply-add counts as one flop; NMS and other unsupported ops
are not counted. Faster R-CNN's box head runs on exactly ``MODEL.RPN.POST_NMS_TOPK_TEST``
proposals (the RPN runs, and its proposals are replaced by as many fixed boxes): the count of a
randomly initialised model would otherwise depend on how many of its random proposals survive. Per detector: ``teacher_gflops``, ``student_gflops``,
``flops_ratio`` (student / teacher; the pair is meant to be <= 0.25), the parameters (millions)
and the GFLOPs of the backbone and heads.

``--train`` (not run by default; hours of CPU per detector): the teacher and the student are each
trained alone from scratch (:func:`common.plateau_search`: ``--iters``, then doubled schedules
until two successive ones' AP differ by less than ``--plateau-tol``, at most ``--max-iters``);
the model that reached its plateau on a shorter schedule is then trained on the other's longer
ones too, so both end on the same schedule. ``equal_schedule_gap_ap`` is teacher AP - student AP
on that schedule; ``plateau`` holds whether each reached its plateau, the tolerance, the common
schedule and every schedule's AP. Then every ``--rows`` row fine-tunes the plateau student for as
many iterations as it was trained (the paper's 1:1; warm-up 5%, steps at 2/3 and 11/12) with the
default options and the knowledge terms of the row (``common.METHODS``; ``student-finetune``: no
term, the fair control) for every ``--seeds`` seed: ``rows`` is a list of ``{method, seed, AP,
AP50, ..., iters, train_s}``. Runs live under ``--out-dir/<detector>/``; a finished run (its
``model_final.pth`` and ``result.json``, or its row in the results) is not run again. ``--opts``
overrides options of every run (teacher, student, rows), recorded as the detector's ``opts``.

Results: ``benchmarks/results/capacity_gap.json``, ``{<detector>: {...}, image_size, flops_counter,
machine, date}``; the FLOPs part rewrites the FLOPs fields and keeps the training fields.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CAPACITY_CONFIGS, METHODS, METRICS, RESULTS, ROOT, load_cfg, machine, plateau_search, train_eval  # noqa: E402,E501

from gkd_d2.data import register_datasets_from_cfg  # noqa: E402
from gkd_d2.schedule import finetune_schedule, schedule  # noqa: E402

OUTPUT = os.path.join(RESULTS, "capacity_gap.json")
ROWS = ["student-finetune", "gkd", "response", "feature+response", "response+global"]
FLOPS_COUNTER = ("detectron2.utils.analysis.FlopCountAnalysis (fvcore), inference on one image, "
                 "one multiply-add = one flop, NMS not counted, box head on POST_NMS_TOPK_TEST proposals")


class FixedProposals(torch.nn.Module):
    """The RPN ``rpn`` (run, so its FLOPs count) whose proposals are replaced by ``num`` fixed
    boxes (x0, y0, x1, y1) per image: the box head's work no longer depends on the weights."""

    def __init__(self, rpn, num, seed=0):
        super().__init__()
        self.rpn = rpn
        g = torch.Generator().manual_seed(seed)
        corner, extent = torch.rand(num, 2, generator=g) * 0.6, 0.05 + torch.rand(num, 2, generator=g) * 0.35
        self.register_buffer("unit_boxes", torch.cat([corner, corner + extent], dim=1))  # in [0, 0.95]

    def forward(self, images, features, gt_instances=None):
        from detectron2.structures import Boxes, Instances

        _, losses = self.rpn(images, features, gt_instances)
        out = []
        for h, w in images.image_sizes:
            boxes = self.unit_boxes * self.unit_boxes.new_tensor([w, h, w, h])
            out.append(Instances((h, w), proposal_boxes=Boxes(boxes), objectness_logits=boxes.new_zeros(len(boxes))))
        return out, losses


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------
def model_flops(cfg, image_size, seed=0):
    """FLOPs of ``cfg``'s detector (random weights, eval mode) on one ``image_size`` px image:
    ``{"gflops", "params_m", "components_gflops": {backbone, proposal_generator, roi_heads | head}}``."""
    from detectron2.modeling import build_model
    from detectron2.utils.analysis import FlopCountAnalysis

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    if getattr(model, "roi_heads", None) is not None:  # every box head on POST_NMS_TOPK_TEST proposals
        model.proposal_generator = FixedProposals(model.proposal_generator, cfg.MODEL.RPN.POST_NMS_TOPK_TEST, seed)
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, image_size, image_size), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        count = FlopCountAnalysis(model, [{"image": image, "height": image_size, "width": image_size}])
        count.unsupported_ops_warnings(False)
        count.uncalled_modules_warnings(False)
        total, by_module = count.total(), count.by_module()
    parts = {}
    for name, flops in by_module.items():  # the wrapper prefixes the detector's modules with "model."
        name = name[len("model."):] if name.startswith("model.") else name
        if name and name != "model" and "." not in name and flops:
            parts[name] = round(flops / 1e9, 4)
    params = sum(p.numel() for p in model.parameters())
    return {"gflops": round(total / 1e9, 4), "params_m": round(params / 1e6, 3), "components_gflops": parts}


def pair_flops(detector, image_size):
    """The FLOPs fields of one detector's pair (:func:`model_flops` of teacher and student)."""
    teacher_yaml, student_yaml, gkd_yaml = CAPACITY_CONFIGS[detector]
    t, s = (model_flops(load_cfg(path), image_size) for path in (teacher_yaml, student_yaml))
    return {
        "teacher_config": teacher_yaml, "student_config": student_yaml, "distill_config": gkd_yaml,
        "teacher_gflops": t["gflops"], "student_gflops": s["gflops"],
        "flops_ratio": round(s["gflops"] / t["gflops"], 4),
        "teacher_params_m": t["params_m"], "student_params_m": s["params_m"],
        "teacher_components_gflops": t["components_gflops"], "student_components_gflops": s["components_gflops"],
    }


# --------------------------------------------------------------------------------------------
# the results file
# --------------------------------------------------------------------------------------------
def load(path):
    return json.load(open(path)) if os.path.isfile(path) else {}


def write(path, data):
    """Write ``data`` to ``path`` atomically (a temporary file renamed into place)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def update(path, detector, fields, device="cpu"):
    """Merge ``fields`` into ``path``'s record of ``detector``; stamp machine and date."""
    data = load(path)
    data.setdefault(detector, {}).update(fields)
    info = machine(device)
    data.update(machine=info, date=info["date"])
    write(path, data)
    return data


# --------------------------------------------------------------------------------------------
# training on equal schedules (--train)
# --------------------------------------------------------------------------------------------
def equal_schedules(train_teacher, train_student, first, tol, max_iters):
    """Both models to their plateau (:func:`common.plateau_search`), then the one that stopped
    first trained on the other's longer schedules too. ``train_*(n)`` -> (weights, AP).
    Returns (teacher weights, student weights at its plateau, student plateau iters, plateau
    dict, gap AP on the common schedule)."""
    t_w, t_n, t_sched, t_ok = plateau_search(train_teacher, first, tol, max_iters)
    s_w, s_n, s_sched, s_ok = plateau_search(train_student, first, tol, max_iters)
    common_n = max(t_n, s_n)
    t_ap, s_ap = dict(map(tuple, t_sched)), dict(map(tuple, s_sched))
    n = min(t_n, s_n)
    while n < common_n:  # extend the shorter ladder
        n *= 2
        if n not in t_ap:
            t_w, t_ap[n] = train_teacher(n)
            t_sched.append([n, t_ap[n]])
        if n not in s_ap:
            s_ap[n] = train_student(n)[1]
            s_sched.append([n, s_ap[n]])
    plateau = {"teacher": bool(t_ok), "student": bool(s_ok), "tol": tol, "equal_schedule_iters": common_n,
               "teacher_plateau_iters": t_n, "student_plateau_iters": s_n,
               "teacher_schedules": t_sched, "student_schedules": s_sched}
    return t_w, s_w, s_n, plateau, round(t_ap[common_n] - s_ap[common_n], 2)


def trainer(yaml, out_root, name, device_opts):
    """``train(n)``: train ``yaml`` alone for n iterations (once; seed 0) -> (weights, AP)."""
    def train(n):
        out = os.path.join(out_root, f"{name}_it{n}")
        weights, result = os.path.join(out, "model_final.pth"), os.path.join(out, "result.json")
        if os.path.isfile(weights) and os.path.isfile(result):
            return weights, json.load(open(result))["AP"]
        from detectron2.utils.env import seed_all_rng

        cfg = load_cfg(yaml, device_opts + schedule(n) + ["OUTPUT_DIR", out, "SEED", "0"])
        seed_all_rng(0)
        ap, seconds = train_eval(cfg)
        write(result, {**ap, "iters": n, "train_s": seconds})
        print(name, n, {k: round(v, 2) for k, v in ap.items()}, flush=True)
        return weights, ap["AP"]
    return train


def finetune_rows(detector, args, teacher_w, student_w, iters, device_opts):
    """Every (row, seed) not in the results yet: the plateau student fine-tuned ``iters``
    iterations with the row's terms; each finished row is written at once."""
    gkd_yaml = CAPACITY_CONFIGS[detector][2]
    for seed in args.seeds:
        for row in args.rows:
            done = load(args.results).get(detector, {}).get("rows", [])
            if any(r["method"] == row and r["seed"] == seed and r.get("iters") == iters for r in done):
                continue
            from detectron2.utils.env import seed_all_rng

            knowledge, pgm, selection = ([], False, "pgm") if row == "student-finetune" else METHODS[row]
            cfg = load_cfg(gkd_yaml, device_opts + finetune_schedule(iters) + [
                "OUTPUT_DIR", os.path.join(args.out_dir, detector, f"{row}_s{seed}"), "SEED", str(seed),
                "MODEL.WEIGHTS", student_w, "DISTILL.TEACHER.WEIGHTS", teacher_w,
                "DISTILL.PGM.ENABLED", str(pgm), "DISTILL.PGM.SELECTION", selection,
            ])
            cfg.DISTILL.KNOWLEDGE = list(knowledge)
            seed_all_rng(seed)
            ap, seconds = train_eval(cfg)
            rows = [r for r in done if not (r["method"] == row and r["seed"] == seed)]
            rows.append({"method": row, "seed": seed, **ap, "iters": iters, "train_s": round(seconds, 1)})
            update(args.results, detector, {"rows": rows}, args.device)
            print(detector, row, seed, {k: round(ap[k], 2) for k in METRICS}, flush=True)


def train_detector(detector, args):
    """``--train`` for one detector: equal schedules to the plateau, then the fine-tuning rows."""
    from detectron2.utils.logger import setup_logger

    setup_logger()
    setup_logger(name="gkd_d2")
    teacher_yaml, student_yaml, _ = CAPACITY_CONFIGS[detector]
    device_opts = ["MODEL.DEVICE", args.device, "DATALOADER.NUM_WORKERS", str(args.workers), *args.opts]
    out_root = os.path.join(args.out_dir, detector)
    register_datasets_from_cfg(load_cfg(teacher_yaml, device_opts))  # the data, generated once
    t_w, s_w, s_n, plateau, gap = equal_schedules(
        trainer(teacher_yaml, out_root, "teacher", device_opts), trainer(student_yaml, out_root, "student", device_opts),
        args.iters, args.plateau_tol, args.max_iters)
    update(args.results, detector, {"equal_schedule_gap_ap": gap, "plateau": plateau, "opts": list(args.opts)},
           args.device)
    print(detector, "equal-schedule gap", gap, "AP; plateau", plateau, flush=True)
    finetune_rows(detector, args, t_w, s_w, s_n, device_opts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detectors", nargs="+", choices=sorted(CAPACITY_CONFIGS), default=sorted(CAPACITY_CONFIGS))
    p.add_argument("--image-size", type=int, default=160, help="side of the image the FLOPs are counted on")
    p.add_argument("--results", default=OUTPUT)
    p.add_argument("--train", action="store_true", help="also train on equal schedules and fine-tune the rows")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="DATALOADER.NUM_WORKERS")
    p.add_argument("--iters", type=int, default=2400, help="first schedule of the plateau search")
    p.add_argument("--plateau-tol", type=float, default=0.3)
    p.add_argument("--max-iters", type=int, default=38400, help="longest schedule of the plateau search")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=ROWS, choices=["student-finetune"] + list(METHODS))
    p.add_argument("--out-dir", default=os.path.join("output", "capacity"))
    p.add_argument("--opts", nargs="*", default=[],
                   help="KEY VALUE overrides of every training run (e.g. DATASETS.SHAPES.ROOT for another data folder)")
    args = p.parse_args(argv)
    if args.image_size < 32:
        p.error(f"--image-size {args.image_size}: the FPN's coarsest level needs at least 32 px")
    if args.train and args.plateau_tol <= 0:
        p.error("--train needs --plateau-tol > 0: both models are trained to their plateau")
    args.results, args.out_dir = os.path.abspath(args.results), os.path.abspath(args.out_dir)
    os.chdir(ROOT)  # the configs' relative paths (teacher CONFIG_FILE, data)
    for detector in args.detectors:
        data = update(args.results, detector, pair_flops(detector, args.image_size))
        data.update(image_size=args.image_size, flops_counter=FLOPS_COUNTER)
        write(args.results, data)
        d = data[detector]
        print(f"{detector}: teacher {d['teacher_gflops']:.3f} GFLOPs, student {d['student_gflops']:.3f} GFLOPs, "
              f"ratio {d['flops_ratio']:.3f}", flush=True)
    for detector in args.detectors if args.train else ():
        train_detector(detector, args)


if __name__ == "__main__":
    main()
