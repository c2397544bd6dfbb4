"""``chdl monitor`` (capture + live process-anomaly scoring) and ``chdl monitor-eval`` (metrics on labelled
recordings). See docs/monitor.md.

Exit status of ``monitor``: as ``chdl capture`` (0 complete, 1 error, 130 interrupted); 1 as well when the
scorer failed or the monitor folder could not be written (the recording is complete all the same).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from chdl.cli import catch_stop_signals, restore_signals
from chdl.cli.acquire import capture_options, report_captures, run_captures
from acquisition.files import file_in_the_way
from chdl.cli.options import POSITIVE, LocalPath, OutputPath, output_lock, quiet_option
from chdl.monitor import SCORER_FORMAT, Z_OFF, Z_ON


def _predictor_spec(checkpoint: Path | None, t_in: int, size: tuple | None = None) -> tuple[dict, str, int]:
    """(spec for the scoring process, predictor name, T_in); a checkpoint is loaded here once, so a bad
    one, or one trained on frames of another size than ``size`` (H, W), is a one-line error before
    anything is recorded."""
    if checkpoint is None:
        return {"predictor": "constant-motion", "t_in": t_in}, "constant-motion", t_in
    from diffuma.training.checkpoint import CheckpointError, load_checkpoint

    try:
        state = load_checkpoint(checkpoint)
    except (CheckpointError, ValueError, OSError) as e:
        raise click.ClickException(str(e).splitlines()[0]) from None
    backend = (state.get("model_config") or {}).get("scan_backend")
    if backend is not None:  # a model that scans (CHDL_SCAN_BACKEND overrides its field); the scorer predicts on the CPU
        from diffuma.models.ssm import check_backend

        try:
            check_backend(backend, "cpu")
        except ValueError as e:
            raise click.ClickException(f"{checkpoint}: {e}") from None
    data = state["data"]
    trained = tuple(int(data.get(k, 0)) for k in ("channels", "height", "width"))
    if size is not None and None not in size and trained != (1, *map(int, size)):
        raise click.ClickException(f"{checkpoint}: trained on frames {trained[0]}x{trained[1]}x{trained[2]} (C,H,W), "
                                   f"the monitored frames are 1x{size[0]}x{size[1]}: train one at this size or capture "
                                   "at its size")
    name = f"{state['model_name']}:{checkpoint}"
    return ({"predictor": "checkpoint", "checkpoint": str(checkpoint), "trained_max_value": data.get("max_value")},
            name, int(state["data"]["in_frames"]))


@click.command("monitor")
@capture_options
@click.option("--checkpoint", type=LocalPath(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Predictor: a chdl checkpoint (e.g. DIFFUMA). Default: constant-motion extrapolation.")
@click.option("--t-in", type=click.IntRange(2), default=5, show_default=True,
              help="Frames the constant-motion predictor looks back (a checkpoint brings its own).")
@click.option("--queue-depth", type=click.IntRange(1), default=8, show_default=True,
              help="Frames waiting for the scorer; when it is full, frames are recorded but not scored (skipped).")
@click.option("--z-on", type=POSITIVE, default=None,
              help=f"Alert when the score exceeds its running median + z-on robust sigmas. [default: {Z_ON:g}, or the "
                   "level measured for the --scorer file]")
@click.option("--z-off", type=POSITIVE, default=None,
              help=f"... and end it below median + z-off sigmas. [default: {Z_OFF:g}, or the --scorer file's; with "
                   "--z-on alone, the same fraction of it]")
@click.option("--scorer", type=LocalPath(dir_okay=False, path_type=Path), default=None,
              help="A learned scorer file (chdl monitor-fit-scorer) fitted with this predictor on clean recordings. "
                   "Default: the largest block z-score.")
@click.option("--serve", is_flag=True, help="Serve the live dashboard on 127.0.0.1 (chdl.monitor.dashboard).")
@click.option("--token-file", type=LocalPath(path_type=Path, dir_okay=False), default=None,
              help="With --serve: require the token in this file on every request (?token=...). Loopback is open to "
                   "every user of this machine: on a shared server, give one.")
@click.pass_context
def monitor(ctx, checkpoint, t_in, queue_depth, z_on, z_off, scorer, serve, token_file, **params):
    """Capture (exactly as chdl capture) while a separate process predicts and scores every frame; process
    anomalies and acquisition-QC flags are written as events beside the recording, in OUT/<run-id>.monitor/."""
    from acquisition.capture import default_run_id
    from chdl.cli.acquire import check_capture_params, replay_run_path
    from chdl.monitor.runtime import Monitor, MonitorError, monitor_dir

    check_capture_params(ctx, params["alias"], params["replay"], params["run_id"], params["afap"],
                         params["pixel_format"], params["bit_depth"])
    if params["replay"] is not None:
        from acquisition.raw import RawFormatError, Recording, find_recordings

        try:
            runs = find_recordings(params["replay"])
            if len(runs) != 1:
                raise click.UsageError(f"--replay {params['replay']}: monitor replays a single recording, found {len(runs)}")
            run_path = replay_run_path(runs[0], params["out"], params["run_id"])
            manifest = Recording.open(runs[0]).manifest
        except RawFormatError as e:
            raise click.ClickException(str(e)) from None
        size = (int(manifest["settings"]["height"]), int(manifest["settings"]["width"]))
    else:
        params["run_id"] = params["run_id"] or default_run_id(params["alias"], params["out"])
        run_path = params["out"] / params["run_id"]
        size = (params["height"], params["width"])
        manifest = {"plan": {"step_um": params["step_um"]}}
    folder = monitor_dir(run_path)
    try:
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise click.ClickException(f"{folder}: already exists and is not empty (choose another --run-id or --out)")
    except OSError as e:  # a run id too long for the ".monitor" suffix (it was a traceback): as the capture says it
        raise click.ClickException(f"{folder}: cannot create the monitor folder ({e.strerror or e})") from None
    if token_file is not None and not serve:
        raise click.UsageError("--token-file is for --serve")
    from chdl.cli.dashboard import _token

    token = _token(None, token_file) if token_file is not None else None
    serve_in_background = _dashboard() if serve else None
    spec, name, t = _predictor_spec(checkpoint, t_in, size)
    learned = _check_scorer(scorer, checkpoint, size) if scorer is not None else None
    if learned is not None:  # a scorer fitted at another stage step: its level does not hold (false alarms)
        from chdl.monitor.learned_score import stage_step_um

        if (warning := learned.step_mismatch(stage_step_um(manifest))) is not None:
            click.echo(f"warning: {warning}", err=True)
    spec["scorer"] = _alert_levels(z_on, z_off, learned)
    if scorer is not None:
        spec["scorer"]["scorer_file"] = str(scorer.resolve())
    from acquisition.raw import free_for_a_recording, taken

    if not free_for_a_recording(run_path):
        raise click.ClickException(f"{taken(run_path)}; choose another --run-id or --out")
    new_out = not params["out"].exists()
    from tqdm import tqdm

    # each event as a line above the capture's bar (with -q only the summary counts them)
    mon = Monitor(spec, queue_depth,
                  announce=None if params["quiet"] else lambda line: tqdm.write(line, file=sys.stderr))
    server = None
    state, results = "failed", []

    # SIGTERM and SIGHUP before the capture takes them over (and after) end the run as Ctrl-C does
    previous = catch_stop_signals()
    try:
        try:
            mon.start(run_path, run_path.name, name, t)
        except MonitorError as e:
            raise click.ClickException(str(e)) from None
        if serve_in_background is not None:
            server = serve_in_background(mon.folder, token=token)
            click.echo(f"dashboard: {server.url}", err=True)
        results = run_captures(ctx, **params, on_record=mon.offer)
        stops = {r.stopped_by for r in results} - {None, "source ended"}  # (all of an incomplete source replayed)
        state = "interrupted" if "interrupted" in stops else "failed" if stops else "finished"
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the capture began (e.g. while the scorer loads)
        state = "interrupted"
    finally:
        error = mon.finish(state)
        restore_signals(previous)
        if server is not None:
            server.stop()
        if mon.captured == 0 and mon.folder is not None:  # nothing recorded: leave nothing behind (a capture stopped
            # before its first frame removes its recording too)
            shutil.rmtree(mon.folder, ignore_errors=True)  # (mon.folder: set once this monitor claimed it)
            if new_out and params["out"].is_dir() and not any(params["out"].iterdir()):
                params["out"].rmdir()
    if not results:
        click.echo("interrupted before the capture began: nothing recorded", err=True)
        ctx.exit(130)
    status = mon.status.fields  # as written last (or, if that failed, as it would have been)
    if mon.captured == 0:  # stopped before the first frame: its folder is gone, the capture's error says why
        report_captures(ctx, results)
    click.echo(f"monitor: {status['frames_scored']} frames scored, {status['frames_skipped']} skipped, "
               f"{status['frames_unscored']} unscored (no history yet in their lane pass), "
               f"{status['events']} events -> {mon.folder}")
    for warning in mon.warnings:
        click.echo(f"warning: {warning}", err=True)
    ended = not error and all(r.stopped_by in (None, "source ended") for r in results)
    most_skipped = status["frames_skipped"] > status["frames_scored"]
    if ended and status["frames_scored"] and (why := _why_no_frame_could_alert(mon.folder, most_skipped)):
        click.echo(f"warning: no frame could alert: {why}", err=True)  # ("0 events" would read as all clear)
    if ended and not status["frames_scored"] and status["frames_unscored"] and not most_skipped:
        # "0 events" would read as all clear (lane passes of 2 positions: no frame has the history it needs)
        click.echo(f"warning: no frame could be scored: all {status['frames_unscored']} came with too little history "
                   "in their lane pass (a pass needs 3 positions or more: the predictor uses the 2 frames before the "
                   "one it predicts)", err=True)
    if most_skipped and not error:  # most frames unwatched: say so
        if params["replay"]:
            advice = ("drop --as-fast-as-possible or raise --queue-depth" if params["afap"] else
                      "raise --queue-depth, or use a lighter --checkpoint (the scorer is slower than the recording's "
                      "frame rate on this machine)")
        else:
            advice = "lower --fps or raise --queue-depth"
        click.echo(f"warning: {status['frames_skipped']} of {status['frames_captured']} frames were skipped (the scorer "
                   f"fell behind); {advice}", err=True)
    if error and not (mon.disk_full and any(r.stopped_by == "disk full" for r in results)):
        click.echo(f"error: {error}", err=True)  # (a full disk that stopped the capture too is its one error line)
    report_captures(ctx, results)
    if error:
        ctx.exit(1)


def _why_no_frame_could_alert(folder, most_skipped: bool) -> str | None:
    """Why no scored frame of a monitor folder had an alert level (None if one had, or scores.jsonl cannot be read):
    the scorer's baseline was never built, for too few scored frames or because the acquisition QC flagged them."""
    from collections import Counter

    from chdl.monitor.anomaly_score import ScorerConfig
    from chdl.monitor.jsonl import read_jsonl

    try:
        rows = list(read_jsonl(folder / "scores.jsonl"))
    except OSError:
        return None
    if any(r.get("threshold") is not None for r in rows):
        return None
    flagged = Counter(r["acquisition"] for r in rows if r.get("acquisition"))
    clean = len(rows) - sum(flagged.values())
    causes = ", ".join(f"{n} {cause}" for cause, n in flagged.most_common())
    if clean == 0 and rows:  # (a lens cap on for the whole run, 12-bit data read as 16-bit: every frame 'no image')
        return (f"every one of the {len(rows)} scored frames was flagged by the acquisition QC ({causes}; events.jsonl "
                "lists them), and a flagged frame neither builds the scorer's baseline nor raises a process alert")
    also = f" ({causes} flagged by the acquisition QC are left out of it)" if flagged else ""
    return (f"the scorer first builds its baseline (about {2 * ScorerConfig().min_history} frames of a recording) and "
            f"this one had {clean} scored frames to build it from{also}; "
            + ("most frames were skipped (below)" if most_skipped else "monitor longer recordings"))


def _given_levels(z_on: float | None, z_off: float | None) -> dict:
    """The alert levels given on the command line (checked against each other and the defaults)."""
    _alert_levels(z_on, z_off)
    return {k: v for k, v in (("z_on", z_on), ("z_off", z_off)) if v is not None}


def _check_scorer(path: Path, checkpoint: Path | None, size: tuple[int, int]):
    """The learned scorer of ``path``; a one-line error unless it was fitted with this kind of predictor
    (constant motion, or a checkpoint) on frames of ``size`` (H, W)."""
    from chdl.monitor.learned_score import LearnedScorer

    try:
        learned = LearnedScorer.load(path)
        learned.check_frames(size)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    fitted_cm = learned.predictor == "constant-motion"
    if fitted_cm != (checkpoint is None):
        now = "constant motion" if checkpoint is None else f"the checkpoint {checkpoint}"
        raise click.ClickException(f"{path}: fitted on the prediction errors of {learned.predictor}, the monitor "
                                   f"predicts with {now} (fit one with monitor-fit-scorer for it)")
    try:
        learned.check_checkpoint(checkpoint)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    return learned


def _alert_levels(z_on: float | None, z_off: float | None, learned=None) -> dict:
    """{"z_on", "z_off"}: as given, else the learned scorer's measured levels, else the defaults; a usage
    error if z_off would exceed z_on."""
    from chdl.monitor.learned_score import alert_levels

    levels = alert_levels(learned, z_on, z_off)
    if levels["z_off"] > levels["z_on"]:
        raise click.BadParameter(f"must not exceed --z-on ({levels['z_on']:g})", param_hint="--z-off")
    return levels


def _dashboard():
    """``chdl.monitor.dashboard.serve_in_background``, or a one-line error if the dashboard is not installed."""
    try:
        from chdl.monitor.dashboard import serve_in_background
    except ImportError as e:
        raise click.ClickException(f"--serve: the dashboard is not available ({e})") from None
    return serve_in_background


@click.command("monitor-eval")
@click.argument("runs", nargs=-1, required=True, type=LocalPath(exists=True, file_okay=False, path_type=Path))
@click.option("--checkpoint", type=LocalPath(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Also evaluate this model as the predictor.")
@click.option("--out", type=OutputPath(file_okay=False, path_type=Path), required=True,
              help="Folder for metrics.json, metrics.md and the score plots.")
@click.option("--no-qc", is_flag=True, help="Skip the acquisition QC (faster; no acquisition flags).")
@click.option("--z-on", type=POSITIVE, default=None,
              help=f"Alert level, as for chdl monitor. [default: {Z_ON:g}; a --scorer method: its file's measured level]")
@click.option("--z-off", type=POSITIVE, default=None,
              help=f"Alert-off level, as for chdl monitor. [default: {Z_OFF:g}, or the file's; with --z-on alone, the "
                   "same fraction of it]")
@click.option("--scorer", "scorers", multiple=True, type=LocalPath(exists=True, dir_okay=False, path_type=Path),
              help="Also evaluate this learned scorer (chdl monitor-fit-scorer) with the predictor it was fitted on "
                   "(repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier evaluation in --out.")
@quiet_option()
def monitor_eval(runs, checkpoint, out, no_qc, z_on, z_off, scorers, overwrite, quiet):
    """Frame AUROC, event recall, detection latency and false alarms per hour on labelled (simulated)
    recordings (RUN folders, folders of runs, or monitor output folders), for every predictor next to the
    frame-difference and copy-last baselines."""
    given = _given_levels(z_on, z_off)
    _check_output_folder(out)
    with output_lock(out):  # a second monitor-eval into --out is refused (it replaced the first's results silently)
        _monitor_eval(runs, checkpoint, out, no_qc, given, z_on, z_off, scorers, overwrite, quiet)


def _monitor_eval(runs, checkpoint, out, no_qc, given, z_on, z_off, scorers, overwrite, quiet):
    from chdl.monitor.evaluate import EvalError, evaluate
    from chdl.monitor.learned_score import LearnedScorer

    _check_eval_folder(out, runs, overwrite)
    for path in scorers:  # each file readable, and its levels with the given ones a valid hysteresis
        try:
            learned = LearnedScorer.load(path)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        _alert_levels(z_on, z_off, learned)
    try:
        result = evaluate(list(runs), out, checkpoint=checkpoint, qc=not no_qc, progress=not quiet,
                          alert_levels=given, scorers=list(scorers))
    except EvalError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # a folder the checks above could not foresee (e.g. under /proc), a full disk
        raise click.ClickException(f"{e.filename or out}: cannot write the evaluation ({e.strerror or e})") from None
    click.echo(result["markdown"])
    click.echo(f"wrote {out}/metrics.json, metrics.md, scores_*.png")


def _check_eval_folder(out: Path, runs, overwrite: bool) -> None:
    """monitor-eval's --out: not inside (or holding) an input, and an existing folder only an earlier evaluation's,
    replaced with --overwrite (it replaced one silently, and deleted other files' named scores_*.png)."""
    from diffuma.output_folder import check_apart_from_input

    for r in runs:
        try:
            check_apart_from_input(out, r)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    if not out.is_dir() or not any(out.iterdir()):
        return
    from chdl.monitor.evaluate import is_eval_folder

    if not is_eval_folder(out):
        raise click.ClickException(f"{out}: not empty and not a monitor-eval folder; choose another --out")
    if not overwrite:
        raise click.ClickException(f"{out}: holds an earlier evaluation (metrics.json); use --overwrite to replace "
                                   "it, or another --out")


def _check_output_folder(out: Path) -> None:
    """Before minutes of scoring: --out can be made there (a file on the way, a read-only place are one line).
    Nothing is created yet: a run refused later leaves no empty folder."""
    import os

    if out.exists() and not out.is_dir():
        raise click.ClickException(f"{out}: a file, not an output folder")
    if (blocker := file_in_the_way(out)) is not None:
        raise click.ClickException(f"{out}: cannot create the output folder: {blocker} is a file, not a folder")
    base = next((a for a in (out, *out.parents) if a.exists()), Path("."))
    if not os.access(base, os.W_OK | os.X_OK):
        raise click.ClickException(f"{out}: cannot create the output folder: {base} is not writable")


@click.command("monitor-fit-scorer")
@click.argument("runs", nargs=-1, required=True, type=LocalPath(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", type=LocalPath(dir_okay=False, path_type=Path), required=True,
              help=f"The scorer file to write (JSON, {SCORER_FORMAT}).")
@click.option("--checkpoint", type=LocalPath(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Fit on this model's prediction errors (default: constant motion's).")
@click.option("--components", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Gaussian mixture components.")
@click.option("--no-qc", is_flag=True, help="Skip the acquisition QC (keep every frame).")
@click.option("--overwrite", is_flag=True, help="Replace an existing scorer file (its measured alert level too).")
@quiet_option()
def monitor_fit_scorer(runs, out, checkpoint, components, no_qc, overwrite, quiet):
    """Fit a learned frame scorer to CLEAN recordings (RUN folders or folders of runs; no process anomalies):
    features of every frame's prediction error, a Gaussian mixture of them. Use it with chdl monitor --scorer."""
    from chdl.monitor.learned_score import fit_recordings, is_scorer_file
    from diffuma.output_folder import check_apart_from_input

    if out.parent != Path("") and not out.parent.is_dir():
        what = "is a file, not a folder" if out.parent.exists() else "does not exist"
        raise click.ClickException(f"{out}: the folder {out.parent} {what}")
    for r in runs:  # (-o run/s.json wrote into a recording; with --overwrite, over its manifest.json)
        try:
            check_apart_from_input(out, r)
        except ValueError as e:
            raise click.ClickException(str(e).replace("choose another --out", "choose another -o")) from None
    if out.exists() and not overwrite:  # it may carry an alert level measured over an hour of clean capture
        raise click.ClickException(f"{out}: already exists (use --overwrite to replace it and its measured alert "
                                   "level, or -o another file)")
    if out.exists() and not is_scorer_file(out):
        raise click.ClickException(f"{out}: not a scorer file ({SCORER_FORMAT.split('/')[0]}/N); --overwrite replaces "
                                   "only a scorer file: -o another file")
    if not os.access(out.parent if str(out.parent) else ".", os.W_OK):  # before the fit, not after it
        raise click.ClickException(f"{out}: cannot write the scorer (the folder {out.parent} is not writable)")
    try:
        learned = fit_recordings(list(runs), checkpoint=checkpoint, components=components, qc=not no_qc,
                                 progress=not quiet)
    except ValueError as e:  # EvalError, a checkpoint or recording that cannot be used, too few frames
        raise click.ClickException(str(e).splitlines()[0]) from None
    try:
        learned.save(out)
    except OSError as e:  # a full disk (a traceback before): the earlier scorer file, if any, is kept
        raise click.ClickException(f"{out}: cannot write the scorer ({e.strerror or e})") from None
    click.echo(f"fitted on {learned.fitted_on['frames']} clean frames ({learned.predictor}, "
               f"{learned.width}x{learned.height}) -> {out}")
    click.echo(f"its alert level and test weights are not measured yet (--scorer uses z_on {Z_ON:g} and no splash or "
               f"crack test until then): measure them on OTHER clean "
               f"recordings with python tools/monitor_operating_point.py CLEAN_RUNS... --scorer {out} --write-scorer "
               "(a script of chdl's source tree, not of the installed package)")
