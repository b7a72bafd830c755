"""The measurements of the probes (global, robust, gradients, feature) on hand-made values.

    python -m pytest -q benchmarks/investigations/test_probes.py
"""
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import probe_common  # noqa: E402
import probe_global  # noqa: E402
import probe_robust  # noqa: E402


def test_ncm_fits_on_even_scores_on_odd():
    # class 0 around e0, class 1 around e1; the odd class-1 instance at index 3 lies on e0.
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    x = torch.stack([e0, e0, e1, e0, e1, e1])  # fit: 0, 2, 4; scored: 1, 3, 5
    classes = torch.tensor([0, 0, 1, 1, 1, 1])
    assert probe_common.ncm(x, classes, 2) == pytest.approx(2 / 3)  # 1 right, 3 wrong, 5 right
    only_class_1 = classes == 1
    assert probe_common.ncm(x, classes, 2, keep=only_class_1) == pytest.approx(1 / 2)


def test_rel_gap_is_zero_for_the_teacher_and_exact_otherwise():
    x_t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    levels = torch.zeros(3, dtype=torch.long)
    assert probe_global.rel_gap(2 * x_t, x_t, levels) == pytest.approx(0.0, abs=1e-6)  # scale-free
    x_s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])  # instance 1 turned onto instance 0
    # cos_T: (0,1) 0, (0,2) 1/sqrt2, (1,2) 1/sqrt2; cos_S: (0,1) 1, (0,2) 1/sqrt2, (1,2) 1/sqrt2
    assert probe_global.rel_gap(x_s, x_t, levels) == pytest.approx(1 / 3)
    # only pairs of the same level count: with levels (0, 0, 1) that is pair (0, 1) alone
    assert probe_global.rel_gap(x_s, x_t, torch.tensor([0, 0, 1])) == pytest.approx(1.0)
    assert probe_global.rel_gap(x_s, x_t, torch.tensor([0, 1, 1])) == pytest.approx(0.0, abs=1e-7)


def test_geometry_correlations_separate_class_from_colour():
    classes = torch.tensor([0, 0, 1, 1, 2, 2])
    shade = torch.tensor([0, 1, 0, 1, 1, 0])  # two colours, independent of the class
    colours = torch.tensor([[200.0, 10.0, 10.0], [10.0, 10.0, 200.0]])[shade]
    by_class = probe_global.geometry_correlations(torch.nn.functional.one_hot(classes, 3).float(), classes, colours)
    assert by_class["r_class"] == pytest.approx(1.0)
    by_colour = probe_global.geometry_correlations(torch.nn.functional.one_hot(shade, 2).float(), classes, colours)
    assert by_colour["r_colour"] == pytest.approx(1.0)
    assert abs(by_colour["r_class"]) < 0.5


def test_robust_weight_auc_counts_pairs_and_ties():
    # every ambiguous weight below every clear one: 1; the reverse: 0; identical: 0.5
    low, high = torch.tensor([0.2, 0.5]), torch.tensor([0.6, 0.9, 1.0])
    assert probe_robust.auc(low, high) == pytest.approx(1.0)
    assert probe_robust.auc(high, low) == pytest.approx(0.0)
    assert probe_robust.auc(torch.ones(3), torch.ones(2)) == pytest.approx(0.5)
    # pairs (0.5 vs 0.4, 0.5 vs 0.5, 0.5 vs 0.9) -> 0 + 0.5 + 1 over 3
    assert probe_robust.auc(torch.tensor([0.5]), torch.tensor([0.4, 0.5, 0.9])) == pytest.approx(0.5)
    assert probe_robust.auc(torch.tensor([]), high) != probe_robust.auc(torch.tensor([]), high)  # nan


def test_gradient_probe_groups_cosines_and_unreached_parameters():
    import probe_gradients

    assert [probe_gradients.group_of(n) for n in ("backbone.bottom_up.stem.conv1.weight", "backbone.fpn_lateral2.weight",
                                                  "roi_heads.box_predictor.cls_score.weight", "head.cls_score.bias")] \
        == ["bottom_up", "fpn", "heads", "heads"]
    assert probe_gradients.cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(2 ** -0.5)
    assert probe_gradients.cosine(torch.tensor([1.0, 2.0]), torch.tensor([-2.0, -4.0])) == pytest.approx(-1.0)
    assert probe_gradients.cosine(torch.zeros(2), torch.ones(2)) != probe_gradients.cosine(torch.zeros(2), torch.ones(2))
    a, b = torch.nn.Parameter(torch.tensor([1.0, 2.0])), torch.nn.Parameter(torch.tensor([3.0]))
    g = probe_gradients.flat_grads((a ** 2).sum(), [a, b])  # b does not reach the loss: zeros, not an error
    assert torch.equal(g, torch.tensor([2.0, 4.0, 0.0]))


class _Maps:
    """A stand-in for the distillation model: fixed student / teacher maps per image."""

    def __init__(self, student, teacher):
        self.s, self.t = student, teacher

    def student_features(self, batch):
        return {"p2": torch.stack([self.s[i] for i in batch])}

    def teacher_features(self, batch):
        return {"p2": torch.stack([self.t[i] for i in batch])}


def test_linear_r2_is_one_for_a_linear_teacher_and_near_zero_for_noise():
    import probe_feature

    g = torch.Generator().manual_seed(0)
    student = torch.randn(16, 3, 6, 6, generator=g)  # 16 images, C_S = 3
    mix, bias = torch.randn(4, 3, generator=g), torch.randn(4, generator=g)
    linear = torch.einsum("ts,nshw->nthw", mix, student) + bias[None, :, None, None]  # C_T = 4
    r2 = probe_feature.linear_r2(_Maps(student, linear), list(range(16)), ["p2"], step=4)["p2"]
    assert r2 == pytest.approx(1.0, abs=1e-3)
    noise = torch.randn(16, 4, 6, 6, generator=g)
    r2 = probe_feature.linear_r2(_Maps(student, noise), list(range(16)), ["p2"], step=4)["p2"]
    assert -0.1 < r2 < 0.05  # nothing to read: no better than the channel means
    s1, s2 = torch.tensor([2.0, 0.0]), torch.tensor([2.0, 8.0])  # channel 0: 1, 1 (var 0); channel 1: 2, -2 (var 4)
    assert probe_feature.per_channel_variance(s1, s2, 2) == pytest.approx(2.0)
