"""Gaussian-mixture maths: component log-densities, the weighted M-step, precision factors.

Every covariance is held through its *inverse scale* ``L``: for ``full`` and ``tied`` the
lower-triangular ``L = C⁻¹`` with ``Σ = C Cᵀ`` (so the precision is ``Lᵀ L`` and
scikit-learn's ``precisions_cholesky_`` is ``Lᵀ``); for ``diag`` and ``spherical`` ``L = 1/√σ²``.
The Mahalanobis term is a matrix product, ``y = X Lᵀ - μ Lᵀ``, as scikit-learn computes it.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

import torch
from pyro.distributions import TorchDistribution, constraints

ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or scale the input data."
)

INV_SCALE_CONSTRAINTS = {
    "full": constraints.lower_cholesky,
    "tied": constraints.lower_cholesky,
    "diag": constraints.positive,
    "spherical": constraints.positive,
}

_CHUNK_ELEMENTS = 1 << 24  # bound on the (components, samples, features) temporaries


def _component_chunks(k: int, n: int, d: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, n * d))
    for start in range(0, k, step):
        yield slice(start, min(k, start + step))


def log_det_inv_scale(inv_scale: torch.Tensor, covariance_type: str, d: int) -> torch.Tensor:
    """``log |L|`` per component (``= -½ log|Σ|``), shape ``(K,)`` (a scalar for tied)."""
    if covariance_type in ("full", "tied"):
        return inv_scale.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    if covariance_type == "diag":
        return inv_scale.log().sum(-1)
    return d * inv_scale.log()


def log_gaussian_prob(X: torch.Tensor, means: torch.Tensor, inv_scale: torch.Tensor,
                      covariance_type: str) -> torch.Tensor:
    """``log N(x_n | μ_k, Σ_k)``, shape ``(N, K)``, by matrix products with ``L``."""
    n, d = X.shape
    k = means.shape[0]
    if covariance_type == "full":
        wt = inv_scale.transpose(-1, -2)  # (K, D, D): y_k = X @ wt_k - μ_k @ wt_k
        maha = X.new_empty((n, k))
        for sl in _component_chunks(k, n, d):
            w = wt[sl]
            kc = w.shape[0]
            xw = (X @ w.permute(1, 0, 2).reshape(d, kc * d)).reshape(n, kc, d)
            muw = (means[sl].unsqueeze(1) @ w).squeeze(1)
            maha[:, sl] = (xw - muw).square().sum(-1)
    elif covariance_type == "tied":
        wt = inv_scale.transpose(-1, -2)
        xw, muw = X @ wt, means @ wt
        maha = X.new_empty((n, k))
        for sl in _component_chunks(k, n, d):
            maha[:, sl] = (xw.unsqueeze(1) - muw[sl]).square().sum(-1)
    elif covariance_type == "diag":
        prec = inv_scale.square()
        maha = (means.square() * prec).sum(1) - 2.0 * (X @ (means * prec).T) + X.square() @ prec.T
    else:
        prec = inv_scale.square()
        maha = (means.square().sum(1) * prec - 2.0 * (X @ means.T * prec)
                + X.square().sum(1, keepdim=True) * prec)
    log_det = log_det_inv_scale(inv_scale, covariance_type, d)
    return -0.5 * (d * math.log(2 * math.pi) + maha) + log_det


def estimate_gaussian_parameters(X: torch.Tensor, resp: torch.Tensor, reg_covar: float,
                                 covariance_type: str, sample_weight: Optional[torch.Tensor] = None
                                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted MLE from responsibilities (scikit-learn's formulas, ``r_nk = w_n resp_nk``).

    ``n_k = Σ_n r_nk + 10 ε``, ``μ_k = Σ_n r_nk x_n / n_k``, covariances plus ``reg_covar`` on
    the diagonal. Returns ``(n_k, means, covariances)``.
    """
    n, d = X.shape
    r = resp if sample_weight is None else resp * sample_weight.unsqueeze(1)
    nk = r.sum(0) + 10 * torch.finfo(r.dtype).eps
    means = (r.T @ X) / nk.unsqueeze(1)
    if covariance_type == "full":
        k = means.shape[0]
        cov = X.new_empty((k, d, d))
        for sl in _component_chunks(k, n, d):
            diff = X.unsqueeze(0) - means[sl].unsqueeze(1)  # (kc, N, D)
            cov[sl] = (r.T[sl].unsqueeze(-1) * diff).transpose(1, 2) @ diff / nk[sl, None, None]
        cov.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
    elif covariance_type == "tied":
        xw = X if sample_weight is None else X * sample_weight.unsqueeze(1)
        cov = (xw.T @ X - (nk * means.T) @ means) / nk.sum()
        cov.diagonal().add_(reg_covar)
    else:
        avg_x2 = (r.T @ X.square()) / nk.unsqueeze(1)
        cov = avg_x2 - means.square() + reg_covar
        if covariance_type == "spherical":
            cov = cov.mean(1)
    return nk, means, cov


def _fail(dtype: torch.dtype) -> ValueError:
    extra = (" The numerical accuracy can also be improved by passing float64 data instead of float32."
             if dtype == torch.float32 else "")
    return ValueError(ILL_DEFINED + extra)


def inv_scale_from_covariances(cov: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """``L = C⁻¹`` (lower triangular) with ``C`` the Cholesky factor of ``Σ``; ``1/√σ²`` otherwise."""
    if covariance_type in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()) or not bool(torch.isfinite(chol).all()):
            raise _fail(cov.dtype)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
        return torch.linalg.solve_triangular(chol, eye, upper=False)
    if bool((cov <= 0).any()) or not bool(torch.isfinite(cov).all()):
        raise _fail(cov.dtype)
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
    ``(K, N)`` table by matrix products and reads off the entries ``z`` selects.

    For ``z`` enumerated by Pyro (``arange(K)`` shaped ``(K, 1)``) against data ``(N, D)`` the
    table is returned as is, shape ``(K, N)``.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, means: torch.Tensor, inv_scale: torch.Tensor, covariance_type: str,
                 component: torch.Tensor, batch_shape: Optional[torch.Size] = None,
                 validate_args=None) -> None:
        self.means = means
        self.inv_scale = inv_scale
        self.covariance_type = covariance_type
        self.component = component
        batch_shape = component.shape if batch_shape is None else torch.Size(batch_shape)
        super().__init__(batch_shape, means.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GaussianComponents, _instance)
        GaussianComponents.__init__(new, self.means, self.inv_scale, self.covariance_type,
                                    self.component, torch.Size(batch_shape), validate_args=False)
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.dim() != 2:
            raise ValueError(f"GaussianComponents scores data of shape (N, D), got {tuple(value.shape)}")
        n = value.shape[0]
        table = log_gaussian_prob(value, self.means, self.inv_scale, self.covariance_type).T  # (K, N)
        z = self.component
        k = self.means.shape[0]
        if (getattr(z, "_pyro_categorical_support", None) is not None and z.dim() >= 1
                and z.shape[0] == k and all(s == 1 for s in z.shape[1:])):
            out = table.reshape((k,) + (1,) * max(0, z.dim() - 2) + (n,))
        else:
            out = table[z.long(), torch.arange(n, device=value.device)]
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape
            z = self.component.long().expand(self.batch_shape).expand(shape)
            d = self.means.shape[-1]
            eps = torch.randn(shape + (d,), dtype=self.means.dtype, device=self.means.device)
            mu = self.means[z]
            if self.covariance_type == "full":
                dev = torch.linalg.solve_triangular(self.inv_scale[z], eps.unsqueeze(-1), upper=False).squeeze(-1)
            elif self.covariance_type == "tied":
                lt = self.inv_scale.expand(shape + (d, d))
                dev = torch.linalg.solve_triangular(lt, eps.unsqueeze(-1), upper=False).squeeze(-1)
            elif self.covariance_type == "diag":
                dev = eps / self.inv_scale[z]
            else:
                dev = eps / self.inv_scale[z].unsqueeze(-1)
            return mu + dev
