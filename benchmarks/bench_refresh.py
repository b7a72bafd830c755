#!/usr/bin/env python
"""Time one full prototype refresh (every class, every level) of the demo configuration.

    python benchmarks/bench_refresh.py [--device cuda] [--detector faster_rcnn|retinanet]

The first refresh pools the teacher's instance features (then cached), the second only the
student's: both are timed, in one run. The teacher weights are the demo's if it ran
(output/demo/<detector>/teacher/model_final.pth), else a randomly initialised teacher is
saved and used (timing does not depend on the weights). Results:
benchmarks/results/refresh_<detector>_<device>.json.
"""
import argparse
import json
import os
import sys
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, ROOT, load_cfg, machine  # noqa: E402

from gkd_d2 import PrototypeRefresher  # noqa: E402
from gkd_d2.data.builtin import register_datasets_from_cfg  # noqa: E402
from gkd_d2.data.generated import DEMO_CONFIGS  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--detector", choices=sorted(DEMO_CONFIGS), default="faster_rcnn")
    args = parser.parse_args()
    teacher_yaml, _, gkd_yaml = DEMO_CONFIGS[args.detector]
    weights = os.path.join(ROOT, "output/demo", args.detector, "teacher/model_final.pth")
    if not os.path.isfile(weights):
        tcfg = load_cfg(teacher_yaml, ["MODEL.DEVICE", "cpu"])
        weights = os.path.join(tempfile.mkdtemp(), "teacher.pth")
        DetectionCheckpointer(build_model(tcfg), save_dir=os.path.dirname(weights)).save("teacher")
    cfg = load_cfg(gkd_yaml, ["MODEL.DEVICE", args.device, "DISTILL.TEACHER.WEIGHTS", weights])
    register_datasets_from_cfg(cfg)
    model = build_model(cfg)
    refresher = PrototypeRefresher(cfg)
    first = refresher.refresh(model, 0)
    second = refresher.refresh(model, 1)
    result = {
        **machine(args.device),
        "detector": args.detector,
        "config": gkd_yaml,
        "train_images": len(refresher.dataset_dicts),
        "instances": first["instances"],
        "prototypes": first["prototypes"],
        "levels": model.instance_levels,
        "first_refresh_s (teacher + student features, PGM)": round(first["seconds"], 3),
        "cached_refresh_s (student features, PGM)": round(second["seconds"], 3),
        "teacher_cache_speedup": round(first["seconds"] / second["seconds"], 2),
    }
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"refresh_{args.detector}_{args.device.split(':')[0]}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count())
    main()
