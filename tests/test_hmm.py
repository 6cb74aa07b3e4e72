"""CategoricalHMM / GaussianHMM against hmmlearn started from the same parameters."""
import warnings

import numpy as np
import pyro
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.distributions import constraints

hmmlearn_hmm = pytest.importorskip("hmmlearn.hmm")

import pyroem  # noqa: E402
from pyroem.models import CategoricalHMM, GaussianHMM, categorical_hmm_model  # noqa: E402
from pyroem.models.hmm import NotFittedError  # noqa: E402

K, F, D = 3, 4, 2
LENGTHS = {"one": None, "many": [70, 25, 55]}   # 150 samples either way


def _chain(rs):
    return rs.dirichlet(np.ones(K)), rs.dirichlet(np.ones(K), size=K)


def _set(model, **params):
    for name, value in params.items():
        setattr(model, name, np.array(value, copy=True))
    return model


def _categorical_case(seed=0):
    rs = np.random.RandomState(seed)
    sp, tm = _chain(rs)
    params = dict(startprob_=sp, transmat_=tm, emissionprob_=rs.dirichlet(np.ones(F), size=K))
    return rs.randint(0, F, size=(150, 1)), params


def _gaussian_case(covariance_type, seed=0):
    rs = np.random.RandomState(seed)
    sp, tm = _chain(rs)
    X = rs.randn(150, D) + np.repeat(rs.randn(5, D) * 3, 30, axis=0)
    a = rs.randn(K, D, D)
    covars = {
        "diag": rs.uniform(0.5, 2.0, size=(K, D)),
        "spherical": rs.uniform(0.5, 2.0, size=K),
        "full": a @ np.swapaxes(a, 1, 2) + np.eye(D),
        "tied": a[0] @ a[0].T + np.eye(D),
    }[covariance_type]
    return X, dict(startprob_=sp, transmat_=tm, means_=rs.randn(K, D) * 2, covars_=covars)


def _both(ours_cls, ref_cls, init, **kw):
    """Our estimator and hmmlearn's, same settings, same initial parameters, all steps run."""
    kw = {"n_components": K, "n_iter": 5, "tol": -np.inf, "init_params": "", **kw}
    return _set(ours_cls(**kw), **init), _set(ref_cls(**kw), **init)


def _covars(model):
    """hmmlearn keeps spherical variances tiled to (K, D) after a fit; compare one column."""
    c = np.asarray(model._covars_)
    return c[:, 0] if model.covariance_type == "spherical" and c.ndim == 2 else c


# -- Baum-Welch from identical parameters ------------------------------------------------------
@pytest.mark.parametrize("lengths", list(LENGTHS), ids=list(LENGTHS))
def test_categorical_baum_welch_matches_hmmlearn(lengths):
    X, params = _categorical_case()
    ours, ref = _both(CategoricalHMM, hmmlearn_hmm.CategoricalHMM, params)
    ours.fit(X, LENGTHS[lengths])
    ref.fit(X, LENGTHS[lengths])
    np.testing.assert_allclose(ours.monitor_.history, list(ref.monitor_.history), rtol=1e-10)
    for name in ("startprob_", "transmat_", "emissionprob_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-8, atol=1e-12, err_msg=name)
    assert ours.score(X, LENGTHS[lengths]) == pytest.approx(ref.score(X, LENGTHS[lengths]), rel=1e-10)
    assert ours.monitor_.iter == ref.monitor_.iter == 5


@pytest.mark.parametrize("covariance_type,lengths", [
    ("diag", "one"), ("diag", "many"), ("full", "many"), ("spherical", "many"), ("tied", "many"),
])
def test_gaussian_baum_welch_matches_hmmlearn(covariance_type, lengths):
    X, params = _gaussian_case(covariance_type)
    ours, ref = _both(GaussianHMM, hmmlearn_hmm.GaussianHMM, params, covariance_type=covariance_type)
    ours.fit(X, LENGTHS[lengths])
    ref.fit(X, LENGTHS[lengths])
    np.testing.assert_allclose(ours.monitor_.history, list(ref.monitor_.history), rtol=1e-10)
    for name in ("startprob_", "transmat_", "means_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-8, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(_covars(ours), _covars(ref), rtol=1e-8)
    assert ours.score(X, LENGTHS[lengths]) == pytest.approx(ref.score(X, LENGTHS[lengths]), rel=1e-10)


def test_gaussian_priors_and_partial_params_match_hmmlearn():
    """Non-default priors; params="tmc" leaves startprob_ at its initial value."""
    X, params = _gaussian_case("diag", seed=3)
    kw = dict(covariance_type="diag", params="tmc", transmat_prior=2.0, means_prior=0.5, means_weight=3.0,
              covars_prior=0.2, covars_weight=4.0)
    ours, ref = _both(GaussianHMM, hmmlearn_hmm.GaussianHMM, params, **kw)
    ours.fit(X, LENGTHS["many"])
    ref.fit(X, LENGTHS["many"])
    np.testing.assert_allclose(ours.monitor_.history, list(ref.monitor_.history), rtol=1e-10)
    np.testing.assert_allclose(ours.transmat_, ref.transmat_, rtol=1e-8)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-8)
    np.testing.assert_allclose(ours._covars_, ref._covars_, rtol=1e-8)
    np.testing.assert_array_equal(ours.startprob_, params["startprob_"])


def test_float32_fit_matches_hmmlearn():
    X, params = _gaussian_case("diag", seed=5)
    ours, ref = _both(GaussianHMM, hmmlearn_hmm.GaussianHMM, params)
    ours.dtype = torch.float32
    ours.fit(X, LENGTHS["many"])
    ref.fit(X, LENGTHS["many"])
    np.testing.assert_allclose(ours.monitor_.history, list(ref.monitor_.history), rtol=1e-5)
    np.testing.assert_allclose(ours.transmat_, ref.transmat_, rtol=1e-3, atol=1e-5)
    assert ours.transmat_.dtype == np.float32


def test_structural_zeros_and_unseen_symbols_stay_zero_as_in_hmmlearn():
    """A left-right chain (zeros below the diagonal) and a symbol that never occurs: exact zeros."""
    X, params = _categorical_case(seed=2)
    params["transmat_"] = np.array([[0.6, 0.3, 0.1], [0.0, 0.7, 0.3], [0.0, 0.0, 1.0]])
    params["startprob_"] = np.array([1.0, 0.0, 0.0])
    params["emissionprob_"] = np.random.RandomState(2).dirichlet(np.ones(F + 1), size=K)
    ours, ref = _both(CategoricalHMM, hmmlearn_hmm.CategoricalHMM, params, n_features=F + 1)
    ours.fit(X, LENGTHS["many"])
    ref.fit(X, LENGTHS["many"])
    np.testing.assert_allclose(ours.monitor_.history, list(ref.monitor_.history), rtol=1e-10)
    np.testing.assert_allclose(ours.transmat_, ref.transmat_, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(ours.emissionprob_, ref.emissionprob_, rtol=1e-8, atol=1e-14)
    assert (ours.transmat_[np.tril_indices(K, -1)] == 0).all()
    assert (ours.emissionprob_[:, F] == 0).all()


def test_random_initialization_is_hmmlearns():
    """With an int random_state the initial startprob_, transmat_, emissionprob_ are hmmlearn's."""
    X, _ = _categorical_case(seed=4)
    ours = CategoricalHMM(K, random_state=7, n_iter=0).fit(X)
    ref = hmmlearn_hmm.CategoricalHMM(K, random_state=7, n_iter=0).fit(X)
    for name in ("startprob_", "transmat_", "emissionprob_"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(ref, name), err_msg=name)


# -- decoding and posteriors ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["categorical", "gaussian-full"])
def test_viterbi_and_posteriors_match_hmmlearn(kind):
    if kind == "categorical":
        X, params = _categorical_case(seed=6)
        ours, ref = _both(CategoricalHMM, hmmlearn_hmm.CategoricalHMM, params)
    else:
        X, params = _gaussian_case("full", seed=6)
        ours, ref = _both(GaussianHMM, hmmlearn_hmm.GaussianHMM, params, covariance_type="full")
    for lengths in LENGTHS.values():
        lp_ours, path_ours = ours.decode(X, lengths)
        lp_ref, path_ref = ref.decode(X, lengths)
        np.testing.assert_array_equal(path_ours, path_ref)
        np.testing.assert_array_equal(ours.predict(X, lengths), ref.predict(X, lengths))
        assert lp_ours == pytest.approx(lp_ref, rel=1e-10)
        np.testing.assert_allclose(ours.predict_proba(X, lengths), ref.predict_proba(X, lengths), atol=1e-10)
        ll_ours, post_ours = ours.score_samples(X, lengths)
        assert ll_ours == pytest.approx(ref.score(X, lengths), rel=1e-10)
        assert post_ours.shape == (len(X), K)
        np.testing.assert_array_equal(ours.decode(X, lengths, algorithm="map")[1],
                                      ref.decode(X, lengths, algorithm="map")[1])


def test_viterbi_breaks_exact_ties_like_hmmlearn():
    """Symmetric parameters make many paths equally likely; the chosen one is hmmlearn's."""
    params = dict(startprob_=np.full(K, 1 / K), transmat_=np.full((K, K), 1 / K),
                  emissionprob_=np.full((K, F), 1 / F))
    X = np.random.RandomState(0).randint(0, F, size=(40, 1))
    ours, ref = _both(CategoricalHMM, hmmlearn_hmm.CategoricalHMM, params)
    np.testing.assert_array_equal(ours.predict(X, [15, 25]), ref.predict(X, [15, 25]))


def test_exposed_model_function_gives_hmmlearns_score():
    """The copyable Pyro model, with simplex-constrained params, run through pyroem directly."""
    X, params = _categorical_case(seed=8)
    ref = _set(hmmlearn_hmm.CategoricalHMM(K), **params)
    store = pyro.get_param_store()
    with store.scope():
        for name in ("startprob", "transmat", "emissionprob"):
            pyro.param(name, torch.tensor(params[name + "_"]), constraint=constraints.simplex)
        Xt = torch.as_tensor(X[:, 0]).reshape(3, 50)
        ll = pyroem.log_likelihood(categorical_hmm_model, Xt, torch.ones(3, 50, dtype=torch.bool),
                                   n_components=K, n_features=F)
    assert float(ll.detach()) == pytest.approx(ref.score(X, [50, 50, 50]), rel=1e-10)


# -- EM behaviour -----------------------------------------------------------------------------------
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), n_states=st.integers(2, 3), split=st.integers(5, 35))
def test_history_never_decreases(seed, n_states, split):
    X = np.random.RandomState(seed).randint(0, 3, size=(40, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        model = CategoricalHMM(n_states, random_state=seed, n_iter=6, tol=-np.inf).fit(X, [split, 40 - split])
    h = np.asarray(model.history_)
    assert len(h) == 6
    assert (np.diff(h) >= -1e-9 * np.abs(h[:-1])).all(), h


def test_convergence_bookkeeping_matches_hmmlearn():
    """Same stopping step as hmmlearn (gain below tol), and the bookkeeping agrees with history."""
    X, params = _categorical_case(seed=9)
    ours, ref = _both(CategoricalHMM, hmmlearn_hmm.CategoricalHMM, params, n_iter=100, tol=0.1)
    ours.fit(X)
    ref.fit(X)
    h = ours.monitor_.history
    assert ours.n_iter_ == ref.monitor_.iter == len(h) < 100
    np.testing.assert_allclose(h, list(ref.monitor_.history), rtol=1e-10)
    assert ours.converged_ and ours.monitor_.converged
    assert h[-1] - h[-2] < 0.1 and all(b - a >= 0.1 for a, b in zip(h[:-2], h[1:-1]))


def test_sample_follows_the_chain():
    """Empirical transition and emission frequencies of a long sample match the parameters."""
    params = dict(startprob_=[0.5, 0.3, 0.2], transmat_=[[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
                  emissionprob_=[[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    model = _set(CategoricalHMM(K), **params)
    X, Z = model.sample(20000, random_state=0)
    assert X.shape == (20000, 1) and Z.shape == (20000,)
    counts = np.zeros((K, K))
    np.add.at(counts, (Z[:-1], Z[1:]), 1)
    np.testing.assert_allclose(counts / counts.sum(1, keepdims=True), params["transmat_"], atol=0.02)
    emitted = np.zeros((K, F))
    np.add.at(emitted, (Z, X[:, 0]), 1)
    np.testing.assert_allclose(emitted / emitted.sum(1, keepdims=True), params["emissionprob_"], atol=0.03)
    X2, Z2 = model.sample(50, random_state=0)
    np.testing.assert_array_equal(Z2, model.sample(50, random_state=0)[1])
    g = _set(GaussianHMM(K, covariance_type="full"), **_gaussian_case("full")[1])
    Xg, Zg = g.sample(5000, random_state=1)
    assert Xg.shape == (5000, D)
    for k in range(K):
        np.testing.assert_allclose(np.cov(Xg[Zg == k].T), g.covars_[k], rtol=0.25, atol=0.3)


# -- bad input -------------------------------------------------------------------------------------
def test_categorical_bad_inputs():
    model = CategoricalHMM(K, n_features=F)
    with pytest.raises(ValueError, match="non-negative"):
        model.fit(np.array([[0], [-1], [2]]))
    with pytest.raises(ValueError, match="int symbols"):
        model.fit(np.array([[0.5], [1.0]]))
    with pytest.raises(ValueError, match="n_features"):
        model.fit(np.array([[0], [F]]))
    with pytest.raises(ValueError, match="shape \\(n_samples, 1\\)"):
        model.fit(np.zeros((5, 2), dtype=int))
    with pytest.raises(ValueError, match="2-D"):
        model.fit(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="lengths sum to 4"):
        model.fit(np.zeros((5, 1), dtype=int), lengths=[2, 2])
    with pytest.raises(ValueError, match="positive"):
        model.fit(np.zeros((5, 1), dtype=int), lengths=[6, -1])
    with pytest.raises(ValueError, match="params"):
        CategoricalHMM(K, params="stx").fit(np.zeros((5, 1), dtype=int))
    with pytest.raises(ValueError, match="transmat_ must sum to 1"):
        _set(CategoricalHMM(K, init_params=""), startprob_=np.full(K, 1 / K), transmat_=np.ones((K, K)),
             emissionprob_=np.full((K, F), 1 / F)).fit(np.zeros((5, 1), dtype=int))


def test_gaussian_bad_inputs():
    X = np.random.RandomState(0).randn(20, D)
    with pytest.raises(ValueError, match="NaN"):
        GaussianHMM(K).fit(np.where(np.arange(20)[:, None] == 3, np.nan, X))
    with pytest.raises(ValueError, match="covariance_type"):
        GaussianHMM(K, covariance_type="banded").fit(X)
    fitted = GaussianHMM(2, n_iter=1, random_state=0).fit(X)
    with pytest.raises(ValueError, match="features"):
        fitted.predict(np.zeros((4, D + 1)))
    with pytest.raises(ValueError, match="covars_"):
        _set(GaussianHMM(2, covariance_type="full", init_params=""), startprob_=[0.5, 0.5],
             transmat_=np.full((2, 2), 0.5), means_=np.zeros((2, D)), covars_=-np.ones((2, D, D))).fit(X)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score", "sample"])
def test_use_before_fit_raises(method):
    model = GaussianHMM(K)
    call = (lambda: model.sample(3)) if method == "sample" else (lambda: getattr(model, method)(np.zeros((4, D))))
    with pytest.raises(NotFittedError, match="fit"):
        call()
    assert issubclass(NotFittedError, ValueError)


def test_n_init_keeps_the_best_of_several_starts():
    """Sticky 3-state chain with means -2, 0, 3: the start from seed 0 stalls at a symmetric point,
    restarts find the regimes; the kept fit is the best, scored independently by hmmlearn."""
    from hmmlearn.hmm import GaussianHMM as Reference

    rs = np.random.RandomState(0)
    trans = np.array([[0.95, 0.03, 0.02], [0.03, 0.94, 0.03], [0.02, 0.03, 0.95]])
    z = [0]
    for _ in range(499):
        z.append(rs.choice(3, p=trans[z[-1]]))
    X = (np.array([-2.0, 0.0, 3.0])[np.array(z)] + 0.7 * rs.randn(500))[:, None]
    one = GaussianHMM(3, n_iter=100, random_state=0).fit(X, [300, 200])
    many = GaussianHMM(3, n_iter=100, random_state=0, n_init=5).fit(X, [300, 200])
    assert np.ptp(one.means_) < 0.5
    np.testing.assert_allclose(np.sort(many.means_.ravel()), [-2.0, 0.0, 3.0], atol=0.15)
    ref = Reference(3, init_params="", params="")
    ref.startprob_, ref.transmat_, ref.means_ = many.startprob_, many.transmat_, many.means_
    ref.covars_ = np.array([np.diag(c) for c in many.covars_])
    assert many.score(X, [300, 200]) == pytest.approx(ref.score(X, [300, 200]), rel=1e-10)
    assert many.score(X, [300, 200]) > one.score(X, [300, 200]) + 100
    assert many.n_iter_ == len(many.history_)
    with pytest.raises(ValueError, match="n_init must be an int >= 1"):
        GaussianHMM(3, n_init=0).fit(X)


def test_callback_sees_every_baum_welch_step_and_can_end_the_fit():
    """``callback(n_iter, log_prob, params)``: hmmlearn's log-likelihoods step by step, the
    parameters by name; a true return ends the fit early."""
    from hmmlearn.hmm import CategoricalHMM as Reference

    X, init = _categorical_case(2)
    seen = []
    ours, ref = _both(CategoricalHMM, Reference, init, n_iter=6)
    ours.callback = lambda n, lp, params: seen.append((n, lp, sorted(params)))
    ours.fit(X)
    ref.fit(X)
    assert [n for n, _, _ in seen] == list(range(1, 7))
    np.testing.assert_allclose([lp for _, lp, _ in seen], list(ref.monitor_.history), rtol=1e-10)
    assert seen[0][2] == ["emissionprob", "startprob", "transmat"]
    stopped, _ = _both(CategoricalHMM, Reference, init, n_iter=6)
    stopped.callback = lambda n, lp, params: n == 3
    stopped.fit(X)
    assert stopped.n_iter_ == 3
    np.testing.assert_allclose(stopped.history_, list(ref.monitor_.history)[:3], rtol=1e-10)


def test_hmm_params_follow_scikit_learns_estimator_protocol():
    """``get_params``/``set_params`` by constructor argument, ``clone`` keeps them, an unknown name is refused."""
    from sklearn.base import clone

    est = GaussianHMM(3, covariance_type="full", n_iter=7, n_init=2)
    copy = clone(est)
    assert copy.get_params() == est.get_params() and copy is not est
    assert repr(est) == "GaussianHMM(n_components=3, covariance_type='full', n_iter=7, n_init=2)"
    assert est.set_params(tol=1e-4).tol == 1e-4
    with pytest.raises(ValueError, match="invalid parameter 'n_states' for CategoricalHMM"):
        CategoricalHMM(2).set_params(n_states=3)


def test_a_pandas_frame_fits_without_torchs_read_only_warning():
    """``GaussianHMM.fit(DataFrame)``: the same fit as the array, and no warning from torch."""
    import warnings

    pd = pytest.importorskip("pandas")
    X = np.random.default_rng(0).normal(size=(120, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = GaussianHMM(2, random_state=0, n_iter=5).fit(pd.DataFrame(X))
    array = GaussianHMM(2, random_state=0, n_iter=5).fit(X)
    np.testing.assert_allclose(frame.means_, array.means_, rtol=1e-12)
