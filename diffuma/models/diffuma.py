"""DIFFUMA: a bidirectional-Mamba video predictor with a DiT diffusion detail path
(paper section 4; DiT-style single file: config, modules, init, forward, losses).

    x (B, T_in, C, H, W) in [0, 1]
      |-- Mamba module (4.2) -------------------------------------------------------------
      |   encoder      per frame: stem conv + len(enc_channels) stride-2 convs -> (B, T_in, h, w, D)
      |   Mamba blocks bidirectional (eq. 3-4), scan order per block from `scan_pattern`
      |   time map     Linear over the time axis T_in -> T_out (per latent position and channel)
      |   decoder      per frame: transposed convs -> residual [+ flow]
      |   prior        P_k = warp(last frame, k * g_k * v + flow_k) + residual_k, v = the inputs' global
      |                motion (diffuma.motion), g_k a learned gain: the preliminary prediction P
      |-- Diffusion module (4.3) ---------------------------------------------------------
      |   DiT over patches of P (default) or of the input frames (paper), all frames' channels of a
      |   patch in one token; adaLN-Zero conditioned on c = emb(t) + MLP(pool(Mamba features)) (eq. 5-6)
      |   training: the noise of its noised input (eq. 8); inference: t = 0, its output is a residual
      '-- final = P + DiT(P, t=0)    [paper reading: P + R(DiT(x, t=0)), R a time map T_in -> T_out] (eq. 7)

Choices where the paper is open (measured in docs/model-quality.md, explained in docs/model.md; the
`paper` / `paper-tiny` presets keep the literal reading so tables can show both):
* `prior`: the decoder predicts a correction of the last frame moved on by the global motion measured in
  the inputs (sub-pixel phase correlation), not the frame itself; lane video is mostly a stage
  translation. `learned_flow` adds a per-pixel flow for local motion. Zero-initialised decoder head and
  adaLN-Zero DiT: the first prediction equals the prior exactly (the constant-motion baseline).
* `dit_input="prelim"`: the DiT denoises (a detached, noised copy of) P for L_diff and refines the clean
  P at t = 0 for eq. 7 -- the paper noises the input frames ("input").
* `l1_weight` (lambda, eq. 10) 10: at 1 the noise MSE outweighs the L1 of the prediction 10-50x.
* `time_map_init="last"`: every output frame starts from the last input's features ("aligned": output
  k reads input k, a lag of T_in frames).
* What the SSM scans (`scan_pattern`, cycled over the blocks): "time" = one sequence of length T_in
  per latent position; "spacetime" = all T_in*h*w latent tokens in (t, row, col) raster order;
  "space" = h*w tokens per frame. Being bidirectional, each scan also reads its reverse.
* Noising follows DDPM (`beta_schedule` linear or cosine, `diffusion_steps` 1000); training timesteps are
  drawn from {1..T}; t = 0 is reserved for "no noise", the residual mode used at inference (eq. 7).
* L1 (eq. 9) is taken on the inference-time prediction: the DiT runs on [noised ; clean at t = 0] in one
  batched pass, so L1 trains exactly what forward() returns. loss = L_diff + l1_weight * L1 (eq. 10).
* `cond_tokens` (beyond the paper) adds the time-pooled Mamba latent, resampled to the patch grid, to
  the DiT tokens.
* Sizes: frames are replicate-padded to a multiple of the encoder stride and cropped back; the DiT pads
  to a multiple of the patch size (timm PatchEmbed dynamic_img_pad) and crops back; its learnable
  positional embedding is built for (height, width) and resampled for other sizes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, Mlp, PatchEmbed, resample_abs_pos_embed

from diffuma.models.registry import check_frames
from diffuma.models.ssm import BACKENDS, MambaBlock, SSMBranch
from diffuma.motion import estimate_velocity, extrapolated_shifts, translate, warp

SCAN_ORDERS = ("time", "space", "spacetime")


@dataclass
class DIFFUMAConfig:
    # --- data
    in_frames: int = 5                 # T_in, observed frames
    out_frames: int = 5                # T_out, predicted frames
    channels: int = 1                  # C (1 = grayscale microscope / one WeatherBench variable)
    height: int = 64                   # H the positional embedding is built for (others are resampled)
    width: int = 64                    # W
    # --- Mamba module (4.2)
    enc_channels: tuple[int, ...] = (32, 64, 128)  # widths of the stride-2 encoder stages: downsampling 2**len
    mamba_dim: int = 128               # D, latent feature size the Mamba blocks work in
    mamba_depth: int = 4               # number of bidirectional Mamba blocks
    d_state: int = 16                  # N, SSM state size (fused kernel: <= 256)
    d_conv: int = 4                    # Conv1d width before each SSM (fused kernel: 2..4)
    expand: int = 2                    # SSM inner width = expand * mamba_dim
    scan_pattern: str = "time,spacetime"  # comma list of "time"|"space"|"spacetime", cycled over blocks
    scan_backend: str = "auto"         # "auto"|"torch"|"fused"|"triton"; env CHDL_SCAN_BACKEND overrides
    prior: str = "motion"              # what the preliminary prediction is a residual against: "none"
                                       # (paper: decoder output alone) | "last" (last input frame) |
                                       # "motion" (last frame moved by the inputs' global motion, diffuma.motion)
    learned_flow: bool = True          # decoder also outputs a per-pixel flow (px) that warps the prior's
                                       # source frame (local motion on top of the global one); needs a prior
    prior_gate: bool = False           # decoder also outputs a per-pixel gain g = 2*sigmoid(h) (1 at init) on
                                       # the prior: P = g * prior + residual, so it can drop the prior where
                                       # objects leave (a linear residual cannot erase selectively); needs a prior
    time_map: str = "shared"           # T_in -> T_out latent map: "shared" (one weight per (out, in) frame pair,
                                       # all channels alike) | "full" (a Linear over a position's whole (T, D)
                                       # history: output frames can read different channels)
    up_kernel: int = 4                 # kernel of the decoder's stride-2 transposed convs below full resolution
                                       # (even; padding (k-2)/2 keeps an exact 2x); the last one, to full
                                       # resolution, keeps 4 (docs/model-quality.md, "Decoder kernel")
    time_map_init: str = "last"        # T_in -> T_out latent map at init: "last" (every output reads the last
                                       # input's features) | "aligned" (output k reads input k, end-aligned)
    # --- Diffusion module (4.3)
    patch_size: int = 4                # DiT patch size (pixels)
    dit_dim: int = 384                 # DiT hidden size
    dit_depth: int = 12                # DiT blocks (paper: 12)
    dit_heads: int = 6                 # attention heads
    mlp_ratio: float = 4.0             # DiT MLP hidden = mlp_ratio * dit_dim
    cond_tokens: bool = True           # also add pooled Mamba latent to patch tokens (beyond paper)
    dit_input: str = "prelim"          # what the DiT denoises: "input" (paper: the noised input frames; its
                                       # t=0 output is mapped T_in -> T_out) | "prelim" (the preliminary
                                       # prediction P: noised for L_diff, clean at t=0 for the eq. 7 residual)
    diffusion_steps: int = 1000        # T of the DDPM schedule
    beta_schedule: str = "linear"      # "linear" (DDPM, 1e-4..0.02 at T=1000) | "cosine" (Nichol&Dhariwal)
    # --- objective (4.4)
    l1_weight: float = 10.0            # lambda in eq. 10: L = L_diff + lambda * L_rec(final, target)
    recon_loss: str = "l1"             # L_rec: "l1" (paper eq. 9) | "mse" (the metric the tables rank by)

    def scan_orders(self) -> list[str]:
        """``scan_pattern`` as a list, one scan order per Mamba block (cycled)."""
        return [s.strip() for s in self.scan_pattern.split(",") if s.strip()]

    def __post_init__(self):
        choices = {"prior": ("none", "last", "motion"), "time_map_init": ("last", "aligned"), "time_map": ("shared", "full"),
                   "dit_input": ("input", "prelim"), "recon_loss": ("l1", "mse"), "beta_schedule": ("linear", "cosine"),
                   "scan_backend": BACKENDS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        bad = [s for s in self.scan_orders() if s not in SCAN_ORDERS]
        if bad or not self.scan_orders():
            raise ValueError(f"scan_pattern must be a comma list of {', '.join(SCAN_ORDERS)}, got {self.scan_pattern!r}")
        if self.learned_flow and self.prior == "none":
            raise ValueError("learned_flow needs a prior ('last' or 'motion') whose source frame it warps")
        if self.prior_gate and self.prior == "none":
            raise ValueError("prior_gate needs a prior ('last' or 'motion') to gate")
        if self.up_kernel < 2 or self.up_kernel % 2:
            raise ValueError(f"up_kernel must be an even number >= 2 (an exact 2x upsampling), got {self.up_kernel}")
        for name in ("diffusion_steps", "dit_heads", "dit_depth", "dit_dim", "patch_size", "mamba_dim", "mamba_depth",
                     "d_state", "expand", "d_conv"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.enc_channels or min(self.enc_channels) < 1:
            raise ValueError(f"enc_channels must be one or more widths >= 1, got {list(self.enc_channels)}")
        if self.dit_dim % self.dit_heads:
            raise ValueError(f"dit_dim ({self.dit_dim}) must be divisible by dit_heads ({self.dit_heads})")
        if self.dit_dim % 4:  # the 2-D sin-cos positional embedding gives a quarter of the channels to each sin/cos of x/y
            raise ValueError(f"dit_dim must be a multiple of 4 (the 2-D sin-cos position embedding), got {self.dit_dim}")
        if not int(self.mlp_ratio * self.dit_dim) >= 1:  # (also refuses NaN)
            raise ValueError(f"mlp_ratio must give the DiT MLP at least one hidden unit (mlp_ratio x dit_dim >= 1), "
                             f"got {self.mlp_ratio}")
        if self.beta_schedule == "linear" and self.diffusion_steps <= 20:  # betas 0.1/T .. 20/T: beyond 1 is NaN noise
            raise ValueError(f"diffusion_steps must be > 20 with the linear beta_schedule (its betas reach 20 / "
                             f"diffusion_steps), got {self.diffusion_steps}; use beta_schedule cosine for fewer steps")
        if not self.l1_weight >= 0:                       # also refuses NaN
            raise ValueError(f"l1_weight must be >= 0 (a negative weight rewards reconstruction error), got {self.l1_weight}")


# The literal reading of the paper where DIFFUMAConfig's defaults are chosen by ablation
# (docs/model-quality.md): the decoder alone makes the preliminary prediction, the DiT denoises the
# input frames, lambda = 1, no token condition, output frame k reads input frame k.
PAPER = dict(prior="none", learned_flow=False, time_map_init="aligned", cond_tokens=False, dit_input="input",
             l1_weight=1.0)
# tiny: expand 1 and N = 4 (not Mamba's 2 and 16) -- the pure-PyTorch scan materialises (L, B, expand*D, N)
# tensors, and at equal steps these cost nothing measurable (docs/model-quality.md, "cheaper tiny") while
# a training step is ~20 % faster on CPU.
TINY = dict(enc_channels=(8, 16, 32), mamba_dim=32, mamba_depth=2, d_state=4, expand=1, patch_size=8,
            dit_dim=64, dit_depth=2, dit_heads=2)

# tiny for scenes of objects that move on their own with no global motion (Moving MNIST), chosen by the
# Moving MNIST ablation (docs/model-quality.md, third round): the motion prior only costs there (no global
# motion to extrapolate), so the decoder draws the frame itself as the paper's does; an MSE reconstruction
# (the L1 optimum, the per-pixel median, puts sharp digits where they are uncertain) weighted 100 (MSE is
# ~10x smaller than L1); the full time map lets each predicted frame read its own channels; the second
# block scans each frame's 8x8 latent ("space", 64 steps) instead of the whole clip ("spacetime", 640 steps):
# the same MSE at 300 and at 1500 equal steps, ~6 % less CPU per step (docs/model-quality.md, Moving MNIST);
# kernel-8 transposed convs below full resolution: the decoder draws the digits from a wider view of the 8x8
# latent (-2.6 % MSE at 300 equal steps, two seeds, for no measurable cost; "Decoder kernel").
TINY_MMNIST = {**TINY, **dict(prior="none", learned_flow=False, recon_loss="mse", l1_weight=100.0, time_map="full",
                              scan_pattern="time,space", up_kernel=8)}

# Presets: field overrides of DIFFUMAConfig. "default" == "base". "paper*" = the literal reading.
PRESETS: dict[str, dict] = {
    "tiny": TINY,
    "tiny-mmnist": TINY_MMNIST,
    "paper-tiny": {**TINY, **PAPER},
    "paper": dict(PAPER),
    "small": dict(enc_channels=(32, 64), mamba_dim=64, mamba_depth=4, patch_size=4,
                  dit_dim=256, dit_depth=8, dit_heads=4),
    "base": dict(),
    "default": dict(),
    # full-resolution CHDL (paper Table 1: 1x600x800, 5 -> 1): stride 16 -> 38x50 latent, 16px patches
    "chdl-full": dict(height=600, width=800, in_frames=5, out_frames=1, enc_channels=(32, 64, 128, 128),
                      mamba_dim=128, mamba_depth=4, patch_size=16, dit_dim=384, dit_depth=12, dit_heads=6),
}


# ----------------------------------------------------------------------------- diffusion pieces

def make_beta_schedule(kind: str, steps: int) -> torch.Tensor:
    """DDPM betas (steps,) in float64."""
    if kind == "linear":
        scale = 1000.0 / steps                        # keeps the T=1000 endpoints' meaning for other T
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if kind == "cosine":
        s = 0.008
        f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"beta_schedule must be 'linear' or 'cosine', got {kind!r}")


def q_sample(x0, t, noise, alpha_bar):
    """Forward noising x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps.  x0, noise: (B, ...);
    t: (B,) integer in 0..T; alpha_bar: (T+1,) with alpha_bar[0] = 1 (t = 0: clean)."""
    ab = alpha_bar[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def diffusion_loss(eps_pred, eps):
    """L_diff, eq. 8: MSE between predicted and true noise."""
    return F.mse_loss(eps_pred, eps)


def reconstruction_loss(pred, target, kind: str = "l1"):
    """Eq. 9: mean absolute error of the final prediction ("l1", the paper), or its mean squared error
    ("mse": the L1 optimum is the per-pixel median, sharp but misplaced where the future is uncertain;
    the MSE optimum is the mean, which is what MSE-ranked tables reward)."""
    return F.l1_loss(pred, target) if kind == "l1" else F.mse_loss(pred, target)


def total_loss(loss_diff, loss_rec, l1_weight):
    """Eq. 10."""
    return loss_diff + l1_weight * loss_rec


# ----------------------------------------------------------------------------- modules

def _gn(ch):
    return nn.GroupNorm(math.gcd(8, ch), ch)


class SpatialEncoder(nn.Module):
    """Per-frame 2D conv encoder (eq. 2). (N, C, H, W) -> (N, D, H/s, W/s), s = 2**len(chs)."""

    def __init__(self, c_in, chs, d_out):
        super().__init__()
        layers = [nn.Conv2d(c_in, chs[0], 3, padding=1), _gn(chs[0]), nn.SiLU()]
        prev = chs[0]
        for ch in chs:
            layers += [nn.Conv2d(prev, ch, 3, stride=2, padding=1), _gn(ch), nn.SiLU()]
            prev = ch
        layers.append(nn.Conv2d(prev, d_out, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class SpatialDecoder(nn.Module):
    """Per-frame transposed-conv decoder (paper 4.2: "several transposed convolutional layers"), mirror of
    the encoder: stride-2 transposed convs (padding (k-2)/2: exactly 2x), kernel `k` below full resolution
    (a wider view of the latent where shapes are drawn), 4 for the last one (it places pixels; a larger kernel
    there cost ~10 % of a step for nothing measurable).
    (N, D, h, w) [+ side (N, c_side, h*s, w*s) joined before the last conv] -> (N, c_out, h*s, w*s)."""

    def __init__(self, d_in, chs, c_out, c_side=0, k=4):
        super().__init__()
        rev = list(chs)[::-1]
        layers = [nn.Conv2d(d_in, rev[0], 1), _gn(rev[0]), nn.SiLU()]
        for i, ch in enumerate(rev):
            last = i + 1 == len(rev)
            nxt = rev[-1] if last else rev[i + 1]
            kk = 4 if last else k
            layers += [nn.ConvTranspose2d(ch, nxt, kk, stride=2, padding=(kk - 2) // 2), _gn(nxt), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(rev[-1] + c_side, c_out, 3, padding=1)

    def forward(self, z, side=None):
        f = self.body(z)                                                          # (N, chs[0], h*s, w*s)
        f = f if side is None else torch.cat([f, side], dim=1)                    # (N, chs[0]+c_side, H, W)
        # The head in channels-last (NHWC) memory: oneDNN's full-resolution 3x3 conv to a few output channels
        # is 1.8-2.9x faster forward + backward there on CPU than in NCHW (9 -> 3 channels, 20 frames of
        # 120x160: 85 -> 30 ms), ~10 % of a `tiny` training step; the other layers are slower in NHWC, so they
        # stay NCHW. Same weights, same result up to float summation order (docs/model-quality.md, step cost).
        out = self.head(f.contiguous(memory_format=torch.channels_last))
        return out.contiguous()                                                   # (N, c_out, H, W)


class TimeMap(nn.Module):
    """Learned linear map over the time axis, T_in -> T_out: (B, T_in, ...) -> (B, T_out, ...).
    With `dim` (the size of the last axis) it maps the whole (T_in, dim) history of a position to
    (T_out, dim), mixing channels across frames; without, one T_in -> T_out weight shared by all channels."""

    def __init__(self, t_in, t_out, dim=None):
        super().__init__()
        self.t_out, self.dim = t_out, dim
        self.proj = nn.Linear(t_in * (dim or 1), t_out * (dim or 1))

    @torch.no_grad()
    def init_selection(self, sources):
        """Output frame j copies input frame sources[j] (all channels), no bias."""
        self.proj.weight.zero_()
        self.proj.bias.zero_()
        d = self.dim or 1
        eye = torch.eye(d)
        for j, i in enumerate(sources):
            self.proj.weight[j * d:(j + 1) * d, i * d:(i + 1) * d] = eye

    def forward(self, x):
        if self.dim is None:
            return self.proj(x.movedim(1, -1)).movedim(-1, 1)
        B, T, *mid, D = x.shape                                                  # (B, T_in, ..., D)
        h = self.proj(x.movedim(1, -2).reshape(B, *mid, T * D))                  # (B, ..., T_out*D)
        return h.reshape(B, *mid, self.t_out, D).movedim(-2, 1)                  # (B, T_out, ..., D)


class TimestepEmbedder(nn.Module):
    """DiT's timestep embedding: sinusoidal features -> MLP. t: (B,) -> (B, dim)."""

    def __init__(self, dim, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]                                   # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero (eq. 5-6): x += g1*MHSA(mod(LN(x))); x += g2*MLP(mod(LN(x)))."""

    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads=heads, qkv_bias=True)       # fused SDPA
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        # x: (B, L, dim), c: (B, dim)
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), sh1, sc1))
        x = x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sh2, sc2))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + linear to patch pixels. (B, L, dim) -> (B, L, p*p*out_ch)."""

    def __init__(self, dim, p, out_ch):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, p * p * out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


def sincos_pos_embed_2d(dim, gh, gw):
    """Fixed 2D sin-cos embedding (gh*gw, dim), used to initialise the learnable one."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        out = pos.reshape(-1, 1).double() * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)
    gy, gx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    return torch.cat([one_d(dim // 2, gy), one_d(dim // 2, gx)], dim=1).float()


# ----------------------------------------------------------------------------- the model

class DIFFUMA(nn.Module):
    """DIFFUMA (Xie et al.): a bidirectional-Mamba path predicts the T_out frames from the T_in observed ones, and a
    DiT-style diffusion path, conditioned on the Mamba features, adds a residual of fine detail (eqs. 4-10; what
    follows the paper and what was chosen where it is vague: docs/model.md). forward: (B, T_in, C, H, W) in
    [0, 1] -> (B, T_out, C, H, W); training_loss(x, y) -> eq. 10."""

    Config = DIFFUMAConfig

    def __init__(self, config: DIFFUMAConfig):
        super().__init__()
        cfg = self.config = config
        self.scan_orders = cfg.scan_orders()
        T_in, T_out, C = cfg.in_frames, cfg.out_frames, cfg.channels
        self.stride = 2 ** len(cfg.enc_channels)
        # Mamba module
        self.encoder = SpatialEncoder(C, cfg.enc_channels, cfg.mamba_dim)
        self.mamba_blocks = nn.ModuleList(MambaBlock(cfg.mamba_dim, cfg.d_state, cfg.d_conv, cfg.expand)
                                          for _ in range(cfg.mamba_depth))
        self.mamba_norm = nn.LayerNorm(cfg.mamba_dim)
        self.latent_time = TimeMap(T_in, T_out, cfg.mamba_dim if cfg.time_map == "full" else None)
        extra_ch = (2 if cfg.learned_flow else 0) + (C if cfg.prior_gate else 0)   # flow (dy, dx), gate
        self.decoder = SpatialDecoder(cfg.mamba_dim, cfg.enc_channels, C + extra_ch,
                                      c_side=C if cfg.prior != "none" else 0, k=cfg.up_kernel)
        # per-output-frame gain on the extrapolated global motion (1 at init: the prior is constant motion)
        self.motion_gain = nn.Parameter(torch.ones(T_out)) if cfg.prior == "motion" else None
        # Diffusion module
        p = cfg.patch_size
        self.grid = (math.ceil(cfg.height / p), math.ceil(cfg.width / p))
        T_dit = T_in if cfg.dit_input == "input" else T_out                    # frames the DiT sees
        self.x_embedder = PatchEmbed(img_size=(cfg.height, cfg.width), patch_size=p, in_chans=T_dit * C,
                                     embed_dim=cfg.dit_dim, strict_img_size=False, dynamic_img_pad=True)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], cfg.dit_dim))
        self.t_embedder = TimestepEmbedder(cfg.dit_dim)
        self.cond_embedder = nn.Sequential(nn.Linear(cfg.mamba_dim, cfg.dit_dim), nn.SiLU(),
                                           nn.Linear(cfg.dit_dim, cfg.dit_dim))
        self.token_cond = nn.Linear(cfg.mamba_dim, cfg.dit_dim) if cfg.cond_tokens else None
        self.dit_blocks = nn.ModuleList(DiTBlock(cfg.dit_dim, cfg.dit_heads, cfg.mlp_ratio)
                                        for _ in range(cfg.dit_depth))
        self.final_layer = FinalLayer(cfg.dit_dim, p, T_dit * C)
        self.residual_time = TimeMap(T_in, T_out) if cfg.dit_input == "input" else None
        # noise schedule; alpha_bar[0] = 1 is the clean t = 0 used at inference
        alpha_bar = torch.cumprod(1 - make_beta_schedule(cfg.beta_schedule, cfg.diffusion_steps), 0)
        self.register_buffer("alpha_bar", torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar]).float(),
                             persistent=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        """All initialisation, in an order where the specific rules win over the generic one.
        1. Generic (DiT): every Linear xavier-uniform with zero bias; norms identity; convs keep
           PyTorch's default (kaiming-uniform, via their reset_parameters).
        2. Patch embedding as a Linear (xavier on the flattened kernel), timestep MLP N(0, 0.02),
           positional embedding starts from 2D sin-cos (DiT's fixed one) but stays learnable (paper).
        3. Mamba's SSM init (SSMBranch.reset_parameters): A_log = log(1..N), D = 1, dt bias =
           softplus^-1(logUniform[1e-3, 1e-1]), small dt_proj weight. Step 1 overwrote x_proj/dt_proj
           with xavier; this restores the values the selective scan is designed to start from.
        4. adaLN-Zero (DiT): every modulation Linear and the final output Linear are zero, so each
           DiT block starts as the identity and the DiT output is exactly 0.
        5. The decoder's last conv is zero too, so the decoder's residual (and learned flow) start at 0:
           with 4 and 5 the first prediction equals the prior exactly (the motion-extrapolated last frame,
           the last frame, or 0 for prior="none") -- training starts from the baseline it must beat
           instead of from the baseline plus a random offset.
        6. Latent time map T_in -> T_out: "last" = every output frame reads the last input frame's
           features (the freshest state; the Mamba blocks have already mixed the history into it),
           "aligned" = output k reads input T_in - T_out + k (identity when T_in == T_out). The
           residual time map (dit_input="input") is always aligned: it maps per-input-frame residuals.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.reset_parameters()
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        self.pos_embed.copy_(sincos_pos_embed_2d(self.config.dit_dim, *self.grid).unsqueeze(0))
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, SSMBranch):
                m.reset_parameters()
        for m in [*self.dit_blocks, self.final_layer]:
            nn.init.zeros_(m.adaLN_modulation[-1].weight)
            nn.init.zeros_(m.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        nn.init.zeros_(self.decoder.head.weight)
        nn.init.zeros_(self.decoder.head.bias)
        T_in, T_out = self.config.in_frames, self.config.out_frames
        for tm, how in ((self.latent_time, self.config.time_map_init), (self.residual_time, "aligned")):
            if tm is not None:
                tm.init_selection([T_in - 1 if how == "last" else max(0, T_in - T_out + j) for j in range(T_out)])

    def no_weight_decay(self) -> set[str]:
        """The weight-decay policy (used by the trainer's optimizer groups): names of the parameters that
        are not decayed -- the SSM's A_log and D, the dt bias, the positional embedding, the motion gain,
        every norm weight and every bias (all vectors). Decay would pull A towards -1 (eroding the S4D
        init's spread of time scales) and the positional code and gains towards 0."""
        return {n for n, p in self.named_parameters() if p.ndim < 2 or n.endswith(("A_log", "pos_embed"))}

    # --- Mamba module
    def _scan(self, block, z, order):
        # z: (B, T, h, w, D) -> same shape, mixed along `order`
        B, T, h, w, D = z.shape
        backend = self.config.scan_backend
        if order == "time":        # one length-T sequence per latent position
            s = block(z.permute(0, 2, 3, 1, 4).reshape(B * h * w, T, D), backend)
            return s.reshape(B, h, w, T, D).permute(0, 3, 1, 2, 4)
        if order == "space":       # one length-h*w raster sequence per frame
            return block(z.reshape(B * T, h * w, D), backend).reshape(B, T, h, w, D)
        return block(z.reshape(B, T * h * w, D), backend).reshape(B, T, h, w, D)   # spacetime

    def mamba_mix(self, z):
        """The stack of bidirectional Mamba blocks: (B, T, h, w, D) -> (B, T, h, w, D)."""
        for i, block in enumerate(self.mamba_blocks):
            z = self._scan(block, z, self.scan_orders[i % len(self.scan_orders)])
        return self.mamba_norm(z)

    def prior_shifts(self, x):
        """Global motion of every predicted frame: (B, T_out, 2) (dy, dx) px = k * gain_k * v, v the
        inputs' per-step motion (diffuma.motion.estimate_velocity); zeros for prior="last"."""
        if self.motion_gain is None:
            return x.new_zeros(x.shape[0], self.config.out_frames, 2)
        return extrapolated_shifts(estimate_velocity(x), self.config.out_frames, self.motion_gain)

    def mamba_path(self, x):
        """x (B, T_in, C, H, W) in [0,1] -> (features (B, T_in, h, w, D), preliminary (B, T_out, C, H, W)).
        With a prior: P_k = warp(last frame, shift_k + flow_k) + residual_k; without: P_k = residual_k."""
        B, T, C, H, W = x.shape
        s = self.stride
        ph, pw = (-H) % s, (-W) % s
        f = F.pad(x.reshape(B * T, C, H, W), (0, pw, 0, ph), mode="replicate")   # (B*T, C, H+ph, W+pw)
        z = self.encoder(f)                                                        # (B*T, D, h, w)
        _, D, h, w = z.shape
        z = z.permute(0, 2, 3, 1).reshape(B, T, h, w, D).contiguous()              # (B, T, h, w, D)
        z = self.mamba_mix(z)                                                      # (B, T_in, h, w, D)
        zo = self.latent_time(z)                                                   # (B, T_out, h, w, D)
        To = zo.shape[1]
        zo = zo.reshape(B * To, h, w, D).permute(0, 3, 1, 2)                       # (B*T_out, D, h, w)
        if self.config.prior == "none":
            dec = self.decoder(zo)                                                 # (B*T_out, C, H+ph, W+pw)
            return z, dec[..., :H, :W].reshape(B, To, C, H, W)
        last = x[:, -1]                                                            # (B, C, H, W)
        shifts = self.prior_shifts(x)                                              # (B, T_out, 2)
        base = translate(last, shifts)                                             # (B, T_out, C, H, W)
        side = F.pad(base.reshape(B * To, C, H, W), (0, pw, 0, ph), mode="replicate")
        dec = self.decoder(zo, side)[..., :H, :W].reshape(B, To, -1, H, W)         # (B, T_out, C[+2][+C], H, W)
        resid = dec[:, :, :C]
        if self.config.learned_flow:
            flow = dec[:, :, C:C + 2] + shifts[..., None, None]                    # (B, T_out, 2, H, W) px
            base = warp(last, flow)
        if self.config.prior_gate:
            base = 2 * torch.sigmoid(dec[:, :, -C:]) * base                        # gain 1 at init
        return z, base + resid

    def condition(self, z):
        """Mamba features (B, T_in, h, w, D) -> (global condition (B, dit_dim), token features (B, h, w, D):
        the time-mean of z, projected onto the DiT's tokens in ``denoise``; or None) for the DiT (the paper's
        second condition c_m)."""
        c = self.cond_embedder(z.mean(dim=(1, 2, 3)))                             # (B, dit_dim)
        if self.token_cond is None:
            return c, None
        return c, z.mean(dim=1)                                                    # (B, h, w, D)

    # --- Diffusion module
    def denoise(self, x_t, t, c, z_tok):
        """DiT: noised frames x_t (B, T, C, H, W) in [-1,1]-scale, t (B,), c (B, dit_dim),
        z_tok (B, h, w, D) or None -> eps_hat (B, T, C, H, W). T is T_out with ``dit_input="prelim"`` (the default:
        the preliminary prediction is denoised), T_in with ``"input"`` (the paper: the input frames)."""
        B, T, C, H, W = x_t.shape
        p = self.config.patch_size
        gh, gw = math.ceil(H / p), math.ceil(W / p)
        tok = self.x_embedder(x_t.reshape(B, T * C, H, W))                        # (B, gh*gw, dim)
        pos = self.pos_embed
        if (gh, gw) != self.grid:
            pos = resample_abs_pos_embed(pos, new_size=[gh, gw], old_size=list(self.grid), num_prefix_tokens=0)
        tok = tok + pos
        if z_tok is not None:
            zt = F.interpolate(z_tok.permute(0, 3, 1, 2), size=(gh, gw), mode="bilinear", align_corners=False)
            tok = tok + self.token_cond(zt.flatten(2).transpose(1, 2))            # (B, gh*gw, dim)
        cond = self.t_embedder(t) + c                                             # (B, dim)
        for blk in self.dit_blocks:
            tok = blk(tok, cond)
        out = self.final_layer(tok, cond)                                         # (B, gh*gw, p*p*T*C)
        out = out.reshape(B, gh, gw, p, p, T * C).permute(0, 5, 1, 3, 2, 4)       # (B, T*C, gh, p, gw, p)
        out = out.reshape(B, T * C, gh * p, gw * p)[..., :H, :W]
        return out.reshape(B, T, C, H, W)

    # --- contract 4
    def dit_source(self, x, prelim):
        """What the DiT denoises, on the [-1, 1] scale: the input frames (paper) or the preliminary
        prediction. (B, T_dit, C, H, W)."""
        return 2 * (x if self.config.dit_input == "input" else prelim) - 1

    def fuse(self, prelim, residual):
        """Eq. 7: final = P + residual (mapped T_in -> T_out when the DiT saw the input frames)."""
        if self.residual_time is not None:
            residual = self.residual_time(residual)
        return prelim + residual                                                  # (B, T_out, C, H, W)

    def forward(self, x):
        """Deterministic prediction (eq. 7): x (B, T_in, C, H, W) in [0,1] -> (B, T_out, C, H, W). ValueError for
        another T_in or C (:func:`diffuma.models.registry.check_frames`)."""
        check_frames(self, x)
        z, prelim = self.mamba_path(x)
        c, z_tok = self.condition(z)
        t0 = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        residual = self.denoise(self.dit_source(x, prelim), t0, c, z_tok)         # (B, T_dit, C, H, W)
        return self.fuse(prelim, residual)

    def losses(self, x, y):
        """The pieces of eq. 10: {"loss_diff", "loss_rec", "pred", "prelim"} (tensors).
        Draws t ~ U{1..T} and eps ~ N(0, I) from torch's global RNG (deterministic under a seed).
        With dit_input="prelim" the noised copy of P is detached: L_diff trains the DiT and, through
        the condition c (and the token condition), the Mamba features -- not P itself."""
        B = x.shape[0]
        z, prelim = self.mamba_path(x)
        c, z_tok = self.condition(z)
        x0 = self.dit_source(x, prelim)                                           # (B, T_dit, C, H, W)
        t = torch.randint(1, self.config.diffusion_steps + 1, (B,), device=x.device)
        noise = torch.randn_like(x0)
        x_t = q_sample(x0.detach() if self.config.dit_input == "prelim" else x0, t, noise, self.alpha_bar)
        # one DiT pass over [noised ; clean at t=0]: the noise prediction and the eq. 7 residual
        both = self.denoise(torch.cat([x_t, x0]), torch.cat([t, torch.zeros_like(t)]),
                            torch.cat([c, c]), None if z_tok is None else torch.cat([z_tok, z_tok]))
        eps_hat, residual = both[:B], both[B:]
        pred = self.fuse(prelim, residual)                                        # (B, T_out, C, H, W)
        return {"loss_diff": diffusion_loss(eps_hat, noise), "loss_rec": reconstruction_loss(pred, y, self.config.recon_loss),
                "pred": pred, "prelim": prelim}

    def training_loss(self, x, y, step: int = 0, total_steps: int = 1):
        """Eq. 10: L_diff + l1_weight * L_rec(final, y) (L1 by default). Returns (loss, logs)."""
        check_frames(self, x)
        parts = self.losses(x, y)
        loss = total_loss(parts["loss_diff"], parts["loss_rec"], self.config.l1_weight)
        logs = {k: float("nan") if v.is_meta else v.item() for k, v in parts.items() if k.startswith("loss")}
        return loss, logs                                   # (meta: FLOP counting in `chdl model-info`)
