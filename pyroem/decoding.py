"""MAP decoding of any model: the jointly most probable assignment of its enumerated latents.

``x* = argmax_x p(x, y | θ)``: the same plated contraction as the E-step with ``max`` in place of
``sum`` (max-product, Viterbi for a ``pyro.markov`` chain), followed back through its argmaxes;
Pyro's ``infer_discrete`` at temperature 0 does both on the model as pyroem traces it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

import pyro.poutine as poutine
import torch
from pyro.infer import infer_discrete

from .handlers import LatentPolicy, is_unscored
from .model_trace import ModelTracer, compute_log_prob
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


def decode(model: Callable, *args, **kwargs) -> Decoding:
    """The most probable joint assignment of the model's enumerated latents given its observations,
    at the current params (``pyroem.posterior`` gives the marginals instead)."""
    check_model(model)
    tracer = ModelTracer(model)
    tracer.ensure_probed(args, kwargs)
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
