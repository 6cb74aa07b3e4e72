"""Thread count by problem size: small and large fits with pyroem's choice (one thread below
``pyroem.thresholds.SINGLE_THREAD_WORK``) against torch's thread count for every fit, on an idle
machine and beside a competing CPU-bound process.

Each configuration runs its cases round by round (the two settings interleaved); the table shows
median seconds and the ratio all-threads / pyroem's choice.

    python benchmarks/bench_threads.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_iris

import pyroem.thresholds as thresholds
from pyroem.models import GaussianHMM, GaussianMixture

BUSY = "import numpy as np\nA = np.random.rand(400, 400)\nwhile True:\n    A = np.tanh(A @ A)\n"


def cases():
    iris = load_iris().data
    rng = np.random.default_rng(0)
    small_hmm = np.concatenate([rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 3])
    big = np.concatenate([rng.normal(size=(100_000, 8)), rng.normal(size=(100_000, 8)) + 2])
    return {
        "GaussianMixture(3).fit(iris)": lambda: GaussianMixture(3, random_state=0).fit(iris),
        "GaussianHMM(2).fit(600 x 2)": lambda: GaussianHMM(2, random_state=0, n_iter=20).fit(small_hmm),
        "GaussianMixture(16), 200 000 x 8, 5 steps": lambda: GaussianMixture(16, random_state=0, max_iter=5,
                                                                             tol=0.0).fit(big),
    }


def timed(fn, single_thread_work: int) -> float:
    thresholds.SINGLE_THREAD_WORK = single_thread_work
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    default = thresholds.SINGLE_THREAD_WORK
    work = cases()
    for fn in work.values():  # warm-up
        fn()
    print(f"torch threads {torch.get_num_threads()}; pyroem's choice: one thread below "
          f"{default} elements; median of {args.rounds} interleaved rounds, seconds")
    print(f"{'case':<44} {'machine':<22} {'pyroem':>8} {'all threads':>12} {'ratio':>7}")
    for load in ("idle", "one busy process"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load != "idle" else None
        try:
            time.sleep(0.5 if busy else 0.0)
            for name, fn in work.items():
                ours, forced = [], []
                for _ in range(args.rounds):
                    ours.append(timed(fn, default))
                    forced.append(timed(fn, 0))
                a, b = statistics.median(ours), statistics.median(forced)
                print(f"{name:<44} {load:<22} {a:8.3f} {b:12.3f} {b / a:7.2f}")
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
            thresholds.SINGLE_THREAD_WORK = default


if __name__ == "__main__":
    main()
