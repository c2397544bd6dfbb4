"""Data plumbing for training: the dataset's shape/attrs, and a loader whose order is a pure function of
(seed, epoch) that can start mid-epoch (exact resume)."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from chdl.dataset import open_dataset
from chdl.torch_dataset import SequenceDataset


def dataset_info(path: str | Path, in_frames: int | None = None, out_frames: int | None = None) -> dict:
    """What a model needs to know about a dataset (and a checkpoint records): frame counts, shape, range.

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
    }


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
        raise ValueError(f"{path}: split {split!r} has no sequences")
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


def make_loader(dataset: Dataset, batch_size: int, *, sampler: Sampler | None = None, num_workers: int = 0,
                seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose worker seeds come from its own generator, never from torch's global RNG (which the
    model's noise draws from), so resuming mid-epoch replays exactly the same random numbers."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0, drop_last=False,
                      generator=torch.Generator().manual_seed(seed))
