#!/usr/bin/env python
"""What one prototype refresh costs at COCO scale, as a fraction of a training epoch.

    python benchmarks/bench_refresh_coco.py [--device cuda] [--coco-json instances_train2017.json]

A refresh (``gkd_d2/prototypes/refresh.py``) reads every image that holds a sampled instance,
runs the student's backbone on it at the test-time scale (the teacher's features are pooled
once, at the first refresh, and cached), then runs PGM for every (level, class). In one run:

1. **Images read.** ``sample_instances`` (the code a refresh runs) on COCO train2017's
   annotations: the real file with ``--coco-json``, else :func:`coco_stats.coco_like_dicts`
   (118,287 images, 860,001 boxes with COCO's per-class instance and image counts and size
   split). ``MAX_SAMPLES`` 800, ``MIN_SIZE`` 30 px at the test scale (800 / 1333), for each
   ``DISTILL.PGM.SAMPLING`` (``uniform``, ``compact``).
2. **Extraction per image.** ``extract_features`` with the COCO configuration's student
   (ResNet-50 FPN) and teacher (ResNet-101 FPN), random weights, on random 640x480 JPEG images
   read from disk, ``DISTILL.PGM.BATCH_SIZE`` images per batch.
3. **PGM.** ``PrototypeRefresher._select`` for 80 classes x 5 levels on the sampled instance
   counts (at most 800 per class), D = 256, random features (its time does not depend on them).
4. **The epoch.** A training step of the student alone and of the distillation wrapper (the
   defaults), two 640x480 images resized to 800x1067 with 7 GT boxes each, as in training;
   an epoch is 118,287 images.

The refresh's fraction of an epoch = (images read x student extraction per image + PGM) /
(118,287 x distillation step per image); the first refresh adds the teacher's extraction once.
Results: ``benchmarks/results/refresh_coco_<device>.json``.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cost import COCO, sync, tame_frozen_bn, zoo_or_project_cfg  # noqa: E402
from coco_stats import coco_like_dicts  # noqa: E402
from common import RESULTS, load_cfg, machine  # noqa: E402

from gkd_d2 import PrototypeRefresher  # noqa: E402
from gkd_d2.prototypes.instances import SAMPLINGS, ImageInstances, extract_features_from_cfg, sample_instances  # noqa: E402


def images_read(dicts, cfg):
    """{sampling: {images, instances, sampling_s, per_class}} of ``sample_instances``."""
    p = cfg.DISTILL.PGM
    out = {}
    for sampling in SAMPLINGS:
        start = time.perf_counter()
        records = sample_instances(dicts, 80, int(p.MAX_SAMPLES), float(p.MIN_SIZE), int(p.SEED),
                                   cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, sampling)
        sec = time.perf_counter() - start
        classes = np.concatenate([r.classes for r in records])
        out[sampling] = {
            "images": len(records),
            "instances": int(len(classes)),
            "sampling_s": round(sec, 2),
            "per_class": np.bincount(classes, minlength=80).tolist(),
        }
        print(sampling, {k: v for k, v in out[sampling].items() if k != "per_class"}, flush=True)
    return out


def timed(fn, iters, device):
    fn()  # warm-up
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def extraction_per_image(cfg, model, dicts, num_images, iters, device):
    """Seconds per image of the student's and the teacher's instance extraction."""
    tmp = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    records = []
    for i, d in enumerate(dicts[: num_images * 4]):
        if len(records) == num_images or not d["annotations"]:
            continue
        path = os.path.join(tmp, f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (d["height"], d["width"], 3), dtype=np.uint8)).save(path, quality=90)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in d["annotations"])], np.float32)
        records.append(ImageInstances(path, i, d["height"], d["width"], boxes,
                                      np.array([a["category_id"] for a in d["annotations"]]), np.arange(len(boxes))))
    with torch.no_grad():
        model.eval()
        student = timed(lambda: extract_features_from_cfg(cfg, model, model.student_features, records), iters, device)
        teacher = timed(lambda: extract_features_from_cfg(cfg, model, model.teacher_features, records), iters, device)
    model.train()
    return student / len(records), teacher / len(records), int(sum(len(r.boxes) for r in records))


def training_batch(device, seed=0):
    """Two 640x480 images at the training scale (800x1067), 7 GT boxes each."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(2):
        h, w = 800, 1067
        corner = torch.rand(7, 2, generator=g) * torch.tensor([w, h]) * 0.6
        extent = 40 + torch.rand(7, 2, generator=g) * 300
        boxes = torch.cat([corner, torch.minimum(corner + extent, torch.tensor([w - 1.0, h - 1.0]))], 1)
        inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.arange(7) % 80)
        image = torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8)
        batch.append({"image": image, "instances": inst, "height": 480, "width": 640})
    return batch


def step_per_image(model, batch, iters, device):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9)

    def step():
        with EventStorage(0):
            loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    return timed(step, iters, device) / len(batch)


def pgm_seconds(cfg, model, per_class, device):
    """``PrototypeRefresher._select`` on random (5, N, 256) features with ``per_class`` instances."""
    refresher = PrototypeRefresher(cfg, dataset_dicts=[])
    classes = np.repeat(np.arange(len(per_class)), per_class)
    n, levels = len(classes), len(model.instance_levels)
    g = torch.Generator().manual_seed(0)
    refresher._meta = torch.stack([torch.as_tensor(classes), torch.arange(n), torch.zeros(n, dtype=torch.long),
                                   torch.randint(900, 90000, (n,), generator=g)], 1)
    refresher._teacher_feats = torch.randn(levels, n, 256, generator=g)
    feats_s = torch.randn(levels, n, 256, generator=g)
    start = time.perf_counter()
    refresher._select(feats_s)
    sync(device)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--detector", choices=sorted(COCO), default="faster_rcnn")
    parser.add_argument("--coco-json", default="", help="instances_train2017.json (else COCO-like counts)")
    parser.add_argument("--extract-images", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    teacher_yaml, student_yaml, gkd_yaml = COCO[args.detector]

    if args.coco_json:
        from detectron2.data.datasets import load_coco_json

        dicts = load_coco_json(args.coco_json, "", "coco_2017_train_bench")
        source = args.coco_json
    else:
        dicts = coco_like_dicts(seed=0)
        source = "coco_stats.coco_like_dicts (COCO train2017 per-class instance and image counts)"
    tmp = tempfile.mkdtemp()
    tcfg = zoo_or_project_cfg(teacher_yaml, ["MODEL.DEVICE", args.device])
    DetectionCheckpointer(tame_frozen_bn(build_model(tcfg)), save_dir=tmp).save("teacher")
    cfg = load_cfg(gkd_yaml, ["MODEL.DEVICE", args.device, "DISTILL.TEACHER.WEIGHTS", os.path.join(tmp, "teacher.pth")])
    reads = images_read(dicts, cfg)

    model = build_model(cfg)
    tame_frozen_bn(model.student)
    student = tame_frozen_bn(build_model(zoo_or_project_cfg(student_yaml, ["MODEL.DEVICE", args.device])))
    student.load_state_dict(model.student.state_dict())
    batch = training_batch(args.device)
    student_step = step_per_image(student, batch, args.iters, args.device)
    with torch.no_grad():  # prototypes in every slot: the distillation step does all its work
        model.prototypes.teacher.normal_()
        model.prototypes.student.normal_()
        model.prototypes.valid.fill_(True)
    distill_step = step_per_image(model, batch, args.iters, args.device)
    s_img, t_img, n_inst = extraction_per_image(cfg, model, dicts, args.extract_images, args.iters, args.device)
    print(f"step per image: student {student_step:.2f} s, distillation {distill_step:.2f} s; "
          f"extraction per image: student {s_img:.2f} s, teacher {t_img:.2f} s", flush=True)

    result = {**machine(args.device), "detector": args.detector, "annotations": source,
              "train_images": len(dicts), "max_samples": cfg.DISTILL.PGM.MAX_SAMPLES,
              "min_size": cfg.DISTILL.PGM.MIN_SIZE, "test_scale": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST],
              "student_step_s_per_image": student_step, "distillation_step_s_per_image": distill_step,
              "epoch_s": distill_step * len(dicts),
              "student_extraction_s_per_image": s_img, "teacher_extraction_s_per_image": t_img,
              "extraction_timed_on": f"{args.extract_images} random 640x480 JPEG images, {n_inst} boxes",
              "sampling": {}}
    for sampling, r in reads.items():
        pgm = pgm_seconds(cfg, model, r["per_class"], args.device)
        refresh = r["images"] * s_img + pgm
        result["sampling"][sampling] = {
            "images_read": r["images"], "instances": r["instances"], "sampling_s (once)": r["sampling_s"],
            "pgm_s": round(pgm, 2), "refresh_s": round(refresh, 1),
            "refresh_fraction_of_epoch": refresh / result["epoch_s"],
            "first_refresh_extra_teacher_s": round(r["images"] * t_img, 1),
            "first_refresh_extra_fraction_of_epoch": r["images"] * t_img / result["epoch_s"],
        }
        print(sampling, result["sampling"][sampling], flush=True)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"refresh_coco_{args.device.split(':')[0]}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
