"""Input checks for the HMM estimators and the padding of many sequences into one batch."""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional, Tuple

import numpy as np
import torch


def check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_real(value, name: str, minimum: float) -> float:
    """A finite real number ``>= minimum`` (bools, strings and NaN rejected)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value < minimum):
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


def check_prior(value, name: str, shape: Optional[Tuple[int, ...]] = None, minimum: Optional[float] = None,
                strict: bool = False) -> np.ndarray:
    """A finite number or array (broadcastable to ``shape`` if given), each entry ``>= minimum``
    (``> minimum`` when ``strict``): e.g. Dirichlet concentrations must be positive."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}") from None
    if shape is not None:
        try:
            np.broadcast_to(arr, shape)
        except ValueError:
            raise ValueError(f"{name} must be a number or an array broadcastable to shape {shape}, "
                             f"got shape {arr.shape}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and ((arr <= minimum).any() if strict else (arr < minimum).any()):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got min {float(arr.min())!r}")
    return arr


def check_letters(value, name: str, allowed: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string of parameter codes from {allowed!r}, got {type(value).__name__}")
    bad = sorted(set(value) - set(allowed))
    if bad:
        raise ValueError(f"{name}={value!r} has unknown codes {''.join(bad)!r}; allowed codes are {allowed!r}")
    return value


def check_dtype(dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def check_2d(X, name: str = "X", allow_nan: bool = False) -> np.ndarray:
    """A 2-D numeric array without infinity, and without NaN unless ``allow_nan`` (missing values)."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    try:
        X = np.asarray(X)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features): {err}") from err
    if not X.flags.writeable:  # a pandas frame's read-only view: torch takes a copy without a warning
        X = X.copy()
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ValueError(f"{name} must hold numbers, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got {X.ndim}-D of shape {X.shape}; "
            "reshape a single feature with X.reshape(-1, 1)"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {X.shape})")
    if np.issubdtype(X.dtype, np.floating) and not np.isfinite(X).all():
        if np.isinf(X).any():
            raise ValueError(f"{name} contains infinity")
        if not allow_nan:
            raise ValueError(f"{name} contains NaN ({int(np.isnan(X).sum())} entries). To integrate missing values "
                             "out of the fit, use missing='marginalize'")
    return X


def check_lengths(lengths, n_samples: int) -> np.ndarray:
    """Sequence lengths: positive ints summing to ``n_samples`` (None: one sequence)."""
    if lengths is None:
        return np.array([n_samples], dtype=np.int64)
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.detach().cpu().numpy()
    arr = np.asarray(lengths)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"lengths must be a non-empty 1-D sequence of ints, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and (arr == np.round(arr)).all():
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"lengths must hold ints, got {lengths!r}")
    if (arr <= 0).any():
        raise ValueError(f"lengths must be positive, got {arr.tolist()}")
    if int(arr.sum()) != n_samples:
        raise ValueError(f"lengths sum to {int(arr.sum())} but X has {n_samples} samples")
    return arr.astype(np.int64)


def pad_sequences(X: torch.Tensor, lengths: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack sequences (concatenated along dim 0 of ``X``) into ``(N, T_max, ...)`` plus a mask.

    Padded steps hold zeros (a valid symbol / value) and ``mask`` is False there.
    """
    device = X.device
    lens = torch.as_tensor(lengths, device=device)
    n_seq, t_max = lens.numel(), int(lens.max())
    seq = torch.repeat_interleave(torch.arange(n_seq, device=device), lens)
    starts = torch.cumsum(lens, 0) - lens
    pos = torch.arange(X.shape[0], device=device) - starts[seq]
    padded = X.new_zeros((n_seq, t_max) + tuple(X.shape[1:]))
    padded[seq, pos] = X
    mask = torch.zeros((n_seq, t_max), dtype=torch.bool, device=device)
    mask[seq, pos] = True
    return padded, mask


def check_probs(value, name: str, shape: Tuple[int, ...]) -> np.ndarray:
    """A probability vector (or rows of them) of the given shape."""
    arr = np.array(value, dtype=np.float64, copy=True)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must hold finite non-negative probabilities")
    sums = arr.sum(axis=-1)
    if not np.allclose(sums, 1.0):
        raise ValueError(f"{name} must sum to 1 along its last axis, got sums {np.round(sums, 6).tolist()}")
    return arr


def random_state_of(random_state: Optional[object]) -> np.random.RandomState:
    """``None`` -> numpy's global RandomState, an int -> a new seeded one, an instance -> itself."""
    if random_state is None or random_state is np.random:
        return np.random.mtrand._rand
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return np.random.RandomState(int(random_state))
    if isinstance(random_state, np.random.RandomState):
        return random_state
    raise ValueError(f"random_state must be None, an int or a numpy RandomState, got {random_state!r}")


def floor_covars(cov: torch.Tensor, covariance_type: str, min_covar: float) -> torch.Tensor:
    """An updated ``covars`` made valid: ``min_covar`` added to the diagonal of every matrix that is
    not positive definite (``full``, ``tied``), variances ``<= 0`` raised to ``min_covar``.

    Data that collapse onto a point (all rows identical) give singular updates, which have no
    Gaussian density for the next E-step. Valid covariances pass through unchanged.
    """
    if covariance_type in ("full", "tied"):
        finite = torch.isfinite(cov).all(-1).all(-1)
        eig = torch.linalg.eigvalsh(torch.where(finite[..., None, None], cov, torch.zeros_like(cov)))
        # numerically singular counts as degenerate: the next E-step could not factor it
        tiny = cov.shape[-1] * torch.finfo(cov.dtype).eps * eig[..., -1:].abs().clamp_min(torch.finfo(cov.dtype).tiny)
        bad = ~finite | (eig[..., :1] <= tiny).squeeze(-1)
        if not bool(bad.any()):
            return cov
        if not min_covar > 0:
            raise ValueError(f"covars update is not positive definite (collapsed data?) and min_covar="
                             f"{min_covar!r} cannot regularize it; use min_covar > 0")
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        fixed = torch.where(bad[..., None, None], torch.nan_to_num(cov) + min_covar * eye, cov)
    else:
        bad = ~(cov > 0)  # NaN included
        if not bool(bad.any()):
            return cov
        if not min_covar > 0:
            raise ValueError(f"covars update has variances <= 0 (collapsed data?) and min_covar="
                             f"{min_covar!r} cannot regularize it; use min_covar > 0")
        fixed = torch.where(bad, torch.full_like(cov, min_covar), cov)
    warnings.warn(f"the '{covariance_type}' covars update was degenerate (collapsed data?); "
                  f"min_covar={min_covar} was used to keep it positive definite", RuntimeWarning, stacklevel=3)
    return fixed
