"""``pyroem predict``: a parameter file written by ``pyroem fit ... --out`` applied to new data:
its log-likelihood, and each row's component or state."""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict

import numpy as np

from .data_io import Table, read_table, select_columns
from .errors import CliError
from .fit_gmm import write_labels as write_gmm_labels
from .fit_hmm import sequence_lengths, symbols_column
from .fit_hmm import write_labels as write_hmm_labels

HELP = "score and label new data with a parameter file of 'pyroem fit ... --out'"


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser("predict", parents=parents, help=HELP, description=HELP[0].upper() + HELP[1:] + ".")
    p.add_argument("params", metavar="PARAMS.json", help="written by 'pyroem fit gmm|hmm ... --out'")
    p.add_argument("data", metavar="DATA.csv", help="CSV with the columns the parameters were fitted on")
    p.add_argument("--labels", metavar="LABELS.csv",
                   help="write each row's component or Viterbi state (numbered from 1) and its posterior")
    p.add_argument("--lengths", metavar="N1,N2,...", help="HMMs: lengths of the sequences (default: one)")
    p.add_argument("--missing", action="store_true",
                   help="read empty fields (and NA, NaN) as missing values, scored by the marginal of the "
                        "observed ones; without it they are an error")
    p.set_defaults(run=run)


def _load(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except (OSError, ValueError) as err:
        raise CliError(f"{path}: not a JSON parameter file: {err}") from None
    if not isinstance(res, dict) or res.get("model") not in ("GaussianMixture", "GaussianHMM", "CategoricalHMM"):
        raise CliError(f"{path}: not a parameter file of 'pyroem fit gmm' or 'pyroem fit hmm' (no known 'model')")
    return res


def _columns(table: Table, res: Dict[str, Any], params: str) -> Table:
    """The data's columns the parameters were fitted on: by name where both files name them."""
    names = res.get("columns") or []
    if table.has_header and names and all(c in table.columns for c in names):
        return select_columns(table, ",".join(names))
    width = len(res["means"][0]) if "means" in res else 1
    if table.values.shape[1] != width:
        raise CliError(f"{table.path} has {table.values.shape[1]} column(s); {params} was fitted on {width}"
                       + (f" ({', '.join(names)})" if names else ""))
    return table


def _gaussian_covars(res: Dict[str, Any]) -> np.ndarray:
    """hmmlearn's ``covars_`` setter input for the covariance type, from the full matrices saved."""
    full = np.asarray(res["covars"], dtype=np.float64)
    kind = res.get("covariance_type", "full")
    diag = np.diagonal(full, axis1=-2, axis2=-1)
    return {"full": full, "diag": diag, "spherical": diag.mean(-1), "tied": full[0]}[kind]


def run(args: argparse.Namespace) -> int:
    from pyroem.models import CategoricalHMM, GaussianHMM, GaussianMixture

    res = _load(args.params)
    names = res.get("columns") or []
    try:  # the fitted columns by name, where the data's header has them (others may be text)
        table = (read_table(args.data, ",".join(names), missing=args.missing) if names
                 else read_table(args.data, missing=args.missing))
    except CliError:
        table = read_table(args.data, missing=args.missing)
    table = _columns(table, res, args.params)
    missing = "marginalize" if args.missing else None
    try:
        if res["model"] == "GaussianMixture":
            est = GaussianMixture.from_params(res["weights"], res["means"], res["covariances"],
                                              res.get("covariance_type", "full"), missing=missing)
            X = table.values
            score = float(est.score(X))
            print(f"{table.path}: {len(X)} rows; {args.params}: GaussianMixture, {len(res['weights'])} component(s)")
            print(f"log-likelihood: {score:.6f} per sample (total {score * len(X):.4f})")
            if args.labels:
                write_gmm_labels(args.labels, est, X)
                print(f"labels: {args.labels}")
            return 0
        k = len(res["startprob"])
        lengths = sequence_lengths(args.lengths, table.values.shape[0], table.path)
        if res["model"] == "CategoricalHMM":
            if args.missing:
                raise CliError("--missing applies to Gaussian emissions; categorical symbols cannot be missing")
            est, X = CategoricalHMM(k), symbols_column(table)
            est.emissionprob_ = np.asarray(res["emissionprob"], dtype=np.float64)
        else:
            est, X = GaussianHMM(k, covariance_type=res.get("covariance_type", "diag"), missing=missing), table.values
            est.means_ = np.asarray(res["means"], dtype=np.float64)
            est.covars_ = _gaussian_covars(res)
        est.startprob_ = np.asarray(res["startprob"], dtype=np.float64)
        est.transmat_ = np.asarray(res["transmat"], dtype=np.float64)
        score = float(est.score(X, lengths))
    except (KeyError, IndexError, TypeError) as err:
        raise CliError(f"{args.params}: a parameter is missing or malformed ({err})") from None
    print(f"{table.path}: {len(X)} rows in {len(lengths)} sequence(s); {args.params}: {res['model']}, {k} state(s)")
    print(f"log-likelihood: {score:.6f} (sum over sequences)")
    if args.labels:
        write_hmm_labels(args.labels, est, X, lengths)
        print(f"states: {args.labels}")
    return 0
