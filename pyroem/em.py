"""The EM runner: ``EM(model, updates).step(...)`` / ``.fit(...)``, the EM counterpart of ``pyro.infer.SVI``."""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Callable, Dict, List, Mapping, Optional

import pyro
import torch
from tqdm.auto import tqdm

from .diagnostics import check_monotone
from .estep import contract_trace
from .expectations import Expectations
from .mstep import AutogradMStep, expected_log_joint, write_params
from .model_trace import ModelTracer
from .results import EMResult

Updates = Callable[..., Mapping[str, torch.Tensor]]


class EM:
    """Expectation-maximization for a Pyro model with discrete latent variables.

    E-step: the exact posterior of every enumerated latent at θₙ. M-step: ``updates(expect,
    *args, **kwargs)`` returns closed-form values for some params; the rest (and MAP sites)
    maximize ``Q(θ|θₙ) = Σ_f ⟨w_f, log f(θ)⟩`` by L-BFGS on their unconstrained values.

    :param model: a Pyro model; its ``pyro.param`` sites are θ, its discrete unobserved sample
        sites the latents (enumerated whether marked or not).
    :param updates: optional ``updates(expect, *args, **kwargs) -> {name: constrained value}``.
    :param max_plate_nesting: as in ``TraceEnum_ELBO``; guessed from one model run if None.
    """

    def __init__(self, model: Callable, updates: Optional[Updates] = None,
                 max_plate_nesting: Optional[int] = None) -> None:
        if updates is not None and not callable(updates):
            raise TypeError(f"updates must be a callable returning {{name: value}}, got {type(updates).__name__}")
        self.tracer = ModelTracer(model, max_plate_nesting)
        self.model = model
        self.updates = updates
        self.autograd_mstep = AutogradMStep()
        self._last_step: Optional[tuple] = None

    # -- the two halves --------------------------------------------------------------
    def e_step(self, *args, **kwargs) -> Expectations:
        """Posterior expectations at the current params; raises if ``log p(y|θ)`` is not finite."""
        with torch.no_grad():
            trace = self.tracer.trace(args, kwargs)
        self.tracer.require_fittable()
        expect = Expectations(contract_trace(trace))
        ll = expect.log_likelihood
        if not bool(torch.isfinite(ll)):
            raise ValueError(
                f"log p(y|θ) is {float(ll)} at the current parameters: the data are impossible "
                "under the model (a zero-probability observation) or a parameter is not finite"
            )
        return expect

    def q(self, expect: Expectations, *args, **kwargs) -> torch.Tensor:
        """``Q(θ|θₙ)`` at the current params, differentiable with respect to them."""
        subsample = self.tracer.subsample_indices(expect._e.trace)
        with torch.enable_grad():
            trace = self.tracer.trace(args, kwargs, subsample)
            return expected_log_joint(trace, expect)

    def m_step(self, expect: Expectations, *args, **kwargs) -> None:
        """Closed-form updates first, then L-BFGS on Q for every param they left out (ECM)."""
        names = list(self.tracer.params())
        new: Mapping[str, torch.Tensor] = {}
        if self.updates is not None:
            new = self.updates(expect, *args, **kwargs)
            if new is None:
                new = {}
            if not isinstance(new, Mapping):
                raise TypeError(f"updates must return a dict {{param name: value}}, got {type(new).__name__}")
            write_params(new, names)
        rest = [n for n in names if n not in new]
        if rest:
            self.autograd_mstep(rest, lambda: self.q(expect, *args, **kwargs), names)

    # -- user-facing loop ------------------------------------------------------------
    @property
    def params(self) -> Dict[str, torch.Tensor]:
        """Current constrained values of the fitted params (after the first step or fit)."""
        return {k: v.detach() for k, v in self.tracer.params().items()}

    def step(self, *args, **kwargs) -> float:
        """One E+M step; returns ``log p(y|θ)`` at the θ it started from (like ``SVI.step``)."""
        expect = self.e_step(*args, **kwargs)
        ll = float(expect.log_likelihood)
        key = tuple(map(id, args)) + tuple((k, id(v)) for k, v in sorted(kwargs.items()))
        if self._last_step is not None and self._last_step[0] == key:
            n = self._last_step[2] + 1
            check_monotone(self._last_step[1], ll, n, expect.log_likelihood.dtype)
        else:
            n = 1
        self.m_step(expect, *args, **kwargs)
        self._last_step = (key, ll, n)
        return ll

    def fit(self, *args, max_iter: int = 100, tol: float = 1e-8, progress: bool = False,
            callback: Optional[Callable[[int, float, Dict[str, torch.Tensor]], Optional[bool]]] = None,
            **kwargs) -> EMResult:
        """Iterate until ``|Δ log p(y|θ)| ≤ tol · max(1, |log p(y|θ)|)`` or ``max_iter`` M-steps.

        ``callback(n_iter, log_likelihood, params)`` sees each evaluated θ; returning True stops.
        A ``KeyboardInterrupt`` or an exception in ``callback`` returns the last evaluated
        parameters with ``converged=False`` and a warning.
        """
        if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 0:
            raise ValueError(f"max_iter must be a non-negative int, got {max_iter!r}")
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0 or math.isinf(tol):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        history: List[float] = []
        n_iter, converged = 0, False
        good: Optional[Dict[str, torch.Tensor]] = None
        bar = tqdm(total=max_iter, desc="EM", disable=not progress, leave=False)
        try:
            while True:
                try:
                    expect = self.e_step(*args, **kwargs)
                except ValueError as err:
                    if good is None:
                        raise
                    self._restore(good)
                    raise ValueError(f"step {n_iter}: {err}; parameters restored to step {n_iter - 1}") from err
                ll = float(expect.log_likelihood)
                good = self._snapshot()
                if history:
                    check_monotone(history[-1], ll, n_iter, expect.log_likelihood.dtype)
                    change = ll - history[-1]
                    bar.set_postfix(log_lik=f"{ll:.6g}", change=f"{change:.2e}")
                    converged = abs(change) <= tol * max(1.0, abs(ll))
                history.append(ll)
                if callback is not None:
                    try:
                        stop = callback(n_iter, ll, self.params)
                    except Exception as err:  # a callback's failure must not lose the fit
                        return self._interrupted(good, history, n_iter, f"stopped by the callback's {err!r}")
                    if stop:
                        break
                if converged or n_iter >= max_iter:
                    break
                self.m_step(expect, *args, **kwargs)
                n_iter += 1
                bar.update(1)
        except KeyboardInterrupt:
            if good is None:
                raise
            return self._interrupted(good, history, n_iter, "interrupted")
        finally:
            bar.close()
        self._last_step = None
        return EMResult(self.params, history[-1], history, n_iter, converged)

    # -- helpers ---------------------------------------------------------------------
    def _snapshot(self) -> Dict[str, torch.Tensor]:
        """Unconstrained values of every fitted param (restored exactly, no round trip)."""
        store = pyro.get_param_store()
        return {n: store.get_param(n).unconstrained().detach().clone() for n in self.tracer.params()}

    def _restore(self, snapshot: Dict[str, torch.Tensor]) -> None:
        store = pyro.get_param_store()
        with torch.no_grad():
            for name, value in snapshot.items():
                store.get_param(name).unconstrained().copy_(value)

    def _interrupted(self, good, history, n_iter, why) -> EMResult:
        self._restore(good)
        self._last_step = None
        warnings.warn(f"EM fit {why} after {n_iter} steps; returning the last evaluated parameters "
                      "with converged=False", RuntimeWarning, stacklevel=3)
        return EMResult(self.params, history[-1], history, n_iter, False)
