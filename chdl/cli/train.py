"""``chdl train``, ``chdl eval``, ``chdl predict``: the trainer, evaluator and predictor of diffuma.

This module composes stages: it is the only place that turns a raw recording (acquisition.raw) into the
arrays ``diffuma.prediction`` takes, so diffuma never reads raw recordings.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from chdl.cli.options import FiniteFloat, LocalPath, OutputPath, output_lock, quiet_option


def _fail(e: Exception) -> click.ClickException:
    """One line: an error raised in a DataLoader worker arrives with the worker's traceback in its message
    ("Caught X in DataLoader worker process 0. Original Traceback ..."); keep only the error's own line."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = msg.strip().splitlines()[-1]
        msg = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith(type(e).__name__) else last
    return click.ClickException(msg)


# Files of a run folder (diffuma.training.trainer's docstring), in the order the closing message lists them.
RUN_FILES = ("checkpoints/last.pt", "checkpoints/best.pt", "config.yaml", "steps.csv", "epochs.csv",
             "training_dynamics.png", "tensorboard")


def open_verified_dataset(data: Path, split: str, max_sequences: int | None = None, quiet: bool = False):
    """The dataset reader, or a one-line error, before any heavy import (torch, timm): a missing shard file
    or one whose checksum differs from the one recorded when it was written (of the shards holding the first
    ``max_sequences`` of ``split``: the ones the command reads) is refused naming it."""
    from chdl.dataset import DatasetFormatError, open_dataset

    try:
        reader = open_dataset(data)
        if not reader.has_checksums:
            click.echo(f"note: {data} was written before chdl recorded shard checksums: its shard files are "
                       "checked for presence only (recreate it to have them checked)", err=True)
            return reader
        result = reader.verify(reader.shards_of(reader.indices(split)[:max_sequences]), progress=not quiet)
        if result.problems:
            raise DatasetFormatError(result.error())
        return reader
    except DatasetFormatError as e:
        raise _fail(e) from None


@click.command("train")
@click.option("--data", required=True, type=LocalPath(path_type=Path), help="Curated dataset (zarr folder).")
@click.option("--config", "config_name", default=None,
              help="Packaged config name (e.g. diffuma_tiny, diffuma_chdl) or a YAML file. Optional with --resume.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one field, e.g. --set run.lr=3e-4 --set model.l1_weight=0.5 (repeatable).")
@click.option("--out", required=True, type=OutputPath(path_type=Path),
              help="Run folder (created): checkpoints, CSV logs, plots, resolved config.")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where its last checkpoint stopped.")
@quiet_option("--no-progress")
def train(data, config_name, overrides, out, resume, quiet):
    """Train DIFFUMA or a baseline on a curated dataset.

    \b
    The same command runs on CPU, one GPU, or several GPUs under torchrun:
      torchrun --nproc_per_node N -m chdl train --data D --config C --out R
    Ctrl-C (or SIGTERM) stops after the current step and checkpoints it (exit 130); --resume continues.
    """
    from diffuma.training.config import ConfigError, attribute, read_config, resolve_config

    main_rank = int(os.environ.get("RANK", "0")) == 0
    if data.is_file():  # never a dataset (a video, an archive): say so before asking for --config
        open_verified_dataset(data, "all", quiet=True)
    if config_name is None and not resume:
        raise click.UsageError("--config is required (only --resume can do without it)")
    if config_name is None and overrides:
        raise click.UsageError("--set needs --config (a resumed run keeps its saved config)")
    try:  # everything that can be checked without torch first: config file, run section, dataset
        raw = read_config(config_name, overrides) if config_name else None
    except ConfigError as e:
        raise _fail(e) from None
    from diffuma.output_folder import check_apart_from_input

    try:  # a run inside its dataset: eval refused its default folder, and curate --overwrite deleted the run
        check_apart_from_input(out, data)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    reader = open_verified_dataset(data, "all", quiet=quiet or not main_rank)
    if main_rank and len(reader.indices("val")) == 0:
        click.echo(f"warning: {data} has no validation sequences: training without validation (no val metrics, "
                   "best.pt or training_dynamics.png)", err=True)

    from diffuma.training import RunFolderError, TrainingDiverged, TrainingInterrupted, train_from_config
    from diffuma.training.checkpoint import CheckpointError
    from chdl.dataset import DatasetFormatError

    try:
        config = resolve_config(*raw) if raw else None
        run_dir = train_from_config(config, data, out, resume=resume, progress=not quiet)
    except TrainingInterrupted as e:  # Ctrl-C / SIGTERM: last.pt holds the last completed step
        if main_rank:
            click.echo(f"interrupted after the last step ({e.step}): training is complete, {e.checkpoint} holds it"
                       if e.finished else f"interrupted at step {e.step}, before its validation; rerun with --resume "
                       "to validate and continue" if e.validation_pending
                       else f"interrupted at step {e.step}; rerun with --resume to continue", err=True)
        sys.exit(130)
    except ConfigError as e:  # raised where the config meets the machine or the data: say where its value came from
        raise _fail(attribute(e, *raw[1:]) if raw else e) from None
    except (CheckpointError, DatasetFormatError, TrainingDiverged, RunFolderError, FileExistsError,
            FileNotFoundError, ValueError) as e:
        raise _fail(e) from None
    except OSError as e:  # a log or the config that cannot be written (disk full); checkpoints say so themselves
        raise click.ClickException(f"{e.filename or out}: cannot write the run ({e.strerror or e})") from None
    if main_rank:
        written = [f for f in RUN_FILES if (run_dir / f).exists()]
        click.echo(f"run folder: {run_dir}  ({', '.join(written)})")


@click.command("eval")
@click.option("--checkpoint", required=True, type=LocalPath(path_type=Path, exists=True, dir_okay=False),
              help="A checkpoint chdl train wrote (e.g. RUN/checkpoints/last.pt).")
@click.option("--data", required=True, type=LocalPath(path_type=Path), help="Curated dataset (zarr folder).")
@click.option("--split", default="val", type=click.Choice(["val", "test", "train", "all"]), show_default=True,
              help="The dataset's sequences to score (test: the held-out split of split.test_fraction; all = every "
                   "sequence not excluded).")
@click.option("--convention", type=click.Choice(["per_pixel", "openstl"]), default=None,
              help="Metric convention, as chdl bench's: per_pixel (default: per-pixel means, Gaussian SSIM, range 1.0) "
                   "or openstl (OpenSTL's metric(): MSE/MAE summed over C*H*W per frame on unclipped predictions, SSIM "
                   "with a 7x7 uniform window and data range 2.0).")
@click.option("--openstl", is_flag=True, hidden=True, help="The same as --convention openstl (the older spelling).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: the run's batch size.")
@click.option("--weights", type=click.Choice(["auto", "ema", "model"]), default="auto", show_default=True,
              help="auto = EMA weights when the run kept them.")
@click.option("--max-sequences", type=click.IntRange(min=1), default=None, help="Evaluate the first N only.")
@click.option("--num-workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Data-loader worker processes (at most one per batch and per core).")
@click.option("--out", type=OutputPath(path_type=Path), default=None,
              help="Folder for eval_[<run>_]<checkpoint>[_<weights>]_<split>_<convention>[_first<N>][_on-<dataset>]"
                   ".json/.md/.csv (default: <run>/eval/, without the run's name; _on-<dataset> for a dataset other than "
                   "the run's own).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier evaluation of the same split and convention.")
@quiet_option()
def eval_(checkpoint, data, split, convention, openstl, batch_size, weights, max_sequences, num_workers, out, overwrite, quiet):
    """Evaluate a checkpoint: MSE, MAE, SSIM, PSNR overall and per predicted frame, next to the copy-last-frame
    and constant-motion baselines."""
    if openstl and convention == "per_pixel":
        raise click.UsageError("--openstl and --convention per_pixel contradict each other; give one")
    convention = "openstl" if openstl else convention or "per_pixel"
    parent = checkpoint.resolve().parent
    run_dir = parent.parent if parent.name == "checkpoints" else parent
    # the file name says what was evaluated: the checkpoint, non-default weights, split, convention, a subset; in a
    # folder given with --out (several runs' evaluations side by side) the run's folder name comes first
    parts = [checkpoint.stem] + ([weights] if weights != "auto" else []) + [split, convention]
    if out is None:  # <run>/eval for a checkpoint in <run>/checkpoints/, else next to the checkpoint
        out = run_dir / "eval"
    else:
        parts.insert(0, run_dir.name)
    if out.exists() and not out.is_dir():
        raise click.ClickException(f"{out}: is a file, not a folder for the evaluation; choose another --out")
    from diffuma.output_folder import check_apart_from_input

    try:
        check_apart_from_input(out, data, data_folders_too=True)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    reader = open_verified_dataset(data, split, max_sequences, quiet)
    if len(reader.indices(split)) == 0:
        from chdl.dataset import empty_split

        raise click.ClickException(empty_split(data, split))
    if max_sequences and max_sequences < len(reader.indices(split)):  # a subset (all of them: no suffix)
        parts.append(f"first{max_sequences}")
    name = "_".join(parts)

    from acquisition import files
    from chdl.dataset import DatasetFormatError
    from diffuma.evaluation import evaluate_checkpoint, per_sequence_csv, report_markdown, result_rows
    from diffuma.training.checkpoint import CheckpointError, load_checkpoint
    from diffuma.training.data import checkpoint_dataset, dataset_info, dataset_mismatch

    try:  # the checkpoint and the dataset fit each other (frame size, frame counts) before the output is looked at
        state = load_checkpoint(checkpoint)
        checkpoint_dataset(state, data, split)
        foreign = dataset_mismatch(state["data"], dataset_info(data)) is not None
    except (CheckpointError, DatasetFormatError, ValueError) as e:
        raise _fail(e) from None
    if foreign:  # not the dataset the run trained on: its name too, so the two evaluations do not collide
        name += f"_on-{data.name.removesuffix('.zarr')}"
    stem = out / f"eval_{name}"  # best.pt and last.pt side by side
    with output_lock(out):  # a second eval into --out is refused (it replaced the first one's files)
        earlier = [p for p in (stem.with_suffix(x) for x in (".json", ".md", ".csv")) if p.exists()]
        if earlier and not overwrite:
            raise click.ClickException(f"{earlier[0]}: an earlier evaluation is there (use --overwrite to replace it, "
                                       "or --out for another folder)")
        try:
            result = evaluate_checkpoint(checkpoint, data, split=split, convention=convention, batch_size=batch_size,
                                         weights=weights, num_workers=num_workers, max_sequences=max_sequences,
                                         progress=not quiet, state=state)
        except (CheckpointError, DatasetFormatError, ValueError) as e:
            raise _fail(e) from None
        md = report_markdown(result)
        try:
            out.mkdir(parents=True, exist_ok=True)
            # every file or none (a full disk left the .json alone, and the rerun refused it as "earlier")
            with (files.replacing(stem.with_suffix(".json")) as tmp_json,
                  files.replacing(stem.with_suffix(".md")) as tmp_md,
                  files.replacing(stem.with_suffix(".csv")) as tmp_csv):
                tmp_json.write_text(json.dumps(result, indent=2))  # (json escapes what UTF-8 cannot hold)
                tmp_md.write_bytes(files.encode_text(md))  # a dataset under a folder named in Latin-1
                tmp_csv.write_text(per_sequence_csv(result["sequences"], result_rows(result)))
        except OSError as e:  # a parent that is a file, a read-only folder, disk full
            raise click.ClickException(f"{e.filename or out}: cannot write the evaluation ({e.strerror or e})") from None
    click.echo(md)
    for note in result["notes"]:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {stem}.json, {stem}.md and {stem}.csv (per sequence)")


def _input_kind(path: Path) -> str:
    """"recording" or "dataset" for a predict --input; a one-line error for a folder of runs or anything else."""
    from acquisition.raw import find_recordings

    if (path / "manifest.json").is_file():
        return "recording"
    if (path / "zarr.json").is_file():
        return "dataset"
    try:
        runs = find_recordings(path)
    except ValueError:
        runs = []
    if runs:
        raise click.ClickException(
            f"{path}: a folder of {len(runs)} raw recording{'s' if len(runs) != 1 else ''}; predict takes ONE recording (e.g. --input {runs[0]}) "
            f"or a curated dataset: curate the folder first (chdl curate {path} OUT.zarr), then --input OUT.zarr")
    raise click.ClickException(f"{path}: neither a raw recording (no manifest.json) nor a curated dataset "
                               "(no zarr.json)")


@click.command("predict")
@click.option("--checkpoint", "checkpoints", required=True, multiple=True,
              type=LocalPath(path_type=Path, exists=True, dir_okay=False),
              help="A checkpoint; repeat to compare several models on the same sequences.")
@click.option("--input", "input_", required=True, type=LocalPath(path_type=Path, exists=True),
              help="A curated dataset (zarr) or one raw recording folder.")
@click.option("--out", required=True, type=OutputPath(path_type=Path), help="Output folder (created).")
@click.option("--split", default="val", type=click.Choice(["val", "test", "train", "all"]), show_default=True,
              help="Dataset input: which split to take sequences from.")
@click.option("--max-sequences", type=click.IntRange(min=1), default=4, show_default=True,
              help="Sequences to predict (the first of the split).")
@click.option("--weights", type=click.Choice(["auto", "ema", "model"]), default="auto", show_default=True,
              help="auto: the EMA weights when the checkpoint has them.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Sequences per forward pass.")
@click.option("--fps", type=FiniteFloat(min=0.1, max=50), default=2.0, show_default=True,
              help="GIF frame rate (at most 50: a GIF's delays are in 1/100 s, and viewers replace shorter ones).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@quiet_option()
def predict(checkpoints, input_, out, split, max_sequences, weights, batch_size, fps, overwrite, quiet):
    """Predict future frames from one or several checkpoints: PNG frames, side-by-side GIFs, grids, a zarr.

    With several --checkpoint options every model predicts the same sequences (they must share frame counts and
    frame size); the GIFs and grids show them side by side.
    """
    with output_lock(out):  # one writer: two into one --out gave a false success or an error about a temporary
        _predict(checkpoints, input_, out, split, max_sequences, weights, batch_size, fps, overwrite, quiet)


def _predict(checkpoints, input_, out, split, max_sequences, weights, batch_size, fps, overwrite, quiet):
    from diffuma.output_folder import check_output_folder, remove_stale_working_folders

    remove_stale_working_folders(out)  # a killed run's (its process is gone), also when this run is refused below
    try:  # before any work: not the input, not a dataset or recording, not a full folder without --overwrite
        check_output_folder(out, input_, overwrite)
    except (FileExistsError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    kind = _input_kind(input_)
    # what the predictions can be traced to wherever the input lies: its absolute path and, for a dataset, its
    # identity (content and data digests: docs/dataset-format.md)
    source = {"source": str(input_), "source_resolved": str(input_.resolve())}
    if kind == "dataset":
        source["source_identity"] = open_verified_dataset(input_, split, max_sequences, quiet).identity()

    import torch

    from diffuma.prediction import predict as run_model, write_predictions
    from diffuma.training.checkpoint import LOADED_DIGEST, CheckpointError, build_model_from_checkpoint, load_checkpoint
    from diffuma.training.data import other_max_value

    try:
        states = [load_checkpoint(c) for c in checkpoints]
        info = states[0]["data"]
        keys = ("in_frames", "out_frames", "channels", "height", "width")
        for c, s in zip(checkpoints[1:], states[1:]):
            if any(s["data"][k] != info[k] for k in keys):
                raise ValueError(f"{c}: trained on {[s['data'][k] for k in keys]} ({', '.join(keys)}), "
                                 f"{checkpoints[0]} on {[info[k] for k in keys]}; they cannot predict the same input")
        if kind == "recording":
            inputs, targets, ids, max_value = _recording_sequences(input_, info, max_sequences)
        else:
            inputs, targets, ids, max_value = _dataset_sequences(input_, states[0], split, max_sequences)
        for c, s in zip(checkpoints, states):  # (as eval notes it: the intensities are not the ones it learned)
            if (trained_max := other_max_value(s["data"], max_value)) is not None:
                click.echo(f"warning: {c} was trained on frames scaled by max_value {trained_max:g}; {input_} is "
                           f"scaled by {float(max_value):g}", err=True)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        preds, used = {}, []
        labels = _prediction_labels(checkpoints, [s["model_name"] for s in states])
        for c, s, label in zip(checkpoints, states, labels):
            model, w = build_model_from_checkpoint(s, weights, c)
            preds[label] = run_model(model, inputs, batch_size=batch_size, device=device,
                                     name=f"{c}: its model").numpy()  # (which checkpoint diverged)
            used.append(w)
        attrs = {"checkpoints": [str(c) for c in checkpoints], "weights": used, **source,
                 "steps": [s["step"] for s in states],
                 "checkpoint_blake3": [s[LOADED_DIGEST] for s in states]}  # (the bytes loaded, as eval records)
        write_predictions(out, inputs, preds, targets, sequence_ids=ids, max_value=max_value, attrs=attrs,
                          fps=fps, overwrite=overwrite, progress=not quiet)
    except (CheckpointError, FileExistsError, ValueError) as e:  # RawFormatError/DatasetFormatError are ValueErrors
        raise _fail(e) from None
    except OSError as e:  # disk full, a read-only folder, a parent that is a file: nothing was left behind
        raise click.ClickException(f"{out}: cannot write the predictions ({e.strerror or e})") from None
    click.echo(f"{len(inputs)} sequence(s) x {len(preds)} model(s) -> {out}/ (predictions.zarr, frames/, gifs/"
               f"{', grids/' if targets is not None else ''})")


def _prediction_labels(checkpoints: list[Path], names: list[str]) -> list[str]:
    """One label per checkpoint: the model's name where it is the only checkpoint of that model; else every one
    of them is named ``model@run-folder``, ``model@run-folder.best`` for several checkpoints of one run (``#k``
    added where even those repeat), so the grid tells them apart."""
    def run_name(c: Path) -> str:  # <run>/checkpoints/x.pt -> run; a checkpoint elsewhere -> its file's name
        parent = c.resolve().parent
        return parent.parent.name if parent.name == "checkpoints" else c.stem

    labels = [n if names.count(n) == 1 else f"{n}@{run_name(c)}" for c, n in zip(checkpoints, names)]
    # checkpoints of one run (best.pt and last.pt) are told apart by their files' names; #k only if those repeat too
    labels = [x if labels.count(x) == 1 else f"{x}.{c.stem}" for c, x in zip(checkpoints, labels)]
    return [x if labels.count(x) == 1 else f"{x}#{k + 1}" for k, x in enumerate(labels)]


def _dataset_sequences(path: Path, state: dict, split: str, max_sequences: int):
    """(inputs, targets, ids, max_value) of the first sequences of a split of a curated dataset."""
    import numpy as np

    from diffuma.training.data import checkpoint_dataset

    ds = checkpoint_dataset(state, path, split)
    n = min(len(ds), max_sequences)
    items = [ds[i] for i in range(n)]
    inputs = np.stack([x.numpy() for x, _ in items])
    targets = np.stack([y.numpy() for _, y in items])
    return inputs, targets, [int(s) for s in ds.indices[:n]], 1.0 / ds.scale


def _recording_sequences(path: Path, info: dict, max_sequences: int):
    """(inputs, targets, ids, max_value) from a raw recording: per lane, windows of T_in + T_out consecutive
    "ok" frames (non-overlapping) with their truth; when a recording holds no such window, its last T_in
    consecutive ok frames are a single window without truth (a pure forecast)."""
    import numpy as np

    from acquisition.raw import PIXEL_MAX, Recording, run_bit_depth
    from chdl.dataset import max_value_for_bits

    rec = Recording.open(path)
    if not rec.complete:  # as chdl curate says it
        click.echo(f"warning: {path / 'manifest.json'}: run is {rec.manifest.get('status')!r}, not complete; "
                   "predicting from the frames it holds", err=True)
    t_in, t_out = info["in_frames"], info["out_frames"]
    runs, current, last_lane = [], [], None  # runs of consecutive ok frames within one lane
    for r in rec.frames:
        if r.status != "ok" or r.file is None or r.lane != last_lane or r.dropped_before:
            if current:
                runs.append(current)
            current = []
        if r.status == "ok" and r.file is not None:
            current.append(r)
        last_lane = r.lane
    if current:
        runs.append(current)
    windows = [run[i:i + t_in + t_out] for run in runs for i in range(0, len(run) - t_in - t_out + 1, t_in + t_out)]
    with_truth = bool(windows)
    if not with_truth:
        usable = [run for run in runs if len(run) >= t_in]
        if not usable:
            raise ValueError(f"{path}: no {t_in} consecutive complete frames in one lane to predict from")
        windows = [usable[-1][-t_in:]]
    windows = windows[:max_sequences]
    pixel_format = windows[0][0].pixel_format
    # The recording's significant bits (as chdl curate scales it); for a Mono16 run that does not say, the
    # dataset's scale when the recording has its pixel format, else the format's full range.
    bits = run_bit_depth(rec.manifest)
    max_value = (float(max_value_for_bits(bits)) if bits is not None
                 else info["max_value"] if pixel_format == info.get("pixel_format") else float(PIXEL_MAX[pixel_format]))
    seqs = np.stack([np.stack([rec.read(r) for r in w]) for w in windows]).astype(np.float32) / max_value
    seqs = seqs[:, :, None]  # (N, T, 1, H, W)
    _check_shape(path, tuple(seqs.shape[2:]), info)
    ids = [f"lane{w[0].lane}_frame{w[0].index:06d}" for w in windows]
    targets = seqs[:, t_in:] if with_truth else None
    return seqs[:, :t_in], targets, ids, max_value


def _check_shape(path: Path, shape: tuple, info: dict) -> None:
    expected = (info["channels"], info["height"], info["width"])
    if shape != expected:
        raise ValueError(f"{path}: frames are {shape} (C,H,W) but the checkpoint was trained on {expected}")
