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
while the loop writes a PNG.

A frame can be delivered long after it was taken: the camera stalled, the host was overloaded, the capture
process was paused. Where the camera stamps its frames (GigE Vision cameras, Aravis' fake camera), the
frame's time is placed on the host clock (:class:`ExposureClock`) and that, not its arrival, decides whether
it was taken after the stage settled (``freerun``, ``line``) or after this position's trigger (``software``).
Without device timestamps (the viky producer), a software trigger still never takes an earlier trigger's
frame: frames already waiting are discarded before it triggers, and while an earlier trigger's frame is owed
the first frame to come is that one (:class:`SoftwareTriggered`); a streamed frame delivered late is then
judged by its arrival. Frame-id gaps are counted on *every* delivered frame (skipped ones too), so
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
    taken_monotonic_ns: int | None = None  # when it was taken, on the host's monotonic clock (ExposureClock)

    @property
    def when_ns(self) -> int:
        """When the frame was taken if the camera says (device timestamp), else when it arrived."""
        return self.host_monotonic_ns if self.taken_monotonic_ns is None else self.taken_monotonic_ns


class ExposureClock:
    """Places a frame's device timestamp on the host's clock: device time + the smallest (arrival − device time)
    seen so far, i.e. the offset between the two clocks plus the shortest delivery latency. A frame that arrives
    late (queued while the camera stalled or the host was busy) keeps the time it was taken; a frame delivered at
    the usual latency is placed at its arrival. The offset falls at once to a smaller sample and rises by at most
    ``DRIFT`` of the time elapsed, so drift between the two clocks is followed but a burst of late frames does not
    move it; a sample more than ``RESET_S`` above it is a device clock that was reset (the offset starts again
    there); :meth:`restart` starts it again on the next frame.

    Arrival times are the host's *raw* monotonic clock (``CLOCK_MONOTONIC_RAW``, :func:`raw_monotonic_ns`): its
    crystal, which NTP never slews. ``CLOCK_MONOTONIC`` is slewed (ntpd by up to 500 ppm, chrony by far more
    while it corrects an offset), and against it a camera's crystal can seem to drift faster than any cap: the
    estimate then fell behind, every frame looked taken before its trigger, and a camera delivering every frame
    on time ended the run as "camera lost" (a 500 ppm difference: after 347 frames). Two crystals differ by
    tens of ppm."""

    DRIFT = 5e-4  # 500 ppm: two crystals of +-100 ppm each, with 2.5x margin; a late burst moves it <= 0.5 ms/s
    RESET_S = 60.0

    def __init__(self) -> None:
        self._offset: int | None = None
        self._at = 0

    def restart(self) -> None:
        """Forget the offset: the next frame with a timestamp starts it again (when frames judged taken before
        their trigger mean the estimate, not the camera, is wrong)."""
        self._offset = None

    def taken_ns(self, frame: Frame, arrived_ns: int) -> int | None:
        """When ``frame`` was taken, on the clock of ``arrived_ns`` (its arrival); None without a device
        timestamp, and for the first frame (or the first after a reset): its own latency is the only one known,
        and it may be a late frame."""
        stamp = frame.device_timestamp_ns
        if stamp is None:
            return None
        sample = arrived_ns - stamp
        if self._offset is None or sample - self._offset > self.RESET_S * 1e9:
            self._offset, self._at = sample, arrived_ns
            return None  # nothing to compare it with yet: as a frame without a timestamp
        self._offset = min(sample, self._offset + int(self.DRIFT * (arrived_ns - self._at)))
        self._at = arrived_ns
        return stamp + self._offset


def raw_monotonic_ns() -> int:
    """The host's raw monotonic clock in ns (Linux ``CLOCK_MONOTONIC_RAW``: not slewed by NTP); the monotonic
    clock where the platform has no raw one."""
    return time.clock_gettime_ns(_RAW_CLOCK)


_RAW_CLOCK = getattr(time, "CLOCK_MONOTONIC_RAW", time.CLOCK_MONOTONIC)


@dataclasses.dataclass
class SourceStats:
    delivered: int = 0  # frames the host received
    skipped: int = 0  # received but not taken (arrived before the stage settled)
    dropped: int = 0  # frames missing from the id sequence
    incomplete: int = 0  # frames flagged incomplete by the backend


def _stamp() -> tuple[int, int, int]:
    """(wall, monotonic, raw monotonic) ns, now."""
    return time.time_ns(), time.monotonic_ns(), raw_monotonic_ns()


def _gap(tracker: FrameIdTracker, frame: Frame) -> int:
    """Drops before ``frame``: a replayed frame carries its recorded count, a live one is counted from ids."""
    known = getattr(frame, "dropped_before", None)
    if known is not None:
        return known
    # buffers the backend received but discarded (Aravis: missing packets) were not lost on the way: they move the
    # id counter on, and are counted as incomplete buffers, not as drops of the next frame too
    before = sum(tracker.observe(i) for i in getattr(frame, "discarded_ids", ()))
    return before + tracker.observe(frame.frame_id)


class _FrameSource:
    """What both frame sources share: a delivered frame stamped and counted (stats, id gaps, when the camera
    says it was taken), and a frame skipped (its drops carried on to the next frame taken)."""

    def __init__(self, camera: Camera):
        self.camera = camera
        self.stats = SourceStats()
        self._tracker = FrameIdTracker()
        self._clock = ExposureClock()
        self._carry = 0  # drops counted on skipped frames, added to the next taken frame

    def _received(self, frame: Frame) -> Received:
        """``frame`` stamped with the host clock now (it was just delivered) and counted."""
        wall, mono, raw = _stamp()
        gap = _gap(self._tracker, frame)
        self.stats.delivered += 1
        self.stats.dropped += gap
        self.stats.incomplete += frame.incomplete
        taken = self._clock.taken_ns(frame, raw)  # (on the raw clock, then moved onto the monotonic one by the
        # difference of the two now: they part by NTP's slew, <= 0.05 % of a delivery latency)
        return Received(frame, wall, mono, gap, None if taken is None else taken + (mono - raw))

    def _skip(self, item: Received) -> None:
        self._carry += item.dropped_before
        self.stats.skipped += 1


class SoftwareTriggered(_FrameSource):
    """One software trigger per position; the frame it produces is the position's frame.

    On a camera whose frames wait in a driver queue (``Camera.queues_frames``) a frame fetched after the trigger
    may be an earlier trigger's that came late (the camera stalled past the frame timeout). So: frames already
    waiting are discarded before each trigger (``skipped``); with device timestamps a frame taken before this
    trigger is discarded too. Without them frames are matched to triggers in order: while ``_owed`` earlier
    triggers' frames have not come, a frame that comes is held back until a newer one follows; if none does
    before the timeout, one frame came for two triggers and which one it answers cannot be known, so the
    position is dropped rather than given a frame that may have been taken at the previous one. A position
    that times out having received nothing stops owing older frames: they were lost, and one lost trigger
    costs at most two dropped positions, not the rest of the run. A position that times out after frames judged
    taken before its trigger restarts the :class:`ExposureClock`: if the estimate was wrong, not the camera,
    one position is lost, not every later one."""

    mode = "software"
    DRAIN_MAX = 256  # frames discarded before one trigger at most (a camera that streams although triggered)

    def __init__(self, camera: Camera, fps: float | None = None):
        """``fps``: triggers at most this often (a camera in trigger mode takes a frame per trigger, whatever its
        AcquisitionFrameRate: Aravis' fake camera at --fps 5 gave a frame every 40 ms); None: as fast as the
        positions come. Cameras that pace themselves (the simulator, a replay) set ``paces_itself``."""
        super().__init__(camera)
        self._period = 1.0 / fps if fps and not getattr(camera, "paces_itself", False) else 0.0
        self._next = 0.0
        self._queued = bool(getattr(camera, "queues_frames", False))
        self._owed = 0  # triggers sent whose frame has not come (queued cameras)

    def start(self) -> None:
        self.camera.start("software")

    def stop(self) -> None:
        self.camera.stop()

    def next_frame(self, after_ns: int, timeout_s: float) -> Received:
        """Trigger and fetch the position's frame. A triggered frame the backend received incomplete and discarded
        (its ``incomplete_buffers`` count rose; Aravis reports that at once) is triggered again within the
        position's ``timeout_s``: one lost packet cost the whole timeout, and three in a row ended the run."""
        if self._queued:
            self._drain()
        deadline = None
        sent = received = early = 0
        held: Received | None = None  # a frame that may be an earlier trigger's (no device timestamps)
        while True:
            if self._period:
                time.sleep(max(0.0, self._next - time.monotonic()))
                self._next = time.monotonic() + self._period
            deadline = deadline or time.monotonic() + timeout_s  # from the first trigger
            discarded = getattr(self.camera, "incomplete_buffers", 0)
            triggered_ns = time.monotonic_ns()
            self.camera.software_trigger()
            sent += 1
            self._owed += 1
            try:
                while True:
                    frame = self.camera.fetch(max(deadline - time.monotonic(), 1e-3))
                    received += 1
                    got = self._received(frame)
                    if not self._queued:
                        break
                    if got.taken_monotonic_ns is not None:  # the device says when it was taken
                        if got.taken_monotonic_ns >= triggered_ns:
                            break
                        self._skip(got)
                        early += 1
                        continue
                    if held is not None:  # the frame held back was an earlier trigger's: a newer one came
                        self._skip(held)
                        held = None
                    if self._owed == 0:  # the newest trigger's frame: this position's
                        break
                    held = got  # an earlier trigger's, unless that frame was lost: wait for one more
                break
            except TimeoutError:
                if early:  # only frames "taken before the trigger" came: the clock estimate may be what is wrong
                    self._clock.restart()
                lost = getattr(self.camera, "incomplete_buffers", 0) - discarded
                self._owed = max(0, self._owed - lost)  # an incomplete buffer discarded: that trigger's frame
                if lost and time.monotonic() < deadline and held is None:
                    continue  # trigger again
                if held is not None:  # one frame came for two triggers: whose is unknowable; the position is dropped
                    self._skip(held)
                    self._owed = 0
                    raise TimeoutError(f"a frame came (id {held.frame.frame_id}) after a trigger whose frame was late; "
                                       "which trigger it answers is unknown (no device timestamps)") from None
                if received == 0:  # older triggers' frames did not come while this one was awaited: lost
                    self._owed = min(self._owed, sent)
                raise
        self._owed = 0  # this trigger's frame came: any older one still owed was lost
        got.dropped_before += self._carry
        self._carry = 0
        return got

    def _received(self, frame: Frame) -> Received:
        self._owed = max(0, self._owed - 1)  # one trigger answered (frames come in trigger order)
        return super()._received(frame)

    def _drain(self) -> None:
        """Discard the frames already waiting (an earlier trigger's frame that came after its position timed
        out): the next frame fetched is then this trigger's."""
        for _ in range(self.DRAIN_MAX):
            try:
                frame = self.camera.fetch(1e-3)
            except TimeoutError:
                return
            self._skip(self._received(frame))


class StreamedSource(_FrameSource):
    """Frames arrive on their own (free-run or line trigger); a thread fetches and stamps them."""

    POLL_S = 0.2  # the grabber thread's fetch timeout: how quickly it notices stop()
    STALL_S = 0.5  # a wait that returns this long after its deadline means the host stalled: one more timeout
    MAX_QUEUED = 64  # beyond this the oldest queued frames are skipped (only the newest matter)

    def __init__(self, camera: Camera, mode: str):
        super().__init__(camera)
        self.mode = mode
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
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
            got = self._received(frame)  # (this thread alone counts delivered frames: outside the lock)
            with self._cond:
                if len(self._queue) >= self.MAX_QUEUED:
                    self._skip(self._queue.popleft())
                self._queue.append(got)
                self._cond.notify_all()

    def next_frame(self, after_ns: int, timeout_s: float) -> Received:
        """The first frame taken (device timestamp, :class:`ExposureClock`) or, without one, arrived at or after
        ``after_ns`` (monotonic); TimeoutError if none in time (after frames that arrived after ``after_ns`` but
        were judged taken before it, the :class:`ExposureClock` restarts: its estimate may be what is wrong)."""
        deadline = time.monotonic() + timeout_s
        early = stalled = False
        with self._cond:
            while True:
                while self._queue:
                    item = self._queue.popleft()
                    if item.when_ns >= after_ns:
                        item.dropped_before += self._carry
                        self._carry = 0
                        return item
                    early = early or item.host_monotonic_ns >= after_ns
                    self._skip(item)
                if self._error is not None:
                    raise self._error
                remaining = deadline - time.monotonic()
                if remaining <= -self.STALL_S and not stalled:
                    # this wait came back long after its deadline: the host stalled (the process stopped, the
                    # machine overloaded), not the camera, and the grabber thread had no turn either; it gets one
                    # more timeout (a 3 s SIGSTOP dropped a position, blaming "a slow camera", 2 times in 3)
                    stalled, deadline = True, time.monotonic() + timeout_s
                    continue
                if remaining <= 0:
                    if early:
                        self._clock.restart()
                    raise TimeoutError(f"no frame within {timeout_s:.3f} s after the stage settled")
                self._cond.wait(remaining)


def frame_source(camera: Camera, mode: str, fps: float | None = None) -> SoftwareTriggered | StreamedSource:
    """The frame source of a trigger mode; ``fps`` paces software triggers (:class:`SoftwareTriggered`)."""
    return SoftwareTriggered(camera, fps) if mode == "software" else StreamedSource(camera, mode)
