"""Missing values: NaN entries integrated out of the likelihood, for a user's model
(``pyroem.marginalize_missing``, ``EM(missing="marginalize")``) and for the bundled
``GaussianMixture`` and ``GaussianHMM`` (the classic EM for incomplete normal data).

References are independent: the marginal densities of the observed coordinates from scipy, and
the textbook EM written row by row in numpy (conditional means and covariances of the missing
coordinates, Little & Rubin ch. 8 / 11).
"""
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm

import pyroem
from pyroem.models import GaussianHMM, GaussianMixture
from pyroem.models.exceptions import ConvergenceWarning

# the data sets hold rows with nothing observed on purpose; GaussianMixture's warning of them is tested once
pytestmark = pytest.mark.filterwarnings("ignore:.*have no observed value:UserWarning")


def _data(n=40, d=3, frac=0.25, seed=0):
    g = np.random.default_rng(seed)
    a = g.multivariate_normal([0, 0, 0][:d], 0.5 * np.eye(d) + 0.5, n // 2)
    b = g.multivariate_normal([3, 2, 1][:d], 0.6 * np.eye(d), n - n // 2)
    X = np.vstack([a, b])
    X[g.random(X.shape) < frac] = np.nan
    X[0, :] = np.nan      # a row with nothing observed
    X[1, 1:] = np.nan     # one coordinate only
    return X


def _observed_loglik(X, w, mu, cov):
    """Σ_n log Σ_k w_k N(x_n,o | μ_k,o, Σ_k,oo) by scipy, the rows of each pattern of missing
    coordinates at once."""
    seen = ~np.isnan(X)
    total = 0.0
    for pattern in np.unique(seen, axis=0):
        if not pattern.any():
            continue
        rows = X[(seen == pattern).all(1)][:, pattern]
        per = np.stack([np.log(w[k]) + np.atleast_1d(multivariate_normal(mu[k][pattern], cov[k][np.ix_(pattern, pattern)])
                                                     .logpdf(rows)) for k in range(len(w))], 1)
        total += logsumexp(per, axis=1).sum()
    return total


def _full(cov, covariance_type, k, d):
    return {"full": lambda: np.asarray(cov), "tied": lambda: np.stack([cov] * k),
            "diag": lambda: np.stack([np.diag(c) for c in cov]),
            "spherical": lambda: np.stack([c * np.eye(d) for c in cov])}[covariance_type]()


def _textbook_step(X, w, mu, cov, covariance_type):
    """One EM step for a Gaussian mixture with missing coordinates, row by row: responsibilities
    from the observed marginals, then E[x_m | x_o, k] = μ_m + Σ_mo Σ_oo⁻¹ (x_o − μ_o) and
    Cov[x_m | x_o, k] = Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om in the weighted means and scatters."""
    n, d = X.shape
    k = len(w)
    logr = np.zeros((n, k))
    xhat = np.zeros((n, k, d))
    cond = np.zeros((n, k, d, d))
    for i, x in enumerate(X):
        o = ~np.isnan(x)
        m = ~o
        for j in range(k):
            s = cov[j]
            logr[i, j] = np.log(w[j]) + (multivariate_normal(mu[j][o], s[np.ix_(o, o)]).logpdf(x[o]) if o.any() else 0)
            filled = x.copy()
            if m.any():
                if o.any():
                    gain = s[np.ix_(m, o)] @ np.linalg.inv(s[np.ix_(o, o)])
                    filled[m] = mu[j][m] + gain @ (x[o] - mu[j][o])
                    cond[i, j][np.ix_(m, m)] = s[np.ix_(m, m)] - gain @ s[np.ix_(o, m)]
                else:
                    filled[m] = mu[j][m]
                    cond[i, j][np.ix_(m, m)] = s[np.ix_(m, m)]
            xhat[i, j] = filled
    ll = logsumexp(logr, axis=1).sum()
    r = np.exp(logr - logsumexp(logr, axis=1, keepdims=True))
    nk = r.sum(0)
    new_mu = np.einsum("nk,nkd->kd", r, xhat) / nk[:, None]
    dev = xhat - new_mu[None]
    scatter = np.einsum("nk,nkd,nke->kde", r, dev, dev) + np.einsum("nk,nkde->kde", r, cond)
    new_cov = scatter / nk[:, None, None]
    if covariance_type == "tied":
        new_cov = np.stack([scatter.sum(0) / nk.sum()] * k)
    elif covariance_type == "diag":
        new_cov = np.stack([np.diag(np.diag(c)) for c in new_cov])
    elif covariance_type == "spherical":
        new_cov = np.stack([np.trace(c) / d * np.eye(d) for c in new_cov])
    return ll, nk / n, new_mu, new_cov


START_W = np.array([0.45, 0.55])
START_MU = np.array([[0.5, 0.2, 0.1], [2.5, 1.5, 1.2]])
START_COV = np.array([[[1.0, 0.3, 0.1], [0.3, 1.2, 0.2], [0.1, 0.2, 0.9]],
                      [[0.8, -0.1, 0.0], [-0.1, 0.7, 0.1], [0.0, 0.1, 1.1]]])


def _start(covariance_type):
    """The start in scikit-learn's shapes (precisions) and as full matrices."""
    cov = {"full": START_COV, "tied": START_COV.mean(0), "diag": np.stack([np.diag(c) for c in START_COV]),
           "spherical": np.array([np.trace(c) / 3 for c in START_COV])}[covariance_type]
    prec = {"full": lambda: np.linalg.inv(cov), "tied": lambda: np.linalg.inv(cov),
            "diag": lambda: 1.0 / cov, "spherical": lambda: 1.0 / cov}[covariance_type]()
    return prec, _full(cov, covariance_type, 2, 3)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_gaussian_mixture_steps_match_the_textbook_em_for_incomplete_data(covariance_type):
    """Three steps of ``GaussianMixture(missing="marginalize")`` from a given start equal three
    steps of the textbook EM for missing coordinates, and each lower bound is the observed-data
    log-likelihood scipy computes."""
    X = _data()
    prec, cov = _start(covariance_type)
    w, mu = START_W, START_MU
    lls = []
    for _ in range(3):
        ll, w, mu, cov = _textbook_step(X, w, mu, cov, covariance_type)
        lls.append(ll / len(X))
    gm = GaussianMixture(2, covariance_type=covariance_type, missing="marginalize", reg_covar=0.0, tol=0.0,
                         max_iter=3, weights_init=START_W, means_init=START_MU, precisions_init=prec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X)
    np.testing.assert_allclose(gm.weights_, w, rtol=1e-10)
    np.testing.assert_allclose(gm.means_, mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_full(gm.covariances_, covariance_type, 2, 3), cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gm.lower_bounds_, lls, rtol=1e-12)
    assert gm.score(X) * len(X) == pytest.approx(_observed_loglik(X, w, mu, cov), rel=1e-12)


def test_gaussian_mixture_with_missing_values_maximizes_the_observed_data_likelihood():
    """At convergence the fit is a fixed point of the textbook EM step (a stationary point of the
    observed-data likelihood); against the complete-case fit (incomplete rows dropped), it scores
    higher on all the data's observed entries and lower on the complete rows alone, each fit
    being the maximizer of its own objective. Without missing entries the option changes nothing."""
    X = _data(n=120, seed=3)
    gm = GaussianMixture(2, missing="marginalize", reg_covar=0.0, tol=1e-12, max_iter=2000, random_state=0).fit(X)
    assert gm.converged_
    ll, w, mu, cov = _textbook_step(X, gm.weights_, gm.means_, gm.covariances_, "full")
    np.testing.assert_allclose(mu, gm.means_, atol=1e-6)
    np.testing.assert_allclose(cov, gm.covariances_, atol=1e-6)
    complete = ~np.isnan(X).any(1)
    cc = GaussianMixture(2, reg_covar=0.0, tol=1e-12, max_iter=2000, random_state=0).fit(X[complete])
    ours = _observed_loglik(X, gm.weights_, gm.means_, gm.covariances_)
    theirs = _observed_loglik(X, cc.weights_, cc.means_, cc.covariances_)
    assert ours > theirs
    assert gm.score(X[complete]) < cc.score(X[complete])
    Xc = np.nan_to_num(X, nan=1.0)
    a = GaussianMixture(2, missing="marginalize", random_state=0).fit(Xc)
    b = GaussianMixture(2, random_state=0).fit(Xc)
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.covariances_, b.covariances_)


def test_gaussian_mixture_missing_values_score_predict_and_chunks():
    """Scores and posteriors of incomplete rows are the observed marginals'; a fit in chunks of
    rows gives the fit of all rows at once; NaN without the option is refused by name."""
    X = _data(n=60, seed=5)
    with pytest.warns(UserWarning, match=r"4 row\(s\) of X have no observed value"):
        gm = GaussianMixture(2, covariance_type="full", missing="marginalize", random_state=1).fit(X)
    per = [np.log(gm.weights_[k]) + np.array([
        multivariate_normal(gm.means_[k][~np.isnan(x)], gm.covariances_[k][np.ix_(~np.isnan(x), ~np.isnan(x))]).logpdf(
            x[~np.isnan(x)]) if (~np.isnan(x)).any() else 0.0 for x in X]) for k in range(2)]
    per = np.stack(per, 1)
    np.testing.assert_allclose(gm.score_samples(X), logsumexp(per, axis=1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gm.predict_proba(X), np.exp(per - logsumexp(per, axis=1, keepdims=True)), atol=1e-12)
    chunked = GaussianMixture(2, covariance_type="full", missing="marginalize", random_state=1, chunk_size=7).fit(X)
    np.testing.assert_allclose(chunked.means_, gm.means_, rtol=1e-10)
    with pytest.raises(ValueError, match="missing='marginalize'"):
        GaussianMixture(2).fit(X)
    with pytest.raises(ValueError, match="missing must be None"):
        GaussianMixture(2, missing="drop").fit(X)
    empty = X.copy()
    empty[:, 2] = np.nan
    with pytest.raises(ValueError, match=r"no observed value in column\(s\) \[3\]"):
        GaussianMixture(2, missing="marginalize").fit(empty)


def test_engine_marginalizes_missing_coordinates_of_a_multivariate_normal():
    """A user's mixture of ``MultivariateNormal``s with NaN entries, fitted by the default
    (autograd) M-step under ``missing="marginalize"``: ``log p(y|θ)`` is the sum of scipy's
    observed marginals, and the optimum it reaches is a fixed point of the textbook EM step."""
    X = _data(n=60, seed=7)
    k = 2

    def model(X):
        w = pyro.param("w", torch.full((k,), 0.5, dtype=X.dtype), constraint=constraints.simplex)
        mu = pyro.param("mu", torch.tensor(START_MU, dtype=X.dtype))
        tril = pyro.param("tril", torch.linalg.cholesky(torch.tensor(START_COV, dtype=X.dtype)),
                          constraint=constraints.lower_cholesky)
        with pyro.plate("rows", X.shape[0]):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("x", dist.MultivariateNormal(mu[z], scale_tril=tril[z]), obs=X)

    pyro.clear_param_store()
    res = pyroem.EM(model, missing="marginalize").fit(torch.as_tensor(X), max_iter=500, tol=1e-10)
    assert res.history[0] == pytest.approx(_observed_loglik(X, np.full(k, 0.5), START_MU, START_COV), rel=1e-12)
    w = pyro.param("w").detach().numpy()
    mu = pyro.param("mu").detach().numpy()
    tril = pyro.param("tril").detach().numpy()
    cov = tril @ tril.transpose(0, 2, 1)
    assert res.log_likelihood == pytest.approx(_observed_loglik(X, w, mu, cov), rel=1e-12)
    _, w2, mu2, cov2 = _textbook_step(X, w, mu, cov, "full")
    np.testing.assert_allclose(mu2, mu, atol=1e-5)
    np.testing.assert_allclose(cov2, cov, atol=1e-5)
    with pytest.raises(ValueError) as err:
        pyroem.EM(model).fit(torch.as_tensor(X), max_iter=1)
    assert "missing='marginalize'" in str(err.value) + " ".join(getattr(err.value, "__notes__", []))


def test_engine_masks_missing_elements_of_independent_events_and_warns_for_others():
    """``Normal(...).to_event(1)`` with NaN elements scores the observed elements of each event
    (numpy by hand); a Dirichlet event with some entries missing cannot be split and is dropped
    whole, with a warning naming the site."""
    g = np.random.default_rng(4)
    X = g.normal(size=(30, 3)) + np.where(g.random((30, 1)) < 0.5, -1.0, 1.5)
    X[g.random((30, 3)) < 0.3] = np.nan
    loc = np.array([[-1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])

    def model(X):
        w = pyro.param("w", torch.tensor([0.4, 0.6], dtype=X.dtype), constraint=constraints.simplex)
        mu = pyro.param("loc", torch.tensor(loc, dtype=X.dtype))
        with pyro.plate("rows", X.shape[0]):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("x", dist.Normal(mu[z], 1.0).to_event(1), obs=X)

    per = np.where(np.isnan(X)[:, None, :], 0.0, norm.logpdf(X[:, None, :], loc[None], 1.0)).sum(-1)
    expected = logsumexp(np.log([0.4, 0.6]) + per, axis=1).sum()
    pyro.clear_param_store()
    got = pyroem.log_likelihood(pyroem.marginalize_missing(model), torch.as_tensor(X))
    assert float(got.detach()) == pytest.approx(expected, rel=1e-12)

    def simplex_model(P):
        c = pyro.param("c", torch.ones(3, dtype=P.dtype), constraint=constraints.positive)
        with pyro.plate("rows", P.shape[0]):
            pyro.sample("p", dist.Dirichlet(c), obs=P)

    P = torch.tensor([[0.2, 0.3, 0.5], [0.1, float("nan"), 0.6], [0.3, 0.3, 0.4]], dtype=torch.float64)
    pyro.clear_param_store()
    with pytest.warns(RuntimeWarning, match="site 'p': 1 event"):
        got = pyroem.log_likelihood(pyroem.marginalize_missing(simplex_model), P)
    ref = sum(dist.Dirichlet(torch.ones(3, dtype=torch.float64)).log_prob(P[i]) for i in (0, 2))
    assert float(got.detach()) == pytest.approx(float(ref), rel=1e-12)


# -- GaussianHMM ---------------------------------------------------------------------------------
def _hmm_emissions(X, means, covs):
    """log N(x_t,o | μ_k,o, Σ_k,oo) by scipy: (T, K)."""
    out = np.zeros((len(X), len(means)))
    for t, x in enumerate(X):
        o = ~np.isnan(x)
        if o.any():
            out[t] = [multivariate_normal(means[k][o], covs[k][np.ix_(o, o)]).logpdf(x[o]) for k in range(len(means))]
    return out


def _textbook_baum_welch(X, start, trans, means, covs, covariance_type):
    """One Baum-Welch step in numpy with missing coordinates (no priors): forward-backward on the
    observed marginals, then the emission update with conditional moments."""
    T, d = X.shape
    k = len(start)
    logb = _hmm_emissions(X, means, covs)
    alpha = np.zeros((T, k))
    beta = np.zeros((T, k))
    alpha[0] = np.log(start) + logb[0]
    for t in range(1, T):
        alpha[t] = logsumexp(alpha[t - 1][:, None] + np.log(trans), axis=0) + logb[t]
    for t in range(T - 2, -1, -1):
        beta[t] = logsumexp(np.log(trans) + logb[t + 1] + beta[t + 1], axis=1)
    ll = logsumexp(alpha[-1])
    gamma = np.exp(alpha + beta - ll)
    xi = np.exp(alpha[:-1, :, None] + np.log(trans)[None] + (logb + beta)[1:, None, :] - ll).sum(0)
    xhat = np.repeat(np.nan_to_num(X)[:, None, :], k, axis=1)
    cond = np.zeros((T, k, d, d))
    for t, x in enumerate(X):
        o, m = ~np.isnan(x), np.isnan(x)
        if m.any():
            for j in range(k):
                s = covs[j]
                if o.any():
                    gain = s[np.ix_(m, o)] @ np.linalg.inv(s[np.ix_(o, o)])
                    xhat[t, j, m] = means[j][m] + gain @ (x[o] - means[j][o])
                    cond[t, j][np.ix_(m, m)] = s[np.ix_(m, m)] - gain @ s[np.ix_(o, m)]
                else:
                    xhat[t, j, m] = means[j][m]
                    cond[t, j][np.ix_(m, m)] = s[np.ix_(m, m)]
    nk = gamma.sum(0)
    new_means = np.einsum("tk,tkd->kd", gamma, xhat) / nk[:, None]
    dev = xhat - new_means[None]
    scatter = np.einsum("tk,tkd,tke->kde", gamma, dev, dev) + np.einsum("tk,tkde->kde", gamma, cond)
    new_covs = scatter / nk[:, None, None]
    if covariance_type == "diag":
        new_covs = np.stack([np.diag(np.diag(c)) for c in new_covs])
    elif covariance_type == "tied":
        new_covs = np.stack([scatter.sum(0) / nk.sum()] * k)
    return ll, gamma[0], xi / xi.sum(1, keepdims=True), new_means, new_covs


@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied"])
def test_gaussian_hmm_with_missing_values_matches_the_textbook_baum_welch(covariance_type):
    """Two Baum-Welch steps of ``GaussianHMM(missing="marginalize")`` (no priors) from a given
    start equal two steps of the textbook algorithm on the observed marginals, and ``score`` is
    the forward algorithm's log-likelihood."""
    g = np.random.default_rng(11)
    states = (np.cumsum(g.random(50) < 0.15) % 2).astype(int)
    true_means = np.array([[0.0, 0.0, 0.0], [2.5, 1.5, 1.0]])
    X = true_means[states] + g.normal(size=(50, 3)) * 0.7
    X[g.random(X.shape) < 0.25] = np.nan
    X[3] = np.nan
    start, trans = np.array([0.6, 0.4]), np.array([[0.85, 0.15], [0.2, 0.8]])
    covs = {"full": START_COV, "diag": np.stack([np.diag(np.diag(c)) for c in START_COV]),
            "tied": np.stack([START_COV.mean(0)] * 2)}[covariance_type]
    h = GaussianHMM(2, covariance_type=covariance_type, missing="marginalize", init_params="", n_iter=2, tol=-np.inf,
                    covars_prior=0.0, covars_weight=1.0, min_covar=1e-12)
    h.startprob_, h.transmat_, h.means_ = start, trans, START_MU
    h.covars_ = {"full": covs, "diag": np.stack([np.diag(c) for c in covs]), "tied": covs[0]}[covariance_type]
    h.fit(X)
    s, t, mu, cv = start, trans, START_MU, covs
    lls = []
    for _ in range(2):
        ll, s, t, mu, cv = _textbook_baum_welch(X, s, t, mu, cv, covariance_type)
        lls.append(ll)
    np.testing.assert_allclose(h.monitor_.history, lls, rtol=1e-12)
    np.testing.assert_allclose(h.startprob_, s, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h.transmat_, t, rtol=1e-9)
    np.testing.assert_allclose(h.means_, mu, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h.covars_, cv, rtol=1e-9, atol=1e-12)
    assert h.score(X) == pytest.approx(_textbook_baum_welch(X, s, t, mu, cv, covariance_type)[0], rel=1e-12)
    assert h.predict(X).shape == (50,)
    with pytest.raises(ValueError, match="missing='marginalize'"):
        GaussianHMM(2).fit(X)


def test_standard_errors_with_missing_values_and_cholesky_params_match_finite_differences():
    """The observed information of a ``MultivariateNormal`` mixture with missing entries, its
    scales held as Cholesky factors (``constraints.lower_cholesky``, taken in the coordinates of
    their lower triangle): the standard errors of the means and of the factors' entries match the
    inverse of a finite-difference Hessian of numpy's observed-data log-likelihood, and Louis'
    identity gives the same matrix."""
    X = _data(n=80, seed=7)
    tril0 = np.linalg.cholesky(START_COV)

    def model(X):
        w = pyro.param("w", torch.full((2,), 0.5, dtype=X.dtype), constraint=constraints.simplex)
        mu = pyro.param("mu", torch.tensor(START_MU, dtype=X.dtype))
        tril = pyro.param("tril", torch.tensor(tril0, dtype=X.dtype), constraint=constraints.lower_cholesky)
        with pyro.plate("rows", X.shape[0]):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("x", dist.MultivariateNormal(mu[z], scale_tril=tril[z]), obs=X)

    pyro.clear_param_store()
    res = pyroem.EM(model, missing="marginalize").fit(torch.as_tensor(X), max_iter=1000, tol=1e-12)
    low = np.tril_indices(3)

    def unpack(t):
        w1, mu = t[0], t[1:7].reshape(2, 3)
        tril = np.zeros((2, 3, 3))
        tril[0][low], tril[1][low] = t[7:13], t[13:19]
        return np.array([w1, 1 - w1]), mu, tril @ tril.transpose(0, 2, 1)

    t0 = np.concatenate([[float(res.params["w"][0])], res.params["mu"].numpy().ravel(),
                         res.params["tril"].numpy()[0][low], res.params["tril"].numpy()[1][low]])
    h, n = 1e-4, len(t0)
    f0 = -_observed_loglik(X, *unpack(t0))
    shifted = {}

    def f(*steps):
        key = tuple(sorted(steps))
        if key not in shifted:
            t = t0.copy()
            for i, s in steps:
                t[i] += s * h
            shifted[key] = -_observed_loglik(X, *unpack(t))
        return shifted[key]

    hess = np.zeros((n, n))
    for i in range(n):
        hess[i, i] = (f((i, 1)) - 2 * f0 + f((i, -1))) / h ** 2
        for j in range(i):
            hess[i, j] = hess[j, i] = (f((i, 1), (j, 1)) - f((i, 1), (j, -1)) - f((i, -1), (j, 1))
                                       + f((i, -1), (j, -1))) / (4 * h * h)
    ref = np.sqrt(np.diag(np.linalg.inv(hess)))
    se = res.standard_errors()
    np.testing.assert_allclose(se["mu"].numpy().ravel(), ref[1:7], rtol=2e-3)
    np.testing.assert_allclose(np.concatenate([se["tril"].numpy()[0][low], se["tril"].numpy()[1][low]]), ref[7:],
                               rtol=2e-3)
    louis = res.standard_errors(method="louis")
    np.testing.assert_allclose(louis["tril"].numpy(), se["tril"].numpy(), rtol=1e-8, atol=1e-14)


def test_sample_weight_with_missing_values_counts_rows_as_copies():
    """With missing entries, a row of weight 2 is the same row twice: the same fit from the same
    start (weights enter the centre, the E-step and the conditional moments alike)."""
    X = _data(n=50, seed=9)
    prec, _ = _start("full")
    kw = dict(missing="marginalize", reg_covar=0.0, tol=0.0, max_iter=5, weights_init=START_W, means_init=START_MU,
              precisions_init=prec)
    weights = np.ones(len(X))
    weights[::3] = 2.0
    repeated = np.repeat(X, weights.astype(int), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = GaussianMixture(2, **kw).fit(X, sample_weight=weights)
        b = GaussianMixture(2, **kw).fit(repeated)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-10)
    np.testing.assert_allclose(a.weights_, b.weights_, rtol=1e-10)


def test_engine_marginalizes_missing_coordinates_of_student_t_and_low_rank_normals():
    """``MultivariateStudentT`` and ``LowRankMultivariateNormal`` events with NaN entries are
    scored by their marginals on the observed coordinates, as scipy's ``multivariate_t`` and
    ``multivariate_normal`` compute them row by row (the t keeps its degrees of freedom)."""
    from scipy.stats import multivariate_t

    X = _data(n=30, seed=12)
    cov = START_COV
    tril = np.linalg.cholesky(cov)
    w = np.array([0.45, 0.55])

    def student(X):
        with pyro.plate("rows", X.shape[0]):
            z = pyro.sample("z", dist.Categorical(torch.tensor(w, dtype=X.dtype)))
            pyro.sample("x", dist.MultivariateStudentT(torch.tensor([4.0, 7.0], dtype=X.dtype)[z],
                                                       torch.tensor(START_MU, dtype=X.dtype)[z],
                                                       torch.tensor(tril, dtype=X.dtype)[z]), obs=X)

    factor = np.array([[[0.5], [0.3], [-0.2]], [[0.1], [0.6], [0.4]]])
    diag = np.array([[0.8, 0.5, 0.9], [0.6, 0.7, 0.5]])

    def low_rank(X):
        with pyro.plate("rows", X.shape[0]):
            z = pyro.sample("z", dist.Categorical(torch.tensor(w, dtype=X.dtype)))
            pyro.sample("x", dist.LowRankMultivariateNormal(torch.tensor(START_MU, dtype=X.dtype)[z],
                                                            torch.tensor(factor, dtype=X.dtype)[z],
                                                            torch.tensor(diag, dtype=X.dtype)[z]), obs=X)

    seen = ~np.isnan(X)
    t_ref = sum(logsumexp([np.log(w[k]) + multivariate_t(START_MU[k][o], cov[k][np.ix_(o, o)], df=[4.0, 7.0][k]).logpdf(x[o])
                           for k in range(2)]) for x, o in zip(X, seen) if o.any())
    low_cov = factor @ factor.transpose(0, 2, 1) + np.stack([np.diag(d) for d in diag])
    n_ref = _observed_loglik(X, w, START_MU, low_cov)
    for model, ref in ((student, t_ref), (low_rank, n_ref)):
        got = pyroem.log_likelihood(pyroem.marginalize_missing(model), torch.as_tensor(X))
        assert float(got.detach()) == pytest.approx(ref, rel=1e-12)


def test_partial_fit_with_missing_values_reaches_the_batch_fit():
    """Online EM on mini-batches with missing entries: each step's ``lower_bound_`` is the batch's
    mean observed-data log-likelihood (scipy) at the parameters before the step, and a few passes
    reach the batch fit's means."""
    g = np.random.default_rng(21)
    X = np.vstack([g.normal(0.0, 1.0, (1500, 3)), g.normal(4.0, 1.0, (1500, 3))])[g.permutation(3000)]
    X[g.random(X.shape) < 0.2] = np.nan
    batch = GaussianMixture(2, missing="marginalize", random_state=0, tol=1e-8, max_iter=500).fit(X)
    online = GaussianMixture(2, missing="marginalize", random_state=0)
    for _ in range(4):
        for part in np.array_split(X, 30):
            before = (online.weights_.copy(), online.means_.copy(), online.covariances_.copy()) \
                if hasattr(online, "means_") else None
            online.partial_fit(part)
            if before is not None:
                assert online.lower_bound_ == pytest.approx(_observed_loglik(part, *before) / len(part), rel=1e-10)
    order = np.argsort(online.means_[:, 0]), np.argsort(batch.means_[:, 0])
    np.testing.assert_allclose(online.means_[order[0]], batch.means_[order[1]], atol=0.05)
