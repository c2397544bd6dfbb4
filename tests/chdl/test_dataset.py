"""The curated dataset format: round trip, incompleteness, resume, originals, and the torch Dataset."""

import numpy as np
import pytest
import torch
import zarr

from chdl.dataset import (FLAG_RECONSTRUCTED, FLAG_VIBRATION, SPLIT_EXCLUDED, SPLIT_TRAIN, SPLIT_VAL,
                          DatasetFormatError, DatasetIncompleteError, DatasetWriter, open_dataset)
from chdl.torch_dataset import SequenceDataset

N, T, C, H, W = 7, 10, 1, 12, 20


def _frames(seed=0, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, (N, T, C, H, W), dtype=dtype)


def _write(path, frames, *, shards=None, **kw):
    w = DatasetWriter.create(path, n_sequences=N, frames_per_sequence=T, channels=C, height=H, width=W,
                             dtype=frames.dtype, sequences_per_shard=3, qc_score_names=["sharpness"],
                             runs=["run-a", "run-b"], **kw)
    for s in (range(w.n_shards) if shards is None else shards):
        r = w.shard_range(s)
        k = len(r)
        flags = np.zeros((k, T), np.uint8)
        flags[0, 4] = FLAG_VIBRATION | FLAG_RECONSTRUCTED
        w.write_shard(s, frames=frames[r.start:r.stop], qc_flags=flags,
                      qc_scores=np.full((k, T, 1), 0.5, np.float32),
                      split=np.array([[SPLIT_TRAIN, SPLIT_VAL, SPLIT_EXCLUDED][i % 3] for i in r], np.uint8),
                      run_index=np.array([i % 2 for i in r]), lane=np.array(list(r)),
                      position_um=np.tile(np.arange(T) * 500.0, (k, 1)), timestamp_ns=np.zeros((k, T), np.int64),
                      originals=[(0, 4, np.full((C, H, W), 7, frames.dtype))])
    return w


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_round_trip(tmp_path, dtype):
    frames = _frames(dtype=dtype)
    _write(tmp_path / "d.zarr", frames).finalize()
    ds = open_dataset(tmp_path / "d.zarr")
    assert ds.frames.dtype == dtype
    np.testing.assert_array_equal(ds.frames[:], frames)
    assert ds.frames.metadata.dimension_names == ("sequence", "time", "channel", "height", "width")
    assert ds.frames.chunks == (1, T, C, H, W) and ds.frames.shards == (3, T, C, H, W)
    assert list(ds.indices("train")) == [0, 3, 6] and list(ds.indices("val")) == [1, 4]
    assert list(ds.indices("all")) == [0, 1, 3, 4, 6]
    s = ds.summary()
    assert s["splits"] == {"train": 3, "val": 2, "excluded": 2}
    assert s["qc_frames_flagged"]["vibration"] == 3 and s["qc_frames_flagged"]["reconstructed"] == 3
    originals = ds.originals()
    assert [(q, t) for q, t, _ in originals] == [(0, 4), (3, 4), (6, 4)]
    assert (originals[0][2] == 7).all()


def test_readable_with_plain_zarr(tmp_path):
    frames = _frames()
    _write(tmp_path / "d.zarr", frames).finalize()
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    assert g.attrs["schema"] == "chdl.dataset/1" and g.attrs["complete"] is True
    np.testing.assert_array_equal(g["frames"][2, 3], frames[2, 3])


def test_interrupted_write_is_refused_then_resumed(tmp_path):
    path = tmp_path / "d.zarr"
    frames = _frames()
    _write(path, frames, shards=[0, 2])  # shard 1 never written: the writer "died"
    with pytest.raises(DatasetIncompleteError, match="incomplete dataset .2/3 shards"):
        open_dataset(path)
    with pytest.raises(DatasetIncompleteError):
        SequenceDataset(path)
    w = DatasetWriter.open(path)
    assert w.done_shards() == {0, 2}
    with pytest.raises(DatasetIncompleteError, match="1 shard"):
        w.finalize()
    r = w.shard_range(1)
    # the writer of shard 1 was killed while zarr's local store wrote a file: its temporary stays behind
    leftover = path / "frames" / "c" / "1" / "0" / "0" / "0" / "0.0123abcd.partial"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"torn")
    w.write_shard(1, frames=frames[r.start:r.stop])
    w.finalize()
    np.testing.assert_array_equal(open_dataset(path).frames[:], frames)
    assert not list(path.rglob("*.partial"))  # finalize removed it


def test_refuses_overwrite_and_bad_paths(tmp_path):
    _write(tmp_path / "d.zarr", _frames()).finalize()
    with pytest.raises(FileExistsError, match="--overwrite"):
        _write(tmp_path / "d.zarr", _frames())
    with pytest.raises(DatasetFormatError, match="no such dataset"):
        open_dataset(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetFormatError, match="not a zarr v3 group"):
        open_dataset(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(DatasetFormatError, match="not a chdl dataset"):
        open_dataset(tmp_path / "other.zarr")


def test_write_shard_checks_shapes(tmp_path):
    w = _write(tmp_path / "d.zarr", _frames(), shards=[])
    with pytest.raises(ValueError, match="frames shape"):
        w.write_shard(0, frames=np.zeros((2, T, C, H, W), np.uint8))


def test_torch_dataset_multiworker(tmp_path):
    frames = _frames()
    _write(tmp_path / "d.zarr", frames, in_frames=4, out_frames=3).finalize()
    ds = SequenceDataset(tmp_path / "d.zarr", split="train")
    assert len(ds) == 3
    x, y = ds[1]  # sequence 3
    assert x.shape == (4, C, H, W) and y.shape == (3, C, H, W) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(frames[3, :4].astype(np.float32) / 255))
    torch.testing.assert_close(y, torch.from_numpy(frames[3, 4:7].astype(np.float32) / 255))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    xs = torch.cat([xb for xb, _ in loader])
    expected = torch.from_numpy(frames[[0, 3, 6], :4].astype(np.float32) / 255)
    torch.testing.assert_close(xs, expected)
    one = SequenceDataset(tmp_path / "d.zarr", split="val", in_frames=5, out_frames=1)
    assert one[0][1].shape == (1, C, H, W)
    with pytest.raises(ValueError, match="cannot take"):
        SequenceDataset(tmp_path / "d.zarr", in_frames=8, out_frames=5)


def test_torch_dataset_integer_mode_matches_float(tmp_path):
    frames = _frames(dtype=np.uint16)
    _write(tmp_path / "d.zarr", frames).finalize()
    as_float = SequenceDataset(tmp_path / "d.zarr", split="train")
    as_int = SequenceDataset(tmp_path / "d.zarr", split="train", integer=True)
    loader = torch.utils.data.DataLoader(as_int, batch_size=3, num_workers=2)
    (x, y), = list(loader)
    assert x.dtype == torch.uint16 and x.shape == (3, 5, C, H, W)
    torch.testing.assert_close(as_int.to_unit(x)[1], as_float[1][0], rtol=0, atol=0)
    torch.testing.assert_close(as_int.to_unit(y)[2], as_float[2][1], rtol=0, atol=0)
