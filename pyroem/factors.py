"""The E-step's factors: each site's log-factor as a packed tensor, grouped into components
connected through shared enumerated latents, and summed into contraction leaves (blocks)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set, Union

import torch
from pyro.ops import packed
from pyro.poutine.trace_struct import Trace

from .packing import align, dims_of, narrow_broadcast


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


def ordinal(trace: Trace, site: dict) -> frozenset:
    return frozenset(trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)


def packed_scale(site: dict) -> Scale:
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


def components(factors: List[Factor], sum_dims: Set[str], links=()) -> List[Component]:
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


def build_blocks(comp: Component, dim_size: Dict[str, int],
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
            b.tensor, b.dims = drop_broadcast(b.tensor.detach(), b.dims, comp.sum_dims)
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


def single_leaf(comp: Component) -> bool:
    return len(comp.blocks) == 1 and comp.blocks[0].ordinal == comp.target


def drop_broadcast(t: torch.Tensor, dims: str, keep: Set[str]):
    """``t`` without the plate dims it is only expanded along (stride 0), and its dims."""
    drop = [i for i, (d, n, st) in enumerate(zip(dims, t.shape, t.stride())) if st == 0 and n > 1 and d not in keep]
    if not drop:
        return t, dims
    index = tuple(0 if i in drop else slice(None) for i in range(t.dim()))
    return t[index].contiguous(), "".join(d for i, d in enumerate(dims) if i not in drop)
