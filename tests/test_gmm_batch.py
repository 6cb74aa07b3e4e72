"""``GaussianMixture.fit_batch``: B independent mixtures in one EM, each against scikit-learn."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGMM

from pyroem.models import GaussianMixture

K = 3


def datasets(b=4, n=90, d=2, seed=0):
    rng = np.random.RandomState(seed)
    centers = np.array([[0.0, 0.0], [4.0, 0.5], [0.5, 4.0]])[:, :d]
    return np.stack([np.concatenate([rng.randn(n // 3, d) * (0.6 + 0.3 * i) + c for i, c in enumerate(centers)])
                     + rng.randn(d) for _ in range(b)])


def sk_start(X, covariance_type, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s = SkGMM(K, covariance_type=covariance_type, max_iter=1, random_state=seed).fit(X)
    return dict(weights_init=s.weights_, means_init=s.means_, precisions_init=s.precisions_)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_each_fit_matches_scikit_learn_from_the_same_start(covariance_type):
    X = datasets()
    inits = sk_start(X[0], covariance_type)
    fits = GaussianMixture(K, covariance_type=covariance_type, tol=1e-6, max_iter=300, **inits).fit_batch(X)
    assert len(fits) == len(X)
    iters = []
    for b, fit in enumerate(fits):
        ref = SkGMM(K, covariance_type=covariance_type, tol=1e-6, max_iter=300, **inits).fit(X[b])
        assert fit.n_iter_ == ref.n_iter_ and fit.converged_
        np.testing.assert_allclose(fit.lower_bound_, ref.lower_bound_, rtol=1e-9)
        np.testing.assert_allclose(fit.means_, ref.means_, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(fit.covariances_, ref.covariances_, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(fit.precisions_cholesky_, ref.precisions_cholesky_, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(fit.score(X[b]), ref.score(X[b]), rtol=1e-9)
        np.testing.assert_array_equal(fit.predict(X[b]), ref.predict(X[b]))
        np.testing.assert_allclose(fit.bic(X[b]), ref.bic(X[b]), rtol=1e-9)
        assert np.all(np.diff(fit.history_) >= -1e-9 * np.abs(fit.history_[:-1]))
        iters.append(fit.n_iter_)
    assert len(set(iters)) > 1, "the datasets should stop after different numbers of steps"


def test_per_dataset_starts_and_a_list_of_arrays():
    X = datasets(b=3, seed=1)
    starts = [sk_start(x, "full", seed=i) for i, x in enumerate(X)]
    per = {key: np.stack([s[key] for s in starts]) for key in starts[0]}
    fits = GaussianMixture(K, tol=1e-8, max_iter=500, **per).fit_batch(list(X))
    for b, fit in enumerate(fits):
        ref = SkGMM(K, tol=1e-8, max_iter=500, **starts[b]).fit(X[b])
        np.testing.assert_allclose(fit.weights_, ref.weights_, rtol=1e-7)
        np.testing.assert_allclose(fit.score(X[b]), ref.score(X[b]), rtol=1e-9)


def test_zero_weight_padding_equals_the_unpadded_fit():
    X = datasets(b=2, n=90, seed=2)
    short = X[1, :60]
    padded = X.copy()
    padded[1, 60:] = 1e3  # far-away padding rows that weight 0 must silence
    weights = np.ones(X.shape[:2])
    weights[1, 60:] = 0.0
    inits = sk_start(short, "diag")
    fits = GaussianMixture(K, covariance_type="diag", tol=1e-8, max_iter=500, **inits).fit_batch(
        padded, sample_weight=weights)
    ref = SkGMM(K, covariance_type="diag", tol=1e-8, max_iter=500, **inits).fit(short)
    np.testing.assert_allclose(fits[1].means_, ref.means_, rtol=1e-7)
    np.testing.assert_allclose(fits[1].lower_bound_, ref.lower_bound_, rtol=1e-9)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_initialisations_are_seeded_and_reach_the_true_clusters(init_params):
    X = datasets(b=3, seed=3)
    est = GaussianMixture(K, init_params=init_params, random_state=7, n_init=2, max_iter=300)
    a, b = est.fit_batch(X), est.fit_batch(X)
    for fa, fb, x in zip(a, b, X):
        np.testing.assert_array_equal(fa.means_, fb.means_)
        assert len(fa.init_scores_) == 2 and fa.lower_bound_ == pytest.approx(max(fa.init_scores_))
        ref = SkGMM(K, n_init=5, random_state=0).fit(x)
        slack = 0.3 if init_params == "random" else 0.05  # random responsibilities start far off
        assert fa.score(x) >= ref.score(x) - slack


def test_float32_agrees_with_float64():
    X = datasets(b=2, seed=4)
    inits = sk_start(X[0], "full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        f64 = GaussianMixture(K, tol=0.0, max_iter=15, **inits).fit_batch(X)
        f32 = GaussianMixture(K, tol=0.0, max_iter=15, dtype=torch.float32, **inits).fit_batch(X.astype(np.float32))
    for a, b, x in zip(f64, f32, X):
        assert a.score(x) == pytest.approx(b.score(x), abs=1e-4)


def test_unconverged_fits_are_reported():
    X = datasets(b=2, seed=5)
    with pytest.warns(ConvergenceWarning, match="2 of 2 fits did not converge"):
        fits = GaussianMixture(K, tol=0.0, max_iter=3, **sk_start(X[0], "full")).fit_batch(X)
    assert [f.n_iter_ for f in fits] == [3, 3] and not any(f.converged_ for f in fits)


@pytest.mark.parametrize("X, kwargs, message", [
    (np.zeros((5, 2)), {}, "3-D array"),
    ([np.zeros((9, 2)), np.zeros((8, 2))], {}, "pad the shorter ones"),
    ([], {}, "empty list"),
    (np.full((2, 9, 2), np.nan), {}, "NaN or infinity"),
    (np.zeros((2, 2, 2)), {}, "n_samples >= n_components"),
    (np.random.RandomState(0).randn(2, 9, 2), {"sample_weight": np.ones((2, 8))}, "sample_weight must have shape"),
    (np.random.RandomState(0).randn(2, 9, 2), {"sample_weight": -np.ones((2, 9))}, "finite and >= 0"),
    (np.array([[["a", "b"]] * 9] * 2), {}, "real numbers"),
])
def test_bad_batches_are_refused(X, kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(K).fit_batch(X, **kwargs)


def test_per_dataset_init_of_the_wrong_shape_is_refused():
    X = datasets(b=2)
    with pytest.raises(ValueError, match="means_init must have shape"):
        GaussianMixture(K, means_init=np.zeros((3, K, 2))).fit_batch(X)


def test_a_collapsed_dataset_is_named_in_the_error():
    """Dataset 1 holds two points repeated: without reg_covar its components' covariances are
    singular, and the error says which dataset, in scikit-learn's words."""
    rs = np.random.RandomState(0)
    X = np.stack([rs.randn(20, 2), np.repeat(rs.randn(2, 2), 10, axis=0)])
    with pytest.raises(ValueError, match=r"ill-defined empirical covariance.*\(datasets \[1\]\)"):
        GaussianMixture(2, reg_covar=0.0, random_state=0).fit_batch(X)
