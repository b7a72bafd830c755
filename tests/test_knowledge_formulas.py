"""Exact values of the local and global knowledge formulas on hand-made tensors."""
import math

import pytest
import torch

from gkd_d2.knowledge.losses import (
    anchor_binary_kl,
    decoupled_feature_loss,
    global_knowledge_loss,
    roi_kl,
    sigmoid_response,
    weighted_box_mask,
)
from gkd_d2.prototypes.bank import PrototypeBank
from gkd_d2.prototypes.relations import prototype_coefficients, robust_weights
from helpers import composite_binary_kl


def test_box_mask_cells_by_hand():
    # stride 4 on an 8x8 map. Box A (5, 3)-(13, 11): x cells [1, 3), y cells [0, 2).
    # Box B (0, 0)-(2, 2) is smaller than a cell: covers exactly cell (0, 0).
    boxes = torch.tensor([[5.0, 3.0, 13.0, 11.0], [0.0, 0.0, 2.0, 2.0], [30.0, 30.0, 31.0, 32.0]])
    weights = torch.tensor([0.5, 0.9, 0.7])
    image_index = torch.tensor([0, 0, 1])
    m = weighted_box_mask(boxes, image_index, weights, 4, 2, 8, 8)
    expected = torch.zeros(2, 8, 8)
    expected[0, 0:2, 1:3] = 0.5
    expected[0, 0, 0] = 0.9
    expected[1, 7, 7] = 0.7  # x: [7, max(7, 8)) ; y: [7, 8)
    assert torch.equal(m, expected)


def test_box_mask_overlap_takes_largest_weight():
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 24.0, 24.0]])
    m = weighted_box_mask(boxes, torch.tensor([0, 0]), torch.tensor([0.3, 0.8]), 8, 1, 4, 4)
    assert m[0, 0, 0] == 0.3 and m[0, 1, 1] == 0.8 and m[0, 2, 2] == 0.8 and m[0, 3, 3] == 0
    empty = weighted_box_mask(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0), 8, 2, 4, 4)
    assert empty.shape == (2, 4, 4) and empty.sum() == 0


def test_decoupled_feature_loss_by_hand():
    t = torch.zeros(1, 2, 2, 2)
    s = torch.zeros(1, 2, 2, 2)
    s[0, :, 0, 0] = 1.0  # error 1 + 1 over the 2 channels of the foreground cell
    s[0, 0, 1, 1] = 3.0  # error 9 + 0 at a background cell
    mask = torch.zeros(1, 2, 2)
    mask[0, 0, 0] = 0.5
    # mask broadcast over C=2 channels: sum M = 1.0, sum(1-[M>0]) = 6
    # L_fg = 0.5 * (1 + 1) / (2 * 1.0) = 0.5 ; L_bg = 9 / (2 * 6) = 0.75
    loss = decoupled_feature_loss(s, t, mask, gamma_fg=1.0, gamma_bg=4.0)
    assert loss.item() == pytest.approx(0.5 + 4.0 * 0.75)
    # No foreground: the fg part is 0 (denominator clamped to 1), no NaN.
    loss = decoupled_feature_loss(s, t, torch.zeros(1, 2, 2), 1.0, 1.0)
    assert loss.item() == pytest.approx((2 + 9) / 16)


def test_roi_kl_by_hand():
    zs = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    zt = torch.tensor([[2.0, 0.0], [1.0, -1.0]])
    T = 2.0
    pt = torch.softmax(zt[0] / T, 0)
    ps = torch.softmax(zs[0] / T, 0)
    kl0 = float((pt * (pt.log() - ps.log())).sum()) * T * T
    w = torch.tensor([0.5, 1.0])
    assert roi_kl(zs, zt, w, T).item() == pytest.approx(0.5 * kl0 / 2, rel=1e-6)
    assert roi_kl(zt, zt, torch.ones(2), T).item() == 0.0
    assert roi_kl(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0), T).item() == 0.0


def test_sigmoid_response_by_hand():
    T = 2.0
    zs = torch.tensor([[[0.0], [1.0], [5.0]]])  # (B=1, A=3, C=1)
    zt = torch.tensor([[[2.0], [1.0], [-5.0]]])
    valid = torch.tensor([[True, True, False]])  # third anchor ignored
    w = torch.tensor([[0.5, 1.0, 1.0]])
    p = torch.sigmoid(torch.tensor(1.0))  # teacher prob of anchor 0 at T=2
    q = torch.tensor(0.5)  # student prob of anchor 0
    kl = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
    expected = 0.5 * T * T * float(kl) / 2.0  # normaliser 2
    assert sigmoid_response(zs, zt, w, valid, 2.0, T).item() == pytest.approx(expected, rel=1e-5)
    assert sigmoid_response(zt, zt, torch.ones(1, 3), valid, 1.0, T).item() == pytest.approx(0, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_anchor_binary_kl_matches_bce_minus_entropy_and_its_gradient(dtype):
    g = torch.Generator().manual_seed(0)
    zs = (torch.randn(2, 40, 6, generator=g) * 8).to(dtype)  # logits up to ~30: saturated sigmoids too
    zt = (torch.randn(2, 40, 6, generator=g) * 8).to(dtype)
    up = torch.rand(2, 40, generator=g).to(dtype)  # an arbitrary upstream gradient per anchor
    a = zs.clone().requires_grad_()
    b = zs.clone().requires_grad_()
    teacher = zt.clone().requires_grad_()
    ours = anchor_binary_kl(a, teacher, 2.0)
    ref = composite_binary_kl(b, zt, 2.0)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert ours.shape == (2, 40)
    assert torch.allclose(ours, ref, rtol=tol, atol=tol)
    (ours * up).sum().backward()
    (ref * up).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=tol, atol=tol)
    assert teacher.grad is None  # the teacher's logits are a target only
    assert anchor_binary_kl(zt, zt, 2.0).abs().max().item() < tol * 10  # zero when S == T


def test_anchor_binary_kl_gradcheck_and_half_logits():
    g = torch.Generator().manual_seed(1)
    zs = torch.randn(1, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(1, 5, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: anchor_binary_kl(x, zt, 3.0), (zs,))
    half = zs.detach().half().requires_grad_()
    out = anchor_binary_kl(half, zt.half(), 3.0)
    assert out.dtype == torch.float32  # the loss itself is never computed in half
    out.sum().backward()
    assert half.grad.dtype == torch.float16


def test_prototype_coefficients_pick_the_instance_level():
    protos = torch.zeros(2, 2, 2)  # L=2 levels, M=2 slots, D=2
    protos[0, 0] = torch.tensor([1.0, 0.0])
    protos[1, 0] = torch.tensor([0.0, 3.0])
    protos[1, 1] = torch.tensor([1.0, 1.0])
    x = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    beta = prototype_coefficients(x, protos, torch.tensor([0, 1]))
    assert torch.allclose(beta, torch.tensor([[1.0, 0.0], [0.0, 1 / math.sqrt(2)]]))


def test_robust_weights_eq8_by_hand():
    # 3 slots: class 0, class 0, class 1 ; last slot invalid for instance 1.
    beta_t = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.3, 0.8], [0.1, 0.1, 0.1]])
    beta_s = torch.tensor([[0.6, 0.7, 0.0], [0.2, 0.1, 0.0], [0.1, 0.1, 0.1]])
    valid = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    slot_class = torch.tensor([0, 0, 1])
    classes = torch.tensor([0, 1, 3])  # instance 1: class 1 has no valid slot; 2: background
    w = robust_weights(beta_t, beta_s, valid, slot_class, classes)
    # instance 0: 1 - |max(0.9, 0.2) - max(0.6, 0.7)| = 0.8
    assert torch.allclose(w, torch.tensor([0.8, 1.0, 1.0]))
    big = robust_weights(torch.tensor([[1.0]]), torch.tensor([[-1.0]]), torch.tensor([[True]]), torch.tensor([0]), torch.tensor([0]))
    assert big.item() == 0.0  # clamped


def test_global_loss_eq6_by_hand_and_gradient_to_student_only():
    beta_t = torch.tensor([[0.5, 0.0], [1.0, 0.2]], requires_grad=True)
    beta_s = torch.tensor([[0.0, 0.0], [-1.5, 0.2]], requires_grad=True)
    valid = torch.tensor([[True, False], [True, True]])
    w = torch.tensor([0.5, 1.0])
    # valid pairs: (0,0): 0.5*smoothL1(-0.5)=0.5*0.125 ; (1,0): smoothL1(-2.5)=2.0 ; (1,1): 0
    expected = (0.0625 + 2.0 + 0.0) / 3
    loss = global_knowledge_loss(beta_t, beta_s, valid, w)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert beta_t.grad is None and beta_s.grad is not None
    assert global_knowledge_loss(beta_t, beta_s, torch.zeros(2, 2, dtype=torch.bool), w).item() == 0.0


def test_bank_relations_identical_spaces_give_weight_one_and_zero_loss():
    torch.manual_seed(0)
    bank = PrototypeBank(["p2", "p3"], num_classes=3, num_prototypes=2, dim_teacher=5, dim_student=5)
    feats = torch.randn(6, 5)
    bank.set_prototypes(0, 0, feats[:2], feats[:2], torch.tensor([[1, 0], [1, 1]]))
    bank.set_prototypes(1, 2, feats[2:3], feats[2:3], torch.tensor([[2, 0]]))
    x = torch.randn(4, 5)
    levels = torch.tensor([0, 1, 1, 0])
    classes = torch.tensor([0, 2, 1, 1])
    rel = bank.relations(x, x, levels)
    assert rel.beta_t.shape == (4, 6) and rel.slot_valid.sum() == 2 + 1 + 1 + 2
    assert torch.equal(bank.robust_weights(x, x, levels, classes), torch.ones(4))
    assert global_knowledge_loss(rel.beta_t, rel.beta_s, rel.slot_valid, torch.ones(4)).item() == 0
    # Different student features: weights < 1 only where the class has prototypes.
    w = bank.robust_weights(x, torch.randn(4, 5), levels, classes)
    assert w[0] < 1 and w[1] < 1 and w[2] == 1 and w[3] == 1


def test_empty_bank_gives_weight_one():
    bank = PrototypeBank(["p3"], 2, 3, 4, 6)
    w = bank.robust_weights(torch.randn(3, 4), torch.randn(3, 6), torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 0]))
    assert torch.equal(w, torch.ones(3))
    rel = bank.relations(torch.randn(3, 4), torch.randn(3, 6), torch.zeros(3, dtype=torch.long))
    assert torch.isfinite(rel.beta_s).all() and not rel.slot_valid.any()


def test_terms_build_from_keywords_without_a_model():
    """@configurable: a term is built from its options alone and applied to a hand-made batch;
    from a cfg it reads the same options."""
    from detectron2.config import get_cfg

    from gkd_d2 import add_distill_config
    from gkd_d2.knowledge import GlobalKnowledge, ResponseKnowledge
    from gkd_d2.structures import DenseResponse

    term = ResponseKnowledge(weight=0.5, temperature=2.0, use_robust_weights=True, form="paper")
    zs, zt = torch.tensor([[[1.0, -2.0], [0.5, 0.0]]]), torch.tensor([[[0.0, 1.0], [0.5, 0.0]]])
    response = DenseResponse(
        student_logits=zs,
        labels=torch.tensor([[0, 2]]),
        matched_gt=torch.tensor([[0, -1]]),
        response_mask=torch.tensor([[True, True]]),
        normalizer=1.0,
        teacher_logits=zt,
    )
    response.assign_robust_weights(torch.tensor([0.25]), prototypes=None)
    assert torch.equal(response.weights, torch.tensor([[0.25, 1.0]]))

    class Batch:  # the one field the term reads
        pass

    batch = Batch()
    batch.response = response
    loss = term(batch)["loss_kd_response"]
    expected = 0.5 * (0.25 * composite_binary_kl(zs, zt, 2.0)[0, 0] + composite_binary_kl(zs, zt, 2.0)[0, 1])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    cfg = get_cfg()
    add_distill_config(cfg)
    cfg.DISTILL.GLOBAL.WEIGHT = 3.0
    assert GlobalKnowledge(cfg, None).weight == 3.0 == GlobalKnowledge(weight=3.0).weight
    cfg.DISTILL.RESPONSE.TEMPERATURE = 0.0
    with pytest.raises(ValueError, match="DISTILL.RESPONSE.TEMPERATURE=0.0 must be > 0"):
        ResponseKnowledge(cfg, None)


def test_release_response_by_hand():
    """Positives only; per positive T^2 KL(p_T || p_S) / K, times its weight; mean over positives."""
    from gkd_d2.knowledge.losses import class_mean_kl, positive_response

    zs = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, -5.0]])
    zt = torch.tensor([[0.0, 2.0], [2.0, 0.0], [-5.0, 5.0]])
    t = 2.0
    p_t = torch.softmax(zt / t, dim=1)
    kl = (p_t * (p_t.log() - torch.log_softmax(zs / t, dim=1))).sum(dim=1)  # (3,)
    assert torch.allclose(class_mean_kl(zs, zt, t), kl * t * t / 2)
    assert class_mean_kl(zs[1:2], zt[1:2], t).item() == 0.0  # same logits
    weights = torch.tensor([0.5, 1.0, 0.25])
    positive = torch.tensor([True, True, False])  # the third (a background) is left out
    expected = (0.5 * kl[0] * 4 / 2 + 1.0 * kl[1] * 4 / 2) / 2
    assert positive_response(zs, zt, weights, positive, t).item() == pytest.approx(expected.item(), rel=1e-6)
    # dense layout (B, A, K) gives the same as the flattened rows
    dense = positive_response(zs[None], zt[None], weights[None], positive[None], t)
    assert dense.item() == pytest.approx(expected.item(), rel=1e-6)
    none = positive_response(zs.requires_grad_(), zt, weights, torch.zeros(3, dtype=torch.bool), t)
    assert none.item() == 0.0 and none.requires_grad


def test_release_global_form_by_hand():
    """Per level: mean over valid (i, j) of smoothL1(w beta_S, w beta_T); summed over levels."""
    from gkd_d2.knowledge.losses import global_knowledge_loss_every_level

    beta_t = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    beta_s = torch.tensor([[0.0, 0.0], [0.5, -1.5], [3.0, 0.0]])
    valid = torch.tensor([[True, True], [True, False], [True, True]])
    weights = torch.tensor([1.0, 0.5, 1.0])
    level_index = torch.tensor([0, 0, 1])  # rows 0, 1 at level 0, row 2 at level 1
    # level 0: |1 beta diff| row 0: (1 -> 0.5*1^2 = 0.5), (0 -> 0); row 1 slot 0: 0 -> mean 0.5/3
    # level 1: row 2: |3| -> 3 - 0.5 = 2.5, 0 -> mean 2.5/2
    loss = global_knowledge_loss_every_level(beta_t, beta_s, valid, weights, level_index, 2)
    assert loss.item() == pytest.approx(0.5 / 3 + 2.5 / 2)
