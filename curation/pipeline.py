"""``chdl curate``: raw recordings -> QC -> reconstruction -> the curated zarr dataset + QC report.

Order of work:

1. plan (metadata only, :mod:`curation.plan`): sequences, missing frames, train/val split;
2. run baselines: each run's score centre/spread measured on up to ``qc.calibration_sequences``
   evenly spaced sequences (:func:`curation.qc.calibrate`), stored in the provenance;
3. shards: each worker process takes whole shards (``sequences_per_shard`` sequences), reads their
   frames, curates every sequence (:func:`curation.sequence.curate_sequence`) and writes the shard with
   :meth:`chdl.dataset.DatasetWriter.write_shard` — two workers never touch one shard;
4. the QC report (HTML + JSON beside the dataset), then ``finalize`` marks the dataset complete.

Resuming: the dataset's provenance holds a key (hash of the input runs, their frame counts, the
config and the tool version). Rerunning with the same arguments on an incomplete dataset writes only
the shards not yet done, with the stored baselines, so the result equals an uninterrupted run. A
complete dataset, a dataset made with other arguments, or a folder that is not a dataset is refused
unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from acquisition.raw import RawFormatError, Recording, inside_other_data
from chdl.cluster import ClusterError, pool_map_unordered
from chdl.dataset import (SPLIT_EXCLUDED, DatasetFormatError, DatasetWriter, dataset_path, previous_path,
                          refuse_non_dataset)
from chdl.locks import OutputLockError, exclusive_output
from curation import qc
from curation.config import CurateConfig
from curation.plan import Plan, SequencePlan, build_plan
from curation.report import flagged_thumbnails, write_report
from curation.sequence import curate_sequence


# Set by the command's SIGINT/SIGTERM handler (chdl/cli/curate.py) as it raises KeyboardInterrupt: a
# KeyboardInterrupt raised while Python runs a weakref callback or __del__ is printed and swallowed ("Exception
# ignored in ..."), and curate went on to the end; the loops check this between tasks and stop there.
INTERRUPTED = threading.Event()


def _check_interrupted() -> None:
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


class CurateError(RuntimeError):
    """A refusal or failure with a one-line message naming the path."""


class PixelRangeError(CurateError):
    """A pixel above the dataset's max_value: the bit depth is wrong (``_check_range``)."""


class FramePermissionError(CurateError):
    """A frame file (or its folder) this user may not read (``read_sequence``): on a shared server, another user's
    file. It is not a missing frame: curate had reconstructed it into the dataset and exited 0."""


class RecordingGoneError(CurateError):
    """A recording's frames folder vanished while it was being curated (``read_sequence``): a mount dropped, a
    folder moved or deleted. Its frames are not missing frames: the shard fails and the dataset stays resumable."""


def report_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """The QC report files beside a dataset: ``x.zarr`` -> ``x.qc.html``, ``x.qc.json``."""
    out = dataset_path(out)
    stem = out.name[:-5] if out.name.endswith(".zarr") else out.name
    return out.with_name(stem + ".qc.html"), out.with_name(stem + ".qc.json")


def _check_report_owner(out, html_path: Path) -> None:
    """CurateError where OUT's QC report would be another dataset's: ``x`` and ``x.zarr`` both report to ``x.qc.*``."""
    other = out.with_name(out.name[:-5]) if out.name.endswith(".zarr") else out.with_name(out.name + ".zarr")
    if other.exists() and (other / "zarr.json").exists():
        raise CurateError(f"{out}: its QC report {html_path.name} would replace that of the dataset {other} (x and "
                          "x.zarr report to the same x.qc.html); choose another name for OUT")


def _check_shard_memory(shard_sequences: int, plan: Plan, cfg: CurateConfig, workers: int) -> None:
    """CurateError where ``workers`` shards of ``shard_sequences`` sequences (each held in memory twice: the frames
    read and the stored ones) would not fit in the memory available now."""
    from curation.memory import available_memory

    need = 2 * workers * shard_sequences * cfg.frames_per_sequence * plan.height * plan.width * np.dtype(plan.dtype).itemsize
    if (free := available_memory()) is not None and need > 0.8 * free:
        raise CurateError(f"sequences_per_shard {cfg.sequences_per_shard}: {workers} worker(s) holding shards of "
                          f"{shard_sequences} sequences of {cfg.frames_per_sequence} {plan.width}x{plan.height} frames "
                          f"need {_size(need)} of memory, {_size(free)} available: set a smaller "
                          "sequences_per_shard in the config (or fewer --workers)")


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def read_sequence(seq: SequencePlan, run_path: str, height: int, width: int, dtype: np.dtype,
                  max_value: float | None = None):
    """(frames (T,H,W), available (T,), {t: error}) — an unreadable frame file is a missing frame, and so is,
    given ``max_value``, a frame that carries no image (:func:`curation.qc.no_image`: a sequence of them
    passed QC, which compares frames with each other; its pixels are zeroed like a missing frame's).
    RecordingGoneError when the folder holding an unreadable frame is gone: a network mount that dropped mid-run
    had turned every later frame into a "missing" one, and curate finished a complete dataset of blanks, exit 0."""
    T = len(seq.records)
    frames = np.zeros((T, height, width), dtype)
    available = np.zeros(T, bool)
    errors: dict[int, str] = {}
    rec = Recording(Path(run_path), {}, [], False)
    for t, r in enumerate(seq.records):
        if r is None:
            continue
        try:
            frames[t] = rec.read(r)
            available[t] = True
            if max_value is not None and (why := qc.no_image(frames[t], max_value)):
                errors[t] = f"{Path(run_path) / r.file}: {why}"
                frames[t], available[t] = 0, False
        except RawFormatError as e:
            folder = (Path(run_path) / r.file).parent if r.file is not None else None  # (None: a dropped frame)
            if folder is not None and not folder.is_dir():
                raise RecordingGoneError(f"{folder}: the recording's folder is gone (moved, deleted or unmounted) "
                                         "while it was being curated") from None
            file = Path(run_path) / r.file if r.file is not None else None
            if file is not None and (not os.access(folder, os.X_OK) or file.exists() and not os.access(file, os.R_OK)):
                raise FramePermissionError(f"{file}: this user may not read it (permissions; "
                                           "another user's file?), which does not make it a missing frame: give the "
                                           "curating user read access") from None
            errors[t] = str(e)
    return frames, available, errors


# ---------------------------------------------------------------------------------------------------
# worker side: the context is installed once per process; tasks are whole shards
# ---------------------------------------------------------------------------------------------------

_CTX: dict = {}
SHOWN_WARNINGS = 20  # warnings printed per curate; the rest are counted in one line (the QC report has them all)
SEQUENCE_THREADS = 2  # at most this many sequences curated concurrently inside one shard task (see _shard_task)


def sequence_threads(workers: int, cluster=None) -> int:
    """Sequences curated concurrently inside one shard task: up to ``SEQUENCE_THREADS`` where the local
    worker processes leave cores idle (one worker on two cores), else 1. Two threads in each of two
    workers on two cores oversubscribe them: 315.0-318.9 frames/s against 335.5 with one thread each
    (800x600, `tools/bench_curate.py --throughput-only`, quiet, 2026-11-30 19:34 UTC; docs/curation.md,
    Throughput). On a Dask cluster 1: its workers already run one task per thread. Results do not depend
    on it (tests/curation/test_curate_throughput.py)."""
    if cluster is not None:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(SEQUENCE_THREADS, cores // max(1, workers)))

# glibc malloc: keep freed memory in the heap instead of returning it to the OS. Every frame allocates
# a few 0.1-2 MB arrays (decoded PNG, float copies, gradients, integral images, spectra, zarr buffers);
# with glibc's defaults each one is a fresh mmap or a heap that was just trimmed, i.e. page faults on
# every touch -- measured at 40% of the QC time and ~10% of PNG decode and zarr write on 800x600
# frames. Pure allocator policy: results are bit-identical (tests/curation/test_throughput.py).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_TRIM = 256 << 20  # bytes of free heap kept before trimming
_MALLOC_MMAP = 32 << 20  # allocations above this still get their own mmap (glibc's maximum)


def tune_process() -> bool:
    """Per-process settings for curation work (called in each worker; also used by the I/O-floor
    benchmark so that the floor is measured under the same settings): one OpenCV thread per process
    (parallelism is across shards, and ``--workers`` processes must not oversubscribe the cores), and
    the malloc policy above. Returns whether the malloc policy could be set (glibc only)."""
    cv2.setNumThreads(1)
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, _MALLOC_TRIM) and libc.mallopt(_M_MMAP_THRESHOLD, _MALLOC_MMAP))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def _init_worker(ctx: dict) -> None:
    tune_process()
    _CTX.clear()
    _CTX.update(ctx)
    _CTX["baselines"] = [qc.Baseline.from_dict(b) for b in ctx["baselines"]]


def _check_range(frames: np.ndarray, seq: SequencePlan) -> None:
    """CurateError if a pixel of the sequence (``read_sequence``'s frames: missing ones are zeros) is above the
    dataset's max_value: a wrong bit depth would otherwise store intensities above 1.0 without a word."""
    c = _CTX
    if np.iinfo(frames.dtype).max <= c["max_value"]:  # 8-bit frames at max_value 255: nothing can be above
        return  # (a scan of the sequence, 0.17 ms at 10 x 800x600, spared)
    top = int(frames.max(initial=0))
    if top > c["max_value"]:
        t = int(np.argmax(frames.reshape(len(frames), -1).max(axis=1)))
        rec = seq.records[t]
        where = Path(c["run_paths"][seq.run]) / rec.file if rec is not None and rec.file else c["run_paths"][seq.run]
        raise PixelRangeError(f"{where}: pixel values up to {top} (lane {seq.lane}), above max_value "
                              f"{c['max_value']:.0f} ({c['bit_depth']}); give the right --bit-depth")


def _init_pool_worker(ctx: dict) -> None:
    """A local pool worker: the pool workers' signal handling and lifetime (:func:`chdl.cluster.init_pool_worker`),
    then the context."""
    from chdl.cluster import init_pool_worker

    init_pool_worker()
    _init_worker(ctx)


def _calibration_task(task: tuple[int, SequencePlan]) -> tuple[int, np.ndarray]:
    run, seq = task
    c = _CTX
    frames, available, _ = read_sequence(seq, c["run_paths"][run], c["height"], c["width"], c["dtype"],
                                         c["max_value"])
    _check_range(frames, seq)
    return run, qc.measure(frames, available, c["max_value"])


def _kept() -> dict:
    """What a worker thread keeps from one shard task to the next, for the context installed now: its
    dataset writer (opening one validates the dataset: ~10 ms a shard) and its array for a shard's pixels.
    Per thread, because a Dask worker may run tasks in several threads (``--nthreads``)."""
    return _CTX.setdefault("kept", {}).setdefault(threading.get_ident(), {})


def _shard_frames_buffer(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The thread's array for a shard's pixels, (S, T, 1, H, W), kept for its next shard: a fresh one (77 MB
    at 800x600) is a new mapping each time, whose pages the kernel zeroes on first touch (0.20 against
    0.06 ms a frame to fill it, measured)."""
    kept = _kept()
    buf = kept.get("frames")
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = kept["frames"] = np.empty(shape, dtype)
    return buf


def _shard_task(task: tuple[int, list[SequencePlan]]) -> tuple[int, int, list[str], dict]:
    shard, seqs = task
    c = _CTX
    cfg: CurateConfig = c["cfg"]
    T, H, W = cfg.frames_per_sequence, c["height"], c["width"]
    k = len(seqs)
    frames = _shard_frames_buffer((c["sequences_per_shard"], T, 1, H, W), c["dtype"])[:k]  # every row set below
    flags = np.zeros((k, T), np.uint8)
    scores = np.zeros((k, T, len(qc.SCORE_NAMES)), np.float32)
    split = np.zeros(k, np.uint8)
    originals = []
    warnings = []

    def one(i: int):
        seq = seqs[i]
        raw, available, errors = read_sequence(seq, c["run_paths"][seq.run], H, W, c["dtype"], c["max_value"])
        _check_range(raw, seq)
        res = curate_sequence(raw, available, c["baselines"][seq.run], c["thresholds"][seq.run],
                              cfg.max_bad_frames, c["max_value"], cfg.qc.z_sequence)
        frames[i, :, 0] = res.frames  # each thread fills its own rows; the copy is not kept twice
        res.frames = None
        return errors, res

    # c["sequence_threads"] sequences at a time (PNG decode and most of QC run in OpenCV/NumPy without
    # the GIL), where the workers leave cores idle (sequence_threads). Each sequence is a pure function
    # of its pixels, so results do not depend on the thread count; pool.map keeps the order.
    with ThreadPoolExecutor(c.get("sequence_threads", 1)) as pool:
        results = list(pool.map(one, range(k)))
    thumbs = {}
    for i, (seq, (errors, res)) in enumerate(zip(seqs, results)):
        warnings += [f"{msg}; treated as missing" for msg in errors.values()]
        flags[i], scores[i] = res.flags, res.scores
        split[i] = SPLIT_EXCLUDED if res.excluded else seq.split
        originals += [(i, t, px[None]) for t, px in res.originals]
        # the report's pictures of flagged frames, made while the pixels are in memory (reading the
        # sequences back from the dataset afterwards cost ~0.6 s per 50 flagged sequences of 800x600)
        thumbs.update({(seq.index, t): th for t, th in flagged_thumbnails(
            frames[i, :, 0], flags[i], dict(res.originals), cfg.thumbnail_width, c["max_value"]).items()})
    kept = _kept()
    if "writer" not in kept:
        kept["writer"] = DatasetWriter.open(c["out"])
    kept["writer"].write_shard(shard, frames=frames, qc_flags=flags, qc_scores=scores, split=split,
                       run_index=np.array([s.run for s in seqs], np.int32),
                       lane=np.array([s.lane for s in seqs], np.int32),
                       position_um=np.array([s.position_um for s in seqs], np.float64),
                       timestamp_ns=np.array([s.timestamp_ns for s in seqs], np.int64),
                       originals=originals)
    return shard, k * T, warnings, thumbs


def _run_tasks(fn: Callable, tasks: list, ctx: dict, workers: int, cluster=None):
    """Yield fn(task) for every task: on ``cluster`` (a :class:`chdl.cluster.Cluster`), in this process
    (workers <= 1) or in a pool of ``workers``."""
    if cluster is not None:
        yield from cluster.map_unordered(fn, tasks, _init_worker, ctx)
        return
    if workers <= 1 or len(tasks) <= 1:
        saved = dict(_CTX)
        _init_worker(ctx)
        try:
            for t in tasks:
                yield fn(t)
        finally:
            _CTX.clear()
            _CTX.update(saved)
        return
    yield from pool_map_unordered(fn, tasks, workers, mp.get_context("fork" if sys.platform == "linux" else "spawn"),
                                  _init_pool_worker, (ctx,))


# ---------------------------------------------------------------------------------------------------
# main side
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class CurateResult:
    out: Path
    report_html: Path
    report_json: Path
    n_sequences: int
    n_frames: int
    shards_written: int
    shards_resumed: int  # shards that were already done (resume)
    seconds: float
    summary: dict
    timings: dict  # seconds per phase: plan, calibrate, shards, report
    frames_written: int = 0  # frames of the shards written by this run (n_frames less the resumed shards')
    bit_depth: dict | None = None  # {"bits", "from"}: the significant bits and where they came from (provenance's)
    bit_depth_overridden: int = 0  # runs whose recorded bits a --bit-depth overrode (Plan.bit_depth_overridden)


def _curate_code() -> str:
    """The digest of the code that decides a curated dataset's bytes (acquisition, curation, chdl): recorded as
    ``provenance.curate_code``; a resume by other code is warned about (the version string alone never changed)."""
    from chdl.provenance import code_fingerprint

    return code_fingerprint(("acquisition", "curation", "chdl"))


def _key(plan: Plan, cfg: CurateConfig, version: str | None = None) -> str:
    """The resume key of these inputs and settings as chdl ``version`` (default: this one) computes it."""
    from chdl import __version__

    config = cfg.to_dict()
    if config["split"]["test_fraction"] == 0:  # (no test split: the key of these settings before test existed)
        del config["split"]["test_fraction"]
    material = {"plan": plan.key_material(), "config": config, "tool_version": version or __version__}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _calibration_sample(plan: Plan, cfg: CurateConfig) -> list[tuple[int, SequencePlan]]:
    tasks = []
    for run in range(len(plan.runs)):
        cands = [s for s in plan.sequences if s.run == run and s.n_missing <= cfg.max_bad_frames]
        n = min(cfg.qc.calibration_sequences, len(cands))
        if n:
            picks = sorted(set(np.linspace(0, len(cands) - 1, n).round().astype(int).tolist()))
            tasks += [(run, cands[i]) for i in picks]
    return tasks


class _Warnings:
    """The warnings of one curate on stderr: the first :data:`SHOWN_WARNINGS`, then one line saying how many more
    the QC report lists (a recording with thousands of unreadable frames printed a line for each)."""

    def __init__(self, report: Path, log: Callable[[str], None]):
        self.report, self.log, self.n = report, log, 0

    def say(self, warning: str, write: Callable[[str], None] | None = None) -> None:
        self.n += 1
        if self.n <= SHOWN_WARNINGS:
            (write or self.log)(f"warning: {warning}")

    def close(self, write: Callable[[str], None] | None = None) -> None:
        if self.n > SHOWN_WARNINGS:
            (write or self.log)(f"warning: {self.n - SHOWN_WARNINGS} more warnings not shown ({self.n} in all; the QC "
                                f"report lists every one: {self.report})")
            self.n = SHOWN_WARNINGS  # (said once)


def _thresholds(cfg: CurateConfig, baselines: list[qc.Baseline]) -> list[np.ndarray]:
    return [qc.thresholds(cfg.qc.floors, cfg.qc.z, b) for b in baselines]


def _write(plan: Plan, cfg: CurateConfig, writer: DatasetWriter, ctx: dict, out: Path, html_path: Path,
           json_path: Path, workers: int, progress: bool, timings: dict,
           cluster=None, log: Callable[[str], None] = print, warnings: _Warnings | None = None
           ) -> tuple[set[int], list[int], dict]:
    """The shards not yet done, the QC report, then finalize: (shards done before, shards written, summary)."""
    T = cfg.frames_per_sequence
    t_shards = time.perf_counter()
    done = writer.done_shards()
    pending = [s for s in range(writer.n_shards) if s not in done]
    tasks = [(s, [plan.sequences[i] for i in writer.shard_range(s)]) for s in pending]
    n_pending = sum(len(seqs) for _, seqs in tasks) * T
    warnings = warnings or _Warnings(html_path, log)
    with tqdm(total=n_pending, unit="frame", desc="curate", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        # above the bar while it shows; through `log` (silent with --quiet) otherwise (tqdm's write goes to stdout
        # unless told: `curate > out 2> err` put thousands of warnings in out)
        write = partial(bar.write, file=sys.stderr) if progress else log
        thumbnails = {}
        for i, (shard, n, warns, thumbs) in enumerate(_run_tasks(_shard_task, tasks, ctx, workers, cluster)):
            for w in warns:
                warnings.say(plan.as_given(w), write)
            thumbnails.update(thumbs)
            bar.set_postfix_str(f"shards {len(done) + i + 1}/{writer.n_shards}", refresh=False)
            bar.update(n)
            _check_interrupted()

    warnings.close()
    timings["shards"] = time.perf_counter() - t_shards
    t_report = time.perf_counter()
    _check_interrupted()
    summary = write_report(out, plan, cfg, html_path, json_path, thumbnails)
    _check_interrupted()
    writer.finalize()
    if writer.previous_left:
        log(f"warning: {out} is complete, but the dataset it replaced could not be removed: {writer.previous_left}; "
            "remove it by hand")
    timings["report"] = time.perf_counter() - t_report
    return done, pending, summary


def curate(source: str | os.PathLike, out: str | os.PathLike, cfg: CurateConfig, *, workers: int = 1,
           scheduler: str | None = None, **options) -> CurateResult:
    """Curate the recordings under ``source`` into the dataset ``out`` (a path or an fsspec URL; see the
    module docstring), with ``workers`` local processes or on the Dask cluster ``scheduler``
    (``tcp://HOST:PORT`` or ``local:N``, :func:`chdl.cluster.connect`; same bytes either way).
    ``options``: ``overwrite``, ``command`` (recorded in the provenance), ``progress``, ``log``, ``bit_depth``
    (significant bits of the pixels, overriding the runs' own: :func:`curation.plan.build_plan`), ``state`` (a
    dict that gets ``created: True`` once OUT is this command's dataset, new or resumed).
    Raises CurateError / PlanError / RawFormatError / ClusterError (one-line messages naming the path)."""
    try:
        out = dataset_path(out)
    except DatasetFormatError as e:
        raise CurateError(str(e)) from None
    if isinstance(out, Path) and (why := inside_other_data(out)):  # (capture refuses the same; before the lock
        raise CurateError(f"{out}: inside {why}; choose another output path")  # makes folders for it)
    with _writer_lock(out):
        if scheduler is None:
            return _curate(source, out, cfg, workers, None, **options)
        from chdl.cluster import connect

        with connect(scheduler, options.get("log")) as cluster:
            return _curate(source, out, cfg, 1, cluster, **options)


@contextlib.contextmanager
def _writer_lock(out):
    """Held while ``out`` is curated: a second ``chdl curate`` on the same OUT (which would resume the shards the first
    is writing, or --overwrite them) is refused, naming the first's pid. The lock is ``.<name>.chdl-writer.lock``
    beside OUT (:func:`chdl.locks.take_lock`; OUT itself may not exist yet, or be replaced); none for an fsspec URL."""
    if not isinstance(out, Path):  # an fsspec URL (a upath.UPath, not a pathlib.Path): no lock files there
        yield
        return
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_output(out))
        except OutputLockError as e:  # another writer, or a folder the lock cannot go in
            raise CurateError(str(e)) from None
        yield


def _curate(source: str | os.PathLike, out: str | os.PathLike, cfg: CurateConfig, workers: int, cluster, *,
            overwrite: bool = False, command: str = "", progress: bool = True, bit_depth: int | None = None,
            log: Callable[[str], None] | None = None, state: dict | None = None) -> CurateResult:
    t_start = time.perf_counter()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = dataset_path(out)
    if out.name in ("", ".", ".."):  # (and an empty `.` would be removed as "an empty folder": the working folder)
        raise CurateError(f"{out}: OUT must name the dataset's own folder (e.g. out.zarr), not {str(out)!r}")
    html_path, json_path = report_paths(out)
    _check_report_owner(out, html_path)
    timings = {}
    plan = build_plan(source, cfg, bit_depth)
    # a shard is at most the whole dataset (a larger S only sized the workers' buffers and the shard index)
    shard_sequences = min(cfg.sequences_per_shard, len(plan.sequences))
    _check_shard_memory(shard_sequences, plan, cfg, 1 if cluster is not None else workers)
    timings["plan"] = time.perf_counter() - t_start
    warnings = _Warnings(html_path, log)
    for w in plan.warnings:
        warnings.say(w)
    key = _key(plan, cfg)
    T = cfg.frames_per_sequence
    ctx = {"out": str(out.absolute()), "run_paths": [r.path for r in plan.runs], "height": plan.height, "width": plan.width,
           "dtype": plan.dtype, "max_value": float(plan.max_value), "cfg": cfg, "baselines": [], "thresholds": [],
           "bit_depth": f"{plan.bit_depth} significant bits, from the {plan.bit_depth_from}",
           "sequence_threads": sequence_threads(workers, cluster)}

    if cluster is not None:  # a local OUT's folder too, before OUT is made (an OUT workers cannot see was left behind)
        cluster.check_visible(ctx["run_paths"] + ([str(out.absolute().parent)] if isinstance(out, Path) else []))
    writer = None
    if isinstance(out, Path) and out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder is as good as none (locally: an object store has no empty folders to remove)
    if out.exists() and overwrite:
        try:
            refuse_non_dataset(out)
        except FileExistsError as e:
            raise CurateError(str(e)) from None
    if out.exists() and not overwrite:
        try:
            writer = DatasetWriter.open(out)
        except DatasetFormatError as e:
            if not DatasetWriter.interrupted_creation(out):
                why = str(e).removeprefix(f"{out}: ")
                # --overwrite replaces a zarr group only (never deletes another folder: below)
                hint = ("use --overwrite to replace it" if (out / "zarr.json").is_file()
                        else "choose another output path (--overwrite never deletes a folder that is not a dataset)")
                raise CurateError(f"{out}: already exists and is not a chdl dataset to resume ({why}); {hint}") from None
            log(f"{out}: its creation was cut off before any shard was written; creating it afresh")
            overwrite = True
    if writer is not None:
        if writer.complete:
            raise CurateError(f"{out}: already exists (a complete dataset); use --overwrite to replace it")
        stored = writer.attrs.get("provenance", {})
        if stored.get("curate_key") != key:
            began_as = stored.get("tool_version")
            if isinstance(began_as, str) and stored.get("curate_key") == _key(plan, cfg, began_as):
                from chdl import __version__ as now  # the same inputs and settings, begun by another chdl version

                log(f"warning: {out} was begun by chdl {began_as}, this is chdl {now}; resuming it (the same inputs "
                    "and settings)")
            else:
                made_by = stored.get("command")
                raise CurateError(f"{out}: an incomplete dataset made from other inputs or settings"
                                  + (f" (by {made_by})" if made_by else "")
                                  + "; rerun that command to resume, or use --overwrite to start anew")
        writer.remove_interrupted_writes()
        log(f"resuming {out}: {len(writer.done_shards())}/{writer.n_shards} shards already written")
        began = stored.get("curate_code")
        if began is not None and began != _curate_code() and writer.done_shards():
            log(f"warning: {out} was begun by other code (source digest {began}, now {_curate_code()}: chdl.provenance); "
                "its shards so far were written by that code, the rest by this one; --overwrite makes it anew")
    t_cal = time.perf_counter()
    if writer is None:
        sample = _calibration_sample(plan, cfg)
        log(f"measuring run baselines on {len(sample)} sequence{'s' if len(sample) != 1 else ''}")
        per_run: dict[int, list[np.ndarray]] = {}
        try:  # (the bar shows once this has taken a second: a few sequences need none)
            with tqdm(total=len(sample) * T, unit="frame", desc="baselines", file=sys.stderr, disable=not progress,
                      dynamic_ncols=True, delay=1.0) as bar:
                for run, scores in _run_tasks(_calibration_task, sample, ctx, workers, cluster):
                    per_run.setdefault(run, []).append(scores)
                    bar.update(T)
                    _check_interrupted()
        except ClusterError as e:  # a dead pool worker, a lost scheduler
            raise CurateError(f"{e}, while measuring the run baselines; nothing was written to {out}") from None
        except PixelRangeError as e:  # (OUT is made after the baselines: an --overwrite has not touched it yet)
            kept = f"{out} is the dataset that was there before, untouched" if out.exists() else \
                f"nothing was written to {out}"
            raise PixelRangeError(f"{e}; {kept}") from None
        baselines = [qc.calibrate(per_run.get(r, [])) for r in range(len(plan.runs))]
        thresholds = _thresholds(cfg, baselines)
        provenance = {
            "command": command,
            "source_runs": [r.path for r in plan.runs],
            "bit_depth": {"bits": plan.bit_depth, "from": plan.bit_depth_from},
            "curate_key": key,
            "curate_code": _curate_code(),
            "config": {
                **cfg.to_dict(),
                "qc_score_names": list(qc.SCORE_NAMES),
                "run_baselines": {plan.runs[i].run_id: b.to_dict() for i, b in enumerate(baselines)},
                "run_thresholds": {plan.runs[i].run_id: dict(zip(qc.SCORE_NAMES, map(float, th)))
                                   for i, th in enumerate(thresholds)},
            },
        }
        try:
            writer = DatasetWriter.create(
                out, n_sequences=len(plan.sequences), frames_per_sequence=T, channels=1, height=plan.height,
                width=plan.width, dtype=plan.dtype, sequences_per_shard=shard_sequences,
                in_frames=cfg.in_frames, out_frames=cfg.out_frames, pixel_format=plan.pixel_format,
                max_value=plan.max_value, qc_score_names=qc.SCORE_NAMES,
                runs=[r.run_id for r in plan.runs], provenance=provenance,
                extra={"curation": {"report_html": html_path.name, "report_json": json_path.name}},
                overwrite=overwrite, keep_previous=True)
        except OSError as e:  # nothing is left at OUT: creation is atomic (chdl.dataset)
            _check_interrupted()  # a stop inside the creation can surface as a vanished temporary folder
            raise CurateError(f"{out}: cannot create dataset ({e.strerror or e})") from None
        if overwrite and not (isinstance(out, Path) and previous_path(out).is_dir()):
            for p in (html_path, json_path):  # the reports of the dataset replaced, now gone (one kept aside keeps
                if p.is_file():               # them: they come back with it, or the new ones replace them at the end)
                    p.unlink()
    if state is not None:
        state["created"] = True  # OUT is now this command's dataset (new, or the one it resumes)
    # baselines always from the stored provenance: a resumed run uses exactly what the first one did
    ctx["sequences_per_shard"] = writer.sequences_per_shard  # (a resumed dataset's own)
    stored = writer.attrs["provenance"]["config"]["run_baselines"]
    ctx["baselines"] = [stored[r.run_id] for r in plan.runs]
    ctx["thresholds"] = _thresholds(cfg, [qc.Baseline.from_dict(b) for b in ctx["baselines"]])

    if cluster is not None:
        cluster.check_visible([ctx["out"]])
    timings["calibrate"] = time.perf_counter() - t_cal
    try:
        done, pending, summary = _write(plan, cfg, writer, ctx, out, html_path, json_path, workers, progress, timings,
                                        cluster, log, warnings)
    except ClusterError as e:  # a dead pool worker, a lost scheduler, a task that killed its workers
        raise CurateError(f"{e}; {out} keeps the shards finished so far: rerun the same command to resume") from None
    except RecordingGoneError as e:
        raise CurateError(f"{e}; {out} keeps the shards finished so far: put the recording back and rerun the same "
                          "command to resume") from None
    except FramePermissionError as e:
        raise CurateError(f"{e}, then rerun the same command: {out} keeps the shards finished so far and resumes") \
            from None
    except PixelRangeError as e:  # found in a shard: OUT was made with the wrong max_value, a resume cannot mend it
        if DatasetWriter.restore_previous(out):  # an --overwrite that cannot finish: the dataset it replaced is back
            raise PixelRangeError(f"{e}; {out} is the dataset that was there before, untouched") from None
        raise PixelRangeError(f"{e} and --overwrite ({out} was begun with the wrong bit depth)") from None
    except OSError as e:  # disk full, permissions, a vanished folder: what is written so far stays resumable
        where = e.filename or out
        kept = f" (the dataset it replaces waits at {previous_path(out)} until then)" if previous_path(out).exists() \
            else ""
        raise CurateError(f"{where}: cannot write ({e.strerror or e}); {out} is incomplete — fix that and rerun "
                          f"the same command to resume{kept}") from None
    return CurateResult(out, html_path, json_path, len(plan.sequences), len(plan.sequences) * T,
                        len(pending), len(done), time.perf_counter() - t_start, summary,
                        {k: round(v, 3) for k, v in timings.items()},
                        sum(len(writer.shard_range(s)) for s in pending) * T,
                        {"bits": plan.bit_depth, "from": plan.bit_depth_from}, plan.bit_depth_overridden)
