"""GenTL cameras through ``harvesters`` (the default backend).

What this module handles that plain harvesters does not:
- a missing or invalid ``.cti`` is a :class:`CameraError` naming the file (harvesters only logs it);
- every fetch has a timeout (``TimeoutError``); any other GenTL failure during a fetch means the camera is
  gone and is a :class:`CameraError` ("lost"), so capture can close the run cleanly;
- pixels are copied out of the driver buffer before it is re-queued, row by row where the producer pads
  rows (GenTL's ``BUFFER_INFO_PADDING_X``: bytes after each row; harvesters' ``x_padding``, which its own
  ``data`` leaves in place); a payload that cannot hold Width x Height pixels is a :class:`CameraError`;
  unpacked Mono10/Mono12 are read with their bit depth, packed formats are refused by name;
- incomplete buffers (which harvesters re-queues silently) are counted in ``incomplete_buffers``;
- harvesters installs its own SIGINT handler (it destroys the acquirer and swallows Ctrl-C); we restore
  the previous handler so Ctrl-C reaches the capture loop, which stops and closes the device itself;
- settings are written through the node map with their ranges checked, then read back.

The harvesters logger is silenced: every failure it would log reaches the caller as an exception.
"""

from __future__ import annotations

import logging
import signal
import threading
import warnings

import numpy as np
from genicam.genapi import EAccessMode
from genicam.gentl import GenericException as GenTLError
from genicam.gentl import GenTLProducer, TimeoutException
from harvesters.core import Callback, Harvester, ImageAcquirer, ParameterKey, ParameterSet

from acquisition.backends.base import Camera, CameraError, CameraInfo, CaptureSettings, Frame
from acquisition.camera_config import KEYS, CameraConfig
from acquisition.raw import bits_for_max

logging.getLogger("harvesters.core").setLevel(logging.CRITICAL + 1)

# alias prefix -> GenTL transport layer type for the "n-th device of that transport" fallback
FALLBACK_TRANSPORTS = {"gige": "GEV", "gev": "GEV", "u3v": "U3V", "usb": "U3V", "cxp": "CXP", "cl": "CL",
                       "custom": "Custom"}
# unpacked monochrome formats: bytes per pixel and significant bits (little-endian, LSB-aligned, as PFNC says)
PIXEL_LAYOUTS = {"Mono8": (1, 8), "Mono10": (2, 10), "Mono12": (2, 12), "Mono16": (2, 16)}
PIXEL_FORMATS = tuple(PIXEL_LAYOUTS)
_EVENT_WAIT_MS = 50  # harvesters waits on the GenTL new-buffer event in slices of this (1 ms default = busy loop)


def _float_inc(node) -> float | None:
    """An IFloat node's increment, where it has one (GenApi's HasInc); None otherwise."""
    try:
        return float(node.inc) if node.has_inc() else None
    except Exception:  # noqa: BLE001 - genapi raises its own exception tree
        return None


class CameraWarning(UserWarning):
    """Something worth telling the user that does not stop the capture (e.g. an unpinned alias)."""


# the GenTL entry points (GenTL standard 1.5, section 6) a producer must export; checked before it is loaded here
GENTL_SYMBOLS = ("GCGetInfo", "GCInitLib", "GCCloseLib", "TLOpen", "TLClose", "TLUpdateInterfaceList",
                 "TLOpenInterface", "IFUpdateDeviceList", "IFOpenDevice", "DevOpenDataStream", "DSAnnounceBuffer",
                 "DSStartAcquisition", "EventGetData")
_PROBE = ("import ctypes, sys\n"
          "try:\n    lib = ctypes.CDLL(sys.argv[1])\n"
          "except OSError as e:\n    print(str(e).split(': ')[-1]); sys.exit(3)\n"
          "print(' '.join(s for s in sys.argv[2:] if not hasattr(lib, s)))\n")


def check_producer(path: str) -> None:
    """Open and close the producer once: CameraError naming the file if it is missing or not a GenTL producer.
    The library is first loaded in a child process (``python -I -S``, ~50 ms), which also checks that it exports
    the GenTL entry points: a truncated or foreign shared library loaded here killed chdl outright (SIGBUS,
    SIGSEGV) with no message."""
    import os
    import signal
    import subprocess
    import sys

    if not os.path.isfile(path):
        raise CameraError(f"{path}: GenTL producer (.cti) not found")
    try:
        probe = subprocess.run([sys.executable, "-I", "-S", "-c", _PROBE, path, *GENTL_SYMBOLS], capture_output=True,
                               text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise CameraError(f"{path}: not a valid GenTL producer (loading it did not finish in 60 s)") from None
    said = probe.stdout.strip()
    if probe.returncode < 0:
        raise CameraError(f"{path}: not a valid GenTL producer (loading it killed a test process with "
                          f"{signal.Signals(-probe.returncode).name}: a truncated or damaged file?)")
    if probe.returncode != 0:
        raise CameraError(f"{path}: not a valid GenTL producer ({said or probe.stderr.strip()[-200:]})")
    if said:
        missing = said.split()
        raise CameraError(f"{path}: not a GenTL producer (a shared library that does not export "
                          f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    producer = GenTLProducer.create_producer()
    try:
        producer.open(path)
    except GenTLError as e:
        detail = str(e).split("; ", 1)[-1].split(" (ID:")[0]
        raise CameraError(f"{path}: not a valid GenTL producer ({detail})") from None
    producer.close()


def _harvester(producers: list[str]) -> Harvester:
    if not producers:
        raise CameraError("no GenTL producer: set GENICAM_GENTL64_PATH, list .cti files under 'producers:' in the "
                          "camera config, or pass --cti PATH (--cti viky for the test producer); no hardware? "
                          "--camera sim0 is the simulated camera, and `chdl cameras` lists what is available")
    for p in producers:
        check_producer(p)
    h = Harvester()
    for p in producers:
        h.add_file(p)
    h.update()
    return h


def _info(d, producer: str | None) -> CameraInfo:
    p = d.property_dict
    return CameraInfo(vendor=p.get("vendor") or "", model=p.get("model") or "", serial=str(p.get("serial_number") or ""),
                      user_name=p.get("user_defined_name") or "", transport=p.get("tl_type") or "",
                      backend="gentl", producer=producer, address=_address(d))


def _address(d) -> str | None:
    """Best effort: a GigE Vision device's IP from its interface's node map (None when not available)."""
    try:
        nm = d.parent.node_map if hasattr(d.parent, "node_map") else None
        if nm is None:
            return None
        nm.DeviceSelector.value = d.property_dict["id_"]
        ip = int(nm.GevDeviceIPAddress.value)
        return ".".join(str((ip >> s) & 255) for s in (24, 16, 8, 0))
    except Exception:  # noqa: BLE001 - any failure just means "address unknown"
        return None


def _devices(h: Harvester, producers: list[str]) -> list[tuple[object, CameraInfo]]:
    """(harvesters DeviceInfo, CameraInfo) for every device, tagged with the producer that exposes it."""
    # harvesters opens producers in order; map each device back to its producer via its system's path
    out = []
    for d in h.device_info_list:
        producer = None
        try:
            producer = d.parent.parent.parent.path_name  # interface -> system -> producer
        except Exception:  # noqa: BLE001
            producer = producers[0] if len(producers) == 1 else None
        out.append((d, _info(d, producer)))
    return out


def _matches(info: CameraInfo, entry: dict) -> bool:
    for key, attr in zip(KEYS, ("serial", "user_name", "address")):
        if entry.get(key):
            return getattr(info, attr) == entry[key]
    return False


def _ranked(devices, transport: str) -> list:
    """The devices of one transport in fallback-alias order (``custom0``, ``custom1``, ...): by serial, then by
    producer path, then as discovered. One order for listing (``chdl cameras``) and opening: the same camera seen
    through two producers has the same serial twice, and its aliases were listed twice and opened otherwise."""
    of_kind = [(k, x) for k, x in enumerate(devices) if x[1].transport == transport]
    return [x for _, x in sorted(of_kind, key=lambda kx: (kx[1][1].serial, kx[1][1].producer or "", kx[0]))]


def _fallback(devices, transport: str, index: int):
    ranked = _ranked(devices, transport)
    return ranked[index] if index < len(ranked) else None


def _alias_for(device, devices, config: CameraConfig) -> str:
    """The alias ``chdl cameras`` lists for ``device`` (a ``(DeviceInfo, CameraInfo)`` of ``devices``)."""
    info = device[1]
    for alias, entry in config.cameras.items():
        if entry.get("backend", "gentl") == "gentl" and _matches(info, entry):
            return alias
    prefix = next((p for p, t in FALLBACK_TRANSPORTS.items() if t == info.transport), None)
    if prefix is None:
        return "-"
    return f"{prefix}{next(k for k, x in enumerate(_ranked(devices, info.transport)) if x is device)}"


def list_gentl_cameras(config: CameraConfig) -> list[tuple[str, CameraInfo]]:
    """(alias, info) for every device of every producer; [] when no producer is configured at all."""
    producers = config.producer_paths()
    if not producers:
        return []
    h = _harvester(producers)
    try:
        devices = _devices(h, producers)
        return [(_alias_for(device, devices, config), device[1]) for device in devices]
    finally:
        h.reset()


def open_gentl_camera(alias: str, options: dict, config: CameraConfig) -> "GenTLCamera":
    return GenTLCamera(alias, options, config)


class _IncompleteCounter(Callback):
    def __init__(self, camera: "GenTLCamera"):
        self.camera = camera

    def emit(self, context=None) -> None:
        self.camera.incomplete_buffers += 1


class GenTLCamera(Camera):
    """One GenTL device, selected by a camera-config entry or the n-th-device-of-a-transport fallback."""

    queues_frames = True  # a late frame waits in the driver's queue (acquisition.trigger)

    def __init__(self, alias: str, options: dict, config: CameraConfig):
        self.alias = alias
        self.options = options
        self.config = config
        self.info = CameraInfo("", "", "", "", "", "gentl")
        self.incomplete_buffers = 0  # buffers the producer delivered partially (re-queued, never returned)
        self._h: Harvester | None = None
        self._ia: ImageAcquirer | None = None
        self._acquiring = False
        self._lost: str | None = None  # set when the device vanished while a buffer was out

    # ----------------------------------------------------------------------------------- open / close
    def open(self) -> None:
        producers = [self.options["producer"]] if self.options.get("producer") else self.config.producer_paths()
        self._h = _harvester(producers)
        try:
            device, self.info = self._select(_devices(self._h, producers))
            previous = signal.getsignal(signal.SIGINT)
            try:
                self._ia = self._h.create(device, config=ParameterSet(
                    {ParameterKey.TIMEOUT_PERIOD_ON_UPDATE_EVENT_DATA_CALL: _EVENT_WAIT_MS}))
            finally:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGINT, previous)
        except GenTLError as e:
            self.close()
            raise CameraError(f"camera {self.alias!r}: cannot open ({e})") from None
        except BaseException:
            self.close()
            raise
        self._ia.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, _IncompleteCounter(self))

    def _select(self, devices):
        seen = "; ".join(f"{i.vendor} {i.model} serial {i.serial!r} ({i.transport})" for _, i in devices) or "none"
        if "fallback" in self.options:
            transport, index = self.options["fallback"], self.options["index"]
            found = _fallback(devices, transport, index)
            if found is None:
                raise CameraError(f"camera {self.alias!r}: no {transport} device number {index} "
                                  f"(devices seen: {seen})")
            warnings.warn(f"camera alias {self.alias!r} is not in the camera config ({self.config.source}); using "
                          f"{transport} device #{index} by serial order: {found[1].model} serial {found[1].serial}. "
                          "Pin it to a serial number in the camera config.", CameraWarning, stacklevel=3)
            return found
        key = next(f"{k}={self.options[k]!r}" for k in KEYS if self.options.get(k))
        found = [(d, info) for d, info in devices if _matches(info, self.options)]
        if len(found) > 1:  # (the first was opened, silently)
            where = "; ".join(f"{i.model} serial {i.serial!r} through {i.producer or '?'}" for _, i in found)
            raise CameraError(f"camera {self.alias!r} ({key}) matches {len(found)} devices ({where}): name one "
                              "producer in its entry ('producer: PATH') or pin it by another key")
        if not found:
            raise CameraError(f"camera {self.alias!r} ({key}) not found (devices seen: {seen})")
        return found[0]

    def close(self) -> None:
        if self._ia is not None:
            try:
                if self._acquiring:
                    self._ia.stop()
            except GenTLError:
                pass
            try:
                self._ia.destroy()
            except GenTLError:
                pass  # the device is already gone
            self._ia = None
        self._acquiring = False
        if self._h is not None:
            try:
                self._h.reset()
            except GenTLError:
                pass
            self._h = None

    # --------------------------------------------------------------------------------------- settings
    @property
    def _nm(self):
        if self._ia is None:
            raise CameraError(f"camera {self.alias!r} is not open")
        return self._ia.remote_device.node_map

    def _node(self, *names: str):
        for name in names:
            node = getattr(self._nm, name, None)
            if node is not None:
                return node
        return None

    def _set(self, node, value) -> None:
        name = node.node.name
        where = f"camera {self.alias!r} ({self.info.model} {self.info.serial})"
        kind = type(node).__name__
        if kind == "IEnumeration":
            valid = list(node.symbolics)
            if value not in valid:
                raise CameraError(f"{where}: {name}={value} refused; valid values: {', '.join(valid)}")
        elif kind in ("IInteger", "IFloat"):
            lo, hi = node.min, node.max
            step = getattr(node, "inc", None) if kind == "IInteger" else _float_inc(node)
            rng = f"{lo}..{hi}" + (f" in steps of {step}" if step and (kind == "IFloat" or step > 1) else "")
            # an IFloat with an increment (viky's AcquisitionFrameRate: 1.0) rounds a value between its steps
            # (7.3 became 7.0): refused, as the docs promise, never changed
            off_grid = step and abs((value - lo) / step - round((value - lo) / step)) > 1e-9
            if not lo <= value <= hi or off_grid:
                raise CameraError(f"{where}: {name}={value} refused; valid range {rng}")
        if node.get_access_mode() not in (EAccessMode.RW, EAccessMode.WO):
            raise CameraError(f"{where}: {name} is not writable now (access mode {node.get_access_mode()})")
        try:
            node.value = value
        except Exception as e:  # noqa: BLE001 - genapi raises its own exception tree
            raise CameraError(f"{where}: {name}={value} refused ({str(e).split(' : ')[0]})") from None

    def _exposure_us(self) -> float | None:
        """The exposure the camera reports (ExposureTime, µs), set by this capture or left by an earlier one; None
        where it has no readable one."""
        node = self._node("ExposureTime", "ExposureTimeAbs")
        if node is None or node.get_access_mode() not in (EAccessMode.RO, EAccessMode.RW):
            return None
        try:
            return float(node.value)
        except Exception:  # noqa: BLE001 - genapi raises its own exception tree
            return None

    def apply(self, settings: CaptureSettings) -> CaptureSettings:
        if settings.pixel_format not in PIXEL_FORMATS:
            raise CameraError(f"pixel format {settings.pixel_format!r} not supported (use {', '.join(PIXEL_FORMATS)})")
        need = lambda name, node: node if node is not None else _missing(self.alias, name)  # noqa: E731
        for offset in ("OffsetX", "OffsetY"):  # so that the full width/height range is available
            node = self._node(offset)
            if node is not None and node.get_access_mode() == EAccessMode.RW:
                node.value = node.min
        self._set(need("PixelFormat", self._node("PixelFormat")), settings.pixel_format)
        self._set(need("Width", self._node("Width")), int(settings.width))
        self._set(need("Height", self._node("Height")), int(settings.height))
        enable = self._node("AcquisitionFrameRateEnable")
        if enable is not None and enable.get_access_mode() == EAccessMode.RW:
            enable.value = True
        rate = need("AcquisitionFrameRate", self._node("AcquisitionFrameRate", "AcquisitionFrameRateAbs"))
        self._set(rate, float(settings.fps))
        if settings.exposure_us is not None:
            node = need("ExposureTime", self._node("ExposureTime", "ExposureTimeAbs"))
            auto = self._node("ExposureAuto")
            if auto is not None and auto.get_access_mode() == EAccessMode.RW:
                auto.value = "Off"
            self._set(node, float(settings.exposure_us))
        nm = self._nm
        fmt = str(nm.PixelFormat.value)
        return CaptureSettings(width=int(nm.Width.value), height=int(nm.Height.value), pixel_format=fmt,
                               fps=float(rate.value), exposure_us=self._exposure_us(), bit_depth=self._mono16_bits(fmt))

    def _mono16_bits(self, fmt: str) -> int | None:
        """Significant bits of Mono16 data from the camera's PixelDynamicRangeMax, where it has a readable
        one (None otherwise, and for the other formats, whose bits the format defines)."""
        node = self._node("PixelDynamicRangeMax") if fmt == "Mono16" else None
        if node is None or node.get_access_mode() not in (EAccessMode.RO, EAccessMode.RW):
            return None
        try:
            return bits_for_max(int(node.value))
        except Exception:  # noqa: BLE001 - a node that cannot be read, or a nonsense value: not known
            return None

    # -------------------------------------------------------------------------------------- streaming
    def trigger_modes(self) -> set[str]:
        modes = {"freerun"}
        source = self._node("TriggerSource")
        if self._node("TriggerMode") is None or source is None:
            return modes
        symbols = set(source.symbolics)
        if "Software" in symbols and self._node("TriggerSoftware") is not None:
            modes.add("software")
        if any(s.startswith("Line") for s in symbols):
            modes.add("line")
        return modes

    def start(self, trigger_mode: str) -> None:
        self._require_trigger_mode(trigger_mode, f"camera {self.alias!r}")
        mode = self._node("AcquisitionMode")
        if mode is not None and "Continuous" in mode.symbolics and mode.get_access_mode() == EAccessMode.RW:
            mode.value = "Continuous"
        if self._node("TriggerMode") is not None:
            selector = self._node("TriggerSelector")
            if selector is not None and "FrameStart" in selector.symbolics:
                selector.value = "FrameStart"
            if trigger_mode == "freerun":
                self._set(self._node("TriggerMode"), "Off")
            else:
                lines = sorted(s for s in self._node("TriggerSource").symbolics if s.startswith("Line"))
                source = "Software" if trigger_mode == "software" else self.options.get("trigger_line", lines[0])
                self._set(self._node("TriggerSource"), source)
                self._set(self._node("TriggerMode"), "On")
        try:
            self._ia.start()
        except GenTLError as e:
            raise CameraError(f"camera {self.alias!r}: cannot start acquisition ({e})") from None
        self._acquiring = True

    def stop(self) -> None:
        if self._ia is not None and self._acquiring:
            try:
                self._ia.stop()
            except GenTLError:
                pass
        self._acquiring = False

    def software_trigger(self) -> None:
        try:
            self._nm.TriggerSoftware.execute()
        except Exception as e:  # noqa: BLE001
            raise CameraError(f"camera {self.alias!r}: software trigger failed ({e})") from None

    def fetch(self, timeout_s: float) -> Frame:
        if self._ia is None:
            raise CameraError(f"camera {self.alias!r} is not open")
        if self._lost:
            raise CameraError(self._lost)
        try:
            buffer = self._ia.fetch(timeout=max(timeout_s, 1e-3))
        except TimeoutException:
            raise TimeoutError(f"camera {self.alias!r}: no frame within {timeout_s:.3f} s") from None
        except GenTLError as e:
            raise CameraError(f"camera {self.alias!r} lost: {str(e).split(' (ID:')[0]}") from None
        if buffer is None:  # harvesters discarded a buffer it could not parse
            self.incomplete_buffers += 1
            raise TimeoutError(f"camera {self.alias!r}: unusable buffer discarded")
        try:  # copy everything out of the driver's buffer, then hand it back
            try:  # harvesters slices and views the payload itself: a short or odd-sized one fails in there
                component = buffer.payload.components[0]
            except GenTLError:
                raise
            except Exception as e:  # noqa: BLE001 - numpy's ValueError from inside harvesters, or worse
                raise CameraError(f"camera {self.alias!r}: buffer cannot be read as an image ({type(e).__name__}: "
                                  f"{(str(e).splitlines() or [''])[0][:160]}); frame refused") from None
            pixels = decode_component(component, f"camera {self.alias!r}")
            frame_id = _optional(lambda: int(buffer.module.frame_id))
            stamp = _optional(lambda: int(buffer.module.timestamp_ns))
        except GenTLError as e:
            raise CameraError(f"camera {self.alias!r} lost: {str(e).split(' (ID:')[0]}") from None
        finally:
            try:
                buffer.queue()
            except GenTLError as e:  # gone between delivery and re-queue: keep this frame, fail the next fetch
                self._lost = f"camera {self.alias!r} lost: {str(e).split(' (ID:')[0]}"
        return Frame(pixels=pixels, frame_id=frame_id, device_timestamp_ns=stamp, incomplete=False)


def decode_component(component, where: str) -> np.ndarray:
    """A copy of a GenTL image component's pixels as a (height, width) uint8 (Mono8) or uint16 (Mono10,
    Mono12, Mono16) array. ``component`` is harvesters' Component2DImage (or anything with its ``width``,
    ``height``, ``x_padding``, ``data_format`` and ``data``). Rows padded with ``x_padding`` bytes are
    decoded (the last row's padding may be absent). CameraError, naming ``where``, for a format that is not
    unpacked Mono, a payload too short or too long for the size, or Mono10/12 values above their bit depth."""
    fmt = component.data_format
    if fmt not in PIXEL_LAYOUTS:
        if fmt.startswith("Mono") and (fmt.endswith("p") or "Packed" in fmt):
            raise CameraError(f"{where}: delivered packed {fmt}, which chdl does not decode; set the camera to an "
                              f"unpacked format ({', '.join(PIXEL_FORMATS)})")
        raise CameraError(f"{where}: delivered {fmt}, expected one of {', '.join(PIXEL_FORMATS)}")
    bpp, bits = PIXEL_LAYOUTS[fmt]
    width, height, padding = int(component.width), int(component.height), int(component.x_padding or 0)
    data = np.asarray(component.data)
    raw = data.reshape(-1).view(np.uint8) if data.flags.c_contiguous else np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    row, stride = width * bpp, width * bpp + padding
    shortest, longest = stride * (height - 1) + row, stride * height  # the last row's padding may be cut
    if width < 1 or height < 1 or padding < 0 or not shortest <= raw.size <= longest:
        pad = f" + {padding} padding bytes per row" if padding else ""
        raise CameraError(f"{where}: {fmt} buffer of {raw.size} bytes does not hold {width}x{height} pixels "
                          f"({bpp} byte(s) each{pad} = {longest} bytes); frame refused")
    rows = np.lib.stride_tricks.as_strided(raw, (height, row), (stride, 1))
    pixels = np.array(rows, copy=True)
    if bpp == 2:
        pixels = pixels.view("<u2").astype(np.uint16, copy=False)
        if bits < 16 and int(pixels.max()) >> bits:
            raise CameraError(f"{where}: {fmt} frame has values above {(1 << bits) - 1} (not {bits}-bit, "
                              "LSB-aligned data); frame refused")
    return pixels


def _optional(get):
    try:
        return get()
    except GenTLError:
        return None


def _missing(alias: str, feature: str):
    raise CameraError(f"camera {alias!r}: has no {feature} feature")
