"""Missing observations: NaN entries of observed sites integrated out of the likelihood.

``marginalize_missing(model)`` is an effect handler, like Pyro's ``poutine``: every observed
site of the model that holds NaN entries scores only its observed entries,
``p(y_obs | ·) = ∫ p(y_obs, y_mis | ·) dy_mis``, exactly where this integral has a closed form:

- scalar sites (no event dims): the NaN elements are masked;
- events of independent elements (``dist.Normal(...).to_event(1)`` and the like): the NaN elements
  of each event are masked;
- ``MultivariateNormal``, ``LowRankMultivariateNormal``, ``MultivariateStudentT``: each event
  is scored by the marginal of its observed coordinates, ``log N(y_o | μ_o, Σ_oo)`` (a Student t
  with the same degrees of freedom);
- a distribution with a method ``marginalize_missing(value, missing) -> (fn, value)`` (the protocol
  for a user's own distribution): what that method returns.

Events of other distributions with some entries missing are left out whole, with a warning.
``pyroem.EM(model, missing="marginalize")`` fits the wrapped model.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple

import torch
from pyro.distributions import Independent, MaskedDistribution, MultivariateStudentT, TorchDistribution, constraints
from pyro.distributions.torch_distribution import ExpandedDistribution
from pyro.distributions.util import broadcast_shape
from pyro.poutine.messenger import Messenger

from .packing import narrow_broadcast

__all__ = ["MarginalizeMissing", "ObservedMarginal", "marginalize_missing", "missing_patterns"]


class ObservedMarginal(TorchDistribution):
    """An elliptical distribution (``MultivariateNormal``, ``LowRankMultivariateNormal``,
    ``MultivariateStudentT``) scoring only the observed coordinates of each value, by its marginal
    on them: ``log N(y_o | μ_o, Σ_oo)`` (a Student t keeps its degrees of freedom), the coordinates
    flagged in ``missing`` (shaped like the values) integrated out. Rows are grouped by which
    coordinates they miss: one small distribution per group."""

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, base, missing: torch.Tensor, validate_args=None) -> None:
        self.base_dist = base
        self.missing = missing
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None) -> "ObservedMarginal":
        return ObservedMarginal(self.base_dist.expand(batch_shape), self.missing)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.base_dist.sample(sample_shape)

    @property
    def mean(self) -> torch.Tensor:
        return self.base_dist.mean

    def _marginal(self, df: Optional[torch.Tensor], loc: torch.Tensor, scale_tril: torch.Tensor):
        if df is None:
            return torch.distributions.MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)
        return MultivariateStudentT(df, loc, scale_tril, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        base = self.base_dist
        d = base.event_shape[0]
        batch = broadcast_shape(base.batch_shape, value.shape[:-1], self.missing.shape[:-1])
        r = value.dim() - 1                                  # the value's own batch dims: rows
        lead = batch[:len(batch) - r]                       # dims of the distribution's alone
        rows_shape = batch[len(batch) - r:]
        n = 1
        for s in rows_shape:
            n *= s
        x = value.expand(rows_shape + (d,)).reshape(n, d)
        gone = self.missing.expand(rows_shape + (d,)).reshape(n, d)
        factor = getattr(base, "_unbroadcasted_scale_tril", None)
        if factor is None:  # a low-rank normal: the factor of its full covariance
            factor = torch.linalg.cholesky(base.covariance_matrix)
        loc = _per_row(base.loc, len(batch), r, rows_shape, 1)
        scale_tril = _per_row(factor, len(batch), r, rows_shape, 2)
        df = None
        if isinstance(base, MultivariateStudentT):
            df = _per_row(base.df.expand(base.batch_shape), len(batch), r, rows_shape, 0)
        cov = scale_tril @ scale_tril.transpose(-1, -2)
        patterns, which = missing_patterns(gone)
        parts, order = [], []
        for p, pattern in enumerate(patterns):
            idx = torch.nonzero(which == p).squeeze(1)
            seen = torch.nonzero(~pattern).squeeze(1)
            order.append(idx)
            if seen.numel() == 0:  # nothing observed: the whole density integrates to one
                parts.append(x.new_zeros(lead + (idx.numel(),)))
                continue
            mu = _rows(loc, idx, 1)[..., seen]
            if seen.numel() == d:
                tril = _rows(scale_tril, idx, 2)
            else:
                tril, info = torch.linalg.cholesky_ex(_rows(cov, idx, 2)[..., seen, :][..., :, seen])
                if bool((info != 0).any()):
                    raise ValueError(f"a {type(base).__name__}'s covariance is not positive definite on the "
                                     "observed coordinates of some rows")
            marginal = self._marginal(None if df is None else _rows(df, idx, 0), mu, tril)
            parts.append(marginal.log_prob(x[idx][:, seen]).expand(lead + (idx.numel(),)))
        out = torch.cat(parts, -1)
        perm = torch.cat(order)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(n, device=perm.device)
        return out[..., inverse].reshape(lead + rows_shape)


def missing_patterns(gone: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of the bool matrix ``gone`` ``(n, D)`` (True: missing) and each row's
    index among them: ``(patterns (P, D), which (n,))``. Up to 62 coordinates a pattern is read
    as one integer, a 1-D ``unique`` (far faster than one over rows)."""
    d = gone.shape[-1]
    if d > 62:
        return torch.unique(gone, dim=0, return_inverse=True)
    bits = torch.arange(d, device=gone.device)
    codes, which = torch.unique((gone.long() << bits).sum(-1), return_inverse=True)
    return ((codes.unsqueeze(-1) >> bits) & 1).bool(), which


def _per_row(t: torch.Tensor, ndim: int, r: int, rows_shape: torch.Size, event_dims: int) -> torch.Tensor:
    """``t`` (batch dims + ``event_dims``) with its last ``r`` batch dims flattened into one row dim:
    of size 1 where ``t`` does not vary along them, else one entry per row."""
    t = narrow_broadcast(t, event_dims)  # a parameter expanded along rows (stride 0) stays one row
    batch = t.shape[:t.dim() - event_dims]
    event = t.shape[t.dim() - event_dims:]
    batch = torch.Size((1,) * (ndim - len(batch))) + batch
    t = t.reshape(batch + event)
    left, right = batch[:ndim - r], batch[ndim - r:]
    if all(s == 1 for s in right):
        return t.reshape(left + (1,) + event)
    return t.expand(left + rows_shape + event).reshape(left + (-1,) + event)


def _rows(t: torch.Tensor, idx: torch.Tensor, event_dims: int) -> torch.Tensor:
    """The rows ``idx`` of a tensor from :func:`_per_row` (its one shared row as it is)."""
    dim = t.dim() - event_dims - 1
    return t if t.shape[dim] == 1 else t.index_select(dim, idx)


def _fill(fn, value: torch.Tensor) -> torch.Tensor:
    """A number inside the support of ``fn`` (0, 1 or ½) standing in for the missing entries."""
    for v in (0.0, 1.0, 0.5):
        try:
            if bool(fn.support.check(value.new_tensor(v)).all()):
                return value.new_tensor(v)
        except (NotImplementedError, RuntimeError, ValueError):
            break
    return value.new_tensor(0.0)


def observed_part(fn, value: torch.Tensor, missing: torch.Tensor,
                  name: str = "") -> Tuple[object, torch.Tensor, Optional[torch.Tensor]]:
    """``(fn', value', mask)``: a distribution scoring only the observed entries of ``value``
    (``missing`` flags the others), the value with those entries filled in, and a mask over whole
    events (None when every event keeps some score)."""
    if hasattr(fn, "marginalize_missing"):
        new_fn, new_value = fn.marginalize_missing(value, missing)
        return new_fn, new_value, None
    event_dim = len(fn.event_shape)

    def filled() -> torch.Tensor:  # built only where it is returned
        return torch.where(missing, _fill(fn, value), value)

    if event_dim == 0:
        return fn, filled(), ~missing
    if isinstance(fn, ExpandedDistribution):
        inner, new_value, mask = observed_part(fn.base_dist, value, missing, name)
        return inner.expand(fn.batch_shape), new_value, mask
    if isinstance(fn, MaskedDistribution):
        inner, new_value, mask = observed_part(fn.base_dist, value, missing, name)
        return inner.mask(fn._mask), new_value, mask
    if isinstance(fn, (torch.distributions.MultivariateNormal, torch.distributions.LowRankMultivariateNormal,
                       MultivariateStudentT)):
        return ObservedMarginal(fn, missing), filled(), None
    if isinstance(fn, torch.distributions.Independent):
        base, dims = fn, 0
        while isinstance(base, torch.distributions.Independent):
            dims += base.reinterpreted_batch_ndims
            base = base.base_dist
        if not base.event_shape:  # independent elements: mask the missing ones
            return Independent(MaskedDistribution(base, ~missing), dims), filled(), None
    flat = missing.reshape(missing.shape[:missing.dim() - event_dim] + (-1,))
    seen = ~flat.any(-1)
    partial = flat.any(-1) & ~flat.all(-1)
    if bool(partial.any()):
        warnings.warn(f"site '{name}': {int(partial.sum())} event(s) of {type(fn).__name__} have some entries "
                      "missing; its entries do not factorize, so those events are left out whole (their "
                      "observed entries too)", RuntimeWarning, stacklevel=2)
    # a masked event still needs a value inside the support: the distribution's mean, or a draw
    with torch.no_grad():
        try:
            stand_in = fn.mean
            if not bool(torch.isfinite(stand_in).all()) or not bool(fn.support.check(stand_in).all()):
                raise ValueError
        except (NotImplementedError, ValueError, RuntimeError):
            stand_in = fn.sample()
    where = (~seen).reshape(seen.shape + (1,) * event_dim)
    return fn, torch.where(where, stand_in.to(value.dtype), value), seen


class MarginalizeMissing(Messenger):
    """NaN entries of observed sites integrated out (see the module's notes): each such site gets
    a distribution that scores its observed entries only, and its NaNs are replaced by a number
    inside the support."""

    def _pyro_sample(self, msg: dict) -> None:
        if not msg["is_observed"] or msg["done"]:
            return
        value = msg["value"]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            return
        missing = torch.isnan(value)
        if not bool(missing.any()):
            return
        fn, value, seen = observed_part(msg["fn"], value, missing, msg["name"])
        msg["fn"], msg["value"] = fn, value
        if seen is not None:
            mask = msg["mask"]
            msg["mask"] = seen if mask is None or mask is True else mask & seen


def marginalize_missing(fn: Optional[Callable] = None):
    """``marginalize_missing(model)``: the model with the NaN entries of its observed sites
    integrated out of the likelihood (exact for scalar sites, events of independent elements,
    multivariate normals and Student t); also usable as a context manager, as Pyro's handlers are."""
    messenger = MarginalizeMissing()
    return messenger(fn) if fn is not None else messenger
