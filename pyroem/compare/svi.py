"""The SVI side of the comparison: a point-mass guide for MAP sites, the exact ELBO, the SVI run."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, List, Mapping, Optional, Tuple

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO, SVI, config_enumerate
from pyro.optim import PyroOptim
from pyro.poutine.trace_struct import Trace
from torch.distributions import transform_to

from ..estep import contract_trace
from ..handlers import param_constraint, unconstrained
from ..model_trace import ModelTracer
from .results import MethodTrace
from .store import param_values


# -- the model, seen by each method -------------------------------------------------------
def plain_trace(model: Callable, args: tuple, kwargs: dict) -> Trace:
    """One run of the model as written (latents sampled), hidden from outer handlers."""
    with poutine.block():
        return poutine.trace(model).get_trace(*args, **kwargs)


def has_tensor_scale(trace: Trace) -> bool:
    """True if a sample site carries a non-scalar ``poutine.scale`` (per-datum weights, counts),
    which ``TraceEnum_ELBO`` refuses next to enumerated latents."""
    return any(site["type"] == "sample" and torch.is_tensor(site["scale"]) and site["scale"].dim() > 0
               for site in trace.nodes.values())


GUIDE_PREFIX = "compare_svi."


class PointMassGuide:
    """SVI's guide for the model's MAP global sites: a point mass at each, inside the site's
    plates, held in the param ``compare_svi.<site>`` (a guide cannot hold a param and a sample
    site of one name) and started from the param ``<site>`` where EM keeps the estimate; with no
    MAP site an empty guide. :meth:`sync` copies the values to ``<site>``, where
    ``pyroem.log_likelihood`` reads them.

    ``declare_only``: for :class:`ExactELBO`, which reads ``<site>`` itself: the guide only
    declares those params to the optimizer and samples nothing.
    """

    def __init__(self, trace: Trace, map_sites: Tuple[str, ...], declare_only: bool = False) -> None:
        self.declare_only = declare_only
        self.sites = []
        for name in map_sites:
            site = trace.nodes[name]
            frames = [(f.name, f.size, f.dim) for f in site["cond_indep_stack"] if f.vectorized]
            self.sites.append((name, site["fn"].event_dim, site["fn"].support, frames))

    def __call__(self, *args, **kwargs) -> None:
        store = pyro.get_param_store()
        for name, event_dim, support, frames in self.sites:
            if self.declare_only:
                pyro.param(name)
                continue
            value = pyro.param(GUIDE_PREFIX + name, lambda: store.get_param(name).detach().clone(),
                               constraint=support)
            with contextlib.ExitStack() as stack:
                for plate_name, size, dim in frames:
                    stack.enter_context(pyro.plate(plate_name, size, dim=dim))
                pyro.sample(name, dist.Delta(value, event_dim=event_dim))

    def sync(self) -> None:
        if self.declare_only:
            return
        store = pyro.get_param_store()
        with torch.no_grad():
            for name, *_ in self.sites:
                if GUIDE_PREFIX + name in store:
                    value = store.get_param(GUIDE_PREFIX + name)
                    to_store = transform_to(param_constraint(name, store)).inv
                    unconstrained(name).copy_(to_store(value))


class ExactLogLikelihood:
    """``log p(y|θ)`` of one model at the current params (``pyroem.log_likelihood``), the model's
    structure learned once instead of at every call."""

    def __init__(self, model: Callable, max_plate_nesting: Optional[int] = None) -> None:
        self.model = model
        self.tracer = ModelTracer(model, max_plate_nesting)

    def __call__(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return contract_trace(self.tracer.trace(args, kwargs), differentiable=True).log_likelihood

    def value(self, args: tuple, kwargs: dict) -> float:
        with torch.no_grad():
            return float(self(args, kwargs))


class ExactELBO(ELBO):
    """``-log p(y|θ)`` (MAP sites' log prior included) by pyroem's exact enumeration.

    With an empty guide, or point masses at MAP sites, this is ``TraceEnum_ELBO``'s loss and
    gradient; unlike it, it accepts a tensor ``poutine.scale`` (weighted or count-aggregated
    data). The MAP sites' values are read from the params named like the sites; the guide is
    run only to declare those params to the optimizer (``pyro.param(site)``) and must sample
    nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self._exact: Optional[ExactLogLikelihood] = None

    def _log_likelihood(self, model: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        if self._exact is None or self._exact.model is not model:
            self._exact = ExactLogLikelihood(model)
        return self._exact(args, kwargs)

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with torch.no_grad():
            return -float(self._log_likelihood(model, args, kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        guide(*args, **kwargs)
        ll = self._log_likelihood(model, args, kwargs)
        (-ll).backward()
        return -float(ll.detach())

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("ExactELBO sums the latents out exactly; it draws no traces")


# -- the two runs -----------------------------------------------------------------------
def _describe(elbo: ELBO, optim: PyroOptim) -> str:
    name = getattr(getattr(optim, "pt_optim_constructor", None), "__name__", type(optim).__name__)
    opts = getattr(optim, "pt_optim_args", None)
    if isinstance(opts, Mapping):
        name += "(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")"
    return f"{type(elbo).__name__}, {name}"


def run_svi(model: Callable, guide: PointMassGuide, optim: PyroOptim, elbo: ELBO,
            exact: ExactLogLikelihood, steps: int, names: List[str], args: tuple, kwargs: dict) -> MethodTrace:
    svi = SVI(config_enumerate(model, default="parallel"), guide, optim, elbo)
    lls = [exact.value(args, kwargs)]
    seconds = [0.0]
    clock = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        svi.step(*args, **kwargs)
        clock += time.perf_counter() - start
        seconds.append(clock)
        guide.sync()  # outside the clock, as is the log-likelihood
        lls.append(exact.value(args, kwargs))
    return MethodTrace("SVI", np.arange(steps + 1), np.array(seconds), np.array(lls, dtype=np.float64),
                       param_values(names), _describe(elbo, optim))
