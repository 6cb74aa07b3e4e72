"""Checks of the arguments of the public entry points, each naming the argument it refuses."""
from __future__ import annotations

import math
import numbers
import os
import warnings
from typing import Callable, Optional

import torch
from pyro.poutine.trace_struct import Trace

from .handlers import is_map_site, is_unscored


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_model(model: object) -> Callable:
    if not callable(model):
        raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
    return model


def check_updates(updates: object) -> Optional[Callable]:
    if updates is not None and not callable(updates):
        raise TypeError(
            f"updates must be None or a callable returning {{param name: value}}, got {type(updates).__name__}"
        )
    return updates


def check_statistics(updates: object, statistics: object, solve: object) -> tuple:
    """``(statistics, solve)``: both given, or neither; never beside ``updates``."""
    if (statistics is None) != (solve is None):
        raise ValueError("statistics and solve go together: statistics(expect, *args) gives sums over the "
                         "data, solve(stats, *args) the parameters from them")
    if statistics is not None:
        if updates is not None:
            raise ValueError("give either updates or statistics and solve, not both")
        for name, fn in (("statistics", statistics), ("solve", solve)):
            if not callable(fn):
                raise TypeError(f"{name} must be a callable, got {type(fn).__name__}")
    return statistics, solve


def check_max_plate_nesting(value: object) -> Optional[int]:
    if value is None:
        return None
    if not _is_int(value) or value < 0:
        raise ValueError(f"max_plate_nesting must be a non-negative int or None, got {value!r}")
    return int(value)


def check_max_iter(value: object) -> int:
    """``max_iter`` counts M-steps; 0 only evaluates ``log p(y|θ)`` at the start."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"max_iter must be a non-negative int, got {value!r}")
    return int(value)


def check_n_init(value: object) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"n_init must be an int >= 1, got {value!r}")
    return int(value)


def check_tol(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0 or math.isinf(value):
        raise ValueError(f"tol must be a finite number >= 0, got {value!r}")
    return float(value)


def check_callback(value: object) -> Optional[Callable]:
    if value is not None and not callable(value):
        raise TypeError(f"callback must be None or callable(n_iter, log_likelihood, params), got {type(value).__name__}")
    return value


ACCELERATIONS = ("squarem",)


def check_accelerate(value: object) -> Optional[str]:
    if value is not None and value not in ACCELERATIONS:
        raise ValueError(f"accelerate must be None or one of {ACCELERATIONS}, got {value!r}")
    return value


def check_checkpoint(path: object, every: object, resume: object) -> Optional[str]:
    """The checkpoint path as a string (None when not checkpointing), after checking all three arguments."""
    if not _is_int(every) or every < 1:
        raise ValueError(f"checkpoint_every must be an int >= 1, got {every!r}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {type(resume).__name__}")
    if path is None:
        if resume:
            raise ValueError("resume=True needs checkpoint=<path of the checkpoint file>")
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise ValueError(f"checkpoint must be a non-empty file path, got {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path!r} is a directory; give the path of a file in it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"checkpoint {path!r}: the directory {parent!r} does not exist")
    return path


def require_observed(trace: Trace) -> None:
    """Refuse a model with no observed site: ``log p(y|θ)`` would be identically 0."""
    for site in trace.nodes.values():
        if (site["type"] == "sample" and site["is_observed"] and not is_map_site(site)
                and not is_unscored(site)):
            return
    raise ValueError(
        "the model observes nothing: no pyro.sample(..., obs=...) or pyro.factor site, so "
        "log p(y|θ) = 0 and EM has no data to fit; pass the data as obs= to the likelihood's sample sites"
    )


def warn_mixed_precision(args: tuple, kwargs: dict, params: dict) -> None:
    """Warn where float64 data meet float32 params: the fit then runs, and returns, in float32."""
    data = [v for v in list(args) + list(kwargs.values()) if isinstance(v, torch.Tensor) and v.dtype == torch.float64]
    low = sorted(n for n, p in params.items() if p.dtype in (torch.float32, torch.float16, torch.bfloat16))
    if data and low:
        names = ", ".join(repr(n) for n in low[:5]) + (" ..." if len(low) > 5 else "")
        warnings.warn(f"the data are float64 but the params {names} are {params[low[0]].dtype}: the fit "
                      "runs, and returns its params, in the lower precision. Create the params in the "
                      "data's float type (e.g. torch.tensor(..., dtype=y.dtype)) to fit in float64, or "
                      "pass float32 data", UserWarning, stacklevel=4)
