"""The curated dataset format (``chdl.dataset/1``): a zarr v3 group. Defined here, and only here.

Curation writes it, importers write it, diffuma reads it; this module imports none of them. The layout
is documented for readers with plain zarr in ``docs/dataset-format.md``. In short (N sequences of T
frames, S sequences per shard, K QC scores)::

    frames          (N, T, C, H, W) uint8|uint16   chunk (1,T,C,H,W), shard (S,T,C,H,W), blosc zstd
    qc_flags        (N, T) uint8                    FLAG_* bits
    qc_scores       (N, T, K) float32               detector scores, names in attrs["qc_score_names"]
    split           (N,) uint8                      SPLIT_TRAIN / SPLIT_VAL / SPLIT_TEST / SPLIT_EXCLUDED
    run_index       (N,) int32                      index into attrs["runs"]
    lane            (N,) int32
    position_um     (N, T) float64
    timestamp_ns    (N, T) int64                    -1 where unknown
    shard_done      (n_shards,) uint8               1 once a shard's every array is written
    shard_checksums (n_shards,) string              per shard, JSON {file: {blake3, bytes}} of every file it wrote
    originals/<s>, originals_index/<s>              pixels of frames replaced by reconstructions, per shard

Concurrency and crash safety: zarr rewrites a whole shard (or chunk) on any partial write, so every
array is chunked so that one shard of sequences maps to whole chunks/shards of every array, and a
writer process always writes whole shards. ``shard_done[s]`` is set only after all of shard ``s`` is
written, and the group's ``complete`` attribute only after every shard is done: a dataset cut off
mid-write is never read as complete, and a rerun can resume at the first undone shard. Creation is
atomic: the empty layout is built in a hidden folder beside the target (``.<name>.creating``) and
renamed into place, so a dataset path holds either nothing or a whole resumable layout.

Opening (for reading or to resume writing) validates the attributes and arrays against each other
(:func:`validate`): a dataset whose metadata disagrees with itself is a one-line DatasetFormatError
naming the path and the key, never a traceback or a silently wrong result.

Integrity: each shard's writer records the BLAKE3 digest and size of every file it wrote
(``shard_checksums[s]``, written before ``shard_done[s]``). Opening a complete dataset lists its files once
and refuses one whose shard files are missing (:func:`missing_shard_files`); :func:`verify` reads and hashes
them. Datasets written before checksums were recorded open as before (``DatasetReader.has_checksums``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import blake3
import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.array_spec import ArrayConfig, ArraySpec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from acquisition.raw import FORMAT_BITS, looks_like_video, video_hint  # (FORMAT_BITS: the raw format's table)
from chdl.locks import lock_holder, writer_lock_path
from acquisition.format_versions import newer_format

if TYPE_CHECKING:  # annotations only: fsspec URLs (dataset_path) are universal_pathlib paths
    import upath

SCHEMA = "chdl.dataset/1"

FLAG_VIBRATION = 1  # blur, defocus or misregistration beyond threshold
FLAG_ILLUMINATION = 2  # brightness/contrast outlier
FLAG_RECONSTRUCTED = 4  # pixels are a reconstruction; the original is under originals/
FLAG_MISSING = 8  # the frame never arrived (dropped / absent position); pixels are reconstructed or zero
FLAG_NAMES = {FLAG_VIBRATION: "vibration", FLAG_ILLUMINATION: "illumination",
              FLAG_RECONSTRUCTED: "reconstructed", FLAG_MISSING: "missing"}
# bits 4-6 of qc_flags: how a reconstructed frame was made, code 1 + its index here (curation.reconstruct's
# candidates); 0: not reconstructed, or a dataset written before 2026-12-01, which did not record it
RECONSTRUCTION_METHODS = ("motion", "flow", "average", "nearest")
RECONSTRUCTION_SHIFT = 4
RECONSTRUCTION_MASK = 0b111 << RECONSTRUCTION_SHIFT


def reconstruction_bits(method: str) -> int:
    """The qc_flags bits that record a frame reconstructed by ``method`` (one of RECONSTRUCTION_METHODS;
    ValueError otherwise)."""
    if method not in RECONSTRUCTION_METHODS:
        raise ValueError(f"unknown reconstruction method {method!r} (one of {', '.join(RECONSTRUCTION_METHODS)})")
    return (1 + RECONSTRUCTION_METHODS.index(method)) << RECONSTRUCTION_SHIFT


def reconstruction_method(flags: int) -> str | None:
    """How the frame with these qc_flags was reconstructed (None: not recorded, or not reconstructed)."""
    code = (int(flags) & RECONSTRUCTION_MASK) >> RECONSTRUCTION_SHIFT
    return RECONSTRUCTION_METHODS[code - 1] if 1 <= code <= len(RECONSTRUCTION_METHODS) else None

SPLIT_TRAIN, SPLIT_VAL, SPLIT_EXCLUDED, SPLIT_TEST = 0, 1, 2, 3  # (test came on 2026-12-03: the next free code)
SPLIT_CODES = {"train": SPLIT_TRAIN, "val": SPLIT_VAL, "test": SPLIT_TEST, "excluded": SPLIT_EXCLUDED}


def empty_split(path, split: str) -> str:
    """The one line eval, predict and bench give for a split without sequences: for test, how to make one; for
    another, the splits the dataset does have (a dataset imported with a test block and no validation)."""
    how = (" (curate with split.test_fraction above 0 to hold one out: docs/curation.md, \"Split\"; or chdl "
           "import video --test-fraction; the other imports make train and val splits only)" if split == "test" else "")
    if split != "test":
        try:
            counts = {k: v for k, v in open_dataset(path).summary()["splits"].items() if v and k not in (split, "excluded")}
        except (DatasetFormatError, OSError, KeyError):
            counts = {}
        if counts:
            how = (f" (it has {', '.join(f'{k} {v}' for k, v in counts.items())}: "
                   f"--split {'test' if 'test' in counts else next(iter(counts))})")
    return f"{path}: the {split!r} split has no sequences{how}"


def unknown_split_codes(codes) -> np.ndarray:
    """The values of ``codes`` that are no split code (``SPLIT_CODES``), sorted; empty if every one is."""
    return np.setdiff1d(np.asarray(codes), list(SPLIT_CODES.values()))

DIMS = {
    "frames": ("sequence", "time", "channel", "height", "width"),
    "qc_flags": ("sequence", "time"),
    "qc_scores": ("sequence", "time", "score"),
    "split": ("sequence",),
    "run_index": ("sequence",),
    "lane": ("sequence",),
    "position_um": ("sequence", "time"),
    "timestamp_ns": ("sequence", "time"),
}
_PER_SEQUENCE = ("qc_flags", "qc_scores", "split", "run_index", "lane", "position_um", "timestamp_ns")
# the per-sequence arrays' dtype and fill value (what is stored where nothing was written)
_SMALL = {
    "qc_flags": (np.uint8, 0),
    "qc_scores": (np.float32, np.nan),
    "split": (np.uint8, SPLIT_EXCLUDED),
    "run_index": (np.int32, -1),
    "lane": (np.int32, -1),
    "position_um": (np.float64, np.nan),
    "timestamp_ns": (np.int64, -1),
}
_PARTIAL = re.compile(r".*\.[0-9a-f]{32}\.partial")  # zarr's atomic-write temp names (LocalStore)
CHECKSUMS = "shard_checksums"  # (n_shards,) string array: per shard, JSON {file key: {"blake3", "bytes"}}
_SHARD_ARRAYS = ("frames",) + _PER_SEQUENCE  # arrays stored as one file per shard (and per array)
_LAYOUT = ("frames",) + tuple(_SMALL) + ("shard_done", CHECKSUMS, "originals", "originals_index")  # create's members
_READ_BLOCK = 8 << 20  # bytes hashed at a time
FRAME_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
_INT_ATTRS = ("n_sequences", "frames_per_sequence", "in_frames", "out_frames", "sequences_per_shard", "n_shards")


class DatasetFormatError(ValueError):
    """A path that is not a readable ``chdl.dataset/1`` group. The message names the path."""


class DatasetIncompleteError(DatasetFormatError):
    """A dataset whose writing was interrupted (or is still in progress)."""


def file_url_path(url: str) -> str:
    """The local path a ``file://`` URL names (``file:///data/x%20y.zarr`` -> ``/data/x y.zarr``)."""
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(url).path)


def dataset_path(path: str | os.PathLike) -> "Path | upath.UPath":
    """Where a dataset (or its report) lives: a local path, or an fsspec URL (``s3://bucket/x.zarr``,
    ``gs://``, ``file://`` ...) as a ``upath.UPath`` with the same interface; zarr opens the URL with its
    fsspec store. The URL's filesystem takes its settings (endpoint, credentials) from fsspec's and
    its own usual configuration, e.g. ``AWS_ENDPOINT_URL`` and ``AWS_ACCESS_KEY_ID`` for S3.
    DatasetFormatError for a URL of a bucket's root (``s3://bucket``): a dataset is a prefix inside one."""
    if str(path).startswith("file://"):  # a local path written as a URL: the local path (atomic rename, locks)
        return Path(file_url_path(str(path)))
    if "://" in str(path):
        from upath import UPath

        url = UPath(str(path))
        if len(url.parts) < 2:  # s3://bucket: deleting or replacing "the dataset" would be the bucket itself
            if not (url.parts and url.parts[0].strip("/")):
                scheme = str(path).split("://", 1)[0]
                raise DatasetFormatError(f"{path}: names no bucket; a dataset is a folder inside one, e.g. "
                                         f"{scheme}://bucket/name.zarr")
            raise DatasetFormatError(f"{path}: the root of a bucket, not a dataset; name one inside it, e.g. "
                                     f"{str(path).rstrip('/')}/name.zarr")
        try:
            url.fs  # the filesystem's package (s3fs, gcsfs ...): its absence was a 65-line traceback
        except ImportError as e:
            scheme = str(path).split("://", 1)[0]
            how = "pip install 'chdl[scale]'" if scheme in ("s3", "s3a") else "install its fsspec package"
            raise DatasetFormatError(f"{path}: {scheme}:// URLs need a package that is not installed ({how}; "
                                     f"{_first_line(e)})") from None
        return url
    return Path(path)


def _compressor() -> BloscCodec:
    # zstd level 1 + bit-shuffle: on 800x600 simulator frames it compresses to 0.61 of raw at 0.74 ms a
    # frame, against 0.60 at 1.74 ms for level 3 (lz4: 0.67 at 0.34 ms). Curation throughput is bounded
    # by encode time, and level 1 costs only 2% in size.
    return BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")


def _frames_shard_bytes(frames_array: zarr.Array, frames: np.ndarray, buffer: bytearray) -> memoryview:
    """The file of one shard of the ``frames`` array holding ``frames`` (k, T, C, H, W), k <= S: exactly the
    bytes zarr writes for ``frames_array[rows] = frames`` (tests/chdl/test_dataset.py compares them), made with
    zarr's own codecs for the chunks, as a view of ``buffer`` (which must be large enough: at least
    :func:`_frames_shard_bound`). Why not let zarr write it: for every chunk of a shard zarr allocates a
    fill-value chunk and copies the chunk's pixels into it, then copies all encoded chunks into a new buffer
    (0.2-0.4 ms a frame of 800x600); here each chunk is encoded from a view of ``frames`` and copied once,
    into a buffer the writer keeps (a fresh 50 MB one per shard costs page faults: 0.19 against 0.05 ms a
    frame), and the file's bytes are at hand to hash (:meth:`DatasetWriter.write_shard`).

    The sharding layout (zarr v3 ``sharding_indexed``): the encoded chunks one after another, then the
    index, per chunk (offset, length) as little-endian uint64 (2^64 - 1 twice for a chunk not stored),
    then its CRC-32C as a little-endian uint32. ``frames`` chunks are (1, T, C, H, W), so a shard's chunk
    grid is (S, 1, 1, 1, 1) and its Morton order is plain row order."""
    sharding = frames_array.metadata.codecs[0]
    index_codecs = [type(c).__name__ for c in sharding.index_codecs] if isinstance(sharding, ShardingCodec) else []
    if (len(frames_array.metadata.codecs) != 1 or index_codecs != ["BytesCodec", "Crc32cCodec"]
            or sharding.index_location != ShardingCodecIndexLocation.end
            or tuple(sharding.chunk_shape) != (1,) + frames_array.shape[1:]):
        raise ValueError(f"frames: unexpected storage layout {frames_array.metadata.codecs}")
    proto = default_buffer_prototype()
    spec = ArraySpec(shape=tuple(sharding.chunk_shape), dtype=frames_array.metadata.data_type,
                     fill_value=frames_array.metadata.fill_value,
                     config=ArrayConfig(order="C", write_empty_chunks=True), prototype=proto)
    encoded = sync(sharding.codec_pipeline.encode(
        [(proto.nd_buffer.from_numpy_array(frames[i:i + 1]), spec) for i in range(len(frames))]))
    chunks = [e.as_numpy_array() for e in encoded]
    index = np.full((frames_array.shards[0], 2), np.iinfo(np.uint64).max, np.dtype("<u8"))
    lengths = np.array([len(c) for c in chunks], np.uint64)
    index[:len(chunks), 0] = np.cumsum(lengths) - lengths
    index[:len(chunks), 1] = lengths
    index_bytes = index.tobytes()
    out, pos = memoryview(buffer), 0
    for part in [*chunks, index_bytes, google_crc32c.value(index_bytes).to_bytes(4, "little")]:
        out[pos:pos + len(part)] = part
        pos += len(part)
    return out[:pos]


def _frames_shard_bound(frames_array: zarr.Array, frames: np.ndarray) -> int:
    """An upper bound on the size of :func:`_frames_shard_bytes` for ``frames``: blosc's worst case per
    chunk (the raw bytes plus its 16-byte header, plus a little) and the index."""
    return frames.nbytes + len(frames) * 64 + frames_array.shards[0] * 16 + 4


def writer_pid(path) -> str | None:
    """The pid of the chdl process writing the local dataset ``path`` now (its writer lock,
    :func:`chdl.locks.writer_lock_path`); None if none is, and for an fsspec URL (an object store has no lock)."""
    return lock_holder(writer_lock_path(path)) if isinstance(path, Path) else None


def previous_path(path: Path) -> Path:
    """Where a complete dataset waits while ``--overwrite`` replaces it (:meth:`DatasetWriter.create`'s
    ``keep_previous``), beside it."""
    return path.with_name(f".{path.name}.previous")


def marked_incomplete(path) -> bool:
    """Whether ``path`` holds a dataset its writer has not marked complete (``complete`` false in its zarr.json):
    one being written, or whose writer was interrupted. False for anything else, complete or unreadable."""
    try:
        with (path / "zarr.json").open() as f:  # (a Path or an fsspec UPath)
            return json.load(f).get("attributes", {}).get("complete", True) is False
    except (OSError, ValueError, AttributeError):
        return False


def refuse_non_dataset(path) -> None:
    """FileExistsError (one line) unless ``path`` is a zarr dataset (it holds zarr.json) or an empty folder: what
    ``--overwrite`` may replace. Anything else there (a file, the input video, a folder of someone's work) is
    never deleted, whatever the flag says; nor is a dataset that holds more than zarr's own files (a training run
    someone put inside it: every entry must be zarr.json or a zarr array or group, hidden ones aside, and not a
    chdl dataset of its own, which zarr would count as a member group)."""
    if path.is_dir() and not any(path.iterdir()):
        return
    if path.is_dir() and (path / "zarr.json").is_file():
        foreign = sorted(p.name for p in path.iterdir()
                         if p.name != "zarr.json" and not p.name.startswith(".")
                         and (not (p / "zarr.json").is_file() or _is_chdl_dataset(p)))
        if not foreign:
            return
        raise FileExistsError(f"{path}: a dataset that also holds other files ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); refusing to delete them even with --overwrite "
                              "(move them out first)")
    raise FileExistsError(f"{path}: exists and is not a zarr dataset; refusing to delete it even with --overwrite")


def _is_chdl_dataset(path: Path) -> bool:
    """Whether the zarr node at ``path`` is the group of a chdl dataset (its zarr.json's ``schema`` attribute)."""
    try:
        meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
        return str((meta.get("attributes") or {}).get("schema", "")).startswith(SCHEMA.rsplit("/", 1)[0] + "/")
    except (OSError, ValueError, AttributeError):
        return False


def _remove(path: Path) -> None:
    """Delete a file, folder or URL if it is there (a symlink itself, never what it points to)."""
    if not isinstance(path, Path):  # a URL
        if path.exists():
            path.fs.rm(path.path, recursive=True)
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _open_group(path: Path, mode: str) -> zarr.Group:
    """Open and validate a chdl dataset group (see :func:`validate`)."""
    if not (path / "zarr.json").is_file():
        hint = ""
        if (path / "manifest.json").is_file() and (path / "frames.jsonl").is_file():  # docs/raw-format.md
            hint = f"; it is a raw recording: curate it first (chdl curate {path} OUT.zarr)"
        elif path.is_dir() and any((p / "manifest.json").is_file() for p in path.iterdir() if p.is_dir()):
            hint = f"; it holds raw recordings: curate them first (chdl curate {path} OUT.zarr)"
        elif path.is_file() and looks_like_video(path):
            hint = f"; it is named like a video file: {video_hint()}"
        raise DatasetFormatError(f"{path}: not a zarr v3 group (no zarr.json){hint}")
    try:
        group = zarr.open_group(str(path), mode=mode, zarr_format=3)
    except Exception as e:  # zarr raises a variety of errors for malformed metadata
        # (named by its zarr.json: the group's metadata is what zarr could not read)
        raise DatasetFormatError(f"{path / 'zarr.json'}: cannot open zarr group ({_first_line(e)})") from None
    validate(group, path)
    return group


def read_array(array: zarr.Array, selection: Any, path: str | os.PathLike) -> np.ndarray:
    """``array[selection]``, with a chunk that cannot be read or decoded (truncated, corrupt, removed
    under a shard marked done) as a one-line DatasetFormatError naming the dataset, the array and, for a
    selection that starts with a row index (one sequence), the shard file."""
    try:
        return array[selection]
    except Exception as e:  # noqa: BLE001 - codecs and stores raise many kinds for damaged chunks
        first = (str(e).splitlines() or [""])[0][:200]
        row = (selection if isinstance(selection, tuple) else (selection,))[0]
        files = _array_files(array, int(row)) if _is_int(row) and 0 <= row < array.shape[0] else []
        if not files and array.path != "frames":  # a whole small array: which of its files (one a shard) fails
            files = _unreadable_file(array)
        where = f"shard file {files[0]}: " if files else ""
        writer = writer_pid(path)
        why = (f"another chdl process (pid {writer}) is writing or replacing the dataset while this one reads it"
               if writer else "the dataset is damaged on disk")  # (chdl verify passed a dataset replaced meanwhile)
        raise DatasetFormatError(f"{path}: cannot read {array.path} ({where}{type(e).__name__}: {first}); "
                                 f"{why}") from None


def _unreadable_file(array: zarr.Array) -> list[str]:
    """The key of the first storage unit of ``array`` that cannot be read (``[]`` if each reads alone): read unit by
    unit, for an error that named no file (a damaged ``qc_flags`` shard: "cannot read qc_flags")."""
    unit = (array.shards or array.chunks)[0]
    for start in range(0, array.shape[0], unit):
        try:
            array[start:start + unit]
        except Exception:  # noqa: BLE001 - as read_array
            return _array_files(array, start)
    return []


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def max_value_for_bits(bits: int) -> int:
    """The stored value that means intensity 1.0 for data with ``bits`` significant bits: 2**bits - 1
    (12-bit data in Mono16 pixels: 4095). The one rule for ``max_value`` of camera data."""
    return (1 << int(bits)) - 1


def _pixel_problem(values, max_value: float) -> str | None:
    """Why ``values`` cannot be stored as pixels of a dataset with this ``max_value`` (None if they can):
    not integers, or outside 0..max_value. Unsigned data whose dtype cannot exceed max_value is not scanned
    (Mono8 into max_value 255: curate's hot path)."""
    v = np.asarray(values)
    if v.dtype.kind not in "ui":
        return (f"pixel values of dtype {v.dtype}, not integers (store the camera's integers; intensities in [0, 1] "
                "are read as stored / max_value: multiply by max_value and round)")
    if v.size == 0 or (v.dtype.kind == "u" and np.iinfo(v.dtype).max <= max_value):
        return None
    lo, hi = int(v.min()), int(v.max())
    if lo < 0 or hi > max_value:
        return f"a pixel value of {hi if hi > max_value else lo}, outside 0..{max_value:g} (the dataset's max_value)"
    return None


def validate(group: zarr.Group, path: str | os.PathLike) -> None:
    """Check a dataset's attributes and arrays against each other and against this format: the schema,
    every array present with its dimensions, dtype and extents (N sequences, T frames, K scores,
    n_shards), ``frames`` 5-D uint8/uint16, integer attributes that are integers, ``in_frames +
    out_frames <= frames_per_sequence``, ``n_shards == ceil(N / S)``, ``0 < max_value <= the dtype's
    maximum``. Raises DatasetFormatError naming ``path`` and the first key that is wrong. Reads
    metadata only (no chunk is read). Used by every reader and by the writer when resuming."""
    attrs = dict(group.attrs)

    def bad(why: str) -> DatasetFormatError:
        return DatasetFormatError(f"{path}: malformed dataset ({why})")

    if newer := newer_format("dataset of schema", attrs.get("schema"), SCHEMA):
        raise DatasetFormatError(f"{path}: {newer}")
    if attrs.get("schema") != SCHEMA:
        raise DatasetFormatError(f"{path}: not a chdl dataset (schema {attrs.get('schema')!r}, expected {SCHEMA!r})")
    # every member opened once, here: an array whose zarr.json zarr cannot parse (damaged, or empty as an interrupted
    # copy leaves it) ended info, verify, train and eval in a JSONDecodeError traceback
    arrays = {name: _member(group, name, path) for name in dict.fromkeys(("frames", "shard_done") + _PER_SEQUENCE
                                                                         + tuple(_SMALL) + (CHECKSUMS,))}
    missing = [name for name in ("frames", "shard_done") + _PER_SEQUENCE if arrays[name] is None]
    if missing:
        raise bad(f"missing arrays: {', '.join(missing)}")
    for key in _INT_ATTRS:
        v = attrs.get(key)
        if not _is_int(v) or v < 1:
            raise bad(f"attribute {key} must be an integer >= 1, not {v!r}")
    N, T, S = attrs["n_sequences"], attrs["frames_per_sequence"], attrs["sequences_per_shard"]
    if attrs["in_frames"] + attrs["out_frames"] > T:
        raise bad(f"in_frames + out_frames ({attrs['in_frames']}+{attrs['out_frames']}) exceeds frames_per_sequence ({T})")
    if attrs["n_shards"] != math.ceil(N / S):
        raise bad(f"attribute n_shards is {attrs['n_shards']}, but {N} sequences in shards of {S} make {math.ceil(N / S)}")
    for key, kind in (("pixel_format", str), ("runs", list), ("qc_score_names", list), ("provenance", dict),
                      ("complete", bool)):
        if not isinstance(attrs.get(key), kind):
            raise bad(f"attribute {key} must be a {kind.__name__}, not {attrs.get(key)!r}")
    frames = arrays["frames"]
    if not isinstance(frames, zarr.Array) or frames.ndim != 5:
        raise bad(f"frames must be a 5-D array {DIMS['frames']}, not {getattr(frames, 'ndim', 'a group')}-D")
    if frames.dtype not in FRAME_DTYPES:
        raise bad(f"frames must be uint8 or uint16, not {frames.dtype}")
    if frames.shape[:2] != (N, T):
        raise bad(f"frames holds {frames.shape[0]} sequences of {frames.shape[1]} frames, but the attributes "
                  f"n_sequences and frames_per_sequence say {N} of {T}")
    max_value = attrs.get("max_value")
    top = np.iinfo(frames.dtype).max
    if not isinstance(max_value, (int, float)) or isinstance(max_value, bool) or not 0 < max_value <= top:
        raise bad(f"attribute max_value must be a number in (0, {top}] for {frames.dtype} frames, not {max_value!r}")
    bits = FORMAT_BITS.get(attrs["pixel_format"])
    if bits is not None and (frames.dtype != (np.uint8 if bits == 8 else np.uint16)
                             or max_value not in {max_value_for_bits(b) for b in range(1, bits + 1)}):
        raise bad(f"pixel_format {attrs['pixel_format']} means {'uint8' if bits == 8 else 'uint16'} frames with "
                  f"max_value 2^bits - 1 for at most {bits} significant bits (e.g. {max_value_for_bits(bits)}), "
                  f"not {frames.dtype} with {max_value!r}")
    extent = {"sequence": N, "time": T, "score": len(attrs["qc_score_names"])}
    for name, (dtype, _) in _SMALL.items():
        arr = arrays[name]
        expected = tuple(extent[d] for d in DIMS[name])
        if not isinstance(arr, zarr.Array) or arr.shape != expected or arr.dtype != np.dtype(dtype):
            got = f"{arr.dtype} {arr.shape}" if isinstance(arr, zarr.Array) else "a group"
            raise bad(f"{name} must be {np.dtype(dtype)} {expected} (dims {', '.join(DIMS[name])}), not {got}")
    if arrays[CHECKSUMS] is None and expects_checksums(attrs):
        raise bad(f"missing array {CHECKSUMS} (this dataset was written with shard checksums: its folder is gone)")
    for name in ("shard_done", CHECKSUMS):
        if name == CHECKSUMS and arrays[name] is None:
            continue  # written before checksums were recorded
        arr = arrays[name]
        if not isinstance(arr, zarr.Array) or arr.shape != (attrs["n_shards"],):
            raise bad(f"{name} must have one entry per shard ({attrs['n_shards']}), not shape {getattr(arr, 'shape', None)}")
    if arrays[CHECKSUMS] is not None and arrays[CHECKSUMS].dtype.kind not in "TUO":
        raise bad(f"{CHECKSUMS} must hold strings, not {arrays[CHECKSUMS].dtype}")


def _member(group: zarr.Group, name: str, path: str | os.PathLike):
    """``group[name]`` (an array, or a group where an array belongs), None if there is none; DatasetFormatError
    naming its ``zarr.json`` if zarr cannot read that document."""
    try:
        return group[name]
    except KeyError:
        return None
    except Exception as e:  # noqa: BLE001 - zarr raises JSONDecodeError, ValueError, TypeError... for bad metadata
        raise DatasetFormatError(f"{str(path).rstrip('/')}/{name}/zarr.json: cannot read the array's metadata "
                                 f"({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for a one-line error."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


# ---------------------------------------------------------------------------------------------------
# integrity: which files hold a shard, their checksums, presence and verification
# ---------------------------------------------------------------------------------------------------

def _array_files(array: zarr.Array, first: int | None = None) -> list[str]:
    """Keys (relative to the dataset) of the files that store ``array``: every storage unit (a shard where
    the array is sharded, else a chunk), or with ``first`` only the one holding row ``first``."""
    unit = array.shards or array.chunks
    if array.size == 0:
        return []
    if first is not None:
        grid = [[first // unit[0]]] + [[0]] * (array.ndim - 1)
    else:
        grid = [range(math.ceil(n / u)) for n, u in zip(array.shape, unit)]
    return [f"{array.path}/{array.metadata.encode_chunk_key(tuple(c))}" for c in itertools.product(*grid)]


def _shard_arrays(group: zarr.Group, names: Sequence[str] = _SHARD_ARRAYS) -> list[tuple[zarr.Array, int]]:
    """(array, rows per shard) of each of ``names`` (opened once: opening an array reads its metadata)."""
    S = int(group.attrs["sequences_per_shard"])
    return [(group[name], 1 if name == CHECKSUMS else S) for name in names]


def shard_files(group: zarr.Group, shard: int, *, originals: bool = True,
                arrays: list[tuple[zarr.Array, int]] | None = None) -> list[str]:
    """Keys of the files that hold shard ``shard`` (sequences ``[shard*S, (shard+1)*S)``): its part of
    ``frames`` and of every per-sequence array (one file each; none for an empty array), then, with
    ``originals``, the files of ``originals/<shard>`` and ``originals_index/<shard>`` where it has them.
    ``arrays``: :func:`_shard_arrays` of the group, when asking for many shards."""
    keys = [k for arr, rows in (arrays or _shard_arrays(group)) for k in _array_files(arr, shard * rows)]
    if originals:
        for name in ("originals", "originals_index"):
            if str(shard) in group[name]:  # created per shard: its metadata (dtype, shape, codecs) is the shard's too
                keys += [f"{name}/{shard}/zarr.json"] + _array_files(group[name][str(shard)])
    return keys


def file_checksum(path: "Path | upath.UPath", key: str, progress: Callable[[int], Any] | None = None) -> tuple[str, int]:
    """(BLAKE3 hex digest (256 bits, what ``b3sum`` prints), size in bytes) of the file ``key`` of the dataset
    at ``path`` (``progress(n)`` for every n bytes hashed). OSError (FileNotFoundError) if it cannot be read.
    BLAKE3, not SHA-256: 4.6 GB/s against 1.4 GB/s on one core here, and the writer hashes every shard. A
    local file is memory-mapped (2.7 GB/s here, against 1.1-1.3 GB/s through read()); a URL is read in blocks."""
    digest, size = blake3.blake3(), 0
    if isinstance(path, Path):
        file = path / key
        size = os.path.getsize(file)
        digest.update_mmap(file)
        if progress is not None:
            progress(size)
        return digest.hexdigest(), size
    with (path / key).open("rb") as f:
        while block := f.read(_READ_BLOCK):
            digest.update(block)
            size += len(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest(), size


METADATA_DIGESTS = "metadata_blake3"  # group attribute: {key: BLAKE3} of every array's and subgroup's zarr.json
ATTRIBUTE_DIGESTS = "attributes_blake3"  # group attribute: {attribute: BLAKE3, 16 hex digits} of every other one


def attribute_digests(attrs: dict) -> dict[str, str]:
    """Per group attribute but ``attributes_blake3`` itself, the first 16 hex digits of the BLAKE3 digest of its value
    as canonical JSON (sorted keys, no spaces). :meth:`DatasetWriter.finalize` records them on the attributes as
    stored, so that ``verify`` and ``info`` can name an attribute edited afterwards (a ``max_value`` changed from 4095
    to 65535 passes every other check and reads every frame 16x darker)."""
    return {key: blake3.blake3(json.dumps(value, sort_keys=True, separators=(",", ":"))
                               .encode()).hexdigest()[:16]
            for key, value in attrs.items() if key != ATTRIBUTE_DIGESTS}


def _metadata_keys(group: zarr.Group) -> list[str]:
    """Keys of the metadata documents (``zarr.json``) of the arrays and subgroups that :meth:`DatasetWriter.create`
    lays out: what decides how the shard files' bytes are read (dtype, byte order, shape, chunks, codecs)."""
    return sorted(f"{name}/zarr.json" for name in group if name in _LAYOUT)


def expects_checksums(attrs: dict) -> bool:
    """Whether a dataset with these attributes was written by a chdl that records shard checksums, so that a
    missing ``shard_checksums`` array is damage: one with the metadata digests (2026-12-02 on) or with
    ``reconstruction_method_bits`` (2026-12-01 on; checksums came on 2026-11-30)."""
    return METADATA_DIGESTS in attrs or "reconstruction_method_bits" in attrs


def _listing(path: "Path | upath.UPath") -> set[str]:
    """Every file under the dataset, as keys relative to it: one walk (one recursive listing on a URL)."""
    if not isinstance(path, Path):
        root = path.path.rstrip("/") + "/"
        return {k[len(root):] for k in path.fs.find(path.path) if k.startswith(root)}
    out = set()
    for d, _, files in os.walk(path):
        rel = os.path.relpath(d, path).replace(os.sep, "/")
        out.update(f if rel == "." else f"{rel}/{f}" for f in files)
    return out


def _without_capture_times(record: str) -> str:
    """A shard's checksum record (JSON) without its ``timestamp_ns`` files, canonical (sorted keys, no spaces); the
    record as it is when it cannot be read (the digest then differs, as the damage does)."""
    try:
        files = json.loads(record)
    except ValueError:
        return record
    if not isinstance(files, dict):
        return record
    return json.dumps({k: v for k, v in files.items() if not k.startswith("timestamp_ns/")}, sort_keys=True,
                      separators=(",", ":"))


def missing_shard_files(group: zarr.Group, path: "Path | upath.UPath") -> list[tuple[int, str]]:
    """``(shard, key)`` of every shard file of a complete dataset that is not there, from one listing and no
    reads: the files of ``frames``, every per-sequence array and ``shard_checksums``; for a dataset written
    before checksums were recorded, ``frames`` only (older writers skipped chunks that held only the fill
    value, which ``frames`` of real data never is)."""
    present = _listing(path)
    arrays = _shard_arrays(group, _SHARD_ARRAYS + (CHECKSUMS,) if CHECKSUMS in group else ("frames",))
    return [(shard, k) for shard in range(int(group.attrs["n_shards"]))
            for k in shard_files(group, shard, originals=False, arrays=arrays) if k not in present]


def _files_line(problems: Sequence[tuple[int, str]], what: str, limit: int = 4) -> str:
    shards = sorted({s for s, _ in problems})
    files = ", ".join(k for _, k in problems[:limit]) + (f" and {len(problems) - limit} more" if len(problems) > limit else "")
    return (f"{what} shard file{'s' if len(problems) > 1 else ''} {files} "
            f"(shard{'s' if len(shards) > 1 else ''} {', '.join(map(str, shards[:limit]))}"
            f"{' ...' if len(shards) > limit else ''})")


@dataclasses.dataclass
class ShardProblem:
    shard: int | None  # None: a metadata document of the whole dataset (an array's zarr.json)
    file: str  # key relative to the dataset
    problem: str  # "missing", "checksum mismatch", "size ...", "no checksum recorded", ...


PERMISSION_PROBLEM = "this user may not read it"  # a ShardProblem that is not damage (the file's permissions)


@dataclasses.dataclass
class VerifyResult:
    path: str
    has_checksums: bool  # False: written before chdl recorded checksums (nothing was checked)
    shards: int  # shards checked
    files: int  # files hashed
    bytes: int  # bytes hashed
    problems: list[ShardProblem]

    @property
    def bad_shards(self) -> list[int]:
        return sorted({p.shard for p in self.problems if p.shard is not None})

    @property
    def bad_metadata(self) -> list[str]:
        """Metadata documents (``<array>/zarr.json``) that are missing or differ from when the dataset was made."""
        return list(dict.fromkeys(p.file for p in self.problems if p.shard is None))

    @property
    def permissions_only(self) -> bool:
        """Every problem is a file this user may not read (:data:`PERMISSION_PROBLEM`): not damage."""
        return bool(self.problems) and all(p.problem.startswith(PERMISSION_PROBLEM) for p in self.problems)

    def error(self) -> str:
        """One line naming the damaged shard(s) and metadata and their first problems (for a refusal)."""
        first = "; ".join(f"{p.file}: {p.problem}" for p in self.problems[:3])
        more = f"; and {len(self.problems) - 3} more" if len(self.problems) > 3 else ""
        bad = self.bad_shards
        what = ([f"shard{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}"]
                if bad else []) + (["metadata"] if self.bad_metadata else [])
        if self.permissions_only:
            return (f"{self.path}: {' and '.join(what)} cannot be read by this user ({first}{more}); not damage: "
                    f"give this user read access (chdl verify {self.path} lists every such file)")
        return (f"{self.path}: {' and '.join(what)} damaged ({first}{more}); the dataset is damaged on disk "
                f"(chdl verify {self.path} lists every bad file)")


class DatasetWriter:
    """Creates (or resumes) a dataset and writes it one whole shard at a time."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.group = group
        self.attrs = dict(group.attrs)
        self.n_sequences = int(self.attrs["n_sequences"])
        self.sequences_per_shard = int(self.attrs["sequences_per_shard"])
        self._members: dict[str, zarr.Array | zarr.Group | None] = {}
        self._frames_buffer = bytearray()  # a frames shard file is assembled here (_frames_shard_bytes)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        n_sequences: int,
        frames_per_sequence: int,
        channels: int,
        height: int,
        width: int,
        dtype: Any = np.uint8,
        sequences_per_shard: int = 16,
        in_frames: int = 5,
        out_frames: int = 5,
        pixel_format: str | None = None,
        max_value: float | None = None,
        qc_score_names: Sequence[str] = (),
        runs: Sequence[str] = (),
        provenance: dict | None = None,
        extra: dict | None = None,
        overwrite: bool = False,
        keep_previous: bool = False,
    ) -> "DatasetWriter":
        """Lay out an empty, incomplete dataset at ``path``. An existing path is refused unless ``overwrite``.
        ``pixel_format`` defaults to Mono8 / Mono16 by ``dtype``, ``max_value`` to the format's largest value.
        ValueError for a layout :func:`validate` would refuse (nothing is written then).
        ``keep_previous`` (local paths): a complete dataset that ``overwrite`` replaces is moved aside to
        ``.<name>.previous`` instead of deleted, until :meth:`finalize` completes the new one (a failed replacement
        can then put it back: :meth:`restore_previous`); an incomplete one is deleted as before, and a kept
        previous dataset of an earlier, unfinished replacement stays the one kept."""
        path = dataset_path(path)
        dtype = np.dtype(dtype)
        if dtype not in (np.uint8, np.uint16):
            raise ValueError(f"frames dtype must be uint8 or uint16, not {dtype}")
        pixel_format = pixel_format or ("Mono8" if dtype == np.uint8 else "Mono16")
        if max_value is None:
            max_value = max_value_for_bits(FORMAT_BITS[pixel_format]) if pixel_format in FORMAT_BITS else np.iinfo(dtype).max
        if n_sequences < 1:
            raise ValueError("a dataset needs at least one sequence")
        if in_frames + out_frames > frames_per_sequence:
            raise ValueError(f"in_frames + out_frames ({in_frames}+{out_frames}) exceeds frames_per_sequence ({frames_per_sequence})")
        if path.exists():  # a file or someone's folder: --overwrite would not help, so do not suggest it
            refuse_non_dataset(path)
        if path.exists() and not overwrite:
            what = "already exists"  # say what it is: an interrupted run of the same command is the usual case
            if marked_incomplete(path):
                what = "already exists, an incomplete dataset (its writer stopped before the end, or is still running)"
            raise FileExistsError(f"{path}: {what} (use --overwrite to replace it)")
        # A local dataset is built under a temporary name and renamed into place, so that a kill at any moment
        # leaves either no dataset (or the old one) or a complete empty layout; leftovers of a killed creation
        # are removed. Object stores (an fsspec URL) have no atomic rename: there the layout is built in place
        # and a creation cut off is what `interrupted_creation` recognises and the next run creates afresh.
        local = isinstance(path, Path)
        if local:
            building = path.with_name(f".{path.name}.creating")
            replaced = path.with_name(f".{path.name}.replaced")
            for stale in (building, replaced):
                _remove(stale)
        else:
            if path.exists():
                _remove(path)
            building = path
        n_shards = math.ceil(n_sequences / sequences_per_shard)
        T, S, K = frames_per_sequence, sequences_per_shard, len(qc_score_names)
        provenance = dict(provenance or {})
        provenance.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat())
        from chdl import __version__
        from chdl.provenance import code_version

        provenance.setdefault("tool_version", __version__)
        provenance.setdefault("code", code_version())
        provenance.setdefault("cwd", os.getcwd())  # where `command` ran: its paths may be relative to it
        attrs = {
            "schema": SCHEMA,
            "complete": False,
            "n_sequences": n_sequences,
            "frames_per_sequence": T,
            "in_frames": in_frames,
            "out_frames": out_frames,
            "pixel_format": pixel_format,
            "max_value": float(max_value),
            "sequences_per_shard": S,
            "n_shards": n_shards,
            "qc_score_names": list(qc_score_names),
            "flag_bits": {name: bit for bit, name in FLAG_NAMES.items()},
            "reconstruction_method_bits": {"shift": RECONSTRUCTION_SHIFT, "mask": RECONSTRUCTION_MASK,
                                           "codes": {m: i + 1 for i, m in enumerate(RECONSTRUCTION_METHODS)}},
            "split_codes": dict(SPLIT_CODES),
            "runs": list(runs),
            "provenance": provenance,
            "extra": dict(extra or {}),
        }
        try:
            group = zarr.open_group(str(building), mode="w", zarr_format=3, attributes=attrs)
            N = n_sequences
            group.create_array("frames", shape=(N, T, channels, height, width), dtype=dtype,
                               chunks=(1, T, channels, height, width), shards=(S, T, channels, height, width),
                               compressors=_compressor(), fill_value=0, dimension_names=DIMS["frames"])
            extent = {"sequence": N, "time": T, "score": K}
            for name, (dt, fill) in _SMALL.items():
                shape = tuple(extent[d] for d in DIMS[name])
                # One chunk per shard of sequences, so a shard writer owns its chunk of every array.
                chunks = (S,) + tuple(max(1, d) for d in shape[1:])
                group.create_array(name, shape=shape, dtype=dt, chunks=chunks, compressors=_compressor(),
                                   fill_value=fill, dimension_names=DIMS[name])
            group.create_array("shard_done", shape=(n_shards,), dtype=np.uint8, chunks=(1,), fill_value=0,
                               dimension_names=("shard",))
            group.create_array(CHECKSUMS, shape=(n_shards,), dtype=str, chunks=(1,), fill_value="",
                               dimension_names=("shard",))
            group.create_group("originals")
            group.create_group("originals_index")
            # the metadata documents never change after this: their digests let `verify` see an edited byte
            # order, dtype or codec, which no shard checksum covers
            group.update_attributes({METADATA_DIGESTS: {key: file_checksum(building, key)[0]
                                                        for key in _metadata_keys(group)}})
            try:
                validate(group, path)
            except DatasetFormatError as e:
                raise ValueError(str(e).replace("malformed dataset", "refusing to create a dataset", 1)) from None
        except BaseException:  # disk full, Ctrl-C: leave nothing behind (a kill leaves it to the next creation)
            _remove(building)
            raise
        if local:
            if path.exists():  # overwrite: the old dataset stays whole until the new layout replaces it
                previous = previous_path(path)
                if keep_previous and not marked_incomplete(path) and (path / "zarr.json").is_file():
                    _remove(previous)  # (older than the complete dataset that replaces it as the kept one)
                    os.rename(path, previous)
                else:
                    os.rename(path, replaced)
            os.rename(building, path)
            _remove(replaced)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "DatasetWriter":
        """Reopen an incomplete dataset to write its remaining shards."""
        path = dataset_path(path)
        return cls(path, _open_group(path, "r+"))

    @staticmethod
    def interrupted_creation(path: str | os.PathLike) -> bool:
        """Whether ``path`` is a layout whose creation was cut off before it was whole (the chdl schema, not
        complete, no ``shard_done`` array, so no shard can have been written): what versions before atomic
        creation could leave. Nothing in it is worth keeping; a writer may create the dataset afresh."""
        try:
            group = zarr.open_group(str(path), mode="r", zarr_format=3)
            return (group.attrs.get("schema") == SCHEMA and group.attrs.get("complete") is False
                    and "shard_done" not in group)
        except Exception:  # noqa: BLE001 - unreadable: not something to delete
            return False

    def remove_interrupted_writes(self) -> int:
        """Delete the temporary files of zarr writes that a kill interrupted (zarr's local store writes each
        file to ``<name>.<32 hex digits>.partial`` and renames it into place; other files are left alone);
        returns how many. Object stores write each object whole: nothing to do there. Call while no other
        writer is at work on this dataset (when resuming, and in :meth:`finalize`)."""
        if not isinstance(self.path, Path):
            return 0
        leftovers = [p for p in self.path.rglob("*.partial") if _PARTIAL.fullmatch(p.name)]
        for p in leftovers:
            p.unlink()
        return len(leftovers)

    @property
    def n_shards(self) -> int:
        return int(self.attrs["n_shards"])

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    def shard_range(self, shard: int) -> range:
        start = shard * self.sequences_per_shard
        return range(start, min(start + self.sequences_per_shard, self.n_sequences))

    def done_shards(self) -> set[int]:
        return {int(i) for i in np.flatnonzero(read_array(self.group["shard_done"], slice(None), self.path))}

    def write_shard(
        self,
        shard: int,
        *,
        frames: np.ndarray,
        qc_flags: np.ndarray | None = None,
        qc_scores: np.ndarray | None = None,
        split: np.ndarray | None = None,
        run_index: np.ndarray | None = None,
        lane: np.ndarray | None = None,
        position_um: np.ndarray | None = None,
        timestamp_ns: np.ndarray | None = None,
        originals: Sequence[tuple[int, int, np.ndarray]] = (),
    ) -> None:
        """Write every array's part of shard ``shard`` (all its sequences at once), then mark it done.

        ``frames`` (k, T, C, H, W) and the pixels of ``originals``: integers in 0..``max_value`` (the dataset's
        ``attrs``), as the camera gave them. ``split``: one code per sequence, 0 train, 1 val, 2 excluded, 3 test
        (``SPLIT_CODES``). An array left out is written as its fill value: ``split`` 2 (every sequence excluded),
        ``qc_flags`` 0, ``qc_scores`` NaN, ``run_index`` / ``lane`` -1, ``position_um`` NaN, ``timestamp_ns`` -1.
        ``originals`` lists ``(sequence_within_shard, t, pixels (C,H,W))`` for each frame whose stored pixels are
        a reconstruction, so the original is kept.

        ValueError naming the dataset and shard, before anything is written, for pixels that are not integers
        (float intensities in [0, 1] were stored as 0, all black) or lie outside 0..max_value (they wrapped
        around: 256 stored as 0 in uint8, or 12-bit data over 4095 read back as intensities above 1), and for
        split codes other than 0, 1, 2 (255 and 7 were stored, then counted by no split and read as "all").
        """
        where = f"{self.path}: shard {shard}"
        frames = np.asarray(frames)  # (a list of arrays: AttributeError 'list' object has no attribute 'shape')
        max_value = float(self.attrs["max_value"])
        for name, values in [("frames", frames)] + [("originals", p) for _, _, p in originals]:
            if why := _pixel_problem(values, max_value):
                raise ValueError(f"{where}: {name}: {why}")
        if split is not None and (bad := unknown_split_codes(split)).size:
            raise ValueError(f"{where}: split code {bad[0].item()!r} (known: "
                             f"{', '.join(f'{v} {k}' for k, v in SPLIT_CODES.items())})")
        # zarr's default (write_empty_chunks=False) scans every chunk for the fill value before writing it:
        # 40% of the write CPU on 800x600 frames (3.66 -> 2.22 ms a frame measured). Writing all-fill
        # chunks instead changes nothing on read.
        with zarr.config.set({"array.write_empty_chunks": True}):
            self._write_shard(shard, frames, qc_flags, qc_scores, split, run_index, lane, position_um,
                              timestamp_ns, originals)

    def _member(self, name: str) -> "zarr.Array | zarr.Group | None":
        """The array or group ``name`` of the dataset (None if absent), opened once per writer: opening reads
        its metadata (~0.5 ms each, a dozen per shard), and a worker writes many shards with one writer.
        Called inside :meth:`write_shard`'s ``write_empty_chunks`` setting, which an array takes when opened."""
        if name not in self._members:
            self._members[name] = self.group[name] if name in self.group else None
        return self._members[name]

    def _write_shard(self, shard, frames, qc_flags, qc_scores, split, run_index, lane, position_um,
                     timestamp_ns, originals) -> None:
        rng = self.shard_range(shard)
        k = len(rng)
        sl = slice(rng.start, rng.stop)
        fr = self._member("frames")
        if frames.shape != (k,) + fr.shape[1:]:
            raise ValueError(f"shard {shard}: frames shape {frames.shape} != expected {(k,) + fr.shape[1:]}")
        # the frames shard is encoded here and stored whole (one store write, atomic like zarr's own)
        frames_key = _array_files(fr, rng.start)[0]
        frames = np.ascontiguousarray(frames, dtype=fr.dtype)
        if len(self._frames_buffer) < (need := _frames_shard_bound(fr, frames)):
            self._frames_buffer = bytearray(need)  # a new one: views of the old may still be alive
        frames_file = _frames_shard_bytes(fr, frames, self._frames_buffer)
        sync((fr.store_path / frames_key.removeprefix(f"{fr.path}/")).set(
            default_buffer_prototype().buffer.from_bytes(frames_file)))
        written = [(fr, self.sequences_per_shard)]  # the arrays in _SHARD_ARRAYS order, for shard_files
        given = dict(qc_flags=qc_flags, qc_scores=qc_scores, split=split, run_index=run_index, lane=lane,
                     position_um=position_um, timestamp_ns=timestamp_ns)
        for name in _PER_SEQUENCE:
            arr = self._member(name)
            value = given[name]
            expected = (k,) + arr.shape[1:]
            if value is None:
                value = np.full(expected, arr.fill_value, dtype=arr.dtype)
            value = np.asarray(value)
            if value.shape != expected:
                raise ValueError(f"shard {shard}: {name} shape {value.shape} != expected {expected}")
            arr[sl] = value.astype(arr.dtype, copy=False)
            written.append((arr, self.sequences_per_shard))
        for key in ("originals", "originals_index"):
            if str(shard) in self._member(key):
                del self._member(key)[str(shard)]  # a rerun of this shard replaces what an interrupted one left
        if originals:
            pix = np.stack([np.asarray(p) for _, _, p in originals]).astype(fr.dtype, copy=False)
            idx = np.array([(rng.start + s, t) for s, t, _ in originals], dtype=np.int64)
            self._member("originals").create_array(str(shard), data=pix, chunks=(1,) + pix.shape[1:],
                                                   compressors=_compressor(),
                                                   dimension_names=("frame", "channel", "height", "width"))
            self._member("originals_index").create_array(str(shard), data=idx, chunks=idx.shape,
                                                         dimension_names=("frame", "sequence_time"))
        if self._member(CHECKSUMS) is not None:  # (absent in a dataset begun before checksums were recorded)
            # the frames shard (95 % of the bytes) hashed from the bytes just stored; the small files zarr
            # wrote read back from the store (docs/dataset-format.md: cost)
            record = {key: dict(zip(("blake3", "bytes"),
                                    (blake3.blake3(frames_file).hexdigest(), len(frames_file)) if key == frames_key
                                    else file_checksum(self.path, key)))
                      for key in shard_files(self.group, shard, arrays=written)}
            self._member(CHECKSUMS)[shard] = json.dumps(record, sort_keys=True, separators=(",", ":"))
        self._member("shard_done")[shard] = 1

    previous_left: str | None = None  # the replaced dataset finalize could not remove, and why

    def finalize(self, **provenance_updates: Any) -> None:
        """Mark the dataset complete. DatasetIncompleteError if any shard is still missing. Removes the
        temporary files that zarr's local store leaves when a writer is killed mid-file
        (:meth:`remove_interrupted_writes`), and the dataset this one replaced; where that cannot be removed (another
        user's files), :attr:`previous_left` says where it is and why (the new dataset is complete: an --overwrite
        over a colleague's dataset said "incomplete ... rerun to resume", and a rerun would curate it all again)."""
        missing = sorted(set(range(self.n_shards)) - self.done_shards())
        if missing:
            raise DatasetIncompleteError(f"{self.path}: cannot finalize, {len(missing)} shard(s) not written (first: {missing[0]})")
        self.remove_interrupted_writes()
        attrs = dict(self.group.attrs)
        if provenance_updates:
            attrs["provenance"] = {**attrs.get("provenance", {}), **provenance_updates}
        attrs.pop(ATTRIBUTE_DIGESTS, None)
        self.group.update_attributes(attrs)  # one (atomic) write of zarr.json; attrs.update writes once per key
        # then "complete" and the digests of the attributes as stored (read back: JSON is what a reader compares),
        # in one more write: a kill between the two leaves an incomplete dataset, which the rerun finalizes
        stored = {**_open_group(self.path, "r").attrs, "complete": True}
        self.group.update_attributes({**stored, ATTRIBUTE_DIGESTS: attribute_digests(stored)})
        if isinstance(self.path, Path):  # (a URL's dataset is built in place: nothing kept aside)
            try:
                _remove(previous_path(self.path))  # the dataset this one replaced (create's keep_previous)
            except OSError as e:  # (another user's files): this one is complete all the same; the caller says so
                self.previous_left = f"{previous_path(self.path)} ({e.strerror or e})"

    @staticmethod
    def restore_previous(path) -> bool:
        """Put back the dataset that an unfinished replacement of ``path`` moved aside (create's ``keep_previous``),
        deleting the incomplete new one; False (nothing changed) when there is none."""
        path = dataset_path(path)
        if not isinstance(path, Path) or not previous_path(path).is_dir():
            return False
        replaced = path.with_name(f".{path.name}.replaced")
        if path.exists():
            os.rename(path, replaced)
        os.rename(previous_path(path), path)
        _remove(replaced)
        return True


class DatasetReader:
    """A complete dataset opened for reading. Arrays are zarr arrays: slicing reads only what it needs."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.group = group
        self.attrs = dict(group.attrs)
        self.frames = group["frames"]
        self.n_sequences = int(self.attrs["n_sequences"])

    @property
    def qc_flags(self) -> np.ndarray:
        return read_array(self.group["qc_flags"], slice(None), self.path)

    @property
    def qc_scores(self) -> np.ndarray:
        return read_array(self.group["qc_scores"], slice(None), self.path)

    @property
    def split(self) -> np.ndarray:
        return read_array(self.group["split"], slice(None), self.path)

    def indices(self, split: str = "all") -> np.ndarray:
        """Sequence indices of a split ("train", "val", "test", "excluded", or "all" = every one not excluded)."""
        codes = self.split
        if (bad := unknown_split_codes(codes)).size:  # (written before write_shard checked)
            raise DatasetFormatError(f"{self.path}: split: code {bad[0]} at sequence "
                                     f"{int(np.flatnonzero(codes == bad[0])[0])} (known: "
                                     f"{', '.join(f'{v} {k}' for k, v in SPLIT_CODES.items())})")
        if split == "all":
            return np.flatnonzero(codes != SPLIT_EXCLUDED)
        if split not in SPLIT_CODES:
            raise ValueError(f"unknown split {split!r} (known: all, {', '.join(SPLIT_CODES)})")
        return np.flatnonzero(codes == SPLIT_CODES[split])

    @property
    def has_checksums(self) -> bool:
        """Whether the dataset records shard checksums (False: written before chdl recorded them)."""
        return CHECKSUMS in self.group

    def sequence_keys(self, indices: Sequence[int]) -> list[str | None]:
        """Per sequence of ``indices``, a 16-hex-digit BLAKE3 digest of where its frames came from (source run
        name, lane, capture times of its first and last recorded frame), which a re-curation of the same recording
        (another split, other QC settings) gives again; None for a sequence without that record (imported data:
        lane -1 or no capture time). Checkpoints record those of their training sequences, so an evaluation can
        say when it scores sequences the model was trained on (:func:`diffuma.evaluation.evaluation_record`)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return []
        runs = self.attrs.get("runs") or []
        run_index = read_array(self.group["run_index"], slice(None), self.path)[idx]
        lane = read_array(self.group["lane"], slice(None), self.path)[idx]
        times = read_array(self.group["timestamp_ns"], slice(None), self.path)[idx]
        keys: list[str | None] = []
        for r, ln, t in zip(run_index.tolist(), lane.tolist(), times.tolist()):
            known = [x for x in t if x >= 0]  # (a dropped frame has no capture time)
            if ln < 0 or not known or not 0 <= r < len(runs):
                keys.append(None)
                continue
            source = f"{Path(str(runs[r])).name}\0{ln}\0{known[0]}\0{known[-1]}"
            keys.append(blake3.blake3(source.encode()).hexdigest()[:16])
        return keys

    def identity(self) -> dict:
        """What tells this dataset from another wherever it lies (a path can move): ``frames_shape`` (N, T, C, H, W),
        ``created`` (its provenance's creation time), ``content``: the BLAKE3 digest (64 hex digits) of its
        per-shard checksum records, which hold the digest of every shard file (frames, split, QC arrays: the whole
        content, keyed by paths inside it), and ``data``: the same without the capture times (``timestamp_ns``), so
        the same frames, splits, QC results and positions give the same digest wherever and whenever they were
        recorded (a replayed recording, a re-run of the simulator with the same seed: ``content`` differs there);
        both None for a dataset written before chdl recorded shard checksums. A copy or a moved dataset keeps all
        four. Checkpoints, ``chdl eval`` and ``chdl bench`` record it; ``chdl info`` prints both digests."""
        content = data = None
        if self.has_checksums:
            records = np.asarray(read_array(self.group[CHECKSUMS], slice(None), self.path)).reshape(-1)
            content = blake3.blake3("\n".join(str(r) for r in records).encode()).hexdigest()
            data = blake3.blake3("\n".join(_without_capture_times(str(r)) for r in records).encode()).hexdigest()
        return {"frames_shape": [int(n) for n in self.frames.shape],
                "created": str(self.attrs.get("provenance", {}).get("created", "")), "content": content, "data": data}

    def shards_of(self, sequences: Sequence[int]) -> list[int]:
        """The shards that hold the given sequence indices, sorted."""
        S = int(self.attrs["sequences_per_shard"])
        return sorted({int(i) // S for i in sequences})

    def _records(self, shards: Sequence[int], present: set[str]) -> tuple[dict[int, dict], list[ShardProblem]]:
        """The checksum record of each of ``shards`` ({file key: {"blake3", "bytes"}}), and the problems seen without
        reading a shard file: files missing from the listing ``present`` (the shard's arrays; those its record lists,
        the originals of its reconstructed frames included), a missing or unreadable record."""
        problems: list[ShardProblem] = []
        records: dict[int, dict] = {}
        sums = self.group[CHECKSUMS]
        arrays = _shard_arrays(self.group)
        for s in shards:
            key = _array_files(sums, s)[0]
            problems += [ShardProblem(s, k, "missing") for k in shard_files(self.group, s, originals=False, arrays=arrays)
                         if k not in present]
            if key not in present:
                problems.append(ShardProblem(s, key, "missing (the shard's checksum record)"))
                continue
            try:
                record = json.loads(np.asarray(read_array(sums, s, self.path)).item())
                if not isinstance(record, dict) or not record:
                    raise ValueError("empty")
                records[s] = record
            except (ValueError, DatasetFormatError):
                problems.append(ShardProblem(s, key, "unreadable checksum record"))
        return records, problems

    def missing_files(self) -> list[tuple[int, str]]:
        """``(shard, key)`` of every shard file that is not there, from one listing and the checksum records (no
        shard file is read): :func:`missing_shard_files`, and with checksums also the files the records list (the
        originals of reconstructed frames, which the listing alone cannot tell). What ``chdl info`` reports."""
        if not self.has_checksums:
            return missing_shard_files(self.group, self.path)
        present = _listing(self.path)
        records, problems = self._records(range(int(self.attrs["n_shards"])), present)
        missing = {(p.shard, p.file) for p in problems if p.problem.startswith("missing")}
        missing |= {(s, k) for s, r in records.items() for k in r if k not in present}
        return sorted(missing)

    def verify(self, shards: Sequence[int] | None = None, *, progress: bool = False) -> VerifyResult:
        """Read every file of ``shards`` (default: all) and compare its size and BLAKE3 digest with those recorded
        when it was written; a missing file, a missing or unreadable record are problems too. Never raises for
        damage: the result lists it (``problems``, ``bad_shards``, ``error()``). ``progress``: a tqdm bar of
        bytes on stderr, once it has taken a second. A dataset without checksums has only the presence of its
        ``frames`` files checked."""
        from tqdm import tqdm

        n = int(self.attrs["n_shards"])
        shards = range(n) if shards is None else sorted({int(s) for s in shards if 0 <= int(s) < n})
        wanted = set(shards)
        if not self.has_checksums:
            missing = [ShardProblem(s, k, "missing") for s, k in missing_shard_files(self.group, self.path) if s in wanted]
            return VerifyResult(str(self.path), False, len(shards), 0, 0, missing)
        present = _listing(self.path)
        records, problems = self._records(shards, present)
        problems += self._metadata_problems(present)
        total = sum(int(v.get("bytes", 0)) for r in records.values() for v in r.values() if isinstance(v, dict))
        files = done = 0
        # the bar shows once hashing has taken a second (no flash of a bar for a small dataset)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="verify", disable=not progress,
                  dynamic_ncols=True, delay=1.0) as bar:
            for s, record in records.items():
                for key, want in sorted(record.items()):
                    if not isinstance(want, dict) or not {"blake3", "bytes"} <= set(want):
                        problems.append(ShardProblem(s, key, "malformed checksum record"))
                        continue
                    if key not in present:
                        problems.append(ShardProblem(s, key, "missing"))
                        bar.update(int(want["bytes"]))
                        continue
                    try:
                        digest, size = file_checksum(self.path, key, bar.update)
                    except PermissionError as e:  # not damage: an admin re-curated or deleted a healthy dataset for it
                        problems.append(ShardProblem(s, key, f"{PERMISSION_PROBLEM} ({e.strerror or e})"))
                        continue
                    except OSError as e:
                        problems.append(ShardProblem(s, key, f"unreadable ({e.strerror or e})"))
                        continue
                    files, done = files + 1, done + size
                    if size != want["bytes"]:
                        problems.append(ShardProblem(s, key, f"{size} bytes, {want['bytes']} when it was written"))
                    elif digest != want["blake3"]:
                        problems.append(ShardProblem(s, key, "checksum mismatch (its BLAKE3 digest differs from the "
                                                             "one recorded when it was written)"))
        problems = sorted({(p.shard, p.file): p for p in reversed(problems)}.values(), key=lambda p: (p.shard, p.file))
        return VerifyResult(str(self.path), True, len(shards), files, done, problems)

    def metadata_problems(self) -> list[ShardProblem]:
        """The metadata documents (``zarr.json`` of every array) missing or changed since the dataset was made, by
        their recorded digests (a few small files: cheap; ``chdl info`` checks them, ``verify`` too)."""
        return self._metadata_problems(_listing(self.path))

    def _metadata_problems(self, present: set[str]) -> list[ShardProblem]:
        """The group attributes and metadata documents that differ from the digests recorded when the dataset was
        made (none recorded before 2026-12-02, no attribute digests before 2026-12-03: nothing to compare)."""
        problems = self._attribute_problems()
        recorded = self.attrs.get(METADATA_DIGESTS)
        if recorded is None:
            return problems
        if not isinstance(recorded, dict):
            return problems + [ShardProblem(None, "zarr.json", f"malformed attribute {METADATA_DIGESTS}")]
        for key, want in sorted(recorded.items()):
            if key not in present:
                problems.append(ShardProblem(None, key, "missing"))
            elif file_checksum(self.path, key)[0] != want:
                problems.append(ShardProblem(None, key, "changed since the dataset was made (its BLAKE3 digest differs "
                                                        "from the one recorded then: dtype, byte order, shape or codecs "
                                                        "may read the shard files wrongly)"))
        return problems

    def _attribute_problems(self) -> list[ShardProblem]:
        """The group attributes changed, removed or added since :meth:`DatasetWriter.finalize` recorded their digests:
        one problem of file ``zarr.json`` naming each, or none."""
        attrs = dict(self.attrs)
        recorded = attrs.get(ATTRIBUTE_DIGESTS)
        if recorded is None:  # written before 2026-12-03, unless it knows the test split, which came after them
            codes = attrs.get("split_codes")
            return ([ShardProblem(None, "zarr.json", f"attribute {ATTRIBUTE_DIGESTS} removed (a dataset whose "
                                                     "split_codes know test was written with it)")]
                    if isinstance(codes, dict) and "test" in codes else [])
        if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
            return [ShardProblem(None, "zarr.json", f"malformed attribute {ATTRIBUTE_DIGESTS}")]
        now = attribute_digests(attrs)
        edits = [f"{key} {'removed' if key not in now else 'added' if key not in recorded else 'changed'}"
                 for key in sorted(set(recorded) | set(now)) if now.get(key) != recorded.get(key)]
        if not edits:
            return []
        return [ShardProblem(None, "zarr.json", f"attribute{'s' if len(edits) > 1 else ''} edited after the dataset was "
                                                f"finished (by {ATTRIBUTE_DIGESTS}): {', '.join(edits)}")]

    def originals(self) -> list[tuple[int, int, np.ndarray]]:
        """``(sequence, t, pixels (C,H,W))`` of every original frame that a reconstruction replaced."""
        out = []
        for key in sorted(self.group["originals_index"].array_keys(), key=int):
            idx = read_array(self.group["originals_index"][key], slice(None), self.path)
            pix = read_array(self.group["originals"][key], slice(None), self.path)
            out += [(int(s), int(t), p) for (s, t), p in zip(idx, pix)]
        return out

    def summary(self) -> dict:
        flags = self.qc_flags
        split = self.split
        return {
            "path": str(self.path),
            "schema": self.attrs["schema"],
            "shape": list(self.frames.shape),
            "dims": list(DIMS["frames"]),
            "dtype": str(self.frames.dtype),
            "pixel_format": self.attrs["pixel_format"],
            "max_value": self.attrs["max_value"],
            "in_frames": self.attrs["in_frames"],
            "out_frames": self.attrs["out_frames"],
            "sequences_per_shard": self.attrs["sequences_per_shard"],
            "n_shards": self.attrs["n_shards"],
            "splits": {name: int((split == code).sum()) for name, code in SPLIT_CODES.items()}
            | {f"unknown code {c}": int((split == c).sum()) for c in unknown_split_codes(split)},
            "qc_frames_flagged": {name: int(((flags & bit) != 0).sum()) for bit, name in FLAG_NAMES.items()},
            "reconstructed_by": reconstruction_counts(flags),
            "qc_frames_total": int(flags.size),
            "qc_score_names": list(self.attrs["qc_score_names"]),  # none: QC did not run (chdl import)
            "runs": self.attrs["runs"],
            "provenance": self.attrs["provenance"],
        }


def reconstruction_counts(flags: np.ndarray) -> dict[str, int]:
    """{method: frames} over reconstructed frames of ``flags`` (any shape, qc_flags bits); "not recorded"
    counts reconstructed frames of datasets written before the method was stored."""
    flags = np.asarray(flags)
    code = (flags[(flags & FLAG_RECONSTRUCTED) != 0] & RECONSTRUCTION_MASK) >> RECONSTRUCTION_SHIFT
    counts = {m: int((code == i + 1).sum()) for i, m in enumerate(RECONSTRUCTION_METHODS)}
    if (unknown := int((code == 0).sum())):
        counts["not recorded"] = unknown
    return counts


def open_dataset(path: str | os.PathLike, *, check_files: bool = True) -> DatasetReader:
    """Open a complete dataset; DatasetIncompleteError / DatasetFormatError (naming the path) otherwise.
    ``check_files``: also refuse it if a shard file is missing (:func:`missing_shard_files`: one listing, no
    reads), naming the file(s); off only where the caller has just checked (a DataLoader worker)."""
    path = dataset_path(path)
    if not path.exists():
        raise DatasetFormatError(f"{path}: no such dataset")
    group = _open_group(path, "r")
    attrs = group.attrs
    done = read_array(group["shard_done"], slice(None), path)
    if attrs.get("complete", False) and not done.all():  # finalize checks every shard: a shard_done file is gone
        first = int(np.flatnonzero(~done.astype(bool))[0])
        raise DatasetFormatError(f"{path}: marked complete, but shard_done says shard {first} was not written (its "
                                 f"file {_array_files(group['shard_done'], first)[0]} is missing or damaged); the "
                                 "dataset is damaged on disk (restore the file or recreate the dataset)")
    if not attrs.get("complete", False):
        # chdl curate resumes an incomplete dataset (its provenance holds the key it checks); the importers
        # start over (deterministic, they refuse an existing output without --overwrite)
        provenance = attrs.get("provenance", {})
        written = f"{path}: incomplete dataset ({int(done.sum())}/{done.size} shards written)"
        if pid := writer_pid(path):
            raise DatasetIncompleteError(f"{written}: chdl is writing it now (pid {pid}); wait for it to finish")
        resumable = "curate_key" in provenance
        how = "to resume" if resumable else "with --overwrite to make it again (an import does not resume)"
        if not resumable and "--overwrite" in str(provenance.get("command", "")).split():  # (it said it twice)
            how = "to make it again (an import does not resume)"
        command = f" ({provenance['command']})" if provenance.get("command") else ""
        if command and provenance.get("cwd") and provenance["cwd"] != os.getcwd():  # its relative paths: from there
            command = f" (in {provenance['cwd']}: {provenance['command']})"
        stopped = ("its writer stopped before the end (interrupted, or an error)" if isinstance(path, Path) else
                   "being written, or its writer stopped before the end (an object store has no lock to tell)")
        kept = (f"; the dataset it was replacing is kept at {previous_path(path)} until it completes"
                if isinstance(path, Path) and previous_path(path).is_dir() else "")
        raise DatasetIncompleteError(f"{written}; {stopped} — rerun the command that made it{command} {how}{kept}")
    if check_files and (missing := missing_shard_files(group, path)):
        raise DatasetFormatError(f"{path}: {_files_line(missing, 'missing')}; the dataset is damaged on disk "
                                 "(restore the file or recreate the dataset)")
    return DatasetReader(path, group)
