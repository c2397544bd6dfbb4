"""What both importers share: the input-error type and the shard-by-shard write loop."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from acquisition import files
from acquisition.raw import inside_other_data
from chdl.dataset import DatasetWriter, marked_incomplete
from chdl.locks import OutputInUse, OutputLockError, exclusive_output


class ImporterInputError(ValueError):
    """Bad importer input (missing variable, wrong grid, empty folder, ...). The message names the file."""


MAX_COMPRESSION = 10  # the most the dataset codec is assumed to shrink imported pixels (Moving MNIST: 7.3x)


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000


def check_room(out: Path, n_sequences: int, create_kwargs: dict[str, Any]) -> None:
    """ImporterInputError (naming ``out``) when the dataset cannot fit in the free space of the filesystem
    that would hold it even at ``MAX_COMPRESSION``: refused before anything is written, instead of an
    import that fills the disk hours later (``chdl import mnist --train 99999999999`` asked for 8 PB)."""
    import numpy as np

    shape = (n_sequences, create_kwargs.get("frames_per_sequence", 1), create_kwargs.get("channels", 1),
             create_kwargs.get("height", 1), create_kwargs.get("width", 1))
    raw = float(np.prod(shape, dtype=np.float64)) * np.dtype(create_kwargs.get("dtype", np.uint8)).itemsize
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if raw / MAX_COMPRESSION > free:
        raise ImporterInputError(
            f"{out}: {n_sequences:,} sequences are {_bytes(raw)} of pixels (at least {_bytes(raw / MAX_COMPRESSION)} "
            f"stored), more than the {_bytes(free)} free on {parent}; ask for fewer sequences")


def write_sequences(
    out: str | Path,
    make_shard: Callable[[range], dict[str, Any]],
    *,
    n_sequences: int,
    overwrite: bool = False,
    desc: str = "import",
    progress: bool = True,
    **create_kwargs: Any,
) -> Path:
    """Create a dataset at ``out`` and fill it shard by shard with ``make_shard(sequence_range)``.

    ``make_shard`` returns the keyword arguments of :meth:`DatasetWriter.write_shard` for the sequences of
    one shard (at least ``frames``). The dataset is marked complete only after the last shard; if anything
    fails on the way (bad input found late, Ctrl-C) the partial output is removed, so nothing half-written
    is left behind — importers are deterministic, a rerun rebuilds the same thing. An existing ``out`` is
    refused (FileExistsError) unless ``overwrite``; the complete dataset an ``overwrite`` replaces is kept aside
    until the new one is complete and put back if it cannot be (a kill leaves it at ``.<name>.previous``).
    """
    out = Path(out)
    if why := inside_other_data(out):  # (curate and capture refused it; an --overwrite of the outer one deleted it)
        raise ImporterInputError(f"{out}: inside {why}; choose another --out")
    check_room(out, n_sequences, create_kwargs)
    try:  # one writer at a time: two --overwrite imports raced and the dataset they replaced was lost
        with exclusive_output(out):
            return _write_sequences(out, make_shard, n_sequences, overwrite, desc, progress, create_kwargs)
    except OutputInUse as e:
        raise ImporterInputError(str(e)) from None
    except OutputLockError as e:  # a folder the lock cannot go in: as any write there fails (chdl import names --out)
        raise e.__cause__ from None


def _write_sequences(out: Path, make_shard, n_sequences: int, overwrite: bool, desc: str, progress: bool,
                     create_kwargs: dict) -> Path:
    try:  # create inside the try: an interrupt just after the layout is renamed into place removes it too
        writer = DatasetWriter.create(out, n_sequences=n_sequences, overwrite=overwrite, keep_previous=overwrite,
                                      **create_kwargs)
        with tqdm(total=n_sequences, desc=desc, unit="seq", file=sys.stderr, disable=not progress) as bar:
            for shard in range(writer.n_shards):
                rng = writer.shard_range(shard)
                writer.write_shard(shard, **make_shard(rng))
                bar.update(len(rng))
        writer.finalize()
    except BaseException:
        # an --overwrite cut short puts back the dataset it was replacing (kept aside until the new one is complete)
        if not DatasetWriter.restore_previous(out) and marked_incomplete(out):
            shutil.rmtree(out, ignore_errors=True)  # ours; never what was there before (a refused --out)
        raise
    return out


def save_preview(dataset: str | Path, png: str | Path, n: int = 4) -> Path:
    """A PNG grid of the first ``n`` validation sequences (rows) × all frames (columns), channel 0.

    Each sequence is scaled to its own min..max so low-contrast fields (weather) stay visible; small
    frames are enlarged (nearest neighbour) to at least 96 px high. A white line separates input from
    target frames.
    """
    import cv2
    import numpy as np

    from chdl.dataset import open_dataset

    reader = open_dataset(dataset)
    idx = reader.indices("val")
    idx = (idx if len(idx) else reader.indices("train"))[:n]
    frames = np.stack([reader.frames[int(i), :, 0] for i in idx]).astype(np.float64)  # (n, T, H, W)
    lo = frames.min(axis=(1, 2, 3), keepdims=True)
    hi = frames.max(axis=(1, 2, 3), keepdims=True)
    frames = ((frames - lo) / np.maximum(hi - lo, 1e-12) * 255).astype(np.uint8)
    k, T, H, W = frames.shape
    zoom = max(1, -(-96 // H))
    frames = frames.repeat(zoom, axis=2).repeat(zoom, axis=3)
    t_in = int(reader.attrs["in_frames"])
    rows = [np.concatenate([*f[:t_in], np.full((H * zoom, 2), 255, np.uint8), *f[t_in:]], axis=1) for f in frames]
    grid = np.concatenate(rows, axis=0)
    png = Path(png)
    files.write_bytes(png, cv2.imencode(".png", grid)[1].tobytes())
    return png
