"""E3D-LSTM (Wang et al., ICLR 2019, "Eidetic 3D LSTM: A Model for Video Prediction and Beyond").

PredRNN's zig-zag ST-LSTM stack with two changes:

* 3D convolutions. The input of a step is a short CLIP of the last ``window`` frames (2; zeros before
  the first), and every state (H, C, M) keeps that temporal depth: (B, hidden, window, h, w). All gate
  convolutions are 3D with a (2, 5, 5) kernel, so each gate is motion-aware on its own.
* Eidetic memory. The temporal memory no longer goes through a forget gate; it RECALLS its own past:

      R = sigma(W_xr * X_t + W_hr * H_{t-1}),  I = sigma(...),  G = tanh(...)
      RECALL(R, C_{t-tau:t-1}) = softmax(R . C_{t-tau:t-1}^T) . C_{t-tau:t-1}
      C_t = I . G + LayerNorm(C_{t-1} + RECALL(R, C_{t-tau:t-1}))

  an attention whose queries are the (window*h*w) positions of the recall gate R and whose keys and
  values are all positions of the last tau cell states (unscaled dot product, as in the paper). The
  spatiotemporal memory M (i', g', f' from X and M^{l-1}) and the output
  H = sigma(W_xo*X + W_ho*H + W_co*C + W_mo*M) . tanh(W_1x1x1 * [C, M]) are PredRNN's, in 3D.

A (window, 1, 1) conv with stride window reads the next frame's patches off the top hidden clip.
Training: next-frame loss over the whole clip (T_in + T_out - 1 steps) with PredRNN's scheduled
sampling (1 -> 0 by 62.5% of training); loss MSE + L1 as the released code (L2 + L1).

Moving MNIST defaults (paper / released script): 4 layers x 64 hidden, 2x5x5 kernels, window 2, patch
4, recall over all past cell states. Training recipe (trainer-owned): ``PAPER_TRAINING``.

Scaling to CHDL 600x800 (``PRESETS["chdl"]``): the recall attention is quadratic in positions per
step (queries window*h*w, keys tau*window*h*w), so this model scales its grid harder than the PredRNN
family: patch 16 -> 38x50 cells (600 is padded to 608), hidden 32, and tau = 5 past memories. Then
one recall is 3.8k queries x 19k keys (~72M scores), computed with torch's fused attention (flash /
memory-efficient kernels on GPU, never materialised); the 5x5 kernels see 80x80 px per layer.

Choices where the paper leaves room (also in docs/baselines-rnn.md):
* Equations as in the paper: sigmoid output gate, the UPDATED M carried on. (The released TF cell
  uses tanh inside the output gate, tanh(W*M) in the M update, and returns the old M - read as slips.)
* LayerNorm over (channels, window, h, w) with a per-channel affine (GroupNorm with one group).
* The first recall of a sequence sees the zero initial state (as the released code): attending to
  nothing returns zeros.
* No layer norm on the gate pre-activations (the released script's option; not in the paper).
* Sizes not divisible by the patch are replicate-padded bottom/right and cropped (rnn_common).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffuma.models.registry import check_frames
from diffuma.models.rnn_common import (SS_STOP, from_patches, glorot_init_, next_frame_objective, rollout,
                                       scheduled_sampling_eta, to_patches, truth_mask)


@dataclass
class E3DLSTMConfig:
    in_frames: int = 10          # T_in: observed frames (the model accepts any number at run time)
    out_frames: int = 10         # T_out: frames predicted by forward()
    channels: int = 1            # C: image channels
    height: int = 64             # H the model is configured for (any size works: padded to the patch)
    width: int = 64              # W
    patch: int = 4               # p: space-to-depth patch; the recurrence runs on an (H/p, W/p) grid
    num_layers: int = 4          # L: stacked E3D-LSTM layers
    hidden: int = 64             # channels of H, C and M in every layer (equal: M zig-zags through all)
    filter_size: int = 5         # spatial kernel of every gate convolution
    temporal_filter: int = 2     # temporal kernel of every gate convolution
    window: int = 2              # frames per input clip = temporal depth of every state (stride 1)
    recall: int = 0              # tau: past cell states the eidetic memory attends to; 0 = all of them
    l1_weight: float = 1.0       # loss = MSE + l1_weight * L1 (released code: L2 + L1); 0 = plain MSE
    ss_stop: float = SS_STOP     # scheduled sampling reaches "always own prediction" at this fraction of training

    def __post_init__(self):
        if min(self.patch, self.num_layers, self.hidden, self.window, self.temporal_filter) < 1:
            raise ValueError("E3D-LSTM patch, num_layers, hidden, window and temporal_filter must be >= 1")
        if self.filter_size % 2 == 0:
            raise ValueError(f"E3D-LSTM filter_size must be odd (same padding), got {self.filter_size}")
        if self.recall < 0:
            raise ValueError(f"E3D-LSTM recall must be >= 0 (0 = all past states), got {self.recall}")


PRESETS: dict[str, dict] = {
    # Moving MNIST 64x64, 10 -> 10: 4 x 64, 2x5x5, window 2, patch 4, recall all (paper / released script).
    "default": dict(),
    # Fast CPU tests (0.3M params at 64x64). Patch 16 and tau 2 keep even a 600x800 forward cheap.
    "tiny": dict(num_layers=2, hidden=8, filter_size=3, patch=16, recall=2),
    # CHDL 600x800, 5 -> 1: patch 16, hidden 32, tau 5 (see the module docstring).
    "chdl": dict(in_frames=5, out_frames=1, height=600, width=800, patch=16, hidden=32, recall=5),
}

# The released Moving MNIST recipe (scripts/e3d_lstm_mm_train.sh), for docs and the bench.
PAPER_TRAINING = {"optimizer": "adam", "lr": 1e-3, "batch_size": 4, "iterations": 80_000}


class SameConv3d(nn.Conv3d):
    """Conv3d with "same" output size; an even temporal kernel gets its extra zero frame at the END of
    the clip (TensorFlow's "same", as the released code). Explicit, to avoid torch's padding copy warning."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int], bias: bool = True):
        super().__init__(c_in, c_out, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2), bias=bias)

    def forward(self, x):                  # (B, c_in, T, h, w) -> (B, c_out, T, h, w)
        kt = self.kernel_size[0]
        return super().forward(F.pad(x, (0, 0, 0, 0, (kt - 1) // 2, kt // 2)))


class E3DLSTMCell(nn.Module):
    """One eidetic 3D LSTM layer on states of shape (B, hidden, window, h, w)."""

    def __init__(self, in_channels: int, hidden: int, kernel: tuple[int, int, int]):
        super().__init__()
        conv = lambda c_in, c_out: SameConv3d(c_in, c_out, kernel, bias=False)  # noqa: E731
        self.conv_x = SameConv3d(in_channels, 7 * hidden, kernel)                  # r i g i' g' f' o
        self.conv_h = conv(hidden, 4 * hidden)                                     # r i g o
        self.conv_m = conv(hidden, 3 * hidden)                                     # i' g' f'
        self.conv_o = conv(2 * hidden, hidden)                                     # W_co*C + W_mo*M
        self.fuse = nn.Conv3d(2 * hidden, hidden, 1, bias=False)                   # W_1x1x1 * [C, M]
        self.norm = nn.GroupNorm(1, hidden)                                        # LayerNorm over (C, T, h, w)

    @staticmethod
    def recall(r: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
        """softmax(R . C_hist^T) . C_hist over all positions. r (B, hid, T, h, w); history: tau such."""
        # channels-last and contiguous: the fused (flash / memory-efficient) kernels need a unit stride
        q = r.flatten(2).transpose(1, 2).contiguous().unsqueeze(1)                 # (B, 1, T*h*w, hid)
        kv = torch.cat([c.flatten(2) for c in history], dim=2).transpose(1, 2).contiguous().unsqueeze(1)
        # kv: (B, 1, tau*T*h*w, hid); the paper's dot product is unscaled
        out = F.scaled_dot_product_attention(q, kv, kv, scale=1.0)                 # (B, 1, T*h*w, hid)
        return out.squeeze(1).transpose(1, 2).reshape(r.shape)

    def forward(self, x, h, c, m, history):   # x (B, c_in, T, h, w); h, c, m (B, hid, T, h, w)
        r_x, i_x, g_x, i2_x, g2_x, f2_x, o_x = self.conv_x(x).chunk(7, dim=1)
        r_h, i_h, g_h, o_h = self.conv_h(h).chunk(4, dim=1)
        i_m, g_m, f_m = self.conv_m(m).chunk(3, dim=1)
        r = torch.sigmoid(r_x + r_h)
        c = torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h) + self.norm(c + self.recall(r, history))
        m = torch.sigmoid(i2_x + i_m) * torch.tanh(g2_x + g_m) + torch.sigmoid(f2_x + f_m) * m
        cm = torch.cat([c, m], dim=1)                                              # (B, 2*hid, T, h, w)
        h = torch.sigmoid(o_x + o_h + self.conv_o(cm)) * torch.tanh(self.fuse(cm))
        return h, c, m


class E3DLSTM(nn.Module):
    """E3D-LSTM (Wang et al., ICLR 2019): LSTM cells with 3-D convolutions over a short window of frames and a
    recall gate attending to their own history; forward: (B, T_in, C, H, W) in [0, 1] (any T_in) ->
    (B, T_out, C, H, W)."""

    Config = E3DLSTMConfig

    def __init__(self, config: E3DLSTMConfig):
        super().__init__()
        self.config = cfg = config
        cp = cfg.channels * cfg.patch ** 2
        kernel = (cfg.temporal_filter, cfg.filter_size, cfg.filter_size)
        self.cells = nn.ModuleList(
            [E3DLSTMCell(cp if i == 0 else cfg.hidden, cfg.hidden, kernel) for i in range(cfg.num_layers)])
        # top hidden clip (B, hid, window, h, w) -> next frame's patches (B, C*p*p, 1, h, w)
        self.head = nn.Conv3d(cfg.hidden, cp, (cfg.window, 1, 1), stride=(cfg.window, 1, 1))
        self._init_weights()

    def _init_weights(self) -> None:
        """All init in one place: Glorot convs / zero biases (rnn_common.glorot_init_ says why), the
        forget gate f' of M biased to 1 (the released code's forget_bias) so M starts persistent, and
        LayerNorms at identity. C has no forget gate: the recall + LayerNorm keeps it bounded."""
        glorot_init_(self)
        hd = self.config.hidden
        for cell in self.cells:
            nn.init.ones_(cell.conv_x.bias[5 * hd:6 * hd])        # f'
            nn.init.ones_(cell.norm.weight)
            nn.init.zeros_(cell.norm.bias)

    def _rollout(self, frames: torch.Tensor, n_steps: int, use_true: torch.Tensor | None) -> torch.Tensor:
        """frames (B, T_known, C*p*p, h, w) -> next-frame predictions (B, n_steps, C*p*p, h, w)."""
        cfg = self.config
        B, _, cp, h, w = frames.shape
        zeros = frames.new_zeros(B, cfg.hidden, cfg.window, h, w)
        L = len(self.cells)
        H, C, M = [zeros] * L, [zeros] * L, zeros
        history: list[list[torch.Tensor]] = [[] for _ in range(L)]
        clip = [frames.new_zeros(B, cp, h, w)] * (cfg.window - 1)

        def step(inp):                                             # (B, C*p*p, h, w)
            nonlocal M, clip
            clip = [*clip, inp][-cfg.window:]
            z = torch.stack(clip, dim=2)                           # (B, C*p*p, window, h, w)
            for i, cell in enumerate(self.cells):
                history[i].append(C[i])                            # C_{t-1} joins the recallable past
                if cfg.recall:
                    del history[i][:-cfg.recall]
                H[i], C[i], M = cell(z, H[i], C[i], M, history[i])
                z = H[i]
            return self.head(z).squeeze(2)                         # (B, C*p*p, h, w)

        return rollout(step, frames, n_steps, use_true)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T_in, C, H, W) in [0, 1] -> (B, T_out, C, H, W); ValueError for another C."""
        check_frames(self, x, any_in_frames=True)
        cfg = self.config
        B, T, C, H, W = x.shape                                    # (B, T_in, C, H, W) in [0, 1]
        frames = to_patches(x, cfg.patch)                          # (B, T_in, C*p*p, h, w)
        preds = self._rollout(frames, T + cfg.out_frames - 1, None)    # (B, T_in+T_out-1, C*p*p, h, w)
        return from_patches(preds[:, -cfg.out_frames:], cfg.patch, H, W)   # (B, T_out, C, H, W)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0, total_steps: int = 1):
        """E3D-LSTM's objective: next-frame MSE + L1 over the clip, scheduled sampling in the forecast."""
        check_frames(self, x, any_in_frames=True)
        cfg = self.config
        eta = scheduled_sampling_eta(step, total_steps, cfg.ss_stop)
        use_true = truth_mask(x.shape[0], x.shape[1], y.shape[1], 1.0, eta)
        loss, logs = next_frame_objective(self._rollout, x, y, cfg.patch, use_true, cfg.l1_weight)
        return loss, {**logs, "eta": eta}
