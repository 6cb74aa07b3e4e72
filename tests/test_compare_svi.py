"""pyroem.compare_svi: EM and SVI on one model from one start, checked on the peppered moth.

References: the textbook EM estimate (Givens & Hoeting), the moth's multinomial log-likelihood
Σ n_ph log P(ph) written out by hand, a plain pyro.infer.SVI loop run by hand, and scipy's
maximum of the log posterior for the MAP variant.
"""
import math
import os

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from scipy import optimize, special, stats

import pyroem
from pyroem.models import hardy_weinberg_model

COUNTS = np.array([85.0, 196.0, 341.0])  # carbonaria, insularia, typica
TEXTBOOK_FREQS = np.array([0.07084, 0.18874, 0.74043])  # C, I, T
TEXTBOOK_LOG_LIK = -600.48098
# unordered genotypes CC, CI, CT, II, IT, TT and the phenotype each shows (C > I > T)
PAIRS = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [2, 2]])
PHENOTYPE_OF = torch.tensor([0, 0, 0, 1, 1, 2])
SHOWS = torch.nn.functional.one_hot(PHENOTYPE_OF, 3).double()  # (genotype, phenotype)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def hand_log_lik(p):
    """Σ n_ph log P(ph), multinomial constant dropped, at allele frequencies p = (p_C, p_I, p_T)."""
    c, i, t = (float(v) for v in p)
    pheno = np.array([c * c + 2 * c * i + 2 * c * t, i * i + 2 * i * t, t * t])
    return float(COUNTS @ np.log(pheno))


def genotype_probs(freqs):
    i, j = PAIRS[:, 0], PAIRS[:, 1]
    return freqs[i] * freqs[j] * torch.where(i == j, 1.0, 2.0).to(freqs.dtype)


def moth_individuals(phenotypes):
    """The moth as 622 individuals: a latent genotype each, its phenotype observed (no weights)."""
    freqs = pyro.param("freqs", torch.full((3,), 1.0 / 3, dtype=torch.float64), constraint=constraints.simplex)
    with pyro.plate("moths", len(phenotypes)):
        g = pyro.sample("genotype", dist.Categorical(genotype_probs(freqs)))
        pyro.sample("phenotype", dist.Categorical(SHOWS[g]), obs=phenotypes)


def moth_individuals_map(phenotypes, alpha):
    """As above with a Dirichlet(alpha) prior on the frequencies: a MAP global site."""
    freqs = pyro.sample("freqs", dist.Dirichlet(alpha))
    with pyro.plate("moths", len(phenotypes)):
        g = pyro.sample("genotype", dist.Categorical(genotype_probs(freqs)))
        pyro.sample("phenotype", dist.Categorical(SHOWS[g]), obs=phenotypes)


def moth_counts_map(counts, alpha):
    """The same posterior with the individuals grouped: each phenotype class weighted by its count."""
    freqs = pyro.sample("freqs", dist.Dirichlet(alpha))
    with pyro.plate("phenotypes", 3), poutine.scale(scale=counts):
        g = pyro.sample("genotype", dist.Categorical(genotype_probs(freqs)).expand([3]))
        pyro.sample("phenotype", dist.Categorical(SHOWS[g]), obs=torch.arange(3))


def individual_phenotypes():
    return torch.repeat_interleave(torch.arange(3), torch.as_tensor(COUNTS, dtype=torch.long))


def count_args():
    counts = torch.as_tensor(COUNTS, dtype=torch.float64)
    return counts, PAIRS, PHENOTYPE_OF, 3


def allele_counting(expect, counts, *rest):
    copies = torch.tensor([[2, 0, 0], [1, 1, 0], [1, 0, 1], [0, 2, 0], [0, 1, 1], [0, 0, 2]], dtype=counts.dtype)
    return {"allele_freqs": counts @ expect.marginal("genotype") @ copies / (2 * counts.sum())}


@pytest.fixture(scope="module")
def moth():
    """compare_svi on the count-weighted moth model, with an unrelated param in the store."""
    pyro.clear_param_store()
    pyro.param("unrelated", torch.tensor([1.5, -2.0]))
    result = pyroem.compare_svi(hardy_weinberg_model, *count_args(), em_steps=12, svi_steps=150,
                                updates=allele_counting)
    store = {name: pyro.param(name).detach().clone() for name in pyro.get_param_store().keys()}
    pyro.clear_param_store()
    return result, store


def test_em_reaches_the_textbook_estimate(moth):
    result, _ = moth
    np.testing.assert_allclose(result.em.params["allele_freqs"].numpy(), TEXTBOOK_FREQS, atol=1e-5)
    assert result.em.final_log_likelihood == pytest.approx(TEXTBOOK_LOG_LIK, abs=1e-5)


def test_both_runs_start_from_the_same_hand_computed_log_likelihood(moth):
    result, _ = moth
    start = 85 * math.log(5 / 9) + 196 * math.log(3 / 9) + 341 * math.log(1 / 9)  # p = 1/3 each
    assert result.em.log_likelihood[0] == pytest.approx(start, rel=1e-12)
    assert result.svi.log_likelihood[0] == pytest.approx(start, rel=1e-12)
    assert result.initial_log_likelihood == pytest.approx(start, rel=1e-12)


def test_recorded_log_likelihoods_match_the_hand_formula_at_the_final_params(moth):
    result, _ = moth
    for run in (result.em, result.svi):
        assert run.final_log_likelihood == pytest.approx(hand_log_lik(run.params["allele_freqs"]), rel=1e-12)
    assert result.svi.final_log_likelihood > result.svi.log_likelihood[0] + 300  # SVI climbed


def test_param_store_holds_the_em_result_and_keeps_other_params(moth):
    result, store = moth
    assert set(store) == {"unrelated", "allele_freqs"}
    torch.testing.assert_close(store["allele_freqs"], result.em.params["allele_freqs"])
    torch.testing.assert_close(store["unrelated"], torch.tensor([1.5, -2.0]))
    assert not torch.allclose(result.svi.params["allele_freqs"], result.em.params["allele_freqs"], atol=1e-9, rtol=0)


def test_traces_have_one_entry_per_step_and_a_clock_that_starts_at_zero(moth):
    result, _ = moth
    for run, n in ((result.em, 12), (result.svi, 150)):
        np.testing.assert_array_equal(run.steps, np.arange(n + 1))
        assert len(run.seconds) == len(run.log_likelihood) == n + 1
        assert run.seconds[0] == 0.0 and np.all(np.diff(run.seconds) >= 0) and run.seconds[-1] > 0
    assert np.all(np.diff(result.em.log_likelihood) >= -1e-9)  # EM never goes down


def test_summary_fields(moth):
    result, _ = moth
    s = result.summary()
    best = max(result.em.log_likelihood.max(), result.svi.log_likelihood.max())
    assert s["best_log_likelihood"] == best
    assert s["best_log_likelihood"] == pytest.approx(TEXTBOOK_LOG_LIK, abs=1e-5)
    for key, run in (("em", result.em), ("svi", result.svi)):
        row = s[key]
        assert row["final_log_likelihood"] == run.log_likelihood[-1]
        assert row["steps"] == len(run.steps) - 1 and row["seconds"] == run.seconds[-1] > 0
        k = row["steps_to_within"]
        if k is not None:  # the first step within 1e-3 of the best, and its time
            assert run.log_likelihood[k] >= best - 1e-3 and np.all(run.log_likelihood[:k] < best - 1e-3)
            assert row["seconds_to_within"] == run.seconds[k] > 0
    # gene counting comes within 1e-3 in a handful of steps; Adam at lr 0.05 needs far more
    assert s["em"]["steps_to_within"] <= 6
    assert s["svi"]["steps_to_within"] is None or s["svi"]["steps_to_within"] > 3 * s["em"]["steps_to_within"]
    text = str(s)
    assert "EM" in text and "SVI" in text and f"{s['em']['final_log_likelihood']:.6f}" in text
    # a tolerance no run meets is reported as not reached
    short = result.summary(within=0.0)
    assert short["svi"]["steps_to_within"] is None or short["svi"]["final_log_likelihood"] == best
    with pytest.raises(ValueError, match="within"):
        result.summary(within=-1.0)


def test_not_reached_is_reported():
    result = pyroem.compare_svi(hardy_weinberg_model, *count_args(), em_steps=8, svi_steps=5,
                                updates=allele_counting)
    s = result.summary()
    assert s["svi"]["steps_to_within"] is None and s["svi"]["seconds_to_within"] is None
    assert "not reached" in str(s)


def test_plot_writes_a_png(moth, tmp_path):
    result, _ = moth
    path = str(tmp_path / "cmp.png")
    assert result.plot(path) == path
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert os.path.getsize(path) > 10_000


def hand_svi(model, args, steps, lr=0.05):
    """A plain pyro.infer.SVI loop: empty guide, TraceEnum_ELBO, Adam; frequencies after each step."""
    svi = SVI(config_enumerate(model), lambda *a: None, pyro.optim.Adam({"lr": lr}),
              TraceEnum_ELBO(max_plate_nesting=1))
    path = []
    for _ in range(steps):
        svi.step(*args)
        path.append(pyro.param("freqs").detach().clone())
    return path


def test_svi_trace_equals_a_hand_run_of_pyro_svi():
    phenotypes = individual_phenotypes()
    path = hand_svi(moth_individuals, (phenotypes,), 25)
    expected = [hand_log_lik(p) for p in path]
    pyro.clear_param_store()
    result = pyroem.compare_svi(moth_individuals, phenotypes, em_steps=3, svi_steps=25)
    assert "TraceEnum_ELBO" in result.svi.detail
    np.testing.assert_allclose(result.svi.log_likelihood[1:], expected, rtol=1e-9)
    torch.testing.assert_close(result.svi.params["freqs"], path[-1], rtol=1e-9, atol=1e-12)
    # the count-weighted model takes pyroem's exact loss (TraceEnum_ELBO refuses tensor scales):
    # the same objective and gradient, so the same Adam path
    pyro.clear_param_store()
    counted = pyroem.compare_svi(hardy_weinberg_model, *count_args(), em_steps=3, svi_steps=25)
    assert "ExactELBO" in counted.svi.detail
    np.testing.assert_allclose(counted.svi.log_likelihood[1:], expected, rtol=1e-9)


def test_map_site_is_fitted_by_both_methods():
    """Dirichlet(2, 3, 4) prior on the frequencies: both maximize log p(y|p) + log Dirichlet(p)."""
    alpha = np.array([2.0, 3.0, 4.0])

    def log_post(p):
        return hand_log_lik(p) + stats.dirichlet.logpdf(np.asarray(p, dtype=np.float64), alpha)

    res = optimize.minimize(lambda z: -log_post(special.softmax(np.append(z, 0.0))), np.zeros(2),
                            method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 5000})
    p_map = special.softmax(np.append(res.x, 0.0))

    phenotypes = individual_phenotypes()
    pyro.param("freqs", torch.full((3,), 1.0 / 3, dtype=torch.float64), constraint=constraints.simplex)
    result = pyroem.compare_svi(moth_individuals_map, phenotypes, torch.tensor(alpha), em_steps=15, svi_steps=120)
    np.testing.assert_allclose(result.em.params["freqs"].numpy(), p_map, atol=1e-5)
    assert result.em.final_log_likelihood == pytest.approx(-res.fun, abs=1e-6)
    start = log_post(np.full(3, 1.0 / 3))
    assert result.em.log_likelihood[0] == pytest.approx(start, rel=1e-10)
    assert result.svi.log_likelihood[0] == pytest.approx(start, rel=1e-10)
    # the point-mass guide moved the MAP site, and its recorded value is the hand log posterior
    p_svi = result.svi.params["freqs"].numpy()
    assert np.abs(p_svi - 1.0 / 3).max() > 0.1
    assert result.svi.final_log_likelihood == pytest.approx(log_post(p_svi), rel=1e-10)
    assert result.svi.final_log_likelihood > start + 300
    torch.testing.assert_close(pyro.param("freqs").detach(), result.em.params["freqs"])
    assert set(pyro.get_param_store().keys()) == {"freqs"}  # the guide's own param is gone
    # grouped by counts, SVI takes pyroem's exact loss with the MAP param itself: the same path
    pyro.clear_param_store()
    pyro.param("freqs", torch.full((3,), 1.0 / 3, dtype=torch.float64), constraint=constraints.simplex)
    grouped = pyroem.compare_svi(moth_counts_map, torch.as_tensor(COUNTS), torch.tensor(alpha),
                                 em_steps=15, svi_steps=120)
    assert "ExactELBO" in grouped.svi.detail
    np.testing.assert_allclose(grouped.svi.log_likelihood, result.svi.log_likelihood, rtol=1e-9)
    np.testing.assert_allclose(grouped.em.params["freqs"].numpy(), p_map, atol=1e-5)


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(em_steps=0), ValueError, "em_steps"),
    (dict(em_steps=2.0), TypeError, "em_steps"),
    (dict(svi_steps=True), TypeError, "svi_steps"),
    (dict(svi_steps=-3), ValueError, "svi_steps"),
    (dict(svi_optim=torch.optim.Adam), TypeError, "svi_optim"),
    (dict(svi_elbo="TraceEnum_ELBO"), TypeError, "svi_elbo"),
    (dict(updates=3), TypeError, "updates"),
])
def test_bad_arguments_are_refused(kwargs, error, name):
    arguments = dict(em_steps=2, svi_steps=2)
    arguments.update(kwargs)
    with pytest.raises(error, match=name):
        pyroem.compare_svi(hardy_weinberg_model, *count_args(), **arguments)


def test_model_must_be_callable():
    with pytest.raises(TypeError, match="model"):
        pyroem.compare_svi("not a model", em_steps=2, svi_steps=2)


def test_plot_path_must_be_a_path(moth):
    result, _ = moth
    with pytest.raises(TypeError, match="path"):
        result.plot(42)


def test_param_store_snapshot_round_trip():
    """The store goes back to its snapshot: values, constraints, removed and reshaped params."""
    from pyroem.compare.store import restore_store as _restore, snapshot_store as _snapshot

    pyro.param("p", torch.tensor([0.2, 0.3, 0.5]), constraint=constraints.simplex)
    pyro.param("s", torch.tensor(2.0), constraint=constraints.positive)
    snap = _snapshot()
    store = pyro.get_param_store()
    del store["p"]
    pyro.param("p", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
    store["s"] = torch.tensor(7.0)
    pyro.param("extra", torch.zeros(2))
    _restore(snap)
    assert set(store.keys()) == {"p", "s"}
    torch.testing.assert_close(pyro.param("p").detach(), torch.tensor([0.2, 0.3, 0.5]))
    torch.testing.assert_close(pyro.param("s").detach(), torch.tensor(2.0))
    assert store.get_state()["constraints"]["p"] is constraints.simplex


def test_summary_calls_equal_ends_within_rounding_alike():
    """float32 runs ending 1e-6 apart (relative) are the same value as far as float32 can tell; a
    real gap names the better method."""
    from pyroem.compare import Comparison, MethodTrace

    def run(name, final, dtype):
        return MethodTrace(name, np.arange(3), np.array([0.0, 0.1, 0.2]), np.array([-120.0, -101.0, final]),
                           {"p": torch.zeros(2, dtype=dtype)})

    alike = Comparison(run("EM", -100.0, torch.float32), run("SVI", -100.0 + 1e-4, torch.float32)).summary()
    assert alike["best_method"] == "EM and SVI alike, within float32 rounding"
    assert "(by EM and SVI alike, within float32 rounding)" in str(alike)
    apart = Comparison(run("EM", -100.0, torch.float64), run("SVI", -100.0 + 1e-4, torch.float64)).summary()
    assert apart["best_method"] == "SVI"
    ahead = Comparison(run("EM", -100.0, torch.float32), run("SVI", -100.5, torch.float32)).summary()
    assert ahead["best_method"] == "EM"
