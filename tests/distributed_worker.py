"""What each rank of the data-parallel tests runs (a module of its own, so spawned processes import it)."""
from __future__ import annotations

import datetime
import json
import os

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

import pyroem
from test_engine_statistics import mixture as gaussian_mixture
from test_engine_statistics import solve, statistics


def data(n: int = 400) -> dict:
    g = torch.Generator().manual_seed(0)
    z = torch.rand(n, generator=g, dtype=torch.float64) < 0.35
    y = torch.where(z, torch.randn(n, generator=g, dtype=torch.float64) * 0.6 - 1.5,
                    torch.randn(n, generator=g, dtype=torch.float64) + 2.0)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    counts = torch.poisson(torch.where(z, (0.3 + 0.8 * x).exp(), (1.5 - 0.4 * x).exp()), generator=g)
    return {"y": y, "x": x, "counts": counts}


def poisson_regression_mixture(x, counts):
    """Two Poisson regressions mixed: the coefficients need Newton on Q; the intercepts have a
    Normal prior (MAP sites), which a data-parallel fit must count once."""
    w = pyro.param("w", torch.tensor([0.5, 0.5], dtype=x.dtype), constraint=constraints.simplex)
    slope = pyro.param("slope", torch.tensor([0.5, -0.5], dtype=x.dtype))
    with pyro.plate("classes", 2):
        intercept = pyro.sample("intercept", dist.Normal(torch.zeros(2, dtype=x.dtype), 2.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("counts", dist.Poisson((intercept[z] + slope[z] * x).exp()), obs=counts)


def fit(case: str, shard: slice, max_iter: int = 30) -> dict:
    pyro.clear_param_store()
    d = {k: v[shard] for k, v in data().items()}
    if case == "closed_form":
        res = pyroem.EM(gaussian_mixture).fit(d["y"], max_iter=max_iter, tol=0.0)
    elif case == "statistics":
        res = pyroem.EM(gaussian_mixture, statistics=statistics, solve=solve).fit(d["y"], max_iter=max_iter, tol=0.0)
    elif case == "pieces":
        em = pyroem.EM(gaussian_mixture, statistics=statistics, solve=solve)
        res = em.fit(data=list(torch.split(d["y"], 64)), max_iter=max_iter, tol=0.0)
    elif case == "autograd":
        pyro.param("intercept", torch.tensor([0.0, 1.0], dtype=torch.float64))
        res = pyroem.EM(poisson_regression_mixture).fit(d["x"], d["counts"], max_iter=max_iter, tol=0.0)
    elif case in ("gaussian_mixture", "gaussian_mixture_chunks"):
        from pyroem.models import GaussianMixture

        g = torch.Generator().manual_seed(1)
        X = torch.cat([torch.randn(200, 2, generator=g, dtype=torch.float64) @ torch.tensor([[1.0, 0.3], [0.0, 0.5]], dtype=torch.float64),
                       torch.randn(200, 2, generator=g, dtype=torch.float64) + 3.0]).numpy()
        gm = GaussianMixture(2, means_init=[[0.0, 0.0], [2.0, 2.0]], weights_init=[0.5, 0.5],
                             precisions_init=[[[1.0, 0.0], [0.0, 1.0]]] * 2, tol=1e-10, max_iter=200,
                             chunk_size=64 if case.endswith("chunks") else None).fit(X[shard])
        return {"history": gm.history_, "n_iter": gm.n_iter_,
                "params": {"weights": gm.weights_.tolist(), "means": gm.means_.tolist(),
                           "covariances": gm.covariances_.tolist()}}
    else:
        raise ValueError(case)
    return {"history": res.history, "params": {k: v.tolist() for k, v in res.params.items()}}


CASES = ("closed_form", "statistics", "pieces", "autograd", "gaussian_mixture", "gaussian_mixture_chunks")


def run_rank(rank: int, world_size: int, store: str, out_dir: str, mode: str) -> None:
    """One rank: its shard of every case (``mode="fits"``), or a shard with a NaN on rank 1
    (``mode="failure"``); writes what it got to ``out_dir/rank{rank}.json``."""
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                             timeout=datetime.timedelta(seconds=60))
    n = len(data()["y"])
    shard = slice(rank * n // world_size, (rank + 1) * n // world_size)
    out = {}
    try:
        if mode == "fits":
            for case in CASES:
                out[case] = fit(case, shard)
        else:
            pyro.clear_param_store()
            y = data()["y"][shard].clone()
            if rank == 1:
                y[3] = float("nan")
            try:
                pyroem.EM(gaussian_mixture).fit(y, max_iter=5)
                out["error"] = None
            except Exception as err:  # what each rank saw
                out["error"] = f"{type(err).__name__}: {err}"
    finally:
        tdist.destroy_process_group()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
