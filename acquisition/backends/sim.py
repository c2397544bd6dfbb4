"""The ``sim`` camera backend: a camera that renders what a simulated stage looks at.

``chdl capture --camera sim0`` opens :class:`SimCamera` with seed 0 (``sim7``: seed 7). Options come from
the camera config entry of an alias with ``backend: sim`` (keys: ``index``, ``seed`` and any other
:class:`acquisition.simulator.SimConfig` field except the capture settings, plus ``realtime``,
``positions``/``step_um`` for the stage-less scan)::

    cameras:
      simfaulty: {backend: sim, seed: 3, fault_rate: 0.05, bit_depth: 12}

Behaviour, like a real camera where it matters to capture code:

* settings: any ``width`` x ``height`` from 16x16 to 3200x2400 (the field of view stays 1200x900 um, so
  a smaller frame is a coarser sampling of the same scene, like binning), ``Mono8`` or ``Mono16`` (12-bit
  data by default, option ``bit_depth: 16`` for full range), ``fps`` 0.1-500, ``exposure_us`` 10-1e6
  (nominal 2000 us; the signal scales with it and clips at full scale). ``apply`` reads back what it set.
* triggers: ``software`` (each trigger renders one frame, at most ``fps`` frames a second: a trigger within
  the previous frame's period waits for its end) and ``freerun`` (frames at ``fps``); both paced in real
  time unless ``realtime: false``.
* frame ids count from 0 since ``open``. Device timestamps: in real time, the device clock is the host's monotonic
  clock since ``open``, read when the frame is taken (a capture whose stage takes 0.5 s to settle has frames
  ~0.5 s apart on both clocks; they were stamped ``frame_id / fps``, 0.2 s apart at 5 fps, whatever happened);
  with ``realtime: false`` (rendered at once) ``frame_id / fps`` on a simulated clock.
* the scene: the attached stage's lane and position (the view's centre); scene time ``t`` counts frames
  since the stage arrived on its current lane. Without a stage the camera scans on its own:
  ``positions`` (10) frames ``step_um`` (60 um) apart per lane, then the next lane.

Ground truth: every frame is a pure function of the simulator configuration, the lane and ``t``, and the
camera's ``info.address`` (``sim://<index>?seed=...``) records that configuration in the recording's
manifest. :func:`write_recording_truth` re-renders a recording's frames, checks they match the recorded
pixels, and writes ``<run>/truth/`` (``chdl simulate truth RUN``). It needs a recording in which every
rendered frame was kept (software trigger, the default; frame ids without gaps).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

from acquisition.backends.base import Camera, CameraError, CameraInfo, CaptureSettings, Frame, Stage, sleep_until
from acquisition.raw import Recording, RecordingWriter
from acquisition.process_anomalies import AnomalyLog
from acquisition.simulator import SIM_VERSION, DicingLaneSimulator, SimConfig, label, write_truth

NOMINAL_EXPOSURE_US = 2000.0
MAX_SIZE = (3200, 2400)
PIXEL_FORMATS = ("Mono8", "Mono16")
_SETTINGS_FIELDS = {"width", "height", "exposure", "step_um"}  # come from settings / the stage, not options
_CAMERA_OPTIONS = {"index", "backend", "realtime", "positions", "step_um"}


class SimStage(Stage):
    """The camera's own stage when none is attached: instant moves."""

    def __init__(self) -> None:
        self.lane, self.position_um = 0, 0.0

    def move_to(self, lane: int, position_um: float) -> None:
        self.lane, self.position_um = int(lane), float(position_um)

    def wait_settled(self, timeout_s: float) -> None:
        return None


class SimOptionError(ValueError):
    """A sim camera option the simulator refuses: ``key`` (None when no one key is to blame) and ``problem``, for a
    message naming where it came from (the camera config's ``cameras.<alias>.<key>``, or the camera)."""

    def __init__(self, key: str | None, problem: str):
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key, self.problem = key, problem


def sim_config(options: dict) -> SimConfig:
    """The simulator configuration of a sim camera's options (a camera-config entry: its camera options aside);
    SimOptionError naming the first key it refuses. ``index`` is the key a default seed comes from. Checked when
    the camera config is read (chdl names the file and the key, as for a wrong type) and when the camera opens."""
    index = int(options.get("index", 0))
    if index < 0:
        raise SimOptionError("index", f"must be >= 0, not {options['index']}")
    sim_opts = {k: v for k, v in options.items() if k not in _CAMERA_OPTIONS}
    if bad := sorted(set(sim_opts) & _SETTINGS_FIELDS):
        raise SimOptionError(bad[0], "a capture setting, not a sim option")
    sim_opts.setdefault("seed", index)
    sim_opts.setdefault("bit_depth", 12)  # the Mono16 data depth (Mono8 is always 8)
    if sim_opts["bit_depth"] not in (12, 16):
        raise SimOptionError("bit_depth", f"must be 12 or 16 (the Mono16 data depth; Mono8 is set by PixelFormat), "
                                          f"not {sim_opts['bit_depth']}")
    try:
        return SimConfig.from_dict(sim_opts)
    except (TypeError, ValueError) as e:
        text = str(e)  # SimConfig's messages begin with the field they are about
        key = {"unknown fault kinds": "fault_kinds", "unknown anomaly kinds": "anomaly_kinds"}.get(
            " ".join(text.split()[:3]), text.split()[0])
        if key not in {f.name for f in dataclasses.fields(SimConfig)}:
            raise SimOptionError(None, text) from None
        raise SimOptionError(key, text.removeprefix(key).lstrip(": ")) from None


class SimCamera(Camera):
    """A simulated dicing-lane microscope camera (see the module docstring)."""

    paces_itself = True  # its software trigger waits out the frame period itself (or not, realtime: false)

    def __init__(self, alias: str, options: dict | None = None):
        options = dict(options or {})
        self.alias = alias
        index = int(options.get("index", 0))
        self.realtime = bool(options.get("realtime", True))
        self.scan_positions = int(options.get("positions", 10))
        self.scan_step_um = float(options.get("step_um", 60.0))
        try:
            self._base = sim_config(options)
        except SimOptionError as e:
            raise CameraError(f"camera {alias!r}: {e}") from None
        self.info = CameraInfo(vendor="chdl", model=f"DicingLaneSim v{SIM_VERSION}", serial=f"SIM{index:04d}",
                               user_name=alias, transport="Sim", backend="sim", producer=None,
                               address=sim_address(index, self._base))
        self.settings = CaptureSettings(800, 600, "Mono8", 5.0, NOMINAL_EXPOSURE_US)
        self._sim: DicingLaneSimulator | None = None
        self._stage: Stage = SimStage()
        self._own_stage = True
        self._opened = False
        self._mode: str | None = None
        self._pending = 0  # software triggers not yet answered by a frame
        self._triggered = threading.Condition()
        self._frame_id = 0
        self._lane: int | None = None
        self._t = 0
        self._next_due = 0.0
        self.last = None  # the last Rendered (pixels, clean frame, fault): ground truth for direct writers

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> None:
        self._opened = True
        self._clock0 = time.monotonic_ns()  # the simulated device clock starts at open (real time)
        self._frame_id = 0
        self._lane = None
        self._configure()

    def close(self) -> None:
        self._opened = False
        self._mode = None

    def _require_open(self) -> None:
        if not self._opened:
            raise CameraError(f"{self.alias}: camera is not open")

    def _configure(self) -> None:
        s = self.settings
        cfg = dataclasses.replace(self._base, width=s.width, height=s.height,
                                  bit_depth=8 if s.pixel_format == "Mono8" else self._base.bit_depth,
                                  exposure=(s.exposure_us or NOMINAL_EXPOSURE_US) / NOMINAL_EXPOSURE_US)
        self._sim = DicingLaneSimulator(cfg)

    @property
    def config(self) -> SimConfig:
        """The simulator configuration frames are rendered with (after ``apply``)."""
        self._require_open()
        return self._sim.config

    def apply(self, settings: CaptureSettings) -> CaptureSettings:
        self._require_open()
        if self._mode is not None:
            raise CameraError(f"{self.alias}: cannot change settings while acquiring (stop first)")
        w, h = int(settings.width), int(settings.height)
        if not (16 <= w <= MAX_SIZE[0] and 16 <= h <= MAX_SIZE[1]):
            raise CameraError(f"{self.alias}: Width x Height {w}x{h} out of range (16x16 .. {MAX_SIZE[0]}x{MAX_SIZE[1]})")
        if settings.pixel_format not in PIXEL_FORMATS:
            raise CameraError(f"{self.alias}: PixelFormat {settings.pixel_format!r} not supported (valid: {', '.join(PIXEL_FORMATS)})")
        if not 0.1 <= float(settings.fps) <= 500:
            raise CameraError(f"{self.alias}: AcquisitionFrameRate {settings.fps} out of range (0.1 .. 500)")
        exposure = self.settings.exposure_us if settings.exposure_us is None else float(settings.exposure_us)
        if not 10 <= exposure <= 1e6:
            raise CameraError(f"{self.alias}: ExposureTime {exposure} us out of range (10 .. 1000000)")
        self.settings = CaptureSettings(w, h, settings.pixel_format, float(settings.fps), exposure,
                                        bit_depth=8 if settings.pixel_format == "Mono8" else self._base.bit_depth)
        self._configure()
        return dataclasses.replace(self.settings)

    def trigger_modes(self) -> set[str]:
        return {"software", "freerun"}

    def attach_stage(self, stage: Stage) -> None:
        self._stage, self._own_stage = stage, False

    def start(self, trigger_mode: str) -> None:
        self._require_open()
        self._require_trigger_mode(trigger_mode, self.alias)
        self._mode, self._pending = trigger_mode, 0
        self._next_due = time.monotonic()

    def stop(self) -> None:
        self._mode = None
        self._pending = 0

    def software_trigger(self) -> None:
        if self._mode != "software":
            raise CameraError(f"{self.alias}: software trigger needs start('software') first")
        with self._triggered:
            self._pending += 1
            self._triggered.notify_all()

    def fetch(self, timeout_s: float) -> Frame:
        if self._mode is None:
            raise CameraError(f"{self.alias}: not acquiring (call start first)")
        if self._mode == "software":
            with self._triggered:
                if not self._triggered.wait_for(lambda: self._pending > 0, timeout=max(timeout_s, 0.0)):
                    raise TimeoutError(f"{self.alias}: no frame within {timeout_s} s (no software trigger)")
                self._pending -= 1
            if self.realtime:
                # the frame rate caps triggered frames too: a trigger within the previous frame's period is
                # served at its end, as a camera that cannot expose faster. So a capture with an instant stage
                # runs at ``fps`` (it ran at render speed, ~85 frames/s at 200x150, while the manifest and the
                # device timestamps, frame_id / fps, said 5), and its host times agree with the device's.
                wait = self._next_due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self._next_due = max(self._next_due, time.monotonic()) + 1.0 / self.settings.fps
        elif self.realtime:
            sleep_until(self._next_due, timeout_s, f"{self.alias}: no frame within {timeout_s} s")
            # a frame due while the host did not fetch (a stall) waited in the camera's queue: it was taken when it
            # was due, and says so (a 3 s pause gave five frames stamped 3-4 ms apart at 5 fps); at most 1 s of them
            due = self._next_due = max(self._next_due, time.monotonic() - 1.0)
            self._next_due += 1.0 / self.settings.fps
            return self._render(taken_s=due)
        return self._render()

    def _render(self, taken_s: float | None = None) -> Frame:
        """The next frame; ``taken_s``: when it was taken (time.monotonic), else now."""
        taken = (time.monotonic_ns() if taken_s is None else int(taken_s * 1e9)) - self._clock0  # (before rendering)
        stage = self._stage
        if stage.lane != self._lane:
            self._lane, self._t = stage.lane, 0
        out = self.last = self._sim.render(stage.lane, self._t, stage.position_um)
        stamp = taken if self.realtime else int(round(self._frame_id * 1e9 / self.settings.fps))
        frame = Frame(pixels=out.pixels, frame_id=self._frame_id, device_timestamp_ns=stamp, incomplete=False)
        self._frame_id += 1
        self._t += 1
        if self._own_stage:  # scan on our own: next position, then the next lane
            k = self._frame_id
            stage.move_to(k // self.scan_positions, (k % self.scan_positions) * self.scan_step_um)
        return frame


def sim_address(index: int, config: SimConfig) -> str:
    """``sim://<index>?...``: the simulator options (everything but the capture settings) as a URL."""
    opts = {k: v for k, v in config.to_dict().items() if k not in _SETTINGS_FIELDS}  # bit_depth: of Mono16
    opts["fault_kinds"] = ",".join(opts["fault_kinds"])
    opts["anomaly_kinds"] = ",".join(opts["anomaly_kinds"])
    if not config.anomaly_rate:  # no process anomalies: the address of a simulator without them
        del opts["anomaly_rate"], opts["anomaly_kinds"]
    opts["sim_version"] = SIM_VERSION
    return f"sim://{index}?" + urllib.parse.urlencode(opts)


def parse_sim_address(address: str) -> tuple[int, dict]:
    """(index, SimConfig options) from :func:`sim_address` output. ValueError if it is not one."""
    url = urllib.parse.urlparse(address or "")
    if url.scheme != "sim":
        raise ValueError(f"camera address {address!r} is not a sim:// address")
    q = dict(urllib.parse.parse_qsl(url.query))
    version = int(q.pop("sim_version", -1))
    if version != SIM_VERSION:
        raise ValueError(f"recorded with simulator version {version}, this is version {SIM_VERSION}")
    types = {f.name: f.type for f in dataclasses.fields(SimConfig)}
    opts: dict = {}
    for k, v in q.items():
        t = types.get(k)
        opts[k] = (v == "True") if t in (bool, "bool") else int(v) if t in (int, "int") else \
            float(v) if t in (float, "float") else v
    return int(url.netloc or 0), opts


def open_sim_camera(alias: str, options: dict, config=None) -> SimCamera:
    """Backend hook (``acquisition.backends.BACKENDS["sim"]``): the (not yet opened) sim camera."""
    return SimCamera(alias, options)


def list_sim_cameras(config) -> list[tuple[str, CameraInfo]]:
    """Every alias the camera config maps to the sim backend, and the built-in ``sim0`` unless the config gives that
    alias a camera of its own (it was listed twice, once with a camera that ``--camera sim0`` did not select)."""
    configured = getattr(config, "cameras", None) or {}
    rows = [] if "sim0" in configured else [("sim0", SimCamera("sim0", {"index": 0}).info)]
    for alias, entry in configured.items():
        if entry.get("backend") == "sim":
            try:
                rows.append((alias, SimCamera(alias, entry).info))
            except CameraError:
                continue
    return rows


# ----------------------------------------------------------------------------------------------------
# Ground truth for a recording made with this backend
# ----------------------------------------------------------------------------------------------------

def recording_simulator(rec) -> DicingLaneSimulator:
    """The simulator that made the opened :class:`acquisition.raw.Recording` ``rec`` (from its manifest).
    ValueError naming the manifest if it was not made by a sim camera of this simulator version."""
    cam, settings = rec.manifest.get("camera", {}), rec.settings
    manifest = Path(rec.path) / "manifest.json"
    if cam.get("backend") != "sim":
        raise ValueError(f"{manifest}: not recorded from a sim camera (backend {cam.get('backend')!r})")
    try:
        _, opts = parse_sim_address(cam.get("address"))
    except ValueError as e:
        raise ValueError(f"{manifest}: {e}") from None
    depth = 8 if settings.get("pixel_format") == "Mono8" else opts["bit_depth"]
    cfg = SimConfig.from_dict({**opts, "width": int(settings["width"]), "height": int(settings["height"]), "bit_depth": depth,
                               "exposure": float(settings.get("exposure_us") or NOMINAL_EXPOSURE_US) / NOMINAL_EXPOSURE_US})
    return DicingLaneSimulator(cfg)


def write_recording_truth(run_path: str | os.PathLike, *, tolerance: float = 2.0, progress=None) -> dict:
    """Re-render every frame of a sim recording, check it matches, and write ``<run>/truth/``.

    A frame matches when fewer than 1 % of its pixels differ by more than ``tolerance`` levels
    (8-bit scale; re-rendering with another OpenCV build can change blurred values by a level).
    Returns counts. ValueError naming the file for a recording this cannot explain.
    """
    run_path = Path(run_path)
    rec = Recording.open(run_path)
    sim = recording_simulator(rec)
    scale = sim.config.max_value / 255.0
    labels, cleans, anomalies = [], {}, AnomalyLog()
    lane, t, last_id = None, 0, None
    for f in (progress(rec.frames) if progress else rec.frames):
        if f.file is None or f.frame_id is None:
            raise ValueError(f"{run_path / 'frames.jsonl'}: frame {f.index} has no pixels or frame id; "
                             "truth needs every rendered frame recorded (use the software trigger)")
        if last_id is not None and f.frame_id != last_id + 1:
            raise ValueError(f"{run_path / 'frames.jsonl'}: frame ids jump from {last_id} to {f.frame_id} at frame {f.index}; "
                             "truth needs every rendered frame recorded (use the software trigger)")
        last_id = f.frame_id
        if f.lane != lane:
            lane, t = f.lane, 0
        out = sim.render(f.lane, t, f.position_um)
        diff = np.abs(out.pixels.astype(np.int32) - rec.read(f).astype(np.int32))
        if np.mean(diff > tolerance * scale) > 0.01:
            raise ValueError(f"{run_path / f.file}: differs from the simulator's re-render (mean |diff| "
                             f"{diff.mean():.2f}); the run was not made by this simulator version/configuration")
        labels.append(label(f.index, out.fault))
        anomalies.add(f.index, out.anomalies)
        if out.clean is not None:
            cleans[f.index] = out.clean
        t += 1
    records = anomalies.records()
    write_truth(run_path, labels, cleans, sim.config, records if sim.config.anomaly_rate else None)
    return {"frames": len(labels), "faulty": len(cleans), "visible": sum(lb["visible"] for lb in labels),
            "anomalies": len(records)}


# ----------------------------------------------------------------------------------------------------
# Large corpora: the same camera, driven directly (no capture loop), one recording per block of lanes
# ----------------------------------------------------------------------------------------------------

def render_recording(out: str | os.PathLike, *, options: dict, settings: CaptureSettings, lanes: int,
                     positions: int = 10, step_um: float = 60.0) -> dict:
    """Write ``lanes`` lane passes (``positions`` frames each, software-triggered) of the sim camera with
    ``options`` as one raw recording at ``out``, with its ground truth. Pixels and manifest are what
    ``chdl capture`` with this camera and plan records; only the host timestamps (and a note) differ: they
    follow the camera's simulated clock (one frame per 1/fps from the moment rendering began), not the
    rendering, so a replay of the corpus (``chdl monitor --replay``) runs at the capture's frame rate."""
    # realtime off: rendered as fast as it goes (a trigger per frame would otherwise wait 1/fps); the host
    # timestamps below are the simulated clock's
    camera = SimCamera(options.get("alias", f"sim{int(options.get('index', 0))}"),
                       {**{k: v for k, v in options.items() if k != "alias"}, "realtime": False})
    stage = SimStage()
    positions_um = [i * step_um for i in range(positions)]
    labels, cleans, anomalies = [], {}, AnomalyLog()
    with camera:
        applied = camera.apply(settings)
        camera.attach_stage(stage)
        plan = {"lanes": lanes, "positions": positions, "step_um": step_um, "positions_um": positions_um,
                "trigger": "software"}
        manifest = {"camera": dataclasses.asdict(camera.info), "settings": dataclasses.asdict(applied), "plan": plan,
                    "notes": {"made_by": "chdl simulate corpus (sim camera driven directly, no capture loop)"}}
        camera.start("software")
        t0_wall, t0_mono, first_device_ns = time.time_ns(), time.monotonic_ns(), None
        with RecordingWriter.create(out, manifest) as writer:
            for lane in range(lanes):
                for p, x in enumerate(positions_um):
                    stage.move_to(lane, x)
                    camera.software_trigger()
                    frame = camera.fetch(1.0)
                    if first_device_ns is None:
                        first_device_ns = frame.device_timestamp_ns
                    since_ns = frame.device_timestamp_ns - first_device_ns            # the simulated capture clock
                    rec = writer.append(frame.pixels, lane=lane, position_index=p, position_um=float(x),
                                        frame_id=frame.frame_id, device_timestamp_ns=frame.device_timestamp_ns,
                                        host_wall_ns=t0_wall + since_ns, host_monotonic_ns=t0_mono + since_ns,
                                        pixel_format=applied.pixel_format)
                    labels.append(label(rec.index, camera.last.fault))
                    anomalies.add(rec.index, camera.last.anomalies)
                    if camera.last.clean is not None:
                        cleans[rec.index] = camera.last.clean
            records = anomalies.records()
            write_truth(out, labels, cleans, camera.config, records if camera.config.anomaly_rate else None)
        camera.stop()
    return {"frames": len(labels), "faulty": len(cleans), "anomalies": len(records)}
