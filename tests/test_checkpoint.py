"""Checkpoints of EM fits: atomic writes, checked reads, and resumed fits that end where uninterrupted ones do."""
import logging
import os
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import pyroem
import torch
from pyro.distributions import constraints
from pyroem.checkpoint import load_checkpoint, save_checkpoint

from engine_models import (
    make_map_mixture,
    make_mixture,
    map_data,
    map_log_posterior,
    mixture_data,
    mixture_loglik,
    mixture_updates,
    np_,
)


def stop_at(step, exc=KeyboardInterrupt):
    def callback(n_iter, ll, params):
        if n_iter == step:
            raise exc()
    return callback


def fresh_em(model, **kw):
    """A new EM object on an empty param store: what a restarted process sees."""
    pyro.clear_param_store()
    return pyroem.EM(model, **kw)


def assert_same_fit(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(np_(a[name]), np_(b[name]), rtol=0, atol=1e-12, err_msg=name)


def interrupted_then_resumed(model_factory, data, path, stop, max_iter, seed_after=None, **kw):
    with pytest.warns(RuntimeWarning, match="interrupted"):
        first = fresh_em(model_factory(), **kw).fit(
            *data, max_iter=max_iter, tol=0.0, callback=stop_at(stop), checkpoint=path)
    assert first.n_iter == stop and first.stop_reason == "interrupted"
    em = fresh_em(model_factory(), **kw)
    if seed_after is not None:
        pyro.set_rng_seed(seed_after)
    return first, em.fit(*data, max_iter=max_iter, tol=0.0, checkpoint=path, resume=True)


# --- resumed == uninterrupted ------------------------------------------------------------------
def test_autograd_fit_resumed_after_interrupt_matches_uninterrupted(tmp_path):
    y = mixture_data()
    full = fresh_em(make_mixture()).fit(y, max_iter=10, tol=0.0)
    path = tmp_path / "fit.pt"
    first, resumed = interrupted_then_resumed(make_mixture, (y,), path, stop=4, max_iter=10)
    assert resumed.n_iter == full.n_iter and resumed.converged == full.converged
    assert resumed.history == full.history
    assert first.history == full.history[:5]
    assert_same_fit(resumed.params, full.params)


def test_closed_form_fit_resumed_after_max_iter_continues_to_the_same_end(tmp_path):
    y = mixture_data()
    full = fresh_em(make_mixture(), updates=mixture_updates).fit(y, max_iter=12, tol=0.0)
    path = tmp_path / "fit.pt"
    part = fresh_em(make_mixture(), updates=mixture_updates).fit(y, max_iter=5, tol=0.0, checkpoint=path)
    assert part.stop_reason == "max_iter" and load_checkpoint(path).n_iter == 5
    resumed = fresh_em(make_mixture(), updates=mixture_updates).fit(
        y, max_iter=12, tol=0.0, checkpoint=path, resume=True)
    assert full.n_iter > 5
    assert resumed.n_iter == full.n_iter and resumed.converged == full.converged
    assert resumed.history == full.history
    assert_same_fit(resumed.params, full.params)
    # the log-likelihoods the checkpoint records are those of a numpy mixture at its params
    state = load_checkpoint(path)
    assert state.history[-1] == pytest.approx(mixture_loglik(y, **state.params), rel=1e-12)


def test_float32_fit_resumes_exactly(tmp_path):
    y = mixture_data(torch.float32)
    full = fresh_em(make_mixture(), updates=mixture_updates).fit(y, max_iter=6, tol=0.0)
    _, resumed = interrupted_then_resumed(make_mixture, (y,), tmp_path / "f32.pt", stop=3, max_iter=6,
                                          updates=mixture_updates)
    assert resumed.params["loc"].dtype == torch.float32 and resumed.history == full.history
    assert_same_fit(resumed.params, full.params)


def test_map_fit_resumed_in_a_fresh_store_with_another_seed(tmp_path):
    """MAP sites are initialized from prior draws; a resume must take them from the file instead."""
    y = map_data()
    pyro.set_rng_seed(0)
    full = fresh_em(make_map_mixture()).fit(y, max_iter=6, tol=0.0)
    pyro.set_rng_seed(0)
    first, resumed = interrupted_then_resumed(make_map_mixture, (y,), tmp_path / "map.pt", stop=2,
                                              max_iter=6, seed_after=12345)
    assert set(resumed.params) == {"w", "loc", "scale"}
    assert resumed.history == full.history
    assert_same_fit(resumed.params, full.params)
    assert resumed.log_likelihood == pytest.approx(map_log_posterior(y, **resumed.params), rel=1e-10)


def subsampled_mixture(y):
    w = pyro.param("w", torch.tensor([0.3, 0.7], dtype=y.dtype), constraint=constraints.simplex)
    loc = pyro.param("loc", torch.tensor([-1.0, 1.0], dtype=y.dtype))
    with pyro.plate("data", len(y), subsample_size=5) as idx:
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(loc[z], 1.0), obs=y[idx])


def test_subsampled_fit_resumes_with_the_same_minibatches(tmp_path):
    y = mixture_data()
    warnings.simplefilter("ignore", pyroem.MonotonicityWarning)  # minibatch log-likelihoods are noisy
    pyro.set_rng_seed(1)
    full = fresh_em(subsampled_mixture).fit(y, max_iter=4, tol=0.0)
    pyro.set_rng_seed(1)
    _, resumed = interrupted_then_resumed(lambda: subsampled_mixture, (y,), tmp_path / "sub.pt",
                                          stop=2, max_iter=4, seed_after=999)
    assert resumed.history == full.history
    assert_same_fit(resumed.params, full.params)


def test_resuming_a_converged_checkpoint_takes_no_further_step(tmp_path):
    y = mixture_data()
    path = tmp_path / "done.pt"
    done = fresh_em(make_mixture(), updates=mixture_updates).fit(y, max_iter=500, tol=1e-10, checkpoint=path)
    assert done.converged and done.stop_reason == "converged"
    state = load_checkpoint(path)
    assert state.converged and state.n_iter == done.n_iter and state.history == done.history
    again = fresh_em(make_mixture(), updates=mixture_updates).fit(
        y, max_iter=500, tol=1e-10, checkpoint=path, resume=True)
    assert again.converged and again.n_iter == done.n_iter and again.history == done.history
    assert_same_fit(again.params, done.params)


def test_resume_without_a_file_starts_fresh_and_says_so(tmp_path, caplog):
    y = mixture_data()
    plain = fresh_em(make_mixture(), updates=mixture_updates).fit(y, max_iter=3, tol=0.0)
    path = tmp_path / "new.pt"
    with caplog.at_level(logging.INFO, logger="pyroem"):
        res = fresh_em(make_mixture(), updates=mixture_updates).fit(
            y, max_iter=3, tol=0.0, checkpoint=path, resume=True)
    assert "no checkpoint" in caplog.text and str(path) in caplog.text
    assert res.history == plain.history
    assert path.exists() and load_checkpoint(path).n_iter == 3


# --- what is written, and when ---------------------------------------------------------------
def test_checkpoints_are_written_every_k_steps(tmp_path):
    y = mixture_data()
    path = tmp_path / "every.pt"
    seen, on_disk = {}, {}

    def callback(n_iter, ll, params):
        seen[n_iter] = {k: v.clone() for k, v in params.items()}
        on_disk[n_iter] = load_checkpoint(path) if path.exists() else None

    res = fresh_em(make_mixture(), updates=mixture_updates).fit(
        y, max_iter=8, tol=0.0, callback=callback, checkpoint=path, checkpoint_every=3)
    for n in range(9):
        state = on_disk[n]
        if n < 3:
            assert state is None
            continue
        k = 3 * (n // 3)
        assert state.n_iter == k and state.history == res.history[:k]
        assert state.stop_reason == "running"
        assert_same_fit(state.params, seen[k])
    final = load_checkpoint(path)
    assert final.n_iter == 8 and final.history == res.history and final.stop_reason == "max_iter"


def test_checkpoint_is_a_plain_torch_file_with_a_header(tmp_path):
    y = mixture_data()
    path = tmp_path / "plain.pt"
    res = fresh_em(make_mixture(), updates=mixture_updates).fit(y, max_iter=2, checkpoint=str(path))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "pyroem-checkpoint" and raw["version"] == 1
    assert raw["n_iter"] == 2 and raw["history"] == res.history
    assert_same_fit(raw["params"], res.params)
    # unconstrained values map to the constrained ones through the declared constraints
    w = torch.distributions.transform_to(constraints.simplex)(raw["unconstrained"]["w"])
    np.testing.assert_allclose(np_(w), np_(res.params["w"]), rtol=1e-12)
    assert not [p for p in os.listdir(tmp_path) if p != "plain.pt"]


def test_checkpoint_on_error_holds_the_last_good_parameters(tmp_path):
    y = mixture_data()
    calls = []

    def updates(expect, y):
        calls.append(1)
        new = mixture_updates(expect, y)
        if len(calls) == 3:
            new["scale"] = -new["scale"]
        return new

    path = tmp_path / "err.pt"
    good = fresh_em(make_mixture(), updates=mixture_updates).fit(y, max_iter=2, tol=0.0)
    with pytest.raises(ValueError, match="'scale' outside its constraint"):
        fresh_em(make_mixture(), updates=updates).fit(y, max_iter=10, tol=0.0, checkpoint=path)
    state = load_checkpoint(path)
    assert state.n_iter == 2 and state.stop_reason == "error" and state.history == good.history
    assert_same_fit(state.params, good.params)
    assert_same_fit({k: pyro.param(k).detach() for k in good.params}, good.params)


# --- atomic writes -----------------------------------------------------------------------------
class Boom(Exception):
    pass


def half_writing_save(obj, f, *a, **kw):
    f.write(b"PK\x03\x04 partial")
    raise Boom("disk full")


def test_failed_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    y = mixture_data()
    path = tmp_path / "keep.pt"
    fresh_em(make_mixture(), updates=mixture_updates).fit(y, max_iter=2, tol=0.0, checkpoint=path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", half_writing_save)
    with pytest.raises(Boom):
        fresh_em(make_mixture(), updates=mixture_updates).fit(y, max_iter=6, tol=0.0, checkpoint=path,
                                                               checkpoint_every=2)
    with pytest.raises(Boom):
        save_checkpoint(path, load_checkpoint(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path).n_iter == 2


def test_interrupt_while_saving_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"

    def interrupted(obj, f, *a, **kw):
        f.write(b"partial")
        raise KeyboardInterrupt

    y = mixture_data()
    fresh_em(make_mixture(), updates=mixture_updates).fit(y, max_iter=1, checkpoint=path)
    state = load_checkpoint(path)
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, state)
    assert os.listdir(tmp_path) == ["ck.pt"] and load_checkpoint(path).n_iter == 1


# --- files that are not (this model's) checkpoints ----------------------------------------------
def write_checkpoint(tmp_path, model=None, updates=mixture_updates):
    path = tmp_path / "good.pt"
    fresh_em(model or make_mixture(), updates=updates).fit(mixture_data(), max_iter=2, checkpoint=path)
    return path


@pytest.mark.parametrize("damage, message", [
    (lambda p, raw: p.write_bytes(raw[: len(raw) // 2]), "cannot be read"),
    (lambda p, raw: p.write_bytes(b""), "cannot be read"),
    (lambda p, raw: p.write_text("step,loglik\n1,-20.5\n"), "cannot be read"),
    (lambda p, raw: torch.save({"w": torch.ones(3)}, p), "not a pyroem checkpoint"),
    (lambda p, raw: torch.save([1, 2, 3], p), "not a pyroem checkpoint"),
    (lambda p, raw: torch.save({**torch.load(p, weights_only=True), "version": 99}, p), "version 99"),
    (lambda p, raw: torch.save({**torch.load(p, weights_only=True), "history": [1.0]}, p), "history entries"),
    (lambda p, raw: torch.save({**torch.load(p, weights_only=True), "unconstrained": [1]}, p), "'unconstrained'"),
], ids=["truncated", "empty", "text", "foreign_dict", "foreign_list", "newer_version", "short_history",
        "bad_params"])
def test_damaged_or_foreign_files_are_refused_naming_the_path(tmp_path, damage, message):
    path = write_checkpoint(tmp_path)
    damage(path, path.read_bytes())
    with pytest.raises(ValueError, match=message) as err:
        fresh_em(make_mixture(), updates=mixture_updates).fit(mixture_data(), checkpoint=path, resume=True)
    assert str(path) in str(err.value)


def test_numpy_pickle_is_refused_without_running_it(tmp_path):
    path = tmp_path / "np.pt"
    torch.save({"format": "pyroem-checkpoint", "params": np.ones(3)}, path)
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(path)


def other_mixture(k=3, dtype=torch.float64, scale_constraint=constraints.positive, extra=False):
    def model(y):
        w = pyro.param("w", torch.ones(k, dtype=dtype) / k, constraint=constraints.simplex)
        loc = pyro.param("loc", torch.linspace(-1, 1, k, dtype=dtype))
        scale = pyro.param("scale", torch.ones(k, dtype=dtype), constraint=scale_constraint)
        if extra:
            pyro.param("shift", torch.zeros((), dtype=dtype))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("obs", dist.Normal(loc[z], scale[z]), obs=y.to(dtype))
    return model


@pytest.mark.parametrize("model, message", [
    (other_mixture(k=4), "'w' has shape \\(3,\\) in the checkpoint and \\(4,\\)"),
    (other_mixture(dtype=torch.float32), "'w' is torch.float64 in the checkpoint and torch.float32"),
    (other_mixture(scale_constraint=constraints.greater_than(0.5)), "'scale' was saved with constraint"),
    (other_mixture(extra=True), "'shift' are not in it"),
], ids=["shape", "dtype", "constraint", "names"])
def test_checkpoint_of_another_model_is_refused(tmp_path, model, message):
    path = write_checkpoint(tmp_path, updates=None)
    with pytest.raises(ValueError, match=message) as err:
        fresh_em(model).fit(mixture_data(), checkpoint=path, resume=True)
    assert "does not match the model" in str(err.value) and str(path) in str(err.value)


def test_checkpoint_with_unknown_param_is_refused(tmp_path):
    path = write_checkpoint(tmp_path, model=other_mixture(extra=True), updates=None)
    with pytest.raises(ValueError, match="'shift' the model does not have"):
        fresh_em(make_mixture()).fit(mixture_data(), checkpoint=path, resume=True)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"checkpoint_every": 0}, ValueError, "checkpoint_every"),
    ({"checkpoint_every": 2.5}, ValueError, "checkpoint_every"),
    ({"checkpoint_every": True}, ValueError, "checkpoint_every"),
    ({"resume": True}, ValueError, "resume=True needs checkpoint"),
    ({"resume": "yes", "checkpoint": "x.pt"}, TypeError, "resume"),
    ({"checkpoint": 3}, TypeError, "checkpoint must be a file path"),
    ({"checkpoint": ""}, ValueError, "checkpoint"),
], ids=["every_zero", "every_float", "every_bool", "resume_no_path", "resume_str", "path_int", "path_empty"])
def test_bad_checkpoint_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        pyroem.EM(make_mixture()).fit(mixture_data(), **kwargs)


def test_checkpoint_path_must_be_a_file_in_an_existing_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        pyroem.EM(make_mixture()).fit(mixture_data(), checkpoint=tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        pyroem.EM(make_mixture()).fit(mixture_data(), checkpoint=tmp_path / "no" / "such" / "ck.pt")


def test_resume_refuses_a_checkpoint_made_on_other_data(tmp_path):
    """The checkpoint keeps the data's shapes, dtypes and a hash: resuming on other data is refused
    with both named; the same data resumes."""
    path = str(tmp_path / "fit.pt")
    y = mixture_data()
    model = make_mixture()
    pyro.clear_param_store()
    pyroem.EM(model).fit(y, max_iter=3, tol=0.0, checkpoint=path)
    other = y.clone()
    other[2] += 0.5
    for data in (other, y.float(), y[:4]):
        pyro.clear_param_store()
        with pytest.raises(ValueError, match="was made on other data"):
            pyroem.EM(model).fit(data, max_iter=5, tol=0.0, checkpoint=path, resume=True)
    pyro.clear_param_store()
    res = pyroem.EM(model).fit(y, max_iter=5, tol=0.0, checkpoint=path, resume=True)
    assert res.n_iter == 5 and len(res.history) == 6
