"""Checks that run alongside the EM iterations."""
from __future__ import annotations

import math
import warnings
from typing import Mapping, Optional

import torch

from .handlers import is_map_site, is_unscored


class MonotonicityWarning(UserWarning):
    """log p(y|θ) went down between two EM steps by more than rounding."""


def rounding_slack(value: float, dtype: torch.dtype) -> float:
    """How much a log-likelihood of this size may move by rounding alone."""
    eps = torch.finfo(dtype).eps
    return 1e3 * eps * max(1.0, abs(value))


def check_monotone(previous: float, current: float, step: int, dtype: torch.dtype) -> bool:
    """Warn (naming the step) when ``current < previous`` beyond rounding; True when monotone."""
    drop = previous - current
    if drop > rounding_slack(previous, dtype):
        warnings.warn(
            f"log-likelihood decreased at step {step}: {previous:.10g} -> {current:.10g} "
            f"(by {drop:.3g}); EM steps never lower it, so an update is not a maximizer of Q",
            MonotonicityWarning,
            stacklevel=3,
        )
        return False
    return True


def _sites(names) -> str:
    names = list(names)
    shown = ", ".join(f"'{n}'" for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def explain_nonfinite(value: float, trace, params: Mapping[str, torch.Tensor]) -> str:
    """Why ``log p(y|θ)`` came out as ``value`` (NaN or ±inf): non-finite params or data, or the
    sites whose log-probabilities are NaN / +inf / -inf, and what to check."""
    bad_params = [n for n, v in params.items() if not bool(torch.isfinite(v.detach()).all())]
    if bad_params:
        return f"the parameter(s) {_sites(bad_params)} are not finite"
    bad_data, nan_sites, pos_sites, neg_sites = [], [], [], []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or is_unscored(site):
            continue
        v = site["value"]
        if (site["is_observed"] and not is_map_site(site) and torch.is_tensor(v)
                and v.is_floating_point() and not bool(torch.isfinite(v).all())):
            bad_data.append(f"'{name}' ({int((~torch.isfinite(v)).sum())} values)")
        lp = site.get("log_prob")
        if torch.is_tensor(lp):
            if bool(torch.isnan(lp).any()):
                nan_sites.append(name)
            if bool((lp == math.inf).any()):
                pos_sites.append(name)
            if bool((lp == -math.inf).any()):
                neg_sites.append(name)
    if bad_data:
        return (f"the observed data hold NaN/inf at site(s) {', '.join(bad_data)}; an infinite value is not a "
                "datum: check the data (NaN entries, missing values, are integrated out by "
                "EM(model, missing='marginalize'))")
    if math.isnan(value):
        where = f" at site(s) {_sites(nan_sites)}" if nan_sites else ""
        return (f"a log-probability is NaN{where}; check the data for NaN/inf and the model for "
                "undefined arithmetic such as 0·inf or inf - inf")
    if value > 0:
        where = f" at site(s) {_sites(pos_sites)}" if pos_sites else ""
        return (f"a density is infinite{where} (e.g. a scale of 0 at a data point): the "
                "likelihood is unbounded at these parameters")
    where = f"; -inf log-probabilities occur at site(s) {_sites(neg_sites)}" if neg_sites else ""
    return ("the data are impossible under the model at these parameters (an observation of "
            f"probability zero under every value of the latents){where}")


#: an observed site's scale below this fraction of its data's spread is reported as collapsing
COLLAPSE_FRACTION = 1e-3


def _scale_of(fn) -> Optional[torch.Tensor]:
    """The scale entries of a location-scale distribution (the Cholesky diagonal of a multivariate
    normal), None for other families."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    if isinstance(fn, torch.distributions.MultivariateNormal):
        return fn.scale_tril.diagonal(dim1=-2, dim2=-1)
    families = (torch.distributions.Normal, torch.distributions.LogNormal, torch.distributions.Laplace,
                torch.distributions.StudentT, torch.distributions.Cauchy)
    return fn.scale if isinstance(fn, families) else None


def warn_collapse(trace, params: Optional[Mapping[str, torch.Tensor]] = None) -> None:
    """Warn, naming the site and the smallest scale, where an observed site's scale has fallen
    below ``COLLAPSE_FRACTION`` of its data's spread: a component shrinking onto single data
    points, where the likelihood grows without bound (scikit-learn warns of singular covariances
    likewise)."""
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"] or is_map_site(site) or is_unscored(site):
            continue
        scale = _scale_of(site["fn"])
        value = site["value"]
        if scale is None or not isinstance(value, torch.Tensor) or value.numel() < 2:
            continue
        spread = float(value.detach().double().std())
        smallest = float(scale.detach().double().min())
        if spread > 0 and smallest < COLLAPSE_FRACTION * spread:
            # the fitted params holding that value (the scale itself, or its square for a variance)
            holders = [n for n, p in (params or {}).items() if p.numel() and p.is_floating_point() and any(
                math.isclose(float(p.detach().double().abs().min()), v, rel_tol=1e-4)
                for v in (smallest, smallest ** 2))]
            which = f" (the param {', '.join(repr(h) for h in holders)})" if holders else ""
            warnings.warn(
                f"at site '{name}' a scale fell to {smallest:.3g}{which} while its data spread {spread:.3g}: a "
                "component may be shrinking onto single data points, where the likelihood grows without "
                "bound, so the fit's log-likelihood means little. Use fewer components, put a prior on "
                "the scale (a MAP site), or keep it above a floor", RuntimeWarning, stacklevel=4)
