"""GigE Vision cameras through the Aravis C library (optional backend, ``backend: aravis`` in the camera config).

Aravis talks GigE Vision itself (no GenTL producer needed). It is loaded with ``ctypes`` from the system
library ``libaravis-0.8`` (Debian/Ubuntu: ``apt install libaravis-0.8-0``; ``aravis-tools`` adds the
``arv-fake-gv-camera-0.8`` test camera), so it adds no Python dependency and costs nothing unless used.

Camera config entry::

    cameras:
      gev-arv: {backend: aravis, address: 192.168.10.21}   # or: serial: <DeviceID>, or the Aravis device id

The camera is opened by its address / id (``arv_camera_new``). Aravis resolves names through GigE Vision
discovery, which broadcasts on every interface; this backend deliberately has no ``chdl cameras``
lister so that nothing is broadcast unless a capture asks for an Aravis camera. Its tests run the fake
camera on 127.0.0.1 inside a private network namespace (``unshare -rn``) and skip otherwise.

Behaviour matches the GenTL backend: fetch timeout -> ``TimeoutError``; a device that stops answering
-> ``CameraError`` "lost"; pixels copied before the buffer is pushed back; a buffer that arrives with
missing packets (after Aravis' packet resends) is counted in ``incomplete_buffers`` and discarded; settings checked against the feature's
bounds, written, read back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from ctypes import POINTER, byref, c_char_p, c_double, c_int, c_int64, c_size_t, c_uint, c_uint32, c_uint64, c_void_p

import numpy as np

from acquisition.backends.base import Camera, CameraError, CameraInfo, CaptureSettings, Frame
from acquisition.raw import bits_for_max

PIXEL_FORMATS = {"Mono8": (0x01080001, np.uint8), "Mono16": (0x01100007, np.uint16)}
BUFFER_STATUS_SUCCESS = 0
N_BUFFERS = 8


class _GError(ctypes.Structure):
    _fields_ = [("domain", c_uint32), ("code", c_int), ("message", c_char_p)]


_lib = None


def _aravis():
    """The loaded library with argument/return types declared; CameraError if Aravis is not installed."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("aravis-0.8") or "libaravis-0.8.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise CameraError("the aravis backend needs the Aravis library (libaravis-0.8; Debian/Ubuntu: "
                          "apt install libaravis-0.8-0)") from None
    E = POINTER(POINTER(_GError))  # noqa: N806
    sig = {
        "arv_camera_new": (c_void_p, [c_char_p, E]),
        "arv_camera_get_vendor_name": (c_char_p, [c_void_p, E]),
        "arv_camera_get_model_name": (c_char_p, [c_void_p, E]),
        "arv_camera_get_device_id": (c_char_p, [c_void_p, E]),
        "arv_camera_is_feature_available": (c_int, [c_void_p, c_char_p, E]),
        "arv_camera_set_integer": (None, [c_void_p, c_char_p, c_int64, E]),
        "arv_camera_get_integer": (c_int64, [c_void_p, c_char_p, E]),
        "arv_camera_get_integer_bounds": (None, [c_void_p, c_char_p, POINTER(c_int64), POINTER(c_int64), E]),
        "arv_camera_get_integer_increment": (c_int64, [c_void_p, c_char_p, E]),
        "arv_camera_set_float": (None, [c_void_p, c_char_p, c_double, E]),
        "arv_camera_get_float": (c_double, [c_void_p, c_char_p, E]),
        "arv_camera_get_float_bounds": (None, [c_void_p, c_char_p, POINTER(c_double), POINTER(c_double), E]),
        "arv_camera_set_string": (None, [c_void_p, c_char_p, c_char_p, E]),
        "arv_camera_get_string": (c_char_p, [c_void_p, c_char_p, E]),
        "arv_camera_dup_available_enumerations_as_strings": (POINTER(c_char_p), [c_void_p, c_char_p, POINTER(c_uint), E]),
        "arv_camera_execute_command": (None, [c_void_p, c_char_p, E]),
        "arv_camera_get_payload": (c_uint, [c_void_p, E]),
        "arv_camera_create_stream": (c_void_p, [c_void_p, c_void_p, c_void_p, E]),
        "arv_camera_start_acquisition": (None, [c_void_p, E]),
        "arv_camera_stop_acquisition": (None, [c_void_p, E]),
        "arv_buffer_new": (c_void_p, [c_size_t, c_void_p]),
        "arv_stream_push_buffer": (None, [c_void_p, c_void_p]),
        "arv_stream_timeout_pop_buffer": (c_void_p, [c_void_p, c_uint64]),
        "arv_buffer_get_status": (c_int, [c_void_p]),
        "arv_buffer_get_data": (c_void_p, [c_void_p, POINTER(c_size_t)]),
        "arv_buffer_get_image_width": (c_int, [c_void_p]),
        "arv_buffer_get_image_height": (c_int, [c_void_p]),
        "arv_buffer_get_image_pixel_format": (c_uint32, [c_void_p]),
        "arv_buffer_get_frame_id": (c_uint64, [c_void_p]),
        "arv_buffer_get_timestamp": (c_uint64, [c_void_p]),
        "g_object_unref": (None, [c_void_p]),
        "g_error_free": (None, [POINTER(_GError)]),
        "g_free": (None, [c_void_p]),
    }
    for fn, (restype, argtypes) in sig.items():
        f = getattr(lib, fn)
        f.restype, f.argtypes = restype, argtypes
    _lib = lib
    return lib


def _call(fn: str, *args):
    """Call an Aravis function that takes a trailing ``GError **``; a set error becomes CameraError."""
    err = POINTER(_GError)()
    result = getattr(_aravis(), fn)(*args, byref(err))
    if err:
        message = err.contents.message.decode(errors="replace") if err.contents.message else "unknown error"
        _aravis().g_error_free(err)
        raise CameraError(message)
    return result


def open_aravis_camera(alias: str, options: dict, config=None) -> "AravisCamera":
    name = options.get("address") or options.get("serial") or options.get("user_name")
    if not name:
        raise CameraError(f"camera {alias!r}: an aravis camera needs 'address' (or 'serial') in the camera config")
    return AravisCamera(alias, str(name), options)


class AravisCamera(Camera):
    queues_frames = True  # a late frame waits in the driver's queue (acquisition.trigger)

    def __init__(self, alias: str, name: str, options: dict):
        self.alias, self.name, self.options = alias, name, options
        self.info = CameraInfo("", "", "", "", "GEV", "aravis", address=name)
        self.incomplete_buffers = 0  # buffers that arrived with missing packets (discarded, counted)
        self._discarded: list[int] = []  # their ids since the last frame returned (passed on with it: not drops)
        self._cam = self._stream = None
        self._acquiring = False
        self._trigger_mode = None
        self._lost = False  # the device stopped answering: do not send it any more commands (each would time out)

    def _where(self) -> str:
        return f"camera {self.alias!r} ({self.info.model} {self.info.serial})"

    # ----------------------------------------------------------------------------------- open / close
    def open(self) -> None:
        b = self.name.encode()
        try:
            self._cam = _call("arv_camera_new", b)
        except CameraError as e:
            raise CameraError(f"camera {self.alias!r} ({self.name}): cannot open ({e})") from None
        if not self._cam:
            raise CameraError(f"camera {self.alias!r} ({self.name}) not found")
        text = lambda fn: (_call(fn, self._cam) or b"").decode(errors="replace")  # noqa: E731
        self.info = CameraInfo(vendor=text("arv_camera_get_vendor_name"), model=text("arv_camera_get_model_name"),
                               serial=text("arv_camera_get_device_id"), user_name="", transport="GEV",
                               backend="aravis", producer=None, address=self.name)

    def close(self) -> None:
        self.stop()
        lib = _aravis() if (self._stream or self._cam) else None
        if self._stream:
            lib.g_object_unref(self._stream)
            self._stream = None
        if self._cam:
            lib.g_object_unref(self._cam)
            self._cam = None

    # --------------------------------------------------------------------------------------- features
    def _has(self, feature: str) -> bool:
        try:
            return bool(_call("arv_camera_is_feature_available", self._cam, feature.encode()))
        except CameraError:
            return False

    def _enum_values(self, feature: str) -> list[str]:
        n = c_uint()
        arr = _call("arv_camera_dup_available_enumerations_as_strings", self._cam, feature.encode(), byref(n))
        values = [arr[i].decode() for i in range(n.value)] if arr else []
        if arr:
            _aravis().g_free(ctypes.cast(arr, c_void_p))
        return values

    def _set(self, feature: str, value) -> None:
        f = feature.encode()
        if isinstance(value, str):
            valid = self._enum_values(feature)
            if value not in valid:
                raise CameraError(f"{self._where()}: {feature}={value} refused; valid values: {', '.join(valid)}")
            setter = ("arv_camera_set_string", value.encode())
        elif isinstance(value, int):
            lo, hi = c_int64(), c_int64()
            _call("arv_camera_get_integer_bounds", self._cam, f, byref(lo), byref(hi))
            step = _call("arv_camera_get_integer_increment", self._cam, f)
            if not lo.value <= value <= hi.value or (step > 1 and (value - lo.value) % step):
                rng = f"{lo.value}..{hi.value}" + (f" in steps of {step}" if step > 1 else "")
                raise CameraError(f"{self._where()}: {feature}={value} refused; valid range {rng}")
            setter = ("arv_camera_set_integer", value)
        else:
            lo, hi = c_double(), c_double()
            _call("arv_camera_get_float_bounds", self._cam, f, byref(lo), byref(hi))
            if not lo.value <= value <= hi.value:
                raise CameraError(f"{self._where()}: {feature}={value} refused; valid range {lo.value:g}..{hi.value:g}")
            setter = ("arv_camera_set_float", float(value))
        try:
            _call(setter[0], self._cam, f, setter[1])
        except CameraError as e:
            raise CameraError(f"{self._where()}: {feature}={value} refused ({e})") from None

    def _feature(self, *names: str) -> str:
        for name in names:
            if self._has(name):
                return name
        raise CameraError(f"camera {self.alias!r}: has no {names[0]} feature")

    def apply(self, settings: CaptureSettings) -> CaptureSettings:
        if settings.pixel_format not in PIXEL_FORMATS:
            raise CameraError(f"pixel format {settings.pixel_format!r} not supported (use Mono8 or Mono16)")
        for offset in ("OffsetX", "OffsetY"):
            if self._has(offset):
                self._set(offset, 0)
        self._set(self._feature("PixelFormat"), settings.pixel_format)
        self._set(self._feature("Width"), int(settings.width))
        self._set(self._feature("Height"), int(settings.height))
        rate = self._feature("AcquisitionFrameRate", "AcquisitionFrameRateAbs")
        self._set(rate, float(settings.fps))
        if settings.exposure_us is not None:
            self._set(self._feature("ExposureTime", "ExposureTimeAbs"), float(settings.exposure_us))
        # the exposure as the camera reports it, set now or left by an earlier capture (recorded either way: a run
        # that left 1000 us behind made the next one's frames black with nothing in its manifest to say why)
        feature = next((f for f in ("ExposureTime", "ExposureTimeAbs") if self._has(f)), None)
        exposure = float(_call("arv_camera_get_float", self._cam, feature.encode())) if feature else None
        get_int = lambda n: int(_call("arv_camera_get_integer", self._cam, n))  # noqa: E731
        fmt = _call("arv_camera_get_string", self._cam, b"PixelFormat").decode()
        # Mono16: the significant bits from PixelDynamicRangeMax where the camera has it (docs/raw-format.md)
        top = get_int(b"PixelDynamicRangeMax") if fmt == "Mono16" and self._has("PixelDynamicRangeMax") else 0
        bits = bits_for_max(top) if top >= 1 else None
        return CaptureSettings(width=get_int(b"Width"), height=get_int(b"Height"), pixel_format=fmt,
                               fps=float(_call("arv_camera_get_float", self._cam, rate.encode())), exposure_us=exposure,
                               bit_depth=bits)

    # -------------------------------------------------------------------------------------- streaming
    def trigger_modes(self) -> set[str]:
        modes = {"freerun"}
        if self._has("TriggerMode") and self._has("TriggerSource"):
            sources = self._enum_values("TriggerSource")
            if "Software" in sources and self._has("TriggerSoftware"):
                modes.add("software")
            if any(s.startswith("Line") for s in sources):
                modes.add("line")
        return modes

    def start(self, trigger_mode: str) -> None:
        self._require_trigger_mode(trigger_mode, f"camera {self.alias!r}")
        if self._has("AcquisitionMode"):
            self._set("AcquisitionMode", "Continuous")
        if self._has("TriggerMode"):
            if self._has("TriggerSelector") and "FrameStart" in self._enum_values("TriggerSelector"):
                self._set("TriggerSelector", "FrameStart")
            if trigger_mode == "freerun":
                self._set("TriggerMode", "Off")
            else:
                lines = sorted(s for s in self._enum_values("TriggerSource") if s.startswith("Line"))
                self._set("TriggerSource", "Software" if trigger_mode == "software" else self.options.get("trigger_line", lines[0]))
                self._set("TriggerMode", "On")
        lib = _aravis()
        self._stream = _call("arv_camera_create_stream", self._cam, None, None)
        if not self._stream:
            raise CameraError(f"camera {self.alias!r}: cannot create a stream")
        payload = _call("arv_camera_get_payload", self._cam)
        for _ in range(N_BUFFERS):
            lib.arv_stream_push_buffer(self._stream, lib.arv_buffer_new(payload, None))
        _call("arv_camera_start_acquisition", self._cam)
        self._acquiring = True
        self._trigger_mode = trigger_mode

    def stop(self) -> None:
        if self._acquiring and self._cam and not self._lost:
            try:
                _call("arv_camera_stop_acquisition", self._cam)
            except CameraError:
                pass  # gone already
        self._acquiring = False

    def software_trigger(self) -> None:
        try:
            _call("arv_camera_execute_command", self._cam, b"TriggerSoftware")
        except CameraError as e:
            self._lost = True
            raise CameraError(f"camera {self.alias!r}: software trigger failed ({e})") from None

    def _discard(self, buffer) -> None:
        """Count an incomplete buffer (it goes back to Aravis unread) and keep its id (the GVSP leader's, where it
        came) for the next frame, so it is not counted as a drop as well. Under a software trigger no other frame
        comes without a new trigger: TimeoutError at once, so the capture triggers again."""
        self.incomplete_buffers += 1
        if frame_id := int(_aravis().arv_buffer_get_frame_id(buffer)):
            self._discarded.append(frame_id)
        if self._trigger_mode == "software":
            raise TimeoutError(f"camera {self.alias!r}: the triggered frame came incomplete (discarded)")

    def fetch(self, timeout_s: float) -> Frame:
        if not self._stream:
            raise CameraError(f"camera {self.alias!r} is not acquiring")
        if self._lost:
            raise CameraError(f"camera {self.alias!r} lost (stopped answering)")
        lib = _aravis()
        deadline = time.monotonic() + max(timeout_s, 1e-3)
        while True:
            remaining = deadline - time.monotonic()
            buffer = lib.arv_stream_timeout_pop_buffer(self._stream, int(max(remaining, 1e-3) * 1e6)) if remaining > 0 else None
            if not buffer:
                try:  # no frame: is the camera still there?
                    _call("arv_camera_get_integer", self._cam, b"Width")
                except CameraError as e:
                    self._lost = True
                    raise CameraError(f"camera {self.alias!r} lost: {e}") from None
                raise TimeoutError(f"camera {self.alias!r}: no frame within {timeout_s:.3f} s")
            try:
                if lib.arv_buffer_get_status(buffer) != BUFFER_STATUS_SUCCESS:
                    # missing packets / aborted: its image header may be absent too, so the pixels cannot be
                    # trusted or even sized. Counted and discarded, as harvesters does for GenTL.
                    self._discard(buffer)
                    continue
                size = c_size_t()
                data = lib.arv_buffer_get_data(buffer, byref(size))
                w, h = lib.arv_buffer_get_image_width(buffer), lib.arv_buffer_get_image_height(buffer)
                fmt = lib.arv_buffer_get_image_pixel_format(buffer)
                dtype = next((d for code, d in PIXEL_FORMATS.values() if code == fmt), None)
                if dtype is None:
                    raise CameraError(f"camera {self.alias!r}: delivered pixel format 0x{fmt:08x}, expected Mono8/Mono16")
                n = w * h * np.dtype(dtype).itemsize
                if not data or size.value < n:
                    self._discard(buffer)
                    continue
                pixels = np.frombuffer(ctypes.string_at(data, n), dtype=dtype).reshape(h, w).copy()
                frame_id = int(lib.arv_buffer_get_frame_id(buffer))
                stamp = int(lib.arv_buffer_get_timestamp(buffer)) or None
            finally:
                lib.arv_stream_push_buffer(self._stream, buffer)  # back to Aravis only after the copy
            discarded, self._discarded = tuple(self._discarded), []
            return Frame(pixels=pixels, frame_id=frame_id, device_timestamp_ns=stamp, incomplete=False,
                         discarded_ids=discarded)
