"""The EM runner: ``EM(model, updates).step(...)`` / ``.fit(...)``, the EM counterpart of ``pyro.infer.SVI``."""
from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import pyro
import torch
from tqdm.auto import tqdm

from .arguments import tensor_arguments
from .checkpoint import Checkpoint, data_fingerprint, load_checkpoint, save_checkpoint
from .diagnostics import check_monotone, explain_nonfinite, rounding_slack, warn_collapse
from .estep import contract_trace
from .expectations import Expectations
from .handlers import param_constraint, unconstrained
from .information import information_of
from .missing import marginalize_missing
from .mstep import AutogradMStep, StartPoint, write_params
from .model_trace import ModelTracer, observation_count
from .distributed import DataParallel
from .online import StepSize, StepwiseStatistics, check_step_size
from .pieces import Batches, DataPieces, PassStatistics
from .pieces_mstep import maximize_over_pieces
from .qfunction import QFunction, expected_log_joint
from .results import EMResult, free_parameters
from .squarem import squarem_step
from .threads import threads_for
from . import thresholds
from .validation import (
    ACCELERATIONS,
    check_accelerate,
    check_callback,
    check_checkpoint,
    check_max_iter,
    check_max_plate_nesting,
    check_n_init,
    check_model,
    check_statistics,
    check_tol,
    check_updates,
    require_observed,
    warn_mixed_precision,
)

Updates = Callable[..., Mapping[str, torch.Tensor]]
Statistics = Dict[str, torch.Tensor]
Callback = Callable[[int, float, Dict[str, torch.Tensor]], Optional[bool]]
logger = logging.getLogger("pyroem")


@dataclass
class _Good:
    """The last parameters whose log-likelihood was evaluated: θ_n, as unconstrained values."""

    n: int
    snapshot: Dict[str, torch.Tensor]
    rng_state: Optional[torch.Tensor]


class EM:
    """Expectation-maximization for a Pyro model with discrete latent variables.

    E-step: the exact posterior of every enumerated latent at θₙ. M-step: ``updates(expect,
    *args, **kwargs)`` returns closed-form values for some params; the rest (and MAP sites)
    maximize ``Q(θ|θₙ) = Σ_f ⟨w_f, log f(θ)⟩`` by Newton on their unconstrained values (L-BFGS for large blocks).

    :param model: a Pyro model; its ``pyro.param`` sites are θ, its discrete unobserved sample
        sites the latents (enumerated whether marked or not).
    :param updates: optional ``updates(expect, *args, **kwargs) -> {name: constrained value}``.
    :param max_plate_nesting: as in ``TraceEnum_ELBO``; guessed from one model run if None.
    :param statistics: with ``solve``, the closed-form M-step in two halves, for data in pieces:
        ``statistics(expect, *args, **kwargs) -> {name: tensor}``, sums over the data points of
        one piece (so pieces add up), and ``solve(stats, *args, **kwargs) -> {name: value}``.
        :meth:`statistics` and :meth:`solve` run them; :meth:`step` and :meth:`fit` run both on
        one piece as ``updates``.
    :param missing: ``"marginalize"``: NaN entries of observed sites are integrated out of the
        likelihood (``pyroem.marginalize_missing``): exactly for scalar sites, events of
        independent elements, multivariate normals and Student t; None (the default): NaN data
        are an error.
    :param fixed: names of params and MAP sites kept at their current values by every M-step
        (closed-form values returned for them are ignored); they count out of ``aic``/``bic``.
    """

    #: the accepted values of ``fit(accelerate=...)`` besides None
    accelerations = ACCELERATIONS

    def __init__(self, model: Callable, updates: Optional[Updates] = None,
                 max_plate_nesting: Optional[int] = None, *, statistics: Optional[Callable] = None,
                 solve: Optional[Callable] = None, fixed: Iterable[str] = (), missing: Optional[str] = None) -> None:
        self.model = check_model(model)
        if isinstance(fixed, str) or not all(isinstance(n, str) for n in fixed):
            raise TypeError("fixed must be a list of param (or MAP site) names")
        #: params (and MAP sites) kept at their values through every M-step
        self.fixed = frozenset(fixed)
        self.updates = check_updates(updates)
        self._statistics, self._solve = check_statistics(updates, statistics, solve)
        if self._solve is not None:
            self.updates = self._statistics_then_solve
        if missing not in (None, "marginalize"):
            raise ValueError(f"missing must be None (NaN in the data is an error) or 'marginalize', got {missing!r}")
        if missing == "marginalize":
            model = self.model = marginalize_missing(model)
        self.tracer = ModelTracer(model, check_max_plate_nesting(max_plate_nesting))
        self.autograd_mstep = AutogradMStep()
        self._last_step: Optional[tuple] = None
        # params the autograd M-step fitted last time: the E-step traces them as autograd leaves,
        # so the M-step starts from the E-step's own trace
        self._autograd_names: Optional[Tuple[str, ...]] = None
        #: during :meth:`fit`, the E-step of the parameters the callback sees: ``Expectations``, or
        #: with ``data`` in pieces the statistics summed over them (``.stats``); None otherwise
        self.last_e_step = None
        self._parallel: Optional[DataParallel] = None
        self._fingerprint = ""  # the data of the fit that checkpoints (see checkpoint.data_fingerprint)

    # -- the two halves --------------------------------------------------------------
    @tensor_arguments
    def e_step(self, *args, **kwargs) -> Expectations:
        """Posterior expectations at the current params; raises if ``log p(y|θ)`` is not finite."""
        return self._e_step(args, kwargs, "at the current parameters")

    def _e_step(self, args: tuple, kwargs: dict, where: str, for_m_step: bool = True) -> Expectations:
        self.tracer.ensure_probed(args, kwargs)
        names = self._fitted_names() if self.updates is None else self._autograd_names
        if not for_m_step:  # no autograd leaves: this E-step's trace starts no M-step
            names = None
        start = None
        if names:
            start = StartPoint.take(names, lambda values: self.tracer.trace(args, kwargs, values=values))
            trace = start.trace
        else:
            with torch.no_grad():
                trace = self.tracer.trace(args, kwargs)
        self.tracer.require_fittable()
        require_observed(trace)
        expect = Expectations(contract_trace(trace), start)
        ll = expect.log_likelihood
        if not bool(torch.isfinite(ll)):
            value = float(ll)
            with torch.no_grad():  # a fresh trace: the E-step may have reused log-prob memory
                why = explain_nonfinite(value, self.tracer.trace(args, kwargs, validate=True), self.tracer.params())
            raise ValueError(f"log p(y|θ) is {value} {where}: {why}")
        return expect

    @tensor_arguments
    def q(self, expect: Expectations, *args, **kwargs) -> torch.Tensor:
        """``Q(θ|θₙ)`` at the current params, differentiable with respect to them."""
        subsample = self.tracer.subsample_indices(expect.trace)
        with torch.enable_grad():
            trace = self.tracer.trace(args, kwargs, subsample)
            return expected_log_joint(trace, expect)

    @tensor_arguments
    def m_step(self, expect: Expectations, *args, **kwargs) -> None:
        """Closed-form updates first, then Newton on Q (L-BFGS for large blocks) for every param they left out (ECM)."""
        names = self._fitted_names()
        new: Mapping[str, torch.Tensor] = {}
        if self.updates is not None:
            new = self.updates(expect, *args, **kwargs)
            if new is None:
                new = {}
            if not isinstance(new, Mapping):
                raise TypeError(f"updates must return a dict {{param name: value}}, got {type(new).__name__}")
            new = {k: v for k, v in new.items() if k not in self.fixed}
            write_params(new, names)
        rest = [n for n in names if n not in new]
        self._autograd_names = tuple(rest)
        if rest:
            self.autograd_mstep(rest, QFunction(self.tracer, expect, args, kwargs), expect.start)
        else:
            self.autograd_mstep.stationary = True

    # -- closed-form M-steps from statistics of pieces of data ---------------------------
    def _summarize(self, expect: Expectations, args: tuple, kwargs: dict) -> Statistics:
        stats = self._statistics(expect, *args, **kwargs)
        if not isinstance(stats, Mapping) or not all(isinstance(v, torch.Tensor) for v in stats.values()):
            raise TypeError("statistics must return a dict {name: tensor} of sums over the data points")
        if "log_likelihood" in stats:
            raise ValueError("statistics: the name 'log_likelihood' is taken (EM.statistics adds the piece's own)")
        return dict(stats)

    def _statistics_then_solve(self, expect: Expectations, *args, **kwargs) -> Mapping[str, torch.Tensor]:
        stats = self._summarize(expect, args, kwargs)
        if self._parallel is not None:
            stats = self._parallel.sum_dict(stats)
        return self._solve(stats, *args, **kwargs)

    @tensor_arguments
    def statistics(self, *args, **kwargs) -> Statistics:
        """The E-step on one piece of data summarized: ``statistics(expect, *args, **kwargs)``, plus
        the piece's ``log p(y|θ)`` (float64) under ``"log_likelihood"``. Pieces add up
        (:meth:`sum_statistics`); :meth:`solve` then takes the total."""
        if self._statistics is None:
            raise ValueError("EM.statistics needs EM(model, statistics=..., solve=...)")
        return self._piece_statistics(args, kwargs, "at the current parameters")[0]

    def _piece_statistics(self, args: tuple, kwargs: dict, where: str) -> Tuple[Statistics, torch.dtype]:
        """One piece's statistics and ``log p(piece|θ)`` (only the latter for the autograd M-step)."""
        expect = self._e_step(args, kwargs, where, for_m_step=False)
        out = self._summarize(expect, args, kwargs) if self._statistics is not None else {}
        out["log_likelihood"] = torch.tensor(expect.log_likelihood_value(), dtype=torch.float64,
                                             device=expect.log_likelihood.device)
        return out, expect.log_likelihood.dtype

    def _pass(self, pieces: DataPieces, where: str) -> PassStatistics:
        """One E-step over all the pieces, their statistics summed as they come (memory: one piece)."""
        dtypes: List[torch.dtype] = []
        last: List[tuple] = []

        def parts():
            for i, (args, kwargs) in enumerate(pieces):
                try:
                    stats, dtype = self._piece_statistics(args, kwargs, where)
                except ValueError as err:
                    raise ValueError(f"in piece {i} of the data: {err}") from err
                dtypes.append(dtype)
                last[:] = [(args, kwargs)]
                yield stats
        total = self.sum_statistics(parts())
        return PassStatistics(total, dtypes[-1], *last[0])

    @staticmethod
    def sum_statistics(parts: Iterable[Mapping[str, torch.Tensor]]) -> Statistics:
        """The statistics of several pieces of data, summed name by name."""
        total: Statistics = {}
        for part in parts:
            if total and set(part) != set(total):
                raise ValueError(f"statistics of the pieces name different sums: {sorted(total)} and {sorted(part)}")
            total = {k: part[k] if k not in total else total[k] + part[k] for k in part}
        if not total:
            raise ValueError("sum_statistics got no pieces")
        return total

    @tensor_arguments
    def solve(self, stats: Mapping[str, torch.Tensor], *args, **kwargs) -> None:
        """The M-step from statistics summed over the pieces of the data: ``solve(stats, *args,
        **kwargs)`` must give every fitted parameter (no single trace holds all the data for
        the autograd M-step to use). ``args`` are the arguments ``solve`` needs (one piece's)."""
        if self._solve is None:
            raise ValueError("EM.solve needs EM(model, statistics=..., solve=...)")
        self.tracer.ensure_probed(args, kwargs)
        names = self._fitted_names()
        new = self._solve({k: v for k, v in stats.items() if k != "log_likelihood"}, *args, **kwargs)
        if not isinstance(new, Mapping):
            raise TypeError(f"solve must return a dict {{param name: value}}, got {type(new).__name__}")
        new = {k: v for k, v in new.items() if k not in self.fixed}
        missing = [n for n in names if n not in new]
        if missing:
            raise ValueError(f"solve left out {', '.join(repr(n) for n in missing)}: from summed statistics "
                             "every fitted parameter needs its closed-form value")
        write_params(new, names)
        self._autograd_names = ()
        self.autograd_mstep.stationary = True

    # -- user-facing loop ------------------------------------------------------------
    @property
    def params(self) -> Dict[str, torch.Tensor]:
        """Current constrained values of the fitted params (after the first step or fit)."""
        return {k: v.detach() for k, v in self.tracer.params().items()}

    @tensor_arguments
    def step(self, *args, **kwargs) -> float:
        """One E+M step; returns ``log p(y|θ)`` at the θ it started from (like ``SVI.step``).

        If the M-step fails (an exception, or an interrupt), the params are put back as they were.
        """
        expect = self.e_step(*args, **kwargs)
        ll = expect.log_likelihood_value()
        key = tuple(map(id, args)) + tuple((k, id(v)) for k, v in sorted(kwargs.items()))
        if self._last_step is not None and self._last_step[0] == key:
            n = self._last_step[2] + 1
            check_monotone(self._last_step[1], ll, n, expect.log_likelihood.dtype)
        else:
            n = 1
        before = self._snapshot()
        try:
            self.m_step(expect, *args, **kwargs)
        except BaseException:
            self._restore(before)
            self._last_step = None
            raise
        self._last_step = (key, ll, n)
        return ll

    @tensor_arguments
    def fit(self, *args, max_iter: int = 100, tol: Optional[float] = 1e-8, progress: bool = False,
            callback: Optional[Callback] = None,
            checkpoint: Optional[Union[str, "os.PathLike[str]"]] = None, checkpoint_every: int = 10,
            resume: bool = False, accelerate: Optional[str] = None, data: Optional[Iterable] = None,
            final_m_step: bool = False, batch_size: Optional[int] = None, step_size: Optional[StepSize] = None,
            n_init: int = 1, init: Optional[Callable[[int], None]] = None, **kwargs) -> EMResult:
        """Iterate until ``|Δ log p(y|θ)| ≤ tol · max(1, |log p(y|θ)|)`` or ``max_iter`` M-steps.

        ``tol=None`` leaves the stopping to ``max_iter`` and the callback.

        :param data: the data in pieces, for data too big for one E-step (or for memory): an
            iterable that can be read again at every step — a list of tensors, ``torch.split(y, n)``,
            a ``torch.utils.data.DataLoader`` (batches in a fixed order). Each item gives a piece's
            leading arguments (a tuple or list, a dict of keyword arguments, or one tensor); ``args``
            and ``kwargs`` follow them in every piece. Each step runs the E-step piece by piece,
            sums ``statistics`` over the pieces and solves once: the same parameters as one step on
            all the data, in the memory of one piece; ``solve`` gets the arguments of the last
            piece. Without ``statistics``/``solve`` the autograd M-step maximizes the sum of the
            pieces' Q by L-BFGS, piece by piece (:mod:`pyroem.pieces_mstep`; slower).
        :param batch_size: read the in-memory arguments in batches of this many rows, as pieces
            (every tensor argument whose first dimension has the length of the first one is split).
        :param step_size: online (stepwise) EM over the pieces or batches (see :mod:`pyroem.online`):
            the parameters are solved after every batch from running statistics blended with step
            sizes ``γ_t = (t + 2)^(−step_size)`` (an exponent in (0.5, 1]; or a callable ``t ↦ γ_t``);
            batches are drawn in a new random order at every pass. ``max_iter`` then counts passes
            and ``history[i]`` is the sum over pass ``i``'s batches of ``log p(batch|θ)`` at the θ
            each batch met (not monotone); the fit stops when it changes by at most ``tol``
            relatively. A fast start for big data: follow it with a batch fit.
        :param n_init: fits from this many starts, the highest final log-likelihood kept: the
            first from the current params, each other from ``init(i)`` (which sets the params), by
            default the current params with their unconstrained values perturbed at random (torch's
            RNG). ``result.init_log_likelihoods`` holds every start's final value. Not with
            ``checkpoint``.
        :param final_m_step: also take the M-step after the last evaluation (when the fit stops
            by ``tol``, the callback or ``max_iter``), as scikit-learn and hmmlearn do: the
            returned ``params`` are then one step past ``history[-1]``, not evaluated, and
            ``max_iter`` still counts M-steps (``len(history) == n_iter``).

        :param accelerate: ``"squarem"`` extrapolates from every two EM steps (SQUAREM, see
            :mod:`pyroem.squarem`), with a safeguard that keeps log p(y|θ) non-decreasing; each
            iteration then takes two or three EM steps and ``n_iter`` counts iterations.

        ``callback(n_iter, log_likelihood, params)`` sees each evaluated θ; returning True stops.
        A ``KeyboardInterrupt``, or an exception in ``callback``, returns the last evaluated
        parameters with ``converged=False`` and a warning. Any other exception (e.g. a
        non-finite ``log p(y|θ)`` after a step, or a bad closed-form update) restores the param
        store to the last evaluated parameters before it propagates.

        :param checkpoint: a file path: the fit's state (params, history, ``n_iter``) is written
            there atomically every ``checkpoint_every`` steps and when the fit ends (converged,
            ``max_iter``, stopped by the callback, interrupted, or failed), so a crash never
            leaves a partial file.
        :param checkpoint_every: steps between two checkpoints (int >= 1).
        :param resume: continue from ``checkpoint``: the params get its values, the history
            continues and the step count goes on from its ``n_iter``; ``max_iter`` counts all
            steps, those before the checkpoint included, so a resumed fit ends where an
            uninterrupted one would, with the same parameters. torch's RNG state is restored
            from the file too (a subsampled plate then draws the same minibatches). With no file
            at ``checkpoint`` the fit starts fresh (logged at INFO level on the ``pyroem``
            logger), so one script serves the first run and every restart. A file that is not a
            pyroem checkpoint, is truncated, or does not match the model raises ``ValueError``.
        """
        if data is None and batch_size is None:
            self.tracer.ensure_probed(args, kwargs)
            work = self.tracer.work
        else:  # data in pieces: large data (and the pieces are read once they are checked, in _fit)
            work = thresholds.SINGLE_THREAD_WORK
        options = dict(max_iter=max_iter, tol=tol, progress=progress, callback=callback, checkpoint=checkpoint,
                       checkpoint_every=checkpoint_every, resume=resume, accelerate=accelerate, data=data,
                       final_m_step=final_m_step, batch_size=batch_size, step_size=step_size)
        with threads_for(work):
            if n_init == 1 and init is None:
                return self._fit(*args, **options, **kwargs)
            return self._fit_restarts(check_n_init(n_init), init, checkpoint, args, options, kwargs)

    def _fit_restarts(self, n_init: int, init: Optional[Callable[[int], None]], checkpoint, args: tuple,
                      options: dict, kwargs: dict) -> EMResult:
        """``n_init`` fits from different starts; the best one's params are left in the store."""
        if checkpoint is not None:
            raise ValueError("n_init > 1 restarts the fit from other params: give no checkpoint")
        if init is not None and not callable(init):
            raise TypeError(f"init must be callable(i) setting the params, got {type(init).__name__}")
        start = self._snapshot()
        best: Optional[Tuple[EMResult, Dict[str, torch.Tensor]]] = None
        finals: List[float] = []
        for i in range(n_init):
            self._restore(start)
            if i > 0:
                if init is not None:
                    init(i)
                else:
                    self._perturb(start)
            result = self._fit(*args, **options, **kwargs)
            finals.append(result.log_likelihood)
            if best is None or result.log_likelihood > best[0].log_likelihood:
                best = (result, self._snapshot())
        self._restore(best[1])
        best[0].init_log_likelihoods = finals
        return best[0]

    def _perturb(self, start: Dict[str, torch.Tensor]) -> None:
        """Every fitted param at its start plus noise on its unconstrained value, ``N(0, s²)`` with
        ``s = 1 + |u|`` per entry: large enough to leave a symmetric fixed point."""
        with torch.no_grad():
            for name, u in start.items():
                if name not in self.fixed:
                    unconstrained(name).copy_(u + (1.0 + u.abs()) * torch.randn_like(u))

    def _fit(self, *args, max_iter, tol, progress, callback, checkpoint, checkpoint_every, resume, accelerate,
             data, final_m_step, batch_size, step_size, **kwargs) -> EMResult:
        max_iter = check_max_iter(max_iter)
        tol = None if tol is None else check_tol(tol)
        callback = check_callback(callback)
        path = check_checkpoint(checkpoint, checkpoint_every, resume)
        accelerate = check_accelerate(accelerate)
        pieces = self._pieces(data, batch_size, step_size, args, kwargs)
        first = pieces.first() if pieces is not None else (args, kwargs)
        self.tracer.ensure_probed(*first)
        warn_mixed_precision(*first, self.tracer.params())
        if step_size is not None:
            if accelerate is not None or path is not None or final_m_step:
                raise ValueError("online EM (step_size=...) takes neither accelerate, checkpoint nor final_m_step")
            return self._fit_online(pieces, check_step_size(step_size), max_iter, tol, callback, progress)
        self._last_step = None
        last_m = max_iter - 1 if final_m_step and max_iter > 0 else max_iter

        def evaluate(where: str):
            if pieces is None:
                local = functools.partial(self._e_step, args, kwargs, where)
            else:
                local = functools.partial(self._pass, pieces, where)
            if parallel is None:
                return local()
            out = parallel.agree(local, f"the E-step {where}")
            if pieces is None:
                return out.sum_over_ranks(parallel.sum_float(out.log_likelihood_value()))
            out.stats = parallel.sum_dict(out.stats)
            return out

        def advance(evaluation) -> None:
            if pieces is None:
                self.m_step(evaluation, *args, **kwargs)
            elif self._solve is not None:
                self.solve(evaluation.stats, *evaluation.args, **evaluation.kwargs)
            else:
                self.autograd_mstep.stationary = maximize_over_pieces(self.tracer, pieces, self._fitted_names())
        history: List[float] = []
        n_iter = 0
        if path is not None:
            self._fingerprint = data_fingerprint(*first)
            if pieces is not None:
                self._fingerprint += f"; {pieces.count()} pieces"
        if resume:
            history, n_iter = self._resume(path)
        first, converged, reason = n_iter, False, "max_iter"
        good: Optional[_Good] = None
        phase = "e"
        pending: Optional[Expectations] = None  # SQUAREM's E-step at the point it accepted
        self.autograd_mstep.verify = False  # exact updates are checked by the next E-step instead
        self.autograd_mstep.unverified = False
        parallel = self._data_parallel()
        bar = tqdm(total=max_iter, initial=min(n_iter, max_iter), desc="EM", leave=False,
                   disable=not progress or (parallel is not None and parallel.rank != 0))
        try:
            while True:
                rng = torch.get_rng_state() if path is not None else None
                if path is not None and n_iter > first and n_iter % checkpoint_every == 0:
                    phase = "checkpoint"
                    self._save(path, history, n_iter, rng)
                phase = "e"
                where = "at the starting parameters" if n_iter == 0 else f"after step {n_iter}"
                expect = evaluate(where) if pending is None else pending
                pending = None
                ll = expect.log_likelihood_value()
                if (history and self.autograd_mstep.unverified
                        and ll < history[-1] - rounding_slack(history[-1], expect.log_likelihood.dtype)):
                    # an exact probability update, unchecked, lowered log p(y|θ) (a parameter also
                    # used in a way its count form missed): redo the step from θₙ, checked
                    self.autograd_mstep.unverified = False
                    self._restore(good.snapshot)
                    self.autograd_mstep.verify = True
                    advance(evaluate(where))
                    continue
                self.autograd_mstep.unverified = False
                if history:
                    check_monotone(history[-1], ll, n_iter, expect.log_likelihood.dtype)
                    change = ll - history[-1]
                    bar.set_postfix(log_lik=f"{ll:.6g}", change=f"{change:.2e}")
                    # within tol after an M-step that reached a maximum of Q: a stalled inner
                    # solver also leaves the log-likelihood unchanged
                    converged = (tol is not None and abs(change) <= tol * max(1.0, abs(ll))
                                 and self.autograd_mstep.stationary)
                history.append(ll)
                good = _Good(n_iter, self._snapshot(), rng)
                if callback is not None:
                    self.last_e_step = expect
                    phase = "callback"
                    try:
                        stop = callback(n_iter, ll, self.params)
                    except Exception as err:  # a callback's failure must not lose the fit
                        return self._stopped(good, history, path, "callback_error",
                                             f"stopped by the callback's {err!r}")
                    finally:
                        self.last_e_step = None
                    if stop:
                        reason = "callback"
                        break
                if converged:
                    reason = "converged"
                    break
                if n_iter >= last_m:
                    break
                phase = "m"
                if accelerate == "squarem":
                    where = f"in iteration {n_iter + 1}"
                    pending, _ = squarem_step(expect, advance, lambda: evaluate(where), self._snapshot,
                                              self._restore)
                else:
                    advance(expect)
                # the E-step's tables are released before the next one (whose log-prob tables
                # may then reuse their memory)
                expect = None
                n_iter += 1
                bar.update(1)
            if final_m_step and n_iter < max_iter:
                phase = "m"
                advance(expect)
                n_iter += 1
                bar.update(1)
        except KeyboardInterrupt:
            if good is None:
                raise
            return self._stopped(good, history, path, "interrupted", "interrupted")
        except Exception as err:
            if good is None:
                raise
            self._restore(good.snapshot)
            self._last_step = None
            restored = (f"the parameters are restored to those after step {good.n} "
                        f"(log-likelihood {history[good.n]:.10g})")
            if path is not None:
                self._save(path, history[:good.n + 1], good.n, good.rng_state, reason="error")
                restored += f" and saved to the checkpoint {path!r}"
            if phase == "e" and isinstance(err, ValueError):
                raise ValueError(f"{err}; {restored}") from err
            if hasattr(err, "add_note"):  # Python >= 3.11
                during = {"m": f"in the M-step of step {n_iter + 1}", "e": f"evaluating θ after step {n_iter}",
                          "checkpoint": f"writing the checkpoint after step {n_iter}"}
                err.add_note(f"pyroem: the EM fit failed {during.get(phase, phase)}; {restored}")
            raise
        finally:
            bar.close()
            self.autograd_mstep.verify = True
            self.last_e_step = None
            self._leave_data_parallel()
        if path is not None:
            self._save(path, history, n_iter, rng, converged, reason)
        observations = None
        if pieces is None:  # the last E-step's trace (no second run of the model on all the data)
            warn_collapse(expect.trace, self.params)
            observations = observation_count(expect.trace)
        return EMResult(self.params, history[-1], history, n_iter, converged, reason,
                        self._free_parameters(), observations,
                        _information=None if pieces is not None else information_of(self, args, kwargs))

    # -- data in pieces, online EM ------------------------------------------------------
    def _pieces(self, data, batch_size, step_size, args: tuple, kwargs: dict):
        """The pieces a fit reads (None: all of the data at once)."""
        if batch_size is not None:
            if data is not None:
                raise ValueError("give either data=... (its items are the batches) or batch_size=..., not both")
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if data is None and batch_size is None:
            if step_size is not None:
                raise ValueError("online EM (step_size=...) needs mini-batches: give batch_size=... or data=...")
            return None
        if self.updates is not None and self._solve is None:
            raise ValueError("updates=... sees one piece of the data at a time: for data in pieces (data=, "
                             "batch_size=) give the closed-form M-step as EM(model, statistics=..., solve=...), "
                             "or leave it to the engine's autograd M-step")
        if self._solve is None and step_size is not None:
            raise ValueError("online EM (step_size=...) blends statistics of mini-batches: build the runner as "
                             "EM(model, statistics=..., solve=...)")
        if self._solve is None and DataParallel.current() is not None:
            raise ValueError("data in pieces on several ranks of torch.distributed needs EM(model, statistics=..., "
                             "solve=...); the autograd M-step runs on data in pieces in one process, or on "
                             "each rank's shard given whole")
        if data is not None:
            return DataPieces(data, args, kwargs)
        return Batches(args, kwargs, batch_size, shuffle=step_size is not None)

    @tensor_arguments
    def online_step(self, state: StepwiseStatistics, *args, **kwargs) -> float:
        """One step of online EM on a mini-batch: its statistics at the current params are blended
        into ``state`` and the params solved from the result; returns ``log p(batch|θ)``."""
        if self._solve is None:
            raise ValueError("online EM needs EM(model, statistics=..., solve=...)")
        parallel = self._parallel or DataParallel.current()

        def local():
            return self._piece_statistics(args, kwargs, "at the current parameters")[0]

        stats = local() if parallel is None else parallel.sum_dict(parallel.agree(local, "the E-step of a batch"))
        self.solve(state.update(stats), *args, **kwargs)
        return float(stats["log_likelihood"])

    def _fit_online(self, pieces, gamma: Callable[[int], float], max_iter: int, tol: Optional[float],
                    callback: Optional[Callback], progress: bool) -> EMResult:
        """Passes of online EM over ``pieces`` (see :meth:`fit`)."""
        if max_iter < 1:
            raise ValueError("online EM counts passes over the data: max_iter must be >= 1")
        self._data_parallel()
        count = pieces.count()
        state = StepwiseStatistics(gamma, scale=1.0 if count is None else count)
        history: List[float] = []
        converged, reason, n_pass = False, "max_iter", 0
        bar = tqdm(total=max_iter, desc="online EM", leave=False, disable=not progress)
        try:
            for n_pass in range(1, max_iter + 1):
                before = self._snapshot()
                try:
                    total = sum(self.online_step(state, *a, **kw) for a, kw in pieces)
                except KeyboardInterrupt:
                    self._restore(before)
                    warnings.warn(f"online EM interrupted in pass {n_pass}; returning the parameters after "
                                  f"pass {n_pass - 1} with converged=False", RuntimeWarning, stacklevel=3)
                    return EMResult(self.params, history[-1] if history else float("nan"), history,
                                    n_pass - 1, False, "interrupted")
                bar.update(1)
                if history and tol is not None:
                    converged = abs(total - history[-1]) <= tol * max(1.0, abs(total))
                history.append(total)
                if callback is not None and callback(n_pass, total, self.params):
                    reason = "callback"
                    break
                if converged:
                    reason = "converged"
                    break
        finally:
            bar.close()
            self._leave_data_parallel()
        return EMResult(self.params, history[-1], history, n_pass, converged, reason)

    # -- data-parallel fits ------------------------------------------------------------
    def _data_parallel(self) -> Optional[DataParallel]:
        """The process group of a data-parallel fit (None in one process): sums over data points
        are all-reduced, and a MAP site's prior counts 1/ranks on each rank (once in all)."""
        parallel = DataParallel.current()
        if parallel is None:
            return None
        if self.updates is not None and self._solve is None:
            raise ValueError(
                f"this fit runs on {parallel.world_size} ranks of torch.distributed, each with a shard of the data: "
                "give the closed-form M-step as EM(model, statistics=..., solve=...), whose statistics are "
                "sums over data points (all-reduced), or leave it to the engine; updates=... sees one shard only")
        self.autograd_mstep.reduce = parallel.sum
        self.tracer.shared_scale = 1.0 / parallel.world_size
        self._parallel = parallel
        return parallel

    def _leave_data_parallel(self) -> None:
        self.autograd_mstep.reduce = None
        self.tracer.shared_scale = None
        self._parallel = None

    # -- helpers ---------------------------------------------------------------------
    def _free_parameters(self) -> int:
        store = pyro.get_param_store()
        return sum(free_parameters(store.get_param(n), param_constraint(n, store)) for n in self._fitted_names())

    def _fitted_names(self) -> List[str]:
        """The params and MAP sites the M-step fits: the model's, less ``fixed``."""
        names = self.tracer.names()
        unknown = sorted(self.fixed - set(names))
        if unknown:
            raise ValueError(f"fixed names {', '.join(repr(n) for n in unknown)}, which the model does not "
                             f"have (its params and MAP sites: {', '.join(names)})")
        return [n for n in names if n not in self.fixed]

    def _names(self) -> Tuple[str, ...]:
        return self.tracer.names()

    def _snapshot(self) -> Dict[str, torch.Tensor]:
        """Unconstrained values of every fitted param (restored exactly, no round trip)."""
        return {n: unconstrained(n).detach().clone() for n in self._names()}

    def _restore(self, snapshot: Dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in snapshot.items():
                unconstrained(name).copy_(value)

    def _save(self, path: str, history: List[float], n_iter: int, rng: Optional[torch.Tensor],
              converged: bool = False, reason: str = "running") -> None:
        parallel = DataParallel.current()
        if parallel is not None and parallel.rank != 0:  # every rank holds the same state: rank 0 writes it
            return
        state = Checkpoint.capture(self._names(), history, n_iter,
                                   torch.get_rng_state() if rng is None else rng, converged, reason)
        state.data = self._fingerprint
        save_checkpoint(path, state)

    def _resume(self, path: str) -> Tuple[List[float], int]:
        """Load ``path`` into the param store; the history and step count to continue from."""
        if not os.path.exists(path):
            logger.info("no checkpoint at %r: starting a fresh EM fit", path)
            return [], 0
        state = load_checkpoint(path)
        if state.data and state.data != self._fingerprint:
            raise ValueError(f"checkpoint {path!r} was made on other data ({state.data}); this fit's data: "
                             f"{self._fingerprint}. Resume on the same data, or give another checkpoint path "
                             "(or resume=False) to start afresh")
        state.restore(self._names(), path)
        torch.set_rng_state(state.rng_state)
        # θ_{n_iter} is evaluated again (same value): the loop appends its log-likelihood.
        return list(state.history[:state.n_iter]), state.n_iter

    def _stopped(self, good: _Good, history: List[float], path: Optional[str], reason: str, why: str) -> EMResult:
        """The result at the last evaluated parameters after an interrupt or a callback failure."""
        self._restore(good.snapshot)
        self._last_step = None
        history = history[:good.n + 1]
        if path is not None:
            self._save(path, history, good.n, good.rng_state, reason=reason)
        warnings.warn(f"EM fit {why} after {good.n} steps; returning the last evaluated parameters "
                      "with converged=False", RuntimeWarning, stacklevel=3)
        return EMResult(self.params, history[-1], history, good.n, False, reason)
