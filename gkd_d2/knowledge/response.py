"""``response``: local response knowledge, the teacher's classification outputs as soft targets.

``DISTILL.RESPONSE.FORM = "release"`` (default, the authors' released code): on the **positive**
RoIs / anchors / locations only, ``T^2 KL(softmax(z_T/T) || softmax(z_S/T))`` averaged over the
classes, times the robust weight, averaged over the positives
(:func:`~gkd_d2.knowledge.losses.positive_response`). For dense detectors the softmax runs over
the C class logits of each anchor.

``"paper"`` (the reading of the paper's text):

- Faster R-CNN (``batch.response`` a :class:`~gkd_d2.structures.RoIResponse`): on the RoIs the
  student's ROI head sampled, both models' box pooler + box head + predictor; per RoI
  ``KL_i = T^2 KL(softmax(z_T/T) || softmax(z_S/T))`` over the C+1 classes;
  ``L_resp = mean_i omega_i KL_i`` (:func:`~gkd_d2.knowledge.losses.roi_kl`).
- RetinaNet, FCOS (a :class:`~gkd_d2.structures.DenseResponse`): per anchor / location and
  class, the binary KL of ``sigmoid(z_S/T)`` against ``sigmoid(z_T/T)`` times ``T^2``, weighted
  by the robust weight of the matched GT, over the locations the detector family marks
  (RetinaNet: every non-ignored anchor; FCOS: the positive locations), divided by the focal
  loss's normaliser (:func:`~gkd_d2.knowledge.losses.sigmoid_response`).
"""
import torch
from detectron2.config import configurable

from .base import KnowledgeTerm, check_temperature, check_weight, register_knowledge
from .losses import positive_response, roi_kl, sigmoid_response

RESPONSE_FORMS = ("release", "paper")


@register_knowledge("response")
class ResponseKnowledge(KnowledgeTerm):
    """RoI KL (two-stage) or dense sigmoid distillation, weighted per RoI / anchor by the robust
    weights of Eq. 8 (1 without prototypes)."""

    needs_response = True

    @configurable
    def __init__(self, *, weight, temperature=2.0, use_robust_weights=True, form="release"):
        super().__init__()
        if form not in RESPONSE_FORMS:
            raise ValueError(f"DISTILL.RESPONSE.FORM={form!r}: choose one of {list(RESPONSE_FORMS)}.")
        self.weight, self.temperature, self.use_robust_weights = weight, temperature, use_robust_weights
        self.form = form

    @classmethod
    def from_config(cls, cfg, spec):
        c = cfg.DISTILL.RESPONSE
        return {
            "weight": check_weight(c.WEIGHT, "DISTILL.RESPONSE.WEIGHT"),
            "temperature": check_temperature(c.TEMPERATURE, "DISTILL.RESPONSE.TEMPERATURE"),
            "use_robust_weights": bool(cfg.DISTILL.ROBUST_WEIGHTS),
            "form": c.FORM,
        }

    def forward(self, batch, prototypes=None):
        r = batch.response
        w = r.weights if self.use_robust_weights else torch.ones_like(r.weights)
        if self.form == "release":
            loss = positive_response(r.student_logits, r.teacher_logits, w, r.positives(), self.temperature)
        elif r.per_roi:
            loss = roi_kl(r.student_logits, r.teacher_logits, w, self.temperature)
        else:
            loss = sigmoid_response(
                r.student_logits, r.teacher_logits, w, r.response_mask, r.normalizer, self.temperature
            )
        return {"loss_kd_response": self.weight * loss}
