"""Prediction-quality metrics: MSE, MAE, SSIM and PSNR, overall and per predicted frame.

Every number is computed on intensities in [0, 1] (the range ``chdl.torch_dataset.SequenceDataset``
yields); predictions are clipped to [0, 1] first (``openstl``: after MSE/MAE, as OpenSTL does), targets
already are in it.

Two conventions, named in every table this toolkit writes (docs/training.md, "Metric conventions"):

``per_pixel`` (default)
    MSE = mean over every pixel of every predicted frame of every sequence of (pred - true)^2.
    MAE = the same with |pred - true|. Per-frame values average over sequences, channels and pixels of
    that horizon step only.
    SSIM = ``skimage.metrics.structural_similarity`` per frame, Gaussian window sigma=1.5 (11x11 taps),
           ``use_sample_covariance=False``, ``data_range=1.0``, K1=0.01, K2=0.03 (Wang et al. 2004), channels
           averaged (``channel_axis``), then averaged over sequences and frames.
``openstl``
    OpenSTL's ``metric()`` (``openstl/core/metrics.py``), the code behind its published tables:
    MSE/MAE as its ``MSE``/``MAE`` with ``spatial_norm=False``: the squared (absolute) error is SUMMED over
    C*H*W of each frame, then averaged over sequences and frames, computed on the predictions *before* they
    are clipped (equals ``per_pixel`` x C*H*W for predictions inside [0, 1]).
    SSIM = its ``cal_ssim(..., multichannel=True)`` with no data range, as the scikit-image versions that accepted
           that call ran it: a 7x7 uniform window, sample covariance, and for float images the data range of the
           dtype, 2.0 (-1..1); on the clipped predictions.

In both conventions:
    PSNR = 10*log10(1 / MSE_frame) per frame (per-pixel MSE of that frame on [0, 1], clipped predictions),
           averaged over sequences and frames; MSE_frame is floored at 1e-10 so a perfect frame scores 100 dB
           (OpenSTL: inf).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import structural_similarity

CONVENTIONS = ("per_pixel", "openstl")
METRICS = ("mse", "mae", "ssim", "psnr")
# The SSIM definition (Wang et al. 2004 settings, explicit data range of [0, 1] intensities).
SSIM_KWARGS = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
# OpenSTL's SSIM: cal_ssim(pred, true, multichannel=True) and no data range, a call today's scikit-image refuses;
# the versions that ran it used a 7x7 uniform window with sample covariance and, for float images, the float
# dtype's range -1..1 as data range. Its published SSIMs were computed so; with data range 1 they come out lower.
OPENSTL_SSIM_KWARGS = dict(win_size=7, gaussian_weights=False, use_sample_covariance=True, data_range=2.0)
SSIM_BY_CONVENTION = {"per_pixel": SSIM_KWARGS, "openstl": OPENSTL_SSIM_KWARGS}
# The smallest frame side both SSIMs can score: skimage's Gaussian window is 2 * int(3.5 * sigma + 0.5) + 1 px
SSIM_MIN_SIDE = 11
PSNR_MSE_FLOOR = 1e-10
# One line per convention, printed under every table and stored in every JSON result.
CONVENTION_NOTES = {
    "per_pixel": "MSE/MAE = mean per pixel on [0,1] intensities; SSIM = skimage, Gaussian window sigma 1.5, "
                 "data_range 1.0, no sample covariance; PSNR = mean over frames of 10·log10(1/MSE_frame).",
    "openstl": "OpenSTL's metric(): MSE/MAE = per-frame error SUMMED over C·H·W on [0,1] intensities, averaged over "
               "frames (spatial_norm=False), predictions not clipped; SSIM = skimage 7x7 uniform window, sample "
               "covariance, data_range 2.0 (its old defaults for floats); PSNR = mean over frames of "
               "10·log10(1/MSE_frame per pixel).",
}


def check_ssim_size(height: int, width: int, where=None, scored_by: str = "every evaluation",
                    other_way: str = "") -> None:
    """ValueError (naming ``where`` when given) when frames are smaller than SSIM's window (every evaluation scores
    SSIM): eval and bench crashed with scikit-image's "win_size exceeds image extent ... at least 7x7", which such
    frames may exceed. ``scored_by``: what scores SSIM there (the trainer: "validation"); ``other_way``: another way
    out, said in brackets."""
    if min(height, width) < SSIM_MIN_SIDE:
        raise ValueError(("" if where is None else f"{where}: ") + f"frames of {height}x{width} px, smaller than the "
                         f"{SSIM_MIN_SIDE} x {SSIM_MIN_SIDE} px window of the SSIM that {scored_by} scores; make the dataset at "
                         f"{SSIM_MIN_SIDE} x {SSIM_MIN_SIDE} px or more" + (f" ({other_way})" if other_way else ""))


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


class MetricAccumulator:
    """Accumulates per-frame metric sums over batches of (B, T_out, C, H, W) predictions.

    ``update(pred, target)`` per batch, then ``result()`` -> ``{"overall": {mse, mae, ssim, psnr},
    "per_frame": [{"frame": 1, mse, mae, ssim, psnr}, ...], "n_sequences": N, "convention": ...,
    "ci95": {mse, mae, ssim, psnr}, "per_sequence": {mse: [N values], ...}}``. ``ci95``: the half-width of a 95 % confidence interval of each overall mean
    over the sequences (Student's t on the per-sequence means; None for one sequence). Sequences of one recording
    are not independent samples, so read it as a lower bound on the uncertainty.
    """

    def __init__(self, convention: str = "per_pixel"):
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown metric convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
        self.convention = convention
        self.sums: dict[str, np.ndarray] | None = None
        self.per_sequence: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}  # each sequence's mean over its frames
        self.count = 0

    def update(self, pred, target) -> None:
        raw = _as_numpy(pred)
        p = np.clip(raw, 0.0, 1.0)
        t = _as_numpy(target)
        if p.shape != t.shape or p.ndim != 5:
            raise ValueError(f"prediction {p.shape} and target {t.shape} must both be (B, T, C, H, W)")
        b, n_t, c = p.shape[:3]
        check_ssim_size(*p.shape[-2:])
        openstl = self.convention == "openstl"
        err = ((raw if openstl else p) - t).reshape(b, n_t, -1)  # (OpenSTL's MSE/MAE come before its clipping)
        scale = float(err.shape[-1]) if openstl else 1.0  # openstl: summed over C*H*W
        mse = (err**2).mean(-1)  # (B, T) per-pixel MSE of each frame
        clipped_mse = ((p - t).reshape(b, n_t, -1) ** 2).mean(-1) if openstl else mse
        psnr = 10.0 * np.log10(1.0 / np.maximum(clipped_mse, PSNR_MSE_FLOOR))
        ssim_kwargs = SSIM_BY_CONVENTION[self.convention]
        ssim = np.empty((b, n_t))
        for i in range(b):
            for k in range(n_t):
                if c == 1:
                    ssim[i, k] = structural_similarity(t[i, k, 0], p[i, k, 0], **ssim_kwargs)
                else:
                    ssim[i, k] = structural_similarity(t[i, k], p[i, k], channel_axis=0, **ssim_kwargs)
        batch = {"mse": mse * scale, "mae": np.abs(err).mean(-1) * scale, "ssim": ssim, "psnr": psnr}
        if self.sums is None:
            self.sums = {m: np.zeros(n_t) for m in METRICS}
        elif len(self.sums["mse"]) != n_t:
            raise ValueError(f"batch has {n_t} predicted frames, earlier batches had {len(self.sums['mse'])}")
        for m in METRICS:
            self.sums[m] += batch[m].sum(0)
            self.per_sequence[m].append(batch[m].mean(1))
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
            "ci95": {m: ci95(self.sequence_values(m)) for m in METRICS},
            # each sequence's mean over its predicted frames, in the order scored: for one's own tests and plots
            "per_sequence": {m: [float(v) for v in self.sequence_values(m)] for m in METRICS},
        }

    def sequence_values(self, metric: str) -> np.ndarray:
        """(N,) each sequence's mean of ``metric`` over its predicted frames, in the order they came."""
        return np.concatenate(self.per_sequence[metric]) if self.per_sequence[metric] else np.zeros(0)


def ci95(values: np.ndarray) -> float | None:
    """Half-width of the 95 % Student-t confidence interval of the mean of ``values``; None for fewer than 2."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


HIGHER_IS_BETTER = {"mse": False, "mae": False, "ssim": True, "psnr": True}


def paired_comparison(model: MetricAccumulator, baseline: MetricAccumulator) -> dict:
    """The model against a baseline on the same sequences, sequence by sequence (what an unpaired interval cannot
    tell: two rows whose intervals overlap can differ on every sequence the same way). Per metric: ``wins`` (the
    sequences where the model is better), ``n``, ``mean_difference`` (model - baseline) and its ``ci95``."""
    out = {}
    for m in METRICS:
        a, b = model.sequence_values(m), baseline.sequence_values(m)
        d = a - b
        better = d > 0 if HIGHER_IS_BETTER[m] else d < 0
        out[m] = {"wins": int(better.sum()), "n": int(len(d)), "mean_difference": float(d.mean()) if len(d) else None,
                  "ci95": ci95(d)}
    return out


def compute_metrics(pred, target, convention: str = "per_pixel") -> dict:
    """One-shot metrics of (B, T_out, C, H, W) predictions against targets; see ``MetricAccumulator``."""
    acc = MetricAccumulator(convention)
    acc.update(pred, target)
    return acc.result()


def copy_last_frame(x: torch.Tensor, out_frames: int) -> torch.Tensor:
    """The copy-last-frame baseline: repeat the last input frame (B, T_in, C, H, W) -> (B, T_out, C, H, W)."""
    return x[:, -1:].expand(-1, out_frames, -1, -1, -1)
