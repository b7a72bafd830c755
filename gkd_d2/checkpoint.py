"""Checkpointing a DistillationDetector.

:class:`DistillationCheckpointer` loads two kinds of file with the usual Detectron2 calls
(``resume_or_load``, ``load``):

- a gkd_d2 checkpoint (keys ``student.*``, ``knowledge.*``, ``prototypes.*``): loaded as is,
  prototypes and adapters included. Checkpoints are lean: the frozen teacher is not in them
  (it is rebuilt from its own weights file); they record that file's path and sha256
  (``teacher_weights``). On ``--resume`` a teacher file whose sha256 differs from the
  checkpoint's is an error; on a plain load, a warning. ``teacher.*`` entries of older
  checkpoints are ignored;
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


#: the checkpoint entry recording the teacher's weights (path, sha256, option)
TEACHER_RECORD = "teacher_weights"


class TeacherChangedError(RuntimeError):
    """The teacher weights file differs from the one the checkpoint was trained with."""


class DistillationCheckpointer(DetectionCheckpointer):
    _resuming = False

    def resume_or_load(self, path: str, *, resume: bool = True):
        """Detectron2's; a resumed run refuses a teacher file that changed since the checkpoint."""
        self._resuming = resume and self.has_checkpoint()
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._resuming = False

    def _check_teacher(self, model, checkpoint):
        record = checkpoint.get(TEACHER_RECORD)
        if not record or not hasattr(model, "teacher_record"):
            return
        now = model.teacher_record()
        if record.get("sha256") == now["sha256"]:
            return
        msg = (
            f"The teacher weights changed since this checkpoint was written: {now['option']}="
            f"'{now['weights']}' has sha256 {now['sha256']}, the checkpoint was trained with "
            f"'{record.get('weights')}' of sha256 {record.get('sha256')}."
        )
        if self._resuming:
            raise TeacherChangedError(
                msg + f" Point {now['option']} at the original file to resume, or start a new run."
            )
        self.logger.warning(msg + " The student is loaded; the teacher is the new file.")

    def _load_model(self, checkpoint):
        model = self.model.module if hasattr(self.model, "module") else self.model
        if not hasattr(model, "student") or is_distillation_state(checkpoint["model"]):
            self._check_teacher(model, checkpoint)
            old = [k for k in checkpoint["model"] if k.startswith(("teacher.", "module.teacher."))]
            if old and hasattr(model, "student"):
                self.logger.info(
                    "Ignoring %d teacher.* tensors of the checkpoint: the teacher comes from its own "
                    "weights file.", len(old)
                )
                for k in old:
                    del checkpoint["model"][k]
            return super()._load_model(checkpoint)
        self.logger.info("Plain detector checkpoint: loading it into the student only.")
        return DetectionCheckpointer(model.student)._load_model(checkpoint)

    def save(self, name: str, **kwargs) -> None:
        """Detectron2's save, made atomic: a crash mid-write leaves the previous checkpoint
        and ``last_checkpoint`` untouched."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        model = self.model.module if hasattr(self.model, "module") else self.model
        if hasattr(model, "teacher_record"):
            data[TEACHER_RECORD] = model.teacher_record()
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
