"""The capture loop (in process) against viky and the simulator: content, drops, lost cameras, full disks."""

import errno
import time

import numpy as np
import pytest
from acq_helpers import square, viky_config

from acquisition.backends import open_camera
from acquisition.backends.base import Camera, CameraInfo, CaptureSettings, Frame
from acquisition.capture import CapturePlan, run_capture
from acquisition.camera_config import load_camera_config
from acquisition.raw import Recording
from acquisition.stage import SimulatedStage

FAST = CaptureSettings(320, 240, "Mono8", 100.0)


@pytest.fixture
def config(tmp_path):
    return load_camera_config(viky_config(tmp_path))


class Spy:
    """Wraps a real camera and keeps a copy of every frame it delivers (the witness for the test)."""

    def __init__(self, camera):
        self.camera, self.delivered = camera, {}

    def __getattr__(self, name):
        return getattr(self.camera, name)

    def __enter__(self):
        self.camera.open()
        return self

    def __exit__(self, *exc):
        self.camera.close()

    def fetch(self, timeout_s):
        frame = self.camera.fetch(timeout_s)
        self.delivered[frame.frame_id] = frame.pixels.copy()
        return frame


def test_capture_records_the_frames_the_camera_sent(config, tmp_path):
    spy = Spy(open_camera("viky0", config))
    progress = []
    plan = CapturePlan.evenly(lanes=2, positions=5, step_um=250.0)
    result = run_capture(spy, SimulatedStage(), tmp_path / "run", FAST, plan, on_frame=lambda r, p: progress.append(p))
    assert result.status == "complete" and result.stopped_by is None and result.frames == 10
    rec = Recording.open(tmp_path / "run")
    assert rec.complete and rec.manifest["plan"]["trigger"] == "freerun" and rec.manifest["camera"]["serial"] == "0"
    assert rec.manifest["settings"] == {"width": 320, "height": 240, "pixel_format": "Mono8", "fps": 100.0, "exposure_us": None,
                                       "bit_depth": 8}
    assert [(f.lane, f.position_index, f.position_um) for f in rec.frames] == [(l, p, 250.0 * p) for l in range(2) for p in range(5)]
    ids = [f.frame_id for f in rec.frames]
    assert ids == sorted(ids) and len(set(ids)) == 10
    for f in rec.frames:
        assert f.status == "ok"
        assert np.array_equal(rec.read(f), spy.delivered[f.frame_id])  # byte for byte what viky sent
    for prev, f in zip(rec.frames, rec.frames[1:]):  # drops = id gap minus the frames delivered but skipped
        skipped = sum(prev.frame_id < i < f.frame_id for i in spy.delivered)
        assert f.dropped_before == f.frame_id - prev.frame_id - 1 - skipped
    assert len({square(rec.read(f)) for f in rec.frames}) > 1  # viky's square moves: real, distinct frames
    assert [p.done for p in progress] == list(range(1, 11)) and progress[-1].lane == 1


def test_simulator_camera_uses_software_trigger(tmp_path):
    pytest.importorskip("acquisition.backends.sim")
    config = load_camera_config(None)
    plan = CapturePlan.evenly(lanes=1, positions=3, step_um=100.0)
    result = run_capture(open_camera("sim0", config), SimulatedStage(), tmp_path / "sim",
                         CaptureSettings(64, 48, "Mono16", 50.0), plan)
    rec = Recording.open(tmp_path / "sim")
    assert result.trigger == "software" and rec.complete and len(rec) == 3
    assert rec.read(rec.frames[0]).dtype == np.uint16


def test_camera_lost_mid_run_keeps_frames(config, tmp_path):
    cam = open_camera("viky0", config)

    def unplug_after_three(record, progress):
        if record.index == 2:
            cam._ia.device.module.close()  # the camera disappears (cable pulled)

    plan = CapturePlan.evenly(lanes=5, positions=10, step_um=100.0)
    result = run_capture(cam, SimulatedStage(), tmp_path / "run", FAST, plan, on_frame=unplug_after_three)
    assert result.stopped_by == "camera lost" and result.status == "incomplete"
    assert "camera 'viky0' lost" in result.message and "recording kept" in result.message
    rec = Recording.open(tmp_path / "run")
    assert not rec.complete and rec.manifest["status"] == "incomplete"
    assert rec.manifest["notes"]["stopped_by"] == "camera lost"
    ok = [f for f in rec.frames if f.status == "ok"]
    assert len(ok) >= 3 and all(rec.read(f).shape == (240, 320) for f in ok)
    assert cam._ia is None and cam._h is None  # device and producer released


def test_silent_camera_ends_as_lost_after_consecutive_timeouts(config, tmp_path):
    cam = open_camera("viky0", config)
    cam.fetch = lambda timeout_s: (_ for _ in ()).throw(TimeoutError("nothing"))  # delivers nothing at all
    plan = CapturePlan.evenly(lanes=1, positions=10, step_um=100.0, frame_timeout_s=0.05, max_consecutive_timeouts=2)
    result = run_capture(cam, SimulatedStage(), tmp_path / "run", FAST, plan)
    rec = Recording.open(tmp_path / "run")
    # nothing since the start: most often a camera still held by a capture stopped just now (said so; it read as a
    # camera that died mid-run)
    assert result.stopped_by == "camera lost" and "no frame for the first 2 positions" in result.message
    assert "a capture stopped just now may still hold the camera" in result.message
    assert [f.status for f in rec.frames] == ["dropped", "dropped"] and [f.file for f in rec.frames] == [None, None]
    # silent after frames came: the plain message
    cam = open_camera("viky0", config)
    real, calls = cam.fetch, []

    def fetch(timeout_s):
        calls.append(1)
        if len(calls) > 2:
            raise TimeoutError("nothing")
        return real(timeout_s)

    cam.fetch = fetch
    result = run_capture(cam, SimulatedStage(), tmp_path / "run2", FAST, plan)
    assert "no frame for 2 positions in a row" in result.message and "first" not in result.message


def test_a_run_shorter_than_the_timeout_limit_without_a_frame_is_a_lost_camera(config, tmp_path):
    """Fewer positions than max_consecutive_timeouts, none with a frame: a lost camera, not "complete, 0 frames"."""
    cam = open_camera("viky0", config)
    cam.fetch = lambda timeout_s: (_ for _ in ()).throw(TimeoutError("nothing"))
    plan = CapturePlan.evenly(lanes=1, positions=2, step_um=100.0, frame_timeout_s=0.05, max_consecutive_timeouts=3)
    result = run_capture(cam, SimulatedStage(), tmp_path / "short", FAST, plan)
    assert result.stopped_by == "camera lost" and "no frame at any of the 2 positions" in result.message
    assert result.status == "incomplete" and not Recording.open(tmp_path / "short").complete


def test_disk_full_stops_with_clear_error_and_readable_recording(config, tmp_path, monkeypatch):
    """ENOSPC from the frame writer (simulated here; the real-tmpfs test is in test_capture_cli.py)."""
    import acquisition.raw as raw

    from acquisition import files

    real = files.write_bytes
    writes = {"n": 0}

    def filling_disk(path, data, durable=False):
        writes["n"] += 1
        if writes["n"] > 4 and path.suffix == ".png":
            files.temporary_path(path).write_bytes(data[: len(data) // 2])  # half a frame, as a full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, durable=durable)

    monkeypatch.setattr(raw.files, "write_bytes", filling_disk)
    plan = CapturePlan.evenly(lanes=3, positions=10, step_um=100.0)
    result = run_capture(open_camera("viky0", config), SimulatedStage(), tmp_path / "run", FAST, plan)
    assert result.stopped_by == "disk full" and "disk full (No space left on device)" in result.message
    rec = Recording.open(tmp_path / "run")
    assert not rec.complete and rec.manifest["notes"]["stopped_by"] == "disk full"
    assert len(rec) >= 3 and all(rec.read(f).shape == (240, 320) for f in rec.frames)
    assert not list((tmp_path / "run" / "frames").glob(".*.tmp*"))  # the half-written frame was removed


def test_the_recorded_bit_depth_rule():
    """--bit-depth overrides; else what the camera reports (Mono16: PixelDynamicRangeMax); else the format's bits;
    a Mono16 camera that cannot tell is recorded as unknown, with a warning."""
    import warnings

    from acquisition.backends.base import CameraError, CaptureSettings
    from acquisition.capture import record_bit_depth

    s = lambda fmt, bits=None: CaptureSettings(64, 48, fmt, 5.0, bit_depth=bits)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert record_bit_depth(s("Mono16", 12), None).bit_depth == 12  # the camera's PixelDynamicRangeMax
        assert record_bit_depth(s("Mono16", 12), 10).bit_depth == 10  # --bit-depth overrides it
        assert record_bit_depth(s("Mono12"), None).bit_depth == 12
        assert record_bit_depth(s("Mono8"), None).bit_depth == 8
    with pytest.warns(UserWarning, match="does not say how many of the 16 bits .* --bit-depth N"):
        assert record_bit_depth(s("Mono16"), None).bit_depth is None
    with pytest.warns(UserWarning, match="reports 13 significant bits, which Mono12 cannot hold"):
        assert record_bit_depth(s("Mono12", 13), None).bit_depth == 12
    with pytest.raises(CameraError, match=r"--bit-depth 9 refused: bit depth must be an integer in \[1, 8\] for Mono8"):
        record_bit_depth(s("Mono8"), 9)


def test_ctrl_c_while_the_camera_hangs_is_an_interruption(config, tmp_path):
    """Ctrl-C while a stalled GigE camera's software trigger timed out was recorded as 'camera lost', exit 1: the
    user stopped the run, so it is 'interrupted' (exit 130), the camera's failure named in the message."""
    import os
    import signal

    from acquisition.backends.base import CameraError

    camera = open_camera("sim0", config)  # (viky has no software trigger)
    trigger, calls = camera.software_trigger, {"n": 0}

    def hanging_trigger():
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while the trigger hangs ...
            raise CameraError("camera 'sim0': software trigger failed (write_register timeout)")  # ... then it fails
        trigger()

    camera.software_trigger = hanging_trigger
    result = run_capture(camera, SimulatedStage(), tmp_path / "run", FAST, CapturePlan.evenly(lanes=1, positions=10,
                                                                                              step_um=100.0))
    assert result.stopped_by == "interrupted", result.message
    assert result.message.startswith("interrupted; the camera did not answer (camera 'sim0': software trigger failed")
    assert Recording.open(tmp_path / "run").manifest["notes"]["stopped_by"] == "interrupted"


class _TestCamera(Camera):
    """What the fake cameras below share: nothing to open, close or stop, settings applied as given, and the
    trigger modes in ``MODES``."""

    MODES: set[str] = set()

    def open(self):
        pass

    def close(self):
        pass

    def apply(self, settings):
        return settings

    def trigger_modes(self):
        return self.MODES

    def start(self, trigger_mode):
        self._require_trigger_mode(trigger_mode, self.info.model)

    def stop(self):
        pass


class _ScriptedCamera(_TestCamera):
    """A software-triggered camera implementing the backend interface whose outcome at each stage position the test
    chooses (``outcome(position_index)``, the stage at 100 um a position): "ok" (the trigger's frame), "silent"
    (nothing: the fetch times out) or "incomplete" (the backend received the frame with packets missing and
    discarded it, counting it in ``incomplete_buffers``, as Aravis does). Deterministic: no clock, no thread."""

    MODES = {"software"}

    def __init__(self, outcome):
        self.outcome = outcome
        self.info = CameraInfo("test", "Scripted", "0", "", "Custom", "test")
        self.incomplete_buffers, self.triggers, self.stage, self.pending = 0, 0, None, False

    def attach_stage(self, stage):
        self.stage = stage

    def software_trigger(self):
        self.triggers, self.pending = self.triggers + 1, True

    def fetch(self, timeout_s):
        what = self.outcome(round(self.stage.position_um / 100.0))
        if not self.pending or what == "silent":
            raise TimeoutError("nothing")
        self.pending = False
        if what == "incomplete":
            self.incomplete_buffers += 1
            time.sleep(0.002)  # (re-triggered until the position's timeout: not a busy loop)
            raise TimeoutError("incomplete buffer discarded")
        return Frame(np.full((4, 4), self.triggers, np.uint8), self.triggers, None)


SMALL = CaptureSettings(4, 4, "Mono8", 100.0)


def test_scattered_dropped_positions_are_not_a_lost_camera(tmp_path):
    """``max_consecutive_timeouts`` counts positions *in a row* without a frame: a frame resets the count, so one
    position in two dropped (never two in a row) with a limit of 2 records every position and completes."""
    cam = _ScriptedCamera(lambda p: "silent" if p in (1, 3, 5) else "ok")
    plan = CapturePlan.evenly(lanes=1, positions=7, step_um=100.0, frame_timeout_s=0.05, max_consecutive_timeouts=2)
    result = run_capture(cam, SimulatedStage(), tmp_path / "run", SMALL, plan)
    assert (result.status, result.stopped_by, result.dropped_positions) == ("complete", None, 3), result.message
    assert [f.status for f in Recording.open(tmp_path / "run").frames] == ["ok", "dropped"] * 3 + ["ok"]


def test_incomplete_buffers_before_a_run_of_timeouts_do_not_blame_the_link(tmp_path):
    """The "camera lost" message blames missing packets only when buffers came incomplete *during* the run of
    timeouts that ended the capture (counted from its first timeout), not at an earlier, isolated position."""
    lost = lambda outcome: run_capture(  # noqa: E731
        _ScriptedCamera(outcome), SimulatedStage(), tmp_path / f"run{len(list(tmp_path.iterdir()))}", SMALL,
        CapturePlan.evenly(lanes=1, positions=6, step_um=100.0, frame_timeout_s=0.05, max_consecutive_timeouts=2))
    result = lost(lambda p: "incomplete" if p == 1 else "silent" if p in (3, 4) else "ok")
    assert result.stopped_by == "camera lost" and result.frames == 5 and result.incomplete > 0
    assert "no frame for 2 positions in a row" in result.message and "buffers came incomplete" not in result.message
    result = lost(lambda p: "incomplete" if p in (3, 4) else "ok")
    assert result.stopped_by == "camera lost" and result.frames == 5
    assert "no complete frame for 2 positions in a row" in result.message
    assert "buffers came incomplete" in result.message


class _EncoderCamera(_TestCamera):
    """A camera whose trigger line the stage's encoder fires: a frame comes only when :meth:`fire` is called (viky has
    no line trigger). :meth:`fire` returns once the capture's grabber thread has received, stamped and queued the
    frame (it has asked for the next one), so the frame's arrival is ordered against the stage deterministically."""

    MODES = {"line", "freerun"}

    def __init__(self):
        import queue
        import threading

        self.info = CameraInfo("test", "Encoder", "0", "", "Custom", "test")
        self._frames, self._cond = queue.Queue(), threading.Condition()
        self.delivered = self.asked_after = 0  # frames fetched; frames fetched before the latest fetch began

    def fire(self):
        n = self.delivered + 1
        self._frames.put(Frame(np.full((4, 4), n, np.uint8), n, None))
        with self._cond:
            assert self._cond.wait_for(lambda: self.asked_after >= n, timeout=10), "the grabber never took the frame"

    def fetch(self, timeout_s):
        import queue

        with self._cond:
            self.asked_after = self.delivered
            self._cond.notify_all()
        try:
            frame = self._frames.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError("no trigger") from None
        with self._cond:
            self.delivered += 1
        return frame


class _EncoderStage(SimulatedStage):
    """The encoder fires the camera's line as the stage arrives at the position, before it reports settled: during
    ``move_to`` (a driver whose move returns on arrival) or at the start of ``wait_settled``."""

    def __init__(self, camera, arrives_in):
        super().__init__()
        self.camera, self.arrives_in = camera, arrives_in

    def move_to(self, lane, position_um):
        super().move_to(lane, position_um)
        if self.arrives_in == "move_to":
            self.camera.fire()

    def wait_settled(self, timeout_s):
        if self.arrives_in == "wait_settled":
            self.camera.fire()
        time.sleep(0.002)  # the vibration dies down after the arrival: settled strictly after the frame came
        super().wait_settled(timeout_s)


@pytest.mark.parametrize("arrives_in", ["move_to", "wait_settled"])
def test_a_line_triggered_frame_that_comes_before_the_stage_settled_is_the_positions_frame(tmp_path, arrives_in):
    """With a line trigger the position's frame is the first to arrive after the move was *commanded* (the encoder
    fires on arrival, before the stage says it settled); in free-run a frame that came before the stage settled was
    taken while the view still moved, and is skipped."""
    plan = lambda trigger: CapturePlan.evenly(lanes=2, positions=3, step_um=100.0, trigger=trigger,  # noqa: E731
                                              frame_timeout_s=0.05, max_consecutive_timeouts=6)
    cam = _EncoderCamera()
    result = run_capture(cam, _EncoderStage(cam, arrives_in), tmp_path / "line", SMALL, plan("line"))
    assert (result.status, result.trigger, result.dropped_positions, result.skipped) == ("complete", "line", 0, 0)
    rec = Recording.open(tmp_path / "line")
    assert [f.frame_id for f in rec.frames] == [1, 2, 3, 4, 5, 6]  # each position's own frame
    assert [int(rec.read(f)[0, 0]) for f in rec.frames] == [1, 2, 3, 4, 5, 6]
    cam = _EncoderCamera()
    result = run_capture(cam, _EncoderStage(cam, arrives_in), tmp_path / "freerun", SMALL, plan("freerun"))
    assert result.trigger == "freerun" and result.skipped == 6 and result.dropped_positions == 6


@pytest.mark.parametrize("pace", [True, False])
def test_a_paced_replay_releases_each_frame_at_its_recorded_time(tmp_path, monkeypatch, pace):
    """A paced replay releases each frame when it arrived in the original run, relative to the first frame (the
    recorded ``host_monotonic_ns``, irregular here), whatever the capture's own pace; ``pace=False``
    (``--as-fast-as-possible``) waits for nothing. The replay's clock is the test's and only its sleeps move it, so
    the waits are asserted exactly, not timed."""
    import types

    import acquisition.backends.replay as replay
    from acquisition.raw import RecordingWriter

    offsets_s = [0.0, 0.2, 0.5, 0.55, 0.95]
    positions = [100.0 * i for i in range(len(offsets_s))]
    manifest = {"camera": {"vendor": "test"},
                "settings": {"width": 4, "height": 4, "pixel_format": "Mono8", "fps": 5.0},
                "plan": {"lanes": 1, "positions": len(positions), "positions_um": positions}}
    with RecordingWriter.create(tmp_path / "src", manifest) as w:
        for i, t in enumerate(offsets_s):
            w.append(np.full((4, 4), 10 + i, np.uint8), lane=0, position_index=i, position_um=positions[i],
                     frame_id=i + 1, device_timestamp_ns=None, host_wall_ns=1_700_000_000 * 10**9 + int(t * 1e9),
                     host_monotonic_ns=7 * 10**9 + int(t * 1e9))
    now, slept = [1000.0], []

    def sleep(s):
        slept.append(s)
        now[0] += s

    monkeypatch.setattr(replay, "time", types.SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    result = run_capture(replay.ReplayCamera(tmp_path / "src", pace=pace), SimulatedStage(), tmp_path / "out",
                         CaptureSettings(4, 4, "Mono8", 5.0), CapturePlan(lanes=1, positions_um=positions))
    assert result.status == "complete" and result.frames == len(offsets_s), result.message
    assert slept == (pytest.approx(np.diff(offsets_s).tolist()) if pace else [])
    out = Recording.open(tmp_path / "out")
    assert [int(out.read(f)[0, 0]) for f in out.frames] == [10, 11, 12, 13, 14]
