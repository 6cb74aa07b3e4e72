"""``compare_svi``: EM and SVI on one model from one start."""
from __future__ import annotations

import numbers
import time
from typing import Any, Callable, List, Mapping, Optional

import numpy as np
import pyro
import torch
from pyro.infer import ELBO, TraceEnum_ELBO
from pyro.optim import PyroOptim

from ..em import EM
from ..validation import check_model
from .results import Comparison, MethodTrace
from .store import param_values, restore_store, snapshot_store
from .svi import ExactELBO, ExactLogLikelihood, PointMassGuide, has_tensor_scale, plain_trace, run_svi

DEFAULT_LR = 0.05


def _check_steps(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _warm_up_optimizers() -> None:
    """torch imports part of its compiler the first time an optimizer is built (about a second);
    do it before any clock starts, so neither method is charged for it."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


def _run_em(em: EM, exact: ExactLogLikelihood, steps: int, names: List[str], args: tuple,
            kwargs: dict) -> MethodTrace:
    lls: List[float] = []
    seconds = [0.0]
    clock = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        lls.append(em.step(*args, **kwargs))  # log p(y|θ_n) at the params the step started from
        clock += time.perf_counter() - start
        seconds.append(clock)
    lls.append(exact.value(args, kwargs))
    detail = "with updates" if em.updates is not None else "autograd M-step"
    return MethodTrace("EM", np.arange(steps + 1), np.array(seconds), np.array(lls, dtype=np.float64),
                       param_values(names), detail)


def compare_svi(model: Callable, *args: Any, em_steps: int = 100, svi_steps: int = 1000,
                svi_optim: Optional[PyroOptim] = None,
                updates: Optional[Callable[..., Mapping[str, torch.Tensor]]] = None,
                svi_elbo: Optional[ELBO] = None, **kwargs: Any) -> Comparison:
    """Fit ``model(*args, **kwargs)`` by EM and by SVI from the same parameters and record how
    each climbs the exact ``log p(y|θ)``.

    EM: ``em_steps`` steps of ``pyroem.EM(model, updates)``. SVI: ``svi_steps`` steps of
    ``pyro.infer.SVI`` on ``config_enumerate(model)`` with ``TraceEnum_ELBO`` (discrete latents
    summed out in parallel, so the loss is ``-log p(y|θ)``), an empty guide or point masses at
    the model's MAP global sites (each in the param named like the site, where EM keeps it), and
    ``svi_optim`` (default ``pyro.optim.Adam({"lr": 0.05})``; give a fresh one). A model with a
    tensor ``poutine.scale`` (per-datum weights, counts), which ``TraceEnum_ELBO`` refuses, gets
    :class:`ExactELBO`, the same loss and gradient; ``svi_elbo`` overrides the choice.

    Both runs start from the param store as it is at the call (params the model has not created
    yet get their initial values first). ``log p(y|θ)`` (as ``pyroem.log_likelihood``, MAP sites'
    log prior included) is recorded at every step; the seconds count each method's own steps
    only, not SVI's log-likelihood evaluations nor one-time imports.

    After it returns, the param store holds the EM result (the SVI result is in
    ``result.svi.params``); if EM fails, it is put back as it was at the call.

    :returns: a :class:`Comparison` (``.em``, ``.svi``, ``.summary()``, ``.plot(path)``).
    """
    check_model(model)
    em_steps = _check_steps("em_steps", em_steps)
    svi_steps = _check_steps("svi_steps", svi_steps)
    if svi_optim is None:
        svi_optim = pyro.optim.Adam({"lr": DEFAULT_LR})
    elif not isinstance(svi_optim, PyroOptim):
        raise TypeError("svi_optim must be a pyro.optim optimizer such as pyro.optim.Adam({'lr': 0.05}), "
                        f"got {type(svi_optim).__name__}")
    if svi_elbo is not None and not isinstance(svi_elbo, ELBO):
        raise TypeError(f"svi_elbo must be None or a pyro.infer.ELBO, got {type(svi_elbo).__name__}")

    em = EM(model, updates=updates)
    tracer = em.tracer
    tracer.ensure_probed(args, kwargs)  # creates the model's params and MAP sites in the store
    names = list(tracer.param_names) + [n for n in tracer.map_sites if n not in tracer.param_names]
    trace = plain_trace(model, args, kwargs)
    if svi_elbo is None:
        svi_elbo = (ExactELBO() if has_tensor_scale(trace)
                    else TraceEnum_ELBO(max_plate_nesting=tracer.max_plate_nesting))
    guide = PointMassGuide(trace, tracer.map_sites, declare_only=isinstance(svi_elbo, ExactELBO))
    exact = ExactLogLikelihood(model, tracer.max_plate_nesting)
    _warm_up_optimizers()
    start = snapshot_store()

    try:
        em_run = _run_em(em, exact, em_steps, names, args, kwargs)
    except BaseException:
        restore_store(start)
        raise
    after_em = snapshot_store()
    restore_store(start)
    try:
        svi_run = run_svi(model, guide, svi_optim, svi_elbo, exact, svi_steps, names, args, kwargs)
    finally:
        restore_store(after_em)
    return Comparison(em_run, svi_run)
