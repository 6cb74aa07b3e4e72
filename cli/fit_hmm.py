"""``pyroem fit hmm``: a hidden Markov model (hmmlearn's API) fitted by Baum-Welch to a CSV file."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional

import numpy as np

from . import plotting
from .data_io import Table, parse_int_list, read_table, write_json, write_rows
from .errors import CliError, warnings_as_notes
from .options import non_negative_float, non_negative_int, positive_int, seed
from .progress import fit_progress

HELP = "hidden Markov model (Gaussian or categorical emissions) on a CSV, one time step per row"
COVARIANCE_TYPES = ("diag", "full", "tied", "spherical")


N_INIT = 10


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "hmm", parents=parents, help=HELP,
        description=HELP + ". Rows are time steps of the sequences, one after the other; "
                           "categorical emissions read one column of symbols 0, 1, 2, ...")
    p.add_argument("data", metavar="DATA.csv", help="CSV file, one time step per row")
    p.add_argument("--states", "-k", metavar="K", type=positive_int, required=True,
                   help="number of hidden states (>= 1)")
    p.add_argument("--lengths", metavar="N1,N2,...",
                   help="lengths of the sequences, summing to the number of rows (default: one sequence)")
    p.add_argument("--emission", choices=("gaussian", "categorical"), default="gaussian",
                   help="emission distribution (default: gaussian)")
    p.add_argument("--covariance", choices=COVARIANCE_TYPES, default="diag",
                   help="covariance type of Gaussian emissions (default: diag)")
    p.add_argument("--max-iter", type=non_negative_int, default=100, help="most EM steps (default 100)")
    p.add_argument("--tol", type=non_negative_float, default=1e-2,
                   help="stop when a step raises the log-likelihood by less (default 1e-2, hmmlearn's)")
    p.add_argument("--seed", type=seed, default=0, help="random seed of the initialization (default 0)")
    p.add_argument("--n-init", type=positive_int, default=N_INIT,
                   help=f"fits from this many random starts, the best one kept (default {N_INIT}): "
                        "one start often ends at a poor local maximum")
    p.add_argument("--missing", action="store_true",
                   help="read empty fields (and NA, NaN) as missing values and integrate them out of the fit "
                        "(Gaussian emissions); without it they are an error")
    p.add_argument("--out", metavar="PARAMS.json", help="write the fitted parameters as JSON")
    p.add_argument("--labels", metavar="STATES.csv",
                   help="write each row's Viterbi state (numbered from 1, as printed) and its posterior probabilities")
    p.add_argument("--plot", metavar="FIG.png",
                   help="draw the first sequence with its Viterbi states and its state posterior "
                        "(.png, .jpg, .pdf or .svg)")
    p.set_defaults(run=run)


def sequence_lengths(text: Optional[str], n_rows: int, path: str) -> np.ndarray:
    if text is None:
        return np.array([n_rows])
    lengths = parse_int_list(text, "--lengths")
    if sum(lengths) != n_rows:
        raise CliError(f"--lengths sum to {sum(lengths)} but {path} has {n_rows} data rows")
    return np.array(lengths)


def symbols_column(table: Table) -> np.ndarray:
    """One column of whole numbers >= 0 as ints ``(n, 1)``."""
    X = table.values
    if X.shape[1] != 1:
        raise CliError(f"{table.path}: categorical emissions need one column of symbols, got {X.shape[1]} columns")
    bad = np.flatnonzero((X[:, 0] != np.round(X[:, 0])) | (X[:, 0] < 0))
    if bad.size:
        raise CliError(f"{table.path}: categorical symbols must be whole numbers >= 0; "
                       f"data row {bad[0] + 1} holds {X[bad[0], 0]:g}")
    return X.astype(np.int64)


def fit(table: Table, args: argparse.Namespace):
    """The fitted estimator, the data it saw and the lengths."""
    from pyroem.models import CategoricalHMM, GaussianHMM

    lengths = sequence_lengths(args.lengths, table.values.shape[0], table.path)
    common = dict(n_components=args.states, n_iter=args.max_iter, tol=args.tol, random_state=args.seed,
                  n_init=args.n_init)
    if args.emission == "categorical":
        if args.missing:
            raise CliError("--missing applies to Gaussian emissions; categorical symbols cannot be missing")
        X = symbols_column(table)
        est = CategoricalHMM(**common)
    else:
        X = table.values
        if X.shape[0] < args.states:
            raise CliError(f"{table.path}: {X.shape[0]} data row(s), fewer than --states {args.states}")
        est = GaussianHMM(covariance_type=args.covariance, missing="marginalize" if args.missing else None, **common)
    with warnings_as_notes(), fit_progress(args.max_iter, "Baum-Welch") as callback:
        est.callback = callback
        est.fit(X, lengths)
    return est, X, lengths


def results(est, X: np.ndarray, lengths: np.ndarray, table: Table, emission: str) -> Dict[str, Any]:
    ll = float(est.score(X, lengths))
    out: Dict[str, Any] = {
        "model": type(est).__name__,
        "n_components": int(est.n_components),
        "n_samples": int(X.shape[0]),
        "n_missing": int(np.isnan(X).sum()) if emission != "categorical" else 0,
        "lengths": lengths,
        "columns": table.columns,
        "startprob": est.startprob_,
        "transmat": est.transmat_,
    }
    if emission == "categorical":
        out["emissionprob"] = est.emissionprob_
    else:
        out.update(covariance_type=est.covariance_type, means=est.means_, covars=est.covars_)
    out.update(log_likelihood=ll, bic=float(est.bic(X, lengths)), aic=float(est.aic(X, lengths)),
               n_iter=int(est.n_iter_), converged=bool(est.converged_),
               history=[float(v) for v in est.history_],
               notes="log_likelihood: log p(X) summed over all sequences at the returned parameters "
                     "(hmmlearn's score); history: its value at the start of every EM step; covars: "
                     "full matrices (n_components, n_features, n_features) as hmmlearn's covars_")
    return out


def write_labels(path: str, est, X: np.ndarray, lengths: np.ndarray) -> None:
    """Each row's sequence and step, its Viterbi state (numbered from 1) and its state posterior."""
    states = est.predict(X, lengths)
    proba = est.predict_proba(X, lengths)
    sequence = np.repeat(np.arange(1, len(lengths) + 1), lengths)
    step = np.concatenate([np.arange(1, n + 1) for n in lengths])
    k = proba.shape[1]
    rows = np.column_stack([np.arange(1, len(X) + 1), sequence, step, states + 1, proba])
    write_rows(path, ["row", "sequence", "step", "state"] + [f"p_{j + 1}" for j in range(k)], rows,
               ["{:.0f}"] * 4 + ["{:.6g}"] * k)


def summary(res: Dict[str, Any], path: str) -> str:
    np_opts = dict(precision=4, suppress_small=True, max_line_width=100)
    lines = [
        f"{path}: {res['n_samples']} rows in {len(res['lengths'])} sequence(s)",
        f"{res['model']}, {res['n_components']} state(s): "
        f"{'converged' if res['converged'] else 'NOT converged'} after {res['n_iter']} EM step(s)",
        f"log-likelihood: {res['log_likelihood']:.6f} (sum over sequences); BIC {res['bic']:.2f}, AIC {res['aic']:.2f}",
        *([f"missing values: {res['n_missing']} entries, integrated out"] if res.get("n_missing") else []),
        "start probabilities " + np.array2string(np.asarray(res["startprob"]), **np_opts),
        f"transition matrix (row i, column j: from state i to state j, states 1 to {res['n_components']})\n"
        + np.array2string(np.asarray(res["transmat"]), **np_opts),
    ]
    if "emissionprob" in res:
        lines.append(f"emission probabilities (rows: states 1 to {res['n_components']})\n"
                     + np.array2string(np.asarray(res["emissionprob"]), **np_opts))
    else:
        lines.append(f"means (rows: states 1 to {res['n_components']})\n" + np.array2string(np.asarray(res["means"]), **np_opts))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        plotting.check_figure_path(args.plot)
    table = read_table(args.data, missing=args.missing)
    est, X, lengths = fit(table, args)
    res = results(est, X, lengths, table, args.emission)
    print(summary(res, table.path))
    if args.out:
        write_json(args.out, res)
        print(f"parameters: {args.out}")
    if args.labels:
        write_labels(args.labels, est, X, lengths)
        print(f"states: {args.labels}")
    if args.plot:
        first = X[: int(lengths[0])]
        states = est.predict(first)
        fig = plotting.hmm_figure(est.predict_proba(first), paths={"Viterbi path": states},
                                  title="Posterior state probabilities of the first sequence",
                                  series=first, series_states=states,
                                  series_name=table.columns[0] if table.has_header else "column 1")
        print(f"figure: {plotting.save_figure(fig, args.plot)}")
    return 0
