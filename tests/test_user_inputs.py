"""What a new user hands the engine: NumPy arrays, pandas objects, integer 0/1 answers — each
scored as numpy computes it by hand."""
import functools
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from scipy.special import logsumexp
from scipy.stats import norm

import pyroem


def normal_mixture(y):
    w = pyro.param("w", torch.tensor([0.3, 0.7], dtype=torch.float64), constraint=constraints.simplex)
    loc = pyro.param("loc", torch.tensor([-1.0, 2.0], dtype=torch.float64))
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("y", dist.Normal(loc[z], 1.0), obs=y)


def by_hand(y):
    joint = np.log([0.3, 0.7]) + norm.logpdf(np.asarray(y, dtype=float)[:, None], [-1.0, 2.0], 1.0)
    return logsumexp(joint, axis=1).sum(), np.exp(joint - logsumexp(joint, axis=1, keepdims=True))


def survey(answers):
    """Latent classes of respondents answering three yes/no questions."""
    w = pyro.param("w", torch.tensor([0.4, 0.6]), constraint=constraints.simplex)
    p = pyro.param("p", torch.tensor([[0.8, 0.7, 0.9], [0.2, 0.3, 0.1]]), constraint=constraints.unit_interval)
    with pyro.plate("people", answers.shape[0]):
        c = pyro.sample("c", dist.Categorical(w))
        pyro.sample("answers", dist.Bernoulli(p[c]).to_event(1), obs=answers)


@pytest.fixture(autouse=True)
def fresh_store():
    pyro.clear_param_store()


def test_numpy_and_pandas_data_are_scored_as_tensors():
    pd = pytest.importorskip("pandas")
    y = np.array([-1.2, 0.3, 2.5, 1.9, -0.4])
    ll, resp = by_hand(y)
    for given in (y, pd.Series(y, name="y"), pd.DataFrame({"y": y})["y"]):
        pyro.clear_param_store()
        assert float(pyroem.log_likelihood(normal_mixture, given)) == pytest.approx(ll, rel=1e-12)
        np.testing.assert_allclose(pyroem.posterior(normal_mixture, given)["z"].numpy(), resp, rtol=1e-12)
    pyro.clear_param_store()
    res = pyroem.EM(normal_mixture).fit(y, max_iter=1)
    assert res.history[0] == pytest.approx(ll, rel=1e-12)


def test_numpy_data_take_the_float_type_of_the_params():
    pyro.param("w", torch.tensor([0.3, 0.7]), constraint=constraints.simplex)   # float32 params
    pyro.param("loc", torch.tensor([-1.0, 2.0]))
    y = np.array([-1.2, 0.3, 2.5])
    pyroem.EM(normal_mixture).fit(y, max_iter=2)
    assert pyro.param("loc").dtype == torch.float32


def test_integer_answers_are_read_as_bernoulli_outcomes():
    answers = np.array([[1, 1, 1], [0, 0, 1], [1, 0, 1], [0, 0, 0], [1, 1, 0]])   # int64, as a CSV gives them
    w, p = np.array([0.4, 0.6]), np.array([[0.8, 0.7, 0.9], [0.2, 0.3, 0.1]])
    per_class = (answers[:, None, :] * np.log(p) + (1 - answers[:, None, :]) * np.log1p(-p)).sum(-1)
    expected = logsumexp(np.log(w) + per_class, axis=1).sum()
    for given in (answers, torch.as_tensor(answers), torch.as_tensor(answers).bool()):
        pyro.clear_param_store()
        assert float(pyroem.log_likelihood(survey, given)) == pytest.approx(expected, rel=1e-6)
    pyro.clear_param_store()
    res = pyroem.EM(survey).fit(answers, max_iter=20)
    assert res.history[0] == pytest.approx(expected, rel=1e-6) and res.history[-1] > res.history[0]


def test_text_columns_are_refused_in_one_line():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"y": [1.0, 2.0], "name": ["a", "b"]})
    with pytest.raises(ValueError, match="numeric columns"):
        pyroem.log_likelihood(normal_mixture, frame)


def test_float64_data_with_float32_params_warn():
    def model(y):
        loc = pyro.param("loc", torch.tensor([-1.0, 2.0]))          # float32, torch's default
        w = pyro.param("w", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("y", dist.Normal(loc[z], 1.0), obs=y)

    y = torch.tensor([-1.2, 0.3, 2.5], dtype=torch.float64)
    with pytest.warns(UserWarning, match="float64 but the params 'loc', 'w' are torch.float32"):
        pyroem.EM(model).fit(y, max_iter=2)
    pyro.clear_param_store()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pyroem.EM(model).fit(y.float(), max_iter=2)


def test_a_collapsing_scale_is_warned_of_by_name():
    """10 components on 4 points: the scales shrink onto single points and the likelihood has no
    maximum; the fit says so, naming the param. A sound fit says nothing."""
    def model(y, k):
        w = pyro.param("w", torch.ones(k) / k, constraint=constraints.simplex)
        loc = pyro.param("loc", torch.linspace(-1, 1, k))
        scale = pyro.param("scale", torch.ones(k), constraint=constraints.positive)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("y", dist.Normal(loc[z], scale[z]), obs=y)

    with pytest.warns(RuntimeWarning, match=r"at site 'y' a scale fell to \S+ \(the param 'scale'\)"):
        res = pyroem.EM(model).fit(torch.tensor([0.1, 0.5, -0.3, 0.9]), 10)
    assert res.log_likelihood > 0   # a density above 1 at every point: the divergence itself
    pyro.clear_param_store()
    y = torch.cat([torch.randn(200, generator=torch.Generator().manual_seed(0)) - 2,
                   torch.randn(200, generator=torch.Generator().manual_seed(1)) + 2])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pyroem.EM(model).fit(y, 2)


def test_shape_mistakes_get_a_line_naming_site_shapes_and_cause():
    def forgot_plate(y):
        w = pyro.param("w", torch.ones(3) / 3, constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor([0.0, 1.0, 2.0]))
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("y", dist.Normal(loc[z], 1.0), obs=y)

    def forgot_to_event(y):
        w = pyro.param("w", torch.ones(3) / 3, constraint=constraints.simplex)
        loc = pyro.param("loc", torch.zeros(3, 2))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("y", dist.Normal(loc[z], 1.0), obs=y)

    with pytest.raises(ValueError) as err:
        pyroem.EM(forgot_plate).fit(torch.randn(10), max_iter=2)
    assert any("site 'y' observes a value of shape [10] with a distribution of shape [3]" in n and "pyro.plate" in n
               for n in err.value.__notes__)
    pyro.clear_param_store()
    with pytest.raises(ValueError) as err:
        pyroem.EM(forgot_to_event).fit(torch.randn(10, 2), max_iter=2)
    assert any("dim -1 has size 2 where plate 'data' has 10" in n and ".to_event(1)" in n for n in err.value.__notes__)


def test_small_fits_run_on_one_thread_and_a_users_count_wins(monkeypatch):
    """A small fit runs on one thread and puts torch's count back; a count the user set is kept."""
    import pyroem.threads as threads

    seen = []

    def model(y):
        seen.append(torch.get_num_threads())
        normal_mixture(y)

    y = torch.tensor([-1.2, 0.3, 2.5, 1.9], dtype=torch.float64)
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_AT_IMPORT", 4)   # as on a machine whose default is 4 threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    torch.set_num_threads(4)
    try:
        pyroem.EM(model).fit(y, max_iter=2)
        assert set(seen[-3:]) == {1} and torch.get_num_threads() == 4
        torch.set_num_threads(3)                      # the user's own choice
        seen.clear()
        pyro.clear_param_store()
        pyroem.EM(model).fit(y, max_iter=2)
        assert set(seen) == {3} and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_aic_and_bic_count_free_parameters_from_constraints():
    """A full-covariance mixture: K − 1 weights, K·D means, K·D(D+1)/2 per Cholesky factor — the
    count scikit-learn's GaussianMixture uses — and n the rows; counts given as weights count as
    that many observations."""
    from sklearn.mixture import GaussianMixture as Reference

    k, d = 3, 2
    g = torch.Generator().manual_seed(0)
    X = torch.cat([torch.randn(60, d, generator=g, dtype=torch.float64) + 4 * i for i in range(k)])

    def model(X):
        w = pyro.param("w", torch.ones(k, dtype=X.dtype) / k, constraint=constraints.simplex)
        loc = pyro.param("loc", X[[0, 60, 120]].clone())
        tril = pyro.param("tril", torch.eye(d, dtype=X.dtype).expand(k, d, d).clone(),
                          constraint=constraints.lower_cholesky)
        with pyro.plate("data", len(X)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("x", dist.MultivariateNormal(loc[z], scale_tril=tril[z]), obs=X)

    res = pyroem.EM(model).fit(X, tol=1e-12, max_iter=500)
    ref = Reference(k, tol=1e-12, max_iter=500, means_init=X[[0, 60, 120]].numpy(), reg_covar=0.0).fit(X.numpy())
    assert res.n_parameters == ref._n_parameters() == (k - 1) + k * d + k * d * (d + 1) // 2
    assert res.n_observations == 180
    assert res.bic == pytest.approx(ref.bic(X.numpy()), rel=1e-7)
    assert res.aic == pytest.approx(ref.aic(X.numpy()), rel=1e-7)

    def counts_model(counts):
        p = pyro.param("p", torch.tensor([0.3, 0.7], dtype=torch.float64), constraint=constraints.simplex)
        with pyro.plate("categories", 2), pyro.poutine.scale(scale=counts):
            pyro.sample("obs", dist.Categorical(p), obs=torch.arange(2))

    pyro.clear_param_store()
    res = pyroem.EM(counts_model).fit(torch.tensor([30.0, 70.0], dtype=torch.float64), max_iter=3)
    assert res.n_parameters == 1 and res.n_observations == 100
    assert res.bic == pytest.approx(-2 * (30 * np.log(0.3) + 70 * np.log(0.7)) + np.log(100), rel=1e-9)


def dawid_skene(labels):
    """Items with a latent true class; each annotator reports it through its own confusion matrix."""
    n_items, n_annotators = labels.shape
    c = 3
    pi = pyro.param("pi", torch.ones(c, dtype=torch.float64) / c, constraint=constraints.simplex)
    theta = pyro.param("theta", torch.ones(n_annotators, c, c, dtype=torch.float64) / c,
                       constraint=constraints.simplex)
    with pyro.plate("items", n_items, dim=-1):
        z = pyro.sample("z", dist.Categorical(pi))
        with pyro.plate("annotators", n_annotators, dim=-2):
            pyro.sample("y", dist.Categorical(theta[torch.arange(n_annotators).unsqueeze(-1), z]), obs=labels.T)


def test_restarts_escape_the_symmetric_fixed_point_of_dawid_skene():
    """From the uniform start EM stops at once, at the symmetric fixed point; the default restarts
    (perturbed starts) find the classes: the annotators' labels as simulated are recovered."""
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(3, (150,), generator=g)
    correct = torch.rand(150, 5, generator=g) < 0.8
    noise = torch.randint(3, (150, 5), generator=g)
    labels = torch.where(correct, truth.unsqueeze(1), noise)
    one = pyroem.EM(dawid_skene).fit(labels)
    assert one.converged and one.n_iter <= 3
    pyro.clear_param_store()
    torch.manual_seed(0)
    best = pyroem.EM(dawid_skene).fit(labels, n_init=5)
    assert len(best.init_log_likelihoods) == 5
    assert best.init_log_likelihoods[0] == pytest.approx(one.log_likelihood, rel=1e-12)
    assert best.log_likelihood == max(best.init_log_likelihoods) > one.log_likelihood + 100
    z = pyroem.posterior(dawid_skene, labels)["z"].argmax(-1)
    agreement = max(float((perm[z] == truth).float().mean())
                    for perm in (torch.tensor(p) for p in __import__("itertools").permutations(range(3))))
    assert agreement > 0.9
    calls = []
    pyro.clear_param_store()
    pyroem.EM(dawid_skene).fit(labels, n_init=3, init=calls.append)
    assert calls == [1, 2]
    with pytest.raises(ValueError, match="n_init must be an int >= 1"):
        pyroem.EM(dawid_skene).fit(labels, n_init=0)


def test_fixed_params_stay_put_through_every_m_step():
    """``EM(model, fixed=["scale"])``: the scale stays at its value whether the M-step is the
    engine's or closed-form; the rest reach scipy's maximum with the scale held; AIC counts it out."""
    from scipy.optimize import minimize

    from test_engine_statistics import mixture as model   # w, loc, scale; the scale set to 0.8 below

    def updates(expect, y):   # also returns a scale, which fixed overrides
        r = expect.marginal("z")
        n = r.sum(0)
        loc = r.T @ y / n
        return {"w": n / n.sum(), "loc": loc, "scale": ((r * (y[:, None] - loc) ** 2).sum(0) / n).sqrt()}

    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.randn(80, generator=g, dtype=torch.float64) - 2, torch.randn(120, generator=g,
                                                                                  dtype=torch.float64) + 2])

    def neg(t):
        w = 1 / (1 + np.exp(-t[0]))
        joint = np.stack([np.log(w) + norm.logpdf(y.numpy(), t[1], 0.8),
                          np.log1p(-w) + norm.logpdf(y.numpy(), t[2], 0.8)], 1)
        return -logsumexp(joint, axis=1).sum()

    best = minimize(neg, np.array([0.0, -1.0, 1.0]), method="BFGS", options={"gtol": 1e-8})
    for upd in (None, updates):
        pyro.clear_param_store()
        pyro.param("scale", torch.tensor([0.8, 0.8], dtype=y.dtype), constraint=constraints.positive)
        res = pyroem.EM(model, upd, fixed=["scale"]).fit(y, tol=1e-12, max_iter=500)
        np.testing.assert_array_equal(res.params["scale"].numpy(), [0.8, 0.8])
        assert res.log_likelihood == pytest.approx(-best.fun, rel=1e-9)
        assert res.n_parameters == 3 and res.aic == pytest.approx(2 * best.fun + 6, rel=1e-9)
    with pytest.raises(ValueError, match="fixed names 'sigma'"):
        pyroem.EM(model, fixed=["sigma"]).fit(y, max_iter=2)


def test_standard_errors_from_the_observed_information_match_a_finite_difference_hessian():
    """A two-component normal mixture: the covariance of (w, loc, scale) by the exact Hessian and
    the delta method equals the inverse of a central-difference Hessian of the negative
    log-likelihood in (w₁, loc, scale) computed with scipy; the simplex block's rows sum to 0; the
    intervals stay inside the constraints; a non-maximum is refused."""
    from test_engine_statistics import mixture as model

    g = torch.Generator().manual_seed(1)
    y = torch.cat([torch.randn(120, generator=g, dtype=torch.float64) * 0.7 - 2,
                   torch.randn(180, generator=g, dtype=torch.float64) + 1.5])
    res = pyroem.EM(model).fit(y, tol=1e-14, max_iter=1000)
    p = {k: v.numpy() for k, v in res.params.items()}
    t0 = np.array([p["w"][0], *p["loc"], *p["scale"]])

    def nll(t):
        joint = np.stack([np.log(t[0]) + norm.logpdf(y.numpy(), t[1], t[3]),
                          np.log1p(-t[0]) + norm.logpdf(y.numpy(), t[2], t[4])], 1)
        return -logsumexp(joint, axis=1).sum()

    h, n = 1e-4, len(t0)
    hess = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            e_i, e_j = np.eye(n)[i] * h, np.eye(n)[j] * h
            hess[i, j] = (nll(t0 + e_i + e_j) - nll(t0 + e_i - e_j) - nll(t0 - e_i + e_j) + nll(t0 - e_i - e_j)) / (4 * h * h)
    ref = np.linalg.inv(hess)
    cov = res.covariance()
    np.testing.assert_allclose(cov["w"][0, 0], ref[0, 0], rtol=1e-4)
    np.testing.assert_allclose(cov["loc"], ref[1:3, 1:3], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(cov["scale"], ref[3:, 3:], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(cov["w"].sum(1), 0.0, atol=1e-12)
    se = res.standard_errors()
    np.testing.assert_allclose(se["loc"].numpy(), np.sqrt(np.diag(ref)[1:3]), rtol=1e-4)
    low, high = res.conf_int(0.05)["scale"]
    assert bool((low > 0).all()) and bool((low < res.params["scale"]).all() and (high > res.params["scale"]).all())
    wl, wh = res.conf_int(0.05)["w"]
    assert bool((wl > 0).all() and (wh < 1).all())
    # Louis' identity: complete-data information minus the latents' share, the same matrix
    for name, block in res.covariance(method="louis").items():
        np.testing.assert_allclose(block.numpy(), cov[name].numpy(), rtol=1e-9, atol=1e-15)
    pyro.clear_param_store()
    start = pyroem.EM(model).fit(y, max_iter=0)
    with pytest.raises(ValueError, match="not positive definite"):
        start.standard_errors()
    with pytest.raises(ValueError, match="method must be one of"):
        res.standard_errors(method="sandwich")


def test_an_em_object_fits_again_after_the_param_store_is_cleared():
    y = np.array([-1.2, 0.3, 2.5, 1.9, -0.4])
    ll, _ = by_hand(y)
    em = pyroem.EM(normal_mixture)
    first = em.fit(y, max_iter=3)
    pyro.clear_param_store()
    again = em.fit(y, max_iter=3)   # the model's own initial params again
    assert first.history[0] == pytest.approx(ll, rel=1e-12) and again.history[0] == pytest.approx(ll, rel=1e-12)


def test_missing_values_are_marginalized_when_asked():
    """``EM(model, missing="marginalize")``: NaN coordinates drop out of a factorized likelihood,
    p(x_obs) = Σ_k w_k Π_{d observed} N(x_d | μ_kd, 1), as numpy computes it by hand; without the
    option the error says how to ask for it."""
    from pyro.ops.indexing import Vindex

    def model(X):
        w = pyro.param("w", torch.tensor([0.4, 0.6], dtype=X.dtype), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor([[-1.0, 0.0, 1.0], [2.0, 1.0, 0.0]], dtype=X.dtype))
        with pyro.plate("rows", X.shape[0], dim=-1):
            z = pyro.sample("z", dist.Categorical(w))
            with pyro.plate("coords", X.shape[1], dim=-2):
                mean = Vindex(loc)[z, torch.arange(X.shape[1]).unsqueeze(-1)]   # (coords, rows)
                pyro.sample("x", dist.Normal(mean, 1.0), obs=X.T)

    g = np.random.default_rng(0)
    X = g.normal(size=(40, 3)) + np.where(g.random((40, 1)) < 0.5, -1.0, 1.5)
    X[g.random((40, 3)) < 0.2] = np.nan
    w, loc = np.array([0.4, 0.6]), np.array([[-1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    per = np.where(np.isnan(X)[:, None, :], 0.0, norm.logpdf(X[:, None, :], loc[None], 1.0)).sum(-1)
    expected = logsumexp(np.log(w) + per, axis=1).sum()
    em = pyroem.EM(model, missing="marginalize")
    res = em.fit(torch.as_tensor(X), max_iter=30)
    assert res.history[0] == pytest.approx(expected, rel=1e-12)
    assert all(b >= a - 1e-9 for a, b in zip(res.history, res.history[1:]))
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"site 'x' observes NaN values \(\d+ of 120 entries\).*missing='marginalize'"):
        pyroem.EM(model).fit(torch.as_tensor(X), max_iter=1)
    with pytest.raises(ValueError, match="missing must be None"):
        pyroem.EM(model, missing="drop")


def test_parametric_bootstrap_agrees_with_the_observed_information_on_the_peppered_moth():
    """The moths one by one (genotype latent, phenotype observed): 150 refits to data simulated from
    the fit give standard errors within Monte Carlo error (about 6% at n = 150) of the Hessian's,
    which match the textbook's gene-counting SEs; the param store is left at the fit."""
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]                   # C, I, T
    emit = torch.nn.functional.one_hot(torch.tensor([0, 0, 0, 1, 1, 2]), 3).double()

    def moth(y):
        p = pyro.param("p", torch.ones(3, dtype=torch.float64) / 3, constraint=constraints.simplex)
        genotype = torch.stack([p[i] * p[j] * (1 if i == j else 2) for i, j in pairs])
        with pyro.plate("moths", len(y)):
            g = pyro.sample("g", dist.Categorical(genotype))
            pyro.sample("y", dist.Categorical(emit[g]), obs=y)

    y = torch.cat([torch.zeros(85), torch.ones(196), 2 * torch.ones(341)]).long()
    res = pyroem.EM(moth).fit(y, tol=1e-12)
    hessian = res.standard_errors()["p"]
    np.testing.assert_allclose(hessian.numpy(), [0.00741, 0.01221, 0.01348], atol=1e-5)
    torch.manual_seed(0)
    boot = pyroem.bootstrap(moth, y, n=150)
    assert boot.estimates["p"].shape == (150, 3)
    np.testing.assert_allclose(boot.standard_errors()["p"].numpy(), hessian.numpy(), rtol=0.2)
    np.testing.assert_allclose(pyro.param("p").detach().numpy(), res.params["p"].numpy(), rtol=1e-15)
    low, high = boot.conf_int(0.05)["p"]
    assert bool((low < res.params["p"]).all() and (res.params["p"] < high).all())


def _louis_against_hessian(res):
    hess, louis = res.covariance(), res.covariance(method="louis")
    for name in hess:
        np.testing.assert_allclose(louis[name].numpy(), hess[name].numpy(), rtol=1e-8, atol=1e-14)
    return hess


def test_louis_identity_equals_the_hessian_with_several_latents_and_chains():
    """Louis' identity (Hessian of Q minus the covariance of the complete-data score) gives the
    observed information of the Hessian of log p(y|θ), to rounding, where the latents are not one
    per datum: two latents per datum, a chain written with ``pyro.markov``, and a vectorized chain
    with masked steps (the bundled ``gaussian_hmm_model``). The Hessian's covariance is itself
    checked against finite differences of numpy's log-likelihood for the two-latent model."""
    def two_latents(y):
        p = pyro.param("p", torch.tensor([0.3, 0.7], dtype=torch.float64), constraint=constraints.simplex)
        s = pyro.param("s", torch.tensor(1.0, dtype=torch.float64), constraint=constraints.positive)
        with pyro.plate("data", len(y)):
            a = pyro.sample("a", dist.Categorical(p))
            b = pyro.sample("b", dist.Categorical(p))
            pyro.sample("y", dist.Normal((a + 2 * b).double(), s), obs=y)

    g = np.random.default_rng(8)
    a, b = g.random(80) < 0.35, g.random(80) < 0.35
    y = torch.tensor(a + 2.0 * b + 0.4 * g.normal(size=80))
    pyro.clear_param_store()
    res = pyroem.EM(two_latents).fit(y, max_iter=500, tol=1e-12)
    hess = _louis_against_hessian(res)
    p0, s0 = float(res.params["p"][0]), float(res.params["s"])

    def nll(t):
        q, sd = t
        w = {(i, j): (q if i == 0 else 1 - q) * (q if j == 0 else 1 - q) for i in (0, 1) for j in (0, 1)}
        lik = sum(w[i, j] * norm.pdf(y.numpy(), i + 2 * j, sd) for i in (0, 1) for j in (0, 1))
        return -np.log(lik).sum()

    h, t0 = 1e-4, np.array([p0, s0])
    fd = np.array([[(nll(t0 + h * (ei + ej)) - nll(t0 + h * (ei - ej)) - nll(t0 - h * (ei - ej)) + nll(t0 - h * (ei + ej)))
                    / (4 * h * h) for ej in np.eye(2)] for ei in np.eye(2)])
    ref = np.linalg.inv(fd)
    np.testing.assert_allclose(float(hess["p"][0, 0]), ref[0, 0], rtol=1e-4)
    np.testing.assert_allclose(float(hess["s"][0, 0]), ref[1, 1], rtol=1e-4)

    def markov_hmm(y):
        trans = pyro.param("trans", torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64),
                           constraint=constraints.simplex)
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0], dtype=torch.float64))
        x = 0
        for t in pyro.markov(range(len(y))):
            x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]))
            pyro.sample(f"y_{t}", dist.Normal(locs[x], 1.0), obs=y[t])

    states = np.cumsum(g.random(60) < 0.25) % 2
    obs = torch.tensor(np.where(states == 1, 1.2, -0.8) + g.normal(size=60))
    pyro.clear_param_store()
    _louis_against_hessian(pyroem.EM(markov_hmm).fit(obs, max_iter=300, tol=1e-12))

    from pyroem.models import gaussian_hmm_model
    X = torch.tensor(np.where(states[:, None] == 1, 1.5, -1.0) + g.normal(size=(60, 2)))
    Xpad = torch.stack([X[:35], torch.cat([X[35:], torch.zeros(10, 2, dtype=torch.float64)])])
    mask = torch.ones(2, 35, dtype=torch.bool)
    mask[1, 25:] = False
    pyro.clear_param_store()
    pyro.param("means", torch.tensor([[-0.5, -0.5], [0.5, 0.5]], dtype=torch.float64))
    pyro.param("startprob", torch.tensor([0.5, 0.5], dtype=torch.float64), constraint=constraints.simplex)
    pyro.param("transmat", torch.tensor([[0.7, 0.3], [0.4, 0.6]], dtype=torch.float64), constraint=constraints.simplex)
    pyro.param("covars", torch.ones(2, 2, dtype=torch.float64), constraint=constraints.positive)
    model = functools.partial(gaussian_hmm_model, n_components=2, covariance_type="diag")
    # two sequences put the start probabilities on the boundary: they stay fixed
    _louis_against_hessian(pyroem.EM(model, fixed=["startprob"]).fit(Xpad, mask, max_iter=300, tol=1e-12))


