"""The GenTL backend against the real viky producer shipped in the genicam wheel."""

import signal

import numpy as np
import pytest
from acq_helpers import square, viky_config

from acquisition.backends import list_cameras, open_camera
from acquisition.backends.base import CameraError, CaptureSettings
from acquisition.backends.gentl import CameraWarning, check_producer
from acquisition.camera_config import load_camera_config, viky_cti
from acquisition.trigger import FrameIdTracker


@pytest.fixture
def config(tmp_path):
    return load_camera_config(viky_config(tmp_path))


def test_enumeration_lists_viky_with_aliases(config):
    rows = [(alias, info) for alias, info in list_cameras(config) if info.backend == "gentl"]
    assert [(a, i.serial) for a, i in rows] == [("viky0", "0"), ("viky1", "1"), ("custom2", "2")]
    info = rows[0][1]
    assert (info.vendor, info.model, info.transport, info.producer) == ("Machine Vision Games Ltd.", "Viky", "Custom", viky_cti())


def test_alias_from_config_selects_by_serial(config):
    with open_camera("viky1", config) as cam:
        assert cam.info.serial == "1"


def test_fallback_alias_warns_and_picks_nth_by_serial(config):
    with pytest.warns(CameraWarning, match="not in the camera config"):
        cam = open_camera("custom2", config)
        cam.open()
    try:
        assert cam.info.serial == "2"
    finally:
        cam.close()


def test_fallback_without_such_device_names_what_was_seen(config):
    with pytest.raises(CameraError, match=r"no GEV device number 0 \(devices seen: .*Viky serial '0' \(Custom\)"):
        open_camera("gige0", config).open()


def test_unknown_serial(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("producers: [viky]\ncameras:\n  cam: {serial: '99'}\n")
    with pytest.raises(CameraError, match=r"camera 'cam' \(serial='99'\) not found"):
        open_camera("cam", load_camera_config(path)).open()


def test_settings_applied_and_read_back(config):
    with open_camera("viky0", config) as cam:
        got = cam.apply(CaptureSettings(640, 480, "Mono8", 40.0))
        assert got == CaptureSettings(640, 480, "Mono8", 40.0, None)
        nm = cam._ia.remote_device.node_map  # read the device itself, not our copy
        assert (nm.Width.value, nm.Height.value, nm.PixelFormat.value, nm.AcquisitionFrameRate.value) == (640, 480, "Mono8", 40.0)
        cam.start("freerun")
        frame = cam.fetch(2.0)
        assert frame.pixels.shape == (480, 640) and frame.pixels.dtype == np.uint8
        cam.stop()


@pytest.mark.parametrize("settings,message", [
    (CaptureSettings(1000, 600, "Mono8", 5.0), r"Width=1000 refused; valid range 100\.\.800"),
    (CaptureSettings(800, 50, "Mono8", 5.0), r"Height=50 refused; valid range 100\.\.800"),
    (CaptureSettings(800, 600, "Mono8", 500.0), r"AcquisitionFrameRate=500\.0 refused; valid range 1\.0\.\.200\.0"),
    (CaptureSettings(800, 600, "Mono16", 5.0), r"PixelFormat=Mono16 refused; valid values: RGBa8, Mono8"),
    (CaptureSettings(800, 600, "Mono8", 5.0, exposure_us=1000.0), r"has no ExposureTime feature"),
    (CaptureSettings(800, 600, "RGB8", 5.0), r"pixel format 'RGB8' not supported"),
])
def test_refused_setting_names_feature_and_range(config, settings, message):
    with open_camera("viky0", config) as cam:
        with pytest.raises(CameraError, match=message):
            cam.apply(settings)


def test_missing_and_invalid_cti_are_clear_errors(tmp_path):
    with pytest.raises(CameraError, match=rf"{tmp_path}/none.cti: GenTL producer \(.cti\) not found"):
        check_producer(str(tmp_path / "none.cti"))
    bad = tmp_path / "bad.cti"
    bad.write_text("not a shared library")
    with pytest.raises(CameraError, match=rf"{bad}: not a valid GenTL producer \(.*file too short"):
        check_producer(str(bad))
    config = load_camera_config(None, extra_producers=(str(bad),))
    with pytest.raises(CameraError, match="not a valid GenTL producer"):
        list_cameras(config)


def test_a_damaged_or_foreign_library_is_refused_without_loading_it(tmp_path):
    """A truncated producer killed chdl with SIGBUS, a shared library that is no producer with SIGSEGV (after 60
    lines of harvesters' complaints): no message, exit 135 / 139."""
    import glob
    import os

    import genicam
    import numpy

    viky = os.path.join(os.path.dirname(genicam.__file__), "viky.cti")
    cut = tmp_path / "cut.cti"
    cut.write_bytes(open(viky, "rb").read(100_000))
    with pytest.raises(CameraError, match=rf"{cut}: not a valid GenTL producer \(loading it killed a test process "
                                          r"with SIGBUS"):
        check_producer(str(cut))
    foreign = sorted(glob.glob(os.path.join(os.path.dirname(numpy.__file__), "**", "_multiarray_umath*.so"),
                               recursive=True))[0]  # a shared library every install has
    with pytest.raises(CameraError, match=r"not a GenTL producer \(a shared library that does not export GCGetInfo"):
        check_producer(foreign)


def test_sigint_handler_is_restored(config):
    before = signal.getsignal(signal.SIGINT)
    with open_camera("viky0", config):
        assert signal.getsignal(signal.SIGINT) is before  # harvesters would have swallowed Ctrl-C


def test_frames_are_copies_that_survive_requeue(config):
    with open_camera("viky0", config) as cam:
        cam.apply(CaptureSettings(200, 150, "Mono8", 100.0))
        cam.start("freerun")
        first = cam.fetch(2.0)
        kept = first.pixels.copy()
        later = [cam.fetch(2.0) for _ in range(8)]  # the driver re-fills the same 3 buffers meanwhile
        cam.stop()
    assert first.pixels.flags.owndata and np.array_equal(first.pixels, kept)
    assert square(later[-1].pixels) != square(first.pixels)  # the square moved: buffers really were reused
    ids = [first.frame_id] + [f.frame_id for f in later]
    assert ids == sorted(set(ids))  # increasing (consecutive unless this busy machine starved the fetch loop)
    assert first.device_timestamp_ns is None  # viky has no device timestamps
    assert cam.incomplete_buffers == 0


def test_drops_are_detected_from_frame_id_gaps(config):
    tracker = FrameIdTracker()
    import time

    with open_camera("viky0", config) as cam:
        cam.apply(CaptureSettings(200, 150, "Mono8", 200.0))
        cam.start("freerun")
        ids = [cam.fetch(2.0).frame_id for _ in range(3)]
        time.sleep(0.3)  # 60 frames are produced, only the driver's few buffers can hold them
        ids += [cam.fetch(2.0).frame_id for _ in range(12)]
        cam.stop()
    gaps = [tracker.observe(i) for i in ids]
    assert sum(gaps) == ids[-1] - ids[0] - (len(ids) - 1) > 0


def test_camera_lost_is_a_camera_error(config):
    with open_camera("viky0", config) as cam:
        cam.apply(CaptureSettings(200, 150, "Mono8", 100.0))
        cam.start("freerun")
        cam.fetch(2.0)
        cam._ia.device.module.close()  # the device disappears under us (as when unplugged)
        with pytest.raises(CameraError, match="camera 'viky0' lost"):
            cam.fetch(1.0)
    assert cam._ia is None  # closed without raising


def test_fetch_timeout_raises_timeout_error(config):
    with open_camera("viky0", config) as cam:
        cam.apply(CaptureSettings(200, 150, "Mono8", 1.0))
        cam.start("freerun")
        cam.fetch(3.0)
        with pytest.raises(TimeoutError, match="no frame within"):
            cam.fetch(0.1)
        cam.stop()


class _StandInNode:
    """A GenApi node viky does not have (PixelDynamicRangeMax; a fractional-step IFloat), with what the backend
    reads of one: value, access mode, and for a number its range and increment."""

    def __init__(self, name, value, access=None, lo=None, hi=None, inc=None):
        from genicam.genapi import EAccessMode

        self.node = type("Node", (), {"name": name})()
        self._value, self.access = value, EAccessMode.RO if access is None else access
        self.min, self.max, self.inc = lo, hi, inc

    def get_access_mode(self):
        return self.access

    def has_inc(self):
        return self.inc is not None

    @property
    def value(self):
        if isinstance(self._value, Exception):
            raise self._value
        return self._value

    @value.setter
    def value(self, v):
        self._value = v


def test_mono16_significant_bits_come_from_pixel_dynamic_range_max(config, monkeypatch):
    """A Mono16 camera's PixelDynamicRangeMax gives the significant bits (4095 -> 12); unreadable, not readable now,
    a nonsense value or no such node -> None (unknown); other formats -> None (their format defines them). viky has
    no such node: a stand-in answers for it, the rest of the node map is viky's."""
    from genicam.genapi import EAccessMode

    with open_camera("viky0", config) as cam:
        real, stand_in = cam._node, {}
        monkeypatch.setattr(cam, "_node", lambda *names: stand_in.get(names, real(*names)))
        assert cam._mono16_bits("Mono16") is None  # no such node (viky's own node map)
        for value, bits in ((4095, 12), (1023, 10), (65535, 16), (4096, 13)):
            stand_in[("PixelDynamicRangeMax",)] = _StandInNode("PixelDynamicRangeMax", value)
            assert cam._mono16_bits("Mono16") == bits
            assert cam._mono16_bits("Mono8") is None and cam._mono16_bits("Mono12") is None
        stand_in[("PixelDynamicRangeMax",)] = _StandInNode("PixelDynamicRangeMax", 4095, EAccessMode.RW)
        assert cam._mono16_bits("Mono16") == 12
        for node in (_StandInNode("PixelDynamicRangeMax", 4095, EAccessMode.NA),
                     _StandInNode("PixelDynamicRangeMax", RuntimeError("cannot read")),
                     _StandInNode("PixelDynamicRangeMax", 0), _StandInNode("PixelDynamicRangeMax", -1)):
            stand_in[("PixelDynamicRangeMax",)] = node
            assert cam._mono16_bits("Mono16") is None


def test_a_float_setting_between_the_steps_of_its_increment_is_refused_not_rounded(config):
    """An IFloat with an increment rounds a value between its steps: such a value is refused, naming the grid, and a
    value on the grid is written. viky's AcquisitionFrameRate (1.0..200.0 in steps of 1.0): 6.7 (below the step
    as well as 7.3 above it) refused, 7.0 applied. The grid starts at the feature's minimum and is judged with
    float tolerance: a stand-in IFloat 0.25..10.0 in steps of 0.1 takes 0.35 and 0.95, refuses 0.3."""
    with open_camera("viky0", config) as cam:
        for fps in (6.7, 7.3):
            with pytest.raises(CameraError, match=rf"AcquisitionFrameRate={fps} refused; valid range 1\.0\.\.200\.0 "
                                                  r"in steps of 1\.0"):
                cam.apply(CaptureSettings(640, 480, "Mono8", fps))
        assert cam.apply(CaptureSettings(640, 480, "Mono8", 7.0)).fps == 7.0
        assert cam._ia.remote_device.node_map.AcquisitionFrameRate.value == 7.0
        from genicam.genapi import EAccessMode

        IFloat = type("IFloat", (_StandInNode,), {})  # the backend tells node kinds by their class name
        node = IFloat("Gain", 1.0, EAccessMode.RW, lo=0.25, hi=10.0, inc=0.1)
        for on_grid in (0.35, 0.95, 10.0 - 0.05):
            cam._set(node, on_grid)
            assert node.value == on_grid
        with pytest.raises(CameraError, match=r"Gain=0\.3 refused; valid range 0\.25\.\.10\.0 in steps of 0\.1"):
            cam._set(node, 0.3)
        assert node.value == 9.95
