"""PredRNN-v2 (Wang et al., TPAMI 2022, "PredRNN: A Recurrent Neural Network for Spatiotemporal
Predictive Learning").

The network is PredRNN's (diffuma/models/predrnn.py: ST-LSTM stack, zig-zag spatiotemporal memory,
space-to-depth patches); v2 changes only how it is trained:

* Memory decoupling loss. Each ST-LSTM layer's two memory increments, dC = i . g (temporal memory) and
  dM = i' . g' (spatiotemporal memory), go through one 1x1 convolution W_decouple shared by all layers
  and the two are pushed apart: for every step t, layer l and channel c, the absolute cosine similarity
  between the spatial maps of W_decouple * dC and W_decouple * dM, averaged over all (t, l, c, batch).
  Without it the two memories tend to learn the same thing; W_decouple gives the loss a learnable
  basis in which to compare them, so it only constrains what the memories ADD, not the network's
  parameterisation. Objective: next-frame MSE + beta * L_decouple, beta = 0.1 on Moving MNIST.
* Reverse scheduled sampling (RSS). During the ENCODING phase (steps 1..T_in-1), a sample reads the
  true frame with probability r_eta that rises 0.5 -> 1 (exponentially between 31% and 62.5% of
  training), otherwise its own previous prediction; the forecast phase uses ordinary scheduled sampling
  with eta falling 0.5 -> 0 over the same window. Early training thus forces the encoder to look beyond
  the last input frame (long-term dynamics), and the end of training matches inference exactly.
  Schedules: rnn_common.reverse_sampling_etas (the released 80k-iteration recipe, as fractions of
  ``total_steps``: step 1 = 25k, step 2 = 50k, alpha = 2.5k).

Defaults: as PredRNN (4 x 128, 5x5, patch 4) with beta 0.1 and RSS on; training recipe in
``PAPER_TRAINING``. The CHDL 600x800 preset scales exactly as PredRNN's (patch 8, hidden 64) - see the
predrnn module docstring and docs/baselines-rnn.md.

W_decouple exists only for the loss: forward() never uses it, so inference is PredRNN's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffuma.models.predrnn import PRESETS as PREDRNN_PRESETS
from diffuma.models.predrnn import PredRNN, PredRNNConfig
from diffuma.models.registry import check_frames
from diffuma.models.rnn_common import (RSS_ALPHA, RSS_END, RSS_START, glorot_init_, log_value,
                                       reverse_sampling_etas, truth_mask)


@dataclass
class PredRNNv2Config(PredRNNConfig):
    decouple_beta: float = 0.1     # beta: weight of the memory decoupling loss (0.1 Moving MNIST, 0.01 KTH)
    reverse_sampling: bool = True  # RSS in the encoding phase; False = PredRNN's scheduled sampling
    rss_start: float = RSS_START   # fraction of training where both RSS schedules start to move
    rss_end: float = RSS_END       # fraction where r_eta = 1 and eta = 0 (= inference)
    rss_alpha: float = RSS_ALPHA   # time constant (fraction of training) of r_eta's exponential rise

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.rss_start <= self.rss_end or self.rss_alpha <= 0:
            raise ValueError("PredRNN-v2 needs 0 <= rss_start <= rss_end and rss_alpha > 0")


# Same sizes as PredRNN's presets; v2's training fields keep their defaults.
PRESETS: dict[str, dict] = {name: dict(fields) for name, fields in PREDRNN_PRESETS.items()}

# The released Moving MNIST recipe (mnist_script/predrnn_v2_mnist_train.sh), for docs and the bench.
PAPER_TRAINING = {"optimizer": "adam", "lr": 1e-4, "batch_size": 8, "iterations": 80_000}


class PredRNNv2(PredRNN):
    Config = PredRNNv2Config

    def __init__(self, config: PredRNNv2Config):
        super().__init__(config)
        hd = config.hidden
        self.decouple = nn.Conv2d(hd, hd, 1, bias=False)          # W_decouple, shared by all layers
        glorot_init_(self.decouple)                               # as every other conv (rnn_common)

    def _truth_mask(self, batch: int, n_in: int, n_out: int, step: int, total_steps: int):
        """Reverse scheduled sampling (or PredRNN's, if disabled). Returns (mask, logs)."""
        cfg = self.config
        if not cfg.reverse_sampling:
            return super()._truth_mask(batch, n_in, n_out, step, total_steps)
        r_eta, eta = reverse_sampling_etas(step, total_steps, cfg.rss_start, cfg.rss_end, cfg.rss_alpha)
        return truth_mask(batch, n_in, n_out, r_eta, eta), {"r_eta": r_eta, "eta": eta}

    def _decoupling(self, increments: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One step's decoupling term: mean over layers, batch and channels of |cos(W dC, W dM)|,
        each cosine taken over the spatial map of one channel."""
        terms = []
        for dc, dm in increments:                                 # (B, hidden, h, w) each
            a = F.normalize(self.decouple(dc).flatten(2), dim=2)  # (B, hidden, h*w), unit rows
            b = F.normalize(self.decouple(dm).flatten(2), dim=2)
            terms.append((a * b).sum(dim=2).abs().mean())
        return torch.stack(terms).mean()

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0, total_steps: int = 1):
        """PredRNN-v2's objective: next-frame MSE + beta * decoupling loss, under RSS."""
        check_frames(self, x, any_in_frames=True)
        per_step: list[torch.Tensor] = []
        mse, logs = self._objective(x, y, step, total_steps, on_step=lambda inc: per_step.append(self._decoupling(inc)))
        decouple = torch.stack(per_step).mean()
        loss = mse + self.config.decouple_beta * decouple
        return loss, {**logs, "decouple": log_value(decouple)}
