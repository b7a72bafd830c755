"""The training hook that draws robust-weight overlays (``DISTILL.VIS``)."""
import logging
import os
from typing import List, Optional, Sequence

from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..utils import unwrap_model
from .analysis import image_robust_weights
from .drawing import draw_robust_weights

logger = logging.getLogger(__name__)


class RobustWeightOverlayHook(HookBase):
    """Draw the robust weights of the GT boxes of the first ``DISTILL.VIS.OVERLAY_IMAGES``
    images of ``DATASETS.TRAIN`` (0 = the hook does nothing).

    When: in ``after_step``. With ``DISTILL.VIS.OVERLAY_PERIOD = 0`` (default), after every
    prototype refresh: whenever ``model.prototypes.last_refresh_iter`` differs from the value
    seen last (``before_train`` records the value a ``--resume`` restored, so a restart does not
    redraw). With ``OVERLAY_PERIOD = P > 0``, every P iterations (after iterations P-1, 2P-1, ...)
    whatever the prototypes. A model without prototypes gets no overlays.

    What: :func:`image_robust_weights` (test-time transform, each GT box pooled at its assigned
    level in both models, ``model.prototypes.robust_weights``), then :func:`draw_robust_weights`
    to ``OUTPUT_DIR/robust_weights/iter_{iter:07d}/{image_id}.png``. Only the main process
    computes and writes; the student is put back into its previous train/eval mode.
    """

    def __init__(self, cfg, dataset_dicts: Optional[Sequence[dict]] = None):
        v = cfg.DISTILL.VIS
        self.num_images = int(v.OVERLAY_IMAGES)
        self.period = int(v.OVERLAY_PERIOD)
        if self.num_images < 0 or self.period < 0:
            raise ValueError(
                f"DISTILL.VIS.OVERLAY_IMAGES={self.num_images} and DISTILL.VIS.OVERLAY_PERIOD="
                f"{self.period} must be >= 0."
            )
        self.output_dir = os.path.join(cfg.OUTPUT_DIR, "robust_weights")
        self.image_format = cfg.INPUT.FORMAT
        self.short_edge, self.max_size = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
        self._train_names = list(cfg.DATASETS.TRAIN)
        self._dicts = list(dataset_dicts)[: self.num_images] if dataset_dicts is not None else None
        self._seen = None

    def _bank(self):
        return getattr(unwrap_model(self.trainer.model), "prototypes", None)

    def _images(self):
        if self._dicts is None:
            dicts = []
            for name in self._train_names:
                if len(dicts) >= self.num_images:
                    break
                dicts += DatasetCatalog.get(name)
            self._dicts = dicts[: self.num_images]
        return self._dicts

    def before_train(self):
        bank = self._bank()
        if bank is not None:
            self._seen = int(bank.last_refresh_iter)

    def after_step(self):
        if self.num_images <= 0 or not comm.is_main_process():
            return
        bank = self._bank()
        if bank is None:
            return
        it = self.trainer.iter
        if self.period > 0:
            due = (it + 1) % self.period == 0
        else:
            last = int(bank.last_refresh_iter)
            due = last >= 0 and last != self._seen
            self._seen = last
        if due:
            self.write_overlays(it)

    def write_overlays(self, iteration: int) -> List[str]:
        """Compute and write the overlays of ``iteration``; returns the written paths."""
        items = image_robust_weights(
            self.trainer.model, self._images(), self.image_format, self.short_edge, self.max_size
        )
        folder = os.path.join(self.output_dir, f"iter_{iteration:07d}")
        paths = [
            draw_robust_weights(
                item,
                os.path.join(folder, f"{item.image_id}.png"),
                title=f"image {item.image_id}, iter {iteration}: robust weights "
                "(dashed: class without prototypes)",
            )
            for item in items  # images
        ]
        logger.info("Robust-weight overlays of %d images written to %s", len(paths), folder)
        return paths

