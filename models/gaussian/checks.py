"""Input checks for :class:`GaussianMixture`: data, sample weights, hyper-parameters, user inits."""
from __future__ import annotations

import numbers
from typing import Optional

import numpy as np
import torch

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


def resolve_dtype(dtype, data) -> torch.dtype:
    """The float dtype to fit in: ``dtype`` if given, else the data's float32/float64, else float64."""
    if dtype is None:
        src = data.dtype if isinstance(data, (np.ndarray, torch.Tensor)) else None
        if src in (np.float32, torch.float32):
            return torch.float32
        return torch.float64
    if isinstance(dtype, torch.dtype):
        out = dtype
    else:
        try:
            out = {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64}.get(np.dtype(dtype))
        except TypeError:
            out = None
    if out not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64 (torch or numpy), got {dtype!r}")
    return out


def resolve_device(device, data) -> torch.device:
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must name a torch device, got {device!r}") from err
    if isinstance(data, torch.Tensor):
        return data.device
    return torch.device("cpu")


def _as_tensor(value, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise ValueError(f"Complex data not supported: {name} is a complex tensor")
        return value.detach().to(device=device, dtype=dtype)
    if type(value).__module__.startswith("scipy.sparse"):
        raise TypeError(f"sparse input is not supported: {name} is a {type(value).__name__}; "
                        f"pass a dense array ({name}.toarray())")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of numbers: {err}") from err
    if arr.dtype == object:  # numbers held as Python objects (a pandas object column): read as floats
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name} must hold numbers: {err}") from err
    if arr.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {arr.dtype}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be an array of real numbers, got dtype {arr.dtype}")
    # no copy of an array already in the right dtype (it is only read); a read-only one is copied
    arr = arr.astype(np.float64 if dtype == torch.float64 else np.float32, copy=not arr.flags.writeable)
    return torch.as_tensor(arr, device=device)


def check_X(X, dtype: torch.dtype, device: torch.device, name: str = "X", min_samples: int = 1,
            n_features: Optional[int] = None, allow_nan: bool = False) -> torch.Tensor:
    """``X`` as a finite 2-D tensor ``(n_samples, n_features)``; with ``allow_nan``, NaN entries
    (missing values) are kept, but not infinities."""
    if X is None:
        raise ValueError(f"{name} must be a 2-D array, got None")
    t = _as_tensor(X, name, dtype, device)
    if t.dim() != 2:
        hint = (" Reshape your data either using X.reshape(-1, 1) if your data has a single "
                "feature or X.reshape(1, -1) if it contains a single sample.") if t.dim() == 1 else ""
        raise ValueError(f"Expected 2D array for {name}, got {t.dim()}-D array of shape {tuple(t.shape)}.{hint}")
    if t.shape[0] < min_samples:
        raise ValueError(f"{name} has {t.shape[0]} sample(s), but at least {min_samples} are required")
    if t.shape[1] < 1:
        raise ValueError(f"Found array with 0 feature(s) (shape={tuple(t.shape)}) while a minimum of 1 is required.")
    if not bool(torch.isfinite(t).all()):
        nan = torch.isnan(t)
        if bool(torch.isinf(t).any()):
            raise ValueError(f"{name} contains infinity ({int(torch.isinf(t).sum())} entries)")
        if not allow_nan:
            raise ValueError(f"{name} contains NaN ({int(nan.sum())} entries in {int(nan.any(1).sum())} rows). To "
                             "integrate missing values out of the fit, use missing='marginalize'")
    if n_features is not None and t.shape[1] != n_features:
        raise ValueError(f"{name} has {t.shape[1]} features, but GaussianMixture is expecting "
                         f"{n_features} features as input")
    return t


def check_sample_weight(sample_weight, n_samples: int, dtype: torch.dtype,
                        device: torch.device) -> Optional[torch.Tensor]:
    """``None`` or finite, non-negative weights of shape ``(n_samples,)`` with a positive sum."""
    if sample_weight is None:
        return None
    w = _as_tensor(sample_weight, "sample_weight", dtype, device)
    if w.dim() == 0:
        w = w.expand(n_samples).clone()
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("sample_weight contains NaN or infinity")
    if bool((w < 0).any()):
        raise ValueError("sample_weight must be non-negative")
    if not bool(w.sum() > 0):
        raise ValueError("sample_weight is zero for every sample: at least one weight must be positive")
    return w


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_hyper_parameters(est) -> None:
    """Constructor arguments, checked at ``fit`` time as scikit-learn does."""
    if not _is_int(est.n_components) or est.n_components < 1:
        raise ValueError(f"n_components must be an int >= 1, got {est.n_components!r}")
    if est.covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {est.covariance_type!r}")
    if not _is_real(est.tol) or not est.tol >= 0 or not np.isfinite(est.tol):
        raise ValueError(f"tol must be a finite number >= 0, got {est.tol!r}")
    if not _is_real(est.reg_covar) or not est.reg_covar >= 0 or not np.isfinite(est.reg_covar):
        raise ValueError(f"reg_covar must be a finite number >= 0, got {est.reg_covar!r}")
    if not _is_int(est.max_iter) or est.max_iter < 0:
        raise ValueError(f"max_iter must be an int >= 0, got {est.max_iter!r}")
    if not _is_int(est.n_init) or est.n_init < 1:
        raise ValueError(f"n_init must be an int >= 1, got {est.n_init!r}")
    if est.init_params not in INIT_PARAMS:
        raise ValueError(f"init_params must be one of {INIT_PARAMS}, got {est.init_params!r}")
    if not isinstance(est.warm_start, (bool, np.bool_)):
        raise ValueError(f"warm_start must be a bool, got {est.warm_start!r}")
    if not (_is_int(est.verbose) or isinstance(est.verbose, bool)) or est.verbose < 0:
        raise ValueError(f"verbose must be an int >= 0, got {est.verbose!r}")
    if not _is_int(est.verbose_interval) or est.verbose_interval < 1:
        raise ValueError(f"verbose_interval must be an int >= 1, got {est.verbose_interval!r}")
    params = getattr(est, "params", "wmc")
    if not isinstance(params, str) or set(params) - set("wmc"):
        raise ValueError(f"params must be a string of the letters w (weights), m (means), c (covariances), "
                         f"got {params!r}")
    if getattr(est, "missing", None) not in (None, "marginalize"):
        raise ValueError(f"missing must be None (NaN in X is an error) or 'marginalize', got {est.missing!r}")
    chunk = getattr(est, "chunk_size", None)
    if chunk is not None and (not _is_int(chunk) or chunk < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk!r}")
    check_random_state(est.random_state)


def check_random_state(seed) -> np.random.RandomState:
    """None -> numpy's global RandomState, int -> a new seeded one, a RandomState -> itself."""
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if _is_int(seed):
        if not 0 <= seed < 2 ** 32:
            raise ValueError(f"random_state must be an int in [0, 2**32), got {seed!r}")
        return np.random.RandomState(int(seed))
    if isinstance(seed, np.random.RandomState):
        return seed
    raise ValueError(f"random_state must be None, an int or a numpy RandomState, got {seed!r}")


def check_weights_init(weights, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    w = _as_tensor(weights, "weights_init", dtype, device)
    if w.shape != (k,):
        raise ValueError(f"weights_init must have shape ({k},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or bool((w > 1).any()):
        raise ValueError(f"weights_init must lie in [0, 1], got min {float(w.min()):.5g}, max {float(w.max()):.5g}")
    atol = 1e-6 if dtype == torch.float32 else 1e-8
    if abs(1.0 - float(w.double().sum())) > atol:
        raise ValueError(f"weights_init must sum to 1, got {float(w.double().sum()):.10g}")
    return w


def check_means_init(means, k: int, d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    m = _as_tensor(means, "means_init", dtype, device)
    if m.shape != (k, d):
        raise ValueError(f"means_init must have shape ({k}, {d}), got {tuple(m.shape)}")
    if not bool(torch.isfinite(m).all()):
        raise ValueError("means_init contains NaN or infinity")
    return m


def precisions_shape(covariance_type: str, k: int, d: int) -> tuple:
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]


def check_precisions_init(precisions, covariance_type: str, k: int, d: int,
                          dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Symmetric positive-definite matrices (full, tied) or positive values (diag, spherical)."""
    p = _as_tensor(precisions, "precisions_init", dtype, device)
    shape = precisions_shape(covariance_type, k, d)
    if tuple(p.shape) != shape:
        raise ValueError(f"precisions_init for covariance_type='{covariance_type}' must have shape "
                         f"{shape}, got {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()):
        raise ValueError("precisions_init contains NaN or infinity")
    if covariance_type in ("full", "tied"):
        pt = p.transpose(-1, -2)
        sym = torch.isclose(p, pt, rtol=1e-5, atol=1e-8).all()
        if not bool(sym) or not bool((torch.linalg.eigvalsh(p.double()) > 0).all()):
            raise ValueError(f"precisions_init ('{covariance_type}') must be symmetric, positive-definite")
    elif bool((p <= 0).any()):
        raise ValueError(f"precisions_init ('{covariance_type}') must be positive")
    return p
