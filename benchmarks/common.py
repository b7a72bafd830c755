"""What the benchmark scripts share: where results go and on what machine they were measured,
config loading, the configurations timed, a random training batch, the rows of the quality
replica, training + evaluation of one row, the plateau search over doubled schedules, and the
locked update of a results file.

Every script in ``benchmarks/`` (and ``benchmarks/investigations/``) imports this module and no
other script."""
import datetime
import fcntl
import json
import math
import os
import platform
import statistics
import subprocess
import time

import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.structures import Boxes, Instances

from gkd_d2.config import load_config
from gkd_d2.config_files import resolve_config_file
from gkd_d2.data.generated import DEMO_CONFIGS, GENERATED_DATASETS, generated_dataset_opts
from gkd_d2.schedule import METRICS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
#: where the scripts of ``benchmarks/investigations`` write their records
INVESTIGATION_RESULTS = os.path.join(ROOT, "benchmarks", "investigations", "results")
#: the replica's images: train, val, side in pixels
DATA_SIZES = (2000, 200, 160)

#: teacher and student configs of the model zoo, and this project's COCO distillation config
COCO = {
    "faster_rcnn": ("COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml", "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
                    "configs/COCO/gkd_faster_rcnn_R101_to_R50_FPN_2x.yaml"),
    "retinanet": ("COCO-Detection/retinanet_R_101_FPN_3x.yaml", "COCO-Detection/retinanet_R_50_FPN_3x.yaml",
                  "configs/COCO/gkd_retinanet_R101_to_R50_FPN_2x.yaml"),
}
#: the capacity pair per detector: (teacher, student alone, distillation) configs, the demo's ResNet-34
#: FPN-128 teacher and a half-width ResNet-18 FPN-64 student on the harder shapes data
CAPACITY_CONFIGS = {
    det: (f"configs/Capacity/teacher_{det}_R34_FPN.yaml", f"configs/Capacity/student_{det}_R18w32_FPN.yaml",
          f"configs/Capacity/gkd_{det}_R34_to_R18w32_FPN.yaml")
    for det in ("faster_rcnn", "retinanet")
}
#: scale -> (configs, GT boxes per image as (count, first class), image size, description)
SCALES = {
    "demo": (DEMO_CONFIGS, ((6, 0), (4, 1), (5, 2), (3, 0)), 160,
             "Demo configurations (teacher ResNet-34 FPN-128, student ResNet-18 FPN-64)"),
    "coco": (COCO, ((6, 0), (4, 1)), 800,
             "COCO configurations (teacher ResNet-101 FPN, student ResNet-50 FPN, 80 classes)"),
}

#: replica row -> (DISTILL.KNOWLEDGE, prototypes on, DISTILL.PGM.SELECTION)
METHODS = {
    "gkd": (["feature", "response", "global"], True, "pgm"),
    # module ablation (Table 3)
    "feature": (["feature"], False, "pgm"),
    "response": (["response"], False, "pgm"),
    "global": (["global"], True, "pgm"),
    "feature+global": (["feature", "global"], True, "pgm"),
    "response+global": (["response", "global"], True, "pgm"),
    "feature+response": (["feature", "response"], False, "pgm"),
    # prototype ablation (Table 6): the full method with other prototypes
    "gkd-kmeans": (["feature", "response", "global"], True, "kmeans"),
    "gkd-random": (["feature", "response", "global"], True, "random"),
    "gkd-ambiguous": (["feature", "response", "global"], True, "ambiguous"),
    # local-knowledge methods (Tables 1, 2) and their +prototypes variants (Table 4)
    "chen": (["chen_cls", "chen_reg", "chen_hint"], False, "pgm"),
    "fitnet": (["fitnet"], False, "pgm"),
    "fgfi": (["fgfi"], False, "pgm"),
    "defeat": (["defeat"], False, "pgm"),
    "defeat+prototypes": (["defeat"], True, "pgm"),
    "rkd": (["rkd"], False, "pgm"),
    "kd": (["kd"], False, "pgm"),
    "kd+prototypes": (["kd"], True, "pgm"),
}

__all__ = ["CAPACITY_CONFIGS", "COCO", "DATA_SIZES", "DEMO_CONFIGS", "INVESTIGATION_RESULTS", "METHODS", "METRICS", "RESULTS", "ROOT", "SCALES", "data_opts",
           "fill_prototypes", "load_cfg", "load_results", "mean_spread", "machine", "plateau_search", "random_batch", "save", "sync", "table_head", "write_report", "tame_frozen_bn", "train_eval",
           "zoo_or_project_cfg"]


def machine(device="cpu"):
    """A dict saying on what machine and when a figure was measured."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
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


def data_opts(dataset, device, workers, num_train=DATA_SIZES[0], num_val=DATA_SIZES[1], image_size=DATA_SIZES[2]):
    """Config overrides every replica run shares: the device, the ``dataset``'s splits and sizes,
    and its number of classes (student and teacher). The splits live under
    ``output/replica/<dataset>/data`` at the default sizes and under ``data_<train>x<size>_val<val>``
    at others: a generated folder is regenerated when its parameters change, so runs of other
    sizes must not share it with runs still reading it."""
    node = GENERATED_DATASETS[dataset][0]
    folder = "data" if (num_train, num_val, image_size) == DATA_SIZES else \
        f"data_{num_train}x{image_size}_val{num_val}"
    return [
        "MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", str(workers),
        *generated_dataset_opts(dataset, root=os.path.join("output", "replica", dataset, folder)),
        f"DATASETS.{node}.NUM_TRAIN", str(num_train), f"DATASETS.{node}.NUM_VAL", str(num_val),
        f"DATASETS.{node}.IMAGE_SIZE", str(image_size),
    ]


def zoo_or_project_cfg(path, opts):
    """One of this project's configs, or a model-zoo config ("COCO-Detection/...")."""
    local = os.path.join(ROOT, path)
    return load_cfg(local if os.path.isfile(local) else resolve_config_file(path), opts)


def sync(device):
    """Wait for the device's queued work (CUDA), so that a timer reads the work's end."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def tame_frozen_bn(model):
    """Zero the scale of the last FrozenBN of every bottleneck block (zero-init residuals), so
    that a randomly initialised ResNet-50/101 with the zoo's FrozenBN keeps finite activations
    (unnormalised, they overflow to Inf by the last stage and Detectron2's RPN stops with
    "Training has diverged"). The arithmetic per step is unchanged. Returns ``model``."""
    for name, module in model.named_modules():
        if name.endswith("conv3.norm") and isinstance(module, FrozenBatchNorm2d):
            module.weight.zero_()
    return model


def fill_prototypes(model, device):
    """Random prototypes in every slot so the global term and robust weights do real work."""
    bank = model.prototypes
    if bank is not None:
        with torch.no_grad():
            bank.teacher.normal_()
            bank.student.normal_()
            bank.valid.fill_(True)
            bank.last_refresh_iter.fill_(0)


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


def train_eval(cfg):
    """Train ``cfg`` with :class:`gkd_d2.DistillTrainer`, then evaluate it on ``DATASETS.TEST``.
    Returns ({metric: value} of :data:`METRICS`, training seconds)."""
    from gkd_d2 import DistillTrainer
    from gkd_d2.utils import unwrap_model

    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    bbox = DistillTrainer.test(cfg, unwrap_model(trainer.model))["bbox"]
    return {k: float(bbox[k]) for k in METRICS}, seconds


def plateau_search(train, iters, tol, max_iters):
    """Double a schedule until doubling it no longer pays: ``train(n)`` trains from scratch for n
    iterations and returns (weights, AP); the search stops at the first n whose AP is within TOL
    of the AP at n / 2 (a plateau: two checkpoints < 0.3 AP apart), or when 2n would
    exceed MAX_ITERS. Returns (weights, iters, schedules, reached): the longest schedule trained,
    [[n, AP], ...] of every schedule, and whether the plateau was reached (None for TOL <= 0: one
    schedule, no check)."""
    weights, ap = train(iters)
    schedules = [[iters, ap]]
    while tol > 0 and 2 * iters <= max_iters:
        iters *= 2
        weights, ap = train(iters)
        schedules.append([iters, ap])
        if abs(ap - schedules[-2][1]) < tol:
            return weights, iters, schedules, True
    return weights, iters, schedules, (False if tol > 0 else None)


def save(record, path, key_fields=("detector", "method", "seed", "device")):
    """Add ``record`` to the json list at ``path``, replacing the record with the same
    ``key_fields``; safe for several processes sharing one results file (an exclusive lock around
    read-modify-write, and the new list renamed into place). ``date`` is set to now: when the
    row finished."""
    record = {**record, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    key = lambda r: tuple(r.get(k) for k in key_fields)  # noqa: E731
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = json.load(open(path)) if os.path.isfile(path) else []
        records = [r for r in records if key(r) != key(record)] + [record]
        with open(path + ".tmp", "w") as f:
            json.dump(records, f, indent=1)
        os.replace(path + ".tmp", path)


def load_results(name, folder=RESULTS):
    """The json of ``folder/name``, or None when there is none."""
    path = os.path.join(folder, name)
    return json.load(open(path)) if os.path.isfile(path) else None


def mean_spread(values):
    """'mean ± population std' of the values that are not NaN ('nan' when none is)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "nan"  # e.g. APl: no large object in the validation set
    m = statistics.fmean(values)
    return f"{m:.2f} ± {statistics.pstdev(values):.2f}" if len(values) > 1 else f"{m:.2f}"


def table_head(header):
    """The first two lines of a Markdown table with these column names."""
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]


def write_report(path, lines):
    """Write a generated markdown report (``lines`` joined by newlines) to ``path``."""
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", path)
