"""DistillTrainer: Detectron2's DefaultTrainer (also for plain teachers and students) with the
distillation checkpointer, the prototype-refresh hook, exact resumption after an interrupt
(:mod:`gkd_d2.resume`), an evaluator chosen from the dataset's metadata, several processes
on the CPU (``--num-gpus N`` with ``MODEL.DEVICE cpu``: gloo, DDP without device ids), and
mixed precision on the CPU too (:mod:`gkd_d2.amp`)."""
import logging
import os
import weakref
from contextlib import contextmanager

import detectron2.engine.defaults as d2_defaults
import torch.distributed as dist
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, HookBase, hooks
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm

from .amp import CPUAMPTrainer
from .checkpoint import DistillationCheckpointer
from .data.classes import check_dataset_classes
from .data.images import CheckedDatasetMapper
from .loss_scale import LossScaleHook
from .prototypes.agreement import PrototypeAgreementHook
from .prototypes.refresh import PrototypeRefreshHook
from .resume import GracefulInterruptHook, ResumableTrainingSampler, RNGState
from .utils import unwrap_model
from .visualization.hook import RobustWeightOverlayHook

logger = logging.getLogger(__name__)


def build_evaluator(cfg, dataset_name, output_folder=None):
    """COCOEvaluator or PascalVOCDetectionEvaluator, from ``MetadataCatalog``'s
    ``evaluator_type`` (a dataset with a ``json_file`` is evaluated the COCO way)."""
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type", "coco" if meta.get("json_file") else None)
    if kind == "coco":
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)
    if kind == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    raise ValueError(
        f"DATASETS.TEST: no evaluator for dataset '{dataset_name}' (evaluator_type="
        f"{kind!r}); gkd_d2 evaluates COCO-format and Pascal VOC datasets."
    )


_d2_create_ddp_model = d2_defaults.create_ddp_model


def create_ddp_model(model, **kwargs):
    """Detectron2's ``create_ddp_model``, which also wraps a model on the CPU: Detectron2's
    passes ``device_ids=[local_rank]``, which ``DistributedDataParallel`` refuses for a CPU
    module; here a CPU model gets ``device_ids=None`` (DDP over gloo)."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    if comm.get_world_size() > 1 and on_cpu and "device_ids" not in kwargs:
        if dist.get_backend() != "gloo":
            raise ValueError(
                f"MODEL.DEVICE cpu with several processes needs the gloo backend, but "
                f"Detectron2's launch chose {dist.get_backend()} because CUDA is available: "
                "set MODEL.DEVICE cuda, or hide the GPUs (CUDA_VISIBLE_DEVICES=)."
            )
        kwargs["device_ids"] = None
    return _d2_create_ddp_model(model, **kwargs)


@contextmanager
def _cpu_capable_ddp():
    """While the block runs, ``DefaultTrainer.__init__`` wraps the model with
    :func:`create_ddp_model` (it calls the name of ``detectron2.engine.defaults``)."""
    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = _d2_create_ddp_model


class FirstStepHook(HookBase):
    """Call ``fn()`` once, right after the first step of the run: by then the first prototype
    refresh has read its images and the first batch has been trained on."""

    def __init__(self, fn):
        self.fn = fn
        self.done = False

    def after_step(self):
        if not self.done:
            self.done = True
            self.fn()

class DistillTrainer(DefaultTrainer):
    """``DefaultTrainer`` for a ``DistillationDetector``; everything else is Detectron2's."""

    def __init__(self, cfg):
        with _cpu_capable_ddp():
            super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
            # Detectron2's AMPTrainer needs CUDA; the same step in bfloat16 on the CPU.
            t = self._trainer
            self._trainer = CPUAMPTrainer(t.model, t.data_loader, t.optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader, whose image-read errors name the file
        (:class:`CheckedDatasetMapper`); with ``DATALOADER.SAMPLER_TRAIN = "TrainingSampler"``
        (the default) its sampler is a :class:`ResumableTrainingSampler`, reachable as
        ``loader.resumable_sampler``. Once the training set is loaded, the class count of every
        dataset of the run is checked against the model's (:func:`check_dataset_classes`):
        the trainer has written nothing yet."""
        mapper = CheckedDatasetMapper(cfg, True)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.info(
                "DATALOADER.SAMPLER_TRAIN=%s: --resume restarts its index stream.",
                cfg.DATALOADER.SAMPLER_TRAIN,
            )
            loader = build_detection_train_loader(cfg, mapper=mapper)
            check_dataset_classes(cfg)
            return loader
        dataset = get_detection_dataset_dicts(  # as build_detection_train_loader does
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON
            else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        check_dataset_classes(cfg)
        sampler = ResumableTrainingSampler(len(dataset))
        # seed: the loader draws its workers' base seed from its own generator (distinct per
        # process), not from the global torch generator that RNGState restores on --resume
        loader = build_detection_train_loader(
            cfg, mapper=mapper, dataset=dataset, sampler=sampler, seed=sampler.state_dict()["seed"] + comm.get_rank()
        )
        loader.resumable_sampler = sampler
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader, whose image-read errors name the file."""
        return build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, False))

    def after_first_step(self, fn):
        """Call ``fn()`` once the run's first step has succeeded, before that step's checkpoint,
        metrics or interrupt (``tools/train_net.py`` writes ``config.yaml`` so: a run that fails
        to start leaves an earlier run's untouched)."""
        hook = FirstStepHook(fn)
        hook.trainer = weakref.proxy(self)
        self._hooks.insert(0, hook)

    def resume_or_load(self, resume=True):
        """Detectron2's, plus: the data stream continues where the checkpoint's run was."""
        super().resume_or_load(resume)
        sampler = getattr(self._trainer.data_loader, "resumable_sampler", None)
        if sampler is not None:
            per_process = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            sampler.start = self.start_iter * per_process

    def build_hooks(self):
        # Plain Detectron2 checkpoints go to the student; gkd_d2 checkpoints load whole.
        # Random generators and the sampler's seed travel in every checkpoint for --resume.
        extra = {"rng": RNGState()}
        sampler = getattr(self._trainer.data_loader, "resumable_sampler", None)
        if sampler is not None:
            extra["train_sampler"] = sampler
        self.checkpointer = DistillationCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self), **extra
        )
        ret = super().build_hooks()
        # Right after the LR scheduler: prototypes are fresh before the step that uses
        # them and before any checkpoint of that iteration is written.
        pos = next(i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)) + 1
        ret[pos:pos] = prototype_hooks(self.cfg, self._trainer.model)
        if len(getattr(unwrap_model(self._trainer.model), "knowledge", ())):  # a knowledge loss far too large
            ret.append(LossScaleHook())
        # last: a signal stops training after the step's scheduler update and checkpoint hooks
        ret.append(GracefulInterruptHook())
        return ret


def prototype_hooks(cfg, model):
    """The hooks of a model with prototypes, to register right after the LR scheduler: the
    refresh, the agreement check of several processes, the robust-weight pictures
    (``DISTILL.VIS.OVERLAY_IMAGES``). None for a model without prototypes."""
    if getattr(unwrap_model(model), "prototypes", None) is None:
        return []
    extra_hooks = [PrototypeRefreshHook(cfg)]
    if comm.get_world_size() > 1:  # every process must hold the same prototypes
        extra_hooks.append(PrototypeAgreementHook())
    if cfg.DISTILL.VIS.OVERLAY_IMAGES > 0:  # pictures of the robust weights
        extra_hooks.append(RobustWeightOverlayHook(cfg))
    return extra_hooks
