"""``chdl curate RAW OUT``: QC, reconstruct and pack raw recordings into a curated zarr dataset."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from chdl.cli import catch_stop_signals, quiet_abandoned_async, restore_signals
from chdl.cli.options import LocalPath, checked_output, checked_path_text, quiet_option


@click.command("curate")
@click.argument("raw", type=LocalPath(path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option("--config", "config_path", type=LocalPath(dir_okay=False, path_type=str), default=None,
              help="YAML file overriding QC thresholds, max bad frames, split, shard size (see docs/curation.md).")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes; each owns whole shards.")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT|local:N",
              help="Run the shards on a Dask cluster instead: a running scheduler's address, or local:N for a "
                   "LocalCluster of N worker processes. Same bytes as --workers (docs/curation.md).")
@click.option("--bit-depth", type=click.IntRange(1, 16), default=None,
              help="Significant bits of the pixel values (max_value = 2^N - 1), overriding what the runs record; "
                   "for Mono16 runs recorded without it (default then: the full 16 bits, with a warning).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at OUT.")
@quiet_option(help="No progress bar or per-run warnings on stderr (the summary and errors still print).")
def curate(raw: str, out: str, config_path: str | None, workers: int, scheduler: str | None,
           bit_depth: int | None, overwrite: bool, quiet: bool) -> None:
    """QC, reconstruct and pack the recordings in RAW (one run folder or a folder of runs) into the
    curated dataset OUT (a zarr folder, e.g. out.zarr, or an fsspec URL, e.g. s3://bucket/out.zarr), with
    a QC report beside it (out.qc.html, out.qc.json). Rerunning an interrupted command resumes it."""
    from acquisition.raw import RawFormatError
    from chdl.cluster import ClusterError
    from curation.config import ConfigError, load_config
    from curation.pipeline import CurateError, curate as run_curate
    from curation.plan import PlanError

    if "://" not in out:  # a local OUT (a URL is the object store's): written through a symlink to its folder
        def refuse(message):
            raise click.BadParameter(message, param_hint="'OUT'")

        out = checked_path_text(out, refuse)
        if (followed := checked_output(Path(out), refuse)) != Path(out):  # (else OUT as typed, for the record)
            out = str(followed)
    if scheduler is not None and workers > 1:
        raise click.UsageError("--workers is for local processes; with --scheduler use local:N or the cluster's workers")
    # --workers / --scheduler / --overwrite are left out: they do not change a byte of the dataset, and the recorded
    # command is the one that resumes it (with --overwrite a rerun starts again)
    argv = [raw, out] + (["--config", config_path] if config_path else []) + \
        (["--bit-depth", str(bit_depth)] if bit_depth is not None else [])
    from curation.pipeline import INTERRUPTED

    def _interrupt(signum, frame):  # SIGTERM (a scheduler, `kill`) and SIGHUP end curate like Ctrl-C does
        INTERRUPTED.set()  # (checked between tasks too: this raise can be swallowed, see curation.pipeline)
        raise KeyboardInterrupt

    INTERRUPTED.clear()
    previous = catch_stop_signals(_interrupt, sigint=True)
    state: dict = {}
    try:
        cfg = load_config(config_path)
        result = run_curate(raw, out, cfg, workers=workers, scheduler=scheduler, overwrite=overwrite, bit_depth=bit_depth,
                            command="chdl curate " + shlex.join(argv), state=state,
                            progress=not quiet, log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)))
    except (ClusterError, ConfigError, CurateError, PlanError, RawFormatError) as e:
        raise click.ClickException(str(e)) from None
    except Exception as e:  # an object store that stopped answering mid-run: what is written so far stays resumable
        from chdl.cli import object_store_error

        if state.get("created") and (line := object_store_error(e)) is not None:
            quiet_abandoned_async()
            raise click.ClickException(f"{line}; {out} keeps the shards finished so far: rerun the same command to "
                                       "resume once the store answers") from None
        raise  # (before OUT was created: the store's one line, from chdl.cli, says all there is)
    except KeyboardInterrupt:
        quiet_abandoned_async()  # seen in CI and in tests/curation/test_curate_cli.py, ~1 run in 10
        from chdl.dataset import dataset_path, marked_incomplete, previous_path

        path = dataset_path(out)
        if not path.exists():  # the dataset is created after the baselines
            click.echo(f"interrupted before {out} was created; nothing was written", err=True)
        elif marked_incomplete(path):  # this command's dataset, new or resumed (or a --overwrite's replacement)
            kept = previous_path(path).exists()
            how = ("rerun it without --overwrite to resume" + (" (the dataset it replaces is kept aside until this one "
                                                                "is complete)" if kept else "")
                   if overwrite else "rerun the same command to resume")
            click.echo(f"interrupted: {out} keeps the shards finished so far; {how}", err=True)
        elif overwrite and not state.get("created"):  # stopped while planning or measuring the baselines
            click.echo(f"interrupted before {out} was replaced; it is as it was, and nothing was written", err=True)
        else:  # after the last shard and the report: complete
            click.echo(f"interrupted after {out} was completed", err=True)
        sys.exit(130)
    finally:
        restore_signals(previous)
    s = result.summary
    sp = s["splits"]
    asked = cfg.split.test_fraction > 0  # (a test split is counted wherever one was asked for, empty or not)
    click.echo(f"{result.out}: {result.n_sequences} sequences ({sp['train']} train, {sp['val']} val, "
               + (f"{sp['test']} test, " if sp.get("test") or asked else "")
               + f"{sp['excluded']} excluded), {result.n_frames} frames; flagged vibration {s['flags']['vibration']}, "
               f"illumination {s['flags']['illumination']}, missing {s['flags']['missing']}, "
               f"reconstructed {s['flags']['reconstructed']}"
               + (f"; resumed after {result.shards_resumed} shards" if result.shards_resumed else "")
               # the rate of this run's frames (it counted the resumed shards' frames too)
               + f"; {result.frames_written / max(result.seconds, 1e-9):.0f} frames/s")
    click.echo(f"QC report: {result.report_html} (summary {result.report_json})")
    depth = result.bit_depth or {}
    bits_note = None  # why the bit depth may be what excluded every sequence
    if depth.get("from") == "pixel format" and depth.get("bits") == 16:  # (Mono16 that did not say)
        bits_note = ("16 bits were assumed for Mono16 runs that did not record theirs (rerun with --bit-depth N; the "
                     "report's warnings name the bits their frames need)")
    elif result.bit_depth_overridden:
        bits_note = (f"--bit-depth {depth.get('bits')} is not what {result.bit_depth_overridden} run(s) recorded "
                     "(the report's warnings name them)")
    for line in split_warnings(sp, cfg.split, bits_note):
        click.echo(f"warning: {line}", err=True)
    if s["warnings"]:
        click.echo(f"{len(s['warnings'])} warning(s); see the report", err=True)


def split_warnings(sp: dict, split, bits_note: str | None = None) -> list[str]:
    """What a user must hear about the split counts ``sp`` (train, val, test, excluded) that the settings ``split``
    (``curation.config.SplitConfig``) made: a split that training or evaluation will find empty. ``bits_note``: why
    the bit depth is in doubt (assumed, or given against what runs recorded), which can exclude every sequence."""
    test, out = sp.get("test", 0), []
    if sp["train"] == sp["val"] == test == 0:
        out.append(f"every sequence was excluded ({sp['excluded']}: more than max_bad_frames flagged or missing frames "
                   "each; the report says which): chdl train and chdl eval refuse this dataset; check the recordings, "
                   "or the QC floors and z in the config"
                   + (f"; or the bit depth: {bits_note}" if bits_note else ""))
    elif sp["train"] == 0:
        tested = f"{test} test, " if test or split.test_fraction > 0 else ""
        out.append(f"the train split is empty ({sp['val']} val, {tested}{sp['excluded']} excluded sequences): chdl "
                   "train refuses this dataset (chdl eval can still score it); record more lanes, or lower "
                   f"split.val_fraction{', split.test_fraction' if tested else ''} or split.block_lanes")
    elif sp["val"] == 0:
        out.append(f"the validation split is empty ({sp['train']} train sequences): chdl train will run without "
                   "validation; raise split.val_fraction, lower split.block_lanes or record more lanes")
    if split.test_fraction > 0 and test == 0 and sp["train"] + sp["val"] > 0:
        out.append(f"split.test_fraction {split.test_fraction:g} asked for a test split, but no block of "
                   f"{split.block_lanes} lane(s) went to it ({sp['train'] + sp['val']} usable sequences): raise "
                   "split.test_fraction, lower split.block_lanes or record more lanes")
    return out
