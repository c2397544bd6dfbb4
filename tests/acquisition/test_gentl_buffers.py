"""Decoding GenTL image buffers: padded rows, impossible payloads, unpacked Mono10/Mono12, packed and colour
formats. viky (the real producer) delivers only unpadded Mono8 and RGBa8, so padded and short payloads use a
stand-in for harvesters' Component2DImage with the same attributes (width, height, x_padding, data_format,
data: a 1-D array over the payload bytes, padding left in place as harvesters leaves it)."""

from types import SimpleNamespace

import numpy as np
import pytest
from acq_helpers import viky_config

from acquisition.backends import open_camera
from acquisition.backends.base import CameraError, CaptureSettings
from acquisition.backends.gentl import decode_component
from acquisition.camera_config import load_camera_config


def _component(pixels: np.ndarray, fmt: str, padding: int = 0, cut: int = 0, last_row_padded: bool = True):
    """The payload a producer would deliver: each row's little-endian bytes followed by ``padding`` bytes
    of junk (0xEE), the last row's padding left off unless ``last_row_padded``, then ``cut`` bytes removed."""
    h, w = pixels.shape
    rows = pixels.astype(pixels.dtype.newbyteorder("<")).view(np.uint8).reshape(h, -1)
    payload = np.concatenate([rows, np.full((h, padding), 0xEE, np.uint8)], axis=1).reshape(-1)
    if not last_row_padded:
        payload = payload[:payload.size - padding]
    payload = payload[:payload.size - cut]
    data = payload if pixels.dtype == np.uint8 or payload.size % 2 else payload.view("<u2")
    return SimpleNamespace(width=w, height=h, x_padding=padding, data_format=fmt, data=data)


RNG = np.random.default_rng(0)


@pytest.mark.parametrize("fmt,dtype,top", [("Mono8", np.uint8, 255), ("Mono10", np.uint16, 1023),
                                           ("Mono12", np.uint16, 4095), ("Mono16", np.uint16, 65535)])
@pytest.mark.parametrize("padding,last_row_padded", [(0, True), (6, True), (6, False)])
def test_padded_rows_are_decoded(fmt, dtype, top, padding, last_row_padded):
    pixels = RNG.integers(0, top + 1, (5, 7)).astype(dtype)
    comp = _component(pixels, fmt, padding, last_row_padded=last_row_padded)
    got = decode_component(comp, "camera 'x'")
    assert got.dtype == dtype and got.shape == (5, 7) and not np.shares_memory(got, comp.data)  # a copy
    np.testing.assert_array_equal(got, pixels)


@pytest.mark.parametrize("kw,needle", [
    ({"cut": 1}, "Mono8 buffer of 56 bytes does not hold 7x6 pixels (1 byte(s) each + 3 padding bytes per row = 60 bytes)"),
    ({"cut": 20}, "does not hold 7x6 pixels"),
])
def test_short_payloads_are_refused(kw, needle):
    comp = _component(np.zeros((6, 7), np.uint8), "Mono8", padding=3, last_row_padded=False, **kw)
    with pytest.raises(CameraError) as e:
        decode_component(comp, "camera 'x'")
    assert str(e.value).startswith("camera 'x': ") and needle in str(e.value) and str(e.value).endswith("frame refused")


def test_too_long_or_zero_sized_payloads_are_refused():
    comp = _component(np.zeros((6, 7), np.uint8), "Mono8")
    comp.height = 5  # a header that disagrees with the payload
    with pytest.raises(CameraError, match="Mono8 buffer of 42 bytes does not hold 7x5 pixels"):
        decode_component(comp, "camera 'x'")
    comp.height = 0
    with pytest.raises(CameraError, match="does not hold 7x0 pixels"):
        decode_component(comp, "camera 'x'")


@pytest.mark.parametrize("fmt,needle", [
    ("Mono12p", "delivered packed Mono12p, which chdl does not decode; set the camera to an unpacked format"),
    ("Mono10Packed", "delivered packed Mono10Packed"),
    ("RGB8", "delivered RGB8, expected one of Mono8, Mono10, Mono12, Mono16"),
])
def test_packed_and_colour_formats_are_refused_by_name(fmt, needle):
    with pytest.raises(CameraError, match=needle):
        decode_component(_component(np.zeros((4, 4), np.uint8), fmt), "camera 'x'")


def test_mono12_values_above_12_bits_are_refused():
    pixels = np.full((4, 4), 4095, np.uint16)
    pixels[2, 3] = 4096  # MSB-aligned data, or another format mislabelled
    with pytest.raises(CameraError, match="Mono12 frame has values above 4095"):
        decode_component(_component(pixels, "Mono12"), "camera 'x'")


def test_viky_frames_go_through_the_decoder_and_rgba_is_refused(tmp_path):
    """The real producer: Mono8 frames decode; switched to RGBa8 behind chdl's back, the fetch is a
    one-line CameraError instead of a reshape traceback, and the camera closes cleanly."""
    config = load_camera_config(viky_config(tmp_path))
    with open_camera("viky0", config) as cam:
        cam.apply(CaptureSettings(200, 150, "Mono8", 100.0))
        cam.start("freerun")
        frame = cam.fetch(2.0)
        assert frame.pixels.shape == (150, 200) and frame.pixels.dtype == np.uint8
        cam.stop()
        cam._nm.PixelFormat.value = "RGBa8"
        cam.start("freerun")
        with pytest.raises(CameraError, match="camera 'viky0': delivered RGBa8, expected one of Mono8"):
            cam.fetch(2.0)
        cam.stop()


class _Buffer:
    """A stand-in for harvesters' Buffer as GenTLCamera.fetch uses it."""

    def __init__(self, component=None, error=None):
        self._component, self._error, self.queued = component, error, False
        self.module = SimpleNamespace(frame_id=7, timestamp_ns=123)

    @property
    def payload(self):
        if self._error:
            raise self._error  # what harvesters raises building a component from a short payload
        return SimpleNamespace(components=[self._component])

    def queue(self):
        self.queued = True


def _camera_delivering(buffer):
    from acquisition.backends.gentl import GenTLCamera

    cam = GenTLCamera("x", {}, config=None)
    cam._ia = SimpleNamespace(fetch=lambda timeout: buffer)
    return cam


def test_fetch_decodes_padded_buffers_and_requeues_every_buffer():
    pixels = RNG.integers(0, 4096, (6, 9)).astype(np.uint16)
    buf = _Buffer(_component(pixels, "Mono12", padding=14))
    frame = _camera_delivering(buf).fetch(1.0)
    np.testing.assert_array_equal(frame.pixels, pixels)
    assert frame.frame_id == 7 and frame.device_timestamp_ns == 123 and buf.queued
    buf = _Buffer(error=ValueError("buffer is smaller than requested size"))
    with pytest.raises(CameraError, match=r"camera 'x': buffer cannot be read as an image \(ValueError: buffer is "
                                          r"smaller than requested size\); frame refused"):
        _camera_delivering(buf).fetch(1.0)
    assert buf.queued
    buf = _Buffer(_component(np.zeros((6, 9), np.uint8), "Mono8", cut=5))
    with pytest.raises(CameraError, match="does not hold 9x6 pixels"):
        _camera_delivering(buf).fetch(1.0)
    assert buf.queued
