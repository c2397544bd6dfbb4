"""The importers' shared write loop: complete-marked output, nothing left behind on failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chdl.dataset import open_dataset
from curation.importers.common import write_sequences

LAYOUT = dict(frames_per_sequence=4, channels=1, height=8, width=8, dtype=np.uint8, sequences_per_shard=2,
              in_frames=2, out_frames=2)


def shard(rng: range) -> dict:
    k = len(rng)
    frames = np.stack([np.full((4, 1, 8, 8), i, np.uint8) for i in rng])
    return dict(frames=frames, split=np.zeros(k, np.uint8))


def test_writes_every_shard_and_marks_complete(tmp_path: Path):
    out = write_sequences(tmp_path / "d.zarr", shard, n_sequences=5, progress=False, **LAYOUT)
    ds = open_dataset(out)
    assert ds.attrs["complete"] and ds.frames.shape == (5, 4, 1, 8, 8)
    assert [int(ds.frames[i, 0, 0, 0, 0]) for i in range(5)] == [0, 1, 2, 3, 4]


def test_failure_midway_leaves_nothing_and_existing_output_is_refused(tmp_path: Path):
    def failing(rng: range) -> dict:
        if rng.start >= 2:
            raise ValueError("bad input in shard 1")
        return shard(rng)

    out = tmp_path / "d.zarr"
    with pytest.raises(ValueError, match="shard 1"):
        write_sequences(out, failing, n_sequences=5, progress=False, **LAYOUT)
    assert not out.exists()
    write_sequences(out, shard, n_sequences=3, progress=False, **LAYOUT)
    with pytest.raises(FileExistsError):
        write_sequences(out, shard, n_sequences=3, progress=False, **LAYOUT)
    write_sequences(out, shard, n_sequences=1, progress=False, overwrite=True, **LAYOUT)
    assert open_dataset(out).n_sequences == 1


def test_a_dataset_larger_than_the_free_space_is_refused_before_anything_is_written(tmp_path: Path):
    """Even at the codec's best compression (MAX_COMPRESSION) it would not fit: one line naming the output."""
    import shutil

    from curation.importers.common import MAX_COMPRESSION, ImporterInputError

    free = shutil.disk_usage(tmp_path).free
    too_many = 2 * int(free * MAX_COMPRESSION // (4 * 8 * 8))  # 256 bytes of pixels per sequence: twice what fits
    with pytest.raises(ImporterInputError, match=rf"{tmp_path / 'd.zarr'}: {too_many:,} sequences are .* more than the "):
        write_sequences(tmp_path / "d.zarr", shard, n_sequences=too_many, progress=False, **LAYOUT)
    assert not (tmp_path / "d.zarr").exists()
    write_sequences(tmp_path / "d.zarr", shard, n_sequences=3, progress=False, **LAYOUT)  # a size that fits


@pytest.mark.parametrize("stop", [ValueError("bad input in shard 1"), KeyboardInterrupt()])
def test_an_overwrite_cut_short_puts_back_the_dataset_it_was_replacing(tmp_path: Path, stop):
    """An import --overwrite interrupted (Ctrl-C) or failing on late input deleted the complete dataset it replaced,
    and left nothing: curate --overwrite kept it aside; the importers now do too."""
    out = tmp_path / "d.zarr"
    write_sequences(out, shard, n_sequences=3, progress=False, **LAYOUT)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def failing(rng: range) -> dict:
        if rng.start >= 2:
            raise stop
        return {**shard(rng), "frames": shard(rng)["frames"] + 100}

    with pytest.raises(type(stop)):
        write_sequences(out, failing, n_sequences=5, overwrite=True, progress=False, **LAYOUT)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]  # nothing aside left
    write_sequences(out, shard, n_sequences=5, overwrite=True, progress=False, **LAYOUT)
    assert open_dataset(out).n_sequences == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]


def test_an_incomplete_replacement_names_the_dataset_kept_aside(tmp_path: Path):
    """After a kill (SIGKILL: no cleanup) the replaced dataset waits at .<name>.previous; opening the incomplete
    new one says where, so that it is not thought lost."""
    from chdl.dataset import DatasetIncompleteError, DatasetWriter, previous_path

    out = tmp_path / "d.zarr"
    write_sequences(out, shard, n_sequences=3, progress=False, **LAYOUT)
    DatasetWriter.create(out, n_sequences=5, overwrite=True, keep_previous=True, **LAYOUT)  # killed right after
    with pytest.raises(DatasetIncompleteError, match=rf"the dataset it was replacing is kept at {previous_path(out)} "):
        open_dataset(out)
    assert open_dataset(previous_path(out)).n_sequences == 3
