"""Regenerating the prototypes during training: :class:`PrototypeRefreshHook`.

Schedule: before the first training step (unless the prototypes came back with a ``--resume``)
and then every ``DISTILL.PGM.PERIOD`` iterations (0 = one epoch of the training set).

One refresh: the student goes to eval mode; each process pools the instances of its share of
the sampled images with the student (the teacher's are pooled once and cached: it is frozen);
the features are gathered; the main process runs PGM for every (level, class); every process
receives the same selection and fills its :class:`PrototypeBank`; the student returns to
training mode.
"""
import logging
import math
import time
from typing import List, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..utils import eval_mode, unwrap_model
from .instances import ImageInstances, class_counts, extract_features_from_cfg, sample_instances_from_cfg
from .selection import check_selection, select_prototypes

logger = logging.getLogger(__name__)


def pgm_dataset_names(cfg) -> List[str]:
    """The datasets PGM samples instances from: DISTILL.PGM.DATASETS, or DATASETS.TRAIN."""
    return list(cfg.DISTILL.PGM.DATASETS) or list(cfg.DATASETS.TRAIN)


def training_dicts(cfg) -> List[dict]:
    return [d for name in pgm_dataset_names(cfg) for d in DatasetCatalog.get(name)]


def _class_names(cfg) -> List[str]:
    """``thing_classes`` of the first dataset PGM samples from, if its metadata has them."""
    names = pgm_dataset_names(cfg)
    try:
        return list(MetadataCatalog.get(names[0]).get("thing_classes", None) or []) if names else []
    except Exception:  # metadata of an unusual dataset: the warning keeps the index alone
        return []


def refresh_period(cfg, num_images: int) -> int:
    """DISTILL.PGM.PERIOD, or one epoch: ceil(#images / SOLVER.IMS_PER_BATCH)."""
    period = int(cfg.DISTILL.PGM.PERIOD)  # >= 0: validate_distill_config
    return period or max(1, math.ceil(num_images / cfg.SOLVER.IMS_PER_BATCH))


def _gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate (L, n_rank, D) pieces of every process along dim 1, in rank order."""
    parts = [p for p in comm.all_gather(t.cpu()) if p.shape[1] > 0]
    return torch.cat(parts, dim=1) if parts else t.cpu()


class PrototypeRefresher:
    """Regenerates a model's prototypes: samples instances once, caches the teacher's features,
    and at each :meth:`refresh` pools the student's and runs PGM (or another selection).

    Works in a single process too (``refresh`` then needs no launcher).
    """

    def __init__(self, cfg, dataset_dicts: Optional[List[dict]] = None):
        p = cfg.DISTILL.PGM
        self.cfg = cfg
        self.dataset_dicts = dataset_dicts if dataset_dicts is not None else training_dicts(cfg)
        self.alpha, self.sigma, self.quantile = float(p.ALPHA), float(p.SIGMA), float(p.QUANTILE)
        self.selection, self.seed = check_selection(str(p.SELECTION)), int(p.SEED)
        self._records: Optional[List[ImageInstances]] = None
        self._meta = None  # (N, 4) long: class, image id, annotation index, box area (all processes)
        self._teacher_feats = None  # (L, N, D_T) gathered, cached
        self._class_names = None  # thing_classes, read once the datasets are loaded
        self._capped_logged = False

    def _prepare(self, model):
        """Sample (same on every process), take this process's share, cache teacher features."""
        records = sample_instances_from_cfg(self.cfg, self.dataset_dicts, model.num_classes)
        # Contiguous shares: gathering them in rank order restores the sampling order, so the
        # selection does not depend on the number of processes.
        rank, world = comm.get_rank(), comm.get_world_size()
        bounds = np.linspace(0, len(records), world + 1).astype(int)
        self._records = records[bounds[rank] : bounds[rank + 1]]
        meta = [
            np.stack(
                [
                    r.classes,
                    np.full(len(r.classes), r.image_id),
                    r.ann_index,
                    np.round((r.boxes[:, 2] - r.boxes[:, 0]) * (r.boxes[:, 3] - r.boxes[:, 1])),
                ],
                axis=1,
            )
            for r in self._records
        ]
        meta = torch.as_tensor(np.concatenate(meta) if meta else np.zeros((0, 4))).long()
        self._meta = _gather_cat(meta[None])[0]
        self._teacher_feats = _gather_cat(
            extract_features_from_cfg(self.cfg, model, model.teacher_features, self._records)
        )
        self._warn_classes_without_instances(model.num_classes)

    def _class_label(self, c: int) -> str:
        """``'name'`` of class ``c`` from the dataset's ``thing_classes``, or ``it``."""
        if self._class_names is None:
            self._class_names = _class_names(self.cfg)
        names = self._class_names
        return f"'{names[c]}'" if c < len(names) else "it"

    def _warn_classes_without_instances(self, num_classes: int):
        """One warning per class without a sampled instance, telling a class absent from the
        data from one whose instances are all smaller than ``DISTILL.PGM.MIN_SIZE``."""
        sampled = np.bincount(self._meta[:, 0].numpy(), minlength=num_classes)
        total = class_counts(self.dataset_dicts, num_classes)
        where = f"the PGM datasets {pgm_dataset_names(self.cfg)} (DISTILL.PGM.DATASETS, or DATASETS.TRAIN)"
        for c in np.flatnonzero(sampled == 0):
            if total[c] == 0:
                logger.warning(
                    "PGM: class %d has no instance at all in %s: %s gets no prototype (its robust "
                    "weights are 1).", c, where, self._class_label(c),
                )
            else:
                logger.warning(
                    "PGM: class %d has no instance of shorter side >= %s px (DISTILL.PGM.MIN_SIZE, at the "
                    "test-time scale): all %d of its instances are smaller; %s gets no prototype (its "
                    "robust weights are 1).", c, self.cfg.DISTILL.PGM.MIN_SIZE, total[c], self._class_label(c),
                )

    def capped_classes(self, bank) -> List[tuple]:
        """``[(class, K min, K max, sampled instances), ...]`` of the classes with instances that
        got fewer than ``DISTILL.PGM.NUM_PROTOTYPES`` prototypes at some level (K over levels)."""
        k = bank.valid.sum(dim=2)  # (L, C)
        sampled = np.bincount(self._meta[:, 0].numpy(), minlength=bank.num_classes)
        return [
            (c, int(k[:, c].min()), int(k[:, c].max()), int(sampled[c]))
            for c in range(bank.num_classes)
            if sampled[c] > 0 and int(k[:, c].min()) < bank.num_prototypes
        ]

    def _log_capped(self, bank, iteration: int):
        """One line listing each class whose K is below DISTILL.PGM.NUM_PROTOTYPES: a warning at
        the first refresh, then at info level."""
        capped = self.capped_classes(bank)
        if not capped:
            return
        per_class = ", ".join(
            f"class {c} {self._class_label(c)} K={lo if lo == hi else f'{lo}-{hi}'} of {n} instances"
            for c, lo, hi, n in capped
        )
        logger.log(
            logging.WARNING if not self._capped_logged else logging.INFO,
            "PGM refresh at iter %d: DISTILL.PGM.NUM_PROTOTYPES=%d is capped for %d of %d classes (a class "
            "gets at most its sampled instances that pass the density filter, DISTILL.PGM.QUANTILE=%s; "
            "K per level): %s.",
            iteration, bank.num_prototypes, len(capped), bank.num_classes, self.quantile, per_class,
        )
        self._capped_logged = True

    @torch.no_grad()
    def refresh(self, model, iteration: int) -> dict:
        """Regenerate ``model.prototypes``; returns stats (instances, prototypes, seconds)."""
        start = time.perf_counter()
        model = unwrap_model(model)
        with eval_mode(model.student):
            if self._records is None:
                self._prepare(model)
            feats_s = _gather_cat(extract_features_from_cfg(self.cfg, model, model.student_features, self._records))
            if not torch.isfinite(feats_s).all():
                raise FloatingPointError(
                    f"PGM refresh at iteration {iteration}: the student's FPN features are NaN "
                    "or Inf, training has diverged. Lower SOLVER.BASE_LR or the distillation "
                    "weights (DISTILL.FEATURE.WEIGHT, ...), or enable SOLVER.CLIP_GRADIENTS."
                )
            selection = None
            if comm.is_main_process():
                selection = self._select(feats_s, model.prototypes.num_prototypes)
            selection = comm.all_gather(selection)[0]
            self._fill(model.prototypes, feats_s, selection, iteration)
        self._log_capped(model.prototypes, iteration)
        stats = {
            "instances": int(self._meta.shape[0]),
            "prototypes": int(model.prototypes.valid.sum()),
            "seconds": time.perf_counter() - start,
        }
        per_class = model.prototypes.valid.sum(dim=2).tolist()  # (L, C)
        logger.info(
            "PGM refresh at iter %d: %d instances, %d prototypes (per level, per class: %s), %.1f s",
            iteration,
            stats["instances"],
            stats["prototypes"],
            ", ".join(f"{lvl} {n}" for lvl, n in zip(model.instance_levels, per_class)),
            stats["seconds"],
        )
        return stats

    def _select(self, feats_s: torch.Tensor, num_prototypes: int):
        """{(level, class): LongTensor of at most ``num_prototypes`` chosen instance rows}, run
        once (main process)."""
        feats_t = self._teacher_feats
        classes = self._meta[:, 0]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        selection = {}
        for level in range(feats_t.shape[0]):
            for c in torch.unique(classes).tolist():
                rows = torch.nonzero(classes == c).flatten()
                chosen = select_prototypes(
                    self.selection,
                    feats_t[level, rows].to(device),
                    feats_s[level, rows].to(device),
                    self._meta[rows, 3],
                    num_prototypes=num_prototypes,
                    alpha=self.alpha,
                    sigma=self.sigma,
                    quantile=self.quantile,
                    seed=self.seed + 1000 * level + c,
                )
                selection[(level, c)] = rows[chosen]
        return selection

    def _fill(self, bank, feats_s, selection, iteration):
        bank.valid.zero_()
        bank.teacher.zero_()
        bank.student.zero_()
        bank.source.fill_(-1)
        for (level, c), rows in selection.items():
            bank.set_prototypes(
                level,
                c,
                self._teacher_feats[level, rows],
                feats_s[level, rows],
                self._meta[rows, 1:3],
            )
        bank.last_refresh_iter.fill_(iteration)


class PrototypeRefreshHook(HookBase):
    """Detectron2 hook: regenerate prototypes before the first step and every ``period`` steps.

    After ``--resume`` the prototypes come back from the checkpoint (``last_refresh_iter``),
    so the next refresh happens on schedule, not at the restart.
    """

    def __init__(self, cfg, dataset_dicts: Optional[List[dict]] = None):
        self.refresher = PrototypeRefresher(cfg, dataset_dicts)
        self.period = refresh_period(cfg, len(self.refresher.dataset_dicts))

    def before_step(self):
        bank = unwrap_model(self.trainer.model).prototypes
        it = self.trainer.iter
        last = int(bank.last_refresh_iter)
        if last >= 0 and it - last < self.period:
            return
        stats = self.refresher.refresh(self.trainer.model, it)
        storage = self.trainer.storage
        storage.put_scalar("kd/pgm_prototypes", stats["prototypes"], smoothing_hint=False)
        storage.put_scalar("kd/pgm_seconds", stats["seconds"], smoothing_hint=False)
