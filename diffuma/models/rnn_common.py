"""Pieces shared by the recurrent baselines (ConvLSTM, PredRNN, PredRNN-v2, E3D-LSTM).

* ``to_patches`` / ``from_patches``: the "space-to-depth" reshape all four papers apply to 64x64 Moving
  MNIST (patch 4: each frame becomes a 16x16 grid of 16-channel cells, so 5x5 kernels see 20x20 px).
  Frames whose size is not a multiple of the patch are replicate-padded at the bottom/right and the
  padding is cropped off again (the loss never sees it).
* ``rollout``: the PredRNN-family next-frame loop. Step t reads frame t (the true one or the model's own
  previous prediction, per a boolean mask) and predicts frame t+1; T_in + T_out - 1 steps in all.
* Scheduled sampling (Bengio et al. 2015, as PredRNN / E3D-LSTM use it) and PredRNN-v2's reverse
  scheduled sampling. Both are written against training progress ``step / total_steps`` so a run of any
  length follows the papers' shape: the released Moving MNIST scripts run 80k iterations, linear
  scheduled sampling ends at 50k (= 0.625), and reverse scheduled sampling switches between 25k and 50k
  (0.3125 .. 0.625) with an exponential time constant of 2.5k (0.03125). The coin flips come from
  torch's global CPU generator, so ``torch.manual_seed`` makes a training step reproducible on any device.
* ``glorot_init_``: the init all four share (see its docstring for why).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# Fractions of training at which the papers' schedules change (80k-iteration Moving MNIST scripts).
SS_STOP = 50_000 / 80_000          # scheduled sampling: teacher-forcing probability reaches 0 here
RSS_START = 25_000 / 80_000        # reverse scheduled sampling: schedules start moving here ...
RSS_END = 50_000 / 80_000          # ... and reach their final values here
RSS_ALPHA = 2_500 / 80_000         # time constant of the exponential rise of the encoder's truth probability


# --------------------------------------------------------------------------------------------------
# Space-to-depth
# --------------------------------------------------------------------------------------------------

def to_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, T, C*p*p, ceil(H/p), ceil(W/p)); replicate-pads bottom/right first."""
    B, T, C, H, W = x.shape
    ph, pw = (-H) % patch, (-W) % patch
    x = x.reshape(B * T, C, H, W)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    x = F.pixel_unshuffle(x, patch)                        # (B*T, C*p*p, Hp/p, Wp/p)
    return x.reshape(B, T, *x.shape[1:])


def from_patches(z: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of ``to_patches``: (B, T, C*p*p, h, w) -> (B, T, C, height, width), padding cropped."""
    B, T = z.shape[:2]
    x = F.pixel_shuffle(z.reshape(B * T, *z.shape[2:]), patch)   # (B*T, C, h*p, w*p)
    return x.reshape(B, T, *x.shape[1:])[..., :height, :width]


# --------------------------------------------------------------------------------------------------
# The next-frame loop
# --------------------------------------------------------------------------------------------------

def rollout(step: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor, n_steps: int,
            use_true: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``step`` (input frame -> predicted next frame; it keeps its own recurrent state) n_steps times.

    frames: (B, T_known, ...) true frames. use_true: (B, n_steps) bool, where sample b reads the true
    frame at step t instead of its own previous prediction; None = the truth while it lasts (inference).
    Step 0 always reads the true first frame. Returns the predictions (B, n_steps, ...) of frames 1..n_steps.
    """
    preds: list[torch.Tensor] = []
    for t in range(n_steps):
        if t == 0 or (use_true is None and t < frames.shape[1]):
            inp = frames[:, t]
        elif use_true is None or t >= frames.shape[1]:
            inp = preds[-1]
        else:
            m = use_true[:, t].reshape(-1, *([1] * (frames.dim() - 2)))
            inp = torch.where(m, frames[:, t], preds[-1])
        preds.append(step(inp))
    return torch.stack(preds, dim=1)


def log_value(t: torch.Tensor) -> float:
    """A scalar tensor as a float for the logs; NaN on the meta device (``chdl model-info --train``)."""
    return float("nan") if t.is_meta else float(t.detach())


def next_frame_objective(run: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor], x: torch.Tensor,
                         y: torch.Tensor, patch: int, use_true: torch.Tensor, l1_weight: float = 0.0):
    """The PredRNN-family objective: predict every next frame of the clip [x, y] and score frames 2..T.

    run(frames (B, T, C*p*p, h, w), n_steps, use_true) -> predictions (B, n_steps, C*p*p, h, w).
    Loss = MSE (+ l1_weight * L1) in image space, padding cropped. Logs: mse_next (the MSE term);
    mse (of the T_out future frames only, as scored in this possibly teacher-forced pass); l1_next.
    """
    seq = torch.cat([x, y], dim=1)                                  # (B, T, C, H, W), T = T_in + T_out
    H, W = seq.shape[-2:]
    preds = run(to_patches(seq, patch), seq.shape[1] - 1, use_true.to(seq.device))
    pred = from_patches(preds, patch, H, W)                         # (B, T-1, C, H, W): frames 2..T
    mse = F.mse_loss(pred, seq[:, 1:])
    loss, logs = mse, {"mse_next": log_value(mse)}
    if l1_weight:
        l1 = F.l1_loss(pred, seq[:, 1:])
        loss = mse + l1_weight * l1
        logs["l1_next"] = log_value(l1)
    logs["mse"] = log_value(F.mse_loss(pred[:, -y.shape[1]:].detach(), y))
    return loss, logs


# --------------------------------------------------------------------------------------------------
# Scheduled sampling
# --------------------------------------------------------------------------------------------------

def scheduled_sampling_eta(step: int, total_steps: int, stop: float = SS_STOP) -> float:
    """Probability of feeding the true frame in the forecast phase: 1 -> 0 linearly, 0 after ``stop``."""
    progress = step / max(total_steps, 1)
    return max(0.0, 1.0 - progress / stop) if stop > 0 else 0.0


def reverse_sampling_etas(step: int, total_steps: int, start: float = RSS_START, end: float = RSS_END,
                          alpha: float = RSS_ALPHA) -> tuple[float, float]:
    """PredRNN-v2's reverse scheduled sampling: (r_eta, eta).

    r_eta, the probability of feeding the TRUE frame during the encoding phase, rises from 0.5 to 1
    (exponentially from ``start``, time constant ``alpha``, 1 from ``end``): early on the encoder
    must often work from its own predictions, which forces it to learn long-term dynamics instead of
    copying its input. eta, the same probability in the forecast phase, falls linearly 0.5 -> 0 over
    [start, end] as ordinary scheduled sampling does. At the end both equal inference (1 and 0).
    """
    progress = step / max(total_steps, 1)
    if progress < start:
        return 0.5, 0.5
    if progress >= end:
        return 1.0, 0.0
    r_eta = 1.0 - 0.5 * math.exp(-(progress - start) / alpha)
    eta = 0.5 - 0.5 * (progress - start) / (end - start)
    return r_eta, eta


def truth_mask(batch: int, n_in: int, n_out: int, eta_in: float, eta_out: float,
               device: torch.device | None = None) -> torch.Tensor:
    """(B, n_in + n_out - 1) bool: step 0 reads the truth; steps 1..n_in-1 with probability eta_in,
    forecast steps n_in.. with probability eta_out. One coin per sample and step, drawn from torch's
    global CPU generator (device-independent, seeded by torch.manual_seed)."""
    n_steps = n_in + n_out - 1
    coins = torch.rand(batch, n_steps)
    probs = torch.tensor([1.0] + [eta_in] * (n_in - 1) + [eta_out] * n_out)[:n_steps]
    return (coins < probs).to(device)


# --------------------------------------------------------------------------------------------------
# Init
# --------------------------------------------------------------------------------------------------

def glorot_init_(module: nn.Module) -> None:
    """Glorot-uniform conv weights, zero biases, for every conv in ``module``.

    Every gate of these cells is a sigmoid/tanh of a sum of convolutions; Glorot scaling keeps each
    pre-activation at unit-ish variance whatever the fan-in (16-channel patches or 256), so the gates
    start in their linear range instead of saturating. Models then set their forget-gate biases to 1
    (Gers et al. 2000; the +1 "forget bias" of the PredRNN/E3D code) so memory persists at the start
    of training and gradients reach early frames.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
