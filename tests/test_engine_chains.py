"""Vectorized Markov chains in the engine: ``pyroem.vectorized_markov`` and pyro.contrib.funsor's
``vectorized_markov``, against a numpy forward-backward, brute force, the same chain written with
``pyro.markov``, and Pyro's own ``TraceMarkovEnum_ELBO``."""
from __future__ import annotations

import itertools

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import constraints
from pyro.ops.indexing import Vindex
from scipy.stats import norm

import pyroem
from pyroem.chain_kernels import chain_log_partition
from engine_models import forward_backward_np, np_

K = 3
PI = [0.5, 0.3, 0.2]
A = [[0.7, 0.2, 0.1], [0.15, 0.7, 0.15], [0.25, 0.25, 0.5]]
LOCS = [-1.0, 0.5, 2.0]
Y = torch.tensor([[0.3, 1.7, 2.2, -0.4, 0.9, 2.5, -1.2],
                  [-0.8, -1.1, 0.4, 2.1, 1.9, 0.2, 0.6]], dtype=torch.float64)


def gaussian_hmm(loop: str):
    """A Gaussian HMM over a plate of sequences, its chain written as ``loop``."""

    def model(y):
        pi = pyro.param("pi", torch.tensor(PI, dtype=y.dtype), constraint=constraints.simplex)
        trans = pyro.param("trans", torch.tensor(A, dtype=y.dtype), constraint=constraints.simplex)
        locs = pyro.param("locs", torch.tensor(LOCS, dtype=y.dtype))
        steps = (pyroem.vectorized_markov(name="time", size=y.shape[1], dim=-1) if loop == "vectorized"
                 else pyro.markov(range(y.shape[1])))
        with pyro.plate("sequences", y.shape[0], dim=-2):
            x = None
            for t in steps:
                x = pyro.sample(f"x_{t}", dist.Categorical(pi if x is None else trans[x]))
                obs = y[:, t] if torch.is_tensor(t) else y[:, t].unsqueeze(-1)
                pyro.sample(f"y_{t}", dist.Normal(Vindex(locs)[..., x], 1.0), obs=obs)

    return model


def reference(y=Y):
    out = []
    for seq in np_(y):
        out.append(forward_backward_np(np.array(PI), np.array(A), norm.pdf(seq[:, None], np.array(LOCS)[None], 1.0)))
    return out


def test_vectorized_chain_log_likelihood_and_posteriors_match_forward_backward():
    pyro.clear_param_store()
    expect = pyroem.EM(gaussian_hmm("vectorized")).e_step(Y)
    ref = reference()
    assert float(expect.log_likelihood) == pytest.approx(sum(r[0] for r in ref), rel=1e-12)
    T = Y.shape[1]
    first = expect.marginal("x_0")                                      # (2, 1, K)
    later = expect.marginal(f"x_{slice(1, T, None)}")                    # (2, T-1, K)
    before = expect.marginal(f"x_{slice(0, T - 1, None)}")               # the shifted copy
    pair = expect.joint(f"x_{slice(0, T - 1, None)}", f"x_{slice(1, T, None)}")  # (2, T-1, K, K)
    for n, (_, gamma, xi) in enumerate(ref):
        np.testing.assert_allclose(np_(first[n, 0]), gamma[0], rtol=1e-10)
        np.testing.assert_allclose(np_(later[n]), gamma[1:], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(np_(before[n]), gamma[:-1], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(np_(pair[n]), xi, rtol=1e-10, atol=1e-14)


def test_vectorized_chain_fits_as_the_pyro_markov_chain():
    """Same EM trajectory as the per-step chain, with the default M-step (counts and weighted
    means read off the graph)."""
    runs = {}
    for loop in ("vectorized", "markov"):
        pyro.clear_param_store()
        result = pyroem.EM(gaussian_hmm(loop)).fit(Y, max_iter=30, tol=0.0)
        runs[loop] = (result.history, {k: np_(v) for k, v in pyro.get_param_store().items()})
    np.testing.assert_allclose(runs["vectorized"][0], runs["markov"][0], rtol=1e-11)
    for name, value in runs["markov"][1].items():
        np.testing.assert_allclose(runs["vectorized"][1][name], value, rtol=1e-8, atol=1e-10)
    assert runs["vectorized"][0][-1] > runs["vectorized"][0][0]


def test_factorial_chain_two_variables_in_one_vectorized_chain():
    """Two independent chains stepping together (a factorial HMM): brute force over all paths."""
    T = 4
    y = torch.tensor([0.4, 2.1, -0.3, 1.2], dtype=torch.float64)
    pa, pb = np.array([[0.8, 0.2], [0.3, 0.7]]), np.array([[0.6, 0.4], [0.1, 0.9]])

    def model(y):
        ta = pyro.param("ta", torch.tensor(pa), constraint=constraints.simplex)
        tb = pyro.param("tb", torch.tensor(pb), constraint=constraints.simplex)
        mu = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
        a = b = None
        for t in pyroem.vectorized_markov(name="time", size=T, dim=-1):
            a = pyro.sample(f"a_{t}", dist.Categorical(torch.tensor([0.5, 0.5], dtype=torch.float64) if a is None else ta[a]))
            b = pyro.sample(f"b_{t}", dist.Categorical(torch.tensor([0.5, 0.5], dtype=torch.float64) if b is None else tb[b]))
            pyro.sample(f"y_{t}", dist.Normal(Vindex(mu)[..., a, b], 1.0), obs=y[t])

    pyro.clear_param_store()
    ll = float(pyroem.EM(model).e_step(y).log_likelihood)
    mu = np.array([[0.0, 1.0], [2.0, 3.0]])
    total = 0.0
    for path_a in itertools.product(range(2), repeat=T):
        for path_b in itertools.product(range(2), repeat=T):
            p = 0.25
            for t in range(T):
                if t:
                    p *= pa[path_a[t - 1], path_a[t]] * pb[path_b[t - 1], path_b[t]]
                p *= norm.pdf(float(y[t]), mu[path_a[t], path_b[t]], 1.0)
            total += p
    assert ll == pytest.approx(np.log(total), rel=1e-12)


def test_vectorized_chain_of_history_two_is_refused():
    def model(y):
        trans = pyro.param("trans", torch.full((K, K), 1.0 / K), constraint=constraints.simplex)
        x = None
        for t in pyroem.vectorized_markov(name="time", size=len(y), dim=-1, history=2):
            x = pyro.sample(f"x_{t}", dist.Categorical(torch.full((K,), 1.0 / K) if x is None else trans[x]))
            pyro.sample(f"y_{t}", dist.Normal(x.to(y.dtype), 1.0), obs=y[t])

    with pytest.raises(ValueError, match="history=2.*pyro.markov"):
        pyroem.EM(model).e_step(torch.tensor([0.1, 1.2, 2.0, 0.3]))


def test_vectorized_markov_checks_its_arguments():
    with pytest.raises(ValueError, match="size must be at least"):
        pyroem.vectorized_markov("time", 1, history=2)
    with pytest.raises(ValueError, match="history"):
        pyroem.vectorized_markov("time", 5, history=-1)


@pytest.mark.parametrize("method", ["forward", "scan"])
def test_chain_kernel_matches_brute_force_with_zeros_and_time_varying_steps(method):
    g = torch.Generator().manual_seed(3)
    b, steps, k = 2, 5, 3
    init = torch.randn(b, k, generator=g, dtype=torch.float64)
    trans = torch.randn(b, steps, k, k, generator=g, dtype=torch.float64) * 3
    trans[0, 2, 1] = float("-inf")                      # a forbidden row at one step
    emit = torch.randn(b, steps, k, generator=g, dtype=torch.float64) * 4
    ref = []
    for n in range(b):
        terms = []
        for path in itertools.product(range(k), repeat=steps + 1):
            s = init[n, path[0]] + sum(trans[n, t, path[t], path[t + 1]] + emit[n, t, path[t + 1]] for t in range(steps))
            terms.append(s)
        ref.append(torch.logsumexp(torch.stack(terms), 0))
    got = chain_log_partition(init, trans, emit, method)
    np.testing.assert_allclose(np_(got), np_(torch.stack(ref)), rtol=1e-12)


@pytest.mark.parametrize("trans_shape", [(1, 1), (1, 6), (3, 6)], ids=["shared", "per-step", "per-chain-and-step"])
def test_chain_kernel_explicit_backward_equals_autograd(trans_shape):
    """The E-step's Baum-Welch backward pass (per-step probe) gives the gradients autograd
    gives through the scan, for a transition shared by every step, one per step (a
    ``pyro.markov`` chain whose transition drifts) and one per chain and step."""
    g = torch.Generator().manual_seed(4)
    b, steps, k = 3, 6, 4
    init = torch.randn(b, k, generator=g, dtype=torch.float64)
    trans = torch.randn(trans_shape + (k, k), generator=g, dtype=torch.float64)
    emit = torch.randn(b, steps, k, generator=g, dtype=torch.float64) * 2
    weights = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    grads = []
    for first_order in (True, False):
        leaves = [t.clone().requires_grad_() for t in (init, trans, emit)]
        probe = torch.zeros(b, steps, k, k, dtype=torch.float64, requires_grad=True)
        out = chain_log_partition(*leaves, method="forward" if first_order else "scan", probe=probe,
                                  first_order=first_order)
        (out * weights).sum().backward()
        grads.append([t.grad for t in leaves] + [probe.grad])
    for a, b_ in zip(*grads):
        np.testing.assert_allclose(np_(a), np_(b_), rtol=1e-10, atol=1e-13)


# --- pyro.contrib.funsor's vectorized_markov, against TraceMarkovEnum_ELBO ---------------------
def _funsor():
    pytest.importorskip("funsor")
    import funsor
    import pyro.contrib.funsor  # noqa: F401  (registers the contrib.funsor backend)

    funsor.set_backend("torch")


def test_funsor_vectorized_markov_log_likelihood_equals_trace_markov_enum_elbo():
    _funsor()
    from pyroapi import infer, pyro as api, pyro_backend

    data = torch.tensor([0.3, 1.7, 2.2, -0.4, 0.9, 2.5], dtype=torch.float64)

    def model(data):
        init = api.param("init", torch.tensor(PI, dtype=torch.float64), constraint=constraints.simplex)
        trans = api.param("trans", torch.tensor(A, dtype=torch.float64), constraint=constraints.simplex)
        locs = api.param("locs", torch.tensor(LOCS, dtype=torch.float64))
        x_prev = None
        for i in api.vectorized_markov(name="time", size=len(data), dim=-1):
            probs = init if isinstance(i, int) and i < 1 else trans[x_prev]
            x_curr = api.sample(f"x_{i}", dist.Categorical(probs), infer={"enumerate": "parallel"})
            api.sample(f"y_{i}", dist.Normal(Vindex(locs)[..., x_curr], 1.0), obs=data[i])
            x_prev = x_curr

    with pyro_backend("contrib.funsor"):
        api.clear_param_store()
        ours = float(pyroem.log_likelihood(model, data).detach())
        theirs = -float(infer.TraceMarkovEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, lambda d: None, data).detach())
    hand = forward_backward_np(np.array(PI), np.array(A), norm.pdf(np_(data)[:, None], np.array(LOCS)[None], 1.0))[0]
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert ours == pytest.approx(hand, rel=1e-12)


def test_funsor_example_model_with_lengths_mask_tones_and_map_sites():
    """The vectorized HMM of Pyro's funsor polyphonic-music example (MAP Dirichlet/Beta sites, a
    sequences plate, a tones plate, lengths as a mask): log p(y, θ) equals TraceMarkovEnum_ELBO
    with a Delta guide at the same θ."""
    _funsor()
    from pyro.infer.autoguide import AutoDelta
    from pyroapi import handlers, infer, pyro as api, pyro_backend

    hidden = 3

    def model(sequences, lengths):
        num_sequences, max_length, data_dim = map(int, sequences.shape)
        probs_x = api.sample("probs_x", dist.Dirichlet(0.9 * torch.eye(hidden, dtype=torch.float64) + 0.1).to_event(1))
        probs_y = api.sample("probs_y", dist.Beta(torch.tensor(0.1, dtype=torch.float64), 0.9)
                             .expand([hidden, data_dim]).to_event(2))
        tones = api.plate("tones", data_dim, dim=-1)
        with api.plate("sequences", num_sequences, dim=-3) as batch:
            lengths = lengths[batch]
            batch = batch[:, None]
            x_prev = 0
            for t in api.vectorized_markov(name="time", size=int(lengths.max()), dim=-2):
                with handlers.mask(mask=(t < lengths.unsqueeze(-1)).unsqueeze(-1)):
                    x_curr = api.sample(f"x_{t}", dist.Categorical(probs_x[x_prev]), infer={"enumerate": "parallel"})
                    with tones:
                        api.sample(f"y_{t}", dist.Bernoulli(probs_y[x_curr.squeeze(-1)]),
                                   obs=Vindex(sequences)[batch, t])
                x_prev = x_curr

    g = torch.Generator().manual_seed(0)
    seqs = (torch.rand(5, 7, 4, generator=g) < 0.4).double()
    lengths = torch.tensor([7, 5, 6, 3, 7])
    with pyro_backend("contrib.funsor"):
        api.clear_param_store()
        em = pyroem.EM(model)
        ours = float(em.e_step(seqs, lengths).log_likelihood)
        values = {k: v.detach() for k, v in em.params.items()}
        guide = AutoDelta(handlers.block(model, expose_fn=lambda msg: msg["name"].startswith("probs_")),
                          init_loc_fn=lambda site: values[site["name"]])
        theirs = -float(infer.TraceMarkovEnum_ELBO(max_plate_nesting=3).differentiable_loss(model, guide, seqs, lengths).detach())
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_unscored_latent_outside_a_chain_is_refused():
    def model(y):
        p = pyro.param("p", torch.tensor([0.4, 0.6]), constraint=constraints.simplex)
        z = pyro.sample("z", dist.Categorical(p), infer={"_do_not_score": True})
        pyro.sample("y", dist.Normal(z.to(y.dtype), 1.0), obs=y)

    with pytest.raises(ValueError, match="'z'.*no vectorized Markov chain"):
        pyroem.EM(model).e_step(torch.tensor(0.3))


# --- MAP decoding of vectorized chains ---------------------------------------------------------
def test_decode_vectorized_chain_equals_brute_force_and_the_pyro_markov_chain():
    y = Y[:, :5]
    pyro.clear_param_store()
    ours = pyroem.decode(gaussian_hmm("vectorized"), y)
    pyro.clear_param_store()
    markov = pyroem.decode(gaussian_hmm("markov"), y)
    T = y.shape[1]
    path = torch.cat([ours[f"x_{0}"], ours[f"x_{slice(1, T, None)}"]], dim=-1)       # (2, T)
    assert torch.equal(ours[f"x_{slice(0, T - 1, None)}"], path[:, :-1])
    total = 0.0
    for n in range(y.shape[0]):
        best, best_path = -np.inf, None
        for cand in itertools.product(range(K), repeat=T):
            s = np.log(PI[cand[0]]) + norm.logpdf(float(y[n, 0]), LOCS[cand[0]], 1.0)
            for t in range(1, T):
                s += np.log(A[cand[t - 1]][cand[t]]) + norm.logpdf(float(y[n, t]), LOCS[cand[t]], 1.0)
            if s > best:
                best, best_path = s, cand
        total += best
        assert tuple(path[n].tolist()) == best_path
        assert tuple(markov[f"x_{t}"].reshape(-1)[n].item() for t in range(T)) == best_path
    assert ours.log_prob == pytest.approx(total, rel=1e-12)
    assert markov.log_prob == pytest.approx(total, rel=1e-12)


def test_decode_time_varying_chain_with_a_mixture_latent_beside_it():
    """A transition that depends on a covariate at each step, and an unrelated mixture latent:
    every latent decoded jointly (brute force)."""
    T = 4
    y = torch.tensor([0.2, 1.9, 2.4, -0.1], dtype=torch.float64)
    u = torch.tensor([0.0, 1.0, -1.0, 0.5], dtype=torch.float64)
    w = torch.tensor([1.1, -0.4], dtype=torch.float64)

    def model(y, u, w):
        base = torch.tensor([[1.0, -1.0], [-0.5, 0.8]], dtype=torch.float64)
        x = None
        for t in pyroem.vectorized_markov(name="time", size=T, dim=-1):
            if x is None:
                logits = torch.zeros(2, dtype=torch.float64)
            else:
                logits = base[x] + u[t].unsqueeze(-1) * torch.tensor([0.0, 1.0], dtype=torch.float64)
            x = pyro.sample(f"x_{t}", dist.Categorical(logits=logits))
            pyro.sample(f"y_{t}", dist.Normal(2.0 * x.to(y.dtype), 1.0), obs=y[t])
        with pyro.plate("pts", 2):
            z = pyro.sample("z", dist.Categorical(torch.tensor([0.3, 0.7], dtype=torch.float64)))
            pyro.sample("w", dist.Normal(torch.tensor([-1.0, 1.0], dtype=torch.float64)[z], 1.0), obs=w)

    got = pyroem.decode(model, y, u, w)
    base = np.array([[1.0, -1.0], [-0.5, 0.8]])
    best, best_path = -np.inf, None
    for cand in itertools.product(range(2), repeat=T):
        s = np.log(0.5) + norm.logpdf(float(y[0]), 2.0 * cand[0], 1.0)
        for t in range(1, T):
            logits = base[cand[t - 1]] + float(u[t]) * np.array([0.0, 1.0])
            s += logits[cand[t]] - np.logaddexp(*logits) + norm.logpdf(float(y[t]), 2.0 * cand[t], 1.0)
        if s > best:
            best, best_path = s, cand
    path = torch.cat([got["x_0"].reshape(1), got[f"x_{slice(1, T, None)}"]]).tolist()
    assert tuple(path) == best_path
    z_best = [int(np.argmax([np.log(p) + norm.logpdf(float(v), m, 1.0) for p, m in ((0.3, -1.0), (0.7, 1.0))]))
              for v in w]
    assert got["z"].tolist() == z_best
    z_total = sum(max(np.log(p) + norm.logpdf(float(v), m, 1.0) for p, m in ((0.3, -1.0), (0.7, 1.0))) for v in w)
    assert got.log_prob == pytest.approx(best + z_total, rel=1e-12)


def test_vectorized_chain_per_sequence_log_likelihood_and_float32():
    """``log_likelihood_by("sequences")`` is each sequence's forward value; float32 agrees with
    float64 to its own precision."""
    ref = [r[0] for r in reference()]
    pyro.clear_param_store()
    expect = pyroem.EM(gaussian_hmm("vectorized")).e_step(Y)
    np.testing.assert_allclose(np_(expect.log_likelihood_by("sequences")), ref, rtol=1e-12)
    pyro.clear_param_store()
    expect32 = pyroem.EM(gaussian_hmm("vectorized")).e_step(Y.float())
    assert expect32.log_likelihood.dtype == torch.float32
    np.testing.assert_allclose(np_(expect32.log_likelihood_by("sequences")), ref, rtol=1e-5)
    np.testing.assert_allclose(np_(expect32.expected_counts(f"x_{slice(0, 6, None)}", f"x_{slice(1, 7, None)}")),
                               sum(r[2].sum(0) for r in reference()), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# chains written with pyro.markov: stacked along time and eliminated by the chain kernels
# ---------------------------------------------------------------------------------------------
def test_pyro_markov_chain_posteriors_match_forward_backward():
    pyro.clear_param_store()
    expect = pyroem.EM(gaussian_hmm("markov")).e_step(Y)
    ref = reference()
    assert float(expect.log_likelihood) == pytest.approx(sum(r[0] for r in ref), rel=1e-12)
    for t in range(Y.shape[1]):
        gamma = np_(expect.marginal(f"x_{t}")).reshape(len(Y), K)
        np.testing.assert_allclose(gamma, np.stack([r[1][t] for r in ref]), rtol=1e-10, atol=1e-14)
        if t:
            xi = np_(expect.joint(f"x_{t - 1}", f"x_{t}")).reshape(len(Y), K, K)
            np.testing.assert_allclose(xi, np.stack([r[2][t - 1] for r in ref]), rtol=1e-10, atol=1e-14)


T_VARY, TONES = 6, 3


def drifting_chain(y):
    """Two states whose transition drifts with the step (a covariate), each step emitting a chord
    of ``TONES`` Bernoulli tones in a plate of its own; ``pyro.markov`` over time."""
    dt = y.dtype
    w = pyro.param("w", torch.tensor([[1.0, -0.5], [-0.3, 0.8]], dtype=dt))
    u = pyro.param("u", torch.tensor([[0.2, -0.1], [0.4, 0.0]], dtype=dt))
    probs = pyro.param("probs", torch.tensor([[0.8, 0.3, 0.6], [0.2, 0.7, 0.1]], dtype=dt),
                       constraint=constraints.unit_interval)
    tones = pyro.plate("tones", TONES, dim=-1)
    with pyro.plate("sequences", y.shape[0], dim=-2):
        x = 0
        for t in pyro.markov(range(y.shape[1])):
            x = pyro.sample(f"x_{t}", dist.Categorical(logits=(w + t * u)[x]))
            with tones:
                pyro.sample(f"y_{t}", dist.Bernoulli(probs[x.squeeze(-1)]), obs=y[:, t])


def drifting_brute_force(y):
    """log p(y) per sequence, p(x_t), p(x_{t-1}, x_t) by summing over every path (torch, so that
    the gradient of log p(y) is there too)."""
    w, u, probs = (pyro.param(n) for n in ("w", "u", "probs"))
    paths = torch.tensor(list(itertools.product(range(2), repeat=y.shape[1])))      # (P, T)
    log_joint = torch.zeros((y.shape[0], len(paths)), dtype=y.dtype)
    prev = torch.zeros(len(paths), dtype=torch.long)
    for t in range(y.shape[1]):
        cur = paths[:, t]
        log_joint = log_joint + torch.log_softmax(w + t * u, -1)[prev, cur]
        p = probs[cur]                                                                   # (P, TONES)
        log_joint = log_joint + (y[:, t, None] * p.log() + (1 - y[:, t, None]) * (1 - p).log()).sum(-1)
        prev = cur
    log_z = torch.logsumexp(log_joint, -1)
    post = (log_joint - log_z[:, None]).exp()
    marginals = [post @ torch.nn.functional.one_hot(paths[:, t], 2).to(y.dtype) for t in range(y.shape[1])]
    pairs = [torch.einsum("np,pi,pj->nij", post, *(torch.nn.functional.one_hot(paths[:, s], 2).to(y.dtype)
                                                   for s in (t - 1, t))) for t in range(1, y.shape[1])]
    return log_z, marginals, pairs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pyro_markov_chain_with_drifting_transitions_and_a_tones_plate_equals_brute_force(dtype):
    g = torch.Generator().manual_seed(3)
    y = torch.bernoulli(torch.full((4, T_VARY, TONES), 0.5, dtype=dtype), generator=g)
    pyro.clear_param_store()
    expect = pyroem.EM(drifting_chain).e_step(y)
    with torch.no_grad():
        log_z, marginals, pairs = drifting_brute_force(y)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(float(expect.log_likelihood), float(log_z.sum()), **tol)
    for t in range(T_VARY):
        np.testing.assert_allclose(np_(expect.marginal(f"x_{t}")).reshape(-1, 2), np_(marginals[t]), **tol)
        if t:
            np.testing.assert_allclose(np_(expect.joint(f"x_{t - 1}", f"x_{t}")).reshape(-1, 2, 2),
                                       np_(pairs[t - 1]), **tol)
    assert expect.marginal("x_2").dtype == dtype


def test_pyro_markov_chain_log_likelihood_gradient_equals_brute_force():
    """``pyroem.log_likelihood`` differentiated through the stacked chain (the autograd M-step's
    route) against autograd through the sum over every path."""
    g = torch.Generator().manual_seed(4)
    y = torch.bernoulli(torch.full((3, T_VARY, TONES), 0.5, dtype=torch.float64), generator=g)
    pyro.clear_param_store()
    ours = pyroem.log_likelihood(drifting_chain, y)
    params = [pyro.param(n).unconstrained() for n in ("w", "u", "probs")]
    grads = torch.autograd.grad(ours, params)
    ref = drifting_brute_force(y)[0].sum()
    ref_grads = torch.autograd.grad(ref, params)
    assert float(ours) == pytest.approx(float(ref), rel=1e-12)
    for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(np_(a), np_(b), rtol=1e-9, atol=1e-12)


def test_pyro_markov_chain_decodes_to_the_brute_force_maximum():
    """Viterbi on the stacked per-step tables: every sequence's most probable path over the 2^6
    paths of the drifting chain, and log p(x*, y) summed over the sequences."""
    g = torch.Generator().manual_seed(5)
    y = torch.bernoulli(torch.full((4, T_VARY, TONES), 0.5, dtype=torch.float64), generator=g)
    pyro.clear_param_store()
    pyroem.EM(drifting_chain).e_step(y)                      # creates the params
    dec = pyroem.decode(drifting_chain, y)
    w, u, probs = (pyro.param(n).detach() for n in ("w", "u", "probs"))
    paths = torch.tensor(list(itertools.product(range(2), repeat=T_VARY)))
    log_joint = torch.zeros((y.shape[0], len(paths)), dtype=y.dtype)
    prev = torch.zeros(len(paths), dtype=torch.long)
    for t in range(T_VARY):
        cur = paths[:, t]
        p = probs[cur]
        log_joint += torch.log_softmax(w + t * u, -1)[prev, cur]
        log_joint += (y[:, t, None] * p.log() + (1 - y[:, t, None]) * (1 - p).log()).sum(-1)
        prev = cur
    best = log_joint.max(-1)
    decoded = torch.stack([dec[f"x_{t}"].reshape(-1) for t in range(T_VARY)], 1)
    np.testing.assert_array_equal(decoded.numpy(), paths[best.indices].numpy())
    assert dec.log_prob == pytest.approx(float(best.values.sum()), rel=1e-12)


def capture_recapture(history):
    """Cormack-Jolly-Seber: an animal alive at step t survives to t+1 with probability phi and, if
    alive, is recaptured with probability rho; nothing is modelled before its first capture
    (masked). phi and rho are global latents (MAP sites); the alive state is a pyro.markov chain."""
    n, steps = history.shape
    phi = pyro.sample("phi", dist.Beta(2.0, 2.0))
    rho = pyro.sample("rho", dist.Beta(2.0, 2.0))
    seen = torch.zeros(n, dtype=torch.bool)
    alive = torch.ones(n, dtype=history.dtype)
    with pyro.plate("animals", n):
        for t in pyro.markov(range(steps)):
            with poutine.mask(mask=seen):
                p_alive = torch.where(seen, phi * alive, torch.ones(()))
                alive = pyro.sample(f"alive_{t}", dist.Bernoulli(p_alive))
                pyro.sample(f"caught_{t}", dist.Bernoulli(rho * alive), obs=history[:, t])
            seen = seen | history[:, t].bool()


def test_capture_recapture_chain_with_masks_and_map_sites_equals_trace_enum_elbo():
    """A chain stacked along time under first-capture masks with MAP globals: log p(y, θ) equal
    to TraceEnum_ELBO's with a point-mass guide, and EM climbs."""
    from pyro.infer import TraceEnum_ELBO, config_enumerate
    from pyro.infer.autoguide import AutoDelta

    g = torch.Generator().manual_seed(6)
    n, steps = 30, 6
    history = torch.zeros(n, steps)
    first = torch.randint(0, steps - 1, (n,), generator=g)
    for i in range(n):
        alive = True
        for t in range(int(first[i]), steps):
            alive = alive and (t == first[i] or bool(torch.rand((), generator=g) < 0.8))
            history[i, t] = float(alive and (t == first[i] or bool(torch.rand((), generator=g) < 0.6)))
    pyro.clear_param_store()
    pyro.set_rng_seed(0)                                   # the MAP sites start from prior draws
    em = pyroem.EM(capture_recapture)
    ours = float(em.e_step(history).log_likelihood)
    values = {k: v.detach().clone() for k, v in em.params.items()}
    guide = AutoDelta(poutine.block(capture_recapture, expose=list(values)),
                      init_loc_fn=lambda site: values[site["name"]])
    elbo = TraceEnum_ELBO(max_plate_nesting=1)        # Pyro enumerates only the sites marked for it
    ref = -float(elbo.differentiable_loss(config_enumerate(capture_recapture), guide, history).detach())
    assert ours == pytest.approx(ref, rel=1e-6)
    pyro.clear_param_store()
    history_ll = pyroem.EM(capture_recapture).fit(history, max_iter=5).history
    assert all(b >= a - 1e-4 for a, b in zip(history_ll, history_ll[1:])) and history_ll[-1] > history_ll[0]
