"""Replay of a recorded stream as a camera, so the whole capture pipeline runs with no hardware.

The replay camera is software-triggered: each trigger releases the next recorded frame, at the moment
it arrived in the original run relative to the first frame (``pace=True``), or at once
(``pace=False``, ``--as-fast-as-possible``). A recorded ``dropped`` position yields no frame (the fetch
times out, as a real camera would), so capture records it as dropped again; so does a frame whose file is
missing or does not decode, with a warning naming it. Each frame carries the
recorded ``dropped_before`` and frame id, so record -> replay -> record reproduces the pixels and the
per-frame status byte for byte. Settings cannot be changed: ``apply`` accepts only the recorded ones.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

from acquisition.backends.base import Camera, CameraError, CameraInfo, CaptureSettings, Frame, SourceEnded
from acquisition.raw import RawFormatError, Recording


@dataclasses.dataclass
class ReplayFrame(Frame):
    dropped_before: int | None = None  # drops as recorded (capture uses this instead of re-deriving from ids)


def recorded_settings(recording: Recording) -> CaptureSettings:
    """The settings a recording was made with (what a replay of it delivers)."""
    s = recording.settings
    try:
        return CaptureSettings(width=int(s["width"]), height=int(s["height"]), pixel_format=s["pixel_format"],
                               fps=float(s["fps"]), exposure_us=s.get("exposure_us"), bit_depth=s.get("bit_depth"))
    except (KeyError, TypeError, ValueError):
        raise CameraError(f"replay: {recording.path / 'manifest.json'}: malformed settings {s!r}") from None


def recorded_plan(recording: Recording) -> tuple[int, list[float]]:
    """(lanes, positions_um) of the plan a recording was made with (from its manifest; derived from its frames for
    a manifest without a plan)."""
    plan = recording.manifest.get("plan") or {}
    positions_um = plan.get("positions_um") or sorted({f.position_um for f in recording.frames})
    lanes = int(plan.get("lanes") or (max((f.lane for f in recording.frames), default=0) + 1))
    return lanes, [float(p) for p in positions_um]


def open_replay_camera(alias: str, options: dict, config=None) -> "ReplayCamera":
    if not options.get("path"):
        raise CameraError(f"camera {alias!r}: a replay camera needs 'path' (a recording folder)")
    return ReplayCamera(options["path"], pace=bool(options.get("pace", True)))


class ReplayCamera(Camera):
    paces_itself = True  # at the recorded rate, or as fast as possible: never at the capture's fps

    def __init__(self, path: str | Path, pace: bool = True):
        self.path = Path(path)
        self.pace = pace
        self.recording: Recording | None = None
        self.info = CameraInfo("", "", "", "", "Replay", "replay", address=str(self.path))
        self._next = 0  # place in the plan (lane * positions + position) the next trigger releases
        self._pending: tuple[int | None, float] | None = None  # (record index or None: never recorded, when due)
        self._by_place: dict[tuple[int, int], int] = {}  # (lane, position_index) -> record index
        self._positions = 1
        self._end = 0  # one past the plan place of the last record
        self._t0: float | None = None

    def open(self) -> None:
        try:
            self.recording = Recording.open(self.path)
        except RawFormatError as e:
            raise CameraError(f"replay: {e}") from None
        cam = self.recording.manifest.get("camera", {})
        self.info = CameraInfo(vendor=cam.get("vendor", ""), model=cam.get("model", ""), serial=cam.get("serial", ""),
                               user_name=cam.get("user_name", ""), transport=cam.get("transport", ""),
                               backend="replay", producer=None, address=str(self.path))
        self._next, self._pending, self._t0 = 0, None, None
        # each trigger releases the record of the plan place it stands for, found by the record's own lane and
        # position (a recording missing a line replayed every later frame one position early, into the next lane)
        self._positions = len(recorded_plan(self.recording)[1]) or 1
        self._by_place = {}
        for r in self.recording.frames:
            if (place := (r.lane, r.position_index)) in self._by_place:
                raise CameraError(f"replay: {self.path / 'frames.jsonl'}: lane {r.lane} position {r.position_index} "
                                  f"recorded twice (frames {self._by_place[place]} and {r.index})")
            if not 0 <= r.position_index < self._positions:
                raise CameraError(f"replay: {self.path / 'frames.jsonl'}: frame {r.index} has position "
                                  f"{r.position_index}, outside the plan's {self._positions} positions")
            self._by_place[place] = r.index
        self._end = max((lane * self._positions + p + 1 for lane, p in self._by_place), default=0)

    def close(self) -> None:
        self.recording = None

    def recorded_settings(self) -> CaptureSettings:
        return recorded_settings(self._rec)

    @property
    def _rec(self) -> Recording:
        if self.recording is None:
            raise CameraError(f"replay camera {self.path} is not open")
        return self.recording

    def apply(self, settings: CaptureSettings) -> CaptureSettings:
        recorded = self.recorded_settings()
        for field in ("width", "height", "pixel_format", "fps"):
            if getattr(settings, field) != getattr(recorded, field):
                raise CameraError(f"replay of {self.path}: {field}={getattr(settings, field)} refused; "
                                  f"the recording has {field}={getattr(recorded, field)}")
        return recorded

    def trigger_modes(self) -> set[str]:
        return {"software"}

    def start(self, trigger_mode: str) -> None:
        self._require_trigger_mode(trigger_mode, "replay")

    def stop(self) -> None:
        self._pending = None

    def software_trigger(self) -> None:
        frames = self._rec.frames
        if self._next >= self._end:
            raise SourceEnded(f"replay: end of recording {self.path} after {len(frames)} frames")
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        index = self._by_place.get(divmod(self._next, self._positions))
        due = now
        if self.pace and index is not None:
            due = self._t0 + (frames[index].host_monotonic_ns - frames[0].host_monotonic_ns) / 1e9
        self._pending = (index, due)
        self._next += 1

    def fetch(self, timeout_s: float) -> Frame:
        if self._pending is None:
            time.sleep(timeout_s)
            raise TimeoutError("replay: no trigger pending")
        index, due = self._pending
        if index is None:
            self._pending = None
            lane, position = divmod(self._next - 1, self._positions)
            raise TimeoutError(f"replay: lane {lane} position {position} was never recorded")
        wait = due - time.monotonic()
        if wait > timeout_s:
            time.sleep(timeout_s)
            raise TimeoutError(f"replay: frame {index} not due within {timeout_s:.3f} s")
        self._pending = None
        if wait > 0:
            time.sleep(wait)
        record = self._rec.frames[index]
        if record.status == "dropped":
            raise TimeoutError(f"replay: frame {index} was dropped in the recording")
        try:
            pixels = self._rec.read(record)
        except RawFormatError as e:
            # a frame file of the source that is gone or does not decode: replayed as a camera would deliver a
            # frame that never arrived -- a dropped position -- with a warning (chdl curate reads such a file as
            # a missing frame too); the replay goes on
            warnings.warn(f"replay: {e}; recorded as a dropped frame")
            raise TimeoutError(f"replay: frame {index} of the source is unreadable") from None
        return ReplayFrame(pixels=pixels, frame_id=record.frame_id, device_timestamp_ns=record.device_timestamp_ns,
                           incomplete=record.status == "incomplete", dropped_before=record.dropped_before)
