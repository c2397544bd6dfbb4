"""Pictures of predictions and training: PNG frames, paper-style grids, side-by-side GIFs, training curves.

All inputs are float arrays/tensors in [0, 1] shaped (T, C, H, W) (or (C, H, W) for one frame). One channel
is shown in grey, three as RGB; for other channel counts the first channel is shown. Every file is written
to a temporary name and renamed into place.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from acquisition import files  # noqa: E402
from diffuma.evaluation import COPY_LAST_FRAME  # noqa: E402
from diffuma.motion import CONSTANT_MOTION  # noqa: E402

ERROR_CMAP = "inferno"
# How every plot draws the baselines of diffuma.evaluation.BASELINES (matplotlib line keyword arguments).
BASELINE_STYLES = {COPY_LAST_FRAME: {"color": "gray", "ls": "--"}, CONSTANT_MOTION: {"color": "black", "ls": ":"}}


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


def display(frame) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) grey or (H, W, 3) RGB float image for matplotlib."""
    f = np.clip(_np(frame), 0.0, 1.0)
    return f.transpose(1, 2, 0) if f.shape[0] == 3 else f[0]


def rgb8(frame, min_width: int = 0) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) uint8 RGB, enlarged by an integer factor (nearest) to >= min_width."""
    img = display(frame)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = (img * 255.0 + 0.5).astype(np.uint8)
    k = -(-min_width // img.shape[1])
    return np.repeat(np.repeat(img, k, 0), k, 1) if k > 1 else img


def error_rgb8(pred, truth, vmax: float, min_width: int = 0) -> np.ndarray:
    """|pred - truth| (mean over channels) through the error colormap, 0..vmax -> (H, W, 3) uint8."""
    err = np.abs(_np(pred) - _np(truth)).mean(0) / max(vmax, 1e-8)
    img = (plt.get_cmap(ERROR_CMAP)(np.clip(err, 0, 1))[..., :3] * 255.0 + 0.5).astype(np.uint8)
    k = -(-min_width // img.shape[1])
    return np.repeat(np.repeat(img, k, 0), k, 1) if k > 1 else img


def colorbar_rgb8(height: int, vmax: float, width: int = 64) -> np.ndarray:
    """A vertical colour bar of the error colormap, 0 (bottom) .. ``vmax`` (top), with the two values written
    beside it: (height, width, 3) uint8, for the GIF panels."""
    bar_w = max(6, width // 4)
    ramp = np.linspace(1.0, 0.0, height)[:, None]
    colours = (plt.get_cmap(ERROR_CMAP)(ramp)[..., :3] * 255.0 + 0.5).astype(np.uint8)
    img = np.zeros((height, width, 3), np.uint8)
    img[:, :bar_w] = np.repeat(colours, bar_w, axis=1)
    scale = max(0.3, min(0.45, height / 300))
    for text, y in ((f"{vmax:.3g}", int(12 * scale / 0.35)), ("0", height - 3)):
        cv2.putText(img, text, (bar_w + 3, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def save_png(path: str | Path, frame, max_value: float = 255.0) -> None:
    """One (C, H, W) frame in [0, 1] as a lossless PNG at the dataset's bit depth (8-bit when max_value <= 255,
    else 16-bit scaled to max_value): C = 1 grey, C = 3 RGB. ValueError for another C (a PNG holds neither: one
    file per channel, as :func:`diffuma.prediction.write_predictions` does)."""
    path = Path(path)
    f = np.clip(_np(frame), 0.0, 1.0)
    if f.shape[0] not in (1, 3):
        raise ValueError(f"{path}: a PNG holds 1 (grey) or 3 (RGB) channels, not {f.shape[0]}: write one per channel")
    dtype = np.uint8 if max_value <= 255 else np.uint16
    img = (f * max_value + 0.5).astype(dtype)
    channels = img.shape[0]
    img = cv2.cvtColor(img.transpose(1, 2, 0), cv2.COLOR_RGB2BGR) if channels == 3 else img[0]
    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{path}: could not encode PNG")
    bits = int(max_value).bit_length()
    if dtype == np.uint16 and bits < 16 and max_value == 2 ** bits - 1:  # 12-bit data in 16-bit samples
        png = _with_sbit(png.tobytes(), bits, channels)
    files.write_bytes(path, bytes(png))


def _with_sbit(png: bytes, bits: int, channels: int) -> bytes:
    """``png`` with an sBIT chunk after IHDR (PNG spec 11.3.3.4): its samples hold ``bits`` significant bits, e.g.
    12-bit data stored as 0..4095 in 16-bit samples. The values stay the dataset's integers (as the raw format's
    frames); a viewer that reads sBIT can show them at full brightness, one that does not shows them dark."""
    import struct
    import zlib

    data = bytes([bits] * channels)
    chunk = struct.pack(">I", len(data)) + b"sBIT" + data + struct.pack(">I", zlib.crc32(b"sBIT" + data))
    end_of_ihdr = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, 13 data bytes and CRC
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """Adds a dark strip with ``text`` above an (H, W, 3) uint8 image."""
    h = max(18, img.shape[0] // 16)
    strip = np.zeros((h, img.shape[1], 3), np.uint8)
    cv2.putText(strip, text, (4, int(h * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, h / 30.0, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.concatenate([strip, img], axis=0)


def side_by_side_gif(path: str | Path, inputs, preds, targets=None, fps: float = 2.0, max_width: int = 1600,
                     min_panel_width: int = 160) -> None:
    """An animated GIF with panels input | truth | prediction | error map (truth and error only with targets);
    ``preds`` is one (T_out, C, H, W) array or {model name: array}, each model adding a prediction and an error
    panel.

    The animation runs over the T_in input frames (the other panels blank) and then the T_out predicted frames
    (the input panel holding the last input frame). The error maps' colour scale is 0..max error of the sequence,
    shown by a colour bar at the right end (:func:`colorbar_rgb8`).
    Small frames are enlarged (nearest, integer factor) to at least ``min_panel_width`` so the labels fit.
    """
    preds = {k: _np(v) for k, v in preds.items()} if isinstance(preds, dict) else {"prediction": _np(preds)}
    inputs, targets = _np(inputs), None if targets is None else _np(targets)
    vmax = max(float(np.abs(p - targets).max()) for p in preds.values()) if targets is not None else 1.0
    n_out = len(next(iter(preds.values())))
    mw = min_panel_width

    # Panels are shrunk to fit max_width *before* they are labelled (the whole row was shrunk after: at 800x600, or
    # with several models, the labels and the colour bar's numbers ended a few pixels tall); the bar keeps its width.
    ph, pw = rgb8(inputs[0], mw).shape[:2]
    n_panels = 1 + (targets is not None) + len(preds) * (1 + (targets is not None))
    bar_w = 64 if targets is not None else 0
    fit = min(1.0, (max_width - bar_w - 4 * n_panels) / (n_panels * pw))
    size = (max(1, int(pw * fit)), max(1, int(ph * fit)))

    def rgb(f):
        img = rgb8(f, mw)
        return img if fit == 1.0 else cv2.resize(img, size, interpolation=cv2.INTER_AREA)

    def error_panel(p, y):
        img = error_rgb8(p, y, vmax, mw)
        return img if fit == 1.0 else cv2.resize(img, size, interpolation=cv2.INTER_AREA)

    blank = np.zeros_like(rgb(inputs[0]))
    frames = []
    n_in = len(inputs)
    for t in range(n_in + n_out):
        k = t - n_in
        panels = [_label(rgb(inputs[min(t, n_in - 1)]), f"input t{min(t, n_in - 1) - n_in + 1}")]
        if targets is not None:
            panels.append(_label(rgb(targets[k]) if k >= 0 else blank, f"truth t+{k + 1}" if k >= 0 else "truth"))
        for name, p in preds.items():
            panels.append(_label(rgb(p[k]) if k >= 0 else blank, f"{name} t+{k + 1}" if k >= 0 else name))
            if targets is not None:
                panels.append(_label(error_panel(p[k], targets[k]) if k >= 0 else blank,
                                     f"|error| 0..{vmax:.3f}"))
        if targets is not None:
            panels.append(_label(colorbar_rgb8(blank.shape[0], vmax), "|error|"))
        sep = np.full((panels[0].shape[0], 4, 3), 128, np.uint8)
        row = np.concatenate([p for pair in zip(panels, [sep] * len(panels)) for p in pair][:-1], axis=1)
        if row.shape[1] > max_width:
            s = max_width / row.shape[1]
            row = cv2.resize(row, (max_width, max(1, round(row.shape[0] * s))), interpolation=cv2.INTER_AREA)
        frames.append(Image.fromarray(row))
    with files.replacing(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)


def row_label(name: str, row_inches: float, fontsize: float = 8) -> str:
    """``name`` broken into lines that fit a row ``row_inches`` tall as a vertical axis label (about 0.7 em a
    character), after a space, ``@`` or ``:`` where it can (``diffuma@B2_pending`` ran into the next row's
    label), inside a word where one is longer than a line."""
    width = max(6, int(row_inches * 72 / (0.7 * fontsize)))
    pieces = [w for part in re.split(r"(?<=[@: ])", name) for w in textwrap.wrap(part, width, drop_whitespace=False)
              or [part]]
    lines = [""]
    for piece in pieces:
        if lines[-1] and len(lines[-1] + piece.rstrip()) > width:
            lines.append("")
        lines[-1] += piece if lines[-1] else piece.lstrip()
    return "\n".join(line.rstrip() for line in lines)


def prediction_grid(path: str | Path, inputs, targets, preds: dict, title: str | None = None,
                    errors: bool = True, cell_inches: float = 1.6) -> None:
    """A paper-style figure for one sequence: a row of inputs, a row of ground truth, then one row of
    predictions (and, with ``errors``, one row of |error| with its colour bar, 0..the largest error of any model)
    per model in ``preds`` ({name: (T_out, C, H, W)})."""
    inputs, targets = _np(inputs), _np(targets)
    preds = {k: _np(v) for k, v in preds.items()}
    rows = [("Input", inputs), ("Ground truth", targets)]
    vmax = max(float(np.abs(p - targets).max()) for p in preds.values()) if preds else 1.0
    for name, p in preds.items():
        rows.append((name, p))
        if errors:
            rows.append((f"|error| {name}", np.abs(p - targets).mean(1, keepdims=True)))
    n_cols = max(len(inputs), len(targets))
    h, w = inputs.shape[-2:]
    bar = errors and bool(preds)  # one narrow extra column: the colour bar of each error row
    fig, axes = plt.subplots(len(rows), n_cols + bar, squeeze=False,
                             gridspec_kw={"width_ratios": [1] * n_cols + [0.1] * bar},
                             figsize=(cell_inches * (n_cols + 0.5 * bar),
                                      cell_inches * h / w * len(rows) + (0.4 if title else 0)))
    for r, (name, seq) in enumerate(rows):
        is_err = name.startswith("|error|")
        if bar:
            cax = axes[r, n_cols]
            if is_err:
                scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, max(vmax, 1e-8)), ERROR_CMAP)
                cb = fig.colorbar(scale, cax=cax)
                cb.ax.tick_params(labelsize=6)
                cb.set_label("|error| (intensity, 0-1)", fontsize=6)
            else:
                cax.axis("off")
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c >= len(seq):
                continue
            if is_err:
                ax.imshow(seq[c, 0], cmap=ERROR_CMAP, vmin=0, vmax=max(vmax, 1e-8))
            else:
                img = display(seq[c])
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            if r == 0:
                ax.set_title(f"t{c - len(inputs) + 1}", fontsize=8)
            elif r == 1:
                ax.set_title(f"t+{c + 1}", fontsize=8)
        axes[r, 0].set_ylabel(row_label(name, cell_inches * h / w), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Lay out, write whole (acquisition.files.replacing: the old file or the new, never half) and close a
    matplotlib figure; the format is the file name's suffix. OSError naming ``path`` if it cannot be written."""
    path = Path(path)
    try:
        # a title naming a run folder in a script DejaVu Sans lacks (CJK): its glyphs are boxes, and matplotlib's
        # four warnings per plot broke through --quiet; the figure is written all the same
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
            fig.tight_layout()
            with files.replacing(path) as tmp:
                fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(fig)


def plot_training_dynamics(rows: list[dict], path: str | Path, baselines: dict[str, dict] | None = None,
                           title: str | None = None, convention: str = "per_pixel", model: str = "model") -> None:
    """The paper's training-dynamics figure: validation MSE, MAE and SSIM per epoch (rows as in epochs.csv),
    with each baseline's values ``{row name: {mse, mae, ssim, ...}}`` (e.g. copy-last-frame, constant-motion) as
    horizontal lines in its ``BASELINE_STYLES`` style when given; ``title`` (the run: model, validation set)
    above the three panels; ``model`` names the trained model's line. The y axes name the metric and its ``convention`` (``diffuma.metrics.CONVENTIONS``;
    the trainer validates per pixel), on [0, 1] intensities."""
    pts = [r for r in rows if r.get("val_mse") not in (None, "")]
    if not pts:
        return
    epochs = [int(r["epoch"]) for r in pts]
    per = "per-pixel" if convention == "per_pixel" else "summed over C·H·W"
    ylabel = {"mse": f"val MSE ({per}, [0,1])", "mae": f"val MAE ({per}, [0,1])", "ssim": "val SSIM"}
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, m, label in zip(axes, ("mse", "mae", "ssim"), ("MSE ↓", "MAE ↓", "SSIM ↑")):
        ax.set_ylabel(ylabel[m])
        ax.plot(epochs, [float(r[f"val_{m}"]) for r in pts], "o-", label=model)
        for name, values in (baselines or {}).items():
            ax.axhline(values[m], label=name, **BASELINE_STYLES.get(name, {}))
        ax.set_xlabel("epoch")
        if len(set(epochs)) <= 12:                 # few epochs (one, after a short run): a tick at each
            ax.set_xticks(sorted(set(epochs)))
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        else:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(f"validation {label}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
