"""The exact M-step of parameters that enter the model only as probabilities or rates of sites.

A simplex parameter ``p`` used only as ``Categorical`` probabilities (indexed, expanded, gathered:
any selection of its rows) contributes ``Σ_k c_k log p_k`` to Q, with ``c`` the expected counts,
so ``argmax_p Q = c / Σ c``. A ``unit_interval`` parameter used only as ``Bernoulli`` or
``Binomial`` probabilities contributes ``a log p + b log(1 - p)``: ``argmax = a / (a + b)``. A
``positive`` parameter used only as ``Poisson`` or ``Exponential`` rates contributes
``a log λ - b λ``: ``argmax = a / b``. A ``Dirichlet`` or ``Beta`` prior on a MAP site adds its
concentrations minus one to the counts. ``Normal`` locations (real) and scales (positive) get
the weighted mean and variance of their observations (see :func:`_normal_updates`).

Which parameters qualify is read off the autograd graph of the trace taken at θₙ (the E-step's
own): between the parameter and each such site's probabilities only selection ops (indexing,
expanding, reshaping, ``torch.where``) may lie, and no other site's log-probability may depend on
it. The counts of each site are mapped back to the parameter by one vector-Jacobian product
through those selections.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

import torch
from pyro.distributions import (Bernoulli, Beta, Binomial, Categorical, Dirichlet, Exponential, Normal, Poisson,
                                constraints)
from pyro.distributions.torch import Independent
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.trace_struct import Trace

from .handlers import is_map_site, is_unscored
from .packing import broadcast_shape, narrow_broadcast
from .qfunction import site_weight

KINDS = ("categorical", "binary", "rate")

# Autograd nodes that only select, copy or rearrange entries: a count mapped back through them
# lands on the parameter entries the site used.
_SELECTIONS = frozenset({
    "IndexBackward0", "IndexSelectBackward0", "GatherBackward0", "ExpandBackward0", "SelectBackward0",
    "SliceBackward0", "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "AliasBackward0",
    "UnsqueezeBackward0", "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "SqueezeBackward3",
    "PermuteBackward0", "TransposeBackward0", "TBackward0", "CloneBackward0", "AsStridedBackward0",
    "WhereBackward0", "CatBackward0", "StackBackward0", "ToCopyBackward0", "UnbindBackward0",
    "SplitBackward0", "SplitWithSizesBackward0", "NarrowBackward0",
})


@dataclass
class _Use:
    """One site whose probabilities or rate depend on the parameters, with its expected counts."""

    param: torch.Tensor      # the site's probabilities or rate (a Categorical's: before normalizing)
    kind: str                # one of KINDS, or "loc" / "scale" of a Normal
    first: torch.Tensor      # expected counts per category; binary: successes; rate: a
    second: torch.Tensor     # binary: failures; rate: b (unused for a Categorical)
    site: str = ""
    stats: Optional[Dict[str, torch.Tensor]] = None  # a Normal's weighted residual sums


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


def _raw_categorical(p: torch.Tensor) -> Optional[Tuple[torch.Tensor, object]]:
    """The tensor a ``Categorical`` was given and the node of its normalization
    ``probs / probs.sum(-1)``, where ``p`` is that normalization (possibly expanded)."""
    node = p.grad_fn
    while node is not None and type(node).__name__ == "ExpandBackward0":
        node = node.next_functions[0][0]
    if node is None or type(node).__name__ != "DivBackward0":
        return None
    return node._saved_self, node


def _normal_uses(fn: Normal, w: torch.Tensor, value: torch.Tensor, name: str) -> List[_Use]:
    """A ``Normal`` site's loc and scale, where they depend on the parameters, with the weighted
    sums of its residuals ``d = y - loc`` at θₙ: Σ w, Σ w d, Σ w d², Σ w d / s², Σ w / s². The
    sums are taken down to the distinct entries of loc and scale (their broadcast dims summed),
    and mapped back to the parameters from there."""
    loc, scale = narrow_broadcast(fn.loc), narrow_broadcast(fn.scale)
    d = value.to(loc.dtype) - loc.detach()
    s2 = scale.detach() ** 2
    full = broadcast_shape(w.shape, d.shape, s2.shape)
    w_full, d_full = w.expand(full), d.expand(full)
    wd = w_full * d_full
    wd2 = wd * d_full
    taken: Dict[tuple, torch.Tensor] = {}

    def summed(what: str, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """``t`` summed down to ``shape``, once per shape (a location and a scale of one shape share it)."""
        key = (what, tuple(shape))
        if key not in taken:
            taken[key] = t.sum_to_size(shape)
        return taken[key]

    out = []
    if loc.requires_grad:
        shape = loc.shape
        sums = {"w": summed("w", w_full, shape), "wd": summed("wd", wd, shape), "wd2": summed("wd2", wd2, shape)}
        if broadcast_shape(shape, s2.shape) == shape:  # s² constant over what is summed
            sums["wd_s2"], sums["w_s2"] = sums["wd"] / s2, sums["w"] / s2
        else:
            sums["wd_s2"], sums["w_s2"] = (wd / s2).sum_to_size(shape), (w_full / s2).sum_to_size(shape)
        out.append(_Use(loc, "loc", w, w, name, {k: v.expand(shape) for k, v in sums.items()}))
    if scale.requires_grad:
        shape = scale.shape
        sums = {"w": summed("w", w_full, shape), "wd2": summed("wd2", wd2, shape)}
        out.append(_Use(scale, "scale", w, w, name, sums))
    return out


def _use(site: dict, weights: Mapping[str, torch.Tensor]) -> List[_Use]:
    """The site's probabilities, rate or Normal parameters, where they depend on the parameters,
    with its counts."""
    fn, w = _unwrap(site["fn"], site_weight(site, weights).detach())
    value = site["value"]
    if isinstance(fn, Normal) and (fn.loc.requires_grad or fn.scale.requires_grad):
        return _normal_uses(fn, w, value, site["name"])
    one = _count_use(fn, w, value)
    return [] if one is None else [one]


def _enumerated_counts(w: torch.Tensor, value: torch.Tensor, p: torch.Tensor) -> Optional[torch.Tensor]:
    """The counts of a Categorical site whose value is an enumeration ``arange(K)`` along one dim
    that ``p`` does not have (a chain's current state): that dim of the weights moved last, a
    view, where scattering would write a tensor ``K`` times the size of the weights."""
    k = p.shape[-1]
    big = [i for i, n in enumerate(value.shape) if n != 1]
    if len(big) != 1 or value.shape[big[0]] != k:
        return None
    e = big[0] - value.dim()                      # from the right, in the batch shape
    batch = p.shape[:-1]
    if -e <= len(batch) and batch[e] != 1:
        return None
    if not torch.equal(value.reshape(-1), torch.arange(k, device=value.device, dtype=value.dtype)):
        return None
    full = broadcast_shape(w.shape, value.shape, batch)
    counts = w.to(p.dtype).expand(full).movedim(e, -1)
    if -e <= len(batch):
        counts = counts.unsqueeze(e - 1)  # p's batch keeps a size-1 dim there
    extra = counts.dim() - 1 - len(batch)   # dims left of p's batch, which p broadcasts along
    return counts.sum(list(range(extra))) if extra > 0 else counts


def _count_use(fn, w: torch.Tensor, value: torch.Tensor) -> Optional[_Use]:
    if isinstance(fn, Categorical) and "probs" in fn.__dict__ and fn.probs.requires_grad:
        p = fn.probs
        found = _raw_categorical(p)
        if found is None:
            return None
        raw = found[0]
        counts = _enumerated_counts(w, value, p)
        if counts is not None:
            return _Use(raw, "categorical", counts.sum_to_size(raw.shape), counts)
        shape = broadcast_shape(value.shape + (1,), p.shape)
        idx = value.long().unsqueeze(-1).expand(shape[:-1] + (1,))
        w_full = w.unsqueeze(-1).expand(shape[:-1] + (1,)).to(p.dtype)
        counts = p.new_zeros(shape[:-1] + (p.shape[-1],)).scatter_add_(-1, idx, w_full)
        return _Use(raw, "categorical", counts.sum_to_size(raw.shape), counts)
    if isinstance(fn, (Bernoulli, Binomial)) and "probs" in fn.__dict__ and fn.probs.requires_grad:
        p = fn.probs
        n = fn.total_count if isinstance(fn, Binomial) else 1.0
        v = value.to(p.dtype)
        full = broadcast_shape(w.shape, v.shape, p.shape)
        return _Use(p, "binary", (w * v).expand(full).sum_to_size(p.shape),
                    (w * (n - v)).expand(full).sum_to_size(p.shape))
    if isinstance(fn, (Poisson, Exponential)) and fn.rate.requires_grad:
        lam = fn.rate
        v = value.to(lam.dtype)
        full = broadcast_shape(w.shape, v.shape, lam.shape)
        weight = w.expand(full).sum_to_size(lam.shape)
        weighted = (w * v).expand(full).sum_to_size(lam.shape)
        # Poisson: Σ w (y log λ - λ); Exponential: Σ w (log λ - λ y)
        a, b = (weighted, weight) if isinstance(fn, Poisson) else (weight, weighted)
        return _Use(lam, "rate", a, b)
    return None


def _prior_counts(site: dict, value: torch.Tensor) -> Optional[Tuple[torch.Tensor, ...]]:
    """The concentration-minus-one a MAP site's Dirichlet or Beta prior adds to the counts; None
    where the prior is of another family or depends on the parameters."""
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


def _reached(node, leaf_ids: Dict[int, str], leaf_nodes: Dict[object, str], seen: Set[tuple],
             selecting: bool) -> Tuple[Set[str], Set[str], bool]:
    """The parameters reached backwards from ``node``: those reached through selection nodes only
    (when ``selecting``), those reached through any other node, and whether any other tensor
    that requires grad is reached. A parameter's value is an autograd leaf (``leaf_ids``, by
    ``id``) or the output of its constraint's transform (``leaf_nodes``, by node)."""
    selected: Set[str] = set()
    other: Set[str] = set()
    foreign = False
    todo = [(node, selecting)]
    while todo:
        n, clean = todo.pop()
        if n is None or (n, clean) in seen:
            continue
        seen.add((n, clean))
        name = leaf_nodes.get(n)
        if name is not None:
            (selected if clean else other).add(name)
            continue
        variable = getattr(n, "variable", None)
        if variable is not None:
            name = leaf_ids.get(id(variable))
            if name is not None:
                (selected if clean else other).add(name)
            else:
                foreign = True
            continue
        keeps = clean and type(n).__name__ in _SELECTIONS
        todo.extend((child, keeps) for child, _ in n.next_functions)
    return selected, other, foreign


def _vjp(outputs: List[torch.Tensor], cotangents: List[torch.Tensor],
         leaves: List[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    """``Σ_i cotangent_i · ∂output_i/∂leaf`` for each leaf (None where unused), as the gradient of
    one scalar: ``grad_outputs`` would cost a heavy import on first use."""
    if not outputs:
        return [None] * len(leaves)
    with torch.enable_grad():
        total = sum((o * c).sum() for o, c in zip(outputs, cotangents))
    return list(torch.autograd.grad(total, leaves, retain_graph=True, allow_unused=True))


def probability_updates(trace: Trace, weights: Mapping[str, torch.Tensor],
                        leaves: Dict[str, torch.Tensor],
                        kinds: Mapping[str, constraints.Constraint],
                        reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """Closed-form maximizers of Q for the parameters among ``leaves`` (constrained values that
    are autograd leaves of ``trace``) that qualify; see the module docstring. ``reduce`` sums
    the counts over the ranks of a data-parallel fit."""
    total = _summed(reduce)
    supported = (constraints.simplex, constraints.unit_interval, constraints.positive, constraints.real)
    names = [n for n, c in kinds.items() if n in leaves and any(c is k for k in supported)]
    if not names:
        return {}
    leaf_ids = {id(leaves[n]): n for n in names}
    leaf_nodes = {leaves[n].grad_fn: n for n in names if leaves[n].grad_fn is not None}
    uses: List[_Use] = []
    entries: List[object] = []   # the autograd node each site's counts enter at
    count_sites: Set[str] = set()
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not is_unscored(site) and not is_map_site(site):
            for use in _use(site, weights):
                uses.append(use)
                entries.append(use.param.grad_fn)
                count_sites.add(name)
    if not uses:
        return {}
    # the kinds of site whose probabilities select each leaf, and the leaves reached otherwise
    selected: Dict[str, Set[str]] = {}
    tainted: Set[str] = set()
    seen: Set[tuple] = set()
    use_selects: List[Set[str]] = []
    for use, entry in zip(uses, entries):
        if id(use.param) in leaf_ids:  # the site was handed the parameter itself
            sel = {leaf_ids[id(use.param)]}
        elif entry in leaf_nodes:
            sel = {leaf_nodes[entry]}
        else:
            sel, other, foreign = _reached(entry, leaf_ids, leaf_nodes, set(), True)
            tainted |= other
            if foreign:  # the site's probabilities also depend on parameters fitted otherwise
                tainted |= sel
        for name in sel:
            selected.setdefault(name, set()).add(use.kind)
        use_selects.append(set(sel))
    seen = set()
    priors: Dict[str, Tuple[torch.Tensor, ...]] = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or is_unscored(site) or name in count_sites:
            continue
        if is_map_site(site) and name in leaves:
            prior = _prior_counts(site, leaves[name])
            if prior is not None:
                priors[name] = prior
                continue
        lp = site.get("unscaled_log_prob")
        if isinstance(lp, torch.Tensor) and lp.grad_fn is not None:
            sel, other, _ = _reached(lp.grad_fn, leaf_ids, leaf_nodes, seen, False)
            tainted |= sel | other
        elif isinstance(lp, torch.Tensor) and id(lp) in leaf_ids:
            tainted.add(leaf_ids[id(lp)])
    eligible = [n for n in names if n not in tainted and len(selected.get(n, ())) == 1]
    normal = _normal_updates([n for n in eligible if selected[n] & {"loc", "scale"}], uses, use_selects,
                             leaves, kinds, priors, total)
    eligible = [n for n in eligible if not selected[n] & {"loc", "scale"}]
    if not eligible:
        return normal
    xs = [leaves[n] for n in eligible]
    with torch.no_grad():
        first = {k: _vjp([u.param for u in uses if u.kind == k], [u.first for u in uses if u.kind == k], xs)
                 for k in KINDS}
        second = {k: _vjp([u.param for u in uses if u.kind == k], [u.second for u in uses if u.kind == k], xs)
                  for k in ("binary", "rate")}
    out: Dict[str, torch.Tensor] = {}
    for i, name in enumerate(eligible):
        (kind,) = selected[name]
        x = leaves[name].detach()
        prior = priors.get(name, ())
        constraint = kinds[name]
        # a MAP site's prior enters once in a data-parallel fit: each rank's carries 1/ranks
        if constraint is constraints.simplex and kind == "categorical" and x.dim() >= 1 and x.shape[-1] >= 2:
            counts = total(first[kind][i] + prior[0] if prior else first[kind][i], x)
            counts = counts.clamp_min(0)
            new = _normalized(counts, counts.sum(-1, keepdim=True), x)
        elif constraint is constraints.unit_interval and kind == "binary":
            a, b = first[kind][i], second[kind][i]
            if prior:
                a, b = a + prior[0], b + prior[1]
            a, b = total(a, x).clamp_min(0), total(b, x).clamp_min(0)
            new = _normalized(a, a + b, x)
        elif constraint is constraints.positive and kind == "rate" and not prior:
            a, b = total(first[kind][i], x), total(second[kind][i], x)
            new = a / b if bool((b > 0).all() & (a > 0).all()) else None
        else:
            new = None
        if new is not None and bool(torch.isfinite(new).all()):
            out[name] = new
    out.update(normal)
    return out


def _summed(reduce: Optional[Callable[[torch.Tensor], torch.Tensor]]):
    """``total(t, like)``: ``t`` summed over the ranks (``None``, for a parameter no site of this
    rank reached, counts as zeros shaped ``like``); ``t`` itself in one process."""
    def total(t: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
        if reduce is None:
            return t
        return reduce(torch.zeros_like(like) if t is None else t)
    return total


def _normal_updates(names: List[str], uses: List[_Use], use_selects: List[Set[str]],
                    leaves: Dict[str, torch.Tensor], kinds: Mapping[str, constraints.Constraint],
                    priors: Mapping[str, tuple], total) -> Dict[str, torch.Tensor]:
    """Exact maximizers for ``Normal`` locations (real params) and scales (positive params):

    - a location whose sites have a fixed scale: ``μ = μₙ + Σ w d / s² / Σ w / s²``;
    - a scale whose sites have a fixed location: ``σ² = Σ w d² / Σ w``;
    - a location and a scale selected by the same map at every site: both at once,
      ``μ = μₙ + Σ w d / Σ w`` and ``σ² = Σ w d² / Σ w - (Σ w d / Σ w)²``.
    """
    if not names:
        return {}
    loc_uses = [(u, sel) for u, sel in zip(uses, use_selects) if u.kind == "loc"]
    scale_uses = [(u, sel) for u, sel in zip(uses, use_selects) if u.kind == "scale"]
    scale_at = {u.site: (u, sel) for u, sel in scale_uses}
    loc_at = {u.site: (u, sel) for u, sel in loc_uses}
    plan: Dict[str, Tuple[str, Optional[str]]] = {}  # name -> (case, partner)
    for name in names:
        if name in priors or name in plan:
            continue
        if kinds[name] is constraints.real:
            mine = [(u, sel) for u, sel in loc_uses if name in sel]
            if all(u.site not in scale_at for u, _ in mine):
                plan[name] = ("loc", None)
                continue
            partners = {frozenset(scale_at[u.site][1]) for u, _ in mine if u.site in scale_at}
            if len(partners) != 1 or any(u.site not in scale_at for u, _ in mine):
                continue
            (partner,) = partners
            if len(partner) != 1:
                continue
            (other,) = partner
            if (other not in names or kinds[other] is not constraints.positive or other in priors
                    or leaves[other].shape != leaves[name].shape):
                continue
            theirs = [(u, sel) for u, sel in scale_uses if other in sel]
            if {u.site for u, _ in theirs} != {u.site for u, _ in mine}:
                continue
            if _same_selection([u for u, _ in mine], [scale_at[u.site][0] for u, _ in mine],
                               leaves[name], leaves[other]):
                plan[name] = ("both", other)
                plan[other] = ("both", name)
        elif kinds[name] is constraints.positive:
            mine = [(u, sel) for u, sel in scale_uses if name in sel]
            if mine and all(u.site not in loc_at for u, _ in mine):
                plan[name] = ("scale", None)
    if not plan:
        return {}
    xs = [leaves[n] for n in plan]
    with torch.no_grad():
        def vjp(group, key):
            sums = _vjp([u.param for u, _ in group], [u.stats[key] for u, _ in group], xs)
            return {n: total(v, x) for n, v, x in zip(plan, sums, xs)}
        loc_w, loc_wd, loc_wd2 = vjp(loc_uses, "w"), vjp(loc_uses, "wd"), vjp(loc_uses, "wd2")
        loc_wd_s2, loc_w_s2 = vjp(loc_uses, "wd_s2"), vjp(loc_uses, "w_s2")
        scale_w, scale_wd2 = vjp(scale_uses, "w"), vjp(scale_uses, "wd2")
    out: Dict[str, torch.Tensor] = {}
    tiny = torch.finfo(xs[0].dtype).tiny
    for name, (case, partner) in plan.items():
        x = leaves[name].detach()
        if case == "loc":
            a, b = loc_wd_s2[name], loc_w_s2[name]
            if a is None or b is None:
                continue
            new = torch.where(b > tiny, x + a / b.clamp_min(tiny), x)
        elif case == "scale":
            a, b = scale_wd2[name], scale_w[name]
            if a is None or b is None:
                continue
            new = torch.where(b > tiny, (a / b.clamp_min(tiny)).sqrt(), x)
        elif kinds[name] is constraints.real:
            n, m1 = loc_w[name], loc_wd[name]
            if n is None or m1 is None:
                continue
            new = torch.where(n > tiny, x + m1 / n.clamp_min(tiny), x)
        else:
            n, m1, m2 = loc_w[partner], loc_wd[partner], loc_wd2[partner]
            if n is None or m1 is None or m2 is None:
                continue
            mean = m1 / n.clamp_min(tiny)
            new = torch.where(n > tiny, (m2 / n.clamp_min(tiny) - mean * mean).clamp_min(0).sqrt(), x)
        if bool(torch.isfinite(new).all()) and (kinds[name] is not constraints.positive or bool((new > 0).all())):
            out[name] = new
    if any(plan[n][0] == "both" and (n not in out or plan[n][1] not in out) for n in plan):
        for n in [n for n in plan if plan[n][0] == "both"]:
            out.pop(n, None)  # a location and its scale are updated together or not at all
    return out


def _same_selection(locs: List[_Use], scales: List[_Use], loc_leaf: torch.Tensor,
                    scale_leaf: torch.Tensor) -> bool:
    """Whether each site's locations and scales select the same entries of their two parameters:
    one random cotangent mapped back through both gives the same result only then."""
    if any(a.param.shape != b.param.shape for a, b in zip(locs, scales)):
        return False
    g = torch.Generator(device="cpu").manual_seed(0)
    r = [torch.rand(a.param.shape, generator=g, dtype=a.param.dtype).to(a.param.device) for a in locs]
    with torch.no_grad():
        (via_loc,) = _vjp([a.param for a in locs], r, [loc_leaf])
        (via_scale,) = _vjp([b.param for b in scales], r, [scale_leaf])
    if via_loc is None or via_scale is None:
        return False
    return bool(torch.allclose(via_loc, via_scale, rtol=1e-6, atol=0.0))


def _normalized(counts: torch.Tensor, total: torch.Tensor, old: torch.Tensor) -> Optional[torch.Tensor]:
    """``counts / total``; rows without counts keep ``old``.

    The callers clip counts at 0 first: a count below 0 comes from a prior concentration under 1
    where the data give no weight, and the posterior density then grows without bound towards
    a probability of 0, the value taken (kept just inside the support when written)."""
    tiny = torch.finfo(counts.dtype).tiny
    empty = total <= tiny
    new = torch.where(empty, old, counts / torch.where(empty, torch.ones_like(total), total))
    return new if bool(torch.isfinite(new).all()) else None
