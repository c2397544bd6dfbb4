"""diffuma.prediction's output folder: never the input, never anything but an earlier predict output replaced,
nothing half-written left behind (the folder is built aside and renamed into place)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from chdl.cli import main
from diffuma import prediction
from diffuma.output_folder import check_output_folder
from diffuma.prediction import write_predictions


def _write(out: Path, **kw) -> Path:
    x = np.zeros((1, 2, 1, 8, 8), np.float32)
    return write_predictions(out, x, {"m": x[:, :1] + 0.5}, x[:, :1], progress=False, **kw)


def test_overwrite_replaces_an_earlier_prediction_and_nothing_else(tmp_path):
    _write(tmp_path / "p")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        _write(tmp_path / "p")
    _write(tmp_path / "p", overwrite=True)
    assert sorted(x.name for x in (tmp_path / "p").iterdir()) == ["frames", "gifs", "grids", "predictions.zarr"]
    for name, files in {"data.zarr": ["zarr.json"], "run": ["manifest.json", "frames.jsonl"], "notes": ["a.txt"]}.items():
        folder = tmp_path / name
        folder.mkdir()
        for f in files:
            (folder / f).write_text("{}")
        with pytest.raises(FileExistsError, match="is not a chdl predict output .* refusing to delete it even with --overwrite"):
            _write(folder, overwrite=True)
        assert sorted(x.name for x in folder.iterdir()) == sorted(files)  # untouched


def test_a_pure_forecast_has_no_grids_folder(tmp_path):
    """Grids need the truth: a forecast of a recording too short for a full window left an empty grids/."""
    x = np.zeros((1, 2, 1, 8, 8), np.float32)
    write_predictions(tmp_path / "p", x, {"m": x[:, :1] + 0.5}, None, progress=False)
    assert sorted(x.name for x in (tmp_path / "p").iterdir()) == ["frames", "gifs", "predictions.zarr"]


def test_the_input_or_a_folder_inside_or_around_it_is_refused(tmp_path):
    data = tmp_path / "data.zarr"
    data.mkdir()
    for out, where in [(data, "is the input"), (data / "p", "is inside the input"), (tmp_path, "holds the input")]:
        with pytest.raises(ValueError, match=f"{out}: {where} {data}; choose another --out"):
            check_output_folder(out, data, overwrite=True)
    check_output_folder(tmp_path / "elsewhere", data)


def test_cli_refuses_its_input_as_output_even_with_overwrite_and_keeps_it(tmp_path):
    """The trial's data loss: `chdl predict --input cp.zarr --out cp.zarr --overwrite` deleted the dataset."""
    data = tmp_path / "cp.zarr"
    data.mkdir()
    (data / "zarr.json").write_text("{}")
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"x")  # never read: the output is checked first
    r = CliRunner().invoke(main, ["predict", "--checkpoint", str(ckpt), "--input", str(data), "--out", str(data),
                                  "--overwrite"])
    assert r.exit_code == 1 and r.output.strip() == f"Error: {data}: is the input {data}; choose another --out"
    assert (data / "zarr.json").read_text() == "{}"


def test_a_failed_or_interrupted_write_leaves_nothing_and_stale_temporaries_are_removed(tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prediction, "side_by_side_gif", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "p")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, alive = tmp_path / f".p.tmp{dead.pid}", tmp_path / f".p.tmp{os.getpid() + 0}x"
    stale.mkdir()
    alive.mkdir()  # not a pid: not ours to judge
    _write(tmp_path / "p")
    assert not stale.exists() and alive.exists() and (tmp_path / "p" / "predictions.zarr").is_dir()


def test_an_output_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(FileExistsError, match="exists and is a file"):
        _write(tmp_path / "afile")
    with pytest.raises(NotADirectoryError):
        _write(tmp_path / "afile" / "p")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["afile"]


def test_every_channel_of_a_two_channel_prediction_is_written_as_png(tmp_path):
    """2-channel data (WeatherBench u10 + v10): pred_tNN.png held channel 0 only, channel 1 was dropped."""
    import cv2

    rng = np.random.default_rng(0)
    x = rng.random((1, 2, 2, 8, 8)).astype(np.float32)
    pred = rng.random((1, 1, 2, 8, 8)).astype(np.float32)
    out = write_predictions(tmp_path / "p", x, {"m": pred}, None, progress=False, max_value=65535.0)
    names = sorted(f.name for f in (out / "frames" / "m").rglob("*.png"))
    assert names == ["pred_t01_c0.png", "pred_t01_c1.png"]
    for c in range(2):
        png = cv2.imread(str(next((out / "frames" / "m").rglob(f"pred_t01_c{c}.png"))), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(png, (pred[0, 0, c] * 65535 + 0.5).astype(np.uint16))
    from diffuma.viz import save_png

    with pytest.raises(ValueError, match="a PNG holds 1 .grey. or 3 .RGB. channels, not 2"):
        save_png(tmp_path / "x.png", pred[0, 0])


def test_the_grids_show_the_baselines_beside_the_models(tmp_path, monkeypatch):
    """The grids showed the models alone; whether DIFFUMA beats constant motion (what the tables decide) could not
    be seen in any picture. Their rows now include copy-last-frame and constant-motion, as the tables do; the
    frames, GIFs and predictions.zarr hold the models' predictions only."""
    import zarr

    from diffuma.evaluation import BASELINES

    drawn = []
    monkeypatch.setattr(prediction, "prediction_grid", lambda path, x, y, preds, title=None: drawn.append(preds))
    x = np.zeros((1, 3, 1, 8, 8), np.float32)
    x[0, :, 0] = np.array([0.2, 0.4, 0.6], np.float32)[:, None, None]  # (brightening: the copy is the last frame)
    write_predictions(tmp_path / "p", x, {"m": np.full((1, 2, 1, 8, 8), 0.5, np.float32)},
                      np.zeros((1, 2, 1, 8, 8), np.float32), progress=False)
    assert list(drawn[0]) == ["m", *BASELINES]
    np.testing.assert_allclose(drawn[0]["copy-last-frame"], np.full((2, 1, 8, 8), 0.6, np.float32))
    assert list(zarr.open_group(str(tmp_path / "p" / "predictions.zarr"), mode="r").attrs["models"]) == ["m"]
    assert sorted(p.name for p in (tmp_path / "p" / "frames").iterdir()) == ["m"]


def test_predicted_frames_are_numbered_from_t01_and_clamped_to_the_unit_range(tmp_path):
    """The first predicted frame is pred_t01 (the frame after the last input), not pred_t00; a model's values
    outside [0, 1] are clipped before they reach predictions.zarr and the PNGs."""
    import cv2
    import torch
    import zarr

    from diffuma.prediction import predict

    class Overshoot(torch.nn.Module):  # predicts 3 frames of -2 (left half) and +2 (right half)
        def forward(self, x):
            out = torch.full((x.shape[0], 3, *x.shape[2:]), -2.0)
            out[..., x.shape[-1] // 2:] = 2.0
            return out

    x = np.full((2, 2, 1, 8, 8), 0.5, np.float32)
    pred = predict(Overshoot(), x, batch_size=1)
    assert pred.shape == (2, 3, 1, 8, 8) and pred.min() == 0.0 and pred.max() == 1.0
    out = write_predictions(tmp_path / "p", x, {"m": pred}, None, progress=False)
    stored = zarr.open_group(str(out / "predictions.zarr"), mode="r")["prediction/m"][:]
    assert stored.min() == 0.0 and stored.max() == 1.0
    np.testing.assert_array_equal(stored, pred.numpy())
    for seq in ("seq_0", "seq_1"):
        folder = out / "frames" / "m" / seq
        assert sorted(f.name for f in folder.iterdir()) == ["pred_t01.png", "pred_t02.png", "pred_t03.png"]
        png = cv2.imread(str(folder / "pred_t01.png"), cv2.IMREAD_UNCHANGED)
        assert (png[:, :4] == 0).all() and (png[:, 4:] == 255).all()
    # an array given as it is, not through predict(): clipped the same (it was stored at -2 and 2)
    raw = Overshoot()(torch.from_numpy(x)).numpy()
    out = write_predictions(tmp_path / "q", x, {"m": raw}, None, progress=False)
    np.testing.assert_array_equal(zarr.open_group(str(out / "predictions.zarr"), mode="r")["prediction/m"][:],
                                  pred.numpy())
