"""``chdl cameras`` and ``chdl capture``: list cameras, capture lane passes (or replay a recording).

See docs/acquisition.md. Exit status of ``capture``: 0 complete; 1 error (bad option, camera not found,
refused setting, camera lost mid-run, disk full: the recording made so far is kept, marked incomplete);
130 interrupted by Ctrl-C/SIGTERM (recording kept, marked incomplete).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import sys
import warnings
from pathlib import Path

import click

from chdl.cli.options import NON_NEGATIVE, PLAN_COUNT, POSITIVE, STEP_UM, LocalPath, OutputPath, quiet_option


PIXEL_FORMATS = ("Mono8", "Mono10", "Mono12", "Mono16")  # Mono10/12: unpacked, GenTL cameras only


@contextlib.contextmanager
def _user_errors():
    """Library errors -> one-line ClickException; warnings -> 'warning: ...' on stderr."""
    from acquisition.backends.base import CameraError
    from acquisition.raw import RawFormatError

    previous = warnings.showwarning
    warnings.showwarning = lambda message, *a, **k: click.echo(f"warning: {message}", err=True)
    try:
        yield
    except (CameraError, RawFormatError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # e.g. the output folder cannot be created, or the disk is full before the first frame
        from acquisition.files import cannot_create

        if e.errno in (errno.ENOTDIR, errno.EEXIST) and e.filename:  # a file where a folder must go: say which
            raise click.ClickException(f"{e.filename}: cannot create the folder{cannot_create(e.filename, e)}") \
                from None
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and e.filename:  # ("raw: Read-only file system")
            raise click.ClickException(f"{e.filename}: cannot write the recording there ({e.strerror})") from None
        raise click.ClickException(f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")) from None
    finally:
        warnings.showwarning = previous


def _config_options(f):
    f = click.option("--cti", "cti", multiple=True, metavar="PATH",
                     help="Extra GenTL producer (.cti) to load; repeatable. 'viky' = the test producer in the genicam wheel.")(f)
    f = click.option("--camera-config", type=LocalPath(dir_okay=False, path_type=Path), default=None,
                     help="Camera config YAML (default: $CHDL_CAMERAS, else ~/.config/chdl/cameras.yaml if present).")(f)
    return f


@click.command("cameras")
@_config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def cameras(camera_config, cti, as_json):
    """List the cameras every configured GenTL producer (and the simulator) sees, with the alias that selects each."""
    from acquisition.backends import list_cameras
    from acquisition.camera_config import load_camera_config

    with _user_errors():
        config = load_camera_config(camera_config, tuple(cti))
        rows = list_cameras(config)
    if as_json:
        click.echo(json.dumps([{"alias": a, **dataclasses.asdict(i)} for a, i in rows], indent=2))
        return
    if not config.producer_paths():
        click.echo("no GenTL producer configured (set GENICAM_GENTL64_PATH, add 'producers:' to the camera config, "
                   "or pass --cti PATH; --cti viky for the test producer)", err=True)
    if not rows:
        click.echo(f"no cameras found (producers: {', '.join(config.producer_paths()) or 'none'}; config: {config.source})")
        return
    # the address last and whole (it is what a user copies: a sim camera's carries its whole configuration);
    # the other columns are cut at 40 characters
    header = ("ALIAS", "BACKEND", "TRANSPORT", "VENDOR", "MODEL", "SERIAL", "USER NAME", "PRODUCER", "ADDRESS")
    table = [header] + [(a, i.backend, i.transport, i.vendor, i.model, i.serial, i.user_name or "-",
                         Path(i.producer).name if i.producer else "-", i.address or "-") for a, i in rows]
    table = [tuple(v if len(v) <= 40 or c == len(header) - 1 else v[:39] + "…" for c, v in enumerate(map(str, r)))
             for r in table]
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    for r in table:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    if any(a == "-" for a, _ in rows):
        click.echo("('-': no alias selects this camera; add it to the camera config with its serial)", err=True)


def capture_options(f):
    """The options of ``chdl capture`` (also ``chdl monitor``'s: it records through the same code)."""
    for option in reversed([
        click.option("--camera", "alias", metavar="ALIAS", help="Camera alias (camera config entry, or gige<N>/u3v<N>/custom<N>/sim<N>)."),
        click.option("--replay", type=LocalPath(exists=True, file_okay=False, path_type=Path),
                     help="Replay a recording (or a folder of recordings) instead of using a camera."),
        click.option("--out", required=True, type=OutputPath(file_okay=False, path_type=Path),
                     help="Folder of runs; each run is written to OUT/<run-id>/."),
        click.option("--run-id", help="Run folder name (default: UTC time + alias; for replay: the source run's id)."),
        click.option("--lanes", default=1, show_default=True, type=PLAN_COUNT, help="Lane passes to capture (at most 100000)."),
        click.option("--positions", default=10, show_default=True, type=PLAN_COUNT,
                     help="Equidistant positions per lane (at most 100000)."),
        click.option("--step-um", default=100.0, show_default=True, type=STEP_UM, help="Distance between positions (micrometres, at most 1e6)."),
        click.option("--fps", default=5.0, show_default=True, type=POSITIVE, help="Camera frame rate."),
        click.option("--width", default=800, show_default=True, type=click.IntRange(min=1), help="Frame width (pixels)."),
        click.option("--height", default=600, show_default=True, type=click.IntRange(min=1), help="Frame height (pixels)."),
        click.option("--pixel-format", default="Mono8", show_default=True, type=click.Choice(PIXEL_FORMATS),
                     help="GenICam PixelFormat (what the camera offers; Mono10/12 unpacked, in 16-bit pixels)."),
        click.option("--exposure-us", type=POSITIVE, default=None, help="Exposure time (default: leave the camera's)."),
        click.option("--bit-depth", type=click.IntRange(1, 16), default=None,
                     help="Significant bits of the pixel values, recorded in the manifest (default: the pixel format's; "
                          "Mono16: the camera's PixelDynamicRangeMax). At most the format's bits."),
        click.option("--trigger", default="auto", show_default=True, type=click.Choice(["auto", "software", "line", "freerun"]),
                     help="auto = software trigger if the camera has one, else free-run."),
        click.option("--settle-s", default=0.0, show_default=True, type=NON_NEGATIVE, help="Simulated stage settle time per move."),
        click.option("--frame-timeout", type=POSITIVE, default=None, help="Seconds to wait for a position's frame (default max(1, 3/fps))."),
        click.option("--as-fast-as-possible", "afap", is_flag=True, help="Replay without pacing at the recorded rate."),
        quiet_option(),
        _config_options,
    ]):
        f = option(f)
    return f


@click.command("capture")
@capture_options
@click.pass_context
def capture(ctx, **params):
    """Capture lane passes into a raw recording (chdl.raw/1), from a camera or a recorded stream."""
    report_captures(ctx, run_captures(ctx, **params))


def check_capture_params(ctx, alias, replay, run_id, afap, pixel_format=None, bit_depth=None) -> None:
    """Usage errors of a capture command line (exactly one source, a plain run id, replay-only flags, a bit
    depth the pixel format can hold)."""
    from acquisition.raw import check_bit_depth, check_plain_name

    if bool(alias) == bool(replay):
        raise click.UsageError("give exactly one of --camera ALIAS or --replay RECORDING")
    if run_id is not None and (why := check_plain_name(run_id)):
        raise click.BadParameter(why + "; the run is written to OUT/<run-id>/", param_hint="--run-id")
    if afap and not replay:
        raise click.UsageError("--as-fast-as-possible only applies to --replay")
    if replay:
        fixed = [p for p in ("lanes", "positions", "step_um", "fps", "width", "height", "pixel_format", "exposure_us",
                             "bit_depth", "trigger", "settle_s", "camera_config", "cti")
                 if ctx.get_parameter_source(p) is click.core.ParameterSource.COMMANDLINE]
        if fixed:
            raise click.UsageError(f"--{fixed[0].replace('_', '-')} does not apply to --replay "
                                   "(settings and plan come from the recording)")
    elif bit_depth is not None and (why := check_bit_depth(pixel_format, bit_depth)):
        raise click.BadParameter(why, param_hint="--bit-depth")


DEFAULT_NAME_TRIES = 5  # default run ids tried when others claim them first (the same camera started at once)


def run_captures(ctx, alias, replay, out, run_id, lanes, positions, step_um, fps, width, height, pixel_format,
                 exposure_us, bit_depth, trigger, settle_s, frame_timeout, afap, quiet, camera_config, cti, on_record=None):
    """Run the capture(s) a ``chdl capture`` command line asks for; returns their CaptureResults.
    ``on_record(run_path, FrameRecord)`` is called for every record once it is on disk (``chdl monitor``)."""
    from acquisition.backends.base import CaptureSettings
    from acquisition.capture import CapturePlan, default_run_id
    from acquisition.raw import check_plain_name

    check_capture_params(ctx, alias, replay, run_id, afap, pixel_format, bit_depth)
    results = []
    with _user_errors():
        if replay:
            from acquisition.raw import find_recordings, free_for_a_recording, taken

            runs = find_recordings(replay)
            if run_id and len(runs) > 1:
                raise click.UsageError("--run-id needs a single recording to replay")
            # every destination is checked before any run is replayed: one taken halfway through a folder of runs
            # left the folder half-replayed
            seen: dict[Path, Path] = {}
            for run in runs:
                dest = replay_run_path(run, out, run_id)
                if dest in seen:
                    raise click.ClickException(f"{dest}: {seen[dest]} and {run} both replay to it (the same run id); "
                                               "replay them one at a time with --run-id")
                if not free_for_a_recording(dest):
                    raise click.ClickException(f"{taken(dest)}; choose another --out or --run-id; nothing was "
                                               "replayed")
                seen[dest] = run
            for run in runs:
                results.append(_replay_one(run, out, run_id, not afap, frame_timeout, quiet, on_record))
                if results[-1].stopped_by == "interrupted":
                    break
        else:
            from acquisition.backends import open_camera
            from acquisition.camera_config import load_camera_config
            from acquisition.stage import SimulatedStage

            from acquisition.raw import RawFormatError, free_for_a_recording

            config = load_camera_config(camera_config, tuple(cti))
            plan = CapturePlan.evenly(lanes, positions, step_um, trigger=trigger, frame_timeout_s=frame_timeout)
            settings = CaptureSettings(width, height, pixel_format, fps, exposure_us, bit_depth)
            for attempt in range(DEFAULT_NAME_TRIES):
                name = run_id or default_run_id(alias, out)
                if why := check_plain_name(name):  # the alias names the default run folder
                    raise click.UsageError(f"{why}; pass --run-id NAME")
                camera = open_camera(alias, config)
                try:
                    results.append(_run(camera, SimulatedStage(settle_s), out / name,
                                        settings, plan, {"alias": alias}, quiet, on_record))
                    break
                except RawFormatError:
                    # a default name another capture claimed while this one opened its camera (two started in one
                    # second): the next free one, as for back-to-back captures; a --run-id is the user's to change
                    if run_id is not None or free_for_a_recording(out / name) or attempt == DEFAULT_NAME_TRIES - 1:
                        raise
    return results


def report_captures(ctx, results) -> None:
    """Print one line per capture; exit 130 if interrupted, 1 if a capture stopped early (a replay of an incomplete
    recording that replayed all of it is not: "source ended")."""
    worst = next((r for r in results if r.stopped_by not in (None, "source ended")), None)
    for r in results:
        skipped = (f"{r.skipped} skipped (arrived before the stage settled), " if r.skipped else "")
        counts = (f"{r.frames} position{'s' if r.frames != 1 else ''} ({r.dropped_positions} without a frame), "
                  f"{r.dropped_frames} frames "
                  f"dropped by the device, "
                  f"{r.incomplete} incomplete buffers, {skipped}{r.rate_fps:.2f} frames/s")
        if r is worst:
            if r.frames or r.path.exists():  # (a capture stopped before its first frame removed its folder)
                click.echo(f"{r.path}: {counts}")  # what went wrong follows once, as the error line
        else:
            click.echo(f"{r.message} ({counts})")
            if r.dropped_positions and r.stopped_by is None:
                replay = bool(ctx.params.get("replay"))  # (it blamed the camera's speed for a bad recorded frame)
                why = ("the recording replayed has no usable frame there: see the warnings above" if replay
                       else "a slow camera needs a longer --frame-timeout")
                click.echo(f"warning: {r.path}: {r.dropped_positions} of {r.frames} positions got no frame"
                           f"{'' if replay else ' in time'} (recorded as dropped, notes.dropped_positions; {why})",
                           err=True)
    if worst is not None:
        if worst.stopped_by == "interrupted":
            # one line: the capture's own message says how far it got ("interrupted; stopped after 23 of 200
            # frames, recording kept (marked incomplete) at PATH")
            done = worst.message.removeprefix("interrupted; ").removeprefix("interrupted")
            click.echo(f"interrupted: device closed; {done}", err=True)
            ctx.exit(130)
        raise click.ClickException(worst.message)


def replay_run_path(run: Path, out: Path, run_id: str | None) -> Path:
    """Where ``chdl capture --replay RUN --out OUT`` writes the replay of one recording."""
    from acquisition.raw import Recording

    return out / (run_id or Recording.open(run).manifest.get("run_id") or run.name)


def _replay_one(run: Path, out: Path, run_id: str | None, pace: bool, frame_timeout: float | None, quiet: bool,
                on_record=None):
    from acquisition.backends.replay import ReplayCamera, recorded_plan, recorded_settings
    from acquisition.capture import CapturePlan
    from acquisition.raw import Recording
    from acquisition.stage import SimulatedStage

    rec = Recording.open(run)
    if rec.lines_missing:  # (it replayed as complete: source_complete true, a frame short)
        click.echo(f"warning: {run / 'frames.jsonl'}: holds {len(rec.frames)} of the {len(rec.frames) + rec.lines_missing} "
                   "frames manifest.json counts (the index was cut short); replayed as an incomplete recording", err=True)
    camera = ReplayCamera(run, pace=pace)
    settings = recorded_settings(rec)
    lanes, positions_um = recorded_plan(rec)
    stamps = [f.host_monotonic_ns for f in rec.frames]
    longest_gap = max((b - a for a, b in zip(stamps, stamps[1:])), default=0) / 1e9 if pace else 0.0
    plan = CapturePlan(lanes=lanes, positions_um=positions_um, trigger="software",
                       frame_timeout_s=frame_timeout or longest_gap + 1.0, max_consecutive_timeouts=rec.manifest.get("frames", len(rec.frames)) + 1)
    notes = {"replay_of": str(run.resolve()), "source_run_id": rec.manifest.get("run_id"), "paced": pace,
             "source_complete": rec.complete}
    return _run(camera, SimulatedStage(0.0), replay_run_path(run, out, run_id), settings, plan, notes, quiet, on_record)


def _run(camera, stage, path: Path, settings, plan, notes: dict, quiet: bool, on_record=None):
    from tqdm import tqdm

    from acquisition.capture import run_capture

    bar = None  # created on the first frame, so a camera that fails to open prints only its error

    def on_frame(record, p):
        nonlocal bar
        if on_record is not None:
            on_record(path, record)
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=plan.total, unit="frame", file=sys.stderr, dynamic_ncols=True, desc=path.name)
        bar.set_postfix_str(f"lane {p.lane + 1}/{plan.lanes} pos {p.position_index + 1}/{len(plan.positions_um)} "
                            f"{p.fps:.1f} fps drops {p.dropped} incomplete {p.incomplete}", refresh=False)
        bar.update(1)

    try:
        return run_capture(camera, stage, path, settings, plan, notes=notes,
                           on_frame=None if quiet and on_record is None else on_frame)
    finally:
        if bar is not None:
            bar.close()
