#!/usr/bin/env python
"""Does the demo teacher know the classes of the "shapes" data? A check of the data itself.

Trains the demo teacher (ResNet-34 FPN, from scratch; ``quality.py``'s configs) on the
``gkd_shapes_train`` split with the replica's schedule, or reuses ``--teacher-weights`` / a
finished run in ``<output>/<detector>/teacher``, evaluates COCO AP on ``gkd_shapes_val``, then
pools every validation GT instance the way the global term sees it (7x7 ROIAlign at the GT's
FPN level, canonical level assignment, spatial mean) and measures nearest-class-mean accuracy
(cosine; class means from the even-indexed instances, scored on the odd ones, as
``probe_global.py`` does):

- ``ncm_clear`` / ``ncm_ambiguous``: scored on the clear / the ambiguous instances (the data's
  own ``ambiguous`` flag: small, blurred, occluded or truncated, measured when generated);
- ``ncm_by_reason``: on the instances with each ambiguity reason;
- ``ncm_pairs_clear`` / ``ncm_pairs_ambiguous``: the same restricted to the look-alike pairs
  (disc/ring, square/notched_square);
- ``ncm_grid_clear`` / ``ncm_grid_ambiguous``: NCM of the same 7x7 grids flattened instead of
  averaged (``DISTILL.INSTANCE_POOLING flatten``): whether the class is in the layout of the
  features rather than in their channel means.

The canonical rule (224 px at P4) sends every box of these 160 px images to the lowest level,
P3, whereas RetinaNet's anchors (12-160 px on P3-P7) detect a 40 px box on P4/P5: P3 cells
inside a large box are trained as background there, so that NCM says what the *global term*
sees, not what the teacher knows. Two checks of the teacher itself, on every instance:

- ``own_clear`` / ``own_ambiguous`` / ``own_pairs_*`` / ``own_by_reason``: accuracy of the
  detector's own classification of the GT box (RetinaNet: the classification head's argmax at
  the anchor of highest IoU; Faster R-CNN: the box head's argmax, background excluded);
- ``ncm_own_level_clear`` / ``ncm_own_level_ambiguous``: NCM of the features pooled at the
  level the detector itself uses for the box (RetinaNet: that anchor's level).

Writes ``benchmarks/investigations/results/probe_data_<detector>.json``; a record of earlier data (other
generator parameters) in that file is kept under ``previous``.

    OMP_NUM_THREADS=1 python benchmarks/investigations/probe_data.py --detector retinanet
"""
import argparse
import json
import logging
import os
import sys

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from common import DEMO_CONFIGS as CONFIGS, INVESTIGATION_RESULTS as RESULTS, METRICS, load_cfg, machine, train_eval  # noqa: E402
from probe_common import ncm, own_view, validation_inputs  # noqa: E402

from gkd_d2 import DistillationCheckpointer, DistillTrainer  # noqa: E402
from gkd_d2.data.builtin import register_datasets_from_cfg  # noqa: E402
from gkd_d2.data.generated import generated_dataset_opts  # noqa: E402
from gkd_d2.data.generated.shapes import AMBIGUITY_REASONS, SHAPES_CLASSES  # noqa: E402
from gkd_d2.schedule import schedule  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", choices=sorted(CONFIGS), default="retinanet")
    p.add_argument("--device", default="cpu")
    # the replica's teacher schedule (benchmarks/quality_cpu.sh; its "teacher trained 3x
    # longer" tables use --teacher-iters 3600)
    p.add_argument("--teacher-iters", type=int, default=1200)
    p.add_argument("--ims-per-batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--workers", type=int, default=1, help="DATALOADER.NUM_WORKERS")
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--output", default="output/probe_data")
    p.add_argument("--teacher-weights", default="", help="a teacher already trained on this data")
    p.add_argument("--results", default="", help="json to write (default results/probe_data_<detector>.json)")
    p.add_argument("--attempt", default="", help="what this data version changed (the RESULTS.md table's column)")
    return p.parse_args()


def teacher_cfg(args):
    out = os.path.join(args.output, args.detector, "teacher")
    opts = [
        "MODEL.DEVICE", args.device, "DATALOADER.NUM_WORKERS", str(args.workers),
        *generated_dataset_opts("shapes", root=os.path.join(args.output, "data")),
        "DATASETS.SHAPES.NUM_TRAIN", str(args.num_train), "DATASETS.SHAPES.NUM_VAL", str(args.num_val),
        "DATASETS.SHAPES.IMAGE_SIZE", str(args.image_size), "OUTPUT_DIR", out,
    ]
    return load_cfg(CONFIGS[args.detector][0], opts + schedule(args.teacher_iters) + [
        "SOLVER.IMS_PER_BATCH", str(args.ims_per_batch), "SOLVER.BASE_LR", str(args.lr)])


def instance_levels(model):
    """The FPN levels the global term pools instances from: the head's (RetinaNet, P3-P7) or
    the box pooler's (Faster R-CNN, P2-P5)."""
    heads = getattr(model, "roi_heads", None)
    return list(heads.box_in_features) if heads is not None else list(model.head_in_features)


@torch.no_grad()
def pooled_gt_features(model, inputs, boxes, batch=16):
    """(N, D, 7, 7): each GT box ROIAligned 7x7 at its canonically assigned level."""
    levels = instance_levels(model)
    shapes = model.backbone.output_shape()
    pooler = ROIPooler(7, tuple(1.0 / shapes[f].stride for f in levels), 0, "ROIAlignV2")
    out = []
    for s in range(0, len(inputs), batch):
        images = model.preprocess_image(inputs[s : s + batch])
        feats = model.backbone(images.tensor)
        out.append(pooler([feats[f] for f in levels], [Boxes(b) for b in boxes[s : s + batch]]))
    return torch.cat(out)


def class_knowledge(cfg, model):
    """NCM accuracies of the pooled GT features on clear / ambiguous validation instances."""
    num_classes = len(SHAPES_CLASSES)
    records, inputs, boxes = validation_inputs(cfg, num_classes)
    by_id = {d["image_id"]: d for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])}
    anns = [by_id[r.image_id]["annotations"][j] for r in records for j in r.ann_index]
    classes = torch.as_tensor(np.concatenate([r.classes for r in records])).long()
    grid = pooled_gt_features(model, inputs, boxes).float().cpu()
    x = grid.mean(dim=(2, 3))  # the instance vector of METHOD.md section 1 (DISTILL.INSTANCE_POOLING "mean")
    amb = torch.tensor([bool(a["ambiguous"]) for a in anns])
    pairs = torch.zeros_like(amb)
    for a, b in MetadataCatalog.get(cfg.DATASETS.TEST[0]).lookalike_pairs:
        pairs |= (classes == a) | (classes == b)
    scored = torch.arange(len(classes)) % 2 == 1  # what ncm() scores
    own, x_own = own_view(model, inputs, boxes)
    hit = own == classes

    def acc(keep):
        return float(hit[keep].float().mean()) if keep.any() else None

    out = {
        "n_instances": len(classes), "n_clear": int((~amb).sum()), "n_ambiguous": int(amb.sum()),
        "n_scored_clear": int((scored & ~amb).sum()), "n_scored_ambiguous": int((scored & amb).sum()),
        "ncm_all": ncm(x, classes, num_classes),
        "ncm_clear": ncm(x, classes, num_classes, ~amb),
        "ncm_ambiguous": ncm(x, classes, num_classes, amb),
        "ncm_pairs_clear": ncm(x, classes, num_classes, pairs & ~amb),
        "ncm_pairs_ambiguous": ncm(x, classes, num_classes, pairs & amb),
        # the same 7x7 grids flattened (DISTILL.INSTANCE_POOLING "flatten"): the layout kept
        "ncm_grid_clear": ncm(grid.flatten(1), classes, num_classes, ~amb),
        "ncm_grid_ambiguous": ncm(grid.flatten(1), classes, num_classes, amb),
        "ncm_by_reason": {}, "n_by_reason": {},
        # the detector's own classification of each GT box (all instances, not only odd ones)
        "own_clear": acc(~amb), "own_ambiguous": acc(amb),
        "own_pairs_clear": acc(pairs & ~amb), "own_pairs_ambiguous": acc(pairs & amb), "own_by_reason": {},
        # NCM of the features pooled at the level the detector itself uses for each box
        "ncm_own_level_clear": ncm(x_own, classes, num_classes, ~amb),
        "ncm_own_level_ambiguous": ncm(x_own, classes, num_classes, amb),
    }
    for reason in AMBIGUITY_REASONS:
        keep = torch.tensor([reason in a["ambiguity"] for a in anns])
        out["n_by_reason"][reason] = int(keep.sum())
        out["ncm_by_reason"][reason] = ncm(x, classes, num_classes, keep) if (keep & scored).any() else None
        out["own_by_reason"][reason] = acc(keep)
    return out


def write(path, record):
    """Write ``record``; an older record made on other data is kept under ``previous``."""
    previous = []
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        previous = old.pop("previous", [])
        if old.get("data_params") != record["data_params"] or old.get("teacher_iters") != record["teacher_iters"]:
            previous.append(old)
    with open(path, "w") as f:
        json.dump({**record, "previous": previous}, f, indent=1)
    print("wrote", path, flush=True)


def main():
    args = parse_args()
    setup_logger()
    setup_logger(name="gkd_d2")
    logging.getLogger("detectron2").setLevel(logging.INFO)
    cfg = teacher_cfg(args)
    register_datasets_from_cfg(cfg)
    weights = args.teacher_weights or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    train_s = None
    if os.path.isfile(weights):
        model = DistillTrainer.build_model(cfg)
        DistillationCheckpointer(model).load(weights)
        bbox = DistillTrainer.test(cfg, model)["bbox"]
        ap = {k: float(bbox[k]) for k in METRICS}
    else:
        seed_all_rng(0)
        ap, train_s = train_eval(cfg)
        model = DistillTrainer.build_model(cfg)
        DistillationCheckpointer(model).load(weights)
    print("teacher", ap, flush=True)
    torch.set_grad_enabled(False)
    knowledge = class_knowledge(cfg, model.eval())
    print(knowledge, flush=True)
    info = machine(args.device)
    record = {
        "detector": args.detector,
        "attempt": args.attempt,
        "dataset": list(cfg.DATASETS.TEST),
        "train_dataset": list(cfg.DATASETS.TRAIN),
        "teacher_iters": args.teacher_iters,
        "ims_per_batch": args.ims_per_batch,
        "lr": args.lr,
        **ap,
        **knowledge,
        "train_s": train_s,
        "weights": weights,
        "data_params": MetadataCatalog.get(cfg.DATASETS.TEST[0]).shapes_params,
        "device": info["hardware"],
        "date": info["date"],
        "machine": info,
    }
    write(args.results or os.path.join(RESULTS, f"probe_data_{args.detector}.json"), record)


if __name__ == "__main__":
    main()
