"""PastNet: Physics-assisted Spatio-temporal Network (Wu et al., ACM MM 2024, "PastNet: Introducing
Physical Inductive Biases for Spatio-temporal Video Prediction").

Two paths whose outputs are summed:

    FPG  (Fourier-based Physics-Guided) -- the global, "PDE-like" part. Each input frame is cut into
         p x p patches and embedded (plus a learned position embedding); a few Fourier blocks mix the
         token grid in the frequency domain: rFFT2 over the patch grid, a block-diagonal complex
         two-layer MLP per frequency (the learnable spectral convolution operator), soft-shrinkage
         that sparsifies the spectrum, inverse rFFT2; then a token MLP. Transposed convolutions with
         tanh map tokens back to pixels.
    DST  (Discrete Spatio-Temporal) -- the local dynamics. A VQ-VAE encoder (stride-2 convs + residual
         stack) turns every frame into a grid of D-dim vectors, each snapped to its nearest entry of a
         K-entry memory bank (codebook; K chosen in the paper from the data's estimated intrinsic
         dimensionality); the T_in quantised grids are stacked on channels and propagated to T_out
         grids by SimVP's Inception U-Net ("dynamic propagation", imported from simvp.py); the VQ-VAE
         decoder turns each into a frame.

Training loss: MSE(prediction, target) + the VQ loss. With the paper's EMA codebook (decay 0.99) the
VQ loss is the commitment term beta * ||z_e - sg(e)||^2 and the codebook follows an exponential moving
average of the vectors assigned to it; with ``codebook_ema_decay = 0`` the codebook is learned by the
codebook term ||sg(z_e) - e||^2 instead (van den Oord et al. 2017). Gradients pass the quantiser
straight-through.

Choices where the paper leaves room (also in docs/baselines-cnn.md):
* T_out != T_in: the paper's FPG maps input frame t to output frame t. Here a learned linear map over
  the time axis (T_in -> T_out) follows the FPG head, initialised to pick the latest frames aligned at
  the end -- exactly the paper's identity mapping when T_in == T_out. The DST's propagation outputs
  T_out*D channels directly.
* The reference code's FPG MLP ends in an adaptive pooling instead of a second linear layer and its
  complex multiply reuses an updated real part; we use a standard 2-layer MLP and a correct complex
  product. The FFT always runs in float32 (no half-precision FFTs for non-power-of-two grids).
* The loss includes the VQ term as the paper describes; the released training script back-propagates
  the MSE only (its EMA codebook still moves, but nothing pulls the encoder towards the codes).
* The memory bank is not pre-trained separately (the paper's released code defaults to joint
  training too). The intrinsic-dimension estimate that sets K is not run automatically; K is a field.
* Sizes not divisible by lcm(patch, 2**dst_downsample) are replicate-padded and cropped back.
* The EMA update runs only in training mode, under no_grad, using a one-hot matmul (deterministic
  on GPU, unlike index_add).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffuma.models.registry import check_frames
from diffuma.models.simvp import IncepUTranslator, align_frames, log_value, pad_to_multiple


@dataclass
class PastNetConfig:
    in_frames: int = 10            # T_in: observed frames
    out_frames: int = 10           # T_out: predicted frames
    channels: int = 1              # C: image channels
    height: int = 64               # H it is built for (padded to a multiple; other sizes must pad alike)
    width: int = 64                # W
    # --- FPG: Fourier-based physics-guided module
    patch_size: int = 16           # p: FPG patch side (power of two >= 4)
    fpg_dim: int = 128             # token width of the FPG
    fpg_depth: int = 1             # Fourier blocks
    fpg_mlp_ratio: float = 2.0     # token-MLP hidden width, x fpg_dim
    fpg_blocks: int = 8            # block-diagonal groups of the spectral weights (fpg_dim % fpg_blocks == 0)
    fpg_softshrink: float = 0.01   # soft-shrinkage threshold on the filtered spectrum (0 = off)
    # --- DST: discrete spatio-temporal module
    dst_hidden: int = 128          # VQ-VAE encoder/decoder width
    dst_downsample: int = 2        # stride-2 convs in the VQ-VAE encoder (latent = H / 2**n)
    dst_res_layers: int = 4        # residual blocks in the VQ-VAE encoder and decoder
    dst_res_units: int = 32        # bottleneck width of those residual blocks
    codebook_size: int = 512       # K: memory-bank entries
    code_dim: int = 64             # D: memory-bank vector width
    commitment: float = 0.25       # beta: commitment-loss weight
    codebook_ema_decay: float = 0.99  # EMA codebook update (paper); 0 = learn the codebook by its loss
    temporal_hidden: int = 256     # hid_T: dynamic-propagation (Inception U-Net) width
    temporal_layers: int = 8       # N_T: Inception blocks down (and up)
    incep_kernels: tuple[int, ...] = (3, 5, 7, 11)  # Inception kernel sizes
    incep_groups: int = 4          # Inception group-conv groups

    def __post_init__(self):
        self.incep_kernels = tuple(self.incep_kernels)
        p = self.patch_size
        if p < 4 or p & (p - 1):
            raise ValueError(f"PastNet patch_size must be a power of two >= 4, got {p}")
        if self.fpg_dim % self.fpg_blocks:
            raise ValueError("PastNet fpg_dim must be divisible by fpg_blocks")
        if self.dst_downsample < 1 or self.temporal_layers < 2:
            raise ValueError("PastNet needs dst_downsample >= 1 and temporal_layers >= 2")


PRESETS: dict[str, dict] = {
    # The paper's Moving MNIST 64x64, 10 -> 10 (its released training script's defaults): FPG p=16,
    # width 128, 1 block, MLP ratio 2; VQ-VAE width 128, /4, 4 residual blocks of 32; K=512, D=64;
    # propagation hid_T 256, N_T 8, groups 4.
    "default": dict(),
    # Fast CPU tests (~0.1M params at 64x64).
    "tiny": dict(patch_size=8, fpg_dim=16, fpg_blocks=2, dst_hidden=16, dst_res_layers=1, dst_res_units=8,
                 codebook_size=32, code_dim=8, temporal_hidden=32, temporal_layers=2, incep_kernels=(3, 5),
                 incep_groups=2),
    # CHDL 600x800, 5 -> 1. One more VQ-VAE stride (/8 -> 75x100 code grid, 7.5k codes per frame instead
    # of 37.5k, which keeps the distance matrix and the propagation U-Net affordable); D 32 because only
    # 5 frames are stacked (160 channels into the U-Net); FPG depth 2 because the token grid is 38x50
    # (after padding 600 -> 608) instead of 4x4, so global spectral mixing has more to do.
    "chdl": dict(in_frames=5, out_frames=1, height=600, width=800, dst_downsample=3, code_dim=32,
                 fpg_depth=2, temporal_layers=6),
}

# The released Moving MNIST training script's recipe, for reference only: the trainer owns training and
# `chdl bench` deliberately trains every model with one shared recipe.
PAPER_TRAINING = {"optimizer": "adam", "lr": 1e-2, "batch_size": 16, "schedule": "onecycle", "epochs": 201}


def no_autocast(t: torch.Tensor):
    """A float32 region even under mixed precision (FFTs, codebook distances). Autocast exists for cuda and
    cpu only; tensors elsewhere (meta, for FLOP counting) are never autocast anyway."""
    return torch.autocast(device_type="cuda" if t.is_cuda else "cpu", enabled=False)


# --------------------------------------------------------------------------------------------------
# FPG: Fourier-based physics-guided module
# --------------------------------------------------------------------------------------------------

class SpectralFilter(nn.Module):
    """Learnable spectral convolution on a token grid (adaptive Fourier neural operator): per frequency,
    a block-diagonal complex 2-layer MLP shared over all frequencies, then soft-shrinkage."""

    def __init__(self, dim: int, blocks: int, softshrink: float):
        super().__init__()
        self.blocks, self.block = blocks, dim // blocks
        self.softshrink = softshrink
        # [real, imag] x blocks x in x out; init in PastNet._init_weights
        self.w1 = nn.Parameter(torch.empty(2, blocks, self.block, self.block))
        self.b1 = nn.Parameter(torch.empty(2, blocks, self.block))
        self.w2 = nn.Parameter(torch.empty(2, blocks, self.block, self.block))
        self.b2 = nn.Parameter(torch.empty(2, blocks, self.block))

    @staticmethod
    def _complex_linear(re, im, w, b):
        mm = lambda a, m: torch.einsum("...bi,bio->...bo", a, m)  # noqa: E731
        return mm(re, w[0]) - mm(im, w[1]) + b[0], mm(re, w[1]) + mm(im, w[0]) + b[1]

    def forward(self, x):                                           # (N, gh, gw, dim)
        N, gh, gw, dim = x.shape
        dtype = x.dtype
        with no_autocast(x):
            f = torch.fft.rfft2(x.float(), dim=(1, 2), norm="ortho")   # (N, gh, gw//2+1, dim) complex
            f = f.reshape(N, gh, gw // 2 + 1, self.blocks, self.block)
            re, im = self._complex_linear(f.real, f.imag, self.w1.float(), self.b1.float())
            re, im = self._complex_linear(F.relu(re), F.relu(im), self.w2.float(), self.b2.float())
            if self.softshrink > 0:
                re, im = F.softshrink(re, self.softshrink), F.softshrink(im, self.softshrink)
            f = torch.complex(re, im).reshape(N, gh, gw // 2 + 1, dim)
            out = torch.fft.irfft2(f, s=(gh, gw), dim=(1, 2), norm="ortho")  # (N, gh, gw, dim)
        return out.to(dtype)


class FourierBlock(nn.Module):
    """x + SpectralFilter(LN(x)); x + MLP(LN(x)) on a (N, gh, gw, dim) token grid."""

    def __init__(self, cfg: PastNetConfig):
        super().__init__()
        d = cfg.fpg_dim
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.filter = SpectralFilter(d, cfg.fpg_blocks, cfg.fpg_softshrink)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        hidden = int(d * cfg.fpg_mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x):
        x = x + self.filter(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FPG(nn.Module):
    def __init__(self, cfg: PastNetConfig, grid: tuple[int, int]):
        super().__init__()
        p, d, C = cfg.patch_size, cfg.fpg_dim, cfg.channels
        self.embed = nn.Conv2d(C, d, p, stride=p)
        self.pos = nn.Parameter(torch.empty(1, grid[0], grid[1], d))
        self.blocks = nn.ModuleList([FourierBlock(cfg) for _ in range(cfg.fpg_depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        # tokens -> pixels: transposed convs x2, x2, ..., x4 with tanh between (p = 2**k: k-2 stages of
        # 2 and one of 4, as the paper's 16 = 2*2*4); channels shrink by 4 per stage down to C.
        factors = [2] * (int(math.log2(p)) - 2) + [4]
        widths = [C * 4 ** (len(factors) - 1 - i) for i in range(len(factors))]
        layers, c_in = [], d
        for i, (f, c) in enumerate(zip(factors, widths)):
            layers.append(nn.ConvTranspose2d(c_in, c, f, stride=f))
            if i < len(factors) - 1:
                layers.append(nn.Tanh())
            c_in = c
        self.head = nn.Sequential(*layers)
        self.time = nn.Linear(cfg.in_frames, cfg.out_frames, bias=False)   # T_in -> T_out mixing

    def forward(self, x):                                        # (B, T_in, C, Hp, Wp)
        B, T, C, H, W = x.shape
        t = self.embed(x.reshape(B * T, C, H, W))                # (B*T_in, d, gh, gw)
        t = t.permute(0, 2, 3, 1) + self.pos                     # (B*T_in, gh, gw, d)
        for block in self.blocks:
            t = block(t)
        t = self.norm(t).permute(0, 3, 1, 2)                     # (B*T_in, d, gh, gw)
        y = self.head(t).reshape(B, T, C, H, W)                  # (B, T_in, C, Hp, Wp)
        return torch.einsum("btchw,ot->bochw", y, self.time.weight)  # (B, T_out, C, Hp, Wp)


# --------------------------------------------------------------------------------------------------
# DST: discrete spatio-temporal module
# --------------------------------------------------------------------------------------------------

class ResidualStack(nn.Module):
    """VQ-VAE residual blocks: x + BN(1x1(ReLU(BN(3x3(ReLU(x)))))), then a final ReLU."""

    def __init__(self, dim: int, layers: int, units: int):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(
            nn.ReLU(), nn.Conv2d(dim, units, 3, padding=1, bias=False), nn.BatchNorm2d(units),
            nn.ReLU(), nn.Conv2d(units, dim, 1, bias=False), nn.BatchNorm2d(dim)) for _ in range(layers)])

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return F.relu(x)


class VQEncoder(nn.Module):
    def __init__(self, cfg: PastNetConfig):
        super().__init__()
        h, n = cfg.dst_hidden, cfg.dst_downsample
        outs = [h // 2] * (n - 1) + [h]
        ins = [cfg.channels] + outs[:-1]
        self.down = nn.ModuleList([nn.Conv2d(i, o, 4, stride=2, padding=1) for i, o in zip(ins, outs)])
        self.conv = nn.Conv2d(h, h, 3, padding=1)
        self.res = ResidualStack(h, cfg.dst_res_layers, cfg.dst_res_units)
        self.to_code = nn.Conv2d(h, cfg.code_dim, 1)

    def forward(self, x):                          # (N, C, H, W)
        for conv in self.down:
            x = F.relu(conv(x))                    # -> (N, hidden, H/2**n, W/2**n)
        return self.to_code(self.res(self.conv(x)))  # (N, D, h, w)


class VQDecoder(nn.Module):
    def __init__(self, cfg: PastNetConfig):
        super().__init__()
        h, n = cfg.dst_hidden, cfg.dst_downsample
        self.conv = nn.Conv2d(cfg.code_dim, h, 3, padding=1)
        self.res = ResidualStack(h, cfg.dst_res_layers, cfg.dst_res_units)
        outs = [h // 2] * (n - 1) + [cfg.channels]
        ins = [h] + outs[:-1]
        self.up = nn.ModuleList([nn.ConvTranspose2d(i, o, 4, stride=2, padding=1) for i, o in zip(ins, outs)])

    def forward(self, z):                          # (N, D, h, w)
        x = self.res(self.conv(z))
        for i, conv in enumerate(self.up):
            x = conv(x)
            if i < len(self.up) - 1:
                x = F.relu(x)
        return x                                   # (N, C, H, W)


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantiser with a straight-through gradient. EMA codebook when
    ``decay > 0`` (buffers), else a learned parameter trained by the codebook loss."""

    def __init__(self, size: int, dim: int, commitment: float, decay: float, eps: float = 1e-5):
        super().__init__()
        self.size, self.commitment, self.decay, self.eps = size, commitment, decay, eps
        if decay > 0:
            self.register_buffer("codebook", torch.empty(size, dim))
            self.register_buffer("ema_count", torch.zeros(size))
            self.register_buffer("ema_sum", torch.empty(size, dim))
        else:
            self.codebook = nn.Parameter(torch.empty(size, dim))

    def forward(self, z):                                    # (N, D, h, w)
        N, D, h, w = z.shape
        with no_autocast(z):
            flat = z.float().permute(0, 2, 3, 1).reshape(-1, D)           # (M, D)
            book = self.codebook.float()
            dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)  # (M, K)
            idx = dist.argmin(1)                                            # (M,)
            onehot = F.one_hot(idx, self.size).float()                      # (M, K)
            q = onehot @ book                                               # (M, D)
            if self.training and self.decay > 0:
                with torch.no_grad():
                    self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                    n = self.ema_count.sum()
                    count = (self.ema_count + self.eps) / (n + self.size * self.eps) * n  # Laplace smoothing
                    self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat.detach(), alpha=1 - self.decay)
                    self.codebook.copy_(self.ema_sum / count[:, None])
            loss = self.commitment * F.mse_loss(flat, q.detach())
            if self.decay == 0:
                loss = loss + F.mse_loss(q, flat.detach())
            q = flat + (q - flat).detach()                                  # straight-through
            probs = onehot.mean(0)
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        q = q.to(z.dtype).reshape(N, h, w, D).permute(0, 3, 1, 2)            # (N, D, h, w)
        return q, loss, perplexity


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------

class PastNet(nn.Module):
    """PastNet (Wu et al., 2023): a Fourier-domain physics path (FPG) and a vector-quantised local path, summed;
    forward: (B, T_in, C, H, W) in [0, 1] at a size padding to the grid it was built for -> (B, T_out, C, H, W)."""

    Config = PastNetConfig

    def __init__(self, config: PastNetConfig):
        super().__init__()
        self.config = cfg = config
        self.multiple = math.lcm(cfg.patch_size, 2 ** cfg.dst_downsample)
        hp, wp = (-(-cfg.height // self.multiple) * self.multiple, -(-cfg.width // self.multiple) * self.multiple)
        self.fpg = FPG(cfg, (hp // cfg.patch_size, wp // cfg.patch_size))
        self.encoder = VQEncoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.commitment, cfg.codebook_ema_decay)
        self.propagation = IncepUTranslator(cfg.in_frames * cfg.code_dim, cfg.temporal_hidden,
                                            cfg.out_frames * cfg.code_dim, cfg.temporal_layers,
                                            cfg.incep_kernels, cfg.incep_groups)
        self.decoder = VQDecoder(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        """All init in one place.
        * Linear layers and the position embedding: truncated normal(0.02), zero bias -- the ViT/AFNO
          convention the FPG token path follows; keeps the residual token stream near its input at start.
        * Spectral weights: normal(0.02) (AFNO's scale): the filter starts as a small perturbation.
        * LayerNorm / BatchNorm: identity.
        * Convolutions: PyTorch's default (Kaiming-uniform, a=sqrt(5)), which the VQ-VAE and the
          Inception U-Net of the reference implementations were tuned with; reset explicitly here.
        * Codebook: uniform(+-1/K) (van den Oord et al.'s VQ-VAE), i.e. near the origin, where the encoder's
          features are at init (norm ~0.4 measured on Moving MNIST); an N(0, 1) codebook (norm ~8) sends
          every vector to the single smallest code. EMA state starts as if each code had been assigned
          once, to itself (count 1, sum = code): a code unused in the first batch then keeps its value and
          drifts slowly towards the origin, instead of being divided by the smoothing epsilon and thrown
          far away for good (what a zero initial count does).
        * FPG time map: picks the latest input frames aligned at the end (identity when T_in == T_out),
          i.e. the paper's frame-for-frame FPG."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.reset_parameters()
            elif isinstance(m, SpectralFilter):
                for p in (m.w1, m.b1, m.w2, m.b2):
                    nn.init.normal_(p, std=0.02)
        nn.init.trunc_normal_(self.fpg.pos, std=0.02)
        with torch.no_grad():
            t_in, t_out = self.config.in_frames, self.config.out_frames
            pick = align_frames(torch.eye(t_in)[None], t_out)[0]        # (T_out, T_in) one-hot rows
            self.fpg.time.weight.copy_(pick)
            q = self.quantizer
            nn.init.uniform_(q.codebook, -1.0 / q.size, 1.0 / q.size)
            if q.decay > 0:
                q.ema_sum.copy_(q.codebook)
                q.ema_count.fill_(1.0)

    def _predict(self, x: torch.Tensor):
        cfg = self.config
        B, T, C, H, W = x.shape                                   # (B, T_in, C, H, W) in [0, 1]
        xp = pad_to_multiple(x, self.multiple)                    # (B, T_in, C, Hp, Wp)
        Hp, Wp = xp.shape[-2:]
        physics = self.fpg(xp)                                    # (B, T_out, C, Hp, Wp)
        z = self.encoder(xp.reshape(B * T, C, Hp, Wp))            # (B*T_in, D, h, w)
        q, vq_loss, perplexity = self.quantizer(z)                # (B*T_in, D, h, w)
        _, D, h, w = q.shape
        z = self.propagation(q.reshape(B, T * D, h, w))           # (B, T_out*D, h, w)
        local = self.decoder(z.reshape(B * cfg.out_frames, D, h, w))  # (B*T_out, C, Hp, Wp)
        y = local.reshape(B, cfg.out_frames, C, Hp, Wp) + physics
        return y[..., :H, :W], vq_loss, perplexity                # (B, T_out, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T_in, C, H, W) in [0, 1] -> (B, T_out, C, H, W); ValueError for another T_in or C, or a size that
        pads to another grid than the configured one (the FPG's spectral filters are built for it)."""
        self._check(x)
        return self._predict(x)[0]

    def _check(self, x: torch.Tensor) -> None:
        """ValueError for another T_in or C (check_frames), or a size that pads to another grid than the built one."""
        check_frames(self, x)
        cfg, m = self.config, self.multiple
        grid = (-(-cfg.height // m) * m, -(-cfg.width // m) * m)
        if (-(-x.shape[-2] // m) * m, -(-x.shape[-1] // m) * m) != grid:
            raise ValueError(f"PastNet: frames of {x.shape[-2]}x{x.shape[-1]} px; it was built for "
                             f"{cfg.height}x{cfg.width} (padded to {grid[0]}x{grid[1]}, the grid of its spectral "
                             f"filters): sizes that pad to that grid work")

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0, total_steps: int = 1):
        """PastNet's objective: MSE(prediction, target) + VQ (commitment [+ codebook]) loss."""
        self._check(x)
        pred, vq_loss, perplexity = self._predict(x)
        mse = F.mse_loss(pred, y)
        loss = mse + vq_loss
        return loss, {"mse": log_value(mse), "vq": log_value(vq_loss), "perplexity": log_value(perplexity)}
