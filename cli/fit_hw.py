"""``pyroem fit hardy-weinberg``: allele frequencies from phenotype counts (gene counting by EM).

A model file (JSON, or YAML with PyYAML installed) holds ``alleles``, ``phenotypes``
(``{phenotype: [genotypes]}``) and optionally ``counts`` (``{phenotype: n}`` or a list in
phenotype order) and ``init`` (start frequencies)::

    {"alleles": ["A", "B", "O"],
     "phenotypes": {"A": ["AA", "AO"], "B": ["BB", "BO"], "AB": ["AB"], "O": ["OO"]},
     "counts": {"A": 186, "B": 38, "AB": 13, "O": 284}}
"""
from __future__ import annotations

import argparse
from typing import Any, Dict

from . import plotting
from .data_io import parse_counts, read_model_file, write_json
from .errors import CliError
from .options import non_negative_float, non_negative_int

HELP = "allele frequencies from phenotype counts under Hardy-Weinberg equilibrium"
PRESETS = {"peppered-moth": "peppered_moth", "abo": "abo"}
MODEL_KEYS = ("alleles", "phenotypes", "counts", "init")


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "hardy-weinberg", aliases=["hw"], parents=parents, help=HELP,
        description=HELP + " (EM gene counting).",
        epilog="Model file: {\"alleles\": [...], \"phenotypes\": {phenotype: [genotypes]}, "
               "\"counts\": {phenotype: n} (optional), \"init\": {allele: p} (optional)}; "
               "genotypes are written 'AO' or 'A1/A2'.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", choices=tuple(PRESETS),
                       help="peppered-moth (carbonaria, insularia, typica) or abo (A, B, AB, O)")
    which.add_argument("--model", metavar="FILE.json|FILE.yaml", help="your own allele system")
    p.add_argument("--counts", metavar="N1,N2,...|NAME=N,...",
                   help="phenotype counts, in phenotype order or as name=count (needed unless the "
                        "model file holds counts)")
    p.add_argument("--max-iter", type=non_negative_int, default=100, help="most EM steps (default 100)")
    p.add_argument("--tol", type=non_negative_float, default=1e-10,
                   help="stop when |change of log-likelihood| <= tol * |log-likelihood| (default 1e-10)")
    p.add_argument("--steps", action="store_true", help="print the frequencies after every EM step")
    p.add_argument("--out", metavar="RESULT.json", help="write the estimate as JSON")
    p.add_argument("--plot", metavar="FIG.png", help="draw the frequencies and log-likelihood per step")
    p.set_defaults(run=run)


def _from_file(path: str, settings: Dict[str, Any]):
    """The estimator and the file's counts (None if it has none)."""
    from pyroem.models import HardyWeinberg

    spec = read_model_file(path)
    unknown = [k for k in spec if k not in MODEL_KEYS]
    if unknown:
        raise CliError(f"{path}: unknown key(s) {unknown}; a model file has {', '.join(MODEL_KEYS)}")
    missing = [k for k in ("alleles", "phenotypes") if k not in spec]
    if missing:
        raise CliError(f"{path}: missing key(s) {missing}; a model file has at least 'alleles' and 'phenotypes'")
    phenotypes = spec["phenotypes"]
    if not isinstance(phenotypes, dict):
        raise CliError(f"{path}: 'phenotypes' must map each phenotype to its genotypes, "
                       f"got {type(phenotypes).__name__}")
    try:
        est = HardyWeinberg(spec["alleles"], {str(k): v for k, v in phenotypes.items()},
                            init=spec.get("init"), **settings)
    except (ValueError, TypeError) as err:
        raise CliError(f"{path}: {err}") from None
    counts = spec.get("counts")
    if isinstance(counts, dict):
        counts = {str(k): v for k, v in counts.items()}
    return est, counts


def build(args: argparse.Namespace):
    """The estimator and the counts to fit."""
    from pyroem.models import HardyWeinberg

    settings = {"max_iter": args.max_iter, "tol": args.tol}
    if args.preset:
        est, counts = getattr(HardyWeinberg, PRESETS[args.preset])(**settings), None
    else:
        est, counts = _from_file(args.model, settings)
    if args.counts is not None:
        counts = parse_counts(args.counts, est.system.phenotypes)
    if counts is None:
        raise CliError("no counts: give --counts (one per phenotype: "
                       f"{', '.join(map(str, est.system.phenotypes))})")
    return est, counts


def _by_phenotype(counts, phenotypes) -> Dict[str, float]:
    """``{phenotype: count}`` in phenotype order, from a mapping or a list in that order."""
    if isinstance(counts, dict):
        return {str(ph): float(counts[ph]) for ph in phenotypes}
    return {str(ph): float(c) for ph, c in zip(phenotypes, counts)}


def results(est, counts) -> Dict[str, Any]:
    return {
        "model": "HardyWeinberg",
        "alleles": est.alleles,
        "phenotypes": est.phenotypes,
        "counts": _by_phenotype(counts, est.system.phenotypes),
        "allele_freqs": est.allele_freqs_,
        "allele_freqs_se": est.allele_freqs_se_,
        "allele_freqs_ci95": est.allele_freqs_ci_,
        "genotype_freqs": est.genotype_freqs_,
        "expected_genotype_counts": est.expected_genotype_counts_,
        "log_likelihood": est.log_likelihood_,
        "n_iter": est.n_iter_,
        "converged": est.converged_,
        "history": est.history_,
        "allele_freqs_history": est.allele_freqs_history_,
        "notes": "log_likelihood = sum over phenotypes of count * log P(phenotype); "
                 "the multinomial coefficient is left out",
    }


def summary(res: Dict[str, Any], steps: bool) -> str:
    alleles = res["alleles"]
    n = sum(res["counts"].values())
    counts = ", ".join(f"{ph} {c:g}" for ph, c in res["counts"].items())
    lines = [f"Hardy-Weinberg EM, alleles {', '.join(alleles)}; {n:g} individuals ({counts})"]
    if steps:
        lines.append(f"{'step':>4} {'log-likelihood':>15} " + " ".join(f"{'p_' + a:>10}" for a in alleles))
        for step, (ll, freqs) in enumerate(zip(res["history"], res["allele_freqs_history"])):
            lines.append(f"{step:>4} {ll:>15.6f} " + " ".join(f"{freqs[a]:>10.6f}" for a in alleles))
    lines.append(f"{'converged' if res['converged'] else 'NOT converged'} after {res['n_iter']} EM step(s)")
    lines.append(f"{'allele':<8} {'frequency':>10} {'std. error':>11}   95% interval")
    lines += [f"{a:<8} {res['allele_freqs'][a]:>10.6f} {res['allele_freqs_se'][a]:>11.6f}   "
              f"({res['allele_freqs_ci95'][a][0]:.6f}, {res['allele_freqs_ci95'][a][1]:.6f})" for a in alleles]
    lines.append(f"log-likelihood {res['log_likelihood']:.6f} (multinomial coefficient left out)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        plotting.check_figure_path(args.plot)
    est, counts = build(args)
    est.fit(counts)
    res = results(est, counts)
    print(summary(res, args.steps))
    if args.out:
        write_json(args.out, res)
        print(f"result: {args.out}")
    if args.plot:
        fig = plotting.allele_path_figure(est.allele_freqs_history_, est.history_, est.alleles)
        print(f"figure: {plotting.save_figure(fig, args.plot)}")
    return 0
