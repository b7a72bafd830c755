"""Prototype Generation Module (PGM): common basis vectors of the teacher and student spaces.

Input: ``X_T`` (N, D_T) and ``X_S`` (N, D_S), row n the same instance in both spaces, for one
(FPN level, class). Output: the indices of the K instances chosen as prototypes.

1. rows are unit-normalised;
2. density filter (:func:`density_candidates`): ``rho_i = sum_j exp(-((1 - cos(x_i, x_j)) / sigma)^2)``
   per space; candidates are strictly above the ``floor(q N)``-th smallest density in **both**;
3. greedy matching pursuit (:func:`matching_pursuit`), K rounds, residuals r_T, r_S starting
   at the normalised features. For candidate p (a = x̂_T,p, b = x̂_S,p), u_n = a·r_T,n,
   v_n = b·r_S,n, the coefficients minimising (w_T-u)^2 + (w_S-v)^2 + alpha (w_T-w_S)^2
   (:func:`pursuit_coefficients`, Eq. 5) and the objective (Eq. 4)
   ``E_p = sum_n ||w_T,n a - r_T,n||^2 + ||w_S,n b - r_S,n||^2 + alpha (w_T,n - w_S,n)^2``.
   With ||a|| = ||b|| = 1, ``||w a - r||^2 = w^2 - 2 w u + ||r||^2``: every E_p follows from
   the (C, N) matrices U = A R_T^T and V = B R_S^T — no C x D x N tensor is built.
   p* = argmin E_p over candidates not chosen yet (ties: lowest index); r -= w a.
"""
import torch
import torch.nn.functional as F


def _validate(feats_teacher, feats_student):
    for name, x in (("feats_teacher", feats_teacher), ("feats_student", feats_student)):
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or Inf")
    if feats_teacher.shape[0] != feats_student.shape[0]:
        raise ValueError(
            f"feats_teacher and feats_student must describe the same instances: "
            f"{feats_teacher.shape[0]} vs {feats_student.shape[0]} rows"
        )


def _working_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def local_density(x_hat: torch.Tensor, sigma: float) -> torch.Tensor:
    """rho (N,): sum_j exp(-(d_ij / sigma)^2) with d_ij = 1 - cos(x_i, x_j); x_hat (N, D) unit rows."""
    d = 1.0 - x_hat @ x_hat.t()
    return torch.exp(-((d / sigma) ** 2)).sum(dim=1)


def density_candidates(x_t_hat, x_s_hat, sigma: float = 0.1, quantile: float = 0.4) -> torch.Tensor:
    """Bool (N,): density strictly above the floor(quantile*N)-th sorted value in both spaces."""
    n = x_t_hat.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=x_t_hat.device)
    k = min(int(quantile * n), n - 1)
    keep = torch.ones(n, dtype=torch.bool, device=x_t_hat.device)
    for x in (x_t_hat, x_s_hat):
        rho = local_density(x, sigma)
        keep &= rho > torch.sort(rho).values[k]
    return keep


def pursuit_coefficients(u, v, alpha: float):
    """Closed-form minimiser of (w_T-u)^2 + (w_S-v)^2 + alpha (w_T-w_S)^2 (elementwise)."""
    w_t = (alpha * (u + v) + u) / (1 + 2 * alpha)
    w_s = (alpha * (u + v) + v) / (1 + 2 * alpha)
    return w_t, w_s


def matching_pursuit(x_t_hat, x_s_hat, candidates, num_prototypes: int, alpha: float):
    """Greedy selection among ``candidates`` (LongTensor of row indices); returns the chosen
    row indices (LongTensor, selection order), at most ``num_prototypes`` of them."""
    r_t, r_s = x_t_hat.clone(), x_s_hat.clone()
    a, b = x_t_hat[candidates], x_s_hat[candidates]  # (C, D_T), (C, D_S)
    available = torch.ones(len(candidates), dtype=torch.bool, device=x_t_hat.device)
    chosen = []
    for _ in range(min(num_prototypes, len(candidates))):
        u, v = a @ r_t.t(), b @ r_s.t()  # (C, N)
        w_t, w_s = pursuit_coefficients(u, v, alpha)
        # E_p = sum_n w_t^2 - 2 w_t u + w_s^2 - 2 w_s v + alpha (w_t - w_s)^2 + const(n)
        energy = (w_t * (w_t - 2 * u) + w_s * (w_s - 2 * v) + alpha * (w_t - w_s) ** 2).sum(1)
        energy = energy.masked_fill(~available, float("inf"))
        p = int(torch.argmin(energy))  # first minimum: lowest index on ties
        available[p] = False
        chosen.append(p)
        r_t -= w_t[p][:, None] * a[p][None]
        r_s -= w_s[p][:, None] * b[p][None]
    return candidates[torch.tensor(chosen, dtype=torch.long, device=candidates.device)]


def generate_prototypes(
    feats_teacher: torch.Tensor,
    feats_student: torch.Tensor,
    num_prototypes: int = 10,
    alpha: float = 10.0,
    sigma: float = 0.1,
    quantile: float = 0.4,
) -> torch.Tensor:
    """PGM for one (level, class): indices (LongTensor, selection order) of the prototypes.

    feats_teacher (N, D_T), feats_student (N, D_S): the same N instances in both spaces.
    Returns an empty LongTensor when no instance passes the density filter.
    """
    _validate(feats_teacher, feats_student)
    dtype = _working_dtype(feats_teacher)
    x_t = F.normalize(feats_teacher.to(dtype), dim=1)
    x_s = F.normalize(feats_student.to(dtype), dim=1)
    candidates = torch.nonzero(density_candidates(x_t, x_s, sigma, quantile)).flatten()
    return matching_pursuit(x_t, x_s, candidates, num_prototypes, alpha)
