"""Trigger strategies: how capture gets *the* frame for a stage position, and how drops are counted.

Three strategies, chosen from what the camera offers (:func:`choose_trigger`):

- ``software``: after the stage settles, send a software trigger and fetch the one frame it produces.
- ``line``: the dicing machine's encoder fires the camera's trigger line when the stage reaches a position;
  frames arrive on their own, and the first frame that arrives after the move was commanded is taken
  (the encoder may fire before the stage reports "settled").
- ``freerun``: the camera streams at its frame rate; the first frame that *arrives* after the stage
  settled is taken, frames that arrived earlier (the view was still moving) are skipped.

``auto`` picks ``software`` when the camera has it, else ``freerun``. ``line`` is never picked
automatically: whether the encoder is wired to the camera is not something the camera can tell us.

For ``line``/``freerun`` a background thread (:class:`StreamedSource`) fetches continuously and stamps each
frame with the host clock the moment it is delivered, so "arrived after the stage settled" is decided on
arrival time, not on when the capture loop got round to it, and the driver's buffer pool never fills up
while the loop writes a PNG. Frame-id gaps are counted on *every* delivered frame (skipped ones too), so
``dropped_before`` only ever counts frames the device produced and the host never received.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

from acquisition.backends.base import Camera, CameraError, Frame

TRIGGERS = ("auto", "software", "line", "freerun")


def choose_trigger(offered: set[str], requested: str = "auto") -> str:
    if requested not in TRIGGERS:
        raise CameraError(f"unknown trigger strategy {requested!r} (choose from {', '.join(TRIGGERS)})")
    if requested == "auto":
        return "software" if "software" in offered else "freerun"
    if requested not in offered:
        raise CameraError(f"trigger strategy {requested!r} not offered by this camera "
                          f"(it offers: {', '.join(sorted(offered)) or 'none'})")
    return requested


class FrameIdTracker:
    """Counts frames missing between consecutive device frame ids.

    Ids normally increase by one. GigE Vision 1.x block ids are 16-bit and wrap from 65535 to 1 (0 is
    reserved); a decrease from the top of the 16-bit range is taken as that wrap, and id 0 is treated as
    skipped by the device unless the stream has been seen to use it. A decrease anywhere else is a counter
    reset (acquisition restarted): no drop can be inferred. Frames without ids (None) count nothing.
    """

    WRAP = 1 << 16
    _NEAR_TOP = WRAP - 4096  # a decrease from above this is a wrap, not a reset

    def __init__(self) -> None:
        self.last: int | None = None
        self.zero_used = False
        self.resets = 0

    def observe(self, frame_id: int | None) -> int:
        if frame_id is None:
            return 0
        if frame_id == 0:
            self.zero_used = True
        last, self.last = self.last, frame_id
        if last is None or frame_id == last:
            return 0
        if frame_id > last:
            return frame_id - last - 1
        if self._NEAR_TOP <= last < self.WRAP and frame_id < self.WRAP - self._NEAR_TOP:
            gap = (frame_id - last - 1) % self.WRAP
            return gap - 1 if (not self.zero_used and frame_id > 0 and gap > 0) else gap
        self.resets += 1
        return 0


@dataclasses.dataclass
class Received:
    """A frame as the host received it."""

    frame: Frame
    host_wall_ns: int
    host_monotonic_ns: int
    dropped_before: int  # frames missing (id gaps) since the previous *taken* frame


@dataclasses.dataclass
class SourceStats:
    delivered: int = 0  # frames the host received
    skipped: int = 0  # received but not taken (arrived before the stage settled)
    dropped: int = 0  # frames missing from the id sequence
    incomplete: int = 0  # frames flagged incomplete by the backend


def _stamp() -> tuple[int, int]:
    return time.time_ns(), time.monotonic_ns()


def _gap(tracker: FrameIdTracker, frame: Frame) -> int:
    """Drops before ``frame``: a replayed frame carries its recorded count, a live one is counted from ids."""
    known = getattr(frame, "dropped_before", None)
    if known is not None:
        return known
    # buffers the backend received but discarded (Aravis: missing packets) were not lost on the way: they move the
    # id counter on, and are counted as incomplete buffers, not as drops of the next frame too
    before = sum(tracker.observe(i) for i in getattr(frame, "discarded_ids", ()))
    return before + tracker.observe(frame.frame_id)


class SoftwareTriggered:
    """One software trigger per position; the frame it produces is the position's frame."""

    mode = "software"

    def __init__(self, camera: Camera, fps: float | None = None):
        """``fps``: triggers at most this often (a camera in trigger mode takes a frame per trigger, whatever its
        AcquisitionFrameRate: Aravis' fake camera at --fps 5 gave a frame every 40 ms); None: as fast as the
        positions come. Cameras that pace themselves (the simulator, a replay) set ``paces_itself``."""
        self.camera = camera
        self.stats = SourceStats()
        self._tracker = FrameIdTracker()
        self._period = 1.0 / fps if fps and not getattr(camera, "paces_itself", False) else 0.0
        self._next = 0.0

    def start(self) -> None:
        self.camera.start("software")

    def stop(self) -> None:
        self.camera.stop()

    def next_frame(self, after_ns: int, timeout_s: float) -> Received:
        """Trigger and fetch the position's frame. A triggered frame the backend received incomplete and discarded
        (its ``incomplete_buffers`` count rose; Aravis reports that at once) is triggered again within the
        position's ``timeout_s``: one lost packet cost the whole timeout, and three in a row ended the run."""
        deadline = None
        while True:
            if self._period:
                time.sleep(max(0.0, self._next - time.monotonic()))
                self._next = time.monotonic() + self._period
            deadline = deadline or time.monotonic() + timeout_s  # from the first trigger
            discarded = getattr(self.camera, "incomplete_buffers", 0)
            self.camera.software_trigger()
            try:
                frame = self.camera.fetch(max(deadline - time.monotonic(), 1e-3))
                break
            except TimeoutError:
                if getattr(self.camera, "incomplete_buffers", 0) == discarded or time.monotonic() >= deadline:
                    raise
        wall, mono = _stamp()
        gap = _gap(self._tracker, frame)
        self.stats.delivered += 1
        self.stats.dropped += gap
        self.stats.incomplete += frame.incomplete
        return Received(frame, wall, mono, gap)


class StreamedSource:
    """Frames arrive on their own (free-run or line trigger); a thread fetches and stamps them."""

    POLL_S = 0.2  # the grabber thread's fetch timeout: how quickly it notices stop()
    MAX_QUEUED = 64  # beyond this the oldest queued frames are skipped (only the newest matter)

    def __init__(self, camera: Camera, mode: str):
        self.camera = camera
        self.mode = mode
        self.stats = SourceStats()
        self._tracker = FrameIdTracker()
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._carry = 0  # drops counted on skipped frames, added to the next taken frame
        self._error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.camera.start(self.mode)
        self._thread = threading.Thread(target=self._grab, name="chdl-grabber", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self.camera.stop()

    def _grab(self) -> None:
        while not self._stopping.is_set():
            try:
                frame = self.camera.fetch(self.POLL_S)
            except TimeoutError:
                continue
            except BaseException as e:  # noqa: BLE001 - handed to the capture loop, which decides
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
                return
            wall, mono = _stamp()
            gap = _gap(self._tracker, frame)
            with self._cond:
                self.stats.delivered += 1
                self.stats.dropped += gap
                self.stats.incomplete += frame.incomplete
                if len(self._queue) >= self.MAX_QUEUED:
                    self._skip(self._queue.popleft())
                self._queue.append(Received(frame, wall, mono, gap))
                self._cond.notify_all()

    def _skip(self, item: Received) -> None:
        self._carry += item.dropped_before
        self.stats.skipped += 1

    def next_frame(self, after_ns: int, timeout_s: float) -> Received:
        """The first frame that arrived at or after ``after_ns`` (monotonic); TimeoutError if none in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                while self._queue:
                    item = self._queue.popleft()
                    if item.host_monotonic_ns >= after_ns:
                        item.dropped_before += self._carry
                        self._carry = 0
                        return item
                    self._skip(item)
                if self._error is not None:
                    raise self._error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no frame within {timeout_s:.3f} s after the stage settled")
                self._cond.wait(remaining)


def frame_source(camera: Camera, mode: str, fps: float | None = None) -> SoftwareTriggered | StreamedSource:
    """The frame source of a trigger mode; ``fps`` paces software triggers (:class:`SoftwareTriggered`)."""
    return SoftwareTriggered(camera, fps) if mode == "software" else StreamedSource(camera, mode)
