"""Six latent-variable models written the way Pyro users write them, with independent references.

Each model ``<name>`` comes with

- ``make_<name>_data(seed=0, dtype=torch.float64)``: the model's positional args, small and
  synthetic, drawn in torch from a fixed ``torch.Generator``;
- ``<name>_init(args)``: ``{param name: constrained tensor}``, a sensible non-symmetric start
  shared by every fitting method; ``set_params(init)`` writes it into an empty param store;
- ``<name>_updates(expect, *args)``: the closed-form M-step derived by hand (weighted MLE from the
  posterior marginals), or ``None`` where there is none;
- ``<name>_loglik_np(params, *args)``: log p(y|θ) computed in numpy/scipy without Pyro, and for the
  closed-form models ``<name>_em_step_np(params, *args)``: one EM step in numpy.

``zip_reference_optimum(args)`` maximizes the zero-inflated Poisson likelihood with scipy.

The models use plain ``pyro.param``s (the GMM tutorial uses its sample sites, which pyroem fits as
MAP point estimates kept in the param store under the site names). The param defaults inside the
models are what a user would type; fits start from ``set_params(<name>_init(args))``.
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.ops.indexing import Vindex
from scipy.optimize import minimize
from scipy.special import expit, gammaln, logsumexp, logit
from scipy.stats import lognorm, norm, poisson

from engine_models import forward_backward_np


def np_(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=float)


def _init_rand(shape, seed: int, dtype) -> torch.Tensor:
    """Deterministic uniform(0, 1) numbers for starting values (independent of the data seed)."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# --- constraints of every model's params (MAP sites: the support of their prior) -------------
CONSTRAINTS: Dict[str, Dict[str, constraints.Constraint]] = {
    "dawid_skene": {"pi": constraints.simplex, "theta": constraints.simplex},
    "latent_class": {"class_probs": constraints.simplex, "item_probs": constraints.unit_interval},
    "hmm_model_1": {"probs_x": constraints.simplex, "probs_y": constraints.unit_interval},
    "gmm_tutorial": {"weights": constraints.simplex, "scale": constraints.positive, "locs": constraints.real},
    "zip_regression": {"gate": constraints.unit_interval, "beta": constraints.real},
    "change_point": {"early_rate": constraints.positive, "late_rate": constraints.positive},
}


def set_params(init: Dict[str, torch.Tensor], model: Optional[str] = None) -> None:
    """Clear pyro's param store and write ``init`` with the constraints its model declares.

    ``model`` (a key of ``CONSTRAINTS``) is found from the param names when not given.
    """
    if model is None:
        matches = [m for m, c in CONSTRAINTS.items() if set(c) == set(init)]
        if len(matches) != 1:
            raise KeyError(f"no unique model has the params {sorted(init)}")
        model = matches[0]
    cons = CONSTRAINTS[model]
    pyro.clear_param_store()
    for name, value in init.items():
        pyro.param(name, value.detach().clone(), constraint=cons[name])


# =============================================================================================
# 1. Dawid-Skene: items with a true class, each labelled by every annotator
# =============================================================================================
DS_ITEMS, DS_ANNOTATORS, DS_CLASSES = 600, 5, 4


def make_dawid_skene_data(seed: int = 0, dtype=torch.float64):
    """``(y,)`` with y of shape (600, 5): annotator j's label of item i, as floats 0..3."""
    g = torch.Generator().manual_seed(seed)
    N, J, K = DS_ITEMS, DS_ANNOTATORS, DS_CLASSES
    pi = torch.tensor([0.35, 0.3, 0.2, 0.15], dtype=torch.float64)
    accuracy = torch.tensor([0.7, 0.65, 0.6, 0.55, 0.5], dtype=torch.float64)
    off = (0.5 + torch.rand((J, K, K), generator=g, dtype=torch.float64)) * (1 - torch.eye(K, dtype=torch.float64))
    off = off / off.sum(-1, keepdim=True) * (1 - accuracy)[:, None, None]
    theta = off + accuracy[:, None, None] * torch.eye(K, dtype=torch.float64)
    z = torch.multinomial(pi, N, replacement=True, generator=g)
    probs = theta[torch.arange(J)[None, :], z[:, None]]  # (N, J, K)
    y = torch.multinomial(probs.reshape(-1, K), 1, generator=g).reshape(N, J)
    return (y.to(dtype),)


def dawid_skene_init(args) -> Dict[str, torch.Tensor]:
    """pi: the frequencies of all labels given; theta: 0.7 on the diagonal, 0.1 off it."""
    (y,) = args
    K = DS_CLASSES
    counts = torch.stack([(y == k).sum() for k in range(K)]).to(y.dtype)
    pi = counts / counts.sum()
    theta = (0.6 * torch.eye(K, dtype=y.dtype) + 0.1).expand(y.shape[1], K, K).clone()
    return {"pi": pi, "theta": theta}


def dawid_skene(y, num_classes: int = DS_CLASSES):
    num_items, num_annotators = y.shape
    K = num_classes
    pi = pyro.param("pi", torch.ones(K, dtype=y.dtype) / K, constraint=constraints.simplex)
    theta = pyro.param("theta", (0.6 * torch.eye(K, dtype=y.dtype) + 0.1).expand(num_annotators, K, K).clone(),
                       constraint=constraints.simplex)
    with pyro.plate("items", num_items, dim=-2):
        z = pyro.sample("z", dist.Categorical(pi))
        with pyro.plate("annotators", num_annotators, dim=-1):
            # theta[j, z_i] for every (i, j); z is (N, 1), or (K, 1, 1) when enumerated
            probs = Vindex(theta)[torch.arange(num_annotators, device=y.device), z]
            pyro.sample("y", dist.Categorical(probs), obs=y)


def dawid_skene_updates(expect, y, num_classes: int = DS_CLASSES):
    N, J = y.shape
    r = expect.marginal("z").reshape(N, num_classes)               # p(z_i = k | y)
    onehot = torch.nn.functional.one_hot(y.long(), num_classes).to(r.dtype)  # (N, J, L)
    counts = torch.einsum("ik,ijl->jkl", r, onehot)                 # Σ_i r_ik [y_ij = l]
    return {"pi": r.mean(0), "theta": counts / counts.sum(-1, keepdim=True)}


def _ds_log_joint_np(params, y):
    y = np_(y).astype(int)
    pi, theta = np_(params["pi"]), np_(params["theta"])
    N, J = y.shape
    K = len(pi)
    lt = np.log(theta)  # (J, K, L)
    # lt[j, k, y_ij] summed over annotators j
    per = lt[np.arange(J)[None, :, None], np.arange(K)[None, None, :], y[:, :, None]]  # (N, J, K)
    return np.log(pi)[None, :] + per.sum(1)


def dawid_skene_loglik_np(params, y) -> float:
    return float(logsumexp(_ds_log_joint_np(params, y), axis=1).sum())


def dawid_skene_em_step_np(params, y):
    lj = _ds_log_joint_np(params, y)
    r = np.exp(lj - logsumexp(lj, axis=1, keepdims=True))
    yi = np_(y).astype(int)
    K = r.shape[1]
    onehot = np.eye(K)[yi]  # (N, J, L)
    counts = np.einsum("ik,ijl->jkl", r, onehot)
    return {"pi": r.mean(0), "theta": counts / counts.sum(-1, keepdims=True)}


# =============================================================================================
# 2. Latent class analysis: binary items, a latent class per subject
# =============================================================================================
LCA_SUBJECTS, LCA_ITEMS, LCA_CLASSES = 500, 6, 3


def make_latent_class_data(seed: int = 0, dtype=torch.float64):
    """``(y,)`` with y of shape (500, 6), float 0/1."""
    g = torch.Generator().manual_seed(seed)
    class_probs = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    item_probs = torch.tensor([[0.9, 0.85, 0.8, 0.2, 0.15, 0.1],
                               [0.2, 0.3, 0.25, 0.85, 0.9, 0.8],
                               [0.1, 0.15, 0.2, 0.15, 0.1, 0.2]], dtype=torch.float64)
    z = torch.multinomial(class_probs, LCA_SUBJECTS, replacement=True, generator=g)
    y = torch.bernoulli(item_probs[z], generator=g)
    return (y.to(dtype),)


def latent_class_init(args) -> Dict[str, torch.Tensor]:
    (y,) = args
    C, J = LCA_CLASSES, y.shape[1]
    return {"class_probs": torch.tensor([0.45, 0.35, 0.2], dtype=y.dtype),
            "item_probs": 0.25 + 0.5 * _init_rand((C, J), 1234, y.dtype)}


def latent_class(y, num_classes: int = LCA_CLASSES):
    num_subjects, num_items = y.shape
    C = num_classes
    class_probs = pyro.param("class_probs", torch.ones(C, dtype=y.dtype) / C, constraint=constraints.simplex)
    item_probs = pyro.param("item_probs", torch.full((C, num_items), 0.5, dtype=y.dtype),
                            constraint=constraints.unit_interval)
    with pyro.plate("subjects", num_subjects, dim=-2):
        z = pyro.sample("z", dist.Categorical(class_probs))
        with pyro.plate("items", num_items, dim=-1):
            p = Vindex(item_probs)[z, torch.arange(num_items, device=y.device)]
            pyro.sample("y", dist.Bernoulli(p), obs=y)


def latent_class_updates(expect, y, num_classes: int = LCA_CLASSES):
    N = y.shape[0]
    r = expect.marginal("z").reshape(N, num_classes)  # (N, C)
    nc = r.sum(0)
    return {"class_probs": nc / N, "item_probs": (r.T @ y) / nc[:, None]}


def _lca_log_joint_np(params, y):
    y = np_(y)
    cp, ip = np_(params["class_probs"]), np_(params["item_probs"])
    return np.log(cp)[None, :] + y @ np.log(ip).T + (1 - y) @ np.log1p(-ip).T


def latent_class_loglik_np(params, y) -> float:
    return float(logsumexp(_lca_log_joint_np(params, y), axis=1).sum())


def latent_class_em_step_np(params, y):
    lj = _lca_log_joint_np(params, y)
    r = np.exp(lj - logsumexp(lj, axis=1, keepdims=True))
    nc = r.sum(0)
    return {"class_probs": nc / len(r), "item_probs": r.T @ np_(y) / nc[:, None]}


# =============================================================================================
# 3. Pyro's examples/hmm.py model_1, with plain params instead of Dirichlet/Beta sample sites
# =============================================================================================
HMM_SEQUENCES, HMM_STEPS, HMM_TONES, HMM_HIDDEN = 20, 20, 8, 4


def make_hmm_model_1_data(seed: int = 0, dtype=torch.float64):
    """``(sequences, lengths)``: sequences (20, 20, 8) float 0/1, zero past each length;
    lengths (20,) int64, 20 for most sequences, shorter for some."""
    g = torch.Generator().manual_seed(seed)
    N, T, D, H = HMM_SEQUENCES, HMM_STEPS, HMM_TONES, HMM_HIDDEN
    probs_x = 0.6 * torch.eye(H, dtype=torch.float64) + 0.1
    # each hidden state sounds its own random chord: tones on with probability 0.8, off 0.15
    chords = torch.rand((H, D), generator=g, dtype=torch.float64) < 0.5
    probs_y = torch.where(chords, 0.8, 0.15).to(torch.float64)
    x = torch.zeros(N, dtype=torch.long)
    seq = torch.zeros(N, T, D, dtype=torch.float64)
    for t in range(T):
        x = torch.multinomial(probs_x[x], 1, generator=g).squeeze(-1)
        seq[:, t] = torch.bernoulli(probs_y[x], generator=g)
    lengths = torch.full((N,), T, dtype=torch.long)
    short = torch.arange(1, N, 3)  # sequences 1, 4, 7, ... end early
    lengths[short] = torch.randint(5, T, (len(short),), generator=g)
    seq[torch.arange(T)[None, :] >= lengths[:, None]] = 0.0  # padding, as in Pyro's JSB chorales
    return seq.to(dtype), lengths


def hmm_model_1_init(args) -> Dict[str, torch.Tensor]:
    sequences, _ = args
    dt, H, D = sequences.dtype, HMM_HIDDEN, sequences.shape[-1]
    px = 0.5 * torch.eye(H, dtype=dt) + 0.5 * _init_rand((H, H), 11, dt)
    return {"probs_x": px / px.sum(-1, keepdim=True),
            "probs_y": 0.25 + 0.5 * _init_rand((H, D), 12, dt)}


def hmm_model_1(sequences, lengths, hidden_dim: int = HMM_HIDDEN):
    num_sequences, max_length, data_dim = sequences.shape
    probs_x = pyro.param("probs_x", 0.9 * torch.eye(hidden_dim, dtype=sequences.dtype) + 0.1 / hidden_dim,
                         constraint=constraints.simplex)
    probs_y = pyro.param("probs_y", torch.full((hidden_dim, data_dim), 0.5, dtype=sequences.dtype),
                         constraint=constraints.unit_interval)
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    with pyro.plate("sequences", num_sequences, dim=-2) as batch:
        lengths = lengths[batch]
        x = 0
        for t in pyro.markov(range(int(lengths.max()))):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = pyro.sample(f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"})
                with tones_plate:
                    pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=sequences[batch, t])


def hmm_model_1_updates(expect, sequences, lengths, hidden_dim: int = HMM_HIDDEN):
    """Baum-Welch: masked steps (t >= length) carry weight 0. x_0 ~ probs_x[0] (the fixed state 0
    before the loop), so row 0 also collects p(x_0 | y)."""
    N, _, D = sequences.shape
    H = hidden_dim
    T = int(lengths.max())
    dt = sequences.dtype
    live = (torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]).to(dt)  # (N, T)
    trans = torch.zeros(H, H, dtype=dt, device=sequences.device)
    occupancy = torch.zeros(H, dtype=dt, device=sequences.device)
    emitted = torch.zeros(H, D, dtype=dt, device=sequences.device)
    for t in range(T):
        gamma = expect.marginal(f"x_{t}").reshape(N, H) * live[:, t, None]
        occupancy = occupancy + gamma.sum(0)
        emitted = emitted + gamma.T @ sequences[:, t]
        if t == 0:
            trans[0] = trans[0] + gamma.sum(0)
        else:
            xi = expect.joint(f"x_{t - 1}", f"x_{t}").reshape(N, H, H) * live[:, t, None, None]
            trans = trans + xi.sum(0)
    return {"probs_x": trans / trans.sum(-1, keepdim=True), "probs_y": emitted / occupancy[:, None]}


def _hmm_forward_backward_np(px, py, seq):
    """Forward-backward of one sequence (L, D) from x_{-1} = 0: log p, gamma (L, H), xi (L-1, H, H)."""
    e = np.exp(seq @ np.log(py).T + (1 - seq) @ np.log1p(-py).T)  # (L, H)
    return forward_backward_np(px[0], px, e)


def hmm_model_1_loglik_np(params, sequences, lengths) -> float:
    px, py, seq, lens = np_(params["probs_x"]), np_(params["probs_y"]), np_(sequences), np_(lengths).astype(int)
    return sum(_hmm_forward_backward_np(px, py, seq[n, :lens[n]])[0] for n in range(len(seq)))


def hmm_model_1_em_step_np(params, sequences, lengths):
    px, py, seq, lens = np_(params["probs_x"]), np_(params["probs_y"]), np_(sequences), np_(lengths).astype(int)
    H, D = py.shape
    trans, occ, emit = np.zeros((H, H)), np.zeros(H), np.zeros((H, D))
    for n in range(len(seq)):
        s = seq[n, :lens[n]]
        _, gamma, xi = _hmm_forward_backward_np(px, py, s)
        trans[0] += gamma[0]
        trans += xi.sum(0)
        occ += gamma.sum(0)
        emit += gamma.T @ s
    return {"probs_x": trans / trans.sum(-1, keepdims=True), "probs_y": emit / occ[:, None]}


# =============================================================================================
# 4. Pyro's "Gaussian Mixture Model" tutorial (MAP sites; no closed form here)
# =============================================================================================
GMM_DATA = [0.0, 1.0, 10.0, 11.0, 12.0]
GMM_K = 2


def make_gmm_tutorial_data(seed: int = 0, dtype=torch.float64):
    """``(data,)``: the tutorial's five points (``seed`` is unused)."""
    return (torch.tensor(GMM_DATA, dtype=dtype),)


def gmm_tutorial_init(args) -> Dict[str, torch.Tensor]:
    """Weights (0.4, 0.6), locs at data points 0 and 10, scale the data's standard deviation
    (the tutorial itself starts from uniform weights, random data points and std/√2)."""
    (data,) = args
    return {"weights": torch.tensor([0.4, 0.6], dtype=data.dtype),
            "scale": data.std().clone(),
            "locs": data[torch.tensor([0, 2])].clone()}


def gmm_tutorial(data, K: int = GMM_K):
    dt = data.dtype
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K, dtype=dt)))
    scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=dt), 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(torch.tensor(0.0, dtype=dt), 10.0))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


gmm_tutorial_updates = None


def gmm_tutorial_loglik_np(params, data) -> float:
    """log p(data | θ) + log prior of the MAP sites (no Jacobian: point estimates)."""
    y = np_(data)
    w, scale, locs = np_(params["weights"]), float(np_(params["scale"])), np_(params["locs"])
    ll = logsumexp(np.log(w)[None, :] + norm.logpdf(y[:, None], locs[None, :], scale), axis=1).sum()
    alpha = 0.5 * np.ones(len(w))
    log_dirichlet = gammaln(alpha.sum()) - gammaln(alpha).sum() + ((alpha - 1) * np.log(w)).sum()
    prior = log_dirichlet + lognorm.logpdf(scale, s=2.0, scale=1.0) + norm.logpdf(locs, 0.0, 10.0).sum()
    return float(ll + prior)


# =============================================================================================
# 5. Zero-inflated Poisson regression with MaskedMixture (no closed form for beta)
# =============================================================================================
ZIP_POINTS = 400
ZIP_TRUE = {"gate": 0.3, "beta": [0.5, 0.8, -0.6]}


def make_zip_regression_data(seed: int = 0, dtype=torch.float64):
    """``(X, y)``: X (400, 3) = [1, x1, x2] with x ~ N(0, 1); y (400,) float counts."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ZIP_POINTS, 2, generator=g, dtype=torch.float64)
    X = torch.cat([torch.ones(ZIP_POINTS, 1, dtype=torch.float64), x], dim=1)
    beta = torch.tensor(ZIP_TRUE["beta"], dtype=torch.float64)
    structural_zero = torch.rand(ZIP_POINTS, generator=g, dtype=torch.float64) < ZIP_TRUE["gate"]
    y = torch.poisson(torch.exp(X @ beta), generator=g)
    y[structural_zero] = 0.0
    return X.to(dtype), y.to(dtype)


def zip_regression_init(args) -> Dict[str, torch.Tensor]:
    """gate 0.4; intercept the log mean of the nonzero counts, slopes 0."""
    X, y = args
    return {"gate": torch.tensor(0.4, dtype=y.dtype),
            "beta": torch.cat([y[y > 0].mean().log().reshape(1), torch.zeros(X.shape[1] - 1, dtype=y.dtype)])}


def zip_regression(X, y):
    gate = pyro.param("gate", torch.tensor(0.5, dtype=X.dtype), constraint=constraints.unit_interval)
    beta = pyro.param("beta", torch.zeros(X.shape[1], dtype=X.dtype))
    rate = torch.exp(X @ beta)
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Bernoulli(gate))
        # z = 1: a structural zero (Delta at 0); z = 0: Poisson(rate)
        pyro.sample("y", dist.MaskedMixture(z.bool(), dist.Poisson(rate), dist.Delta(torch.zeros((), dtype=X.dtype))),
                    obs=y)


zip_regression_updates = None


def _zip_loglik_and_grad_np(a, beta, X, y):
    """log-likelihood and its gradient in (a = logit gate, beta)."""
    g = expit(a)
    eta = X @ beta
    rate = np.exp(eta)
    zero = y == 0
    log_g, log_1mg = -np.logaddexp(0.0, -a), -np.logaddexp(0.0, a)
    ll0 = np.logaddexp(log_g, log_1mg - rate)                     # y = 0
    llp = log_1mg + y * eta - rate - gammaln(y + 1)               # y > 0
    ll = np.where(zero, ll0, llp)
    p0 = np.exp(log_g - ll0)                                      # p(structural zero | y = 0)
    d_a = np.where(zero, p0 - g, -g)
    d_eta = np.where(zero, -(1 - p0) * rate, y - rate)
    return float(ll.sum()), float(d_a.sum()), X.T @ d_eta


def zip_regression_loglik_np(params, X, y) -> float:
    a = float(logit(float(np_(params["gate"]))))
    return _zip_loglik_and_grad_np(a, np_(params["beta"]), np_(X), np_(y))[0]


def zip_regression_grad_np(params, X, y) -> np.ndarray:
    """Gradient of the log-likelihood in (logit gate, beta)."""
    a = float(logit(float(np_(params["gate"]))))
    _, da, db = _zip_loglik_and_grad_np(a, np_(params["beta"]), np_(X), np_(y))
    return np.concatenate([[da], db])


def zip_reference_optimum(args):
    """Maximize the exact marginal log-likelihood with L-BFGS-B on (logit gate, beta) from the
    shared start. Returns ``({"gate", "beta"} as tensors of the data's dtype, log-likelihood)``."""
    X, y = args
    Xn, yn = np_(X), np_(y)
    init = zip_regression_init(args)
    x0 = np.concatenate([[logit(float(np_(init["gate"])))], np_(init["beta"])])

    def f(v):
        ll, da, db = _zip_loglik_and_grad_np(v[0], v[1:], Xn, yn)
        return -ll, -np.concatenate([[da], db])

    res = minimize(f, x0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 20})
    dt = y.dtype
    params = {"gate": torch.tensor(float(expit(res.x[0])), dtype=dt), "beta": torch.tensor(res.x[1:], dtype=dt)}
    return params, -float(res.fun)


# =============================================================================================
# 6. Change point (Stan user's guide, coal-mining style), plain positive rates, no priors
# =============================================================================================
CP_T = 60
CP_TRUE = {"s": 36, "early_rate": 3.5, "late_rate": 1.2}


def make_change_point_data(seed: int = 0, dtype=torch.float64):
    """``(y,)``: 60 counts (float), rate 3.5 before t = 36 and 1.2 from it on."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(CP_T)
    rate = torch.where(t < CP_TRUE["s"], CP_TRUE["early_rate"], CP_TRUE["late_rate"]).to(torch.float64)
    return (torch.poisson(rate, generator=g).to(dtype),)


def change_point_init(args) -> Dict[str, torch.Tensor]:
    (y,) = args
    m = y.mean()
    return {"early_rate": 1.2 * m, "late_rate": 0.8 * m}


def change_point(y):
    T = len(y)
    early_rate = pyro.param("early_rate", y.mean(), constraint=constraints.positive)
    late_rate = pyro.param("late_rate", y.mean(), constraint=constraints.positive)
    s = pyro.sample("s", dist.Categorical(torch.ones(T, dtype=y.dtype) / T))
    # s is a scalar, or (T, 1) when enumerated (its dim left of the time plate): comparing with
    # arange(T) as is broadcasts to (T,) or (T, T). (s.unsqueeze(-1) would be wrong when enumerated.)
    rate = torch.where(torch.arange(T, device=y.device) < s, early_rate, late_rate)
    with pyro.plate("time", T):
        pyro.sample("y", dist.Poisson(rate), obs=y)


def change_point_updates(expect, y):
    r = expect.marginal("s")                                   # p(s = k | y), shape (T,)
    at_least = r.flip(0).cumsum(0).flip(0)                     # P(s >= t)
    early = torch.cat([at_least[1:], at_least.new_zeros(1)])   # P(s > t): t is before the switch
    late = 1 - early
    return {"early_rate": (early * y).sum() / early.sum(), "late_rate": (late * y).sum() / late.sum()}


def _cp_log_joint_np(params, y):
    y = np_(y)
    T = len(y)
    e, l_ = float(np_(params["early_rate"])), float(np_(params["late_rate"]))
    rate = np.where(np.arange(T)[None, :] < np.arange(T)[:, None], e, l_)  # [s, t]
    return -np.log(T) + poisson.logpmf(y[None, :], rate).sum(1)


def change_point_loglik_np(params, y) -> float:
    return float(logsumexp(_cp_log_joint_np(params, y)))


def change_point_em_step_np(params, y):
    lj = _cp_log_joint_np(params, y)
    r = np.exp(lj - logsumexp(lj))
    y = np_(y)
    T = len(y)
    early = np.array([r[t + 1:].sum() for t in range(T)])
    late = 1 - early
    return {"early_rate": (early * y).sum() / early.sum(), "late_rate": (late * y).sum() / late.sum()}


# =============================================================================================
# registry
# =============================================================================================
class UserModel(NamedTuple):
    name: str
    model: Callable
    make_data: Callable
    init: Callable
    updates: Optional[Callable]
    loglik_np: Callable
    em_step_np: Optional[Callable]


USER_MODELS: Dict[str, UserModel] = {
    "dawid_skene": UserModel("dawid_skene", dawid_skene, make_dawid_skene_data, dawid_skene_init,
                             dawid_skene_updates, dawid_skene_loglik_np, dawid_skene_em_step_np),
    "latent_class": UserModel("latent_class", latent_class, make_latent_class_data, latent_class_init,
                              latent_class_updates, latent_class_loglik_np, latent_class_em_step_np),
    "hmm_model_1": UserModel("hmm_model_1", hmm_model_1, make_hmm_model_1_data, hmm_model_1_init,
                             hmm_model_1_updates, hmm_model_1_loglik_np, hmm_model_1_em_step_np),
    "gmm_tutorial": UserModel("gmm_tutorial", gmm_tutorial, make_gmm_tutorial_data, gmm_tutorial_init,
                              gmm_tutorial_updates, gmm_tutorial_loglik_np, None),
    "zip_regression": UserModel("zip_regression", zip_regression, make_zip_regression_data, zip_regression_init,
                                zip_regression_updates, zip_regression_loglik_np, None),
    "change_point": UserModel("change_point", change_point, make_change_point_data, change_point_init,
                              change_point_updates, change_point_loglik_np, change_point_em_step_np),
}
