"""Data-parallel EM on torch.distributed: two gloo processes, each with half of the data, reach the
fit of one process on all of it — closed-form (the engine's exact updates), statistics-form, data
in pieces and autograd M-steps with MAP sites — and a rank that fails stops every rank."""
import json
import os

import numpy as np
import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp

import distributed_worker as worker

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or
                                 not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")


def _entry(rank, world_size, store, out_dir, mode):
    worker.run_rank(rank, world_size, store, out_dir, mode)


def _run(tmp_path, mode: str):
    out_dir = str(tmp_path)
    mp.start_processes(_entry, args=(2, str(tmp_path / "store"), out_dir, mode), nprocs=2, join=True,
                       start_method="spawn")
    return [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(2)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("fits"), "fits")


@pytest.mark.parametrize("case", worker.CASES)
def test_two_ranks_fit_as_one_process_on_all_the_data(two_ranks, case):
    single = worker.fit(case, slice(None))
    for rank in two_ranks:
        assert rank[case].get("n_iter") == single.get("n_iter")
        np.testing.assert_allclose(rank[case]["history"], single["history"], rtol=1e-10)
        for name, value in single["params"].items():
            np.testing.assert_allclose(rank[case]["params"][name], value, rtol=1e-10, atol=1e-12)
    assert two_ranks[0][case] == two_ranks[1][case]  # identical on every rank, to the bit


def test_a_failed_rank_stops_every_rank(tmp_path):
    errors = [r["error"] for r in _run(tmp_path, "failure")]
    assert errors[1] is not None and "ValueError" in errors[1] and "observes NaN values" in errors[1]
    assert errors[0] is not None and "failed on rank 1 of 2" in errors[0] and "observes NaN values" in errors[0]
