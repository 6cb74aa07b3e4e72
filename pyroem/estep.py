"""The exact E-step: contract an enumerated trace to log Z and read every expectation off one backward pass.

log Z = log p(y | θ) is Pyro's plated sum-product contraction of the trace's log-factors
(:func:`pyro.ops.contract.contract_to_tensor`). Made autograd leaves, the factors give
``w_f = ∂ log Z / ∂ log f``: the posterior marginal over the enumerated variables factor f
touches, per plate element (gradient of a log-partition = expected sufficient statistics).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Union

import torch
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.trace_struct import Trace

from . import thresholds
from .chain_kernels import chain_log_partition
from .handlers import MarkovChain, is_enumerated_site, is_subsample_site, is_unscored
from .packing import align, dims_of, narrow_broadcast, pack_trace, sizes, with_dims
from .scratch import is_donated

Scale = Union[float, torch.Tensor]


@dataclass
class Factor:
    """One site's log-factor ``log f`` as a packed tensor, with the plates it lives in."""

    site: str
    tensor: torch.Tensor
    ordinal: frozenset
    scale: Scale
    block: Optional["Block"] = None
    scratch: bool = False  # its memory may take the posterior (see pyroem.donate)


@dataclass
class Block:
    """A contraction leaf: factors of one ordinal whose dims nest, summed (or a zero probe)."""

    dims: str
    ordinal: frozenset
    tensor: torch.Tensor
    grad: Optional[torch.Tensor] = None
    # E-step only: smaller factors (a mixture's prior) broadcast against ``tensor`` and added
    # inside the logsumexp, so the sum is never written out as a tensor of its own
    addends: List[torch.Tensor] = field(default_factory=list)
    scratch: bool = False  # ``tensor``'s memory is the E-step's to overwrite
    probe: bool = False  # zeros, there only for its gradient (a posterior at full resolution)
    # a probe not built: its posterior is computed when first asked for (``posterior()``)
    fill: Optional[Callable[[], None]] = None

    def posterior(self) -> torch.Tensor:
        """``∂ log Z / ∂ tensor``: the posterior over the block's latents, per plate element."""
        if self.grad is None and self.fill is not None:
            self.fill()
        return self.grad

    def materialize(self) -> None:
        """Fold the deferred ``addends`` into ``tensor``."""
        for a in self.addends:
            self.tensor = self.tensor + a
            self.scratch = True
        self.addends = []


@dataclass
class Component:
    """Factors connected through shared enumerated variables; they share one scale."""

    factors: List[Factor]
    sum_dims: Set[str]
    scale: Scale
    target: frozenset
    blocks: List[Block] = field(default_factory=list)


def _ordinal(trace: Trace, site: dict) -> frozenset:
    return frozenset(trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)


def _packed_scale(site: dict) -> Scale:
    scale = site["scale"]
    if isinstance(scale, torch.Tensor):
        if scale.numel() == 1:
            return float(scale)
        return packed.pack(scale.detach(), site["infer"]["_dim_to_symbol"])
    return float(scale)


def _same_scale(a: Scale, b: Scale) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a is b or (dims_of(a) == dims_of(b) and a.shape == b.shape and bool(torch.equal(a, b)))
    return False


def _components(factors: List[Factor], sum_dims: Set[str], links=()) -> List[Component]:
    """Partition factors into groups connected by shared enumerated dims (union-find); ``links``
    are pairs of dims that are one variable (a chain's first state and its shifted copy)."""
    parent: Dict[str, str] = {d: d for d in sum_dims}

    def find(d: str) -> str:
        while parent[d] != d:
            parent[d] = parent[parent[d]]
            d = parent[d]
        return d

    for f in factors:
        ds = [d for d in dims_of(f.tensor) if d in sum_dims]
        for d in ds[1:]:
            parent[find(d)] = find(ds[0])
    for a, b in links:
        parent[find(b)] = find(a)
    groups: Dict[str, List[Factor]] = OrderedDict()
    for f in factors:
        root = find(next(d for d in dims_of(f.tensor) if d in sum_dims))
        groups.setdefault(root, []).append(f)
    components = []
    for fs in groups.values():
        dims = {d for f in fs for d in dims_of(f.tensor) if d in sum_dims}
        scale = fs[0].scale
        for f in fs[1:]:
            if not _same_scale(scale, f.scale):
                raise ValueError(
                    f"sites '{fs[0].site}' and '{f.site}' depend on the same enumerated latent "
                    "but carry different poutine.scale factors; the exact E-step needs one "
                    "common scale for every site connected through a latent"
                )
        target = frozenset.intersection(*(f.ordinal for f in fs))
        if isinstance(scale, torch.Tensor) and not set(dims_of(scale)) <= target:
            raise ValueError(
                f"site '{fs[0].site}' has a poutine.scale that varies along a plate its "
                "enumerated latents are shared across; a tensor scale must vary only along "
                "plates that hold the whole latent structure (one weight per data point)"
            )
        components.append(Component(fs, dims, scale, target))
    return components


def _build_blocks(comp: Component, dim_size: Dict[str, int],
                  site_ordinals: Dict[str, frozenset], differentiable: bool,
                  fill: Optional[Callable[[], None]] = None, apart: str = "") -> None:
    """Sum factors of one ordinal whose dims nest into one leaf; add zero probes so that the
    posterior over every factor's variables is available at full plate resolution. Factors
    that touch a dim of ``apart`` (a chain's previous state) and factors that do not are kept in
    separate leaves (a chain's transitions and emissions, added in the recursion's own order).
    With ``fill`` (a chain component's E-step) tables only broadcast along plates keep their
    distinct entries, and probes are not built: ``fill`` computes them when first asked for."""
    # Largest first, contiguous before broadcast views: a block takes the memory layout of the
    # factor it starts from, and the posteriors read off it (responsibilities) inherit that layout.
    # blocks by one of their latents, so that a factor is compared only with blocks sharing one
    holding: Dict[str, List[Block]] = {}
    apart_set = set(apart)
    for f in sorted(comp.factors, key=lambda f: (-narrow_broadcast(f.tensor).numel(), not f.tensor.is_contiguous())):
        fd = dims_of(f.tensor)
        fset = set(fd)
        home = None
        side = bool(fset & apart_set)
        for b in holding.get(next(d for d in fd if d in comp.sum_dims), ()):
            if b.ordinal == f.ordinal and fset <= set(b.dims) and side == bool(set(b.dims) & apart_set):
                if home is None or b.tensor.numel() < home.tensor.numel():
                    home = b
        if home is None:
            t = f.tensor if differentiable else f.tensor.detach()
            home = Block(fd, f.ordinal, t, scratch=f.scratch and not differentiable)
            comp.blocks.append(home)
            for d in fd:
                if d in comp.sum_dims:
                    holding.setdefault(d, []).append(home)
        else:
            t = align(f.tensor if differentiable else f.tensor.detach(), fd, home.dims)
            small = narrow_broadcast(t)
            if (not differentiable and small.numel() < narrow_broadcast(home.tensor).numel()
                    and torch.result_type(home.tensor, small) == home.tensor.dtype):
                home.addends.append(small)
            else:
                home.tensor = home.tensor + t
                home.scratch = not differentiable
        f.block = home
    if differentiable:
        return
    if fill is not None:  # a table only broadcast along plates keeps just its distinct entries
        for b in comp.blocks:
            b.materialize()
            b.tensor, b.dims = _drop_broadcast(b.tensor.detach(), b.dims, comp.sum_dims)
    holding = {}
    for b in comp.blocks:
        for d in b.dims:
            if d in comp.sum_dims:
                holding.setdefault(d, []).append(b)
    for f in comp.factors:
        plates = {d for d in site_ordinals[f.site] if dim_size.get(d, 1) > 1}
        fd = dims_of(f.tensor)
        needed = set(fd) | plates
        near = holding.get(next(d for d in fd if d in comp.sum_dims), ())
        if not any(b.ordinal == f.ordinal and needed <= set(b.dims) for b in near):
            pdims = "".join(sorted(needed))
            shape = [dim_size[d] for d in pdims]
            # lazy: a stride-0 placeholder, filled by contracting again when first asked for
            t = f.tensor.new_zeros(()).expand(shape) if fill is not None else f.tensor.new_zeros(shape)
            comp.blocks.append(Block(pdims, f.ordinal, t, probe=True, fill=fill))


_EXP_FLOOR = {torch.float64: -700.0}  # others: -80


def _lse_piece(x: torch.Tensor, addends: List[torch.Tensor], dims: List[int], e: torch.Tensor,
               floor: float) -> tuple:
    """The posterior ``softmax(x + Σ addends)`` over ``dims`` written into ``e`` (exactly 0 where
    the exponent is at or below ``floor`` from the top), and ``(top, Σ exp(x + Σ addends - top))``."""
    if addends:
        torch.add(x, addends[0], out=e)
        for a in addends[1:]:
            e.add_(a)
    elif e.data_ptr() != x.data_ptr():
        e.copy_(x)
    top = e.amax(dims, keepdim=True)
    top.masked_fill_(~torch.isfinite(top), 0.0)
    # exp(max(e, floor)) - exp(floor): exactly 0 at and below the floor (log 0 included) and
    # off by exp(floor) (below any rounding) elsewhere; no subnormals, which are slow on CPUs
    e.sub_(top).clamp_min_(floor).exp_().sub_(math.exp(floor))
    total = e.sum(dims, keepdim=True)
    e.div_(total)  # the posterior, while the piece is in cache
    return top, total


class _LogSumExp(torch.autograd.Function):
    """``log Σ exp (x + Σ addends)`` over ``dims`` for the E-step. The forward runs in pieces
    along the largest kept dim (every pass over a piece stays in cache) and keeps the
    normalized posterior, so the backward is the posterior itself (scaled only when the
    incoming gradient is not all ones). ``addends`` are
    constants broadcasting against ``x``; the gradient is taken with respect to ``x`` only,
    which equals the gradient with respect to the sum. First derivatives only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: List[int], scratch: bool, *addends: torch.Tensor) -> torch.Tensor:
        dims = sorted(d % x.dim() for d in dims)
        floor = _EXP_FLOOR.get(x.dtype, -80.0)
        kept = [d for d in range(x.dim()) if d not in dims]
        # the posterior goes into x's own memory when x is scratch and dense, else into a new
        # tensor with x's memory layout
        e = x.detach() if scratch and x.is_contiguous() else torch.empty_like(x)
        along = max(kept, key=lambda d: x.shape[d]) if kept else None
        step = 0 if along is None else max(1, thresholds.LSE_PIECE * x.shape[along] // max(1, x.numel()))
        if along is None or x.device.type != "cpu" or step >= x.shape[along]:
            top, s = _lse_piece(x, list(addends), dims, e, floor)
        else:
            keep_shape = [1 if d in dims else n for d, n in enumerate(x.shape)]
            top, s = x.new_empty(keep_shape), x.new_empty(keep_shape)
            n = x.shape[along]
            for a in range(0, n, step):
                m = min(step, n - a)
                parts = [t if t.shape[along] == 1 else t.narrow(along, a, m) for t in addends]
                t_, s_ = _lse_piece(x.narrow(along, a, m), parts, dims, e.narrow(along, a, m), floor)
                top.narrow(along, a, m).copy_(t_)
                s.narrow(along, a, m).copy_(s_)
        ctx.save_for_backward(e)
        ctx.dims = dims
        ctx.n_addends = len(addends)
        out = s.log().add_(top)
        for d in reversed(dims):
            out = out.squeeze(d)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (e,) = ctx.saved_tensors
        for d in ctx.dims:
            grad = grad.unsqueeze(d)
        # e is not needed again: the posterior takes its memory. The E-step's gradient is a
        # broadcast 1 (log Z summed); checked on the CPU only, where reading it costs no sync
        ones = (e.device.type == "cpu" and all(st == 0 for st in grad.stride())
                and float(grad.reshape(-1)[0]) == 1.0)
        return (e if ones else e.mul_(grad), None, None) + (None,) * ctx.n_addends


def _single_leaf(comp: Component) -> bool:
    return len(comp.blocks) == 1 and comp.blocks[0].ordinal == comp.target


def _contract_component(comp: Component, dim_size: Dict[str, int], differentiable: bool = True,
                        chains: Sequence[ChainDims] = ()) -> torch.Tensor:
    """log Z of one component over its target plates (Pyro's plated sum-product contraction).

    A component that is a single leaf already in its target plates (a mixture: prior and
    likelihood summed into one block) needs only a logsumexp over its latent dims; one that
    holds a vectorized Markov chain is eliminated along time (:func:`_contract_chain`).
    """
    chain = _chain_of(comp, chains)
    if chain is not None:
        return _contract_chain(comp, chain, dim_size, differentiable)
    if _single_leaf(comp):
        b = comp.blocks[0]
        sum_at = [i for i, d in enumerate(b.dims) if d in comp.sum_dims]
        if differentiable:
            out = torch.logsumexp(b.tensor, dim=sum_at)
        else:  # the E-step: one backward pass for the posteriors, never a second derivative
            out = _LogSumExp.apply(b.tensor, sum_at, b.scratch, *b.addends)
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
    elif differentiable or shared:
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


def _chain_of(comp: Component, chains: Sequence["ChainDims"]) -> Optional["ChainDims"]:
    return next((c for c in chains if c.shifted[0] in comp.sum_dims), None)


def _drop_broadcast(t: torch.Tensor, dims: str, keep: Set[str]):
    """``t`` without the plate dims it is only expanded along (stride 0), and its dims."""
    drop = [i for i, (d, n, st) in enumerate(zip(dims, t.shape, t.stride())) if st == 0 and n > 1 and d not in keep]
    if not drop:
        return t, dims
    index = tuple(0 if i in drop else slice(None) for i in range(t.dim()))
    return t[index].contiguous(), "".join(d for i, d in enumerate(dims) if i not in drop)


def _probe_filler(comp: Component, chain: "ChainDims", dim_size: Dict[str, int]) -> Callable[[], None]:
    """Fill every lazy probe of a chain component: contract it again with the probes as zero
    leaves and take their gradients (the per-step pairwise posteriors)."""

    def fill() -> None:
        lazy = [b for b in comp.blocks if b.fill is not None and b.grad is None]
        probes = {id(b): with_dims(torch.zeros(b.tensor.shape, dtype=b.tensor.dtype, device=b.tensor.device)
                                   .requires_grad_(), b.dims) for b in lazy}
        with torch.enable_grad():
            log_z = _contract_chain(comp, chain, dim_size, False, probes)
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


def _chain_dims(trace: Trace, chains: Dict[str, MarkovChain], enum_symbols: Dict[str, str]) -> List[ChainDims]:
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


def _contract_chain(comp: Component, chain: ChainDims, dim_size: Dict[str, int],
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
        site_ordinals[name] = _ordinal(trace, site)
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
        factors.append(Factor(name, t, site_ordinals[name], _packed_scale(site), scratch=scratch))
    chains = _chain_dims(trace, getattr(trace, "markov_chains", {}), enum_symbols)
    links = [(a, p) for c in chains for a, p in zip(c.first, c.shifted)]
    comps = _components(factors, sum_dims, links) if factors else []
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
            chain = _chain_of(comp, chains)
            fill = _probe_filler(comp, chain, dim_size) if chain is not None and not differentiable else None
            _build_blocks(comp, dim_size, site_ordinals, differentiable, fill,
                          apart=chain.shifted if chain is not None else "")
            if not differentiable:
                tree = not _single_leaf(comp)  # only the single-leaf logsumexp takes addends
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
