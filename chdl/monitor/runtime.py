"""``chdl monitor``'s moving parts: the scoring process and the monitor folder it writes.

The capture runs exactly as ``chdl capture`` (same function, same recording); after each record is on
disk its index entry (not its pixels) is offered to a bounded ``multiprocessing`` queue (spawn context)
with ``put_nowait``: the capture never waits. When the queue is full the frame is not scored and counted
as skipped; the scorer then restarts that lane's history at the next frame it gets (a gap in positions).
The scoring process reads the frame from the recording, runs :class:`MonitorPipeline` and writes
``OUT/<run-id>.monitor/`` (layout in docs/monitor.md): ``scores.jsonl``, ``events.jsonl``,
``snapshots/<frame:06d>.png``, ``live/{frame,prediction,error}.png``. The capture side writes
``status.json`` (at least once a second, replaced atomically). If the parent dies (SIGKILL) the scorer
notices within a second and exits; the recording is whatever ``run_capture`` left, which is readable.
The scorer ignores SIGINT: Ctrl-C in a terminal reaches the whole process group, and the capture side ends
the run (it stops the capture, lets the scorer drain its queue and writes the final status), as curate's
pool workers leave it to their parent. On a full disk the files here fail one by one; a small reserve file
(:data:`RESERVE`), deleted before the final ``status.json`` is written, leaves room for that last write.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import math
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from acquisition import files  # (monitor files are views, replaced whole; not durable: the recording is the record)
from chdl.monitor import STATUS_FORMAT
from chdl.monitor.jsonl import JsonlTail

QUEUE_DEPTH = 8
SCORER_THREADS = 1  # torch intra-op threads of the scoring (see scoring_threads)
RESERVE = ".chdl-reserve"  # in the monitor folder while it runs: room for the final status.json on a full disk
RESERVE_BYTES = 64 * 1024


class MonitorError(Exception):
    """A problem with the monitor folder, as one line naming the path (e.g. it cannot be created)."""


def write_problem(e: OSError, path) -> str:
    """One line for an OSError writing into ``path`` (named: a write to a full disk names no file, and a
    file's .tmp is not what a user looks for): "disk full" for ENOSPC."""
    what = "disk full" if e.errno == errno.ENOSPC else "cannot write"
    return f"{path}: {what} ({e.strerror or e})"


@contextlib.contextmanager
def scoring_threads(n: int = SCORER_THREADS):
    """torch's intra-op thread count set to ``n`` while frames are scored, restored after. The live
    monitor's scorer process runs with 1 (its own process beside the capture); ``monitor-eval``,
    ``monitor-fit-scorer`` and ``tools/monitor_operating_point.py`` score the same way. The predictions
    are small tensor operations (200x150: phase correlation, a warp), where torch's default of one thread
    per core only adds synchronisation, and on a busy machine its OpenMP threads wait on each other:
    constant-motion scoring measured 610 ms a frame with the default 2 threads against 91 ms with 1 on
    the 2-core development machine with one other job running (2026-12-01, load ~5)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def monitor_dir(run_path: Path) -> Path:
    """``OUT/<run-id>/`` -> ``OUT/<run-id>.monitor/`` (beside the recording, never inside it)."""
    return run_path.with_name(run_path.name + ".monitor")


def run_max_value(manifest: dict) -> int:
    """The stored value that means intensity 1.0 in a recording (``manifest.json`` as a dict): 2**bits - 1
    of its significant bits (``acquisition.raw.run_bit_depth``; ``chdl.dataset.max_value_for_bits``), the
    pixel format's full range for a Mono16 run that does not say -- the rule ``chdl curate`` scales by, so a
    model trained on curated data sees the same intensities here (a 12-bit Mono16 run: 4095, not 65535)."""
    from acquisition.raw import FORMAT_BITS, run_bit_depth
    from chdl.dataset import max_value_for_bits

    bits = run_bit_depth(manifest)
    return max_value_for_bits(bits if bits is not None else FORMAT_BITS[manifest["settings"]["pixel_format"]])


def _png8(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return buf.tobytes()


def to8(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """[0, 1] float (times ``scale``) -> uint8."""
    return np.clip(x * (255.0 * scale), 0, 255).astype(np.uint8)


ERROR_SATURATES = 1.0 / 4.0  # |error| (intensity, 0-1) shown white in an error map (error_image's x4)


def error_image(error: np.ndarray) -> np.ndarray:
    """The error map as an 8-bit image: sqrt of the squared error (an absolute error), x4 for contrast, so an
    |error| of :data:`ERROR_SATURATES` (0.25) or more is white."""
    return to8(np.sqrt(np.maximum(error, 0)), 1.0 / ERROR_SATURATES)


def snapshot_image(pixels: np.ndarray, prediction: np.ndarray, error: np.ndarray, box) -> np.ndarray:
    """frame | prediction | error map side by side (8-bit, the box drawn on the frame and the error map), under a
    strip naming the panels and the error map's scale; white 2-pixel gaps between them (a grey one vanished on
    grey wafer). (H, W) frames give a (label + H, 3 W + 4) image."""
    f, p, e = to8(pixels), to8(prediction), error_image(error)
    if box is not None:
        for img in (f, e):
            cv2.rectangle(img, (box[0], box[1]), (box[2] - 1, box[3] - 1), 255, 1)
    h, w = f.shape
    gap = np.full((h, 2), 255, np.uint8)
    row = np.concatenate([f, gap, p, gap, e], 1)
    scale = float(np.clip(w / 400.0, 0.3, 1.0))  # text that fits a panel of 64 pixels, and is readable at 800
    strip = np.zeros((int(22 * scale) + 6, row.shape[1]), np.uint8)
    labels = (("frame",), ("prediction", "pred"),
              (f"|error|, white >= {ERROR_SATURATES:g}", f"|error| 0-{ERROR_SATURATES:g}", "|err|"))
    for i, choices in enumerate(labels):  # the longest that fits its panel
        text = next((t for t in choices if cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= w - 4),
                    choices[-1])
        cv2.putText(strip, text, (i * (w + 2) + 3, strip.shape[0] - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 1,
                    cv2.LINE_AA)
    return np.concatenate([strip, row], 0)


@contextlib.contextmanager
def _sigint_deferred():
    """While the scorer process starts: SIGINT blocked in this thread, so the scorer inherits the mask (it sets
    SIG_IGN, which discards one pending, then unblocks: no moment where Ctrl-C interrupts its start-up), and a
    Ctrl-C meanwhile, which another thread of ours may take, is handed to the previous handler only once the
    start is complete (a KeyboardInterrupt in the middle of it left the scorer reading half its start data)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    handler = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, handler)
    if caught and callable(handler):
        handler(signal.SIGINT, None)


class StatusWriter:
    """``status.json`` of a monitor folder, rewritten atomically by a thread at least once a second. A write
    that fails (a full disk) is retried at the next tick; ``stop`` frees the folder's reserve (:data:`RESERVE`)
    before the final write and raises its OSError, if that fails too."""

    def __init__(self, folder: Path, run_id: str, predictor: str, t_in: int, shared: dict, scorer: str = "block-z",
                 levels: dict | None = None):
        """``levels``: the alert levels in use, {"z_on", "z_off"} (null in the file where not given)."""
        self.folder, self.shared = folder, shared
        levels = levels or {}
        self.fields = {"format": STATUS_FORMAT, "run_id": run_id, "state": "running", "predictor": predictor, "t_in": t_in,
                       "scorer": scorer, "z_on": levels.get("z_on"), "z_off": levels.get("z_off"),
                       "frames_captured": 0, "frames_scored": 0, "frames_skipped": 0, "frames_unscored": 0, "events": 0,
                       "width": 0, "height": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chdl-monitor-status", daemon=True)

    def start(self) -> "StatusWriter":
        reserve = self.folder / RESERVE
        with open(reserve, "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
            except OSError:
                f.write(b"\0" * RESERVE_BYTES)
        self.write()
        self._thread.start()
        return self

    def write(self, **fields) -> None:
        self.fields.update(fields)
        self.fields["frames_scored"] = int(self.shared["scored"].value)
        self.fields["frames_unscored"] = int(self.shared["unscored"].value)
        self.fields["events"] = int(self.shared["events"].value)
        self.fields["updated_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
        files.write_bytes(self.folder / "status.json", (json.dumps(self.fields, indent=1) + "\n").encode())

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(OSError):  # a full disk: the next tick (or stop) tries again
                self.write()

    def stop(self, state: str) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            (self.folder / RESERVE).unlink()
        self.write(state=state)


class Monitor:
    """The capture-side handle: ``offer(run_path, record)`` from the capture's record callback, then
    ``finish(state)``. Starts the scoring process on the first record."""

    def __init__(self, predictor_spec: dict, depth: int = QUEUE_DEPTH, announce=None):
        """``depth``: frames the queue to the scorer holds; a frame arriving when it is full is skipped.
        ``announce``: called with one line per new event as the capture goes on (the terminal's live alerts)."""
        self.announce = announce
        self._events_seen = 0  # events already announced
        self._events: JsonlTail | None = None  # events.jsonl, followed for announce (from start())
        self.spec = predictor_spec
        # what offer() needs at the first frame, imported now: imported there, in the capture's writer thread,
        # chdl.dataset (zarr) held that thread 2-10 s at viky's first lane, the capture queue filled behind it and
        # free-run frames were skipped (a 3.8 s gap at frame 18, 3.4 frames/s against a plain capture's 5.0)
        import chdl.dataset  # noqa: F401
        if predictor_spec.get("checkpoint") is not None:  # (scale_mismatch)
            import chdl.monitor.anomaly_score  # noqa: F401
            import diffuma.training.data  # noqa: F401
        self.ctx = mp.get_context("spawn")
        self.queue = self.ctx.Queue(maxsize=depth)
        # frames_captured = scored + skipped + unscored once the scorer has drained its queue
        self.shared = {"scored": self.ctx.Value("q", 0), "unscored": self.ctx.Value("q", 0),
                       "events": self.ctx.Value("q", 0), "ready": self.ctx.Event()}
        self.errors = self.ctx.Queue()
        self.proc = None
        self.status: StatusWriter | None = None
        self.captured = self.skipped = 0
        self.max_value = 0  # of the recording's pixels (run_max_value), read from its manifest at the first frame
        self.folder: Path | None = None
        self.disk_full = False  # an error of the scorer or of status.json was ENOSPC
        self.warnings: list[str] = []  # found while monitoring (e.g. a checkpoint trained at another max_value)

    def start(self, run_path: Path, run_id: str, predictor_name: str, t_in: int) -> Path:
        """Create (claim) the monitor folder and start the scorer; ``self.folder`` is set once the folder is this
        monitor's. MonitorError (one line) if the folder cannot be made or written, or another monitor claimed it."""
        folder = monitor_dir(run_path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for sub in ("snapshots", "live"):  # created exclusively: the claim on the folder
                (folder / sub).mkdir()
        except FileExistsError:  # a monitor of the same run id, started at the same time, has it
            raise MonitorError(f"{folder}: another monitor started writing there at the same time (choose "
                               "another --run-id or --out)") from None
        except OSError as e:  # OUT is a file, a read-only folder, ...
            raise MonitorError(f"{folder}: cannot create the monitor folder{files.cannot_create(folder, e)}") from None
        self.folder = folder  # ours from here (only then may the caller remove it: the loser of a claim removed the
        # winner's folder, scores and events with it)
        scoring = self.spec.get("scorer", {})
        try:
            for name in ("scores.jsonl", "events.jsonl"):
                (self.folder / name).touch()
            self.status = StatusWriter(self.folder, run_id, predictor_name, t_in, self.shared,
                                       scorer_name(scoring.get("scorer_file")), scoring).start()
        except OSError as e:
            raise MonitorError(write_problem(e, self.folder)) from None
        self.proc = self.ctx.Process(target=score_worker, name="chdl-monitor-scorer",
                                     args=(self.spec, str(run_path), str(self.folder), self.queue,
                                           {k: self.shared[k] for k in ("scored", "unscored", "events")},
                                           self.shared["ready"], self.errors), daemon=True)
        with _sigint_deferred():
            self.proc.start()
        while not self.shared["ready"].wait(0.2):  # the predictor is loaded before the first frame is taken
            if not self.proc.is_alive():
                break
        return self.folder

    def offer(self, run_path: Path, record) -> None:
        """Hand a written record to the scorer without waiting; count it skipped if the scorer is behind."""
        if self.captured == 0:  # the recording's manifest exists from here on
            manifest = json.loads((run_path / "manifest.json").read_text(encoding="utf-8"))
            self.max_value = run_max_value(manifest)
            if self.spec.get("checkpoint") is not None:
                from chdl.monitor.anomaly_score import scale_mismatch

                warning = scale_mismatch(self.spec["checkpoint"], self.spec.get("trained_max_value"), self.max_value)
                if warning is not None:
                    self.warnings.append(warning)
                    if self.announce is not None:
                        self.announce(f"warning: {warning}")
            if self.status is not None:
                settings = manifest.get("settings", {})
                self.status.fields.update(width=int(settings.get("width", 0)), height=int(settings.get("height", 0)))
        self.captured += 1
        if record.file is not None and record.status == "ok":  # a dropped or incomplete frame is not scored
            try:
                self.queue.put_nowait((record.index, record.lane, record.position_index, record.file, self.max_value))
            except queue.Full:
                self.skipped += 1
        else:
            _count(self.shared["unscored"])
        if self.status is not None:
            self.status.fields.update(frames_captured=self.captured, frames_skipped=self.skipped)
        if self.announce is not None and int(self.shared["events"].value) > self._events_seen:
            self._announce_events()

    def _announce_events(self) -> None:
        """One line per event the scorer wrote since the last call (complete lines of events.jsonl only)."""
        if self._events is None:
            self._events = JsonlTail(self.folder / "events.jsonl")
        try:
            events = self._events.read(max_bytes=None)
        except OSError:
            return
        for e in events:
            self._events_seen += 1
            where = f"lane {e.get('lane')} position {e.get('position')}"
            # (the reason names the score, its level, the lane and the position)
            self.announce(f"{e.get('kind', 'process')} event at frame {e.get('frame')}: {e.get('reason') or where}")

    def finish(self, state: str, timeout_s: float = 600.0) -> str | None:
        """Let the scorer drain the queue, stop it, write the final status. Returns the error (one line) of
        the scorer or of the final status.json, if any; the state written is then "failed". A Ctrl-C while
        the scorer drains stops it at once (state "interrupted")."""
        error = None
        if self.proc is not None and self.proc.pid is not None:
            try:
                while self.proc.is_alive():  # a full queue drains unless the scorer died
                    try:
                        self.queue.put(None, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                self.proc.join(timeout_s)
                if self.proc.is_alive():
                    self.proc.terminate()
                    error, state = "the scorer did not finish in time", "failed"
            except KeyboardInterrupt:  # a second Ctrl-C (or the first, after the capture): stop scoring now
                self.proc.terminate()
                self.proc.join(10)
                state = "interrupted"
            try:
                (error, self.disk_full), state = self.errors.get_nowait(), "failed"
            except queue.Empty:
                pass
        if self.announce is not None and self.folder is not None:
            self._announce_events()  # those of the frames scored after the capture ended
        if self.status is not None:
            try:
                self.status.stop(state)
            except OSError as e:  # the final status.json cannot be written: the file keeps its last state
                self.disk_full = self.disk_full or e.errno == errno.ENOSPC
                error = error or write_problem(e, self.folder / "status.json")
        return error


def scorer_name(scorer_file: str | None) -> str:
    """status.json's ``scorer``: "block-z" (the largest block z-score) or "learned:<file>"."""
    return "block-z" if scorer_file is None else f"learned:{scorer_file}"


def _count(value) -> None:
    """Add one to a shared counter that two processes write."""
    with value.get_lock():
        value.value += 1


def score_worker(spec: dict, run_path: str, folder: str, q, counters: dict, ready, errors) -> None:
    """The scoring process: records from ``q`` until None (or the parent is gone); ``counters``: the shared
    "scored", "unscored" (no history yet in its lane pass, unreadable) and "events". Ctrl-C is the parent's to
    handle (it reaches the whole process group): SIGINT is ignored here. Errors go to ``errors`` as
    (one line, disk full?)."""
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # before unblocking: one pending since the start is discarded
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        _score_loop(spec, Path(run_path), Path(folder), q, counters, ready)
    except BaseException as e:  # noqa: BLE001 - reported to the parent as one line
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # a full disk: the folder and "disk full", no traceback
            errors.put((write_problem(e, folder), True))
            return
        errors.put((f"scorer: {type(e).__name__}: {e}".splitlines()[0], False))
        traceback.print_exc()


def _score_loop(spec, run_path: Path, folder: Path, q, counters: dict, ready) -> None:
    import torch

    from chdl.monitor.anomaly_score import MonitorPipeline, ScorerConfig, make_predictor

    torch.set_num_threads(int(spec.get("threads", SCORER_THREADS)))
    predictor = make_predictor(spec["predictor"], spec.get("checkpoint"), spec.get("t_in", 5))
    parent = mp.parent_process()
    ready.set()
    pipe = None
    n_events = 0
    with open(folder / "scores.jsonl", "a", encoding="utf-8") as scores, \
            open(folder / "events.jsonl", "a", encoding="utf-8") as ev:
        while True:
            try:
                item = q.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return
                continue
            if item is None:
                return
            index, lane, position, file, max_value = item
            t0 = time.perf_counter()
            raw = cv2.imread(str(run_path / file), cv2.IMREAD_UNCHANGED)
            if raw is None:
                _count(counters["unscored"])
                continue
            if pipe is None:
                pipe = MonitorPipeline(predictor, max_value, ScorerConfig(**spec.get("scorer", {})))
            r = pipe.push(index, lane, position, raw)
            if r is None:  # fewer than MIN_PREDECESSORS frames before it in its lane pass (a pass's start, a skip)
                _count(counters["unscored"])
                n_events = _earlier_events(ev, folder, n_events, pipe.take_earlier())  # (a first frame with no image)
                counters["events"].value = n_events
                continue
            latency = (time.perf_counter() - t0) * 1000
            line = {"frame": r.frame, "lane": r.lane, "position": r.position, "score": _num(r.score),
                    "threshold": _num(r.threshold), "alert": bool(r.alert), "acquisition": r.acquisition,
                    **({"after_acquisition": True} if r.after_acquisition else {}), "latency_ms": round(latency, 2)}
            _live(folder, r)
            n_events = _earlier_events(ev, folder, n_events, r.earlier)
            if r.acquisition is not None:
                n_events = _write_event(ev, folder, n_events, "acquisition", r.frame, r.lane, r.position, r,
                                        f"acquisition QC flagged {r.acquisition} at lane {r.lane} position {r.position}",
                                        snapshot_image(r.pixels, r.prediction, r.error, None))
            elif r.new_alert:
                unit = "learned score, nats" if pipe.stream.scorer.learned is not None else "largest block z-score"
                n_events = _write_event(ev, folder, n_events, "process", r.frame, r.lane, r.position, r,
                                        f"prediction error {r.score:.2f} above threshold {r.threshold:.2f} "
                                        f"({unit}) at lane {r.lane} position {r.position}",
                                        snapshot_image(r.pixels, r.prediction, r.error, r.box))
            counters["events"].value = n_events
            scores.write(json.dumps(line) + "\n")
            scores.flush()
            counters["scored"].value += 1


def _earlier_events(ev, folder: Path, n_events: int, earlier) -> int:
    """Acquisition events of frames reported apart from a scored frame's own: first frames of a pass judged once the
    third had come, and unscored frames flagged on arrival (no image). Returns the new event count."""
    for e in earlier:
        when = ("on arrival; not scored: too little history in its lane pass" if e.judged_at == e.frame
                else f"judged with the frames after it, at frame {e.judged_at}")
        n_events = _write_event(ev, folder, n_events, "acquisition", e.frame, e.lane, e.position, None,
                                f"acquisition QC flagged {e.acquisition} at lane {e.lane} position {e.position} "
                                f"({when})", to8(e.pixels))
    return n_events


def _write_event(ev, folder: Path, n: int, kind: str, frame: int, lane: int, position: int, scored, reason: str,
                 snapshot: np.ndarray) -> int:
    """Write event number ``n`` (a line of events.jsonl, flushed, with ``raised_utc``: when it was raised, ISO 8601
    UTC to the millisecond) and its snapshot image; return n + 1.
    ``scored``: the frame's FrameResult (score, threshold and, for a process event, the box), or None for a
    frame that was not scored (a first frame of a pass the QC flagged late)."""
    snap = f"snapshots/{frame:06d}.png"
    files.write_bytes(folder / snap, _png8(snapshot))
    box = scored.box if scored is not None and kind == "process" else None
    raised = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")  # (operators asked "when?")
    ev.write(json.dumps({"event": n, "kind": kind, "frame": frame, "lane": lane, "position": position,
                         "score": _num(scored.score) if scored is not None else None,
                         "threshold": _num(scored.threshold) if scored is not None else None,
                         "box": box, "reason": reason, "snapshot": snap, "raised_utc": raised}) + "\n")
    ev.flush()
    return n + 1


def _num(x: float) -> float | None:
    return round(float(x), 5) if math.isfinite(x) else None


def _live(folder: Path, r) -> None:
    live = folder / "live"
    files.write_bytes(live / "frame.png", _png8(to8(r.pixels)))
    files.write_bytes(live / "prediction.png", _png8(to8(r.prediction)))
    files.write_bytes(live / "error.png", _png8(error_image(r.error)))
