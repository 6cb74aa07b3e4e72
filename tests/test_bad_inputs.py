"""Bad input to the bundled estimators fails early, in our own code, with a message naming the problem;
degenerate but valid data fits to finite parameters.

Every bad case must raise ValueError / TypeError (NotFittedError before ``fit``) from a frame inside
``pyroem`` or ``pyroem.models``: an error surfacing from deep inside torch or numpy means a check is
missing. The degenerate cases are checked against scikit-learn's fit of the same data where one exists.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import pyroem
import pyroem.models
from pyroem.models import CategoricalHMM, GaussianHMM, GaussianMixture, HardyWeinberg
from pyroem.models.exceptions import NotFittedError

OUR_DIRS = tuple({Path(pyroem.__file__).resolve().parent, Path(pyroem.models.__file__).resolve().parent})


def assert_raised_by_us(excinfo) -> None:
    """The raising frame (the traceback's last entry) lies inside the package, not in a library."""
    where = Path(str(excinfo.traceback[-1].path)).resolve()
    assert any(where.is_relative_to(d) for d in OUR_DIRS), (
        f"{excinfo.type.__name__} raised in {where}, not by pyroem: {excinfo.value}")


def check_bad(action, exc, match) -> None:
    with pytest.raises(exc, match=match) as excinfo:
        action()
    assert_raised_by_us(excinfo)


# -- data ------------------------------------------------------------------------------------------
def replaced(X: np.ndarray, index, value) -> np.ndarray:
    out = X.copy()
    out[index] = value
    return out


RNG = np.random.RandomState(0)
X2 = np.vstack([RNG.randn(15, 2), RNG.randn(15, 2) + 5.0])        # (30, 2) two blobs
with_nan = replaced(X2, (3, 1), np.nan)
with_inf = replaced(X2, (7, 0), -np.inf)
OBJ = np.array([[1.0, None], [2.0, 3.0], [4.0, 5.0]], dtype=object)
SYM = np.array([[0], [1], [2], [1], [0], [2], [2], [1], [0], [1]])  # (10, 1) symbols 0..2
GX = np.vstack([RNG.randn(12, 2), RNG.randn(12, 2) + 4.0])         # (24, 2)


def gmm(**kw) -> GaussianMixture:
    return GaussianMixture(**{"n_components": 2, "random_state": 0, **kw})


def fitted_gmm() -> GaussianMixture:
    return gmm().fit(X2)


def chmm(**kw) -> CategoricalHMM:
    return CategoricalHMM(**{"n_components": 2, "random_state": 0, "n_iter": 3, **kw})


def ghmm(**kw) -> GaussianHMM:
    return GaussianHMM(**{"n_components": 2, "random_state": 0, "n_iter": 3, **kw})


def chmm_with(**attrs) -> CategoricalHMM:
    """A CategoricalHMM whose parameters are set by hand (K=2, 3 symbols) and kept by ``fit``."""
    est = chmm(init_params="", n_features=3)
    est.startprob_ = np.array([0.6, 0.4])
    est.transmat_ = np.array([[0.7, 0.3], [0.2, 0.8]])
    est.emissionprob_ = np.array([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])
    for name, value in attrs.items():
        setattr(est, name, value)
    return est


def ghmm_with(covariance_type="diag", **attrs) -> GaussianHMM:
    """A GaussianHMM (K=2, D=2) whose parameters are set by hand and kept by ``fit``."""
    est = ghmm(covariance_type=covariance_type, init_params="")
    est.startprob_ = np.array([0.5, 0.5])
    est.transmat_ = np.array([[0.9, 0.1], [0.1, 0.9]])
    est.means_ = np.array([[0.0, 0.0], [4.0, 4.0]])
    est.covars_ = {"diag": np.ones((2, 2)), "full": np.stack([np.eye(2)] * 2)}[covariance_type]
    for name, value in attrs.items():
        setattr(est, name, value)
    return est


# Checks written in models/hmm/checks.py that the HMM estimators do not call yet: drop the marks once they do.
def case(name, exc, match, action):
    return pytest.param(action, exc, match, id=name)


# -- GaussianMixture ---------------------------------------------------------------------------------
GMM_CASES = [
    case("X NaN", ValueError, r"X contains NaN .*missing='marginalize'", lambda: gmm().fit(with_nan)),
    case("X inf", ValueError, r"X contains infinity", lambda: gmm().fit(with_inf)),
    case("X empty", ValueError, r"X has 0 sample", lambda: gmm().fit(np.empty((0, 2)))),
    case("X no features", ValueError, r"0 feature\(s\) \(shape=\(5, 0\)\) while a minimum of 1 is required", lambda: gmm().fit(np.empty((5, 0)))),
    case("X 1-D", ValueError, r"Expected 2D array.*reshape", lambda: gmm().fit(X2[:, 0])),
    case("X 3-D", ValueError, r"Expected 2D array.*3-D", lambda: gmm().fit(X2[None])),
    case("X strings", ValueError, r"X must be an array of real numbers", lambda: gmm().fit(X2.astype(str))),
    case("X object array", ValueError, r"X contains NaN", lambda: gmm().fit(OBJ)),
    case("X ragged list", ValueError, r"X must be an array", lambda: gmm().fit([[1.0, 2.0], [3.0]])),
    case("X complex tensor", ValueError, r"Complex data not supported: X is a complex tensor", lambda: gmm().fit(torch.ones(5, 2, dtype=torch.complex64))),
    case("X None", ValueError, r"X must be a 2-D array", lambda: gmm().fit(None)),
    case("n_components 0", ValueError, r"n_components must be an int >= 1", lambda: gmm(n_components=0).fit(X2)),
    case("n_components negative", ValueError, r"n_components must be an int >= 1", lambda: gmm(n_components=-3).fit(X2)),
    case("n_components float", ValueError, r"n_components must be an int", lambda: gmm(n_components=2.0).fit(X2)),
    case("n_components str", ValueError, r"n_components must be an int", lambda: gmm(n_components="2").fit(X2)),
    case("n_components > n_samples", ValueError, r"n_samples >= n_components", lambda: gmm(n_components=31).fit(X2)),
    case("reg_covar negative", ValueError, r"reg_covar must be a finite number >= 0", lambda: gmm(reg_covar=-1e-6).fit(X2)),
    case("reg_covar NaN", ValueError, r"reg_covar", lambda: gmm(reg_covar=float("nan")).fit(X2)),
    case("covariance_type unknown", ValueError, r"covariance_type must be one of", lambda: gmm(covariance_type="block").fit(X2)),
    case("init_params unknown", ValueError, r"init_params must be one of", lambda: gmm(init_params="kmedoids").fit(X2)),
    case("tol negative", ValueError, r"tol must be a finite number >= 0", lambda: gmm(tol=-1e-3).fit(X2)),
    case("max_iter negative", ValueError, r"max_iter must be an int >= 0", lambda: gmm(max_iter=-1).fit(X2)),
    case("max_iter float", ValueError, r"max_iter must be an int", lambda: gmm(max_iter=10.0).fit(X2)),
    case("n_init 0", ValueError, r"n_init must be an int >= 1", lambda: gmm(n_init=0).fit(X2)),
    case("random_state str", ValueError, r"random_state", lambda: gmm(random_state="seed").fit(X2)),
    case("dtype int", ValueError, r"dtype must be float32 or float64", lambda: gmm(dtype=torch.int64).fit(X2)),
    case("weights_init wrong length", ValueError, r"weights_init must have shape \(2,\)", lambda: gmm(weights_init=[0.2, 0.3, 0.5]).fit(X2)),
    case("weights_init sum != 1", ValueError, r"weights_init must sum to 1", lambda: gmm(weights_init=[0.2, 0.2]).fit(X2)),
    case("weights_init negative", ValueError, r"weights_init must lie in \[0, 1\]", lambda: gmm(weights_init=[-0.5, 1.5]).fit(X2)),
    case("weights_init NaN", ValueError, r"weights_init", lambda: gmm(weights_init=[np.nan, 1.0]).fit(X2)),
    case("means_init wrong shape", ValueError, r"means_init must have shape \(2, 2\)", lambda: gmm(means_init=np.zeros((2, 3))).fit(X2)),
    case("means_init NaN", ValueError, r"means_init contains NaN", lambda: gmm(means_init=[[0.0, np.nan], [1.0, 1.0]]).fit(X2)),
    case("precisions_init not PD (full)", ValueError, r"precisions_init.*positive-definite", lambda: gmm(precisions_init=np.array([[[1.0, 2.0], [2.0, 1.0]]] * 2)).fit(X2)),
    case("precisions_init not symmetric", ValueError, r"precisions_init.*symmetric", lambda: gmm(precisions_init=np.array([[[1.0, 0.5], [0.0, 1.0]]] * 2)).fit(X2)),
    case("precisions_init not PD (tied)", ValueError, r"precisions_init.*positive-definite", lambda: gmm(covariance_type="tied", precisions_init=-np.eye(2)).fit(X2)),
    case("precisions_init wrong shape", ValueError, r"precisions_init.*must have shape \(2, 2, 2\)", lambda: gmm(precisions_init=np.ones((2, 2))).fit(X2)),
    case("precisions_init zero (diag)", ValueError, r"precisions_init.*positive", lambda: gmm(covariance_type="diag", precisions_init=np.zeros((2, 2))).fit(X2)),
    case("precisions_init negative (spherical)", ValueError, r"precisions_init.*positive", lambda: gmm(covariance_type="spherical", precisions_init=[1.0, -1.0]).fit(X2)),
    case("sample_weight wrong length", ValueError, r"sample_weight must have shape \(30,\)", lambda: gmm().fit(X2, sample_weight=np.ones(29))),
    case("sample_weight negative", ValueError, r"sample_weight must be non-negative", lambda: gmm().fit(X2, sample_weight=np.r_[-1.0, np.ones(29)])),
    case("sample_weight all zero", ValueError, r"sample_weight is zero for every sample", lambda: gmm().fit(X2, sample_weight=np.zeros(30))),
    case("sample_weight NaN", ValueError, r"sample_weight contains NaN", lambda: gmm().fit(X2, sample_weight=np.r_[np.nan, np.ones(29)])),
    case("sample_weight too few positive", ValueError, r"positive sample_weight.*n_components", lambda: gmm(n_components=3).fit(X2, sample_weight=np.r_[1.0, 1.0, np.zeros(28)])),
    case("predict before fit", NotFittedError, r"not fitted", lambda: gmm().predict(X2)),
    case("predict_proba before fit", NotFittedError, r"not fitted", lambda: gmm().predict_proba(X2)),
    case("score before fit", NotFittedError, r"not fitted", lambda: gmm().score(X2)),
    case("score_samples before fit", NotFittedError, r"not fitted", lambda: gmm().score_samples(X2)),
    case("sample before fit", NotFittedError, r"not fitted", lambda: gmm().sample(3)),
    case("bic before fit", NotFittedError, r"not fitted", lambda: gmm().bic(X2)),
    case("predict wrong feature count", ValueError, r"X has 3 features, but GaussianMixture is expecting 2", lambda: fitted_gmm().predict(np.ones((4, 3)))),
    case("score NaN", ValueError, r"X contains NaN", lambda: fitted_gmm().score(with_nan)),
    case("sample 0", ValueError, r"n_samples must be an int >= 1", lambda: fitted_gmm().sample(0)),
    case("warm start new feature count", ValueError, r"features.*warm-started", lambda: gmm(warm_start=True).fit(X2).fit(np.ones((30, 3)) + RNG.randn(30, 3))),
    case("set_params unknown", ValueError, r"invalid parameter 'n_clusters'", lambda: gmm().set_params(n_clusters=3)),
]


@pytest.mark.parametrize("action,exc,match", GMM_CASES)
def test_gaussian_mixture_rejects(action, exc, match):
    check_bad(action, exc, match)


# -- HardyWeinberg -----------------------------------------------------------------------------------
def abo(**kw) -> HardyWeinberg:
    return HardyWeinberg.abo(**kw)


ABO = {"A": 186, "B": 38, "AB": 13, "O": 284}
HW_CASES = [
    case("counts negative", ValueError, r"counts must be non-negative; negative for phenotype\(s\) \['B'\]", lambda: abo().fit([186, -1, 13, 284])),
    case("counts all zero", ValueError, r"counts are all zero", lambda: abo().fit([0, 0, 0, 0])),
    case("counts non-integer", ValueError, r"counts must be whole numbers; not whole for phenotype\(s\) \['A'\]", lambda: abo().fit([186.5, 38, 13, 284])),
    case("counts NaN", ValueError, r"counts contain NaN", lambda: abo().fit([186, np.nan, 13, 284])),
    case("counts inf", ValueError, r"counts contain infinity", lambda: abo().fit([186, np.inf, 13, 284])),
    case("counts string entry", ValueError, r"counts\[1\] must be a number", lambda: abo().fit([186, "38", 13, 284])),
    case("counts too few", ValueError, r"counts has 3 values but there are 4 phenotypes", lambda: abo().fit([186, 38, 13])),
    case("counts too many", ValueError, r"counts has 5 values but there are 4 phenotypes", lambda: abo().fit([186, 38, 13, 284, 1])),
    case("counts 2-D", ValueError, r"counts must be a flat sequence", lambda: abo().fit([[186, 38], [13, 284]])),
    case("counts scalar", ValueError, r"counts must be a mapping", lambda: abo().fit(521)),
    case("counts unknown phenotype", ValueError, r"counts has unknown phenotype\(s\) \['Rh'\]", lambda: abo().fit({**ABO, "Rh": 3})),
    case("counts missing phenotype", ValueError, r"counts is missing phenotype\(s\) \['O'\]", lambda: abo().fit({"A": 186, "B": 38, "AB": 13})),
    case("counts dict NaN", ValueError, r"counts contain NaN", lambda: abo().fit({**ABO, "O": float("nan")})),
    case("phenotype map unknown allele", ValueError, r"unknown allele\(s\) \['X'\]", lambda: HardyWeinberg(["A", "O"], {"A": ["AA", "AO", "AX"], "O": ["OO"]})),
    case("genotype under two phenotypes", ValueError, r"genotype AO is listed under two phenotypes", lambda: HardyWeinberg(["A", "O"], {"A": ["AA", "AO"], "O": ["OO", "OA"]})),
    case("genotype one allele (string)", ValueError, r"genotype 'A' of phenotype 'A'.*two single-character alleles", lambda: HardyWeinberg(["A", "O"], {"A": ["AA", "A"], "O": ["OO"]})),
    case("genotype one allele (tuple)", ValueError, r"genotype \('A',\).*exactly two alleles, got 1", lambda: HardyWeinberg(["A", "O"], {"A": ["AA", ("A",)], "O": ["OO"]})),
    case("genotype not a pair", ValueError, r"a genotype must be a pair of alleles", lambda: HardyWeinberg(["A", "O"], {"A": ["AA", 7], "O": ["OO"]})),
    case("genotype without phenotype", ValueError, r"genotypes \['AO'\] show no phenotype", lambda: HardyWeinberg(["A", "O"], {"A": ["AA"], "O": ["OO"]})),
    case("alleles empty", ValueError, r"alleles must name at least 2 alleles", lambda: HardyWeinberg([], {"A": ["AA"]})),
    case("alleles one", ValueError, r"alleles must name at least 2 alleles", lambda: HardyWeinberg(["A"], {"A": ["AA"]})),
    case("allele empty name", ValueError, r"alleles must be non-empty strings", lambda: HardyWeinberg(["", "O"], {"A": ["OO"]})),
    case("allele not a string", ValueError, r"alleles must be non-empty strings", lambda: HardyWeinberg([1, 2], {"A": ["11"]})),
    case("alleles repeated", ValueError, r"alleles must be distinct; repeated: \['A'\]", lambda: HardyWeinberg(["A", "A"], {"A": ["AA"]})),
    case("phenotypes empty", ValueError, r"phenotypes must be a non-empty mapping", lambda: HardyWeinberg(["A", "O"], {})),
    case("phenotypes a list", ValueError, r"phenotypes must be a non-empty mapping", lambda: HardyWeinberg(["A", "O"], [["AA", "AO"], ["OO"]])),
    case("phenotype no genotypes", ValueError, r"phenotype 'O' must map to a non-empty list", lambda: HardyWeinberg(["A", "O"], {"A": ["AA", "AO", "OO"], "O": []})),
    case("init wrong length", ValueError, r"init has 2 values but there are 3 alleles", lambda: abo(init=[0.5, 0.5])),
    case("init zero", ValueError, r"init must hold finite positive allele frequencies", lambda: abo(init=[0.0, 0.5, 0.5])),
    case("init sum", ValueError, r"init allele frequencies must sum to 1", lambda: abo(init=[0.3, 0.3, 0.3])),
    case("mstep unknown", ValueError, r"mstep must be one of", lambda: abo(mstep="newton")),
    case("max_iter negative", ValueError, r"max_iter must be an int >= 0", lambda: abo(max_iter=-1)),
    case("tol NaN", ValueError, r"tol must be a finite number", lambda: abo(tol=float("nan"))),
    case("dtype int", ValueError, r"dtype must be torch.float32 or torch.float64", lambda: abo(dtype=torch.int64)),
    case("score before fit", NotFittedError, r"not been fitted", lambda: abo().score(ABO)),
    case("score bad counts after fit", ValueError, r"counts must be non-negative", lambda: abo().fit(ABO).score([1, -1, 1, 1])),
]


@pytest.mark.parametrize("action,exc,match", HW_CASES)
def test_hardy_weinberg_rejects(action, exc, match):
    check_bad(action, exc, match)


# -- CategoricalHMM and GaussianHMM --------------------------------------------------------------------
HMM_CASES = [
    case("cat symbol >= n_features", ValueError, r"X has symbol 3 but the model emits symbols 0..2", lambda: chmm(n_features=3).fit(np.r_[SYM, [[3]]])),
    case("cat symbol unseen at score", ValueError, r"X has symbol 5 but the model emits symbols 0..2", lambda: chmm().fit(SYM).score(np.array([[0], [5]]))),
    case("cat negative symbol", ValueError, r"X must hold non-negative symbols, got -1", lambda: chmm().fit(np.r_[SYM, [[-1]]])),
    case("cat non-integer symbols", ValueError, r"X must hold int symbols", lambda: chmm().fit(SYM + 0.5)),
    case("cat NaN symbol", ValueError, r"X contains NaN", lambda: chmm().fit(np.r_[SYM, [[np.nan]]])),
    case("cat two columns", ValueError, r"X must have shape \(n_samples, 1\)", lambda: chmm().fit(np.c_[SYM, SYM])),
    case("cat 1-D X", ValueError, r"X must be 2-D.*reshape", lambda: chmm().fit(SYM[:, 0])),
    case("cat string X", ValueError, r"X must hold numbers", lambda: chmm().fit(SYM.astype(str))),
    case("cat empty X", ValueError, r"X is empty", lambda: chmm().fit(np.empty((0, 1), dtype=int))),
    case("cat n_features 0", ValueError, r"n_features must be an int >= 1", lambda: chmm(n_features=0).fit(SYM)),
    case("lengths sum too small", ValueError, r"lengths sum to 9 but X has 10 samples", lambda: chmm().fit(SYM, lengths=[4, 5])),
    case("lengths sum too large", ValueError, r"lengths sum to 11 but X has 10 samples", lambda: chmm().fit(SYM, lengths=[6, 5])),
    case("lengths with zero", ValueError, r"lengths must be positive", lambda: chmm().fit(SYM, lengths=[0, 10])),
    case("lengths negative", ValueError, r"lengths must be positive", lambda: chmm().fit(SYM, lengths=[-2, 12])),
    case("lengths fractional", ValueError, r"lengths must hold ints", lambda: chmm().fit(SYM, lengths=[4.5, 5.5])),
    case("lengths 2-D", ValueError, r"lengths must be a non-empty 1-D sequence", lambda: chmm().fit(SYM, lengths=[[5, 5]])),
    case("lengths empty", ValueError, r"lengths must be a non-empty 1-D sequence", lambda: chmm().fit(SYM, lengths=[])),
    case("lengths at score", ValueError, r"lengths sum to 4 but X has 10 samples", lambda: chmm().fit(SYM).score(SYM, lengths=[4])),
    case("n_components 0", ValueError, r"n_components must be an int >= 1", lambda: chmm(n_components=0).fit(SYM)),
    case("n_components float", ValueError, r"n_components must be an int >= 1", lambda: chmm(n_components=2.0).fit(SYM)),
    case("n_iter negative", ValueError, r"n_iter must be an int >= 0", lambda: chmm(n_iter=-1).fit(SYM)),
    case("tol NaN", ValueError, r"tol must be a number", lambda: chmm(tol=float("nan")).fit(SYM)),
    case("params unknown code", ValueError, r"params='stx' has unknown codes 'x'", lambda: chmm(params="stx").fit(SYM)),
    case("init_params not a string", TypeError, r"init_params must be a string", lambda: chmm(init_params=["s"]).fit(SYM)),
    case("algorithm unknown", ValueError, r"algorithm must be one of", lambda: chmm(algorithm="beam").fit(SYM)),
    case("dtype int", ValueError, r"dtype must be torch.float32 or torch.float64", lambda: chmm(dtype=torch.int32).fit(SYM)),
    case("startprob_ sum != 1", ValueError, r"startprob_ must sum to 1", lambda: chmm_with(startprob_=np.array([0.6, 0.6])).fit(SYM)),
    case("startprob_ negative", ValueError, r"startprob_ must hold finite non-negative", lambda: chmm_with(startprob_=np.array([1.5, -0.5])).fit(SYM)),
    case("startprob_ wrong shape", ValueError, r"startprob_ must have shape \(2,\)", lambda: chmm_with(startprob_=np.array([0.2, 0.3, 0.5])).fit(SYM)),
    case("transmat_ wrong shape", ValueError, r"transmat_ must have shape \(2, 2\)", lambda: chmm_with(transmat_=np.full((3, 3), 1 / 3)).fit(SYM)),
    case("transmat_ rows != 1", ValueError, r"transmat_ must sum to 1 along its last axis", lambda: chmm_with(transmat_=np.array([[0.5, 0.4], [0.5, 0.5]])).fit(SYM)),
    case("transmat_ NaN", ValueError, r"transmat_ must hold finite", lambda: chmm_with(transmat_=np.array([[np.nan, 1.0], [0.5, 0.5]])).fit(SYM)),
    case("emissionprob_ wrong shape", ValueError, r"emissionprob_ must have shape \(2, 3\)", lambda: chmm_with(emissionprob_=np.full((2, 4), 0.25)).fit(SYM)),
    case("emissionprob_ rows != 1", ValueError, r"emissionprob_ must sum to 1", lambda: chmm_with(emissionprob_=np.full((2, 3), 0.5)).fit(SYM)),
    case("emissionprob_ bad at score", ValueError, r"emissionprob_ must sum to 1", lambda: chmm_with(emissionprob_=np.full((2, 3), 0.5)).score(SYM)),
    case("cat predict before fit", NotFittedError, r"call fit first", lambda: chmm().predict(SYM)),
    case("cat predict_proba before fit", NotFittedError, r"call fit first", lambda: chmm().predict_proba(SYM)),
    case("cat score before fit", NotFittedError, r"call fit first", lambda: chmm().score(SYM)),
    case("cat sample before fit", NotFittedError, r"call fit first", lambda: chmm().sample(5)),
    case("cat history before fit", NotFittedError, r"not been fitted", lambda: chmm().history_),
    case("cat sample 0", ValueError, r"n_samples must be an int >= 1", lambda: chmm().fit(SYM).sample(0)),
    case("cat currstate too large", ValueError, r"currstate must be < n_components=2", lambda: chmm().fit(SYM).sample(3, currstate=2)),
    case("gauss NaN", ValueError, r"X contains NaN .*missing='marginalize'", lambda: ghmm().fit(np.r_[GX, [[np.nan, 0.0]]])),
    case("gauss inf", ValueError, r"X contains infinity", lambda: ghmm().fit(np.r_[GX, [[np.inf, 0.0]]])),
    case("gauss strings", ValueError, r"X must hold numbers", lambda: ghmm().fit(GX.astype(str))),
    case("gauss object array", ValueError, r"X must hold numbers", lambda: ghmm().fit(OBJ)),
    case("gauss 3-D", ValueError, r"X must be 2-D", lambda: ghmm().fit(GX[None])),
    case("gauss wrong feature count at score", ValueError, r"X has 3 features but the model has 2", lambda: ghmm().fit(GX).score(np.ones((5, 3)))),
    case("gauss wrong feature count at predict", ValueError, r"X has 1 features but the model has 2", lambda: ghmm().fit(GX).predict(np.ones((5, 1)))),
    case("gauss NaN at score", ValueError, r"X contains NaN", lambda: ghmm().fit(GX).score(np.r_[GX, [[np.nan, 0.0]]])),
    case("gauss covariance_type unknown", ValueError, r"covariance_type must be one of", lambda: ghmm(covariance_type="block").fit(GX)),
    case("gauss min_covar negative", ValueError, r"min_covar must be a finite number >= 0", lambda: ghmm(min_covar=-1e-3).fit(GX)),
    case("gauss min_covar NaN", ValueError, r"min_covar must be a finite number >= 0", lambda: ghmm(min_covar=float("nan")).fit(GX)),
    case("gauss min_covar str", ValueError, r"min_covar must be a finite number >= 0", lambda: ghmm(min_covar="small").fit(GX)),
    case("gauss fewer samples than states", ValueError, r"fewer than n_components=2", lambda: ghmm().fit(GX[:1])),
    case("gauss means_ wrong shape", ValueError, r"means_ must be a finite array of shape", lambda: ghmm_with(means_=np.zeros((3, 2))).fit(GX)),
    case("gauss covars_ not PD", ValueError, r"covars_ must be symmetric positive definite", lambda: ghmm_with(covariance_type="full", covars_=np.array([[[1.0, 2.0], [2.0, 1.0]]] * 2)).fit(GX)),
    case("gauss covars_ negative diag", ValueError, r"'diag' covars_ must be positive", lambda: ghmm_with(covars_=-np.ones((2, 2))).fit(GX)),
    case("gauss covars_ wrong shape", ValueError, r"covars_ for covariance_type='diag' must have shape \(2, 2\)", lambda: ghmm_with(covars_=np.ones((2, 3))).fit(GX)),
    case("startprob_prior wrong shape", ValueError, r"startprob_prior must be a number or an array broadcastable to shape \(2,\)", lambda: chmm(startprob_prior=np.ones(5)).fit(SYM)),
    case("transmat_prior NaN", ValueError, r"transmat_prior must be finite", lambda: chmm(transmat_prior=np.nan).fit(SYM)),
    case("transmat_prior negative", ValueError, r"transmat_prior must be > 0", lambda: chmm(transmat_prior=-1.0).fit(SYM)),
    case("emissionprob_prior str", ValueError, r"emissionprob_prior must be a number", lambda: chmm(emissionprob_prior="flat").fit(SYM)),
    case("emissionprob_prior wrong shape", ValueError, r"emissionprob_prior.*broadcastable to shape \(2, 3\)", lambda: chmm(emissionprob_prior=np.ones((2, 5))).fit(SYM)),
    case("means_prior wrong shape", ValueError, r"means_prior.*broadcastable to shape \(2, 2\)", lambda: ghmm(means_prior=np.zeros(5), means_weight=1.0).fit(GX)),
    case("means_weight negative", ValueError, r"means_weight must be >= 0", lambda: ghmm(means_weight=-1.0).fit(GX)),
    case("covars_prior negative", ValueError, r"covars_prior must be >= 0", lambda: ghmm(covars_prior=-1.0).fit(GX)),
    case("covars_weight NaN", ValueError, r"covars_weight must be finite", lambda: ghmm(covars_weight=np.nan).fit(GX)),
    case("gauss predict before fit", NotFittedError, r"call fit first", lambda: ghmm().predict(GX)),
    case("gauss score before fit", NotFittedError, r"call fit first", lambda: ghmm().score(GX)),
    case("gauss sample before fit", NotFittedError, r"call fit first", lambda: ghmm().sample(5)),
]


@pytest.mark.parametrize("action,exc,match", HMM_CASES)
def test_hmm_rejects(action, exc, match):
    check_bad(action, exc, match)


def test_origin_check_catches_errors_from_libraries():
    """The origin check itself can fail: an error raised inside numpy is reported as not ours."""
    with pytest.raises(ValueError) as excinfo:
        np.reshape(np.ones(3), (2, 2))
    with pytest.raises(AssertionError, match="not by pyroem"):
        assert_raised_by_us(excinfo)


# -- degenerate but valid data ---------------------------------------------------------------------------
def _assert_finite_gmm(est: GaussianMixture) -> None:
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert np.isfinite(getattr(est, name)).all(), name
    assert np.isfinite(est.history_).all() and np.isfinite(est.lower_bound_)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_gmm_identical_points(covariance_type):
    X = np.tile([[1.5, -2.0]], (40, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a convergence warning is acceptable here
        est = GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
        ref = SkGaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
    _assert_finite_gmm(est)
    # every component sits on the point with covariance reg_covar, as in scikit-learn
    np.testing.assert_allclose(est.means_, np.tile([[1.5, -2.0]], (2, 1)), atol=1e-12)
    np.testing.assert_allclose(est.covariances_, ref.covariances_, rtol=1e-6)
    assert est.score(X) == pytest.approx(ref.score(X), rel=1e-9)
    assert np.isfinite(est.predict_proba(X)).all()


def test_gmm_empty_component_stays_finite():
    """A component started far from all data gets no responsibility; it must stay finite."""
    X = np.vstack([RNG.randn(30, 2), RNG.randn(30, 2) + 3.0])
    means_init = [[0.0, 0.0], [3.0, 3.0], [1e4, -1e4]]
    est = GaussianMixture(3, means_init=means_init, max_iter=20, random_state=0).fit(X)
    _assert_finite_gmm(est)
    assert est.weights_[2] < 1e-10
    assert np.isfinite(est.score_samples(X)).all() and np.isfinite(est.predict_proba(X)).all()
    ref = SkGaussianMixture(3, means_init=means_init, max_iter=20, random_state=0).fit(X)
    assert est.score(X) == pytest.approx(ref.score(X), rel=1e-8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_gmm_tiny_variances_in_100_dimensions(dtype, covariance_type):
    rs = np.random.RandomState(1)
    X = (np.vstack([rs.randn(80, 100), rs.randn(80, 100) + 5.0]) * 1e-6).astype(dtype)
    est = GaussianMixture(2, covariance_type=covariance_type, reg_covar=1e-14, max_iter=10, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
    _assert_finite_gmm(est)
    score = est.score(X)
    assert np.isfinite(score)
    # log-density of N(0, 1e-12 I) in 100 dimensions is about +1200: far above the unit-scale value
    assert score > 1000
    assert sorted(np.bincount(est.predict(X), minlength=2)) == [80, 80]


def test_gmm_collapsed_component_stays_finite():
    """One component locks onto a single isolated point: its covariance is reg_covar, not 0."""
    X = np.vstack([np.random.RandomState(1).randn(50, 2), [[40.0, 40.0]]])
    means_init = [[0.0, 0.0], [40.0, 40.0]]
    est = GaussianMixture(2, means_init=means_init, reg_covar=1e-6, max_iter=20, random_state=0).fit(X)
    _assert_finite_gmm(est)
    np.testing.assert_allclose(est.covariances_[1], 1e-6 * np.eye(2), rtol=1e-6, atol=1e-15)
    ref = SkGaussianMixture(2, means_init=means_init, reg_covar=1e-6, max_iter=20, random_state=0).fit(X)
    assert est.score(X) == pytest.approx(ref.score(X), rel=1e-8)


@pytest.mark.parametrize("covariance_type", [
    "spherical", "diag",
    "full", "tied",
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gaussian_hmm_identical_points(covariance_type, dtype):
    X = np.tile([[0.5, 2.0]], (30, 1))
    est = GaussianHMM(2, covariance_type=covariance_type, n_iter=5, random_state=0, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, lengths=[10, 20])
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        assert np.isfinite(getattr(est, name)).all(), name
    assert np.isfinite(est.history_).all()
    np.testing.assert_allclose(est.means_, np.tile([[0.5, 2.0]], (2, 1)), rtol=1e-6)
    assert np.isfinite(est.score(X)) and np.isfinite(est.predict_proba(X)).all()


def test_categorical_hmm_single_symbol():
    est = CategoricalHMM(2, n_iter=5, random_state=0).fit(np.zeros((20, 1), dtype=int), lengths=[5, 15])
    assert np.isfinite(est.history_).all()
    np.testing.assert_allclose(est.emissionprob_, [[1.0], [1.0]])
    assert est.score(np.zeros((4, 1), dtype=int)) == pytest.approx(0.0, abs=1e-12)
