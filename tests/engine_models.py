"""Small models shared by the engine tests, each with an independent numpy reference for log p(y|θ)."""
from __future__ import annotations

import itertools

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from scipy.special import logsumexp
from scipy.stats import dirichlet, norm


def np_(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=float)


# --- 1-D Gaussian mixture --------------------------------------------------------------------
MIX_Y = [-3.1, -2.4, -2.9, -0.3, 0.1, 0.4, 0.2, 2.2, 2.9, 3.4, 2.6, -2.0]
MIX_INIT = {"w": [0.2, 0.3, 0.5], "loc": [-1.5, 0.5, 1.0], "scale": [1.2, 0.8, 1.5]}


def mixture_data(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(MIX_Y, dtype=dtype)


def make_mixture(init=MIX_INIT):
    """K-component 1-D Gaussian mixture; params w (simplex), loc, scale (positive)."""

    def model(y):
        w = pyro.param("w", torch.tensor(init["w"], dtype=y.dtype), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor(init["loc"], dtype=y.dtype))
        scale = pyro.param("scale", torch.tensor(init["scale"], dtype=y.dtype), constraint=constraints.positive)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("obs", dist.Normal(loc[z], scale[z]), obs=y)

    return model


def mixture_joint(y, w, loc, scale) -> np.ndarray:
    """log w_k + log N(y_n | loc_k, scale_k), shape (N, K)."""
    y, w, loc, scale = map(np_, (y, w, loc, scale))
    return np.log(w)[None, :] + norm.logpdf(y[:, None], loc[None, :], scale[None, :])


def mixture_loglik(y, w, loc, scale, weights=None) -> float:
    per_point = logsumexp(mixture_joint(y, w, loc, scale), axis=1)
    if weights is not None:
        per_point = np_(weights) * per_point
    return float(per_point.sum())

def mixture_updates(expect, y, *args, **kwargs):
    """Weighted-MLE M-step of a 1-D Gaussian mixture from the responsibilities."""
    r = expect.marginal("z")
    nk = r.sum(0)
    loc = (r * y[:, None]).sum(0) / nk
    var = (r * (y[:, None] - loc) ** 2).sum(0) / nk
    return {"w": nk / nk.sum(), "loc": loc, "scale": var.sqrt()}



# --- 3-state HMM written with pyro.markov ----------------------------------------------------
HMM_Y = [-1.2, -0.8, 0.3, 1.9, 2.4, 0.1, -1.1, 2.2]
HMM_INIT = {
    "pi": [0.5, 0.3, 0.2],
    "trans": [[0.7, 0.2, 0.1], [0.15, 0.7, 0.15], [0.2, 0.2, 0.6]],
    "loc": [-1.0, 0.0, 2.0],
    "scale": [0.7, 0.9, 0.6],
}


def hmm_data(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(HMM_Y, dtype=dtype)


def make_hmm(init=HMM_INIT):
    def model(y):
        pi = pyro.param("pi", torch.tensor(init["pi"], dtype=y.dtype), constraint=constraints.simplex)
        trans = pyro.param("trans", torch.tensor(init["trans"], dtype=y.dtype), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor(init["loc"], dtype=y.dtype))
        scale = pyro.param("scale", torch.tensor(init["scale"], dtype=y.dtype), constraint=constraints.positive)
        x = None
        for t in pyro.markov(range(len(y))):
            probs = pi if x is None else trans[x]
            x = pyro.sample(f"x_{t}", dist.Categorical(probs))
            pyro.sample(f"y_{t}", dist.Normal(loc[x], scale[x]), obs=y[t])

    return model


def forward_backward_np(start, trans, e):
    """Scaled forward-backward (Rabiner) of one sequence with emission likelihoods ``e`` (T, K).
    Returns log p(y), gamma (T, K), xi (T-1, K, K)."""
    T, K = e.shape
    alpha = np.zeros((T, K))
    c = np.zeros(T)
    a = start * e[0]
    c[0] = a.sum()
    alpha[0] = a / c[0]
    for t in range(1, T):
        a = (alpha[t - 1] @ trans) * e[t]
        c[t] = a.sum()
        alpha[t] = a / c[t]
    beta = np.ones((T, K))
    for t in range(T - 2, -1, -1):
        beta[t] = trans @ (e[t + 1] * beta[t + 1]) / c[t + 1]
    gamma = alpha * beta
    xi = np.zeros((T - 1, K, K))
    for t in range(T - 1):
        xi[t] = alpha[t][:, None] * trans * (e[t + 1] * beta[t + 1])[None, :] / c[t + 1]
    return float(np.log(c).sum()), gamma, xi


def hmm_forward_backward(y, pi, trans, loc, scale):
    """Forward-backward of the Gaussian HMM. Returns log p(y), gamma (T, K), xi (T-1, K, K)."""
    y, pi, A, loc, scale = map(np_, (y, pi, trans, loc, scale))
    return forward_backward_np(pi, A, norm.pdf(y[:, None], loc[None, :], scale[None, :]))


# --- nested plates, a in the outer plate, b -> c in the inner plate -------------------------
NEST_A, NEST_B = 2, 2
NEST_Y_OUT = [[-0.8], [1.3]]
NEST_Y_IN = [[0.2, 1.7], [-0.9, 2.4]]
NEST_INIT = {
    "pa": [0.6, 0.4],
    "pb": [[0.7, 0.3], [0.25, 0.75]],
    "pc": [[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]],
    "mu_a": [-1.0, 1.0],
    "loc_bc": [[-1.0, 0.0, 1.0], [0.5, 1.5, 2.5]],
}
NEST_SIGMA = 0.8


def nested_data(dtype=torch.float64):
    return torch.tensor(NEST_Y_OUT, dtype=dtype), torch.tensor(NEST_Y_IN, dtype=dtype)


def make_nested(init=NEST_INIT):
    """Plate ``groups`` (dim -2) holds latent a and y_out; plate ``items`` (dim -1) inside it holds
    b ~ Cat(pb[a]), c ~ Cat(pc[b]) and y_in ~ N(loc_bc[b, c], 0.8) (a fixed scale keeps the
    likelihood bounded on so few points)."""

    def model(y_out, y_in):
        dt = y_in.dtype
        pa = pyro.param("pa", torch.tensor(init["pa"], dtype=dt), constraint=constraints.simplex)
        pb = pyro.param("pb", torch.tensor(init["pb"], dtype=dt), constraint=constraints.simplex)
        pc = pyro.param("pc", torch.tensor(init["pc"], dtype=dt), constraint=constraints.simplex)
        mu_a = pyro.param("mu_a", torch.tensor(init["mu_a"], dtype=dt))
        loc_bc = pyro.param("loc_bc", torch.tensor(init["loc_bc"], dtype=dt))
        with pyro.plate("groups", y_in.shape[0], dim=-2):
            a = pyro.sample("a", dist.Categorical(pa))
            pyro.sample("y_out", dist.Normal(mu_a[a], 1.0), obs=y_out)
            with pyro.plate("items", y_in.shape[1], dim=-1):
                b = pyro.sample("b", dist.Categorical(pb[a]))
                c = pyro.sample("c", dist.Categorical(pc[b]))
                pyro.sample("y_in", dist.Normal(loc_bc[b, c], NEST_SIGMA), obs=y_in)

    return model


def nested_brute_force(y_out, y_in, pa, pb, pc, mu_a, loc_bc, sigma=NEST_SIGMA):
    """Sum over every joint assignment of (a, b, c). Returns log p(y) and the posterior
    marginals of a (A, 2), b (A, B, 2), c (A, B, 3) and the joint of (b, c) (A, B, 2, 3)."""
    y_out, y_in, pa, pb, pc, mu_a, loc_bc = map(np_, (y_out, y_in, pa, pb, pc, mu_a, loc_bc))
    sigma = float(np_(sigma))
    A, B = y_in.shape
    Ka, Kb, Kc = len(pa), pb.shape[1], pc.shape[1]
    grid = np.array(list(itertools.product(
        *([range(Ka)] * A + [range(Kb)] * (A * B) + [range(Kc)] * (A * B)))))
    a = grid[:, :A]
    b = grid[:, A:A + A * B].reshape(-1, A, B)
    c = grid[:, A + A * B:].reshape(-1, A, B)
    lj = np.log(pa)[a].sum(1) + norm.logpdf(y_out[:, 0][None, :], mu_a[a], 1.0).sum(1)
    lj = lj + np.log(pb[a[:, :, None], b]).sum((1, 2)) + np.log(pc[b, c]).sum((1, 2))
    lj = lj + norm.logpdf(y_in[None], loc_bc[b, c], sigma).sum((1, 2))
    logz = logsumexp(lj)
    p = np.exp(lj - logz)
    ma = np.stack([[p[a[:, g] == k].sum() for k in range(Ka)] for g in range(A)])
    mb = np.array([[[p[b[:, g, i] == k].sum() for k in range(Kb)] for i in range(B)] for g in range(A)])
    mc = np.array([[[p[c[:, g, i] == k].sum() for k in range(Kc)] for i in range(B)] for g in range(A)])
    jbc = np.array([[[[p[(b[:, g, i] == k) & (c[:, g, i] == l)].sum() for l in range(Kc)]
                      for k in range(Kb)] for i in range(B)] for g in range(A)])
    return float(logz), ma, mb, mc, jbc


# --- MAP model: Dirichlet prior on weights, Normal prior on locations ------------------------
MAP_Y = [-2.3, -1.7, -2.8, -1.1, 1.4, 2.2, 1.9, 2.7, 0.9, -2.0]
MAP_ALPHA = [3.0, 3.0]
MAP_PRIOR_SCALE = 1.5


def map_data(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(MAP_Y, dtype=dtype)


def make_map_mixture(scale_init=1.0):
    """Two-component mixture with MAP sites ``w ~ Dirichlet(3, 3)`` and ``loc ~ N(0, 1.5)``; param ``scale``."""

    def model(y):
        dt = y.dtype
        w = pyro.sample("w", dist.Dirichlet(torch.tensor(MAP_ALPHA, dtype=dt)))
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=dt), MAP_PRIOR_SCALE).to_event(1))
        scale = pyro.param("scale", torch.tensor(scale_init, dtype=dt), constraint=constraints.positive)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("obs", dist.Normal(loc[z], scale), obs=y)

    return model


def map_log_posterior(y, w, loc, scale) -> float:
    """log p(y | w, loc, scale) + log Dir(w) + log N(loc); no Jacobian (point estimate)."""
    w, loc = np_(w), np_(loc)
    ll = mixture_loglik(y, w, loc, np.full(2, float(np_(scale))))
    return ll + float(dirichlet.logpdf(w, MAP_ALPHA)) + float(norm.logpdf(loc, 0.0, MAP_PRIOR_SCALE).sum())
