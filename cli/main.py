"""Entry point of the ``pyroem`` command: the argument parser and the dispatch to a command.

Errors in the user's input (files, counts, model files) and ``ValueError``/``TypeError`` raised
by the estimators print one line ``pyroem: error: ...`` and exit with status 1; argparse usage
errors exit with status 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

from . import compare, demo, fit_gmm, fit_hmm, fit_hw, predict
from .errors import CliError

PROG = "pyroem"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pyroem")
    except Exception:  # not installed as a distribution: the package's own number
        import pyroem

        return pyroem.__version__


def build_parser() -> argparse.ArgumentParser:
    """The full parser: ``demo``, ``fit {gmm, hardy-weinberg, hmm}``, ``predict``, ``compare {gmm, moth}``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Exact expectation-maximization for Pyro models with discrete latent variables.",
        epilog="Run 'pyroem demo' for a first look; 'pyroem fit -h' lists the bundled models.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    parser.add_argument("--debug", action="store_true", default=False, help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.add_parser(commands, [common])

    fit = commands.add_parser("fit", parents=[common], help="fit a bundled model to your data",
                              description="Fit a bundled model to your data by EM.")
    models = fit.add_subparsers(dest="model", metavar="MODEL", required=True)
    fit_gmm.add_parser(models, [common])
    fit_hw.add_parser(models, [common])
    fit_hmm.add_parser(models, [common])

    predict.add_parser(commands, [common])
    compare.add_parser(commands, [common])
    return parser


def _error(message: str) -> int:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 1


def _silence_stdout() -> None:
    """Point stdout at devnull so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args_list: List[str] = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as stop:  # usage errors (2), --help and --version (0)
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.run(args) or 0)
    except CliError as err:
        if debug:
            raise
        return _error(str(err))
    except (ValueError, TypeError) as err:  # the estimators' checks of the data and settings
        if debug:
            raise
        return _error(str(err) or type(err).__name__)
    except BrokenPipeError:  # e.g. `pyroem ... | head`: the reader left, nothing to report
        _silence_stdout()
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # anything else: still one line, the traceback on request
        if debug:
            raise
        return _error(f"{type(err).__name__}: {err} (run with --debug for the traceback)")
