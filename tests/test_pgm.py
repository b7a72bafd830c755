"""PGM (docs/method.md, "Prototype Generation Module"): closed form, greedy choice, density filter, edge cases."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from gkd_d2 import generate_prototypes
from gkd_d2.prototypes.pgm import (
    density_candidates,
    local_density,
    matching_pursuit,
    pursuit_coefficients,
)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 10.0, 100.0])
def test_closed_form_coefficients_minimise_the_objective(alpha):
    rng = np.random.default_rng(0)
    for u, v in rng.normal(size=(20, 2)):
        f = lambda w: (w[0] - u) ** 2 + (w[1] - v) ** 2 + alpha * (w[0] - w[1]) ** 2  # noqa: E731
        numeric = minimize(f, x0=[0.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
        w_t, w_s = pursuit_coefficients(torch.tensor(u), torch.tensor(v), alpha)
        assert float(w_t) == pytest.approx(numeric[0], abs=1e-5)
        assert float(w_s) == pytest.approx(numeric[1], abs=1e-5)


def brute_force_pursuit(x_t, x_s, candidates, k, alpha):
    """The greedy rule written out with explicit residual vectors (no algebraic shortcut)."""
    r_t, r_s = x_t.clone(), x_s.clone()
    chosen = []
    for _ in range(min(k, len(candidates))):
        best, best_e = None, None
        for p in candidates:
            if p in chosen:
                continue
            a, b = x_t[p], x_s[p]
            e = 0.0
            for n in range(x_t.shape[0]):
                u, v = float(a @ r_t[n]), float(b @ r_s[n])
                w_t = (alpha * (u + v) + u) / (1 + 2 * alpha)
                w_s = (alpha * (u + v) + v) / (1 + 2 * alpha)
                e += float(((w_t * a - r_t[n]) ** 2).sum() + ((w_s * b - r_s[n]) ** 2).sum())
                e += alpha * (w_t - w_s) ** 2
            if best_e is None or e < best_e - 1e-12:
                best, best_e = p, e
        chosen.append(best)
        a, b = x_t[best], x_s[best]
        u, v = r_t @ a, r_s @ b
        w_t, w_s = pursuit_coefficients(u, v, alpha)
        r_t = r_t - w_t[:, None] * a[None]
        r_s = r_s - w_s[:, None] * b[None]
    return chosen


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("alpha", [1.0, 10.0])
def test_every_greedy_step_minimises_the_objective(seed, alpha):
    g = torch.Generator().manual_seed(seed)
    x_t = F.normalize(torch.randn(12, 5, generator=g, dtype=torch.float64), dim=1)
    x_s = F.normalize(torch.randn(12, 7, generator=g, dtype=torch.float64), dim=1)
    candidates = torch.arange(12)
    fast = matching_pursuit(x_t, x_s, candidates, 6, alpha).tolist()
    assert fast == brute_force_pursuit(x_t, x_s, candidates.tolist(), 6, alpha)
    # on a subset of candidates too
    subset = torch.tensor([1, 3, 4, 8, 10])
    assert matching_pursuit(x_t, x_s, subset, 3, alpha).tolist() == brute_force_pursuit(
        x_t, x_s, subset.tolist(), 3, alpha
    )


def naive_candidates(x_t, x_s, sigma, q):
    keep = []
    n = x_t.shape[0]
    for x in (x_t, x_s):
        xn = x / x.norm(dim=1, keepdim=True)
        rho = [sum(np.exp(-(((1 - float(xn[i] @ xn[j])) / sigma) ** 2)) for j in range(n)) for i in range(n)]
        thr = sorted(rho)[int(np.floor(q * n))]
        keep.append({i for i in range(n) if rho[i] > thr})
    return keep[0] & keep[1]


def test_density_filter_hand_made():
    # N = 10, q = 0.4: the threshold is the 5th smallest density (position 4).
    # Teacher: rows 0-4 identical (density 5), rows 5-9 orthogonal (density 1) -> 0-4 pass.
    # Student: rows 0-2 identical (density 3), rows 3-9 orthogonal (density 1) -> 0-2 pass.
    eye_t, eye_s = torch.eye(6, dtype=torch.float64), torch.eye(8, dtype=torch.float64)
    x_t = torch.stack([eye_t[0]] * 5 + [eye_t[i] for i in range(1, 6)])
    x_s = torch.stack([eye_s[0]] * 3 + [eye_s[i] for i in range(1, 8)])
    keep = density_candidates(x_t, x_s, 0.1, 0.4)
    assert torch.nonzero(keep).flatten().tolist() == [0, 1, 2]
    assert naive_candidates(x_t, x_s, 0.1, 0.4) == {0, 1, 2}
    # a larger quantile drops the student's dense rows too (threshold = 3 at position 8)
    assert not density_candidates(x_t, x_s, 0.1, 0.8).any()


@pytest.mark.parametrize("seed", range(3))
def test_density_filter_matches_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(3, 6, generator=g, dtype=torch.float64)
    x_t = base[torch.randint(0, 3, (20,), generator=g)] + 0.05 * torch.randn(20, 6, generator=g, dtype=torch.float64)
    x_s = torch.randn(20, 4, generator=g, dtype=torch.float64) * 0.1 + 1
    keep = density_candidates(F.normalize(x_t, dim=1), F.normalize(x_s, dim=1), 0.1, 0.4)
    assert set(torch.nonzero(keep).flatten().tolist()) == naive_candidates(x_t, x_s, 0.1, 0.4)
    rho = local_density(F.normalize(x_t, dim=1), 0.1)
    assert rho.min() >= 1.0 - 1e-9  # every instance counts itself


def test_edge_cases_never_fail_or_produce_nan():
    for n in (0, 1, 2):
        idx = generate_prototypes(torch.randn(n, 4), torch.randn(n, 3))
        assert idx.dtype == torch.long and idx.numel() <= n
    same = generate_prototypes(torch.ones(6, 4), torch.ones(6, 3))  # all densities equal
    assert same.numel() == 0  # nobody is strictly above the quantile
    g = torch.Generator().manual_seed(0)
    x_t, x_s = torch.randn(30, 8, generator=g), torch.randn(30, 5, generator=g)
    idx = generate_prototypes(x_t, x_s, num_prototypes=50, sigma=2.0)
    cands = density_candidates(F.normalize(x_t, dim=1), F.normalize(x_s, dim=1), 2.0, 0.4)
    assert idx.numel() == int(cands.sum())  # K capped by the candidates
    assert len(set(idx.tolist())) == idx.numel()  # no index twice
    assert all(bool(cands[i]) for i in idx)


def test_deterministic_scale_invariant_and_widths_may_differ():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 16, generator=g)
    x_t = base[torch.randint(0, 4, (60,), generator=g)] + 0.1 * torch.randn(60, 16, generator=g)
    x_s = torch.randn(60, 9, generator=g) * 0.2 + x_t[:, :9]
    a = generate_prototypes(x_t, x_s, num_prototypes=5, sigma=0.5)
    assert a.numel() == 5
    assert torch.equal(a, generate_prototypes(x_t, x_s, num_prototypes=5, sigma=0.5))
    scale = torch.rand(60, 1, generator=g) * 10 + 0.1
    assert torch.equal(a, generate_prototypes(x_t * scale, x_s * scale, num_prototypes=5, sigma=0.5))
    assert torch.equal(a, generate_prototypes(x_t.double(), x_s.double(), num_prototypes=5, sigma=0.5))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="feats_teacher must be 2-D"):
        generate_prototypes(torch.randn(5), torch.randn(5, 2))
    with pytest.raises(ValueError, match="same instances: 5 vs 4 rows"):
        generate_prototypes(torch.randn(5, 3), torch.randn(4, 2))
    bad = torch.randn(5, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="feats_student contains NaN"):
        generate_prototypes(torch.randn(5, 3), bad)


# ----------------------------------------------------------------------------- Table 6 baselines
def test_random_selection_is_seeded_and_unique():
    from gkd_d2.prototypes.selection import select_prototypes

    x = torch.randn(50, 8)
    args = dict(num_prototypes=10, alpha=10.0, sigma=0.1, quantile=0.4)
    a = select_prototypes("random", x, x, torch.ones(50), seed=3, **args)
    b = select_prototypes("random", x, x, torch.ones(50), seed=3, **args)
    c = select_prototypes("random", x, x, torch.ones(50), seed=4, **args)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a) == 10 and len(set(a.tolist())) == 10 and int(a.max()) < 50


def test_ambiguous_selection_takes_the_smallest_instances():
    from gkd_d2.prototypes.selection import select_prototypes

    areas = torch.tensor([900, 25, 400, 16, 10000, 36])
    x = torch.randn(6, 4)
    chosen = select_prototypes("ambiguous", x, x, areas, 3, 10.0, 0.1, 0.4)
    assert chosen.tolist() == [3, 1, 5]


def test_kmeans_selection_takes_one_instance_near_each_cluster_centre():
    from gkd_d2.prototypes.selection import select_prototypes

    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 6) * 10  # three well separated directions
    x = torch.cat([c + 0.3 * torch.randn(20, 6, generator=g) for c in centres])
    chosen = select_prototypes("kmeans", x, x, torch.ones(60), 3, 10.0, 0.1, 0.4)
    assert sorted((chosen // 20).tolist()) == [0, 1, 2]  # one per cluster
    xn = torch.nn.functional.normalize(x, dim=1)
    for i in chosen.tolist():  # each is the instance nearest its cluster's mean
        members = xn[(i // 20) * 20 : (i // 20) * 20 + 20]
        j = torch.cdist(members.mean(0, keepdim=True), members).argmin()
        assert (i // 20) * 20 + int(j) == i


def test_unknown_selection_names_the_option(rcnn_teacher):
    from detectron2.modeling import build_model
    from helpers import distill_cfg

    cfg = distill_cfg(rcnn_teacher)
    cfg.DISTILL.PGM.SELECTION = "dbscan"
    with pytest.raises(ValueError, match=r"DISTILL.PGM.SELECTION='dbscan': choose one of"):
        build_model(cfg)
