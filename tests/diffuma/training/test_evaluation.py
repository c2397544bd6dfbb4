"""evaluate / evaluate_checkpoint / markdown tables and their baseline rows, with the stand-in model."""

import json
import math

import pytest
import torch
from torch.utils.data import Dataset

from chdl.torch_dataset import SequenceDataset
from diffuma.evaluation import COPY_LAST_FRAME, evaluate, evaluate_checkpoint, markdown_table, report_markdown
from diffuma.metrics import compute_metrics, copy_last_frame
from diffuma.motion import CONSTANT_MOTION, constant_motion
from diffuma.training import train_from_config


# A hand-made split: 4 sequences of 2 input and 2 target frames, each frame one constant value (exact in
# float32), so every metric can be computed by hand. Input frame 0 carries the sequence's index (i / 8), the
# last input frame a value for the copy-last-frame baseline.
H = W = 12  # SSIM's Gaussian window (sigma 1.5) needs at least 11 x 11 pixels
LAST = [0.25, 0.5, 0.75, 1.0]
TARGET = [[0.375, 0.5], [0.125, 0.875], [0.625, 0.0], [1.0, 0.25]]
C1 = (0.01 * 1.0) ** 2  # SSIM's K1 with data_range 1


class ConstantFrames(Dataset):
    def __len__(self):
        return len(TARGET)

    def __getitem__(self, i):
        x = torch.stack([torch.full((1, H, W), i / 8), torch.full((1, H, W), LAST[i])])
        y = torch.stack([torch.full((1, H, W), v) for v in TARGET[i]])
        return x, y


class Constant(torch.nn.Module):
    """Predicts ``value`` everywhere and records the sequence indices of every batch it is given."""

    def __init__(self, value):
        super().__init__()
        self.value, self.batches = value, []

    def forward(self, x):
        self.batches.append([round(v * 8) for v in x[:, 0, 0, 0, 0].tolist()])
        return torch.full((x.shape[0], 2, *x.shape[2:]), self.value)


def _by_hand(preds, seqs):
    """Per-pixel metrics of constant frames: preds[i][k] against TARGET[i][k] for i in seqs."""
    def frame(p, t):
        p = min(max(p, 0.0), 1.0)  # predictions are clipped to [0, 1]
        se = (p - t) ** 2
        return {"mse": se, "mae": abs(p - t), "psnr": 10 * math.log10(1 / max(se, 1e-10)),
                "ssim": (2 * p * t + C1) / (p * p + t * t + C1)}  # constant frames: luminance term only

    per = [[frame(preds[i][k], TARGET[i][k]) for k in range(2)] for i in seqs]
    per_frame = [{m: sum(f[k][m] for f in per) / len(per) for m in ("mse", "mae", "ssim", "psnr")}
                 for k in range(2)]
    overall = {m: (per_frame[0][m] + per_frame[1][m]) / 2 for m in per_frame[0]}
    return overall, per_frame


def _check(res, overall, per_frame, n):
    assert res["n_sequences"] == n
    assert res["overall"] == pytest.approx(overall, rel=1e-6)
    assert [{m: f[m] for m in overall} for f in res["per_frame"]] == [pytest.approx(f, rel=1e-6) for f in per_frame]


def test_evaluate_numbers_by_hand_in_order_and_max_sequences():
    ds = ConstantFrames()
    model = Constant(0.5)
    res = evaluate(model, ds, batch_size=3)
    assert model.batches == [[0, 1, 2], [3]]  # in order, in batches of 3 and 1
    assert not model.training
    overall, per_frame = _by_hand([[0.5, 0.5]] * 4, range(4))
    _check(res["model"], overall, per_frame, 4)
    # Frame (0, 2) is perfect: its PSNR counts as 100 dB (MSE floored at 1e-10), averaged in per frame.
    assert per_frame[1]["psnr"] > 25 and overall["mse"] == pytest.approx((0.125**2 + 0.375**2 * 2 + 0.125**2 +
                                                                           0.5**2 + 0.5**2 + 0.25**2) / 8)
    # The copy-last-frame baseline, by hand from the last input frame.
    _check(res["copy_last_frame"], *_by_hand([[v, v] for v in LAST], range(4)), 4)
    # max_sequences takes the first sequences of the split.
    model = Constant(0.5)
    res = evaluate(model, ds, batch_size=3, max_sequences=2)
    assert model.batches == [[0, 1]]
    _check(res["model"], *_by_hand([[0.5, 0.5]] * 2, range(2)), 2)
    _check(res["copy_last_frame"], *_by_hand([[v, v] for v in LAST[:2]], range(2)), 2)
    assert evaluate(Constant(0.5), ds, max_sequences=10)["model"]["n_sequences"] == 4
    # Predictions above 1 are clipped: 1.5 scores as 1.0.
    _check(evaluate(Constant(1.5), ds)["model"], *_by_hand([[1.0, 1.0]] * 4, range(4)), 4)
    # openstl: MSE/MAE summed over C*H*W per frame, PSNR unchanged, SSIM OpenSTL's (tests/diffuma/test_metrics.py)
    o = evaluate(Constant(0.5), ds, convention="openstl")["model"]["overall"]
    assert {k: v for k, v in o.items() if k != "ssim"} == pytest.approx(
        {"mse": overall["mse"] * H * W, "mae": overall["mae"] * H * W, "psnr": overall["psnr"]}, rel=1e-6)


class MeanOfInputs(torch.nn.Module):
    def forward(self, x):
        return x.mean(1, keepdim=True).expand(-1, 5, -1, -1, -1)


def test_evaluate_in_batches_matches_metrics_on_the_whole_split(tiny_dataset):
    ds = SequenceDataset(tiny_dataset, "val")
    res = evaluate(MeanOfInputs(), ds, batch_size=3)  # 4 sequences in batches of 3 and 1
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    ys = torch.stack([ds[i][1] for i in range(len(ds))])
    model, base = compute_metrics(MeanOfInputs()(xs), ys), compute_metrics(copy_last_frame(xs, 5), ys)
    assert res["model"]["overall"] == pytest.approx(model["overall"], rel=1e-9)
    assert res["model"]["per_frame"] == [pytest.approx(f, rel=1e-9) for f in model["per_frame"]]
    assert res["copy_last_frame"]["overall"] == pytest.approx(base["overall"], rel=1e-9)
    motion = compute_metrics(constant_motion(xs, 5), ys)
    assert res["constant_motion"]["overall"] == pytest.approx(motion["overall"], rel=1e-6)
    assert res["model"]["overall"]["mse"] != pytest.approx(base["overall"]["mse"], rel=1e-3)
    assert res["model"]["n_sequences"] == res["copy_last_frame"]["n_sequences"] == 4


def test_evaluate_checkpoint_and_markdown(standin, tiny_dataset, tmp_path):
    run = train_from_config({"model": {"name": "standin", "preset": "tiny"},
                             "run": {"epochs": 1, "batch_size": 4, "num_workers": 0, "ema_decay": 0.5}},
                            tiny_dataset, tmp_path / "run", progress=False)
    r = evaluate_checkpoint(run / "checkpoints" / "last.pt", tiny_dataset, convention="openstl", batch_size=2)
    json.dumps(r)  # JSON-ready
    assert r["weights"] == "ema" and r["convention"] == "openstl" and r["n_sequences"] == 4
    assert len(r["model"]["per_frame"]) == 5 and r["out_frames"] == 5
    per_pixel = evaluate_checkpoint(run / "checkpoints" / "last.pt", tiny_dataset, weights="ema")
    # the baseline stays inside [0, 1]: x C*H*W; the stand-in model overshoots it, and OpenSTL does not clip for MSE
    assert r["copy_last_frame"]["overall"]["mse"] == pytest.approx(per_pixel["copy_last_frame"]["overall"]["mse"] * 256)
    assert r["model"]["overall"]["mse"] > per_pixel["model"]["overall"]["mse"] * 16 * 16
    md = report_markdown(r)
    assert f"| {COPY_LAST_FRAME} |" in md and f"| {CONSTANT_MOTION} |" in md and "| standin |" in md
    assert r["constant_motion"]["n_sequences"] == 4 and len(r["constant_motion"]["per_frame"]) == 5
    assert "Metric convention: `openstl`" in md and "SUMMED over C·H·W" in md
    assert "| t+1 | t+2 | t+3 | t+4 | t+5 |" in md
    with pytest.raises(ValueError, match="no sequences"):
        evaluate_checkpoint(run / "checkpoints" / "last.pt", tiny_dataset, split="train", max_sequences=0)


def test_markdown_tables_give_psnr_in_db_and_a_fixed_precision_per_column():
    def metrics(mse, mae, ssim, psnr):
        return {"mse": mse, "mae": mae, "ssim": ssim, "psnr": psnr}

    rows = {"model": {"overall": metrics(248.0, 0.0141, 0.9, 30.5),
                      "per_frame": [metrics(141.55, 0.0086286, 0.95, 31.0), metrics(248.0, 0.0141, 0.8, 29.25)]},
            COPY_LAST_FRAME: {"overall": metrics(0.5, 2.0, 1.0, 7.0),
                              "per_frame": [metrics(0.5, 2.0, 1.0, 7.0), metrics(0.5, 2.0, 1.0, 7.0)]}}
    md = markdown_table(rows, "openstl")
    assert "| model | 248.00 | 0.014100 | 0.9000 | 30.50 |" in md  # overall: trailing zeros kept
    assert "| model | MSE | 141.55 | 248.00 |" in md and "| model | MAE | 0.0086286 | 0.014100 |" in md
    assert "| model | PSNR (dB) | 31.00 | 29.25 |" in md and "| model | SSIM | 0.9500 | 0.8000 |" in md
    assert f"| {COPY_LAST_FRAME} | PSNR (dB) | 7.00 | 7.00 |" in md and "| PSNR |" not in md
    assert "| PSNR (dB) ↑ |" in md
    assert rows["model"]["per_frame"][0]["mse"] == 141.55  # the values themselves are untouched


def test_a_model_that_predicts_nan_is_an_error_not_nan_metrics():
    """A diverged model's NaN predictions gave `| diffuma | nan | nan |`, bare NaN in the JSON and exit 0 (eval,
    predict, bench), and training ended as if it had trained."""
    from diffuma.evaluation import NonFinitePredictions, check_finite, check_ssim_size

    class Diverged(torch.nn.Module):
        def forward(self, x):  # one of the batch's sequences NaN
            out = x[:, -1:].repeat(1, 2, 1, 1, 1).clone()
            out[1] = float("nan")
            return out

    with pytest.raises(NonFinitePredictions, match=r"^the model predicts NaN or infinite values \(1 of 4 sequences "
                                                   r"of a batch\): its weights diverged"):
        evaluate(Diverged(), ConstantFrames(), batch_size=4)
    check_finite(torch.zeros(2, 1, 1, 4, 4))
    with pytest.raises(NonFinitePredictions):
        check_finite(torch.full((2, 1, 1, 4, 4), float("inf")))
    for bad in (float("nan"), float("inf"), -float("inf")):  # one pixel of one frame is enough (a partly diverged model)
        one = torch.zeros(3, 2, 1, 4, 4)
        one[2, 1, 0, 3, 0] = bad
        with pytest.raises(NonFinitePredictions, match=r"\(1 of 3 sequences of a batch\)"):
            check_finite(one)
    check_ssim_size(11, 40, "d.zarr")
    with pytest.raises(ValueError, match=r"^d\.zarr: frames of 10x10 px, smaller than the 11 x 11 px window"):
        check_ssim_size(10, 10, "d.zarr")


def test_validation_that_predicts_nan_stops_the_run_as_diverged(standin, tiny_dataset, tmp_path, monkeypatch):
    from diffuma.evaluation import NonFinitePredictions
    from diffuma.training import trainer as trainer_module
    from diffuma.training.trainer import TrainingDiverged, build_trainer

    def diverged(*a, **k):
        raise NonFinitePredictions("the model predicts NaN or infinite values (1 of 3 sequences of a batch): ...")

    monkeypatch.setattr(trainer_module, "evaluate", diverged)
    config = {"model": {"name": "standin", "preset": "tiny"},
              "run": {"epochs": 1, "batch_size": 3, "num_workers": 0, "val_every_epochs": 1}}
    with pytest.raises(TrainingDiverged, match=r"^validation after step 3: the model predicts NaN .*; "
                                               r"training stopped, no checkpoint had been written yet"):
        build_trainer(config, tiny_dataset, tmp_path / "run", progress=False).fit()


def test_no_more_loader_workers_than_batches_or_cores(monkeypatch):
    """chdl eval --num-workers 100000 started loader workers of ~0.5 GB each until the machine stalled (load 421 on
    2 cores), and 12 for a single batch."""
    import os

    import diffuma.evaluation as evaluation

    asked = []
    real = evaluation.DataLoader
    monkeypatch.setattr(evaluation, "DataLoader", lambda *a, **k: asked.append(k["num_workers"]) or real(*a, **{
        **k, "num_workers": 0}))
    evaluate(Constant(0.5), ConstantFrames(), batch_size=3, num_workers=100_000)  # 4 sequences: 2 batches
    assert asked == [min(2, os.cpu_count())]
