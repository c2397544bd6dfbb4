"""Selective state-space scan (Mamba's S6) with two interchangeable backends, and the
bidirectional Mamba block of DIFFUMA (paper section 4.2, eq. 3-4).

Backends (chosen per call, same parameters either way, so checkpoints move freely):
  * "fused" -- mamba-ssm's CUDA `selective_scan_fn` and causal-conv1d's `causal_conv1d_fn`.
    Used when they import, the tensors are on CUDA and in fp32/fp16/bf16.
  * "torch" -- a pure-PyTorch scan that runs everywhere: a sequential loop over a time-major
    contiguous (L, B, D, N) layout. The discretisation (exp(delta A), delta B u) and the readout
    (C . h) are whole-tensor ops under autograd; only the linear recurrence h_t = a_t h_{t-1} + b_t
    is a loop, inside one autograd.Function whose forward and backward are each one `addcmul` per
    step into a preallocated contiguous buffer. Both are linear in L. (The reference pattern --
    autograd through `x[:, :, i]` indexing inside the loop -- makes every step's backward
    materialise a full-size zero gradient: quadratic in L.) Half precision is upcast to fp32
    inside; fp64 stays fp64 (tests).
  * "triton" -- the torch path with its one loop, the linear recurrence, replaced by a Triton kernel:
    one launch per direction that walks L in registers (forward) and back (backward), instead of one
    `addcmul` launch per step. For CUDA without mamba-ssm, where the per-step launches are the cost
    (chdl-full at 600x800 scans 9,500 steps per block: 466 ms per sequence on an H200, docs/model-quality.md).
    Opt-in until measured on a GPU (`tools/gpu_check.sh` times it); the same numbers as "torch" up to fp32
    rounding (tests/diffuma/test_ssm.py runs the kernels in Triton's CPU interpreter).
  * "auto" (default) -- fused where possible, torch otherwise.
The backend can be forced by the `backend=` argument (the model passes its config field
`scan_backend`), and the environment variable CHDL_SCAN_BACKEND=torch|fused|triton|auto overrides both.
Forcing "fused" or "triton" where it cannot run raises a ScanBackendError (a ValueError) rather than silently
falling back; `check_backend` raises it before any work, where the device is known.
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # CUDA-only packages: optional
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _fused_scan
except Exception:  # ImportError, or a broken CUDA build
    _fused_scan = None
try:
    from causal_conv1d import causal_conv1d_fn as _fused_conv1d
except Exception:
    _fused_conv1d = None
try:  # ships with CUDA builds of torch; the kernels below are compiled on first use
    import triton
    import triton.language as tl
except Exception:
    triton = None

BACKENDS = ("auto", "torch", "fused", "triton")
ENV_VAR = "CHDL_SCAN_BACKEND"
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ScanBackendError(ValueError):
    """A scan backend was forced (config field or CHDL_SCAN_BACKEND) where it cannot run."""


def fused_available() -> bool:
    """True when mamba-ssm's fused selective scan imported."""
    return _fused_scan is not None


def resolve_backend(backend: str | None, x: torch.Tensor) -> str:
    """The backend ("torch", "fused" or "triton") that a call with tensor `x` uses.

    The environment variable CHDL_SCAN_BACKEND, when set, wins over `backend`."""
    choice = (os.environ.get(ENV_VAR) or backend or "auto").strip().lower()
    if choice not in BACKENDS:
        raise ValueError(f"scan backend must be one of {BACKENDS}, got {choice!r} "
                         f"(from {ENV_VAR} or the config field scan_backend)")
    on_gpu = x.is_cuda and x.dtype in _FUSED_DTYPES
    # the CUDA kernels: (installed, its package, what it is)
    kernels = {"fused": (fused_available(), "mamba-ssm", "the fused kernel"),
               "triton": (triton is not None, "triton", "the Triton kernel")}
    if choice in kernels and not (kernels[choice][0] and on_gpu):
        installed, package, what = kernels[choice]
        why = (f"{package} is not importable" if not installed
               else f"tensors are {x.device}/{x.dtype}, {what} needs CUDA and fp32/fp16/bf16")
        raise ScanBackendError(f"scan backend '{choice}' was forced but cannot run: {why}")
    runnable = fused_available() and on_gpu
    if choice == "auto":
        return "fused" if runnable else "torch"
    return choice


def check_backend(backend: str | None, device) -> str:
    """`resolve_backend` for fp32 tensors on ``device``, before any work: ValueError for an unknown name,
    ScanBackendError (a ValueError) for a forced backend that cannot run there."""
    return resolve_backend(backend, torch.empty(0, device=device))


# ----------------------------------------------------------------------------- scans

def _no_autocast(device_type: str):
    """Disable autocast inside the scan (it would push the recurrence back to half precision)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()                                       # e.g. the meta device


_TRITON_BLOCK = 64  # recurrences (columns of the (L, M) layout) per Triton program: one per thread of 2 warps

if triton is not None:
    @triton.jit
    def _recurrence_fwd_kernel(dA, dBu, H, L, M, BLOCK: tl.constexpr):
        """H[t] = dA[t] * H[t-1] + dBu[t] for BLOCK columns, t = 0..L-1, h in registers (fp32). The
        pointers step by one row (M elements) a step (64-bit pointer arithmetic, no t * M product), and
        step t+1's inputs are loaded before step t's state is stored (they do not depend on it)."""
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < M
        pa, pb, ph = dA + cols, dBu + cols, H + cols
        a = tl.load(pa, mask=mask, other=0.0)
        b = tl.load(pb, mask=mask, other=0.0)
        h = tl.zeros([BLOCK], dtype=tl.float32)
        for t in range(0, L):
            pa += M
            pb += M
            more = mask & (t + 1 < L)
            a_next = tl.load(pa, mask=more, other=0.0)
            b_next = tl.load(pb, mask=more, other=0.0)
            h = a * h + b
            tl.store(ph, h, mask=mask)
            ph += M
            a, b = a_next, b_next

    @triton.jit
    def _recurrence_bwd_kernel(dA, gH, G, L, M, last_row, BLOCK: tl.constexpr):
        """G[t] = gH[t] + dA[t+1] * G[t+1], t = L-1..0 (G[L-1] = gH[L-1]); last_row = (L - 1) * M.
        Prefetches like the forward kernel."""
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < M
        pa, pg, pG = dA + last_row + cols, gH + last_row + cols, G + last_row + cols
        gh = tl.load(pg, mask=mask, other=0.0)
        a = tl.load(pa, mask=mask, other=0.0)                       # dA[t] for the step below t
        g = tl.zeros([BLOCK], dtype=tl.float32)
        a_next = tl.zeros([BLOCK], dtype=tl.float32)                # dA[t+1]; 0 above the last row
        for t in range(0, L):
            pa -= M
            pg -= M
            more = mask & (t + 1 < L)
            gh_below = tl.load(pg, mask=more, other=0.0)
            a_below = tl.load(pa, mask=more, other=0.0)
            g = gh + a_next * g
            tl.store(pG, g, mask=mask)
            pG -= M
            a_next, gh, a = a, gh_below, a_below


def _forward_loop(dA, dBu, H, kernel: bool) -> None:
    """Fill H[t] = dA[t] * H[t-1] + dBu[t]: one Triton kernel (``kernel``; fp32 CUDA tensors) or one
    `addcmul` per step."""
    L = H.shape[0]
    if kernel:
        M = H[0].numel()
        _recurrence_fwd_kernel[(triton.cdiv(M, _TRITON_BLOCK),)](dA, dBu, H, L, M, BLOCK=_TRITON_BLOCK)
        return
    H[0] = dBu[0]
    for t in range(1, L):
        torch.addcmul(dBu[t], dA[t], H[t - 1], out=H[t])


def _backward_loop(dA, gH, G, kernel: bool) -> None:
    """Fill the reverse recurrence G[t] = gH[t] + dA[t+1] * G[t+1], G[L-1] = gH[L-1]; as `_forward_loop`."""
    L = G.shape[0]
    if kernel:
        M = G[0].numel()
        _recurrence_bwd_kernel[(triton.cdiv(M, _TRITON_BLOCK),)](dA, gH, G, L, M, (L - 1) * M, BLOCK=_TRITON_BLOCK)
        return
    G[L - 1] = gH[L - 1]
    for t in range(L - 2, -1, -1):
        torch.addcmul(gH[t], dA[t + 1], G[t + 1], out=G[t])


class _LinearRecurrence(torch.autograd.Function):
    """H[t] = dA[t] * H[t-1] + dBu[t], H[-1] = 0, over dim 0 of time-major contiguous tensors.

    Forward and backward are each one sequential loop writing into a preallocated contiguous output (no
    autograd graph per step, so no per-step engine overhead and nothing quadratic): one `addcmul` per
    step, or with ``kernel=True`` one Triton kernel that walks L (the "triton" backend). Backward is the
    reverse recurrence G[t] = gH[t] + dA[t+1] * G[t+1], after which the input gradients are two
    whole-tensor products: gdBu = G, gdA = G * H[t-1]. Saves dA and H for backward (dBu is not needed)."""

    @staticmethod
    def forward(ctx, dA, dBu, kernel=False):
        dA, dBu = dA.contiguous(), dBu.contiguous()
        H = torch.empty_like(dBu)
        if not dBu.is_meta:                       # meta (FLOP counting): shapes only, skip the loop
            _forward_loop(dA, dBu, H, kernel)
        ctx.save_for_backward(dA, H)
        ctx.kernel = kernel
        return H

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gH):
        dA, H = ctx.saved_tensors
        gH = gH.contiguous()
        G = torch.empty_like(gH)
        if not gH.is_meta:
            _backward_loop(dA, gH, G, ctx.kernel)
        gdA = torch.zeros_like(dA)
        gdA[1:] = G[1:] * H[:-1]                  # dH[t]/ddA[t] = H[t-1]; H[-1] = 0
        return gdA, G, None


def selective_scan_torch(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, kernel=False):
    """Pure-PyTorch selective scan, same math, layout and defaults as mamba-ssm's `selective_scan_fn`
    (``delta_softplus`` False unless asked: SSMBranch asks).
    ``kernel``: the recurrence as Triton kernels (the "triton" backend; fp32 CUDA) instead of a loop.

    u, delta: (Bt, Dm, L); A: (Dm, N); B, C: (Bt, N, L) (input-dependent); D, delta_bias: (Dm,).
    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t ;  y_t = C_t . h_t + D u_t      (eq. 3)
    Returns y: (Bt, Dm, L) in u's dtype.
    """
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    with _no_autocast(u.device.type):
        u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
        if delta_bias is not None:
            delta = delta + delta_bias.to(compute)[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        # time-major, contiguous: (L, Bt, Dm, N)
        delta_t = delta.permute(2, 0, 1)                                  # (L, Bt, Dm)
        dA = torch.exp(delta_t.unsqueeze(-1) * A)                         # (L, Bt, Dm, N)
        dBu = (delta_t * u.permute(2, 0, 1)).unsqueeze(-1) * B.permute(2, 0, 1).unsqueeze(2)  # (L, Bt, Dm, N)
        H = _LinearRecurrence.apply(dA, dBu, kernel)                      # (L, Bt, Dm, N)
        y = (H @ C.permute(2, 0, 1).unsqueeze(-1)).squeeze(-1)            # (L, Bt, Dm): sum_n H C
        y = y.permute(1, 2, 0)                                            # (Bt, Dm, L)
        if D is not None:
            y = y + u * D.to(compute)[:, None]
    return y.to(dtype_in)


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend=None):
    """Selective scan with per-call backend dispatch (see module docstring). Shapes as
    `selective_scan_torch`. The fused kernel wants u/delta/B/C in one dtype and A, D, delta_bias
    in fp32; this function does those casts so both paths see identical parameters."""
    chosen = resolve_backend(backend, u)
    if chosen != "fused":
        return selective_scan_torch(u, delta, A, B, C, D, delta_bias, delta_softplus, kernel=chosen == "triton")
    dt = u.dtype
    return _fused_scan(u.contiguous(), delta.to(dt).contiguous(), A.float().contiguous(),
                       B.to(dt).contiguous(), C.to(dt).contiguous(),
                       D=None if D is None else D.float().contiguous(), z=None,
                       delta_bias=None if delta_bias is None else delta_bias.float().contiguous(),
                       delta_softplus=delta_softplus, return_last_state=False)


def causal_conv1d(x, weight, bias=None, activation="silu", backend=None):
    """Depthwise causal Conv1d. x: (Bt, Dm, L), weight: (Dm, K), bias: (Dm,) -> (Bt, Dm, L).
    Output at position i sees inputs i-K+1..i only. Fused (causal-conv1d) when available on CUDA
    and 2 <= K <= 4; F.conv1d otherwise (same weights)."""
    K = weight.shape[-1]
    if (_fused_conv1d is not None and 2 <= K <= 4 and resolve_backend(backend, x) == "fused"):
        b = None if bias is None else bias.to(weight.dtype).contiguous()
        return _fused_conv1d(x.contiguous(), weight.contiguous(), b, activation=activation)
    L = x.shape[-1]
    y = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                 padding=K - 1, groups=x.shape[1])[..., :L]               # (Bt, Dm, L)
    return F.silu(y) if activation in ("silu", "swish") else y


# ----------------------------------------------------------------------------- modules

class SSMBranch(nn.Module):
    """One causal direction: depthwise Conv1d -> SiLU -> input-dependent (delta, B, C) -> scan.
    (B, Dm, L) -> (B, Dm, L). The backward SSM of a block is an SSMBranch run on the flipped
    sequence."""

    def __init__(self, d_inner: int, d_state: int = 16, d_conv: int = 4, dt_rank: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4):
        super().__init__()
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = dt_rank or math.ceil(d_inner / 16)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.conv_weight = nn.Parameter(torch.empty(d_inner, d_conv))   # depthwise, (Dm, K)
        self.conv_bias = nn.Parameter(torch.empty(d_inner))
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)      # bias = delta_bias
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))        # A = -exp(A_log)
        self.D = nn.Parameter(torch.empty(d_inner))                     # skip
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Mamba's initialisation (Gu & Dao 2023). A_log: S4D-real, A_n = -(n+1), a spread of
        decay rates. dt: bias set to softplus^-1 of dt ~ logUniform[dt_min, dt_max], so the initial
        step sizes cover slow and fast dynamics. dt_proj weight small so the bias dominates at init.
        These are the values the model's _init_weights must NOT overwrite with its generic init."""
        K = self.conv_weight.shape[1]
        bound = 1.0 / math.sqrt(K)                                      # nn.Conv1d default, fan_in = K
        self.conv_weight.uniform_(-bound, bound)
        self.conv_bias.uniform_(-bound, bound)
        nn.init.kaiming_uniform_(self.x_proj.weight, a=math.sqrt(5))    # nn.Linear default
        std = self.dt_rank ** -0.5
        self.dt_proj.weight.uniform_(-std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(self.dt_max) - math.log(self.dt_min))
                       + math.log(self.dt_min)).clamp(min=self.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))      # inverse softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    def forward(self, x, backend=None):
        # x: (B, Dm, L)
        B_, _, L = x.shape
        x = causal_conv1d(x, self.conv_weight, self.conv_bias, "silu", backend)   # (B, Dm, L)
        x_dbl = self.x_proj(x.transpose(1, 2))                                      # (B, L, R+2N)
        dt, Bm, Cm = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)                   # (B, Dm, L)
        # A in fp32 at least, as Mamba's reference computes it (half-precision weights), and fp64 in an fp64 model
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))   # (Dm, N)
        return selective_scan(x, delta, A, Bm.transpose(1, 2), Cm.transpose(1, 2),  # B, C: (B, N, L)
                              self.D, self.dt_proj.bias, delta_softplus=True, backend=backend)


class BiMamba(nn.Module):
    """Bidirectional Mamba mixer (eq. 4): three branches from the same input --
    forward SSM (Conv1d + SSM over 1..L), backward SSM (Conv1d + SSM over L..1, own parameters),
    and a SiLU gate -- fused as y = (y_fwd + y_bwd) * SiLU(gate). (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        d_inner = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)     # -> SSM input, gate
        self.fwd = SSMBranch(d_inner, d_state, d_conv)
        self.bwd = SSMBranch(d_inner, d_state, d_conv)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def branches(self, x, backend=None):
        """The two SSM branch outputs, each (B, L, d_inner), and the gate (B, L, d_inner)."""
        u, gate = self.in_proj(x).chunk(2, dim=-1)                      # (B, L, Di) each
        u = u.transpose(1, 2)                                           # (B, Di, L)
        y_f = self.fwd(u, backend)                                      # causal
        y_b = self.bwd(u.flip(-1), backend).flip(-1)                    # anti-causal
        return y_f.transpose(1, 2), y_b.transpose(1, 2), gate

    def forward(self, x, backend=None):
        y_f, y_b, gate = self.branches(x, backend)
        return self.out_proj((y_f + y_b) * F.silu(gate))               # (B, L, D)


class MambaBlock(nn.Module):
    """Pre-norm residual block around BiMamba: x + BiMamba(LayerNorm(x)). (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = BiMamba(d_model, d_state, d_conv, expand)

    def forward(self, x, backend=None):
        return x + self.mixer(self.norm(x), backend)
