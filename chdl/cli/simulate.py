"""``chdl simulate``: the dicing-lane simulator's commands.

- ``chdl simulate corpus OUT``: render a labelled corpus straight to raw recordings (one recording of
  ``--lanes-per-run`` lane passes per run folder, runs rendered in parallel by ``--workers`` processes).
  Run ``k`` is what camera ``sim<seed*10000+k>`` records for a plan of that many lanes; an interrupted
  corpus resumes (finished runs are kept, a half-written sim run is redone) when rerun with the same
  arguments: ``OUT/corpus.json`` records them, and other ones are refused. ``--scheduler`` renders
  the runs on a Dask cluster instead (:mod:`chdl.cluster`; OUT on storage every worker sees).
- ``chdl simulate truth RUN...``: write ``<run>/truth/`` for recordings captured from a sim camera
  (``chdl capture --camera sim0``), re-rendering every frame and checking it matches.
- ``chdl simulate contact-sheet OUT.png``: a picture of a clean lane pass and of each fault kind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import threading
import urllib.parse
from pathlib import Path

import click

from acquisition import files
from chdl.cli.options import PLAN_COUNT, STEP_UM, FiniteFloat, LocalPath, OutputPath, output_lock, quiet_option

RUN_SEEDS = 10000  # run k of a corpus with seed s uses camera seed s * RUN_SEEDS + k
CORPUS_FILE = "corpus.json"  # OUT/corpus.json: the arguments a corpus is rendered with (a rerun must match)
CORPUS_FORMAT = "chdl.sim-corpus/1"


@click.group("simulate")
def simulate() -> None:
    """Render simulated dicing-lane recordings with ground-truth fault labels."""


def _corpus_job(job: tuple) -> dict:
    from acquisition.backends.base import CaptureSettings
    from acquisition.backends.sim import render_recording

    out, options, settings, lanes, positions, step_um = job
    if Path(out).exists():  # a retry after a lost worker: what that worker left is half a run
        _clear_partial_sim_run(Path(out))
    counts = render_recording(out, options=options, settings=CaptureSettings(**settings), lanes=lanes,
                              positions=positions, step_um=step_um)
    return {**counts, "path": out}


def _run_done(run: Path) -> bool:
    from acquisition.raw import Recording, RawFormatError

    try:
        return Recording.open(run).complete and (run / "truth" / "labels.jsonl").is_file()
    except RawFormatError:
        return False


def _clear_partial_sim_run(run: Path) -> None:
    """Remove a half-written run of a previous corpus invocation; refuse anything that is not one."""
    from acquisition.raw import only_a_claim

    manifest = run / "manifest.json"
    try:
        camera = json.loads(manifest.read_text()).get("camera", {})
    except (OSError, ValueError):
        camera = {}
    # (a run stopped between the writer's claim and its manifest holds only that claim: the rerun refused it as
    # someone else's folder)
    if camera.get("backend") != "sim" and not only_a_claim(run):
        raise click.ClickException(f"{run}: exists and is not a simulated run; refusing to overwrite it")
    shutil.rmtree(run)


def _option(key: str) -> str:
    return "simulator version" if key == "sim_version" else "--" + key.replace("_", "-")


def _differences(made: dict, now: dict) -> str:
    """``--width 200 (now 160), --seed 0 (now 5)``: the parameters in ``now`` that ``made`` has otherwise."""
    return ", ".join(f"{_option(k)} {made.get(k)} (now {v})" for k, v in now.items() if made.get(k) != v)


def _run_parameters(run: Path, k: int) -> dict:
    """The corpus parameters run ``k``'s manifest shows ("lanes": its lane passes), for a corpus made before
    corpus.json. A one-line error if it is not a run of ``chdl simulate corpus``."""
    try:
        manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
        camera, settings, plan = manifest["camera"], manifest["settings"], manifest["plan"]
        if camera.get("backend") != "sim":
            raise ValueError("not a sim camera")
        address = urllib.parse.urlparse(camera["address"])
        query = dict(urllib.parse.parse_qsl(address.query))
        seed, rest = divmod(int(address.netloc) - k, RUN_SEEDS)
        return {"positions": plan["positions"], "step_um": float(plan["step_um"]),
                "seed": seed if rest == 0 else f"(camera sim{address.netloc})", "width": settings["width"],
                "height": settings["height"], "pixel_format": settings["pixel_format"],
                "bit_depth": 8 if settings["pixel_format"] == "Mono8" else int(query["bit_depth"]), "fault_rate": float(query["fault_rate"]),
                "anomaly_rate": float(query.get("anomaly_rate", 0.0)), "sim_version": int(query["sim_version"]),
                "lanes": plan["lanes"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise click.ClickException(f"{run}: not a run of chdl simulate corpus ({e}); use another folder") from None


def _check_corpus(out: Path, params: dict, n_runs: int) -> bool:
    """Refuse (one line) to resume a corpus made with other ``params``; True if ``out`` has no corpus.json yet
    (new, or made before it existed: then every finished run must show these parameters)."""
    file = out / CORPUS_FILE
    advice = f"; use another folder, or delete {out} to render it anew"
    try:
        made = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        made = None
    except (OSError, ValueError) as e:
        raise click.ClickException(f"{file}: cannot read the corpus parameters ({getattr(e, 'strerror', None) or e})"
                                   f"{advice}") from None
    if made is not None:
        if not isinstance(made, dict) or made.get("format") != CORPUS_FORMAT or not isinstance(made.get("parameters"), dict):
            raise click.ClickException(f"{file}: not a corpus parameter file ({CORPUS_FORMAT}){advice}")
        made = made["parameters"]
        if made.get("pixel_format") == "Mono8":  # before 2026-12-02 a Mono8 corpus recorded the unused Mono16 depth
            made = {**made, "bit_depth": 8}
        if diff := _differences(made, params):
            raise click.ClickException(f"{out}: a corpus rendered with other arguments: {diff}{advice}")
        return False
    others = sorted(p.name for p in out.iterdir() if not (p.name.startswith("run_") and p.name[4:].isdigit() and p.is_dir())
                    and not p.name.startswith(".")) if out.is_dir() else []
    if others:  # not a corpus (nor one begun before corpus.json was written): someone's folder, a recording
        raise click.ClickException(f"{out}: exists and is not a corpus folder (it holds {', '.join(others[:3])}"
                                   f"{', ...' if len(others) > 3 else ''}); choose another folder")
    lpr = params["lanes_per_run"]
    for run in sorted(p for p in out.glob("run_*") if p.name[4:].isdigit() and p.is_dir() and _run_done(p)):
        k = int(run.name[4:])
        if k >= n_runs:
            raise click.ClickException(f"{out}: its finished {run.name} is beyond the {n_runs} runs of these "
                                       f"arguments (other --sequences or --lanes-per-run){advice}")
        shown = _run_parameters(run, k)
        now = {key: params[key] for key in shown if key in params}
        now["lanes"] = min(lpr, params["sequences"] - k * lpr)
        if diff := _differences(shown, now):
            diff = diff.replace("--lanes ", "--sequences/--lanes-per-run: lane passes ")
            raise click.ClickException(f"{out}: {run.name} was rendered with other arguments: {diff}{advice}")
    return True


def _write_corpus_file(out: Path, params: dict) -> None:
    """OUT/corpus.json, whole or not at all (a tmp file beside it, fsync, os.replace)."""
    files.write_text(out / CORPUS_FILE, json.dumps({"format": CORPUS_FORMAT, "parameters": params}, indent=1) + "\n",
                     durable=True)


@contextlib.contextmanager
def _cluster_errors_as_click():
    from chdl.cluster import ClusterError

    try:
        yield
    except ClusterError as e:
        raise click.ClickException(str(e)) from None


@simulate.command("corpus")
@click.argument("out", type=OutputPath(file_okay=False, path_type=Path))
@click.option("--sequences", "lanes", type=click.IntRange(1), default=100, show_default=True,
              help="Lane passes (sequences) in total.")
@click.option("--positions", type=PLAN_COUNT, default=10, show_default=True, help="Frames per lane pass (at most 100000).")
@click.option("--step-um", type=STEP_UM, default=60.0, show_default=True,
              help="Stage step between positions (micrometres, at most 1e6).")
@click.option("--lanes-per-run", type=click.IntRange(1), default=50, show_default=True, help="Lane passes per recording.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seed of the corpus: the same seed and options give the same frames.")
@click.option("--width", type=click.IntRange(16, 3200), default=800, show_default=True, help="Frame width (pixels).")
@click.option("--height", type=click.IntRange(16, 2400), default=600, show_default=True, help="Frame height (pixels).")
@click.option("--pixel-format", type=click.Choice(["Mono8", "Mono16"]), default="Mono8", show_default=True,
              help="Pixel format of the frames (Mono16 holds --bit-depth bits).")
@click.option("--bit-depth", type=click.Choice(["12", "16"]), default=None,
              help="Data depth of Mono16 frames (Mono8 frames are 8 bits)  [default: 12]")
@click.option("--fault-rate", type=FiniteFloat(0, 1), default=0.013, show_default=True,
              help="Probability that a frame is faulty.")
@click.option("--anomaly-rate", type=FiniteFloat(0, 1), default=0.0, show_default=True,
              help="Probability that a frame begins a process anomaly (chipping burst, crack, debris splash, kerf "
                   "widening; labelled in truth/anomalies.jsonl).")
@click.option("--workers", type=click.IntRange(1), default=min(2, os.cpu_count() or 1), show_default=True,
              help="Processes rendering recordings in parallel.")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT|local:N",
              help="Render the runs on a Dask cluster instead of --workers processes (see chdl curate --scheduler).")
@quiet_option()
def corpus(out: Path, lanes: int, positions: int, step_um: float, lanes_per_run: int, seed: int, width: int, height: int,
           pixel_format: str, bit_depth: str | None, fault_rate: float, anomaly_rate: float, workers: int, scheduler: str | None,
           quiet: bool) -> None:
    """Render a labelled corpus of --sequences lane passes into raw recordings (with truth/) under OUT.
    Rerun with the same arguments, it resumes; other arguments are refused (OUT/corpus.json has them)."""
    from acquisition.simulator import SIM_VERSION

    n_runs = -(-lanes // lanes_per_run)
    if n_runs > RUN_SEEDS:
        raise click.UsageError(f"at most {RUN_SEEDS} runs per corpus (raise --lanes-per-run)")
    if pixel_format == "Mono8" and bit_depth is not None:
        raise click.UsageError(f"--bit-depth {bit_depth} is the depth of Mono16 data; Mono8 frames are 8 bits")
    if out.exists() and not out.is_dir():
        raise click.ClickException(f"{out}: exists and is not a folder")
    from acquisition.raw import inside_other_data

    if why := inside_other_data(out):  # (a traceback from the first run's writer, after corpus.json was written; OUT
        raise click.ClickException(f"{out}: inside {why}; choose another OUT")  # itself: not a corpus, below)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file on the way, a read-only folder
        raise click.ClickException(f"{out}: cannot create the corpus folder{files.cannot_create(out, e)}") from None
    params = {"sequences": lanes, "positions": positions, "step_um": step_um, "lanes_per_run": lanes_per_run,
              "seed": seed, "width": width, "height": height, "pixel_format": pixel_format,
              "bit_depth": 8 if pixel_format == "Mono8" else int(bit_depth or 12),  # the data's, as the runs record it
              "fault_rate": fault_rate, "anomaly_rate": anomaly_rate, "sim_version": SIM_VERSION}
    with output_lock(out):  # a second render into OUT is refused (it cleared the first's run in progress)
        _corpus(out, params, n_runs, workers, scheduler, quiet)


def _corpus(out: Path, params: dict, n_runs: int, workers: int, scheduler: str | None, quiet: bool) -> None:
    new = _check_corpus(out, params, n_runs)
    try:
        _render_corpus(out, params, new, n_runs, workers, scheduler, quiet)
    except OSError as e:  # disk full, permissions: finished runs are kept, the rerun resumes
        what = "disk full" if e.errno == errno.ENOSPC else "cannot write"
        raise click.ClickException(f"{e.filename or out}: {what} ({e.strerror or e}); {out} is incomplete: fix that "
                                   "and rerun the same command to resume") from None
    except KeyboardInterrupt:  # Ctrl-C: finished runs are kept, a half-written one is redone by the rerun
        done = sum(_run_done(out / f"run_{k:05d}") for k in range(n_runs))
        click.echo(f"interrupted: {out} is incomplete ({done} of {_count(n_runs, 'run')} finished, kept); rerun the "
                   "same command to resume", err=True)
        raise SystemExit(130) from None


def _render_corpus(out: Path, params: dict, new: bool, n_runs: int, workers: int, scheduler: str | None,
                   quiet: bool) -> None:
    from tqdm import tqdm

    lanes, lanes_per_run, seed, positions = params["sequences"], params["lanes_per_run"], params["seed"], params["positions"]
    fault_rate, anomaly_rate = params["fault_rate"], params["anomaly_rate"]
    settings = dict(width=params["width"], height=params["height"], pixel_format=params["pixel_format"], fps=5.0,
                    exposure_us=None)
    jobs, skipped, redone = [], 0, 0
    for k in range(n_runs):
        run = out / f"run_{k:05d}"
        n = min(lanes_per_run, lanes - k * lanes_per_run)
        if run.exists():
            if _run_done(run):
                skipped += 1
                continue
            _clear_partial_sim_run(run)
            redone += 1
        options = {"alias": f"sim{seed * RUN_SEEDS + k}", "index": seed * RUN_SEEDS + k, "fault_rate": fault_rate,
                   "bit_depth": max(12, params["bit_depth"])}  # the sim camera's Mono16 depth (Mono8 is set by PixelFormat)
        if anomaly_rate:
            options["anomaly_rate"] = anomaly_rate
        jobs.append((str(run.absolute()), options, settings, n, positions, params["step_um"]))
    total = sum(j[3] for j in jobs) * positions
    done = {"frames": 0, "faulty": 0, "anomalies": 0}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_cluster_errors_as_click())
        bar = stack.enter_context(tqdm(total=total, unit="frame", desc="render", disable=quiet))
        if scheduler is not None:
            from chdl.cluster import connect

            cluster = stack.enter_context(connect(scheduler))
            cluster.check_visible([str(out.absolute())])
        if new:  # before the first run can finish: a rerun with other arguments is refused from here on
            _write_corpus_file(out, params)
        if scheduler is not None:
            results = cluster.map_unordered(_corpus_job, jobs)
        elif workers == 1 or len(jobs) <= 1:
            results = map(_corpus_job, jobs)
        else:
            import multiprocessing as mp

            from chdl.cluster import init_pool_worker, pool_map_unordered

            results = pool_map_unordered(_corpus_job, jobs, workers, mp.get_context("spawn"), init_pool_worker)
            stack.callback(results.close)  # an error or Ctrl-C here ends the workers
        progress = stack.enter_context(_FramesOnDisk(bar, [Path(j[0]) for j in jobs]))
        for i, r in enumerate(_resumable(results, out), 1):
            done["frames"] += r["frames"]
            done["faulty"] += r["faulty"]
            done["anomalies"] += r["anomalies"]
            bar.set_postfix_str(f"runs {skipped + i}/{n_runs}", refresh=False)
            progress.finished(Path(r["path"]), r["frames"])
    anomalies = f", {done['anomalies']} process anomalies" if anomaly_rate else ""
    click.echo(f"wrote {_count(len(jobs), 'recording')} ({done['frames']} frames, {done['faulty']} faulty{anomalies}) "
               f"to {out}" + (f"; {_count(skipped, 'finished run')} kept" if skipped else "")
               + (f"; {_count(redone, 'half-written run')} rendered again" if redone else ""))


class _FramesOnDisk:
    """Moves the render bar by the frames the runs have on disk (their ``frames.jsonl`` lines), read twice a second
    by a thread: every worker -- in this process, a local pool or a Dask cluster (which sees OUT: checked) -- writes
    its run there. The bar moved only when a run finished: the default corpus (two runs of 50 lane passes on two
    workers) sat at 0 % for minutes, then jumped to 100 %."""

    def __init__(self, bar, runs: list[Path], every_s: float = 0.5):
        self.bar, self.running, self.every_s = bar, {run: 0 for run in runs}, every_s
        self.done = 0  # frames of the runs finished
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="chdl-simulate-progress", daemon=True)

    def __enter__(self) -> "_FramesOnDisk":
        if not self.bar.disable:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def finished(self, run: Path, frames: int) -> None:
        """``run``'s result came back with ``frames``: counted as they are, not read from disk again."""
        with self._lock:
            self.done += frames
            self.running.pop(run, None)
            self._show()

    def _follow(self) -> None:
        while not self._stop.wait(self.every_s):
            for run in list(self.running):
                try:
                    self.running[run] = (run / "frames.jsonl").read_bytes().count(b"\n")
                except (OSError, KeyError):  # not started yet, or finished meanwhile
                    pass
            with self._lock:
                self._show()

    def _show(self) -> None:
        shown = self.done + sum(self.running.values())
        if shown > self.bar.n:
            self.bar.update(min(shown, self.bar.total) - self.bar.n)


def _resumable(results, out: Path):
    """``results``, with a dead pool worker said as what it means for OUT (one line, exit 1)."""
    from chdl.cluster import WorkerDied

    try:
        yield from results
    except WorkerDied as e:
        raise click.ClickException(f"{e}; {out} keeps the runs finished so far: rerun the same command to resume") from None


def _count(n: int, noun: str) -> str:
    """"1 recording", "2 recordings"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


@simulate.command("truth")
@click.argument("runs", nargs=-1, required=True, type=LocalPath(exists=True, file_okay=False, path_type=Path))
@quiet_option()
def truth(runs: tuple[Path, ...], quiet: bool) -> None:
    """Write RUN/truth/ (fault labels + clean frames) for recordings captured from a sim camera."""
    from tqdm import tqdm

    from acquisition.backends.sim import write_recording_truth
    from acquisition.raw import RawFormatError, find_recordings

    for path in runs:
        try:
            for run in find_recordings(path):
                bar = lambda it, name=run.name: tqdm(it, desc=name, unit="frame", disable=quiet)  # noqa: E731
                counts = write_recording_truth(run, progress=bar)
                click.echo(f"{run}: truth for {counts['frames']} frames ({counts['faulty']} faulty, "
                           f"{counts['visible']} visible, {counts['anomalies']} process anomalies)")
        except (RawFormatError, ValueError) as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # a full disk, a read-only recording (a traceback before); each file is replaced whole
            what = "disk full" if e.errno == errno.ENOSPC else "cannot write"
            raise click.ClickException(f"{e.filename or path}: {what} ({e.strerror or e}); rerun to write the truth "
                                       "again") from None


@simulate.command("contact-sheet")
@click.argument("out", type=LocalPath(dir_okay=False, path_type=Path))
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed of the lanes drawn.")
@click.option("--lane", type=click.IntRange(0), default=0, show_default=True, help="Lane index to draw.")
@click.option("--tile-width", type=click.IntRange(64, 800), default=320, show_default=True,
              help="Width of each tile (pixels).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def contact_sheet(out: Path, seed: int, lane: int, tile_width: int, overwrite: bool) -> None:
    """Save a PNG: a clean lane pass, its kerf at fixed wafer position, and every fault kind at 4 magnitudes."""
    import cv2

    from acquisition.simulator import DicingLaneSimulator, SimConfig

    if out.suffix.lower() != ".png":  # (PNG bytes went into any name given, cs.txt included)
        raise click.BadParameter(f"{out}: the contact sheet is a PNG: name it .png", param_hint="OUT")
    if not out.parent.is_dir():  # (created silently before: a typo in the folder made a new one)
        what = "is a file, not a folder" if os.path.lexists(out.parent) else "does not exist"
        raise click.BadParameter(f"{out}: the folder {out.parent} {what}", param_hint="OUT")
    if os.path.lexists(out) and not overwrite:  # (replaced silently; eval, predict and import refuse too)
        raise click.ClickException(f"{out}: already exists; pass --overwrite to replace it")
    img = render_contact_sheet(DicingLaneSimulator(SimConfig(seed=seed, fault_rate=0.0)), lane, tile_width)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    files.write_bytes(out, buf.tobytes())
    click.echo(f"wrote {out} ({img.shape[1]}x{img.shape[0]})")


def render_contact_sheet(sim, lane: int, tile_width: int = 320):
    """Rows: frames 0-4 and 5-9 of a clean pass; the kerf region of frames 0-4 cut at one fixed wafer
    position (the shift removed: what changes is the kerf itself); then per fault kind the clean frame and
    the fault at magnitudes 0.2 (the visibility floor), 0.45, 0.7 and 1.0. Returns a uint8 image."""
    import cv2
    import numpy as np

    from acquisition.simulator import KINDS, Fault

    cfg = sim.config
    tw, th = tile_width, tile_width * cfg.height // cfg.width
    bar = 22

    gap = 4  # white pixels right of each tile: neighbouring tiles touched, their edges only a jump in the image

    def tile(pixels, text):
        small = cv2.resize(pixels, (tw, th), interpolation=cv2.INTER_AREA)
        canvas = np.full((th + bar, tw + gap), 255, np.uint8)
        canvas[bar:, :tw] = small
        cv2.putText(canvas, text, (4, bar - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 0, 1, cv2.LINE_AA)
        return canvas

    frames = [sim.render(lane, t, fault=None).pixels for t in range(10)]
    rows = [np.concatenate([tile(frames[t], f"clean t={t}") for t in range(r, r + 5)], 1) for r in (0, 5)]
    # kerf close-ups at a fixed wafer x: the centre of frame 4's view, cut from frames 0..4
    u = cfg.um_per_px
    crops = []
    for t in range(5):
        x_img = (sim.position_um(4) - sim.position_um(t)) / u + cfg.width / 2  # that wafer x in frame t
        x0 = int(round(x_img - cfg.width / 8))
        y0 = cfg.height // 2 - cfg.height // 8
        crop = frames[t][y0:y0 + cfg.height // 4, x0:x0 + cfg.width // 4]
        crop = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_LINEAR)
        crops.append(tile(crop, f"kerf close-up, fixed x, t={t}"))
    rows.append(np.concatenate(crops, 1))
    for i, kind in enumerate(KINDS):
        cols = [tile(frames[3], f"{kind}: clean")]
        for m in (0.2, 0.45, 0.7, 1.0):
            f = Fault(kind, m, angle=0.6 + i, phase=1.0 + 0.5 * i, period=0.15)
            cols.append(tile(sim.render(lane, 3, fault=f).pixels, f"{kind} m={m}"))
        rows.append(np.concatenate(cols, 1))
    return np.concatenate(rows, 0)
