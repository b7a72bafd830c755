"""Small helpers used across gkd_d2: the DDP unwrap and the eval-mode switch."""
from contextlib import contextmanager

from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``model`` itself)."""
    return model.module if hasattr(model, "module") else model


@contextmanager
def eval_mode(module: nn.Module):
    """Run the block with ``module`` in eval mode, then give ``module`` and each of its
    submodules back the exact mode it had (e.g. frozen BatchNorm layers of a training student
    stay in eval mode)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
