"""What every camera backend and every stage provides. Capture code talks only to these two classes.

Backends: GenTL through harvesters (real cameras, and the viky test producer), the simulator, replay of
recorded streams, and optionally Aravis. A backend returns frames whose pixels are *copies* owned by
Python, so a driver buffer can be re-queued the moment ``fetch`` returns.
"""

from __future__ import annotations

import abc
import dataclasses
import time

import numpy as np


class CameraError(RuntimeError):
    """A camera could not be found, opened, configured or read. The message says which and why."""


class SourceEnded(CameraError):
    """A replayed recording has no more frames (an incomplete one ends before its plan does): the end of the
    replay, not a camera lost (acquisition.capture stops with ``"source ended"``)."""


@dataclasses.dataclass
class CameraInfo:
    """Who a camera is, as listed by ``chdl cameras``."""

    vendor: str
    model: str
    serial: str
    user_name: str  # the user-defined name stored on the device ("" if none)
    transport: str  # "GEV", "U3V", "Custom", "Sim", "Replay", ...
    backend: str  # "gentl" | "sim" | "replay" | "aravis"
    producer: str | None = None  # path of the GenTL producer (.cti) that exposes it, if any
    address: str | None = None  # transport address (IP for GigE Vision), if known


@dataclasses.dataclass
class CaptureSettings:
    """Acquisition settings, as requested and as read back from the device."""

    width: int
    height: int
    pixel_format: str  # "Mono8" | "Mono10" | "Mono12" | "Mono16" (Mono10/12 unpacked, in uint16)
    fps: float
    exposure_us: float | None = None  # None: leave the camera's exposure as it is (or it has none)
    # significant bits of the pixel values. Requested: an override (``chdl capture --bit-depth``); read back:
    # what the device says (Mono16: from PixelDynamicRangeMax), None where it cannot tell
    bit_depth: int | None = None


@dataclasses.dataclass
class Frame:
    """One delivered frame."""

    pixels: np.ndarray  # (H, W) uint8/uint16, a copy owned by Python
    frame_id: int | None  # device frame counter, if the backend has one
    device_timestamp_ns: int | None  # device clock, if the camera provides one
    incomplete: bool = False  # the buffer arrived partially filled
    discarded_ids: tuple[int, ...] = ()  # ids of buffers received before it but discarded (incomplete): not drops


def sleep_until(deadline: float, timeout_s: float, what: str) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline``; if that is more than ``timeout_s`` away,
    sleep ``timeout_s`` and raise TimeoutError(``what``) (a simulated device honouring a timeout)."""
    remaining = deadline - time.monotonic()
    if remaining > timeout_s:
        time.sleep(max(timeout_s, 0.0))
        raise TimeoutError(what)
    if remaining > 0:
        time.sleep(remaining)


class Stage(abc.ABC):
    """Moves the field of view along a lane. Real stages (the dicing machine) implement this too."""

    lane: int = 0
    position_um: float = 0.0

    @abc.abstractmethod
    def move_to(self, lane: int, position_um: float) -> None:
        """Command a move (may return before the stage has settled)."""

    @abc.abstractmethod
    def wait_settled(self, timeout_s: float) -> None:
        """Block until the last move has settled; TimeoutError after ``timeout_s``."""


class Camera(abc.ABC):
    """A camera opened through one backend."""

    info: CameraInfo
    # frames wait in a driver queue until fetched (GenTL, Aravis): a frame fetched after a software trigger may be
    # an earlier trigger's that came late (acquisition.trigger.SoftwareTriggered sorts them out). False: a frame
    # is made when it is fetched (the simulator, a replay)
    queues_frames: bool = False

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def apply(self, settings: CaptureSettings) -> CaptureSettings:
        """Write settings to the device and return what it reports back. CameraError names a refused
        feature and its valid range."""

    @abc.abstractmethod
    def trigger_modes(self) -> set[str]:
        """The trigger strategies this camera supports: a subset of {"software", "line", "freerun"}."""

    @abc.abstractmethod
    def start(self, trigger_mode: str) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def software_trigger(self) -> None:
        raise CameraError(f"{self.info.model}: no software trigger")

    def _require_trigger_mode(self, trigger_mode: str, who: str) -> None:
        """For :meth:`start`: CameraError unless ``trigger_mode`` is one of :meth:`trigger_modes`
        (``who`` names the camera in the message)."""
        modes = self.trigger_modes()
        if trigger_mode not in modes:
            raise CameraError(f"{who}: trigger mode {trigger_mode!r} not supported (supported: {', '.join(sorted(modes))})")

    @abc.abstractmethod
    def fetch(self, timeout_s: float) -> Frame:
        """The next frame; TimeoutError if none arrives within ``timeout_s``."""

    def attach_stage(self, stage: Stage) -> None:
        """Give the camera the stage it looks through (a simulated camera renders what it sees)."""

    def __enter__(self) -> "Camera":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
