"""Pictures: PNG bit depth round trip, GIF panels and frame count, multi-model grids, training curves."""

import cv2
import numpy as np
from PIL import Image

from diffuma.viz import plot_training_dynamics, prediction_grid, save_png, side_by_side_gif


def test_save_png_keeps_the_source_bit_depth(tmp_path):
    frame = np.linspace(0, 1, 4 * 6).reshape(1, 4, 6)
    save_png(tmp_path / "a.png", frame, max_value=4095)
    img = cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and img.shape == (4, 6)
    np.testing.assert_array_equal(img, np.round(frame[0] * 4095).astype(np.uint16))
    save_png(tmp_path / "b.png", frame * 2, max_value=255)  # clipped to [0, 1]
    img = cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and img.max() == 255


def test_gif_panels_and_frames(tmp_path):
    rng = np.random.default_rng(0)
    x, y, p = rng.random((5, 1, 20, 30)), rng.random((3, 1, 20, 30)), rng.random((3, 1, 20, 30))
    side_by_side_gif(tmp_path / "full.gif", x, p, y)
    side_by_side_gif(tmp_path / "forecast.gif", x, p)  # no truth: input | prediction only
    full, forecast = Image.open(tmp_path / "full.gif"), Image.open(tmp_path / "forecast.gif")
    assert full.n_frames == forecast.n_frames == 8
    assert full.size[0] == 4 * 180 + 3 * 4 and forecast.size[0] == 2 * 180 + 4  # 30 px panels enlarged x6


def test_grid_with_several_models_and_training_curves(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.random((5, 1, 24, 32)), rng.random((5, 1, 24, 32))
    prediction_grid(tmp_path / "g1.png", x, y, {"a": y})
    prediction_grid(tmp_path / "g3.png", x, y, {"a": y, "b": x, "c": 1 - y}, title="three models")
    h1 = Image.open(tmp_path / "g1.png").size[1]
    h3 = Image.open(tmp_path / "g3.png").size[1]
    assert h3 > h1 * 1.8  # 2 + 2*3 rows vs 2 + 2 rows
    rows = [{"epoch": e, "val_mse": 1 / e, "val_mae": 1 / e, "val_ssim": 1 - 1 / e} for e in (1, 2, 3)]
    baselines = {"copy-last-frame": {"mse": 0.5, "mae": 0.5, "ssim": 0.5},
                 "constant-motion": {"mse": 0.2, "mae": 0.3, "ssim": 0.7}}
    plot_training_dynamics(rows, tmp_path / "dyn.png", baselines=baselines)
    assert Image.open(tmp_path / "dyn.png").size[0] > 500
    plot_training_dynamics([{"epoch": 1, "val_mse": ""}], tmp_path / "none.png")  # nothing validated yet
    assert not (tmp_path / "none.png").exists()
