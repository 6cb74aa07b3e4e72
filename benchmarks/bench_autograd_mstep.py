"""EM on users' own models: seconds to the optimum with closed-form updates, with the default
M-step (``EM(model).fit(...)``, no updates), with the default M-step and SQUAREM, and with SVI.

The six models are written the way Pyro users write them (``tests/user_models.py``): Dawid-Skene
annotators, latent class analysis, Pyro's ``examples/hmm.py`` ``model_1`` with plain params,
Pyro's GMM tutorial (MAP sites), a zero-inflated Poisson regression with ``dist.MaskedMixture``
and the Stan user's guide change point. Every method starts from the same parameters.

EM methods run ``fit(tol=1e-8)`` (the default) in interleaved rounds (one run of each method per
round); the table gives the median seconds and the median of the per-round ratios. SVI is
``pyroem.compare_svi``'s SVI (``TraceEnum_ELBO``, latents enumerated, Adam) at each learning rate
of ``--lrs``; it counts as done at its first step within 100 x EM's tolerance of the optimum
(``100 * 1e-8 * |log p|``), timed by its own steps only, and the fastest rate is reported (once:
its runs last seconds, and noise matters less there).

    python benchmarks/bench_autograd_mstep.py [--rounds 3] [--threads 1] [--markdown]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pyro
import torch

import pyroem

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from user_models import USER_MODELS, set_params  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import print_table  # noqa: E402

TOL = 1e-8
METHODS = ("closed form", "default", "default + SQUAREM")


def fit_once(name: str, method: str) -> Tuple[float, int, float]:
    """(seconds, iterations, final log-likelihood) of one fit from the model's start."""
    m = USER_MODELS[name]
    args = m.make_data()
    set_params(m.init(args), name)
    updates = m.updates if method == "closed form" else None
    accelerate = "squarem" if method.endswith("SQUAREM") else None
    em = pyroem.EM(m.model, updates)
    start = time.perf_counter()
    res = em.fit(*args, max_iter=5000, tol=TOL, accelerate=accelerate)
    return time.perf_counter() - start, res.n_iter, res.log_likelihood


def svi_time(name: str, target: float, lrs: List[float], steps: int) -> Tuple[Optional[float], int, float, float]:
    """Fastest SVI over ``lrs``: (seconds to reach ``target`` or None, steps, lr, best log-lik)."""
    m = USER_MODELS[name]
    args = m.make_data()
    best = (None, steps, lrs[0], float("-inf"))
    for lr in lrs:
        set_params(m.init(args), name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cmp = pyroem.compare_svi(m.model, *args, em_steps=1, svi_steps=steps,
                                     svi_optim=pyro.optim.Adam({"lr": lr}))
        run = cmp.svi
        hit = run.first_within(target, 0.0)
        seconds = None if hit is None else float(run.seconds[hit])
        reached = run.best_log_likelihood
        better = (seconds is not None and (best[0] is None or seconds < best[0])) or \
                 (best[0] is None and seconds is None and reached > best[3])
        if better:
            best = (seconds, steps if hit is None else int(run.steps[hit]), lr, reached)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    ap.add_argument("--svi-steps", type=int, default=1500)
    ap.add_argument("--models", nargs="*", default=list(USER_MODELS))
    ap.add_argument("--markdown", action="store_true")
    opts = ap.parse_args()
    torch.set_num_threads(opts.threads)
    pyro.enable_validation(False)

    for name in opts.models:  # warm-up: first-use costs (imports, kernels) stay out of the timings
        for method in METHODS:
            if method != "closed form" or USER_MODELS[name].updates is not None:
                fit_once(name, method)

    times: Dict[Tuple[str, str], List[float]] = {}
    iters: Dict[Tuple[str, str], int] = {}
    lls: Dict[Tuple[str, str], float] = {}
    for _ in range(opts.rounds):
        for name in opts.models:
            for method in METHODS:
                if method == "closed form" and USER_MODELS[name].updates is None:
                    continue
                seconds, n_iter, ll = fit_once(name, method)
                times.setdefault((name, method), []).append(seconds)
                iters[name, method], lls[name, method] = n_iter, ll

    head = ["model", "closed form s (iters)", "default s (iters)", "default + SQUAREM s (iters)",
            "SVI s (steps, lr)", "default / closed", "SVI / default", "SVI / SQUAREM"]
    rows = []
    for name in opts.models:
        optimum = max(v for (n, _), v in lls.items() if n == name)
        target = optimum - 100 * TOL * max(1.0, abs(optimum))
        svi_s, svi_steps, lr, reached = svi_time(name, target, opts.lrs, opts.svi_steps)

        def cell(method: str) -> str:
            key = (name, method)
            if key not in times:
                return "—"
            return f"{statistics.median(times[key]):.3f} ({iters[key]})"

        def ratio(a: str, b: str) -> str:
            if (name, a) not in times or (name, b) not in times:
                return "—"
            per_round = [x / y for x, y in zip(times[name, a], times[name, b])]
            return f"{statistics.median(per_round):.2f}"

        default_s = statistics.median(times[name, "default"])
        squarem_s = statistics.median(times[name, "default + SQUAREM"])
        if svi_s is None:
            svi_cell = f"not within {100 * TOL:.0e} in {svi_steps} steps (best {reached:.4f}, lr {lr})"
            vs_default = vs_squarem = f"> {opts.svi_steps} steps"
        else:
            svi_cell = f"{svi_s:.3f} ({svi_steps}, lr {lr})"
            vs_default, vs_squarem = f"{svi_s / default_s:.1f}", f"{svi_s / squarem_s:.1f}"
        rows.append([name, cell("closed form"), cell("default"), cell("default + SQUAREM"), svi_cell,
                     ratio("default", "closed form"), vs_default, vs_squarem])
    if opts.markdown:
        print(f"Users' own models (`tests/user_models.py`), float64, torch threads {opts.threads}: seconds "
              f"to `fit(tol={TOL:g})`, median of {opts.rounds} interleaved rounds (ratios: median of "
              "per-round ratios); SVI (Adam, best of lr " + "/".join(f"{x:g}" for x in opts.lrs) +
              f", at most {opts.svi_steps} steps) until within 100 x that tolerance of the optimum.")
    print_table(head, rows, opts.markdown)


if __name__ == "__main__":
    main()
