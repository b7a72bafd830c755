"""Mixed precision (``SOLVER.AMP.ENABLED True``) for :class:`~gkd_d2.engine.DistillTrainer`.

On CUDA, Detectron2's own :class:`~detectron2.engine.AMPTrainer` runs: the student's and the
teacher's forward (and every knowledge term) under ``torch.autocast`` in float16, the loss
scaled by a ``GradScaler``. Detectron2's ``AMPTrainer`` refuses the CPU ("CUDA is required");
:class:`CPUAMPTrainer` is the same step under ``torch.autocast("cpu", torch.bfloat16)``,
without loss scaling (bfloat16 has float32's range), so the mixed-precision path can be
trained and tested on a CPU.

The loss formulas (``knowledge/losses.py``) reduce in float32 whatever the precision of the
feature maps and logits, so a half-precision teacher forward cannot overflow a sum of squares.
"""
import time

import torch
from detectron2.engine import AMPTrainer


class CPUAMPTrainer(AMPTrainer):
    """Detectron2's ``AMPTrainer`` step on the CPU, in bfloat16 autocast, no gradient scaling."""

    def __init__(self, model, data_loader, optimizer, **kwargs):
        kwargs.setdefault("grad_scaler", torch.amp.GradScaler("cpu", enabled=False))
        kwargs.setdefault("precision", torch.bfloat16)
        super().__init__(model, data_loader, optimizer, **kwargs)

    def run_step(self):
        assert self.model.training, "[CPUAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast("cpu", dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()

