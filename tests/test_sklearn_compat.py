"""The bundled estimators inside scikit-learn: its own ``check_estimator``, ``Pipeline``, ``clone``
and ``GridSearchCV``."""
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.mixture import GaussianMixture as Reference
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from pyroem.models import GaussianHMM, GaussianMixture

#: checks scikit-learn's own KMeans is expected to fail for the same reason
EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data":
        "the k-means++ start draws rows by position: shuffled weighted rows and repeated rows start "
        "elsewhere (scikit-learn marks this check expected-to-fail for KMeans)",
}


def test_gaussian_mixture_passes_scikit_learns_check_estimator():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(GaussianMixture(n_components=2, max_iter=5), on_fail=None,
                                  expected_failed_checks=EXPECTED_FAILURES)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert len(results) > 40


def test_in_a_pipeline_as_scikit_learns_mixture():
    X = load_iris().data
    ours = make_pipeline(StandardScaler(), GaussianMixture(3, random_state=0)).fit(X)
    ref = make_pipeline(StandardScaler(), Reference(3, random_state=0)).fit(X)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-9)


def test_clone_and_grid_search_choose_as_scikit_learn_does():
    X = load_iris().data
    est = GaussianMixture(2, covariance_type="diag", random_state=0)
    copy = clone(est)
    assert copy is not est and copy.get_params() == est.get_params()
    grid = {"n_components": [1, 2, 3, 4], "covariance_type": ["diag", "full"]}
    ours = GridSearchCV(GaussianMixture(random_state=0), grid, cv=3).fit(X)
    ref = GridSearchCV(Reference(random_state=0), grid, cv=3).fit(X)
    assert ours.best_params_ == ref.best_params_
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"], rtol=1e-6)


def test_hmm_in_a_pipeline_and_cloned():
    X = np.random.default_rng(0).normal(size=(200, 2))
    pipe = make_pipeline(StandardScaler(), GaussianHMM(2, random_state=0, n_iter=5)).fit(X)
    assert pipe.predict(X).shape == (200,)
    assert clone(GaussianHMM(3, n_iter=7)).get_params()["n_iter"] == 7
