"""Properties every fit must have, on random mixtures and random HMMs (hypothesis, derandomized).

- EM never lowers the log-likelihood (``history_`` non-decreasing up to 1e-9 relative rounding);
- posteriors are distributions and equal scikit-learn's / hmmlearn's at the same parameters;
- the fit does not depend on the order of the data points (mixtures) or of the sequences (HMMs);
- float32 and float64 give the same score from the same start;
- the same ``random_state`` gives the same fit.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hmmlearn import hmm as hmmlearn_hmm
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from pyroem.models import CategoricalHMM, GaussianHMM, GaussianMixture

COV_TYPES = ["full", "tied", "diag", "spherical"]
FEW = settings(max_examples=6, deadline=None)
SOME = settings(max_examples=10, deadline=None)


def assert_non_decreasing(history) -> None:
    h = np.asarray(history, dtype=np.float64)
    assert np.isfinite(h).all(), h
    assert (np.diff(h) >= -1e-9 * np.maximum(1.0, np.abs(h[1:]))).all(), h


# -- random mixtures -----------------------------------------------------------------------------------
@st.composite
def mixtures(draw, ct):
    """Data of a random well-separated mixture plus an explicit start near the truth."""
    seed = draw(st.integers(0, 2**20))
    k, d = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    n = draw(st.integers(20, 200))
    rs = np.random.RandomState(seed)
    centers = rs.randn(k, d) + 6.0 * np.arange(k)[:, None]
    z = np.r_[np.repeat(np.arange(k), 5), rs.randint(k, size=n - 5 * k)]  # every component has >= 5 points
    X = centers[z] + rs.randn(n, d) * rs.uniform(0.5, 1.5, size=k)[z, None]
    precisions = {"full": np.stack([np.eye(d)] * k), "tied": np.eye(d), "diag": np.ones((k, d)),
                  "spherical": np.ones(k)}[ct]
    init = dict(weights_init=np.full(k, 1.0 / k), means_init=centers + 0.3 * rs.randn(k, d),
                precisions_init=precisions)
    return X, k, ct, init, seed


def fit_gmm(X, k, ct, **kw) -> GaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: most runs stop at max_iter on purpose
        return GaussianMixture(k, covariance_type=ct, **kw).fit(X)


def sklearn_at(est: GaussianMixture) -> SkGaussianMixture:
    """scikit-learn's GaussianMixture holding ``est``'s fitted parameters."""
    sk = SkGaussianMixture(est.n_components, covariance_type=est.covariance_type)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        setattr(sk, name, np.asarray(getattr(est, name), dtype=np.float64))
    sk.n_features_in_ = est.means_.shape[1]
    return sk


@pytest.mark.parametrize("ct", COV_TYPES)
@SOME
@given(data=st.data())
def test_gmm_history_and_posteriors(ct, data):
    X, k, ct, init, _ = data.draw(mixtures(ct))
    est = fit_gmm(X, k, ct, reg_covar=0.0, tol=0.0, max_iter=15, **init)  # exact EM: no reg_covar
    assert_non_decreasing(est.history_)
    proba = est.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    sk = sklearn_at(est)
    np.testing.assert_allclose(proba, sk.predict_proba(X), atol=1e-9)
    np.testing.assert_allclose(est.score_samples(X), sk.score_samples(X), rtol=1e-10, atol=1e-10)
    assert est.history_[-1] == pytest.approx(sk.score(X), rel=1e-10)


@pytest.mark.parametrize("ct", COV_TYPES)
@FEW
@given(data=st.data(), perm_seed=st.integers(0, 1000))
def test_gmm_fit_ignores_row_order(ct, data, perm_seed):
    X, k, ct, init, _ = data.draw(mixtures(ct))
    perm = np.random.RandomState(perm_seed).permutation(len(X))
    a = fit_gmm(X, k, ct, max_iter=20, tol=1e-10, **init)
    b = fit_gmm(X[perm], k, ct, max_iter=20, tol=1e-10, **init)
    np.testing.assert_allclose(b.weights_, a.weights_, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(b.means_, a.means_, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(b.covariances_, a.covariances_, rtol=1e-7, atol=1e-8)
    assert b.score(X) == pytest.approx(a.score(X), rel=1e-9)
    np.testing.assert_array_equal(b.predict(X[perm]), a.predict(X)[perm])


@pytest.mark.parametrize("ct", COV_TYPES)
@FEW
@given(data=st.data())
def test_gmm_float32_score_matches_float64(ct, data):
    X, k, ct, init, _ = data.draw(mixtures(ct))
    a = fit_gmm(X, k, ct, max_iter=3, tol=0.0, **init)
    b = fit_gmm(X.astype(np.float32), k, ct, max_iter=3, tol=0.0, **init)
    assert b.means_.dtype == np.float32
    s64, s32 = a.score(X), b.score(X.astype(np.float32))
    assert abs(s32 - s64) <= 1e-4 * max(1.0, abs(s64)), (s32, s64)
    np.testing.assert_allclose(b.history_, a.history_, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ct", COV_TYPES)
@FEW
@given(data=st.data(), init_params=st.sampled_from(["kmeans", "k-means++", "random", "random_from_data"]))
def test_gmm_same_random_state_same_fit(ct, data, init_params):
    X, k, ct, _, seed = data.draw(mixtures(ct))
    a = fit_gmm(X, k, ct, init_params=init_params, random_state=seed, max_iter=10, n_init=2)
    b = fit_gmm(X, k, ct, init_params=init_params, random_state=seed, max_iter=10, n_init=2)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.history_ == b.history_ and a.init_scores_ == b.init_scores_


# -- random HMMs --------------------------------------------------------------------------------------
def sample_chain(rs, startprob, transmat, lengths) -> np.ndarray:
    states = []
    for length in lengths:
        s = [rs.choice(len(startprob), p=startprob)]
        for _ in range(length - 1):
            s.append(rs.choice(len(startprob), p=transmat[s[-1]]))
        states.extend(s)
    return np.asarray(states)


@st.composite
def hmms(draw, kind, ct=None):
    """Sequences from a random sticky HMM, plus a random explicit start (hmmlearn attribute names)."""
    seed = draw(st.integers(0, 2**20))
    k = draw(st.integers(2, 3))  # one state: see test_one_state_hmm_matches_hmmlearn
    lengths = draw(st.lists(st.integers(8, 20), min_size=2, max_size=4))
    rs = np.random.RandomState(seed)
    startprob = rs.dirichlet(np.ones(k))
    transmat = 0.7 * np.eye(k) + 0.3 * rs.dirichlet(np.ones(k), size=k)
    states = sample_chain(rs, startprob, transmat, lengths)
    states[: 3 * k] = np.repeat(np.arange(k), 3)  # every state emits at least 3 points
    start = dict(startprob_=rs.dirichlet(np.ones(k)), transmat_=rs.dirichlet(np.ones(k), size=k))
    if kind == "categorical":
        n_features = draw(st.integers(2, 4))
        emission = rs.dirichlet(np.ones(n_features), size=k)
        X = np.array([[rs.choice(n_features, p=emission[s])] for s in states])
        X[: n_features, 0] = np.arange(n_features)  # every symbol occurs
        start["emissionprob_"] = rs.dirichlet(np.ones(n_features) * 2.0, size=k)
        opts = dict(n_features=n_features)
    else:
        d = draw(st.integers(1, 2))
        means = 5.0 * np.arange(k)[:, None] + rs.randn(k, d)
        X = means[states] + rs.randn(len(states), d)
        start["means_"] = means + 0.3 * rs.randn(k, d)
        start["covars_"] = {"spherical": np.ones(k), "diag": np.ones((k, d)), "full": np.stack([np.eye(d)] * k),
                            "tied": np.eye(d)}[ct]
        opts = dict(covariance_type=ct, covars_prior=0.0)  # no prior: the update is exact EM
    return X, np.asarray(lengths), k, start, opts, seed


def make_hmm(kind, k, opts, start=None, **kw):
    cls = CategoricalHMM if kind == "categorical" else GaussianHMM
    est = cls(k, **opts, **kw, init_params="" if start else cls._codes)
    for name, value in (start or {}).items():
        setattr(est, name, np.array(value, copy=True))
    return est


def hmmlearn_at(kind, est):
    """hmmlearn's model holding ``est``'s parameters."""
    if kind == "categorical":
        ref = hmmlearn_hmm.CategoricalHMM(est.n_components, n_features=est.n_features)
        ref.emissionprob_ = est.emissionprob_
    else:
        ref = hmmlearn_hmm.GaussianHMM(est.n_components, covariance_type=est.covariance_type)
        ref.means_ = est.means_
        ref.covars_ = est._covars_
        ref.n_features = est.means_.shape[1]
    ref.startprob_, ref.transmat_ = est.startprob_, est.transmat_
    return ref


def hmm_params(kind, est):
    names = ["startprob_", "transmat_"] + (["emissionprob_"] if kind == "categorical" else ["means_", "covars_"])
    return {name: np.asarray(getattr(est, name)) for name in names}


KINDS = ["categorical", "gaussian"]
HMM_KINDS = [("categorical", None)] + [("gaussian", ct) for ct in COV_TYPES]
HMM_EXAMPLES = settings(max_examples=3, deadline=None)


@pytest.mark.parametrize("kind,ct", HMM_KINDS)
@HMM_EXAMPLES
@given(data=st.data())
def test_hmm_history_and_posteriors(kind, ct, data):
    X, lengths, k, start, opts, _ = data.draw(hmms(kind, ct))
    est = make_hmm(kind, k, opts, start, n_iter=8, tol=-np.inf).fit(X, lengths)
    assert len(est.history_) == 8
    assert_non_decreasing(est.history_)
    proba = est.predict_proba(X, lengths)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    ref = hmmlearn_at(kind, est)
    np.testing.assert_allclose(proba, ref.predict_proba(X, lengths), atol=1e-9)
    assert est.score(X, lengths) == pytest.approx(ref.score(X, lengths), rel=1e-10)


@pytest.mark.parametrize("kind,ct", HMM_KINDS)
@HMM_EXAMPLES
@given(data=st.data(), perm_seed=st.integers(0, 1000))
def test_hmm_fit_ignores_sequence_order(kind, ct, data, perm_seed):
    X, lengths, k, start, opts, _ = data.draw(hmms(kind, ct))
    seqs = np.split(X, np.cumsum(lengths)[:-1])
    order = np.random.RandomState(perm_seed).permutation(len(lengths))
    Xp, Lp = np.concatenate([seqs[i] for i in order]), lengths[order]
    a = make_hmm(kind, k, opts, start, n_iter=10, tol=-np.inf).fit(X, lengths)
    b = make_hmm(kind, k, opts, start, n_iter=10, tol=-np.inf).fit(Xp, Lp)
    pa, pb = hmm_params(kind, a), hmm_params(kind, b)
    for name in pa:
        np.testing.assert_allclose(pb[name], pa[name], rtol=1e-8, atol=1e-8, err_msg=name)
    assert b.score(X, lengths) == pytest.approx(a.score(X, lengths), rel=1e-10)
    np.testing.assert_allclose(b.history_, a.history_, rtol=1e-10)


@pytest.mark.parametrize("kind,ct", HMM_KINDS)
@HMM_EXAMPLES
@given(data=st.data())
def test_hmm_float32_score_matches_float64(kind, ct, data):
    X, lengths, k, start, opts, _ = data.draw(hmms(kind, ct))
    a = make_hmm(kind, k, opts, start, n_iter=3, tol=-np.inf).fit(X, lengths)
    b = make_hmm(kind, k, opts, start, n_iter=3, tol=-np.inf, dtype=torch.float32).fit(X, lengths)
    s64, s32 = a.score(X, lengths), b.score(X, lengths)
    assert abs(s32 - s64) <= 1e-4 * max(1.0, abs(s64)), (s32, s64)
    np.testing.assert_allclose(b.history_, a.history_, rtol=1e-4)


@pytest.mark.parametrize("kind,ct", HMM_KINDS)
@HMM_EXAMPLES
@given(data=st.data())
def test_hmm_same_random_state_same_fit(kind, ct, data):
    X, lengths, k, _, opts, seed = data.draw(hmms(kind, ct))
    opts.pop("covars_prior", None)  # random starts: keep hmmlearn's default prior against collapse
    a = make_hmm(kind, k, opts, random_state=seed, n_iter=5).fit(X, lengths)
    b = make_hmm(kind, k, opts, random_state=seed, n_iter=5).fit(X, lengths)
    pa, pb = hmm_params(kind, a), hmm_params(kind, b)
    for name in pa:
        np.testing.assert_array_equal(pb[name], pa[name], err_msg=name)
    assert a.history_ == b.history_


@pytest.mark.parametrize("kind", KINDS)
def test_one_state_hmm_matches_hmmlearn(kind):
    """K = 1: Baum-Welch reduces to fitting the emission distribution once; hmmlearn agrees."""
    rs = np.random.RandomState(0)
    if kind == "categorical":
        X, opts = rs.randint(0, 3, size=(30, 1)), dict(n_features=3)
        start = dict(startprob_=[1.0], transmat_=[[1.0]], emissionprob_=[[0.2, 0.3, 0.5]])
    else:
        X, opts = rs.randn(30, 2) + 1.0, dict(covariance_type="diag", covars_prior=0.0)
        start = dict(startprob_=[1.0], transmat_=[[1.0]], means_=[[0.0, 0.0]], covars_=[[1.0, 1.0]])
    est = make_hmm(kind, 1, opts, start, n_iter=3, tol=-np.inf).fit(X, [10, 20])
    if kind == "categorical":
        np.testing.assert_allclose(est.emissionprob_[0], np.bincount(X[:, 0], minlength=3) / 30, atol=1e-12)
    else:
        np.testing.assert_allclose(est.means_[0], X.mean(0), atol=1e-12)
        np.testing.assert_allclose(est._covars_[0], X.var(0), atol=1e-12)
    assert est.score(X, [10, 20]) == pytest.approx(hmmlearn_at(kind, est).score(X, [10, 20]), rel=1e-10)
