"""MAP decoding of any model: the jointly most probable assignment of its enumerated latents.

``x* = argmax_x p(x, y | θ)``: the same plated contraction as the E-step with ``max`` in place of
``sum`` (max-product, Viterbi for a ``pyro.markov`` chain), followed back through its argmaxes;
Pyro's ``infer_discrete`` at temperature 0 does both on the model as pyroem traces it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import pyro.poutine as poutine
import torch
from pyro.infer import infer_discrete

from .arguments import tensor_arguments
from .chains import chain_of, chain_tables, markov_path
from .estep import factor_components
from .factors import build_blocks, single_leaf
from .handlers import LatentPolicy, is_unscored
from .model_trace import ModelTracer, compute_log_prob
from .packing import align, with_dims
from .viterbi import chain_viterbi
from .validation import check_model, require_observed


@dataclass
class Decoding:
    """What :func:`decode` returns: ``values[site]`` is the site's value in the most probable joint
    assignment (the shape of the site's value in an ordinary run of the model), ``log_prob`` is
    ``log p(x*, y | θ)`` (MAP sites' log prior included)."""

    values: Dict[str, torch.Tensor]
    log_prob: float

    def __getitem__(self, site: str) -> torch.Tensor:
        return self.values[site]


@tensor_arguments
def decode(model: Callable, *args, **kwargs) -> Decoding:
    """The most probable joint assignment of the model's enumerated latents given its observations,
    at the current params (``pyroem.posterior`` gives the marginals instead)."""
    check_model(model)
    tracer = ModelTracer(model)
    tracer.ensure_probed(args, kwargs)
    with torch.no_grad():  # max-product on the E-step's own tables where their structure allows
        trace = tracer.trace(args, kwargs)
    found = _decode_tables(trace, factor_components(trace))
    if found is not None and found[1] is not None:  # read off the tables: no second run of the model
        return Decoding({k: v.detach() for k, v in found[0].items()}, found[1])
    if found is not None:
        values = found[0]
    else:
        decoder = infer_discrete(LatentPolicy(enumerate=True)(model),
                                 first_available_dim=-1 - tracer.max_plate_nesting, temperature=0)
        with torch.no_grad():
            trace = poutine.trace(decoder).get_trace(*args, **kwargs)
        latents = [name for name, site in trace.nodes.items()
                   if site["type"] == "sample" and site["infer"].get("enumerate") == "parallel"
                   and not site["is_observed"]]
        values = {name: trace.nodes[name]["value"] for name in latents}
    # log p(x*, y): the model again, its latents fixed at x*; as in the contraction, a latent's
    # factor counts whole (its mask ignored) and observed factors as masked and scaled
    with torch.no_grad():
        fixed = poutine.trace(LatentPolicy(enumerate=False)(poutine.condition(model, data=values)))
        trace = fixed.get_trace(*args, **kwargs)
        require_observed(trace)
        compute_log_prob(trace)
        total = 0.0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or is_unscored(site):
                continue
            if name in values:
                scale = site["scale"]
                total += float((site["unscaled_log_prob"] * scale).sum())
            else:
                total += float(site["log_prob"].sum())
    return Decoding({k: v.detach() for k, v in values.items()}, total)


def _site_layout(t: torch.Tensor, dims: str, site: dict, trace) -> torch.Tensor:
    """``t`` (packed ``dims``, plate symbols) in the layout of the site's value: its plates at
    their Pyro dims, size 1 elsewhere."""
    frames = {f.dim: trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized}
    depth = max((-d for d in frames), default=0)
    order = [frames.get(d) for d in range(-depth, 0)]
    present = "".join(sym for sym in order if sym is not None and sym in dims)
    t = align(t, dims, present) if dims else t
    shape = [t.shape[present.index(sym)] if sym is not None and sym in present else 1 for sym in order]
    return t.reshape(shape)


def _decode_tables(trace, parts) -> Optional[Tuple[Dict[str, torch.Tensor], Optional[float]]]:
    """Max-product on the E-step's own tables: Viterbi along each vectorized chain and each
    ``pyro.markov`` path (``chain_viterbi``), an argmax over each lone latent's table. Also
    ``log p(x*, y)``: the maxima plus the constant sites (None where a component carries a tensor
    ``poutine.scale``; the caller then scores the model at x*). None where a component has another
    structure (the caller then runs Pyro's ``infer_discrete``); a model with a vectorized chain
    and such a component is refused."""
    by_symbol = {sym: name for name, sym in parts.enum_symbols.items()}
    values: Dict[str, torch.Tensor] = {}
    total = float(parts.constant) if not isinstance(parts.constant, torch.Tensor) else float(parts.constant.sum())
    scalar = True
    for comp in parts.components:
        chain = chain_of(comp, parts.chains)
        build_blocks(comp, parts.dim_size, parts.site_ordinals, differentiable=True,
                     apart=chain.shifted if chain is not None else "")
        for b in comp.blocks:
            with_dims(b.tensor, b.dims)
        scalar = scalar and not isinstance(comp.scale, torch.Tensor)
        if chain is not None:
            tab = chain_tables(comp, chain, parts.dim_size)
            score, states = chain_viterbi(tab.init, tab.trans, tab.emit)
            total += float(score.sum()) * (comp.scale if scalar else 1.0)
            for i in reversed(range(len(chain.current))):
                n = tab.ks[i]
                st = (states % n).reshape(tab.outer_shape + [states.shape[-1]])
                states = states // n
                first, shifted, current = (by_symbol[sym[i]] for sym in (chain.first, chain.shifted, chain.current))
                values[first] = _site_layout(st[..., 0], tab.keep, trace.nodes[first], trace)
                for name, part in ((shifted, st[..., :-1]), (current, st[..., 1:])):
                    values[name] = _site_layout(part, tab.keep + chain.time, trace.nodes[name], trace)
            continue
        if single_leaf(comp):
            b = comp.blocks[0]
            latent = [d for d in b.dims if d in comp.sum_dims]
            rest = "".join(d for d in b.dims if d not in comp.sum_dims)
            t = align(b.tensor, b.dims, rest + "".join(latent))
            best, flat = t.reshape(t.shape[:len(rest)] + (-1,)).max(-1)
            total += float(best.sum()) * (comp.scale if scalar else 1.0)
            for d in reversed(latent):
                n = parts.dim_size[d]
                values[by_symbol[d]] = _site_layout(flat % n, rest, trace.nodes[by_symbol[d]], trace)
                flat = flat // n
            continue
        path = markov_path(comp, parts.dim_size)
        if path is not None:  # a pyro.markov chain
            score, states = chain_viterbi(path.init, path.trans, path.emit)
            total += float(score.sum()) * (comp.scale if scalar else 1.0)
            for t, d in enumerate(path.latents):
                values[by_symbol[d]] = _site_layout(states[:, t].reshape(path.outer_shape), path.keep,
                                                    trace.nodes[by_symbol[d]], trace)
            continue
        if parts.chains:
            sites = ", ".join(sorted(f"'{by_symbol[d]}'" for d in comp.sum_dims))
            raise ValueError(f"decode: the latents {sites} form a structure the decoder of models with "
                             "vectorized Markov chains does not handle (chains and single latents per plate element)")
        return None
    return values, (total if scalar else None)
