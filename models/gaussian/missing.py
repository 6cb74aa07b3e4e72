"""Gaussian components with missing coordinates: the classic EM for incomplete normal data.

Rows of ``X`` with NaN entries are scored by the marginal of their observed coordinates,
``log N(x_o | μ_o, Σ_oo)``, and enter the M-step through the conditional moments of the missing
ones given the observed ones and the component,

    ``E[x_m | x_o, k] = μ_m + Σ_mo Σ_oo⁻¹ (x_o − μ_o)``,   ``Cov[x_m | x_o, k] = Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om``,

so ``Σ_n r_nk E[x_n x_nᵀ | x_n,o, k]`` replaces ``Σ_n r_nk x_n x_nᵀ``. For full and tied
covariances the rows are sorted by their pattern of missing coordinates; ``Σ_oo⁻¹`` of every
pattern comes from one batched Cholesky of ``Σ_oo ⊕ I_mm`` per block of patterns, and each
pattern's rows take one matrix product. Diagonal and spherical covariances, whose coordinates are
independent given the component, take matrix products over all incomplete rows at once.
"""
from __future__ import annotations

import math
from typing import Iterator, List, Tuple

import torch

from pyroem.missing import missing_patterns

LOG_2PI = math.log(2 * math.pi)


#: elements of the largest per-pattern or per-row matrix stack (K x patterns or rows x D x D)
_BLOCK_ELEMENTS = 1 << 22


class MissingPatterns:
    """The incomplete rows of ``X`` ``(N, D)``: their positions ``rows``, which coordinates each
    observes (``observed``, ``(n, D)`` bool) and their values with 0 for the missing ones
    (``values``). For full or tied covariances (``grouped``) the rows are sorted by their
    pattern of missing coordinates: ``patterns`` ``(P, D)`` (True where observed), each row's
    pattern ``which`` and the number of rows of each (``counts``); :meth:`blocks` groups them."""

    def __init__(self, X: torch.Tensor, grouped: bool) -> None:
        nan = torch.isnan(X)
        incomplete = nan.any(-1)
        rows = torch.nonzero(incomplete).squeeze(1)
        gone = nan[rows]
        self.counts: List[int] = []
        if grouped and rows.numel():
            patterns, which = missing_patterns(gone)
            order = torch.argsort(which, stable=True)
            rows, gone, which = rows[order], gone[order], which[order]
            self.patterns, self.which = ~patterns, which
            self.counts = torch.bincount(which, minlength=len(patterns)).tolist()
        self.rows = rows
        self.observed = ~gone
        self.values = torch.where(gone, torch.zeros((), dtype=X.dtype, device=X.device), X[rows])

    def __len__(self) -> int:
        return int(self.rows.numel())

    def blocks(self, k: int, d: int) -> Iterator[Tuple[slice, slice]]:
        """``(patterns, their rows)`` in groups whose ``(K, patterns, D, D)`` matrices stay within
        a memory budget."""
        per_block = max(1, _BLOCK_ELEMENTS // (k * d * d))
        p0 = r0 = 0
        while p0 < len(self.counts):
            p1 = min(len(self.counts), p0 + per_block)
            r1 = r0 + sum(self.counts[p0:p1])
            yield slice(p0, p1), slice(r0, r1)
            p0, r0 = p1, r1


def _variances(cov: torch.Tensor, covariance_type: str, k: int, d: int) -> torch.Tensor:
    """Per-coordinate variances ``(K, D)`` of diagonal or spherical covariances."""
    return cov.unsqueeze(-1).expand(k, d) if covariance_type == "spherical" else cov


def _pattern_block(full: torch.Tensor, seen: torch.Tensor):
    """For covariances ``full`` ``(K | 1, D, D)`` and patterns ``seen`` ``(P, D)`` (1.0 where
    observed): ``W = Σ_oo⁻¹`` embedded in ``D x D`` (zero on missing rows and columns) and
    ``log |Σ_oo|``, both per component and pattern, from one batched Cholesky of
    ``Σ_oo ⊕ I_mm`` (``(K, P, D, D)`` and ``(K, P)``)."""
    both = seen.unsqueeze(-1) * seen.unsqueeze(-2)                              # (P, D, D)
    mat = full.unsqueeze(1) * both + torch.diag_embed(1.0 - seen)               # Σ_oo ⊕ I_mm
    chol, info = torch.linalg.cholesky_ex(mat)
    if bool((info != 0).any()):
        raise ValueError("a covariance is not positive definite on the observed coordinates of some rows "
                         "(collapsed data?); increase reg_covar or use fewer components")
    log_det = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return torch.cholesky_inverse(chol) * both, log_det


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
    full = cov if covariance_type == "full" else cov.unsqueeze(0)              # (K | 1, D, D)
    parts = []
    for pats, rows in patterns.blocks(k, d):
        seen_p = patterns.patterns[pats].to(means.dtype)
        weight, log_det = _pattern_block(full, seen_p)
        const = log_det + seen_p.sum(-1) * LOG_2PI                                   # (K | 1, P)
        for p, sl in enumerate(_pattern_rows(patterns, pats, rows)):
            dev = x[sl].unsqueeze(0) - means.unsqueeze(1)                            # (K, n_p, D)
            maha = ((dev @ weight[:, p]) * dev).sum(-1)
            parts.append(-0.5 * (maha + const[:, p:p + 1]))
    return torch.cat(parts, -1) if parts else x.new_zeros((k, 0))


def _pattern_rows(patterns: MissingPatterns, pats: slice, rows: slice) -> Iterator[slice]:
    """The rows of each pattern of a block: contiguous, since the rows are sorted by pattern."""
    at = rows.start
    for count in patterns.counts[pats]:
        yield slice(at, at + count)
        at += count


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
    full = cov if covariance_type == "full" else cov.unsqueeze(0)              # (K | 1, D, D)
    s1 = means.new_zeros((k, d))
    s2 = means.new_zeros((k, d, d))
    for pats, rows in patterns.blocks(k, d):
        seen_p = patterns.patterns[pats].to(means.dtype)
        weight, _ = _pattern_block(full, seen_p)
        gone_p = 1.0 - seen_p
        # Σ_mo Σ_oo⁻¹ embedded (zero rows on the observed coordinates), transposed for row vectors
        gain_t = (gone_p.unsqueeze(-1) * (full.unsqueeze(1) @ weight)).transpose(-1, -2)
        # Cov[x_m | x_o] = Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om on the missing block, weighted by Σ r per pattern
        cond = (full.unsqueeze(1) - gain_t.transpose(-1, -2) @ full.unsqueeze(1)) * (
            gone_p.unsqueeze(-1) * gone_p.unsqueeze(-2))
        r_pat = torch.stack([resp_t[:, sl].sum(-1) for sl in _pattern_rows(patterns, pats, rows)], -1)
        s2 = s2 + torch.einsum("kp,kpde->kde", r_pat, cond.expand(k, *cond.shape[1:]))
        # E[x | x_o] = x_o on the observed coordinates, μ_m + Σ_mo Σ_oo⁻¹ (x_o − μ_o) on the others:
        # x + G x + (1 − o) μ − G μ, with G = Σ_mo Σ_oo⁻¹ embedded (its Gᵀ in gain_t)
        shift = gone_p * means.unsqueeze(1) - (means[:, None, None, :] @ gain_t).squeeze(-2)  # (K, P, D)
        filled = x.new_empty((k, rows.stop - rows.start, d))
        for p, sl in enumerate(_pattern_rows(patterns, pats, rows)):
            at = slice(sl.start - rows.start, sl.stop - rows.start)
            torch.matmul(x[sl], gain_t[:, p].expand(k, d, d), out=filled[:, at]).add_(x[sl]).add_(shift[:, p:p + 1])
        centred = filled - centre.unsqueeze(1)
        weighted = resp_t[:, rows].unsqueeze(-1) * centred
        s1 = s1 + weighted.sum(1)
        s2 = s2 + weighted.transpose(-1, -2) @ centred
    return s0, s1, s2
