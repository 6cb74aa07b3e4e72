"""``pyroem fit gmm``: a Gaussian mixture fitted to the numeric columns of a CSV file."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List

import numpy as np

from . import plotting
from .data_io import Table, read_table, select_columns, write_json, write_rows
from .errors import CliError, warnings_as_notes
from .options import non_negative_float, non_negative_int, positive_int, seed
from .progress import fit_progress

HELP = "Gaussian mixture (scikit-learn's GaussianMixture) on a CSV of numbers"
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INITS = ("kmeans", "k-means++", "random", "random_from_data")
LL_NOTE = ("log_likelihood: mean log p(x) per sample at the returned parameters (scikit-learn's "
           "score); lower_bound: mean per sample at the start of the last EM step (scikit-learn's "
           "lower_bound_); log_likelihood_total: the sum over samples; history: mean per sample "
           "at every step")


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "gmm", parents=parents, help=HELP,
        description=HELP + ". The CSV may have a header (a first row that is not all numbers); "
                           "every column is a feature unless --columns picks some.")
    p.add_argument("data", metavar="DATA.csv", help="CSV file, one sample per row")
    p.add_argument("--components", "-k", metavar="K", type=positive_int, required=True,
                   help="number of mixture components (>= 1)")
    p.add_argument("--covariance", choices=COVARIANCE_TYPES, default="full",
                   help="covariance type (default: full)")
    p.add_argument("--out", metavar="PARAMS.json", help="write the fitted parameters as JSON")
    p.add_argument("--columns", metavar="A,B,...",
                   help="the columns to fit, by header name or number from 1 (default: all)")
    p.add_argument("--labels", metavar="LABELS.csv",
                   help="write each row's component (numbered from 1, as printed) and its posterior probabilities")
    p.add_argument("--plot", metavar="FIG.png",
                   help="draw density contours over the points (.png, .jpg, .pdf or .svg)")
    p.add_argument("--plot-columns", metavar="A,B",
                   help="the two columns to draw when there are more (default: the two that separate the "
                        "components most)")
    p.add_argument("--seed", type=seed, default=0, help="random seed of the initialization (default 0)")
    p.add_argument("--max-iter", type=non_negative_int, default=100, help="most EM steps (default 100)")
    p.add_argument("--tol", type=non_negative_float, default=1e-3,
                   help="stop when the mean log-likelihood per sample changes by less (default 1e-3)")
    p.add_argument("--n-init", type=positive_int, default=1, help="number of starts, the best kept (default 1)")
    p.add_argument("--init", choices=INITS, default="kmeans", help="initialization (default: kmeans)")
    p.add_argument("--missing", action="store_true",
                   help="read empty fields (and NA, NaN) as missing values and integrate them out of the fit "
                        "(EM for incomplete data); without it they are an error")
    p.set_defaults(run=run)


def fit(table: Table, args: argparse.Namespace):
    """The fitted ``pyroem.models.GaussianMixture``."""
    from pyroem.models import GaussianMixture

    n = table.values.shape[0]
    if n < max(args.components, 2):
        raise CliError(f"{table.path}: {n} data row(s); fitting {args.components} component(s) "
                       f"needs at least {max(args.components, 2)}")
    est = GaussianMixture(n_components=args.components, covariance_type=args.covariance, tol=args.tol,
                          max_iter=args.max_iter, n_init=args.n_init, init_params=args.init,
                          random_state=args.seed, missing="marginalize" if args.missing else None)
    with warnings_as_notes(), fit_progress(args.max_iter, "EM") as callback:
        est.set_params(callback=callback)
        est.fit(table.values)
    return est


def results(est, table: Table) -> Dict[str, Any]:
    """What ``--out`` writes."""
    X = table.values
    mean_ll = float(est.score(X))
    return {
        "model": "GaussianMixture",
        "covariance_type": est.covariance_type,
        "n_components": int(est.n_components),
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "n_missing": int(np.isnan(X).sum()),
        "columns": table.columns,
        "weights": est.weights_,
        "means": est.means_,
        "covariances": est.covariances_,
        "log_likelihood": mean_ll,
        "log_likelihood_total": mean_ll * X.shape[0],
        "lower_bound": float(est.lower_bound_),
        "n_iter": int(est.n_iter_),
        "converged": bool(est.converged_),
        "bic": float(est.bic(X)),
        "aic": float(est.aic(X)),
        "history": [float(v) for v in est.history_],
        "notes": LL_NOTE,
    }


def _decimals(values: np.ndarray) -> int:
    """Decimals that give the largest of ``values`` 4 significant digits (one format for a table)."""
    top = float(np.max(np.abs(values))) if np.size(values) else 0.0
    return min(8, max(0, 3 - int(np.floor(np.log10(top))))) if top > 0 else 4


def _vector(v: np.ndarray, decimals: int, limit: int = 6) -> str:
    shown = ", ".join(f"{x:+.{decimals}f}" for x in v[:limit])
    return f"({shown}{', ...' if len(v) > limit else ''})"


def summary(res: Dict[str, Any], table: Table) -> str:
    lines = [
        f"{table.path}: {res['n_samples']} rows x {res['n_features']} columns"
        + (f" ({', '.join(table.columns)})" if table.has_header else " (no header)"),
        f"Gaussian mixture, {res['n_components']} component(s), {res['covariance_type']} covariance: "
        f"{'converged' if res['converged'] else 'NOT converged'} after {res['n_iter']} EM step(s)",
        *([f"missing values: {res['n_missing']} entries, integrated out"] if res["n_missing"] else []),
        f"log-likelihood: {res['log_likelihood']:.6f} per sample (total {res['log_likelihood_total']:.4f}); "
        f"BIC {res['bic']:.2f}, AIC {res['aic']:.2f}",
        f"{'component':>9}  {'weight':>7}  mean",
    ]
    decimals = _decimals(np.asarray(res["means"])[:, :6])
    for k, (w, m) in enumerate(zip(res["weights"], res["means"])):
        lines.append(f"{k + 1:>9}  {w:>7.4f}  {_vector(np.asarray(m), decimals)}")
    return "\n".join(lines)


def separating_pair(est, X: np.ndarray) -> List[int]:
    """The two columns whose components' means differ most against the spread within components
    (a per-column F ratio: variance of the weighted means over the mean within-component variance)."""
    covs = plotting.full_covariances(est.covariances_, est.covariance_type, est.n_components, X.shape[1])
    within = np.einsum("k,kjj->j", est.weights_, covs)
    centre = est.weights_ @ est.means_
    between = est.weights_ @ (est.means_ - centre) ** 2
    return [int(j) for j in np.argsort(-between / np.maximum(within, 1e-300))[:2]]


def write_labels(path: str, est, X: np.ndarray) -> None:
    """Each row's most probable component (numbered from 1) and its posterior probabilities."""
    proba = est.predict_proba(X)
    k = proba.shape[1]
    rows = np.column_stack([np.arange(1, len(X) + 1), proba.argmax(1) + 1, proba])
    write_rows(path, ["row", "component"] + [f"p_{j + 1}" for j in range(k)], rows,
               ["{:.0f}", "{:.0f}"] + ["{:.6g}"] * k)


def label_like(table: Table) -> List[str]:
    """Columns of a few distinct whole numbers (class labels, ids), which a mixture should not fit."""
    X = table.values
    return [c for j, c in enumerate(table.columns)
            if len(X) >= 20 and np.all(X[:, j] == np.round(X[:, j])) and len(np.unique(X[:, j])) <= 10]


def run(args: argparse.Namespace) -> int:
    if args.plot:
        plotting.check_figure_path(args.plot)
    table = read_table(args.data, args.columns, missing=args.missing)
    est = fit(table, args)
    res = results(est, table)
    print(summary(res, table))
    if args.columns is None:
        for c in label_like(table):
            print(f"note: column {c!r} holds only a few whole numbers; if it is a label or an id, "
                  "leave it out with --columns")
    if args.out:
        write_json(args.out, res)
        print(f"parameters: {args.out}")
    X = table.values
    if args.labels:
        write_labels(args.labels, est, X)
        print(f"labels: {args.labels}")
    if args.plot:
        if X.shape[1] > 2:
            pair = ([table.columns.index(c) for c in select_columns(table, args.plot_columns, "--plot-columns").columns]
                    if args.plot_columns else separating_pair(est, X))
            if len(pair) != 2:
                raise CliError("--plot-columns: name two columns")
        else:
            pair = list(range(X.shape[1]))
        covs = plotting.full_covariances(est.covariances_, est.covariance_type, est.n_components, X.shape[1])
        fig = plotting.gmm_figure(X[:, pair], est.weights_, est.means_[:, pair], covs[:, pair][:, :, pair],
                                  est.predict(X), label_name="component",
                                  columns=[table.columns[j] for j in pair] if table.has_header else
                                  [f"column {j + 1}" for j in pair], n_features=X.shape[1])
        print(f"figure: {plotting.save_figure(fig, args.plot)}")
        if X.shape[1] > 2:
            how = "as asked" if args.plot_columns else "the two that separate the components most"
            print(f"  (columns {', '.join(repr(table.columns[j]) for j in pair)}, {how}, with the fitted "
                  "density's marginal on them)")
    return 0
