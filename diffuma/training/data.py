"""Data plumbing for training: the dataset's shape/attrs, and a loader whose order is a pure function of
(seed, epoch) that can start mid-epoch (exact resume)."""

from __future__ import annotations

import itertools
import signal
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from chdl.dataset import empty_split, open_dataset
from chdl.torch_dataset import SequenceDataset


def dataset_info(path: str | Path, in_frames: int | None = None, out_frames: int | None = None) -> dict:
    """What a model needs to know about a dataset (and a checkpoint records): frame counts, shape, range, and
    the dataset's identity (:meth:`chdl.dataset.DatasetReader.identity`; a resume compares it, :func:`dataset_mismatch`).

    in/out frame counts come from the dataset attributes unless given.
    """
    reader = open_dataset(path)
    _, _, c, h, w = reader.frames.shape
    return {
        "path": str(Path(path).resolve()),
        "in_frames": int(in_frames if in_frames is not None else reader.attrs["in_frames"]),
        "out_frames": int(out_frames if out_frames is not None else reader.attrs["out_frames"]),
        "channels": int(c), "height": int(h), "width": int(w),
        "max_value": float(reader.attrs["max_value"]),
        "pixel_format": str(reader.attrs.get("pixel_format", "")),
        "identity": reader.identity(),
        "n_train": int(len(reader.indices("train"))),  # (the training split's size: bench's recipe table states it)
        # where the training sequences came from (chdl.dataset.DatasetReader.sequence_keys; imported data has no
        # such record): an evaluation notes sequences it scores that the model was trained on (a re-curation of
        # the same recording with another split puts training lanes into "val")
        "train_sequences": [k for k in reader.sequence_keys(reader.indices("train")) if k is not None],
    }


def dataset_mismatch(saved: dict, current: dict) -> str | None:
    """Why the dataset ``current`` describes (:func:`dataset_info`) is not the one a checkpoint's ``saved`` data
    was made with; None when it is. Compared: the frames' shape (N,T,C,H,W from the identity; C,H,W alone for a
    checkpoint written before chdl recorded the identity), max_value, and the content digest when both have one
    (or the data digest: a replay of the recording curated the same way is the same data), else the creation time. Content and creation time need the identity: without it the caller can only compare
    paths."""
    a, b = saved.get("identity"), current.get("identity")
    both = isinstance(a, dict) and isinstance(b, dict)
    why = []
    if both and a.get("frames_shape") != b.get("frames_shape"):
        why.append(f"frames {_shape(a.get('frames_shape'))} vs {_shape(b.get('frames_shape'))} (N,T,C,H,W)")
    chw = [(saved.get(k), current.get(k)) for k in ("channels", "height", "width")]
    if not both and all(s is not None for s, _ in chw) and any(s != c for s, c in chw):
        why.append(f"frames {'x'.join(str(s) for s, _ in chw)} vs {'x'.join(str(c) for _, c in chw)} (C,H,W)")
    if other_max_value(saved, current.get("max_value")) is not None:
        why.append(f"max_value {saved.get('max_value')} vs {current.get('max_value')}")
    if both:
        if a.get("content") and b.get("content"):
            if a["content"] != b["content"] and not (a.get("data") and a.get("data") == b.get("data")):
                why.append("its content differs (the shard checksums recorded in the two datasets are not the same)")
        elif a.get("created") != b.get("created"):
            why.append(f"created {a.get('created') or '?'} vs {b.get('created') or '?'}")
    return "; ".join(why) or None


def other_max_value(saved: dict, max_value: float | None) -> float | None:
    """The max_value a checkpoint's ``saved`` data (its ``data``) was scaled by, when it is not ``max_value``; None
    when they are the same or the checkpoint records none. Resume refuses such data, eval and predict say so."""
    trained = saved.get("max_value")
    if trained is None or (max_value is not None and float(trained) == float(max_value)):
        return None
    return float(trained)


def _shape(shape) -> str:
    return "x".join(map(str, shape)) if isinstance(shape, list) else repr(shape)


def sequence_datasets(path: str | Path, info: dict, frame_offset: int = 0) -> tuple[Dataset, Dataset]:
    """(train, val) SequenceDatasets: lazy per-sequence shard reads, safe with DataLoader workers.

    The train set yields stored integers (4x fewer bytes from the loader workers at uint8); the trainer
    scales them to [0, 1] on its device with ``train_set.to_unit``."""
    kw = dict(in_frames=info["in_frames"], out_frames=info["out_frames"], frame_offset=frame_offset)
    return SequenceDataset(path, "train", integer=True, **kw), SequenceDataset(path, "val", **kw)


def checkpoint_dataset(state: dict, path: str | Path, split: str) -> SequenceDataset:
    """A split of the dataset at ``path`` as a checkpoint's model sees it (its frame counts and frame offset).
    ValueError naming both when the frames' (C, H, W) differ from those the model was trained on."""
    info = state["data"]
    ds = SequenceDataset(path, split, in_frames=info["in_frames"], out_frames=info["out_frames"],
                         frame_offset=state["config"]["run"].get("frame_offset", 0))
    expected = (info["channels"], info["height"], info["width"])
    if tuple(ds.frame_shape) != expected:
        raise ValueError(f"{path}: frames are {tuple(ds.frame_shape)} (C,H,W) but the checkpoint was trained on "
                         f"{expected}")
    if len(ds) == 0:
        raise ValueError(empty_split(path, split))
    return ds


class ResumableSampler(Sampler[int]):
    """``DistributedSampler``'s order for (seed, epoch, rank), minus the first ``skip`` indices of the epoch.

    With one process it is the seeded shuffle of the whole split; under torchrun each rank gets its slice.
    ``set_epoch(epoch, skip)`` before iterating; ``skip`` = batches already done x batch size on resume.
    """

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                       drop_last=False)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader worker's init: SIGINT is the training process's to handle (it stops after the current step
    and checkpoints); Ctrl-C in a terminal reaches the whole process group, and a worker that died of it would
    fail the batches the main process still reads. (SIGTERM is left alone: multiprocessing stops leftover
    workers with it at exit.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_size: int, *, sampler: Sampler | None = None, num_workers: int = 0,
                seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose worker seeds come from its own generator, never from torch's global RNG (which the
    model's noise draws from), so resuming mid-epoch replays exactly the same random numbers. Its workers
    ignore SIGINT (:func:`ignore_stop_signals`)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0, drop_last=False,
                      generator=torch.Generator().manual_seed(seed), worker_init_fn=ignore_stop_signals)
