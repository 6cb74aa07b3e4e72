"""Many independent Gaussian mixtures of one shape, fitted at once by ``pyroem.EM``.

The B datasets form an outer ``fits`` plate, so one E-step serves every mixture;
``expect.log_likelihood_by("fits")`` gives each its own lower bound, and a mixture whose lower
bound has converged keeps its parameters while the others go on (scikit-learn's stopping rule,
member by member).
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import TorchDistribution, constraints

import pyroem

from ..exceptions import ConvergenceWarning
from ..kmeans import TorchDraws, initial_resp
from .densities import (INV_SCALE_CONSTRAINTS, GaussianFeatures, components_to_refine, default_inv_scale,
                        estimate_gaussian_parameters, gaussian_statistics, inv_scale_from_covariances,
                        log_gaussian_table, parameters_from_statistics, precisions_cholesky)
from .store import drop_params, write_params

__all__ = ["BatchGMMUpdates", "BatchGaussianComponents", "batch_gmm_model", "fit_batch"]


class BatchGaussianComponents(TorchDistribution):
    """``x_bn ~ N(μ_{b,z}, Σ_{b,z})`` for B mixtures; ``log_prob`` builds the ``(B, N, K)`` table
    (:func:`log_gaussian_table`, batched) and reads off the entries ``z`` selects (``(K, B, N)``
    for Pyro's enumeration)."""

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, means: torch.Tensor, inv_scale: torch.Tensor, covariance_type: str,
                 component: torch.Tensor, batch_shape: Optional[torch.Size] = None, validate_args=None) -> None:
        self.means, self.inv_scale, self.covariance_type, self.component = means, inv_scale, covariance_type, component
        if batch_shape is None:
            batch_shape = torch.broadcast_shapes(component.shape, (means.shape[0], 1))
        super().__init__(torch.Size(batch_shape), means.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(BatchGaussianComponents, _instance)
        BatchGaussianComponents.__init__(new, self.means, self.inv_scale, self.covariance_type, self.component,
                                         torch.Size(batch_shape), validate_args=False)
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        table = log_gaussian_table(value, self.means, self.inv_scale, self.covariance_type).transpose(-1, -2)
        z = self.component.long()
        shape = torch.broadcast_shapes(z.shape, table.shape[:-1])
        out = table.expand(shape + table.shape[-1:]).gather(-1, z.expand(shape).unsqueeze(-1)).squeeze(-1)
        return pyroem.donate(out.expand(torch.broadcast_shapes(out.shape, self.batch_shape)))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape
            member = torch.arange(self.means.shape[0], device=self.means.device).unsqueeze(-1)
            z = self.component.long().expand(shape)
            eps = torch.randn(shape + self.means.shape[-1:], dtype=self.means.dtype, device=self.means.device)
            mu = self.means[member, z]
            if self.covariance_type in ("full", "tied"):
                lower = self.inv_scale[member, z] if self.covariance_type == "full" else self.inv_scale[member].expand(
                    shape + self.inv_scale.shape[-2:])
                dev = torch.linalg.solve_triangular(lower, eps.unsqueeze(-1), upper=False).squeeze(-1)
            elif self.covariance_type == "diag":
                dev = eps / self.inv_scale[member, z]
            else:
                dev = eps / self.inv_scale[member, z].unsqueeze(-1)
            return mu + dev


def batch_gmm_model(X: torch.Tensor, n_components: int, covariance_type: str = "full",
                    sample_weight: Optional[torch.Tensor] = None, prefix: str = "") -> None:
    """B independent Gaussian mixtures: ``z_bn ~ Categorical(weights_b)``, ``x_bn ~ N(means_b[z], Σ_b[z])``.

    ``X`` is ``(B, N, D)``; every param has a leading ``B`` dim. ``Σ`` is given by its inverse
    scale (``Σ⁻¹ = LᵀL``, lower-triangular ``L`` for full and tied; ``1/σ`` for diag and
    spherical). ``sample_weight`` ``(B, N)`` scales each datum's log-likelihood (zeros pad
    datasets of unequal sizes).
    """
    b, n, _ = X.shape
    k = n_components
    weights = pyro.param(prefix + "weights", lambda: X.new_full((b, k), 1.0 / k), constraint=constraints.simplex)
    means = pyro.param(prefix + "means", lambda: X[:, torch.linspace(0, n - 1, k, device=X.device).long()].clone())
    inv_scale = pyro.param(prefix + "inv_scale", lambda: default_inv_scale(X, k, covariance_type),
                           constraint=INV_SCALE_CONSTRAINTS[covariance_type])
    if sample_weight is None:
        mask, scale = True, 1.0
    else:  # Pyro's scale must be positive: zero weights become a mask
        mask = sample_weight > 0
        scale = torch.where(mask, sample_weight, torch.ones_like(sample_weight))
    with pyro.plate("fits", b, dim=-2), pyro.plate("data", n, dim=-1), \
            poutine.mask(mask=mask), poutine.scale(scale=scale):
        z = pyro.sample("z", dist.Categorical(weights.unsqueeze(-2)))
        pyro.sample("x", BatchGaussianComponents(means, inv_scale, covariance_type, z), obs=X)


class BatchGMMUpdates:
    """Closed-form M-step for :func:`batch_gmm_model`; fits marked inactive keep their params."""

    def __init__(self, reg_covar: float = 1e-6) -> None:
        self.reg_covar = reg_covar
        self.active: Optional[torch.Tensor] = None
        self.last: Optional[Dict[str, torch.Tensor]] = None

    def __call__(self, expect, X, n_components, covariance_type="full", sample_weight=None, prefix=""):
        w = None if sample_weight is None else sample_weight.unsqueeze(-2)
        centres = None if self.last is None else self.last["means"]
        refined = None if centres is None else components_to_refine(centres, self.last["inv_scale"], covariance_type)
        stats = gaussian_statistics(expect.marginal("z").transpose(-1, -2), GaussianFeatures(X, covariance_type), w,
                                    centres, refined)
        nk, means, cov = parameters_from_statistics(stats, self.reg_covar, covariance_type)
        new = {"weights": nk / nk.sum(-1, keepdim=True), "means": means, "covariances": cov}
        if self.active is not None and self.last is not None:
            new = {name: _where_active(self.active, value, self.last[name]) for name, value in new.items()}
        new["inv_scale"] = inv_scale_from_covariances(new["covariances"], covariance_type, batched=True)
        self.last = new
        return {prefix + name: new[name] for name in ("weights", "means", "inv_scale")}


def _where_active(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(active.reshape(active.shape + (1,) * (new.dim() - 1)), new, old)


# -- fitting ------------------------------------------------------------------------------------
def _stack(X, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The datasets as one finite ``(B, N, D)`` tensor (a 3-D array or a list of equal-shape 2-D ones)."""
    if isinstance(X, (list, tuple)):
        if not X:
            raise ValueError("X is an empty list: fit_batch needs at least one dataset")
        parts = [_as_float(x, f"X[{i}]", dtype, device) for i, x in enumerate(X)]
        for i, p in enumerate(parts):
            if p.dim() != 2:
                raise ValueError(f"X[{i}] must be a 2-D array (n_samples, n_features), got shape {tuple(p.shape)}")
            if p.shape != parts[0].shape:
                raise ValueError(f"every dataset must have the shape of X[0] {tuple(parts[0].shape)}, X[{i}] has "
                                 f"{tuple(p.shape)}; pad the shorter ones and give the padding sample_weight 0")
        t = torch.stack(parts)
    else:
        t = _as_float(X, "X", dtype, device)
        if t.dim() != 3:
            raise ValueError(f"X must be a 3-D array (n_datasets, n_samples, n_features) or a list of 2-D arrays, "
                             f"got shape {tuple(t.shape)}")
    if t.shape[0] < 1 or t.shape[1] < 1 or t.shape[2] < 1:
        raise ValueError(f"X has an empty dimension: shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        bad = torch.nonzero(~torch.isfinite(t).reshape(t.shape[0], -1).all(-1)).flatten().tolist()
        raise ValueError(f"X contains NaN or infinity (datasets {bad[:10]}); fit_batch takes complete data only "
                         "(fit missing values one dataset at a time with missing='marginalize')")
    return t


def _as_float(x, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
        return x.detach().to(device=device, dtype=dtype)
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be an array of real numbers, got dtype {arr.dtype}")
    return torch.as_tensor(arr.astype(np.float64), dtype=dtype, device=device)


def _batch_weights(sample_weight, shape, dtype, device) -> Optional[torch.Tensor]:
    if sample_weight is None:
        return None
    w = _as_float(sample_weight, "sample_weight", dtype, device)
    if w.shape != shape:
        raise ValueError(f"sample_weight must have shape {tuple(shape)} (n_datasets, n_samples), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("sample_weight must be finite and >= 0")
    if bool((w.sum(-1) <= 0).any()):
        bad = torch.nonzero(w.sum(-1) <= 0).flatten().tolist()
        raise ValueError(f"sample_weight sums to 0 for datasets {bad[:10]}")
    return w


def _member_init(value, check, b: int, single_shape: tuple, name: str):
    """A user init shared by every dataset (``single_shape``) or given per dataset (``(B,) + single_shape``)."""
    if value is None:
        return None
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.shape == single_shape:
        t = check(arr)
        return t.unsqueeze(0).expand((b,) + tuple(t.shape)).clone()
    if arr.shape == (b,) + single_shape:
        return torch.stack([check(a) for a in arr])
    raise ValueError(f"{name} must have shape {single_shape} (shared) or {(b,) + single_shape} (one per dataset), "
                     f"got {arr.shape}")


def _precision_parts(prec: torch.Tensor, covariance_type: str):
    """Covariances and ``inv_scale`` from precisions."""
    if covariance_type in ("full", "tied"):
        cov = torch.linalg.inv(prec)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        return cov, inv_scale_from_covariances(cov, covariance_type, batched=True)
    return 1.0 / prec, prec.sqrt()


class BatchStopping:
    """scikit-learn's stopping rule member by member, as the callback of ``pyroem.EM.fit(...,
    tol=None, final_m_step=True)``: each step reads every mixture's lower bound off the E-step
    (``log_likelihood_by("fits")``); a mixture whose lower bound changed by less than ``tol``
    takes that step's M-step and then keeps its parameters (``updates.active``); the fit ends
    once every mixture has converged."""

    def __init__(self, updates: BatchGMMUpdates, em, tol: float, wsum: torch.Tensor, offset: torch.Tensor) -> None:
        b = wsum.shape[0]
        self.updates, self.em, self.tol, self.wsum, self.offset = updates, em, tol, wsum, offset
        self.lb = torch.full((b,), -math.inf, dtype=wsum.dtype, device=wsum.device)
        self.n_iter = torch.zeros(b, dtype=torch.long, device=wsum.device)
        self.converged = torch.zeros(b, dtype=torch.bool, device=wsum.device)
        self.hist: List[torch.Tensor] = []

    def __call__(self, n_iter: int, log_likelihood: float, params) -> bool:
        active = ~self.converged
        new_lb = self.em.last_e_step.log_likelihood_by("fits") / self.wsum + (self.offset if n_iter == 0 else 0.0)
        self.updates.active = active
        change = new_lb - self.lb
        self.lb = torch.where(active, new_lb, self.lb)
        self.hist.append(torch.where(active, new_lb, torch.nan))
        self.n_iter = torch.where(active, torch.full_like(self.n_iter, n_iter + 1), self.n_iter)
        self.converged = self.converged | (active & (change.abs() < self.tol))
        return bool(self.converged.all())


def _run_batch(em, updates, args, start, tol: float, max_iter: int, wsum: torch.Tensor):
    """One EM run for every dataset: ``pyroem.EM.fit`` under :class:`BatchStopping`."""
    write_params(args[-1], start, args[2])
    updates.active, updates.last = None, dict(start)
    rule = BatchStopping(updates, em, tol, wsum, start["weights"].double().sum(-1).log().to(wsum.dtype))
    em.fit(*args, max_iter=max_iter, tol=None, callback=rule, final_m_step=True)
    return dict(updates.last), rule.n_iter, rule.lb, rule.hist, rule.converged


def fit_batch(est, X, sample_weight=None) -> list:
    """Fit ``est``'s hyper-parameters to each of B datasets in one batched EM; returns B fitted copies."""
    from .checks import (check_hyper_parameters, check_means_init, check_precisions_init,
                         check_random_state, check_weights_init, precisions_shape,
                         resolve_device, resolve_dtype)

    check_hyper_parameters(est)
    first = X[0] if isinstance(X, (list, tuple)) and X else X
    dtype, device = resolve_dtype(est.dtype, first), resolve_device(est.device, first)
    Xt = _stack(X, dtype, device)
    b, n, d = Xt.shape
    k, ct = est.n_components, est.covariance_type
    w = _batch_weights(sample_weight, (b, n), dtype, device)
    counted = torch.full((b,), n, device=device) if w is None else (w > 0).sum(-1)
    if bool((counted < k).any()):
        raise ValueError(f"Expected n_samples >= n_components in every dataset but got n_components = {k}, "
                         f"n_samples = {int(counted.min())}")
    if est.max_iter < 1:
        raise ValueError(f"fit_batch needs max_iter >= 1, got {est.max_iter}")
    w_init = _member_init(est.weights_init, lambda a: check_weights_init(a, k, dtype, device), b, (k,), "weights_init")
    m_init = _member_init(est.means_init, lambda a: check_means_init(a, k, d, dtype, device), b, (k, d), "means_init")
    p_init = _member_init(est.precisions_init, lambda a: check_precisions_init(a, ct, k, d, dtype, device), b,
                          precisions_shape(ct, k, d), "precisions_init")
    wsum = torch.full((b,), float(n), dtype=dtype, device=device) if w is None else w.sum(-1)
    shift = (Xt.mean(1) if w is None else (w.unsqueeze(-1) * Xt).sum(1) / wsum.unsqueeze(-1))
    Xc = Xt - shift.unsqueeze(1)
    rs = check_random_state(est.random_state)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(rs.randint(2 ** 31 - 1)))
    prefix = f"GaussianMixtureBatch{id(est)}."
    updates = BatchGMMUpdates(est.reg_covar)
    args = (Xc, k, ct, w, prefix)
    em = pyroem.EM(batch_gmm_model, updates=updates, max_plate_nesting=2)
    best = None
    try:
        for _ in range(est.n_init):
            start = _initial(est, Xc, w, gen, (w_init, m_init, p_init), shift)
            params, n_iter, lb, hist, converged = _run_batch(em, updates, args, start, est.tol, est.max_iter, wsum)
            if best is None:
                best = {"params": params, "n_iter": n_iter, "lb": lb, "hist": hist, "converged": converged,
                        "scores": [lb]}
                continue
            better = lb > best["lb"]
            best["params"] = {name: _where_active(better, params[name], best["params"][name]) for name in params}
            best["n_iter"] = torch.where(better, n_iter, best["n_iter"])
            best["converged"] = torch.where(better, converged, best["converged"])
            best["hist"] = _merge_hist(better, hist, best["hist"])
            best["lb"] = torch.where(better, lb, best["lb"])
            best["scores"].append(lb)
        write_params(prefix, best["params"], ct)
        final = em.e_step(*args).log_likelihood_by("fits") / wsum
    finally:
        drop_params(prefix)
    n_bad = int((~best["converged"]).sum())
    if n_bad:
        warnings.warn(f"{n_bad} of {b} fits did not converge. Try different init parameters, or increase "
                      "max_iter, tol, or check for degenerate data.", ConvergenceWarning, stacklevel=3)
    return _fitted_copies(est, best, final, shift, dtype, device, d)


def _initial(est, Xc, w, gen, inits, shift) -> Dict[str, torch.Tensor]:
    w_init, m_init, p_init = inits
    ct = est.covariance_type
    weights = means = cov = None
    if w_init is None or m_init is None or p_init is None:
        resp = initial_resp(Xc, est.n_components, est.init_params, TorchDraws(gen), w)
        nk, means, cov = estimate_gaussian_parameters(Xc, resp, est.reg_covar, ct, w)
        weights = nk / (Xc.shape[1] if w is None else w.sum(-1, keepdim=True))
    weights = weights if w_init is None else w_init
    means = means if m_init is None else m_init - shift.unsqueeze(1)
    if p_init is None:
        inv = inv_scale_from_covariances(cov, ct, batched=True)
    else:
        cov, inv = _precision_parts(p_init, ct)
    return {"weights": weights, "means": means, "covariances": cov, "inv_scale": inv}


def _merge_hist(better: torch.Tensor, new: List[torch.Tensor], old: List[torch.Tensor]) -> List[torch.Tensor]:
    out = []
    for i in range(max(len(new), len(old))):
        a = new[i] if i < len(new) else torch.full_like(better, math.nan, dtype=new[0].dtype)
        o = old[i] if i < len(old) else torch.full_like(better, math.nan, dtype=old[0].dtype)
        out.append(torch.where(better, a, o))
    return out


def _fitted_copies(est, best, final, shift, dtype, device, d: int) -> list:
    ct = est.covariance_type
    p = best["params"]
    prec_chol = precisions_cholesky(inv_scale_from_covariances(p["covariances"], ct, batched=True), ct)
    if ct in ("full", "tied"):
        prec = prec_chol @ prec_chol.transpose(-1, -2)
    else:
        prec = prec_chol.square()
    cpu = {name: t.detach().cpu().numpy() for name, t in {
        "weights": p["weights"] / p["weights"].sum(-1, keepdim=True), "means": p["means"] + shift.unsqueeze(1),
        "covariances": p["covariances"], "prec_chol": prec_chol, "prec": prec, "shift": shift,
        "n_iter": best["n_iter"], "lb": best["lb"], "converged": best["converged"], "final": final,
        "hist": torch.stack(best["hist"], 1), "scores": torch.stack(best["scores"], 1)}.items()}
    out = []
    for i in range(len(cpu["weights"])):
        m = type(est)(**est.get_params())
        m.weights_, m.means_, m.covariances_ = cpu["weights"][i], cpu["means"][i], cpu["covariances"][i]
        m.precisions_cholesky_, m.precisions_ = cpu["prec_chol"][i], cpu["prec"][i]
        m.n_features_in_ = d
        m._shift = cpu["shift"][i]
        m._fit_dtype, m._fit_device = dtype, device
        m.n_iter_ = int(cpu["n_iter"][i])
        m.converged_ = bool(cpu["converged"][i])
        m.lower_bound_ = float(cpu["lb"][i])
        m.lower_bounds_ = [float(v) for v in cpu["hist"][i][: m.n_iter_]]
        m.history_ = m.lower_bounds_ + [float(cpu["final"][i])]
        m.init_scores_ = [float(v) for v in cpu["scores"][i]]
        out.append(m)
    return out
