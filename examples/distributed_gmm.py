"""Data-parallel EM with torch.distributed: every process fits the same Gaussian mixture on its own
shard of the data, and all of them end with the parameters of one fit on all of the data.

Launch one process per shard with torchrun (gloo on CPUs, NCCL when every process has a GPU):

    torchrun --nproc_per_node=2 examples/distributed_gmm.py [--out DIR] [--n 200000]

Run with plain ``python`` it is one process holding all of the data: the same fit. Each rank
draws the full data set from one seed and keeps its rows ``rank::world_size`` (a real job reads
its own file). Two fits run: a Pyro model written here, with the engine's default M-step, and the
bundled ``pyroem.models.GaussianMixture``. Rank 0 prints both and draws its shard coloured by
component with the fitted means (``distributed_gmm.png``).
"""
from __future__ import annotations

import argparse
import datetime
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
import torch.distributed as tdist  # noqa: E402
from pyro.distributions import constraints  # noqa: E402

import pyroem  # noqa: E402
from pyroem.models import GaussianMixture  # noqa: E402

CENTRES = torch.tensor([[-3.0, 0.0], [0.0, 3.0], [3.0, 0.0]], dtype=torch.float64)


def shard(n: int, rank: int, world: int) -> torch.Tensor:
    """This rank's rows of ``n`` points from three round normals (one seed on every rank)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randint(3, (n,), generator=g)
    X = CENTRES[z] + torch.randn(n, 2, generator=g, dtype=torch.float64)
    return X[rank::world]


def model(X: torch.Tensor) -> None:
    """Three spherical bivariate normals with unknown weights, means and scales."""
    weights = pyro.param("weights", torch.full((3,), 1 / 3, dtype=X.dtype), constraint=constraints.simplex)
    means = pyro.param("means", torch.tensor([[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=X.dtype))
    scales = pyro.param("scales", torch.ones(3, dtype=X.dtype), constraint=constraints.positive)
    with pyro.plate("data", len(X)):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(means[z], scales[z].unsqueeze(-1)).to_event(1), obs=X)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for the PNG (default: current folder)")
    parser.add_argument("--n", type=int, default=200_000, help="points in all (default 200000)")
    args = parser.parse_args()

    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # set by torchrun
    if launched:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        # a timeout, so that a rank lost in a step ends the others' wait with an error
        tdist.init_process_group(backend, timeout=datetime.timedelta(minutes=5))
    rank, world = (tdist.get_rank(), tdist.get_world_size()) if launched else (0, 1)
    device = torch.device("cuda") if launched and torch.cuda.is_available() else torch.device("cpu")
    X = shard(args.n, rank, world).to(device)

    result = pyroem.EM(model).fit(X, max_iter=200, tol=1e-10)  # each rank: its shard, the same steps
    # a start given in full is the same on every rank; one drawn from the data (k-means) is drawn on
    # rank 0's shard and sent to the others
    start = dict(means_init=[[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], weights_init=[1 / 3] * 3,
                 precisions_init=[[[1.0, 0.0], [0.0, 1.0]]] * 3)
    gmm = GaussianMixture(3, tol=1e-8, **start).fit(X.cpu().numpy())
    if rank == 0:
        print(f"{world} process(es), {len(X)} of {args.n} points on rank 0")
        print(f"Pyro model:      log p(X|θ) = {result.log_likelihood:.4f} after {result.n_iter} steps "
              f"(converged: {result.converged})")
        for k in range(3):
            m = result.params["means"][k].tolist()
            print(f"  component {k + 1}: weight {float(result.params['weights'][k]):.4f}, "
                  f"mean ({m[0]:+.4f}, {m[1]:+.4f}), scale {float(result.params['scales'][k]):.4f}")
        print(f"GaussianMixture: mean log-likelihood {gmm.lower_bound_:.6f} after {gmm.n_iter_} steps")
        labels = gmm.predict(X.cpu().numpy())
        fig, ax = plt.subplots(figsize=(6, 5))
        sample = slice(0, min(len(X), 5000))
        Xs = X.cpu().numpy()[sample]
        ax.scatter(Xs[:, 0], Xs[:, 1], c=labels[sample], s=4, cmap="viridis", alpha=0.5)
        ax.scatter(gmm.means_[:, 0], gmm.means_[:, 1], marker="x", s=90, color="red", label="fitted means")
        ax.set_title(f"Rank 0's shard, coloured by component ({world} process(es))")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.legend(loc="best")
        fig.tight_layout()
        path = os.path.join(args.out, "distributed_gmm.png")
        fig.savefig(path, dpi=120)
        print(path)
    if launched:
        tdist.destroy_process_group()


if __name__ == "__main__":
    main()
