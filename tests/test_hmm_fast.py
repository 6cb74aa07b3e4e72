"""The HMM estimators (the engine's E-step, hmmlearn's M-step) against hmmlearn, with every
``implementation`` name hmmlearn code passes, on short and long sequences."""
import warnings

import numpy as np
import pytest
import torch

hmmlearn_hmm = pytest.importorskip("hmmlearn.hmm")

import pyroem  # noqa: E402
from pyroem.models import CategoricalHMM, GaussianHMM  # noqa: E402

K, F, D = 3, 4, 2
IMPLEMENTATIONS = ["log", "scan"]   # hmmlearn code's names: both run the engine
UNEQUAL = [70, 1, 25, 54]   # 150 samples, one sequence of a single step


def _set(model, **params):
    for name, value in params.items():
        setattr(model, name, np.array(value, copy=True))
    return model


def _chain(rs, k=K):
    return rs.dirichlet(np.ones(k)), rs.dirichlet(np.ones(k), size=k)


def _categorical_case(seed=0, n=150):
    rs = np.random.RandomState(seed)
    sp, tm = _chain(rs)
    return rs.randint(0, F, size=(n, 1)), dict(startprob_=sp, transmat_=tm,
                                               emissionprob_=rs.dirichlet(np.ones(F), size=K))


def _gaussian_case(covariance_type, seed=0, n=150):
    rs = np.random.RandomState(seed)
    sp, tm = _chain(rs)
    X = rs.randn(n, D) + np.repeat(rs.randn(n // 30 + 1, D) * 3, 30, axis=0)[:n]
    a = rs.randn(K, D, D)
    covars = {"diag": rs.uniform(0.5, 2.0, size=(K, D)), "full": a @ np.swapaxes(a, 1, 2) + np.eye(D)}[covariance_type]
    return X, dict(startprob_=sp, transmat_=tm, means_=rs.randn(K, D) * 2, covars_=covars)


def _pair(kind, implementation, seed=0, n=150, **kw):
    """(our estimator, hmmlearn's, X) from the same initial parameters, every step run."""
    kw = {"n_components": K, "n_iter": 5, "tol": -np.inf, "init_params": "", **kw}
    if kind == "categorical":
        X, params = _categorical_case(seed, n)
        ours, ref = CategoricalHMM(implementation=implementation, **kw), hmmlearn_hmm.CategoricalHMM(**kw)
    else:
        ct = kind.split("-")[1]
        X, params = _gaussian_case(ct, seed, n)
        ours = GaussianHMM(covariance_type=ct, implementation=implementation, **kw)
        ref = hmmlearn_hmm.GaussianHMM(covariance_type=ct, **kw)
    return _set(ours, **params), _set(ref, **params), X


def _padded(rs, lengths, k, scale=2.0):
    log_emit = rs.randn(len(lengths), max(lengths), k) * scale
    mask = np.arange(max(lengths))[None] < np.asarray(lengths)[:, None]
    return log_emit, mask


# -- the estimators against hmmlearn --------------------------------------------------------------
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", ["categorical", "gaussian-diag", "gaussian-full"])
@pytest.mark.parametrize("lengths", [None, UNEQUAL], ids=["one", "unequal"])
def test_fast_baum_welch_matches_hmmlearn(implementation, kind, lengths):
    ours, ref, X = _pair(kind, implementation)
    ours.fit(X, lengths)
    ref.fit(X, lengths)
    np.testing.assert_allclose(ours.monitor_.history, list(ref.monitor_.history), rtol=1e-10)
    names = ["startprob_", "transmat_"] + (["emissionprob_"] if kind == "categorical" else ["means_", "_covars_"])
    for name in names:
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-8, atol=1e-12, err_msg=name)
    assert ours.score(X, lengths) == pytest.approx(ref.score(X, lengths), rel=1e-10)
    np.testing.assert_allclose(ours.predict_proba(X, lengths), ref.predict_proba(X, lengths), atol=1e-10)
    np.testing.assert_array_equal(ours.predict(X, lengths), ref.predict(X, lengths))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", ["categorical", "gaussian-diag"])
def test_float32_fast_path_matches_hmmlearn(implementation, kind):
    ours, ref, X = _pair(kind, implementation, seed=5)
    ours.dtype = torch.float32
    ours.fit(X, UNEQUAL)
    ref.fit(X, UNEQUAL)
    assert ours.transmat_.dtype == np.float32
    np.testing.assert_allclose(ours.monitor_.history, list(ref.monitor_.history), rtol=1e-5)
    np.testing.assert_allclose(ours.transmat_, ref.transmat_, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(ours.predict_proba(X, UNEQUAL), ref.predict_proba(X, UNEQUAL), atol=1e-4)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_one_state_matches_hmmlearn(implementation):
    """K = 1: Baum-Welch fits the emission distribution once; hmmlearn agrees."""
    X = np.random.RandomState(0).randn(30, 2) + 1.0
    kw = dict(n_components=1, covariance_type="diag", covars_prior=0.0, n_iter=3, tol=-np.inf, init_params="")
    params = dict(startprob_=[1.0], transmat_=[[1.0]], means_=[[0.0, 0.0]], covars_=[[1.0, 1.0]])
    ours = _set(GaussianHMM(implementation=implementation, **kw), **params).fit(X, [10, 20])
    ref = _set(hmmlearn_hmm.GaussianHMM(**kw), **params).fit(X, [10, 20])
    np.testing.assert_allclose(ours.means_[0], X.mean(0), atol=1e-12)
    np.testing.assert_allclose(ours._covars_[0], X.var(0), atol=1e-12)
    np.testing.assert_allclose(ours.monitor_.history, list(ref.monitor_.history), rtol=1e-10)


def test_monotonicity_is_checked_on_the_fast_path():
    """Maximum-likelihood steps never lower log p(X); a decrease would raise pyroem's warning."""
    X, params = _categorical_case(seed=7, n=200)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyroem.MonotonicityWarning)
        model = _set(CategoricalHMM(K, n_iter=30, tol=-np.inf, init_params=""), **params).fit(X, [120, 80])
    h = np.asarray(model.history_)
    assert len(h) == 30 and (np.diff(h) >= -1e-9 * np.abs(h[:-1])).all()


def test_impossible_data_and_bad_implementation_raise():
    X = np.array([[0], [1], [3], [2]])
    params = dict(startprob_=np.full(K, 1 / K), transmat_=np.full((K, K), 1 / K),
                  emissionprob_=np.tile([0.4, 0.3, 0.3, 0.0], (K, 1)))
    model = _set(CategoricalHMM(K, init_params="", n_iter=2), **params)
    with pytest.raises(ValueError, match="-inf.*impossible.*'y_slice"):
        model.fit(X)
    ref = _set(hmmlearn_hmm.CategoricalHMM(K, n_features=F), **params)
    with np.errstate(divide="ignore"):
        assert model.score(X) == ref.score(X) == -np.inf
    with pytest.raises(ValueError, match="implementation must be one of"):
        CategoricalHMM(K, implementation="fast").fit(X)
    with pytest.raises(ValueError, match="implementation must be one of"):
        _set(CategoricalHMM(K, implementation=None), **params).score(X)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_fast_path_on_cuda_matches_hmmlearn(implementation):
    ours, ref, X = _pair("gaussian-full", implementation)
    ours.device = "cuda"
    ours.fit(X, UNEQUAL)
    ref.fit(X, UNEQUAL)
    np.testing.assert_allclose(ours.monitor_.history, list(ref.monitor_.history), rtol=1e-10)
    np.testing.assert_allclose(ours.transmat_, ref.transmat_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.predict_proba(X, UNEQUAL), ref.predict_proba(X, UNEQUAL), atol=1e-10)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_singular_covariance_update_is_regularized(implementation):
    """Every point identical: the full-covariance update is singular; it gets min_covar on its
    diagonal (with a warning), so the fit ends with finite, positive-definite covariances."""
    X = np.tile([[0.5, 2.0]], (30, 1))
    model = GaussianHMM(2, covariance_type="full", n_iter=5, random_state=0, implementation=implementation)
    with pytest.warns(RuntimeWarning, match="covars update was degenerate"):
        model.fit(X, lengths=[10, 20])
    assert np.isfinite(model.covars_).all() and (np.linalg.eigvalsh(model.covars_) > 0).all()
    assert np.isfinite(model.score(X, lengths=[10, 20]))


# -- blocked Viterbi -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["categorical", "gaussian-full"])
@pytest.mark.parametrize("lengths", [None, UNEQUAL], ids=["one", "unequal"])
def test_scan_implementation_decodes_like_hmmlearn(kind, lengths):
    """implementation="scan" (Gaussian: decoded blocked in time): hmmlearn's path and log-probability."""
    ours, ref, X = _pair(kind, "scan")
    lp_ours, path_ours = ours.decode(X, lengths)
    lp_ref, path_ref = ref.decode(X, lengths)
    np.testing.assert_array_equal(path_ours, path_ref)
    assert lp_ours == pytest.approx(lp_ref, rel=1e-10)


@pytest.mark.parametrize("kind", ["categorical", "gaussian-diag"])
def test_long_sequence_viterbi_matches_hmmlearn(kind):
    """A 3000-step sequence and a 1200-step one ("auto": the Gaussian one decoded blocked in time,
    the categorical one sequentially, where exact ties between paths are common)."""
    ours, ref, X = _pair(kind, "auto", seed=4, n=4200)
    lp_ours, path_ours = ours.decode(X, [3000, 1200])
    lp_ref, path_ref = ref.decode(X, [3000, 1200])
    np.testing.assert_array_equal(path_ours, path_ref)
    assert lp_ours == pytest.approx(lp_ref, rel=1e-10)


@pytest.mark.parametrize("decoder", ["blocked", "speculative"])
@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_block_decoders_block_lengths_match_brute_force(chunk, decoder):
    """Every path of a 4-state, 7-step chain scored by hand; padded sequences included."""
    from itertools import product

    from pyroem.viterbi import viterbi_blocked, viterbi_speculative

    rs = np.random.RandomState(chunk)
    k, lengths = 4, [7, 3, 1, 6]
    log_start = np.log(rs.dirichlet(np.ones(k)))
    log_trans = np.log(rs.dirichlet(np.ones(k), size=k))
    log_emit, mask = _padded(rs, lengths, k)
    run = viterbi_blocked if decoder == "blocked" else viterbi_speculative
    lp, states = run(torch.tensor(log_start), torch.tensor(log_trans), torch.tensor(log_emit),
                     torch.tensor(mask), chunk=chunk)
    for n, t in enumerate(lengths):
        best, best_path = -np.inf, None
        for path in product(range(k), repeat=t):
            score = log_start[path[0]] + log_emit[n, 0, path[0]] + sum(
                log_trans[path[i - 1], path[i]] + log_emit[n, i, path[i]] for i in range(1, t))
            if score > best:
                best, best_path = score, path
        assert float(lp[n]) == pytest.approx(best, rel=1e-12)
        assert tuple(states[n, :t].tolist()) == best_path


@pytest.mark.parametrize("k", [2, 3, 10, 11])  # 11 states: past the scalar recursion, numpy's
def test_single_sequence_viterbi_breaks_ties_like_hmmlearn(k):
    """One 2000-step sequence under symmetric transitions and repeated emission rows: exact ties
    everywhere, and the chosen path is still hmmlearn's."""
    rs = np.random.RandomState(k)
    rows = rs.dirichlet(np.ones(F), size=2)
    params = dict(startprob_=np.full(k, 1 / k), transmat_=np.full((k, k), 1 / k),
                  emissionprob_=rows[np.arange(k) % 2])
    X = rs.randint(0, F, size=(2000, 1))
    kw = dict(n_components=k, n_features=F, init_params="")
    ours = _set(CategoricalHMM(**kw), **params)
    ref = _set(hmmlearn_hmm.CategoricalHMM(**kw), **params)
    lp_ours, path_ours = ours.decode(X)
    lp_ref, path_ref = ref.decode(X)
    np.testing.assert_array_equal(path_ours, path_ref)
    assert lp_ours == pytest.approx(lp_ref, rel=1e-12)


@pytest.mark.parametrize("stay", [0.0, 0.9, 0.999], ids=["mixing", "sticky", "near-identity"])
def test_speculative_viterbi_equals_the_sequential_recursion(stay, monkeypatch):
    """Blocks started from zeros and corrected: the sequential recursion's path and score, on
    chains whose best paths coalesce at once, after a few steps, and hardly at all (where the
    corrections run out and the blocked decoder takes over; counted)."""
    from pyroem import viterbi as vit

    calls = []
    blocked = vit.viterbi_blocked
    monkeypatch.setattr(vit, "viterbi_blocked", lambda *a, **kw: calls.append(1) or blocked(*a, **kw))
    rs = np.random.RandomState(7)
    k, lengths = 5, [3000, 2400, 2999]
    log_start = torch.tensor(np.log(rs.dirichlet(np.ones(k))))
    trans = stay * np.eye(k) + (1 - stay) * rs.dirichlet(np.ones(k), size=k)
    log_trans = torch.tensor(np.log(trans))
    log_emit, mask = _padded(rs, lengths, k, scale=0.05 if stay > 0.99 else 2.0)
    log_emit, mask = torch.tensor(log_emit), torch.tensor(mask)
    lp_ref, path_ref = vit.viterbi(log_start, log_trans, log_emit, mask)
    lp, path = vit.viterbi_speculative(log_start, log_trans, log_emit, mask)
    np.testing.assert_allclose(lp.numpy(), lp_ref.numpy(), rtol=1e-12)
    np.testing.assert_array_equal(path[mask].numpy(), path_ref[mask].numpy())
    assert bool(calls) == (stay > 0.99)
