"""SimVP: a purely convolutional video predictor (Gao et al., CVPR 2022, "SimVP: Simpler yet Better
Video Prediction"), with the gated spatio-temporal attention (gSTA) translator of SimVPv2 (Tan et al.
2022, "SimVP: Towards Simple yet Powerful Spatiotemporal Predictive Learning") as the default.

Structure (all frames processed in parallel, no recurrence):

    encoder    per frame: N_S ConvSC layers (3x3 conv + GroupNorm + SiLU), every second one strided,
               so H, W shrink by 2**(N_S // 2). The first layer's output is kept as a skip.
    translator the T_in frame latents are stacked on channels (T_in*hid_S) and mapped to T_out*hid_S
               channels by N_T blocks: "gsta" (SimVPv2: large-kernel attention gated by a sigmoid +
               a depthwise-conv MLP, BatchNorm, layer scale) or "incepu" (SimVPv1: a U-Net of
               Inception blocks of group convolutions with kernels 3/5/7/11).
    decoder    per output frame: N_S ConvSC layers, every second one upsampling by PixelShuffle; the
               encoder's first-layer skip is added before the last layer; a 1x1 conv reads out C channels.

Choices where the papers leave room (also in docs/baselines-cnn.md):
* One encoder/decoder for both translators: SimVPv2's (SiLU, PixelShuffle, additive skip). SimVPv1's
  encoder differed only in LeakyReLU / transposed convs / a concatenated skip; the comparison the
  papers make is about the translator, so that is what the option switches.
* T_out != T_in: the translator simply outputs T_out*hid_S channels (SimVP predicts all frames at
  once). The skip of output frame j is the encoder skip of input frame T_in - T_out + j (the latest
  frames, aligned at the end; the last input frame is repeated when T_out > T_in). For T_in == T_out
  this is the papers' frame-for-frame skip.
* Sizes not divisible by 2**(N_S // 2) are replicate-padded at the bottom/right and cropped back.
* Stochastic depth in the gSTA translator rises linearly from 0 to ``drop_path`` (OpenSTL starts at
  0.01 even when drop_path is 0; we keep the "drop_path=0 means deterministic" reading).
* Loss: plain MSE on the predicted frames, as both papers.

The papers' Moving MNIST training recipe (not a model field; the trainer owns it) is in
``PAPER_TRAINING``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffuma.models.registry import check_frames


@dataclass
class SimVPConfig:
    in_frames: int = 10            # T_in: observed frames
    out_frames: int = 10           # T_out: predicted frames (all at once, no recurrence)
    channels: int = 1              # C: image channels
    height: int = 64               # H of the frames (any size; padded internally to the stride)
    width: int = 64                # W of the frames
    spatial_hidden: int = 64       # hid_S: channels of the per-frame encoder/decoder
    spatial_layers: int = 4        # N_S: encoder (and decoder) ConvSC layers; downsampling 2**(N_S//2)
    spatial_kernel: int = 3        # kernel of the encoder/decoder convolutions
    temporal_hidden: int = 512     # hid_T: channels inside the translator (v2 MMNIST 512; v1 used 256)
    temporal_layers: int = 8       # N_T: translator blocks (>= 2)
    translator: str = "gsta"       # "gsta" (SimVPv2 gated spatio-temporal attention) | "incepu" (SimVPv1)
    mlp_ratio: float = 8.0         # gSTA: hidden width of the depthwise-conv MLP, x channels
    attn_kernel: int = 21          # gSTA: receptive field of the decomposed large-kernel attention
    drop: float = 0.0              # gSTA: dropout inside the MLP
    drop_path: float = 0.0         # gSTA: max stochastic-depth rate (linear over blocks)
    incep_kernels: tuple[int, ...] = (3, 5, 7, 11)  # IncepU: parallel group-conv kernel sizes
    incep_groups: int = 8          # IncepU: groups of those convolutions (falls back to 1 if not divisible)

    def __post_init__(self):
        self.incep_kernels = tuple(self.incep_kernels)
        if self.translator not in ("gsta", "incepu"):
            raise ValueError(f"SimVP translator must be 'gsta' or 'incepu', got {self.translator!r}")
        if self.temporal_layers < 2:
            raise ValueError("SimVP temporal_layers (N_T) must be >= 2")
        if self.spatial_layers < 2 or self.spatial_layers % 2:
            raise ValueError("SimVP spatial_layers (N_S) must be an even number >= 2")


PRESETS: dict[str, dict] = {
    # SimVPv2 (gSTA) on Moving MNIST 64x64, 10 -> 10: hid_S 64, hid_T 512, N_S 4, N_T 8, mlp_ratio 8.
    "default": dict(),
    # The original SimVP (IncepU translator) on Moving MNIST, as its released code: hid_S 64, hid_T 256,
    # N_S 4, N_T 8, groups 4.
    "v1": dict(translator="incepu", temporal_hidden=256, incep_groups=4),
    # Fast CPU tests (~0.1M params at 64x64).
    "tiny": dict(spatial_hidden=8, spatial_layers=2, temporal_hidden=32, temporal_layers=2, mlp_ratio=2.0,
                 attn_kernel=9, incep_kernels=(3, 5), incep_groups=2),
    # CHDL 600x800, 5 -> 1 (the paper's CHDL setting). One more stride-2 stage (N_S 6: /8 -> 75x100
    # latents, like 64x64 -> 16x16 in spirit but keeping ~7.5k latent pixels per frame) and half the
    # spatial width, so full-resolution activations stay near 2 GB per sequence in fp32 (estimated from
    # tensor sizes, not measured); hid_T 256 because only 5 frames are stacked into the translator.
    # The gSTA kernel 21 then covers 168 px. See docs/baselines-cnn.md.
    "chdl": dict(in_frames=5, out_frames=1, height=600, width=800, spatial_hidden=32, spatial_layers=6,
                 temporal_hidden=256, temporal_layers=6),
}

# The papers' Moving MNIST recipes (gsta: OpenSTL's config; incepu: the SimVP paper), for reference only:
# the trainer owns training and `chdl bench` deliberately trains every model with one shared recipe.
PAPER_TRAINING = {
    "gsta": {"optimizer": "adam", "lr": 1e-3, "batch_size": 16, "schedule": "onecycle", "epochs": 200},
    "incepu": {"optimizer": "adam", "lr": 1e-2, "batch_size": 16, "schedule": "onecycle", "epochs": 2000},
}


# --------------------------------------------------------------------------------------------------
# Encoder / decoder
# --------------------------------------------------------------------------------------------------

class ConvSC(nn.Module):
    """3x3 conv (optionally stride 2, or x2 PixelShuffle upsampling) + GroupNorm(2) + SiLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, down: bool = False, up: bool = False):
        super().__init__()
        if up:
            self.conv = nn.Sequential(nn.Conv2d(c_in, c_out * 4, kernel, padding=kernel // 2), nn.PixelShuffle(2))
        else:
            self.conv = nn.Conv2d(c_in, c_out, kernel, stride=2 if down else 1, padding=kernel // 2)
        self.norm = nn.GroupNorm(2, c_out)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


def _stride_pattern(n: int) -> list[bool]:
    """[False, True, False, True, ...]: which of n layers change resolution."""
    return [i % 2 == 1 for i in range(n)]


class SpatialEncoder(nn.Module):
    def __init__(self, c_in: int, hidden: int, layers: int, kernel: int):
        super().__init__()
        downs = _stride_pattern(layers)
        self.layers = nn.ModuleList(
            [ConvSC(c_in if i == 0 else hidden, hidden, kernel, down=d) for i, d in enumerate(downs)])

    def forward(self, x):                        # (N, C, H, W)
        skip = self.layers[0](x)                 # (N, hid_S, H, W)
        z = skip
        for layer in self.layers[1:]:
            z = layer(z)                         # -> (N, hid_S, H/s, W/s)
        return z, skip


class SpatialDecoder(nn.Module):
    def __init__(self, hidden: int, c_out: int, layers: int, kernel: int):
        super().__init__()
        ups = list(reversed(_stride_pattern(layers)))
        self.layers = nn.ModuleList([ConvSC(hidden, hidden, kernel, up=u) for u in ups])
        self.readout = nn.Conv2d(hidden, c_out, 1)

    def forward(self, z, skip):                  # z (N, hid_S, H/s, W/s), skip (N, hid_S, H, W)
        for layer in self.layers[:-1]:
            z = layer(z)                         # -> (N, hid_S, H, W)
        z = self.layers[-1](z + skip)
        return self.readout(z)                   # (N, C, H, W)


# --------------------------------------------------------------------------------------------------
# Translators
# --------------------------------------------------------------------------------------------------

class LargeKernelGate(nn.Module):
    """SimVPv2's gated large-kernel attention: a K x K receptive field decomposed into a depthwise
    (2d-1)x(2d-1) conv, a depthwise dilated conv (dilation d) and a 1x1 conv giving value and gate."""

    def __init__(self, dim: int, kernel: int, dilation: int = 3):
        super().__init__()
        k0 = 2 * dilation - 1
        k1 = kernel // dilation
        k1 = k1 if k1 % 2 == 1 else k1 - 1          # odd, so "same" padding is exact
        self.local = nn.Conv2d(dim, dim, k0, padding=k0 // 2, groups=dim)
        self.dilated = nn.Conv2d(dim, dim, k1, padding=dilation * (k1 // 2), groups=dim, dilation=dilation)
        self.value_gate = nn.Conv2d(dim, 2 * dim, 1)

    def forward(self, x):
        value, gate = self.value_gate(self.dilated(self.local(x))).chunk(2, dim=1)
        return torch.sigmoid(gate) * value


class GSTABlock(nn.Module):
    """One gSTA block: x + ls1 * Attn(BN(x)); x + ls2 * MLP(BN(x)). Attn = 1x1, GELU, gated large-kernel,
    1x1, plus its own shortcut; MLP = 1x1 up, depthwise 3x3, GELU, 1x1 down. Optional 1x1 channel change."""

    def __init__(self, c_in: int, c_out: int, cfg: SimVPConfig, drop_path: float):
        super().__init__()
        hidden = int(c_in * cfg.mlp_ratio)
        self.norm1 = nn.BatchNorm2d(c_in)
        self.attn_in = nn.Conv2d(c_in, c_in, 1)
        self.attn_gate = LargeKernelGate(c_in, cfg.attn_kernel)
        self.attn_out = nn.Conv2d(c_in, c_in, 1)
        self.norm2 = nn.BatchNorm2d(c_in)
        self.mlp = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1), nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.GELU(),
            nn.Dropout(cfg.drop), nn.Conv2d(hidden, c_in, 1), nn.Dropout(cfg.drop))
        self.layer_scale1 = nn.Parameter(torch.empty(c_in))
        self.layer_scale2 = nn.Parameter(torch.empty(c_in))
        self.drop_path = drop_path
        self.reduce = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def _drop_path(self, x):
        if self.drop_path == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_path
        mask = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep)
        return x * mask / keep

    def forward(self, x):                                            # (B, c_in, h, w)
        h = self.norm1(x)
        h = self.attn_out(self.attn_gate(F.gelu(self.attn_in(h)))) + h
        x = x + self._drop_path(self.layer_scale1[:, None, None] * h)
        x = x + self._drop_path(self.layer_scale2[:, None, None] * self.mlp(self.norm2(x)))
        return self.reduce(x)                                         # (B, c_out, h, w)


class GSTATranslator(nn.Module):
    """SimVPv2's translator: N_T gSTA blocks, the first reducing T_in*hid_S -> hid_T, the last
    expanding to T_out*hid_S."""

    def __init__(self, c_in: int, c_hidden: int, c_out: int, cfg: SimVPConfig):
        super().__init__()
        n = cfg.temporal_layers
        rates = [cfg.drop_path * i / (n - 1) for i in range(n)]  # 0 -> drop_path
        widths = [c_in] + [c_hidden] * (n - 1) + [c_out]
        self.blocks = nn.ModuleList([GSTABlock(widths[i], widths[i + 1], cfg, rates[i]) for i in range(n)])

    def forward(self, z):                          # (B, T_in*hid_S, h, w)
        for block in self.blocks:
            z = block(z)
        return z                                   # (B, T_out*hid_S, h, w)


class InceptionBlock(nn.Module):
    """SimVPv1's Inception block: 1x1 conv to c_hidden, then the sum of parallel group convolutions
    (kernels 3/5/7/11), each with GroupNorm + LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_hidden: int, c_out: int, kernels: tuple[int, ...], groups: int):
        super().__init__()
        self.reduce = nn.Conv2d(c_in, c_hidden, 1)
        g = groups if c_hidden % groups == 0 and c_out % groups == 0 else 1
        self.branches = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c_hidden, c_out, k, padding=k // 2, groups=g), nn.GroupNorm(g, c_out),
                          nn.LeakyReLU(0.2)) for k in kernels])

    def forward(self, x):
        x = self.reduce(x)
        return sum(branch(x) for branch in self.branches)


class IncepUTranslator(nn.Module):
    """SimVPv1's translator (also PastNet's dynamic propagation): a U-Net of N_T Inception blocks
    down and N_T up, each up block taking the concatenated skip of its mirror."""

    def __init__(self, c_in: int, c_hidden: int, c_out: int, layers: int, kernels: tuple[int, ...], groups: int):
        super().__init__()
        half = c_hidden // 2
        self.down = nn.ModuleList([InceptionBlock(c_in if i == 0 else c_hidden, half, c_hidden, kernels, groups)
                                   for i in range(layers)])
        self.up = nn.ModuleList(
            [InceptionBlock(c_hidden, half, c_hidden, kernels, groups)]
            + [InceptionBlock(2 * c_hidden, half, c_out if i == layers - 1 else c_hidden, kernels, groups)
               for i in range(1, layers)])

    def forward(self, z):                          # (B, c_in, h, w)
        skips = []
        for i, block in enumerate(self.down):
            z = block(z)                           # (B, c_hidden, h, w)
            if i < len(self.down) - 1:
                skips.append(z)
        z = self.up[0](z)
        for block in self.up[1:]:
            z = block(torch.cat([z, skips.pop()], dim=1))
        return z                                   # (B, c_out, h, w)


# --------------------------------------------------------------------------------------------------
# Shared helpers (PastNet uses them too)
# --------------------------------------------------------------------------------------------------

def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the last two dims (bottom/right) up to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    lead = x.shape[:-3]
    x = F.pad(x.reshape(-1, *x.shape[-3:]), (0, pw, 0, ph), mode="replicate")
    return x.reshape(*lead, *x.shape[-3:])


def align_frames(x: torch.Tensor, t_out: int) -> torch.Tensor:
    """(B, T_in, ...) -> (B, T_out, ...): the last T_out frames, repeating the last one if T_out > T_in."""
    t_in = x.shape[1]
    idx = [max(0, min(t_in - 1, t_in - t_out + j)) for j in range(t_out)]
    return x[:, idx]


def log_value(t: torch.Tensor) -> float:
    """A scalar tensor as a float for training_loss logs (NaN on the meta device, where FLOPs are counted)."""
    return float("nan") if t.is_meta else float(t.detach())


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------

class SimVP(nn.Module):
    """SimVP (Gao et al., CVPR 2022; gSTA: SimVPv2, Tan et al. 2022): a CNN encoder, a translator over the
    T_in x hidden channels stacked, and a decoder, all frames at once; forward: (B, T_in, C, H, W) in [0, 1] ->
    (B, T_out, C, H, W)."""

    Config = SimVPConfig

    def __init__(self, config: SimVPConfig):
        super().__init__()
        self.config = cfg = config
        self.stride = 2 ** (cfg.spatial_layers // 2)
        self.encoder = SpatialEncoder(cfg.channels, cfg.spatial_hidden, cfg.spatial_layers, cfg.spatial_kernel)
        c_in, c_out = cfg.in_frames * cfg.spatial_hidden, cfg.out_frames * cfg.spatial_hidden
        if cfg.translator == "gsta":
            self.translator = GSTATranslator(c_in, cfg.temporal_hidden, c_out, cfg)
        else:
            self.translator = IncepUTranslator(c_in, cfg.temporal_hidden, c_out, cfg.temporal_layers,
                                               cfg.incep_kernels, cfg.incep_groups)
        self.decoder = SpatialDecoder(cfg.spatial_hidden, cfg.channels, cfg.spatial_layers, cfg.spatial_kernel)
        self._init_weights()

    def _init_weights(self) -> None:
        """All init in one place, following the two papers' released models.
        * Encoder/decoder ConvSC convs: truncated normal(0.02), zero bias (SimVPv2). A GroupNorm follows each,
          so the scale does not change the forward pass; small weights keep the first updates gentle.
        * gSTA block convs: He-normal on fan-out, zero bias (SimVPv2/VAN) -- keeps the GELU stack's activations
          O(1); layer scales 1e-2 so every block starts close to the identity and the 8-block stack trains.
        * Everything else (IncepU convs, the 1x1 readout): PyTorch's default fan-in init (SimVPv1 used it),
          which starts the readout at outputs of O(0.1-1), the range of [0, 1] frames.
        * Norms: identity."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.reset_parameters()
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ConvSC):
                for conv in m.modules():
                    if isinstance(conv, nn.Conv2d):
                        nn.init.trunc_normal_(conv.weight, std=0.02)
                        nn.init.zeros_(conv.bias)
            elif isinstance(m, GSTABlock):
                for conv in m.modules():
                    if isinstance(conv, nn.Conv2d) and conv is not m.reduce:
                        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
                        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
                        nn.init.zeros_(conv.bias)
                nn.init.constant_(m.layer_scale1, 1e-2)
                nn.init.constant_(m.layer_scale2, 1e-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T_in, C, H, W) in [0, 1] -> (B, T_out, C, H, W); ValueError for another T_in or C."""
        check_frames(self, x)
        cfg = self.config
        B, T, C, H, W = x.shape                                  # (B, T_in, C, H, W) in [0, 1]
        xp = pad_to_multiple(x, self.stride)                     # (B, T_in, C, Hp, Wp)
        Hp, Wp = xp.shape[-2:]
        z, skip = self.encoder(xp.reshape(B * T, C, Hp, Wp))     # (B*T_in, hid_S, h, w), (B*T_in, hid_S, Hp, Wp)
        _, D, h, w = z.shape
        z = self.translator(z.reshape(B, T * D, h, w))           # (B, T_out*hid_S, h, w)
        z = z.reshape(B * cfg.out_frames, D, h, w)
        skip = align_frames(skip.reshape(B, T, D, Hp, Wp), cfg.out_frames)
        y = self.decoder(z, skip.reshape(B * cfg.out_frames, D, Hp, Wp))  # (B*T_out, C, Hp, Wp)
        return y.reshape(B, cfg.out_frames, C, Hp, Wp)[..., :H, :W]       # (B, T_out, C, H, W)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0, total_steps: int = 1):
        """SimVP's objective: MSE between the predicted and the true future frames."""
        mse = F.mse_loss(self(x), y)
        return mse, {"mse": log_value(mse)}
