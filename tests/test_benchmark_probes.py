"""The measurements of ``benchmarks/probe_global.py`` and ``probe_robust.py`` on hand-made values."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import probe_global  # noqa: E402
import probe_robust  # noqa: E402


def test_ncm_fits_on_even_scores_on_odd():
    # class 0 around e0, class 1 around e1; the odd class-1 instance at index 3 lies on e0.
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    x = torch.stack([e0, e0, e1, e0, e1, e1])  # fit: 0, 2, 4; scored: 1, 3, 5
    classes = torch.tensor([0, 0, 1, 1, 1, 1])
    assert probe_global.ncm(x, classes, 2) == pytest.approx(2 / 3)  # 1 right, 3 wrong, 5 right
    only_class_1 = classes == 1
    assert probe_global.ncm(x, classes, 2, keep=only_class_1) == pytest.approx(1 / 2)


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
