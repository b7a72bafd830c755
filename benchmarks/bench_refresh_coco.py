#!/usr/bin/env python
"""What one prototype refresh costs at COCO scale, as a fraction of a training epoch.

    python benchmarks/bench_refresh_coco.py [--device cuda] [--coco-json instances_train2017.json]

A refresh (``gkd_d2/prototypes/refresh.py``) reads every image that holds a sampled instance,
runs the student's backbone on it at the test-time scale (the teacher's features are pooled
once, at the first refresh, and cached), then runs PGM for every (level, class). In one run:

1. **Images read.** ``sample_instances`` (the code a refresh runs) on COCO train2017's
   annotations: the real file with ``--coco-json``, else :func:`coco_like_dicts`
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
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import COCO, RESULTS, load_cfg, machine, sync, tame_frozen_bn, zoo_or_project_cfg  # noqa: E402

from gkd_d2 import PrototypeRefresher  # noqa: E402
from gkd_d2.prototypes.instances import SAMPLINGS, ImageInstances, extract_features_from_cfg, sample_instances  # noqa: E402


# COCO train2017's class frequencies, and a COCO-like annotation set built from them.
#
# ``INSTANCES``: annotations per class in ``instances_train2017.json`` (they sum to 860,001, the
# file's total). ``IMAGES``: images that hold the class (published per-class statistics of the
# same file; person 64,115 and car 12,251, for instance). 118,287 training images, most 640x480.
#
# :func:`coco_like_dicts` spreads each class's instances over its number of images (drawn
# independently per class: real COCO classes co-occur more than that, which only helps a sampler
# that reuses images) with box sizes from a log-normal fitted to COCO's size split (41% small,
# < 32^2 px; 34% medium, < 96^2; 24% large) and aspect ratios up to 3. With the real file
# (``--coco-json``) the benchmarks use it instead.


NUM_IMAGES = 118287
IMAGE_HW = (480, 640)

# class: (instances, images)
COCO_TRAIN2017 = {
    "person": (262465, 64115), "bicycle": (7113, 3252), "car": (43867, 12251), "motorcycle": (8725, 3502),
    "airplane": (5135, 2986), "bus": (6069, 3952), "train": (4571, 3588), "truck": (9973, 6127),
    "boat": (10759, 3025), "traffic light": (12884, 4139), "fire hydrant": (1865, 1711),
    "stop sign": (1983, 1734), "parking meter": (1285, 705), "bench": (9838, 5570), "bird": (10806, 3237),
    "cat": (4768, 4114), "dog": (5508, 4385), "horse": (6587, 2941), "sheep": (9509, 1529),
    "cow": (8147, 1968), "elephant": (5513, 2143), "bear": (1294, 960), "zebra": (5303, 1916),
    "giraffe": (5131, 2546), "backpack": (8720, 5528), "umbrella": (11431, 4142), "handbag": (12354, 6841),
    "tie": (6496, 3810), "suitcase": (6192, 2402), "frisbee": (2682, 2268), "skis": (6646, 3082),
    "snowboard": (2685, 1654), "sports ball": (6347, 4262), "kite": (9076, 2352), "baseball bat": (3276, 2603),
    "baseball glove": (3747, 2629), "skateboard": (5543, 3476), "surfboard": (6126, 3486),
    "tennis racket": (4812, 3394), "bottle": (24342, 8501), "wine glass": (7913, 2533), "cup": (20650, 9189),
    "fork": (5479, 3555), "knife": (7770, 4326), "spoon": (6165, 3529), "bowl": (14358, 7111),
    "banana": (9458, 2243), "apple": (5851, 1586), "sandwich": (4373, 2365), "orange": (6399, 1699),
    "broccoli": (7308, 1939), "carrot": (7852, 1683), "hot dog": (2918, 1222), "pizza": (5821, 3166),
    "donut": (7179, 1523), "cake": (6353, 2925), "chair": (38491, 12774), "couch": (5779, 4423),
    "potted plant": (8652, 4452), "bed": (4192, 3682), "dining table": (15714, 11837), "toilet": (4157, 3353),
    "tv": (5805, 4768), "laptop": (4970, 3524), "mouse": (2262, 1964), "remote": (5703, 3221),
    "keyboard": (2855, 2115), "cell phone": (6434, 4803), "microwave": (1673, 1547), "oven": (3334, 2877),
    "toaster": (225, 217), "sink": (5610, 4678), "refrigerator": (2637, 2360), "book": (24715, 5332),
    "clock": (6334, 4659), "vase": (6613, 3593), "scissors": (1481, 975), "teddy bear": (4793, 2140),
    "hair drier": (198, 189), "toothbrush": (1954, 1007),
}
assert sum(n for n, _ in COCO_TRAIN2017.values()) == 860001


def coco_like_dicts(seed: int = 0, num_images: int = NUM_IMAGES):
    """Detectron2 dataset dicts (no files) with COCO train2017's per-class instance and image
    counts, scaled by ``num_images / 118287``."""
    rng = np.random.default_rng(seed)
    frac = num_images / NUM_IMAGES
    img, cls = [], []
    for c, (n_inst, n_img) in enumerate(COCO_TRAIN2017.values()):
        n_img, n_inst = max(1, round(n_img * frac)), max(1, round(n_inst * frac))
        images = rng.choice(num_images, n_img, replace=False)
        extra = rng.multinomial(n_inst - n_img, np.full(n_img, 1 / n_img))  # >= 1 per image
        img.append(np.repeat(images, 1 + extra))
        cls.append(np.full(n_inst, c))
    img, cls = np.concatenate(img), np.concatenate(cls)
    # sqrt(area) log-normal: P(< 32) = 0.41, P(< 96) = 0.75; aspect ratio log-uniform in [1/3, 3].
    side = np.exp(rng.normal(3.744, 1.218, len(img)))
    ratio = np.exp(rng.uniform(-np.log(3), np.log(3), len(img)))
    h, w = IMAGE_HW
    bw = np.clip(side * np.sqrt(ratio), 1, w - 1)
    bh = np.clip(side / np.sqrt(ratio), 1, h - 1)
    x0 = rng.uniform(0, 1, len(img)) * (w - bw)
    y0 = rng.uniform(0, 1, len(img)) * (h - bh)
    order = np.argsort(img, kind="stable")
    bounds = np.searchsorted(img[order], np.arange(num_images + 1))
    dicts = []
    for i in range(num_images):
        rows = order[bounds[i] : bounds[i + 1]]
        anns = [
            {"bbox": [x0[r], y0[r], bw[r], bh[r]], "bbox_mode": BoxMode.XYWH_ABS, "category_id": int(cls[r]), "iscrowd": 0}
            for r in rows
        ]
        dicts.append({"file_name": f"{i:012d}.jpg", "image_id": i, "height": h, "width": w, "annotations": anns})
    return dicts


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
        source = "coco_like_dicts (COCO train2017 per-class instance and image counts)"
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
