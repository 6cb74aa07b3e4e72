"""What the bundled estimators share: scikit-learn's estimator protocol and the peers' stopping rule."""
from __future__ import annotations

import inspect
import math
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

T = TypeVar("T")


class Estimator:
    """The constructor's arguments are the estimator's params: ``get_params``/``set_params`` read
    and write them by name (so ``sklearn.base.clone`` and grid searches work), and the repr shows
    those that differ from their defaults."""

    @classmethod
    def _param_names(cls) -> List[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "Estimator":
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid: {valid}")
            setattr(self, name, value)
        return self

    #: scikit-learn's kind of estimator ("density_estimator" for mixtures and HMMs)
    _estimator_type = "density_estimator"

    def __sklearn_tags__(self):
        """scikit-learn's tags (read by ``Pipeline``, ``clone``, ``check_estimator``); imported
        only when scikit-learn asks, since it is not a dependency."""
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(estimator_type=self._estimator_type, target_tags=TargetTags(required=False),
                    input_tags=InputTags(two_d_array=True, allow_nan=getattr(self, "missing", None) == "marginalize"))

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        parts = []
        for name in self._param_names():
            value, default = getattr(self, name), sig.parameters[name].default
            if not (value is default or (isinstance(value, (int, float, str, bool)) and value == default
                                         and type(value) is type(default))):
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def caller_stacklevel() -> int:
    """The ``stacklevel`` of ``warnings.warn`` that names the user's line: the first frame, from the
    function that calls this one outward, outside the bundled models' files."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here + os.sep):
        frame, level = frame.f_back, level + 1
    return level


class PeerStopping:
    """scikit-learn's and hmmlearn's stopping rule, as the callback of ``pyroem.EM.fit(...,
    tol=None, final_m_step=True)``: the one EM loop is the engine's, the rule is the peers'.

    Step ``n`` (from 1) reports ``value_n = scale · log p(X|θ_{n-1}) (+ first_offset at n = 1)`` —
    the value computed before its M-step — and the fit ends after that M-step once the change
    ``value_n − value_{n−1}`` is below ``tol`` (in absolute value with ``signed=False``,
    scikit-learn; as a signed gain with ``signed=True``, hmmlearn), or when ``callback(n, value_n,
    params)`` returns True (``params``: those ``value_n`` was computed at, as ``show`` presents
    them). ``report(n, value, change)`` prints a verbose line. ``previous`` is the value a
    warm start continues from.
    """

    def __init__(self, tol: float, *, signed: bool = False, scale: float = 1.0, first_offset: float = 0.0,
                 previous: float = -math.inf, callback: Optional[Callable] = None,
                 show: Optional[Callable] = None, report: Optional[Callable] = None) -> None:
        self.tol, self.signed, self.scale, self.first_offset = tol, signed, scale, first_offset
        self.previous, self.callback, self.show, self.report = previous, callback, show, report
        self.history: List[float] = []
        self.below_tol = False

    @property
    def iter(self) -> int:
        """Steps reported so far."""
        return len(self.history)

    @property
    def converged(self) -> bool:
        """True once the last change was below ``tol``."""
        return self.below_tol

    def __call__(self, n_iter: int, log_likelihood: float, params: Dict) -> bool:
        value = log_likelihood * self.scale + (self.first_offset if not self.history else 0.0)
        last = self.history[-1] if self.history else self.previous
        change = value - last
        self.history.append(value)
        if self.report is not None:
            self.report(self.iter, value, change)
        if self.history[1:] or self.previous > -math.inf:
            self.below_tol = (change if self.signed else abs(change)) < self.tol
        stop = False
        if self.callback is not None:
            stop = bool(self.callback(self.iter, value, params if self.show is None else self.show(params)))
        return stop or self.below_tol

    def run(self, em, *args, max_iter: int, data=None, progress: bool = False):
        """``em.fit`` to at most ``max_iter`` M-steps under this rule; returns the ``EMResult``."""
        return em.fit(*args, data=data, max_iter=max_iter, tol=None, callback=self, final_m_step=True,
                      progress=progress)


def best_start(n_init: int, run: Callable[[int], Tuple[float, T]]) -> Tuple[T, List[float]]:
    """``run(i)`` for ``i < n_init`` starts, each returning ``(score, outcome)``: the outcome of the
    highest score (the first of equal ones; a later start replaces one scored ``-inf``, as
    scikit-learn does) and every start's score."""
    best, best_score, scores = None, -math.inf, []
    for i in range(n_init):
        score, outcome = run(i)
        scores.append(score)
        if best is None or score > best_score or best_score == -math.inf:
            best, best_score = outcome, score
    return best, scores
