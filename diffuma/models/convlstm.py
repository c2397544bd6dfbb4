"""ConvLSTM (Shi et al., NeurIPS 2015, "Convolutional LSTM Network: A Machine Learning Approach for
Precipitation Nowcasting"), in the paper's encoding-forecasting structure.

Cell (peephole LSTM with convolutions for every input-to-state and state-to-state transition):

    i = sigma(W_xi * X_t + W_hi * H_{t-1} + W_ci . C_{t-1} + b_i)
    f = sigma(W_xf * X_t + W_hf * H_{t-1} + W_cf . C_{t-1} + b_f)
    C_t = f . C_{t-1} + i . tanh(W_xc * X_t + W_hc * H_{t-1} + b_c)
    o = sigma(W_xo * X_t + W_ho * H_{t-1} + W_co . C_t + b_o)
    H_t = o . tanh(C_t)

Network: frames are cut into p x p patches (64x64 -> 16x16x16 at p=4, as the paper does). An ENCODING
stack of ConvLSTM layers reads the T_in inputs; a FORECASTING stack with its own weights starts from
the encoder's final (H, C) of each layer and runs T_out steps with no input (the paper's unconditioned
forecaster: nothing is fed back, so there is no train/test mismatch and no scheduled sampling). At each
forecast step all forecaster hidden states are concatenated and a 1x1 conv + sigmoid gives the frame.

Moving MNIST defaults (the paper's best model): 3 layers with 128, 64, 64 hidden channels, 5x5 kernels,
patch 4, cross-entropy loss (the frames are intensities in [0, 1]; "bce" below). Training recipe
(trainer-owned): ``PAPER_TRAINING``.

Scaling to CHDL 600x800 (``PRESETS["chdl"]``): patch 8 -> a 75x100 grid of 64-channel cells and
hidden halved to 64, 32, 32, so a recurrent step costs ~10x the Moving MNIST model's; the 5x5 kernels then
see 40x40 px per layer, 13 cells = 104 px after 3 layers. (Same rule as the PredRNN family.)

Choices where the paper leaves room (also in docs/baselines-rnn.md):
* Peephole weights W_c. are Hadamard products with per-CHANNEL weights (hidden, 1, 1) broadcast over
  space; the paper's full (hidden, h, w) tensors would tie the model to one frame size.
* All gates' x- and h-convolutions are one convolution over [X, H] (mathematically the same sum).
* ``loss="mse"`` is available for a like-for-like comparison with the MSE-trained baselines.
* Sizes not divisible by the patch are replicate-padded bottom/right and cropped (rnn_common).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffuma.models.registry import check_frames
from diffuma.models.rnn_common import from_patches, glorot_init_, log_value, to_patches


@dataclass
class ConvLSTMConfig:
    in_frames: int = 10                        # T_in: observed frames (any number works at run time)
    out_frames: int = 10                       # T_out: frames the forecaster produces
    channels: int = 1                          # C: image channels
    height: int = 64                           # H the model is configured for (any size: padded to the patch)
    width: int = 64                            # W
    patch: int = 4                             # p: space-to-depth patch; the recurrence runs on (H/p, W/p)
    hidden: tuple[int, ...] = (128, 64, 64)    # hidden channels per layer, bottom to top (encoder = forecaster)
    filter_size: int = 5                       # k: kernel of the input-to-state and state-to-state convs
    loss: str = "bce"                          # "bce": the paper's cross-entropy on [0,1] intensities | "mse"

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden or min(self.hidden) < 1 or self.patch < 1:
            raise ValueError("ConvLSTM needs >= 1 layer, hidden sizes >= 1 and patch >= 1")
        if self.filter_size % 2 == 0:
            raise ValueError(f"ConvLSTM filter_size must be odd (same padding), got {self.filter_size}")
        if self.loss not in ("bce", "mse"):
            raise ValueError(f"ConvLSTM loss must be 'bce' or 'mse', got {self.loss!r}")


PRESETS: dict[str, dict] = {
    # Moving MNIST 64x64, 10 -> 10: 3 layers 128-64-64, 5x5, patch 4 (the paper's best).
    "default": dict(),
    # Fast CPU tests (0.07M params at 64x64).
    "tiny": dict(hidden=(16, 16), filter_size=3),
    # CHDL 600x800, 5 -> 1: patch 8 (75x100 grid), hidden halved (see the module docstring).
    "chdl": dict(in_frames=5, out_frames=1, height=600, width=800, patch=8, hidden=(64, 32, 32)),
}

# The paper's training setup, for docs and the bench (the trainer owns training): RMSProp, lr 1e-3,
# decay 0.9, early stopping on validation.
PAPER_TRAINING = {"optimizer": "rmsprop", "lr": 1e-3, "rmsprop_alpha": 0.9, "early_stopping": True}


class ConvLSTMCell(nn.Module):
    """One ConvLSTM layer with per-channel peepholes. ``in_channels=0``: a layer without input (the
    bottom of the forecaster)."""

    def __init__(self, in_channels: int, hidden: int, kernel: int):
        super().__init__()
        self.gates = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel, padding=kernel // 2)   # i f g o
        self.peep = nn.Parameter(torch.empty(3, hidden, 1, 1))     # W_ci, W_cf, W_co (Hadamard)

    def forward(self, x, h, c):           # x (B, c_in, h, w) or None; h, c (B, hidden, h, w)
        z = h if x is None else torch.cat([x, h], dim=1)
        gi, gf, gg, go = self.gates(z).chunk(4, dim=1)
        i = torch.sigmoid(gi + self.peep[0] * c)
        f = torch.sigmoid(gf + self.peep[1] * c)
        c = f * c + i * torch.tanh(gg)
        o = torch.sigmoid(go + self.peep[2] * c)
        return o * torch.tanh(c), c


class ConvLSTM(nn.Module):
    """ConvLSTM (Shi et al., NeurIPS 2015): stacked convolutional LSTM cells over patched frames, rolled out
    frame by frame; forward: (B, T_in, C, H, W) in [0, 1] (any T_in) -> (B, T_out, C, H, W) in [0, 1]."""

    Config = ConvLSTMConfig

    def __init__(self, config: ConvLSTMConfig):
        super().__init__()
        self.config = cfg = config
        cp = cfg.channels * cfg.patch ** 2
        below = [cp, *cfg.hidden[:-1]]
        self.encoder = nn.ModuleList([ConvLSTMCell(c_in, hd, cfg.filter_size) for c_in, hd in zip(below, cfg.hidden)])
        below_fc = [0, *cfg.hidden[:-1]]                          # the forecaster's bottom layer has no input
        self.forecaster = nn.ModuleList(
            [ConvLSTMCell(c_in, hd, cfg.filter_size) for c_in, hd in zip(below_fc, cfg.hidden)])
        self.head = nn.Conv2d(sum(cfg.hidden), cp, 1)              # [H^1..H^L] -> next frame's patch logits
        self._init_weights()

    def _init_weights(self) -> None:
        """All init in one place: Glorot convs / zero biases (rnn_common.glorot_init_ says why), forget
        biases 1 so the cell keeps its memory at the start, peepholes 0 (start as a plain ConvLSTM and
        let training decide how much the gates look at C)."""
        glorot_init_(self)
        for cell in [*self.encoder, *self.forecaster]:
            hd = cell.peep.shape[1]
            nn.init.ones_(cell.gates.bias[hd:2 * hd])
            nn.init.zeros_(cell.peep)

    def _logits(self, x: torch.Tensor, n_out: int) -> torch.Tensor:
        cfg = self.config
        B, T, C, H, W = x.shape                                    # (B, T_in, C, H, W)
        frames = to_patches(x, cfg.patch)                          # (B, T_in, C*p*p, h, w)
        h, w = frames.shape[-2:]
        hs = [frames.new_zeros(B, hd, h, w) for hd in cfg.hidden]
        cs = list(hs)
        for t in range(T):                                         # encoding network
            z = frames[:, t]
            for i, cell in enumerate(self.encoder):
                hs[i], cs[i] = cell(z, hs[i], cs[i])
                z = hs[i]
        out = []
        for _ in range(n_out):                                     # forecasting network, no input
            z = None
            for i, cell in enumerate(self.forecaster):
                hs[i], cs[i] = cell(z, hs[i], cs[i])
                z = hs[i]
            out.append(self.head(torch.cat(hs, dim=1)))            # (B, C*p*p, h, w)
        return from_patches(torch.stack(out, dim=1), cfg.patch, H, W)   # (B, n_out, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T_in, C, H, W) in [0, 1] -> (B, T_out, C, H, W) in [0, 1]; ValueError for another C."""
        check_frames(self, x, any_in_frames=True)
        return torch.sigmoid(self._logits(x, self.config.out_frames))

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0, total_steps: int = 1):
        """The paper's objective: per-pixel cross-entropy of the T_out forecast frames (or MSE).
        Deterministic (no sampling); ``step``/``total_steps`` are unused."""
        check_frames(self, x, any_in_frames=True)
        logits = self._logits(x, y.shape[1])
        mse = F.mse_loss(torch.sigmoid(logits), y)
        if self.config.loss == "mse":
            return mse, {"mse": log_value(mse)}
        bce = F.binary_cross_entropy_with_logits(logits, y)
        return bce, {"bce": log_value(bce), "mse": log_value(mse)}
