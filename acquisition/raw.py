"""The raw recording format (``chdl.raw/1``): one folder per capture run. Defined here, and only here.

Layout (documented for readers without the toolkit in ``docs/raw-format.md``)::

    <run>/manifest.json        run identity, camera, applied settings, lane/position plan, status
    <run>/frames.jsonl         one JSON object per frame, appended in capture order
    <run>/frames/NNNNNN.png    the pixels: lossless PNG, 8-bit for Mono8, 16-bit for Mono16

Crash safety: a frame's PNG is written to a temporary name and renamed into place *before* its line is
appended to ``frames.jsonl`` and flushed, so every line names a complete file. A ``kill -9`` can at worst
leave a torn last line, which the reader skips. ``manifest.json`` is rewritten atomically; its ``status``
is ``"recording"`` until the writer closes, so a run that never closed reads as incomplete.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from acquisition import png

RAW_SCHEMA = "chdl.raw/1"
MANIFEST = "manifest.json"
FRAMES_INDEX = "frames.jsonl"
FRAMES_DIR = "frames"
PIXEL_DTYPES = {"Mono8": np.uint8, "Mono16": np.uint16}
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
    pixel_format: str  # "Mono8" | "Mono16"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))


_FIELDS = {f.name for f in dataclasses.fields(FrameRecord)}


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def encode_png(pixels: np.ndarray, pixel_format: str) -> bytes:
    """Lossless PNG bytes for one Mono8/Mono16 frame (fast compression: capture must keep up)."""
    dtype = PIXEL_DTYPES.get(pixel_format)
    if dtype is None:
        raise ValueError(f"unsupported pixel format {pixel_format!r} (supported: {', '.join(PIXEL_DTYPES)})")
    if pixels.ndim != 2 or pixels.dtype != dtype:
        raise ValueError(f"{pixel_format} frame must be a 2-D {np.dtype(dtype).name} array, got {pixels.dtype} {pixels.shape}")
    return png.encode(pixels)


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
        """Start a recording in ``path`` (created; an existing non-empty folder is refused)."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RawFormatError(f"{path}: already exists and is not an empty folder; refusing to overwrite a recording")
        (path / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
        manifest = dict(manifest)
        manifest.setdefault("run_id", path.name)
        manifest.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat())
        manifest.setdefault("notes", {})
        manifest["schema"] = RAW_SCHEMA
        manifest["status"] = "recording"
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
            _atomic_write_bytes(self.path / rel, encode_png(pixels, pixel_format))
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

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"

    @property
    def settings(self) -> dict:
        return self.manifest.get("settings", {})

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Recording":
        path = Path(path)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise RawFormatError(f"{path}: not a folder (a recording is a folder with {MANIFEST})")
        if not manifest_path.is_file():
            raise RawFormatError(f"{path}: not a recording (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RawFormatError(f"{manifest_path}: malformed JSON ({e})") from None
        if not isinstance(manifest, dict):
            raise RawFormatError(f"{manifest_path}: malformed manifest (expected a JSON object)")
        if manifest.get("schema") != RAW_SCHEMA:
            raise RawFormatError(f"{manifest_path}: unsupported schema {manifest.get('schema')!r} (expected {RAW_SCHEMA!r})")
        if manifest.get("status") not in RUN_STATUSES:
            raise RawFormatError(f"{manifest_path}: malformed manifest (status {manifest.get('status')!r})")
        frames, torn = cls._read_index(path / FRAMES_INDEX)
        return cls(path, manifest, frames, torn)

    @staticmethod
    def _read_index(index_path: Path) -> tuple[list[FrameRecord], bool]:
        if not index_path.is_file():
            raise RawFormatError(f"{index_path}: missing frame index")
        raw = index_path.read_bytes()
        lines = raw.split(b"\n")
        torn = lines[-1] != b""  # a complete file ends with a newline
        frames: list[FrameRecord] = []
        for lineno, line in enumerate(lines[:-1], start=1):  # the last piece is "" or a torn line
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RawFormatError(f"{index_path}:{lineno}: malformed frame record ({e.msg})") from None
            if not isinstance(obj, dict) or set(obj) != _FIELDS:
                missing = sorted(_FIELDS - set(obj)) if isinstance(obj, dict) else []
                raise RawFormatError(f"{index_path}:{lineno}: malformed frame record (missing {missing or 'fields'})")
            if obj["index"] != len(frames):
                raise RawFormatError(f"{index_path}:{lineno}: frame index {obj['index']} out of sequence (expected {len(frames)})")
            if obj["status"] not in STATUSES:
                raise RawFormatError(f"{index_path}:{lineno}: unknown frame status {obj['status']!r}")
            frames.append(FrameRecord(**obj))
        return frames, torn

    def read(self, record: FrameRecord) -> np.ndarray:
        """The pixels of one frame as a (H, W) uint8/uint16 array; RawFormatError if unreadable."""
        if record.file is None:
            raise RawFormatError(f"{self.path / FRAMES_INDEX}: frame {record.index} was dropped (no pixels)")
        file = self.path / record.file
        dtype = PIXEL_DTYPES.get(record.pixel_format)
        if dtype is None:
            raise RawFormatError(f"{file}: unsupported pixel format {record.pixel_format!r}")
        try:
            data = np.fromfile(file, dtype=np.uint8)
        except OSError as e:
            raise RawFormatError(f"{file}: cannot read frame ({e.strerror or e})") from None
        try:
            pixels = png.decode(data)
        except png.PNGError as e:
            raise RawFormatError(f"{file}: truncated or corrupt PNG ({e})") from None
        if pixels.ndim != 2 or pixels.dtype != dtype:
            raise RawFormatError(f"{file}: expected a single-channel {record.pixel_format} image, got {pixels.dtype} {pixels.shape}")
        if pixels.shape != (record.height, record.width):
            raise RawFormatError(f"{file}: size {pixels.shape[1]}x{pixels.shape[0]} differs from its record ({record.width}x{record.height})")
        return pixels

    def __iter__(self) -> Iterator[FrameRecord]:
        return iter(self.frames)

    def __len__(self) -> int:
        return len(self.frames)


def is_recording(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def find_recordings(path: str | os.PathLike) -> list[Path]:
    """``path`` itself if it is a recording, else the recordings directly inside it, sorted by name."""
    path = Path(path)
    if not path.exists():
        raise RawFormatError(f"{path}: no such file or folder")
    if not path.is_dir():
        raise RawFormatError(f"{path}: not a recording or a folder of recordings")
    if is_recording(path):
        return [path]
    runs = sorted(p for p in path.iterdir() if p.is_dir() and is_recording(p))
    if not runs:
        what = "empty folder" if not any(path.iterdir()) else f"no recordings inside (no subfolder has {MANIFEST})"
        raise RawFormatError(f"{path}: {what}")
    return runs
