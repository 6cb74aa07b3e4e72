"""Markov chains read out of a trace for the chain kernels: a vectorized chain (its first state,
its shifted copy and its current state along a time plate) or a ``pyro.markov`` path of
per-step factors, turned into ``chain_log_partition``'s ``init``, ``trans`` and ``emit`` tables."""
from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Set

import torch
from pyro.poutine.trace_struct import Trace

from . import thresholds
from .chain_kernels import chain_log_partition
from .factors import Component
from .handlers import MarkovChain
from .packing import align, dims_of, narrow_broadcast, with_dims


class MarkovPath(NamedTuple):
    """A component whose latents form a path ``x_0 — x_1 — … — x_{T-1}`` of equal sizes (a chain
    written with ``pyro.markov``) as ``chain_log_partition``'s tables: its factors stacked along
    the path, batched over the plates ``keep`` that hold it (``outer_shape``)."""

    latents: str  # the path's dims, in order
    init: torch.Tensor  # (B, K): the factors of x_0 alone
    trans: torch.Tensor  # (1 | B, T - 1, K, K): the factors of (x_{t-1}, x_t)
    emit: torch.Tensor  # (B, T - 1, K): the factors of x_t alone
    probe: Optional[torch.Tensor]  # (B, T - 1, K, K) zeros whose gradient is each step's pair posterior
    keep: str
    outer_shape: List[int]


class _StackedProbe(torch.autograd.Function):
    """Zeros ``(B, T, K, K)`` standing in for ``T`` step tables ``(K, K, *outer)``: the gradient
    it receives is handed back to each table, one step each (B = the product of ``outer``)."""

    @staticmethod
    def forward(ctx, outer_shape: List[int], *steps: torch.Tensor) -> torch.Tensor:
        ctx.outer_shape = list(outer_shape)
        k = steps[0].shape[0]
        return steps[0].new_zeros(()).expand(math.prod(outer_shape), len(steps), k, k)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        _, steps, k, _ = grad.shape
        g = grad.reshape(ctx.outer_shape + [steps, k, k]).movedim(-3, 0).movedim((-2, -1), (1, 2))
        return (None,) + tuple(g.unbind(0))


def markov_path(comp: Component, dim_size: Dict[str, int], differentiable: bool = True) -> Optional[MarkovPath]:
    """The component as a :class:`MarkovPath`, or None where its latents do not form one: every
    latent in the component's target plates, every factor touching one latent or two
    neighbours of the path, at least ``thresholds.PATH_FROM`` latents of one size. Each factor is summed
    over its inner plates first (observations in a plate of their own). Stacking keeps every
    block's own tensor in the graph, so the backward pass gives each step's posterior; a
    transition only broadcast along plates stays one table per step where the graph leads to
    the parameters (``differentiable``), not where the blocks are the E-step's leaves, whose
    gradients are posteriors per plate element."""
    n = len(comp.sum_dims)
    if n < thresholds.PATH_FROM or len({dim_size[d] for d in comp.sum_dims}) != 1:
        return None
    keep = "".join(sorted(comp.target))
    units: Dict[str, List[torch.Tensor]] = {}
    pairs: Dict[frozenset, List[tuple]] = {}
    home: Set[str] = set()
    for b in comp.blocks:
        latents = "".join(d for d in b.dims if d in comp.sum_dims)
        if len(latents) > 2:
            return None
        if b.ordinal == comp.target:
            home.update(latents)
        inner = [i for i, d in enumerate(b.dims) if d not in comp.sum_dims and d not in comp.target]
        t = b.tensor.sum(inner) if inner else b.tensor
        dims = "".join(d for d in b.dims if d in comp.sum_dims or d in comp.target)
        if len(latents) == 1:
            units.setdefault(latents, []).append(align(t, dims, latents + keep))
        else:
            pairs.setdefault(frozenset(latents), []).append((t, dims))
    if home != comp.sum_dims or len(pairs) != n - 1:
        return None
    neighbours: Dict[str, List[str]] = {d: [] for d in comp.sum_dims}
    for edge in pairs:
        a, b = sorted(edge)
        neighbours[a].append(b)
        neighbours[b].append(a)
    if any(len(v) > 2 for v in neighbours.values()):
        return None  # connected with n - 1 edges and no branching: a path
    ends = {d for d, v in neighbours.items() if len(v) == 1}
    # start from the end the model samples first
    start = next(d for f in comp.factors for d in dims_of(f.tensor) if d in ends)
    order = [start]
    while len(order) < n:
        order.append(next(d for d in neighbours[order[-1]] if len(order) < 2 or d != order[-2]))
    outer_shape = [dim_size.get(d, 1) for d in keep]
    k = dim_size[start]
    batch = math.prod(outer_shape)

    def unit(d: str) -> Optional[torch.Tensor]:
        ts = units.get(d)
        return None if ts is None else sum(ts[1:], ts[0])

    steps = []
    for prev, cur in zip(order, order[1:]):
        ts = [align(t, dims, prev + cur + keep) for t, dims in pairs[frozenset((prev, cur))]]
        steps.append(sum(ts[1:], ts[0]))
    narrowed = [narrow_broadcast(t) for t in steps]
    shared = all(m == 1 for t in narrowed for m in t.shape[2:])  # one table per step for every plate element
    probe = None
    if shared and not differentiable:
        # the E-step: the transitions enter as one table per step, detached; a zero probe in their
        # place gives each step's pair posterior per plate element back to its block
        probe = _StackedProbe.apply(outer_shape, *(t.expand([k, k] + outer_shape) for t in steps))
        steps = [t.detach() for t in narrowed]
    elif differentiable:  # the graph leads to the parameters: broadcast tables stay narrow
        steps = narrowed
    t_outer = [1] * len(keep) if shared else outer_shape
    trans = torch.stack([t.expand([k, k] + t_outer) for t in steps])          # (T-1, K, K, *outer)
    trans = trans.movedim((1, 2), (-2, -1)).movedim(0, -3).reshape(math.prod(t_outer), n - 1, k, k)
    first = unit(start)
    init = (first.expand([k] + outer_shape).movedim(0, -1).reshape(batch, k) if first is not None
            else trans.new_zeros((batch, k)))
    emits = [unit(d) for d in order[1:]]
    if any(e is not None for e in emits):
        zero = trans.new_zeros(())
        emit = torch.stack([(zero if e is None else e).expand([k] + outer_shape) for e in emits])  # (T-1, K, *outer)
        emit = emit.movedim(1, -1).movedim(0, -2).reshape(batch, n - 1, k)
    else:
        emit = trans.new_zeros((batch, n - 1, k))
    return MarkovPath("".join(order), init, trans, emit, probe, keep, outer_shape)


def chain_of(comp: Component, chains: Sequence["ChainDims"]) -> Optional["ChainDims"]:
    return next((c for c in chains if c.shifted[0] in comp.sum_dims), None)


def probe_filler(comp: Component, chain: "ChainDims", dim_size: Dict[str, int]) -> Callable[[], None]:
    """Fill every lazy probe of a chain component: contract it again with the probes as zero
    leaves and take their gradients (the per-step pairwise posteriors)."""

    def fill() -> None:
        lazy = [b for b in comp.blocks if b.fill is not None and b.grad is None]
        probes = {id(b): with_dims(torch.zeros(b.tensor.shape, dtype=b.tensor.dtype, device=b.tensor.device)
                                   .requires_grad_(), b.dims) for b in lazy}
        with torch.enable_grad():
            log_z = contract_chain(comp, chain, dim_size, False, probes)
            grads = torch.autograd.grad(log_z.sum(), list(probes.values()))
        for b, g in zip(lazy, grads):
            b.grad = g

    return fill


class ChainDims(NamedTuple):
    """A vectorized chain's enumerated variables as packed dims: the first state of each
    (``first``), its copy one step back (``shifted``) and the current state (``current``), in
    the same variable order, and the symbol of its time plate."""

    name: str
    time: str
    first: str
    shifted: str
    current: str
    sites: tuple  # the current-state site of each variable, for messages


def chain_dims(trace: Trace, chains: Dict[str, MarkovChain], enum_symbols: Dict[str, str]) -> List[ChainDims]:
    """The enumerated variables of each vectorized chain. A variable is found by its shifted
    copies (unscored enumerated sites named ``f"{variable}{suffix}"``), so chains traced by
    pyro.contrib.funsor's handler, which names its variables only under funsor's own
    enumeration, are read the same way."""
    shifted = {name for name in enum_symbols if trace.nodes[name]["infer"].get("_do_not_score")}
    out, covered = [], set()
    for chain in chains.values():
        lags = [str(s) for s in chain.suffixes[chain.history:-1]]
        variables = set(chain.variables)
        for name in shifted:
            for lag in lags:
                if name.endswith(lag):
                    variables.add(name[: -len(lag)])
        variables = sorted(v for v in variables if chain.sites(v)[-1] in enum_symbols)
        if not variables:
            continue
        covered.update(s for v in variables for s in chain.sites(v)[chain.history:-1])
        if chain.history != 1:
            raise ValueError(
                f"the vectorized Markov chain '{chain.name}' has history={chain.history}; pyroem's "
                "E-step eliminates vectorized chains of history 1. Write it as "
                f"`for t in pyro.markov(range(T), history={chain.history})`, which the engine contracts exactly")
        sites = [chain.sites(v) for v in variables]
        missing = [s for triple in sites for s in triple if s not in enum_symbols]
        if missing:
            raise ValueError(f"the vectorized Markov chain '{chain.name}': site '{missing[0]}' is not an "
                             "enumerated latent, but its later copies are")
        out.append(ChainDims(chain.name, trace.plate_to_symbol[chain.name],
                             "".join(enum_symbols[s[0]] for s in sites),
                             "".join(enum_symbols[s[1]] for s in sites),
                             "".join(enum_symbols[s[2]] for s in sites),
                             tuple(s[2] for s in sites)))
    stray = sorted(shifted - covered)
    if stray:
        raise ValueError(
            f"site '{stray[0]}' is an enumerated latent marked not to be scored (infer['_do_not_score']) "
            "that belongs to no vectorized Markov chain the engine knows; its factor would be "
            "left out of log p(y|θ). Use pyroem.vectorized_markov or pyro.markov for chains")
    return out


class ChainTables(NamedTuple):
    """A vectorized chain's factors as ``chain_log_partition`` takes them, batched over the
    plates ``keep`` that hold the chain (``outer_shape``); states flattened over the chain's
    variables (``ks`` values each)."""

    init: torch.Tensor
    trans: torch.Tensor
    emit: Optional[torch.Tensor]
    probe: Optional[torch.Tensor]
    keep: str
    outer_shape: List[int]
    ks: List[int]


def contract_chain(comp: Component, chain: ChainDims, dim_size: Dict[str, int],
                   differentiable: bool = True, probes: Optional[Dict[int, torch.Tensor]] = None) -> torch.Tensor:
    """log Z of a component holding a vectorized chain: :func:`chain_tables`, then
    :func:`chain_log_partition` along time."""
    tab = chain_tables(comp, chain, dim_size, differentiable, probes)
    log_z = chain_log_partition(tab.init, tab.trans, tab.emit, probe=tab.probe, first_order=not differentiable)
    return with_dims(log_z.reshape(tab.outer_shape), tab.keep)


def chain_tables(comp: Component, chain: ChainDims, dim_size: Dict[str, int],
                 differentiable: bool = True, probes: Optional[Dict[int, torch.Tensor]] = None) -> ChainTables:
    """The factors of the first step summed into ``init(x_0)``, those inside the time plate into
    per-step matrices ``trans_t(x_{t-1}, x_t)`` (factors that touch the previous state) and
    ``emit_t(x_t)`` (the others), every block summed over its inner plates first."""
    keep = "".join(sorted(comp.target))
    tau = chain.time
    if tau in comp.target:
        raise ValueError(f"the vectorized Markov chain '{chain.name}': its first step lies inside its own time plate")
    allowed_time = set(chain.shifted) | set(chain.current)
    init = trans = emit = probe = None
    for b in comp.blocks:
        tensor = b.tensor
        if b.fill is not None:  # a lazy probe: left out unless being filled
            if probes is None or id(b) not in probes:
                continue
            tensor = probes[id(b)]
        latents = [d for d in b.dims if d in comp.sum_dims]
        in_time = tau in b.ordinal
        allowed = allowed_time if in_time else set(chain.first)
        extra = [d for d in latents if d not in allowed]
        if extra:
            raise ValueError(
                f"the vectorized Markov chain '{chain.name}' (latents {', '.join(repr(s) for s in chain.sites)}) "
                f"shares a factor with another enumerated latent ({len(extra)} more dim(s)); the engine "
                "eliminates a vectorized chain whose steps hold only the chain's own states. Write the "
                "model with `pyro.markov`, which the engine contracts for any structure")
        outer = keep + (tau if in_time else "")
        inner = [i for i, d in enumerate(b.dims) if d not in comp.sum_dims and d not in outer]
        t = tensor.sum(inner) if inner else tensor
        dims = "".join(d for d in b.dims if d in comp.sum_dims or d in outer)
        if not in_time:
            t = align(t, dims, keep + chain.first)
            init = t if init is None else init + t
        elif set(latents) & set(chain.shifted):
            t = align(t, dims, keep + tau + chain.shifted + chain.current)
            if b.probe and probe is None and not differentiable:
                probe = t
            else:
                trans = t if trans is None else trans + t
        else:
            t = align(t, dims, keep + tau + chain.current)
            emit = t if emit is None else emit + t
    if differentiable and trans is not None:
        trans = narrow_broadcast(trans)  # a table only expanded along time or plates stays one table
    outer_shape = [dim_size.get(d, 1) for d in keep]
    ks = [dim_size[d] for d in chain.current]
    k = math.prod(ks)
    steps = dim_size.get(tau, 1)
    batch = math.prod(outer_shape)
    dtype_like = next(t for t in (init, trans, emit) if t is not None)
    if init is None:
        init = dtype_like.new_zeros(outer_shape + ks)
    init = init.expand(outer_shape + ks).reshape(batch, k)
    if trans is None:
        trans = dtype_like.new_zeros([1] * (len(keep) + 1) + ks + ks)
    t_batch = outer_shape if any(n > 1 for n in trans.shape[:len(keep)]) else [1] * len(keep)
    t_steps = steps if trans.shape[len(keep)] > 1 else 1
    trans = trans.expand(t_batch + [t_steps] + ks + ks).reshape(math.prod(t_batch), t_steps, k, k)
    if emit is not None:
        emit = emit.expand(outer_shape + [steps] + ks).reshape(batch, steps, k)
    elif t_steps != steps:
        emit = init.new_zeros((batch, steps, k))
    if probe is not None:
        probe = probe.expand(outer_shape + [steps] + ks + ks).reshape(batch, steps, k, k)
    return ChainTables(init, trans, emit, probe, keep, outer_shape, ks)
