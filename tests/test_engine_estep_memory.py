"""The E-step's memory-saving paths against scipy: the logsumexp in cache-sized pieces, the prior
added inside it rather than summed into a table, and the posterior written into a donated table."""
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from scipy.special import logsumexp, softmax
from scipy.stats import norm

import pyroem
from pyroem import thresholds


class DonatingNormal(dist.Normal):
    """A Normal whose log_prob is fresh memory, marked with ``pyroem.donate``; records the tensor."""

    returned = []

    def log_prob(self, value):
        out = pyroem.donate(super().log_prob(value).clone())
        DonatingNormal.returned.append(out)
        return out


def _mixture(normal=dist.Normal):
    def model(y):
        w = pyro.param("w", torch.tensor([0.2, 0.3, 0.5], dtype=y.dtype), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor([-2.0, 0.5, 3.0], dtype=y.dtype))
        scale = pyro.param("scale", torch.tensor([1.0, 0.7, 1.5], dtype=y.dtype), constraint=constraints.positive)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("y", normal(loc[z], scale[z]), obs=y)
    return model


def _reference(y):
    joint = np.log([0.2, 0.3, 0.5]) + norm.logpdf(y[:, None], [-2.0, 0.5, 3.0], [1.0, 0.7, 1.5])
    return logsumexp(joint, axis=1).sum(), softmax(joint, axis=1)


def _data(n, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    y = torch.cat([torch.randn(n // 2, generator=g) * 2 - 1, torch.randn(n - n // 2, generator=g) + 3])
    return y.to(dtype)


@pytest.mark.parametrize("piece", [7, 64, 1 << 18])  # many ragged pieces, some, one
@pytest.mark.parametrize("normal", [dist.Normal, DonatingNormal])
def test_pieces_prior_and_donation_give_bayes_rule(monkeypatch, piece, normal):
    pyro.clear_param_store()
    monkeypatch.setattr(thresholds, "LSE_PIECE", piece)
    y = _data(1001)
    expect = pyroem.EM(_mixture(normal)).e_step(y)
    ll, resp = _reference(y.numpy())
    assert float(expect.log_likelihood) == pytest.approx(ll, rel=1e-12)
    np.testing.assert_allclose(expect.marginal("z").numpy(), resp, rtol=1e-10, atol=1e-14)


def test_donated_table_takes_the_posterior_and_nothing_else_is_written():
    pyro.clear_param_store()
    DonatingNormal.returned.clear()
    y = _data(500)
    model = _mixture(DonatingNormal)
    em = pyroem.EM(model)
    em.e_step(y)  # probe + parameters in the store
    w_before = pyro.param("w").detach().clone()
    DonatingNormal.returned.clear()
    expect = em.e_step(y)
    post = expect.marginal("z")
    table = DonatingNormal.returned[-1]
    # the posterior lives in the donated table's memory, the parameters are untouched
    assert post.untyped_storage().data_ptr() == table.untyped_storage().data_ptr()
    assert torch.equal(pyro.param("w").detach(), w_before)
    np.testing.assert_allclose(post.numpy(), _reference(y.numpy())[1], rtol=1e-10, atol=1e-14)


def test_undonated_views_of_parameters_are_never_written():
    """Pyro's enumerated Categorical log_prob is a view of its logits: it must stay intact."""
    pyro.clear_param_store()

    def model(y):
        logits = pyro.param("logits", torch.tensor([[0.1, -0.3, 0.2]], dtype=y.dtype))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(logits=logits.expand(len(y), 3)))
            pyro.sample("y", dist.Normal(torch.tensor([-1.0, 0.0, 2.0], dtype=y.dtype)[z], 1.0), obs=y)

    y = _data(300)
    em = pyroem.EM(model)
    before = None
    for _ in range(2):
        expect = em.e_step(y)
        now = pyro.param("logits").detach().clone()
        assert before is None or torch.equal(now, before)
        before = now
    lw = torch.log_softmax(before[0], 0).numpy()
    joint = lw + norm.logpdf(y.numpy()[:, None], [-1.0, 0.0, 2.0], 1.0)
    np.testing.assert_allclose(expect.marginal("z").numpy(), softmax(joint, axis=1), rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pieces_with_impossible_components_give_exact_zeros(monkeypatch, dtype):
    """A component of weight 0 (log 0 = -inf) in every piece: responsibility exactly 0, no NaN."""
    pyro.clear_param_store()
    monkeypatch.setattr(thresholds, "LSE_PIECE", 50)

    def model(y):
        logits = torch.tensor([0.4, 0.0, 0.6], dtype=dtype).log()  # log 0 = -inf, kept as is
        loc = pyro.param("loc", torch.tensor([-1.0, 0.0, 2.0], dtype=dtype))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(logits=logits))
            pyro.sample("y", dist.Normal(loc[z], 1.0), obs=y)

    y = _data(200, dtype)
    expect = pyroem.EM(model).e_step(y)
    r = expect.marginal("z")
    assert torch.isfinite(r).all() and bool((r[:, 1] == 0).all())
    joint = np.log([0.4, 0.6]) + norm.logpdf(y.double().numpy()[:, None], [-1.0, 2.0], 1.0)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(r[:, [0, 2]].double().numpy(), softmax(joint, axis=1), rtol=tol, atol=tol)
    assert float(expect.log_likelihood) == pytest.approx(logsumexp(joint, axis=1).sum(), rel=tol)


def test_donate_refuses_a_non_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        pyroem.donate([1.0, 2.0])


@pytest.mark.parametrize("piece", [64, 1 << 18])
def test_mixed_precision_prior_and_likelihood_promote_as_torch_does(monkeypatch, piece):
    """float64 weights with a float32 likelihood: the posterior comes out in float64 (torch's
    promotion), equal to Bayes' rule on the float32 densities."""
    pyro.clear_param_store()
    monkeypatch.setattr(thresholds, "LSE_PIECE", piece)

    def model(y):
        w = pyro.param("w", torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor([-2.0, 0.5, 3.0]))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("y", dist.Normal(loc[z], 1.0), obs=y)

    y = _data(400, torch.float32)
    r = pyroem.EM(model).e_step(y).marginal("z")
    assert r.dtype == torch.float64
    lik = dist.Normal(torch.tensor([-2.0, 0.5, 3.0]), 1.0).log_prob(y[:, None]).double().numpy()
    np.testing.assert_allclose(r.numpy(), softmax(np.log([0.2, 0.3, 0.5]) + lik, axis=1), rtol=1e-10, atol=1e-14)
