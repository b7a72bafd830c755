#!/usr/bin/env python
"""What distillation costs: step time per knowledge term, memory, inference speed, size.

    python benchmarks/bench_cost.py [--device cuda] [--iters 10] [--scale demo|coco]

In one run, on the demo configurations (``--scale demo``: teacher ResNet-34 FPN-128, student
ResNet-18 FPN-64, 160 px synthetic images, batch 4) or on the paper's COCO configurations
(``--scale coco``: teacher ResNet-101 FPN-256 of the model zoo, student ResNet-50 FPN-256, 80
classes, two 800 px images per step as in the 8-GPU schedule's per-GPU batch, the full method
and each of its terms only); random weights, since timing does not depend on them:

- ``student``: the student's own training step (forward + backward + SGD step);
- ``teacher_fwd``: one teacher backbone forward (what every term needs);
- ``teacher_full_fwd``: one whole teacher forward, the teacher's own inference without
  post-processing (backbone + heads; RPN + box head for Faster R-CNN);
- ``wrapper[<terms>]``: the distillation step with those knowledge terms (``[adapter1x1]``:
  with ``DISTILL.FEATURE.ADAPTER_KERNEL 1`` instead of the paper's 3x3 adapters);
- ``kd_overhead``: (wrapper - student - teacher_fwd) / student step: everything the wrapper adds
  beyond the teacher's backbone, the teacher's heads on the student's RoIs / anchors included;
- ``kd_overhead_vs_full_teacher``: (wrapper - student - teacher_full_fwd) / student step, the
  issue's definition ("the student's own step plus one teacher forward"; target at most 10%);
- peak memory of a step with and without distillation above what is resident before it
  (CUDA allocator peak, or peak RSS on a Linux CPU), inference time per image
  and parameter counts of teacher and student.

Steps are timed interleaved (round robin) and the median is reported. Results go to
``benchmarks/results/speed.json`` under the device kind (``cpu``, ``cuda``; ``cpu-coco``,
``cuda-coco`` at COCO scale), replacing an older entry of the same key.
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
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, ROOT, load_cfg, machine, random_batch  # noqa: E402

from gkd_d2.config import DEMO_CONFIGS  # noqa: E402
from gkd_d2.teacher import resolve_config_file  # noqa: E402

ADAPTER_1X1 = ["DISTILL.FEATURE.ADAPTER_KERNEL", "1"]  # the cheaper adapter option


def timed_variants(term_lists):
    """(name, terms, opts) of every wrapper timed: each term list with the yaml's options, and
    the first two (the full method, the feature term) again with 1x1 adapters (``[adapter1x1]``)."""
    out = [("+".join(t), t, []) for t in term_lists]
    return out + [("+".join(t) + "[adapter1x1]", t, ADAPTER_1X1) for t in term_lists[:2]]


FULL = ["feature", "response", "global"]
TERMS = {
    "faster_rcnn": timed_variants([FULL, ["feature"], ["response"], ["global"], ["chen_cls", "chen_reg", "chen_hint"], ["fitnet"], ["fgfi"], ["defeat"], ["rkd"], ["kd"]]),
    "retinanet": timed_variants([FULL, ["feature"], ["response"], ["global"], ["chen_hint"], ["fitnet"], ["fgfi"], ["defeat"], ["rkd"]]),
}
COCO_TERMS = {d: timed_variants([FULL, ["feature"], ["response"], ["global"]]) for d in TERMS}
COCO = {  # teacher and student configs of the model zoo, and this project's COCO distillation config
    "faster_rcnn": ("COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml", "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml", "configs/COCO/gkd_faster_rcnn_R101_to_R50_FPN_2x.yaml"),
    "retinanet": ("COCO-Detection/retinanet_R_101_FPN_3x.yaml", "COCO-Detection/retinanet_R_50_FPN_3x.yaml", "configs/COCO/gkd_retinanet_R101_to_R50_FPN_2x.yaml"),
}
SCALES = {
    # configs, terms timed, (GT boxes per image as (count, first class)), image size, description
    "demo": (DEMO_CONFIGS, TERMS, ((6, 0), (4, 1), (5, 2), (3, 0)), 160,
             "Demo configurations (teacher ResNet-34 FPN-128, student ResNet-18 FPN-64)"),
    "coco": (COCO, COCO_TERMS, ((6, 0), (4, 1)), 800,
             "COCO configurations (teacher ResNet-101 FPN, student ResNet-50 FPN, 80 classes)"),
}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def batch_on(scale):
    """The timed batch; GT classes 0-2, the batch the figures in RESULTS.md were measured on."""
    _, _, boxes, size, _ = SCALES[scale]
    return random_batch(boxes, size, num_classes=3, seed=1)


def step_fn(model, data):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9)

    def step():
        with EventStorage(0):
            losses = model(data)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def fill_prototypes(model, device):
    """Random prototypes in every slot so the global term and robust weights do real work."""
    bank = model.prototypes
    if bank is not None:
        with torch.no_grad():
            bank.teacher.normal_()
            bank.student.normal_()
            bank.valid.fill_(True)
            bank.last_refresh_iter.fill_(0)


def timed(fns, iters, device, warmup=2):
    times = {k: [] for k in fns}
    for _ in range(warmup):
        for f in fns.values():
            f()
    for _ in range(iters):
        for k, f in fns.items():
            sync(device)
            t = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


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


def cpu_peak_memory(detector, device, scale, full_only=False):
    """Peak-memory figures of one CPU step with and without distillation, measured in a child
    process whose glibc returns large freed blocks to the system (fixed mmap threshold), so
    each step's peak RSS is its own. Timing runs without that setting (it slows allocation)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-only", "--device", device, "--detectors", detector,
           "--scale", scale] + (["--full-only"] if full_only else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def zoo_or_project_cfg(path, opts):
    """One of this project's configs, or a model-zoo config ("COCO-Detection/...")."""
    local = os.path.join(ROOT, path)
    return load_cfg(local if os.path.isfile(local) else resolve_config_file(path), opts)


def tame_frozen_bn(model):
    """Zero the scale of the last FrozenBN of every bottleneck block (zero-init residuals), so
    that a randomly initialised ResNet-50/101 with the zoo's FrozenBN keeps finite activations
    (unnormalised, they overflow to Inf by the last stage and Detectron2's RPN stops with
    "Training has diverged"). The arithmetic per step is unchanged. Returns ``model``."""
    for name, module in model.named_modules():
        if name.endswith("conv3.norm") and isinstance(module, FrozenBatchNorm2d):
            module.weight.zero_()
    return model


def bench(detector, device, iters, scale="demo", memory_only=False, full_only=False):
    configs, terms_timed, _, size, _ = SCALES[scale]
    if full_only:  # the full method with the defaults, and with 1x1 adapters
        terms_timed = {d: [v for v in variants if v[1] == FULL] for d, variants in terms_timed.items()}
    teacher_yaml, student_yaml, gkd_yaml = configs[detector]
    data = batch_on(scale)
    tmp = tempfile.mkdtemp()
    tcfg = zoo_or_project_cfg(teacher_yaml, ["MODEL.DEVICE", device])
    DetectionCheckpointer(tame_frozen_bn(build_model(tcfg)), save_dir=tmp).save("teacher")
    student = tame_frozen_bn(build_model(zoo_or_project_cfg(student_yaml, ["MODEL.DEVICE", device]))).train()
    fns = {"student": step_fn(student, data)}
    wrappers = {}
    for name, terms, opts in terms_timed[detector]:
        cfg = load_cfg(gkd_yaml, ["MODEL.DEVICE", device, "DISTILL.TEACHER.WEIGHTS", os.path.join(tmp, "teacher.pth")] + opts)
        cfg.DISTILL.KNOWLEDGE = terms
        model = build_model(cfg).train()
        model.student.load_state_dict(student.state_dict())
        fill_prototypes(model, device)
        wrappers[name] = model
        fns[f"wrapper[{name}]"] = step_fn(model, data)
    any_wrapper = next(iter(wrappers.values()))
    full = "feature+response+global"
    if memory_only:  # one warm-up step each (one-time allocations), then the measured step
        fns["student"]()
        fns[f"wrapper[{full}]"]()
        return {
            "student_step": peak_memory(fns["student"], device),
            "distillation_step": peak_memory(fns[f"wrapper[{full}]"], device),
        }
    fns["teacher_fwd"] = lambda: any_wrapper.teacher_features(data)
    eval_batch = [{"image": x["image"], "height": size, "width": size} for x in data]
    teacher = any_wrapper.teacher
    if detector == "retinanet":
        fns["teacher_full_fwd"] = lambda: teacher(eval_batch)
    else:
        fns["teacher_full_fwd"] = lambda: teacher.inference(eval_batch, do_postprocess=False)
    warmup = 1 if scale == "coco" else 2  # a COCO-scale CPU step takes seconds
    times = timed(fns, iters, device, warmup)
    result = {
        "student_step_s": times["student"],
        "teacher_fwd_s": times["teacher_fwd"],
        "wrapper_step_s": {k[8:-1]: v for k, v in times.items() if k.startswith("wrapper[")},
    }
    result["kd_overhead_vs_student_step"] = {
        k: (v - times["student"] - times["teacher_fwd"]) / times["student"]
        for k, v in result["wrapper_step_s"].items()
    }
    result["teacher_full_fwd_s"] = times["teacher_full_fwd"]
    result["kd_overhead_vs_full_teacher"] = {
        k: (v - times["student"] - times["teacher_full_fwd"]) / times["student"]
        for k, v in result["wrapper_step_s"].items()
    }
    if device.startswith("cuda"):
        result["peak_memory_MiB"] = {
            "student_step": peak_memory(fns["student"], device),
            "distillation_step": peak_memory(fns[f"wrapper[{full}]"], device),
        }
    else:
        result["peak_memory_MiB"] = cpu_peak_memory(detector, device, scale, full_only)
    student.eval()
    with torch.no_grad():
        inf = timed({"teacher": lambda: teacher(eval_batch), "student": lambda: student(eval_batch)}, iters, device, warmup)
    result["inference_s_per_image"] = {k: v / len(eval_batch) for k, v in inf.items()}
    result["params_M"] = {
        "teacher": sum(p.numel() for p in teacher.parameters()) / 1e6,
        "student": sum(p.numel() for p in student.parameters()) / 1e6,
    }
    return result


METHOD_NAMES = {"feature+response+global": "gkd", "feature+response+global[adapter1x1]": "gkd[adapter1x1]"}


def save_cost_records(detector, figures, run):
    """One record per timed method in ``results/cost_coco.json`` (a list); every run adds its
    records (run-to-run noise is several % of a CPU step, so repeated runs are kept)."""
    path = os.path.join(RESULTS, "cost_coco.json")
    full = "feature+response+global"  # the step whose peak memory is measured
    records = json.load(open(path)) if os.path.isfile(path) else []
    kind = run["device"].split(":")[0]
    for name, wrapper in figures["wrapper_step_s"].items():
        record = {
            "device": kind, "hardware": run["hardware"], "date": run["date"], "code": run.get("code", ""),
            "detector": detector,
            "method": METHOD_NAMES.get(name, name), "iters": run["iters"], "batch": run["batch"],
            "student_step_s": figures["student_step_s"], "teacher_forward_s": figures["teacher_full_fwd_s"],
            "wrapper_step_s": wrapper,
            "overhead_beyond_teacher_forward": figures["kd_overhead_vs_full_teacher"][name],
            "peak_memory_MiB": (figures["peak_memory_MiB"] or {}).get("distillation_step") if name == full else None,
            "student_peak_memory_MiB": (figures["peak_memory_MiB"] or {}).get("student_step"),
        }
        key = ("device", "hardware", "detector", "method", "date")
        records = [r for r in records if any(r.get(k) != record[k] for k in key)] + [record]
    os.makedirs(RESULTS, exist_ok=True)
    with open(path, "w") as f:
        json.dump(records, f, indent=2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--detectors", nargs="+", choices=sorted(TERMS), default=sorted(TERMS))
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo")
    parser.add_argument("--full-only", action="store_true",
                        help="time only the full method (defaults, and with 1x1 adapters)")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_only:
        print(json.dumps(bench(args.detectors[0], args.device, 0, args.scale, memory_only=True, full_only=args.full_only)))
        return
    _, _, boxes, size, description = SCALES[args.scale]
    counts = [n for n, _ in boxes]
    out = {**machine(args.device), "models": description, "iters": args.iters,
           "batch": f"{len(boxes)} images, {size} px, {min(counts)}-{max(counts)} GT boxes each"}
    for d in args.detectors:
        out[d] = bench(d, args.device, args.iters, args.scale, full_only=args.full_only)
        print(d, json.dumps(out[d], indent=1), flush=True)
        if args.scale == "coco":
            save_cost_records(d, out[d], out)
    if args.full_only:
        return
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "speed.json")  # {device kind: figures}, one entry per device
    results = json.load(open(path)) if os.path.isfile(path) else {}
    kind = args.device.split(":")[0]
    results[kind if args.scale == "demo" else f"{kind}-{args.scale}"] = out
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
