"""Predict future frames from one or several checkpoints and write them out: PNG frames, side-by-side GIFs,
paper-style grids and a zarr of the predictions.

Inputs are arrays in [0, 1] shaped (N, T_in, C, H, W) (targets, when known, (N, T_out, C, H, W)); predictions
are ``{model label: (N, T_out, C, H, W)}``, all on the same sequences. Reading a raw recording into such arrays
is the CLI's job (``chdl predict``), so this module never imports acquisition.

Output folder (written under a temporary name, renamed into place when complete)::

    predictions.zarr/       input (N,T_in,C,H,W) [, target (N,T_out,C,H,W)], prediction/<label> (N,T_out,C,H,W):
                            float32 in [0,1]; attrs: models [labels], sequence_ids, max_value, + the caller's
                            (checkpoints, source, ...)
    frames/<label>/seq_<id>/pred_tNN.png  each predicted frame, lossless, at the source bit depth
    gifs/seq_<id>.gif       input | truth | prediction | |error| per model (truth/error only with targets)
    grids/seq_<id>.png      inputs / ground truth / prediction and |error| per model, one column per frame
                            (only with targets)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm import tqdm

from diffuma.evaluation import autocast, baseline_predictions, check_finite
from diffuma.output_folder import check_output_folder, remove_stale_working_folders
from diffuma.viz import prediction_grid, save_png, side_by_side_gif


@torch.inference_mode()
def predict(model: torch.nn.Module, inputs, batch_size: int = 4, device: str | torch.device = "cpu",
            amp_dtype: torch.dtype | None = None, name: str = "the model") -> torch.Tensor:
    """Model predictions (N, T_out, C, H, W) float32 on the CPU, clipped to [0, 1].
    :class:`diffuma.evaluation.NonFinitePredictions` naming the model as ``name`` if it predicts NaN or infinity."""
    device = torch.device(device)
    x_all = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
    model.eval().to(device)
    outs = []
    for i in range(0, len(x_all), batch_size):
        x = x_all[i:i + batch_size].to(device)
        with autocast(device, amp_dtype):
            pred = model(x).float()
        check_finite(pred, name)  # (NaN went into the PNGs as garbage, exit 0)
        outs.append(pred.clamp_(0, 1).cpu())
    return torch.cat(outs)


def write_predictions(out: str | Path, inputs, preds: dict, targets=None, *, sequence_ids=None,
                      max_value: float = 255.0, attrs: dict | None = None, fps: float = 2.0, overwrite: bool = False,
                      progress: bool = True) -> Path:
    """Writes the output folder described in the module docstring; ``preds`` = {label: (N, T_out, C, H, W)},
    clipped to [0, 1] as :func:`predict` clips.
    Returns ``out``. Refuses what :func:`check_output_folder` refuses; the folder is built as a temporary
    sibling and renamed into place, which is removed if anything fails or the run is interrupted (and, if the
    process was killed, by the next run into ``out``). OSError (disk full, a read-only folder) as raised."""
    out = Path(out)
    check_output_folder(out, overwrite=overwrite)
    remove_stale_working_folders(out)
    inputs = np.asarray(inputs, dtype=np.float32)
    # (clipped as predict() clips: a caller's own unclipped array went into predictions.zarr as it was, outside the
    # [0, 1] the format states, while its PNGs were clipped)
    preds = {str(k): np.clip(np.asarray(v, dtype=np.float32), 0.0, 1.0) for k, v in preds.items()}
    targets = None if targets is None else np.asarray(targets, dtype=np.float32)
    ids = [str(s) for s in (sequence_ids if sequence_ids is not None else range(len(inputs)))]
    names = [f"seq_{s}" for s in ids]
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_folder(tmp, inputs, preds, targets, ids, names, max_value, attrs, fps, progress)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:  # an error, Ctrl-C: nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_folder(tmp: Path, inputs, preds, targets, ids, names, max_value, attrs, fps, progress) -> None:
    for sub in ("frames", "gifs") + (("grids",) if targets is not None else ()):  # (grids need the truth: a pure
        (tmp / sub).mkdir(parents=True)  # forecast left an empty grids/)
    group = zarr.open_group(str(tmp / "predictions.zarr"), mode="w", zarr_format=3,
                            attributes={**(attrs or {}), "models": list(preds), "sequence_ids": ids,
                                        "max_value": float(max_value)})
    arrays = {"input": inputs} | ({"target": targets} if targets is not None else {}) \
        | {f"prediction/{label}": p for label, p in preds.items()}
    for key, a in arrays.items():
        group.create_array(key, data=a, chunks=(1,) + a.shape[1:],
                           dimension_names=("sequence", "time", "channel", "height", "width"))
    for i, name in enumerate(tqdm(names, desc="writing", unit="seq", disable=not progress)):
        for label, p in preds.items():
            folder = tmp / "frames" / label / name
            folder.mkdir(parents=True)
            for k, frame in enumerate(p[i]):
                if frame.shape[0] in (1, 3):  # grey or RGB: one PNG
                    save_png(folder / f"pred_t{k + 1:02d}.png", frame, max_value)
                else:  # 2 or 4+ channels (WeatherBench u10 + v10): one grey PNG per channel, none dropped
                    for c in range(frame.shape[0]):
                        save_png(folder / f"pred_t{k + 1:02d}_c{c}.png", frame[c:c + 1], max_value)
        truth = None if targets is None else targets[i]
        seq_preds = {label: p[i] for label, p in preds.items()}
        side_by_side_gif(tmp / "gifs" / f"{name}.gif", inputs[i], seq_preds, truth, fps=fps)
        if truth is not None:
            baselines = baseline_predictions(torch.from_numpy(inputs[i][None]), truth.shape[0])  # (as in the tables)
            prediction_grid(tmp / "grids" / f"{name}.png", inputs[i], truth,
                            seq_preds | {k: v[0].numpy() for k, v in baselines.items()}, title=name)
