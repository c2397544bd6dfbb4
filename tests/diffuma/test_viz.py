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
    # the PNG says its samples hold 12 significant bits (sBIT): viewers showed 0..4095 in 16 bits near-black, with
    # nothing telling them otherwise; PIL reads it (and the chunk's CRC) as a check that the file is well formed
    with Image.open(tmp_path / "a.png") as im:
        im.verify()  # every chunk's CRC
    assert (tmp_path / "a.png").read_bytes()[33:42] == b"\x00\x00\x00\x01sBIT\x0c"
    save_png(tmp_path / "c.png", np.stack([frame[0]] * 3), max_value=4095)  # RGB: one sBIT byte per channel
    assert b"\x00\x00\x00\x03sBIT\x0c\x0c\x0c" in (tmp_path / "c.png").read_bytes()
    save_png(tmp_path / "d.png", frame, max_value=65535)  # all 16 bits significant: no sBIT
    assert b"sBIT" not in (tmp_path / "d.png").read_bytes()
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
    # 30 px panels enlarged x6; with truth, the error maps' colour bar (64 px) closes the row
    assert full.size[0] == 4 * 180 + 4 * 4 + 64 and forecast.size[0] == 2 * 180 + 4
    full.seek(7)
    bar = np.asarray(full.convert("RGB"))[:, -64:-50].astype(int)  # the colour ramp under its label strip
    top, bottom = bar[20:30].mean((0, 1)), bar[-5:].mean((0, 1))
    assert top.sum() > 500 and bottom.sum() < 60  # inferno: pale yellow at vmax (top), near black at 0


def test_grid_with_several_models_and_training_curves(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.random((5, 1, 24, 32)), rng.random((5, 1, 24, 32))
    prediction_grid(tmp_path / "g1.png", x, y, {"a": y})
    prediction_grid(tmp_path / "g3.png", x, y, {"a": y, "b": x, "c": 1 - y}, title="three models")
    h1 = Image.open(tmp_path / "g1.png").size[1]
    h3 = Image.open(tmp_path / "g3.png").size[1]
    assert h3 > h1 * 1.8  # 2 + 2*3 rows vs 2 + 2 rows
    prediction_grid(tmp_path / "g0.png", x, y, {"a": 1 - y}, errors=False)
    prediction_grid(tmp_path / "ge.png", x, y, {"a": 1 - y})
    g0, g1 = (np.asarray(Image.open(tmp_path / f"{n}.png").convert("RGB")) for n in ("g0", "ge"))
    assert g1.shape[1] > g0.shape[1]  # the colour bar column

    def pale_yellow(img):  # inferno at vmax, only on the colour bar (the error maps' values are below vmax)
        right = img[:, -img.shape[1] // 8:].astype(int)
        return int(((right[..., 0] > 235) & (right[..., 1] > 235) & (right[..., 2] > 120) & (right[..., 2] < 200)).sum())

    assert pale_yellow(g1) > 20 and pale_yellow(g0) == 0
    rows = [{"epoch": e, "val_mse": 1 / e, "val_mae": 1 / e, "val_ssim": 1 - 1 / e} for e in (1, 2, 3)]
    baselines = {"copy-last-frame": {"mse": 0.5, "mae": 0.5, "ssim": 0.5},
                 "constant-motion": {"mse": 0.2, "mae": 0.3, "ssim": 0.7}}
    plot_training_dynamics(rows, tmp_path / "dyn.png", baselines=baselines)
    assert Image.open(tmp_path / "dyn.png").size[0] > 500
    plot_training_dynamics([{"epoch": 1, "val_mse": ""}], tmp_path / "none.png")  # nothing validated yet
    assert not (tmp_path / "none.png").exists()


def test_training_dynamics_axes_name_the_metric_and_convention(tmp_path, monkeypatch):
    import diffuma.viz as viz

    figs = []
    monkeypatch.setattr(viz, "save_figure", lambda fig, path, dpi=100: figs.append(fig))
    rows = [{"epoch": e, "val_mse": 1 / e, "val_mae": 1 / e, "val_ssim": 1 - 1 / e} for e in (1, 2)]
    plot_training_dynamics(rows, tmp_path / "dyn.png", title="standin 'tiny', demo/run")
    plot_training_dynamics(rows, tmp_path / "dyn.png", convention="openstl")
    try:
        assert [ax.get_ylabel() for ax in figs[0].axes] == [
            "val MSE (per-pixel, [0,1])", "val MAE (per-pixel, [0,1])", "val SSIM"]
        assert figs[1].axes[0].get_ylabel() == "val MSE (summed over C·H·W, [0,1])"
        assert [ax.get_xlabel() for ax in figs[0].axes] == ["epoch"] * 3
    finally:
        for fig in figs:
            viz.plt.close(fig)


def test_a_title_in_a_script_the_font_lacks_writes_the_figure_without_warnings(tmp_path):
    """`chdl train --out "晶圆 运行/run"`: matplotlib printed four "Glyph ... missing" warnings per plot, -q or not."""
    import warnings

    import matplotlib.pyplot as plt

    from diffuma.viz import save_figure

    fig, ax = plt.subplots()
    ax.set_title("晶圆 运行")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_figure(fig, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_gif_panels_are_fitted_before_their_labels(tmp_path):
    """800x600 frames, three models: the whole row was shrunk to 1600 px after labelling, so labels and the colour
    bar's numbers ended about 4 px tall; now the panels are shrunk first and the label strips keep their height."""
    rng = np.random.default_rng(0)
    x, y = rng.random((2, 1, 600, 800)), rng.random((2, 1, 600, 800))
    side_by_side_gif(tmp_path / "g.gif", x, {"a": y * 0.9, "b": y * 0.8, "c": y * 0.7}, y, max_width=1600)
    im = Image.open(tmp_path / "g.gif")
    assert im.size[0] <= 1600
    im.seek(3)
    row = np.asarray(im.convert("RGB")).astype(int)
    strip = next(r for r in range(row.shape[0]) if row[r, 120:200].mean() > 40)  # the first row of the noise frame
    assert strip >= 18 and row[:strip, :100].max() > 200  # a label strip of 18 px or more, with its text (it was 7)


def test_an_rgb_frame_is_written_so_that_its_colours_read_back(tmp_path):
    """OpenCV writes BGR: an RGB frame saved without the conversion read back with red and blue swapped."""
    red = np.zeros((3, 4, 6))
    red[0] = 1.0
    save_png(tmp_path / "red.png", red)
    bgr = cv2.imread(str(tmp_path / "red.png"), cv2.IMREAD_UNCHANGED)
    assert bgr.shape == (4, 6, 3) and bgr.dtype == np.uint8
    assert (bgr[..., 2] == 255).all() and (bgr[..., 0] == 0).all() and (bgr[..., 1] == 0).all()
    with Image.open(tmp_path / "red.png") as im:  # (what a viewer shows)
        assert im.mode == "RGB" and im.getpixel((0, 0)) == (255, 0, 0)


def test_row_labels_are_broken_to_fit_their_row():
    """A long model label (`|error| diffuma@B2_pending`) ran into the next row's label: it is broken into lines no
    longer than the row is tall, after a space, @ or : where it can, and a short one is kept whole."""
    from diffuma.viz import row_label

    assert row_label("Ground truth", 1.2) == "Ground truth"
    assert row_label("diffuma@B2_pending", 1.2) == "diffuma@\nB2_pending"
    assert row_label("|error| constant motion (the last frame moved)", 1.2) == \
        "|error|\nconstant motion\n(the last frame\nmoved)"
    long = row_label("x" * 40, 1.2)
    assert long.replace("\n", "") == "x" * 40 and max(map(len, long.splitlines())) == 15  # 1.2 in at 8 pt
    assert max(map(len, row_label("|error| diffuma@B2_pending", 0.5).splitlines())) == 6
