"""GaussianMixture against scikit-learn (same starts -> same fit), scipy densities, bad input."""
import warnings

import numpy as np
import pyro
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.mixture import GaussianMixture as SkGaussianMixture  # noqa: E402

import pyroem  # noqa: E402
from pyroem.models import GaussianMixture, gmm_model  # noqa: E402
from pyroem.models.gaussian import GMMUpdates  # noqa: E402

TYPES = ["full", "tied", "diag", "spherical"]
RTOL = 1e-6


def iris():
    return load_iris().data


def blobs(seed=0):
    rs = np.random.RandomState(seed)
    return np.vstack([rs.randn(70, 3) + [0, 0, 0],
                      rs.randn(50, 3) * [0.5, 1.0, 2.0] + [4, 1, -2],
                      rs.randn(40, 3) @ np.array([[1, 0.8, 0], [0, 1, 0.3], [0, 0, 0.5]]) + [-3, 5, 1]])


def explicit_init(X, k, covariance_type, seed=0):
    """Hand-made starting values: random weights, perturbed data rows, data-scaled precisions."""
    rs = np.random.RandomState(seed)
    n, d = X.shape
    weights = rs.uniform(0.5, 1.5, size=k)
    weights /= weights.sum()
    means = X[rs.choice(n, k, replace=False)] + 0.1 * rs.randn(k, d)
    cov = np.cov(X.T, bias=True)
    scales = rs.uniform(0.5, 2.0, size=k)
    prec = {
        "full": np.stack([np.linalg.inv(cov * s) for s in scales]),
        "tied": np.linalg.inv(cov),
        "diag": np.stack([1.0 / (np.diag(cov) * s) for s in scales]),
        "spherical": 1.0 / (np.diag(cov).mean() * scales),
    }[covariance_type]
    return {"weights_init": weights, "means_init": means, "precisions_init": prec}


def assert_rel(actual, expected, rtol=RTOL, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


def assert_same_fit(ours, ref, X, rtol=RTOL):
    assert ours.n_iter_ == ref.n_iter_
    assert ours.converged_ == ref.converged_
    assert_rel(ours.weights_, ref.weights_, rtol)
    assert_rel(ours.means_, ref.means_, rtol, atol=1e-12)
    assert_rel(ours.covariances_, ref.covariances_, rtol, atol=1e-12)
    assert_rel(ours.precisions_, ref.precisions_, rtol, atol=1e-9)
    assert_rel(ours.precisions_cholesky_, ref.precisions_cholesky_, rtol, atol=1e-9)
    assert_rel(ours.lower_bound_, ref.lower_bound_, rtol)
    assert_rel(ours.lower_bounds_, ref.lower_bounds_, rtol)


@pytest.mark.parametrize("covariance_type", TYPES)
@pytest.mark.parametrize("data", ["iris", "blobs"])
def test_same_fit_as_sklearn_from_same_start(covariance_type, data):
    X = iris() if data == "iris" else blobs()
    init = explicit_init(X, 3, covariance_type)
    ref = SkGaussianMixture(3, covariance_type=covariance_type, tol=1e-5, max_iter=300, **init).fit(X)
    ours = GaussianMixture(3, covariance_type=covariance_type, tol=1e-5, max_iter=300, **init).fit(X)
    assert_same_fit(ours, ref, X)
    assert ours.n_features_in_ == X.shape[1]
    assert ours.weights_.dtype == np.float64
    assert_rel(ours.score(X), ref.score(X))
    assert_rel(ours.score_samples(X), ref.score_samples(X))
    assert_rel(ours.bic(X), ref.bic(X))
    assert_rel(ours.aic(X), ref.aic(X))
    assert_rel(ours.predict_proba(X), ref.predict_proba(X), 1e-6, atol=1e-10)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    # history_: the lower bounds, then the mean log-likelihood at the returned parameters
    assert len(ours.history_) == ours.n_iter_ + 1
    assert_rel(ours.history_[:-1], ref.lower_bounds_)
    assert_rel(ours.history_[-1], ref.score(X))
    assert np.all(np.diff(ours.history_) >= -1e-12 * np.abs(ours.history_[1:]))


@pytest.mark.parametrize("covariance_type", TYPES)
def test_sample_weight_equals_replicated_rows(covariance_type):
    X = blobs(1)
    counts = np.random.RandomState(2).randint(1, 4, size=len(X))
    init = explicit_init(X, 3, covariance_type, seed=3)
    ref = SkGaussianMixture(3, covariance_type=covariance_type, tol=1e-6, **init).fit(np.repeat(X, counts, axis=0))
    ours = GaussianMixture(3, covariance_type=covariance_type, tol=1e-6, **init).fit(X, sample_weight=counts)
    assert_same_fit(ours, ref, X)
    assert_rel(ours.score(X), ref.score(X))


def test_zero_sample_weight_equals_dropping_rows():
    X = blobs(4)
    w = np.ones(len(X))
    w[::5] = 0.0
    init = explicit_init(X, 3, "full", seed=5)
    ref = SkGaussianMixture(3, tol=1e-6, **init).fit(X[w > 0])
    ours = GaussianMixture(3, tol=1e-6, **init)
    labels = ours.fit_predict(X, sample_weight=w)
    assert_same_fit(ours, ref, X)
    assert labels.shape == (len(X),)
    np.testing.assert_array_equal(labels, ref.predict(X))


@pytest.mark.parametrize("init_params", ["random", "random_from_data", "k-means++"])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_random_inits_draw_what_sklearn_draws(init_params, covariance_type):
    X = iris()
    kw = dict(covariance_type=covariance_type, init_params=init_params, random_state=5, max_iter=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkGaussianMixture(3, **kw).fit(X)
        ours = GaussianMixture(3, **kw).fit(X)
    assert ours.n_iter_ == ref.n_iter_
    assert_rel(ours.means_, ref.means_, 1e-6)
    assert_rel(ours.weights_, ref.weights_, 1e-6)
    # the first lower bound sits at a start with 1e-6 covariances: compare the rest tightly
    assert_rel(ours.lower_bounds_[0], ref.lower_bounds_[0], 1e-6)
    assert_rel(ours.lower_bounds_[1:], ref.lower_bounds_[1:], 1e-9)


def test_n_init_keeps_best_and_reports_every_start():
    X = iris()
    kw = dict(init_params="random", random_state=0, n_init=3, max_iter=300)
    ref = SkGaussianMixture(3, **kw).fit(X)
    ours = GaussianMixture(3, **kw).fit(X)
    assert len(ours.init_scores_) == 3
    assert ours.lower_bound_ == max(ours.init_scores_)
    assert_same_fit(ours, ref, X)
    assert len(set(np.round(ours.init_scores_, 8))) > 1  # the starts did differ


def test_kmeans_init_reaches_sklearns_optimum_on_separated_blobs():
    X = blobs(7)
    ref = SkGaussianMixture(3, random_state=0, tol=1e-8).fit(X)
    ours = GaussianMixture(3, random_state=0, tol=1e-8).fit(X)
    order_r, order_o = np.argsort(ref.means_[:, 0]), np.argsort(ours.means_[:, 0])
    assert_rel(ours.means_[order_o], ref.means_[order_r], 1e-5)
    assert_rel(ours.lower_bound_, ref.lower_bound_, 1e-8)


def test_unconverged_run_warns_and_matches_sklearn_after_two_steps():
    X = iris()
    init = explicit_init(X, 3, "full", seed=1)
    with pytest.warns(ConvergenceWarning):
        ref = SkGaussianMixture(3, max_iter=2, **init).fit(X)
    with pytest.warns(ConvergenceWarning):
        ours = GaussianMixture(3, max_iter=2, **init).fit(X)
    assert not ours.converged_ and ours.n_iter_ == 2
    assert_same_fit(ours, ref, X)


def test_warm_start_continues_like_sklearn():
    X = blobs(2)
    init = explicit_init(X, 3, "diag", seed=2)
    kw = dict(covariance_type="diag", max_iter=3, warm_start=True, **init)
    ref, ours = SkGaussianMixture(3, **kw), GaussianMixture(3, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(3):
            ref.fit(X)
            ours.fit(X)
            assert_same_fit(ours, ref, X)


def test_max_iter_zero_returns_the_start():
    X = iris()
    init = explicit_init(X, 3, "full", seed=4)
    ours = GaussianMixture(3, max_iter=0, **init).fit(X)
    assert ours.n_iter_ == 0 and not ours.converged_
    assert_rel(ours.means_, init["means_init"], 1e-12)
    assert_rel(ours.precisions_, init["precisions_init"], 1e-10)
    assert_rel(ours.covariances_, np.linalg.inv(init["precisions_init"]), 1e-9)


def test_sample_matches_sklearn():
    X = blobs(3)
    for ct in TYPES:
        init = explicit_init(X, 3, ct, seed=6)
        ref = SkGaussianMixture(3, covariance_type=ct, random_state=11, **init).fit(X)
        ours = GaussianMixture(3, covariance_type=ct, random_state=11, **init).fit(X)
        Xs_r, y_r = ref.sample(40)
        Xs_o, y_o = ours.sample(40)
        np.testing.assert_array_equal(y_o, y_r)
        assert_rel(Xs_o, Xs_r, 1e-6, atol=1e-9)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_model_log_likelihood_and_posterior_equal_scipy(covariance_type):
    """The Pyro model's exact E-step against scipy's multivariate normal densities."""
    X = blobs(5)[::4]
    n, d = X.shape
    k = 3
    init = explicit_init(X, k, covariance_type, seed=8)
    est = GaussianMixture(k, covariance_type=covariance_type, max_iter=0, **init).fit(X)
    covs = {"full": lambda c: c, "tied": lambda c: np.stack([c] * k),
            "diag": lambda c: np.stack([np.diag(v) for v in c]),
            "spherical": lambda c: np.stack([v * np.eye(d) for v in c])}[covariance_type](est.covariances_)
    logp = np.stack([np.log(w) + multivariate_normal(m, c).logpdf(X)
                     for w, m, c in zip(est.weights_, est.means_, covs)], axis=1)
    Xt = torch.tensor(X)
    inv = torch.tensor(est.precisions_cholesky_)
    pyro.param("weights", torch.tensor(est.weights_), constraint=pyro.distributions.constraints.simplex)
    pyro.param("means", torch.tensor(est.means_))
    pyro.param("inv_scale", inv.transpose(-1, -2) if covariance_type in ("full", "tied") else inv,
               constraint=pyroem.models.gaussian.densities.INV_SCALE_CONSTRAINTS[covariance_type])
    ll = pyroem.log_likelihood(gmm_model, Xt, k, covariance_type)
    assert_rel(float(ll.detach()), logsumexp(logp, axis=1).sum(), 1e-10)
    post = pyroem.posterior(gmm_model, Xt, k, covariance_type)["z"]
    assert_rel(post.numpy(), np.exp(logp - logsumexp(logp, axis=1, keepdims=True)), 1e-8, atol=1e-12)


def test_model_with_engine_and_closed_form_updates_is_sklearn_em():
    X = iris()
    init = explicit_init(X, 3, "full", seed=9)
    ref = SkGaussianMixture(3, max_iter=5, tol=0, **init)
    with pytest.warns(ConvergenceWarning):
        ref.fit(X)
    Xt = torch.tensor(X)
    pyro.param("weights", torch.tensor(init["weights_init"]), constraint=pyro.distributions.constraints.simplex)
    pyro.param("means", torch.tensor(init["means_init"]))
    prec = torch.tensor(init["precisions_init"])
    inv = torch.linalg.cholesky(prec.flip(-1, -2)).flip(-1, -2).transpose(-1, -2)  # L with LᵀL = P
    pyro.param("inv_scale", inv, constraint=pyro.distributions.constraints.lower_cholesky)
    em = pyroem.EM(gmm_model, updates=GMMUpdates(reg_covar=1e-6))
    lls = [em.step(Xt, 3) / len(X) for _ in range(5)]
    assert_rel(lls, ref.lower_bounds_, 1e-9)
    assert_rel(em.params["means"].numpy(), ref.means_, 1e-9)


def test_components_distribution_scores_given_labels():
    X = blobs(6)[:30]
    init = explicit_init(X, 3, "full", seed=10)
    est = GaussianMixture(3, max_iter=0, **init).fit(X)
    z = torch.tensor(np.arange(30) % 3)
    d = pyroem.models.gaussian.densities.GaussianComponents(
        torch.tensor(est.means_), torch.tensor(est.precisions_cholesky_).transpose(-1, -2), "full", z)
    expected = [multivariate_normal(est.means_[c], est.covariances_[c]).logpdf(x) for x, c in zip(X, z.numpy())]
    assert_rel(d.log_prob(torch.tensor(X)).numpy(), expected, 1e-10)
    assert d.sample().shape == (30, 3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(8, 30), d=st.integers(1, 3), k=st.integers(1, 3),
       covariance_type=st.sampled_from(TYPES), init_params=st.sampled_from(["kmeans", "random"]))
def test_history_never_decreases(seed, n, d, k, covariance_type, init_params):
    """Exact EM (reg_covar=0) never lowers the log-likelihood, up to rounding."""
    X = np.random.RandomState(seed).randn(n, d) * np.random.RandomState(seed + 1).uniform(0.1, 10)
    est = GaussianMixture(k, covariance_type=covariance_type, init_params=init_params, reg_covar=0.0,
                          random_state=seed, max_iter=25, tol=0.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X)
    except ValueError as err:  # a component collapsed onto too few points: the M-step is undefined
        assume("ill-defined empirical covariance" not in str(err))
        raise
    h = np.asarray(est.history_)
    assert np.all(np.isfinite(h))
    # A component collapsed onto one point (variance ~1e-13 of the data's) makes the likelihood
    # unbounded and its values rounding noise: no monotonicity to check there.
    variances = est.covariances_ if covariance_type != "full" else np.linalg.eigvalsh(est.covariances_)
    assume(np.min(variances) > 1e-8 * X.var())
    assert np.all(np.diff(h) >= -1e-9 * np.maximum(1.0, np.abs(h[1:])))


BAD = {
    "nan": (dict(), lambda X: np.where(np.arange(X.size).reshape(X.shape) == 3, np.nan, X), "NaN"),
    "inf": (dict(), lambda X: np.where(np.arange(X.size).reshape(X.shape) == 3, np.inf, X), "infinity"),
    "1-D": (dict(), lambda X: X[:, 0], "Expected 2D array"),
    "3-D": (dict(), lambda X: X[None], "Expected 2D array"),
    "strings": (dict(), lambda X: X.astype(str), "real numbers"),
    "one row": (dict(n_components=1), lambda X: X[:1], "at least 2"),
    "k > n": (dict(n_components=50), lambda X: X[:10], "n_samples >= n_components"),
    "k = 0": (dict(n_components=0), None, "n_components"),
    "k < 0": (dict(n_components=-2), None, "n_components"),
    "k float": (dict(n_components=2.5), None, "n_components"),
    "reg_covar < 0": (dict(reg_covar=-1e-3), None, "reg_covar"),
    "tol < 0": (dict(tol=-1.0), None, "tol"),
    "max_iter < 0": (dict(max_iter=-1), None, "max_iter"),
    "n_init = 0": (dict(n_init=0), None, "n_init"),
    "covariance_type": (dict(covariance_type="block"), None, "covariance_type"),
    "init_params": (dict(init_params="kmedoids"), None, "init_params"),
    "random_state": (dict(random_state="seed"), None, "random_state"),
    "dtype": (dict(dtype="int64"), None, "dtype"),
    "weights_init sum": (dict(weights_init=[0.2, 0.2]), None, "weights_init"),
    "weights_init shape": (dict(weights_init=[0.2, 0.3, 0.5]), None, "weights_init"),
    "means_init shape": (dict(means_init=np.zeros((2, 5))), None, "means_init"),
    "precisions_init not PD": (dict(precisions_init=-np.stack([np.eye(4)] * 2)), None, "precisions_init"),
    "precisions_init shape": (dict(precisions_init=np.ones((2, 4))), None, "precisions_init"),
    "diag precisions <= 0": (dict(covariance_type="diag", precisions_init=np.zeros((2, 4))), None, "precisions_init"),
    "chunk_size = 0": (dict(chunk_size=0), None, "chunk_size"),
    "chunk_size float": (dict(chunk_size=2.5), None, "chunk_size"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_value_error(case):
    kwargs, transform, match = BAD[case]
    X = iris()
    if transform is not None:
        X = transform(X)
    params = dict(n_components=2)
    params.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**params).fit(X)


def test_bad_sample_weight_and_predict_input():
    X = iris()
    for w, match in [(-np.ones(len(X)), "non-negative"), (np.ones(3), "shape"),
                     (np.zeros(len(X)), "zero for every sample"), (np.full(len(X), np.nan), "NaN")]:
        with pytest.raises(ValueError, match=match):
            GaussianMixture(2).fit(X, sample_weight=w)
    est = GaussianMixture(2)
    for method in (est.predict, est.predict_proba, est.score, est.score_samples):
        with pytest.raises(NotFittedError):
            method(X)
    with pytest.raises(NotFittedError):
        est.sample(3)
    est.fit(X)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :3])
    with pytest.raises(ValueError, match="n_samples"):
        est.sample(0)
    with pytest.raises(ValueError, match="ill-defined"):  # a singleton component without reg_covar
        GaussianMixture(2, reg_covar=0.0, means_init=[[0, 0, 0, 0], [50, 50, 50, 50]]).fit(
            np.vstack([X, np.full((1, 4), 50.0)]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_degenerate_data_gives_finite_parameters(dtype, covariance_type):
    same = np.full((25, 3), 7.25, dtype=dtype)
    est = GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(same)
    for attr in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(est, attr))), attr
    assert_rel(est.weights_.sum(), 1.0, 1e-5)
    assert_rel(est.means_[np.argmax(est.weights_)], np.full(3, 7.25), 1e-6)
    assert np.all(est.covariances_ > 0) if covariance_type in ("diag", "spherical") else \
        np.all(np.linalg.eigvalsh(est.covariances_) > 0)
    # an empty component: a start far from every point
    X = np.random.RandomState(0).randn(30, 3).astype(dtype)
    est = GaussianMixture(2, covariance_type=covariance_type, means_init=[[0, 0, 0], [1e3, 1e3, 1e3]],
                          random_state=0).fit(X)
    for attr in ("weights_", "means_", "covariances_", "precisions_"):
        assert np.all(np.isfinite(getattr(est, attr))), attr
    assert est.weights_.min() < 1e-6
    assert np.all(np.isfinite(est.score_samples(X)))


@pytest.mark.parametrize("covariance_type", TYPES)
def test_float32_and_torch_input(covariance_type):
    X = blobs(8)
    init = explicit_init(X, 3, covariance_type, seed=12)
    ref = SkGaussianMixture(3, covariance_type=covariance_type, tol=1e-4, **init).fit(X)
    t64 = GaussianMixture(3, covariance_type=covariance_type, tol=1e-4, **init).fit(torch.tensor(X))
    assert t64.means_.dtype == np.float64
    assert_same_fit(t64, ref, X)
    for data in (X.astype(np.float32), torch.tensor(X, dtype=torch.float32)):
        f32 = GaussianMixture(3, covariance_type=covariance_type, tol=1e-4, **init).fit(data)
        assert f32.means_.dtype == np.float32 and f32.covariances_.dtype == np.float32
        assert_rel(f32.means_, ref.means_, 1e-4, atol=1e-5)
        assert_rel(f32.covariances_, ref.covariances_, 1e-3, atol=1e-5)
        assert_rel(f32.score(X), ref.score(X), 1e-5)
        assert np.mean(f32.predict(data) == ref.predict(X)) > 0.99
    as64 = GaussianMixture(3, covariance_type=covariance_type, tol=1e-4, dtype=torch.float64, **init)
    assert as64.fit(X.astype(np.float32)).means_.dtype == np.float64


def test_device_argument():
    X = torch.tensor(iris())
    est = GaussianMixture(2, device="cpu", random_state=0).fit(X)
    assert est._fit_device == torch.device("cpu")
    if torch.cuda.is_available():
        gpu = GaussianMixture(2, device="cuda", random_state=0).fit(X)
        assert gpu._fit_device.type == "cuda"
        assert_rel(gpu.means_, est.means_, 1e-8)


def test_one_component_matches_sklearn():
    X = blobs(9)
    w = np.random.RandomState(1).randint(1, 4, size=len(X))
    for ct in TYPES:
        ref = SkGaussianMixture(1, covariance_type=ct).fit(np.repeat(X, w, axis=0))
        ours = GaussianMixture(1, covariance_type=ct).fit(X, sample_weight=w)
        assert_same_fit(ours, ref, X)
        assert np.all(ours.predict(X) == 0)


def test_estimator_protocol():
    X = iris()
    est = GaussianMixture(3, covariance_type="diag", random_state=0, dtype=torch.float64)
    copy = clone(est)
    assert copy.get_params() == est.get_params()
    assert "covariance_type='diag'" in repr(est)
    assert est.set_params(tol=1e-4) is est and est.tol == 1e-4
    with pytest.raises(ValueError):
        est.set_params(bogus=1)
    assert est.fit(X, y=np.zeros(len(X))) is est
    np.testing.assert_array_equal(clone(est).fit_predict(X), est.predict(X))
    assert GaussianMixture.model is gmm_model


@pytest.mark.parametrize("covariance_type", TYPES)
def test_chunked_e_steps_give_sklearns_fit(covariance_type):
    """Statistics summed over chunks of 7 rows (and features rebuilt per chunk) = one full pass."""
    X = blobs(11)
    w = np.random.RandomState(3).randint(1, 4, size=len(X))
    init = explicit_init(X, 3, covariance_type, seed=13)
    ref = SkGaussianMixture(3, covariance_type=covariance_type, tol=1e-5, max_iter=200, **init)
    ref.fit(np.repeat(X, w, axis=0))
    ours = GaussianMixture(3, covariance_type=covariance_type, tol=1e-5, max_iter=200, chunk_size=7, **init)
    labels = ours.fit_predict(X, sample_weight=w)
    assert_same_fit(ours, ref, X)
    np.testing.assert_array_equal(labels, ref.predict(X))


def test_features_built_in_row_chunks_give_sklearns_fit(monkeypatch):
    """With no room to cache the per-row features, they are rebuilt in chunks of a few rows."""
    from pyroem.models.gaussian import densities
    monkeypatch.setattr(densities, "_CACHE_ELEMENTS", 0)
    monkeypatch.setattr(densities, "_CHUNK_ELEMENTS", 50)
    X = iris()
    init = explicit_init(X, 3, "full", seed=14)
    ref = SkGaussianMixture(3, tol=1e-5, max_iter=200, **init).fit(X)
    ours = GaussianMixture(3, tol=1e-5, max_iter=200, **init).fit(X)
    assert_same_fit(ours, ref, X)
    assert_rel(ours.score_samples(X), ref.score_samples(X), 1e-9)


def test_engine_fit_with_precomputed_features_is_sklearn_em():
    """``gmm_model`` given ``GaussianFeatures`` of its data: the same EM steps as scikit-learn."""
    from pyroem.models.gaussian.densities import GaussianFeatures
    X = blobs(12)
    init = explicit_init(X, 3, "tied", seed=15)
    ref = SkGaussianMixture(3, covariance_type="tied", max_iter=4, tol=0, **init)
    with pytest.warns(ConvergenceWarning):
        ref.fit(X)
    Xt = torch.tensor(X)
    pyro.param("weights", torch.tensor(init["weights_init"]), constraint=pyro.distributions.constraints.simplex)
    pyro.param("means", torch.tensor(init["means_init"]))
    inv = torch.linalg.cholesky(torch.tensor(init["precisions_init"]).flip(-1, -2)).flip(-1, -2).T
    pyro.param("inv_scale", inv, constraint=pyro.distributions.constraints.lower_cholesky)
    em = pyroem.EM(gmm_model, updates=GMMUpdates(reg_covar=1e-6))
    args = (Xt, 3, "tied", None, "", GaussianFeatures(Xt, "tied"))
    lls = [em.step(*args) / len(X) for _ in range(4)]
    assert_rel(lls, ref.lower_bounds_, 1e-9)
    assert_rel(em.params["means"].numpy(), ref.means_, 1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_apart_clusters_keep_exact_log_likelihood_and_posterior(dtype):
    """Components thousands of standard deviations away from a point (underflowing ``exp``):
    log p(x) and the posterior still equal scipy's float64 values to the dtype's rounding."""
    rs = np.random.RandomState(4)
    centres = np.array([[0.0, 0.0], [60.0, 0.0], [0.0, 60.0], [1.0, 1.5]])
    X = np.vstack([c + rs.randn(25, 2) * s for c, s in zip(centres, [1.0, 0.5, 2.0, 0.3])])
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    covs = np.stack([np.eye(2) * s ** 2 for s in [1.0, 0.5, 2.0, 0.3]])
    logp = np.stack([np.log(w) + multivariate_normal(m, c).logpdf(X) for w, m, c in zip(weights, centres, covs)], 1)
    assert logp.min() - logp.max(1).max() < -1000  # far below exp's underflow in both dtypes
    Xt = torch.tensor(X, dtype=dtype)
    pyro.param("weights", torch.tensor(weights, dtype=dtype), constraint=pyro.distributions.constraints.simplex)
    pyro.param("means", torch.tensor(centres, dtype=dtype))
    inv = torch.tensor(np.stack([np.eye(2) / s for s in [1.0, 0.5, 2.0, 0.3]]), dtype=dtype)
    pyro.param("inv_scale", inv, constraint=pyro.distributions.constraints.lower_cholesky)
    # probabilities below e^-60 (float32) / e^-600 (float64) of a row's largest may be raised to that level
    rtol, atol = (1e-5, 1e-25) if dtype == torch.float32 else (1e-12, 1e-250)
    expect = pyroem.EM(gmm_model, updates=GMMUpdates()).e_step(Xt, 4)
    assert_rel(float(expect.log_likelihood), logsumexp(logp, axis=1).sum(), rtol)
    post = expect.marginal("z")
    assert_rel(post.double().numpy(), np.exp(logp - logsumexp(logp, axis=1, keepdims=True)), rtol, atol=atol)
    assert_rel(float(pyroem.log_likelihood(gmm_model, Xt, 4).detach()), logsumexp(logp, axis=1).sum(), rtol)


def test_component_on_one_far_point_has_exactly_reg_covar_in_chunks():
    """A component locked onto one isolated point: its scatter is taken about its mean (not the
    origin), so its covariance is reg_covar to 1e-15, as scikit-learn's direct formula gives."""
    rs = np.random.RandomState(21)
    X = np.vstack([rs.randn(60, 3), [[50.0, -30.0, 40.0]]])
    w = rs.randint(1, 3, size=len(X))
    init = {"means_init": [[0.0, 0.0, 0.0], [50.0, -30.0, 40.0]], "random_state": 0}
    ref = SkGaussianMixture(2, max_iter=20, **init).fit(np.repeat(X, w, axis=0))
    ours = GaussianMixture(2, max_iter=20, chunk_size=16, **init).fit(X, sample_weight=w)
    np.testing.assert_allclose(ours.covariances_[1], 1e-6 * np.eye(3), rtol=1e-6, atol=1e-15)
    assert_same_fit(ours, ref, X)


def test_callback_sees_every_step_and_can_end_a_run():
    """``callback(n_iter, lower_bound, params)`` at each step: the lower bounds scikit-learn
    reports, each with the parameters (data coordinates) it is the mean log-likelihood at (scipy);
    a true return ends the run."""
    from scipy.stats import multivariate_normal

    X = iris()
    seen = []
    ours = GaussianMixture(3, random_state=0, callback=lambda n, lb, p: seen.append((n, lb, p))).fit(X)
    ref = SkGaussianMixture(3, random_state=0).fit(X)
    assert [n for n, _, _ in seen] == list(range(1, ours.n_iter_ + 1))
    assert_rel([lb for _, lb, _ in seen], ours.lower_bounds_, 1e-12)
    assert_rel(ours.lower_bounds_[-1], ref.lower_bound_, 1e-9)
    for _, lb, p in seen[1:]:
        w, m, c = (p[k].cpu().numpy() for k in ("weights", "means", "covariances"))
        dens = sum(w[k] * multivariate_normal(m[k], c[k]).pdf(X) for k in range(3))
        assert_rel(np.log(dens).mean(), lb, 1e-10)
    with pytest.warns(ConvergenceWarning):
        stopped = GaussianMixture(3, random_state=0, callback=lambda n, lb, p: n == 2).fit(X)
    assert stopped.n_iter_ == 2 and not stopped.converged_
    assert_rel(stopped.lower_bounds_, ours.lower_bounds_[:2], 1e-12)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_params_keeps_the_means_given_as_hmmlearn_does(covariance_type):
    """``params="wc"`` with ``means_init``: the means stay; weights and covariances are EM's with
    the scatter taken about the kept means (numpy by hand, converged)."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    X = iris()
    means = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.5, 2.0]])
    ours = GaussianMixture(3, covariance_type=covariance_type, means_init=means, params="wc", tol=1e-12,
                           max_iter=2000, reg_covar=1e-6).fit(X)
    np.testing.assert_allclose(ours.means_, means, rtol=1e-12)
    # numpy: EM with the means held, from the estimator's own start (one-hot k-means init replaced
    # by the responsibilities at the given means with identity covariances)
    d = X.shape[1]
    w = np.full(3, 1 / 3)
    cov = np.stack([np.cov(X.T)] * 3)
    for _ in range(3000):
        logp = np.stack([np.log(w[k]) + multivariate_normal(means[k], cov[k]).logpdf(X) for k in range(3)], 1)
        r = np.exp(logp - logsumexp(logp, axis=1, keepdims=True))
        nk = r.sum(0)
        w = nk / nk.sum()
        full = np.stack([(r[:, k, None] * (X - means[k])).T @ (X - means[k]) / nk[k] for k in range(3)])
        if covariance_type == "full":
            cov = full + 1e-6 * np.eye(d)
        elif covariance_type == "diag":
            cov = np.stack([np.diag(np.diag(c)) for c in full]) + 1e-6 * np.eye(d)
        elif covariance_type == "spherical":
            cov = np.stack([np.eye(d) * np.trace(c) / d for c in full]) + 1e-6 * np.eye(d)
        else:
            cov = np.stack([(nk[:, None, None] * full).sum(0) / nk.sum()] * 3) + 1e-6 * np.eye(d)
    np.testing.assert_allclose(np.sort(ours.weights_), np.sort(w), rtol=1e-6)
    order = np.argsort(ours.means_[:, 0])
    ref = {"full": cov, "diag": np.stack([np.diag(c) for c in cov]), "spherical": np.stack([c[0, 0] for c in cov]),
           "tied": cov[0]}[covariance_type]
    got = ours.covariances_ if covariance_type == "tied" else ours.covariances_[order]
    np.testing.assert_allclose(got, ref if covariance_type == "tied" else ref[np.argsort(means[:, 0])], rtol=1e-5)
    with pytest.raises(ValueError, match="params must be a string"):
        GaussianMixture(3, params="wx").fit(X)


def test_bootstrap_refits_all_replicates_at_once_and_gives_textbook_standard_errors():
    """``GaussianMixture.bootstrap``: 400 data sets simulated from a fit of two well-separated
    components, refitted in one batched EM, give standard errors within Monte Carlo error (about
    5% at n = 400) of the textbook ones for separated components: sqrt(Σ_kk / (N w_k)) for a
    mean, sqrt(w (1 - w) / N) for a weight."""
    g = np.random.default_rng(0)
    X = np.vstack([g.multivariate_normal([0, 0], [[1, 0.3], [0.3, 1]], 300),
                   g.multivariate_normal([6, 6], [[2, 0], [0, 0.5]], 200)])
    gm = GaussianMixture(2, random_state=0).fit(X)
    boot = gm.bootstrap(X, n=400, random_state=1)
    assert boot.estimates["means"].shape == (400, 2, 2) and boot.estimates["covariances"].shape == (400, 2, 2, 2)
    se = boot.standard_errors()
    for k in range(2):
        textbook = np.sqrt(np.diag(gm.covariances_[k]) / (len(X) * gm.weights_[k]))
        np.testing.assert_allclose(se["means"][k], textbook, rtol=0.15)
    np.testing.assert_allclose(se["weights"], np.sqrt(gm.weights_ * (1 - gm.weights_) / len(X)), rtol=0.15)
    low, high = boot.conf_int(0.05)["means"]
    assert isinstance(low, np.ndarray) and ((low < gm.means_) & (gm.means_ < high)).all()
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        gm.bootstrap(X, n=1)
    with pytest.raises(NotFittedError):
        GaussianMixture(2).bootstrap(X)
