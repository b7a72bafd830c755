"""Checking, with several processes, that every process holds the same prototypes after a
refresh: :class:`PrototypeAgreementHook` (installed by ``DistillTrainer`` beside the
:class:`~gkd_d2.prototypes.refresh.PrototypeRefreshHook`)."""
import hashlib
import logging

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..utils import unwrap_model

logger = logging.getLogger(__name__)


def prototype_fingerprint(bank) -> str:
    """sha1 (16 hex digits) of every buffer of a :class:`PrototypeBank`: equal iff bit-identical."""
    h = hashlib.sha1()
    for name, t in sorted(bank.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class PrototypeAgreementHook(HookBase):
    """With several processes, right after each prototype refresh (before the step that uses
    them): every process must hold bit-identical prototypes. DDP does not broadcast buffers
    (Detectron2 builds it with ``broadcast_buffers=False``), so a disagreement would silently
    give each process another global loss; here it stops training. Logs the fingerprint."""

    def before_step(self):
        bank = unwrap_model(self.trainer.model).prototypes
        if int(bank.last_refresh_iter) != self.trainer.iter:  # not refreshed for this step
            return
        prints = comm.all_gather(prototype_fingerprint(bank))
        if len(set(prints)) > 1:
            raise RuntimeError(
                f"Prototypes refreshed at iteration {self.trainer.iter} differ between processes "
                f"(fingerprints by rank: {prints})."
            )
        logger.info(
            "Prototypes of iter %d identical on %d processes (fingerprint %s)",
            self.trainer.iter, len(prints), prints[0],
        )
