"""The figure examples run end to end and write their PNGs."""
import os
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_example(name, out_dir):
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), "--out", str(out_dir)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def assert_png(path):
    assert os.path.isfile(path)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert os.path.getsize(path) > 10_000  # a drawn figure, not an empty canvas


def test_peppered_moth_example(tmp_path):
    out = run_example("peppered_moth.py", tmp_path)
    png = os.path.join(str(tmp_path), "peppered_moth_em.png")
    assert out.strip().splitlines()[-1] == png
    assert_png(png)
    assert "converged after 4 steps" in out  # relative log-likelihood change <= 1e-4
    # textbook estimate (Givens & Hoeting) and log-likelihood with the multinomial constant dropped
    assert "p_C = 0.07084, p_I = 0.18874, p_T = 0.74043 (log-likelihood -600.48098" in out


def test_gmm_clustering_example(tmp_path):
    out = run_example("gmm_clustering.py", tmp_path)
    png = os.path.join(str(tmp_path), "gmm_clustering.png")
    assert out.strip().splitlines()[-1] == png
    assert_png(png)
    # the clusters recover the groups the points were simulated from
    line = next(ln for ln in out.splitlines() if ln.startswith("points assigned to their own group"))
    assert float(line.rsplit(" ", 1)[1].rstrip("%")) >= 90.0


def test_hmm_casino_example(tmp_path):
    out = run_example("hmm.py", tmp_path)
    png = os.path.join(str(tmp_path), "hmm_casino.png")
    assert out.strip().splitlines()[-1] == png
    assert_png(png)
    assert "converged=True" in out
    # the loaded die shows a six half of the time; 20 x 150 rolls pin that to a few percent
    six = next(ln for ln in out.splitlines() if ln.startswith("P(six)"))
    fitted = [float(v) for v in six.split("[")[1].split("]")[0].split()]
    assert abs(max(fitted) - 0.5) < 0.05 and abs(min(fitted) - 1 / 6) < 0.03
    decoded = next(ln for ln in out.splitlines() if ln.startswith("Viterbi path"))
    assert float(decoded.split("for ")[1].split("%")[0]) >= 75.0


def test_em_vs_svi_example(tmp_path):
    out = run_example("em_vs_svi.py", tmp_path)
    for name in ("em_vs_svi_gmm.png", "em_vs_svi_moth.png"):
        assert_png(os.path.join(str(tmp_path), name))
    # both methods reach the moth's textbook optimum (Givens & Hoeting)
    assert " EM allele frequencies: p_C = 0.07084, p_I = 0.18874, p_T = 0.74043" in out
    assert "SVI allele frequencies: p_C = 0.07084, p_I = 0.18874, p_T = 0.74043" in out
    assert out.count("-600.480983") >= 3


def test_distributed_gmm_example_under_torchrun_fits_as_one_process(tmp_path):
    """``torchrun --nproc_per_node=2`` (two gloo processes, half of the data each) prints the fit
    that one process prints on all of it."""
    one = run_example("distributed_gmm.py", tmp_path).replace(str(tmp_path), "DIR")
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(EXAMPLES, "distributed_gmm.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    two = proc.stdout.replace(str(tmp_path), "DIR")
    assert one.splitlines()[0].startswith("1 process(es), 200000") and two.splitlines()[0].startswith("2 process(es)")
    assert one.splitlines()[1:] == two.splitlines()[1:]
    assert_png(os.path.join(str(tmp_path), "distributed_gmm.png"))
    # the three simulated centres (-3, 0), (0, 3), (3, 0) with unit scales
    means = [ln for ln in one.splitlines() if ln.strip().startswith("component")]
    assert len(means) == 3 and all("scale 0.99" in ln or "scale 1.00" in ln for ln in means)


def test_missing_values_example(tmp_path):
    out = run_example("missing_values.py", tmp_path)
    png = os.path.join(str(tmp_path), "missing_values.png")
    assert out.strip().splitlines()[-1] == png
    assert_png(png)
    # integrating the missing entries out beats dropping incomplete rows and mean imputation on
    # new data, and comes close to the fit of the data before deletion
    held = {line[:16].strip(): float(line.split()[-2]) for line in out.splitlines()
            if line[:16].strip() in ("marginalize", "complete cases", "mean imputation", "full data")}
    assert held["marginalize"] > held["complete cases"] > held["mean imputation"]
    assert held["full data"] - held["marginalize"] < 0.1
