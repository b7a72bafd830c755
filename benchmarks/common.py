"""Helpers shared by the benchmark scripts: machine description, config loading."""
import datetime
import os
import platform

import torch
from detectron2.config import get_cfg

from gkd_d2 import add_distill_config

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
    }


def load_cfg(path, opts=()):
    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, path))
    cfg.merge_from_list(list(opts))
    return cfg
