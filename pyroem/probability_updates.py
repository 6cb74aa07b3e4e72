"""The exact M-step of parameters that enter the model only as probabilities or rates of sites.

A simplex parameter ``p`` used only as ``Categorical`` probabilities (indexed, expanded, gathered:
any linear selection of its rows) contributes ``Σ_k c_k log p_k`` to Q, with ``c`` the expected
counts, so ``argmax_p Q = c / Σ c``. A ``unit_interval`` parameter used only as ``Bernoulli`` or
``Binomial`` probabilities contributes ``a log p + b log(1 - p)``: ``argmax = a / (a + b)``. A
``positive`` parameter used only as ``Poisson`` or ``Exponential`` rates contributes
``a log λ - b λ``: ``argmax = a / b``. A ``Dirichlet`` or ``Beta`` prior on a MAP site adds its
concentrations minus one to the counts.

The counts are read off the trace at θₙ by vector-Jacobian products from each site's
probabilities back to the parameter, so any indexing between the two is handled by autograd. A
parameter qualifies only when the gradient of Q equals the gradient of that count form (it is
then used nowhere else), all its counts are non-negative and every row holds some count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from pyro.distributions import Bernoulli, Beta, Binomial, Categorical, Dirichlet, Exponential, Poisson, constraints
from pyro.distributions.torch import Independent
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.trace_struct import Trace

from .handlers import is_map_site, is_subsample_site
from .qfunction import site_weight


@dataclass
class _Use:
    """One site whose probabilities or rate depend on the parameters, with its expected counts."""

    param: torch.Tensor      # the site's probabilities (normalized for a Categorical) or rate
    kind: str                # "categorical", "binary" or "rate"
    first: torch.Tensor      # Categorical: expected counts per category; binary: successes; rate: a
    second: torch.Tensor     # Categorical: total count per row; binary: failures; rate: b


def _broadcast_shape(*shapes: torch.Size) -> torch.Size:
    """The shape ``shapes`` broadcast to (as ``torch.broadcast_shapes``, without its import cost)."""
    n = max(len(s) for s in shapes)
    out = [1] * n
    for s in shapes:
        for i, d in enumerate(s, n - len(s)):
            if d != 1:
                out[i] = d
    return torch.Size(out)


def _unwrap(fn, w: torch.Tensor) -> Tuple[object, torch.Tensor]:
    """The innermost distribution and the weight broadcast to its batch shape."""
    while True:
        if isinstance(fn, Independent):
            w = w.reshape(w.shape + (1,) * fn.reinterpreted_batch_ndims)
            fn = fn.base_dist
        elif isinstance(fn, MaskedDistribution):
            w = w * fn._mask
            fn = fn.base_dist
        elif isinstance(fn, ExpandedDistribution):
            fn = fn.base_dist
        else:
            return fn, w


def _uses(trace: Trace, weights: Mapping[str, torch.Tensor]) -> List[_Use]:
    uses = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or is_subsample_site(site) or is_map_site(site):
            continue
        fn, w = _unwrap(site["fn"], site_weight(site, weights).detach())
        value = site["value"]
        if isinstance(fn, Categorical) and "probs" in fn.__dict__ and fn.probs.requires_grad:
            p = fn.probs
            k = p.shape[-1]
            shape = _broadcast_shape(value.shape + (1,), p.shape)
            idx = value.long().unsqueeze(-1).expand(shape[:-1] + (1,))
            w_full = w.unsqueeze(-1).expand(shape[:-1] + (1,)).to(p.dtype)
            counts = p.new_zeros(shape[:-1] + (k,)).scatter_add_(-1, idx, w_full)
            counts = counts.sum_to_size(p.shape)
            uses.append(_Use(p, "categorical", counts, counts.sum(-1, keepdim=True)))
        elif isinstance(fn, (Bernoulli, Binomial)) and "probs" in fn.__dict__ and fn.probs.requires_grad:
            p = fn.probs
            n = fn.total_count if isinstance(fn, Binomial) else 1.0
            v = value.to(p.dtype)
            a = (w * v).expand(_broadcast_shape(w.shape, v.shape, p.shape)).sum_to_size(p.shape)
            b = (w * (n - v)).expand(_broadcast_shape(w.shape, v.shape, p.shape)).sum_to_size(p.shape)
            uses.append(_Use(p, "binary", a, b))
        elif isinstance(fn, (Poisson, Exponential)) and fn.rate.requires_grad:
            lam = fn.rate
            v = value.to(lam.dtype)
            full = _broadcast_shape(w.shape, v.shape, lam.shape)
            weight = w.expand(full).sum_to_size(lam.shape)
            weighted = (w * v).expand(full).sum_to_size(lam.shape)
            # Poisson: Σ w (y log λ - λ); Exponential: Σ w (log λ - λ y)
            a, b = (weighted, weight) if isinstance(fn, Poisson) else (weight, weighted)
            uses.append(_Use(lam, "rate", a, b))
    return uses


def _vjp(outputs: List[torch.Tensor], cotangents: List[torch.Tensor],
         leaves: List[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    """``Σ_i cotangent_i · ∂output_i/∂leaf`` for each leaf (None where unused), as the gradient of
    one scalar: ``grad_outputs`` would cost a heavy import on first use."""
    if not outputs:
        return [None] * len(leaves)
    with torch.enable_grad():
        total = sum((o * c).sum() for o, c in zip(outputs, cotangents))
    return list(torch.autograd.grad(total, leaves, retain_graph=True, allow_unused=True))


def _prior_counts(trace: Trace, name: str, value: torch.Tensor) -> Optional[Tuple[torch.Tensor, ...]]:
    """The concentration-minus-one a MAP site's Dirichlet or Beta prior adds; () for none;
    None where the prior is of another family or depends on the parameters."""
    site = trace.nodes.get(name)
    if site is None or site["type"] != "sample" or not is_map_site(site):
        return ()
    fn = site["fn"]
    while isinstance(fn, Independent):
        fn = fn.base_dist
    scale = site["scale"]
    if isinstance(fn, Dirichlet) and not fn.concentration.requires_grad:
        return (scale * (fn.concentration - 1).expand(value.shape),)
    if isinstance(fn, Beta) and not (fn.concentration1.requires_grad or fn.concentration0.requires_grad):
        return (scale * (fn.concentration1 - 1).expand(value.shape),
                scale * (fn.concentration0 - 1).expand(value.shape))
    return None


def _close(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> bool:
    tol = 1e-7 if a.dtype == torch.float64 else 1e-3
    return bool(((a - b).abs() <= tol * (scale + 1.0)).all())


def probability_updates(trace: Trace, weights: Mapping[str, torch.Tensor],
                        leaves: Dict[str, torch.Tensor], grads: Dict[str, torch.Tensor],
                        kinds: Mapping[str, constraints.Constraint]) -> Dict[str, torch.Tensor]:
    """Closed-form maximizers of Q for the parameters among ``leaves`` that qualify (see the module
    docstring); ``trace`` was taken at the values ``leaves`` with its graph, ``grads`` is ∂Q/∂leaf."""
    supported = (constraints.simplex, constraints.unit_interval, constraints.positive)
    names = [n for n, c in kinds.items() if n in leaves and any(c is k for k in supported)]
    if not names:
        return {}
    uses = _uses(trace, weights)
    if not uses:
        return {}
    xs = [leaves[n] for n in names]
    cat = [u for u in uses if u.kind == "categorical"]
    bin_ = [u for u in uses if u.kind == "binary"]
    rate = [u for u in uses if u.kind == "rate"]
    out: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        # Categorical: ∂/∂p of Σ c log p (normalized rows), and -C_r read off a cotangent on
        # each row's largest category (its other entries receive exactly minus the row total)
        g_cat = _vjp([u.param for u in cat],
                     [torch.where(u.param > 0, u.first / u.param, torch.zeros_like(u.param)) for u in cat], xs)
        top = [u.param.argmax(-1, keepdim=True) for u in cat]
        pick = [torch.zeros_like(u.param).scatter_(-1, t, u.second / u.param.gather(-1, t))
                for u, t in zip(cat, top)]
        neg_total = _vjp([u.param for u in cat], pick, xs)
        succ = _vjp([u.param for u in bin_], [u.first for u in bin_], xs)
        fail = _vjp([u.param for u in bin_], [u.second for u in bin_], xs)
        shape_a = _vjp([u.param for u in rate], [u.first for u in rate], xs)
        shape_b = _vjp([u.param for u in rate], [u.second for u in rate], xs)
    for i, name in enumerate(names):
        x, g = leaves[name].detach(), grads.get(name)
        if g is None:
            continue
        prior = _prior_counts(trace, name, x)
        if prior is None:
            continue
        others = [t for t in (g_cat[i], succ[i], shape_a[i]) if t is not None]
        if len(others) != 1:
            continue  # unused here, or used by sites of two kinds
        if kinds[name] is constraints.simplex and g_cat[i] is not None and x.dim() >= 1:
            k = x.shape[-1]
            if k < 2:
                continue
            other = (x.argmax(-1, keepdim=True) + 1) % k
            total = -neg_total[i].gather(-1, other)
            counts = x * g_cat[i] + x * total
            grad_model = g_cat[i]
            if prior:
                counts = counts + prior[0]
                grad_model = grad_model + prior[0] / x
            if not _close(g, grad_model, g.abs() + grad_model.abs()):
                continue
            counts = counts.clamp_min(0)
            new = _normalized(counts, counts.sum(-1, keepdim=True), x)
        elif kinds[name] is constraints.unit_interval and succ[i] is not None:
            a, b = succ[i], fail[i]
            if prior:
                a, b = a + prior[0], b + prior[1]
            inside = (x > 0) & (x < 1)
            grad_model = torch.where(inside, a / x - b / (1 - x), g)
            if not _close(g, grad_model, g.abs() + grad_model.abs()):
                continue
            a, b = a.clamp_min(0), b.clamp_min(0)
            new = _normalized(a, a + b, x)
        elif kinds[name] is constraints.positive and shape_a[i] is not None and not prior:
            a, b = shape_a[i], shape_b[i]
            grad_model = a / x - b
            if not _close(g, grad_model, g.abs() + (a / x).abs() + b.abs()) or not bool((b > 0).all()):
                continue
            new = a.clamp_min(0) / b
            if not bool((new > 0).all() & torch.isfinite(new).all()):
                continue
        else:
            continue
        if new is not None:
            out[name] = new
    return out


def _normalized(counts: torch.Tensor, total: torch.Tensor, old: torch.Tensor) -> Optional[torch.Tensor]:
    """``counts / total``; rows without counts keep ``old``.

    The callers clip counts at 0 first: a count below 0 comes from a prior concentration under 1
    where the data give no weight, and the posterior density then grows without bound towards
    a probability of 0, the value taken (kept just inside the support when written)."""
    tiny = torch.finfo(counts.dtype).tiny
    empty = total <= tiny
    new = torch.where(empty, old, counts / torch.where(empty, torch.ones_like(total), total))
    return new if bool(torch.isfinite(new).all()) else None
