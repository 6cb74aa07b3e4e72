"""What every bundled HMM shares: Baum-Welch through ``pyroem.EM``, scoring, decoding, sampling.

A subclass supplies the emission part: its Pyro model function, its parameters (names, checks,
initialization, constraints), the per-state emission log-densities, the closed-form emission
update from the state posteriors, and a sampler for emissions given states.
"""
from __future__ import annotations

import contextlib
import functools
import math
import numbers
import sys
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyro
import torch
from pyro.distributions import constraints
from torch.distributions import transform_to
from tqdm.auto import tqdm

from pyroem import EM, MonotonicityWarning, decode, log_likelihood
from pyroem.threads import threads_for

from ..estimator import Estimator, PeerStopping, best_start
from ..exceptions import NotFittedError
from .checks import (
    check_dtype,
    check_int,
    check_lengths,
    check_letters,
    check_prior,
    check_probs,
    pad_sequences,
    random_state_of,
)

DECODERS = ("viterbi", "map")
#: accepted values of ``implementation``; every one runs the engine, which eliminates the chain by
#: the forward recursion or, from ``pyroem.thresholds.SCAN_FROM`` steps on, by a scan in time
IMPLEMENTATIONS = ("auto", "log", "scaling", "scan", "engine")


class ConvergenceMonitor(PeerStopping):
    """hmmlearn's ``ConvergenceMonitor``: ``log p(X|θ)`` per EM step and hmmlearn's stopping rule,
    as the callback of the engine's fit (:class:`PeerStopping` with the signed gain).

    ``history[i]`` is ``log p(X|θ_i)`` at the parameters step ``i + 1`` started from;
    ``converged`` is True once ``iter == n_iter`` or the last gain ``history[-1] - history[-2]``
    is below ``tol``. With ``verbose``, hmmlearn's line for every step on stderr.
    """

    _template = "{iter:>10d} {log_prob:>16.8f} {delta:>+16.8f}"

    def __init__(self, tol: float, n_iter: int, verbose: bool, callback: Optional[Callable] = None) -> None:
        super().__init__(tol, signed=True, callback=callback, report=self._line if verbose else None)
        self.n_iter = n_iter
        self.verbose = verbose

    def __repr__(self) -> str:
        return (f"ConvergenceMonitor(tol={self.tol}, n_iter={self.n_iter}, iter={self.iter}, "
                f"converged={self.converged}, history={self.history})")

    def _line(self, n_iter: int, log_prob: float, delta: float) -> None:
        delta = delta if n_iter > 1 else float("nan")
        tqdm.write(self._template.format(iter=n_iter, log_prob=log_prob, delta=delta), file=sys.stderr)

    @property
    def converged(self) -> bool:
        return self.iter == self.n_iter or (
            len(self.history) >= 2 and self.history[-1] - self.history[-2] < self.tol
        )


def _normalize_rows(counts: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Rows of ``counts`` divided by their sums; a row without any count keeps its old value."""
    sums = counts.sum(-1, keepdim=True)
    return torch.where(sums > 0, counts / torch.where(sums > 0, sums, torch.ones_like(sums)), old)


def dirichlet_map(counts: torch.Tensor, prior, old: torch.Tensor) -> torch.Tensor:
    """``max(prior - 1 + counts, 0)`` normalized; entries that are exactly 0 in ``old`` stay 0."""
    new = torch.clamp(torch.as_tensor(prior, dtype=counts.dtype, device=counts.device) - 1 + counts, min=0)
    new = torch.where(old == 0, torch.zeros_like(new), new)
    return _normalize_rows(new, old)


class BaseHMM(Estimator):
    """Hidden Markov model fitted by Baum-Welch, written as a Pyro model and run by ``pyroem.EM``.

    The chain ``x_0 ~ Cat(startprob)``, ``x_t ~ Cat(transmat[x_{t-1}])`` emits one observation
    per step. Many sequences are padded to the longest one; padded steps are masked out of the
    emissions, and the latent steps left in the chain after a sequence ends integrate to one.
    Updates follow hmmlearn's M-step; where hmmlearn would leave a row without any expected
    count as zeros (no transition ever observed from a state), the old row is kept.

    The E-step is ``pyroem.EM``'s on the Pyro model (a ``pyroem.vectorized_markov`` chain): the
    scaled forward recursion, its gradient giving the posteriors (O(T K²) in T sequential steps,
    vectorized over sequences), or for sequences of 1024 steps and more a scan in time (O(T K³)
    work in about 2√T + log₂ T sequential steps). ``implementation`` is accepted for hmmlearn
    code (``"log"``, ``"scaling"``, ``"scan"``, ``"engine"``, ``"auto"``); the engine chooses.
    ``decode``/``predict`` are ``pyroem.decode`` on the same model (Viterbi on the E-step's
    chain tables; from 1024 steps on, blocks of the sequence decoded at once from guessed starts
    and corrected, about 4 √T sequential steps).

    ``callback(n_iter, log_prob, params)``, if given, is called at every Baum-Welch step with
    its ``log p(X|θ)`` and the parameters θ it was computed at, those the step starts from
    (``n_iter`` counts from 1 in each initialization; ``params``: tensors by name); a true
    return value ends that initialization after the step.
    """

    #: parameter codes: one letter per fitted parameter, e.g. "s" startprob, "t" transmat.
    _codes = "st"

    def __init__(self, n_components: int = 1, startprob_prior=1.0, transmat_prior=1.0,
                 algorithm: str = "viterbi", random_state=None, n_iter: int = 10, tol: float = 1e-2,
                 verbose: bool = False, params: str = "st", init_params: str = "st",
                 device=None, dtype: torch.dtype = torch.float64, implementation: str = "auto",
                 n_init: int = 1, callback=None) -> None:
        self.n_components = n_components
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.algorithm = algorithm
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.device = device
        self.dtype = dtype
        self.implementation = implementation
        self.n_init = n_init
        self.callback = callback

    # -- subclass hooks ---------------------------------------------------------------
    def _pyro_model(self) -> Callable:
        """The Pyro model with the structural arguments bound: ``model(X, mask)``."""
        raise NotImplementedError

    def _emission_params(self) -> Dict[str, Tuple[str, constraints.Constraint]]:
        """``{param name: (attribute name, constraint)}`` for the emission parameters."""
        raise NotImplementedError

    def _check_X(self, X, fitting: bool) -> np.ndarray:
        raise NotImplementedError

    def _to_tensor(self, X: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def _init_emissions(self, X: np.ndarray, lengths: np.ndarray) -> None:
        raise NotImplementedError

    def _check_emissions(self) -> None:
        raise NotImplementedError

    def _emission_updates(self, gamma: torch.Tensor, Xpad: torch.Tensor,
                          p: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Closed-form emission updates from masked state posteriors ``gamma`` (N, T, K)."""
        raise NotImplementedError

    def _sample_emissions(self, states: np.ndarray, rs: np.random.RandomState) -> np.ndarray:
        raise NotImplementedError

    def _n_fit_scalars(self) -> Dict[str, int]:
        k = self.n_components
        return {"s": k - 1, "t": k * (k - 1)}

    def _is_map(self) -> bool:
        """True when a prior makes the update a MAP step (log p(X|θ) alone may then dip)."""
        return bool(np.any(np.asarray(self.startprob_prior) != 1.0)
                    or np.any(np.asarray(self.transmat_prior) != 1.0))

    # -- parameters ---------------------------------------------------------------------
    def _all_params(self) -> Dict[str, Tuple[str, constraints.Constraint]]:
        out = {"startprob": ("startprob_", constraints.real), "transmat": ("transmat_", constraints.real)}
        out.update(self._emission_params())
        return out

    def _check_hyper(self) -> None:
        check_int(self.n_components, "n_components", 1)
        check_int(self.n_iter, "n_iter", 0)
        k = check_int(self.n_components, "n_components", 1)
        check_prior(self.startprob_prior, "startprob_prior", (k,), 0, strict=True)
        check_prior(self.transmat_prior, "transmat_prior", (k, k), 0, strict=True)
        if isinstance(self.tol, bool) or not isinstance(self.tol, numbers.Real) or math.isnan(self.tol):
            raise ValueError(f"tol must be a number, got {self.tol!r}")
        if self.algorithm not in DECODERS:
            raise ValueError(f"algorithm must be one of {DECODERS}, got {self.algorithm!r}")
        check_letters(self.params, "params", self._codes)
        check_letters(self.init_params, "init_params", self._codes)
        check_dtype(self.dtype)
        self._method()

    def _check_fitted(self) -> None:
        missing = [attr.lstrip("_") for attr, _ in self._all_params().values() if not hasattr(self, attr)]
        if missing:
            raise NotFittedError(
                f"this {type(self).__name__} has no {', '.join(missing)}: call fit first "
                "(or set the parameters as attributes)"
            )

    def _check(self) -> None:
        """Validate the current parameters (set by fit, initialization or the user)."""
        k = self.n_components
        self.startprob_ = check_probs(self.startprob_, "startprob_", (k,))
        self.transmat_ = check_probs(self.transmat_, "transmat_", (k, k))
        self._check_emissions()

    def _needs_init(self, code: str, attr: str) -> bool:
        return code in self.init_params or not hasattr(self, attr)

    def _init(self, X: np.ndarray, lengths: np.ndarray) -> None:
        k = self.n_components
        rs = random_state_of(self.random_state)
        if self._needs_init("s", "startprob_"):
            self.startprob_ = rs.dirichlet(np.full(k, 1.0 / k))
        if self._needs_init("t", "transmat_"):
            self.transmat_ = rs.dirichlet(np.full(k, 1.0 / k), size=k)
        self._init_emissions(X, lengths)

    def _tensor(self, value) -> torch.Tensor:
        return torch.as_tensor(np.asarray(value), dtype=self.dtype, device=self.device)

    def _param_tensors(self) -> Dict[str, torch.Tensor]:
        return {name: self._tensor(getattr(self, attr)) for name, (attr, _) in self._all_params().items()}

    def _load_store(self) -> None:
        """Put the current parameters into the (scoped) param store."""
        store = pyro.get_param_store()
        for name, (attr, constraint) in self._all_params().items():
            store.setdefault(name, self._tensor(getattr(self, attr)), constraint=constraint)

    def _read_store(self) -> None:
        store = pyro.get_param_store()
        for name, (attr, _) in self._all_params().items():
            setattr(self, attr, store.get_param(name).detach().cpu().numpy().copy())

    # -- data ------------------------------------------------------------------------
    def _prepare(self, X, lengths, fitting: bool = False) -> Tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
        X = self._check_X(X, fitting)
        lengths = check_lengths(lengths, X.shape[0])
        Xpad, mask = pad_sequences(self._to_tensor(X), lengths)
        return X, lengths, Xpad, mask

    # -- Baum-Welch ------------------------------------------------------------------
    def _m_step(self, gamma: torch.Tensor, trans: torch.Tensor, Xpad: torch.Tensor,
                p: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """hmmlearn's closed-form update from masked state posteriors ``gamma`` (N, T, K) and
        expected transition counts ``trans`` (K, K)."""
        new = dict(p)
        if "s" in self.params:
            new["startprob"] = dirichlet_map(gamma[:, 0].sum(0), self.startprob_prior, p["startprob"])
        if "t" in self.params:
            new["transmat"] = dirichlet_map(trans, self.transmat_prior, p["transmat"])
        new.update(self._emission_updates(gamma, Xpad, p))
        return new

    def _updates(self, expect, Xpad: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The M-step ``pyroem.EM`` runs: the posteriors read from ``expect``, then ``_m_step``."""
        p = {name: pyro.param(name).detach() for name in self._all_params()}
        w = mask.to(p["startprob"].dtype)
        t_max = Xpad.shape[1]
        gamma = self._gamma(expect, t_max) * w.unsqueeze(-1)
        trans = torch.zeros_like(p["transmat"])
        if "t" in self.params and t_max > 1:
            pair = (f"x_{slice(0, t_max - 1, None)}", f"x_{slice(1, t_max, None)}")
            if bool(mask.all()):
                trans = expect.expected_counts(*pair)
            else:  # transitions after a sequence's end are not counted
                trans = torch.einsum("ntij,nt->ij", expect.joint(*pair), w[:, 1:])
        return self._checked(self._m_step(gamma, trans, Xpad, p))

    @staticmethod
    def _gamma(expect, t_max: int) -> torch.Tensor:
        """``p(x_{n,t} = k | X)``, shape ``(N, T, K)``, from the chain's sites ``x_0`` and
        ``x_slice(1, T, None)`` (see ``pyroem.vectorized_markov``)."""
        gamma = expect.marginal("x_0")
        if t_max > 1:
            gamma = torch.cat([gamma, expect.marginal(f"x_{slice(1, t_max, None)}")], dim=1)
        return gamma

    def _method(self) -> None:
        """Check ``implementation`` (kept for hmmlearn code: the engine chooses the E-step)."""
        if not isinstance(self.implementation, str) or self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {self.implementation!r}")

    def _checked(self, new: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The updated parameters, refused when one leaves its constraint or sits on its
        boundary, e.g. singular covariances from collapsed data."""
        for name, (_, constraint) in self._all_params().items():
            value = new[name]
            inside = bool(constraint.check(value).all()) and bool(torch.isfinite(value).all())
            if inside and constraint is not constraints.real:
                inside = bool(torch.isfinite(transform_to(constraint).inv(value)).all())
            if not inside:
                raise ValueError(f"the Baum-Welch update of '{name}' is outside its constraint {constraint} "
                                 "or on its boundary (collapsed data?)")
        return new

    def _em(self) -> EM:
        return EM(self._pyro_model(), updates=self._updates, max_plate_nesting=2)

    def _fit_em(self, Xpad: torch.Tensor, mask: torch.Tensor) -> None:
        """Baum-Welch: the engine's ``EM.fit`` under hmmlearn's stopping rule (``monitor_``)."""
        store = pyro.get_param_store()
        with store.scope(), warnings.catch_warnings():
            if self._is_map():
                warnings.simplefilter("ignore", MonotonicityWarning)
            self._load_store()
            self.monitor_.run(self._em(), Xpad, mask, max_iter=self.n_iter, progress=bool(self.verbose))
            self._read_store()

    def fit(self, X, lengths=None) -> "BaseHMM":
        """Estimate the parameters by Baum-Welch (EM) from ``X`` (sequences of ``lengths``).

        Runs at most ``n_iter`` steps and stops once a step gains less than ``tol`` (hmmlearn's
        rule); ``monitor_.history`` holds ``log p(X|θ)`` at the start of each step. With
        ``n_init > 1`` the fit is repeated from that many initializations (each with a seed drawn
        from ``random_state``) and the parameters with the highest ``log p(X|θ)`` are kept. With a prior
        (e.g. GaussianHMM's default ``covars_prior``) the update is a MAP step, which may lower
        ``log p(X|θ)`` slightly; pyroem's monotonicity warning is then not raised.
        """
        self._check_hyper()
        n_init = check_int(self.n_init, "n_init", 1)
        X, lengths, Xpad, mask = self._prepare(X, lengths, fitting=True)
        # small fits run on one thread (pyroem.threads): the pool's hand-offs cost more than the work
        with threads_for(Xpad.numel() * self.n_components ** 2):
            return self._fit_starts(X, lengths, Xpad, mask, n_init)

    def _fit_starts(self, X, lengths, Xpad, mask, n_init: int) -> "BaseHMM":
        if n_init == 1:
            self._fit_once(X, lengths, Xpad, mask)
            return self
        # several starts, each from its own seed drawn from random_state; the best log p(X|θ) wins
        attrs = [attr for attr, _ in self._all_params().values()]
        given = {a: getattr(self, a) for a in attrs if hasattr(self, a)}
        rs, seed = random_state_of(self.random_state), self.random_state

        def run(_: int):
            for a in attrs:
                if a in given:
                    setattr(self, a, given[a])
                elif hasattr(self, a):
                    delattr(self, a)
            self.random_state = int(rs.randint(np.iinfo(np.int32).max))
            self._fit_once(X, lengths, Xpad, mask)
            return self.score(X, lengths), ({a: getattr(self, a) for a in attrs}, self.monitor_)

        try:
            (fitted, self.monitor_), _ = best_start(n_init, run)
        finally:
            self.random_state = seed
        for a, value in fitted.items():
            setattr(self, a, value)
        return self

    def _fit_once(self, X: np.ndarray, lengths: np.ndarray, Xpad: torch.Tensor, mask: torch.Tensor) -> None:
        self._init(X, lengths)
        self._check()
        self.monitor_ = ConvergenceMonitor(self.tol, self.n_iter, self.verbose, self.callback)
        self._fit_em(Xpad, mask)

    @property
    def history_(self) -> List[float]:
        """``log p(X|θ_i)`` at the start of every EM step of the last fit."""
        self._check_monitor()
        return list(self.monitor_.history)

    @property
    def n_iter_(self) -> int:
        self._check_monitor()
        return self.monitor_.iter

    @property
    def converged_(self) -> bool:
        """True when the last fit stopped because the gain fell below ``tol``."""
        self._check_monitor()
        h = self.monitor_.history
        return len(h) >= 2 and h[-1] - h[-2] < self.tol

    def _check_monitor(self) -> None:
        if not hasattr(self, "monitor_"):
            raise NotFittedError(f"this {type(self).__name__} has not been fitted yet: call fit first")

    # -- inference at the current parameters -------------------------------------------
    @contextlib.contextmanager
    def _at_fitted_params(self, X, lengths) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """``(Xpad, mask)`` of the checked data, with the fitted parameters in a scoped param store."""
        self._check_fitted()
        self._check()
        self._method()
        X, lengths, Xpad, mask = self._prepare(X, lengths)
        store = pyro.get_param_store()
        with store.scope(), torch.no_grad():
            self._load_store()
            yield Xpad, mask

    def _posterior(self, X, lengths, marginals: bool) -> Tuple[float, Optional[np.ndarray]]:
        with self._at_fitted_params(X, lengths) as (Xpad, mask):
            if not marginals:  # -inf for impossible data, as hmmlearn's score
                return float(log_likelihood(self._pyro_model(), Xpad, mask)), None
            expect = self._em().e_step(Xpad, mask)
            return expect.log_likelihood_value(), self._gamma(expect, Xpad.shape[1])[mask].cpu().numpy()

    def score(self, X, lengths=None) -> float:
        """``log p(X)`` under the model (the sum over sequences)."""
        return self._posterior(X, lengths, marginals=False)[0]

    def score_samples(self, X, lengths=None) -> Tuple[float, np.ndarray]:
        """``(log p(X), posteriors)`` with ``posteriors[i, k] = p(x_i = k | X)``."""
        return self._posterior(X, lengths, marginals=True)

    def predict_proba(self, X, lengths=None) -> np.ndarray:
        """Posterior state probabilities, shape ``(n_samples, n_components)``."""
        return self._posterior(X, lengths, marginals=True)[1]

    def decode(self, X, lengths=None, algorithm: Optional[str] = None) -> Tuple[float, np.ndarray]:
        """Most likely states: ``(log prob of the path(s), states)`` by Viterbi, or per-step
        posterior modes with ``algorithm="map"`` (log prob = sum of the chosen posteriors' maxima)."""
        algorithm = algorithm or self.algorithm
        if algorithm not in DECODERS:
            raise ValueError(f"algorithm must be one of {DECODERS}, got {algorithm!r}")
        if algorithm == "map":
            _, post = self.score_samples(X, lengths)
            return float(np.max(post, axis=1).sum()), np.argmax(post, axis=1)
        with self._at_fitted_params(X, lengths) as (Xpad, mask):
            found = decode(self._pyro_model(), Xpad, mask)
        states = found["x_0"]
        if Xpad.shape[1] > 1:
            states = torch.cat([states, found[f"x_{slice(1, Xpad.shape[1], None)}"]], dim=1)
        return found.log_prob, states[mask].cpu().numpy()

    def predict(self, X, lengths=None) -> np.ndarray:
        """Most likely state of every sample (``algorithm``, Viterbi by default)."""
        return self.decode(X, lengths)[1]

    def sample(self, n_samples: int = 1, random_state=None, currstate: Optional[int] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
        """Draw ``(X, states)`` of one sequence of ``n_samples`` steps."""
        self._check_fitted()
        self._check()
        n_samples = check_int(n_samples, "n_samples", 1)
        rs = random_state_of(self.random_state if random_state is None else random_state)
        k = self.n_components
        u = rs.rand(n_samples)
        start_cdf = np.cumsum(self.startprob_)
        trans_cdf = np.cumsum(self.transmat_, axis=1)
        states = np.empty(n_samples, dtype=int)
        if currstate is None:
            states[0] = min(int(np.searchsorted(start_cdf, u[0], side="right")), k - 1)
        else:
            states[0] = check_int(currstate, "currstate", 0)
            if states[0] >= k:
                raise ValueError(f"currstate must be < n_components={k}, got {currstate}")
        for t in range(1, n_samples):  # a Markov chain: each state needs the previous one
            states[t] = min(int(np.searchsorted(trans_cdf[states[t - 1]], u[t], side="right")), k - 1)
        return self._sample_emissions(states, rs), states

    # -- model selection --------------------------------------------------------------
    def _n_params(self) -> int:
        per = self._n_fit_scalars()
        return sum(per[c] for c in self.params)

    def aic(self, X, lengths=None) -> float:
        """``-2 log p(X) + 2 n_params`` (free parameters named in ``params``)."""
        return -2 * self.score(X, lengths) + 2 * self._n_params()

    def bic(self, X, lengths=None) -> float:
        """``-2 log p(X) + n_params log n_samples``."""
        n = len(self._check_X(X, fitting=False))
        return -2 * self.score(X, lengths) + self._n_params() * np.log(n)


def bind_model(model: Callable, **structure) -> Callable:
    """``model`` with its structural keyword arguments fixed, called as ``model(X, mask)``."""
    return functools.partial(model, **structure)
