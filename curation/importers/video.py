"""Video files (real footage) -> curated dataset: grayscale clips of ``in + out`` frames, split by time.

Every input file is decoded in full with OpenCV's FFmpeg backend (``opencv-python-headless``, already a
chdl dependency; its wheel bundles FFmpeg, so .avi/.mp4/.mkv with the usual codecs decode without a
system FFmpeg) before anything is written, so bad input fails early and leaves nothing behind. Per frame:

* every ``frame_stride``-th decoded frame is kept (default 1: all of them);
* colour -> grayscale with OpenCV's BT.601 luma (``COLOR_BGR2GRAY``), uint8;
* the largest centred crop with the target aspect ratio (``W/H``) is cut out, then resized to ``size``
  (default 120 × 160, H × W) with area interpolation (``INTER_AREA``); the aspect ratio is kept, the
  crop drops the excess border of the longer side.

Clips and the split, per video, on the kept frames ``0 … F-1`` and clip length ``L = in + out``:

* the video is divided into ``n = F // L`` non-overlapping clips from frame 0 (a tail of ``< L`` frames
  is dropped); in time order it is ``train | gap | val | gap | test``: the LAST
  ``n_test = max(1, round(test_fraction · n))`` clips form the test block (none when ``test_fraction``
  is 0, the default), the ``n_val = max(1, round(val_fraction · n))`` clips before it (and its one-clip
  gap) the validation block, and everything before the validation block's gap the training block;
  a gap is one clip that no clip uses. The last block also holds the tail;
* training clips start every ``train_stride`` frames inside the training block (default ``L``:
  non-overlapping; smaller values give overlapping training clips); validation and test clips start
  every ``val_stride`` frames inside their blocks (default ``L``). Whatever the strides, no frame is
  in clips of two splits, and at least ``L`` unused frames separate neighbouring blocks;
* so a video needs at least ``L`` kept frames for one clip, ``3·L`` (train, gap, val) when
  ``val_fraction > 0``, and ``L`` more per held-out clip and gap beyond that; shorter videos are an
  input error naming the file.

Sequences are stored train first, then val, then test, each in (video, time) order; ``run_index`` is the
video. A test split is what ``chdl eval --split test`` and ``chdl bench`` report on once validation has
chosen the checkpoint (the same convention as curate's ``split.test_fraction``).
Provenance (``attrs.provenance.config``) records each source file's name and sha256, the frame stride,
size, strides and split rule; ``attrs.extra.videos`` the per-video details (fps, resolution, codec,
frames decoded, crop box, the frame ranges of each block, clips per split) and ``attrs.extra.
clip_start_frame[i]`` the decoded-frame index of sequence ``i``'s first frame (frame ``t`` of it is
decoded frame ``clip_start_frame[i] + t · frame_stride``). Docs: ``docs/importers.md``.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from chdl.dataset import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL
from curation.importers.common import ImporterInputError, write_sequences
from curation.memory import available_memory

SIZE = (120, 160)  # (H, W)
IN_FRAMES = OUT_FRAMES = 5
VAL_FRACTION = 0.2
TEST_FRACTION = 0.0  # no test split unless asked for (curate's split.test_fraction defaults to 0 too)
GAP_CLIPS = 1  # unused clips between neighbouring blocks (train | gap | val | gap | test) of each video
SEQUENCES_PER_SHARD = 32  # 32 × 10 × 120 × 160 = 6 MB raw per shard at the defaults


@dataclass
class Video:
    """One decoded input file: its kept frames (F, H, W) uint8 at the target size, and where they came from."""

    path: Path
    sha256: str
    frames: np.ndarray
    fps: float
    width: int
    height: int
    codec: str
    frames_decoded: int
    frames_reported: int
    crop: tuple[int, int, int, int]  # y0, x0, h, w of the centred crop in the source frame
    frame_stride: int = 1
    name: str = field(default="")
    last_frame_ms: float = 0.0  # presentation time of the last decoded frame (FFmpeg's), to tell a cut file

    def __post_init__(self) -> None:
        self.name = self.name or self.path.name


@dataclass(frozen=True)
class ClipPlan:
    """The clips of one video, as start indices into its kept frames, and the blocks they come from."""

    n_frames: int
    clip_len: int
    train_starts: tuple[int, ...]
    val_starts: tuple[int, ...]
    train_block: tuple[int, int]  # [start, stop) of the kept frames the training clips use
    gap_block: tuple[int, int]  # [start, stop): the one-clip gap before the validation block (unused)
    val_block: tuple[int, int]  # [start, stop) of the kept frames the validation clips use
    test_starts: tuple[int, ...] = ()
    test_gap_block: tuple[int, int] = (0, 0)  # [start, stop): the one-clip gap before the test block (unused)
    test_block: tuple[int, int] = (0, 0)  # [start, stop) of the kept frames the test clips use


MIN_SIDE = 11  # SSIM's 11 x 11 Gaussian window (diffuma.metrics.SSIM_MIN_SIDE): training validates with it
MAX_SIDE = 4096


# FFmpeg's text-mode decoders (its tty demuxer opens any text file as "video": ANSI art, binary text, XBIN, iCE Draw):
# a README given by mistake was imported as frames of rendered characters, or refused as "too short"
TEXT_CODECS = {"ansi", "bintext", "xbin", "idf"}


def parse_size(text: str) -> tuple[int, int]:
    """``"120x160"`` -> ``(120, 160)`` (H × W); each side in [MIN_SIDE, MAX_SIDE]. ValueError otherwise (a 6x10
    dataset imported, then its training ended at the first validation with scikit-image's "win_size exceeds image
    extent"; 99999x99999 was killed for memory without a word)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r}: expected HxW, e.g. 120x160") from None
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ValueError(f"size {text!r}: height and width must be {MIN_SIDE} to {MAX_SIDE} px (SSIM's window is "
                         f"{MIN_SIDE} x {MIN_SIDE} px)")
    return h, w


def center_crop_box(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred ``(y0, x0, h, w)`` box of a ``height × width`` frame with the aspect of ``size`` (H, W)."""
    th, tw = size
    if width * th > height * tw:  # source is wider than the target: crop the width
        h, w = height, max(1, min(width, round(height * tw / th)))
    else:
        h, w = max(1, min(height, round(width * th / tw))), width
    return (height - h) // 2, (width - w) // 2, h, w


def to_gray(frame: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A decoded frame (H, W[, 3|4] BGR) -> grayscale uint8 ``size`` (centre crop + INTER_AREA), and the crop box."""
    import cv2

    box = center_crop_box(frame.shape[0], frame.shape[1], size)
    y0, x0, h, w = box
    crop = frame[y0:y0 + h, x0:x0 + w]
    if crop.ndim == 3:
        crop = cv2.cvtColor(crop, cv2.COLOR_BGRA2GRAY if crop.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    if crop.dtype != np.uint8:  # 16-bit sources: keep the top 8 bits
        crop = (crop >> 8).astype(np.uint8) if crop.dtype == np.uint16 else crop.astype(np.uint8)
    th, tw = size
    if crop.shape != (th, tw):
        crop = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop), box


def enlargement(crop_yxhw, size: tuple[int, int]) -> str:
    """"" when the centred crop ``(y0, x0, h, w)`` is at least ``size`` = (H, W); otherwise a phrase saying it
    was enlarged (INTER_AREA then interpolates: the extra pixels carry no detail of the scene)."""
    h, w = crop_yxhw[2], crop_yxhw[3]
    H, W = size
    if h >= H and w >= W:
        return ""
    return f"its {w}x{h} crop was enlarged to {W}x{H} (--size is larger than the source: interpolated, no added detail)"


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_video(path: str | Path, size: tuple[int, int] = SIZE, frame_stride: int = 1, *,
               progress: bool = False) -> Video:
    """Decode ``path`` in full -> :class:`Video` with every ``frame_stride``-th frame, gray, at ``size``.

    ``progress``: a tqdm bar on stderr over the decoded frames (unit "frame"; its total is the container's
    frame count when it reports one, else open-ended with the rate only).
    ImporterInputError naming the file if it is missing, not a file, or not a video OpenCV/FFmpeg decodes.
    """
    import cv2
    from tqdm import tqdm

    path = Path(path)
    if frame_stride < 1:
        raise ValueError("frame_stride must be at least 1")
    if not path.exists():
        raise ImporterInputError(f"{path}: no such file")
    if not path.is_file():
        raise ImporterInputError(f"{path}: not a file")
    try:
        sha = file_sha256(path)
    except OSError as e:
        raise ImporterInputError(f"{path}: cannot read ({e.strerror or e})") from None
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # no "can't capture by name" warnings
    try:
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not cap.isOpened():
        raise ImporterInputError(f"{path}: not a video (OpenCV's FFmpeg backend cannot open it)")
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        codec = "".join(chr((fourcc >> 8 * i) & 0xFF) for i in range(4)).strip("\x00 ") if fourcc > 0 else ""
        if codec.lower() in TEXT_CODECS:  # FFmpeg renders any text file as "video" through its tty demuxer
            raise ImporterInputError(f"{path}: not a video (a text file: FFmpeg would render its characters as "
                                     f"frames, codec {codec!r})")
        reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        need = -(-max(reported, 0) // frame_stride) * size[0] * size[1]  # the kept frames, held until written
        if (free := available_memory()) is not None and need > 0.8 * free:
            raise ImporterInputError(f"{path}: {-(-reported // frame_stride):,} frames at {size[0]}x{size[1]} need "
                                     f"{need / 2**30:.1f} GiB of memory, {free / 2**30:.1f} GiB available: choose a "
                                     "smaller --size or a larger --frame-stride")
        kept, box, shape, last_ms = [], None, None, 0.0
        decoded = 0
        with tqdm(total=reported if reported > 0 else None, desc=f"decode {path.name}", unit="frame",
                  file=sys.stderr, disable=not progress) as bar:
            while True:
                if decoded % frame_stride == 0:
                    ok, frame = cap.read()
                    if not ok or frame is None:
                        break
                    gray, box = to_gray(frame, size)
                    shape = shape or frame.shape[:2]
                    kept.append(gray)
                elif not cap.grab():
                    break
                last_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
                decoded += 1
                bar.update(1)
            if bar.total != decoded:  # the container's count is an estimate: end the bar at what was decoded
                bar.total = decoded
                bar.refresh()
    finally:
        cap.release()
    if not kept:
        raise ImporterInputError(f"{path}: not a video (no frame could be decoded)")
    return Video(path=path, sha256=sha, frames=np.stack(kept), fps=fps, width=int(shape[1]), height=int(shape[0]),
                 codec=codec, frames_decoded=decoded, frames_reported=reported, crop=tuple(int(v) for v in box),
                 frame_stride=frame_stride, last_frame_ms=float(last_ms))


def ends_early(v: Video) -> bool:
    """Whether the file ends well before the frames its container lists (cut off: a copy or download stopped),
    rather than listing more frames than it decodes because empty packets are skipped (then the last frame still
    comes at the listed duration). Judged from the last decoded frame's presentation time: more than 1 % of the
    listed frames (at least 2 frame intervals) short of where the last listed frame would be."""
    if v.frames_reported <= v.frames_decoded or v.fps <= 0 or v.last_frame_ms <= 0:  # (0: no timestamps: unknown)
        return False
    expected_ms = (v.frames_reported - 1) * 1000.0 / v.fps
    return v.last_frame_ms < expected_ms - max(2.0, 0.01 * v.frames_reported) * 1000.0 / v.fps


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """ValueError unless both held-out fractions are in [0, 1) and leave room for training (sum < 1)."""
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise ValueError(f"{name} must be in [0, 1), not {f}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be below 1, not {val_fraction + test_fraction:g}")


def plan_clips(n_frames: int, clip_len: int, *, val_fraction: float = VAL_FRACTION,
               train_stride: int | None = None, val_stride: int | None = None,
               test_fraction: float = TEST_FRACTION, frames_note: str = "") -> ClipPlan:
    """Clip starts of one video of ``n_frames`` kept frames (module docstring: the time-block split
    ``train | gap | val | gap | test``; ``val_stride`` spaces the test clips too).

    ValueError if the fractions are out of range, or the video is too short: fewer than ``clip_len``
    frames, or too few clips for one training clip beside the held-out blocks and their gaps (``frames_note``
    follows the frame count there, e.g. " (1 in 2 of 80 decoded)").
    """
    L = clip_len
    train_stride, val_stride = train_stride or L, val_stride or L
    if L < 1 or train_stride < 1 or val_stride < 1:
        raise ValueError("clip length and strides must be at least 1")
    check_fractions(val_fraction, test_fraction)
    n = n_frames // L
    if n < 1:
        raise ValueError(f"too short for one clip: {n_frames} frame(s){frames_note}, a clip needs {L}")

    def held(f: float) -> int:
        return 0 if f == 0 else max(1, math.floor(f * n + 0.5))

    n_val, n_test = held(val_fraction), held(test_fraction)
    gap_val, gap_test = GAP_CLIPS * (n_val > 0), GAP_CLIPS * (n_test > 0)
    if n - n_val - n_test - gap_val - gap_test < 1:
        parts = ", ".join(p for p in ("train", "gap" if n_val else "", f"{n_val} val" if n_val else "",
                                      "gap" if n_test else "", f"{n_test} test" if n_test else "") if p)
        raise ValueError(f"too short to split: {n_frames} frames{frames_note} give {n} clip(s) of {L}, need at least "
                         f"{n_val + n_test + gap_val + gap_test + 1} ({parts}); or lower --val-fraction"
                         f"{' / --test-fraction' if n_test else ''} (0: no such block)")
    # block boundaries in kept frames, from the end: the last held-out block also takes the tail (< L frames)
    test_start = (n - n_test) * L if n_test else n_frames
    val_stop = test_start - gap_test * L
    val_start = (n - n_test - gap_test - n_val) * L if n_val else val_stop
    train_stop = val_start - gap_val * L
    if not n_val and not n_test:  # everything is training, the tail included
        train_stop = val_start = val_stop = n_frames
    if n_val and not n_test:
        val_stop = n_frames

    def starts(a: int, b: int, stride: int) -> tuple[int, ...]:
        return tuple(range(a, b - L + 1, stride))

    train, val, test = (starts(0, train_stop, train_stride), starts(val_start, val_stop, val_stride),
                        starts(test_start, n_frames, val_stride) if n_test else ())
    return ClipPlan(n_frames=n_frames, clip_len=L, train_starts=train, val_starts=val,
                    train_block=(0, train[-1] + L if train else 0), gap_block=(train_stop, val_start),
                    val_block=(val_start, val[-1] + L if val else val_start),
                    test_starts=test, test_gap_block=(val_stop, test_start) if n_test else (n_frames, n_frames),
                    test_block=(test_start, test[-1] + L) if test else (n_frames, n_frames))


def _decoded_range(block: tuple[int, int], frame_stride: int) -> list[int]:
    """``[start, stop)`` of kept-frame indices -> the same frames as ``[start, stop)`` decoded-frame indices."""
    a, b = block
    return [a * frame_stride, (b - 1) * frame_stride + 1 if b > a else a * frame_stride]


def _run_names(paths: Sequence[Path]) -> list[str]:
    names = [p.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def import_video(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    size: tuple[int, int] = SIZE,
    in_frames: int = IN_FRAMES,
    out_frames: int = OUT_FRAMES,
    frame_stride: int = 1,
    train_stride: int | None = None,
    val_stride: int | None = None,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Decode every file in ``paths``, cut clips, split by time blocks and write the dataset to ``out``.

    ``progress``: tqdm bars on stderr while decoding (one per file, in frames) and writing (in sequences).
    """
    import cv2

    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no video files given")
    if in_frames < 1 or out_frames < 1:
        raise ValueError("in_frames and out_frames must be at least 1")
    L = in_frames + out_frames
    if frame_stride < 1 or (train_stride is not None and train_stride < 1) or (val_stride is not None and val_stride < 1):
        raise ValueError("frame_stride, train_stride and val_stride must be at least 1")
    check_fractions(val_fraction, test_fraction)
    plan_kw = dict(val_fraction=val_fraction, test_fraction=test_fraction, train_stride=train_stride,
                   val_stride=val_stride)
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path}: already exists (use --overwrite to replace it)")

    # Decode and check everything first: bad input is found before anything is written.
    refuse_a_file_given_twice(paths)
    videos: list[Video] = []
    plans: list[ClipPlan] = []
    seen: dict[str, Path] = {}
    for name, p in zip(_run_names(paths), paths):
        v = read_video(p, size, frame_stride, progress=progress)
        v.name = name
        if v.sha256 in seen:
            raise ImporterInputError(f"{p}: same content as {seen[v.sha256]} (sha256 {v.sha256[:12]}…)")
        seen[v.sha256] = p
        stride_note = f" (1 in {frame_stride} of {v.frames_decoded} decoded)" if frame_stride > 1 else ""
        try:
            plan = plan_clips(len(v.frames), L, frames_note=stride_note, **plan_kw)
        except ValueError as e:
            # (a cut-off file too short to import said only "too short"; a longer one is warned of being cut off)
            cut = (f"; it ends after {v.frames_decoded} of the {v.frames_reported} frames its container lists: cut "
                   "off (a copy or download that stopped)?" if ends_early(v) else "")
            raise ImporterInputError(f"{p}: {e}{cut}") from None
        videos.append(v)
        plans.append(plan)

    # Sequence table: train first, then val, then test; (video, kept-frame start) each.
    table = [(code, vi, s) for code, key in ((SPLIT_TRAIN, "train_starts"), (SPLIT_VAL, "val_starts"),
                                             (SPLIT_TEST, "test_starts"))
             for vi, pl in enumerate(plans) for s in getattr(pl, key)]
    H, W = size

    def make_shard(rng: range) -> dict:
        k = len(rng)
        frames = np.empty((k, L, 1, H, W), dtype=np.uint8)
        split = np.empty(k, dtype=np.uint8)
        run_index = np.empty(k, dtype=np.int32)
        for j, i in enumerate(rng):
            code, vi, s = table[i]
            frames[j, :, 0] = videos[vi].frames[s:s + L]
            split[j], run_index[j] = code, vi
        return dict(frames=frames, split=split, run_index=run_index, qc_flags=np.zeros((k, L), np.uint8),
                    qc_scores=np.zeros((k, L, 0), np.float32))

    sources = [dict(file=v.name, sha256=v.sha256, bytes=v.path.stat().st_size) for v in videos]
    config = dict(
        sources=sources, size=[H, W], in_frames=in_frames, out_frames=out_frames, frame_stride=frame_stride,
        train_stride=train_stride or L, val_stride=val_stride or L, val_fraction=val_fraction,
        test_fraction=test_fraction, gap_clips=GAP_CLIPS,
        split_rule="per video, its n non-overlapping clips in time order train | gap | val | gap | test: the last "
                   "round(test_fraction * n) are test, the round(val_fraction * n) before them (and a one-clip "
                   "unused gap) val, training clips come from the frames before the val block's gap; a block "
                   "with fraction 0 and its gap are left out",
        preprocessing="grayscale (cv2.COLOR_BGR2GRAY, BT.601), centred crop to the target aspect, cv2.INTER_AREA resize",
        decoder=f"OpenCV {cv2.__version__} FFmpeg backend (opencv-python-headless)")
    per_video = []
    for v, pl in zip(videos, plans):
        k = v.frame_stride
        per_video.append(dict(
            file=v.name, path=str(v.path), sha256=v.sha256, fps=v.fps, width=v.width, height=v.height, codec=v.codec,
            frames_decoded=v.frames_decoded, frames_reported=v.frames_reported, frames_kept=len(v.frames),
            ends_early=ends_early(v),
            crop_yxhw=list(v.crop), train_clips=len(pl.train_starts), val_clips=len(pl.val_starts),
            test_clips=len(pl.test_starts),
            # frames used by each split and the gaps between them, [start, stop) in decoded-frame indices
            train_frames=_decoded_range(pl.train_block, k), gap_frames=[pl.gap_block[0] * k, pl.gap_block[1] * k],
            val_frames=_decoded_range(pl.val_block, k),
            test_gap_frames=[pl.test_gap_block[0] * k, pl.test_gap_block[1] * k],
            test_frames=_decoded_range(pl.test_block, k)))
    extra = dict(benchmark="video", **{key: config[key] for key in ("size", "frame_stride", "train_stride", "val_stride",
                                                                     "val_fraction", "test_fraction", "gap_clips")},
                 videos=per_video, clip_start_frame=[s * frame_stride for _, _, s in table])
    return write_sequences(
        out_path, make_shard, n_sequences=len(table), overwrite=overwrite, desc="video", progress=progress,
        frames_per_sequence=L, channels=1, height=H, width=W, dtype=np.uint8,
        sequences_per_shard=SEQUENCES_PER_SHARD, in_frames=in_frames, out_frames=out_frames,
        pixel_format="Mono8", max_value=255, runs=[v.name for v in videos],
        provenance=dict(command=command or " ".join(sys.argv), source_runs=[v.name for v in videos], config=config),
        extra=extra)


def recording_names(paths: Sequence[Path]) -> list[str]:
    """The run folder of each video: its file stem (``clip.avi`` -> ``clip``: a folder named like a video read as
    one), the later of two alike stems ``<stem>_2``, ``<stem>_3``... in the order given (the manifest records the
    source file)."""
    names: list[str] = []
    for p in paths:
        name, k = p.stem or "video", 2
        while name in names:
            name, k = f"{p.stem}_{k}", k + 1
        names.append(name)
    return names


def refuse_a_file_given_twice(paths: Sequence[str | Path]) -> None:
    """ImporterInputError naming the second of two ``paths`` that are one file (``a.mp4 ./a.mp4``), before any
    decoding (:func:`import_video` and :func:`video_to_recordings`; other files of the same content are found by
    their sha256 once decoded)."""
    seen: dict[Path, Path] = {}
    for p in map(Path, paths):
        if (key := p.resolve()) in seen:
            raise ImporterInputError(f"{p}: given twice ({seen[key]} is the same file)")
        seen[key] = p


def _imported_before(run: Path, video: Path, size: tuple[int, int], frame_stride: int, positions: int,
                     step_um: float) -> bool:
    """Whether ``run`` holds a complete recording that :func:`video_to_recordings` made from this very video
    (its sha256) with these options: what a rerun after a SIGKILL finds of the videos it had finished."""
    from acquisition.raw import RawFormatError, Recording

    try:
        rec = Recording.open(run)
    except (RawFormatError, OSError):
        return False
    m = rec.manifest
    source = (m.get("notes") or {}).get("source") or {}
    settings, plan = m.get("settings") or {}, m.get("plan") or {}
    return (rec.complete and source.get("frame_stride") == frame_stride and plan.get("positions") == positions
            and plan.get("step_um") == step_um and (settings.get("height"), settings.get("width")) == tuple(size)
            and source.get("sha256") == file_sha256(video))


def video_to_recordings(paths: Sequence[str | Path], out: str | Path, *, size: tuple[int, int] = SIZE,
                        frame_stride: int = 1, positions: int = 10, step_um: float = 60.0,
                        progress: bool = True, warn=None, kept: list | None = None) -> list[Path]:
    """Decode each video of ``paths`` (as :func:`read_video`: gray, centred crop, resized to ``size`` = (H, W),
    every ``frame_stride``-th frame) and write it as a raw recording ``out/<name>`` (:func:`recording_names`;
    docs/raw-format.md): lane passes of ``positions`` consecutive frames, ``step_um`` apart, Mono8 at the video's
    frame rate over the stride; the frames after the last whole pass are left out. That is the input ``chdl
    curate`` runs QC on (an imported dataset has none) and ``chdl monitor --replay`` watches. Returns the
    recordings' paths. ``warn``: called with one line per video that ends before the frames its container lists.

    Before any video is decoded: a file given twice, an ``out`` that is a file and an existing destination are
    ImporterInputError, except a complete recording made from the same video with the same options, which is kept
    as it is and appended to ``kept`` (a rerun after a SIGKILL imports only what it had not finished). A video too
    short for one pass, or one that does not decode, is ImporterInputError naming it. The recordings this call
    made, and ``out`` if it made it and left it empty, are removed if it fails or is interrupted (another writer's
    recording in the same place is left alone: its claim is not ours)."""
    import shutil
    import time

    from acquisition.raw import RecordingWriter, free_for_a_recording, taken

    out = Path(out)
    if positions < 1 or not math.isfinite(step_um) or step_um <= 0:
        raise ValueError(f"positions must be >= 1 and step_um > 0, not {positions} and {step_um}")
    paths = [Path(p) for p in paths]
    refuse_a_file_given_twice(paths)
    if out.exists() and not out.is_dir():
        raise ImporterInputError(f"{out}: --out is a file, not a folder of recordings")
    runs = [out / name for name in recording_names(paths)]
    done = []  # recordings a run before this one finished: kept
    for p, run in zip(paths, runs):
        if not free_for_a_recording(run):
            if not _imported_before(run, p, size, frame_stride, positions, step_um):
                raise ImporterInputError(f"{taken(run)}; choose another --out")
            done.append(run)
    if kept is not None:
        kept.extend(done)
    made_out = not out.exists()
    made: list[Path] = []
    try:
        for p, run in zip(paths, runs):
            if run in done:
                continue
            v = read_video(p, size, frame_stride, progress=progress)
            lanes = len(v.frames) // positions
            if lanes < 1:
                raise ImporterInputError(f"{p}: too short for one lane pass: {len(v.frames)} frame(s), a pass is "
                                         f"{positions} (--positions)")
            cut = ends_early(v)
            if cut and warn is not None:
                warn(f"{p}: the file ends after {v.frames_decoded} of the {v.frames_reported} frames its container "
                     "lists: cut off? only those were written")
            if (enlarged := enlargement(v.crop, size)) and warn is not None:
                warn(f"{p}: {enlarged}")
            fps = v.fps / frame_stride if v.fps > 0 else 5.0
            manifest = {"camera": {"vendor": "video file", "model": v.codec, "serial": v.sha256[:16],
                                   "user_name": p.name, "transport": "file"},
                        "settings": {"width": size[1], "height": size[0], "pixel_format": "Mono8", "fps": fps,
                                     "exposure_us": None, "bit_depth": 8},
                        "plan": {"lanes": lanes, "positions": positions, "step_um": step_um,
                                 "positions_um": [k * step_um for k in range(positions)]},
                        "notes": {"source": {"file": str(p), "sha256": v.sha256, "fps": v.fps,
                                             "frames_decoded": v.frames_decoded, "frames_reported": v.frames_reported,
                                             "ends_early": cut, "frame_stride": frame_stride,
                                             "crop_yxhw": list(v.crop),
                                             "frames_left_out": len(v.frames) - lanes * positions}}}
            t0_wall, t0_mono = time.time_ns(), time.monotonic_ns()
            with RecordingWriter.create(run, manifest) as w:
                made.append(run)  # (only once it is ours: a folder another writer claimed first is theirs)
                for i in range(lanes * positions):
                    dt = int(round(i * 1e9 / fps))  # the video's own clock: one frame per 1/fps
                    w.append(v.frames[i], lane=i // positions, position_index=i % positions,
                             position_um=(i % positions) * step_um, frame_id=i * frame_stride,
                             device_timestamp_ns=None, host_wall_ns=t0_wall + dt, host_monotonic_ns=t0_mono + dt)
                w.close("complete", stopped_by=None)
    except BaseException:  # an error, Ctrl-C: the recordings made here go, the user's files stay
        for run in made:
            shutil.rmtree(run, ignore_errors=True)
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return runs
