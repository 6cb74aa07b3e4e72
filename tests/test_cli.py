"""The ``pyroem`` command line: numbers against textbook values, scikit-learn and hmmlearn;
error paths give one ``pyroem: error:`` line and an exit status, never a traceback."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from hmmlearn.hmm import GaussianHMM as HmmlearnGaussianHMM
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import pyroem
from pyroem.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Givens & Hoeting, Computational Statistics: peppered moth estimate and log-likelihood
MOTH_FREQS = {"C": 0.07084, "I": 0.18874, "T": 0.74043}
MOTH_LOGLIK = -600.48098
ABO_FREQS = {"A": 0.21359, "B": 0.05015, "O": 0.73626}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def allele_table(out):
    """``{allele: frequency}`` from the summary's 'allele frequency std. error interval' table."""
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(0\.\d+)\s+\d\.\d+\s+\(", out, re.M)}


def write_csv(path, X, header=None):
    with open(path, "w") as f:
        if header:
            f.write(",".join(header) + "\n")
        for row in X:
            f.write(",".join(repr(float(v)) for v in row) + "\n")
    return str(path)


def blobs(seed=0):
    """Three well-separated 2-D clusters of unequal sizes."""
    rng = np.random.default_rng(seed)
    centers = np.array([[-6.0, 0.0], [0.0, 6.0], [6.0, -1.0]])
    sizes = (60, 90, 50)
    scales = (np.array([[1.0, 0.3], [0.0, 0.8]]), np.eye(2) * 0.6, np.array([[0.9, 0.0], [-0.4, 1.2]]))
    return np.concatenate([c + rng.standard_normal((n, 2)) @ s for c, n, s in zip(centers, sizes, scales)])


def by_first_coordinate(means, *arrays):
    order = np.argsort(np.asarray(means)[:, 0])
    return [np.asarray(a)[order] for a in (means,) + arrays]


# -- Hardy-Weinberg ----------------------------------------------------------------------
def test_moth_preset_gives_textbook_estimate(capsys):
    code, out, err = run_cli(capsys, "fit", "hardy-weinberg", "--preset", "peppered-moth", "--counts", "85,196,341")
    assert code == 0, err
    freqs = allele_table(out)
    assert freqs.keys() == MOTH_FREQS.keys()
    for allele, p in MOTH_FREQS.items():
        assert freqs[allele] == pytest.approx(p, abs=6e-6)
    ll = float(re.search(r"log-likelihood (-?\d+\.\d+)", out).group(1))
    assert ll == pytest.approx(MOTH_LOGLIK, abs=1e-5)
    # standard errors: the observed information (checked against finite differences in test_hardy_weinberg)
    assert re.search(r"^C\s+0\.070837\s+0\.007411\s+\(0\.0576\d+, 0\.0868\d+\)$", out, re.M), out


def test_abo_counts_by_name_and_json(capsys, tmp_path):
    path = tmp_path / "abo.json"
    code, out, err = run_cli(capsys, "fit", "hw", "--preset", "abo", "--counts", "O=284,AB=13,B=38,A=186",
                             "--out", path)
    assert code == 0, err
    res = json.loads(path.read_text())
    for allele, p in ABO_FREQS.items():
        assert res["allele_freqs"][allele] == pytest.approx(p, abs=6e-6)
    assert res["counts"] == {"A": 186, "B": 38, "AB": 13, "O": 284}
    assert res["converged"] is True
    # log-likelihood at the estimate, written out phenotype by phenotype
    a, b, o = (res["allele_freqs"][k] for k in "ABO")
    probs = {"A": a * a + 2 * a * o, "B": b * b + 2 * b * o, "AB": 2 * a * b, "O": o * o}
    expected = sum(n * math.log(probs[ph]) for ph, n in res["counts"].items())
    assert res["log_likelihood"] == pytest.approx(expected, rel=1e-10)


DOMINANT = {"alleles": ["D1", "d2"], "phenotypes": {"dominant": ["D1/D1", "D1/d2"], "recessive": ["d2/d2"]}}


def test_model_file_dominant_recessive_closed_form(capsys, tmp_path):
    """One dominant allele: the MLE is q = sqrt(n_recessive / n) (hand computation)."""
    spec = tmp_path / "dom.json"
    spec.write_text(json.dumps(DOMINANT))
    out_json = tmp_path / "res.json"
    code, out, err = run_cli(capsys, "fit", "hardy-weinberg", "--model", spec, "--counts", "64,36",
                             "--out", out_json, "--tol", "1e-13", "--max-iter", "1000")
    assert code == 0, err
    res = json.loads(out_json.read_text())
    assert res["allele_freqs"]["d2"] == pytest.approx(0.6, abs=1e-6)
    assert res["allele_freqs"]["D1"] == pytest.approx(0.4, abs=1e-6)
    assert res["log_likelihood"] == pytest.approx(64 * math.log(0.64) + 36 * math.log(0.36), abs=1e-9)


def test_yaml_model_file_with_counts_inside(capsys, tmp_path, monkeypatch):
    """The YAML branch (a stand-in parser: JSON is valid YAML); counts come from the file."""
    monkeypatch.setitem(sys.modules, "yaml", types.SimpleNamespace(safe_load=json.loads))
    spec = tmp_path / "abo.yaml"
    spec.write_text(json.dumps({
        "alleles": ["A", "B", "O"],
        "phenotypes": {"A": ["AA", "AO"], "B": ["BB", "BO"], "AB": ["AB"], "O": ["OO"]},
        "counts": {"O": 284, "AB": 13, "A": 186, "B": 38},  # any order: matched by name
    }))
    code, out, err = run_cli(capsys, "fit", "hw", "--model", spec)
    assert code == 0, err
    assert "(A 186, B 38, AB 13, O 284)" in out
    freqs = allele_table(out)
    for allele, p in ABO_FREQS.items():
        assert freqs[allele] == pytest.approx(p, abs=6e-6)


def test_yaml_without_pyyaml_says_what_to_do(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    spec = tmp_path / "m.yml"
    spec.write_text("alleles: [A, B]\n")
    code, out, err = run_cli(capsys, "fit", "hw", "--model", spec, "--counts", "1,2")
    assert code == 1
    assert "pip install pyyaml" in err and ".json" in err
    assert "Traceback" not in err


# -- Gaussian mixture ----------------------------------------------------------------------
@pytest.mark.parametrize("header", [None, ["height", "weight"]])
def test_gmm_fit_matches_sklearn(capsys, tmp_path, header):
    X = blobs()
    data = write_csv(tmp_path / "x.csv", X, header)
    params = tmp_path / "params.json"
    code, out, err = run_cli(capsys, "fit", "gmm", data, "--components", "3", "--tol", "1e-10",
                             "--out", params)
    assert code == 0, err
    assert "200 rows x 2 columns" in out
    res = json.loads(params.read_text())
    assert res["columns"] == (header or ["column 1", "column 2"])
    sk = SkGaussianMixture(n_components=3, tol=1e-10, random_state=0).fit(X)
    means, weights, covs = by_first_coordinate(res["means"], res["weights"], res["covariances"])
    sk_means, sk_weights, sk_covs = by_first_coordinate(sk.means_, sk.weights_, sk.covariances_)
    np.testing.assert_allclose(means, sk_means, atol=1e-6)
    np.testing.assert_allclose(weights, sk_weights, atol=1e-7)
    np.testing.assert_allclose(covs, sk_covs, atol=1e-6)
    assert res["log_likelihood"] == pytest.approx(sk.score(X), rel=1e-8)  # mean per sample
    assert res["log_likelihood_total"] == pytest.approx(sk.score(X) * len(X), rel=1e-8)
    assert res["converged"] is True and res["n_iter"] >= 1


def test_gmm_diag_three_columns_with_plot(capsys, tmp_path):
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal([-5, 0, 2], [1.0, 0.5, 0.7], (80, 3)), rng.normal([5, 1, -2], [0.6, 1.0, 1.2], (70, 3))])
    data = write_csv(tmp_path / "x3.csv", X, ["a", "b", "c"])
    fig, params = tmp_path / "fig.png", tmp_path / "p.json"
    code, out, err = run_cli(capsys, "fit", "gmm", data, "-k", "2", "--covariance", "diag", "--tol", "1e-10",
                             "--plot", fig, "--out", params)
    assert code == 0, err
    assert "columns 'a', 'c', the two that separate the components most" in out
    assert fig.read_bytes()[:8] == PNG_SIGNATURE
    res = json.loads(params.read_text())
    sk = SkGaussianMixture(n_components=2, covariance_type="diag", tol=1e-10, random_state=0).fit(X)
    means, covs = by_first_coordinate(res["means"], res["covariances"])
    sk_means, sk_covs = by_first_coordinate(sk.means_, sk.covariances_)
    np.testing.assert_allclose(means, sk_means, atol=1e-6)
    np.testing.assert_allclose(covs, sk_covs, atol=1e-6)


def test_progress_bar_on_a_terminal_keeps_stdout_clean(capsys, tmp_path, monkeypatch):
    class Terminal:
        def __init__(self):
            self.text = []

        def write(self, s):
            self.text.append(s)
            return len(s)

        def flush(self):
            pass

        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    data = write_csv(tmp_path / "x.csv", blobs())
    code = main(["fit", "gmm", data, "-k", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Iteration" not in out and "converged after" in out
    assert "EM" in "".join(term.text)  # the bar was drawn on the terminal


# -- hidden Markov model ---------------------------------------------------------------------
def test_gaussian_hmm_matches_hmmlearn(capsys, tmp_path):
    rng = np.random.default_rng(3)
    lengths = [40, 30, 50]
    states, x = [], []
    for n in lengths:  # two regimes that switch rarely
        s = np.cumsum(rng.random(n) < 0.1) % 2
        states.append(s)
        x.append(np.where(s == 0, -2.0, 2.0) + rng.standard_normal(n))
    X = np.concatenate(x)[:, None]
    data = write_csv(tmp_path / "seq.csv", X, ["signal"])
    params = tmp_path / "hmm.json"
    code, out, err = run_cli(capsys, "fit", "hmm", data, "--states", "2", "--lengths", "40,30,50",
                             "--out", params, "--seed", "0", "--n-init", "1")
    assert code == 0, err
    res = json.loads(params.read_text())
    ref = HmmlearnGaussianHMM(n_components=2, n_iter=100, tol=1e-2, random_state=0).fit(X, lengths)
    assert res["log_likelihood"] == pytest.approx(ref.score(X, lengths), rel=1e-6)
    np.testing.assert_allclose(res["means"], ref.means_, atol=1e-5)
    np.testing.assert_allclose(res["transmat"], ref.transmat_, atol=1e-5)
    np.testing.assert_allclose(res["covars"], ref.covars_, atol=1e-5)
    assert res["n_iter"] == ref.monitor_.iter


def three_regime_series(seed=0):
    """500 steps of a sticky 3-state chain with means -2, 0, 3 and sd 0.7 (sequences 300 + 200)."""
    rs = np.random.RandomState(seed)
    trans = np.array([[0.95, 0.03, 0.02], [0.03, 0.94, 0.03], [0.02, 0.03, 0.95]])
    z = [0]
    for _ in range(499):
        z.append(rs.choice(3, p=trans[z[-1]]))
    z = np.array(z)
    return (np.array([-2.0, 0.0, 3.0])[z] + 0.7 * rs.randn(500))[:, None], z


def test_hmm_restarts_find_the_regimes_one_start_misses(capsys, tmp_path):
    X, _ = three_regime_series()
    data = write_csv(tmp_path / "series.csv", X)
    fits = {}
    for n_init in ("1", None):
        params = tmp_path / f"hmm{n_init}.json"
        argv = ["fit", "hmm", data, "--states", "3", "--lengths", "300,200", "--out", params]
        if n_init is not None:
            argv += ["--n-init", n_init]
        else:
            argv += ["--plot", tmp_path / "hmm.png"]
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, err
        fits[n_init] = json.loads(params.read_text())
    # one start from seed 0 ends at a symmetric point: all three means near the overall mean
    assert np.ptp(np.asarray(fits["1"]["means"])) < 0.5
    # the default restarts find the three regimes the data were drawn from
    best = fits[None]
    np.testing.assert_allclose(np.sort(np.asarray(best["means"]).ravel()), [-2.0, 0.0, 3.0], atol=0.15)
    assert best["log_likelihood"] > fits["1"]["log_likelihood"] + 100
    ref = HmmlearnGaussianHMM(n_components=3, init_params="", params="")
    ref.startprob_, ref.transmat_ = np.asarray(best["startprob"]), np.asarray(best["transmat"])
    ref.means_, ref.covars_ = np.asarray(best["means"]), np.asarray(best["covars"])[:, :, 0]
    assert best["log_likelihood"] == pytest.approx(ref.score(X, [300, 200]), rel=1e-9)
    assert (tmp_path / "hmm.png").read_bytes()[:8] == PNG_SIGNATURE


# -- demo, compare, version, console script ------------------------------------------------------
def test_demo_writes_three_figures(capsys, tmp_path):
    out_dir = tmp_path / "figs"
    code, out, err = run_cli(capsys, "demo", "--out", out_dir)
    assert code == 0, err
    for name in ("demo_moth.png", "demo_gmm.png", "demo_hmm.png"):
        path = out_dir / name
        assert str(path.resolve()) in out
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    # the moth path from (1/3, 1/3, 1/3) ends at the textbook estimate
    assert "0.33333   0.33333   0.33333" in out
    last = [line for line in out.splitlines() if re.match(r"^\s+\d+\s+-600\.48098", line)][-1]
    assert last.split()[2:] == ["0.07084", "0.18874", "0.74043"]


def test_compare_passes_the_models_to_compare_svi(capsys, tmp_path, monkeypatch):
    """The moth problem's closed-form update is one gene-counting step (checked by hand)."""
    seen = {}

    class Outcome:
        def summary(self):
            return "summary text"

        def plot(self, path):
            with open(path, "wb") as f:
                f.write(PNG_SIGNATURE)

    def fake_compare_svi(model, *args, em_steps, svi_steps, svi_optim=None, updates=None, **kwargs):
        seen.update(model=model, args=args, em_steps=em_steps, svi_steps=svi_steps, updates=updates)
        return Outcome()

    monkeypatch.setattr(pyroem, "compare_svi", fake_compare_svi, raising=False)
    code, out, err = run_cli(capsys, "compare", "moth", "--out", tmp_path, "--em-steps", "7", "--svi-steps", "11")
    assert code == 0, err
    assert "summary text" in out and (tmp_path / "compare_moth.png").is_file()
    assert (seen["em_steps"], seen["svi_steps"]) == (7, 11)
    expect = pyroem.EM(seen["model"]).e_step(*seen["args"])
    freqs = seen["updates"](expect, *seen["args"])["allele_freqs"].tolist()
    # gene counting from p = (1/3, 1/3, 1/3): carbonaria splits CC:CI:CT = 1:2:2, insularia II:IT = 1:2
    n_c, n_i, n_t, n = 85, 196, 341, 622
    p_c = (n_c * (2 * 1 + 2 + 2) / 5) / (2 * n)
    p_i = (n_c * 2 / 5 + n_i * (2 * 1 + 2) / 3) / (2 * n)
    np.testing.assert_allclose(freqs, [p_c, p_i, 1 - p_c - p_i], atol=1e-12)


@pytest.mark.parametrize("problem", ["moth", "gmm"])
def test_compare_runs_em_and_svi(capsys, tmp_path, monkeypatch, problem):
    """The real compare_svi through the command; EM's end point against the textbook / scikit-learn."""
    real, seen = pyroem.compare_svi, {}

    def spy(*args, **kwargs):
        seen["result"] = real(*args, **kwargs)
        return seen["result"]

    monkeypatch.setattr(pyroem, "compare_svi", spy)
    code, out, err = run_cli(capsys, "compare", problem, "--out", tmp_path, "--em-steps", "40", "--svi-steps", "5")
    assert code == 0, err
    assert (tmp_path / f"compare_{problem}.png").read_bytes()[:8] == PNG_SIGNATURE
    result = seen["result"]
    assert str(result.summary()) in out
    assert len(result.svi.log_likelihood) == 6
    if problem == "moth":
        expected, tol = MOTH_LOGLIK, 1e-5
    else:
        from pyroem.cli.demo_data import four_clusters

        X, _ = four_clusters(0)
        expected, tol = SkGaussianMixture(n_components=4, tol=1e-10, random_state=0).fit(X).score(X) * len(X), 1e-4
    assert result.em.log_likelihood[-1] == pytest.approx(expected, abs=tol)


def test_version(capsys):
    from importlib.metadata import version

    code, out, err = run_cli(capsys, "--version")
    assert code == 0
    assert out.strip() == f"pyroem {version('pyroem')}"


def test_console_script_moth():
    exe = shutil.which("pyroem") or os.path.join(os.path.dirname(sys.executable), "pyroem")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "pyroem.cli"]
    proc = subprocess.run(cmd + ["fit", "hardy-weinberg", "--preset", "peppered-moth", "--counts", "85,196,341"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    freqs = allele_table(proc.stdout)
    for allele, p in MOTH_FREQS.items():
        assert freqs[allele] == pytest.approx(p, abs=6e-6)


# -- errors ------------------------------------------------------------------------------------
def write_text(path, text):
    path.write_text(text)
    return str(path)


ERRORS = {
    "missing file": (lambda d: ["fit", "gmm", str(d / "nope.csv"), "-k", "2"], 1, "nope.csv: no such file"),
    "ragged rows": (lambda d: ["fit", "gmm", write_text(d / "r.csv", "1,2\n3,4\n5\n"), "-k", "1"], 1,
                    "line 3: 1 fields, expected 2"),
    "non-numeric column": (lambda d: ["fit", "gmm", write_text(d / "s.csv", "x,kind\n1,a\n2,b\n"), "-k", "1"], 1,
                           "column 'kind'"),
    "empty file": (lambda d: ["fit", "gmm", write_text(d / "e.csv", "\n"), "-k", "1"], 1, "holds no data"),
    "header only": (lambda d: ["fit", "gmm", write_text(d / "h.csv", "x,y\n"), "-k", "1"], 1, "no data rows"),
    "too few rows": (lambda d: ["fit", "gmm", write_text(d / "t.csv", "1\n2\n3\n"), "-k", "5"], 1,
                     "needs at least 5"),
    "negative count": (lambda d: ["fit", "hw", "--preset", "peppered-moth", "--counts", "85,-196,341"], 1,
                       "counts must be >= 0"),
    "wrong number of counts": (lambda d: ["fit", "hw", "--preset", "peppered-moth", "--counts", "85,196"], 1,
                               "2 count(s) given for 3 phenotypes"),
    "non-integer count": (lambda d: ["fit", "hw", "--preset", "abo", "--counts", "1,2,3.5,4"], 1,
                          "not a whole number"),
    "unknown phenotype": (lambda d: ["fit", "hw", "--preset", "abo", "--counts", "A=1,B=2,AB=3,X=4"], 1,
                          "unknown phenotype 'X'"),
    "all counts zero (estimator)": (lambda d: ["fit", "hw", "--preset", "abo", "--counts", "0,0,0,0"], 1,
                                    "counts are all zero"),
    "bad model file": (lambda d: ["fit", "hw", "--model", write_text(d / "m.json", '{"alleles": ["A", "B"], '
                                  '"phenotypes": {"x": ["AA", "AB"]}}'), "--counts", "3"], 1,
                       "genotypes ['BB'] show no phenotype"),
    "invalid JSON": (lambda d: ["fit", "hw", "--model", write_text(d / "j.json", "{alleles"), "--counts", "3"], 1,
                     "not valid JSON"),
    "lengths mismatch": (lambda d: ["fit", "hmm", write_text(d / "q.csv", "1\n2\n3\n"), "-k", "1",
                                    "--lengths", "2,2"], 1, "--lengths sum to 4"),
    "categorical non-integer": (lambda d: ["fit", "hmm", write_text(d / "c.csv", "0\n1.5\n"), "-k", "1",
                                           "--emission", "categorical"], 1, "whole numbers >= 0"),
    "unknown preset": (lambda d: ["fit", "hw", "--preset", "moth", "--counts", "1,2,3"], 2, "invalid choice: 'moth'"),
    "K < 1": (lambda d: ["fit", "gmm", "x.csv", "--components", "0"], 2, "must be >= 1"),
    "no command": (lambda d: [], 2, "required"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_exit_with_one_line_and_no_traceback(capsys, tmp_path, case):
    make_argv, status, message = ERRORS[case]
    code, out, err = run_cli(capsys, *make_argv(tmp_path))
    assert code == status
    assert message in err
    assert "Traceback" not in err
    if status == 1:
        assert err.startswith("pyroem: error: ") and err.count("\n") == 1


def test_undecodable_file(capsys, tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x81\x00")
    code, out, err = run_cli(capsys, "fit", "gmm", path, "-k", "1")
    assert code == 1 and "not a text file" in err


def test_debug_shows_the_traceback(tmp_path):
    from pyroem.cli.errors import CliError

    with pytest.raises(CliError, match="no such file"):
        main(["fit", "gmm", str(tmp_path / "nope.csv"), "-k", "2", "--debug"])
    with pytest.raises(ValueError, match="counts are all zero"):
        main(["--debug", "fit", "hw", "--preset", "abo", "--counts", "0,0,0,0"])


def test_version_and_help_answer_without_loading_torch_or_pyro():
    """``pyroem --version`` and ``--help`` load neither torch nor Pyro (seconds otherwise)."""
    import subprocess
    import sys

    code = ("import sys\nfrom pyroem.cli.main import main\n"
            "for argv in (['--version'], ['--help'], ['fit', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('loaded:', sorted(m for m in ('torch', 'pyro') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "loaded: []"
    assert "pyroem 0.1.0" in out


def test_gmm_columns_labels_plot_columns_and_jpeg(capsys, tmp_path):
    """--columns fits only the named columns, --labels writes scikit-learn's posteriors (components
    numbered from 1), --plot-columns picks the drawn pair, .jpg is a JPEG and .gif is refused up front."""
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal([-3, 0, 1], 1.0, (60, 3)), rng.normal([3, 1, -1], 1.0, (60, 3))])
    species = np.repeat([0.0, 1.0], 60)
    data = write_csv(tmp_path / "x.csv", np.column_stack([X, species]), ["a", "b", "c", "species"])
    labels, fig = tmp_path / "labels.csv", tmp_path / "fig.jpg"
    code, out, err = run_cli(capsys, "fit", "gmm", data, "-k", "2", "--columns", "a,2,c", "--labels", labels,
                             "--plot", fig, "--plot-columns", "b,c")
    assert code == 0, err
    assert "120 rows x 3 columns (a, b, c)" in out and "columns 'b', 'c', as asked" in out
    assert fig.read_bytes()[:3] == b"\xff\xd8\xff"   # JPEG
    sk = SkGaussianMixture(n_components=2, random_state=0).fit(X)
    table = np.loadtxt(labels, delimiter=",", skiprows=1)
    assert labels.read_text().splitlines()[0] == "row,component,p_1,p_2"
    proba = table[:, 2:]
    order = np.argsort(sk.means_[:, 0])
    ours = np.argsort([proba[:, j] @ X[:, 0] / proba[:, j].sum() for j in range(2)])
    np.testing.assert_allclose(proba[:, ours], sk.predict_proba(X)[:, order], atol=1e-6)
    np.testing.assert_array_equal(table[:, 1], proba.argmax(1) + 1)
    code, out, err = run_cli(capsys, "fit", "gmm", data, "-k", "2")
    assert "note: column 'species' holds only a few whole numbers" in out
    code, out, err = run_cli(capsys, "fit", "gmm", data, "-k", "2", "--plot", tmp_path / "fig.gif")
    assert code == 1 and "cannot write a figure as '.gif'" in err and "Gaussian mixture" not in out
    code, out, err = run_cli(capsys, "fit", "gmm", data, "-k", "2", "--columns", "a,zz")
    assert code == 1 and "has no column 'zz'" in err


def test_hmm_labels_are_hmmlearns_viterbi_states(capsys, tmp_path):
    from hmmlearn.hmm import GaussianHMM as Reference

    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(0, 1, (40, 1)), rng.normal(5, 1, (40, 1)), rng.normal(0, 1, (40, 1))])
    data = write_csv(tmp_path / "s.csv", X, ["x"])
    params, states = tmp_path / "p.json", tmp_path / "states.csv"
    code, out, err = run_cli(capsys, "fit", "hmm", data, "-k", "2", "--lengths", "60,60", "--n-init", "1",
                             "--out", params, "--labels", states)
    assert code == 0, err
    res = json.loads(params.read_text())
    ref = Reference(2, covariance_type="diag")
    ref.startprob_, ref.transmat_ = np.asarray(res["startprob"]), np.asarray(res["transmat"])
    ref.means_, ref.covars_ = np.asarray(res["means"]), np.asarray(res["covars"]).reshape(2, 1)
    table = np.loadtxt(states, delimiter=",", skiprows=1)
    np.testing.assert_array_equal(table[:, 3] - 1, ref.predict(X, [60, 60]))
    np.testing.assert_array_equal(table[:, 1], np.repeat([1, 2], 60))
    np.testing.assert_allclose(table[:, 4:], ref.predict_proba(X, [60, 60]), atol=1e-6)


def test_predict_scores_and_labels_new_data_with_a_parameter_file(capsys, tmp_path):
    """``pyroem predict PARAMS.json NEW.csv``: the mixture's log-likelihood of new rows as scipy
    computes it from the saved parameters, the columns matched by name; an HMM's as hmmlearn's."""
    from hmmlearn.hmm import GaussianHMM as Reference
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal([-2, 0], 1.0, (80, 2)), rng.normal([2, 1], 0.7, (80, 2))])
    new = rng.normal([0, 0.5], 2.0, (30, 2))
    fitted = write_csv(tmp_path / "x.csv", np.column_stack([X, np.zeros(len(X))]), ["a", "b", "id"])
    params, labels = tmp_path / "p.json", tmp_path / "l.csv"
    code, _, err = run_cli(capsys, "fit", "gmm", fitted, "-k", "2", "--columns", "a,b", "--out", params)
    assert code == 0, err
    res = json.loads(params.read_text())
    swapped = write_csv(tmp_path / "new.csv", new[:, ::-1], ["b", "a"])   # other column order: matched by name
    code, out, err = run_cli(capsys, "predict", params, swapped, "--labels", labels)
    assert code == 0, err
    dens = np.stack([np.log(w) + multivariate_normal(m, c).logpdf(new)
                     for w, m, c in zip(res["weights"], res["means"], res["covariances"])], 1)
    expected = logsumexp(dens, axis=1).mean()
    assert f"log-likelihood: {expected:.6f} per sample" in out
    table = np.loadtxt(labels, delimiter=",", skiprows=1)
    np.testing.assert_array_equal(table[:, 1], dens.argmax(1) + 1)

    series = write_csv(tmp_path / "s.csv", np.concatenate([rng.normal(0, 1, (50, 1)), rng.normal(4, 1, (50, 1))]),
                       ["x"])
    code, _, err = run_cli(capsys, "fit", "hmm", series, "-k", "2", "--n-init", "1", "--out", params)
    assert code == 0, err
    res = json.loads(params.read_text())
    code, out, err = run_cli(capsys, "predict", params, series, "--lengths", "40,60")
    assert code == 0, err
    ref = Reference(2, covariance_type="diag")
    ref.startprob_, ref.transmat_ = np.asarray(res["startprob"]), np.asarray(res["transmat"])
    ref.means_, ref.covars_ = np.asarray(res["means"]), np.diagonal(np.asarray(res["covars"]), axis1=1, axis2=2)
    Xs = np.loadtxt(series, delimiter=",", skiprows=1).reshape(-1, 1)
    assert f"log-likelihood: {ref.score(Xs, [40, 60]):.6f}" in out
    code, out, err = run_cli(capsys, "predict", tmp_path / "nothing.json", series)
    assert code == 1 and "no such file" in err


def test_columns_leave_a_text_column_unread(capsys, tmp_path):
    """A CSV with a text label column: --columns reads only the named numeric columns; without it the
    error says how to pick them; predict reads the fitted columns by name and ignores the text."""
    path = tmp_path / "iris.csv"
    X = np.random.default_rng(5).normal(size=(30, 2))
    with open(path, "w") as f:
        f.write("a,b,species\n")
        for i, row in enumerate(X):
            f.write(f"{row[0]},{row[1]},{'setosa' if i % 2 else 'virginica'}\n")
    params = tmp_path / "p.json"
    code, out, err = run_cli(capsys, "fit", "gmm", path, "-k", "2", "--columns", "a,b", "--out", params)
    assert code == 0, err
    assert "30 rows x 2 columns (a, b)" in out
    sk = SkGaussianMixture(2, random_state=0).fit(X)
    assert json.loads(params.read_text())["log_likelihood"] == pytest.approx(sk.score(X), rel=1e-8)
    code, out, err = run_cli(capsys, "predict", params, path)
    assert code == 0, err
    code, out, err = run_cli(capsys, "fit", "gmm", path, "-k", "2")
    assert code == 1 and "'virginica' is not a number" in err and "--columns picks the ones to read" in err


@pytest.mark.filterwarnings("ignore:.*have no observed value:UserWarning")
def test_missing_fields_are_integrated_out_when_asked(capsys, tmp_path):
    """``--missing`` reads empty fields and NA as missing values: the fit, the parameter file and
    ``predict --missing`` agree with ``GaussianMixture(missing="marginalize")`` on the same array;
    without the option the first empty field is named with the option to give."""
    from pyroem.models import GaussianMixture

    X = blobs(3)
    X[np.random.default_rng(5).random(X.shape) < 0.15] = np.nan
    path = tmp_path / "holes.csv"
    with open(path, "w") as f:
        f.write("a,b\n")
        for i, row in enumerate(X):
            f.write(",".join(("NA" if i % 2 else "") if np.isnan(v) else repr(float(v)) for v in row) + "\n")
    code, out, err = run_cli(capsys, "fit", "gmm", path, "-k", 3)
    first = int(np.argwhere(np.isnan(X))[0][0]) + 2
    assert code != 0 and f"line {first}" in err and "--missing" in err
    params = tmp_path / "p.json"
    code, out, _ = run_cli(capsys, "fit", "gmm", path, "-k", 3, "--missing", "--out", params)
    assert code == 0
    assert f"missing values: {int(np.isnan(X).sum())} entries, integrated out" in out
    ref = GaussianMixture(3, missing="marginalize", random_state=0).fit(X)
    res = json.loads(params.read_text())
    np.testing.assert_allclose(res["means"], ref.means_, rtol=1e-9)
    assert res["log_likelihood"] == pytest.approx(ref.score(X), rel=1e-10)
    code, out, _ = run_cli(capsys, "predict", params, path, "--missing")
    assert code == 0 and f"{ref.score(X):.6f} per sample" in out
    code, out, _ = run_cli(capsys, "fit", "hmm", path, "-k", 2, "--missing", "--n-init", 1)
    assert code == 0 and "missing values:" in out
