"""The same fits on a CUDA device: results equal the CPU/peer references, tensors stay on the GPU.

Skipped on machines without CUDA (``pytest -m cuda`` selects them on a GPU machine).
"""
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGMM

import pyroem
from pyroem.models import GaussianHMM, GaussianMixture

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def blobs(n=600, d=3, seed=0):
    rng = np.random.RandomState(seed)
    centers = rng.uniform(-5, 5, size=(4, d))
    return centers[rng.randint(4, size=n)] + rng.randn(n, d)


def sk_start(X, k=4, covariance_type="full"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s = SkGMM(k, covariance_type=covariance_type, max_iter=1, random_state=0).fit(X)
    return dict(weights_init=s.weights_, means_init=s.means_, precisions_init=s.precisions_)


def test_engine_fit_runs_on_the_gpu_and_matches_scikit_learn():
    def model(y):
        w = pyro.param("w", torch.full((2,), 0.5, dtype=y.dtype, device=y.device), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor([-1.0, 1.0], dtype=y.dtype, device=y.device))
        scale = pyro.param("scale", torch.ones(2, dtype=y.dtype, device=y.device), constraint=constraints.positive)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("y", dist.Normal(loc[z], scale[z]), obs=y)

    def updates(expect, y):
        r = expect.marginal("z")
        nk = r.sum(0)
        loc = (r * y[:, None]).sum(0) / nk
        var = (r * (y[:, None] - loc) ** 2).sum(0) / nk
        return {"w": nk / nk.sum(), "loc": loc, "scale": var.sqrt()}

    rng = np.random.RandomState(0)
    y = np.concatenate([rng.randn(300) - 2, 0.5 * rng.randn(200) + 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkGMM(2, covariance_type="spherical", reg_covar=0.0, tol=0.0, max_iter=30, weights_init=[0.5, 0.5],
                    means_init=[[-1.0], [1.0]], precisions_init=[1.0, 1.0]).fit(y[:, None])
    for upd in (updates, None):  # closed-form and autograd M-steps
        pyro.clear_param_store()
        res = pyroem.EM(model, upd).fit(torch.tensor(y, device="cuda"), max_iter=30, tol=0.0)
        assert all(v.device.type == "cuda" for v in res.params.values())
        np.testing.assert_allclose(res.params["loc"].cpu().numpy(), ref.means_[:, 0], rtol=1e-7)
        np.testing.assert_allclose(res.params["scale"].cpu().numpy() ** 2, ref.covariances_, rtol=1e-7)
        np.testing.assert_allclose(res.history[-2] / len(y), ref.lower_bound_, rtol=1e-9)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_gaussian_mixture_on_the_gpu_matches_scikit_learn(covariance_type):
    X = blobs()
    inits = sk_start(X, covariance_type=covariance_type)
    ref = SkGMM(4, covariance_type=covariance_type, tol=1e-6, **inits).fit(X)
    gpu = GaussianMixture(4, covariance_type=covariance_type, tol=1e-6, device="cuda", **inits).fit(X)
    assert gpu._fit_device.type == "cuda"
    np.testing.assert_allclose(gpu.means_, ref.means_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gpu.score(X), ref.score(X), rtol=1e-9)
    from_tensor = GaussianMixture(4, covariance_type=covariance_type, tol=1e-6, **inits).fit(torch.tensor(X).cuda())
    np.testing.assert_allclose(from_tensor.means_, ref.means_, rtol=1e-7, atol=1e-9)


def test_batched_fits_on_the_gpu_match_scikit_learn():
    X = np.stack([blobs(seed=s) for s in range(3)])
    inits = sk_start(X[0])
    fits = GaussianMixture(4, tol=1e-6, device="cuda", **inits).fit_batch(X)
    for b, fit in enumerate(fits):
        ref = SkGMM(4, tol=1e-6, **inits).fit(X[b])
        assert fit.n_iter_ == ref.n_iter_
        np.testing.assert_allclose(fit.score(X[b]), ref.score(X[b]), rtol=1e-9)


def test_gaussian_hmm_on_the_gpu_matches_hmmlearn():
    hmm = pytest.importorskip("hmmlearn.hmm")
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.randn(80, 2) + m for m in ([0, 0], [3, 3], [0, 3])] * 2)
    lengths = [200, 280]
    params = dict(startprob_=np.full(3, 1 / 3), transmat_=np.full((3, 3), 0.1) + 0.7 * np.eye(3),
                  means_=np.array([[0.5, 0.0], [2.5, 2.5], [0.0, 2.0]]), covars_=np.ones((3, 2)))
    ref = hmm.GaussianHMM(3, covariance_type="diag", n_iter=10, tol=0.0, init_params="")
    gpu = GaussianHMM(3, covariance_type="diag", n_iter=10, tol=0.0, init_params="", device="cuda")
    for m in (ref, gpu):
        for name, value in params.items():
            setattr(m, name, value.copy())
        m.fit(X, lengths)
    np.testing.assert_allclose(gpu.transmat_, ref.transmat_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(gpu.means_, ref.means_, rtol=1e-8)
    np.testing.assert_allclose(gpu.score(X, lengths), ref.score(X, lengths), rtol=1e-9)
