"""The eight HMMs of Pyro's ``examples/hmm.py`` (polyphonic music; written here the way that example
writes them, on small synthetic data): pyroem's exact log p(y, θ) equals Pyro's own
``TraceEnum_ELBO`` with a point-mass guide at the same θ, and EM steps never lower it."""
from __future__ import annotations

import functools
import warnings
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn as nn
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta
from pyro.ops.indexing import Vindex

import pyroem

ARGS = SimpleNamespace(hidden_dim=4, nn_dim=5, nn_channels=2, jit=False, raftery_parameterization=False)


def model_0(sequences, lengths, args, include_prior=True):
    num_sequences, max_length, data_dim = sequences.shape
    with poutine.mask(mask=include_prior):
        probs_x = pyro.sample("probs_x", dist.Dirichlet(0.9 * torch.eye(args.hidden_dim) + 0.1).to_event(1))
        probs_y = pyro.sample("probs_y", dist.Beta(0.1, 0.9).expand([args.hidden_dim, data_dim]).to_event(2))
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    for i in pyro.plate("sequences", len(sequences)):
        length = lengths[i]
        sequence = sequences[i, :length]
        x = 0
        for t in pyro.markov(range(length)):
            x = pyro.sample(f"x_{i}_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"})
            with tones_plate:
                pyro.sample(f"y_{i}_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=sequence[t])


def model_1(sequences, lengths, args, include_prior=True):
    num_sequences, max_length, data_dim = sequences.shape
    with poutine.mask(mask=include_prior):
        probs_x = pyro.sample("probs_x", dist.Dirichlet(0.9 * torch.eye(args.hidden_dim) + 0.1).to_event(1))
        probs_y = pyro.sample("probs_y", dist.Beta(0.1, 0.9).expand([args.hidden_dim, data_dim]).to_event(2))
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    with pyro.plate("sequences", num_sequences, dim=-2) as batch:
        lengths = lengths[batch]
        x = 0
        for t in pyro.markov(range(int(lengths.max()))):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = pyro.sample(f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"})
                with tones_plate:
                    pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=sequences[batch, t])


def model_2(sequences, lengths, args, include_prior=True):
    num_sequences, max_length, data_dim = sequences.shape
    with poutine.mask(mask=include_prior):
        probs_x = pyro.sample("probs_x", dist.Dirichlet(0.9 * torch.eye(args.hidden_dim) + 0.1).to_event(1))
        probs_y = pyro.sample("probs_y", dist.Beta(0.1, 0.9).expand([args.hidden_dim, 2, data_dim]).to_event(3))
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    with pyro.plate("sequences", num_sequences, dim=-2) as batch:
        lengths = lengths[batch]
        x, y = 0, 0
        for t in pyro.markov(range(int(lengths.max()))):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = pyro.sample(f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"})
                with tones_plate as tones:
                    y = pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[x, y, tones]),
                                    obs=sequences[batch, t]).long()


def model_3(sequences, lengths, args, include_prior=True):
    num_sequences, max_length, data_dim = sequences.shape
    hidden_dim = int(args.hidden_dim ** 0.5)
    with poutine.mask(mask=include_prior):
        probs_w = pyro.sample("probs_w", dist.Dirichlet(0.9 * torch.eye(hidden_dim) + 0.1).to_event(1))
        probs_x = pyro.sample("probs_x", dist.Dirichlet(0.9 * torch.eye(hidden_dim) + 0.1).to_event(1))
        probs_y = pyro.sample("probs_y", dist.Beta(0.1, 0.9).expand([hidden_dim, hidden_dim, data_dim]).to_event(3))
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    with pyro.plate("sequences", num_sequences, dim=-2) as batch:
        lengths = lengths[batch]
        w, x = 0, 0
        for t in pyro.markov(range(int(lengths.max()))):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                w = pyro.sample(f"w_{t}", dist.Categorical(probs_w[w]), infer={"enumerate": "parallel"})
                x = pyro.sample(f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"})
                with tones_plate as tones:
                    pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[w, x, tones]), obs=sequences[batch, t])


def model_4(sequences, lengths, args, include_prior=True):
    num_sequences, max_length, data_dim = sequences.shape
    hidden_dim = int(args.hidden_dim ** 0.5)
    with poutine.mask(mask=include_prior):
        probs_w = pyro.sample("probs_w", dist.Dirichlet(0.9 * torch.eye(hidden_dim) + 0.1).to_event(1))
        probs_x = pyro.sample("probs_x", dist.Dirichlet(0.9 * torch.eye(hidden_dim) + 0.1)
                              .expand_by([hidden_dim]).to_event(2))
        probs_y = pyro.sample("probs_y", dist.Beta(0.1, 0.9).expand([hidden_dim, hidden_dim, data_dim]).to_event(3))
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    with pyro.plate("sequences", num_sequences, dim=-2) as batch:
        lengths = lengths[batch]
        w = x = torch.tensor(0, dtype=torch.long)
        for t in pyro.markov(range(int(lengths.max()))):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                w = pyro.sample(f"w_{t}", dist.Categorical(probs_w[w]), infer={"enumerate": "parallel"})
                x = pyro.sample(f"x_{t}", dist.Categorical(Vindex(probs_x)[w, x]), infer={"enumerate": "parallel"})
                with tones_plate as tones:
                    pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[w, x, tones]), obs=sequences[batch, t])


class TonesGenerator(nn.Module):
    def __init__(self, args, data_dim):
        self.args = args
        self.data_dim = data_dim
        super().__init__()
        self.x_to_hidden = nn.Linear(args.hidden_dim, args.nn_dim)
        self.y_to_hidden = nn.Linear(args.nn_channels * data_dim, args.nn_dim)
        self.conv = nn.Conv1d(1, args.nn_channels, 3, padding=1)
        self.hidden_to_logits = nn.Linear(args.nn_dim, data_dim)
        self.relu = nn.ReLU()

    def forward(self, x, y):
        x_onehot = y.new_zeros(x.shape[:-1] + (self.args.hidden_dim,)).scatter_(-1, x, 1)
        y_conv = self.relu(self.conv(y.reshape(-1, 1, self.data_dim))).reshape(y.shape[:-1] + (-1,))
        h = self.relu(self.x_to_hidden(x_onehot) + self.y_to_hidden(y_conv))
        return self.hidden_to_logits(h)


GENERATOR = {}


def _generator(args, data_dim):
    if "net" not in GENERATOR:
        torch.manual_seed(0)
        GENERATOR["net"] = TonesGenerator(args, data_dim)
    return GENERATOR["net"]


def _network_and_transitions(args, data_dim, include_prior):
    """model_5's and model_7's shared start: the emission network and the MAP transition matrix."""
    tones_generator = _generator(args, data_dim)
    pyro.module("tones_generator", tones_generator)
    with poutine.mask(mask=include_prior):
        probs_x = pyro.sample("probs_x", dist.Dirichlet(0.9 * torch.eye(args.hidden_dim) + 0.1).to_event(1))
    return tones_generator, probs_x


def model_5(sequences, lengths, args, include_prior=True):
    num_sequences, max_length, data_dim = sequences.shape
    tones_generator, probs_x = _network_and_transitions(args, data_dim, include_prior)
    with pyro.plate("sequences", num_sequences, dim=-2) as batch:
        lengths = lengths[batch]
        x = 0
        y = torch.zeros(data_dim)
        for t in pyro.markov(range(int(lengths.max()))):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = pyro.sample(f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"})
                with pyro.plate(f"tones_{t}", data_dim, dim=-1):
                    y = pyro.sample(f"y_{t}", dist.Bernoulli(logits=tones_generator(x, y)), obs=sequences[batch, t])


def model_6(sequences, lengths, args, include_prior=False):
    num_sequences, max_length, data_dim = sequences.shape
    hidden_dim = args.hidden_dim
    g = torch.Generator().manual_seed(1)
    if not args.raftery_parameterization:
        probs_x = pyro.param("probs_x", torch.rand(hidden_dim, hidden_dim, hidden_dim, generator=g),
                             constraint=constraints.simplex)
    else:
        probs_x1 = pyro.param("probs_x1", torch.rand(hidden_dim, hidden_dim, generator=g), constraint=constraints.simplex)
        probs_x2 = pyro.param("probs_x2", torch.rand(hidden_dim, hidden_dim, generator=g), constraint=constraints.simplex)
        mix_lambda = pyro.param("mix_lambda", torch.tensor(0.5), constraint=constraints.unit_interval)
        probs_x = mix_lambda * probs_x1 + (1.0 - mix_lambda) * probs_x2.unsqueeze(-2)
    probs_y = pyro.param("probs_y", torch.rand(hidden_dim, data_dim, generator=g), constraint=constraints.unit_interval)
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    with pyro.plate("sequences", num_sequences, dim=-2) as batch:
        lengths = lengths[batch]
        x_curr, x_prev = torch.tensor(0), torch.tensor(0)
        for t in pyro.markov(range(int(lengths.max())), history=2):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                probs_x_t = Vindex(probs_x)[x_prev, x_curr]
                x_prev, x_curr = x_curr, pyro.sample(f"x_{t}", dist.Categorical(probs_x_t),
                                                     infer={"enumerate": "parallel"})
                with tones_plate:
                    pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[x_curr.squeeze(-1)]), obs=sequences[batch, t])


def model_7(sequences, lengths, args, include_prior=True):
    num_sequences, max_length, data_dim = sequences.shape
    tones_generator, probs_x = _network_and_transitions(args, data_dim, include_prior)
    with pyro.plate("sequences", num_sequences, dim=-1) as batch:
        lengths = lengths[batch]
        y = sequences[batch, : int(lengths.max())]
        x = torch.arange(args.hidden_dim)
        t = torch.arange(y.size(1))
        init_logits = torch.full((args.hidden_dim,), -float("inf"))
        init_logits[0] = 0
        trans_logits = probs_x.log()
        obs_dist = dist.Bernoulli(logits=tones_generator(x, y.unsqueeze(-2))).to_event(1)
        obs_dist = obs_dist.mask((t < lengths.unsqueeze(-1)).unsqueeze(-1))
        hmm_dist = dist.DiscreteHMM(init_logits, trans_logits, obs_dist)
        pyro.sample("y", hmm_dist, obs=y)


MODELS = {name: fn for name, fn in globals().items() if name.startswith("model_")}
NESTING = {"model_0": 1, "model_7": 1}


def _data():
    g = torch.Generator().manual_seed(0)
    sequences = (torch.rand(4, 6, 3, generator=g) < 0.35).float()
    lengths = torch.tensor([6, 4, 5, 2])
    for n, length in enumerate(lengths):
        sequences[n, length:] = 0.0
    return sequences, lengths


@pytest.fixture(autouse=True)
def _fresh():
    pyro.clear_param_store()
    GENERATOR.clear()
    yield
    pyro.clear_param_store()


def _pyro_value(model, sequences, lengths, args, values):
    """-loss of TraceEnum_ELBO with a point-mass guide on the MAP sites at ``values``."""
    sites = [n for n in values if n.startswith("probs_")]
    guide = AutoDelta(poutine.block(model, expose=sites), init_loc_fn=lambda site: values[site["name"]])
    elbo = TraceEnum_ELBO(max_plate_nesting=NESTING.get(model.__name__, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return -float(elbo.differentiable_loss(model, guide, sequences, lengths, args).detach())


CASES = [(name, False) for name in sorted(MODELS)] + [("model_6", True)]


@pytest.mark.parametrize("name, raftery", CASES, ids=[n + ("-raftery" if r else "") for n, r in CASES])
def test_log_likelihood_equals_pyro_and_em_climbs(name, raftery):
    args = SimpleNamespace(**{**vars(ARGS), "raftery_parameterization": raftery})
    sequences, lengths = _data()
    model = MODELS[name]
    em = pyroem.EM(model)
    ours = float(em.e_step(sequences, lengths, args).log_likelihood)
    values = {k: v.detach().clone() for k, v in em.params.items()}
    assert ours == pytest.approx(_pyro_value(model, sequences, lengths, args, values), rel=1e-5)
    # EM on the maximum-likelihood version (include_prior=False: the example's Beta(0.1, 0.9) and
    # Dirichlet priors with concentrations below one put the MAP estimate on the boundary). model_7
    # is fitted as written: by maximum likelihood its second M-step stops with the engine's error
    # that the gradient of Q with respect to probs_x (inside DiscreteHMM) is not finite
    pyro.clear_param_store()
    fitted = model if name == "model_7" else functools.partial(model, include_prior=False)
    history = pyroem.EM(fitted).fit(sequences, lengths, args, max_iter=3).history
    assert all(b >= a - 1e-5 * abs(a) for a, b in zip(history, history[1:]))
    assert history[-1] > history[0]
