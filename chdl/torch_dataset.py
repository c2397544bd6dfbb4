"""A PyTorch ``Dataset`` over the curated format: one sequence per item, read lazily from its shard."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from chdl.dataset import DatasetReader, open_dataset, read_array


class SequenceDataset(Dataset):
    """Yields ``(x, y)``: float32 tensors in [0, 1] of shapes (T_in, C, H, W) and (T_out, C, H, W).

    x is frames ``[frame_offset, frame_offset + T_in)`` of a sequence and y the ``T_out`` frames after
    it. Each item reads exactly one chunk (one sequence) from disk; the zarr handle is opened per
    process, so the dataset works with any number of DataLoader workers and never loads the whole set.

    ``integer=True`` yields the stored integers instead (torch.uint8 / torch.uint16): a quarter (or half)
    of the bytes to move from DataLoader workers to the trainer, which matters at 600x800 on few cores.
    ``to_unit`` then maps a batch to the same float32 values in [0, 1] on whatever device it is on.
    """

    def __init__(self, path: str | os.PathLike, split: str = "train", in_frames: int | None = None,
                 out_frames: int | None = None, frame_offset: int = 0, integer: bool = False):
        self.path = Path(path)
        reader = open_dataset(self.path)  # validates completeness up front, in the parent process
        self.in_frames = int(in_frames if in_frames is not None else reader.attrs["in_frames"])
        self.out_frames = int(out_frames if out_frames is not None else reader.attrs["out_frames"])
        self.frame_offset = int(frame_offset)
        T = int(reader.attrs["frames_per_sequence"])
        if self.in_frames < 1 or self.out_frames < 1 or self.frame_offset + self.in_frames + self.out_frames > T:
            raise ValueError(f"{self.path}: cannot take {self.in_frames} input + {self.out_frames} target frames "
                             f"from offset {self.frame_offset} of {T}-frame sequences")
        self.scale = 1.0 / float(reader.attrs["max_value"])
        self.integer = bool(integer)
        self.indices = reader.indices(split)
        self.split = split
        self.frame_shape = tuple(reader.frames.shape[2:])  # (C, H, W)
        self._reader: DatasetReader | None = None
        self._pid: int | None = None

    def _frames(self):
        if self._reader is None or self._pid != os.getpid():  # a fresh handle in each worker process
            self._reader = open_dataset(self.path, check_files=False)  # __init__ checked them, once
            self._pid = os.getpid()
        return self._reader.frames

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        seq = int(self.indices[i])
        a, b = self.frame_offset, self.frame_offset + self.in_frames
        c = b + self.out_frames
        frames = torch.from_numpy(np.asarray(read_array(self._frames(), (seq, slice(a, c)), self.path)))  # (T,C,H,W)
        if not self.integer:
            frames = self.to_unit(frames)
        return frames[: self.in_frames], frames[self.in_frames:]

    def to_unit(self, frames: torch.Tensor) -> torch.Tensor:
        """Stored integers -> float32 intensities in [0, 1] (a float tensor passes through unchanged)."""
        if frames.is_floating_point():
            return frames
        return frames.to(torch.float32) * self.scale

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reader"], state["_pid"] = None, None  # zarr handles are reopened in the worker
        return state
