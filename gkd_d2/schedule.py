"""The training schedules of the demo (``tools/demo.py``) and the replica (``benchmarks/replica.py``),
and the COCO box metrics both report.

One rule, scaled to the run's length ``iters``: a linear warm-up over the first 5% of the
iterations, then the learning rate divided by 10 at two fractions of the run. Training from
scratch steps at 3/4 and 23/25 (:data:`TRAIN_STEPS`); fine-tuning with distillation steps at 2/3
and 11/12 (:data:`FINETUNE_STEPS`), the paper's 500-iteration warm-up and steps at epochs 16 and 22
of its 24-epoch schedule, scaled.
"""
from typing import List, Sequence

#: COCOEvaluator's box metrics, in the order tables print them.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: Fractions of the run where a model trained from scratch steps its learning rate down.
TRAIN_STEPS = (0.75, 0.92)
#: The same for the fine-tuning of a trained student (with or without distillation).
FINETUNE_STEPS = (2 / 3, 11 / 12)
#: Fraction of the run spent warming the learning rate up.
WARMUP_FRACTION = 0.05


def schedule(iters: int, steps: Sequence[float] = TRAIN_STEPS) -> List[str]:
    """``KEY VALUE`` overrides of ``SOLVER.MAX_ITER``, ``SOLVER.STEPS`` and ``SOLVER.WARMUP_ITERS``
    for a run of ``iters`` iterations (at least one warm-up iteration)."""
    iters = int(iters)
    if iters < 1:
        raise ValueError(f"SOLVER.MAX_ITER={iters}: a schedule needs at least one iteration.")
    return [
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.STEPS", f"({int(iters * steps[0])}, {int(iters * steps[1])})",
        "SOLVER.WARMUP_ITERS", str(max(1, int(iters * WARMUP_FRACTION))),
    ]


def finetune_schedule(iters: int) -> List[str]:
    """:func:`schedule` with :data:`FINETUNE_STEPS`."""
    return schedule(iters, FINETUNE_STEPS)
