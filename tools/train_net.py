#!/usr/bin/env python
"""Train or evaluate a distilled detector, Detectron2 style.

    python tools/train_net.py --config-file configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml
    python tools/train_net.py --config-file CFG --num-gpus 8
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume

Every Detectron2 option works (--num-machines, --machine-rank, --dist-url, KEY VALUE pairs);
``--resume`` and ``--eval-only`` may also come after the KEY VALUE pairs.
Ctrl-C (or SIGTERM) finishes the current iteration, saves a checkpoint and exits with status
130, with one process or several; the same command with --resume continues as if nothing had
happened.

``OUTPUT_DIR/config.yaml`` is written once the first training step has succeeded (the first
prototype refresh and the first batch have read their images), or, with ``--eval-only``, once
the evaluation has: a run that fails before that leaves the config.yaml of an earlier run
beside its checkpoints untouched. The class count of the datasets is checked against the
model's before anything is written. Datasets: the synthetic
``gkd_synth_*`` / ``gkd_shapes_*`` names and ``DATASETS.COCO_JSON`` entries are registered
from the config.
"""
import logging
import os
import sys

import torch
from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from gkd_d2 import DistillationCheckpointer, DistillTrainer
from gkd_d2.config import load_config
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.data.classes import check_dataset_classes
from gkd_d2.resume import TrainingInterrupted, launch

#: flags that argparse would swallow into the KEY VALUE list when given after it
FLAGS_AFTER_OPTS = {"--resume": "resume", "--eval-only": "eval_only"}


def parse_args(argv=None):
    """Detectron2's arguments; ``--resume`` / ``--eval-only`` after the KEY VALUE pairs are
    taken as the flags (argparse would put them in ``opts``); any other ``--option`` there is an
    error saying to move it before the pairs."""
    parser = default_argument_parser()
    args = parser.parse_args(argv)
    opts = []
    for item in args.opts or []:
        if item in FLAGS_AFTER_OPTS:
            setattr(args, FLAGS_AFTER_OPTS[item], True)
        elif item.startswith("--"):
            parser.error(
                f"'{item}' comes after the KEY VALUE config overrides: put options such as "
                f"{item.split('=')[0]} before them (only --resume and --eval-only may follow them)."
            )
        else:
            opts.append(item)
    args.opts = opts
    return args


def default_setup(cfg, args):
    """Detectron2's ``default_setup`` (logger in OUTPUT_DIR, environment and arguments logged,
    seeds, cudnn benchmark), except that it does not write ``OUTPUT_DIR/config.yaml``:
    :func:`save_config` does, once the run is built."""
    output_dir = cfg.OUTPUT_DIR
    if comm.is_main_process() and output_dir:
        PathManager.mkdirs(output_dir)
    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    logger = setup_logger(output_dir, distributed_rank=rank)
    logger.info("Rank of current process: {}. World size: {}".format(rank, comm.get_world_size()))
    logger.info("Environment info:\n" + collect_env_info())
    logger.info("Command line arguments: " + str(args))
    if getattr(args, "config_file", ""):
        with PathManager.open(args.config_file, "r") as f:
            logger.info("Contents of args.config_file={}:\n{}".format(args.config_file, f.read()))
    logger.info("Running with full config:\n{}".format(cfg.dump()))
    seed = cfg.SEED
    seed_all_rng(None if seed < 0 else seed + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def save_config(cfg):
    """Write ``OUTPUT_DIR/config.yaml`` (main process; through a temporary file renamed into
    place, so it is never half-written). Called once the run has started successfully."""
    if not (comm.is_main_process() and cfg.OUTPUT_DIR):
        return
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    tmp = f"{path}.tmp-{os.getpid()}"
    with PathManager.open(tmp, "w") as f:
        f.write(cfg.dump())
    os.replace(tmp, path)
    logging.getLogger("detectron2").info("Full config saved to {}".format(path))


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="gkd_d2")
    register_datasets_from_cfg(cfg)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        if not cfg.DATASETS.TEST:
            raise ValueError(
                "--eval-only: DATASETS.TEST is empty, there is nothing to evaluate. Name the "
                "evaluation datasets, e.g. DATASETS.TEST \"('my_val',)\" (a COCO json of your own: "
                "DATASETS.COCO_JSON \"[['my_val', 'val.json', 'val_images/']]\" as well)."
            )
        check_dataset_classes(cfg, cfg.DATASETS.TEST)
        model = DistillTrainer.build_model(cfg)
        DistillationCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = DistillTrainer.test(cfg, model)
        save_config(cfg)
        verify_results(cfg, res)
        return res
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.after_first_step(lambda: save_config(cfg))
    try:
        return trainer.train()
    except TrainingInterrupted as stop:  # Ctrl-C / SIGTERM: checkpoint written, clean exit
        logging.getLogger("gkd_d2").warning("%s", stop)
        sys.exit(130)


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
