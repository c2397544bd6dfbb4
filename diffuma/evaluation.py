"""Evaluate a model or a checkpoint on a curated dataset split: MSE, MAE, SSIM, PSNR overall and per predicted
frame, always next to the baselines of ``BASELINES`` (copy-last-frame and constant-motion) computed by the same
code on the same sequences.

Metric definitions and the two conventions are in ``diffuma.metrics`` and docs/training.md; the
constant-motion baseline is ``diffuma.motion.constant_motion``.
"""

from __future__ import annotations

import math
import os

from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from diffuma.metrics import (CONVENTION_NOTES, METRICS, MetricAccumulator, check_ssim_size, copy_last_frame,
                             paired_comparison)
from diffuma.motion import CONSTANT_MOTION, constant_motion

FEW_SEQUENCES = 10  # an evaluation of fewer sequences says they are too few to cite
COPY_LAST_FRAME = "copy-last-frame"  # the row name of the baseline in every table
# Every table's baseline rows, in this order: row name -> f(x (B, T_in, C, H, W) in [0, 1], T_out) ->
# (B, T_out, C, H, W) prediction. Their JSON key is ``result_key(row name)``.
BASELINES = {COPY_LAST_FRAME: copy_last_frame, CONSTANT_MOTION: constant_motion}


def baseline_predictions(x: torch.Tensor, out_frames: int) -> dict[str, torch.Tensor]:
    """Every baseline's prediction of (B, T_in, C, H, W) inputs: {row name: (B, T_out, C, H, W)} in [0, 1], for the
    pictures (prediction grids) as the tables have them: the model's rows beside what it must beat."""
    return {name: fn(x, out_frames).clamp(0, 1) for name, fn in BASELINES.items()}


def result_key(name: str) -> str:
    """The JSON key of a baseline row: "copy-last-frame" -> "copy_last_frame"."""
    return name.replace("-", "_")


class NonFinitePredictions(ValueError):
    """A model predicted NaN or infinite values: its weights diverged. Metrics of such predictions would be NaN,
    written as ordinary numbers (and as bare ``NaN`` in JSON, which strict parsers refuse)."""


def check_finite(pred: torch.Tensor, name: str = "the model") -> None:
    """:class:`NonFinitePredictions` if ``pred`` (N, T, C, H, W) holds a NaN or an infinity, naming how many of
    the N sequences do."""
    bad = ~torch.isfinite(pred.reshape(len(pred), -1)).all(dim=1)
    if bad.any():
        raise NonFinitePredictions(f"{name} predicts NaN or infinite values ({int(bad.sum())} of {len(pred)} "
                                   "sequences of a batch): its weights diverged; train again with a lower run.lr, "
                                   "run.warmup_steps or run.grad_clip")


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """bf16/fp16 autocast on CUDA when asked, nothing otherwise."""
    if amp_dtype is None or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, dataset: Dataset, *, convention: str = "per_pixel", batch_size: int = 4,
             device: str | torch.device = "cpu", max_sequences: int | None = None, num_workers: int = 0,
             with_baselines: bool = True, amp_dtype: torch.dtype | None = None,
             progress: bool = False, name: str = "the model") -> dict:
    """Runs ``model`` over (the first ``max_sequences`` of) ``dataset`` in order.

    Returns ``{"model": metrics, "copy_last_frame": metrics, "constant_motion": metrics}`` (one entry per
    ``BASELINES`` row, keyed by ``result_key``, only if ``with_baselines``), each as
    ``MetricAccumulator.result()``. Leaves the model in eval mode. :class:`NonFinitePredictions` naming the model
    as ``name`` if it predicts NaN or infinity.
    """
    device = torch.device(device)
    if max_sequences is not None and max_sequences < len(dataset):
        dataset = Subset(dataset, range(max_sequences))
    if len(dataset) == 0:
        raise ValueError("nothing to evaluate: the split has no sequences")
    # no more loader workers than batches or cores: --num-workers 100000 started workers of ~0.5 GB until the
    # machine stalled (12 for one batch on 2 cores); more cannot read faster
    workers = min(num_workers, -(-len(dataset) // batch_size), os.cpu_count() or 1)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    acc = MetricAccumulator(convention)
    baselines = {name: MetricAccumulator(convention) for name in (BASELINES if with_baselines else ())}
    model.eval()
    for x, y in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False):
        x = x.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            pred = model(x)
        check_finite(pred, name)
        acc.update(pred.float(), y)
        for name, base in baselines.items():
            base.update(BASELINES[name](x, y.shape[1]), y)
    return {"model": acc.result(), **{result_key(name): base.result() for name, base in baselines.items()},
            **({"paired": {result_key(name): paired_comparison(acc, base) for name, base in baselines.items()}}
               if baselines else {})}


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, split: str = "val", convention: str = "per_pixel",
                        batch_size: int | None = None, *, weights: str = "auto", device: str = "auto",
                        num_workers: int = 0, max_sequences: int | None = None, progress: bool = False,
                        state: dict | None = None) -> dict:
    """Loads a checkpoint (weights-only; ``state``: one already loaded from it) and evaluates it on ``split`` of the
    dataset at ``data``.

    Returns a JSON-ready dict: ``checkpoint, data, split, convention, convention_note, model_name, weights
    ("ema"|"model"), step, epoch, in_frames, out_frames, n_sequences, model {overall, per_frame},
    copy_last_frame {overall, per_frame}, constant_motion {overall, per_frame}`` (one key per ``BASELINES`` row),
    and what the numbers can be traced to (:func:`evaluation_record`). ``notes``: what a reader of the numbers
    must know (a checkpoint chosen on this very split; a dataset declaring other frame counts than the model's).
    """
    from diffuma.training.checkpoint import build_model_from_checkpoint, load_checkpoint
    from diffuma.training.data import checkpoint_dataset

    state = state if state is not None else load_checkpoint(checkpoint)
    model, used = build_model_from_checkpoint(state, weights, checkpoint)
    info, run = state["data"], state["config"]["run"]
    dataset = checkpoint_dataset(state, data, split)
    check_ssim_size(info["height"], info["width"], data)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    batch_size = batch_size or run["batch_size"]
    res = evaluate(model.to(dev), dataset, convention=convention, batch_size=batch_size, device=dev,
                   max_sequences=max_sequences, num_workers=num_workers, progress=progress,
                   name=f"{checkpoint}: its model")  # (which checkpoint diverged)
    return {
        "checkpoint": str(checkpoint), "data": str(data), "split": split, "convention": convention,
        "convention_note": CONVENTION_NOTES[convention], "model_name": state["model_name"], "weights": used,
        "step": state["step"], "epoch": state["epoch"], "in_frames": info["in_frames"],
        "out_frames": info["out_frames"], "n_sequences": res["model"]["n_sequences"],
        "model": res["model"], **{result_key(name): res[result_key(name)] for name in BASELINES},
        "paired": res["paired"],
        **evaluation_record(state, checkpoint, data, split, batch_size=batch_size, device=dev,
                            max_sequences=max_sequences),
    }


def saved_identity_matches(state: dict, identity: dict) -> bool:
    """Whether the dataset of ``identity`` (:meth:`chdl.dataset.DatasetReader.identity`) holds what the checkpoint
    ``state`` was trained on: the same frame shape and content digest, or the same data digest (a replay of the
    recording curated the same way: its frames, splits and QC, with other capture times)."""
    saved = state["data"].get("identity") or {}
    same_data = bool(saved.get("data")) and saved.get("data") == identity.get("data")
    return saved.get("frames_shape") == identity["frames_shape"] and (saved.get("content") == identity["content"]
                                                                      or same_data)


def evaluation_record(state: dict, checkpoint: str | Path, data: str | Path, split: str, *, batch_size: int,
                      device: torch.device, max_sequences: int | None) -> dict:
    """What an evaluation's numbers can be traced to, and the notes a reader must see: ``sequences`` (the dataset
    indices scored, in the order of the rows' ``per_sequence`` values), ``checkpoint_blake3``
    (the digest of the bytes ``state`` was loaded from: :func:`diffuma.training.checkpoint.load_checkpoint`), ``data_path`` (absolute), ``data_identity`` (:meth:`chdl.dataset.DatasetReader.identity`:
    shape, creation time, content digest), ``max_value``, ``frame_offset``, ``batch_size``, ``device``,
    ``precision`` (float32: no autocast), ``max_sequences``, ``code`` (this code, :func:`chdl.provenance.code_version`),
    ``trained_with`` (the checkpoint's ``code``, null before chdl recorded it) and ``notes`` (a list of lines)."""
    from chdl.dataset import open_dataset
    from chdl.provenance import code_version
    from diffuma.training.checkpoint import LOADED_DIGEST
    from diffuma.training.data import other_max_value

    reader = open_dataset(data)
    identity = reader.identity()
    notes = []
    scored = reader.indices(split)[:max_sequences]
    if len(scored) < FEW_SEQUENCES:
        notes.append(f"only {len(scored)} sequence{'s' if len(scored) != 1 else ''} scored: too few for a figure to "
                     "cite " + ("(see the confidence half-widths)" if len(scored) > 1 else "(its spread cannot be measured)"))
    declared = (int(reader.attrs["in_frames"]), int(reader.attrs["out_frames"]))
    trained = (state["data"]["in_frames"], state["data"]["out_frames"])
    if declared != trained:  # the model predicts what it was trained for; the dataset's protocol is another
        notes.append(f"the dataset declares {declared[0]}->{declared[1]} frames; this checkpoint predicts "
                     f"{trained[0]}->{trained[1]}, and was scored so: not the dataset's own protocol")
    max_value = float(reader.attrs["max_value"])
    if (trained_max := other_max_value(state["data"], max_value)) is not None:  # e.g. 12-bit data curated as 16-bit
        notes.append(f"this checkpoint was trained on frames scaled by max_value {trained_max:g}; this dataset "
                     f"is scaled by {max_value:g}: its intensities in [0, 1] are not the ones the model learned")
    trained_on = set(state["data"].get("train_sequences") or [])
    if trained_on and (seen := sum(k in trained_on for k in reader.sequence_keys(scored))):
        notes.append(f"{seen} of the {len(scored)} sequences scored here were training sequences of this checkpoint "
                     "(the same recording, lane and capture times): its numbers here are optimistic")
    elif (split in ("train", "all") and saved_identity_matches(state, identity)
          # the keys cannot tell: a checkpoint without them, or the same data with other capture times (a replay)
          and (not trained_on or (state["data"].get("identity") or {}).get("content") != identity["content"])):
        notes.append(f"scored on the {split} split of the dataset this checkpoint was trained on (or a copy of its "
                     "data): its training sequences are among them, so its numbers here are optimistic")
    selected = state.get("selected")
    if selected and selected.get("split") == split and saved_identity_matches(state, identity):
        notes.append(f"this checkpoint was chosen by its {selected.get('by')} on this split (best.pt): its numbers "
                     "here are optimistic; cite a checkpoint chosen otherwise, e.g. last.pt (as chdl bench does)")
    return {"sequences": [int(i) for i in scored],  # (dataset indices, in the order of every per_sequence list)
            "checkpoint_blake3": state[LOADED_DIGEST], "data_path": str(Path(data).resolve()),
            "data_identity": identity, "max_value": max_value,
            "frame_offset": int(state["config"]["run"].get("frame_offset", 0)), "batch_size": int(batch_size),
            "device": device.type, "precision": "float32", "max_sequences": max_sequences,
            "code": code_version(torch=True), "trained_with": state.get("code"), "notes": notes}


def per_sequence_csv(sequences: list[int], rows: dict[str, dict]) -> str:
    """The per-sequence means of ``{row name: MetricAccumulator.result()}`` as CSV, one line per row and sequence:
    ``sequence,row,mse,mae,ssim,psnr``, sequence being the dataset index (``sequences``, in the order scored) and
    every value exact (Python's repr). For one's own significance tests and plots (chdl's own is
    :func:`diffuma.metrics.paired_comparison`); eval writes it for its model and baselines, bench for all its rows."""
    import csv
    import io

    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["sequence", "row", *METRICS])
    for name, r in rows.items():
        for k, index in enumerate(sequences):
            out.writerow([index, name, *(repr(r["per_sequence"][m][k]) for m in METRICS)])
    return buf.getvalue()


# How tables print each metric (eval's and bench's Markdown): a fixed precision per metric, trailing zeros kept
METRIC_FORMATS = {"mse": "{:#.5g}", "mae": "{:#.5g}", "ssim": "{:.4f}", "psnr": "{:.2f}"}


def ci95_line(rows: dict[str, dict]) -> str | None:
    """The line under a results table giving each row's 95 % confidence half-widths (``ci95`` of
    :class:`diffuma.metrics.MetricAccumulator` results); None where they are not known (one sequence, old results)."""
    fmt = METRIC_FORMATS
    label = {"mse": "MSE", "mae": "MAE", "ssim": "SSIM", "psnr": "PSNR (dB)"}
    spread = {name: r["ci95"] for name, r in rows.items() if all((r.get("ci95") or {}).get(m) is not None for m in fmt)}
    if not spread:
        return None
    n = next(iter(rows.values()))["n_sequences"]
    return (f"95 % confidence half-widths of these means over the {n} sequences (Student's t on the per-sequence "
            "means; sequences of one recording are not independent, so these are lower bounds): "
            + "; ".join(f"{name} " + ", ".join(f"{label[m]} ±{fmt[m].format(c[m])}" for m in fmt)
                        for name, c in spread.items()))


def markdown_table(rows: dict[str, dict], convention: str, title: str | None = None) -> str:
    """A Markdown report of ``{row name: metrics}`` (``MetricAccumulator.result()`` dicts): the overall table
    and the per-horizon table, with the metric convention spelled out under each. Numbers keep a fixed precision
    per metric, trailing zeros included: MSE and MAE 5 significant digits (0.014100, 0.0086286, 248.00), SSIM 4
    decimals, PSNR (dB) 2 decimals."""
    fmt = METRIC_FORMATS
    label = {"mse": "MSE", "mae": "MAE", "ssim": "SSIM", "psnr": "PSNR (dB)"}
    note = f"Metric convention: `{convention}` — {CONVENTION_NOTES[convention]}"
    lines = [f"## {title}", ""] if title else []
    lines += ["| model | MSE ↓ | MAE ↓ | SSIM ↑ | PSNR (dB) ↑ |", "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt[m].format(r["overall"][m]) for m in fmt) + " |")
    lines += ["", note, ""]
    if line := ci95_line(rows):
        lines += [line, ""]
    n_t = max(len(r["per_frame"]) for r in rows.values())
    lines += ["Per predicted frame:", "",
              "| model | metric | " + " | ".join(f"t+{k + 1}" for k in range(n_t)) + " |",
              "|---|---|" + "---:|" * n_t]
    for name, r in rows.items():
        for m in fmt:
            lines.append(f"| {name} | {label[m]} | " + " | ".join(fmt[m].format(f[m]) for f in r["per_frame"]) + " |")
    lines += ["", note, ""]
    return "\n".join(lines)


def paired_line(model_name: str, paired: dict) -> str:
    """One line of :func:`diffuma.metrics.paired_comparison` results against every baseline: MSE and SSIM."""

    def one(m: str, c: dict) -> str:
        word = {"mse": "lower", "ssim": "higher"}[m]
        d, h = c["mean_difference"], c["ci95"]
        # both at one scale, in plain decimals ("-0.00017402 ± 4.7402e-05" mixed two notations)
        places = max(4, 2 - math.floor(math.log10(max(abs(d), abs(h or 0.0), 1e-12))))
        ci = f" ± {h:.{places}f}" if h is not None else ""
        return f"{m.upper()} {word} on {c['wins']} of {c['n']}, mean difference {d:+.{places}f}{ci}"
    parts = [f"against {name}: " + "; ".join(one(m, paired[result_key(name)][m]) for m in ("mse", "ssim"))
             for name in BASELINES if result_key(name) in paired]
    return (f"Paired, sequence by sequence ({model_name} − baseline, 95 % t-interval of the mean difference): "
            + " | ".join(parts))


def result_rows(result: dict) -> dict[str, dict]:
    """``{row name: metrics}`` of an :func:`evaluate_checkpoint` result: the model (by its name), then each baseline
    by the name its Markdown row has ("copy-last-frame"; the JSON key is ``result_key``'s)."""
    return {result["model_name"]: result["model"], **{name: result[result_key(name)] for name in BASELINES}}


def report_markdown(result: dict) -> str:
    """The Markdown table of an ``evaluate_checkpoint`` result (the model's row, then one row per baseline), with
    its notes and what it was computed from (checkpoint and dataset digests, code)."""
    title = (f"{result['model_name']} on {Path(result['data']).name} [{result['split']}], "
             f"{result['n_sequences']} sequence{'s' if result['n_sequences'] != 1 else ''}, "
             f"{result['in_frames']}→{result['out_frames']} frames, "
             f"step {result['step']} ({result['weights']} weights)")
    rows = {result["model_name"]: result["model"], **{name: result[result_key(name)] for name in BASELINES}}
    lines = [f"**Note:** {n}" for n in result.get("notes", [])]
    if result.get("paired"):  # (results written before 2026-12-02 have none)
        lines.append(paired_line(result["model_name"], result["paired"]))
    if "checkpoint_blake3" in result:
        code = result["code"]
        content, data = result["data_identity"].get("content"), result["data_identity"].get("data")
        lines.append(f"Computed from `{result['checkpoint']}` (BLAKE3 {result['checkpoint_blake3'][:16]}) on "
                     f"`{result['data_path']}` (content {content[:16] if content else 'not recorded'}"
                     f"{', data ' + data[:16] if data else ''}), batch "
                     f"{result['batch_size']}, {result['device']} {result['precision']}; chdl {code['chdl']}, "
                     f"commit {(code['git_commit'] or 'unknown')[:12]}{' (edited)' if code['git_dirty'] else ''}, "
                     f"code {code['code']}, torch {code.get('torch')}.")
    return markdown_table(rows, result["convention"], title) + ("\n" + "\n\n".join(lines) + "\n" if lines else "")
