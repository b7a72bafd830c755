"""How the prototypes of one (level, class) are chosen: PGM, or a baseline of the paper's Table 6.

``DISTILL.PGM.SELECTION`` picks the rule (every rule returns row indices of instances, so the
prototypes are always real instances with features in both spaces):

- ``"pgm"`` (default): the Prototype Generation Module, :func:`gkd_d2.generate_prototypes`;
- ``"kmeans"``: k-means (K clusters, k-means++ seeding, Lloyd iterations) on the concatenated
  unit-normalised teacher and student features; the instance nearest each centre;
- ``"random"``: K instances drawn uniformly without replacement;
- ``"ambiguous"``: the K smallest instances (box area), the "ambiguous instances" row of Table 6.

Shapes: ``feats_t`` (N, D_T), ``feats_s`` (N, D_S), ``areas`` (N,); result LongTensor (k,),
k = min(K, N) (PGM may return fewer).
"""
import torch
import torch.nn.functional as F

from .pgm import generate_prototypes

SELECTIONS = ("pgm", "kmeans", "random", "ambiguous")


def check_selection(method: str) -> str:
    """``DISTILL.PGM.SELECTION`` must name one of :data:`SELECTIONS`."""
    if method not in SELECTIONS:
        raise ValueError(f"DISTILL.PGM.SELECTION='{method}': choose one of {list(SELECTIONS)}.")
    return method


def kmeans_instances(x: torch.Tensor, k: int, generator: torch.Generator, iters: int = 20) -> torch.Tensor:
    """Rows of ``x`` (N, D) nearest the centres of a k-means clustering into ``k`` clusters."""
    n = x.shape[0]
    k = min(k, n)
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    # k-means++ seeding
    centres = x[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).min(dim=1).values.pow(2)
        if float(d2.sum()) <= 0:
            break
        centres = torch.cat([centres, x[torch.multinomial(d2 / d2.sum(), 1, generator=generator)]])
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(dim=1)  # (N,)
        counts = torch.bincount(assign, minlength=len(centres)).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        if torch.allclose(new, centres):
            break
        centres = new
    # the nearest instance of each centre, each instance used once
    dist = torch.cdist(centres, x)  # (k', N)
    chosen = []
    for row in dist:  # k' <= K rows: a loop over prototypes, not instances
        if chosen:
            row = row.clone()
            row[torch.tensor(chosen)] = float("inf")
        chosen.append(int(row.argmin()))
    return torch.tensor(chosen, dtype=torch.long)


def select_prototypes(
    method: str,
    feats_t: torch.Tensor,
    feats_s: torch.Tensor,
    areas: torch.Tensor,
    num_prototypes: int,
    alpha: float,
    sigma: float,
    quantile: float,
    seed: int = 0,
) -> torch.Tensor:
    """Row indices (LongTensor, on CPU) of the prototypes of one (level, class) by ``method``."""
    check_selection(method)
    n = feats_t.shape[0]
    generator = torch.Generator().manual_seed(seed)
    if method == "pgm":
        return generate_prototypes(feats_t, feats_s, num_prototypes, alpha, sigma, quantile).cpu()
    if method == "random":
        return torch.randperm(n, generator=generator)[:num_prototypes]
    if method == "ambiguous":
        return torch.argsort(areas.cpu(), stable=True)[:num_prototypes]
    x = torch.cat([F.normalize(feats_t.float(), dim=1), F.normalize(feats_s.float(), dim=1)], 1)  # kmeans
    return kmeans_instances(x.cpu(), num_prototypes, generator)
