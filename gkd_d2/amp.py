"""Mixed precision (``SOLVER.AMP.ENABLED True``) for :class:`~gkd_d2.engine.DistillTrainer`.

On CUDA, Detectron2's own :class:`~detectron2.engine.AMPTrainer` runs: the student's and the
teacher's forward (and every knowledge term) under ``torch.autocast`` in float16, the loss
scaled by a ``GradScaler``. Detectron2's ``AMPTrainer`` refuses the CPU ("CUDA is required");
:class:`CPUAMPTrainer` is the same step under ``torch.autocast("cpu", torch.bfloat16)``,
without loss scaling (bfloat16 has float32's range), so the mixed-precision path can be
trained and tested on a CPU. Like a ``GradScaler`` step, it skips the optimizer step when a
gradient is not finite (and warns, naming the parameters): PyTorch's bfloat16 CPU convolution
backward has been seen to return NaN weight gradients at random for a 3x3 stride-2 convolution
of a 1x1 map (RetinaNet's P7 on images of 64 px; torch 2.14.1, AMD EPYC with avx512_bf16), and
one such step would otherwise write NaN into the weights and the next checkpoint.

The loss formulas (``knowledge/losses.py``) reduce in float32 whatever the precision of the
feature maps and logits, so a half-precision teacher forward cannot overflow a sum of squares.
"""
import logging
import time

import torch
from detectron2.engine import AMPTrainer

logger = logging.getLogger(__name__)


def grads_are_finite(params):
    """Whether every gradient of PARAMS (an iterable of parameters; those without a gradient
    are ignored) is finite: one total-norm reduction, no copy."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm(grads)
    return bool(torch.isfinite(torch.stack(norms)).all())


class CPUAMPTrainer(AMPTrainer):
    """Detectron2's ``AMPTrainer`` step on the CPU, in bfloat16 autocast, no gradient scaling;
    a step whose gradients are not all finite is skipped (``skipped_steps`` counts them, logged
    as ``amp/skipped_steps``)."""

    def __init__(self, model, data_loader, optimizer, **kwargs):
        kwargs.setdefault("grad_scaler", torch.amp.GradScaler("cpu", enabled=False))
        kwargs.setdefault("precision", torch.bfloat16)
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.skipped_steps = 0

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
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if grads_are_finite(params):
            self.optimizer.step()
            return
        self.skipped_steps += 1
        self.storage.put_scalar("amp/skipped_steps", self.skipped_steps)
        bad = [n for n, p in self.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        logger.warning(
            f"[CPUAMPTrainer] iteration {self.iter}: non-finite gradients in {len(bad)} parameter(s) "
            f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}) with finite losses; the optimizer step is "
            f"skipped ({self.skipped_steps} so far). A bfloat16 CPU kernel can do this on tiny feature maps "
            "(see gkd_d2/amp.py); if it repeats, train in float32 (SOLVER.AMP.ENABLED False)."
        )

