"""Helpers shared by the benchmark scripts: machine description, config loading, a random
training batch."""
import datetime
import os
import platform
import subprocess

import torch
from detectron2.structures import Boxes, Instances

from gkd_d2.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def machine(device="cpu"):
    """A dict saying on what machine and when a figure was measured."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "hardware": name,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "code": code_version(),
    }


def code_version():
    """The git commit the figures were measured with ("+dirty" with uncommitted changes to
    tracked files other than the results), or "" outside a git checkout."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout  # noqa: E731
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results").strip()
        return run("rev-parse", "--short", "HEAD").strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return ""


def load_cfg(path, opts=()):
    """:func:`gkd_d2.config.load_config` of ``path`` relative to the repository root."""
    return load_config(os.path.join(ROOT, path), opts)


def random_batch(boxes_per_image, size, num_classes, seed=0):
    """Detectron2 training inputs: random ``size`` px images; image i gets ``n`` random GT boxes
    (8 px a side at least) of classes ``first, first + 1, ...`` mod ``num_classes``, for each
    ``(n, first)`` of ``boxes_per_image``."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for n, first in boxes_per_image:
        image = torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8)
        corner = torch.rand(n, 2, generator=g) * size * 0.5
        extent = 8 + torch.rand(n, 2, generator=g) * size * 0.4
        boxes = Boxes(torch.cat([corner, (corner + extent).clamp(max=size - 1)], dim=1))
        classes = (torch.arange(n) + first) % num_classes
        instances = Instances((size, size), gt_boxes=boxes, gt_classes=classes)
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch
