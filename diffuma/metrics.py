"""Prediction-quality metrics: MSE, MAE, SSIM and PSNR, overall and per predicted frame.

Every number is computed on intensities in [0, 1] (the range ``chdl.torch_dataset.SequenceDataset``
yields); predictions are clipped to [0, 1] first, targets already are.

Two conventions, named in every table this toolkit writes (docs/training.md, "Metric conventions"):

``per_pixel`` (default)
    MSE = mean over every pixel of every predicted frame of every sequence of (pred - true)^2.
    MAE = the same with |pred - true|. Per-frame values average over sequences, channels and pixels of
    that horizon step only.
``openstl``
    As OpenSTL's ``MSE``/``MAE`` with ``spatial_norm=False``: the squared (absolute) error is SUMMED over
    C*H*W of each frame, then averaged over sequences and frames. Equals ``per_pixel`` x C*H*W.

In both conventions:
    SSIM = ``skimage.metrics.structural_similarity`` per frame, Gaussian window sigma=1.5 (11x11 taps),
           ``use_sample_covariance=False``, ``data_range=1.0``, K1=0.01, K2=0.03 (Wang et al. 2004), channels
           averaged (``channel_axis``), then averaged over sequences and frames.
    PSNR = 10*log10(1 / MSE_frame) per frame (per-pixel MSE of that frame on [0, 1]), averaged over
           sequences and frames; MSE_frame is floored at 1e-10 so a perfect frame scores 100 dB, not inf.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity

CONVENTIONS = ("per_pixel", "openstl")
METRICS = ("mse", "mae", "ssim", "psnr")
# The SSIM definition used everywhere (Wang et al. 2004 settings, explicit data range of [0, 1] intensities).
SSIM_KWARGS = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
# The smallest frame side SSIM_KWARGS can score: skimage's Gaussian window is 2 * int(3.5 * sigma + 0.5) + 1 px
SSIM_MIN_SIDE = 11
PSNR_MSE_FLOOR = 1e-10
# One line per convention, printed under every table and stored in every JSON result.
CONVENTION_NOTES = {
    "per_pixel": "MSE/MAE = mean per pixel on [0,1] intensities; SSIM = skimage, Gaussian window sigma 1.5, "
                 "data_range 1.0, no sample covariance; PSNR = mean over frames of 10·log10(1/MSE_frame).",
    "openstl": "MSE/MAE = per-frame error SUMMED over C·H·W on [0,1] intensities, averaged over frames "
               "(OpenSTL, spatial_norm=False); SSIM = skimage, Gaussian window sigma 1.5, data_range 1.0, no "
               "sample covariance; PSNR = mean over frames of 10·log10(1/MSE_frame per pixel).",
}


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


class MetricAccumulator:
    """Accumulates per-frame metric sums over batches of (B, T_out, C, H, W) predictions.

    ``update(pred, target)`` per batch, then ``result()`` -> ``{"overall": {mse, mae, ssim, psnr},
    "per_frame": [{"frame": 1, mse, mae, ssim, psnr}, ...], "n_sequences": N, "convention": ...}``.
    """

    def __init__(self, convention: str = "per_pixel"):
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown metric convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
        self.convention = convention
        self.sums: dict[str, np.ndarray] | None = None
        self.count = 0

    def update(self, pred, target) -> None:
        p = np.clip(_as_numpy(pred), 0.0, 1.0)
        t = _as_numpy(target)
        if p.shape != t.shape or p.ndim != 5:
            raise ValueError(f"prediction {p.shape} and target {t.shape} must both be (B, T, C, H, W)")
        b, n_t, c = p.shape[:3]
        err = (p - t).reshape(b, n_t, -1)
        mse_pix = (err**2).mean(-1)  # (B, T) per-pixel MSE of each frame
        mae_pix = np.abs(err).mean(-1)
        scale = 1.0 if self.convention == "per_pixel" else float(err.shape[-1])  # openstl: sum over C*H*W
        psnr = 10.0 * np.log10(1.0 / np.maximum(mse_pix, PSNR_MSE_FLOOR))
        ssim = np.empty((b, n_t))
        for i in range(b):
            for k in range(n_t):
                if c == 1:
                    ssim[i, k] = structural_similarity(t[i, k, 0], p[i, k, 0], **SSIM_KWARGS)
                else:
                    ssim[i, k] = structural_similarity(t[i, k], p[i, k], channel_axis=0, **SSIM_KWARGS)
        batch = {"mse": mse_pix * scale, "mae": mae_pix * scale, "ssim": ssim, "psnr": psnr}
        if self.sums is None:
            self.sums = {m: np.zeros(n_t) for m in METRICS}
        elif len(self.sums["mse"]) != n_t:
            raise ValueError(f"batch has {n_t} predicted frames, earlier batches had {len(self.sums['mse'])}")
        for m in METRICS:
            self.sums[m] += batch[m].sum(0)
        self.count += b

    def result(self) -> dict:
        if self.sums is None or self.count == 0:
            raise ValueError("no sequences were evaluated")
        per_frame = {m: self.sums[m] / self.count for m in METRICS}
        n_t = len(per_frame["mse"])
        return {
            "convention": self.convention,
            "n_sequences": self.count,
            # Every sequence has the same number of equally sized frames, so the mean of the per-frame
            # means is the mean over all frames (and, for per_pixel MSE/MAE, over all pixels).
            "overall": {m: float(per_frame[m].mean()) for m in METRICS},
            "per_frame": [{"frame": k + 1, **{m: float(per_frame[m][k]) for m in METRICS}} for k in range(n_t)],
        }


def compute_metrics(pred, target, convention: str = "per_pixel") -> dict:
    """One-shot metrics of (B, T_out, C, H, W) predictions against targets; see ``MetricAccumulator``."""
    acc = MetricAccumulator(convention)
    acc.update(pred, target)
    return acc.result()


def copy_last_frame(x: torch.Tensor, out_frames: int) -> torch.Tensor:
    """The copy-last-frame baseline: repeat the last input frame (B, T_in, C, H, W) -> (B, T_out, C, H, W)."""
    return x[:, -1:].expand(-1, out_frames, -1, -1, -1)
