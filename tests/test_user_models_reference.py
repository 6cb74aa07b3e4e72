"""The user-style models of ``user_models.py`` against their independent numpy/scipy references.

Checks that the references themselves are right (so they can serve as ground truth for the
engine's default M-step): log p(y|θ) at the shared start against numpy, and against Pyro's own
``TraceEnum_ELBO`` with an empty guide; the hand-derived closed-form updates against one EM step
done in numpy; closed-form EM fits rising monotonically; the scipy optimum of the zero-inflated
Poisson regression being a local maximum.
"""
import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

import pyroem
from user_models import (
    CONSTRAINTS,
    USER_MODELS,
    np_,
    set_params,
    zip_reference_optimum,
    zip_regression,
    zip_regression_grad_np,
    zip_regression_init,
    zip_regression_loglik_np,
    make_zip_regression_data,
)

ALL = list(USER_MODELS)
CLOSED_FORM = [name for name, m in USER_MODELS.items() if m.updates is not None]
PLAIN_PARAMS = [name for name in ALL if name != "gmm_tutorial"]  # no MAP sites: an empty guide will do


def _setup(name, dtype=torch.float64):
    m = USER_MODELS[name]
    args = m.make_data(dtype=dtype)
    init = m.init(args)
    set_params(init)
    return m, args, init


def test_the_registry_is_complete():
    assert set(ALL) == {"dawid_skene", "latent_class", "hmm_model_1", "gmm_tutorial", "zip_regression", "change_point"}
    assert set(CLOSED_FORM) == {"dawid_skene", "latent_class", "hmm_model_1", "change_point"}


@pytest.mark.parametrize("name", ALL)
def test_data_are_deterministic_and_init_is_feasible(name):
    m = USER_MODELS[name]
    a, b = m.make_data(), m.make_data()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    init = m.init(a)
    assert set(init) == set(CONSTRAINTS[name])
    for k, v in init.items():
        assert v.dtype == torch.float64, k
        assert bool(CONSTRAINTS[name][k].check(v).all()), k
    set_params(init)
    store = pyro.get_param_store()
    for k, v in init.items():
        torch.testing.assert_close(store.get_param(k).detach(), v, rtol=1e-12, atol=1e-14)
        assert store.get_state()["constraints"][k] is CONSTRAINTS[name][k]


@pytest.mark.parametrize("name", ALL)
def test_log_likelihood_at_init_matches_numpy(name):
    m, args, init = _setup(name)
    ll = pyroem.log_likelihood(m.model, *args)
    assert ll.shape == ()
    assert float(ll.detach()) == pytest.approx(m.loglik_np(init, *args), rel=0, abs=1e-9)


@pytest.mark.parametrize("name", PLAIN_PARAMS)
def test_traceenum_elbo_with_an_empty_guide_gives_the_same_log_likelihood(name):
    """Pyro itself, latents enumerated and nothing in the guide: -loss = log p(y|θ) exactly.
    This is what checks that the models' indexing broadcasts correctly under enumeration."""
    m, args, init = _setup(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "found vars in model but not guide": they are enumerated
        loss = TraceEnum_ELBO(max_plate_nesting=2).loss(config_enumerate(m.model), lambda *a, **k: None, *args)
    assert -loss == pytest.approx(m.loglik_np(init, *args), rel=0, abs=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_float32_log_likelihood_is_close(name):
    m, args, init = _setup(name, dtype=torch.float32)
    ll = pyroem.log_likelihood(m.model, *args)
    assert ll.dtype == torch.float32
    assert float(ll.detach()) == pytest.approx(m.loglik_np(init, *args), rel=1e-5)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_closed_form_updates_match_one_numpy_em_step(name):
    m, args, init = _setup(name)
    expect = pyroem.EM(m.model).e_step(*args)
    new = m.updates(expect, *args)
    ref = m.em_step_np(init, *args)
    assert set(new) == set(ref) == set(init)
    for k in ref:
        assert new[k].shape == init[k].shape, k
        np.testing.assert_allclose(np_(new[k]), ref[k], rtol=1e-9, atol=1e-12, err_msg=k)
    # the same step through EM.fit
    set_params(init)
    result = pyroem.EM(m.model, m.updates).fit(*args, max_iter=1, tol=0.0)
    assert result.n_iter == 1
    for k in ref:
        np.testing.assert_allclose(np_(result.params[k]), ref[k], rtol=1e-9, atol=1e-12, err_msg=k)
    assert result.history[0] == pytest.approx(m.loglik_np(init, *args), rel=0, abs=1e-9)
    assert result.history[1] == pytest.approx(m.loglik_np(ref, *args), rel=0, abs=1e-9)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_closed_form_em_is_monotone_and_converges(name):
    m, args, init = _setup(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        result = pyroem.EM(m.model, m.updates).fit(*args, max_iter=500, tol=1e-8)
    h = np.asarray(result.history)
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:])), np.diff(h).min()
    assert result.converged and result.n_iter < 500
    assert h[-1] > h[0]
    assert result.log_likelihood == pytest.approx(m.loglik_np(result.params, *args), rel=0, abs=1e-9)
    # the default seed's optimum is interior (a fair target for an unconstrained optimizer)
    for k, v in result.params.items():
        assert float(v.min()) > 1e-3, k
        if CONSTRAINTS[name][k] is not pyro.distributions.constraints.positive:
            assert float(v.max()) < 1 - 1e-3, k


def test_change_point_update_weights_steps_by_the_posterior_of_the_switch():
    """E[rate assignment] by hand: with all posterior mass on s = 10, the early rate is the mean
    of y[:10] and the late rate the mean of y[10:]."""
    m = USER_MODELS["change_point"]
    (y,) = m.make_data()

    class PointMass:
        def marginal(self, site):
            assert site == "s"
            r = torch.zeros(len(y), dtype=y.dtype)
            r[10] = 1.0
            return r

    new = m.updates(PointMass(), y)
    assert float(new["early_rate"]) == pytest.approx(float(y[:10].mean()), rel=1e-14)
    assert float(new["late_rate"]) == pytest.approx(float(y[10:].mean()), rel=1e-14)


def test_hmm_mask_matters():
    """Padded steps are excluded: the likelihood differs from the one with every length at 20."""
    m, (seq, lengths), init = _setup("hmm_model_1")
    assert int(lengths.min()) < seq.shape[1] == int(lengths.max())
    full = torch.full_like(lengths, seq.shape[1])
    a = float(pyroem.log_likelihood(m.model, seq, lengths).detach())
    b = float(pyroem.log_likelihood(m.model, seq, full).detach())
    assert a > b + 1.0
    assert b == pytest.approx(m.loglik_np(init, seq, full), rel=0, abs=1e-9)


def test_zip_reference_optimum_is_a_local_maximum():
    args = make_zip_regression_data()
    params, ll = zip_reference_optimum(args)
    init = zip_regression_init(args)
    assert ll > zip_regression_loglik_np(init, *args) + 1.0
    assert ll == pytest.approx(zip_regression_loglik_np(params, *args), rel=0, abs=1e-9)
    # numpy gradient in (logit gate, beta)
    g = zip_regression_grad_np(params, *args)
    assert np.abs(g).max() < 1e-5, g
    # pyroem's exact log-likelihood agrees, and so does its autograd gradient in the param store's
    # unconstrained coordinates (logit for unit_interval: the same coordinates as scipy's)
    set_params(params)
    ll_t = pyroem.log_likelihood(zip_regression, *args)
    assert float(ll_t.detach()) == pytest.approx(ll, rel=0, abs=1e-9)
    store = pyro.get_param_store()
    raw = [store.get_param(k).unconstrained() for k in ("gate", "beta")]
    grads = torch.autograd.grad(ll_t, raw)
    assert max(float(gr.abs().max()) for gr in grads) < 1e-5
    # negative definite curvature: every small move in any coordinate lowers the likelihood
    x = np.concatenate([[np.log(float(params["gate"]) / (1 - float(params["gate"])))], np_(params["beta"])])
    for i in range(len(x)):
        for step in (-1e-3, 1e-3):
            v = x.copy()
            v[i] += step
            moved = {"gate": torch.tensor(1 / (1 + np.exp(-v[0])), dtype=torch.float64),
                     "beta": torch.tensor(v[1:], dtype=torch.float64)}
            assert zip_regression_loglik_np(moved, *args) < ll
    # close to the parameters the data were drawn from
    assert float(params["gate"]) == pytest.approx(0.3, abs=0.1)
    np.testing.assert_allclose(np_(params["beta"]), [0.5, 0.8, -0.6], atol=0.15)
