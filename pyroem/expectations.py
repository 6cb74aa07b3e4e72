"""The ``expect`` object handed to closed-form updates: posterior marginals and joints of latents."""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from pyro.ops import packed

from .estep import EStep
from .factors import Block
from .packing import align, dims_of, reduce_to


class Expectations:
    """Posterior expectations at the parameters θₙ of the E-step.

    ``marginal(site)`` is ``p(x_site | y, θₙ)`` with shape ``batch + (K,)``, one row per
    plate element; ``joint(a, b)`` the joint of two latents that share a factor, shape
    ``batch + (K_a, K_b)``; ``log_likelihood`` is ``log p(y | θₙ)``.
    """

    def __init__(self, estep: EStep, start: Optional[object] = None) -> None:
        self._e = estep
        self._start = start  # the trace with autograd leaves the M-step starts from, if taken
        self._cache: Dict[Tuple[str, ...], torch.Tensor] = {}
        self._by_latent: Optional[Dict[str, List[Block]]] = None
        self._all_ranks: Optional[float] = None  # log p(y|θₙ) of every rank's shard, in a data-parallel fit

    @property
    def log_likelihood(self) -> torch.Tensor:
        return self._e.log_likelihood

    @property
    def trace(self):
        """The enumerated trace the E-step contracted (its subsample indices are Q's)."""
        return self._e.trace

    @property
    def start(self):
        """The trace at θₙ with the fitted parameters as autograd leaves, where the E-step took one
        (the autograd M-step starts from it), else None."""
        return self._start

    def log_likelihood_value(self) -> float:
        """``log p(y|θₙ)`` as a Python float, its terms summed in float64 whatever their dtype
        (a float32 total cannot resolve the small changes of a late EM step). In a data-parallel
        fit, the total over every rank's shard (``log_likelihood`` is this rank's part)."""
        return self._e.total if self._all_ranks is None else self._all_ranks

    def sum_over_ranks(self, total: float) -> "Expectations":
        """Record ``log p(y|θₙ)`` summed over the ranks of a data-parallel fit; returns ``self``."""
        self._all_ranks = float(total)
        return self

    def log_likelihood_by(self, plate: str) -> torch.Tensor:
        """``log p(y_i | θₙ)`` for each element i of ``plate``, shape ``(plate size,)``.

        Defined when the model factors over the plate (a batch of independent datasets, the
        data points of a mixture, the sequences of an HMM): every latent lives inside it.
        Observed sites outside the plate (priors of global MAP sites) are left out.
        """
        trace = self._e.trace
        if plate not in trace.plate_to_symbol:
            known = ", ".join(repr(p) for p in trace.plate_to_symbol) or "none"
            raise ValueError(f"log_likelihood_by: the model has no vectorized plate '{plate}' (plates: {known})")
        sym = trace.plate_to_symbol[plate]
        ll = self._e.log_likelihood
        out = torch.zeros(self._e.dim_size.get(sym, 1), dtype=ll.dtype, device=ll.device)
        for comp, piece in zip(self._e.components, self._e.pieces):
            dims = dims_of(piece)
            if sym not in dims:
                sites = ", ".join(f"'{f.site}'" for f in comp.factors)
                raise ValueError(
                    f"log_likelihood_by('{plate}'): the log-likelihood does not factor over the plate; "
                    f"sites {sites} share latents across its elements"
                )
            out = out + reduce_to(piece, dims, sym).reshape(out.shape)
        for t in self._e.constant_factors.values():
            dims = dims_of(t)
            if sym in dims:
                out = out + reduce_to(t, dims, sym).reshape(out.shape)
        return out

    @property
    def latent_sites(self) -> List[str]:
        return list(self._e.enum_symbols)

    def __contains__(self, site: str) -> bool:
        return site in self._e.enum_symbols

    def _symbol(self, site: str) -> str:
        if site not in self._e.enum_symbols:
            known = ", ".join(repr(s) for s in self._e.enum_symbols) or "none"
            raise KeyError(f"'{site}' is not an enumerated latent site of the model (latents: {known})")
        return self._e.enum_symbols[site]

    def _plates(self, site: str) -> str:
        sizes, to_dim = self._e.dim_size, self._e.trace.symbol_to_dim
        return "".join(sorted((d for d in self._e.site_ordinals[site] if sizes.get(d, 1) > 1), key=to_dim.get))

    def _blocks(self) -> Iterator[Block]:
        for comp in self._e.components:
            yield from comp.blocks

    def _holding(self, sym: str) -> List[Block]:
        """The leaves that hold the latent ``sym`` (indexed once)."""
        if self._by_latent is None:
            self._by_latent = {}
            for b in self._blocks():
                for d in b.dims:
                    self._by_latent.setdefault(d, []).append(b)
        return self._by_latent.get(sym, [])

    def _posterior(self, syms: str, ordinal: frozenset, plates: str, what: str) -> torch.Tensor:
        """Sum a leaf's posterior down to ``plates + syms`` (packed order)."""
        present = [s for s in syms if self._e.dim_size.get(s, 1) > 1]
        needed = set(present) | set(plates)
        best = None
        for b in (self._holding(present[0]) if present else self._blocks()):
            if b.ordinal == ordinal and needed <= set(b.dims):
                if best is None or b.tensor.numel() < best.tensor.numel():
                    best = b
        if best is None:
            raise ValueError(f"{what}: no factor of the model holds these latents together")
        target = plates + "".join(s for s in syms if s in best.dims)
        return reduce_to(best.posterior(), best.dims, target), target

    def _shape_out(self, t: torch.Tensor, dims: str, site: str, syms: str) -> torch.Tensor:
        """Unpack to ``batch + (K, ...)`` with batch the site's plate shape in Pyro's dim layout."""
        trace = self._e.trace
        site_d = trace.nodes[site]
        frames = {f.dim: f for f in site_d["cond_indep_stack"] if f.vectorized}
        depth = max((-d for d in frames), default=0)
        batch = []
        for d in range(-depth, 0):
            f = frames.get(d)
            batch.append(1 if f is None else self._e.dim_size.get(trace.plate_to_symbol[f.name], 1))
        ks = []
        for s in syms:
            ks.append(self._e.dim_size.get(s, 1))
        full = "".join(d for d in dims if d not in syms) + syms
        t = align(t, dims, full) if dims != full else t
        return t.reshape(batch + ks)

    def marginal(self, site: str) -> torch.Tensor:
        """Posterior marginal ``p(x_site = k | y)``, shape ``batch + (K,)``."""
        key = ("m", site)
        if key not in self._cache:
            sym = self._symbol(site)
            plates = self._plates(site)
            if self._e.dim_size.get(sym, 1) == 1:  # a single possible value: probability one
                ll = self._e.log_likelihood
                sizes = [self._e.dim_size[d] for d in plates]
                t = torch.ones(sizes, dtype=ll.dtype, device=ll.device)
                self._cache[key] = self._shape_out(t, plates, site, sym)
            else:
                t, dims = self._posterior(sym, self._e.site_ordinals[site], plates, f"marginal('{site}')")
                self._cache[key] = self._shape_out(t, dims, site, sym)
        return self._cache[key]

    def joint(self, a: str, b: str) -> torch.Tensor:
        """Posterior joint ``p(x_a = i, x_b = j | y)``, shape ``batch + (K_a, K_b)``."""
        key = ("j", a, b)
        if key not in self._cache:
            sa, sb = self._symbol(a), self._symbol(b)
            oa, ob = self._e.site_ordinals[a], self._e.site_ordinals[b]
            deeper = b if ob >= oa else a
            if not (ob >= oa or oa >= ob):
                raise ValueError(f"joint('{a}', '{b}'): the two sites sit in unrelated plates")
            if self._e.dim_size.get(sa, 1) == 1 or self._e.dim_size.get(sb, 1) == 1:
                # a latent with a single possible value is independent of everything
                self._cache[key] = self.marginal(a).unsqueeze(-1) * self.marginal(b).unsqueeze(-2)
                return self._cache[key]
            plates = self._plates(deeper)
            t, dims = self._posterior(sa + sb, self._e.site_ordinals[deeper], plates, f"joint('{a}', '{b}')")
            self._cache[key] = self._shape_out(t, dims, deeper, sa + sb)
        return self._cache[key]

    def expected_counts(self, a: str, b: Optional[str] = None) -> torch.Tensor:
        """Expected counts: ``marginal(a)`` (or ``joint(a, b)``) summed over every plate element,
        shape ``(K_a,)`` (or ``(K_a, K_b)``): Σ_i p(x_a,i = k | y), the expected number of
        transitions ``i → j`` for a chain's two states. Read from the smallest table that holds
        the latents, so a chain's transition counts never need the per-step joint."""
        key = ("c", a, b)
        if key not in self._cache:
            sites = (a,) if b is None else (a, b)
            syms = "".join(self._symbol(s) for s in sites)
            ordinals = [self._e.site_ordinals[s] for s in sites]
            deeper = max(ordinals, key=len)
            if not all(o <= deeper for o in ordinals):
                raise ValueError(f"expected_counts{sites}: the sites sit in unrelated plates")
            if any(self._e.dim_size.get(s, 1) == 1 for s in syms):
                per = self.marginal(a) if b is None else self.joint(a, b)
                out = per.reshape((-1,) + per.shape[per.dim() - len(sites):]).sum(0)
            else:  # the posterior of the smallest table holding them, with no plate kept
                out, _ = self._posterior(syms, deeper, "", f"expected_counts{sites}")
            self._cache[key] = out
        return self._cache[key]

    def site_weights(self) -> Dict[str, torch.Tensor]:
        """``w_f`` for every factor touching a latent, unpacked to the site's log_prob layout.

        ``Q(θ|θₙ) = Σ_f ⟨w_f, log f(θ)⟩`` pairs these with the masked, unscaled log-factors;
        ``w_f`` is the posterior over the factor's latents times the site's scale (along plates
        where the factor is only broadcast, the average over them: the same Q).
        """
        if "weights" not in self._cache:
            out = {}
            sym_to_dim = self._e.trace.symbol_to_dim
            for comp in self._e.components:
                sdims = dims_of(comp.scale) if isinstance(comp.scale, torch.Tensor) else ""
                for f in comp.factors:
                    fd = dims_of(f.tensor)
                    needed = set(fd) | set(sdims)
                    leaf = f.block
                    # a table only broadcast along plates (a chain's transition): its leaf holds
                    # the posterior summed over them, and since the factor is the same at every
                    # element of those plates, Q pairs it with their average (a stride-0 view)
                    spread = [d for d in fd if d not in leaf.dims]
                    if spread and (set(spread) & comp.sum_dims or sdims or not set(leaf.dims) <= set(fd)):
                        spread = []
                    if not spread and not needed <= set(leaf.dims):
                        leaf = next(b for b in comp.blocks if b.ordinal == f.ordinal and needed <= set(b.dims))
                    g = leaf.posterior()
                    if sdims:
                        g = g * align(comp.scale, sdims, leaf.dims)
                    elif comp.scale != 1.0:
                        g = g * comp.scale
                    if spread:
                        present = "".join(d for d in fd if d in leaf.dims)
                        n = math.prod(self._e.dim_size[d] for d in spread)
                        w = align(reduce_to(g, leaf.dims, present).detach() / n, present, fd).expand(f.tensor.shape)
                    else:
                        w = reduce_to(g, leaf.dims, fd).detach()
                    w._pyro_dims = fd
                    out[f.site] = packed.unpack(w, sym_to_dim)
            self._cache["weights"] = out
        return self._cache["weights"]

    @property
    def constant_sites(self) -> List[str]:
        """Sites whose log-factor touches no enumerated latent (weight = their own scale and mask)."""
        return list(self._e.constant_sites)
