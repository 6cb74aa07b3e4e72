"""``GaussianMixture``: a drop-in for ``sklearn.mixture.GaussianMixture`` fitted by ``pyroem.EM``.

The Pyro model :func:`gmm_model` is the whole statistical content; the E-step is the engine's
exact enumeration of ``z`` and :class:`GMMUpdates` is the closed-form M-step. The loop follows
scikit-learn's: lower bound = mean log-likelihood of the E-step, stop when it changes by less
than ``tol``, a final E-step for the labels. Large data sets are swept in chunks of rows: the
engine's E-step runs on each chunk, the sufficient statistics add up, and one closed-form
update follows (the same parameters as one pass over all rows).
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints

import pyroem
from pyroem.distributed import DataParallel
from pyroem.threads import threads_for

from ..estimator import Estimator, PeerStopping, best_start, caller_stacklevel
from ..exceptions import ConvergenceWarning, NotFittedError
from ..kmeans import NumpyDraws, initial_resp
from .batch import fit_batch
from .checks import (
    check_hyper_parameters,
    check_means_init,
    check_precisions_init,
    check_random_state,
    check_sample_weight,
    check_weights_init,
    check_X,
    resolve_device,
    resolve_dtype,
)
from .densities import (
    INV_SCALE_CONSTRAINTS,
    GaussianComponents,
    GaussianFeatures,
    GMMStatistics,
    components_to_refine,
    covariances_from_inv_scale,
    default_inv_scale,
    draw_components,
    estimate_gaussian_parameters,
    feature_kind,
    gaussian_statistics,
    inv_scale_from_covariances,
    inv_scale_from_precisions,
    log_gaussian_table,
    missing_moments,
    n_parameters,
    parameters_from_statistics,
    precisions,
    precisions_cholesky,
)
from .store import PARAM_NAMES, drop_params, write_params

__all__ = ["GaussianMixture", "GMMUpdates", "gmm_model", "ConvergenceWarning", "NotFittedError"]

_fit_ids = itertools.count()
_RESP_ELEMENTS = 1 << 22  # responsibilities (components x rows) per E-step when chunk_size is None


def gmm_model(X: torch.Tensor, n_components: int, covariance_type: str = "full",
              sample_weight: Optional[torch.Tensor] = None, prefix: str = "",
              features: Optional[GaussianFeatures] = None) -> None:
    """Gaussian mixture: ``z_n ~ Categorical(weights)``, ``x_n | z_n ~ N(means[z_n], Σ[z_n])``.

    ``Σ`` is parametrized by its inverse scale ``inv_scale`` (``Σ = L⁻¹L⁻ᵀ``, lower-triangular
    ``L`` for full and tied; ``1/σ`` for diag and spherical). ``sample_weight`` scales each
    datum's log-likelihood. Params are ``prefix + {weights, means, inv_scale}``. ``features``
    (``GaussianFeatures(X, covariance_type)``, optional) reuses the per-row features of ``X``
    from step to step instead of rebuilding them.
    """
    n, _ = X.shape
    k = n_components
    weights = pyro.param(prefix + "weights", lambda: X.new_full((k,), 1.0 / k), constraint=constraints.simplex)
    means = pyro.param(prefix + "means", lambda: X[torch.linspace(0, n - 1, k, device=X.device).long()].clone())
    inv_scale = pyro.param(prefix + "inv_scale", lambda: default_inv_scale(X, k, covariance_type),
                           constraint=INV_SCALE_CONSTRAINTS[covariance_type])
    with pyro.plate("data", n, dim=-1), poutine.scale(scale=1.0 if sample_weight is None else sample_weight):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", GaussianComponents(means, inv_scale, covariance_type, z, features=features), obs=X)


class GMMUpdates:
    """Closed-form M-step for :func:`gmm_model`: ``pyroem.EM(gmm_model, updates=GMMUpdates())``,
    or in two halves for data in chunks, ``pyroem.EM(gmm_model, statistics=u.statistics,
    solve=u.solve)``; ``per_point=True`` gives statistics averaged over a batch's points (online EM).

    From ``r_nk = w_n p(z_n=k | x_n)``: ``weights = n_k / Σ n_k``, ``means`` the weighted means,
    covariances the weighted scatter plus ``reg_covar`` on the diagonal. ``last`` keeps the
    values of the latest update (covariances included).
    """

    def __init__(self, reg_covar: float = 1e-6, per_point: bool = False, params: str = "wmc") -> None:
        self.reg_covar = reg_covar
        self.per_point = per_point
        self.params = params  # the params updated: w(eights), m(eans), c(ovariances); the rest kept
        self.last: Optional[Dict[str, torch.Tensor]] = None

    def _refinement(self, covariance_type: str, prefix: str) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The current means and the components whose scatter is taken about them (see
        :func:`components_to_refine`), read from the param store: the same for every chunk.
        Per-point statistics (online EM) blend batches taken at different means: raw moments only."""
        store = pyro.get_param_store()
        if (not self.per_point and covariance_type == "full" and prefix + "means" in store
                and prefix + "inv_scale" in store):
            centres = store[prefix + "means"].detach()
            return centres, components_to_refine(centres, store[prefix + "inv_scale"].detach(), covariance_type)
        return None, None

    def statistics(self, expect, X, n_components, covariance_type="full", sample_weight=None, prefix="",
                   features=None) -> Dict[str, torch.Tensor]:
        """``Σ_n r_nk f(x_n)`` from one E-step, by name; the statistics of chunks add up."""
        if features is None or not features.matches(X):
            features = GaussianFeatures(X, covariance_type, missing=True)
        resp_t = expect.marginal("z").T
        centres, refined = (None, None) if features.missing is not None else self._refinement(covariance_type, prefix)
        stats = gaussian_statistics(resp_t, features, sample_weight, centres, refined)
        if features.missing is not None:  # rows with missing coordinates: their conditional moments at θₙ
            store = pyro.get_param_store()
            rows = features.missing.rows
            r = resp_t[:, rows] if sample_weight is None else resp_t[:, rows] * sample_weight[rows]
            cov = covariances_from_inv_scale(store[prefix + "inv_scale"].detach(), covariance_type)
            stats.moments = stats.moments + missing_moments(features.missing, r, store[prefix + "means"].detach(),
                                                            cov, covariance_type)
        if self.per_point:  # averages over the batch's points: online EM blends batches of any size
            return {"moments": stats.moments / stats.moments[:, -1].sum()}
        out = {"moments": stats.moments}
        if stats.ref_scatter is not None:
            out.update(ref_scatter=stats.ref_scatter, ref_sums=stats.ref_sums)
        return out

    def solve(self, stats: Dict[str, torch.Tensor], X, n_components, covariance_type="full", sample_weight=None,
              prefix="", features=None) -> Dict[str, torch.Tensor]:
        """The parameters from statistics summed over the data (scikit-learn's formulas)."""
        centres, refined = self._refinement(covariance_type, prefix)
        gathered = GMMStatistics(stats["moments"], X.shape[1], feature_kind(covariance_type), centres=centres)
        if "ref_scatter" in stats:
            gathered.refined, gathered.ref_scatter, gathered.ref_sums = refined, stats["ref_scatter"], stats["ref_sums"]
        nk, means, cov = parameters_from_statistics(gathered, self.reg_covar, covariance_type)
        weights = nk / nk.sum()
        store = pyro.get_param_store()
        if "m" not in self.params:  # the scatter about the kept means: Σ̂ + δδᵀ with δ = μ̂ − μ
            kept = store[prefix + "means"].detach()
            cov = _about(cov, means - kept, nk, covariance_type)
            means = kept
        if "w" not in self.params:
            weights = store[prefix + "weights"].detach()
        if "c" not in self.params:
            inv = store[prefix + "inv_scale"].detach()
            cov = covariances_from_inv_scale(inv, covariance_type)
        else:
            inv = inv_scale_from_covariances(cov, covariance_type)
        self.last = {"weights": weights, "means": means, "covariances": cov, "inv_scale": inv}
        return {prefix + "weights": weights, prefix + "means": means, prefix + "inv_scale": inv}

    def __call__(self, expect, *args, **kwargs) -> Dict[str, torch.Tensor]:
        return self.solve(self.statistics(expect, *args, **kwargs), *args, **kwargs)


def _about(cov: torch.Tensor, delta: torch.Tensor, nk: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """Covariances about other means: the weighted scatter about ``μ̂ − delta`` from that about ``μ̂``."""
    if covariance_type == "full":
        return cov + delta.unsqueeze(-1) * delta.unsqueeze(-2)
    if covariance_type == "diag":
        return cov + delta.square()
    if covariance_type == "spherical":
        return cov + delta.square().mean(-1)
    return cov + (nk[:, None, None] * delta.unsqueeze(-1) * delta.unsqueeze(-2)).sum(0) / nk.sum()


def _centre(X: torch.Tensor, w: Optional[torch.Tensor], parallel: Optional[DataParallel]) -> Tuple[torch.Tensor, float]:
    """The weighted mean of every column over its observed (non-NaN) entries, and the total weight
    (summed over ranks under ``parallel``): a row of weight 2 and the same row twice give the same
    centre."""
    wsum = float(X.shape[0]) if w is None else float(w.sum())
    seen = ~torch.isnan(X)
    if bool(seen.all()):
        sums = torch.cat([X.sum(0) if w is None else w @ X, X.new_tensor([wsum])])
        if parallel is not None:
            sums, wsum = parallel.sum(sums), parallel.sum_float(wsum)
        return sums[:-1] / sums[-1], wsum
    weight = seen.to(X.dtype) if w is None else seen * w.unsqueeze(1)
    d = X.shape[1]
    sums = torch.cat([(torch.nan_to_num(X) * weight).sum(0), weight.sum(0)])
    if parallel is not None:
        sums, wsum = parallel.sum(sums), parallel.sum_float(wsum)
    empty = torch.nonzero(sums[d:] <= 0).flatten().tolist()
    if empty:
        raise ValueError(f"X has no observed value in column(s) {[j + 1 for j in empty]} (numbered from 1)")
    return sums[:d] / sums[d:], wsum


def _is_count(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class GaussianMixture(Estimator):
    """Gaussian mixture fitted by exact EM on :func:`gmm_model` (scikit-learn's API).

    Constructor arguments, methods and fitted attributes are those of
    ``sklearn.mixture.GaussianMixture``; in addition ``device`` and ``dtype`` (float32 or
    float64; default: the data's float type, float64 for anything else) choose where and in
    what precision EM runs, ``chunk_size`` (rows per E-step; None: chunks only when the
    responsibilities of all rows would exceed about 4M entries) bounds a step's memory without
    changing its result, ``fit`` takes ``sample_weight``, and after fitting ``history_``
    holds the mean log-likelihood at every evaluated parameter set of the kept run
    (``history_[:-1] == lower_bounds_``, ``history_[-1]`` at the returned parameters) and
    ``init_scores_`` the final lower bound of every initialization. ``callback(n_iter,
    lower_bound, params)``, if given, is called at every EM step with its lower bound and the
    parameters that lower bound was computed at, those the step starts from (``n_iter`` counts
    from 1 in each initialization; ``params``: ``weights``, ``means``, ``covariances`` as
    tensors); a true return value ends that initialization after the step, unconverged.
    ``partial_fit`` runs online EM on mini-batches, with step sizes ``(t + 2)^(−step_size)``.
    ``params`` (hmmlearn's convention) names the params ``fit`` updates, by letter: ``w`` weights,
    ``m`` means, ``c`` covariances; the others keep their initial values (e.g. ``means_init`` with
    ``params="wc"``). ``missing="marginalize"`` accepts NaN entries of ``X`` as missing values:
    each row is scored by the marginal of its observed coordinates and the M-step uses the
    conditional moments of the missing ones (the classic EM for incomplete normal data); the
    default refuses NaN, as scikit-learn does.
    """

    model = staticmethod(gmm_model)

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full", tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1, init_params: str = "kmeans",
                 weights_init=None, means_init=None, precisions_init=None, random_state=None,
                 warm_start: bool = False, verbose: int = 0, verbose_interval: int = 10,
                 device=None, dtype=None, chunk_size: Optional[int] = None, callback=None,
                 step_size: float = 0.6, params: str = "wmc", missing: Optional[str] = None) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.callback = callback
        self.step_size = step_size
        self.params = params
        self.missing = missing

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None) -> "GaussianMixture":
        """Fit by EM (``n_init`` starts, the best lower bound kept); returns ``self``."""
        self._online = None
        self.fit_predict(X, y, sample_weight=sample_weight)
        return self

    def partial_fit(self, X, y=None, sample_weight=None) -> "GaussianMixture":
        """One step of online (stepwise) EM on the mini-batch ``X``; returns ``self``.

        The batch's statistics, averaged over its points at the current parameters, are blended
        into running ones with step size ``(t + 2)^(−step_size)`` and the parameters solved from
        them (``pyroem.EM.online_step``). The first call (or the first after ``fit``) starts from
        this batch: ``init_params`` on it, or the fitted parameters. ``lower_bound_`` is the
        batch's mean log-likelihood before the step, ``n_iter_`` counts the batches.
        """
        check_hyper_parameters(self)
        online = getattr(self, "_online", None)
        if online is None or not hasattr(self, "means_"):
            dtype, device = resolve_dtype(self.dtype, X), resolve_device(self.device, X)
        else:
            dtype, device = self._target()
        Xt = check_X(X, dtype, device, min_samples=1, n_features=getattr(self, "n_features_in_", None),
                     allow_nan=self.missing == "marginalize")
        w = check_sample_weight(sample_weight, Xt.shape[0], dtype, device)
        k, d = self.n_components, Xt.shape[1]
        if online is None:
            if hasattr(self, "means_"):  # continue from a fit
                shift = torch.as_tensor(self._shift, dtype=dtype, device=device)
                start = self._params_from_attributes(shift, dtype, device)
            else:
                if Xt.shape[0] < k:
                    raise ValueError(f"the first batch has {Xt.shape[0]} samples, fewer than n_components = {k}")
                shift, _ = _centre(Xt, None, None)
                start = self._initial_params(torch.nan_to_num(Xt - shift), w, check_random_state(self.random_state),
                                             self._check_inits(d, dtype, device), shift)
            updates = GMMUpdates(self.reg_covar, per_point=True)
            online = self._online = {
                "updates": updates, "shift": shift, "params": start, "n_iter": 0,
                "prefix": f"GaussianMixture{next(_fit_ids)}.",
                "em": pyroem.EM(gmm_model, statistics=updates.statistics, solve=updates.solve, max_plate_nesting=1,
                                missing=self.missing),
                "state": pyroem.StepwiseStatistics(self.step_size)}
        prefix = online["prefix"]
        Xc = Xt - online["shift"]
        wsum = float(Xc.shape[0]) if w is None else float(w.sum())
        write_params(prefix, online["params"], self.covariance_type)
        try:
            ll = online["em"].online_step(online["state"], Xc, k, self.covariance_type, w, prefix)
        finally:
            drop_params(prefix)
        online["params"] = online["updates"].last
        online["n_iter"] += 1
        self._set_fitted(online["params"], online["shift"], dtype, device, d)
        self.lower_bound_ = ll / wsum
        self.n_iter_ = online["n_iter"]
        self.converged_ = False
        return self

    def fit_batch(self, X, sample_weight=None) -> List["GaussianMixture"]:
        """Fit B datasets of one shape at once (``X`` ``(B, N, D)`` or a list); returns B fitted copies.

        One batched E-step serves every dataset; each stops on its own lower bound (``tol``).
        ``sample_weight`` ``(B, N)`` may pad datasets of unequal sizes with zeros; ``weights_init``,
        ``means_init``, ``precisions_init`` are shared or given per dataset (leading ``B`` dim).
        """
        return fit_batch(self, X, sample_weight)

    def bootstrap(self, X, n: int = 200, random_state=None) -> "pyroem.Bootstrap":
        """The parametric bootstrap of the fit: ``n`` data sets of ``len(X)`` rows simulated from the
        fitted mixture, refitted all at once by :meth:`fit_batch` from the fitted parameters (which
        keeps the components in their order); returns a ``pyroem.Bootstrap`` whose ``estimates``
        hold ``weights``, ``means`` and ``covariances`` stacked ``(n, ...)`` as NumPy arrays, with
        ``standard_errors()`` and percentile ``conf_int(alpha)``. ``random_state`` seeds the
        simulation (and the refits' own draws)."""
        self._check_fitted()
        if isinstance(n, bool) or not _is_count(n) or n < 2:
            raise ValueError(f"n must be an int >= 2, got {n!r}")
        dtype, device = self._target()
        Xt = check_X(X, dtype, device, n_features=self.means_.shape[1], allow_nan=True)
        if bool(torch.isnan(Xt).any()):
            raise ValueError("bootstrap takes complete data: it simulates complete data sets, whose refits would "
                             "understate the uncertainty of a fit with missing values")
        rows = Xt.shape[0]
        seed = int(check_random_state(random_state).randint(2 ** 31 - 1))
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        weights = torch.as_tensor(np.asarray(self.weights_), dtype=dtype, device=device)
        means = torch.as_tensor(np.asarray(self.means_), dtype=dtype, device=device)
        inv = self._inv_scale(dtype, device)
        z = torch.multinomial(weights / weights.sum(), n * rows, replacement=True, generator=gen).reshape(n, rows)
        simulated = draw_components(means, inv, self.covariance_type, z, gen)
        refit = GaussianMixture(**{**self.get_params(), "weights_init": self.weights_, "means_init": self.means_,
                                   "precisions_init": self.precisions_, "n_init": 1, "warm_start": False,
                                   "callback": None, "verbose": 0, "missing": None, "random_state": seed,
                                   "dtype": dtype, "device": device})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits = refit.fit_batch(simulated)
        estimates = {name: np.stack([getattr(f, name + "_") for f in fits]) for name in ("weights", "means", "covariances")}
        return pyroem.Bootstrap(estimates, [float(f.lower_bound_) * rows for f in fits])

    def fit_predict(self, X, y=None, sample_weight=None) -> np.ndarray:
        """Fit, then label ``X`` by a final E-step (consistent with ``fit(X).predict(X)``)."""
        shape = getattr(X, "shape", (len(X), 1) if hasattr(X, "__len__") else (0, 0))
        k = int(self.n_components) if _is_count(self.n_components) else 1  # checked in _fit_predict
        # small fits run on one thread (pyroem.threads): the pool's hand-offs cost more than the work
        with threads_for(int(np.prod(shape)) * max(1, k)):
            return self._fit_predict(X, sample_weight)

    def _fit_predict(self, X, sample_weight) -> np.ndarray:
        check_hyper_parameters(self)
        dtype, device = resolve_dtype(self.dtype, X), resolve_device(self.device, X)
        Xt = check_X(X, dtype, device, min_samples=2, allow_nan=self.missing == "marginalize")
        n, d = Xt.shape
        k = self.n_components
        if n < k:
            raise ValueError(f"Expected n_samples >= n_components but got n_components = {k}, n_samples = {n}")
        w = check_sample_weight(sample_weight, n, dtype, device)
        inits = self._check_inits(d, dtype, device)
        warm = bool(self.warm_start) and hasattr(self, "converged_")
        if warm and getattr(self, "n_features_in_", d) != d:
            raise ValueError(f"X has {d} features, but the warm-started GaussianMixture was fitted "
                             f"with {self.n_features_in_}")
        Xfit, wfit = Xt, w
        if w is not None and bool((w == 0).any()):
            keep = w > 0
            Xfit, wfit = Xt[keep], w[keep]
            if Xfit.shape[0] < k:
                raise ValueError(f"only {Xfit.shape[0]} samples have a positive sample_weight, fewer than "
                                 f"n_components = {k}")
        # under torch.distributed each rank holds a shard: the centre, the total weight and the
        # start (drawn on rank 0) are shared; the engine all-reduces the statistics
        parallel = DataParallel.current()
        shift, wsum = _centre(Xfit, wfit, parallel)
        Xc = Xfit - shift
        prefix = f"GaussianMixture{next(_fit_ids)}."
        features = GaussianFeatures(Xc, self.covariance_type, missing=True)
        incomplete = features.missing is not None
        if incomplete:
            empty = int(torch.isnan(Xfit).all(1).sum())
            if empty:
                warnings.warn(f"{empty} row(s) of X have no observed value: they carry no information about the "
                              "fit (each is scored log p = 0 and counts in the mean of score)", UserWarning,
                              stacklevel=caller_stacklevel())
        # rows with missing coordinates start from their column means (0 once centred); EM then
        # integrates the missing coordinates out
        Xstart = torch.nan_to_num(Xc) if incomplete else Xc
        args = (Xc, k, self.covariance_type, wfit, prefix, features)
        chunks = self._chunks(args)
        updates = GMMUpdates(self.reg_covar, params=self.params)
        em = pyroem.EM(gmm_model, statistics=updates.statistics, solve=updates.solve, max_plate_nesting=1,
                       missing="marginalize" if incomplete else None)
        rs = check_random_state(self.random_state)
        n_init = 1 if warm else self.n_init

        def run(init: int):
            self._print_init_begin(init)
            if warm:
                start, lb0 = self._params_from_attributes(shift, dtype, device), self.lower_bound_
            else:
                start, lb0 = self._initial_params(Xstart, wfit, rs, inits, shift,
                                                  None if incomplete else features), -math.inf
                if parallel is not None:
                    start = {name: parallel.broadcast(value) for name, value in start.items()}
            params, n_iter, lb, hist, converged = self._run(em, updates, args, chunks, start, lb0, wsum, shift)
            return lb, (params, lb, n_iter, hist, converged)

        try:
            (best, best_lb, best_n_iter, best_hist, self.converged_), scores = best_start(n_init, run)
            if not self.converged_ and self.max_iter > 0:
                warnings.warn("Best performing initialization did not converge. Try different init "
                              "parameters, or increase max_iter, tol, or check for degenerate data.",
                              ConvergenceWarning, stacklevel=caller_stacklevel())
            write_params(prefix, best, self.covariance_type)
            final, parts = None, []
            for cargs in chunks:
                expect = em.e_step(*cargs)
                final = expect.log_likelihood if final is None else final + expect.log_likelihood
                parts.append(expect.marginal("z").T.max(0).indices)
            final_ll = (float(final) if parallel is None else parallel.sum_float(float(final))) / wsum
            labels = torch.cat(parts)
        finally:
            drop_params(prefix)
        self._set_fitted(best, shift, dtype, device, d)
        self.n_iter_ = best_n_iter
        self.lower_bound_ = best_lb
        self.lower_bounds_ = list(best_hist)
        self.history_ = list(best_hist) + [final_ll]
        self.init_scores_ = scores
        if Xfit is not Xt:
            return self.predict(Xt)
        return _numpy(labels)

    def _check_inits(self, d: int, dtype, device) -> Tuple[Optional[torch.Tensor], ...]:
        k, ct = self.n_components, self.covariance_type
        w = None if self.weights_init is None else check_weights_init(self.weights_init, k, dtype, device)
        m = None if self.means_init is None else check_means_init(self.means_init, k, d, dtype, device)
        p = (None if self.precisions_init is None
             else check_precisions_init(self.precisions_init, ct, k, d, dtype, device))
        return w, m, p

    def _chunks(self, args: tuple) -> List[tuple]:
        """The model's arguments for each chunk of rows (one chunk when everything fits)."""
        Xc, k, ct, w, prefix, features = args
        n = Xc.shape[0]
        size = self.chunk_size if self.chunk_size is not None else max(1, _RESP_ELEMENTS // k)
        if size >= n:
            return [args]
        out = []
        for a in range(0, n, size):
            part = features[a:a + size]
            out.append((part.X, k, ct, None if w is None else w[a:a + size], prefix, part))
        return out

    def _initial_params(self, Xc, w, rs, inits, shift, features=None) -> Dict[str, torch.Tensor]:
        """Parameters from the initial responsibilities, overridden by the user's inits."""
        w_init, m_init, p_init = inits
        ct = self.covariance_type
        weights = means = cov = None
        if w_init is None or m_init is None or p_init is None:
            resp = initial_resp(Xc.unsqueeze(0), self.n_components, self.init_params, NumpyDraws(rs),
                                None if w is None else w.unsqueeze(0))[0]
            nk, means, cov = estimate_gaussian_parameters(Xc, resp, self.reg_covar, ct, w, features)
            weights = nk / (Xc.shape[0] if w is None else w.sum())
            if ct == "tied" and self.init_params in ("k-means++", "random_from_data"):
                cov = self._tied_from_one_hot(Xc + shift, means + shift, nk, w)
        weights = weights if w_init is None else w_init
        means = means if m_init is None else m_init - shift
        if p_init is None:
            inv = inv_scale_from_covariances(cov, ct)
        else:
            inv = inv_scale_from_precisions(p_init, ct)
            cov = covariances_from_inv_scale(inv, ct)
        return {"weights": weights, "means": means, "covariances": cov, "inv_scale": inv}

    def _tied_from_one_hot(self, X, means, nk, w) -> torch.Tensor:
        """scikit-learn's tied covariance ``(XᵀX - Σ_k n_k μ_k μ_kᵀ) / Σ_k n_k`` in the data's own
        coordinates: with one-hot responsibilities on only K rows, ``XᵀX`` still runs over every
        row, so the result depends on the origin and is reproduced as scikit-learn computes it."""
        xw = X if w is None else X * w.unsqueeze(1)
        cov = (xw.T @ X - (nk * means.T) @ means) / nk.sum()
        cov.diagonal().add_(self.reg_covar)
        return cov

    def _params_from_attributes(self, shift, dtype, device) -> Dict[str, torch.Tensor]:
        def t(a):
            return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)
        return {"weights": t(self.weights_), "means": t(self.means_) - shift,
                "covariances": t(self.covariances_), "inv_scale": self._inv_scale(dtype, device)}

    def _run(self, em, updates, args, chunks, start, lb0, wsum, shift):
        """One EM run: ``pyroem.EM.fit`` under scikit-learn's rule (:class:`PeerStopping`): the
        lower bound of a step is the mean log-likelihood before its M-step; the E-step runs on
        each chunk of rows and the M-step solves from the statistics summed over them."""
        prefix = args[4]
        write_params(prefix, start, self.covariance_type)
        if self.max_iter == 0:
            return start, 0, -math.inf, [], False
        # scikit-learn scores the start with its weights as given: one-hot initial responsibilities
        # (k-means++, random_from_data) leave them summing to about K/N, which shifts every
        # log p(x_n) by log Σ_k weights_k; the model itself uses the normalized weights.
        offset = math.log(float(start["weights"].double().sum())) if lb0 == -math.inf else 0.0

        def show(params):
            store = {name: params[prefix + name] for name in PARAM_NAMES}
            return {"weights": store["weights"], "means": store["means"] + shift,
                    "covariances": covariances_from_inv_scale(store["inv_scale"], self.covariance_type)}

        rule = PeerStopping(self.tol, scale=1.0 / wsum, first_offset=offset, previous=lb0, callback=self.callback,
                            show=show, report=self._print_iter_end)
        data = None if len(chunks) == 1 else chunks
        with warnings.catch_warnings():
            # reg_covar makes the covariance update a regularized one, not Q's exact maximizer: near
            # convergence log p(X|θ) may dip by rounding-sized amounts, as in scikit-learn
            warnings.simplefilter("ignore", pyroem.MonotonicityWarning)
            result = rule.run(em, *(chunks[0] if data is None else ()), data=data, max_iter=self.max_iter,
                              progress=self.verbose >= 1)
        if result.stop_reason in ("interrupted", "callback_error"):  # the store holds the last evaluated θ
            params = show(result.params)
            params.update(means=params["means"] - shift, inv_scale=result.params[prefix + "inv_scale"])
        else:
            params = updates.last
        self._print_init_end(rule.history[-1], rule.converged)
        return params, result.n_iter, rule.history[-1], rule.history, rule.converged

    def _set_fitted(self, params, shift, dtype, device, d: int) -> None:
        ct = self.covariance_type
        inv = params["inv_scale"]
        self.weights_ = _numpy(params["weights"])
        self.means_ = _numpy(params["means"] + shift)
        self.covariances_ = _numpy(params["covariances"])
        self.precisions_cholesky_ = _numpy(precisions_cholesky(inv, ct))
        self.precisions_ = _numpy(precisions(inv, ct))
        self.n_features_in_ = d
        self._shift = _numpy(shift)
        self._fit_dtype, self._fit_device = dtype, device

    # -- verbose output: a progress bar on stderr, scikit-learn's messages on stdout -------------
    def _print_init_begin(self, init: int) -> None:
        if self.verbose >= 1:
            print(f"Initialization {init}")

    def _print_iter_end(self, n_iter: int, lower_bound: float, change: float) -> None:
        if n_iter % self.verbose_interval == 0:
            if self.verbose == 1:
                print(f"  Iteration {n_iter}")
            elif self.verbose >= 2:
                print(f"  Iteration {n_iter}\t ll change {change:.5f}")

    def _print_init_end(self, lb: float, converged: bool) -> None:
        msg = "converged" if converged else "did not converge"
        if self.verbose == 1:
            print(f"Initialization {msg}.")
        elif self.verbose >= 2:
            print(f"Initialization {msg}.\t lower bound {lb:.5f}.")

    @classmethod
    def from_params(cls, weights, means, covariances, covariance_type: str = "full", **kwargs) -> "GaussianMixture":
        """A fitted estimator from saved parameters (``weights_``, ``means_``, ``covariances_`` in
        scikit-learn's shapes for ``covariance_type``): it scores, predicts and samples as the one
        that was fitted. ``kwargs`` are further constructor arguments."""
        est = cls(n_components=len(np.asarray(weights)), covariance_type=covariance_type, **kwargs)
        check_hyper_parameters(est)
        dtype = resolve_dtype(est.dtype, np.asarray(means, dtype=np.float64))
        k, d = np.asarray(means).shape
        w = check_weights_init(weights, k, dtype, torch.device("cpu"))
        m = check_means_init(means, k, d, dtype, torch.device("cpu"))
        cov = torch.as_tensor(np.asarray(covariances, dtype=np.float64), dtype=dtype)
        try:
            inv = inv_scale_from_covariances(cov, covariance_type)
        except RuntimeError as err:  # torch.linalg.LinAlgError: not positive definite
            raise ValueError(f"covariances must be positive definite ({covariance_type}): {err}") from None
        est._set_fitted({"weights": w, "means": m, "covariances": cov, "inv_scale": inv},
                        torch.zeros(d, dtype=dtype), dtype, torch.device("cpu"), d)
        est.converged_, est.n_iter_, est.lower_bound_ = True, 0, float("nan")
        return est

    # -- using the fitted model ---------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise NotFittedError("This GaussianMixture instance is not fitted yet. Call 'fit' with "
                                 "appropriate arguments before using this estimator.")

    def _target(self):
        dtype = getattr(self, "_fit_dtype", None) or resolve_dtype(None, np.asarray(self.means_))
        device = getattr(self, "_fit_device", None) or torch.device("cpu")
        return dtype, device

    def _inv_scale(self, dtype, device) -> torch.Tensor:
        pc = torch.as_tensor(np.asarray(self.precisions_cholesky_), dtype=dtype, device=device)
        return pc.transpose(-1, -2) if self.covariance_type in ("full", "tied") else pc

    def _weighted_log_prob(self, X) -> torch.Tensor:
        """``log weights_k + log N(x_n | k)``, shape ``(K, N)`` (contiguous)."""
        self._check_fitted()
        dtype, device = self._target()
        Xt = check_X(X, dtype, device, n_features=self.means_.shape[1], allow_nan=self.missing == "marginalize")
        shift = torch.as_tensor(getattr(self, "_shift", np.zeros(self.means_.shape[1])), dtype=dtype, device=device)
        means = torch.as_tensor(np.asarray(self.means_), dtype=dtype, device=device) - shift
        logw = torch.as_tensor(np.asarray(self.weights_), dtype=dtype, device=device).log()
        Xc = Xt - shift
        features = GaussianFeatures(Xc, self.covariance_type, cache=False, missing=True)  # NaN: marginals
        table = log_gaussian_table(Xc, means, self._inv_scale(dtype, device), self.covariance_type, features)
        return table.add_(logw.unsqueeze(1))

    def score_samples(self, X) -> np.ndarray:
        """``log p(x_n)`` for every row of ``X``."""
        return _numpy(torch.logsumexp(self._weighted_log_prob(X), 0))

    def score(self, X, y=None) -> float:
        """Mean log-likelihood of ``X``."""
        return float(torch.logsumexp(self._weighted_log_prob(X), 0).mean())

    def predict(self, X) -> np.ndarray:
        """Most probable component of every row."""
        return _numpy(self._weighted_log_prob(X).max(0).indices)

    def predict_proba(self, X) -> np.ndarray:
        """Posterior component probabilities ``(N, K)``."""
        return _numpy(torch.softmax(self._weighted_log_prob(X), 0).T)

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        return n_parameters(k, d, self.covariance_type)

    def _n_rows(self, X) -> int:
        return int(X.shape[0]) if hasattr(X, "shape") else len(X)

    def bic(self, X) -> float:
        """``-2 log L + p log N`` (lower is better)."""
        n = self._n_rows(X)
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X) -> float:
        """``-2 log L + 2 p`` (lower is better)."""
        return -2 * self.score(X) * self._n_rows(X) + 2 * self._n_parameters()

    def sample(self, n_samples: int = 1) -> Tuple[np.ndarray, np.ndarray]:
        """Draw ``(X, y)`` with numpy's ``RandomState(random_state)``, as scikit-learn does."""
        self._check_fitted()
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
        _, d = self.means_.shape
        rng = check_random_state(self.random_state)
        pvals = np.asarray(self.weights_, dtype=np.float64)
        if pvals[:-1].sum() > 1.0:
            pvals = pvals / pvals.sum()
        counts = rng.multinomial(n_samples, pvals)
        means = np.asarray(self.means_, dtype=np.float64)
        covs = np.asarray(self.covariances_, dtype=np.float64)
        if self.covariance_type == "full":
            parts = [rng.multivariate_normal(m, c, int(s)) for m, c, s in zip(means, covs, counts)]
        elif self.covariance_type == "tied":
            parts = [rng.multivariate_normal(m, covs, int(s)) for m, s in zip(means, counts)]
        else:
            parts = [m + rng.standard_normal(size=(s, d)) * np.sqrt(c) for m, c, s in zip(means, covs, counts)]
        y = np.concatenate([np.full(int(s), i, dtype=np.int64) for i, s in enumerate(counts)])
        return np.vstack(parts), y
