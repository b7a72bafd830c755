#!/usr/bin/env python
"""Train or evaluate a distilled detector, Detectron2 style.

    python tools/train_net.py --config-file configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml
    python tools/train_net.py --config-file CFG --num-gpus 8
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume

Every Detectron2 option works (--num-machines, --machine-rank, --dist-url, KEY VALUE pairs).
Ctrl-C (or SIGTERM) finishes the current iteration, saves a checkpoint and exits with status
130; the same command with --resume continues as if nothing had happened.
"""
import logging
import sys

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from gkd_d2 import DistillationCheckpointer, DistillTrainer
from gkd_d2.config import load_config
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.resume import TrainingInterrupted


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
        model = DistillTrainer.build_model(cfg)
        DistillationCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = DistillTrainer.test(cfg, model)
        verify_results(cfg, res)
        return res
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    try:
        return trainer.train()
    except TrainingInterrupted as stop:  # Ctrl-C / SIGTERM: checkpoint written, clean exit
        logging.getLogger("gkd_d2").warning("%s", stop)
        sys.exit(130)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
