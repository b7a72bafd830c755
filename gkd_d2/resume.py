"""Stopping and resuming a training run without changing its result.

Distillation runs last days and are interrupted (Ctrl-C, a cluster's SIGTERM before
preemption). Three pieces make ``--resume`` continue exactly where the run stopped:

- :class:`GracefulInterruptHook`: SIGINT / SIGTERM only set a flag; the hook lets the current
  step finish (optimizer and LR scheduler stepped), saves ``model_<iter>.pth`` with that
  iteration, and stops the loop with :class:`TrainingInterrupted`. A second Ctrl-C aborts at
  once (the handler is removed after the first signal). In a multi-process run the flag is
  all-reduced every step, so every process stops after the same step.
- :class:`RNGState`: a checkpointable with the python, numpy, torch (and CUDA) generator states
  of the main process, so random choices after the restart (RoI sampling, augmentations in
  the main process) are those the uninterrupted run would have made.
- :class:`ResumableTrainingSampler`: Detectron2's ``TrainingSampler`` whose seed is saved in
  the checkpoint and which skips the ``start_iter * images_per_process`` indices the run had
  already consumed, so the restarted run sees the same images in the same order.

- :func:`launch`: Detectron2's ``launch`` for the tools: an interrupted run exits with status
  130 with one process or several (Detectron2's parent process would report the workers' exit
  as a ``ProcessExitedException`` traceback and exit 1), and the parent waits for its workers
  to save the checkpoint instead of dying on the same Ctrl-C. (A SIGTERM to the parent alone
  ends it as before; its workers then get SIGINT, PyTorch's parent-death signal, and stop
  gracefully.)

Exactness: a resumed run reproduces the uninterrupted one bit for bit on CPU with
``DATALOADER.NUM_WORKERS 0`` and one process. With data-loader workers, augmentations drawn
inside the workers restart from new seeds (same images, same order, other flips); on GPUs,
non-deterministic kernels make runs differ anyway. Processes other than the main one get a
fresh seed derived from the restored state and their rank.
"""
import functools
import itertools
import logging
import random
import signal
import sys
import threading

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT, _distributed_worker, _find_free_port
from detectron2.utils import comm

logger = logging.getLogger(__name__)

__all__ = [
    "GracefulInterruptHook",
    "RNGState",
    "ResumableTrainingSampler",
    "TrainingInterrupted",
    "launch",
]

#: the exit status of an interrupted run (128 + SIGINT, as a shell reports Ctrl-C)
INTERRUPTED_EXIT = 130


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after a signal stopped training; ``checkpoint`` holds the saved file."""

    def __init__(self, iteration: int, checkpoint: str):
        super().__init__(
            f"Training interrupted after iteration {iteration}; checkpoint {checkpoint}. "
            "Continue with the same command plus --resume."
        )
        self.iteration = iteration
        self.checkpoint = checkpoint


class GracefulInterruptHook(HookBase):
    """Turn SIGINT / SIGTERM into "finish this step, save a checkpoint, stop".

    Register it after the LR scheduler and the periodic checkpointer (DefaultTrainer's hooks
    end with the writers; appending it last is right), so the saved state is the state after
    the step's scheduler update, exactly what a periodic checkpoint of that iteration holds.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self._requested = False
        self._previous = {}

    def _handler(self, signum, frame):
        self._requested = True
        logger.warning(
            "%s received: finishing iteration %d, then saving a checkpoint and stopping "
            "(press Ctrl-C again to abort at once, without a checkpoint).",
            signal.Signals(signum).name,
            self.trainer.iter,
        )
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def before_train(self):
        self._requested = False
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def after_train(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _stop_requested(self) -> bool:
        if comm.get_world_size() == 1:
            return self._requested
        # one scalar per step: every process must stop after the same iteration
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([float(self._requested)], device=device)
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def after_step(self):
        if not self._stop_requested():
            return
        it = self.trainer.iter
        checkpointer = self.trainer.checkpointer
        name = f"model_{it:07d}"
        checkpointer.save(name, iteration=it)
        comm.synchronize()
        raise TrainingInterrupted(it, f"{checkpointer.save_dir}/{name}.pth")


class RNGState:
    """Checkpointable random-generator state of the main process (python, numpy, torch,
    CUDA). Loading it on another rank reseeds that rank from the state and its rank."""

    def state_dict(self):
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {  # tensors and plain python values only: checkpoints load with weights_only
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state):
        rank = comm.get_rank()
        if rank != 0:
            seed = (int(state["torch"][:8].sum()) + 1000003 * rank) % 2**31
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            return
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class ResumableTrainingSampler(TrainingSampler):
    """``TrainingSampler`` (same infinite shuffled stream, split across processes) that

    - saves its seed in checkpoints (``state_dict`` / ``load_state_dict``), and
    - starts ``start`` indices into this process's stream; the trainer sets
      ``start = start_iter * images per process`` when resuming, before the data loader's
      first ``iter()`` (Detectron2 creates the iterator lazily at the first step).
    """

    def __init__(self, size: int, shuffle: bool = True, seed=None):
        super().__init__(size, shuffle, seed)
        self.start = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def state_dict(self):
        return {"seed": self._seed}

    def load_state_dict(self, state):
        self._seed = int(state["seed"])


def _exit_130_when_interrupted(main_func, *args):
    """Run ``main_func(*args)`` in a worker; an interrupt (:class:`TrainingInterrupted` after the
    checkpoint, or a bare ``KeyboardInterrupt`` before training started) exits with status 130.
    (PyTorch's worker wrapper would turn a ``KeyboardInterrupt`` into status 0.)"""
    try:
        return main_func(*args)
    except TrainingInterrupted as stop:
        logger.warning("%s", stop)
    except KeyboardInterrupt:
        logger.warning("Interrupted outside the training loop: no checkpoint was written for this moment.")
    sys.exit(INTERRUPTED_EXIT)


class _ParentWaitsOnSignal:
    """In the parent of the workers: the first SIGINT (a terminal's Ctrl-C reaches the workers
    too) is only announced, so the parent keeps waiting while the workers finish their step and
    save the checkpoint; the previous handler comes back after it (a second one acts). SIGTERM
    keeps its default: a parent killed alone makes PyTorch send SIGINT to its workers."""

    def __enter__(self):
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        print(
            f"{signal.Signals(signum).name} received: waiting for the training processes to finish "
            "their iteration and save a checkpoint (again to abort at once).",
            file=sys.stderr,
            flush=True,
        )
        self._restore()

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=(),
           timeout=DEFAULT_TIMEOUT):
    """Detectron2's ``detectron2.engine.launch`` (same arguments), where an interrupted run exits
    with status 130 and no traceback, with one process or several: a worker that stops on
    :class:`TrainingInterrupted` (or a ``KeyboardInterrupt``) exits 130 and the parent exits 130
    once every worker has ended (a worker's other failure is re-raised as Detectron2 does).
    With several processes the parent survives the first Ctrl-C (SIGINT), waiting for the workers."""
    main_func = functools.partial(_exit_130_when_interrupted, main_func)
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only; give a tcp:// address.")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    with _ParentWaitsOnSignal():
        context = mp.start_processes(
            _distributed_worker,
            nprocs=num_gpus_per_machine,
            args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
            daemon=False,
            join=False,
        )
        try:
            # a grace period: the other workers end by themselves after the first one's exit
            while not context.join(grace_period=60):
                pass
        except mp.ProcessExitedException as e:
            if e.exit_code != INTERRUPTED_EXIT:
                raise
            print("Training interrupted: exit status 130 (see the log for the checkpoint; continue "
                  "with the same command plus --resume).", file=sys.stderr, flush=True)
            sys.exit(INTERRUPTED_EXIT)
