"""Interrupted and failing fits, non-finite log-likelihoods, argument checks and seeded determinism."""
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import pyroem
import torch
from pyro.distributions import constraints
from pyroem.checkpoint import load_checkpoint
from scipy.stats import norm

from engine_models import (
    MIX_INIT,
    make_map_mixture,
    make_mixture,
    map_data,
    mixture_data,
    mixture_loglik,
    mixture_updates,
    np_,
)


def store_params(names):
    return {n: pyro.param(n).detach().clone() for n in names}


def assert_params_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np_(a[k]), np_(b[k]), err_msg=k)


def reference_fit(n_steps):
    """The closed-form mixture fit stopped after n_steps, from a fresh store."""
    pyro.clear_param_store()
    res = pyroem.EM(make_mixture(), updates=mixture_updates).fit(mixture_data(), max_iter=n_steps, tol=0.0)
    pyro.clear_param_store()
    return res


# --- interruptions -----------------------------------------------------------------------------
def test_keyboard_interrupt_in_callback_checkpoints_the_returned_state(tmp_path):
    y = mixture_data()
    path = tmp_path / "ck.pt"

    def callback(n_iter, ll, params):
        if n_iter == 3:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted after 3 steps"):
        res = pyroem.EM(make_mixture(), updates=mixture_updates).fit(
            y, max_iter=50, tol=0.0, callback=callback, checkpoint=path)
    assert res.stop_reason == "interrupted" and not res.converged and res.n_iter == 3
    assert res.log_likelihood == pytest.approx(mixture_loglik(y, **res.params), rel=1e-12)
    state = load_checkpoint(path)
    assert state.n_iter == 3 and state.history == res.history and state.stop_reason == "interrupted"
    assert_params_equal(state.params, res.params)
    assert_params_equal(res.params, reference_fit(3).params)


def test_runtime_error_in_callback_returns_the_evaluated_params_and_checkpoints(tmp_path):
    y = mixture_data()
    path = tmp_path / "ck.pt"

    def callback(n_iter, ll, params):
        if n_iter == 3:
            raise RuntimeError("plot window closed")

    with pytest.warns(RuntimeWarning, match="plot window closed"):
        res = pyroem.EM(make_mixture(), updates=mixture_updates).fit(
            y, max_iter=50, tol=0.0, callback=callback, checkpoint=path)
    assert res.stop_reason == "callback_error" and not res.converged and res.n_iter == 3
    assert all(bool(torch.isfinite(v).all()) for v in res.params.values())
    assert res.log_likelihood == pytest.approx(mixture_loglik(y, **res.params), rel=1e-12)
    assert load_checkpoint(path).history == res.history


def interrupting_model(after_calls):
    """The mixture model, raising KeyboardInterrupt on its ``after_calls``-th run."""
    inner, calls = make_mixture(), []

    def model(y):
        calls.append(1)
        if len(calls) == after_calls:
            raise KeyboardInterrupt
        return inner(y)

    return model


def test_interrupt_during_an_e_step_reports_the_step_it_returns():
    # runs: 1 probe, then one E-step per step (closed-form M-step): the 5th run evaluates θ_3
    y = mixture_data()
    with pytest.warns(RuntimeWarning, match="interrupted after 2 steps"):
        res = pyroem.EM(interrupting_model(5), updates=mixture_updates).fit(y, max_iter=50, tol=0.0)
    assert res.n_iter == 2 and len(res.history) == 3
    assert res.log_likelihood == res.history[-1]
    assert res.log_likelihood == pytest.approx(mixture_loglik(y, **res.params), rel=1e-12)
    assert_params_equal(res.params, reference_fit(2).params)


def test_interrupt_inside_updates_restores_the_params_of_that_step():
    y = mixture_data()
    calls = []

    def updates(expect, y):
        calls.append(1)
        new = mixture_updates(expect, y)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return new

    with pytest.warns(RuntimeWarning, match="interrupted after 2 steps"):
        res = pyroem.EM(make_mixture(), updates=updates).fit(y, max_iter=50, tol=0.0)
    assert res.n_iter == 2 and res.stop_reason == "interrupted"
    assert_params_equal(res.params, reference_fit(2).params)


def test_interrupt_in_the_first_e_step_propagates():
    with pytest.raises(KeyboardInterrupt):
        pyroem.EM(interrupting_model(2), updates=mixture_updates).fit(mixture_data())


# --- non-finite log-likelihood -----------------------------------------------------------------
def uniform_mixture(y):
    """Mixture of Uniform(0, width_k); an observation beyond every width has probability zero."""
    w = pyro.param("w", torch.tensor([0.5, 0.5], dtype=y.dtype), constraint=constraints.simplex)
    width = pyro.param("width", torch.tensor([2.0, 4.0], dtype=y.dtype), constraint=constraints.positive)
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Uniform(torch.zeros((), dtype=y.dtype), width[z], validate_args=False), obs=y)


UNIFORM_Y = [0.5, 1.0, 1.5, 3.0, 3.5]


def test_log_likelihood_becoming_minus_inf_after_a_step_names_it_and_restores_params(tmp_path):
    y = torch.tensor(UNIFORM_Y, dtype=torch.float64)
    step1 = {"w": torch.tensor([0.6, 0.4], dtype=torch.float64), "width": torch.tensor([1.6, 3.6], dtype=torch.float64)}
    step2 = {"w": torch.tensor([0.6, 0.4], dtype=torch.float64), "width": torch.tensor([1.6, 3.2], dtype=torch.float64)}
    calls = []

    def updates(expect, y):
        calls.append(1)
        return step1 if len(calls) == 1 else step2  # step 2 leaves y = 3.5 outside both supports

    path = tmp_path / "ck.pt"
    with pytest.raises(ValueError, match=r"-inf after step 2: the data are impossible.*'obs'.*restored to those "
                                         r"after step 1") as err:
        pyroem.EM(uniform_mixture, updates=updates).fit(y, max_iter=10, tol=0.0, checkpoint=path)
    # log p(y | θ_1) by hand: each point's density 0.6·1[y<1.6]/1.6 + 0.4·1[y<3.6]/3.6
    yy = np.array(UNIFORM_Y)
    hand = np.log(0.6 * (yy < 1.6) / 1.6 + 0.4 * (yy < 3.6) / 3.6).sum()
    assert f"{hand:.10g}" in str(err.value)
    for name, value in store_params(["w", "width"]).items():  # step 1's values, up to the constraint round trip
        np.testing.assert_allclose(np_(value), np_(step1[name]), rtol=1e-14)
    state = load_checkpoint(path)
    assert state.n_iter == 1 and state.history[-1] == pytest.approx(hand, rel=1e-12)


@pytest.mark.parametrize("validation", [False, True])
def test_nan_data_is_named_with_the_option_that_integrates_it_out(validation):
    y = mixture_data()
    y[4] = float("nan")
    with pyro.validation_enabled(validation):
        with pytest.raises(ValueError, match=r"site 'obs' observes NaN values \(1 of \d+ entries\).*"
                                             r"missing='marginalize'"):
            pyroem.EM(make_mixture()).fit(y)
        with pytest.raises(ValueError, match=r"site 'obs' observes NaN values"):
            pyroem.EM(make_mixture()).step(y)


def test_infinite_data_is_named():
    y = mixture_data()
    y[0], y[1] = float("inf"), -float("inf")
    with pytest.raises(ValueError, match=r"at the starting parameters.*'obs' \(2 values\)"):
        pyroem.EM(make_mixture()).fit(y)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_infinite_density_is_named():
    def model(y):
        p = pyro.param("p", torch.tensor(0.5, dtype=y.dtype), constraint=constraints.unit_interval)
        a = pyro.param("a", torch.tensor([0.5, 2.0], dtype=y.dtype), constraint=constraints.positive)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Bernoulli(p))
            pyro.sample("obs", dist.Beta(a[z.long()], torch.ones((), dtype=y.dtype)), obs=y)

    y = torch.tensor([0.0, 0.3, 0.8], dtype=torch.float64)  # Beta(0.5, 1) has density +inf at 0
    with pytest.raises(ValueError, match=r"log p\(y\|θ\) is inf at the starting parameters: a density is "
                                         r"infinite at site\(s\) 'obs'"):
        pyroem.EM(model).fit(y)


def test_non_finite_initial_param_is_named():
    def model(y):
        loc = pyro.param("loc", torch.tensor([float("nan"), 1.0], dtype=y.dtype))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("obs", dist.Normal(loc[z.long()], 1.0), obs=y)

    with pyro.validation_enabled(False):
        with pytest.raises(ValueError, match="parameter\\(s\\) 'loc' are not finite"):
            pyroem.EM(model).fit(mixture_data())


# --- what a model must have --------------------------------------------------------------------
def test_model_that_observes_nothing_is_refused():
    def model(n):
        w = pyro.param("w", torch.tensor([0.3, 0.7]), constraint=constraints.simplex)
        with pyro.plate("data", n):
            pyro.sample("z", dist.Categorical(w))

    for run in (lambda em: em.fit(5), lambda em: em.step(5), lambda em: em.e_step(5)):
        with pytest.raises(ValueError, match="observes nothing"):
            run(pyroem.EM(model))


def test_a_factor_counts_as_an_observation():
    def model(y):
        p = pyro.param("p", torch.tensor(0.3, dtype=y.dtype), constraint=constraints.unit_interval)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Bernoulli(p))
            pyro.factor("lik", dist.Normal(2.0 * z, 1.0).log_prob(y))

    y = torch.tensor([0.1, 2.2, 1.9, -0.4], dtype=torch.float64)
    ll = pyroem.EM(model).step(y)
    # p(y_n) = 0.7·N(y_n; 0, 1) + 0.3·N(y_n; 2, 1)
    yy = np_(y)
    assert ll == pytest.approx(np.log(0.7 * norm.pdf(yy) + 0.3 * norm.pdf(yy, 2.0)).sum(), rel=1e-12)


def test_model_with_nothing_to_fit_is_refused_by_step_too():
    def model(y):
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("obs", dist.Normal(2.0 * z, 1.0), obs=y)

    with pytest.raises(ValueError, match="nothing to fit"):
        pyroem.EM(model).step(mixture_data())


# --- argument checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_bad_max_plate_nesting(value):
    with pytest.raises(ValueError, match="max_plate_nesting"):
        pyroem.EM(make_mixture(), max_plate_nesting=value)


def test_numpy_int_max_plate_nesting_is_accepted():
    ll = pyroem.EM(make_mixture(), max_plate_nesting=np.int64(1)).step(mixture_data())
    assert ll == pytest.approx(mixture_loglik(mixture_data(), **MIX_INIT), rel=1e-12)


@pytest.mark.parametrize("updates", [{"w": 1}, 3, "mixture_updates"])
def test_non_callable_updates(updates):
    with pytest.raises(TypeError, match="updates"):
        pyroem.EM(make_mixture(), updates=updates)


@pytest.mark.parametrize("kwargs, error, name", [
    ({"max_iter": -1}, ValueError, "max_iter"),
    ({"max_iter": 3.0}, ValueError, "max_iter"),
    ({"max_iter": None}, ValueError, "max_iter"),
    ({"tol": float("inf")}, ValueError, "tol"),
    ({"tol": "1e-6"}, ValueError, "tol"),
    ({"callback": 1}, TypeError, "callback"),
])
def test_bad_fit_arguments_name_the_argument(kwargs, error, name):
    with pytest.raises(error, match=name):
        pyroem.EM(make_mixture()).fit(mixture_data(), **kwargs)


def test_max_iter_zero_only_evaluates_the_start():
    y = mixture_data()
    res = pyroem.EM(make_mixture()).fit(y, max_iter=0)
    assert res.n_iter == 0 and res.stop_reason == "max_iter" and len(res.history) == 1
    assert res.log_likelihood == pytest.approx(mixture_loglik(y, **MIX_INIT), rel=1e-12)


@pytest.mark.parametrize("bad, message", [
    ({"w": torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)}, "'w' on the boundary"),
    ({"scale": torch.tensor([1.0, float("inf"), 1.0], dtype=torch.float64)}, "non-finite.*'scale'"),
    ({"loc": torch.zeros(2, 3, dtype=torch.float64)}, "shape \\(2, 3\\) for 'loc'"),
], ids=["simplex_boundary", "inf", "wrong_shape"])
def test_bad_update_mid_fit_is_named_and_undone(bad, message):
    y = mixture_data()
    calls = []

    def updates(expect, y):
        calls.append(1)
        new = mixture_updates(expect, y)
        if len(calls) == 3:
            new = {**{k: v for k, v in new.items() if k not in bad}, **bad}  # others written first
        return new

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=message):
            pyroem.EM(make_mixture(), updates=updates).fit(y, max_iter=10, tol=0.0)
    assert_params_equal(store_params(["w", "loc", "scale"]), reference_fit(2).params)


def test_failed_step_leaves_the_params_as_they_were():
    y = mixture_data()
    em = pyroem.EM(make_mixture(), updates=lambda e, y: {**mixture_updates(e, y), "scale": -torch.ones(3)})
    with pytest.raises(ValueError, match="'scale' outside its constraint"):
        em.step(y)
    for name, value in MIX_INIT.items():
        np.testing.assert_allclose(np_(pyro.param(name)), np.asarray(value, dtype=np.float64), rtol=1e-14)


# --- how a fit ends, and determinism -----------------------------------------------------------
def test_stop_reasons():
    y = mixture_data()
    assert pyroem.EM(make_mixture(), updates=mixture_updates).fit(y, max_iter=2, tol=0.0).stop_reason == "max_iter"
    pyro.clear_param_store()
    res = pyroem.EM(make_mixture(), updates=mixture_updates).fit(y, max_iter=500, tol=1e-6)
    assert res.converged and res.stop_reason == "converged"
    pyro.clear_param_store()
    res = pyroem.EM(make_mixture(), updates=mixture_updates).fit(y, callback=lambda n, ll, p: n == 1)
    assert res.stop_reason == "callback" and res.n_iter == 1 and "stop_reason='callback'" in repr(res)


def seeded_map_fit(seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    return pyroem.EM(make_map_mixture()).fit(map_data(), max_iter=5, tol=0.0)


def test_same_seed_same_map_fit():
    a, b = seeded_map_fit(7), seeded_map_fit(7)
    assert a.history == b.history
    assert_params_equal(a.params, b.params)
    # the seed matters: the MAP sites start from prior draws
    assert seeded_map_fit(8).history[0] != a.history[0]
