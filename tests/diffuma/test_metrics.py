"""Metrics against hand-computed values, and the two conventions."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from diffuma.metrics import MetricAccumulator, compute_metrics, copy_last_frame


def _constant_case():
    # 2 sequences x 2 predicted frames of 1x4x4; target 0, prediction a constant per frame.
    target = np.zeros((2, 2, 1, 4 * 4, 4 * 4))
    pred = np.zeros_like(target)
    for (b, t), v in {(0, 0): 0.1, (0, 1): 0.2, (1, 0): 0.3, (1, 1): 0.4}.items():
        pred[b, t] = v
    return pred, target


def test_per_pixel_mse_mae_psnr_match_hand_computed_values():
    pred, target = _constant_case()
    r = compute_metrics(pred, target)
    assert [f["mse"] for f in r["per_frame"]] == pytest.approx([(0.01 + 0.09) / 2, (0.04 + 0.16) / 2])
    assert [f["mae"] for f in r["per_frame"]] == pytest.approx([0.2, 0.3])
    assert r["overall"]["mse"] == pytest.approx(0.075)
    assert r["overall"]["mae"] == pytest.approx(0.25)
    psnr = lambda m: 10 * math.log10(1 / m)  # noqa: E731
    assert r["per_frame"][0]["psnr"] == pytest.approx((psnr(0.01) + psnr(0.09)) / 2)
    assert r["overall"]["psnr"] == pytest.approx((psnr(0.01) + psnr(0.09) + psnr(0.04) + psnr(0.16)) / 4)
    assert r["n_sequences"] == 2 and r["convention"] == "per_pixel"


def test_ssim_of_constant_frames_is_the_luminance_term_with_data_range_one():
    # For constant frames SSIM = (2*mx*my + C1) / (mx^2 + my^2 + C1), C1 = (0.01 * data_range)^2.
    pred, target = _constant_case()
    c1 = (0.01 * 1.0) ** 2
    expected = [c1 / (v * v + c1) for v in (0.1, 0.2, 0.3, 0.4)]
    r = compute_metrics(pred, target)
    assert r["per_frame"][0]["ssim"] == pytest.approx((expected[0] + expected[2]) / 2)
    assert r["overall"]["ssim"] == pytest.approx(sum(expected) / 4)


def test_openstl_convention_sums_over_chw():
    pred, target = _constant_case()
    r = compute_metrics(pred, target, convention="openstl")
    assert r["overall"]["mse"] == pytest.approx(0.075 * 16 * 16)
    assert r["overall"]["mae"] == pytest.approx(0.25 * 16 * 16)
    assert r["overall"]["psnr"] == pytest.approx(compute_metrics(pred, target)["overall"]["psnr"])


def test_openstl_convention_is_openstls_metric_function():
    """OpenSTL's metric() (the code behind its published tables) computes MSE/MAE before it clips the predictions,
    and SSIM with cal_ssim(..., multichannel=True): scikit-image's pre-0.21 defaults, a 7x7 uniform window, sample
    covariance and data range 2 for floats. chdl's --openstl clipped first and scored its own SSIM: 0.41 against
    OpenSTL's 0.51 for copy-last-frame on the sample data, 715 against 540 MSE for a SimVP overshooting [0, 1]."""
    rng = np.random.default_rng(2)
    target = rng.random((2, 3, 2, 20, 24))
    pred = target + rng.normal(0, 0.3, target.shape)  # overshoots [0, 1]
    r = compute_metrics(pred, target, convention="openstl")
    # OpenSTL: np.mean((pred - true)**2, axis=(0, 1)).sum(); then pred clipped; SSIM on (W, H, C) per frame
    assert r["overall"]["mse"] == pytest.approx(np.mean((pred - target) ** 2, axis=(0, 1)).sum())
    assert r["overall"]["mae"] == pytest.approx(np.mean(np.abs(pred - target), axis=(0, 1)).sum())
    clipped = np.clip(pred, 0, 1)
    ref = [structural_similarity(clipped[b, f].swapaxes(0, 2), target[b, f].swapaxes(0, 2), channel_axis=-1,
                                 win_size=7, data_range=2.0) for b in range(2) for f in range(3)]
    assert r["overall"]["ssim"] == pytest.approx(np.mean(ref))
    per_pixel = compute_metrics(pred, target)["overall"]
    assert per_pixel["mse"] * 20 * 24 * 2 < r["overall"]["mse"] and abs(per_pixel["ssim"] - r["overall"]["ssim"]) > 1e-3
    # PSNR is of the clipped prediction in both conventions (a per-frame mean of 10 log10(1 / MSE))
    frame_mse = ((clipped - target) ** 2).mean(axis=(2, 3, 4))
    assert r["overall"]["psnr"] == pytest.approx(np.mean(10 * np.log10(1 / frame_mse))) == per_pixel["psnr"]


def test_frames_smaller_than_the_ssim_window_are_refused_naming_the_limit():
    with pytest.raises(ValueError, match=r"frames of 10x10 px, smaller than the 11 x 11 px window"):
        compute_metrics(np.zeros((1, 1, 1, 10, 10)), np.zeros((1, 1, 1, 10, 10)))


def test_ssim_uses_the_documented_gaussian_window_and_accumulates_over_batches():
    rng = np.random.default_rng(0)
    target = rng.random((3, 2, 1, 24, 32))
    pred = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1)
    acc = MetricAccumulator()
    acc.update(torch.tensor(pred[:2]), torch.tensor(target[:2]))  # tensors work too, batches accumulate
    acc.update(pred[2:], target[2:])
    r = acc.result()
    ref = [structural_similarity(target[b, t, 0], pred[b, t, 0], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False) for b in range(3) for t in range(2)]
    assert r["overall"]["ssim"] == pytest.approx(np.mean(ref))
    assert r["per_frame"][1]["ssim"] == pytest.approx(np.mean(ref[1::2]))
    uniform = np.mean([structural_similarity(target[b, t, 0], pred[b, t, 0], data_range=1.0)
                       for b in range(3) for t in range(2)])
    assert abs(r["overall"]["ssim"] - uniform) > 1e-4  # it is not skimage's default 7x7 uniform window


def test_predictions_are_clipped_and_perfect_frames_are_finite():
    target = np.ones((1, 1, 1, 16, 16))
    r = compute_metrics(target * 1.5, target)  # clipped to 1 -> perfect
    assert r["overall"]["mse"] == 0 and r["overall"]["ssim"] == pytest.approx(1.0)
    assert r["overall"]["psnr"] == pytest.approx(100.0)


def test_multichannel_frames_average_ssim_over_channels():
    rng = np.random.default_rng(1)
    target = rng.random((1, 1, 3, 16, 16))
    pred = target.copy()
    pred[0, 0, 2] = 0.5
    r = compute_metrics(pred, target)
    per_channel = [structural_similarity(target[0, 0, c], pred[0, 0, c], data_range=1.0, gaussian_weights=True,
                                         sigma=1.5, use_sample_covariance=False) for c in range(3)]
    assert r["overall"]["ssim"] == pytest.approx(np.mean(per_channel))


def test_copy_last_frame_and_bad_input():
    x = torch.arange(2 * 3 * 1 * 2 * 2, dtype=torch.float32).reshape(2, 3, 1, 2, 2)
    y = copy_last_frame(x, 4)
    assert y.shape == (2, 4, 1, 2, 2) and torch.equal(y[:, 3], x[:, 2])
    with pytest.raises(ValueError, match="must both be"):
        compute_metrics(np.zeros((1, 2, 1, 4, 4)), np.zeros((1, 3, 1, 4, 4)))
    with pytest.raises(ValueError, match="unknown metric convention"):
        MetricAccumulator("psnr_only")


def test_each_mean_comes_with_its_95_percent_t_interval_over_the_sequences():
    """A table of one or a few sequences read like any other; each overall mean now has the half-width of its 95 %
    confidence interval over the sequences (Student's t on the per-sequence means)."""
    from scipy.stats import t

    from diffuma.metrics import MetricAccumulator

    target = torch.zeros(4, 2, 1, 12, 12)
    pred = torch.stack([torch.full((2, 1, 12, 12), v) for v in (0.1, 0.2, 0.3, 0.4)])  # per-sequence MSE v^2
    acc = MetricAccumulator()
    acc.update(pred[:3], target[:3])
    acc.update(pred[3:], target[3:])  # (over batches)
    res = acc.result()
    mse = np.array([0.01, 0.04, 0.09, 0.16])
    assert res["overall"]["mse"] == pytest.approx(mse.mean())
    assert res["ci95"]["mse"] == pytest.approx(t.ppf(0.975, 3) * mse.std(ddof=1) / 2, rel=1e-6)
    one = MetricAccumulator()
    one.update(pred[:1], target[:1])
    assert one.result()["ci95"] == {"mse": None, "mae": None, "ssim": None, "psnr": None}


def test_a_paired_comparison_tells_what_overlapping_intervals_cannot():
    """The quickstart's DIFFUMA and constant-motion MSE intervals overlap (0.00302 ± 0.00068 and 0.00319 ±
    0.00069), though DIFFUMA is lower on 22 of its 24 sequences: compared sequence by sequence, the difference shows."""
    from scipy.stats import t

    from diffuma.metrics import MetricAccumulator, paired_comparison

    target = torch.zeros(4, 1, 1, 12, 12)
    base_err = torch.tensor([0.1, 0.2, 0.3, 0.4])
    model_err = base_err - torch.tensor([0.01, 0.02, 0.01, 0.02])  # better on each, by a little
    model, base = MetricAccumulator(), MetricAccumulator()
    model.update(model_err[:, None, None, None, None].expand(4, 1, 1, 12, 12), target)
    base.update(base_err[:, None, None, None, None].expand(4, 1, 1, 12, 12), target)
    p = paired_comparison(model, base)
    d = model_err.double().numpy() ** 2 - base_err.double().numpy() ** 2
    assert (p["mse"]["wins"], p["mse"]["n"]) == (4, 4) and p["mse"]["mean_difference"] == pytest.approx(d.mean())
    assert p["mse"]["ci95"] == pytest.approx(t.ppf(0.975, 3) * d.std(ddof=1) / 2, rel=1e-5)
    assert p["psnr"]["wins"] == 4 and p["psnr"]["mean_difference"] > 0  # higher is better there
    # a tie is no win: a model that learnt to copy the baseline is better on no sequence, in any metric
    same = paired_comparison(base, base)
    assert all(same[m]["wins"] == 0 and same[m]["mean_difference"] == 0 for m in ("mse", "mae", "ssim", "psnr"))
