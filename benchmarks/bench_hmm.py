"""Baum-Welch per-step time: hmmlearn against pyroem's HMM estimators and users' own Pyro HMMs, in one process.

Both libraries fit the same data from the same initial parameters (set as attributes,
``init_params=""``, ``tol=-inf`` so every step runs); timings are medians over rounds that
interleave the contenders, and the final log-likelihoods (``score`` at the fitted parameters)
are printed with their relative difference to hmmlearn's after as many steps, so one can check
that both computed the same steps.

Cases: GaussianHMM (diag, K=8, D=2) and CategoricalHMM (K=8, 6 symbols), each on
(a) one long sequence, T = 100 000, and (b) 1 000 sequences of T = 100.
Contenders: hmmlearn; ``pyroem`` (the estimator: its Pyro model and closed-form updates run by
``pyroem.EM``); "Pyro model (vectorized_markov), default EM": the same HMM written by a user
with ``pyroem.vectorized_markov`` and fitted by ``pyroem.EM(model).fit`` without updates (maximum
likelihood: no covariance prior, so its log-likelihood differs a little from hmmlearn's
MAP-regularized one); on the short sequences also "Pyro model (pyro.markov), default EM", the
chain written step by step. A second table times Pyro's ``examples/hmm.py`` ``model_1``
(``tests/user_models.py``, 20 sequences x 20 steps x 8 tones) per EM step, and a third Viterbi.

    python benchmarks/bench_hmm.py --threads 1 --steps 5 --markdown
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="threads for torch and BLAS (default: library default)")
    ap.add_argument("--steps", type=int, default=5, help="Baum-Welch steps per timed fit (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the median is shown (default 3)")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="pyroem's dtype")
    ap.add_argument("--n-long", type=int, default=100_000, help="length of the long sequence")
    ap.add_argument("--n-seq", type=int, default=1000, help="number of short sequences")
    ap.add_argument("--t-short", type=int, default=100, help="length of each short sequence")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hmmlearn import hmm as hmmlearn_hmm  # noqa: E402

from _tables import print_table  # noqa: E402
from pyroem.models import CategoricalHMM, GaussianHMM  # noqa: E402

K, D, F = 8, 2, 6


def make_data(kind: str, n_total: int, seed: int = 0):
    """Samples of a well-separated HMM, and initial parameters shared by both libraries."""
    rs = np.random.RandomState(seed)
    trans = rs.dirichlet(np.ones(K), size=K) * 0.3 + 0.7 * np.eye(K)
    truth = dict(startprob_=np.full(K, 1.0 / K), transmat_=trans)
    if kind == "gaussian":
        truth.update(means_=rs.randn(K, D) * 4, covars_=np.ones((K, D)))
        gen = hmmlearn_hmm.GaussianHMM(K, covariance_type="diag", init_params="")
    else:
        truth.update(emissionprob_=rs.dirichlet(np.ones(F) * 0.5, size=K))
        gen = hmmlearn_hmm.CategoricalHMM(K, n_features=F, init_params="")
    for name, value in truth.items():
        setattr(gen, name, value)
    X, _ = gen.sample(n_total, random_state=rs)
    init = dict(startprob_=rs.dirichlet(np.ones(K)), transmat_=rs.dirichlet(np.ones(K), size=K))
    if kind == "gaussian":
        init.update(means_=X[rs.choice(len(X), K, replace=False)], covars_=np.tile(X.var(0), (K, 1)))
    else:
        init.update(emissionprob_=rs.dirichlet(np.ones(F), size=K))
    return X, init


def build(lib: str, kind: str, init: dict, steps: int, dtype: torch.dtype, shape=None):
    if lib in ("user", "vectorized"):
        return UserHMM(kind, init, steps, *shape, vectorized=lib == "vectorized")
    kw = dict(n_components=K, n_iter=steps, tol=-np.inf, init_params="")
    if lib == "hmmlearn":
        model = (hmmlearn_hmm.GaussianHMM(covariance_type="diag", **kw) if kind == "gaussian"
                 else hmmlearn_hmm.CategoricalHMM(n_features=F, **kw))
    else:
        kw.update(dtype=dtype)
        model = (GaussianHMM(covariance_type="diag", **kw) if kind == "gaussian"
                 else CategoricalHMM(n_features=F, **kw))
    for name, value in init.items():
        setattr(model, name, np.array(value, copy=True))
    return model


def user_model(kind: str, n_seq: int, t_len: int, vectorized: bool):
    """The HMM as a user writes it: a sequences plate, the chain over time as a
    ``pyroem.vectorized_markov`` or a ``pyro.markov`` loop."""
    import pyro
    import pyro.distributions as dist
    from pyro.distributions import constraints

    import pyroem

    def model(X):
        dt = torch.float64
        pi = pyro.param("pi", torch.ones(K, dtype=dt) / K, constraint=constraints.simplex)
        A = pyro.param("A", torch.ones(K, K, dtype=dt) / K, constraint=constraints.simplex)
        if kind == "gaussian":
            loc = pyro.param("loc", torch.zeros(K, D, dtype=dt))
            scale = pyro.param("scale", torch.ones(K, D, dtype=dt), constraint=constraints.positive)
        else:
            emit = pyro.param("emit", torch.ones(K, F, dtype=dt) / F, constraint=constraints.simplex)
        steps = (pyroem.vectorized_markov(name="time", size=t_len, dim=-1) if vectorized
                 else pyro.markov(range(t_len)))
        with pyro.plate("sequences", n_seq, dim=-2 if vectorized else -1):
            x = None
            for t in steps:
                x = pyro.sample(f"x_{t}", dist.Categorical(pi if x is None else A[x]))
                y = X[:, t:t + 1] if vectorized and isinstance(t, int) else X[:, t]
                if kind == "gaussian":
                    pyro.sample(f"y_{t}", dist.Normal(loc[x], scale[x]).to_event(1), obs=y)
                else:
                    pyro.sample(f"y_{t}", dist.Categorical(emit[x]), obs=y)

    return model


class UserHMM:
    """``fit``/``score`` around ``pyroem.EM(model)`` on the user-written HMM, starting from ``init``."""

    def __init__(self, kind: str, init: dict, steps: int, n_seq: int, t_len: int, vectorized: bool):
        self.kind, self.init, self.steps, self.shape = kind, init, steps, (n_seq, t_len)
        self.model = user_model(kind, n_seq, t_len, vectorized)

    def _data(self, X):
        X = np.asarray(X).reshape(self.shape + ((D,) if self.kind == "gaussian" else ()))
        return torch.as_tensor(X, dtype=torch.float64 if self.kind == "gaussian" else torch.long)

    def _load(self):
        import pyro
        from pyro.distributions import constraints

        pyro.clear_param_store()
        t = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float64)  # noqa: E731
        pyro.param("pi", t(self.init["startprob_"]), constraint=constraints.simplex)
        pyro.param("A", t(self.init["transmat_"]), constraint=constraints.simplex)
        if self.kind == "gaussian":
            pyro.param("loc", t(self.init["means_"]))
            pyro.param("scale", t(np.sqrt(self.init["covars_"])), constraint=constraints.positive)
        else:
            pyro.param("emit", t(self.init["emissionprob_"]), constraint=constraints.simplex)

    def fit(self, X, lengths):
        import pyroem

        self._load()
        self.result = pyroem.EM(self.model).fit(self._data(X), max_iter=self.steps, tol=0.0)
        return self

    def score(self, X, lengths):
        import pyroem

        return float(pyroem.log_likelihood(self.model, self._data(X)).detach())


def time_fit(model, X, lengths, steps: int):
    start = time.perf_counter()
    model.fit(X, lengths)
    return 1e3 * (time.perf_counter() - start) / steps, model.score(X, lengths)


def case_data(kind: str, shape: str, args):
    """``(X, initial parameters, lengths)``: one long sequence or many short ones."""
    if shape == "long":
        X, init = make_data(kind, args.n_long)
        return X, init, None
    X, init = make_data(kind, args.n_seq * args.t_short)
    return X, init, [args.t_short] * args.n_seq


NAMES = {"hmmlearn": "hmmlearn", "pyroem": "pyroem", "vectorized": "Pyro model (vectorized_markov), default EM",
         "user": "Pyro model (pyro.markov), default EM"}


def run_case(kind: str, shape: str, args, dtype: torch.dtype):
    X, init, lengths = case_data(kind, shape, args)
    n_seq, t_len = (1, len(X)) if shape == "long" else (args.n_seq, args.t_short)
    contenders = ["hmmlearn", "pyroem", "vectorized"] + (["user"] if shape == "short" else [])
    times = {c: [] for c in contenders}
    final = {}
    for _ in range(args.rounds):
        for lib in contenders:
            model = build(lib, kind, init, args.steps, dtype, (n_seq, t_len))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ms, ll = time_fit(model, X, lengths, args.steps)
            times[lib].append(ms)
            final[lib] = ll
    ref_ms, ref_ll = float(np.median(times["hmmlearn"])), final["hmmlearn"]
    rows = []
    for lib in contenders:
        ms = float(np.median(times[lib]))
        # the per-round ratio to the bundled estimator, median over rounds
        to_bundled = float(np.median(np.array(times[lib]) / np.array(times["pyroem"])))
        agree = "" if lib == "hmmlearn" else f"{abs(final[lib] - ref_ll) / abs(ref_ll):.1e}"
        sizes = f"1 x T={len(X)}" if shape == "long" else f"{args.n_seq} x T={args.t_short}"
        rows.append(dict(case=f"{kind}, {sizes}", lib=NAMES[lib], steps=args.steps, ms=ms,
                         ratio=float(np.median(np.array(times[lib]) / np.array(times["hmmlearn"]))),
                         bundled=to_bundled, ll=final[lib], agree=agree))
    del ref_ms
    return rows


def run_model_1(args):
    """Pyro's examples/hmm.py model_1 (20 x 20 x 8, a pyro.markov chain), ms per EM step with its
    closed-form updates and with the default M-step."""
    from pathlib import Path

    import pyro

    import pyroem

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from user_models import USER_MODELS, set_params

    spec = USER_MODELS["hmm_model_1"]
    data = spec.make_data()
    times = {"closed-form updates": [], "default M-step": []}
    for _ in range(args.rounds):
        for label, updates in (("closed-form updates", spec.updates), ("default M-step", None)):
            pyro.clear_param_store()
            set_params(spec.init(data))
            em = pyroem.EM(spec.model, updates)
            em.step(*data)
            start = time.perf_counter()
            for _ in range(10):
                em.step(*data)
            times[label].append(1e3 * (time.perf_counter() - start) / 10)
    return [[label, f"{float(np.median(t)):.1f}"] for label, t in times.items()]


def run_decode(kind: str, shape: str, args, dtype: torch.dtype):
    """Viterbi ``decode`` at the starting parameters: hmmlearn against pyroem's default path."""
    X, init, lengths = case_data(kind, shape, args)
    models = {lib: build(lib, kind, init, 1, dtype) for lib in ("hmmlearn", "pyroem")}
    times = {lib: [] for lib in models}
    paths = {}
    for _ in range(args.rounds):
        for lib, model in models.items():
            start = time.perf_counter()
            paths[lib] = model.decode(X, lengths)
            times[lib].append(1e3 * (time.perf_counter() - start))
    ref_ms = float(np.median(times["hmmlearn"]))
    sizes = f"1 x T={len(X)}" if shape == "long" else f"{args.n_seq} x T={args.t_short}"
    same = float(np.mean(paths["pyroem"][1] == paths["hmmlearn"][1]))
    gap = abs(paths["pyroem"][0] - paths["hmmlearn"][0]) / abs(paths["hmmlearn"][0])
    return [[f"{kind}, {sizes}", lib, f"{float(np.median(t)):.1f}", f"{float(np.median(t)) / ref_ms:.2f}",
             "" if lib == "hmmlearn" else f"{same:.4f}", "" if lib == "hmmlearn" else f"{gap:.1e}"]
            for lib, t in times.items()]


def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows, decode_lines = [], []
    for kind in ("gaussian", "categorical"):
        for shape in ("long", "short"):
            rows.extend(run_case(kind, shape, args, dtype))
            decode_lines.extend(run_decode(kind, shape, args, dtype))
            print(f"done: {rows[-1]['case']}", file=sys.stderr, flush=True)
    head = ["case", "library", "steps", "ms / step", "x hmmlearn", "x pyroem", "final log-likelihood",
            "rel. diff to hmmlearn"]
    lines = [[r["case"], r["lib"], str(r["steps"]), f"{r['ms']:.1f}", f"{r['ratio']:.2f}", f"{r['bundled']:.2f}",
              f"{r['ll']:.6f}", r["agree"]] for r in rows]
    print(f"HMM Baum-Welch against hmmlearn (same data, same start): torch threads {torch.get_num_threads()}, "
          f"pyroem dtype {args.dtype}, median of {args.rounds} interleaved rounds (ratios: median of per-round ratios)")
    print_table(head, lines, args.markdown)
    print()
    print(f"Pyro's examples/hmm.py model_1 (20 sequences x 20 steps x 8 tones, a pyro.markov chain): ms per EM step, "
          f"median of {args.rounds} rounds of 10 steps")
    print_table(["M-step", "ms / step"], run_model_1(args), args.markdown)
    print()
    print(f"Viterbi decode at the starting parameters (pyroem's default implementation), median of "
          f"{args.rounds} interleaved rounds")
    print_table(["case", "library", "ms", "x hmmlearn", "states equal to hmmlearn's", "rel. diff of log-prob"],
           decode_lines, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
