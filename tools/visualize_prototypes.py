#!/usr/bin/env python
"""See the prototypes of a distillation checkpoint: galleries, relation-discrepancy histogram.

    python tools/visualize_prototypes.py \
        --config-file configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml \
        --checkpoint output/demo/gkd_faster_rcnn/model_final.pth --output vis/ [KEY VALUE ...]

writes, in ``--output``:

- ``gallery_<level>.png`` for every instance level: one row per class, one column per prototype
  slot, each cell the prototype instance cropped from its image, each row labelled with the mean /
  min robust weight (Eq. 8) of the class's sampled instances at that level;
- ``discrepancy_histogram.png``: the paper's Figure 1 (right), the teacher/student discrepancy of
  relations ``|max_j beta_T,ij - max_j beta_S,ij|`` of the sampled instances (every level) with
  the PGM prototypes as bases vs. as many random instances of the same class
  (``--num-random-trials`` draws, ``--seed``),

and prints their paths and the two mean discrepancies. The instances are those PGM samples
(``DISTILL.PGM.*``, from ``DISTILL.PGM.DATASETS`` or ``DATASETS.TRAIN``; the synthetic datasets
and the ``DATASETS.COCO_JSON`` entries of the config are registered here). A checkpoint without
prototypes (e.g. a plain detector, or one written before the first refresh) gets them
regenerated with ``PrototypeRefresher`` first.
"""

import argparse
import os
import sys

import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from gkd_d2 import DistillationCheckpointer, PrototypeRefresher
from gkd_d2.config import load_config
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.prototypes.refresh import training_dicts
from gkd_d2.visualization.analysis import bank_discrepancy, sampled_instance_features
from gkd_d2.visualization.drawing import discrepancy_histogram, prototype_gallery


class OptionError(ValueError):
    """A bad command-line option; the message names it."""


def setup(config_file, checkpoint, opts=()):
    """The frozen config; checks the options before anything expensive happens."""
    if not os.path.isfile(checkpoint):
        raise OptionError(f"--checkpoint '{checkpoint}': no such file.")
    if not os.path.isfile(config_file):
        raise OptionError(f"--config-file '{config_file}': no such file.")
    cfg = load_config(config_file, opts)
    if cfg.MODEL.META_ARCHITECTURE != "DistillationDetector":
        raise OptionError(
            f"--config-file '{config_file}': MODEL.META_ARCHITECTURE is "
            f"'{cfg.MODEL.META_ARCHITECTURE}', not 'DistillationDetector': give the distillation "
            "config."
        )
    if not cfg.DISTILL.PGM.ENABLED:
        raise OptionError(
            f"--config-file '{config_file}': DISTILL.PGM.ENABLED is False, so the model has no "
            "prototypes to visualise; use a config of the global-knowledge method (PGM enabled)."
        )
    cfg.freeze()
    return cfg


def visualize(
    config_file,
    checkpoint,
    output_dir,
    opts=(),
    num_random_trials=1,
    seed=0,
    cell_size=96,
    log=print,
):
    """Run everything; returns a dict of the written paths and the two mean discrepancies."""
    if num_random_trials < 1:
        raise OptionError(f"--num-random-trials {num_random_trials}: must be >= 1.")
    cfg = setup(config_file, checkpoint, opts)
    register_datasets_from_cfg(cfg)
    model = build_model(cfg)
    extra = DistillationCheckpointer(model).load(checkpoint)
    model.eval()
    dicts = training_dicts(cfg)
    bank = model.prototypes
    if bank.is_empty():
        iteration = int(extra.get("iteration", 0)) if isinstance(extra, dict) else 0
        log(
            f"The checkpoint '{checkpoint}' has no prototypes: regenerating them with "
            f"PrototypeRefresher (DISTILL.PGM.*) from {len(dicts)} images."
        )
        PrototypeRefresher(cfg, dicts).refresh(model, iteration)
        if bank.is_empty():
            log(
                "PGM found no prototype (too few instances per class above DISTILL.PGM.MIN_SIZE?): "
                "the discrepancies below are NaN and the galleries empty."
            )
    names = list(cfg.DISTILL.PGM.DATASETS) or list(cfg.DATASETS.TRAIN)
    class_names = MetadataCatalog.get(names[0]).get("thing_classes") if names else None

    feats = sampled_instance_features(cfg, model, dicts)
    os.makedirs(output_dir, exist_ok=True)
    gallery = prototype_gallery(
        model, dicts, class_names, output_dir, features=feats, cell_size=cell_size
    )
    disc = bank_discrepancy(bank, feats, num_random_trials=num_random_trials, seed=seed)
    proto, rand = disc.values()
    hist = discrepancy_histogram(
        proto,
        rand,
        os.path.join(output_dir, "discrepancy_histogram.png"),
        title=f"Relation discrepancy, {len(feats)} sampled instances x {len(bank.levels)} levels",
    )
    for level, path in gallery["paths"].items():
        log(f"gallery {level}: {path}")
    log(f"histogram: {hist['path']}")
    log(f"mean discrepancy with PGM prototypes: {hist['mean_prototypes']:.4f}")
    log(
        f"mean discrepancy with random instances: {hist['mean_random']:.4f} "
        f"({num_random_trials} trial(s), seed {seed})"
    )
    return {
        "galleries": gallery["paths"],
        "histogram": hist["path"],
        "mean_prototypes": hist["mean_prototypes"],
        "mean_random": hist["mean_random"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="the distillation config"
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a gkd_d2 checkpoint (.pth) with prototypes"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the PNGs")
    parser.add_argument(
        "--num-random-trials", type=int, default=1, help="random draws of the bases (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random bases (default 0)")
    parser.add_argument(
        "--cell-size", type=int, default=96, help="gallery cell size in pixels (default 96)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    setup_logger(name="gkd_d2")
    try:
        visualize(
            args.config_file,
            args.checkpoint,
            args.output,
            args.opts,
            num_random_trials=args.num_random_trials,
            seed=args.seed,
            cell_size=args.cell_size,
        )
    except OptionError as e:
        parser.error(str(e))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
