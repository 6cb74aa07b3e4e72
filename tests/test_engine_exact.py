"""Exact E-step quantities (log p(y), posterior marginals and joints) against hand computations."""
import numpy as np
import pytest
import pyro
import pyro.distributions as dist
from pyro.distributions import constraints
import pyroem
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import norm

from engine_models import (
    HMM_INIT,
    MIX_INIT,
    NEST_INIT,
    hmm_data,
    hmm_forward_backward,
    make_hmm,
    make_mixture,
    make_nested,
    mixture_data,
    nested_brute_force,
    nested_data,
    np_,
)


def test_mixture_log_likelihood_matches_logsumexp():
    y = mixture_data()
    ll = pyroem.log_likelihood(make_mixture(), y)
    w, loc, scale = (np.array(MIX_INIT[k]) for k in ("w", "loc", "scale"))
    expected = logsumexp(np.log(w) + norm.logpdf(np_(y)[:, None], loc, scale), axis=1).sum()
    assert ll.shape == ()
    assert float(ll.detach()) == pytest.approx(expected, rel=1e-12)


def test_mixture_log_likelihood_of_em_e_step():
    y = mixture_data()
    expect = pyroem.EM(make_mixture()).e_step(y)
    w, loc, scale = (np.array(MIX_INIT[k]) for k in ("w", "loc", "scale"))
    expected = logsumexp(np.log(w) + norm.logpdf(np_(y)[:, None], loc, scale), axis=1).sum()
    assert float(expect.log_likelihood) == pytest.approx(expected, rel=1e-12)
    assert expect.latent_sites == ["z"]


def test_mixture_responsibilities_match_bayes_rule():
    y = mixture_data()
    w, loc, scale = (np.array(MIX_INIT[k]) for k in ("w", "loc", "scale"))
    # Bayes rule: p(z=k|y) ∝ w_k N(y | loc_k, scale_k)
    expected = softmax(np.log(w) + norm.logpdf(np_(y)[:, None], loc, scale), axis=1)
    expect = pyroem.EM(make_mixture()).e_step(y)
    r = expect.marginal("z")
    assert r.shape == (len(y), 3)
    np.testing.assert_allclose(np_(r), expected, rtol=1e-10, atol=1e-14)
    post = pyroem.posterior(make_mixture(), y)
    assert set(post) == {"z"}
    np.testing.assert_allclose(np_(post["z"]), expected, rtol=1e-10, atol=1e-14)


def test_hmm_log_likelihood_and_marginals_match_forward_backward():
    y = hmm_data()
    T = len(y)
    log_z, gamma, xi = hmm_forward_backward(y, **HMM_INIT)
    model = make_hmm()
    assert float(pyroem.log_likelihood(model, y).detach()) == pytest.approx(log_z, rel=1e-12)
    expect = pyroem.EM(model).e_step(y)
    assert float(expect.log_likelihood) == pytest.approx(log_z, rel=1e-12)
    marg = np.stack([np_(expect.marginal(f"x_{t}")) for t in range(T)])
    np.testing.assert_allclose(marg, gamma, rtol=1e-9, atol=1e-13)
    pair = np.stack([np_(expect.joint(f"x_{t}", f"x_{t + 1}")) for t in range(T - 1)])
    assert pair.shape == (T - 1, 3, 3)
    np.testing.assert_allclose(pair, xi, rtol=1e-9, atol=1e-13)
    # the transposed request gives the transposed joint
    np.testing.assert_allclose(np_(expect.joint("x_4", "x_3")), xi[3].T, rtol=1e-9, atol=1e-13)
    post = pyroem.posterior(model, y)
    np.testing.assert_allclose(np.stack([np_(post[f"x_{t}"]) for t in range(T)]), gamma, rtol=1e-9, atol=1e-13)


def test_nested_plates_match_brute_force_enumeration():
    y_out, y_in = nested_data()
    log_z, ma, mb, mc, jbc = nested_brute_force(y_out, y_in, **NEST_INIT)
    model = make_nested()
    assert float(pyroem.log_likelihood(model, y_out, y_in).detach()) == pytest.approx(log_z, rel=1e-12)
    expect = pyroem.EM(model).e_step(y_out, y_in)
    assert float(expect.log_likelihood) == pytest.approx(log_z, rel=1e-12)
    assert sorted(expect.latent_sites) == ["a", "b", "c"]
    # Pyro's dim layout: a lives only in the plate at dim -2
    assert expect.marginal("a").shape == (2, 1, 2)
    assert expect.marginal("b").shape == (2, 2, 2)
    assert expect.marginal("c").shape == (2, 2, 3)
    np.testing.assert_allclose(np_(expect.marginal("a"))[:, 0, :], ma, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(np_(expect.marginal("b")), mb, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(np_(expect.marginal("c")), mc, rtol=1e-9, atol=1e-13)
    assert expect.joint("b", "c").shape == (2, 2, 2, 3)
    np.testing.assert_allclose(np_(expect.joint("b", "c")), jbc, rtol=1e-9, atol=1e-13)
    post = pyroem.posterior(model, y_out, y_in)
    np.testing.assert_allclose(np_(post["c"]), mc, rtol=1e-9, atol=1e-13)


def test_nested_log_likelihood_is_differentiable_with_the_brute_force_gradient():
    """∂ log p(y)/∂ mu_a[1] by central differences of the brute-force sum."""
    y_out, y_in = nested_data()
    ll = pyroem.log_likelihood(make_nested(), y_out, y_in)
    mu_a = pyro.get_param_store().get_param("mu_a").unconstrained()  # unconstrained = constrained
    (g,) = torch.autograd.grad(ll, mu_a)
    h = 1e-5
    up = nested_brute_force(y_out, y_in, **{**NEST_INIT, "mu_a": [-1.0, 1.0 + h]})[0]
    down = nested_brute_force(y_out, y_in, **{**NEST_INIT, "mu_a": [-1.0, 1.0 - h]})[0]
    assert NEST_INIT["mu_a"] == [-1.0, 1.0]
    assert float(g[1]) == pytest.approx((up - down) / (2 * h), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_quantities_in_both_dtypes(dtype):
    y = mixture_data(dtype)
    expect = pyroem.EM(make_mixture()).e_step(y)
    assert expect.log_likelihood.dtype == dtype
    assert expect.marginal("z").dtype == dtype
    w, loc, scale = (np.array(MIX_INIT[k]) for k in ("w", "loc", "scale"))
    yy = np_(y)
    expected = logsumexp(np.log(w) + norm.logpdf(yy[:, None], loc, scale), axis=1).sum()
    rel = 1e-5 if dtype == torch.float32 else 1e-12
    assert float(expect.log_likelihood) == pytest.approx(expected, rel=rel)


def test_hmm_and_nested_in_float32():
    y = hmm_data(torch.float32)
    ll = pyroem.log_likelihood(make_hmm(), y)
    assert ll.dtype == torch.float32
    assert float(ll.detach()) == pytest.approx(hmm_forward_backward(y, **HMM_INIT)[0], rel=1e-5)
    pyro.clear_param_store()
    y_out, y_in = nested_data(torch.float32)
    expect = pyroem.EM(make_nested()).e_step(y_out, y_in)
    log_z, ma, mb, mc, jbc = nested_brute_force(y_out, y_in, **NEST_INIT)
    assert expect.log_likelihood.dtype == torch.float32
    assert float(expect.log_likelihood) == pytest.approx(log_z, rel=1e-5)
    np.testing.assert_allclose(np_(expect.joint("b", "c")), jbc, atol=1e-5)


def test_single_category_latent_has_marginal_one_and_exact_log_likelihood():
    x = torch.tensor([0.3, -1.2, 2.0, 0.5], dtype=torch.float64)

    def model(x):
        p = pyro.param("p", torch.ones(1, dtype=torch.float64), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor([0.5], dtype=torch.float64))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(p))
            pyro.sample("x", dist.Normal(loc[z], 1.0), obs=x)

    expect = pyroem.EM(model).e_step(x)
    assert expect.marginal("z").shape == (4, 1)
    assert torch.equal(expect.marginal("z"), torch.ones(4, 1, dtype=torch.float64))
    assert float(expect.log_likelihood) == pytest.approx(norm.logpdf(x.numpy(), 0.5, 1.0).sum(), abs=1e-12)


def test_joint_with_a_single_valued_latent_is_the_other_marginal():
    def model(y):
        p = pyro.param("p", torch.ones(1, dtype=y.dtype))
        trans = pyro.param("trans", torch.tensor([[0.3, 0.7]], dtype=y.dtype))
        x0 = pyro.sample("x_0", dist.Categorical(p))
        pyro.sample("y_0", dist.Normal(x0.to(y.dtype), 1.0), obs=y[0])
        x1 = pyro.sample("x_1", dist.Categorical(trans[x0]))
        pyro.sample("y_1", dist.Normal(x1.to(y.dtype), 1.0), obs=y[1])

    y = torch.tensor([0.1, 0.8], dtype=torch.float64)
    joint = pyroem.EM(model).e_step(y).joint("x_0", "x_1")
    post = np.array([0.3, 0.7]) * norm.pdf(0.8, [0.0, 1.0], 1.0)
    np.testing.assert_allclose(joint.numpy(), (post / post.sum())[None, :], rtol=1e-12)
