"""Hidden Markov models with hmmlearn's API, fitted by exact EM (Baum-Welch).

``categorical_hmm_model`` and ``gaussian_hmm_model`` are plain Pyro models, their chain written
with ``pyroem.vectorized_markov``: copy one as the start of a custom HMM. The estimators
``CategoricalHMM`` and ``GaussianHMM`` fit them with ``pyroem.EM`` and hmmlearn's closed-form
M-step (the E-step is the engine's: the chain eliminated along time).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints

import pyroem

from ..exceptions import NotFittedError
from ..gaussian.densities import scatter_about
from ..gaussian.missing import MissingPatterns, expected_moments
from ..kmeans import NumpyDraws, kmeans
from .base import BaseHMM, ConvergenceMonitor, bind_model
from .checks import check_2d, check_int, check_prior, check_probs, check_real, floor_covars, random_state_of

__all__ = [
    "CategoricalHMM",
    "ConvergenceMonitor",
    "GaussianHMM",
    "NotFittedError",
    "categorical_hmm_model",
    "gaussian_hmm_model",
]

COVARIANCE_TYPES = ("spherical", "diag", "full", "tied")


def _categorical(probs: torch.Tensor, probs_constraint: constraints.Constraint) -> dist.Categorical:
    """``Categorical(probs)``; with unconstrained probabilities (the estimators' exact updates)
    from their logarithm, so that an exact zero stays impossible (``probs=`` clamps it to eps)."""
    if probs_constraint is constraints.simplex:
        return dist.Categorical(probs)
    logits = probs.log()
    out = dist.Categorical(logits=logits)
    # the table's own logarithms, not renormalized (rows already sum to one): the log-probabilities
    # hmmlearn computes, to the bit, so exactly tied Viterbi paths resolve the same way
    out.logits = logits
    return out


def _chain_params(n_components: int, probs_constraint: constraints.Constraint, like: torch.Tensor):
    """``startprob`` and ``transmat``, uniform at first, in the float type (float64 for integer
    symbols) and on the device of the data ``like``."""
    k = n_components
    dtype = like.dtype if like.is_floating_point() else torch.float64
    startprob = pyro.param("startprob", lambda: torch.full((k,), 1.0 / k, dtype=dtype, device=like.device),
                           constraint=probs_constraint)
    transmat = pyro.param("transmat", lambda: torch.full((k, k), 1.0 / k, dtype=dtype, device=like.device),
                          constraint=probs_constraint)
    return startprob, transmat


def _steps(X: torch.Tensor, mask: torch.Tensor):
    """The chain over the padded time axis as one vectorized Markov chain: for each pass,
    ``(t, X at t, mask at t)`` with the first step's slices kept in the time dim's place."""
    for t in pyroem.vectorized_markov(name="time", size=X.shape[1], dim=-1):
        if isinstance(t, int):
            yield t, X[:, t:t + 1], mask[:, t:t + 1]
        else:
            yield t, X[:, t], mask[:, t]


def _transition(startprob: torch.Tensor, transmat: torch.Tensor, x, m: torch.Tensor, padded: bool,
                probs_constraint: constraints.Constraint) -> dist.Categorical:
    """The state's distribution: ``startprob`` first, then ``transmat[x_prev]``; past a sequence's
    end the chain stays where it is (an identity row), so padded steps change neither ``log p(X)``
    (each identity row sums to one) nor the most probable path (its maximum is one)."""
    if x is None:
        return _categorical(startprob, probs_constraint)
    row = transmat[x]
    if padded:
        stay = torch.eye(transmat.shape[-1], dtype=row.dtype, device=row.device)[x]
        row = torch.where(m.unsqueeze(-1), row, stay)
    return _categorical(row, probs_constraint)


def categorical_hmm_model(X: torch.Tensor, mask: torch.Tensor, n_components: int, n_features: int,
                          probs_constraint: constraints.Constraint = constraints.simplex) -> None:
    """HMM with categorical emissions over ``N`` padded sequences.

    :param X: ``(N, T)`` int symbols; padded steps hold any valid symbol.
    :param mask: ``(N, T)`` bool, False on padded steps: their emission is masked out and the
        chain stays in its last state through them.
    :param probs_constraint: constraint of ``startprob``, ``transmat``, ``emissionprob``
        (rows on the simplex). The estimator passes ``constraints.real``: its closed-form
        updates keep exact zeros (forbidden transitions, unseen symbols), which the simplex's
        unconstrained coordinates cannot hold.
    """
    startprob, transmat = _chain_params(n_components, probs_constraint, X)
    emissionprob = pyro.param(
        "emissionprob", lambda: torch.full((n_components, n_features), 1.0 / n_features, dtype=startprob.dtype,
                                           device=X.device),
        constraint=probs_constraint,
    )
    padded = not bool(mask.all())
    with pyro.plate("sequences", X.shape[0], dim=-2):
        x = None
        for t, y, m in _steps(X, mask):
            x = pyro.sample(f"x_{t}", _transition(startprob, transmat, x, m, padded, probs_constraint))
            with poutine.mask(mask=m):
                pyro.sample(f"y_{t}", _categorical(emissionprob[x], probs_constraint), obs=y)


def gaussian_hmm_model(X: torch.Tensor, mask: torch.Tensor, n_components: int,
                       covariance_type: str = "diag",
                       probs_constraint: constraints.Constraint = constraints.simplex) -> None:
    """HMM with Gaussian emissions over ``N`` padded sequences.

    :param X: ``(N, T, D)`` observations; padded steps hold any finite value.
    :param mask: ``(N, T)`` bool, False on padded steps (as in ``categorical_hmm_model``).
    :param covariance_type: shape of ``covars``: ``"spherical"`` (K,), ``"diag"`` (K, D),
        ``"full"`` (K, D, D) or ``"tied"`` (D, D).
    """
    k, d = n_components, X.shape[-1]
    startprob, transmat = _chain_params(n_components, probs_constraint, X)
    means = pyro.param("means", lambda: torch.zeros(k, d, dtype=X.dtype, device=X.device))
    if covariance_type in ("spherical", "diag"):
        shape = (k,) if covariance_type == "spherical" else (k, d)
        covars = pyro.param("covars", lambda: torch.ones(shape, dtype=X.dtype, device=X.device),
                            constraint=constraints.positive)
        scale = covars.sqrt().unsqueeze(-1).expand(k, d) if covariance_type == "spherical" else covars.sqrt()
        scale_tril = None
    else:
        shape = (k, d, d) if covariance_type == "full" else (d, d)
        covars = pyro.param("covars", lambda: torch.eye(d, dtype=X.dtype, device=X.device).expand(shape).clone(),
                            constraint=constraints.positive_definite)
        scale_tril = torch.linalg.cholesky(covars).expand(k, d, d)
    padded = not bool(mask.all())
    with pyro.plate("sequences", X.shape[0], dim=-2):
        x = None
        for t, y, m in _steps(X, mask):
            x = pyro.sample(f"x_{t}", _transition(startprob, transmat, x, m, padded, probs_constraint))
            if scale_tril is None:
                emission = dist.Normal(means[x], scale[x]).to_event(1)
            else:
                emission = dist.MultivariateNormal(means[x], scale_tril=scale_tril[x])
            with poutine.mask(mask=m):
                pyro.sample(f"y_{t}", emission, obs=y)


class CategoricalHMM(BaseHMM):
    """HMM with categorical emissions (hmmlearn's ``CategoricalHMM``): ``X`` is ``(n_samples, 1)``
    of int symbols ``0 .. n_features - 1``.

    Learned attributes: ``startprob_`` (K,), ``transmat_`` (K, K), ``emissionprob_`` (K, F),
    ``monitor_`` (log-likelihood history and convergence), ``n_features``.
    Codes in ``params`` / ``init_params``: ``s`` startprob, ``t`` transmat, ``e`` emissionprob.
    Priors are Dirichlet concentrations as in hmmlearn (1.0: the maximum-likelihood update).
    """

    _codes = "ste"
    model = staticmethod(categorical_hmm_model)

    def __init__(self, n_components: int = 1, startprob_prior=1.0, transmat_prior=1.0, *,
                 emissionprob_prior=1.0, n_features: Optional[int] = None, algorithm: str = "viterbi",
                 random_state=None, n_iter: int = 10, tol: float = 1e-2, verbose: bool = False,
                 params: str = "ste", init_params: str = "ste", device=None,
                 dtype: torch.dtype = torch.float64, implementation: str = "auto", n_init: int = 1,
                 callback=None) -> None:
        super().__init__(n_components, startprob_prior, transmat_prior, algorithm, random_state,
                         n_iter, tol, verbose, params, init_params, device, dtype, implementation, n_init,
                         callback)
        self.emissionprob_prior = emissionprob_prior
        self.n_features = n_features

    def _pyro_model(self):
        return bind_model(categorical_hmm_model, n_components=self.n_components,
                          n_features=int(self.n_features), probs_constraint=constraints.real)

    def _emission_params(self):
        return {"emissionprob": ("emissionprob_", constraints.real)}

    def _is_map(self) -> bool:
        return super()._is_map() or bool(np.any(np.asarray(self.emissionprob_prior) != 1.0))

    def _check_X(self, X, fitting: bool) -> np.ndarray:
        X = check_2d(X)
        if X.shape[1] != 1:
            raise ValueError(f"X must have shape (n_samples, 1) of int symbols, got {X.shape}")
        if not np.issubdtype(X.dtype, np.integer):
            if np.issubdtype(X.dtype, np.floating) and (X == np.round(X)).all():
                X = X.astype(np.int64)
            else:
                raise ValueError("X must hold int symbols (categories 0, 1, ...), got non-integer values")
        if X.min() < 0:
            raise ValueError(f"X must hold non-negative symbols, got {X.min()}")
        n_features = self.n_features
        if n_features is None and hasattr(self, "emissionprob_"):
            n_features = np.shape(self.emissionprob_)[-1]
        if n_features is None:
            if not fitting:
                raise NotFittedError("this CategoricalHMM does not know n_features yet: call fit first")
            self.n_features = int(X.max()) + 1
        else:
            n_features = check_int(n_features, "n_features", 1)
            if X.max() >= n_features:
                raise ValueError(
                    f"X has symbol {X.max()} but the model emits symbols 0..{n_features - 1} "
                    f"(n_features={n_features})"
                )
            self.n_features = n_features
        return X

    def _to_tensor(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(X[:, 0], dtype=torch.long, device=self.device)

    def _init_emissions(self, X, lengths) -> None:
        if self._needs_init("e", "emissionprob_"):
            rs = random_state_of(self.random_state)
            e = rs.rand(self.n_components, self.n_features)
            self.emissionprob_ = e / e.sum(axis=1, keepdims=True)

    def _check_emissions(self) -> None:
        if self.n_features is None:
            self.n_features = np.shape(self.emissionprob_)[-1]
        self.emissionprob_ = check_probs(self.emissionprob_, "emissionprob_",
                                         (self.n_components, int(self.n_features)))
        check_prior(self.emissionprob_prior, "emissionprob_prior", (self.n_components, int(self.n_features)), 0,
                    strict=True)

    def _emission_updates(self, gamma, Xpad, p):
        if "e" not in self.params:
            return {}
        counts = torch.zeros_like(p["emissionprob"]).T
        counts.index_add_(0, Xpad.reshape(-1), gamma.reshape(-1, gamma.shape[-1]))
        prior = self.emissionprob_prior
        new = torch.clamp(torch.as_tensor(prior, dtype=counts.dtype, device=counts.device) - 1 + counts.T, min=0)
        sums = new.sum(-1, keepdim=True)
        return {"emissionprob": torch.where(sums > 0, new / sums.clamp_min(torch.finfo(new.dtype).tiny),
                                            p["emissionprob"])}

    def _sample_emissions(self, states, rs) -> np.ndarray:
        cdf = np.cumsum(self.emissionprob_, axis=1)[states]
        u = rs.rand(len(states), 1)
        return np.minimum((cdf <= u).sum(axis=1), self.n_features - 1)[:, None]

    def _n_fit_scalars(self) -> Dict[str, int]:
        out = super()._n_fit_scalars()
        out["e"] = self.n_components * (int(self.n_features) - 1)
        return out


class GaussianHMM(BaseHMM):
    """HMM with Gaussian emissions (hmmlearn's ``GaussianHMM``).

    Learned attributes: ``startprob_``, ``transmat_``, ``means_`` (K, D) and ``covars_``, which
    reads as full matrices (K, D, D) whatever ``covariance_type`` and is set in the type's own
    shape: ``spherical`` (K,), ``diag`` (K, D), ``full`` (K, D, D), ``tied`` (D, D).
    Codes: ``s``, ``t``, ``m`` means, ``c`` covars. The M-step is hmmlearn's, priors included:
    ``means = (w μ₀ + Σγx) / (w + Σγ)``; diagonal ``covars = (c₀ + Σγ(x-μ)² + w(μ-μ₀)²) /
    (max(c_w - 1, 0) + Σγ)`` (``c₀ = covars_prior``, default 1e-2); ``min_covar`` is added to the
    data covariance of the initial guess. ``missing="marginalize"`` accepts NaN entries of ``X``:
    each step's emission is the marginal normal of its observed coordinates
    (``pyroem.marginalize_missing``) and the M-step takes the conditional moments of the missing
    ones; the default refuses NaN, as hmmlearn does.
    """

    _codes = "stmc"
    model = staticmethod(gaussian_hmm_model)

    def __init__(self, n_components: int = 1, covariance_type: str = "diag", min_covar: float = 1e-3,
                 startprob_prior=1.0, transmat_prior=1.0, means_prior=0, means_weight=0,
                 covars_prior=1e-2, covars_weight=1, algorithm: str = "viterbi", random_state=None,
                 n_iter: int = 10, tol: float = 1e-2, verbose: bool = False, params: str = "stmc",
                 init_params: str = "stmc", device=None, dtype: torch.dtype = torch.float64,
                 implementation: str = "auto", n_init: int = 1, callback=None,
                 missing: Optional[str] = None) -> None:
        super().__init__(n_components, startprob_prior, transmat_prior, algorithm, random_state,
                         n_iter, tol, verbose, params, init_params, device, dtype, implementation, n_init,
                         callback)
        self.missing = missing
        self.covariance_type = covariance_type
        self.min_covar = min_covar
        self.means_prior = means_prior
        self.means_weight = means_weight
        self.covars_prior = covars_prior
        self.covars_weight = covars_weight

    # covars_ as hmmlearn: full matrices out, the covariance type's own shape in
    @property
    def covars_(self) -> np.ndarray:
        c = self._covars_
        k, d = self.n_components, self.means_.shape[1] if hasattr(self, "means_") else c.shape[-1]
        if self.covariance_type == "full":
            return c
        if self.covariance_type == "tied":
            return np.tile(c, (k, 1, 1))
        if self.covariance_type == "diag":
            return np.stack([np.diag(row) for row in c])
        return np.asarray(c).reshape(-1)[:, None, None] * np.eye(d)

    @covars_.setter
    def covars_(self, value) -> None:
        self._covars_ = np.array(value, dtype=np.float64, copy=True)

    def _check_hyper(self) -> None:
        super()._check_hyper()
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}")
        check_real(self.min_covar, "min_covar", 0)
        check_prior(self.means_weight, "means_weight", minimum=0)
        check_prior(self.covars_prior, "covars_prior",
                    minimum=0 if self.covariance_type in ("spherical", "diag") else None)
        check_prior(self.covars_weight, "covars_weight")
        if self.missing not in (None, "marginalize"):
            raise ValueError(f"missing must be None (NaN in X is an error) or 'marginalize', got {self.missing!r}")

    def _pyro_model(self):
        model = bind_model(gaussian_hmm_model, n_components=self.n_components,
                           covariance_type=self.covariance_type, probs_constraint=constraints.real)
        return pyroem.marginalize_missing(model) if self.missing == "marginalize" else model

    def _emission_params(self):
        pd = self.covariance_type in ("full", "tied")
        return {"means": ("means_", constraints.real),
                "covars": ("_covars_", constraints.positive_definite if pd else constraints.positive)}

    def _is_map(self) -> bool:
        priors = (self.means_weight, self.covars_prior)
        return super()._is_map() or any(bool(np.any(np.asarray(p) != 0)) for p in priors)

    def _n_features_expected(self) -> Optional[int]:
        if hasattr(self, "means_"):
            return np.shape(self.means_)[-1]
        return getattr(self, "n_features", None)

    def _check_X(self, X, fitting: bool) -> np.ndarray:
        X = check_2d(X, allow_nan=self.missing == "marginalize").astype(np.float64, copy=False)
        d = self._n_features_expected()
        if d is not None and X.shape[1] != d and not (fitting and "m" in self.init_params):
            raise ValueError(f"X has {X.shape[1]} features but the model has {d}")
        if fitting:
            self.n_features = X.shape[1]
        return X

    def _to_tensor(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(X, dtype=self.dtype, device=self.device)

    def _init_emissions(self, X, lengths) -> None:
        k, d = self.n_components, X.shape[1]
        if X.shape[0] < k and self._needs_init("m", "means_"):
            raise ValueError(f"X has {X.shape[0]} samples, fewer than n_components={k}")
        if np.isnan(X).any():  # the initial guess from the data with each column's mean filled in
            empty = np.flatnonzero(np.isnan(X).all(0))
            if len(empty):
                raise ValueError(f"X has no observed value in column(s) {(empty + 1).tolist()} (numbered from 1)")
            X = np.where(np.isnan(X), np.nanmean(X, axis=0), X)
        if self._needs_init("m", "means_"):
            _, centers = kmeans(torch.as_tensor(X, dtype=torch.float64)[None], k, NumpyDraws(random_state_of(self.random_state)))
            self.means_ = centers[0].numpy()
        if self._needs_init("c", "_covars_"):
            cv = np.atleast_2d(np.cov(X.T)) if X.shape[0] > 1 else np.zeros((d, d))
            cv = cv + self.min_covar * np.eye(d)
            self._covars_ = {
                "spherical": np.full(k, cv.mean()),
                "diag": np.tile(np.diag(cv), (k, 1)),
                "full": np.tile(cv, (k, 1, 1)),
                "tied": cv,
            }[self.covariance_type]

    def _check_emissions(self) -> None:
        k = self.n_components
        means = np.array(self.means_, dtype=np.float64)
        if means.ndim != 2 or means.shape[0] != k or not np.isfinite(means).all():
            raise ValueError(f"means_ must be a finite array of shape (n_components={k}, n_features)")
        self.means_ = means
        d = means.shape[1]
        self.n_features = d
        c = np.asarray(self._covars_, dtype=np.float64)
        ct = self.covariance_type
        if ct == "spherical" and c.shape == (k, d) and np.allclose(c, c[:, :1]):
            c = c[:, 0].copy()  # hmmlearn's own tiled form
        shape = {"spherical": (k,), "diag": (k, d), "full": (k, d, d), "tied": (d, d)}[ct]
        if c.shape != shape:
            raise ValueError(f"covars_ for covariance_type={ct!r} must have shape {shape}, got {c.shape}")
        if not np.isfinite(c).all():
            raise ValueError("covars_ must be finite")
        if ct in ("spherical", "diag"):
            if (c <= 0).any():
                raise ValueError(f"{ct!r} covars_ must be positive")
        else:
            mats = c.reshape(-1, d, d)
            if not np.allclose(mats, np.swapaxes(mats, -1, -2)) or (np.linalg.eigvalsh(mats) <= 0).any():
                raise ValueError(f"{ct!r} covars_ must be symmetric positive definite")
        self._covars_ = c
        check_prior(self.means_prior, "means_prior", tuple(self.means_.shape))

    def _emission_updates(self, gamma, Xpad, p):
        out: Dict[str, torch.Tensor] = {}
        if "m" not in self.params and "c" not in self.params:
            return out

        def as_t(v):
            return torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=Xpad.dtype, device=Xpad.device)
        ct = self.covariance_type
        incomplete = None
        steps = self._incomplete_steps(Xpad) if self.missing == "marginalize" else None
        if steps is not None:
            # steps with missing coordinates enter by their conditional moments at the current
            # params (models.gaussian.missing); the direct sums below cover the complete steps
            incomplete, complete, Xpad = steps
            g_inc = gamma.reshape(-1, gamma.shape[-1])[incomplete.rows].T              # (K, n)
            gamma = gamma * complete
            # about the current means μₙ: Σγ, Σγ E[x - μₙ], Σγ E[(x - μₙ)(x - μₙ)ᵀ]
            s0, s1, s2 = expected_moments(incomplete, g_inc, p["means"], p["covars"], ct, p["means"])
        post = gamma.sum((0, 1))                                    # Σγ (K,)
        obs = torch.einsum("ntk,ntd->kd", gamma, Xpad)              # Σγx (K, D)
        if incomplete is not None:
            post, obs = post + s0, obs + s1 + s0.unsqueeze(-1) * p["means"]
        denom = post.unsqueeze(-1)
        means_prior, means_weight = as_t(self.means_prior), as_t(self.means_weight)
        means = p["means"]
        if "m" in self.params:
            den = means_weight + denom
            new = (means_weight * means_prior + obs) / torch.where(den > 0, den, torch.ones_like(den))
            means = torch.where(den > 0, new, means)
            out["means"] = means
        if "c" not in self.params:
            return out
        covars_prior, covars_weight = as_t(self.covars_prior), as_t(self.covars_weight)
        meandiff = means - means_prior
        # Σγ(x-μ)² summed directly, not as Σγx² - 2μΣγx + μ²Σγ: the same number without the
        # cancellation that costs float32 most of its digits when |μ| is large against the spread
        diff = Xpad.unsqueeze(-2) - means                           # (N, T, K, D)
        scatter = 0.0
        if incomplete is not None:  # Σγ E[(x - μ)(x - μ)ᵀ] over the incomplete steps, moved from μₙ to μ
            scatter = scatter_about(s2, s1, s0, means - p["means"])
        if ct in ("spherical", "diag"):
            c_n = means_weight * meandiff ** 2 + torch.einsum("ntk,ntkd->kd", gamma, diff * diff) + scatter
            c_d = torch.clamp(covars_weight - 1, min=0) + denom
            cov = (covars_prior + c_n) / torch.clamp(c_d, min=1e-5)
            if ct == "spherical":
                cov = cov.mean(-1)
        else:
            mw = means_weight if means_weight.dim() == 0 else means_weight.reshape(-1, 1, 1)
            c_n = (mw * meandiff.unsqueeze(-1) * meandiff.unsqueeze(-2)
                   + torch.einsum("ntk,ntkd,ntke->kde", gamma, diff, diff) + scatter)
            cvweight = torch.clamp(covars_weight - means.shape[-1], min=0)
            if ct == "tied":
                cov = (covars_prior + c_n.sum(0)) / (cvweight + post.sum())
            else:
                cov = (covars_prior + c_n) / (cvweight + post[:, None, None])
            cov = 0.5 * (cov + cov.transpose(-1, -2))
        out["covars"] = floor_covars(cov, ct, self.min_covar)
        return out

    def _incomplete_steps(self, Xpad: torch.Tensor):
        """For padded data with NaN entries: its incomplete steps (``MissingPatterns``), the mask of
        complete steps ``(N, T, 1)`` and the data with 0 for NaN; None for complete data. Found
        once per fit (the M-step sees the same ``Xpad`` at every step)."""
        cached = getattr(self, "_steps_of", None)
        if cached is None or cached[0] is not Xpad:
            nan = torch.isnan(Xpad)
            found = None
            if bool(nan.any()):
                found = (MissingPatterns(Xpad.reshape(-1, Xpad.shape[-1]), grouped=self.covariance_type in ("full", "tied")),
                         ~nan.any(-1, keepdim=True), torch.nan_to_num(Xpad))
            self._steps_of = cached = (Xpad, found)
        return cached[1]

    def _fit_em(self, Xpad: torch.Tensor, mask: torch.Tensor) -> None:
        try:
            super()._fit_em(Xpad, mask)
        finally:  # the fit's data are not kept with the fitted estimator
            self.__dict__.pop("_steps_of", None)

    def _sample_emissions(self, states, rs) -> np.ndarray:
        means = self.means_[states]
        chol = np.linalg.cholesky(self.covars_)[states]
        z = rs.standard_normal(means.shape)
        return means + np.einsum("nde,ne->nd", chol, z)

    def _n_fit_scalars(self) -> Dict[str, int]:
        out = super()._n_fit_scalars()
        k, d = self.n_components, int(self.n_features)
        out["m"] = k * d
        out["c"] = {"spherical": k, "diag": k * d, "full": k * d * (d + 1) // 2,
                    "tied": d * (d + 1) // 2}[self.covariance_type]
        return out
