"""``expect.log_likelihood_by(plate)``: log p(y_i|θ) per plate element, against numpy/scipy."""
import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

import pyroem
from engine_models import MIX_INIT, make_mixture, mixture_data, mixture_joint

W, LOC = [0.3, 0.7], [-1.0, 2.0]


def batched_mixture(y):
    w = pyro.param("w", torch.tensor(W, dtype=y.dtype))
    loc = pyro.param("loc", torch.tensor(LOC, dtype=y.dtype))
    with pyro.plate("fits", y.shape[0], dim=-2), pyro.plate("data", y.shape[1], dim=-1):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("y", dist.Normal(loc[z], 1.0), obs=y)


def hand_per_fit(y):
    y = y.numpy()
    joint = np.log(W)[None, None, :] + norm.logpdf(y[..., None], LOC, 1.0)
    return logsumexp(joint, axis=-1).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_dataset_log_likelihood_of_a_batch(dtype):
    y = torch.linspace(-3, 4, 15, dtype=dtype).reshape(3, 5)
    expect = pyroem.EM(batched_mixture).e_step(y)
    by = expect.log_likelihood_by("fits")
    assert by.shape == (3,) and by.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(by.numpy(), hand_per_fit(y.double()), rtol=tol)


def test_per_point_log_likelihood_with_weights():
    y = mixture_data()
    weights = torch.linspace(0.5, 2.0, len(y), dtype=y.dtype)
    model = make_mixture()

    def weighted(y):
        with poutine.scale(scale=weights):
            model(y)

    by = pyroem.EM(weighted).e_step(y).log_likelihood_by("data")
    per_point = logsumexp(mixture_joint(y, MIX_INIT["w"], MIX_INIT["loc"], MIX_INIT["scale"]), axis=1)
    np.testing.assert_allclose(by.numpy(), weights.numpy() * per_point, rtol=1e-12)


def test_observed_sites_without_latents_are_counted_per_element():
    def model(y, x):
        loc = pyro.param("loc", torch.tensor(LOC, dtype=y.dtype))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(torch.tensor(W, dtype=y.dtype)))
            pyro.sample("y", dist.Normal(loc[z], 1.0), obs=y)
            pyro.sample("x", dist.Normal(torch.zeros((), dtype=x.dtype), 2.0), obs=x)

    y = torch.tensor([-1.0, 0.5, 3.0], dtype=torch.float64)
    x = torch.tensor([0.2, -1.0, 1.5], dtype=torch.float64)
    by = pyroem.EM(model).e_step(y, x).log_likelihood_by("data")
    ref = hand_per_fit(y[:, None]) + norm.logpdf(x.numpy(), 0.0, 2.0)
    np.testing.assert_allclose(by.numpy(), ref, rtol=1e-12)


def test_shared_latent_and_unknown_plate_are_refused():
    def model(y):
        loc = pyro.param("loc", torch.tensor(LOC, dtype=y.dtype))
        z = pyro.sample("z", dist.Categorical(torch.tensor(W, dtype=y.dtype)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(loc[z], 1.0), obs=y)

    expect = pyroem.EM(model).e_step(torch.tensor([0.1, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="does not factor over the plate"):
        expect.log_likelihood_by("data")
    with pytest.raises(ValueError, match="no vectorized plate 'fits'"):
        expect.log_likelihood_by("fits")
