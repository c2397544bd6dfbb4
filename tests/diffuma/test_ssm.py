"""Selective scan backends and the bidirectional Mamba block (diffuma/models/ssm.py)."""
import pytest
import torch
import torch.nn.functional as F

from diffuma.models import ssm
from diffuma.models.ssm import BiMamba, causal_conv1d, resolve_backend, selective_scan, selective_scan_torch


def naive_scan(u, delta, A, B, C, D, delta_bias):
    """Textbook recurrence, one step at a time with plain indexing (the reference)."""
    delta = F.softplus(delta + delta_bias[:, None])
    Bt, Dm, L = u.shape
    h = torch.zeros(Bt, Dm, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(L):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, -1)


def scan_inputs(Bt=2, Dm=6, N=4, L=17, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return dict(u=r(Bt, Dm, L), delta=r(Bt, Dm, L) * 0.5, A=-torch.rand(Dm, N, generator=g, dtype=dtype) - 0.1,
                B=r(Bt, N, L), C=r(Bt, N, L), D=r(Dm), delta_bias=r(Dm) * 0.3)


def test_torch_scan_matches_naive_loop_outputs_and_all_grads():
    inp = {k: v.requires_grad_() for k, v in scan_inputs().items()}
    y = selective_scan_torch(**inp, delta_softplus=True)
    ref_inp = {k: v.detach().clone().requires_grad_() for k, v in inp.items()}
    y_ref = naive_scan(**ref_inp)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    for k in inp:
        assert inp[k].grad is not None and inp[k].grad.abs().sum() > 0, k
        torch.testing.assert_close(inp[k].grad, ref_inp[k].grad, rtol=1e-10, atol=1e-10, msg=k)


def test_torch_scan_gradcheck():
    inp = scan_inputs(Bt=1, Dm=2, N=3, L=5, seed=1)
    names = list(inp)
    args = [inp[k].requires_grad_() for k in names]
    assert torch.autograd.gradcheck(lambda *a: selective_scan_torch(**dict(zip(names, a)), delta_softplus=True), args)


def _graph_nodes(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return len(seen)


def test_autograd_graph_does_not_grow_with_sequence_length():
    """The recurrence is one autograd node: no per-step nodes (the quadratic-backward pattern)."""
    sizes = []
    for L in (4, 64):
        inp = {k: v.requires_grad_() for k, v in scan_inputs(L=L).items()}
        sizes.append(_graph_nodes(selective_scan_torch(**inp, delta_softplus=True)))
    assert sizes[0] == sizes[1] < 40


def test_half_precision_is_upcast_inside():
    inp = scan_inputs(dtype=torch.float32, L=64)
    inp["u"] = inp["u"].bfloat16()
    y = selective_scan_torch(**inp, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    # same bf16 inputs computed in fp32 throughout: the only difference is the final rounding
    ref = selective_scan_torch(**{**inp, "u": inp["u"].float()}, delta_softplus=True)
    torch.testing.assert_close(y.float(), ref, rtol=8e-3, atol=8e-3)
    assert (y.float() - ref.bfloat16().float()).abs().max() == 0


def test_backend_resolution(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.delenv(ssm.ENV_VAR, raising=False)
    assert resolve_backend("auto", x) == "torch"          # CPU: never fused
    assert resolve_backend("torch", x) == "torch"
    with pytest.raises(ssm.ScanBackendError, match="fused"):
        resolve_backend("fused", x)
    with pytest.raises(ValueError, match="scan backend"):
        resolve_backend("cuda-please", x)
    monkeypatch.setenv(ssm.ENV_VAR, "fused")              # the env var wins over the argument
    with pytest.raises(ssm.ScanBackendError, match="forced"):
        resolve_backend("torch", x)
    monkeypatch.setenv(ssm.ENV_VAR, "torch")
    assert resolve_backend("fused", x) == "torch"
    monkeypatch.delenv(ssm.ENV_VAR)
    with pytest.raises(ssm.ScanBackendError, match="'triton' was forced"):  # CPU: the Triton kernel needs CUDA
        ssm.check_backend("triton", "cpu")
    assert issubclass(ssm.ScanBackendError, ValueError)  # the CLIs' one-line errors catch ValueError


def test_causal_conv1d_is_causal():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 10, generator=g, dtype=torch.float64)
    w, b = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    y = causal_conv1d(x, w, b)
    x2 = x.clone()
    x2[..., 6:] += 1.0
    y2 = causal_conv1d(x2, w, b)
    torch.testing.assert_close(y[..., :6], y2[..., :6])
    assert not torch.allclose(y[..., 6:], y2[..., 6:])
    # explicit formula at one position: sum_k w[k] x[t-K+1+k]
    t = 5
    manual = F.silu((w * x[..., t - 3:t + 1]).sum(-1) + b)
    torch.testing.assert_close(y[..., t], manual)


def _block(seed=0, d=8):
    torch.manual_seed(seed)
    return BiMamba(d, d_state=4, d_conv=3, expand=2).double()


def test_forward_branch_causal_backward_branch_anticausal():
    blk = _block()
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    i = 6
    x2 = x.clone()
    x2[:, i + 1:] += torch.randn_like(x2[:, i + 1:])      # change the future only
    yf, yb, _ = blk.branches(x)
    yf2, yb2, _ = blk.branches(x2)
    torch.testing.assert_close(yf[:, :i + 1], yf2[:, :i + 1], rtol=0, atol=0)
    assert not torch.allclose(yf[:, i + 1:], yf2[:, i + 1:])
    assert not torch.allclose(yb[:, :i + 1], yb2[:, :i + 1])  # the backward branch sees the future
    x3 = x.clone()
    x3[:, :i] += torch.randn_like(x3[:, :i])              # change the past only
    _, yb3, _ = blk.branches(x3)
    torch.testing.assert_close(yb[:, i:], yb3[:, i:], rtol=0, atol=0)
    # the whole block at position i depends on both sides
    y, y2, y3 = blk(x), blk(x2), blk(x3)
    assert not torch.allclose(y[:, i], y2[:, i]) and not torch.allclose(y[:, i], y3[:, i])


def test_backward_branch_is_flipped_forward_scan():
    blk = _block(seed=1)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    _, yb, _ = blk.branches(x)
    u = blk.in_proj(x).chunk(2, dim=-1)[0].transpose(1, 2)            # (B, Di, L)
    expect = blk.bwd(u.flip(-1)).flip(-1).transpose(1, 2)
    torch.testing.assert_close(yb, expect, rtol=0, atol=0)
    # with the backward branch given the forward branch's weights, the block is flip-equivariant
    blk.bwd.load_state_dict(blk.fwd.state_dict())
    torch.testing.assert_close(blk(x.flip(1)), blk(x).flip(1), rtol=1e-12, atol=1e-12)
    # ... and then the backward branch equals flip(forward branch(flip(x)))
    yf_flip, _, _ = blk.branches(x.flip(1))
    _, yb, _ = blk.branches(x)
    torch.testing.assert_close(yb, yf_flip.flip(1), rtol=1e-12, atol=1e-12)


def test_selective_scan_dispatch_on_cpu_uses_torch_path():
    inp = scan_inputs(dtype=torch.float32)
    torch.testing.assert_close(selective_scan(**inp, delta_softplus=True), selective_scan_torch(**inp, delta_softplus=True),
                               rtol=0, atol=0)
    # mamba-ssm's default: no softplus unless asked (it was True here, a trap for a caller of its layout)
    torch.testing.assert_close(selective_scan(**inp), selective_scan_torch(**{**inp, "delta_softplus": False}))


def fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False):
    """mamba-ssm's documented `selective_scan_fn` contract (shapes, dtype checks of its C++ frontend),
    computed by the naive loop: lets the CPU tests exercise how the fused path is called."""
    Bt, Dm, L = u.shape
    N = A.shape[1]
    assert delta.shape == (Bt, Dm, L) and A.shape == (Dm, N) and B.shape == C.shape == (Bt, N, L)
    assert u.dtype == delta.dtype == B.dtype == C.dtype and A.dtype == torch.float32
    assert D.dtype == torch.float32 and D.shape == (Dm,) and delta_bias.dtype == torch.float32
    assert u.stride(-1) == 1 and delta.stride(-1) == 1 and B.stride(-1) == 1 and C.stride(-1) == 1
    assert z is None and not return_last_state and N <= 256 and delta_softplus   # naive_scan applies softplus
    return naive_scan(u.float(), delta.float(), A, B.float(), C.float(), D, delta_bias).to(u.dtype)


def fake_causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                          final_states_out=None, activation=None):
    """causal-conv1d's documented contract: x (B, D, L), weight (D, K), 2 <= K <= 4, bias in weight's dtype."""
    Dm, K = weight.shape
    assert x.shape[1] == Dm and 2 <= K <= 4 and bias.dtype == weight.dtype and activation in (None, "silu")
    y = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), bias.to(x.dtype), padding=K - 1, groups=Dm)[..., :x.shape[-1]]
    return F.silu(y) if activation == "silu" else y


def test_fused_call_contract_on_cpu(monkeypatch):
    """The fused path's arguments (layout, dtypes, delta_bias/softplus) reproduce the torch path."""
    torch.manual_seed(0)
    blk = BiMamba(8, d_state=4, d_conv=4)
    x = torch.randn(2, 11, 8, requires_grad=True)
    y_torch = blk(x, backend="torch")
    monkeypatch.setattr(ssm, "_fused_scan", fake_selective_scan_fn)
    monkeypatch.setattr(ssm, "_fused_conv1d", fake_causal_conv1d_fn)
    monkeypatch.setattr(ssm, "resolve_backend", lambda backend, t: "fused")
    y_fused = blk(x, backend="fused")
    torch.testing.assert_close(y_fused, y_torch, rtol=1e-5, atol=1e-6)
    g_torch = torch.autograd.grad(y_torch.square().sum(), [x, *blk.parameters()])
    g_fused = torch.autograd.grad(y_fused.square().sum(), [x, *blk.parameters()])
    for a, b in zip(g_torch, g_fused):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _cuda_backend_missing(backend: str) -> str | None:
    if not torch.cuda.is_available():
        return "needs CUDA"
    if backend == "fused" and not ssm.fused_available():
        return "needs CUDA and mamba-ssm (fused kernels)"
    if backend == "triton" and ssm.triton is None:
        return "needs CUDA and triton"
    return None


@pytest.mark.parametrize("backend", ["fused", "triton"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_cuda_scan_matches_torch_scan(backend, dtype, tol):
    """The fused kernel and the Triton recurrence against the torch scan: output and every input gradient."""
    if (why := _cuda_backend_missing(backend)) is not None:
        pytest.skip(why)
    inp = {k: v.float().cuda() for k, v in scan_inputs(Bt=2, Dm=32, N=16, L=300).items()}
    for k in ("u", "delta", "B", "C"):
        inp[k] = inp[k].to(dtype)
    outs, grads = [], []
    for b in ("torch", backend):
        leaf = {k: v.detach().clone().requires_grad_() for k, v in inp.items()}
        y = selective_scan(**leaf, delta_softplus=True, backend=b)
        y.float().square().sum().backward()
        outs.append(y.float())
        grads.append({k: v.grad.float() for k, v in leaf.items()})
    scale = outs[0].abs().max()
    assert (outs[0] - outs[1]).abs().max() <= tol * scale
    for k in inp:
        g0, g1 = grads[0][k], grads[1][k]
        assert (g0 - g1).abs().max() <= tol * g0.abs().max() + 1e-6, k


# --- the "triton" backend: the recurrence as one Triton kernel per direction --------------------------

_TRITON_INTERPRETED = r"""
import os, sys
os.environ["TRITON_INTERPRET"] = "1"          # Triton's CPU interpreter: the kernels run on CPU tensors
import torch
from diffuma.models import ssm
sys.path.insert(0, os.path.join("tests", "diffuma"))
from test_ssm import scan_inputs
torch.manual_seed(0)
for shape in [(37, 3, 5, 4), (9, 130), (1, 7)]:  # several programs, a partial block, a single step
    dA, dBu, gH = torch.rand(shape), torch.randn(shape), torch.randn(shape)
    outs = []
    for kernel in (False, True):
        a, b = dA.clone().requires_grad_(), dBu.clone().requires_grad_()
        H = ssm._LinearRecurrence.apply(a, b, kernel)
        H.backward(gH)
        outs.append((H.detach(), a.grad, b.grad))
    for x, y in zip(*outs):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
inp = {k: v.float() for k, v in scan_inputs(Bt=2, Dm=6, N=4, L=23).items()}
outs = []
for kernel in (False, True):
    leaf = {k: v.clone().requires_grad_() for k, v in inp.items()}
    y = ssm.selective_scan_torch(**leaf, delta_softplus=True, kernel=kernel)
    y.square().sum().backward()
    outs.append([y.detach()] + [leaf[k].grad for k in sorted(leaf)])
for x, y in zip(*outs):
    torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
print("ok")
"""


@pytest.mark.skipif(ssm.triton is None, reason="triton is not installed")
def test_triton_recurrence_matches_the_torch_loop_in_the_interpreter():
    """The kernels, run by Triton's CPU interpreter (a fresh process: the switch is read at import),
    give the torch loop's states and input gradients, and so the whole scan's output and gradients."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", _TRITON_INTERPRETED], capture_output=True, text=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": root}, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_an_fp64_branch_computes_A_in_fp64():
    """SSMBranch cast A_log to fp32 whatever the model's dtype: an fp64 model was fp64 everywhere but A (relative
    error 3e-10 against an fp64 reference with A_log values fp32 cannot hold, found from Python by a researcher)."""
    torch.manual_seed(0)
    branch = ssm.SSMBranch(6, 4, 4).double()
    with torch.no_grad():
        branch.A_log.add_(torch.rand_like(branch.A_log) * 1e-3)  # values fp32 rounds
    x = torch.randn(2, 6, 9, dtype=torch.float64)
    xc = causal_conv1d(x, branch.conv_weight, branch.conv_bias, "silu")
    dt, Bm, Cm = branch.x_proj(xc.transpose(1, 2)).split([branch.dt_rank, branch.d_state, branch.d_state], dim=-1)
    delta = F.linear(dt, branch.dt_proj.weight).transpose(1, 2)
    ref = naive_scan(xc, delta, -torch.exp(branch.A_log), Bm.transpose(1, 2), Cm.transpose(1, 2), branch.D,
                     branch.dt_proj.bias)
    out = branch(x)
    assert out.dtype == torch.float64 and torch.allclose(out, ref, rtol=1e-13, atol=1e-13)
