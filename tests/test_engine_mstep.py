"""M-steps and fits: closed-form vs autograd, hand-written EM, MAP vs scipy, monotonicity,
masks, poutine.scale and dtypes."""
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import pyroem
import torch
from pyro.distributions import constraints
from scipy.optimize import minimize
from scipy.special import expit, softmax

from engine_models import (
    HMM_INIT,
    MIX_INIT,
    NEST_INIT,
    hmm_data,
    hmm_forward_backward,
    make_hmm,
    make_map_mixture,
    make_mixture,
    make_nested,
    map_data,
    map_log_posterior,
    mixture_data,
    mixture_joint,
    mixture_loglik,
    mixture_updates,
    nested_brute_force,
    nested_data,
    np_,
)


def hand_weighted_em(y, weights, n_steps, w, loc, scale):
    """Textbook EM for a weighted 1-D Gaussian mixture in numpy; returns the log-likelihood history."""
    y, weights = np_(y), np_(weights)
    w, loc, scale = (np.array(v, dtype=float) for v in (w, loc, scale))
    history = []
    for _ in range(n_steps):
        history.append(mixture_loglik(y, w, loc, scale, weights))
        r = softmax(mixture_joint(y, w, loc, scale), axis=1) * weights[:, None]
        nk = r.sum(0)
        w = nk / nk.sum()
        loc = r.T @ y / nk
        scale = np.sqrt((r * (y[:, None] - loc) ** 2).sum(0) / nk)
    history.append(mixture_loglik(y, w, loc, scale, weights))
    return history, (w, loc, scale)


def hand_masked_em(y, keep, n_steps, w, loc, scale):
    """Textbook EM for the mixture whose observations y_n with keep_n = False are missing: z_n of a
    missing point stays a latent with posterior w (complete data = all z), its y_n drops out."""
    y, keep = np_(y), np_(keep)
    w, loc, scale = (np.array(v, dtype=float) for v in (w, loc, scale))
    history = []
    for _ in range(n_steps + 1):
        joint = np.log(w)[None, :] + keep[:, None] * (mixture_joint(y, w, loc, scale) - np.log(w)[None, :])
        history.append(float(np.logaddexp.reduce(joint, axis=1).sum()))
        r = softmax(joint, axis=1)
        w = r.mean(0)
        rk = r * keep[:, None]
        loc = rk.T @ y / rk.sum(0)
        scale = np.sqrt((rk * (y[:, None] - loc) ** 2).sum(0) / rk.sum(0))
    return history


def assert_monotone(history, dtype=torch.float64):
    slack = 1e3 * torch.finfo(dtype).eps
    for i in range(1, len(history)):
        assert history[i] >= history[i - 1] - slack * max(1.0, abs(history[i - 1])), (i, history)


# --- closed-form vs autograd M-steps ---------------------------------------------------------
def test_closed_form_and_autograd_m_steps_give_the_same_trajectory():
    y = mixture_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        closed = pyroem.EM(make_mixture(), updates=mixture_updates).fit(y, max_iter=8, tol=0.0)
        closed_params = {k: v.clone() for k, v in closed.params.items()}
        pyro.clear_param_store()
        auto = pyroem.EM(make_mixture()).fit(y, max_iter=8, tol=0.0)
    assert closed.n_iter == auto.n_iter == 8
    np.testing.assert_allclose(auto.history, closed.history, rtol=0, atol=1e-8)
    for name in ("w", "loc", "scale"):
        np.testing.assert_allclose(np_(auto.params[name]), np_(closed_params[name]), rtol=0, atol=1e-6)
    # both follow textbook EM written in numpy
    hand, _ = hand_weighted_em(y, np.ones(len(y)), 8, **MIX_INIT)
    np.testing.assert_allclose(closed.history, hand, rtol=1e-12)


def test_fit_result_bookkeeping():
    y = mixture_data()
    res = pyroem.EM(make_mixture(), updates=mixture_updates).fit(y, max_iter=200, tol=1e-10)
    assert res.converged
    assert len(res.history) == res.n_iter + 1
    assert res.history[-1] == res.log_likelihood
    assert res.log_likelihood == pytest.approx(mixture_loglik(y, **res.params), rel=1e-12)
    # params are left in Pyro's param store
    np.testing.assert_allclose(np_(pyro.param("loc")), np_(res.params["loc"]))
    # at the converged point the gradient of the hand log-likelihood vanishes
    w = torch.tensor(np_(res.params["w"]), requires_grad=True)
    loc = torch.tensor(np_(res.params["loc"]), requires_grad=True)
    scale = torch.tensor(np_(res.params["scale"]), requires_grad=True)
    ll = (w.log() + dist.Normal(loc, scale).log_prob(y[:, None])).logsumexp(-1).sum()
    g_w, g_loc, g_scale = torch.autograd.grad(ll, (w, loc, scale))
    assert float(g_loc.abs().max()) < 1e-3 and float(g_scale.abs().max()) < 1e-3
    assert float((g_w - g_w.mean()).abs().max()) < 1e-3  # tangent to the simplex


def test_step_returns_log_likelihood_at_its_starting_point():
    y = mixture_data()
    em = pyroem.EM(make_mixture(), updates=mixture_updates)
    hand, (w, loc, scale) = hand_weighted_em(y, np.ones(len(y)), 3, **MIX_INIT)
    lls = [em.step(y) for _ in range(3)]
    np.testing.assert_allclose(lls, hand[:3], rtol=1e-12)
    np.testing.assert_allclose(np_(em.params["loc"]), loc, rtol=1e-10)


# --- HMM: closed-form Baum-Welch updates from expect.joint -----------------------------------
def hmm_updates(expect, y):
    T = len(y)
    gamma = torch.stack([expect.marginal(f"x_{t}") for t in range(T)])
    xi = torch.stack([expect.joint(f"x_{t}", f"x_{t + 1}") for t in range(T - 1)]).sum(0)
    nk = gamma.sum(0)
    loc = (gamma * y[:, None]).sum(0) / nk
    scale = ((gamma * (y[:, None] - loc) ** 2).sum(0) / nk).sqrt()
    return {"pi": gamma[0], "trans": xi / xi.sum(-1, keepdim=True), "loc": loc, "scale": scale}


def hand_baum_welch(y, n_steps, pi, trans, loc, scale):
    y = np_(y)
    pi, A, loc, scale = (np.array(v, dtype=float) for v in (pi, trans, loc, scale))
    history = []
    for _ in range(n_steps):
        ll, gamma, xi = hmm_forward_backward(y, pi, A, loc, scale)
        history.append(ll)
        pi = gamma[0]
        A = xi.sum(0) / xi.sum((0, 2))[:, None]
        nk = gamma.sum(0)
        loc = gamma.T @ y / nk
        scale = np.sqrt((gamma * (y[:, None] - loc) ** 2).sum(0) / nk)
    history.append(hmm_forward_backward(y, pi, A, loc, scale)[0])
    return history


def test_hmm_closed_form_fit_follows_hand_baum_welch():
    y = hmm_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(make_hmm(), updates=hmm_updates).fit(y, max_iter=10, tol=0.0)
    np.testing.assert_allclose(res.history, hand_baum_welch(y, 10, **HMM_INIT), rtol=1e-10)
    assert_monotone(res.history)


# --- monotone log-likelihood on every test model (autograd M-steps) --------------------------
def hmm_reference(y, pi, trans, loc, scale):
    return hmm_forward_backward(y, pi, trans, loc, scale)[0]


def nested_reference(y_out, y_in, **params):
    return nested_brute_force(y_out, y_in, **params)[0]


MONOTONE_CASES = {
    "mixture": (make_mixture, lambda: (mixture_data(),), mixture_loglik, 8),
    "hmm": (make_hmm, lambda: (hmm_data(),), hmm_reference, 2),
    "nested": (make_nested, nested_data, nested_reference, 3),
    "map": (make_map_mixture, lambda: (map_data(),), map_log_posterior, 8),
}


@pytest.mark.parametrize("case", sorted(MONOTONE_CASES))
def test_autograd_fit_is_monotone_and_reports_the_true_log_likelihood(case):
    make, data, reference, n_steps = MONOTONE_CASES[case]
    args = data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(make()).fit(*args, max_iter=n_steps, tol=0.0)
    assert res.n_iter == n_steps and len(res.history) == n_steps + 1
    assert_monotone(res.history)
    assert res.history[-1] > res.history[0]  # the fit moved
    assert res.log_likelihood == pytest.approx(reference(*args, **res.params), rel=1e-10)


def test_nested_fit_from_brute_force_start():
    """History entry 0 is log p(y) at the initial params, as the brute-force sum gives it."""
    y_out, y_in = nested_data()
    res = pyroem.EM(make_nested()).fit(y_out, y_in, max_iter=0)
    assert res.history[0] == pytest.approx(nested_reference(y_out, y_in, **NEST_INIT), rel=1e-12)


# --- MAP estimates vs scipy ------------------------------------------------------------------
def test_map_fit_matches_direct_maximization():
    y = map_data()
    pyro.param("w", torch.tensor([0.5, 0.5], dtype=torch.float64), constraint=constraints.simplex)
    pyro.param("loc", torch.tensor([-1.0, 1.0], dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(make_map_mixture()).fit(y, max_iter=300, tol=1e-13)
    assert res.converged
    assert_monotone(res.history)

    def neg(x):  # x = (logit w_0, loc_0, loc_1, log scale)
        p = expit(x[0])
        return -map_log_posterior(y, [p, 1 - p], x[1:3], np.exp(x[3]))

    opt = minimize(neg, np.array([0.0, -1.0, 1.0, 0.0]), method="BFGS", options={"gtol": 1e-10})
    w0 = expit(opt.x[0])
    assert res.log_likelihood == pytest.approx(-opt.fun, rel=1e-10)
    np.testing.assert_allclose(np_(res.params["w"]), [w0, 1 - w0], atol=1e-5)
    np.testing.assert_allclose(np_(res.params["loc"]), opt.x[1:3], atol=1e-5)
    assert float(res.params["scale"]) == pytest.approx(np.exp(opt.x[3]), abs=1e-5)
    # the prior matters: the maximum-likelihood point is a different one
    mle = minimize(lambda x: -mixture_loglik(y, [expit(x[0]), 1 - expit(x[0])], x[1:3], np.full(2, np.exp(x[3]))),
                   opt.x, method="BFGS")
    assert np.abs(mle.x[1:3] - opt.x[1:3]).max() > 1e-2


def test_map_site_is_initialized_in_its_support():
    y = map_data()
    em = pyroem.EM(make_map_mixture())
    em.e_step(y)
    w = em.params["w"]
    assert w.shape == (2,) and bool((w > 0).all()) and float(w.sum()) == pytest.approx(1.0)
    assert em.params["loc"].shape == (2,)


# --- masks and poutine.scale -----------------------------------------------------------------
def make_mixture_masked(mask_latent):
    def model(y, keep):
        w = pyro.param("w", torch.tensor(MIX_INIT["w"], dtype=y.dtype), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor(MIX_INIT["loc"], dtype=y.dtype))
        scale = pyro.param("scale", torch.tensor(MIX_INIT["scale"], dtype=y.dtype),
                           constraint=constraints.positive)
        with pyro.plate("data", len(y)):
            with poutine.mask(mask=keep if mask_latent else True):
                z = pyro.sample("z", dist.Categorical(w))
                with poutine.mask(mask=keep):
                    pyro.sample("obs", dist.Normal(loc[z], scale[z]), obs=y)

    return model


@pytest.mark.parametrize("mask_latent", [False, True], ids=["mask_obs", "mask_both"])
def test_masked_observations_drop_out(mask_latent):
    y = mixture_data()
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[[0, 4, 9]] = False
    model = make_mixture_masked(mask_latent)
    expected = mixture_loglik(y[keep], **MIX_INIT)
    assert float(pyroem.log_likelihood(model, y, keep).detach()) == pytest.approx(expected, rel=1e-12)
    r = np_(pyroem.posterior(model, y, keep)["z"])
    np.testing.assert_allclose(r[~keep.numpy()], np.tile(MIX_INIT["w"], (3, 1)), rtol=1e-12)
    np.testing.assert_allclose(r[keep.numpy()], softmax(mixture_joint(y[keep], **MIX_INIT), axis=1), rtol=1e-10)
    # an autograd EM fit follows textbook EM with the masked points' y missing (as in Pyro, a mask
    # on an enumerated latent leaves its prior factor in place)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(model).fit(y, keep, max_iter=4, tol=0.0)
    np.testing.assert_allclose(res.history, hand_masked_em(y, keep, 4, **MIX_INIT), rtol=0, atol=1e-8)
    assert res.log_likelihood == pytest.approx(mixture_loglik(y[keep], **res.params), rel=1e-12)


def make_scaled_mixture():
    def model(y, weights):
        w = pyro.param("w", torch.tensor(MIX_INIT["w"], dtype=y.dtype), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor(MIX_INIT["loc"], dtype=y.dtype))
        scale = pyro.param("scale", torch.tensor(MIX_INIT["scale"], dtype=y.dtype),
                           constraint=constraints.positive)
        with pyro.plate("data", len(y)), poutine.scale(scale=weights):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("obs", dist.Normal(loc[z], scale[z]), obs=y)

    return model


def test_scalar_scale_multiplies_log_likelihood_not_posteriors():
    y = mixture_data()
    model = make_mixture()
    scaled = poutine.scale(model, scale=2.5)
    expected = mixture_loglik(y, **MIX_INIT)
    assert float(pyroem.log_likelihood(scaled, y).detach()) == pytest.approx(2.5 * expected, rel=1e-12)
    expect = pyroem.EM(scaled).e_step(y)
    assert float(expect.log_likelihood) == pytest.approx(2.5 * expected, rel=1e-12)
    np.testing.assert_allclose(np_(expect.marginal("z")), softmax(mixture_joint(y, **MIX_INIT), axis=1), rtol=1e-10)


def test_per_datum_scale_gives_weighted_log_likelihood_and_weighted_em():
    y = mixture_data()
    weights = torch.linspace(0.25, 3.0, len(y), dtype=y.dtype)
    model = make_scaled_mixture()
    expected = mixture_loglik(y, weights=weights, **MIX_INIT)
    assert float(pyroem.log_likelihood(model, y, weights).detach()) == pytest.approx(expected, rel=1e-12)
    # posteriors stay unweighted probabilities
    r = np_(pyroem.posterior(model, y, weights)["z"])
    np.testing.assert_allclose(r, softmax(mixture_joint(y, **MIX_INIT), axis=1), rtol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(model).fit(y, weights, max_iter=5, tol=0.0)
    hand, (w, loc, scale) = hand_weighted_em(y, weights, 5, **MIX_INIT)
    np.testing.assert_allclose(res.history, hand, rtol=0, atol=1e-8)
    np.testing.assert_allclose(np_(res.params["loc"]), loc, atol=1e-6)
    np.testing.assert_allclose(np_(res.params["w"]), w, atol=1e-6)


# --- dtypes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("closed_form", [False, True], ids=["autograd", "closed_form"])
def test_fit_works_in_both_dtypes(dtype, closed_form):
    y = mixture_data(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(make_mixture(), updates=mixture_updates if closed_form else None).fit(
            y, max_iter=6, tol=0.0)
    for v in res.params.values():
        assert v.dtype == dtype and bool(torch.isfinite(v).all())
    assert_monotone(res.history, dtype)
    hand, _ = hand_weighted_em(y, np.ones(len(y)), 6, **MIX_INIT)
    tol = 1e-4 if dtype == torch.float32 else 1e-8
    np.testing.assert_allclose(res.history, hand, rtol=0, atol=tol * max(1.0, abs(hand[-1])))
    assert res.log_likelihood == pytest.approx(mixture_loglik(y, **res.params), rel=10 * tol)


# --- robustness of the autograd M-step -------------------------------------------------------
def test_autograd_m_step_survives_trial_points_the_model_rejects():
    """Newton's first step from 0 (length about 8.8) overshoots into a region where the model raises
    (as a distribution's argument check does); the line search backs off and finds the maximum at 1.9."""
    from pyroem.newton import newton_maximize

    def f(xs):
        (a,) = xs
        if float(a.detach()) > 2.0:
            return None
        return -torch.sqrt(1 + (a - 1.9) ** 2)

    out = newton_maximize(f, [torch.tensor(0.0, dtype=torch.float64)])
    assert out.stationary
    assert float(out.xs[0]) == pytest.approx(1.9, abs=1e-8)


def test_degenerate_likelihood_does_not_abort_the_fit():
    """Three points, three free locations and one shared scale: log p(y) grows without bound as the
    scale shrinks, and line-search trial points underflow the scale to 0. The fit keeps going."""

    def model(y):
        w = pyro.param("w", torch.tensor([0.3, 0.3, 0.4], dtype=y.dtype), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor([-1.0, 0.0, 1.0], dtype=y.dtype))
        s = pyro.param("s", torch.tensor(1.0, dtype=y.dtype), constraint=constraints.positive)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("obs", dist.Normal(loc[z], s), obs=y)

    y = torch.tensor([-1.3, 0.2, 1.4], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pyro's NaN notes at extreme scales
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(model).fit(y, max_iter=3, tol=0.0)
    assert_monotone(res.history)
    assert all(bool(torch.isfinite(v).all()) for v in res.params.values())
    assert res.n_iter == 3 and res.history[-1] > res.history[0]
