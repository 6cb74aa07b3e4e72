"""The default M-step (``EM(model)``, no ``updates``) on models written the way users write them.

Every number is checked against an independent reference: EM iterated in numpy from the
hand-derived updates, scipy's maximization of the exact log-likelihood, or Pyro's
``TraceEnum_ELBO``. Also: SQUAREM, convergence only at a stationary point, no crash from the
M-step's own numerics, which continuous latents are MAP estimates, and refusal of vectorized chains.
"""
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.infer.reparam import LocScaleReparam
from pyro.ops.indexing import Vindex
from scipy.optimize import minimize
from scipy.special import expit

import pyroem
from user_models import USER_MODELS, np_, set_params, zip_reference_optimum

CLOSED_FORM = [name for name, m in USER_MODELS.items() if m.em_step_np is not None]


def assert_monotone(history, dtype=torch.float64):
    slack = 1e3 * torch.finfo(dtype).eps
    for i in range(1, len(history)):
        assert history[i] >= history[i - 1] - slack * max(1.0, abs(history[i - 1])), (i, history[i - 1:i + 1])


def _start(name, dtype=torch.float64):
    m = USER_MODELS[name]
    args = m.make_data(dtype=dtype)
    set_params(m.init(args), name)
    return m, args


def numpy_em(m, args, n_steps):
    """log p(y|θ) along ``n_steps`` of textbook EM done in numpy from the model's start."""
    params = {k: np_(v) for k, v in m.init(args).items()}
    history = []
    for _ in range(n_steps + 1):
        history.append(m.loglik_np(params, *args))
        params = m.em_step_np(params, *args)
    return history


# --- the default M-step is a full M-step -----------------------------------------------------
# The HMM's masked steps past a sequence's end stay latents of the model (Pyro ignores masks on
# enumerated sites), so its EM also counts their transitions: a different path than textbook
# Baum-Welch on the cut sequences, to the same optimum (checked below).
@pytest.mark.parametrize("name", [n for n in CLOSED_FORM if n != "hmm_model_1"])
def test_default_em_follows_textbook_em(name):
    m, args = _start(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(m.model).fit(*args, max_iter=6, tol=0.0)
    reference = numpy_em(m, args, 6)
    np.testing.assert_allclose(res.history, reference, rtol=1e-10)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_default_em_reaches_the_closed_form_optimum(name):
    m, args = _start(name)
    closed = pyroem.EM(m.model, m.updates).fit(*args, max_iter=3000, tol=1e-12)
    closed_params = {k: v.clone() for k, v in closed.params.items()}
    _start(name)
    auto = pyroem.EM(m.model).fit(*args, max_iter=3000, tol=1e-12)
    assert closed.converged and auto.converged
    assert auto.log_likelihood == pytest.approx(closed.log_likelihood, rel=1e-10)
    for k, v in closed_params.items():
        np.testing.assert_allclose(np_(auto.params[k]), np_(v), atol=1e-5)


def test_zip_regression_reaches_the_scipy_optimum():
    m, args = _start("zip_regression")
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(m.model).fit(*args, max_iter=500, tol=1e-12)
    params, ll = zip_reference_optimum(args)
    assert res.converged
    assert res.log_likelihood == pytest.approx(ll, rel=1e-9)
    np.testing.assert_allclose(np_(res.params["beta"]), np_(params["beta"]), atol=1e-4)
    assert float(res.params["gate"]) == pytest.approx(float(np_(params["gate"])), abs=1e-4)


def test_gmm_tutorial_map_matches_scipy():
    m, args = _start("gmm_tutorial")
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(m.model).fit(*args, max_iter=500, tol=1e-13)

    def neg(x):  # logit w_0, log scale, locs
        w0 = expit(x[0])
        return -m.loglik_np({"weights": np.array([w0, 1 - w0]), "scale": np.exp(x[1]), "locs": x[2:]}, *args)

    w = np_(res.params["weights"])
    x0 = np.r_[np.log(w[0] / w[1]), np.log(float(res.params["scale"])) + 0.1, np_(res.params["locs"]) + 0.2]
    opt = minimize(neg, x0, method="BFGS", options={"gtol": 1e-9})
    assert res.converged
    assert res.log_likelihood == pytest.approx(-opt.fun, rel=1e-9)
    np.testing.assert_allclose(np_(res.params["locs"]), opt.x[2:], atol=1e-4)


def test_float32_latent_class_ends_where_float64_does():
    """The same default fit in float32 and float64: float32 stops as converged within float32
    rounding of where float64 stops, not stalled short of it."""
    m, args = _start("latent_class")
    ref = pyroem.EM(m.model).fit(*args, max_iter=3000)
    ref_params = {k: np_(v) for k, v in ref.params.items()}
    m, args32 = _start("latent_class", torch.float32)
    res = pyroem.EM(m.model).fit(*args32, max_iter=3000)
    assert ref.converged and res.converged
    assert res.params["item_probs"].dtype == torch.float32
    assert_monotone(res.history, torch.float32)
    # log p(y|θ) at the float32 parameters, in float64: within float32 rounding of the float64 fit's
    rounding = 10 * torch.finfo(torch.float32).eps * abs(ref.log_likelihood)
    assert m.loglik_np(res.params, *args) == pytest.approx(ref.log_likelihood, abs=rounding)
    for k, v in ref_params.items():
        np.testing.assert_allclose(np_(res.params[k]), v, atol=1e-2)
    # accelerated, float32 reaches the optimum itself
    m, args32 = _start("latent_class", torch.float32)
    fast = pyroem.EM(m.model).fit(*args32, max_iter=3000, accelerate="squarem")
    best = pyroem.EM(m.model, m.updates)
    _start("latent_class")
    best = best.fit(*args, max_iter=5000, tol=1e-13).log_likelihood
    assert m.loglik_np(fast.params, *args) == pytest.approx(best, abs=rounding)


def test_a_stalled_inner_solver_never_ends_a_fit_as_converged(monkeypatch):
    """Where Newton cannot move the parameters, log p(y|θ) stays put: that is no convergence."""
    import pyroem.mstep as mstep

    monkeypatch.setattr(mstep, "maximize", lambda f, xs, first=None, reduce=None: None)
    m, args = _start("zip_regression")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyroem.MonotonicityWarning)
        res = pyroem.EM(m.model).fit(*args, max_iter=5)
    assert not res.converged and res.stop_reason == "max_iter"


def test_probability_used_elsewhere_is_left_to_newton():
    """``w`` is both the mixing weights and the components' locations: its count form misses the
    second use, so it must not get the count update; the fit still climbs to scipy's optimum."""
    y = torch.tensor([0.1, 0.2, 0.9, 0.7, 0.8, 0.95, 0.3], dtype=torch.float64)

    def model(y):
        w = pyro.param("w", torch.tensor([0.5, 0.5], dtype=y.dtype), constraint=constraints.simplex)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("obs", dist.Normal(w[z], 0.3), obs=y)

    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(model).fit(y, max_iter=500, tol=1e-12)

    def neg(a):
        w = np.array([expit(a[0]), 1 - expit(a[0])])
        yy = np_(y)[:, None]
        dens = w[None, :] * np.exp(-0.5 * ((yy - w[None, :]) / 0.3) ** 2) / (0.3 * np.sqrt(2 * np.pi))
        return -np.log(dens.sum(1)).sum()

    opt = minimize(neg, np.array([0.0]), method="BFGS", options={"gtol": 1e-10})
    assert res.log_likelihood == pytest.approx(-opt.fun, rel=1e-9)
    assert float(res.params["w"][0]) == pytest.approx(expit(opt.x[0]), abs=1e-5)


def test_probabilities_through_a_nonlinear_map_are_left_to_newton():
    """``Categorical(w ** 2)``: the counts do not map back through the square, so ``w`` gets no
    count update; the fit reaches scipy's optimum all the same."""
    from pyroem.probability_updates import probability_updates

    y = torch.tensor([-1.9, -2.2, 0.1, 2.1, 1.8, 2.4, 2.0], dtype=torch.float64)

    def model(y):
        w = pyro.param("w", torch.tensor([0.3, 0.3, 0.4], dtype=y.dtype), constraint=constraints.simplex)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w ** 2))
            pyro.sample("obs", dist.Normal(torch.tensor([-2.0, 0.0, 2.0], dtype=y.dtype)[z], 0.5), obs=y)

    pyro.clear_param_store()
    em = pyroem.EM(model)
    expect = em.e_step(y)
    start = expect._start
    assert probability_updates(start.trace, expect.site_weights(), start.values,
                               {"w": constraints.simplex}) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = em.fit(y, max_iter=500, tol=1e-12)

    def neg(a):  # w = softmax(0, a1, a2)
        w = np.exp(np.r_[0.0, a]) / np.exp(np.r_[0.0, a]).sum()
        p = w ** 2 / (w ** 2).sum()
        dens = p[None, :] * np.exp(-0.5 * ((np_(y)[:, None] - np.array([-2.0, 0.0, 2.0])) / 0.5) ** 2)
        return -np.log(dens.sum(1) / (0.5 * np.sqrt(2 * np.pi))).sum()

    opt = minimize(neg, np.zeros(2), method="BFGS", options={"gtol": 1e-10})
    assert res.log_likelihood == pytest.approx(-opt.fun, rel=1e-9)


@pytest.mark.parametrize("scale_kind, exact", [
    ("per_component", {"w", "loc", "scale"}),   # loc and scale selected alike: both at once
    ("shared", {"w"}),                          # one scale for all components: left to Newton
    ("fixed", {"w", "loc"}),                    # a constant scale: the location alone
])
def test_which_normal_parameters_get_exact_updates(scale_kind, exact):
    from pyroem.probability_updates import probability_updates

    y = torch.tensor([-2.1, -1.7, -2.4, 1.9, 2.2, 2.6, 0.3], dtype=torch.float64)

    def model(y):
        w = pyro.param("w", torch.tensor([0.5, 0.5], dtype=y.dtype), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor([-1.0, 1.0], dtype=y.dtype))
        if scale_kind == "fixed":
            scale = torch.tensor([0.8, 1.2], dtype=y.dtype)
        else:
            shape = (2,) if scale_kind == "per_component" else ()
            scale = pyro.param("scale", torch.ones(shape, dtype=y.dtype), constraint=constraints.positive)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            s = scale[z] if scale.dim() else scale
            pyro.sample("obs", dist.Normal(loc[z], s), obs=y)

    pyro.clear_param_store()
    em = pyroem.EM(model)
    expect = em.e_step(y)
    start = expect._start
    kinds = {n: pyro.get_param_store().get_state()["constraints"][n] for n in start.values}
    got = probability_updates(start.trace, expect.site_weights(), start.values, kinds)
    assert set(got) == exact
    # whichever path each parameter takes, the fit climbs to scipy's optimum
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = em.fit(y, max_iter=1000, tol=1e-13)
    assert_monotone(res.history)
    fixed = np.array([0.8, 1.2])

    def neg(x):  # logit w0, loc0, loc1, then log scale(s)
        w0 = expit(x[0])
        sd = fixed if scale_kind == "fixed" else np.exp(x[3:]) * np.ones(2)
        lj = np.log([w0, 1 - w0])[None, :] - 0.5 * ((np_(y)[:, None] - x[1:3]) / sd) ** 2 - np.log(sd * np.sqrt(2 * np.pi))
        return -np.logaddexp.reduce(lj, axis=1).sum()

    n_scale = {"per_component": 2, "shared": 1, "fixed": 0}[scale_kind]
    p = res.params
    x0 = np.r_[np.log(float(p["w"][0]) / float(p["w"][1])), np_(p["loc"]),
               np.log(np_(p["scale"])).reshape(-1) if n_scale else []] + 0.01
    opt = minimize(neg, x0, method="BFGS", options={"gtol": 1e-10})
    assert res.log_likelihood == pytest.approx(-opt.fun, rel=1e-9)


# --- SQUAREM ---------------------------------------------------------------------------------
@pytest.mark.parametrize("closed_form", [False, True], ids=["autograd", "closed_form"])
@pytest.mark.parametrize("name", ["dawid_skene", "latent_class", "zip_regression"])
def test_squarem_is_monotone_and_reaches_the_same_optimum_in_fewer_iterations(name, closed_form):
    m, args = _start(name)
    updates = m.updates if closed_form else None
    if closed_form and updates is None:
        pytest.skip("no closed form")
    plain = pyroem.EM(m.model, updates).fit(*args, max_iter=5000, tol=1e-12)
    _start(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        fast = pyroem.EM(m.model, updates).fit(*args, max_iter=5000, tol=1e-12, accelerate="squarem")
    assert fast.converged
    assert_monotone(fast.history)
    assert fast.log_likelihood == pytest.approx(plain.log_likelihood, rel=1e-9)
    assert fast.n_iter < plain.n_iter


def test_unknown_acceleration_is_refused():
    m, args = _start("change_point")
    with pytest.raises(ValueError, match="accelerate must be None or one of"):
        pyroem.EM(m.model).fit(*args, accelerate="aitken")


# --- the M-step's own numerics ---------------------------------------------------------------
def enumeration_tutorial_mixture(data, num_components=3):
    """The mixture of Pyro's enumeration tutorial: Dirichlet(0.5) weights, LogNormal scale and
    Normal locations in a components plate, all MAP estimates here."""
    dt = data.dtype
    p = pyro.sample("p", dist.Dirichlet(0.5 * torch.ones(num_components, dtype=dt)))
    scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=dt), num_components))
    with pyro.plate("components", num_components):
        local = pyro.sample("local", dist.Normal(torch.tensor(0.0, dtype=dt), 10.0))
    with pyro.plate("data", len(data)):
        x = pyro.sample("x", dist.Categorical(p))
        pyro.sample("obs", dist.Normal(local[x], scale), obs=data)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_enumeration_tutorial_mixture_never_crashes_over_ten_seeds(dtype):
    """Dirichlet(0.5) makes the log posterior unbounded where a component empties; the M-step
    must follow it without NaN, crash or decrease."""
    for seed in range(10):
        pyro.set_rng_seed(seed)
        pyro.clear_param_store()
        data = torch.randn(10, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error", pyroem.MonotonicityWarning)
            res = pyroem.EM(enumeration_tutorial_mixture).fit(data, max_iter=60)
        assert_monotone(res.history, dtype)
        assert all(bool(torch.isfinite(v).all()) for v in res.params.values()), seed
        assert np.isfinite(res.log_likelihood)


# --- which continuous latents are MAP estimates ----------------------------------------------
def latent_class_with_priors(y, num_classes=2):
    """Latent class analysis written the natural way: item probabilities with a Beta prior in an
    items plate, the class in the subjects plate, the answers in both."""
    dt = y.dtype
    weights = pyro.param("weights", torch.tensor([0.4, 0.6], dtype=dt), constraint=constraints.simplex)
    with pyro.plate("items", y.shape[1], dim=-1):
        with pyro.plate("classes", num_classes, dim=-2):
            theta = pyro.sample("theta", dist.Beta(torch.tensor(2.0, dtype=dt), torch.tensor(2.0, dtype=dt)))
    with pyro.plate("subjects", y.shape[0], dim=-2):
        z = pyro.sample("z", dist.Categorical(weights))
        with pyro.plate("items_", y.shape[1], dim=-1):
            pyro.sample("y", dist.Bernoulli(theta[z.squeeze(-1)] if z.dim() > 1 else theta[z]), obs=y)


def test_beta_prior_in_an_items_plate_is_a_map_estimate():
    g = torch.Generator().manual_seed(3)
    y = (torch.rand(40, 4, generator=g, dtype=torch.float64) < 0.5).double()
    y[:20, :2] = 1.0
    pyro.clear_param_store()
    pyro.param("theta", torch.tensor([[0.3, 0.4, 0.6, 0.5], [0.7, 0.6, 0.4, 0.45]], dtype=torch.float64),
               constraint=constraints.unit_interval)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(latent_class_with_priors).fit(y, max_iter=2000, tol=1e-13)
    assert res.params["theta"].shape == (2, 4)
    yy = np_(y)

    def log_post(x):
        w0 = expit(x[0])
        th = expit(x[1:]).reshape(2, 4)
        lj = np.log([w0, 1 - w0])[None, :] + (yy[:, None, :] * np.log(th)[None] +
                                              (1 - yy[:, None, :]) * np.log1p(-th)[None]).sum(-1)
        prior = (np.log(th) + np.log1p(-th) + np.log(6.0)).sum()  # Beta(2, 2) density 6 θ (1 - θ)
        return np.logaddexp.reduce(lj, axis=1).sum() + prior

    th = np_(res.params["theta"]).reshape(-1)
    w = np_(res.params["weights"])
    start = np.r_[np.log(w[0] / w[1]), np.log(th / (1 - th))] + 0.05
    opt = minimize(lambda x: -log_post(x), start, method="BFGS", options={"gtol": 1e-9})
    assert res.log_likelihood == pytest.approx(-opt.fun, rel=1e-9)


def test_enumeration_tutorial_feature_plate_model_is_accepted():
    """Pyro's enumeration tutorial: p ~ Dirichlet in (feature, component) plates, c in the data
    plate, x observed in (data, feature): p is global with respect to c."""

    def model(x_obs):
        data_plate = pyro.plate("data_plate", 6, dim=-1)
        feature_plate = pyro.plate("feature_plate", 5, dim=-2)
        component_plate = pyro.plate("component_plate", 4, dim=-1)
        with feature_plate:
            with component_plate:
                p = pyro.sample("p", dist.Dirichlet(torch.ones(3, dtype=torch.float64) * 1.5))
        with data_plate:
            c = pyro.sample("c", dist.Categorical(torch.ones(4, dtype=torch.float64)))
            with feature_plate as vdx:
                pc = Vindex(p)[vdx[..., None], c, :]
                pyro.sample("x", dist.Categorical(pc), obs=x_obs)

    g = torch.Generator().manual_seed(0)
    x_obs = torch.randint(0, 3, (5, 6), generator=g)
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        res = pyroem.EM(model).fit(x_obs, max_iter=30)
    assert res.history[-1] > res.history[0]
    # log p(x | p) + log Dir(p) at the fitted p, from Pyro's TraceEnum_ELBO (p observed)
    p = res.params["p"]
    conditioned = poutine.condition(config_enumerate(model), data={"p": p})
    ref = -TraceEnum_ELBO(max_plate_nesting=2).loss(conditioned, lambda x: None, x_obs)
    assert res.log_likelihood == pytest.approx(ref, rel=1e-10)


def mixture_with_locs(deterministic=False, reparam=False):
    def model(y):
        w = pyro.param("w", torch.tensor([0.5, 0.5], dtype=y.dtype), constraint=constraints.simplex)
        with pyro.plate("components", 2):
            if reparam:
                with poutine.reparam(config={"loc": LocScaleReparam(0.0)}):
                    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=y.dtype), 5.0))
            else:
                loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=y.dtype), 5.0))
            if deterministic:
                pyro.deterministic("loc2", 2 * loc)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("obs", dist.Normal(loc[z], 1.0), obs=y)

    return model


@pytest.mark.parametrize("variant", ["deterministic", "reparam"])
def test_deterministic_and_reparam_sites_do_not_make_a_data_plate(variant):
    y = torch.tensor([-2.1, -1.7, -2.4, 1.9, 2.2, 2.6, 1.4], dtype=torch.float64)
    pyro.clear_param_store()
    pyro.param("loc", torch.tensor([-1.0, 1.0], dtype=torch.float64))
    plain = pyroem.EM(mixture_with_locs()).fit(y, max_iter=200, tol=1e-12)
    pyro.clear_param_store()
    pyro.param("loc", torch.tensor([-1.0, 1.0], dtype=torch.float64))
    if variant == "reparam":
        pyro.param("loc_decentered", torch.tensor([-1.0, 1.0], dtype=torch.float64) / 5.0)
    model = mixture_with_locs(**{variant: True})
    res = pyroem.EM(model).fit(y, max_iter=200, tol=1e-12)
    if variant == "deterministic":
        assert res.log_likelihood == pytest.approx(plain.log_likelihood, rel=1e-10)
        np.testing.assert_allclose(np_(res.params["loc"]), np_(plain.params["loc"]), atol=1e-6)
    else:  # the decentered site is the MAP estimate now: its prior is N(0, 1), a different density
        assert res.history[-1] > res.history[0]
        assert "loc_decentered" in res.params


def test_a_continuous_latent_per_data_point_is_still_refused():
    def model(y):
        w = pyro.param("w", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            u = pyro.sample("u", dist.Normal(torch.tensor([-1.0, 1.0])[z], 1.0))
            pyro.sample("obs", dist.Normal(u, 0.5), obs=y)

    with pytest.raises(ValueError, match="'u'.*plate 'data'.*discrete latent 'z'"):
        pyroem.EM(model).fit(torch.tensor([0.3, -1.2, 1.5]))
