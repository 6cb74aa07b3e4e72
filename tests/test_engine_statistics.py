"""The closed-form M-step as statistics and solve: the same fit as ``updates``, and data in pieces
whose statistics add up to one step on all of it."""
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from scipy.special import logsumexp
from scipy.stats import norm

import pyroem


def mixture(y):
    w = pyro.param("w", torch.tensor([0.5, 0.5], dtype=y.dtype), constraint=constraints.simplex)
    loc = pyro.param("loc", torch.tensor([-1.0, 1.0], dtype=y.dtype))
    scale = pyro.param("scale", torch.tensor([1.0, 1.0], dtype=y.dtype), constraint=constraints.positive)
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("y", dist.Normal(loc[z], scale[z]), obs=y)


def statistics(expect, y):
    r = expect.marginal("z")                                   # (N, 2)
    return {"n": r.sum(0), "sy": r.T @ y, "syy": r.T @ y.square()}


def solve(stats, y):
    n, mean = stats["n"], stats["sy"] / stats["n"]
    return {"w": n / n.sum(), "loc": mean, "scale": (stats["syy"] / n - mean.square()).sqrt()}


def updates(expect, y):
    return solve(statistics(expect, y), y)


def data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n // 3, generator=g, dtype=torch.float64) * 0.7 - 2,
                      torch.randn(n - n // 3, generator=g, dtype=torch.float64) + 1.5])


def reference_step(params, y):
    """One EM step by hand (numpy, scipy): log p(y) at the start and the new parameters."""
    w, loc, scale = (np.asarray(params[k]) for k in ("w", "loc", "scale"))
    joint = np.log(w) + norm.logpdf(y[:, None], loc, scale)
    r = np.exp(joint - logsumexp(joint, axis=1, keepdims=True))
    n = r.sum(0)
    mean = r.T @ y / n
    return logsumexp(joint, axis=1).sum(), {"w": n / n.sum(), "loc": mean,
                                            "scale": np.sqrt((r * (y[:, None] - mean) ** 2).sum(0) / n)}


def test_statistics_and_solve_fit_as_updates_do():
    y = data()
    runs = {}
    for kind in ("updates", "statistics"):
        pyro.clear_param_store()
        em = (pyroem.EM(mixture, updates) if kind == "updates"
              else pyroem.EM(mixture, statistics=statistics, solve=solve))
        runs[kind] = em.fit(y, max_iter=25, tol=0.0).history
    np.testing.assert_allclose(runs["statistics"], runs["updates"], rtol=1e-13)


def test_pieces_of_data_add_up_to_one_step_on_all_of_it():
    y = data(301)
    pyro.clear_param_store()
    em = pyroem.EM(mixture, statistics=statistics, solve=solve)
    start = {"w": [0.5, 0.5], "loc": [-1.0, 1.0], "scale": [1.0, 1.0]}   # the model's initial params
    ll_ref, new_ref = reference_step(start, y.numpy())
    pieces = [em.statistics(part) for part in torch.split(y, 100)]
    total = pyroem.EM.sum_statistics(pieces)
    assert float(total["log_likelihood"]) == pytest.approx(ll_ref, rel=1e-13)
    em.solve(total, y[:100])
    for name, value in new_ref.items():
        np.testing.assert_allclose(pyro.param(name).detach().numpy(), value, rtol=1e-12)


def test_statistics_and_solve_are_checked():
    y = data(30)
    with pytest.raises(ValueError, match="either updates or statistics"):
        pyroem.EM(mixture, updates, statistics=statistics, solve=solve)
    with pytest.raises(ValueError, match="go together"):
        pyroem.EM(mixture, statistics=statistics)
    with pytest.raises(ValueError, match="needs EM\\(model, statistics"):
        pyroem.EM(mixture, updates).statistics(y)
    pyro.clear_param_store()
    em = pyroem.EM(mixture, statistics=statistics, solve=lambda stats, y: {"w": stats["n"] / stats["n"].sum()})
    with pytest.raises(ValueError, match="solve left out 'loc', 'scale'"):
        em.solve(em.statistics(y), y)
    bad = pyroem.EM(mixture, statistics=lambda expect, y: {"n": 3.0}, solve=solve)
    with pytest.raises(TypeError, match="dict \\{name: tensor\\}"):
        bad.statistics(y)
    with pytest.raises(ValueError, match="name different sums"):
        pyroem.EM.sum_statistics([{"a": torch.ones(1)}, {"b": torch.ones(1)}])


def reference_fit(y, steps):
    """``steps`` EM steps by hand from the model's start: the log-likelihoods and the last params."""
    params, lls = {"w": [0.5, 0.5], "loc": [-1.0, 1.0], "scale": [1.0, 1.0]}, []
    for _ in range(steps):
        ll, params = reference_step(params, y)
        lls.append(ll)
    return lls, params


@pytest.mark.parametrize("pieces", ["list", "dataloader", "dicts", "numpy"])
def test_fit_on_data_in_pieces_is_the_fit_on_all_of_it(pieces):
    """``EM.fit(data=...)``: every step's E-step runs piece by piece; the history and the params are
    those of EM on all of the data (numpy by hand), with squarem too."""
    from torch.utils.data import DataLoader, TensorDataset

    y = data(301)
    parts = list(torch.split(y, 64))
    source = {"list": parts, "dataloader": DataLoader(TensorDataset(y), batch_size=64),
              "dicts": [{"y": p} for p in parts], "numpy": [p.numpy() for p in parts]}[pieces]
    pyro.clear_param_store()
    res = pyroem.EM(mixture, statistics=statistics, solve=solve).fit(data=source, max_iter=12, tol=0.0)
    lls, params = reference_fit(y.numpy(), 13)
    np.testing.assert_allclose(res.history, lls, rtol=1e-12)
    assert res.n_iter == 12 and len(res.history) == 13
    for name in ("w", "loc", "scale"):  # after 12 steps: the params the 13th reference step started from
        _, after = reference_fit(y.numpy(), 12)
        np.testing.assert_allclose(res.params[name].numpy(), after[name], rtol=1e-11)
    pyro.clear_param_store()
    acc = pyroem.EM(mixture, statistics=statistics, solve=solve).fit(data=source, accelerate="squarem", tol=1e-12)
    lls, _ = reference_fit(y.numpy(), 400)
    assert acc.converged and acc.log_likelihood == pytest.approx(lls[-1], rel=1e-10)


def test_data_in_pieces_is_checked():
    y = data()
    em = pyroem.EM(mixture, statistics=statistics, solve=solve)
    with pytest.raises(ValueError, match="re-iterable"):
        em.fit(data=(p for p in torch.split(y, 50)))
    with pytest.raises(ValueError, match="not one array"):
        em.fit(data=y)
    with pytest.raises(ValueError, match="no pieces"):
        em.fit(data=[])
    with pytest.raises(ValueError, match="statistics=..., solve="):
        pyroem.EM(mixture, updates).fit(data=[y])
    bad = [y[:100], torch.full((10,), float("nan"), dtype=y.dtype)]
    with pytest.raises(ValueError, match="piece 1 of the data"):
        pyroem.EM(mixture, statistics=statistics, solve=solve).fit(data=bad)


def test_final_m_step_ends_as_scikit_learn_and_hmmlearn_do():
    """``final_m_step=True``: ``max_iter`` M-steps, one log-likelihood before each (the peers'
    order), and the params after the last M-step (numpy by hand)."""
    y = data()
    pyro.clear_param_store()
    res = pyroem.EM(mixture, updates).fit(y, max_iter=5, tol=None, final_m_step=True)
    lls, params = reference_fit(y.numpy(), 5)
    assert res.n_iter == 5 and res.stop_reason == "max_iter"
    np.testing.assert_allclose(res.history, lls, rtol=1e-12)
    for name in params:
        np.testing.assert_allclose(res.params[name].numpy(), params[name], rtol=1e-11)
    pyro.clear_param_store()
    stopped = pyroem.EM(mixture, updates).fit(y, max_iter=50, callback=lambda n, ll, p: n == 2, final_m_step=True)
    lls, params = reference_fit(y.numpy(), 3)
    assert stopped.n_iter == 3 and stopped.stop_reason == "callback"
    np.testing.assert_allclose(stopped.history, lls, rtol=1e-12)
    np.testing.assert_allclose(stopped.params["loc"].numpy(), params["loc"], rtol=1e-11)


def test_the_callback_sees_the_e_step_of_its_params():
    y = data()
    seen = []
    em = pyroem.EM(mixture, updates)
    pyro.clear_param_store()
    em.fit(y, max_iter=3, callback=lambda n, ll, p: seen.append((ll, em.last_e_step.log_likelihood_value())))
    assert len(seen) == 4 and all(a == b for a, b in seen) and em.last_e_step is None
    lls, _ = reference_fit(y.numpy(), 4)
    np.testing.assert_allclose([a for a, _ in seen], lls, rtol=1e-12)


def test_autograd_m_step_on_data_in_pieces_reaches_the_optimum():
    """No closed form: the pieces' Q summed and maximized piece by piece by L-BFGS; the fit climbs
    to the maximum likelihood found by scipy on all of the data."""
    from scipy.optimize import minimize

    y = data(301)
    pyro.clear_param_store()
    plain = pyroem.EM(mixture).fit(data=torch.split(y, 64), max_iter=5)
    assert all(b > a for a, b in zip(plain.history, plain.history[1:]))   # each step climbs
    pyro.clear_param_store()
    res = pyroem.EM(mixture).fit(data=torch.split(y, 151), max_iter=200, tol=1e-10, accelerate="squarem")
    assert res.converged

    def neg(theta):
        w = 1 / (1 + np.exp(-theta[0]))
        joint = np.stack([np.log(w) + norm.logpdf(y.numpy(), theta[1], np.exp(theta[3])),
                          np.log1p(-w) + norm.logpdf(y.numpy(), theta[2], np.exp(theta[4]))], 1)
        return -logsumexp(joint, axis=1).sum()

    best = minimize(neg, np.array([0.0, -1.5, 1.5, 0.0, 0.0]), method="BFGS", options={"gtol": 1e-8})
    assert res.log_likelihood == pytest.approx(-best.fun, abs=1e-6)
    np.testing.assert_allclose(sorted(res.params["loc"].numpy()), sorted(best.x[1:3]), atol=1e-4)
