"""A tiny stand-in model honouring Contract 4 (Config, PRESETS, forward, training_loss), for fast trainer tests
that must not depend on any real model's speed or shape rules."""

import os
import time
from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F


@dataclass
class StandInConfig:
    in_frames: int = 5  # input frames
    out_frames: int = 5  # predicted frames
    channels: int = 1  # image channels
    height: int = 16  # frame height
    width: int = 16  # frame width
    hidden: int = 8  # conv width
    dropout: float = 0.1  # draws from torch's RNG, so resume tests check the RNG state is restored
    nan_at_step: int = -1  # training_loss returns NaN at this step (tests the divergence stop)


PRESETS = {"tiny": {}, "default": {"hidden": 16}}


class StandIn(nn.Module):
    Config = StandInConfig

    def __init__(self, config: StandInConfig):
        super().__init__()
        self.config = config
        c = config
        self.inp = nn.Conv2d(c.in_frames * c.channels, c.hidden, 3, padding=1)
        self.norm = nn.GroupNorm(1, c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Conv2d(c.hidden, c.out_frames * c.channels, 3, padding=1)

    def forward(self, x):  # (B, T_in, C, H, W) -> (B, T_out, C, H, W)
        b, t, c, h, w = x.shape
        z = self.drop(F.gelu(self.norm(self.inp(x.reshape(b, t * c, h, w)))))
        return x[:, -1:] + self.out(z).reshape(b, self.config.out_frames, c, h, w)

    def training_loss(self, x, y, step: int = 0, total_steps: int = 1):
        time.sleep(float(os.environ.get("STANDIN_STEP_SLEEP", 0)))  # a run slow enough to signal or lock mid-run
        pred = self(x)
        mse = F.mse_loss(pred, y)
        l1 = F.l1_loss(pred, y)
        loss = mse + 0.1 * l1
        if step == self.config.nan_at_step:
            loss = loss * float("nan")
        return loss, {"mse": float(mse.detach()), "l1": float(l1.detach())}
