"""Gaussian components with missing coordinates: the classic EM for incomplete normal data.

Rows of ``X`` with NaN entries are scored by the marginal of their observed coordinates,
``log N(x_o | μ_o, Σ_oo)``, and enter the M-step through the conditional moments of the missing
ones given the observed ones and the component,

    ``E[x_m | x_o, k] = μ_m + Σ_mo Σ_oo⁻¹ (x_o − μ_o)``,   ``Cov[x_m | x_o, k] = Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om``,

so ``Σ_n r_nk E[x_n x_nᵀ | x_n,o, k]`` replaces ``Σ_n r_nk x_n x_nᵀ``. Full and tied covariances
take one small solve per pattern of missing coordinates; diagonal and spherical ones, whose
coordinates are independent given the component, take matrix products over all incomplete rows
at once.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch

LOG_2PI = math.log(2 * math.pi)


class MissingPatterns:
    """The incomplete rows of ``X`` ``(N, D)`` (``rows``), which coordinates each observes
    (``observed``, ``(n, D)`` bool), and for full or tied covariances the rows grouped by their
    pattern: ``groups`` of ``(positions in rows, observed coordinates, missing coordinates)``."""

    def __init__(self, X: torch.Tensor, grouped: bool) -> None:
        nan = torch.isnan(X)
        incomplete = nan.any(-1)
        self.rows = torch.nonzero(incomplete).squeeze(1)
        gone = nan[self.rows]
        self.observed = ~gone
        self.values = torch.where(gone, torch.zeros((), dtype=X.dtype, device=X.device), X[self.rows])
        self.groups: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        if grouped and self.rows.numel():
            patterns, which = torch.unique(gone, dim=0, return_inverse=True)
            for p, pattern in enumerate(patterns):
                self.groups.append((torch.nonzero(which == p).squeeze(1), torch.nonzero(~pattern).squeeze(1),
                                    torch.nonzero(pattern).squeeze(1)))

    def __len__(self) -> int:
        return int(self.rows.numel())


def _variances(cov: torch.Tensor, covariance_type: str, k: int, d: int) -> torch.Tensor:
    """Per-coordinate variances ``(K, D)`` of diagonal or spherical covariances."""
    return cov.unsqueeze(-1).expand(k, d) if covariance_type == "spherical" else cov


def _full(cov: torch.Tensor, covariance_type: str, k: int) -> torch.Tensor:
    """``(K, D, D)`` covariance matrices (tied: one, shared by all components)."""
    return cov.expand((k,) + cov.shape[-2:]) if covariance_type == "tied" else cov


def marginal_log_table(patterns: MissingPatterns, means: torch.Tensor, cov: torch.Tensor,
                       covariance_type: str) -> torch.Tensor:
    """``log N(x_o | μ_k,o, Σ_k,oo)`` for every incomplete row, ``(K, n)`` (0 for a row with
    nothing observed)."""
    k, d = means.shape
    x, seen = patterns.values, patterns.observed.to(means.dtype)
    if covariance_type in ("diag", "spherical"):
        prec = 1.0 / _variances(cov, covariance_type, k, d)                        # (K, D)
        quad = -0.5 * (x.square() @ prec.T) + x @ (prec * means).T                 # (n, K)
        const = -0.5 * (means.square() * prec + LOG_2PI - prec.log())             # (K, D)
        return (quad + seen @ const.T).T
    full = _full(cov, covariance_type, k)
    out = x.new_zeros((k, len(patterns)))
    parts, where = [], []
    for pos, o, _ in patterns.groups:
        if o.numel() == 0:
            continue
        chol = torch.linalg.cholesky(full[:, o][:, :, o])                          # (K, o, o)
        diff = (x[pos][:, o].unsqueeze(0) - means[:, o].unsqueeze(1)).transpose(-1, -2)
        sol = torch.linalg.solve_triangular(chol, diff, upper=False)              # (K, o, n_p)
        log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1, keepdim=True)
        parts.append(-0.5 * sol.square().sum(-2) - log_det - 0.5 * o.numel() * LOG_2PI)
        where.append(pos)
    if parts:
        out = out.index_copy(1, torch.cat(where), torch.cat(parts, 1))
    return out


def expected_moments(patterns: MissingPatterns, resp_t: torch.Tensor, means: torch.Tensor, cov: torch.Tensor,
                     covariance_type: str, centre: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Over the incomplete rows, with weights ``resp_t`` ``(K, n)``: ``Σ r``, ``Σ r E[x − c_k]`` and
    ``Σ r E[(x − c_k)(x − c_k)ᵀ]`` (``(K, D, D)``; for diag and spherical its diagonal ``(K, D)``),
    the expectations given the observed coordinates and the component at ``means``, ``cov``;
    ``centre`` ``c`` ``(K, D)``."""
    k, d = means.shape
    x, seen = patterns.values, patterns.observed.to(means.dtype)
    s0 = resp_t.sum(-1)
    if covariance_type in ("diag", "spherical"):
        var = _variances(cov, covariance_type, k, d)
        gone = 1.0 - seen
        r_seen, r_gone = resp_t @ seen, resp_t @ gone                              # (K, D)
        r_x, r_x2 = resp_t @ x, resp_t @ x.square()
        dm = means - centre
        s1 = r_x - centre * r_seen + dm * r_gone
        s2 = r_x2 - 2 * centre * r_x + centre.square() * r_seen + (dm.square() + var) * r_gone
        return s0, s1, s2
    full = _full(cov, covariance_type, k)
    s1 = means.new_zeros((k, d))
    s2 = means.new_zeros((k, d, d))
    for pos, o, m in patterns.groups:
        r = resp_t[:, pos]                                                        # (K, n_p)
        xo = x[pos][:, o]                                                          # (n_p, o)
        filled = x.new_zeros((k, pos.numel(), d))
        filled[:, :, o] = xo.unsqueeze(0)
        if m.numel():
            if o.numel():
                chol = torch.linalg.cholesky(full[:, o][:, :, o])
                gain = torch.cholesky_solve(full[:, o][:, :, m], chol)              # Σ_oo⁻¹ Σ_om (K, o, m)
                filled[:, :, m] = means[:, m].unsqueeze(1) + (xo.unsqueeze(0) - means[:, o].unsqueeze(1)) @ gain
                cond = full[:, m][:, :, m] - full[:, m][:, :, o] @ gain             # (K, m, m)
            else:
                filled[:, :, m] = means[:, m].unsqueeze(1)
                cond = full[:, m][:, :, m]
            block = s2[:, m][:, :, m] + r.sum(-1)[:, None, None] * cond
            s2[:, m.unsqueeze(-1), m] = block
        dev = filled - centre.unsqueeze(1)
        s1 = s1 + (r.unsqueeze(-1) * dev).sum(1)
        s2 = s2 + (r.unsqueeze(-1) * dev).transpose(-1, -2) @ dev
    return s0, s1, s2


def missing_moments(patterns: MissingPatterns, resp_t: torch.Tensor, means: torch.Tensor, cov: torch.Tensor,
                    covariance_type: str) -> torch.Tensor:
    """The incomplete rows' share of the M-step statistics, in the layout of the complete rows'
    ``R @ f(X)ᵀ`` (quadratic terms, ``Σ r x``, ``Σ r``; ``resp_t`` ``(K, n)``, weights included):
    ``Σ r E[x xᵀ]``, ``Σ r E[x]``, ``Σ r`` given each row's observed coordinates."""
    k, d = means.shape
    s0, s1, s2 = expected_moments(patterns, resp_t, means, cov, covariance_type, means.new_zeros((k, d)))
    if covariance_type in ("full", "tied"):
        iu = torch.triu_indices(d, d, device=means.device)
        quad = s2[:, iu[0], iu[1]]
    else:
        quad = s2
    return torch.cat([quad, s1, s0.unsqueeze(-1)], -1)
