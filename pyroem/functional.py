"""One-call exact quantities of a model at its current params."""
from __future__ import annotations

from typing import Callable, Dict

import torch

from .arguments import tensor_arguments
from .estep import contract_trace
from .expectations import Expectations
from .model_trace import ModelTracer


@tensor_arguments
def log_likelihood(model: Callable, *args, **kwargs) -> torch.Tensor:
    """Exact ``log p(y|θ)`` (plus the log prior of MAP sites), differentiable in the params."""
    tracer = ModelTracer(model)
    trace = tracer.trace(args, kwargs)
    return contract_trace(trace, differentiable=True).log_likelihood


@tensor_arguments
def posterior(model: Callable, *args, **kwargs) -> Dict[str, torch.Tensor]:
    """``{latent site: p(x_site = k | y, θ)}``, each of shape ``batch + (K,)``."""
    tracer = ModelTracer(model)
    with torch.no_grad():
        trace = tracer.trace(args, kwargs)
    expect = Expectations(contract_trace(trace))
    return {name: expect.marginal(name).detach() for name in expect.latent_sites}
