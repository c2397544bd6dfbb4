"""The capture loop: lane passes of a stage plan, one frame per position, into a raw recording.

For each lane, for each position: move the stage, wait until it settles, take the position's frame with
the chosen trigger strategy (:mod:`acquisition.trigger`) and append it to the recording
(:mod:`acquisition.raw`). A position whose frame does not arrive within the frame timeout is recorded as
``dropped`` (no pixels), so every recording has exactly one record per planned position, in plan order.

How a run ends (``CaptureResult.stopped_by``):
- ``None``: every position visited; the recording is ``complete``. A position whose frame did not come in time
  is a ``dropped`` record, counted in ``notes.dropped_positions``; a run in which no position got a frame ends
  as ``"camera lost"``.
- ``"interrupted"``: SIGINT/SIGTERM. The first signal finishes the current frame and stops; a second one
  interrupts at once. The device is stopped and closed either way.
- ``"stage"``: the stage did not settle within ``settle_timeout_s``.
- ``"camera lost"``: the backend reported the camera gone, or ``max_consecutive_timeouts`` positions in a
  row got no frame. The frames captured so far are kept.
- ``"source ended"``: a replayed recording that is itself incomplete has no more frames (every one of them was
  replayed): the replay's normal end, not a failure.
- ``"disk full"``: writing a frame failed with ENOSPC. A 64 KiB reserve file allocated at the start of the
  run (``<run>/.chdl-reserve``, always removed at the end) and the half-written temporary frame are
  deleted, which leaves room to close the manifest; if even that fails the manifest stays
  ``"recording"``, which readers treat as incomplete. Every frame listed in ``frames.jsonl`` is readable in all cases.
In every case but ``None`` the recording is closed ``incomplete`` with the reason in ``notes.stopped_by``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import math
import os
import queue
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

from acquisition import files
from acquisition.backends.base import Camera, CameraError, CaptureSettings, SourceEnded, Stage
from acquisition.raw import (FORMAT_BITS, FRAMES_DIR, FRAMES_INDEX, MANIFEST, FrameRecord, RecordingWriter,
                             check_bit_depth)
from acquisition.trigger import choose_trigger, frame_source


@dataclasses.dataclass
class CapturePlan:
    lanes: int = 1  # lane passes to capture
    positions_um: list[float] = dataclasses.field(default_factory=lambda: [i * 100.0 for i in range(10)])  # stage positions along a lane
    trigger: str = "auto"  # "auto" | "software" | "line" | "freerun"
    settle_timeout_s: float = 5.0  # the stage must settle within this, else the run stops
    frame_timeout_s: float | None = None  # per-position frame timeout; None: max(1 s, 3 frame periods)
    max_consecutive_timeouts: int = 3  # this many positions in a row without a frame = camera lost

    def __post_init__(self):
        """ValueError for a plan that cannot be captured: NaN/inf positions or timeouts, no lanes."""
        if not isinstance(self.lanes, int) or self.lanes < 1:
            raise ValueError(f"lanes must be an integer >= 1, not {self.lanes!r}")
        if not self.positions_um or not all(math.isfinite(p) for p in self.positions_um):
            raise ValueError(f"positions_um must be finite numbers, not {self.positions_um[:5]!r}")
        for name in ("settle_timeout_s", "frame_timeout_s"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, not {v!r}")

    @classmethod
    def evenly(cls, lanes: int, positions: int, step_um: float, **kw) -> "CapturePlan":
        return cls(lanes=lanes, positions_um=[i * step_um for i in range(positions)], **kw)

    @property
    def total(self) -> int:
        return self.lanes * len(self.positions_um)

    def manifest(self, trigger: str) -> dict:
        p = self.positions_um
        step = (p[1] - p[0]) if len(p) > 1 else 0.0
        return {"lanes": self.lanes, "positions": len(p), "step_um": step, "positions_um": list(p), "trigger": trigger}


@dataclasses.dataclass
class CaptureResult:
    path: Path
    status: str  # "complete" | "incomplete"
    stopped_by: str | None  # None | "interrupted" | "camera lost" | "disk full" | "source ended" (replay)
    message: str  # one line for the user
    frames: int  # records written (including dropped positions)
    dropped_positions: int  # positions recorded as dropped (no frame in time)
    dropped_frames: int  # frames missing from the device's id sequence
    incomplete: int  # frames recorded with status "incomplete" + buffers the driver discarded as incomplete
    skipped: int  # frames received but not taken (arrived before the stage settled)
    elapsed_s: float
    settings: CaptureSettings | None = None
    trigger: str | None = None
    rate_fps: float = 0.0  # frames a second from the first frame received to the last (setup and close left out)


@dataclasses.dataclass
class Progress:
    """Live numbers handed to the ``on_frame`` callback after every record."""

    done: int
    total: int
    lane: int
    position_index: int
    fps: float  # achieved rate over the last few frames
    dropped: int  # dropped frames + dropped positions so far
    incomplete: int


class _StopSignals:
    """First SIGINT/SIGTERM/SIGHUP: ask the loop to stop after the current frame. Second: KeyboardInterrupt now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
                if signal.getsignal(sig) is not signal.SIG_IGN:  # (ignored, e.g. under nohup: it stays so)
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Stop(Exception):
    def __init__(self, stopped_by: str, message: str):
        super().__init__(message)
        self.stopped_by = stopped_by


class _BackgroundWriter:
    """Appends frames on a thread, so the stage moves on as soon as a frame is received, not written.

    The queue is bounded (back-pressure if the disk is slower than the camera). The first error on the
    writer thread (e.g. ENOSPC) stops it and is raised in the capture loop at its next ``put``/``finish``.
    ``on_frame`` is called on the writer thread once the frame's record is on disk.
    """

    def __init__(self, writer: RecordingWriter, on_frame, depth: int = 16):
        self.writer = writer
        self.on_frame = on_frame
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="chdl-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain after a failure; nothing more is written
            pixels, meta, progress = item
            try:
                record = self.writer.append(pixels, **meta)
                if self.on_frame is not None:
                    self.on_frame(record, dataclasses.replace(progress, done=record.index + 1))
            except BaseException as e:  # noqa: BLE001 - re-raised on the capture thread
                self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, pixels, meta: dict, progress: Progress) -> None:
        self._raise()
        self._queue.put((pixels, meta, progress))

    def finish(self) -> None:
        """Write what is queued, stop the thread, raise its error if it had one."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()


RESERVE = ".chdl-reserve"
RESERVE_BYTES = 64 * 1024  # enough to rewrite the manifest and flush the frame index on a full disk


def _reserve(path: Path) -> None:
    with open(path / RESERVE, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
        except OSError:
            f.write(b"\0" * RESERVE_BYTES)


def record_bit_depth(applied: CaptureSettings, requested: int | None) -> CaptureSettings:
    """The settings to record, with ``bit_depth`` = the significant bits of the pixel values: ``requested``
    (``--bit-depth``, an explicit override), else what the camera reported (Mono16: PixelDynamicRangeMax),
    else the bits its pixel format defines (Mono8/10/12). A Mono16 run that none of these settles is
    recorded with ``null`` and a warning (``chdl curate`` then warns and uses the full 16 bits). CameraError
    for a requested depth the pixel format cannot hold; a reported one it cannot hold is ignored, warned."""
    fmt = applied.pixel_format
    if requested is not None:
        if why := check_bit_depth(fmt, requested):
            raise CameraError(f"--bit-depth {requested} refused: {why}")
        return dataclasses.replace(applied, bit_depth=int(requested))
    bits = applied.bit_depth
    if bits is not None and (why := check_bit_depth(fmt, bits)):
        warnings.warn(f"the camera reports {bits} significant bits, which {fmt} cannot hold ({why}); ignored",
                      stacklevel=2)
        bits = None
    if bits is None and fmt != "Mono16":
        bits = FORMAT_BITS.get(fmt)
    if bits is None:
        warnings.warn("the camera does not say how many of the 16 bits of its Mono16 pixels are significant (no "
                      "PixelDynamicRangeMax); recorded as unknown: give it with chdl capture --bit-depth N (or later "
                      "chdl curate --bit-depth N) so that the pixels are scaled right", stacklevel=2)
    return dataclasses.replace(applied, bit_depth=bits)


def default_run_id(alias: str, out: str | os.PathLike | None = None) -> str:
    """``<UTC time to the second>_<alias>``; with ``out``, the first of that, ``..._2``, ``..._3``, ... that is not
    taken in ``out`` (nor by its monitor folder): back-to-back captures within one second get their own runs."""
    base = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"_{alias}"
    if out is None:
        return base
    name, n = base, 1
    while os.path.lexists(Path(out) / name) or os.path.lexists(Path(out) / f"{name}.monitor"):
        n += 1
        name = f"{base}_{n}"
    return name


def run_capture(camera: Camera, stage: Stage, out: str | Path, settings: CaptureSettings, plan: CapturePlan, *,
                on_frame: Callable[[FrameRecord, Progress], None] | None = None,
                notes: dict | None = None) -> CaptureResult:
    """Capture ``plan`` from ``camera`` (not yet opened) into the new recording folder ``out``."""
    out = Path(out)
    made_out = not out.exists()  # (a folder of the user's, given empty, is emptied again, not removed)
    made_above = [d for d in out.parents if not d.exists()]  # e.g. the new OUT of `capture --out OUT`, innermost first
    started = time.monotonic()
    counts = {"dropped_positions": 0, "frames": 0, "first_ns": 0, "last_ns": 0}
    writer = source = applied = mode = background = None
    stopped_by, message = None, ""
    with _StopSignals() as stop, camera:
        try:
            applied = record_bit_depth(camera.apply(settings), settings.bit_depth)
            camera.attach_stage(stage)
            mode = choose_trigger(camera.trigger_modes(), plan.trigger)
            manifest = {"camera": dataclasses.asdict(camera.info), "settings": dataclasses.asdict(applied),
                        "plan": plan.manifest(mode), "notes": dict(notes or {})}
            writer = RecordingWriter.create(out, manifest)
            _reserve(out)
            background = _BackgroundWriter(writer, on_frame)
            source = frame_source(camera, mode, applied.fps)
            source.start()
            try:
                _loop(source, stage, background, applied, plan, stop, counts,
                      given_bits=settings.bit_depth, camera_name=camera_label(camera.info))
            finally:
                background.finish()  # frames already received are written, even when stopping
            if stop.requested:
                raise _Stop("interrupted", "interrupted")
        except KeyboardInterrupt:
            stopped_by, message = "interrupted", "interrupted"
        except _Stop as e:
            stopped_by, message = e.stopped_by, str(e)
        except SourceEnded as e:  # (a CameraError too: caught first)
            stopped_by, message = "source ended", str(e)
        except CameraError as e:
            if writer is None:
                raise  # nothing recorded yet: a plain configuration error
            stopped_by, message = "camera lost", str(e)
            if stop.requested:  # the user stopped the run while the camera hung (a stalled GigE camera's register
                # writes time out one after the other): that is an interruption, not a lost camera
                stopped_by, message = "interrupted", f"interrupted; the camera did not answer ({e})"
        except OSError as e:
            if writer is None or e.errno != errno.ENOSPC:
                raise
            stopped_by, message = "disk full", f"{out}: disk full ({e.strerror})"
        except BaseException as e:
            if writer is not None:  # unexpected: still leave a closed, readable (incomplete) recording
                with contextlib.suppress(Exception):
                    source is not None and source.stop()
                _close(writer, "incomplete", "error", f"{type(e).__name__}: {e}", None, 0)
            raise
        finally:
            if source is not None:
                with contextlib.suppress(Exception):
                    source.stop()
    # the camera is closed here (context manager exit), whatever happened
    status = "complete" if stopped_by is None else "incomplete"
    stats = source.stats if source is not None else None
    extra = getattr(camera, "incomplete_buffers", 0)
    if writer is not None:
        closed = _close(writer, status, stopped_by, message, stats, extra, counts["dropped_positions"])
    n = writer.frames_written if writer is not None else 0
    if stopped_by is None:  # frames with pixels: a dropped position is a record without one
        got = n - counts["dropped_positions"]
        message = f"captured {got} frame{'s' if got != 1 else ''} into {out}"
    elif writer is not None and n == 0 and (done := _remove_empty(out, made_out, made_above)) is not None:
        # stopped before its first frame (a refused --bit-depth, Ctrl-C, the camera lost): a recording of no frame
        # was kept, and curating the folder of runs then failed on it (its settings differ from the rerun's)
        message = f"{message}; stopped before the first frame: nothing recorded, {out} {done}"
    else:
        marked = "marked incomplete" if writer is None or closed else \
            "its manifest could not be closed: it says 'recording', read as incomplete"
        message = f"{message}; stopped after {n} of {plan.total} frames, recording kept ({marked}) at {out}"
    return CaptureResult(
        path=out, status=status, stopped_by=stopped_by, message=message, frames=n,
        dropped_positions=counts["dropped_positions"], dropped_frames=stats.dropped if stats else 0,
        incomplete=(stats.incomplete if stats else 0) + extra, skipped=stats.skipped if stats else 0,
        elapsed_s=time.monotonic() - started, settings=applied, trigger=mode,
        rate_fps=(counts["frames"] - 1) / span if (span := (counts["last_ns"] - counts["first_ns"]) / 1e9) > 0 else 0.0)


def _loop(source, stage: Stage, out: _BackgroundWriter, applied: CaptureSettings, plan: CapturePlan,
          stop: _StopSignals, counts: dict, given_bits: int | None = None, camera_name: str = "the camera") -> None:
    """Move, trigger and record every position of ``plan``. ``given_bits``: the bit depth the user gave
    (``--bit-depth``); a frame with a pixel above 2**given_bits - 1 stops the capture at once (the recording
    would be refused by chdl curate, naming that frame, perhaps hours later), naming ``camera_name``."""
    frame_timeout = plan.frame_timeout_s or max(1.0, 3.0 / max(applied.fps, 1e-3))
    recent: list[int] = []  # monotonic stamps of the last frames, for the achieved rate
    consecutive = discarded_at_first_timeout = 0
    # buffers the backend received and discarded (Aravis: missing packets), counted as incomplete buffers
    discarded = lambda: getattr(getattr(source, "camera", None), "incomplete_buffers", 0)  # noqa: E731
    done = 0
    for lane in range(plan.lanes):
        for p, position_um in enumerate(plan.positions_um):
            if stop.requested:
                return
            moved = time.monotonic_ns()
            stage.move_to(lane, position_um)
            try:
                stage.wait_settled(plan.settle_timeout_s)
            except TimeoutError as e:
                raise _Stop("stage", f"stage did not settle at lane {lane} position {position_um} um ({e})") from None
            # the position's frame is the first to arrive after the stage settled; with a line trigger the
            # encoder fires on arrival at the position, so the first frame after the move was commanded
            after = moved if source.mode == "line" else time.monotonic_ns()
            meta = dict(lane=lane, position_index=p, position_um=float(position_um), pixel_format=applied.pixel_format)
            try:
                got = source.next_frame(after, frame_timeout)
            except TimeoutError:
                consecutive += 1
                counts["dropped_positions"] += 1
                pixels = None
                meta.update(frame_id=None, device_timestamp_ns=None, host_wall_ns=time.time_ns(),
                            host_monotonic_ns=time.monotonic_ns(), status="dropped", dropped_before=0)
            else:
                consecutive = 0
                f = got.frame
                pixels = f.pixels
                meta.update(frame_id=f.frame_id, device_timestamp_ns=f.device_timestamp_ns, host_wall_ns=got.host_wall_ns,
                            host_monotonic_ns=got.host_monotonic_ns, status="incomplete" if f.incomplete else "ok",
                            dropped_before=got.dropped_before)
                recent = (recent + [got.host_monotonic_ns])[-11:]
                counts["frames"] += 1
                counts["first_ns"] = counts["first_ns"] or got.host_monotonic_ns
                counts["last_ns"] = got.host_monotonic_ns
                if given_bits is not None and pixels is not None and (top := int(pixels.max())) >= 1 << given_bits:
                    raise _Stop("error", f"{camera_name}, lane {lane} position {p}: pixel values up to {top}, above "
                                         f"{(1 << given_bits) - 1}: the camera sends more than the {given_bits} "
                                         "significant bits --bit-depth says")
            done += 1
            span = (recent[-1] - recent[0]) / 1e9 if len(recent) > 1 else 0.0
            out.put(pixels, meta, Progress(done=done, total=plan.total, lane=lane, position_index=p,
                                           fps=(len(recent) - 1) / span if span > 0 else 0.0,
                                           dropped=source.stats.dropped + counts["dropped_positions"],
                                           incomplete=source.stats.incomplete + discarded()))
            if consecutive == 1:
                discarded_at_first_timeout = discarded()
            if consecutive >= plan.max_consecutive_timeouts:
                if (bad := discarded() - discarded_at_first_timeout) > 0:  # the camera answered, incompletely
                    raise CameraError(f"camera lost: no complete frame for {consecutive} positions in a row; {bad} "
                                      f"buffers came incomplete (missing packets: check the link, its MTU and the "
                                      f"camera's packet delay) (frame timeout {frame_timeout:.2f} s)")
                if done == consecutive:  # not one frame since the start: the camera never streamed to us
                    raise CameraError(f"camera lost: no frame for the first {consecutive} positions (frame timeout "
                                      f"{frame_timeout:.2f} s); nothing came since the start: a capture stopped just "
                                      "now may still hold the camera (a GigE Vision camera frees it when its "
                                      "heartbeat times out, a few seconds), or another program streams from it: "
                                      "wait and retry")
                raise CameraError(f"camera lost: no frame for {consecutive} positions in a row "
                                  f"(frame timeout {frame_timeout:.2f} s)")
    if done and counts["dropped_positions"] == done:  # fewer positions than max_consecutive_timeouts, none with a frame
        raise CameraError(f"camera lost: no frame at any of the {done} positions (frame timeout {frame_timeout:.3g} s)")


def camera_label(info) -> str:
    """A camera as a message names it: vendor, model and serial (``CameraInfo``), e.g. "chdl DicingLaneSim v1 (serial SIM0000)"."""
    return " ".join(x for x in (info.vendor, info.model) if x) + (f" (serial {info.serial})" if info.serial else "")


def _remove_empty(out: Path, made_out: bool, made_above: list[Path] = ()) -> str | None:
    """Remove what a recording of no frame wrote into ``out``, and the folder if this capture made it: "removed",
    or "emptied" for a folder of the user's; None if something else is there or it could not be removed (it is then
    kept, as any stopped recording). The folders above ``out`` this capture made (``made_above``, innermost first)
    go too while empty: a new ``--out`` left with nothing in it."""
    ours = {MANIFEST, FRAMES_INDEX, FRAMES_DIR, RESERVE}
    try:
        if any(p.name not in ours for p in out.iterdir()) or any((out / FRAMES_DIR).iterdir()):
            return None
        for name in (RESERVE, FRAMES_INDEX, MANIFEST):  # frames/ last: stopped between, what is left is a claim
            (out / name).unlink(missing_ok=True)
        (out / FRAMES_DIR).rmdir()
        if made_out:
            out.rmdir()
    except OSError:
        return None
    for d in made_above if made_out else ():
        try:
            d.rmdir()  # (refused while another capture writes into it: then it and those above stay)
        except OSError:
            break
    return "removed" if made_out else "emptied"


def _close(writer: RecordingWriter, status: str, stopped_by: str | None, message: str, stats, extra: int,
           dropped_positions: int = 0) -> bool:
    """Close the recording with ``status``; False if its manifest could not be rewritten (a full disk even after
    the reserve was freed): it then keeps status "recording", which every reader reports as incomplete."""
    notes = {"stopped_by": stopped_by, "dropped_positions": dropped_positions, "dropped_frames": stats.dropped if stats else 0,
             "incomplete_buffers": (stats.incomplete if stats else 0) + extra,
             "skipped_frames": stats.skipped if stats else 0}
    if stopped_by is not None:
        notes["error"] = message
    (writer.path / RESERVE).unlink(missing_ok=True)
    if stopped_by == "disk full":  # free what a half-written frame holds so the manifest can be rewritten
        files.remove_stale_temporaries(writer.path / "frames")
    try:
        writer.close(status, **notes)
    except OSError:
        return False
    return True
