"""``pyroem.decode``: the jointly most probable assignment of a model's latents, against brute force
over every assignment and against hmmlearn's Viterbi."""
import itertools

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy.stats import norm

import pyroem
from engine_models import HMM_INIT, NEST_INIT, NEST_SIGMA, hmm_data, make_hmm, make_nested, nested_data, np_


def test_nested_plates_decode_to_the_brute_force_maximum():
    y_out, y_in = nested_data()
    pyro.clear_param_store()
    dec = pyroem.decode(make_nested(), y_out, y_in)
    yo, yi = np_(y_out), np_(y_in)
    pa, pb, pc = (np.array(NEST_INIT[k]) for k in ("pa", "pb", "pc"))
    mu_a, loc_bc = np.array(NEST_INIT["mu_a"]), np.array(NEST_INIT["loc_bc"])
    A, B = yi.shape
    best, arg = -np.inf, None
    for a in itertools.product(range(2), repeat=A):
        for b in itertools.product(range(2), repeat=A * B):
            for c in itertools.product(range(3), repeat=A * B):
                a_, b_, c_ = np.array(a), np.array(b).reshape(A, B), np.array(c).reshape(A, B)
                lj = (np.log(pa[a_]).sum() + norm.logpdf(yo[:, 0], mu_a[a_], 1.0).sum()
                      + np.log(pb[a_[:, None], b_]).sum() + np.log(pc[b_, c_]).sum()
                      + norm.logpdf(yi, loc_bc[b_, c_], NEST_SIGMA).sum())
                if lj > best:
                    best, arg = lj, (a_, b_, c_)
    assert dec.log_prob == pytest.approx(best, rel=1e-12)
    np.testing.assert_array_equal(np_(dec["a"]).reshape(-1), arg[0])
    np.testing.assert_array_equal(np_(dec["b"]).reshape(A, B), arg[1])
    np.testing.assert_array_equal(np_(dec["c"]).reshape(A, B), arg[2])


def test_markov_chain_decodes_as_hmmlearn_viterbi():
    hmm = pytest.importorskip("hmmlearn.hmm")
    g = torch.Generator().manual_seed(1)
    y = torch.cat([hmm_data(), torch.randn(40, generator=g, dtype=torch.float64) * 1.5])
    pyro.clear_param_store()
    dec = pyroem.decode(make_hmm(), y)
    ref = hmm.GaussianHMM(n_components=3, covariance_type="diag", init_params="", params="")
    ref.startprob_ = np.array(HMM_INIT["pi"])
    ref.transmat_ = np.array(HMM_INIT["trans"])
    ref.means_ = np.array(HMM_INIT["loc"])[:, None]
    ref.covars_ = (np.array(HMM_INIT["scale"]) ** 2)[:, None]
    logprob, states = ref.decode(np_(y)[:, None], algorithm="viterbi")
    decoded = np.array([int(dec[f"x_{t}"]) for t in range(len(y))])
    np.testing.assert_array_equal(decoded, states)
    assert dec.log_prob == pytest.approx(logprob, rel=1e-12)


def test_decode_at_fitted_params_of_a_map_model():
    """MAP sites keep their fitted values; the decoded log-probability includes their log prior."""
    y = torch.tensor([-2.1, -1.7, 2.2, 1.9, 0.3], dtype=torch.float64)

    def model(y):
        w = pyro.sample("w", dist.Dirichlet(torch.tensor([2.0, 2.0], dtype=y.dtype)))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("obs", dist.Normal(torch.tensor([-2.0, 2.0], dtype=y.dtype)[z], 1.0), obs=y)

    pyro.clear_param_store()
    res = pyroem.EM(model).fit(y, max_iter=50)
    dec = pyroem.decode(model, y)
    w = np_(res.params["w"])
    lj = np.log(w)[None, :] + norm.logpdf(np_(y)[:, None], np.array([-2.0, 2.0])[None, :], 1.0)
    expected = lj.max(1).sum() + np.log(6.0 * w[0] * w[1])  # Dirichlet(2, 2) density 6 w0 w1
    assert dec.log_prob == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(np_(dec["z"]), lj.argmax(1))
