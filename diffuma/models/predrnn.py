"""PredRNN (Wang et al., NeurIPS 2017, "PredRNN: Recurrent Neural Networks for Predictive Learning
using Spatiotemporal LSTMs").

Structure: frames are cut into p x p patches (space-to-depth, 64x64 -> 16x16x16 at p=4) and fed one per
step to a stack of L spatiotemporal LSTM (ST-LSTM) layers; a 1x1 conv on the top hidden state predicts
the next frame's patches. Each ST-LSTM layer l at time t keeps two memories:

    C^l_t  temporal memory, carried along time inside the layer (a ConvLSTM cell):
           i, f, g = sigma/sigma/tanh(W_x * X_t + W_h * H^l_{t-1});  C^l_t = f . C^l_{t-1} + i . g
    M^l_t  spatiotemporal memory, carried UP the stack and then from the top layer at t-1 to the bottom
           layer at t (the zig-zag: M^0_t := M^L_{t-1}):
           i', f', g' = sigma/sigma/tanh(W'_x * X_t + W_m * M^{l-1}_t);  M^l_t = f' . M^{l-1}_t + i' . g'
    output o = sigma(W_x * X_t + W_h * H^l_{t-1} + W_o * [C^l_t, M^l_t]),  H^l_t = o . tanh(W_1x1 * [C, M])

X_t is the frame patches for layer 0 and H^{l-1}_t above. Training is next-frame prediction over the
whole sequence (T_in + T_out - 1 steps, MSE against frames 2..T) with scheduled sampling in the
forecast phase: the probability of feeding the true frame instead of the model's own prediction falls
linearly from 1 to 0 over the first 62.5% of training (the released 80k-iteration recipe). Inference
feeds the T_in true frames, then its own predictions.

Moving MNIST defaults (the paper / its released code): 4 layers x 128 hidden, 5x5 filters, patch 4,
no layer norm. Training recipe (trainer-owned): ``PAPER_TRAINING``.

Scaling to CHDL 600x800 (``PRESETS["chdl"]``): patch 8 -> a 75x100 grid of 64-channel cells (600 and
800 are multiples of 8). The recurrent state is then 29x the 16x16 Moving MNIST grid, so hidden goes
128 -> 64 (conv FLOPs scale with hidden^2): a step costs ~8x a Moving MNIST step (99 vs 12 GFLOPs), and
a 5 -> 1 training pass saves ~2 GiB of activations at batch 4 (estimate in docs/baselines-rnn.md).
The 5x5 filters then see 40x40 px per layer, a receptive field of 17 cells = 136 px after 4 layers.

Choices where the paper leaves room (also in docs/baselines-rnn.md):
* The forget-gate "+1" of the released code is a bias initialised to 1, not a constant.
* Only the x-convolutions carry biases (one bias per gate is enough).
* Sizes not divisible by the patch are replicate-padded bottom/right and cropped (rnn_common).
* The released code's ``reverse_input`` augmentation (a second update on the time-reversed clip) is
  a training-loop trick, not part of the model; not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from diffuma.models.registry import check_frames
from diffuma.models.rnn_common import (SS_STOP, from_patches, glorot_init_, next_frame_objective, rollout,
                                       scheduled_sampling_eta, to_patches, truth_mask)


@dataclass
class PredRNNConfig:
    in_frames: int = 10          # T_in: observed frames (the model accepts any number at run time)
    out_frames: int = 10         # T_out: frames predicted by forward()
    channels: int = 1            # C: image channels
    height: int = 64             # H the model is configured for (any size works: padded to the patch)
    width: int = 64              # W
    patch: int = 4               # p: space-to-depth patch; the recurrence runs on an (H/p, W/p) grid
    num_layers: int = 4          # L: stacked ST-LSTM layers
    hidden: int = 128            # channels of H, C and M in every layer (equal: M zig-zags through all)
    filter_size: int = 5         # k: spatial kernel of every gate convolution
    ss_stop: float = SS_STOP     # scheduled sampling reaches "always own prediction" at this fraction of training

    def __post_init__(self):
        if min(self.patch, self.num_layers, self.hidden) < 1:
            raise ValueError("PredRNN patch, num_layers and hidden must be >= 1")
        if self.filter_size % 2 == 0:
            raise ValueError(f"PredRNN filter_size must be odd (same padding), got {self.filter_size}")


PRESETS: dict[str, dict] = {
    # Moving MNIST 64x64, 10 -> 10: 4 x 128, 5x5, patch 4 (the paper and its released scripts).
    "default": dict(),
    # Fast CPU tests (0.08M params at 64x64).
    "tiny": dict(num_layers=2, hidden=16, filter_size=3),
    # CHDL 600x800, 5 -> 1: patch 8 (75x100 grid), hidden 64 (see the module docstring).
    "chdl": dict(in_frames=5, out_frames=1, height=600, width=800, patch=8, hidden=64),
}

# The released Moving MNIST recipe, for docs and the bench (the trainer owns training).
PAPER_TRAINING = {"optimizer": "adam", "lr": 3e-4, "batch_size": 8, "iterations": 80_000}


class STLSTMCell(nn.Module):
    """One spatiotemporal LSTM layer. Returns the new (H, C, M) and the memory increments
    (i.g, i'.g') that PredRNN-v2's decoupling loss compares."""

    def __init__(self, in_channels: int, hidden: int, kernel: int):
        super().__init__()
        pad = kernel // 2
        self.hidden = hidden
        self.conv_x = nn.Conv2d(in_channels, 7 * hidden, kernel, padding=pad)            # i f g i' f' g' o
        self.conv_h = nn.Conv2d(hidden, 4 * hidden, kernel, padding=pad, bias=False)     # i f g o
        self.conv_m = nn.Conv2d(hidden, 3 * hidden, kernel, padding=pad, bias=False)     # i' f' g'
        self.conv_o = nn.Conv2d(2 * hidden, hidden, kernel, padding=pad, bias=False)     # W_co*C + W_mo*M
        self.fuse = nn.Conv2d(2 * hidden, hidden, 1, bias=False)                         # W_1x1 * [C, M]

    def forward(self, x, h, c, m):       # x (B, c_in, h, w); h, c, m (B, hidden, h, w)
        i_x, f_x, g_x, i2_x, f2_x, g2_x, o_x = self.conv_x(x).chunk(7, dim=1)
        i_h, f_h, g_h, o_h = self.conv_h(h).chunk(4, dim=1)
        i_m, f_m, g_m = self.conv_m(m).chunk(3, dim=1)
        dc = torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
        c = torch.sigmoid(f_x + f_h) * c + dc                     # temporal memory C^l_t
        dm = torch.sigmoid(i2_x + i_m) * torch.tanh(g2_x + g_m)
        m = torch.sigmoid(f2_x + f_m) * m + dm                     # spatiotemporal memory M^l_t
        cm = torch.cat([c, m], dim=1)                              # (B, 2*hidden, h, w)
        h = torch.sigmoid(o_x + o_h + self.conv_o(cm)) * torch.tanh(self.fuse(cm))
        return h, c, m, dc, dm


class PredRNN(nn.Module):
    """PredRNN (Wang et al., NeurIPS 2017): ST-LSTM cells with a spatiotemporal memory that zigzags through the
    layers, rolled out frame by frame; forward: (B, T_in, C, H, W) in [0, 1] (any T_in) -> (B, T_out, C, H, W)."""

    Config = PredRNNConfig

    def __init__(self, config: PredRNNConfig):
        super().__init__()
        self.config = cfg = config
        cp = cfg.channels * cfg.patch ** 2
        self.cells = nn.ModuleList(
            [STLSTMCell(cp if i == 0 else cfg.hidden, cfg.hidden, cfg.filter_size) for i in range(cfg.num_layers)])
        self.head = nn.Conv2d(cfg.hidden, cp, 1, bias=False)      # top H -> next frame's patches
        self._init_weights()

    def _init_weights(self) -> None:
        """All init in one place: Glorot convs / zero biases (rnn_common.glorot_init_ says why), then
        forget-gate biases (f and f' of every x-conv) at 1 so both memories start out persistent."""
        glorot_init_(self)
        hd = self.config.hidden
        for cell in self.cells:
            nn.init.ones_(cell.conv_x.bias[hd:2 * hd])            # f
            nn.init.ones_(cell.conv_x.bias[4 * hd:5 * hd])        # f'

    def _rollout(self, frames: torch.Tensor, n_steps: int, use_true: torch.Tensor | None,
                 on_step: Callable[[list], None] | None = None) -> torch.Tensor:
        """frames (B, T_known, C*p*p, h, w) -> next-frame predictions (B, n_steps, C*p*p, h, w).
        ``on_step`` receives each step's [(dC, dM) per layer] (PredRNN-v2's decoupling loss)."""
        B, _, _, h, w = frames.shape
        zeros = frames.new_zeros(B, self.config.hidden, h, w)
        H = [zeros] * len(self.cells)
        C = [zeros] * len(self.cells)
        M = zeros

        def step(inp):                                            # (B, C*p*p, h, w)
            nonlocal M
            z, increments = inp, []
            for i, cell in enumerate(self.cells):
                H[i], C[i], M, dc, dm = cell(z, H[i], C[i], M)    # M enters layer 0 from layer L at t-1
                z = H[i]
                increments.append((dc, dm))
            if on_step is not None:
                on_step(increments)
            return self.head(z)                                   # (B, C*p*p, h, w)

        return rollout(step, frames, n_steps, use_true)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T_in, C, H, W) in [0, 1] -> (B, T_out, C, H, W); ValueError for another C."""
        check_frames(self, x, any_in_frames=True)
        cfg = self.config
        B, T, C, H, W = x.shape                                   # (B, T_in, C, H, W) in [0, 1]
        frames = to_patches(x, cfg.patch)                         # (B, T_in, C*p*p, h, w)
        preds = self._rollout(frames, T + cfg.out_frames - 1, None)   # (B, T_in+T_out-1, C*p*p, h, w)
        return from_patches(preds[:, -cfg.out_frames:], cfg.patch, H, W)   # (B, T_out, C, H, W)

    def _truth_mask(self, batch: int, n_in: int, n_out: int, step: int, total_steps: int):
        """Scheduled sampling: the encoding phase always reads the truth, the forecast phase with
        probability eta (1 -> 0 by ``ss_stop``). Returns (mask (B, n_in+n_out-1) bool, logs)."""
        eta = scheduled_sampling_eta(step, total_steps, self.config.ss_stop)
        return truth_mask(batch, n_in, n_out, 1.0, eta), {"eta": eta}

    def _objective(self, x, y, step, total_steps, on_step=None):
        """Next-frame MSE over the whole clip under the model's sampling schedule (rnn_common)."""
        use_true, logs = self._truth_mask(x.shape[0], x.shape[1], y.shape[1], step, total_steps)
        run = lambda frames, n, mask: self._rollout(frames, n, mask, on_step)   # noqa: E731
        loss, obj_logs = next_frame_objective(run, x, y, self.config.patch, use_true)
        return loss, {**obj_logs, **logs}

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0, total_steps: int = 1):
        """PredRNN's objective: next-frame MSE with scheduled sampling driven by step / total_steps."""
        check_frames(self, x, any_in_frames=True)
        return self._objective(x, y, step, total_steps)
