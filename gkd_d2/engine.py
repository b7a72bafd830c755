"""DistillTrainer: Detectron2's DefaultTrainer (also for plain teachers and students) with the
distillation checkpointer, the prototype-refresh hook, exact resumption after an interrupt
(:mod:`gkd_d2.resume`) and an evaluator chosen from the dataset's metadata."""
import logging
import os
import weakref

from detectron2.data import MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm

from .checkpoint import DistillationCheckpointer
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


class DistillTrainer(DefaultTrainer):
    """``DefaultTrainer`` for a ``DistillationDetector``; everything else is Detectron2's."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader; with ``DATALOADER.SAMPLER_TRAIN = "TrainingSampler"``
        (the default) its sampler is a :class:`ResumableTrainingSampler`, reachable as
        ``loader.resumable_sampler``."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.info(
                "DATALOADER.SAMPLER_TRAIN=%s: --resume restarts its index stream.",
                cfg.DATALOADER.SAMPLER_TRAIN,
            )
            return build_detection_train_loader(cfg)
        dataset = get_detection_dataset_dicts(  # as build_detection_train_loader does
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON
            else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        sampler = ResumableTrainingSampler(len(dataset))
        # seed: the loader draws its workers' base seed from its own generator (distinct per
        # process), not from the global torch generator that RNGState restores on --resume
        loader = build_detection_train_loader(
            cfg, dataset=dataset, sampler=sampler, seed=sampler.state_dict()["seed"] + comm.get_rank()
        )
        loader.resumable_sampler = sampler
        return loader

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
        model = unwrap_model(self._trainer.model)
        if getattr(model, "prototypes", None) is not None:
            # Right after the LR scheduler: prototypes are fresh before the step that uses
            # them and before any checkpoint of that iteration is written.
            pos = next(i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)) + 1
            ret.insert(pos, PrototypeRefreshHook(self.cfg))
            if self.cfg.DISTILL.VIS.OVERLAY_IMAGES > 0:  # pictures of the robust weights
                ret.insert(pos + 1, RobustWeightOverlayHook(self.cfg))
        # last: a signal stops training after the step's scheduler update and checkpoint hooks
        ret.append(GracefulInterruptHook())
        return ret
