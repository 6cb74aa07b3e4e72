"""Refused models and bad inputs, and fits stopped from a callback."""
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import pyroem
import torch
from pyro.distributions import constraints

from engine_models import make_mixture, mixture_data, mixture_loglik, np_


def test_infinite_support_latent_is_refused_by_name():
    def model(y):
        rate = pyro.param("rate", torch.tensor(2.0), constraint=constraints.positive)
        with pyro.plate("data", len(y)):
            count = pyro.sample("count", dist.Poisson(rate))
            pyro.sample("obs", dist.Normal(count, 1.0), obs=y)

    y = torch.tensor([0.5, 1.7, 3.2])
    with pytest.raises(ValueError, match="'count'.*infinite support"):
        pyroem.EM(model).fit(y, max_iter=2)
    with pytest.raises(ValueError, match="'count'"):
        pyroem.log_likelihood(model, y)


def test_continuous_latent_in_data_plate_is_refused_by_name():
    def model(y):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", len(y)):
            effect = pyro.sample("effect", dist.Normal(loc, 1.0))
            pyro.sample("obs", dist.Normal(effect, 1.0), obs=y)

    with pytest.raises(ValueError, match="'effect'.*plate 'data'"):
        pyroem.EM(model).step(torch.tensor([0.5, 1.7, 3.2]))


def test_sequential_enumeration_is_refused():
    def model(y):
        w = pyro.param("w", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "sequential"})
            pyro.sample("obs", dist.Normal(z.float(), 1.0), obs=y)

    with pytest.raises(ValueError, match="'z'.*sequential"):
        pyroem.EM(model).fit(torch.tensor([0.1, 0.9]), max_iter=2)


@pytest.mark.parametrize("model", [42, "model", None])
def test_non_callable_model_is_a_type_error(model):
    with pytest.raises(TypeError, match="model"):
        pyroem.EM(model)


def test_non_callable_updates_is_a_type_error():
    with pytest.raises(TypeError, match="updates"):
        pyroem.EM(make_mixture(), updates={"w": torch.ones(3) / 3})


def test_model_without_params_is_refused():
    def model(y):
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("obs", dist.Normal(2.0 * z, 1.0), obs=y)

    with pytest.raises(ValueError, match="no pyro.param"):
        pyroem.EM(model).fit(torch.tensor([0.1, 2.2]), max_iter=2)


def fixed_updates(values):
    return lambda expect, y: values


@pytest.mark.parametrize(
    "values, message",
    [
        ({"weights": torch.ones(3) / 3}, "'weights'.*not a parameter"),
        ({"loc": torch.zeros(4, dtype=torch.float64)}, "shape .*'loc'"),
        ({"scale": torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)}, "'scale' outside its constraint"),
        ({"w": torch.tensor([0.5, 0.6, 0.2], dtype=torch.float64)}, "'w' outside its constraint"),
        ({"loc": torch.tensor([0.0, float("nan"), 1.0], dtype=torch.float64)}, "non-finite.*'loc'"),
    ],
    ids=["unknown_name", "wrong_shape", "negative_scale", "off_simplex", "nan"],
)
def test_bad_updates_are_refused(values, message):
    y = mixture_data()
    with pytest.raises(ValueError, match=message):
        pyroem.EM(make_mixture(), updates=fixed_updates(values)).step(y)


def test_updates_must_return_a_mapping():
    with pytest.raises(TypeError, match="updates must return a dict"):
        pyroem.EM(make_mixture(), updates=lambda expect, y: [1.0]).step(mixture_data())


@pytest.mark.parametrize("kwargs, message", [
    ({"max_iter": -1}, "max_iter"), ({"max_iter": 2.5}, "max_iter"),
    ({"tol": -1.0}, "tol"), ({"tol": float("nan")}, "tol"),
])
def test_bad_fit_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pyroem.EM(make_mixture()).fit(mixture_data(), **kwargs)


def test_unknown_latent_name_in_expectations():
    expect = pyroem.EM(make_mixture()).e_step(mixture_data())
    with pytest.raises(KeyError, match="'u'"):
        expect.marginal("u")


# --- stopping a fit from the callback --------------------------------------------------------
def test_keyboard_interrupt_in_callback_returns_the_last_evaluated_params():
    y = mixture_data()
    seen = []

    def callback(n_iter, ll, params):
        seen.append((n_iter, ll))
        if n_iter == 3:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted after 3 steps"):
        res = pyroem.EM(make_mixture()).fit(y, max_iter=50, callback=callback)
    assert res.converged is False
    assert res.n_iter == 3 and len(res.history) == 4
    assert [n for n, _ in seen] == [0, 1, 2, 3]
    assert [ll for _, ll in seen] == res.history
    for v in res.params.values():
        assert bool(torch.isfinite(v).all())
    # the returned params are those the last history entry was evaluated at
    assert res.log_likelihood == res.history[-1]
    assert res.log_likelihood == pytest.approx(mixture_loglik(y, **res.params), rel=1e-12)
    np.testing.assert_allclose(np_(pyro.param("loc")), np_(res.params["loc"]))


def test_exception_in_callback_returns_with_a_warning():
    y = mixture_data()

    def callback(n_iter, ll, params):
        if n_iter == 2:
            raise RuntimeError("plotting failed")

    with pytest.warns(RuntimeWarning, match="plotting failed"):
        res = pyroem.EM(make_mixture()).fit(y, max_iter=50, callback=callback)
    assert res.converged is False and res.n_iter == 2
    assert res.log_likelihood == pytest.approx(mixture_loglik(y, **res.params), rel=1e-12)


def test_callback_returning_true_stops_without_warning():
    y = mixture_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = pyroem.EM(make_mixture()).fit(y, max_iter=50, callback=lambda n, ll, p: n == 2)
    assert res.n_iter == 2 and res.converged is False and len(res.history) == 3


def test_non_finite_gradient_of_q_is_reported_with_the_param_name():
    x = torch.linspace(-1.0, 1.0, 50, dtype=torch.float64)
    y = torch.tensor([0.0, 3.0] * 25, dtype=torch.float64)

    def model(x, y):
        pi = pyro.param("pi", torch.tensor(0.5, dtype=torch.float64), constraint=constraints.unit_interval)
        coef = pyro.param("coef", torch.zeros(2, dtype=torch.float64))
        with pyro.plate("data", len(y)):
            s = pyro.sample("s", dist.Bernoulli(pi))
            # rate exactly 0 on the structural-zero branch: d/d rate of Poisson(0).log_prob(0) is 0/0
            pyro.sample("y", dist.Poisson(torch.exp(coef[0] + coef[1] * x) * (1 - s)), obs=y)

    with pytest.raises(ValueError, match="'coef'.*not finite"):
        pyroem.EM(model).step(x, y)


def test_new_data_is_validated_on_every_fit_while_repeated_steps_reuse_the_check():
    """Distributions validate the data on the first trace of each set of arguments: steps on the
    same tensor skip the check, a new tensor (even one step later) is checked again."""
    def model(y):
        p = pyro.param("p", torch.tensor([0.3, 0.7], dtype=torch.float64), constraint=constraints.unit_interval)
        w = pyro.param("w", torch.tensor([0.5, 0.5], dtype=torch.float64), constraint=constraints.simplex)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("y", dist.Bernoulli(p[z]), obs=y)

    pyro.clear_param_store()
    em = pyroem.EM(model)
    good = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    em.step(good)
    em.step(good)
    with pytest.raises(ValueError, match="(?s)site 'y'.*support"):
        em.step(torch.tensor([0.0, 2.0, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="(?s)site 'y'.*support"):
        pyroem.EM(model).fit(torch.tensor([0.0, 1.0, -1.0, 0.0], dtype=torch.float64), max_iter=3)
