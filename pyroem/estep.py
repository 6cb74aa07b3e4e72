"""The exact E-step: contract an enumerated trace to log Z and read every expectation off one backward pass.

log Z = log p(y | θ) is Pyro's plated sum-product contraction of the trace's log-factors
(:func:`pyro.ops.contract.contract_to_tensor`). Made autograd leaves, the factors give
``w_f = ∂ log Z / ∂ log f``: the posterior marginal over the enumerated variables factor f
touches, per plate element (gradient of a log-partition = expected sufficient statistics).

Each component of factors (:mod:`pyroem.factors`) is contracted by the cheapest exact route: a
single table (a mixture) by :mod:`pyroem.logsumexp`, a chain (vectorized or ``pyro.markov``) by
the chain kernels through :mod:`pyroem.chains`, a tree of latents one latent at a time, anything
else by Pyro's plated contraction.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Set

import torch
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.trace_struct import Trace

from .chain_kernels import chain_log_partition
from .chains import ChainDims, chain_dims, chain_of, contract_chain, markov_path, probe_filler
from .factors import Component, Factor, build_blocks, components, ordinal, packed_scale, single_leaf
from .handlers import is_enumerated_site, is_subsample_site, is_unscored
from .logsumexp import LogSumExp
from .packing import align, dims_of, pack_trace, sizes, with_dims
from .donation import is_donated


def _contract_component(comp: Component, dim_size: Dict[str, int], differentiable: bool = True,
                        chains: Sequence[ChainDims] = ()) -> torch.Tensor:
    """log Z of one component over its target plates (Pyro's plated sum-product contraction).

    A component that is a single leaf already in its target plates (a mixture: prior and
    likelihood summed into one block) needs only a logsumexp over its latent dims; one that
    holds a vectorized Markov chain is eliminated along time (:func:`pyroem.chains.contract_chain`).
    """
    chain = chain_of(comp, chains)
    if chain is not None:
        return contract_chain(comp, chain, dim_size, differentiable)
    if single_leaf(comp):
        b = comp.blocks[0]
        sum_at = [i for i, d in enumerate(b.dims) if d in comp.sum_dims]
        if differentiable:
            out = torch.logsumexp(b.tensor, dim=sum_at)
        else:  # the E-step: one backward pass for the posteriors, never a second derivative
            out = LogSumExp.apply(b.tensor, sum_at, b.scratch, *b.addends)
        return with_dims(out, "".join(d for d in b.dims if d not in comp.sum_dims))
    path = markov_path(comp, dim_size, differentiable)
    if path is not None:
        log_z = chain_log_partition(path.init, path.trans, path.emit, probe=path.probe, first_order=not differentiable)
        return with_dims(log_z.reshape(path.outer_shape), path.keep)
    forest = _contract_forest(comp)
    if forest is not None:
        return forest
    tree = OrderedDict()
    for b in comp.blocks:
        tree.setdefault(b.ordinal, []).append(b.tensor)
    return contract_to_tensor(tree, set(comp.sum_dims), comp.target, ring=LogRing(dim_to_size=dim_size))


def _contract_forest(comp: Component) -> Optional[torch.Tensor]:
    """log Z by eliminating one latent at a time, leaves first, where every latent lives in the
    component's target plates and no factor touches more than two latents that form no cycle
    (a single latent with observations in inner plates, a ``pyro.markov`` chain, a tree of
    latents): each block summed over its inner plates (a product of factors) first. None for
    any other structure."""
    keep = "".join(sorted(comp.target))
    factors = []
    home = set()
    for b in comp.blocks:
        inner = [i for i, d in enumerate(b.dims) if d not in comp.sum_dims and d not in comp.target]
        t = b.tensor.sum(inner) if inner else b.tensor
        dims = "".join(d for d in b.dims if d in comp.sum_dims or d in comp.target)
        latents = "".join(d for d in dims if d in comp.sum_dims)
        if len(latents) > 2:
            return None
        if b.ordinal == comp.target:
            home.update(latents)
        factors.append((latents, align(t, dims, latents + keep)))
    if home != comp.sum_dims:
        return None  # a latent inside an inner plate: summing that plate first would be wrong
    total = None
    while factors:
        degree: Dict[str, Set[str]] = {}
        for latents, _ in factors:
            for d in latents:
                degree.setdefault(d, set()).update(x for x in latents if x != d)
        if not degree:
            break
        v = min(degree, key=lambda d: len(degree[d]))
        if len(degree[v]) > 1:
            return None  # a cycle
        touching = [f for f in factors if v in f[0]]
        factors = [f for f in factors if v not in f[0]]
        out = next(iter(degree[v]), "")
        dims = v + out
        summed = None
        for latents, t in touching:
            t = align(t, latents + keep, dims + keep)
            summed = t if summed is None else summed + t
        factors.append((out, torch.logsumexp(summed, dim=0)))
    for latents, t in factors:
        total = t if total is None else total + t
    return with_dims(total, keep)


@dataclass
class EStep:
    """The contracted trace: log Z, its per-component pieces and the leaves holding posteriors."""

    trace: Trace
    log_likelihood: torch.Tensor
    components: List[Component]
    constant_sites: List[str]
    dim_size: Dict[str, int]
    site_ordinals: Dict[str, frozenset]
    enum_symbols: Dict[str, str]
    pieces: List[torch.Tensor] = field(default_factory=list)
    constant_factors: Dict[str, torch.Tensor] = field(default_factory=dict)
    total: float = float("nan")  # log_likelihood accumulated in float64


class TraceFactors(NamedTuple):
    """An enumerated trace as factors: the components to contract, the constant sites."""

    components: List[Component]
    chains: List[ChainDims]
    dim_size: Dict[str, int]
    site_ordinals: Dict[str, frozenset]
    enum_symbols: Dict[str, str]
    constant_sites: List[str]
    constant_factors: Dict[str, torch.Tensor]
    constant: object


def factor_components(trace: Trace) -> TraceFactors:
    """The trace's log-factors grouped into components connected through enumerated latents
    (a vectorized chain's first state linked to its shifted copy)."""
    pack_trace(trace)
    enum_symbols = {
        name: site["infer"]["_enumerate_symbol"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and is_enumerated_site(site)
    }
    sum_dims = set(enum_symbols.values())
    factors: List[Factor] = []
    constant_sites: List[str] = []
    constant_factors: Dict[str, torch.Tensor] = {}
    site_ordinals: Dict[str, frozenset] = {}
    constant = 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or is_subsample_site(site):
            continue
        site_ordinals[name] = ordinal(trace, site)
        if is_unscored(site):  # a chain's shifted copy: a latent to ask about, not a factor
            continue
        pk = site["packed"]
        if name in enum_symbols:
            t = pk["unscaled_log_prob"]
        else:
            t = pk["unscaled_log_prob"]
            if not sum_dims.intersection(dims_of(t)):
                t = None
            else:
                t = packed.scale_and_mask(t, mask=pk["mask"])
        if t is None or not sum_dims.intersection(dims_of(t)):
            constant = constant + site["log_prob"].sum()
            constant_sites.append(name)
            constant_factors[name] = pk["log_prob"]
            continue
        scratch = t is pk["unscaled_log_prob"] and is_donated(site["unscaled_log_prob"])
        factors.append(Factor(name, t, site_ordinals[name], packed_scale(site), scratch=scratch))
    chains = chain_dims(trace, getattr(trace, "markov_chains", {}), enum_symbols)
    links = [(a, p) for c in chains for a, p in zip(c.first, c.shifted)]
    comps = components(factors, sum_dims, links) if factors else []
    dim_size = sizes(f.tensor for f in factors)
    for name, site in trace.nodes.items():
        if site["type"] == "sample":
            for frame in site["cond_indep_stack"]:
                if frame.vectorized:
                    dim_size.setdefault(trace.plate_to_symbol[frame.name], frame.size)
    return TraceFactors(comps, chains, dim_size, site_ordinals, enum_symbols, constant_sites,
                        constant_factors, constant)


def contract_trace(trace: Trace, differentiable: bool = False) -> EStep:
    """Contract an enumerated trace (``log_prob`` already computed).

    With ``differentiable=False`` the factors are detached, made autograd leaves and the
    posterior of every leaf is stored in ``block.grad`` (one backward pass). With
    ``differentiable=True`` the result keeps its graph to the parameters, for
    ``log p(y | θ)`` that can itself be differentiated.
    """
    parts = factor_components(trace)
    comps, chains, dim_size = parts.components, parts.chains, parts.dim_size
    site_ordinals, enum_symbols = parts.site_ordinals, parts.enum_symbols
    constant_sites, constant_factors, constant = parts.constant_sites, parts.constant_factors, parts.constant
    pieces = []
    with torch.enable_grad():
        for comp in comps:
            chain = chain_of(comp, chains)
            fill = probe_filler(comp, chain, dim_size) if chain is not None and not differentiable else None
            build_blocks(comp, dim_size, site_ordinals, differentiable, fill,
                         apart=chain.shifted if chain is not None else "")
            if not differentiable:
                tree = not single_leaf(comp)  # only the single-leaf logsumexp takes addends
                for b in comp.blocks:
                    if tree:
                        b.materialize()
                    if b.fill is not None:
                        continue
                    b.tensor = with_dims(b.tensor.detach().requires_grad_(), b.dims)
            else:
                for b in comp.blocks:
                    with_dims(b.tensor, b.dims)
            pieces.append(_contract_component(comp, dim_size, differentiable, chains))
        scaled = []
        for comp, logz in zip(comps, pieces):
            if isinstance(comp.scale, torch.Tensor):
                s = align(comp.scale, dims_of(comp.scale), dims_of(logz))
                scaled.append((s * logz).sum())
            else:
                scaled.append(comp.scale * logz.sum())
        if not differentiable and pieces:
            total = sum(p.sum() for p in pieces)
            built = [b for comp in comps for b in comp.blocks if b.fill is None]
            grads = torch.autograd.grad(total, [b.tensor for b in built], allow_unused=True)
            for b, g in zip(built, grads):
                b.grad = torch.zeros_like(b.tensor) if g is None else g
    ll = sum(scaled, torch.zeros((), dtype=_dtype(trace), device=_device(trace))) + constant
    if not differentiable:
        ll = ll.detach()
    if not differentiable:
        scaled_pieces = [_scaled(comp, logz) for comp, logz in zip(comps, pieces)]
        # the same sum accumulated in float64: a float32 total resolves changes of only
        # eps·|log p(y|θ)|, far coarser than the per-element values it adds up
        total = float(sum((t.detach().sum(dtype=torch.float64) for t in scaled_pieces + list(constant_factors.values())),
                          torch.zeros((), dtype=torch.float64, device=ll.device)))
    else:
        scaled_pieces, total = [], float("nan")
    return EStep(trace, ll, comps, constant_sites, dim_size, site_ordinals, enum_symbols,
                 scaled_pieces, constant_factors, total)


def _scaled(comp: Component, logz: torch.Tensor) -> torch.Tensor:
    """A component's log Z per target-plate element, times its ``poutine.scale``."""
    dims = dims_of(logz)
    logz = logz.detach()
    if isinstance(comp.scale, torch.Tensor):
        out = align(comp.scale, dims_of(comp.scale), dims) * logz
    else:
        out = comp.scale * logz
    return with_dims(out, dims)


def _first_log_prob(trace: Trace) -> torch.Tensor:
    for site in trace.nodes.values():
        if site["type"] == "sample" and "log_prob" in site:
            return site["log_prob"]
    return torch.zeros(())


def _dtype(trace: Trace) -> torch.dtype:
    return _first_log_prob(trace).dtype


def _device(trace: Trace) -> torch.device:
    return _first_log_prob(trace).device
