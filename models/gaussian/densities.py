"""Gaussian-mixture maths: component log-densities, the weighted M-step, precision factors.

Every covariance is held through its *inverse scale* ``L``: for ``full`` and ``tied`` the
lower-triangular ``L = C⁻¹`` with ``Σ = C Cᵀ`` (so the precision is ``Lᵀ L`` and
scikit-learn's ``precisions_cholesky_`` is ``Lᵀ``); for ``diag`` and ``spherical`` ``L = 1/√σ²``.
Both halves of an EM step are matrix products over per-row features ``f(x) = [x_i x_j (i <= j),
x, 1]`` (``x_i²`` for diag and spherical): the log-density table is ``C(θ) @ f(X)ᵀ`` and the
M-step statistics are ``R @ f(X)``; no ``(K, N, D)`` temporaries. Centre the data first (the
estimator does): the quadratic form is expanded about the origin.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
from pyro.distributions import TorchDistribution, constraints

import pyroem

from .missing import MissingPatterns, expected_moments, marginal_log_table

ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or scale the input data."
)

LOG_2PI = math.log(2 * math.pi)

INV_SCALE_CONSTRAINTS = {
    "full": constraints.lower_cholesky,
    "tied": constraints.lower_cholesky,
    "diag": constraints.positive,
    "spherical": constraints.positive,
}

# Features not cached are built in pieces of at most this many entries: small enough to be
# reused by the allocator (and to stay in cache) instead of fresh pages on every step.
_CHUNK_ELEMENTS = 1 << 21
_CACHE_ELEMENTS = 1 << 25  # largest feature matrix kept for a whole fit


def _row_chunks(n: int, width: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, width))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def feature_kind(covariance_type: str) -> str:
    """``pairs`` (every ``x_i x_j``, ``i <= j``) for full and tied, ``squares`` (``x_i²``) otherwise."""
    return "pairs" if covariance_type in ("full", "tied") else "squares"


@functools.lru_cache(maxsize=16)
def _pairs(d: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every ``(i, j)``, ``i <= j``, in row-major order."""
    iu = torch.triu_indices(d, d, device=device)
    return iu[0], iu[1]


def quadratic_width(d: int, kind: str) -> int:
    return d * (d + 1) // 2 if kind == "pairs" else d


def gaussian_features(X: torch.Tensor, kind: str) -> torch.Tensor:
    """``f(x) = [quadratic terms, x, 1]`` for every row of ``X`` ``(..., N, D)``, one column per row:
    ``(..., Q + D + 1, N)`` (leading dims: a batch of datasets).

    Every Gaussian log-density is linear in ``f(x)``: ``log N(x | μ, Σ) = c(μ, Σ) · f(x)``, so a
    whole ``(K, N)`` table is one matrix product and the M-step statistics are another.
    """
    *batch, n, d = X.shape
    xt = X.transpose(-1, -2).contiguous()
    out = X.new_empty((*batch, quadratic_width(d, kind) + d + 1, n))
    q = out.shape[-2] - d - 1
    if kind == "pairs":  # row-major over i <= j, as _pairs orders them
        start = 0
        for i in range(d):
            torch.mul(xt[..., i:i + 1, :], xt[..., i:, :], out=out[..., start:start + d - i, :])
            start += d - i
    else:
        torch.square(xt, out=out[..., :q, :])
    out[..., q:q + d, :] = xt
    out[..., -1, :] = 1.0
    return out


class GaussianFeatures:
    """The rows of ``X`` and their features :func:`gaussian_features`, built once per fit.

    Held when ``N x width`` stays under a memory budget (or ``cache=True``); otherwise the
    features are rebuilt in row chunks whenever they are needed. Used only for the very tensor
    ``X`` it was built from, unmodified since (:meth:`matches`).

    With ``missing=True``, NaN entries of ``X`` are missing coordinates: the incomplete rows are
    held in ``missing`` (:class:`MissingPatterns`) and their features are zero, so that the
    matrix products cover the complete rows only; ``filled`` is ``X`` with its NaNs set to 0.
    """

    def __init__(self, X: torch.Tensor, covariance_type: str, cache: Optional[bool] = None,
                 missing: bool = False) -> None:
        self.X = X
        self.version = X._version
        self.covariance_type = covariance_type
        self.kind = feature_kind(covariance_type)
        d = X.shape[-1]
        self.width = quadratic_width(d, self.kind) + d + 1
        self.missing: Optional[MissingPatterns] = None
        self.filled, self._incomplete = X, None
        if missing:
            incomplete = torch.isnan(X).any(-1)
            self.has_nan = bool(incomplete.any())
            if self.has_nan:
                self.missing = MissingPatterns(X, grouped=covariance_type in ("full", "tied"))
                self.filled = torch.nan_to_num(X, nan=0.0)
                self._incomplete = incomplete
        if cache is None:
            cache = X.numel() // max(d, 1) * self.width <= _CACHE_ELEMENTS
        self.matrix = self._features(slice(None)) if cache else None

    @functools.cached_property
    def has_nan(self) -> bool:
        """Whether ``X`` holds NaN (known from the start with ``missing=True``; else looked up once,
        when first asked)."""
        return bool(torch.isnan(self.X).any())

    def _features(self, rows: slice) -> torch.Tensor:
        f = gaussian_features(self.filled[..., rows, :], self.kind)
        if self._incomplete is not None:
            f[..., self._incomplete[rows]] = 0.0  # incomplete rows: the missing-data path's
        return f

    def __getitem__(self, rows: slice) -> "GaussianFeatures":
        sub = GaussianFeatures.__new__(GaussianFeatures)
        sub.X, sub.kind, sub.width = self.X[..., rows, :], self.kind, self.width
        sub.covariance_type = self.covariance_type
        sub.version = sub.X._version
        sub.filled = self.filled[..., rows, :]
        sub._incomplete = None if self._incomplete is None else self._incomplete[rows]
        sub.missing = (None if self.missing is None
                       else MissingPatterns(sub.X, grouped=self.covariance_type in ("full", "tied")))
        sub.matrix = None if self.matrix is None else self.matrix[..., rows]
        return sub

    def chunks(self) -> Iterator[Tuple[slice, torch.Tensor]]:
        """``(rows, features of those rows)`` covering every row."""
        n = self.X.shape[-2]
        if self.matrix is not None:
            yield slice(0, n), self.matrix
            return
        for sl in _row_chunks(n, self.width):
            yield sl, self._features(sl)

    def matches(self, X: torch.Tensor) -> bool:
        if X is self.filled and self.filled is not self.X:
            return self.X._version == self.version
        same = X is self.X or (X.shape == self.X.shape and X.dtype == self.X.dtype and X.device == self.X.device
                               and X.data_ptr() == self.X.data_ptr() and X.stride() == self.X.stride())
        return same and X._version == self.version


def log_det_inv_scale(inv_scale: torch.Tensor, covariance_type: str, d: int) -> torch.Tensor:
    """``log |L|`` per component (``= -½ log|Σ|``), shape ``(K,)`` (a scalar for tied)."""
    if covariance_type in ("full", "tied"):
        return inv_scale.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    if covariance_type == "diag":
        return inv_scale.log().sum(-1)
    return d * inv_scale.log()


def log_density_coefficients(means: torch.Tensor, inv_scale: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """``C`` with ``log N(x | μ_k, Σ_k) = C_k · f(x)``, shape ``(..., K, Q + D + 1)`` (leading dims
    of ``means`` ``(..., K, D)``: a batch of mixtures).

    From ``-½ (xᵀPx - 2 μᵀPx + μᵀPμ) + log|L| - ½ D log 2π`` with ``P = LᵀL``: the quadratic
    coefficients ``-½ P_ii`` and ``-P_ij`` (``i < j``), the linear ``Pμ``, then the constant.
    """
    d = means.shape[-1]
    rows = means.shape[:-1]                                    # (..., K)
    log_det = log_det_inv_scale(inv_scale, covariance_type, d)
    if covariance_type in ("full", "tied"):
        if covariance_type == "full":
            lmu = (inv_scale @ means.unsqueeze(-1)).squeeze(-1)
        else:
            lmu = means @ inv_scale.transpose(-1, -2)
            log_det = log_det.unsqueeze(-1)                    # one factor for every component
        prec = inv_scale.transpose(-1, -2) @ inv_scale
        lin = (inv_scale.transpose(-1, -2) @ lmu.unsqueeze(-1)).squeeze(-1) if covariance_type == "full" \
            else lmu @ inv_scale
        i, j = _pairs(d, means.device)
        quad = -prec[..., i, j] * torch.where(i == j, 0.5, 1.0).to(prec.dtype)
        if covariance_type == "tied":
            quad = quad.unsqueeze(-2)
        quad = quad.expand(rows + quad.shape[-1:])
    else:
        prec = inv_scale.square()
        if covariance_type == "spherical":
            prec = prec.unsqueeze(-1).expand(means.shape)
        lin = prec * means
        lmu = inv_scale.unsqueeze(-1) * means if covariance_type == "spherical" else inv_scale * means
        quad = -0.5 * prec
    const = -0.5 * (lmu.square().sum(-1) + d * LOG_2PI) + log_det
    return torch.cat([quad, lin, const.expand(rows).unsqueeze(-1)], -1)


def log_gaussian_table(X: torch.Tensor, means: torch.Tensor, inv_scale: torch.Tensor, covariance_type: str,
                       features: Optional[GaussianFeatures] = None) -> torch.Tensor:
    """``log N(x_n | μ_k, Σ_k)`` as a contiguous ``(..., K, N)`` table: ``C @ f(X)`` (leading dims: a
    batch of mixtures, each on its own dataset ``X`` ``(..., N, D)``)."""
    if features is None or not features.matches(X):
        features = GaussianFeatures(X, covariance_type, cache=False)
    coef = log_density_coefficients(means, inv_scale, covariance_type)
    if features.matrix is not None:
        out = coef @ features.matrix
    elif coef.requires_grad and torch.is_grad_enabled():
        out = torch.cat([coef @ f for _, f in features.chunks()], -1)
    else:
        out = X.new_empty(means.shape[:-1] + X.shape[-2:-1])
        for sl, f in features.chunks():
            torch.matmul(coef.detach(), f, out=out[..., sl])
    if features.missing is not None:  # incomplete rows: the marginal of their observed coordinates
        cov = covariances_from_inv_scale(inv_scale, covariance_type)
        out = out.index_copy(-1, features.missing.rows, marginal_log_table(features.missing, means, cov, covariance_type))
    return out


@dataclass
class GMMStatistics:
    """Weighted sufficient statistics ``Σ_n r_nk f(x_n)``, ``(..., K, Q + D + 1)``: quadratic terms,
    ``Σ r x``, ``Σ r``. Sums over data, so chunks add up (``GMMUpdates.statistics`` hands them to
    ``EM.sum_statistics`` by name).

    For the components flagged in ``refined`` (``(..., K)`` bool), also ``Σ r (x - c)(x - c)ᵀ`` and
    ``Σ r (x - c)`` about ``centres`` ``c`` (their current means), computed directly: their
    scatter about the origin would cancel badly (see :func:`components_to_refine`).
    """

    moments: torch.Tensor
    d: int
    kind: str
    centres: Optional[torch.Tensor] = None
    refined: Optional[torch.Tensor] = None
    ref_scatter: Optional[torch.Tensor] = None
    ref_sums: Optional[torch.Tensor] = None


# Largest |μ|² tr(P) for which the full covariance is taken from moments about the origin:
# rounding then costs at most about eps * ratio of the smallest variance.
_REFINE_RATIO = {torch.float32: 1e4, torch.float64: 1e6}


def components_to_refine(means: torch.Tensor, inv_scale: torch.Tensor, covariance_type: str) -> Optional[torch.Tensor]:
    """Full-covariance components whose variance is tiny next to their squared distance from the
    origin (``|μ_k|² tr(P_k)`` above 1e6 in float64, 1e4 in float32), such as a component collapsed
    onto a single point: their scatter is accumulated about their current mean instead. A bool
    mask ``(..., K)``; None for other covariance types."""
    if covariance_type != "full":
        return None
    ratio = means.square().sum(-1) * inv_scale.square().sum((-2, -1))
    return ratio > _REFINE_RATIO.get(ratio.dtype, 1e6)


def gaussian_statistics(resp_t: torch.Tensor, features: GaussianFeatures,
                        sample_weight: Optional[torch.Tensor] = None,
                        centres: Optional[torch.Tensor] = None,
                        refined: Optional[torch.Tensor] = None) -> GMMStatistics:
    """``R @ f(X)ᵀ`` with ``R = resp_t * w`` (``resp_t`` the ``(..., K, N)`` responsibilities, ``w``
    broadcasting against it); for the components ``refined`` flags (``(..., K)``), also the scatter
    about ``centres`` (one ``(N, D)`` pass each)."""
    r = resp_t if sample_weight is None else resp_t * sample_weight
    if features.matrix is not None:
        moments = r @ features.matrix.transpose(-1, -2)
    else:
        moments = r.new_zeros(r.shape[:-1] + (features.width,))
        for sl, f in features.chunks():
            if r.dim() == 2:
                moments.addmm_(r[:, sl], f.T)
            else:
                moments += r[..., sl] @ f.transpose(-1, -2)
    d = features.X.shape[-1]
    stats = GMMStatistics(moments, d, features.kind)
    if refined is not None and bool(refined.any()):
        stats.centres, stats.refined = centres, refined
        stats.ref_scatter = r.new_zeros(refined.shape + (d, d))
        stats.ref_sums = r.new_zeros(refined.shape + (d,))
        for idx in map(tuple, torch.nonzero(refined).tolist()):
            diff = features.X[idx[:-1]] - centres[idx]     # the rows of the component's own dataset
            weighted = diff * r[idx].unsqueeze(-1)
            stats.ref_scatter[idx] = weighted.T @ diff
            stats.ref_sums[idx] = weighted.sum(0)
    return stats


def scatter_about(scatter: torch.Tensor, sums: torch.Tensor, total: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``Σ r (x − c − δ)(x − c − δ)ᵀ`` from the scatter ``Σ r (x − c)(x − c)ᵀ``, ``sums`` ``Σ r (x − c)``
    and ``total`` ``Σ r``: ``scatter − s δᵀ − δ sᵀ + (Σ r) δ δᵀ``; for a scatter of the coordinates
    alone (its diagonal, shaped like ``delta``), ``scatter − 2 δ s + (Σ r) δ²``."""
    if scatter.dim() == delta.dim():
        return scatter - 2 * delta * sums + total.unsqueeze(-1) * delta.square()
    cross = sums.unsqueeze(-1) * delta.unsqueeze(-2)
    return scatter - cross - cross.transpose(-1, -2) + total[..., None, None] * (delta.unsqueeze(-1) * delta.unsqueeze(-2))


def missing_moments(patterns: MissingPatterns, resp_t: torch.Tensor, means: torch.Tensor, cov: torch.Tensor,
                    covariance_type: str) -> torch.Tensor:
    """The incomplete rows' share of the M-step statistics, in the layout of the complete rows'
    ``R @ f(X)ᵀ`` (quadratic terms, ``Σ r x``, ``Σ r``; ``resp_t`` ``(K, n)``, weights included):
    ``Σ r E[x xᵀ]``, ``Σ r E[x]``, ``Σ r`` given each row's observed coordinates."""
    k, d = means.shape
    s0, s1, s2 = expected_moments(patterns, resp_t, means, cov, covariance_type, means.new_zeros((k, d)))
    if covariance_type in ("full", "tied"):
        i, j = _pairs(d, means.device)
        quad = s2[:, i, j]
    else:
        quad = s2
    return torch.cat([quad, s1, s0.unsqueeze(-1)], -1)


def parameters_from_statistics(stats: GMMStatistics, reg_covar: float, covariance_type: str
                               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's weighted MLE from :class:`GMMStatistics`: ``(n_k, means, covariances)``.

    ``n_k = Σ r + 10 ε``, ``μ = Σ r x / n_k``, and the scatter about ``μ`` expanded exactly as
    ``(S - s μᵀ - μ sᵀ + (Σ r) μ μᵀ) / n_k`` with ``S = Σ r x xᵀ``, ``s = Σ r x``.
    """
    m, d = stats.moments, stats.d
    q = m.shape[-1] - d - 1
    rsum = m[..., -1]
    sums = m[..., q:q + d]
    nk = rsum + 10 * torch.finfo(m.dtype).eps
    means = sums / nk.unsqueeze(-1)
    if covariance_type in ("full", "tied"):
        i, j = _pairs(d, m.device)
        scatter = m.new_zeros(m.shape[:-1] + (d, d))
        scatter[..., i, j] = m[..., :q]
        scatter[..., j, i] = m[..., :q]
        centred = scatter_about(scatter, sums, rsum, means)
        if stats.ref_scatter is not None:  # the same expansion about c, with δ = μ - c small
            near = scatter_about(stats.ref_scatter, stats.ref_sums, rsum, means - stats.centres)
            centred = torch.where(stats.refined[..., None, None], near, centred)
        if covariance_type == "full":
            cov = centred / nk[..., None, None]
        else:
            cov = centred.sum(-3) / nk.sum(-1)[..., None, None]
        cov.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
    else:
        avg_x2 = m[..., :q] / nk.unsqueeze(-1)
        cov = avg_x2 - means.square() + reg_covar
        if covariance_type == "spherical":
            cov = cov.mean(-1)
    return nk, means, cov


def estimate_gaussian_parameters(X: torch.Tensor, resp: torch.Tensor, reg_covar: float,
                                 covariance_type: str, sample_weight: Optional[torch.Tensor] = None,
                                 features: Optional[GaussianFeatures] = None
                                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted MLE from responsibilities ``resp`` ``(..., N, K)`` (scikit-learn's formulas,
    ``r_nk = w_n resp_nk``; leading dims: a batch of datasets). Returns ``(n_k, means, covariances)``."""
    if features is None or not features.matches(X):
        features = GaussianFeatures(X, covariance_type)
    w = None if sample_weight is None else sample_weight.unsqueeze(-2)
    stats = gaussian_statistics(resp.transpose(-1, -2), features, w)
    return parameters_from_statistics(stats, reg_covar, covariance_type)


def default_inv_scale(X: torch.Tensor, k: int, covariance_type: str) -> torch.Tensor:
    """``inv_scale`` of ``k`` components with the data's own spread (``X`` ``(..., N, D)``, the
    leading dims those of a batch of datasets)."""
    inv_sd = X.var(-2, unbiased=False).clamp_min(1e-6).rsqrt()                # (..., D)
    batch, d = inv_sd.shape[:-1], inv_sd.shape[-1]
    if covariance_type == "full":
        return torch.diag_embed(inv_sd).unsqueeze(-3).expand(*batch, k, d, d).clone()
    if covariance_type == "tied":
        return torch.diag_embed(inv_sd)
    if covariance_type == "diag":
        return inv_sd.unsqueeze(-2).expand(*batch, k, d).clone()
    return inv_sd.square().mean(-1).sqrt().unsqueeze(-1).expand(*batch, k).clone()


def _fail(bad: torch.Tensor, batched: bool) -> ValueError:
    """scikit-learn's message; with ``batched``, the datasets (leading dim) that failed."""
    extra = (" The numerical accuracy can also be improved by passing float64 data instead of float32."
             if bad.dtype == torch.float32 else "")
    if batched:
        fits = torch.nonzero(bad.reshape(bad.shape[0], -1).any(-1)).flatten().tolist()
        extra = f" (datasets {fits[:10]}{', ...' if len(fits) > 10 else ''})" + extra
    return ValueError(ILL_DEFINED + extra)


def inv_scale_from_covariances(cov: torch.Tensor, covariance_type: str, batched: bool = False) -> torch.Tensor:
    """``L = C⁻¹`` (lower triangular) with ``C`` the Cholesky factor of ``Σ``; ``1/√σ²`` otherwise.
    ``batched``: the leading dim of ``cov`` runs over datasets, named in the error."""
    if covariance_type in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(cov)
        bad = (info != 0) | ~torch.isfinite(chol).all(-1).all(-1)
        if bool(bad.any()):
            raise _fail(bad, batched)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
        return torch.linalg.solve_triangular(chol, eye, upper=False)
    bad = (cov <= 0) | ~torch.isfinite(cov)
    if bool(bad.any()):
        raise _fail(bad, batched)
    return 1.0 / cov.sqrt()


def inv_scale_from_precisions(prec: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """``L`` with ``Lᵀ L = P``: the transpose of the upper factor ``U Uᵀ = P`` (flipped Cholesky)."""
    if covariance_type in ("full", "tied"):
        flip = prec.flip(-1, -2)
        chol, info = torch.linalg.cholesky_ex(flip)
        if bool((info != 0).any()):
            raise ValueError(f"precisions_init ('{covariance_type}') must be symmetric, positive-definite")
        return chol.flip(-1, -2).transpose(-1, -2)
    return prec.sqrt()


def covariances_from_inv_scale(inv_scale: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """``Σ = L⁻¹ L⁻ᵀ``; ``1/L²`` for diag and spherical."""
    if covariance_type in ("full", "tied"):
        eye = torch.eye(inv_scale.shape[-1], dtype=inv_scale.dtype, device=inv_scale.device)
        c = torch.linalg.solve_triangular(inv_scale, eye.expand_as(inv_scale), upper=False)
        return c @ c.transpose(-1, -2)
    return 1.0 / inv_scale.square()


def precisions_cholesky(inv_scale: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """scikit-learn's ``precisions_cholesky_`` (upper triangular ``Lᵀ`` for full and tied)."""
    return inv_scale.transpose(-1, -2) if covariance_type in ("full", "tied") else inv_scale


def precisions(inv_scale: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """``P = Lᵀ L`` (full, tied) or ``L²``."""
    if covariance_type in ("full", "tied"):
        return inv_scale.transpose(-1, -2) @ inv_scale
    return inv_scale.square()


def n_parameters(k: int, d: int, covariance_type: str) -> int:
    """Free parameters: weights (K - 1), means (K D) and the covariances."""
    cov = {"full": k * d * (d + 1) / 2.0, "diag": k * d, "tied": d * (d + 1) / 2.0, "spherical": k}
    return int(cov[covariance_type] + k * d + k - 1)


class GaussianComponents(TorchDistribution):
    """``x ~ N(μ_z, Σ_z)`` given component indices ``z``; ``log_prob`` builds the whole
    ``(K, N)`` table as one matrix product (:func:`log_gaussian_table`, with the precomputed
    ``features`` of the data when given) and reads off the entries ``z`` selects.

    For ``z`` enumerated by Pyro (``arange(K)`` shaped ``(K, 1)``) against data ``(N, D)`` the
    table is returned as is, shape ``(K, N)``.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, means: torch.Tensor, inv_scale: torch.Tensor, covariance_type: str,
                 component: torch.Tensor, batch_shape: Optional[torch.Size] = None,
                 validate_args=None, features: Optional[GaussianFeatures] = None) -> None:
        self.means = means
        self.inv_scale = inv_scale
        self.covariance_type = covariance_type
        self.component = component
        self.features = features
        batch_shape = component.shape if batch_shape is None else torch.Size(batch_shape)
        super().__init__(batch_shape, means.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GaussianComponents, _instance)
        GaussianComponents.__init__(new, self.means, self.inv_scale, self.covariance_type,
                                    self.component, torch.Size(batch_shape), validate_args=False,
                                    features=self.features)
        return new

    def marginalize_missing(self, value: torch.Tensor, missing: torch.Tensor):
        """``pyroem.marginalize_missing``'s protocol: rows with NaN coordinates scored by the
        marginal of their observed ones (features of ``value`` built with ``missing=True``, once
        per fit when the model is given them); returns the distribution and the value to record."""
        features = self.features
        if features is None or features.missing is None or not features.matches(value):
            features = GaussianFeatures(value, self.covariance_type, missing=True)
        new = GaussianComponents(self.means, self.inv_scale, self.covariance_type, self.component,
                                 self.batch_shape, validate_args=False, features=features)
        return new, features.filled

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.dim() != 2:
            raise ValueError(f"GaussianComponents scores data of shape (N, D), got {tuple(value.shape)}")
        n = value.shape[0]
        features = self.features
        if features is None or not features.matches(value):
            features = GaussianFeatures(value, self.covariance_type, cache=False)
        if features.missing is None and features.has_nan:
            raise ValueError("the data hold NaN entries: to integrate the missing coordinates out, fit "
                             "with GaussianMixture(missing='marginalize') or pyroem.EM(model, missing='marginalize')")
        table = log_gaussian_table(value, self.means, self.inv_scale, self.covariance_type, features)
        z = self.component
        k = self.means.shape[0]
        if (getattr(z, "_pyro_categorical_support", None) is not None and z.dim() >= 1
                and z.shape[0] == k and all(s == 1 for s in z.shape[1:])):
            out = table.reshape((k,) + (1,) * max(0, z.dim() - 2) + (n,))
        else:
            out = table[z.long(), torch.arange(n, device=value.device)]
        out = out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))
        return pyroem.donate(out)  # a fresh table: the E-step may write the posterior into it

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape
            z = self.component.long().expand(self.batch_shape).expand(shape)
            return draw_components(self.means, self.inv_scale, self.covariance_type, z)


def draw_components(means: torch.Tensor, inv_scale: torch.Tensor, covariance_type: str, z: torch.Tensor,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw ``x ~ N(μ_z, Σ_z)`` for every component index in ``z``, shaped ``z.shape + (D,)``:
    ``μ_z + L_z⁻¹ ε`` with standard normal ``ε`` (from ``generator`` when given)."""
    d = means.shape[-1]
    eps = torch.randn(z.shape + (d,), dtype=means.dtype, device=means.device, generator=generator)
    if covariance_type in ("full", "tied"):
        factor = inv_scale[z] if covariance_type == "full" else inv_scale.expand(z.shape + (d, d))
        dev = torch.linalg.solve_triangular(factor, eps.unsqueeze(-1), upper=False).squeeze(-1)
    else:
        dev = eps / (inv_scale[z] if covariance_type == "diag" else inv_scale[z].unsqueeze(-1))
    return means[z] + dev
