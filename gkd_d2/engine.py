"""DistillTrainer: Detectron2's DefaultTrainer (also for plain teachers and students) with the distillation checkpointer, the
prototype-refresh hook and an evaluator chosen from the dataset's metadata."""
import os
import weakref

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

from .checkpoint import DistillationCheckpointer
from .prototypes.refresh import PrototypeRefreshHook


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

    def build_hooks(self):
        # Plain Detectron2 checkpoints go to the student; gkd_d2 checkpoints load whole.
        self.checkpointer = DistillationCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        ret = super().build_hooks()
        model = self._trainer.model
        model = model.module if hasattr(model, "module") else model
        if getattr(model, "prototypes", None) is not None:
            # Right after the LR scheduler: prototypes are fresh before the step that uses
            # them and before any checkpoint of that iteration is written.
            pos = next(i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)) + 1
            ret.insert(pos, PrototypeRefreshHook(self.cfg))
        return ret
