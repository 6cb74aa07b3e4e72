"""``pyroem.chain_kernels`` (the E-step's elimination of a chain along time) against a textbook
scaled forward-backward written here in numpy: log Z, and the posteriors as its gradients."""
import numpy as np
import pytest
import torch

from engine_models import forward_backward_np
from pyroem.chain_kernels import _forward_scaled, _scan, _shared_chunk_products, chain_log_partition

METHODS = ["forward", "scan"]


def _textbook(log_start, log_trans, log_emit):
    """Scaled forward-backward (Rabiner, ``engine_models.forward_backward_np``): log p(y),
    γ (T, K) and Σ_t ξ_t (K, K) of one sequence."""
    shift = log_emit.max(1, keepdims=True)
    log_z, gamma, xi = forward_backward_np(np.exp(log_start), np.exp(log_trans), np.exp(log_emit - shift))
    return log_z + shift.sum(), gamma, xi.sum(0)


def _posteriors(log_start, log_trans, log_emit, method, first_order):
    """log Z (B,), γ (B, T, K), Σξ (K, K) from one backward pass of the kernel."""
    init = (log_start + log_emit[:, 0]).detach().requires_grad_()
    trans = log_trans.reshape(1, 1, *log_trans.shape).detach().requires_grad_()
    emit = log_emit[:, 1:].detach().requires_grad_()
    log_z = chain_log_partition(init, trans, emit, method, first_order=first_order)
    g0, xi, g = torch.autograd.grad(log_z.sum(), (init, trans, emit))
    return log_z.detach(), torch.cat([g0.unsqueeze(1), g], 1), xi[0, 0]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_posteriors_match_textbook_forward_backward(method, first_order, dtype):
    """A forbidden start state and forbidden transitions; float32 to its own precision."""
    rs = np.random.RandomState(1)
    k, b, t_len = 4, 3, 17
    start = np.array([0.5, 0.0, 0.3, 0.2])
    trans = rs.dirichlet(np.ones(k), size=k)
    trans[0, 1] = trans[2, 3] = 0.0
    trans /= trans.sum(1, keepdims=True)
    log_emit = rs.randn(b, t_len, k) * 2
    with np.errstate(divide="ignore"):
        ls, lt = np.log(start), np.log(trans)
    t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    log_z, gamma, xi = _posteriors(t(ls), t(lt), t(log_emit), method, first_order)
    assert log_z.dtype == gamma.dtype == xi.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    xi_ref = np.zeros((k, k))
    for n in range(b):
        lz_ref, g_ref, x_ref = _textbook(ls, lt, log_emit[n])
        xi_ref = xi_ref + x_ref
        np.testing.assert_allclose(float(log_z[n]), lz_ref, **tol)
        np.testing.assert_allclose(gamma[n].numpy(), g_ref, **tol)
    np.testing.assert_allclose(xi.numpy(), xi_ref, **tol)
    assert (xi[0, 1] == 0) and (xi[2, 3] == 0) and (gamma[:, 0, 1] == 0).all()


def test_scan_equals_forward_on_a_long_sequence():
    rs = np.random.RandomState(2)
    k, t_len = 5, 5000
    ls, lt = np.log(rs.dirichlet(np.ones(k))), np.log(rs.dirichlet(np.ones(k), size=k))
    log_emit = torch.as_tensor(rs.randn(1, t_len, k) * 3)
    out = {m: _posteriors(torch.as_tensor(ls), torch.as_tensor(lt), log_emit, m, m == "forward") for m in METHODS}
    for a, b in zip(out["forward"], out["scan"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(float(out["forward"][0][0]), _textbook(ls, lt, log_emit[0].numpy())[0], rtol=1e-11)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_no_underflow_when_the_best_emission_is_unreachable(method, dtype):
    """State 1 explains every observation 800 nats better but can never be reached: the scaled
    recursion underflows (exp(-800) == 0) and the log-space recursion takes over."""
    t_len, gap = 50, 800.0
    rs = np.random.RandomState(0)
    log_emit = torch.as_tensor(np.stack([rs.randn(t_len), rs.randn(t_len) + gap], -1)[None], dtype=dtype)
    log_start = torch.as_tensor([0.0, -np.inf], dtype=dtype)
    log_trans = torch.as_tensor([[0.0, -np.inf], [-np.inf, 0.0]], dtype=dtype)
    assert not np.isfinite(float(_forward_scaled(log_start + log_emit[:, 0], log_trans[None, None], log_emit[:, 1:])))
    log_z, gamma, xi = _posteriors(log_start, log_trans, log_emit, method, True)
    expected = float(log_emit[0, :, 0].double().sum())
    np.testing.assert_allclose(float(log_z), expected, rtol=1e-12 if dtype == torch.float64 else 1e-6)
    np.testing.assert_array_equal(gamma[0].numpy(), np.tile([1.0, 0.0], (t_len, 1)))
    np.testing.assert_array_equal(xi.numpy(), [[t_len - 1, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 40])
def test_scan_chunk_lengths_match_textbook(chunk):
    rs = np.random.RandomState(chunk)
    k, b, t_len = 3, 4, 23
    log_start, log_trans = np.log(rs.dirichlet(np.ones(k))), np.log(rs.dirichlet(np.ones(k), size=k))
    log_emit = rs.randn(b, t_len, k) * 2
    e = torch.as_tensor(log_emit)
    log_z = _scan(torch.as_tensor(log_start) + e[:, 0], torch.as_tensor(log_trans)[None, None], e[:, 1:], chunk=chunk)
    ref = [_textbook(log_start, log_trans, log_emit[n])[0] for n in range(b)]
    np.testing.assert_allclose(log_z.numpy(), ref, rtol=1e-12)


def test_chain_log_partition_checks_its_arguments():
    with pytest.raises(ValueError, match="method"):
        chain_log_partition(torch.zeros(1, 3), torch.zeros(1, 1, 3, 3), torch.zeros(1, 4, 3), method="sideways")
    with pytest.raises(ValueError, match="init must be"):
        chain_log_partition(torch.zeros(3), torch.zeros(1, 1, 3, 3))


def test_scan_rows_that_underflow_between_rescalings_fall_back_to_log_space():
    """A chunk's rows are renormalized every eight steps in float64: a state that cannot be left
    and explains every observation 100 nats worse than the other has its row shrink to 0 in that
    time (e^-800); the log-space chunk products then give the exact log Z."""
    t_len, k = 64, 2
    rs = np.random.RandomState(5)
    log_emit = np.stack([rs.randn(t_len), rs.randn(t_len) - 100.0], -1)[None]
    log_start = np.log([1e-300, 1.0])                       # almost surely starts in the bad state
    log_trans = np.array([[np.log(0.9), np.log(0.1)], [-np.inf, 0.0]])  # ... and never leaves it
    e = torch.as_tensor(log_emit)
    trans = torch.as_tensor(log_trans)[None, None]
    assert _shared_chunk_products(trans[0, 0], e[:, 1:].reshape(1, 7, 9, k), t_len - 1) is None
    log_z = _scan(torch.as_tensor(log_start) + e[:, 0], trans, e[:, 1:])
    np.testing.assert_allclose(float(log_z), _textbook(log_start, log_trans, log_emit[0])[0], rtol=1e-12)
