"""Fisher's identity: ∇θ Q(θ|θn) at θ = θn equals ∇θ log p(y|θ) at θn.

The reference log p(y|θ) is (except for a hand-written weighted case) Pyro's own enumeration, ``TraceEnum_ELBO.differentiable_loss`` with
an empty guide (negated); MAP sites enter it as observed sites conditioned on their current value.
"""
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import pyroem
import torch
from pyro.distributions import constraints
from pyro.infer import TraceEnum_ELBO, config_enumerate

from engine_models import (
    make_hmm,
    make_map_mixture,
    make_mixture,
    make_nested,
    hmm_data,
    map_data,
    mixture_data,
    nested_data,
)


def empty_guide(*args, **kwargs):
    pass


def make_weighted_mixture():
    """The mixture with a per-datum poutine.scale and some observations masked out."""

    def model(y, weights, keep):
        w = pyro.param("w", torch.tensor([0.2, 0.3, 0.5], dtype=y.dtype), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor([-1.5, 0.5, 1.0], dtype=y.dtype))
        scale = pyro.param("scale", torch.tensor([1.2, 0.8, 1.5], dtype=y.dtype), constraint=constraints.positive)
        with pyro.plate("data", len(y)), poutine.scale(scale=weights):
            z = pyro.sample("z", dist.Categorical(w))
            with poutine.mask(mask=keep):
                pyro.sample("obs", dist.Normal(loc[z], scale[z]), obs=y)

    return model


def weighted_args():
    y = mixture_data()
    weights = torch.linspace(0.5, 2.0, len(y), dtype=y.dtype)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[[1, 5, 8]] = False
    return (y, weights, keep)


CASES = {
    "mixture": (make_mixture, lambda: (mixture_data(),), 1, ()),
    "hmm": (make_hmm, lambda: (hmm_data(),), 0, ()),
    "nested": (make_nested, nested_data, 2, ()),
    "map": (make_map_mixture, lambda: (map_data(),), 1, ("w", "loc")),
    "weighted_masked": (make_weighted_mixture, weighted_args, None, ()),
}


def weighted_reference(y, weights, keep):
    """Σ_n weight_n · keep_n · log Σ_k w_k N(y_n | loc_k, scale_k), by hand (TraceEnum_ELBO refuses
    tensor scales)."""
    w, loc, scale = (pyro.param(n) for n in ("w", "loc", "scale"))
    per_point = (torch.log(w) + dist.Normal(loc, scale).log_prob(y[:, None])).logsumexp(-1)
    return (weights * keep * per_point).sum()


def reference_log_likelihood(model, args, max_plate_nesting, map_sites):
    if max_plate_nesting is None:
        return weighted_reference(*args)
    if map_sites:
        model = poutine.condition(model, data={name: pyro.param(name) for name in map_sites})
    elbo = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting)
    return -elbo.differentiable_loss(config_enumerate(model), empty_guide, *args)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_of_q_equals_gradient_of_log_likelihood(case):
    make, data, nesting, map_sites = CASES[case]
    model, args = make(), data()
    em = pyroem.EM(model)
    expect = em.e_step(*args)
    names = sorted(em.params)
    assert set(map_sites) <= set(names)
    store = pyro.get_param_store()
    leaves = [store.get_param(n).unconstrained() for n in names]

    q = em.q(expect, *args)
    grad_q = torch.autograd.grad(q, leaves)
    ref = reference_log_likelihood(model, args, nesting, map_sites)
    assert float(expect.log_likelihood) == pytest.approx(float(ref.detach()), rel=1e-12)
    grad_ref = torch.autograd.grad(ref, leaves)
    for name, gq, gr in zip(names, grad_q, grad_ref):
        assert gq.shape == gr.shape
        assert float(gr.abs().max()) > 1e-6, f"{name}: the reference gradient vanishes, the check is empty"
        torch.testing.assert_close(gq, gr, rtol=1e-9, atol=1e-10, msg=f"d/d{name}")


def test_fisher_identity_holds_in_float32():
    y = mixture_data(torch.float32)
    model = make_mixture()
    em = pyroem.EM(model)
    expect = em.e_step(y)
    store = pyro.get_param_store()
    names = sorted(em.params)
    leaves = [store.get_param(n).unconstrained() for n in names]
    grad_q = torch.autograd.grad(em.q(expect, y), leaves)
    grad_ref = torch.autograd.grad(reference_log_likelihood(model, (y,), 1, ()), leaves)
    for gq, gr in zip(grad_q, grad_ref):
        assert gq.dtype == torch.float32
        torch.testing.assert_close(gq, gr, rtol=1e-4, atol=1e-4)


def test_q_differs_from_log_likelihood_by_posterior_entropy():
    """Q(θn|θn) = log p(y|θn) − H[p(z|y,θn)], with the entropy from Bayes rule by hand."""
    y = mixture_data()
    model = make_mixture()
    em = pyroem.EM(model)
    expect = em.e_step(y)
    w, loc, scale = (pyro.param(n).detach() for n in ("w", "loc", "scale"))
    log_joint = torch.log(w) + dist.Normal(loc, scale).log_prob(y[:, None])
    log_post = log_joint - log_joint.logsumexp(-1, keepdim=True)
    entropy = -(log_post.exp() * log_post).sum()
    q = em.q(expect, y)
    assert float(q.detach()) == pytest.approx(float(expect.log_likelihood - entropy), rel=1e-12)
