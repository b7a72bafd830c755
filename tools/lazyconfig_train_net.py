#!/usr/bin/env python
"""Train or evaluate a distilled detector from a LazyConfig (``.py``), as Detectron2's own
``tools/lazyconfig_train_net.py`` does, plus what distillation needs: the prototype refresh,
graceful interrupt and exact ``--resume`` (:mod:`gkd_d2.resume`), lean checkpoints (no teacher;
its weights' sha256 is checked on ``--resume``), evaluation and multi-process ``launch``.

    python tools/lazyconfig_train_net.py --config-file configs/LazyConfig/Demo/gkd_faster_rcnn_R34_to_R18_FPN.py
    python tools/lazyconfig_train_net.py --config-file CFG --num-gpus 8 train.max_iter=1000
    python tools/lazyconfig_train_net.py --config-file CFG --resume
    python tools/lazyconfig_train_net.py --config-file CFG --eval-only train.init_checkpoint=output/model_final.pth

The config has Detectron2's ``model``, ``dataloader``, ``optimizer``, ``lr_multiplier`` and
``train`` entries, and gkd_d2's ``distill`` (the yaml ``DISTILL`` options) and optional
``datasets`` (:mod:`gkd_d2.lazy`). Ctrl-C (or SIGTERM) finishes the current iteration, saves a
checkpoint and exits with status 130; the same command with ``--resume`` continues. The
``train.output_dir/config.yaml`` is written after the first step, once the first prototype
refresh has read its images (a run that fails to start leaves an earlier one untouched). The
datasets' class counts are checked against the student before anything is written, and a
knowledge loss more than 10x the detection losses in the first steps is warned about once.
"""
import logging
import os
import sys

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_argument_parser, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate

from gkd_d2.amp import CPUAMPTrainer
from gkd_d2.checkpoint import DistillationCheckpointer
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.engine import FirstStepHook, create_ddp_model, prototype_hooks
from gkd_d2.lazy import check_lazy_dataset_classes, distill_view
from gkd_d2.loss_scale import LossScaleHook
from gkd_d2.resume import GracefulInterruptHook, ResumableTrainingSampler, RNGState, TrainingInterrupted, launch
from gkd_d2.utils import unwrap_model

logger = logging.getLogger("detectron2")


def do_test(cfg, model):
    """Evaluate ``model`` (the student's outputs) with ``dataloader.test`` / ``dataloader.evaluator``."""
    if "evaluator" in cfg.dataloader:
        ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
        print_csv_format(ret)
        return ret


def build_train_loader(cfg):
    """``dataloader.train``; with no sampler of its own, a :class:`ResumableTrainingSampler`
    (its seed in checkpoints, its position restored on ``--resume``): ``(loader, sampler)``."""
    if cfg.dataloader.train.get("sampler", None) is not None:
        logger.info("dataloader.train.sampler is set: --resume restarts its index stream.")
        return instantiate(cfg.dataloader.train), None
    loader_cfg = cfg.dataloader.train
    dataset = instantiate(loader_cfg.dataset)
    sampler = ResumableTrainingSampler(len(dataset))
    build = locate(loader_cfg._target_) if isinstance(loader_cfg._target_, str) else loader_cfg._target_
    kwargs = {k: instantiate(loader_cfg[k]) for k in loader_cfg if k not in ("_target_", "dataset")}
    # seed: the workers' base seed from the loader's own generator, as DistillTrainer's
    kwargs.setdefault("seed", sampler.state_dict()["seed"] + comm.get_rank())
    return build(dataset=dataset, sampler=sampler, **kwargs), sampler


def do_train(args, cfg, view, staged=None):
    """Detectron2's lazy training loop with gkd_d2's hooks; ``view``: :func:`distill_view`."""
    model = instantiate(cfg.model)
    check_lazy_dataset_classes(cfg, model.student)
    logger.info("Model:\n{}".format(model))
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader, sampler = build_train_loader(cfg)
    model = create_ddp_model(model, **cfg.train.ddp)
    amp = cfg.train.amp.enabled
    trainer_cls = (AMPTrainer if str(cfg.train.device).startswith("cuda") else CPUAMPTrainer) if amp else SimpleTrainer
    trainer = trainer_cls(model, train_loader, optim)
    extra = {"rng": RNGState()}
    if sampler is not None:
        extra["train_sampler"] = sampler
    checkpointer = DistillationCheckpointer(model, cfg.train.output_dir, trainer=trainer, **extra)
    trainer.checkpointer = checkpointer  # GracefulInterruptHook saves with it
    trainer.register_hooks(
        [
            FirstStepHook(lambda: save_config(cfg, staged)),  # config.yaml once a step has run
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            *prototype_hooks(view, model),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if comm.is_main_process()
            else None,
            LossScaleHook() if len(unwrap_model(model).knowledge) else None,
            GracefulInterruptHook(),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # the checkpoint stores the iteration that just finished: start at the next one
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    if sampler is not None:
        sampler.start = start_iter * (int(cfg.dataloader.train.total_batch_size) // comm.get_world_size())
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def setup(args):
    """Load the config and overrides, register its datasets, set up logging and seeds. The
    config is staged in ``output_dir`` now and put in place by :func:`save_config`."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    view = distill_view(cfg)
    output_dir, rank = cfg.train.output_dir, comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank)
    setup_logger(output_dir, distributed_rank=rank, name="gkd_d2")
    logger.info("Rank of current process: {}. World size: {}".format(rank, comm.get_world_size()))
    logger.info("Command line arguments: " + str(args))
    seed = int(cfg.train.get("seed", -1))
    seed_all_rng(None if seed < 0 else seed + rank)
    register_datasets_from_cfg(view)
    staged = None
    if comm.is_main_process() and output_dir:  # before the model object enters the config
        staged = f"{os.path.join(output_dir, 'config.yaml')}.tmp-{os.getpid()}"
        LazyConfig.save(cfg, staged)
    return cfg, view, staged


def save_config(cfg, staged):
    """Put the staged ``config.yaml`` (or Detectron2's ``.pkl`` fallback) in place."""
    if not staged:
        return
    final = os.path.join(cfg.train.output_dir, "config.yaml")
    for suffix in ("", ".pkl"):
        if os.path.exists(staged + suffix):
            os.replace(staged + suffix, final + suffix)
    logger.info("Full config saved to %s", final)


def main(args):
    cfg, view, staged = setup(args)
    try:
        if args.eval_only:
            model = instantiate(cfg.model)
            check_lazy_dataset_classes(cfg, model.student)
            model.to(cfg.train.device)
            model = create_ddp_model(model)
            DistillationCheckpointer(model).load(cfg.train.init_checkpoint)
            save_config(cfg, staged)
            return do_test(cfg, model)
        do_train(args, cfg, view, staged)
    except TrainingInterrupted as stop:  # Ctrl-C / SIGTERM: checkpoint written, clean exit
        logging.getLogger("gkd_d2").warning("%s", stop)
        sys.exit(130)
    finally:  # a run that failed to start leaves no staged config behind
        for suffix in ("", ".pkl"):
            if staged and os.path.exists(staged + suffix):
                os.remove(staged + suffix)


def invoke_main(argv=None):
    args = default_argument_parser().parse_args(argv)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
