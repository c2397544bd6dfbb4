"""Global motion from the input frames: sub-pixel phase correlation, its linear extrapolation, and the
constant-motion baseline built from the two.

One implementation, used in two places: the constant-motion row of every results table
(``constant_motion``) and DIFFUMA's motion prior (config ``prior="motion"``: the preliminary prediction is
a residual against the last frame moved by this extrapolated motion).

On dicing-lane video the stage moves the wafer by a near-constant step between frames, so the next frame
is mostly the last one translated by that step: copying the last frame ignores that, this baseline does
not. It is the bar a learned model has to clear on lane data.

Method (phase correlation, Kuglin & Hines 1975, refined to sub-pixel on the spectrum's phase plane):

* every consecutive pair of input frames (channels averaged, a Hann window against wrap-around edges)
  gives a cross-power spectrum ``F_k conj(F_{k-1}) / |.|`` whose inverse FFT peaks at the displacement of
  frame k relative to frame k-1; that integer peak is refined to sub-pixel by a weighted least-squares
  fit of the spectrum's residual phase plane (``phase_correlation``);
* the per-step motion ``v`` is the median of the T_in - 1 pairwise displacements, per axis (robust to one
  disturbed frame), shrunk towards zero where the pairs scatter as much as v itself, and faded out where
  moving the second-to-last frame by v does not explain the last frame better than standing still
  (``estimate_velocity``, ``motion_confidence``);
* the k-th predicted frame is the last input frame translated by ``k * v`` with bilinear interpolation,
  borders filled by replicating the edge pixels (``grid_sample`` with ``padding_mode="border"``).

Units: displacements are in pixels, (dy, dx), positive = content moves down / right.
Accuracy on a translated random texture: see tests/diffuma/test_motion.py (error < 0.1 px).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CONSTANT_MOTION = "constant-motion"  # the row name of this baseline in every table


def _hann2d(h: int, w: int, device, dtype) -> torch.Tensor:
    wy = torch.hann_window(h, periodic=False, device=device, dtype=dtype) if h > 1 else torch.ones(1, device=device, dtype=dtype)
    wx = torch.hann_window(w, periodic=False, device=device, dtype=dtype) if w > 1 else torch.ones(1, device=device, dtype=dtype)
    return wy[:, None] * wx[None, :]


@torch.no_grad()
def phase_correlation(prev: torch.Tensor, nxt: torch.Tensor, passes: int = 2) -> torch.Tensor:
    """Sub-pixel translation of ``nxt`` relative to ``prev``: ``_phase_correlation_once`` repeated
    ``passes`` times, each pass on ``prev`` moved by the estimate so far (the Hann window is fixed while
    the content moves, which biases one pass towards zero by up to ~5 % of the shift; a second pass on
    the nearly aligned pair removes most of it). (N, H, W), (N, H, W) -> (N, 2) (dy, dx) px."""
    d = _phase_correlation_once(prev, nxt)
    for _ in range(passes - 1):
        d = d + _phase_correlation_once(translate(prev[:, None], d[:, None])[:, 0, 0], nxt)
    return d


def _phase_correlation_once(prev: torch.Tensor, nxt: torch.Tensor, refine_steps: int = 2) -> torch.Tensor:
    """Sub-pixel translation of ``nxt`` relative to ``prev``, one pass.

    prev, nxt: (N, H, W) float frames. Returns (N, 2) displacements (dy, dx) in pixels such that
    ``nxt(y, x) ~= prev(y - dy, x - dx)``; the range is (-H/2, H/2] x (-W/2, W/2].

    The integer peak of the phase-correlation surface is refined by a weighted least-squares fit of the
    cross-power spectrum's phase plane over the low frequencies (|f| <= 0.15 cycles/px, weights = the
    spectrum's magnitude), ``refine_steps`` times (a translation by d multiplies the spectrum by
    exp(-2 pi i f.d), so the residual phase after removing the current estimate is a plane).
    """
    n, h, w = prev.shape
    work = torch.float64 if prev.dtype == torch.float64 else torch.float32
    a, b = prev.to(work), nxt.to(work)
    win = _hann2d(h, w, a.device, work)
    a = (a - a.mean(dim=(-2, -1), keepdim=True)) * win
    b = (b - b.mean(dim=(-2, -1), keepdim=True)) * win
    cross = torch.fft.rfft2(b) * torch.fft.rfft2(a).conj()                    # (N, H, W//2+1)
    unit = cross / cross.abs().clamp_min(1e-12)
    corr = torch.fft.irfft2(unit, s=(h, w))                                    # (N, H, W), peak at (dy, dx)
    flat = corr.reshape(n, -1).argmax(dim=1)
    dy = (flat // w).to(work)
    dx = (flat % w).to(work)
    dy = torch.where(dy > h / 2, dy - h, dy)                                   # wrap to the signed range
    dx = torch.where(dx > w / 2, dx - w, dx)
    fy = torch.fft.fftfreq(h, device=a.device, dtype=work)[:, None].expand(h, w // 2 + 1)
    fx = torch.fft.rfftfreq(w, device=a.device, dtype=work)[None, :].expand(h, w // 2 + 1)
    band = ((fy.abs() <= 0.15) & (fx.abs() <= 0.15)).to(work)                  # low frequencies only
    wgt = cross.abs() * band                                                   # (N, H, W//2+1)
    syy, sxx, sxy = (wgt * fy * fy).sum((1, 2)), (wgt * fx * fx).sum((1, 2)), (wgt * fy * fx).sum((1, 2))
    det = (syy * sxx - sxy * sxy).clamp_min(1e-12)
    for _ in range(refine_steps):
        phase = 2 * torch.pi * (fy * dy[:, None, None] + fx * dx[:, None, None])
        resid = torch.angle(unit * torch.polar(torch.ones_like(phase), phase))  # ~ -2 pi f.delta
        ry, rx = (wgt * fy * resid).sum((1, 2)), (wgt * fx * resid).sum((1, 2))
        # solve [syy sxy; sxy sxx] delta = -(ry, rx) / (2 pi)
        ddy = -(sxx * ry - sxy * rx) / det / (2 * torch.pi)
        ddx = -(syy * rx - sxy * ry) / det / (2 * torch.pi)
        dy, dx = dy + ddy.clamp(-1, 1), dx + ddx.clamp(-1, 1)
    return torch.stack([dy, dx], dim=1).to(prev.dtype)


@torch.no_grad()
def estimate_velocity(x: torch.Tensor) -> torch.Tensor:
    """Per-step global motion of a clip: the median of its consecutive-pair displacements, shrunk towards
    zero where the pairs disagree, and faded out where it does not explain the clip's own last step.

    x: (B, T, C, H, W) with T >= 2 (channels are averaged). Returns (B, 2) (dy, dx) in pixels per frame.
    With T == 1 there is no motion to measure and the result is zero.

    1. v = the per-axis median of the T - 1 pair displacements d_j (the two middle values averaged for an
       even count), then v * max(0, 1 - s^2 / |v|^2) with s^2 the lower median of |d_j - v|^2: a motion only
       as large as the scatter of its own estimates is not extrapolated. The lower median keeps one
       disturbed frame, which spoils two of four pairs, from zeroing it.
    2. Backtest (``motion_confidence``): v * g with g = clip(2 (1 - e_moved / e_still), 0, 1), where
       e_moved is the MSE of the second-to-last frame moved by v against the last frame and e_still that of
       the unmoved frame. Full trust where moving halves the last step's error; none where it does not
       help at all (a camera that stops, a scene whose "motion" is people walking past).
    Measured on the validation sets of docs/model-quality.md (constant-motion baseline, per-pixel MSE /
    SSIM): real footage 0.00296 / 0.904 without step 2, 0.00281 / 0.911 with it (copy-last-frame: 0.00318 /
    0.908); simulator lanes unchanged (0.00306: every lane clip's motion explains its last step);
    Moving MNIST 0.0614 -> 0.0641 (no global motion there; copy-last-frame 0.0704).
    """
    b, t, _, h, w = x.shape
    if t < 2:
        return x.new_zeros(b, 2)
    g = x.float().mean(dim=2)                                                  # (B, T, H, W)
    d = phase_correlation(g[:, :-1].reshape(-1, h, w), g[:, 1:].reshape(-1, h, w)).reshape(b, t - 1, 2)
    v = d.quantile(0.5, dim=1)                                                 # (B, 2): middle two averaged
    scatter = ((d - v[:, None]) ** 2).sum(-1).quantile(0.5, dim=1, interpolation="lower")   # (B,) px^2
    keep = (1 - scatter / v.pow(2).sum(-1).clamp_min(1e-12)).clamp(0, 1)      # (B,)
    v = v * keep[:, None]
    return (v * motion_confidence(g[:, -2:], v)[:, None]).to(x.dtype)


def motion_confidence(pair: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """How far a per-step motion explains one observed step: pair (B, 2, H, W), the frames before and
    after the step; v (B, 2) (dy, dx) px. Returns (B,) in [0, 1]: clip(2 (1 - e_moved / e_still), 0, 1)
    with e_moved = MSE(pair[:, 0] moved by v, pair[:, 1]) and e_still = MSE(pair[:, 0], pair[:, 1]).
    A step with no change at all gives 0 for any v that moves the frame (the camera has stopped)."""
    prev, last = pair[:, 0:1], pair[:, 1:2]                                    # (B, 1, H, W)
    moved = translate(prev, v[:, None].to(prev.dtype))[:, 0]                   # (B, 1, H, W)
    e_moved = (moved - last).pow(2).mean(dim=(1, 2, 3))
    e_still = (prev - last).pow(2).mean(dim=(1, 2, 3))
    return (2 * (1 - e_moved / e_still.clamp_min(1e-12))).clamp(0, 1)


def warp(frame: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp one frame by several displacement fields, bilinear, borders replicated.

    frame: (B, C, H, W); flow: (B, K, 2, H, W) displacements (dy, dx) in pixels. Returns (B, K, C, H, W)
    with out[:, k](y, x) = frame(y - dy_k(y, x), x - dx_k(y, x)). Differentiable in ``frame`` and ``flow``.
    """
    b, c, h, w = frame.shape
    k = flow.shape[1]
    ys = torch.arange(h, device=frame.device, dtype=frame.dtype)
    xs = torch.arange(w, device=frame.device, dtype=frame.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")                            # (H, W)
    fl = flow.to(frame.dtype)
    src_y = gy - fl[:, :, 0]                                                   # (B, K, H, W)
    src_x = gx - fl[:, :, 1]
    # align_corners=True: -1 and 1 are the centres of the first and last pixels
    grid = torch.stack([2 * src_x / max(w - 1, 1) - 1, 2 * src_y / max(h - 1, 1) - 1], dim=-1)
    src = frame[:, None].expand(b, k, c, h, w).reshape(b * k, c, h, w)
    out = F.grid_sample(src, grid.reshape(b * k, h, w, 2), mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out.reshape(b, k, c, h, w)


def translate(frame: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``warp`` by global shifts: frame (B, C, H, W), shifts (B, K, 2) (dy, dx) px -> (B, K, C, H, W)."""
    b, _, h, w = frame.shape
    return warp(frame, shifts[..., None, None].expand(b, shifts.shape[1], 2, h, w))


def extrapolate(x: torch.Tensor, out_frames: int, velocity: torch.Tensor | None = None) -> torch.Tensor:
    """The last input frame moved by k * velocity for k = 1..out_frames.

    x: (B, T_in, C, H, W); velocity: (B, 2) or None (then ``estimate_velocity(x)``).
    Returns (B, out_frames, C, H, W).
    """
    v = estimate_velocity(x) if velocity is None else velocity
    return translate(x[:, -1], extrapolated_shifts(v, out_frames))


def extrapolated_shifts(velocity: torch.Tensor, out_frames: int, gain: torch.Tensor | None = None) -> torch.Tensor:
    """Shifts of the predicted frames under constant motion: velocity (B, 2) px/frame -> (B, out_frames, 2)
    with shift_k = k * gain_k * velocity for k = 1..out_frames (gain (out_frames,), 1 when None)."""
    k = torch.arange(1, out_frames + 1, device=velocity.device, dtype=velocity.dtype)
    if gain is not None:
        k = k * gain.to(velocity.dtype)
    return k[None, :, None] * velocity[:, None, :]


@torch.no_grad()
def constant_motion(x: torch.Tensor, out_frames: int) -> torch.Tensor:
    """The constant-motion extrapolation baseline: (B, T_in, C, H, W) -> (B, T_out, C, H, W) in x's range."""
    return extrapolate(x, out_frames)
