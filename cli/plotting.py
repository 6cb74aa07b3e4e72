"""Figures shared by ``pyroem demo`` and the ``--plot`` options (matplotlib, Agg backend, PNG)."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from .errors import CliError

COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown",
           "tab:pink", "tab:grey", "tab:olive", "tab:cyan")


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def full_covariances(covariances: np.ndarray, covariance_type: str, n_components: int, n_features: int) -> np.ndarray:
    """scikit-learn's ``covariances_`` of any ``covariance_type`` as ``(K, D, D)`` matrices."""
    c = np.asarray(covariances, dtype=np.float64)
    if covariance_type == "full":
        return c
    if covariance_type == "tied":
        return np.broadcast_to(c, (n_components, n_features, n_features)).copy()
    if covariance_type == "diag":
        return c[:, :, None] * np.eye(n_features)
    return c.reshape(-1)[:, None, None] * np.eye(n_features)


def mixture_density(points: np.ndarray, weights: np.ndarray, means: np.ndarray, covs: np.ndarray) -> np.ndarray:
    """``Σ_k w_k N(x | μ_k, Σ_k)`` at every row of ``points`` ``(M, d)``; ``covs`` ``(K, d, d)``."""
    d = points.shape[1]
    diff = points[None, :, :] - means[:, None, :]                      # (K, M, d)
    inv = np.linalg.inv(covs)                                           # (K, d, d)
    maha = np.einsum("kmi,kij,kmj->km", diff, inv, diff)
    _, logdet = np.linalg.slogdet(covs)
    log_norm = -0.5 * (d * np.log(2 * np.pi) + logdet)                  # (K,)
    return (weights[:, None] * np.exp(log_norm[:, None] - 0.5 * maha)).sum(0)


def gmm_figure(X: np.ndarray, weights: np.ndarray, means: np.ndarray, covs: np.ndarray,
               labels: np.ndarray, label_name: str = "group", columns: Optional[Sequence[str]] = None,
               title: str = "Gaussian mixture fitted by EM", n_features: Optional[int] = None):
    """Density contours over the points coloured by ``labels``. Where ``X`` holds 2 of the data's
    ``n_features`` columns, the contours show the mixture's marginal density on them; for ``D = 1``
    a histogram with the density curve."""
    plt = pyplot()
    n_features = X.shape[1] if n_features is None else n_features
    names = list(columns) if columns is not None else [f"$x_{j + 1}$" for j in range(n_features)]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    drawn = ~np.isnan(X[:, :2]).any(1)  # rows with a missing coordinate are not drawn
    if not drawn.all():
        title += f"\n({int((~drawn).sum())} rows with a missing coordinate not drawn)"
    X, labels = X[drawn], np.asarray(labels)[drawn]
    if X.shape[1] == 1:
        grid = np.linspace(X[:, 0].min() - 1.0, X[:, 0].max() + 1.0, 400)[:, None]
        ax.hist(X[:, 0], bins=40, density=True, color="tab:grey", alpha=0.5, label="data")
        ax.plot(grid[:, 0], mixture_density(grid, weights, means[:, :1], covs[:, :1, :1]),
                color="black", label="fitted density")
        ax.set_xlabel(names[0])
        ax.set_ylabel("density")
    else:
        xy = X[:, :2]
        pad = 0.1 * (xy.max(0) - xy.min(0)) + 1e-9
        xs = np.linspace(xy[:, 0].min() - pad[0], xy[:, 0].max() + pad[0], 200)
        ys = np.linspace(xy[:, 1].min() - pad[1], xy[:, 1].max() + pad[1], 200)
        gx, gy = np.meshgrid(xs, ys)
        grid = np.column_stack([gx.ravel(), gy.ravel()])
        density = mixture_density(grid, weights, means[:, :2], covs[:, :2, :2]).reshape(gx.shape)
        ax.contour(gx, gy, density, levels=12, cmap="viridis", linewidths=0.9)
        for g in np.unique(labels):
            pts = xy[labels == g]
            ax.scatter(pts[:, 0], pts[:, 1], s=10, alpha=0.7, color=COLOURS[int(g) % len(COLOURS)],
                       label=f"{label_name} {int(g) + 1}")
        ax.scatter(means[:, 0], means[:, 1], marker="x", s=80, color="black", label="fitted means")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        if n_features > 2:
            title += f"\n(2 of {n_features} columns: marginal density)"
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def allele_path_figure(freq_history: Sequence[dict], ll_history: Sequence[float], alleles: Sequence[str],
                       title: str = "EM allele frequencies per step"):
    """Allele frequencies (left) and log-likelihood (right) at every EM step."""
    plt = pyplot()
    steps = np.arange(len(freq_history))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, allele in enumerate(alleles):
        left.plot(steps, [f[allele] for f in freq_history], "o-", color=COLOURS[i % len(COLOURS)], label=allele)
    left.set_xlabel("EM step")
    left.set_ylabel("allele frequency")
    left.set_ylim(0, 1)
    left.legend()
    left.set_title(title)
    right.plot(np.arange(len(ll_history)), ll_history, "o-", color="black")
    right.set_xlabel("EM step")
    right.set_ylabel("log-likelihood")
    right.set_title("log-likelihood per step")
    fig.tight_layout()
    return fig


def hmm_figure(posterior: np.ndarray, state_names: Optional[Sequence[str]] = None,
               paths: Optional[dict] = None, title: str = "HMM posterior state probabilities",
               series: Optional[np.ndarray] = None, series_states: Optional[np.ndarray] = None,
               series_name: str = "observed"):
    """Stacked posterior ``p(state_t | data)`` ``(T, K)``; above it the observed ``series`` (its
    first column, named ``series_name``) coloured by ``series_states``, when given, so each state's
    meaning shows; below it, state paths such as the Viterbi path or the true states
    (``{name: states}``)."""
    plt = pyplot()
    t_len, k = posterior.shape
    names = list(state_names) if state_names is not None else [f"state {i + 1}" for i in range(k)]
    top = 1 if series is not None else 0
    rows = 1 + top + (1 if paths else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.5 + 1.5 * rows), sharex=True, squeeze=False)
    t = np.arange(t_len)
    if series is not None:
        ax = axes[0, 0]
        values = np.asarray(series, dtype=float).reshape(t_len, -1)[:, 0]
        ax.plot(t, values, color="0.75", lw=0.8, zorder=1)
        labels = np.zeros(t_len, dtype=int) if series_states is None else np.asarray(series_states)
        for i in range(k):
            at = labels == i
            ax.scatter(t[at], values[at], s=9, color=COLOURS[i % len(COLOURS)], label=names[i], zorder=2)
        ax.set_ylabel(series_name)
        top_title = title.replace("Posterior state probabilities", "Observations by decoded state")
        n_series = np.asarray(series).reshape(t_len, -1).shape[1]
        if n_series > 1:
            top_title += f" (the first of {n_series} columns)"
        if np.isnan(values).any():
            top_title += f"; {int(np.isnan(values).sum())} missing steps are gaps"
        ax.set_title(top_title)
        ax.legend(loc="upper right", fontsize=8)
    ax = axes[top, 0]
    ax.stackplot(t, posterior.T, labels=names, colors=[COLOURS[i % len(COLOURS)] for i in range(k)], alpha=0.6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("posterior")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    if paths:
        low = axes[top + 1, 0]
        for i, (label, states) in enumerate(paths.items()):
            offset = 0.08 * (i - (len(paths) - 1) / 2)
            low.step(t, np.asarray(states) + offset, where="mid", lw=1.2, label=label,
                     color=("black", "tab:orange", "tab:blue")[i % 3])
        low.set_yticks(range(k))
        low.set_yticklabels(names)
        low.set_ylim(-0.5, k - 0.5)
        low.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("t")
    fig.tight_layout()
    return fig


#: figure formats by file extension (no extension: PNG)
FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg", "": "png"}


def check_figure_path(path: str) -> None:
    """Refuse, before any work, a figure path whose extension names no format we write."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise CliError(f"{path}: cannot write a figure as {ext!r}; use .png, .jpg, .pdf or .svg")


def save_figure(fig, path: str) -> str:
    """Save in the format the extension names (parent folder created), close the figure, return
    the path; an extension of another format is refused."""
    plt = pyplot()
    ext = os.path.splitext(path)[1].lower()
    try:
        check_figure_path(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fig.savefig(path, dpi=120, format=FORMATS[ext])
    except OSError as err:
        raise CliError(f"{path}: cannot write the figure: {err.strerror or err}") from None
    finally:
        plt.close(fig)
    return path
