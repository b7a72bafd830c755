#!/usr/bin/env python
"""What distillation costs: step time of the full method (and, at demo scale, of each knowledge
term), the adapters' own share, memory, inference speed, size.

    python benchmarks/bench_cost.py --scale coco [--rounds 7] [--clock cpu]   # results/cost_coco.json
    python benchmarks/bench_cost.py [--device cuda] [--rounds 7]             # demo scale, results/speed.json

Models: the demo configurations (``--scale demo``: teacher ResNet-34 FPN-128, student ResNet-18
FPN-64, four 160 px images) or the paper's COCO configurations (``--scale coco``: teacher
ResNet-101 FPN-256 of the model zoo, student ResNet-50 FPN-256, 80 classes, two 800 px images
per step as in the 8-GPU schedule's per-GPU batch); random weights, since timing does not
depend on them. Timed, in one process, once each per round:

- ``student``: the student's own training step (forward + backward + SGD step);
- ``teacher``: one whole teacher forward, the teacher's own inference without post-processing
  (backbone + heads; RPN + box head for Faster R-CNN);
- ``adapters``: the feature term's adaptation convs alone, forward + backward (to their weights
  and to the student's maps) on the student's FPN maps of the batch: the 3x3 adapters of the
  defaults and the 1x1 ones of ``DISTILL.FEATURE.ADAPTER_KERNEL 1``;
- ``wrapper[<terms>]``: the distillation step with those knowledge terms (COCO scale: the full
  method with the defaults).

The order of the steps is reversed every other round. From each round r:
``overhead_beyond_teacher_forward = (wrapper - student - teacher) / student``,
``adapters_share = adapters / student`` and ``overhead_excluding_adapters`` = the first minus the
second: what the method adds beyond a whole teacher forward and the adapter convolutions.
Reported: the median over ``--rounds`` rounds (after one warm-up round) and the interquartile
range ``[q1, q3]``. ``--clock cpu`` times with the process's CPU time instead of the wall clock
(for a machine shared with other jobs; with one thread per process the two agree on an idle
machine); every record names its clock.

COCO scale appends one record per detector to ``results/cost_coco.json`` (a list); demo scale
replaces the entry of the device kind in ``results/speed.json``.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    RESULTS, SCALES, fill_prototypes, load_cfg, machine, random_batch, sync, tame_frozen_bn, zoo_or_project_cfg,
)

FULL = "feature+response+global"
TERMS = {
    "demo": {
        "faster_rcnn": [FULL, "feature", "response", "global", "chen_cls+chen_reg+chen_hint", "fitnet", "fgfi",
                        "defeat", "rkd", "kd"],
        "retinanet": [FULL, "feature", "response", "global", "chen_hint", "fitnet", "fgfi", "defeat", "rkd"],
    },
    "coco": {"faster_rcnn": [FULL], "retinanet": [FULL]},
}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def batch_on(scale):
    """The timed batch; GT classes 0-2."""
    _, boxes, size, _ = SCALES[scale]
    return random_batch(boxes, size, num_classes=3, seed=1)


def step_fn(model, data):
    """One training step of ``model`` on ``data``: forward, backward, SGD step."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9)

    def step():
        with EventStorage(0):
            losses = model(data)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()

    return step


def adapter_fn(student, data, kernel_size, teacher_channels):
    """Forward + backward of one adaptation conv per FPN level of the student (``kernel_size``,
    student width -> ``teacher_channels``) on the student's maps of ``data`` (detached copies that
    take a gradient, as the student's maps do in the distillation step)."""
    with torch.no_grad():
        maps = student.backbone(student.preprocess_image(data).tensor)
    inputs = {k: v.detach().clone().requires_grad_(True) for k, v in maps.items()}
    convs = {k: torch.nn.Conv2d(v.shape[1], teacher_channels, kernel_size, padding=kernel_size // 2).to(v.device)
             for k, v in inputs.items()}

    def step():
        for x in inputs.values():
            x.grad = None
        loss = sum(convs[k](x).square().mean() for k, x in inputs.items())
        loss.backward()

    return step


def timed_rounds(fns, rounds, device, clock="wall", warmup=1):
    """{name: [seconds of round 0, 1, ...]}: each round runs every fn once, in the order of
    ``fns`` on even rounds and reversed on odd ones; ``warmup`` rounds first, not recorded."""
    now = CLOCKS[clock]
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(-warmup, rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            sync(device)
            t = now()
            fns[k]()
            sync(device)
            if r >= 0:
                times[k].append(now() - t)
    return times


def median_iqr(values):
    """(median, [q1, q3]) of ``values`` (inclusive quartiles)."""
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return q2, [q1, q3]


def overheads(times, wrapper):
    """Per-round fractions of the student step (see the module docstring), as (median, iqr)."""
    s, t, a = times["student"], times["teacher"], times["adapters"]
    w = times[f"wrapper[{wrapper}]"]
    beyond = [(wi - si - ti) / si for wi, si, ti in zip(w, s, t)]
    share = [ai / si for ai, si in zip(a, s)]
    return {
        "overhead_beyond_teacher_forward": median_iqr(beyond),
        "adapters_share": median_iqr(share),
        "overhead_excluding_adapters": median_iqr([b - f for b, f in zip(beyond, share)]),
        "adapters_1x1_share": median_iqr([ai / si for ai, si in zip(times["adapters_1x1"], s)]),
    }


def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_memory(fn, device):
    """MiB a step needs above what is resident before it. CUDA: the allocator's peak. CPU
    (Linux): the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) minus its RSS."""
    if not device.startswith("cuda"):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            resident = _proc_status_kib("VmRSS")
            fn()
            return (_proc_status_kib("VmHWM") - resident) / 1024
        except OSError:
            return None
    torch.cuda.empty_cache()
    sync(device)
    resident = torch.cuda.memory_allocated()  # every model built by this script
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated() - resident) / 2**20


def cpu_peak_memory(detector, device, scale):
    """Peak memory of one CPU step with and without distillation, measured in a child process
    whose glibc returns large freed blocks to the system (fixed mmap threshold), so each step's
    peak RSS is its own. Timing runs without that setting (it slows allocation)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-only", "--device", device, "--detectors", detector,
           "--scale", scale]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def build(detector, device, scale):
    """(student, {terms: wrapper}, data): random-weight models of ``scale`` sharing the student's
    weights, the wrappers' prototypes filled at random."""
    configs, _, _, _ = SCALES[scale]
    teacher_yaml, student_yaml, gkd_yaml = configs[detector]
    tmp = tempfile.mkdtemp()
    tcfg = zoo_or_project_cfg(teacher_yaml, ["MODEL.DEVICE", device])
    DetectionCheckpointer(tame_frozen_bn(build_model(tcfg)), save_dir=tmp).save("teacher")
    student = tame_frozen_bn(build_model(zoo_or_project_cfg(student_yaml, ["MODEL.DEVICE", device]))).train()
    wrappers = {}
    for terms in TERMS[scale][detector]:
        cfg = load_cfg(gkd_yaml, ["MODEL.DEVICE", device, "DISTILL.TEACHER.WEIGHTS", os.path.join(tmp, "teacher.pth")])
        cfg.DISTILL.KNOWLEDGE = terms.split("+")
        model = build_model(cfg).train()
        model.student.load_state_dict(student.state_dict())
        fill_prototypes(model, device)
        wrappers[terms] = model
    return student, wrappers, batch_on(scale)


def bench(detector, device, rounds, scale="demo", clock="wall", memory=True):
    student, wrappers, data = build(detector, device, scale)
    size = SCALES[scale][2]
    full = wrappers[FULL]
    teacher = full.teacher
    eval_batch = [{"image": x["image"], "height": size, "width": size} for x in data]
    if detector == "retinanet":
        teacher_fwd = lambda: teacher(eval_batch)  # noqa: E731
    else:
        teacher_fwd = lambda: teacher.inference(eval_batch, do_postprocess=False)  # noqa: E731
    width = full.knowledge["feature"].adapters[next(iter(full.knowledge["feature"].adapters))].out_channels
    fns = {"student": step_fn(student, data), "teacher": torch.no_grad()(teacher_fwd),
           "adapters": adapter_fn(student, data, 3, width), "adapters_1x1": adapter_fn(student, data, 1, width)}
    fns.update({f"wrapper[{k}]": step_fn(m, data) for k, m in wrappers.items()})
    times = timed_rounds(fns, rounds, device, clock)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "rounds": rounds, "clock": clock,
        "student_step_s": med["student"], "teacher_forward_s": med["teacher"],
        "adapters_s": med["adapters"], "adapters_1x1_s": med["adapters_1x1"],
        "wrapper_step_s": {k[8:-1]: v for k, v in med.items() if k.startswith("wrapper[")},
        "overhead_beyond_teacher_forward": {
            k: median_iqr([(wi - si - ti) / si for wi, si, ti in zip(times[f"wrapper[{k}]"], times["student"],
                                                                      times["teacher"])])[0]
            for k in wrappers},
        **{k: v[0] for k, v in overheads(times, FULL).items() if k != "overhead_beyond_teacher_forward"},
        "iqr": {k: v[1] for k, v in overheads(times, FULL).items()},
    }
    if memory:
        if device.startswith("cuda"):
            result["peak_memory_MiB"] = {"student_step": peak_memory(fns["student"], device),
                                         "distillation_step": peak_memory(fns[f"wrapper[{FULL}]"], device)}
        else:
            result["peak_memory_MiB"] = cpu_peak_memory(detector, device, scale)
    if scale == "demo":
        student.eval()
        with torch.no_grad():
            inf = timed_rounds({"teacher": lambda: teacher(eval_batch), "student": lambda: student(eval_batch)},
                               rounds, device, clock)
        result["inference_s_per_image"] = {k: statistics.median(v) / len(eval_batch) for k, v in inf.items()}
    result["params_M"] = {"teacher": sum(p.numel() for p in teacher.parameters()) / 1e6,
                          "student": sum(p.numel() for p in student.parameters()) / 1e6}
    return result


def memory_only(detector, device, scale):
    """The child of :func:`cpu_peak_memory`: one warm-up step each, then the measured step."""
    student, wrappers, data = build(detector, device, scale)
    steps = {"student_step": step_fn(student, data), "distillation_step": step_fn(wrappers[FULL], data)}
    for f in steps.values():
        f()
    return {k: peak_memory(f, device) for k, f in steps.items()}


def cost_record(detector, figures, run):
    """The ``results/cost_coco.json`` record of the full method with the defaults."""
    memory = figures.get("peak_memory_MiB") or {}
    return {
        "device": run["device"].split(":")[0], "hardware": run["hardware"], "date": run["date"],
        "code": run["code"], "cpu_threads": run["cpu_threads"], "clock": figures["clock"],
        "detector": detector, "method": "gkd", "rounds": figures["rounds"], "batch": run["batch"],
        "student_step_s": figures["student_step_s"], "teacher_forward_s": figures["teacher_forward_s"],
        "wrapper_step_s": figures["wrapper_step_s"][FULL],
        "adapters_s": figures["adapters_s"], "adapters_1x1_s": figures["adapters_1x1_s"],
        "overhead_beyond_teacher_forward": figures["overhead_beyond_teacher_forward"][FULL],
        "adapters_share": figures["adapters_share"], "adapters_1x1_share": figures["adapters_1x1_share"],
        "overhead_excluding_adapters": figures["overhead_excluding_adapters"],
        "iqr": figures["iqr"],
        "peak_memory_MiB": memory.get("distillation_step"), "student_peak_memory_MiB": memory.get("student_step"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds (after one warm-up round)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall clock, or the process's CPU time (a machine shared with other jobs)")
    parser.add_argument("--detectors", nargs="+", choices=sorted(TERMS["coco"]), default=sorted(TERMS["coco"]))
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory figures")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_only:
        print(json.dumps(memory_only(args.detectors[0], args.device, args.scale)))
        return
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: at least one measured round")
    _, boxes, size, description = SCALES[args.scale]
    counts = [n for n, _ in boxes]
    out = {**machine(args.device), "models": description, "rounds": args.rounds, "clock": args.clock,
           "batch": f"{len(boxes)} images, {size} px, {min(counts)}-{max(counts)} GT boxes each"}
    for d in args.detectors:
        out[d] = bench(d, args.device, args.rounds, args.scale, args.clock, memory=not args.no_memory)
        print(d, json.dumps(out[d], indent=1), flush=True)
        if args.scale == "coco":
            path = os.path.join(RESULTS, "cost_coco.json")
            records = json.load(open(path)) if os.path.isfile(path) else []
            os.makedirs(RESULTS, exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(records + [cost_record(d, out[d], out)], f, indent=2)
            os.replace(path + ".tmp", path)
            print("wrote", path, flush=True)
    if args.scale == "demo":
        path = os.path.join(RESULTS, "speed.json")  # {device kind: figures}, one entry per device
        results = json.load(open(path)) if os.path.isfile(path) else {}
        results[args.device.split(":")[0]] = out
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(path + ".tmp", path)
        print("wrote", path)


if __name__ == "__main__":
    main()
