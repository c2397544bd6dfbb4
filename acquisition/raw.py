"""The raw recording format (``chdl.raw/1``): one folder per capture run. Defined here, and only here.

Layout (documented for readers without the toolkit in ``docs/raw-format.md``)::

    <run>/manifest.json        run identity, camera, applied settings, lane/position plan, status
    <run>/frames.jsonl         one JSON object per frame, appended in capture order
    <run>/frames/NNNNNN.png    the pixels: lossless PNG, 8-bit for Mono8, 16-bit for Mono10/Mono12/Mono16

Crash safety: a frame's PNG is written to a temporary name and renamed into place *before* its line is
appended to ``frames.jsonl`` and flushed, so every line names a complete file. A ``kill -9`` can at worst
leave a torn last line, which the reader skips. ``manifest.json`` is rewritten atomically; its ``status``
is ``"recording"`` until the writer closes, so a run that never closed reads as incomplete.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import json
import math
import os
import socket
import time
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from acquisition import files, png
from acquisition.format_versions import newer_format

RAW_SCHEMA = "chdl.raw/1"
MANIFEST = "manifest.json"
FRAMES_INDEX = "frames.jsonl"
FRAMES_DIR = "frames"
# Mono10/Mono12: unpacked, values in the low 10/12 bits of 16-bit pixels
PIXEL_DTYPES = {"Mono8": np.uint8, "Mono10": np.uint16, "Mono12": np.uint16, "Mono16": np.uint16}
FORMAT_BITS = {"Mono8": 8, "Mono10": 10, "Mono12": 12, "Mono16": 16}  # the bits each pixel format can hold
PIXEL_MAX = {fmt: (1 << bits) - 1 for fmt, bits in FORMAT_BITS.items()}  # the largest value of each format
STATUSES = ("ok", "incomplete", "dropped")
RUN_STATUSES = ("recording", "complete", "incomplete")


class RawFormatError(ValueError):
    """A recording that cannot be read as ``chdl.raw/1``. The message names the file and the problem."""


@dataclasses.dataclass
class FrameRecord:
    """Per-frame metadata: one line of ``frames.jsonl``."""

    index: int  # position of this frame in the recording, 0-based, gap-free
    lane: int  # lane pass this frame belongs to, 0-based
    position_index: int  # index into the plan's positions, 0-based
    position_um: float  # stage position along the lane, micrometres
    frame_id: int | None  # the device's frame counter (None if the backend has none)
    device_timestamp_ns: int | None  # device timestamp (None when the camera provides none)
    host_wall_ns: int  # time.time_ns() when the host received the frame
    host_monotonic_ns: int  # time.monotonic_ns() when the host received the frame
    status: str  # "ok" | "incomplete" (buffer delivered partially) | "dropped" (no pixels)
    dropped_before: int  # frames the device produced but the host never received, just before this one
    file: str | None  # relative path of the PNG, None for a dropped frame
    width: int
    height: int
    pixel_format: str  # "Mono8" | "Mono10" | "Mono12" | "Mono16" (PIXEL_DTYPES)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), allow_nan=False)


_FIELDS = {f.name for f in dataclasses.fields(FrameRecord)}
_I31, _I63, _U64 = (0, 2**31 - 1), (-2**63, 2**63 - 1), (0, 2**64 - 1)  # JSON integers have no size limit
# field -> (kind, (minimum, maximum) for integers): the one definition of what a frame record may hold
# (see validate_record). Lanes and positions index arrays (int32 in the dataset); device counters are uint64.
_FIELD_KINDS: dict[str, tuple[str, tuple[int, int] | None]] = {
    "index": ("int", _I31), "lane": ("int", _I31), "position_index": ("int", _I31), "position_um": ("number", None),
    "frame_id": ("int?", _U64), "device_timestamp_ns": ("int?", _U64), "host_wall_ns": ("int", _I63),
    "host_monotonic_ns": ("int", _I63), "status": ("str", None), "dropped_before": ("int", (0, 2**63 - 1)),
    "file": ("str?", None), "width": ("int", _I31), "height": ("int", _I31), "pixel_format": ("str", None),
}
assert set(_FIELD_KINDS) == _FIELDS


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _describe(v: Any) -> str:
    return "NaN" if isinstance(v, float) and math.isnan(v) else f"{type(v).__name__} {v!r}"[:80]


def check_plain_name(name: Any, what: str = "run id") -> str | None:
    """Why ``name`` is not usable as a single folder name (None if it is): run ids name folders, so
    they may not be empty, ``.``/``..``, or contain a path separator or a control character."""
    if not isinstance(name, str) or not name:
        return f"{what} must be a non-empty string, not {_describe(name)}"
    if name in (".", "..") or "/" in name or "\\" in name or any(ord(c) < 32 for c in name):
        return f"{what} {name!r} is not a plain folder name (no '/', '\\', '..' or control characters)"
    return None


def check_relative_file(file: str) -> str | None:
    """Why a record's ``file`` could lead outside its run folder (None if it cannot, lexically):
    it must be a relative path without ``..``. Symlinks are checked when the file is used."""
    parts = PurePosixPath(file).parts
    if not file or file.startswith("/") or "\\" in file or "\x00" in file or ".." in parts or not parts:
        return f"file {file!r} points outside the run folder (a frame file is a relative path inside the run, without '..')"
    return None


def validate_record(obj: Any) -> str | None:
    """Why ``obj`` (one parsed line of ``frames.jsonl``) is not a valid frame record, naming the field;
    None if it is. Numbers must be finite, integers must be integers (not strings, floats or booleans)."""
    if not isinstance(obj, dict):
        return f"malformed frame record (expected a JSON object, got {type(obj).__name__})"
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        return f"malformed frame record (unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))})"
    missing = sorted(_FIELDS - set(obj))
    if missing:
        return f"malformed frame record (missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))})"
    for name, (kind, bounds) in _FIELD_KINDS.items():
        v = obj[name]
        if kind.endswith("?") and v is None:
            continue
        base = kind.rstrip("?")
        if base == "int" and not _is_int(v):
            return f"field {name!r} must be an integer, not {_describe(v)}"
        if base == "number" and not _is_number(v):
            return f"field {name!r} must be a finite number, not {_describe(v)}"
        if base == "str" and not isinstance(v, str):
            return f"field {name!r} must be a string, not {_describe(v)}"
        if bounds is not None and not bounds[0] <= v <= bounds[1]:
            return f"field {name!r} must be in [{bounds[0]}, {bounds[1]}], not {v}"
    if obj["status"] not in STATUSES:
        return f"unknown frame status {obj['status']!r} (field 'status'; known: {', '.join(STATUSES)})"
    if obj["file"] is not None:
        return check_relative_file(obj["file"])
    return None


def _check_number(obj: dict, key: str, where: str, *, minimum: float | None = None, integer: bool = False,
                  optional: bool = True) -> str | None:
    if key not in obj or (optional and obj[key] is None):
        return None
    v = obj[key]
    if integer and not _is_int(v):
        return f"{where}{key} must be an integer, not {_describe(v)}"
    if not _is_number(v):
        return f"{where}{key} must be a finite number, not {_describe(v)}"
    if minimum is not None and v < minimum:
        return f"{where}{key} must be >= {minimum}, not {v}"
    if integer and v > _I63[1]:
        return f"{where}{key} must be < 2**63, not {v}"
    return None


CAMERA_TEXT_KEYS = ("vendor", "model", "serial", "user_name", "transport")  # manifest "camera" strings


def validate_manifest(manifest: Any) -> str | None:
    """Why a parsed ``manifest.json`` is malformed, naming the key (None if it is fine). Checks the
    schema, status, run id (a plain folder name), and the type and range of every number the toolkit
    reads from ``settings`` and ``plan``; the keys it does not read are free."""
    if not isinstance(manifest, dict):
        return "malformed manifest (expected a JSON object)"
    if newer := newer_format("recording of schema", manifest.get("schema"), RAW_SCHEMA):
        return newer
    if manifest.get("schema") != RAW_SCHEMA:
        return f"unsupported schema {manifest.get('schema')!r} (expected {RAW_SCHEMA!r})"
    if manifest.get("status") not in RUN_STATUSES:
        return f"malformed manifest (status {manifest.get('status')!r}; expected one of {', '.join(RUN_STATUSES)})"
    if "run_id" in manifest and (why := check_plain_name(manifest["run_id"])):
        return f"malformed manifest (run_id: {why})"
    why = _check_number(manifest, "frames", "", minimum=0, integer=True)
    for section, checks in (("settings", (("width", 1, True), ("height", 1, True), ("fps", 0, False),
                                          ("exposure_us", 0, False))),
                            ("plan", (("lanes", 1, True), ("step_um", None, False)))):
        if why:
            break
        block = manifest.get(section)
        if block is None:
            continue
        if not isinstance(block, dict):
            return f"malformed manifest ({section} must be an object, not {_describe(block)})"
        for key, minimum, integer in checks:
            if why := _check_number(block, key, f"{section}.", minimum=minimum, integer=integer):
                break
    if why:
        return f"malformed manifest ({why})"
    camera = manifest.get("camera")
    if camera is not None and not isinstance(camera, dict):
        return f"malformed manifest (camera must be an object, not {_describe(camera)})"
    for key in CAMERA_TEXT_KEYS:  # what a replay copies into the recordings it makes
        if camera and camera.get(key) is not None and not isinstance(camera[key], str):
            return f"malformed manifest (camera.{key} must be a string, not {_describe(camera[key])})"
    settings = manifest.get("settings") or {}
    if "pixel_format" in settings and not isinstance(settings["pixel_format"], str):
        return f"malformed manifest (settings.pixel_format must be a string, not {_describe(settings['pixel_format'])})"
    if "pixel_format" in settings and settings["pixel_format"] not in PIXEL_DTYPES:  # (a replay of one crashed)
        return (f"malformed manifest (unsupported settings.pixel_format {settings['pixel_format']!r}; supported: "
                f"{', '.join(PIXEL_DTYPES)})")
    if settings.get("bit_depth") is not None and (why := check_bit_depth(settings.get("pixel_format"), settings["bit_depth"])):
        return f"malformed manifest (settings.{why.replace('bit depth', 'bit_depth', 1)})"
    plan = manifest.get("plan") or {}
    positions, um = plan.get("positions"), plan.get("positions_um")
    if positions is not None and not (isinstance(positions, list) or (_is_int(positions) and 1 <= positions <= _I31[1])):
        return f"malformed manifest (plan.positions must be a list or an integer in [1, {_I31[1]}], not {_describe(positions)})"
    if um is not None:
        if not isinstance(um, list):
            return f"malformed manifest (plan.positions_um must be a list, not {_describe(um)})"
        bad = next((i for i, x in enumerate(um) if not _is_number(x)), None)
        if bad is not None:
            return f"malformed manifest (plan.positions_um[{bad}] must be a finite number, not {_describe(um[bad])})"
        n = len(positions) if isinstance(positions, list) else positions
        if n is not None and n != len(um):
            return f"malformed manifest (plan.positions says {n} positions but plan.positions_um lists {len(um)})"
    return None


def bits_for_max(max_value: int) -> int:
    """Significant bits of data whose largest value is ``max_value`` (GenICam ``PixelDynamicRangeMax``):
    ceil(log2(max_value + 1)), e.g. 4095 -> 12, 1000 -> 10. ValueError for a value below 1."""
    if not _is_int(max_value) or max_value < 1:
        raise ValueError(f"a dynamic range maximum must be an integer >= 1, not {_describe(max_value)}")
    return int(max_value).bit_length()


def check_bit_depth(pixel_format: str, bits: Any) -> str | None:
    """Why ``bits`` cannot be the significant bits of ``pixel_format`` data (None if it can): an integer
    from 1 to the bits the format holds (8 for Mono8, 16 for Mono16)."""
    top = FORMAT_BITS.get(pixel_format, 16)
    if not _is_int(bits) or not 1 <= bits <= top:
        what = f"{pixel_format} pixels" if pixel_format in FORMAT_BITS else "16-bit pixels"
        return f"bit depth must be an integer in [1, {top}] for {what}, not {_describe(bits)}"
    return None


def run_bit_depth(manifest: dict) -> int | None:
    """The significant bits of a run's pixel values: ``settings.bit_depth`` where recorded, else the bits of
    its pixel format where the format defines them (Mono8/Mono10/Mono12); None for a Mono16 run that does
    not say (recorded before chdl recorded bit depth, or by a camera that could not tell)."""
    settings = manifest.get("settings") or {}
    bits = settings.get("bit_depth")
    if bits is not None:
        return int(bits)
    fmt = settings.get("pixel_format")
    return FORMAT_BITS[fmt] if fmt in FORMAT_BITS and fmt != "Mono16" else None


def os_problem(e: OSError) -> str:
    """A short description of why a path could not be used (symlink loops named as such)."""
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    if e.errno == errno.ENOENT:
        return "no such file or folder"
    return e.strerror or str(e)


def _atomic_write_json(path: Path, obj: Any) -> None:
    files.write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n", durable=True)


def encode_png(pixels: np.ndarray, pixel_format: str) -> bytes:
    """Lossless PNG bytes for one frame of a PIXEL_DTYPES format (fast compression: capture must keep up)."""
    dtype = PIXEL_DTYPES.get(pixel_format)
    if dtype is None:
        raise ValueError(f"unsupported pixel format {pixel_format!r} (supported: {', '.join(PIXEL_DTYPES)})")
    if pixels.ndim != 2 or pixels.dtype != dtype:
        raise ValueError(f"{pixel_format} frame must be a 2-D {np.dtype(dtype).name} array, got {pixels.dtype} {pixels.shape}")
    return png.encode(pixels)


def only_a_claim(path: Path) -> bool:
    """True if the folder ``path`` holds nothing but what :meth:`RecordingWriter.create` makes before the manifest
    lands: an empty ``frames/`` (the writer's claim) and a temporary manifest. A writer stopped in that instant
    leaves just that; it is no recording, and no one else's files."""
    for p in Path(path).iterdir():
        if p.name == FRAMES_DIR and p.is_dir() and not any(p.iterdir()):
            continue
        if p.is_file() and files.TEMPORARY_NAME.fullmatch(p.name) and p.name.startswith(f".{MANIFEST}.tmp"):
            continue
        return False
    return True


CLAIM_GRACE_S = 60.0  # a claim with no temporary manifest (stopped between the two) is someone's for this long


def _writer_running(temporary: Path) -> bool:
    """Whether the process whose pid names the temporary file ``temporary`` (``.<name>.tmp<pid>``) still runs."""
    return _running(int(temporary.name.rsplit(".tmp", 1)[1]))


def live_writer(manifest: dict) -> int | None:
    """The pid of the process writing this recording now, if any: its manifest says ``status`` "recording" and
    ``writer`` names a process of this host that still runs, the very one that wrote it (its ``started``, where
    recorded: a pid reused after the writer was killed, or after a reboot, is another process) (None for a
    finished recording, one whose writer was killed, one written on another host or before chdl recorded its
    writer)."""
    writer = manifest.get("writer")
    if manifest.get("status") != "recording" or not isinstance(writer, dict):
        return None
    pid = writer.get("pid")
    if writer.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
        return None
    if not _running(pid):
        return None
    started = writer.get("started")
    return None if started is not None and (now := process_start(pid)) is not None and now != started else pid


def process_start(pid: int) -> str | None:
    """What tells process ``pid`` from a later one with the same pid: this boot's id and the process's start time
    in clock ticks since boot (``/proc``, Linux); None where it cannot be read (no ``/proc``, another OS)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, counted after the command's ")"
    except (OSError, IndexError):
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def abandoned_claim(path: Path) -> bool:
    """True if ``path`` is :func:`only_a_claim` and its writer is gone: no process has the pid in its temporary
    manifest's name (``.manifest.json.tmp<pid>``), or, with no temporary manifest (stopped between the two),
    its ``frames/`` is over CLAIM_GRACE_S old. A capture stopped in that instant (Ctrl-C, a kill) left a folder
    that refused every rerun with the same --run-id; it holds no frame and no metadata."""
    path = Path(path)
    if not path.is_dir() or not only_a_claim(path):
        return False
    temporaries = [p for p in path.iterdir() if p.is_file()]
    if temporaries:
        return not any(_writer_running(p) for p in temporaries)
    try:
        return time.time() - (path / FRAMES_DIR).stat().st_mtime > CLAIM_GRACE_S
    except OSError:
        return False


def free_for_a_recording(path: str | os.PathLike) -> bool:
    """True if a recording may be started in ``path``: it does not exist, is an empty folder, or holds only an
    :func:`abandoned_claim` (which :meth:`RecordingWriter.create` takes over)."""
    path = Path(path)
    return not path.exists() or (path.is_dir() and (not any(path.iterdir()) or abandoned_claim(path)))


def taken(path: str | os.PathLike) -> str:
    """Why no recording may be started in ``path`` (not :func:`free_for_a_recording`), one line naming it: what is
    there, when it is a recording (a rerun after Ctrl-C met "not an empty folder" with no word of what to do)."""
    path = Path(path)
    try:
        rec = Recording.open(path)
    except (RawFormatError, OSError):
        return f"{path}: already exists and is not an empty folder; refusing to overwrite a recording"
    n = f"{len(rec)} frame{'s' if len(rec) != 1 else ''}"
    if (pid := live_writer(rec.manifest)) is not None:  # (two captures of one run id: "move it away" misled)
        return (f"{path}: another chdl process (pid {pid}) is recording there now ({n} so far); refusing to share "
                "a recording")
    state = "complete" if rec.complete else "incomplete"
    return (f"{path}: already holds a recording ({state}, {n}); refusing "
            "to overwrite it (move it away to record there again)")


def _take_over(path: Path) -> None:
    """Clear an abandoned claim in ``path`` for a new one. Renaming its ``frames/`` away is atomic, so of two
    writers taking it over at once one renames it and both then race for the new claim as for a free folder."""
    gone = path / f".{FRAMES_DIR}.abandoned{os.getpid()}"
    try:
        (path / FRAMES_DIR).rename(gone)
    except FileNotFoundError:  # the other writer took it
        return
    gone.rmdir()
    for p in path.iterdir():  # the gone writer's temporary manifest
        if p.is_file() and files.TEMPORARY_NAME.fullmatch(p.name) and not _writer_running(p):
            p.unlink(missing_ok=True)


class RecordingWriter:
    """Appends frames to a new recording. Use as a context manager; an exception closes it incomplete."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self._index_file = open(path / FRAMES_INDEX, "a", encoding="utf-8")
        self._count = 0
        self._closed = False

    @classmethod
    def create(cls, path: str | os.PathLike, manifest: dict) -> "RecordingWriter":
        """Start a recording in ``path`` (created; an existing non-empty folder is refused, and so is a folder
        another writer claims at the same time: ``frames/`` is created exclusively). RawFormatError naming it."""
        path = Path(path)
        if not free_for_a_recording(path):
            raise RawFormatError(taken(path))
        if why := inside_other_data(path):
            raise RawFormatError(f"{path}: inside {why}; choose another output folder")
        manifest = dict(manifest)
        manifest.setdefault("run_id", path.name)
        manifest.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat())
        manifest.setdefault("notes", {})
        manifest["schema"] = RAW_SCHEMA
        manifest["status"] = "recording"
        manifest["writer"] = {"pid": os.getpid(), "host": socket.gethostname(),  # (live_writer: who records now)
                              **({"started": started} if (started := process_start(os.getpid())) else {})}
        why = validate_manifest(manifest)
        if why:  # refuse to write what the reader would refuse
            raise RawFormatError(f"{path / MANIFEST}: {why}")
        if abandoned_claim(path):  # (judged again: another writer may have claimed the folder since the check)
            _take_over(path)
        try:  # the claim: of two writers that found the folder free at once, one creates frames/, the other stops
            (path / FRAMES_DIR).mkdir(parents=True)
        except FileExistsError:  # (two captures with the same --run-id shared one index, then neither was readable)
            raise RawFormatError(f"{path}: another capture started writing there at the same time; refusing to "
                                 "share a recording (choose another --run-id)") from None
        _atomic_write_json(path / MANIFEST, manifest)
        return cls(path, manifest)

    @property
    def frames_written(self) -> int:
        return self._count

    def append(self, pixels: np.ndarray | None, **meta: Any) -> FrameRecord:
        """Write one frame (``pixels=None`` for a dropped frame) and its metadata line.

        ``meta`` holds the :class:`FrameRecord` fields other than ``index``, ``file``, ``width``,
        ``height`` (taken from ``pixels``; for a dropped frame from the manifest's settings).
        """
        if self._closed:
            raise RuntimeError(f"{self.path}: recording is closed")
        settings = self.manifest.get("settings", {})
        pixel_format = meta.pop("pixel_format", settings.get("pixel_format", "Mono8"))
        index = self._count
        rel = None
        if pixels is not None:
            height, width = pixels.shape[:2]
            rel = f"{FRAMES_DIR}/{index:06d}.png"
            files.write_bytes(self.path / rel, encode_png(pixels, pixel_format), durable=True)
        else:
            height, width = settings.get("height", 0), settings.get("width", 0)
        meta.setdefault("status", "ok" if pixels is not None else "dropped")
        meta.setdefault("dropped_before", 0)
        record = FrameRecord(index=index, file=rel, width=int(width), height=int(height),
                             pixel_format=pixel_format, **meta)
        self._index_file.write(record.to_json() + "\n")
        self._index_file.flush()
        self._count += 1
        return record

    def sync(self) -> None:
        """fsync the frame index (the PNGs are fsynced as they are written)."""
        os.fsync(self._index_file.fileno())

    def close(self, status: str = "complete", **notes: Any) -> None:
        """Finish the recording: mark it ``complete`` (or ``incomplete``) and record ``notes``."""
        if self._closed:
            return
        if status not in ("complete", "incomplete"):
            raise ValueError(f"status must be 'complete' or 'incomplete', not {status!r}")
        self._index_file.flush()
        os.fsync(self._index_file.fileno())
        self._index_file.close()
        self.manifest["status"] = status
        self.manifest["frames"] = self._count
        self.manifest.setdefault("notes", {}).update(notes)
        _atomic_write_json(self.path / MANIFEST, self.manifest)
        self._closed = True

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("complete")
        else:
            self.close("incomplete", error=f"{exc_type.__name__}: {exc}")


class Recording:
    """A recording opened for reading. ``complete`` is False for a run that was cut off."""

    def __init__(self, path: Path, manifest: dict, frames: list[FrameRecord], torn_tail: bool):
        self.path = path
        self.manifest = manifest
        self.frames = frames
        self.torn_tail = torn_tail  # the last line of frames.jsonl was cut mid-write (and skipped)
        self._root: str | None = None  # the run folder with symlinks resolved (for frame_path)

    @property
    def complete(self) -> bool:
        """The run closed ``complete`` and its index holds every frame line its manifest counted."""
        return self.manifest.get("status") == "complete" and not self.lines_missing

    @property
    def lines_missing(self) -> int:
        """Frame lines a run that closed ``complete`` counted in its manifest and its index no longer holds (cut
        or edited after the run closed); 0 for a run that did not close complete."""
        promised = self.manifest.get("frames")
        if self.manifest.get("status") != "complete" or not isinstance(promised, int):
            return 0
        return max(0, promised - len(self.frames))

    @property
    def settings(self) -> dict:
        return self.manifest.get("settings", {})

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Recording":
        path = Path(path)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise RawFormatError(f"{path}: not a folder (a recording is a folder with {MANIFEST})")
        if not os.path.lexists(manifest_path):
            raise RawFormatError(f"{path}: not a recording (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RawFormatError(f"{manifest_path}: malformed JSON ({e})") from None
        except OSError as e:
            what = "is a folder, not a file" if e.errno == errno.EISDIR else f"cannot be read ({os_problem(e)})"
            raise RawFormatError(f"{manifest_path}: {what}") from None
        why = validate_manifest(manifest)
        if why:
            raise RawFormatError(f"{manifest_path}: {why}")
        frames, torn = cls._read_index(path / FRAMES_INDEX)
        return cls(path, manifest, frames, torn)

    @staticmethod
    def _read_index(index_path: Path) -> tuple[list[FrameRecord], bool]:
        try:
            raw = index_path.read_bytes()
        except OSError as e:
            what = "missing frame index" if e.errno == errno.ENOENT else f"cannot read the frame index ({os_problem(e)})"
            raise RawFormatError(f"{index_path}: {what}") from None
        lines = raw.split(b"\n")
        torn = lines[-1] != b""  # a complete file ends with a newline
        frames: list[FrameRecord] = []
        for lineno, line in enumerate(lines[:-1], start=1):  # the last piece is "" or a torn line
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise RawFormatError(f"{index_path}:{lineno}: malformed frame record (not UTF-8: byte "
                                     f"0x{line[e.start]:02x} at column {e.start + 1})") from None
            except json.JSONDecodeError as e:
                raise RawFormatError(f"{index_path}:{lineno}: malformed frame record ({e.msg})") from None
            why = validate_record(obj)
            if why:
                raise RawFormatError(f"{index_path}:{lineno}: {why}")
            if obj["index"] != len(frames):
                raise RawFormatError(f"{index_path}:{lineno}: frame index {obj['index']} out of sequence (expected {len(frames)})")
            frames.append(FrameRecord(**obj))
        return frames, torn

    def read(self, record: FrameRecord) -> np.ndarray:
        """The pixels of one frame as a (H, W) uint8/uint16 array; RawFormatError if unreadable."""
        if record.file is None:
            raise RawFormatError(f"{self.path / FRAMES_INDEX}: frame {record.index} was dropped (no pixels)")
        file = self.frame_path(record)
        dtype = PIXEL_DTYPES.get(record.pixel_format)
        if dtype is None:
            raise RawFormatError(f"{file}: unsupported pixel format {record.pixel_format!r}")
        try:
            data = np.fromfile(file, dtype=np.uint8)
        except OSError as e:
            raise RawFormatError(f"{file}: cannot read frame ({e.strerror or e})") from None
        try:
            width, height, _, _ = png.header(data[:png.HEADER_BYTES].tobytes())
            if (width, height) != (record.width, record.height):  # checked before decoding allocates for it
                raise RawFormatError(f"{file}: size {width}x{height} differs from its record ({record.width}x{record.height})")
            pixels = png.decode(data)
        except png.PNGError as e:
            raise RawFormatError(f"{file}: truncated or corrupt PNG ({e})") from None
        if pixels.ndim != 2 or pixels.dtype != dtype:
            raise RawFormatError(f"{file}: expected a single-channel {record.pixel_format} image, got {pixels.dtype} {pixels.shape}")
        if pixels.shape != (record.height, record.width):
            raise RawFormatError(f"{file}: size {pixels.shape[1]}x{pixels.shape[0]} differs from its record ({record.width}x{record.height})")
        return pixels

    def stored_size(self, record: FrameRecord) -> tuple[int, int] | None:
        """(width, height) of a frame's PNG as its header on disk says, without decoding it; None if the
        file is missing or not a PNG. For checking sizes from metadata before allocating for them."""
        try:
            with open(self.frame_path(record), "rb") as f:
                width, height, _, _ = png.header(f.read(png.HEADER_BYTES))
        except (OSError, png.PNGError):
            return None
        return width, height

    def frame_path(self, record: FrameRecord) -> Path:
        """The path of a frame's file, checked to lie inside the run folder: RawFormatError if its
        ``file`` is absolute, climbs out with ``..``, or reaches outside through a symbolic link
        (in the file or any folder on the way). A missing file is not checked here (see :meth:`read`)."""
        if record.file is None:
            raise RawFormatError(f"{self.path / FRAMES_INDEX}: frame {record.index} was dropped (no pixels)")
        why = check_relative_file(record.file)
        if why:
            raise RawFormatError(f"{self.path / FRAMES_INDEX}: frame {record.index}: {why}")
        file = self.path / record.file
        if self._root is None:
            self._root = os.path.realpath(self.path)
        # only symbolic links can lead out of a lexically contained path: resolve when one is on the way
        rel = PurePosixPath(record.file)
        if any(os.path.islink(self.path.joinpath(*rel.parts[:i + 1])) for i in range(len(rel.parts))):
            real = os.path.realpath(file)
            if os.path.commonpath([self._root, real]) != self._root:
                raise RawFormatError(f"{file}: symbolic link to {real}, outside the run folder {self.path}; "
                                     "frame files must stay inside their run")
        return file

    def __iter__(self) -> Iterator[FrameRecord]:
        return iter(self.frames)

    def __len__(self) -> int:
        return len(self.frames)


def inside_other_data(path: Path) -> str | None:
    """What a new recording folder (or curated dataset) ``path`` would sit inside, if that is data of its own: a
    recording (chdl curate reads only a folder's direct subfolders and would skip the nested run without a word;
    a recording is a camera's output, not a place for other files) or a zarr store (a curated dataset: chdl
    verify and curate --overwrite manage its files). None if neither."""
    for parent in Path(os.path.abspath(path)).parents:
        if is_recording(parent):
            return (f"the recording {parent} (a recording's folder holds its own files only: a recording nested "
                    "in it is never curated)")
        if (parent / "zarr.json").is_file():
            return f"the zarr store {parent} (a curated dataset)"
    return None


def is_recording(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a ``manifest.json`` (of any kind: Recording.open says what is wrong with it)."""
    return os.path.lexists(Path(path) / MANIFEST)


VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")  # what users hand in
def video_hint(several: bool = False) -> str:
    """What to do with a user's video file(s) given where a recording or dataset belongs."""
    each, them = ("each as a", "them") if several else ("it as a", "it")
    return (f"chdl import recordings writes {each} raw recording for chdl curate (QC), chdl import video makes a "
            f"dataset of {them} without QC (docs/importers.md)")


def looks_like_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a video file (a user's footage given where a recording or dataset belongs)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _check_manifest_kept(path: Path, within: Path | None = None) -> None:
    """RawFormatError if ``path`` holds a frame index but no manifest (a recording whose manifest.json was deleted),
    saying to move it out of ``within`` where it sits in a folder of runs."""
    if (path / FRAMES_INDEX).is_file() and not is_recording(path):
        away = f", or move it out of {within}" if within is not None else ""
        raise RawFormatError(f"{path}: a recording without its {MANIFEST} ({FRAMES_INDEX} is there); it cannot be "
                             f"read without it: restore it from a copy{away}")


def find_recordings(path: str | os.PathLike) -> list[Path]:
    """``path`` itself if it is a recording, else the recordings directly inside it, sorted by name."""
    path = Path(path)
    try:
        os.stat(path)
    except OSError as e:
        raise RawFormatError(f"{path}: {os_problem(e)}") from None
    if not path.is_dir():
        video = f"; it is named like a video file: {video_hint()}" if looks_like_video(path) else ""
        raise RawFormatError(f"{path}: not a recording or a folder of recordings{video}")
    if is_recording(path):
        return [path]
    _check_manifest_kept(path)
    folders = sorted(p for p in path.iterdir() if p.is_dir())
    # a folder this user may not look into (another user's, mode 700) may be a recording: left out, a third of a
    # shared corpus went missing from a dataset without a word
    for p in folders:
        if not os.access(p, os.R_OK | os.X_OK):
            raise RawFormatError(f"{p}: this user may not look inside it (permissions; another user's folder?), so "
                                 f"whether it is a recording cannot be told: give read access, or move it out of {path}")
    runs = [p for p in folders if is_recording(p)]
    for p in folders:  # (left out without a word, the rest of the folder curated)
        _check_manifest_kept(p, within=path)
    if not runs:
        what = "empty folder" if not any(path.iterdir()) else f"no recordings inside (no subfolder has {MANIFEST})"
        if any(looks_like_video(p) for p in path.iterdir() if p.is_file()):
            what += f"; it holds video files: {video_hint(several=True)}"
        if (path / "zarr.json").is_file():  # the other way round from `chdl info RECORDING`
            what = ("a curated dataset (it holds zarr.json), not raw recordings: give the recordings it was made "
                    "from (chdl info shows its command)")
        raise RawFormatError(f"{path}: {what}")
    return runs
