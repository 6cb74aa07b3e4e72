"""The custom-model example (zero-inflated Poisson regression) runs and fits its data."""
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize, special, stats

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
SCRIPT = os.path.join(EXAMPLES, "custom_model.py")
TRUE = {"pi": 0.3, "b0": 1.0, "b1": 0.5}
NUMBER = r"(-?\d+\.\d+)"


def load_example():
    spec = importlib.util.spec_from_file_location("custom_model_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def zip_mle(x, y):
    """Maximum-likelihood (pi, b0, b1) and log-likelihood of a zero-inflated Poisson regression,
    by direct maximization of the marginal likelihood with scipy."""
    zero = y == 0

    def neg_log_lik(theta):
        pi, mu = special.expit(theta[0]), np.exp(theta[1] + theta[2] * x)
        poisson = stats.poisson.logpmf(y, mu)
        log_p = np.where(zero, np.logaddexp(np.log(pi), np.log1p(-pi) - mu), np.log1p(-pi) + poisson)
        return -log_p.sum()

    res = optimize.minimize(neg_log_lik, np.zeros(3), method="BFGS", options={"gtol": 1e-9})
    return {"pi": special.expit(res.x[0]), "b0": res.x[1], "b1": res.x[2]}, -res.fun


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("custom_model")
    proc = subprocess.run([sys.executable, SCRIPT, "--out", str(out)], capture_output=True, text=True, timeout=120)
    png = out / "custom_model.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    steps = [tuple(map(float, m.groups()))
             for m in re.finditer(rf"^\s*(\d+)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s*$",
                                  proc.stdout, re.MULTILINE)]
    fitted = {m.group(1): float(m.group(3))
              for m in re.finditer(rf"^(pi|b0|b1)\s+{NUMBER}\s+{NUMBER}\s*$", proc.stdout, re.MULTILINE)}
    final = re.search(rf"log-likelihood {NUMBER}\s*$", proc.stdout, re.MULTILINE)
    return proc, steps, fitted, final


def test_example_exits_cleanly(run):
    proc, steps, fitted, final = run
    assert proc.returncode == 0, proc.stderr
    assert len(steps) >= 3 and set(fitted) == set(TRUE) and final is not None, proc.stdout
    assert [int(s[0]) for s in steps] == list(range(len(steps)))


def test_log_likelihood_never_decreases(run):
    _, steps, _, final = run
    lls = [s[1] for s in steps]
    # printed to 1e-8: allow one unit of the last digit for rounding
    assert all(b >= a - 1e-8 for a, b in zip(lls, lls[1:])), lls
    assert lls[-1] > lls[0] + 1000.0  # it moved far from the start (0.5, 0, 0)
    assert float(final.group(1)) == pytest.approx(lls[-1], abs=1e-8)


def test_fitted_parameters_near_truth(run):
    _, _, fitted, _ = run
    # standard errors at n = 2000 are about 0.015 (pi) and 0.02 (b0, b1)
    assert fitted["pi"] == pytest.approx(TRUE["pi"], abs=0.05)
    assert fitted["b0"] == pytest.approx(TRUE["b0"], abs=0.1)
    assert fitted["b1"] == pytest.approx(TRUE["b1"], abs=0.1)


def test_fit_matches_direct_maximum_likelihood(run):
    _, _, fitted, final = run
    x, y = load_example().simulate(2000, 0)
    mle, max_ll = zip_mle(x.numpy(), y.numpy())
    for name in TRUE:
        assert fitted[name] == pytest.approx(mle[name], abs=1e-4), name
    assert float(final.group(1)) == pytest.approx(max_ll, abs=1e-6)
