"""HardyWeinberg against textbook values, a hand-written numpy EM, scipy and closed forms."""
import math

import numpy as np
import pyro
import pytest
import torch
from scipy.optimize import minimize

import pyroem
from pyroem.models import HardyWeinberg, hardy_weinberg_model
from pyroem.models.hardy_weinberg import NotFittedError

MOTH = {"carbonaria": 85, "insularia": 196, "typica": 341}
ABO = {"A": 186, "B": 38, "AB": 13, "O": 284}


# -- independent references ------------------------------------------------------------
def _pheno_probs(p, alleles, phenotypes):
    """P(phenotype) under Hardy-Weinberg, written out genotype by genotype."""
    idx = {a: k for k, a in enumerate(alleles)}
    out = []
    for genotypes in phenotypes.values():
        total = 0.0
        for a, b in genotypes:
            total = total + (p[idx[a]] ** 2 if a == b else 2 * p[idx[a]] * p[idx[b]])
        out.append(total)
    return out


def _loglik(p, alleles, phenotypes, counts):
    probs = _pheno_probs(p, alleles, phenotypes)
    return float(sum(n * np.log(q) for n, q in zip(counts, probs)))


def _numpy_em(alleles, phenotypes, counts, steps):
    """Gene counting by hand: split each phenotype count over its genotypes, count alleles."""
    idx = {a: k for k, a in enumerate(alleles)}
    p = np.full(len(alleles), 1.0 / len(alleles))
    path, lls = [p.copy()], [_loglik(p, alleles, phenotypes, counts)]
    for _ in range(steps):
        allele_counts = np.zeros(len(alleles))
        for n, genotypes in zip(counts, phenotypes.values()):
            w = np.array([p[idx[a]] ** 2 if a == b else 2 * p[idx[a]] * p[idx[b]] for a, b in genotypes])
            for (a, b), share in zip(genotypes, n * w / w.sum()):
                allele_counts[idx[a]] += share
                allele_counts[idx[b]] += share
        p = allele_counts / (2 * sum(counts))
        path.append(p.copy())
        lls.append(_loglik(p, alleles, phenotypes, counts))
    return np.array(path), np.array(lls)


def _scipy_mle(alleles, phenotypes, counts):
    """Maximize Σ n_ph log P(ph) directly over softmax coordinates."""
    def to_p(x):
        z = np.concatenate([[0.0], x])
        e = np.exp(z - z.max())
        return e / e.sum()

    res = minimize(lambda x: -_loglik(to_p(x), alleles, phenotypes, counts), np.zeros(len(alleles) - 1),
                   method="BFGS", options={"gtol": 1e-9})
    return to_p(res.x), -res.fun


MOTH_SYSTEM = (["C", "I", "T"], {"carbonaria": ["CC", "CI", "CT"], "insularia": ["II", "IT"], "typica": ["TT"]})
ABO_SYSTEM = (["A", "B", "O"], {"A": ["AA", "AO"], "B": ["BB", "BO"], "AB": ["AB"], "O": ["OO"]})


# -- textbook values -------------------------------------------------------------------
@pytest.mark.parametrize("mstep", ["closed-form", "autograd"])
def test_peppered_moth_textbook_values(mstep):
    hw = HardyWeinberg.peppered_moth(mstep=mstep, tol=1e-12).fit(MOTH)
    expected = {"C": 0.07084, "I": 0.18874, "T": 0.74043}
    for allele, value in expected.items():
        assert round(hw.allele_freqs_[allele], 5) == value
    assert round(hw.log_likelihood_, 5) == -600.48098
    assert hw.converged_


@pytest.mark.parametrize("mstep", ["closed-form", "autograd"])
def test_abo_textbook_values(mstep):
    hw = HardyWeinberg.abo(mstep=mstep, tol=1e-12).fit(ABO)
    expected = {"A": 0.21359, "B": 0.05015, "O": 0.73626}
    for allele, value in expected.items():
        assert round(hw.allele_freqs_[allele], 5) == value


def test_moth_converges_in_under_ten_steps_from_uniform():
    hw = HardyWeinberg.peppered_moth().fit(MOTH)  # default tol 1e-8 (relative change in log-lik)
    assert hw.converged_ and hw.n_iter_ < 10
    assert hw.allele_freqs_history_[0] == pytest.approx({"C": 1 / 3, "I": 1 / 3, "T": 1 / 3}, abs=1e-15)
    assert np.all(np.diff(hw.history_) >= -1e-9)


# -- hand-written EM, scipy -----------------------------------------------------------
@pytest.mark.parametrize("system,counts", [(MOTH_SYSTEM, MOTH), (ABO_SYSTEM, ABO)])
def test_steps_match_hand_written_numpy_em(system, counts):
    alleles, phenotypes = system
    n = list(counts.values())
    hw = HardyWeinberg(alleles, phenotypes, max_iter=6, tol=0.0).fit(n)
    path, lls = _numpy_em(alleles, phenotypes, n, steps=6)
    assert hw.n_iter_ == 6 and not hw.converged_
    got = np.array([[d[a] for a in alleles] for d in hw.allele_freqs_history_])
    np.testing.assert_allclose(got, path, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hw.history_, lls, rtol=1e-12)
    assert hw.log_likelihood_ == pytest.approx(lls[-1], rel=1e-12)


@pytest.mark.parametrize("mstep", ["closed-form", "autograd"])
@pytest.mark.parametrize("system,counts", [(MOTH_SYSTEM, MOTH), (ABO_SYSTEM, ABO)])
def test_matches_scipy_direct_maximization(system, counts, mstep):
    alleles, phenotypes = system
    n = list(counts.values())
    p_ref, ll_ref = _scipy_mle(alleles, phenotypes, n)
    hw = HardyWeinberg(alleles, phenotypes, mstep=mstep, tol=1e-13, max_iter=200).fit(n)
    np.testing.assert_allclose([hw.allele_freqs_[a] for a in alleles], p_ref, atol=1e-6)
    assert hw.log_likelihood_ == pytest.approx(ll_ref, abs=1e-8)
    assert hw.log_likelihood_ >= ll_ref - 1e-9  # EM reaches at least scipy's optimum


def test_both_msteps_follow_the_same_path():
    a = HardyWeinberg.abo(mstep="closed-form", max_iter=5, tol=0.0).fit(ABO)
    b = HardyWeinberg.abo(mstep="autograd", max_iter=5, tol=0.0).fit(ABO)
    for da, db in zip(a.allele_freqs_history_, b.allele_freqs_history_):
        assert da == pytest.approx(db, abs=1e-7)
    np.testing.assert_allclose(a.history_, b.history_, rtol=1e-9)


def test_history_non_decreasing_and_ends_at_log_likelihood():
    hw = HardyWeinberg.abo(init={"A": 0.8, "B": 0.1, "O": 0.1}, tol=1e-12).fit(ABO)
    h = np.array(hw.history_)
    assert len(h) == hw.n_iter_ + 1 == len(hw.allele_freqs_history_)
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:]))
    assert h[-1] == hw.log_likelihood_
    assert hw.allele_freqs_history_[0] == pytest.approx({"A": 0.8, "B": 0.1, "O": 0.1})


# -- learned attributes ------------------------------------------------------------------
def test_genotype_and_phenotype_frequencies_and_expected_counts():
    hw = HardyWeinberg.abo(tol=1e-12).fit(ABO)
    pa, pb, po = (hw.allele_freqs_[a] for a in "ABO")
    assert sum(hw.allele_freqs_.values()) == pytest.approx(1.0, abs=1e-12)
    assert hw.genotype_freqs_ == pytest.approx(
        {"AA": pa * pa, "AB": 2 * pa * pb, "AO": 2 * pa * po, "BB": pb * pb, "BO": 2 * pb * po, "OO": po * po})
    assert hw.phenotype_freqs_ == pytest.approx(
        {"A": pa * pa + 2 * pa * po, "B": pb * pb + 2 * pb * po, "AB": 2 * pa * pb, "O": po * po})
    share_aa = pa * pa / (pa * pa + 2 * pa * po)
    share_bb = pb * pb / (pb * pb + 2 * pb * po)
    assert hw.expected_genotype_counts_ == pytest.approx(
        {"AA": 186 * share_aa, "AO": 186 * (1 - share_aa), "BB": 38 * share_bb, "BO": 38 * (1 - share_bb),
         "AB": 13.0, "OO": 284.0}, rel=1e-10)
    # the fixed point of allele counting: p_A = (2 E[n_AA] + E[n_AB] + E[n_AO]) / 2n
    e = hw.expected_genotype_counts_
    assert pa == pytest.approx((2 * e["AA"] + e["AB"] + e["AO"]) / (2 * 521), abs=5e-8)


def test_score_is_the_multinomial_log_likelihood_without_constant():
    hw = HardyWeinberg.peppered_moth(tol=1e-12).fit(MOTH)
    p = [hw.allele_freqs_[a] for a in "CIT"]
    other = [10, 20, 30]
    assert hw.score(other) == pytest.approx(_loglik(p, *MOTH_SYSTEM, other), rel=1e-12)
    assert hw.score(MOTH) == pytest.approx(hw.log_likelihood_, rel=1e-12)


# -- other allele systems, edge cases ------------------------------------------------------
@pytest.mark.parametrize("mstep", ["closed-form", "autograd"])
def test_two_alleles_with_dominance_has_closed_form_mle(mstep):
    # dominant phenotype = DD, Dd; recessive = dd: the MLE is q = sqrt(n_rec / n)
    hw = HardyWeinberg(["D", "d"], {"dominant": [("D", "D"), ("d", "D")], "recessive": [("d", "d")]},
                       mstep=mstep, tol=1e-14, max_iter=500).fit({"recessive": 16, "dominant": 84})
    assert hw.converged_
    assert hw.allele_freqs_["d"] == pytest.approx(0.4, abs=1e-6)
    assert hw.allele_freqs_["D"] == pytest.approx(0.6, abs=1e-6)


def test_codominant_system_is_direct_allele_counting():
    # every genotype visible: EM must return the allele counts after one step
    alleles = ["A1", "A2", "A3"]
    phenotypes = {f"{a}/{b}": [f"{a}/{b}"] for i, a in enumerate(alleles) for b in alleles[i:]}
    counts = [5, 10, 3, 20, 7, 1]  # A1A1, A1A2, A1A3, A2A2, A2A3, A3A3
    hw = HardyWeinberg(alleles, phenotypes, tol=1e-12).fit(counts)
    n = sum(counts)
    assert hw.allele_freqs_ == pytest.approx(
        {"A1": (2 * 5 + 10 + 3) / (2 * n), "A2": (10 + 2 * 20 + 7) / (2 * n), "A3": (3 + 7 + 2 * 1) / (2 * n)},
        abs=1e-12)
    assert list(hw.genotype_freqs_) == ["A1/A1", "A1/A2", "A1/A3", "A2/A2", "A2/A3", "A3/A3"]


def test_genotype_order_inside_a_pair_does_not_matter():
    flipped = {"carbonaria": ["CC", "IC", "TC"], "insularia": ["II", ("T", "I")], "typica": ["TT"]}
    a = HardyWeinberg(["C", "I", "T"], flipped, tol=1e-12).fit(MOTH)
    b = HardyWeinberg.peppered_moth(tol=1e-12).fit(MOTH)
    assert a.allele_freqs_ == pytest.approx(b.allele_freqs_, abs=1e-14)
    assert list(a.genotype_freqs_) == ["CC", "CI", "CT", "II", "IT", "TT"]


def test_phenotypes_without_counts_drive_an_allele_to_zero():
    # no B carriers seen: p_B = 0 and p_O = sqrt(n_O / n) exactly
    hw = HardyWeinberg.abo(tol=1e-14, max_iter=500).fit({"A": 186, "B": 0, "AB": 0, "O": 284})
    assert hw.allele_freqs_["B"] == 0.0
    assert hw.allele_freqs_["O"] == pytest.approx(math.sqrt(284 / 470), abs=1e-7)
    assert math.isfinite(hw.log_likelihood_)


def test_float32():
    hw = HardyWeinberg.peppered_moth(dtype=torch.float32, max_iter=30).fit(MOTH)
    assert hw.allele_freqs_ == pytest.approx({"C": 0.0708369, "I": 0.1887365, "T": 0.7404266}, abs=1e-5)
    assert hw.log_likelihood_ == pytest.approx(-600.48098, abs=1e-3)


def test_counts_as_sequence_array_and_tensor_agree():
    ref = HardyWeinberg.peppered_moth().fit(MOTH).allele_freqs_
    for counts in ([85, 196, 341], np.array([85.0, 196.0, 341.0]), torch.tensor([85, 196, 341])):
        assert HardyWeinberg.peppered_moth().fit(counts).allele_freqs_ == pytest.approx(ref, abs=1e-15)


def test_fit_leaves_the_global_param_store_alone():
    pyro.param("allele_freqs", torch.tensor([0.5, 0.5]))
    HardyWeinberg.peppered_moth().fit(MOTH)
    assert torch.equal(pyro.param("allele_freqs"), torch.tensor([0.5, 0.5]))


def test_exported_model_runs_under_pyroem_directly():
    # hardy_weinberg_model is a plain Pyro model: its log-likelihood at set freqs is the hand value
    pairs = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [2, 2]])
    phenotype_of = torch.tensor([0, 2, 0, 1, 1, 3])  # ABO: AA->A, AB->AB, AO->A, BB->B, BO->B, OO->O
    counts = torch.tensor([186.0, 38.0, 13.0, 284.0], dtype=torch.float64)
    p = [0.3, 0.1, 0.6]
    pyro.param("allele_freqs", torch.tensor(p, dtype=torch.float64))
    ll = pyroem.log_likelihood(hardy_weinberg_model, counts, pairs, phenotype_of, 3)
    assert float(ll.detach()) == pytest.approx(_loglik(p, *ABO_SYSTEM, [186, 38, 13, 284]), rel=1e-12)


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("counts,match", [
    ({"carbonaria": 85, "insularia": 196, "typica": 341, "melanic": 2}, "unknown phenotype"),
    ({"carbonaria": 85, "insularia": 196}, "missing phenotype"),
    ([85, -1, 341], "non-negative"),
    ([0, 0, 0], "all zero"),
    ([85, 196], "2 values but there are 3 phenotypes"),
    ([85, "many", 341], "must be a number"),
    ([85, float("nan"), 341], "NaN"),
    ([85, float("inf"), 341], "infinity"),
    ("85 196 341", "mapping"),
    (85, "mapping"),
])
def test_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        HardyWeinberg.peppered_moth().fit(counts)


@pytest.mark.parametrize("alleles,phenotypes,match", [
    (["C", "I", "T"], {"dark": ["CC", "CI", "CT", "CX"], "light": ["II", "IT", "TT"]}, "unknown allele"),
    (["C", "I", "T"], {"dark": ["CC", "CI", "CT", "IT"], "light": ["II", "TI", "TT"]}, "two phenotypes"),
    (["C", "I", "T"], {"dark": ["CC", "CI", "CT"], "light": ["II", "TT"]}, r"\['IT'\] show no phenotype"),
    (["C", "I", "T"], {"dark": ["CCC"], "light": ["II"]}, "genotype string"),
    (["C", "I", "T"], {"dark": [("C", "I", "T")], "light": ["II"]}, "exactly two alleles"),
    (["C", "I", "T"], {"dark": []}, "non-empty list"),
    (["C", "I", "T"], {}, "non-empty mapping"),
    (["C", "C", "T"], {"dark": ["CC"]}, "distinct"),
    (["C"], {"dark": ["CC"]}, "at least 2"),
    ("CIT", {"dark": ["CC"]}, "sequence of allele names"),
])
def test_bad_allele_system(alleles, phenotypes, match):
    with pytest.raises(ValueError, match=match):
        HardyWeinberg(alleles, phenotypes)


@pytest.mark.parametrize("kwargs,match", [
    ({"mstep": "newton"}, "mstep"),
    ({"max_iter": -1}, "max_iter"),
    ({"tol": float("nan")}, "tol"),
    ({"dtype": torch.int64}, "dtype"),
    ({"init": [0.5, 0.5]}, "2 values but there are 3 alleles"),
    ({"init": [0.0, 0.5, 0.5]}, "positive"),
    ({"init": [0.2, 0.2, 0.2]}, "sum to 1"),
    ({"init": {"C": 0.2, "I": 0.3, "X": 0.5}}, "unknown allele"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HardyWeinberg.peppered_moth(**kwargs)


def test_score_before_fit_raises_not_fitted():
    with pytest.raises(NotFittedError, match="fit"):
        HardyWeinberg.abo().score(ABO)


@pytest.mark.parametrize("mstep", ["closed-form", "autograd"])
def test_squarem_reaches_the_textbook_abo_estimate_in_fewer_steps(mstep):
    counts = {"A": 186, "B": 38, "AB": 13, "O": 284}
    plain = HardyWeinberg.abo(mstep=mstep, tol=1e-12, max_iter=500).fit(counts)
    fast = HardyWeinberg.abo(mstep=mstep, tol=1e-12, max_iter=500, accelerate="squarem").fit(counts)
    assert fast.allele_freqs_ == pytest.approx({"A": 0.21359, "B": 0.05015, "O": 0.73626}, abs=1e-5)
    assert fast.log_likelihood_ == pytest.approx(plain.log_likelihood_, rel=1e-12)
    assert fast.n_iter_ < plain.n_iter_
    assert all(b >= a - 1e-9 for a, b in zip(fast.history_, fast.history_[1:]))
    with pytest.raises(ValueError, match="accelerate must be None or one of"):
        HardyWeinberg.abo(accelerate="aitken")


def test_peppered_moth_standard_errors_match_a_finite_difference_information():
    """``allele_freqs_se_``: the observed information on the simplex, as a central-difference
    Hessian of the multinomial log-likelihood in (p_C, p_I) gives it; the intervals hold the
    estimate inside (0, 1)."""
    from pyroem.models import HardyWeinberg

    m = HardyWeinberg.peppered_moth().fit({"carbonaria": 85, "insularia": 196, "typica": 341})
    n = np.array([85.0, 196.0, 341.0])

    def ll(t):
        pc, pi = t
        pt = 1 - pc - pi
        return (n * np.log([pc ** 2 + 2 * pc * pi + 2 * pc * pt, pi ** 2 + 2 * pi * pt, pt ** 2])).sum()

    x, h = np.array([m.allele_freqs_["C"], m.allele_freqs_["I"]]), 1e-5
    e = np.eye(2) * h
    hess = np.array([[(ll(x + e[i] + e[j]) - ll(x + e[i] - e[j]) - ll(x - e[i] + e[j]) + ll(x - e[i] - e[j]))
                      / (4 * h * h) for j in range(2)] for i in range(2)])
    cov = np.linalg.inv(-hess)
    expected = {"C": np.sqrt(cov[0, 0]), "I": np.sqrt(cov[1, 1]), "T": np.sqrt(cov.sum())}
    for allele, se in expected.items():
        assert m.allele_freqs_se_[allele] == pytest.approx(se, rel=1e-4)
        low, high = m.allele_freqs_ci_[allele]
        assert 0 < low < m.allele_freqs_[allele] < high < 1
