"""What ``compare_svi`` returns: each method's trace of the exact log-likelihood, and the comparison."""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Dict, Optional, Union

import numpy as np
import torch

from ..diagnostics import rounding_slack


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
        dtype = next((v.dtype for v in self.em.params.values() if v.is_floating_point()), torch.float64)
        gap = self.em.best_log_likelihood - self.svi.best_log_likelihood
        if abs(gap) <= rounding_slack(best, dtype):  # the same value, as far as the float type can tell
            method = f"EM and SVI alike, within {str(dtype).replace('torch.', '')} rounding"
        else:
            method = "EM" if gap > 0 else "SVI"
        out = Summary(initial_log_likelihood=self.initial_log_likelihood, best_log_likelihood=best,
                      best_method=method, within=float(within))
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
