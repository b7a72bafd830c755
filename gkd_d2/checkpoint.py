"""Checkpointing a DistillationDetector.

:class:`DistillationCheckpointer` loads two kinds of file with the usual Detectron2 calls
(``resume_or_load``, ``load``):

- a gkd_d2 checkpoint (keys ``student.*``, ``teacher.*``, ``knowledge.*``, ``prototypes.*``):
  loaded as is, prototypes and adapters included;
- a plain Detectron2 detector (model-zoo ``.pkl``, ImageNet backbone, a ``.pth`` of a trained
  detector): loaded into the **student only**, with Detectron2's own name-matching heuristics,
  so ``MODEL.WEIGHTS`` works exactly as for the student alone.

Saving is Detectron2's (write to a temporary file, then rename), and ``last_checkpoint`` is
written only after the checkpoint file is complete.
"""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

_PREFIXES = ("student.", "teacher.", "knowledge.", "prototypes.")


def is_distillation_state(state_dict) -> bool:
    return any(k.startswith(_PREFIXES) for k in state_dict)


class DistillationCheckpointer(DetectionCheckpointer):
    def _load_model(self, checkpoint):
        model = self.model.module if hasattr(self.model, "module") else self.model
        if not hasattr(model, "student") or is_distillation_state(checkpoint["model"]):
            return super()._load_model(checkpoint)
        self.logger.info("Plain detector checkpoint: loading it into the student only.")
        return DetectionCheckpointer(model.student)._load_model(checkpoint)

    def save(self, name: str, **kwargs) -> None:
        """Detectron2's save, made atomic: a crash mid-write leaves the previous checkpoint
        and ``last_checkpoint`` untouched."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        tmp_file = save_file + ".tmp"
        self.logger.info("Saving checkpoint to {}".format(save_file))
        try:
            with PathManager.open(tmp_file, "wb") as f:
                torch.save(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_file, save_file)
        except BaseException:
            if os.path.exists(tmp_file):
                os.remove(tmp_file)
            raise
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``last_checkpoint`` atomically."""
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        tmp_file = save_file + ".tmp"
        with PathManager.open(tmp_file, "w") as f:
            f.write(last_filename_basename)
        os.replace(tmp_file, save_file)
