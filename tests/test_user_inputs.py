"""What a new user hands the engine: NumPy arrays, pandas objects, integer 0/1 answers — each
scored as numpy computes it by hand."""
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
