"""What the probes of ``benchmarks/investigations`` share (a library: no script of its own). ``probe_global.py`` and ``probe_feature.py`` (trained runs of
``quality.py``, or of ``replica.py`` with ``--output output/replica/shapes --dataset shapes``):
their command line, the distillation model they load the runs into, their results file.
``probe_robust.py`` and ``probe_gradients.py`` (a trained pair of ``replica.py``): their command
line, checkpoint paths and config."""
import argparse
import json
import os
import sys

import torch

from common import INVESTIGATION_RESULTS as RESULTS, data_opts, load_cfg, machine

from detectron2.data import DatasetCatalog
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import Boxes, pairwise_iou

from gkd_d2 import DistillTrainer
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.data.generated import DEMO_CONFIGS, GENERATED_DATASETS, generated_dataset_opts
from gkd_d2.pooling import pool_instances
from gkd_d2.prototypes.instances import load_test_inputs, sample_instances


def probe_parser(doc):
    """--detector, --runs and the replica's data options (as ``quality.py`` ran them)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", choices=sorted(DEMO_CONFIGS), default="faster_rcnn")
    p.add_argument("--runs", nargs="+", required=True, help="run folders under <output>/<detector>")
    p.add_argument("--output", default="output/quality",
                   help="runs under <output>/<detector>, the data under <output>/data (the replica: output/replica/shapes)")
    p.add_argument("--dataset", choices=sorted(GENERATED_DATASETS), default="synth")
    p.add_argument("--teacher", default="", help="the teacher's .pth (default <output>/<detector>/teacher/model_final.pth)")
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--image-size", type=int, default=160)
    return p


def replica_probe_parser(doc):
    """The command line of the probes of a trained pair of ``replica.py`` (shapes data):
    --detector, --output (default output/replica/shapes/<detector>), --teacher, the data sizes
    replica.py ran with, and --results."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", choices=sorted(DEMO_CONFIGS), default="faster_rcnn")
    p.add_argument("--output", default="", help="default output/replica/shapes/<detector>")
    p.add_argument("--teacher", default="teacher", help="the teacher's folder under --output, or a .pth path")
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--results", default="", help="default benchmarks/results/<probe>_<detector>.json")
    return p


def replica_weights(out, name):
    """A run folder under ``out`` (its model_final.pth) or a .pth path as given."""
    return name if name.endswith(".pth") else os.path.join(out, name, "model_final.pth")


def exit_if_missing(paths):
    """Exit with a message naming every path in ``paths`` that is not a file, before any model is built."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        prog = os.path.splitext(os.path.basename(sys.argv[0]))[0]
        raise SystemExit(f"{prog}: no such checkpoint: " + ", ".join(missing))


def replica_checkpoints(args, names):
    """[checkpoint of each name]: each name as a run folder under ``--output`` (default
    output/replica/shapes/<detector>) or a .pth path; exits naming every one that is missing."""
    out = args.output or os.path.join("output", "replica", "shapes", args.detector)
    paths = [replica_weights(out, name) for name in names]
    exit_if_missing(paths)
    return paths


def replica_probe_cfg(args, teacher_weights):
    """The gkd config of ``args.detector`` on replica.py's shapes data, with that teacher; the
    datasets registered."""
    cfg = load_cfg(DEMO_CONFIGS[args.detector][2], data_opts(
        "shapes", "cpu", 0, args.num_train, args.num_val, args.image_size) + ["DISTILL.TEACHER.WEIGHTS", teacher_weights])
    register_datasets_from_cfg(cfg)
    return cfg


def probe_model(args, knowledge, prototypes: bool):
    """(cfg, DistillationDetector in eval mode with the replica's teacher): the runs' students
    and terms are loaded into it one after the other. Gradients are switched off."""
    check_runs(args)
    torch.set_grad_enabled(False)
    out = os.path.join(args.output, args.detector)
    node = GENERATED_DATASETS[args.dataset][0]
    cfg = load_cfg(
        DEMO_CONFIGS[args.detector][2],
        ["MODEL.DEVICE", "cpu", *generated_dataset_opts(args.dataset, root=os.path.join(args.output, "data"))]
        + [
            f"DATASETS.{node}.NUM_TRAIN", str(args.num_train), f"DATASETS.{node}.NUM_VAL", str(args.num_val),
            f"DATASETS.{node}.IMAGE_SIZE", str(args.image_size),
            "DISTILL.TEACHER.WEIGHTS", args.teacher or os.path.join(out, "teacher", "model_final.pth"),
            "DISTILL.PGM.ENABLED", str(prototypes),
        ],
    )
    cfg.DISTILL.KNOWLEDGE = list(knowledge)
    register_datasets_from_cfg(cfg)
    return cfg, DistillTrainer.build_model(cfg).eval()


def validation_inputs(cfg, num_classes, images=None):
    """Every GT instance (no size filter) of the first ``images`` validation images that have
    one: (records, Detectron2 test-time inputs, boxes per image in input pixels)."""
    val = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:images]
    records = sample_instances(val, num_classes, 10**9, 0.0, 0, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    inputs, boxes = load_test_inputs(records, cfg.INPUT.FORMAT, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return records, inputs, boxes


def check_runs(args):
    """Exit with a message naming every ``--runs`` folder (and the teacher) that has no
    ``model_final.pth``, before any model is built."""
    out = os.path.join(args.output, args.detector)
    paths = [args.teacher or os.path.join(out, "teacher", "model_final.pth")]
    exit_if_missing(paths + [os.path.join(out, run, "model_final.pth") for run in args.runs])


def run_state(args, run):
    """The model state dict of a run's ``model_final.pth``."""
    path = os.path.join(args.output, args.detector, run, "model_final.pth")
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def write_probe(name, args, payload):
    """benchmarks/results/<name>_<detector>.json (``..._<detector>_<output folder>.json`` for
    runs outside output/quality), with the machine and the date."""
    folder = os.path.basename(os.path.normpath(args.output))
    suffix = "" if folder == "quality" else f"_{folder}"
    path = os.path.join(RESULTS, f"{name}_{args.detector}{suffix}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine("cpu"), **payload}, f, indent=1)
    print("wrote", path)


def ncm(x, classes, num_classes, keep=None):
    """Cosine nearest-class-mean accuracy: means from even-indexed instances, scored on odd."""
    x = torch.nn.functional.normalize(x, dim=1)
    fit = torch.arange(len(x)) % 2 == 0
    means = torch.stack([x[fit & (classes == c)].mean(0) for c in range(num_classes)])
    pred = (x @ torch.nn.functional.normalize(means, dim=1).t()).argmax(1)
    score = ~fit if keep is None else ~fit & keep
    return float((pred[score] == classes[score]).float().mean())


@torch.no_grad()
def own_view(model, inputs, boxes, batch=16):
    """What the detector itself does with each GT box: (its own class prediction (N,), the FPN
    features pooled at the level the detector itself uses for the box (N, D)).

    RetinaNet: the classification head's argmax at the anchor of highest IoU with the box, and the
    pooled features at that anchor's level (its anchor sizes, not the canonical 224 px rule,
    decide which level detects a box). Faster R-CNN: the box head's argmax (background excluded)
    on the GT box, pooled by its own box pooler (canonical rule, P2-P5)."""
    heads = getattr(model, "roi_heads", None)
    preds, feats_out = [], []
    for s in range(0, len(inputs), batch):
        images = model.preprocess_image(inputs[s : s + batch])
        feats = model.backbone(images.tensor)
        bx = [b.to(images.tensor.device) for b in boxes[s : s + batch]]
        if heads is not None:
            x = heads.box_pooler([feats[f] for f in heads.box_in_features], [Boxes(b) for b in bx])
            scores, _ = heads.box_predictor(heads.box_head(x))
            preds.append(scores[:, :-1].argmax(1))
            feats_out.append(x.mean(dim=(2, 3)))
            continue
        levels = list(model.head_in_features)
        flist = [feats[f] for f in levels]
        anchors = model.anchor_generator(flist)
        level_of = torch.cat([torch.full((len(a),), i, dtype=torch.long) for i, a in enumerate(anchors)])
        all_anchors = Boxes.cat(anchors)
        logits = torch.cat([permute_to_N_HWA_K(x, model.num_classes) for x in model.head(flist)[0]], dim=1)
        level_index = []
        for i, b in enumerate(bx):
            best = pairwise_iou(Boxes(b), all_anchors).argmax(dim=1)
            preds.append(logits[i, best].argmax(1))
            level_index.append(level_of[best.cpu()])
        strides = {f: model.backbone.output_shape()[f].stride for f in levels}
        feats_out.append(pool_instances(feats, levels, strides, bx, torch.cat(level_index).to(bx[0].device)))
    return torch.cat(preds).cpu(), torch.cat(feats_out).float().cpu()
