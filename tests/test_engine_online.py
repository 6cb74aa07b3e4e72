"""Online (stepwise) EM and batches of in-memory data: the running statistics by hand, the batch
optimum reached in a few passes (numpy by hand; scikit-learn for ``GaussianMixture.partial_fit``)."""
import numpy as np
import pyro
import pytest
import torch

import pyroem
from test_engine_statistics import mixture, reference_fit, reference_step, solve, statistics, updates


def big_data(n=100_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, generator=g, dtype=torch.float64) < 0.35
    return torch.where(z, torch.randn(n, generator=g, dtype=torch.float64) * 0.6 - 1.5,
                       torch.randn(n, generator=g, dtype=torch.float64) + 2.0)


def test_stepwise_statistics_blend_as_cappe_and_moulines():
    """``s₁ = P·S₀``, then ``s_{t+1} = (1 − γ_t) s_t + γ_t P S_t`` with ``γ_t = (t + 2)^(−α)``."""
    state = pyroem.StepwiseStatistics(0.75, scale=4)
    for value in (1.0, 3.0, -2.0):
        out = state.update({"a": torch.tensor([value], dtype=torch.float64), "log_likelihood": torch.tensor(0.0)})
    g1, g2 = 3 ** -0.75, 4 ** -0.75
    s = 4 * 1.0
    s = (1 - g1) * s + g1 * 4 * 3.0
    s = (1 - g2) * s + g2 * 4 * -2.0
    assert float(out["a"]) == pytest.approx(s, rel=1e-15) and state.t == 3 and set(out) == {"a"}


def test_online_em_reaches_the_batch_optimum_in_a_few_passes():
    y = big_data()
    lls, _ = reference_fit(y.numpy(), 80)   # batch EM by hand, converged (changes below 1e-9 by then)
    optimum = lls[-1] / len(y)
    torch.manual_seed(0)
    pyro.clear_param_store()
    res = pyroem.EM(mixture, statistics=statistics, solve=solve).fit(y, batch_size=2000, step_size=0.6, max_iter=3)
    assert res.n_iter == 3 and len(res.history) == 3
    params = {k: v.numpy() for k, v in res.params.items()}
    ll, _ = reference_step(params, y.numpy())
    assert abs(ll / len(y) - optimum) < 1e-4
    # one batch EM pass from the same start is nowhere near
    assert abs(lls[2] / len(y) - optimum) > 1e-2


def test_batches_without_a_step_size_are_exact_batch_em():
    y = big_data(3001)
    pyro.clear_param_store()
    res = pyroem.EM(mixture, statistics=statistics, solve=solve).fit(y, batch_size=500, max_iter=8, tol=0.0)
    lls, _ = reference_fit(y.numpy(), 9)
    np.testing.assert_allclose(res.history, lls, rtol=1e-12)


def test_online_em_arguments_are_checked():
    y = big_data(1000)
    em = pyroem.EM(mixture, statistics=statistics, solve=solve)
    with pytest.raises(ValueError, match=r"exponent α in \(0.5, 1\]"):
        em.fit(y, batch_size=100, step_size=0.4)
    with pytest.raises(ValueError, match="needs mini-batches"):
        em.fit(y, step_size=0.6)
    with pytest.raises(ValueError, match="not both"):
        em.fit(data=[y], batch_size=10)
    with pytest.raises(ValueError, match="batch_size must be an int"):
        em.fit(y, batch_size=0)
    with pytest.raises(ValueError, match="takes neither"):
        em.fit(y, batch_size=100, step_size=0.6, accelerate="squarem")
    with pytest.raises(ValueError, match="sees one piece"):
        pyroem.EM(mixture, updates).fit(y, batch_size=100)
    with pytest.raises(ValueError, match="blends statistics"):
        pyroem.EM(mixture).fit(y, batch_size=100, step_size=0.6)


def test_gaussian_mixture_partial_fit_reaches_scikit_learns_optimum():
    from sklearn.datasets import make_blobs
    from sklearn.mixture import GaussianMixture as Reference

    from pyroem.models import GaussianMixture

    X, _ = make_blobs(60_000, n_features=3, centers=4, cluster_std=1.5, random_state=1)
    best = Reference(4, random_state=0, tol=1e-8, max_iter=500).fit(X).score(X)
    ours = GaussianMixture(4, random_state=0)
    rng = np.random.default_rng(0)
    for _ in range(2):
        for rows in np.array_split(rng.permutation(len(X)), 30):
            ours.partial_fit(X[rows])
    assert ours.n_iter_ == 60 and not ours.converged_
    assert abs(ours.score(X) - best) < 1e-3
    refit = GaussianMixture(4, random_state=0).fit(X)   # fit starts afresh; partial_fit then continues it
    before = refit.score(X)
    refit.partial_fit(X[:5000])
    assert refit.n_iter_ == 1 and abs(refit.score(X) - before) < 1e-2
