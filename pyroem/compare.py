"""EM against stochastic variational inference (SVI) on one Pyro model, from the same start.

``compare_svi`` fits a model twice from one snapshot of the param store: by ``pyroem.EM`` and by
``pyro.infer.SVI`` with the discrete latents summed out exactly (``TraceEnum_ELBO``), so SVI does
gradient ascent on the same objective ``log p(y|θ)``. Both runs record the exact log-likelihood
against step and wall-clock time.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.infer import ELBO, SVI, TraceEnum_ELBO, config_enumerate
from pyro.optim import PyroOptim
from pyro.poutine.trace_struct import Trace
from torch.distributions import transform_to

from .em import EM
from .estep import contract_trace
from .handlers import param_constraint, unconstrained
from .model_trace import ModelTracer
from .validation import check_model

__all__ = ["Comparison", "ExactELBO", "MethodTrace", "compare_svi"]

DEFAULT_LR = 0.05
Snapshot = Dict[str, Tuple[torch.Tensor, constraints.Constraint]]


# -- results ------------------------------------------------------------------------------
@dataclass
class MethodTrace:
    """One method's run: ``log_likelihood[i]`` is ``log p(y|θ_i)`` after ``steps[i]`` steps,
    reached after ``seconds[i]`` of the method's own step time (``θ_0`` is the common start);
    ``params`` holds the final constrained values, ``detail`` says how the method ran."""

    method: str
    steps: np.ndarray
    seconds: np.ndarray
    log_likelihood: np.ndarray
    params: Dict[str, torch.Tensor]
    detail: str = ""

    @property
    def final_log_likelihood(self) -> float:
        return float(self.log_likelihood[-1])

    @property
    def best_log_likelihood(self) -> float:
        return float(np.nanmax(self.log_likelihood))  # a diverged SVI step records NaN

    def first_within(self, target: float, within: float) -> Optional[int]:
        """Index of the first entry with ``log_likelihood >= target - within`` (None if none)."""
        hits = np.flatnonzero(self.log_likelihood >= target - within)
        return int(hits[0]) if hits.size else None


class Summary(dict):
    """What :meth:`Comparison.summary` returns: a dict whose ``str`` is a small table."""

    def __str__(self) -> str:
        within = self["within"]
        lines = [f"EM vs SVI from log-likelihood {self['initial_log_likelihood']:.6f}; best seen "
                 f"{self['best_log_likelihood']:.6f} (by {self['best_method']})",
                 f"EM: {self['em']['detail']}; SVI: {self['svi']['detail']}",
                 f"{'method':<6} {'steps':>7} {'seconds':>9} {'final log-lik':>16}   "
                 f"within {within:g} of the best after"]
        for key in ("em", "svi"):
            row = self[key]
            reached = ("not reached" if row["steps_to_within"] is None
                       else f"{row['steps_to_within']} steps, {row['seconds_to_within']:.4g} s")
            lines.append(f"{row['method']:<6} {row['steps']:>7d} {row['seconds']:>9.4g} "
                         f"{row['final_log_likelihood']:>16.6f}   {reached}")
        return "\n".join(lines)


@dataclass
class Comparison:
    """Result of :func:`compare_svi`: the runs ``em`` and ``svi`` (:class:`MethodTrace` each)."""

    em: MethodTrace
    svi: MethodTrace

    @property
    def initial_log_likelihood(self) -> float:
        return float(self.em.log_likelihood[0])

    @property
    def best_log_likelihood(self) -> float:
        """The highest ``log p(y|θ)`` seen by either method."""
        return max(self.em.best_log_likelihood, self.svi.best_log_likelihood)

    def summary(self, within: float = 1e-3) -> Summary:
        """Per method: final and best log-likelihood, total steps and seconds, and the steps and
        seconds it took to come within ``within`` (absolute, log-likelihood units) of the best
        value either method saw (``None``: not reached). ``print`` it for a table."""
        if (isinstance(within, bool) or not isinstance(within, numbers.Real)
                or not math.isfinite(within) or within < 0):
            raise ValueError(f"within must be a finite number >= 0, got {within!r}")
        best = self.best_log_likelihood
        by_em = self.em.best_log_likelihood >= self.svi.best_log_likelihood
        out = Summary(initial_log_likelihood=self.initial_log_likelihood, best_log_likelihood=best,
                      best_method="EM" if by_em else "SVI", within=float(within))
        for key, run in (("em", self.em), ("svi", self.svi)):
            hit = run.first_within(best, within)
            out[key] = {
                "method": run.method,
                "detail": run.detail,
                "steps": int(run.steps[-1]),
                "seconds": float(run.seconds[-1]),
                "final_log_likelihood": run.final_log_likelihood,
                "best_log_likelihood": run.best_log_likelihood,
                "steps_to_within": None if hit is None else int(run.steps[hit]),
                "seconds_to_within": None if hit is None else float(run.seconds[hit]),
            }
        return out

    def __str__(self) -> str:
        return str(self.summary())

    def plot(self, path: Union[str, "os.PathLike[str]"], within: float = 1e-3,
             title: Optional[str] = None) -> str:
        """Save a figure to ``path`` and return the path. Top: ``log p(y|θ)`` against wall-clock
        seconds and against step, both methods, a dashed line at the best value seen. Bottom:
        the gap to that value on a log scale, a dashed line at ``within``. Drawn off screen."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
        path = os.fspath(path)
        best = self.best_log_likelihood
        runs = (self.em, self.svi)
        styles = {"EM": dict(color="tab:blue", marker="o", markersize=3, linewidth=1.5),
                  "SVI": dict(color="tab:orange", linewidth=1.5)}
        fig = Figure(figsize=(11, 7.5))
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, 2, sharex="col")
        floor = max(abs(best), 1.0) * 1e-15  # below rounding: shown as this on the log scale
        for col, x_name in enumerate(("seconds", "steps")):
            top, bottom = axes[0, col], axes[1, col]
            for run in runs:
                x = getattr(run, x_name)
                top.plot(x, run.log_likelihood, label=run.method, **styles[run.method])
                bottom.plot(x, np.maximum(best - run.log_likelihood, floor), label=run.method,
                            **styles[run.method])
            top.axhline(best, color="black", linestyle="--", linewidth=1, label=f"best {best:.10g}")
            bottom.axhline(within, color="black", linestyle="--", linewidth=1, label=f"gap {within:g}")
            bottom.set_yscale("log")
            xs = np.concatenate([getattr(run, x_name) for run in runs])
            positive = xs[xs > 0]
            linthresh = 1.0
            if x_name == "seconds" and positive.size:  # a power of ten: decade ticks stay apart
                linthresh = 10.0 ** math.floor(math.log10(float(positive.min())))
            bottom.set_xscale("symlog", linthresh=linthresh)
            bottom.set_xlim(0, float(xs.max()) * 1.05 if xs.max() > 0 else 1.0)
            bottom.set_xlabel("wall-clock seconds of the method's steps (symlog)" if x_name == "seconds"
                              else "step (symlog)")
            for ax in (top, bottom):
                ax.grid(True, alpha=0.3)
        low = min(float(np.min(run.log_likelihood)) for run in runs)
        span = best - low if best > low else 1.0
        for ax in axes[0]:
            ax.set_ylim(low - 0.03 * span, best + 0.08 * span)
        axes[0, 0].set_ylabel("log p(y | θ)")
        axes[1, 0].set_ylabel("best − log p(y | θ)")
        axes[0, 1].legend(loc="lower right")
        axes[1, 1].legend(loc="upper right")
        fig.suptitle(title or "EM vs SVI: exact log-likelihood from the same start")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return path


# -- arguments and the param store ---------------------------------------------------------
def _check_steps(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _snapshot() -> Snapshot:
    """Every param in the store: a copy of its unconstrained value, and its constraint."""
    store = pyro.get_param_store()
    return {name: (unconstrained(name).detach().clone(), param_constraint(name, store))
            for name in list(store.keys())}


def _restore(snapshot: Snapshot) -> None:
    """Put the store back as it was at ``snapshot``: its values, and no param it did not hold."""
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n not in snapshot]:
        del store[name]
    with torch.no_grad():
        for name, (value, constraint) in snapshot.items():
            if name in store:
                current = unconstrained(name)
                if current.shape == value.shape and current.dtype == value.dtype:
                    current.copy_(value)
                    continue
                del store[name]
            store.setdefault(name, transform_to(constraint)(value), constraint=constraint)


def _values(names: List[str]) -> Dict[str, torch.Tensor]:
    store = pyro.get_param_store()
    return {name: store.get_param(name).detach().clone() for name in names}


def _warm_up_optimizers() -> None:
    """torch imports part of its compiler the first time an optimizer is built (about a second);
    do it before any clock starts, so neither method is charged for it."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


# -- the model, seen by each method -------------------------------------------------------
def _plain_trace(model: Callable, args: tuple, kwargs: dict) -> Trace:
    """One run of the model as written (latents sampled), hidden from outer handlers."""
    with poutine.block():
        return poutine.trace(model).get_trace(*args, **kwargs)


def _has_tensor_scale(trace: Trace) -> bool:
    """True if a sample site carries a non-scalar ``poutine.scale`` (per-datum weights, counts),
    which ``TraceEnum_ELBO`` refuses next to enumerated latents."""
    return any(site["type"] == "sample" and torch.is_tensor(site["scale"]) and site["scale"].dim() > 0
               for site in trace.nodes.values())


GUIDE_PREFIX = "compare_svi."


class _PointMassGuide:
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


class _ExactLogLikelihood:
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
        self._exact: Optional[_ExactLogLikelihood] = None

    def _log_likelihood(self, model: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        if self._exact is None or self._exact.model is not model:
            self._exact = _ExactLogLikelihood(model)
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
def _run_em(em: EM, exact: _ExactLogLikelihood, steps: int, names: List[str], args: tuple,
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
                       _values(names), detail)


def _describe(elbo: ELBO, optim: PyroOptim) -> str:
    name = getattr(getattr(optim, "pt_optim_constructor", None), "__name__", type(optim).__name__)
    opts = getattr(optim, "pt_optim_args", None)
    if isinstance(opts, Mapping):
        name += "(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")"
    return f"{type(elbo).__name__}, {name}"


def _run_svi(model: Callable, guide: _PointMassGuide, optim: PyroOptim, elbo: ELBO,
             exact: _ExactLogLikelihood, steps: int, names: List[str], args: tuple, kwargs: dict) -> MethodTrace:
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
                       _values(names), _describe(elbo, optim))


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
    trace = _plain_trace(model, args, kwargs)
    if svi_elbo is None:
        svi_elbo = (ExactELBO() if _has_tensor_scale(trace)
                    else TraceEnum_ELBO(max_plate_nesting=tracer.max_plate_nesting))
    guide = _PointMassGuide(trace, tracer.map_sites, declare_only=isinstance(svi_elbo, ExactELBO))
    exact = _ExactLogLikelihood(model, tracer.max_plate_nesting)
    _warm_up_optimizers()
    start = _snapshot()

    try:
        em_run = _run_em(em, exact, em_steps, names, args, kwargs)
    except BaseException:
        _restore(start)
        raise
    after_em = _snapshot()
    _restore(start)
    try:
        svi_run = _run_svi(model, guide, svi_optim, svi_elbo, exact, svi_steps, names, args, kwargs)
    finally:
        _restore(after_em)
    return Comparison(em_run, svi_run)
