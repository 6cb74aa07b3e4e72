"""The parametric bootstrap: data simulated from the fitted model, the model fitted again to each
simulated data set, and the spread of the refitted params as their standard errors."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from .em import EM
from .handlers import is_map_site, is_unscored
from .model_trace import ModelTracer


@dataclass
class Bootstrap:
    """``estimates[name]``: the params refitted to each simulated data set, stacked ``(n, ...)``
    (tensors, or NumPy arrays from the bundled estimators; the summaries come in the same kind)."""

    estimates: Dict[str, Any]
    log_likelihoods: List[float]

    def standard_errors(self) -> Dict[str, Any]:
        """The standard deviation of each param over the refits."""
        return {n: _like(v, torch.as_tensor(v).double().std(0)) for n, v in self.estimates.items()}

    def conf_int(self, alpha: float = 0.05) -> Dict[str, tuple]:
        """Percentile intervals of level ``1 − alpha``."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
        q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
        return {n: tuple(_like(v, b) for b in torch.quantile(torch.as_tensor(v).double(), q, dim=0))
                for n, v in self.estimates.items()}


def _like(given: Any, out: torch.Tensor) -> Any:
    """``out`` as a NumPy array where the estimates are NumPy arrays."""
    return out.cpu().numpy() if isinstance(given, np.ndarray) else out


def bootstrap(model: Callable, *args: Any, n: int = 200, max_iter: int = 1000, tol: float = 1e-8,
              em_options: Dict[str, Any] = None, **kwargs: Any) -> Bootstrap:
    """Refit ``model`` to ``n`` data sets simulated from it at the param store's current (fitted)
    values: every observed site drawn anew (``poutine.uncondition``), MAP sites held at their
    estimates, latents drawn from their distributions; each refit starts from the fitted params.
    ``em_options`` go to :class:`EM` (e.g. ``updates``). The param store is left as it was.
    torch's RNG draws the data (seed it for repeatable results)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    em_options = dict(em_options or {})
    tracer = ModelTracer(model)
    tracer.ensure_probed(args, kwargs)
    names = tracer.names()
    store = pyro.get_param_store()
    saved = copy.deepcopy(store.get_state())  # the refits write into the store's tensors in place
    fitted_map = {s: store[s].detach() for s in tracer.map_sites}
    simulate = poutine.uncondition(poutine.condition(model, data=fitted_map))
    observed = _observed(model, args, kwargs)
    estimates: Dict[str, List[torch.Tensor]] = {name: [] for name in names}
    lls: List[float] = []
    try:
        for _ in range(n):
            store.set_state(copy.deepcopy(saved))
            with torch.no_grad(), poutine.block(hide_types=["param"]):
                trace = poutine.trace(simulate).get_trace(*args, **kwargs)
            data = {name: site["value"].detach() for name, site in trace.nodes.items()
                    if site["type"] == "sample" and name in observed}
            result = EM(poutine.condition(model, data=data), **em_options).fit(
                *args, max_iter=max_iter, tol=tol, **kwargs)
            for name in names:
                estimates[name].append(result.params[name].detach().clone())
            lls.append(result.log_likelihood)
    finally:
        store.set_state(copy.deepcopy(saved))
    return Bootstrap({name: torch.stack(v) for name, v in estimates.items()}, lls)


def _observed(model: Callable, args: tuple, kwargs: dict) -> set:
    """The model's observed sites (factors left out), from one plain run."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    return {name for name, site in trace.nodes.items()
            if site["type"] == "sample" and site["is_observed"] and not is_unscored(site) and not is_map_site(site)}
