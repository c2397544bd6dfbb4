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
        self._next = 0  # index of the record the next trigger releases
        self._pending: tuple[int, float] | None = None  # (record index, monotonic time it is due)
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
        if self._next >= len(frames):
            raise SourceEnded(f"replay: end of recording {self.path} after {len(frames)} frames")
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        due = now
        if self.pace:
            due = self._t0 + (frames[self._next].host_monotonic_ns - frames[0].host_monotonic_ns) / 1e9
        self._pending = (self._next, due)
        self._next += 1

    def fetch(self, timeout_s: float) -> Frame:
        if self._pending is None:
            time.sleep(timeout_s)
            raise TimeoutError("replay: no trigger pending")
        index, due = self._pending
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
