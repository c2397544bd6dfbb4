"""The curated dataset format: round trip, incompleteness, resume, originals, and the torch Dataset."""

import json

import numpy as np
import pytest
import torch
import zarr

from chdl.dataset import (ATTRIBUTE_DIGESTS, FLAG_RECONSTRUCTED, FLAG_VIBRATION, SPLIT_EXCLUDED, SPLIT_TRAIN,
                          SPLIT_VAL, DatasetFormatError, DatasetIncompleteError, DatasetWriter, dataset_path, open_dataset)
from chdl.torch_dataset import SequenceDataset
from dataset_helpers import as_written_before_checksums

N, T, C, H, W = 7, 10, 1, 12, 20


def _frames(seed=0, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, (N, T, C, H, W), dtype=dtype)


def _write(path, frames, *, shards=None, captured_at=0, **kw):
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
                      position_um=np.tile(np.arange(T) * 500.0, (k, 1)), timestamp_ns=np.full((k, T), captured_at, np.int64),
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
    assert s["splits"] == {"train": 3, "val": 2, "test": 0, "excluded": 2}
    assert s["qc_frames_flagged"]["vibration"] == 3 and s["qc_frames_flagged"]["reconstructed"] == 3
    originals = ds.originals()
    assert [(q, t) for q, t, _ in originals] == [(0, 4), (3, 4), (6, 4)]
    assert (originals[0][2] == 7).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_frames_shards_are_the_bytes_zarr_writes(tmp_path, dtype):
    """The writer encodes each frames shard itself (chdl.dataset._frames_shard_bytes): every shard file --
    whole ones, the last and partial one (7 sequences in shards of 3), a chunk of fill values, noise and
    smooth content -- has exactly the bytes zarr writes for the same pixels."""
    frames = _frames(dtype=dtype)
    frames[1] = 0  # all fill value: stored all the same (write_empty_chunks)
    frames[4] = (np.arange(H * W).reshape(H, W) * 3 % np.iinfo(dtype).max).astype(dtype)  # compresses well
    _write(tmp_path / "d.zarr", frames).finalize()
    group = DatasetWriter.create(tmp_path / "ref.zarr", n_sequences=N, frames_per_sequence=T, channels=C, height=H,
                                 width=W, dtype=dtype, sequences_per_shard=3).group
    with zarr.config.set({"array.write_empty_chunks": True}):  # what the writer set (an array takes it when opened)
        group["frames"][:] = frames
    for s in range(3):
        key = f"frames/c/{s}/0/0/0/0"
        assert (tmp_path / "d.zarr" / key).read_bytes() == (tmp_path / "ref.zarr" / key).read_bytes(), key


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
    with pytest.raises(DatasetIncompleteError, match="incomplete dataset .2/3 shards.*with --overwrite to make it again"):
        open_dataset(path)  # no curate key in its provenance: made by an importer, which starts over
    with pytest.raises(DatasetIncompleteError):
        SequenceDataset(path)
    w = DatasetWriter.open(path)
    assert w.done_shards() == {0, 2}
    with pytest.raises(DatasetIncompleteError, match="1 shard"):
        w.finalize()
    r = w.shard_range(1)
    # the writer of shard 1 was killed while zarr's local store wrote a file: its temporary stays behind
    leftover = path / "frames" / "c" / "1" / "0" / "0" / "0" / ("0." + "0123abcd" * 4 + ".partial")
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
    zarr.open_group(str(tmp_path / "newer.zarr"), mode="w").attrs["schema"] = "chdl.dataset/2"
    with pytest.raises(DatasetFormatError, match=r"newer.zarr: a dataset of schema chdl.dataset/2 \(made by a newer "
                       r"chdl\); this chdl reads chdl.dataset/1: upgrade chdl to use it$"):
        open_dataset(tmp_path / "newer.zarr")
    (tmp_path / "clip.mp4").write_bytes(b"x")  # a user's footage given as a dataset
    with pytest.raises(DatasetFormatError, match=r"clip.mp4: not a zarr v3 group \(no zarr.json\); it is named like a video file: "
                                                 r"chdl import recordings writes it as a raw recording for chdl curate \(QC\), chdl import video makes a dataset of it without QC"):
        open_dataset(tmp_path / "clip.mp4")
    # a damaged group metadata document is named (it said only "d.zarr: cannot open zarr group (Invalid control ...")
    meta = tmp_path / "d.zarr" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:40] + b"\x01" + meta.read_bytes()[40:])
    with pytest.raises(DatasetFormatError, match=rf"^{meta}: cannot open zarr group \(.+\)$"):
        open_dataset(tmp_path / "d.zarr")


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


def test_torch_dataset_takes_its_frames_after_the_offset(tmp_path):
    """run.frame_offset is validated and recorded by the trainer; the frames it reads must start there too, in
    float and in integer mode (frame t of every sequence holds the value 10 t here)."""
    frames = np.broadcast_to((np.arange(T) * 10).astype(np.uint8)[None, :, None, None, None], (N, T, C, H, W)).copy()
    _write(tmp_path / "d.zarr", frames).finalize()
    for integer in (False, True):
        ds = SequenceDataset(tmp_path / "d.zarr", split="train", in_frames=2, out_frames=3, frame_offset=4,
                             integer=integer)
        x, y = ds[0]
        if not integer:
            x, y = x * 255, y * 255
        assert x[:, 0, 0, 0].round().tolist() == [40, 50] and y[:, 0, 0, 0].round().tolist() == [60, 70, 80]


# ------------------------------------------------------------------------------------------------
# one validation of a dataset's metadata, used by every reader (info, train, eval, predict) and resume
# ------------------------------------------------------------------------------------------------

def _replace_array(group, name, data):
    del group[name]
    group.create_array(name, data=data)


@pytest.mark.parametrize("damage,needle", [
    (lambda g: _replace_array(g, "frames", np.zeros((N, T, H, W), np.uint8)), "frames must be a 5-D array"),
    (lambda g: _replace_array(g, "frames", np.zeros((N, T, C, H, W), np.float32)), "frames must be uint8 or uint16, not float32"),
    (lambda g: g.attrs.update({"max_value": 0}), "attribute max_value must be a number in (0, 255]"),
    (lambda g: g.attrs.update({"max_value": 1000.0}), "attribute max_value must be a number in (0, 255]"),
    (lambda g: g.attrs.update({"n_sequences": 5, "n_shards": 2}), "frames holds 7 sequences of 10 frames, but the attributes"),
    (lambda g: g.attrs.update({"n_sequences": "7"}), "attribute n_sequences must be an integer >= 1"),
    (lambda g: g.attrs.update({"n_shards": 9}), "attribute n_shards is 9, but 7 sequences in shards of 3 make 3"),
    (lambda g: g.attrs.update({"in_frames": 8}), "in_frames + out_frames (8+5) exceeds frames_per_sequence (10)"),
    (lambda g: g.attrs.update({"runs": "run-a"}), "attribute runs must be a list"),
    (lambda g: _replace_array(g, "lane", np.zeros(N + 1, np.int32)), "lane must be int32 (7,)"),
    (lambda g: _replace_array(g, "qc_scores", np.zeros((N, T, 2), np.float32)), "qc_scores must be float32 (7, 10, 1)"),
    (lambda g: _replace_array(g, "shard_done", np.ones(2, np.uint8)), "shard_done must have one entry per shard (3)"),
    (lambda g: g.__delitem__("split"), "missing arrays: split"),
])
def test_malformed_dataset_is_one_error_naming_the_key(tmp_path, damage, needle):
    from click.testing import CliRunner

    from chdl.cli import main

    path = tmp_path / "d.zarr"
    _write(path, _frames()).finalize()
    damage(zarr.open_group(str(path), mode="r+"))
    for opener in (open_dataset, DatasetWriter.open, SequenceDataset):
        with pytest.raises(DatasetFormatError) as e:
            opener(path)
        assert str(e.value).startswith(f"{path}: malformed dataset (") and needle in str(e.value), str(e.value)
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 1 and r.output.strip() == f"Error: {e.value}", r.output


def test_creation_is_atomic_and_a_killed_creation_is_cleaned_up(tmp_path, monkeypatch):
    """The layout is built beside the target and renamed into place: a creation killed half-way leaves
    no dataset at the path (so a rerun starts afresh, never a half layout that cannot resume), and the
    next creation removes the leftovers. --overwrite keeps the old dataset whole until the new one is in. An
    interrupt (Ctrl-C) removes its own leftovers at once."""
    import chdl.dataset

    path = tmp_path / "d.zarr"
    real = zarr.Group.create_group

    def killed(self, name, **kw):  # the last step of creation: die just before it
        raise KeyboardInterrupt
    monkeypatch.setattr(zarr.Group, "create_group", killed)
    with pytest.raises(KeyboardInterrupt):
        _write(path, _frames())
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # Ctrl-C: cleaned up on the way out
    real_remove = chdl.dataset._remove
    monkeypatch.setattr(chdl.dataset, "_remove", lambda p: None)  # a kill: no clean-up runs
    with pytest.raises(KeyboardInterrupt):
        _write(path, _frames())
    monkeypatch.setattr(chdl.dataset, "_remove", real_remove)
    assert not path.exists() and (tmp_path / ".d.zarr.creating").is_dir()
    monkeypatch.setattr(zarr.Group, "create_group", real)
    _write(path, _frames()).finalize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]
    monkeypatch.setattr(zarr.Group, "create_group", killed)
    with pytest.raises(KeyboardInterrupt):
        _write(path, _frames(seed=1), overwrite=True)
    np.testing.assert_array_equal(open_dataset(path).frames[:], _frames())  # the old one, untouched
    monkeypatch.setattr(zarr.Group, "create_group", real)
    _write(path, _frames(seed=1), overwrite=True).finalize()
    np.testing.assert_array_equal(open_dataset(path).frames[:], _frames(seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]


def test_any_bad_value_in_any_attribute_is_refused_or_harmless(tmp_path):
    """Every attribute set to each of a list of bad values: opening either refuses it in one line naming the
    path, or it is harmless (the summary, `chdl info` and one item of the torch Dataset all work)."""
    from click.testing import CliRunner

    from chdl.cli import main

    path = tmp_path / "d.zarr"
    _write(path, _frames()).finalize()
    g = zarr.open_group(str(path), mode="r+")
    attrs = dict(g.attrs)
    bad_values = ["x", 1.5, float("nan"), float("inf"), True, None, [], {}, -1, 0, 10**30]
    refused = 0
    for key in attrs:
        for bad in bad_values:
            g.update_attributes({**attrs, key: bad})
            try:
                summary = open_dataset(path).summary()
            except DatasetFormatError as e:
                assert str(e).startswith(str(path)) and "\n" not in str(e), (key, bad, str(e))
                refused += 1
                continue
            r = CliRunner().invoke(main, ["info", str(path)])
            # every edit after the dataset was finished is named by the attribute digests: info refuses it, and train,
            # eval and verify with it (the same check); an edit to those digests themselves is damage too (null as
            # well: a dataset that knows the test split was written with them)
            unchanged = json.dumps(bad, sort_keys=True) == json.dumps(attrs[key], sort_keys=True)
            if unchanged:
                assert r.exit_code == 0 and summary["path"] == str(path), (key, bad, r.output)
            else:
                assert r.exit_code == 1, (key, bad, r.output)
                last = r.output.strip().splitlines()[-1]
                named = "" if key == ATTRIBUTE_DIGESTS else "attribute edited after the dataset was finished (by "
                assert last.startswith(f"Error: {path}: metadata damaged (zarr.json: {named}"), (key, bad, last)
                assert key == ATTRIBUTE_DIGESTS or f"): {key} changed" in last, (key, bad, last)
            x, y = SequenceDataset(path, "train")[0]
            assert torch.isfinite(x).all() and float(x.max()) <= 1.0, (key, bad)
    assert refused > 80, refused


def test_create_refuses_what_readers_refuse_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="refusing to create a dataset .pixel_format Mono8 means uint8 frames"):
        _write(tmp_path / "d.zarr", _frames(dtype=np.uint16), pixel_format="Mono8")
    assert list(tmp_path.iterdir()) == []
    _write(tmp_path / "d.zarr", _frames(dtype=np.uint16) & 4095, pixel_format="Mono12").finalize()  # (12-bit values)
    assert open_dataset(tmp_path / "d.zarr").attrs["max_value"] == 4095  # the format's default


def _flip_byte(file, at=None):
    data = bytearray(file.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0xFF
    file.write_bytes(bytes(data))


def test_every_shard_file_has_its_checksum_recorded(tmp_path):
    import blake3

    path = tmp_path / "d.zarr"
    _write(path, _frames()).finalize()
    g = zarr.open_group(str(path), mode="r")
    record = json.loads(g["shard_checksums"][1].item())
    # frames, the 7 per-sequence arrays, and the shard's originals (its data and its index, each with its metadata)
    assert sorted(record) == ["frames/c/1/0/0/0/0", "lane/c/1", "originals/1/c/0/0/0/0", "originals/1/zarr.json",
                              "originals_index/1/c/0/0", "originals_index/1/zarr.json",
                              "position_um/c/1/0", "qc_flags/c/1/0", "qc_scores/c/1/0/0", "run_index/c/1", "split/c/1",
                              "timestamp_ns/c/1/0"]
    for key, want in record.items():
        data = (path / key).read_bytes()
        assert want == {"blake3": blake3.blake3(data).hexdigest(), "bytes": len(data)}, key
    reader = open_dataset(path)
    result = reader.verify()
    assert reader.has_checksums and result.problems == [] and (result.shards, result.files) == (3, 36)
    assert result.bytes == sum(v["bytes"] for s in range(3) for v in json.loads(g["shard_checksums"][s].item()).values())


def test_a_missing_shard_file_is_refused_at_open_naming_it(tmp_path):
    path = tmp_path / "d.zarr"
    _write(path, _frames()).finalize()
    (path / "frames" / "c" / "2" / "0" / "0" / "0" / "0").unlink()
    (path / "qc_flags" / "c" / "1" / "0").unlink()
    msg = (f"{path}: missing shard files qc_flags/c/1/0, frames/c/2/0/0/0/0 (shards 1, 2); the dataset is damaged on "
           "disk (restore the file or recreate the dataset)")
    with pytest.raises(DatasetFormatError) as e:
        open_dataset(path)
    assert str(e.value) == msg
    with pytest.raises(DatasetFormatError, match="missing shard files"):
        SequenceDataset(path)
    result = open_dataset(path, check_files=False).verify()
    assert [(p.shard, p.file, p.problem) for p in result.problems] == [
        (1, "qc_flags/c/1/0", "missing"), (2, "frames/c/2/0/0/0/0", "missing")]


def test_a_flipped_byte_is_found_by_verify_only_in_its_shard(tmp_path):
    path = tmp_path / "d.zarr"
    frames = _frames()
    _write(path, frames).finalize()
    _flip_byte(path / "frames" / "c" / "1" / "0" / "0" / "0" / "0")
    reader = open_dataset(path)  # present: opening (a listing, no reads) cannot tell
    result = reader.verify()
    assert result.bad_shards == [1] and [p.file for p in result.problems] == ["frames/c/1/0/0/0/0"]
    assert result.problems[0].problem.startswith("checksum mismatch")
    assert reader.verify([0, 2]).problems == []  # the shards a command reads are all it checks
    assert reader.verify([0, 2]).shards == 2 and reader.verify([1]).bad_shards == [1]  # (shard 0 is one of them)
    assert result.error() == (f"{path}: shard 1 damaged (frames/c/1/0/0/0/0: checksum mismatch (its BLAKE3 digest "
                              "differs from the one recorded when it was written)); the dataset is damaged on disk (chdl verify "
                              f"{path} lists every bad file)")
    (path / "shard_checksums" / "c" / "2").unlink()  # a lost record is a problem too, named
    assert [(p.shard, p.problem) for p in open_dataset(path, check_files=False).verify().problems] == [
        (1, result.problems[0].problem), (2, "missing (the shard's checksum record)")]
    _flip_byte(path / "frames" / "c" / "0" / "0" / "0" / "0" / "0")  # the first shard is checked like any other
    assert open_dataset(path, check_files=False).verify([0]).bad_shards == [0]


def test_an_edited_array_metadata_is_found_by_verify_and_refused_by_train(tmp_path):
    path = tmp_path / "d.zarr"
    frames = _frames(dtype=np.uint16)
    _write(path, frames).finalize()
    meta = path / "frames" / "zarr.json"
    meta.write_text(meta.read_text().replace('"endian": "little"', '"endian": "big"', 1))  # pixels read byte-swapped
    reader = open_dataset(path)
    assert reader.frames[0, 0, 0, 0, 0] != frames[0, 0, 0, 0, 0]  # what a reader would get
    result = reader.verify()
    assert result.bad_shards == [] and result.bad_metadata == ["frames/zarr.json"]
    assert result.error().startswith(f"{path}: metadata damaged (frames/zarr.json: changed since the dataset was made")
    # chdl info said "every shard file present; BLAKE3 checksum recorded for each", exit 0: a clean bill of health
    from click.testing import CliRunner

    from chdl.cli import main

    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 1 and "integrity    DAMAGED: metadata frames/zarr.json: changed since" in r.output
    assert "every shard file present" not in r.output
    assert r.output.strip().splitlines()[-1].startswith(f"Error: {path}: metadata damaged (frames/zarr.json: changed since")


def test_an_attribute_edited_after_the_dataset_was_finished_is_named_by_verify_info_and_train(tmp_path):
    """Attribute edits that stay self-consistent pass `validate` (an in_frames of 3 of 10, a provenance rewritten):
    the digests recorded at finalize name each changed, added or removed attribute; a dataset without them (from
    before 2026-12-03) is not checked."""
    from click.testing import CliRunner

    from chdl.cli import main

    path = tmp_path / "d.zarr"
    _write(path, _frames()).finalize()
    assert open_dataset(path).verify().problems == []
    doc = path / "zarr.json"
    meta = json.loads(doc.read_text())
    assert set(meta["attributes"][ATTRIBUTE_DIGESTS]) == set(meta["attributes"]) - {ATTRIBUTE_DIGESTS}
    meta["attributes"]["in_frames"] = 3
    meta["attributes"]["provenance"]["command"] = "chdl curate other/ d.zarr"
    del meta["attributes"]["extra"]
    meta["attributes"]["note"] = "hand-edited"
    doc.write_text(json.dumps(meta))
    result = open_dataset(path).verify()
    assert [p.problem for p in result.problems] == [
        f"attributes edited after the dataset was finished (by {ATTRIBUTE_DIGESTS}): extra removed, in_frames changed, "
        "note added, provenance changed"]
    assert result.bad_metadata == ["zarr.json"] and result.bad_shards == []
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 1 and "integrity    DAMAGED: metadata zarr.json: attributes edited after" in r.output
    assert r.output.strip().splitlines()[-1].startswith(
        f"Error: {path}: metadata damaged (zarr.json: attributes edited after the dataset was finished")
    r = CliRunner().invoke(main, ["verify", str(path)])
    assert r.exit_code == 1 and "extra removed" in r.output
    del meta["attributes"][ATTRIBUTE_DIGESTS]  # lost: damage, since a dataset that knows the test split has them
    doc.write_text(json.dumps(meta))
    assert [p.problem for p in open_dataset(path).verify().problems] == [
        f"attribute {ATTRIBUTE_DIGESTS} removed (a dataset whose split_codes know test was written with it)"]
    del meta["attributes"]["split_codes"]["test"]  # as a chdl before 2026-12-03 wrote it: nothing to compare
    doc.write_text(json.dumps(meta))
    assert open_dataset(path).verify().problems == []


def test_the_data_digest_leaves_out_capture_times_and_nothing_else(tmp_path):
    """The same frames, splits and QC recorded at another time (a replay, the simulator with the same seed): the
    same ``data`` digest, another ``content``; one grey level more in one frame: another ``data`` digest too."""
    frames = _frames()
    _write(tmp_path / "a.zarr", frames).finalize()
    _write(tmp_path / "b.zarr", frames, captured_at=1_700_000_000_000_000_000).finalize()
    changed = frames.copy()
    changed[3, 2, 0, 1, 1] ^= 1
    _write(tmp_path / "c.zarr", changed).finalize()
    a, b, c = (open_dataset(tmp_path / f"{x}.zarr").identity() for x in "abc")
    assert a["data"] == b["data"] and a["content"] != b["content"]
    assert c["data"] != a["data"] and len(a["data"]) == 64
    assert c["content"] != a["content"]  # (c differs in shard 1 only: every shard counts)
    import shutil

    shutil.copytree(tmp_path / "c.zarr", tmp_path / "copy" / "c.zarr")  # a copy elsewhere is the same dataset
    assert open_dataset(tmp_path / "copy" / "c.zarr").identity() == c
    from click.testing import CliRunner

    from chdl.cli import main

    r = CliRunner().invoke(main, ["info", str(tmp_path / "b.zarr")])
    assert f"data         BLAKE3 {a['data']}  (the same without capture times: a replay of the same " in r.output


def test_a_lost_checksum_folder_is_damage_not_an_old_dataset(tmp_path):
    import shutil

    path = tmp_path / "d.zarr"
    _write(path, _frames()).finalize()
    shutil.rmtree(path / "shard_checksums")  # a copy that lost one folder must not pass as "before checksums"
    with pytest.raises(DatasetFormatError, match=r"missing array shard_checksums \(this dataset was written with shard"):
        open_dataset(path)


def test_a_dataset_written_before_checksums_opens_and_has_nothing_to_verify(tmp_path):
    path = tmp_path / "d.zarr"
    frames = _frames()
    _write(path, frames).finalize()
    as_written_before_checksums(path)  # no checksums, no metadata digests
    reader = open_dataset(path)
    assert not reader.has_checksums
    np.testing.assert_array_equal(reader.frames[:], frames)
    result = reader.verify()
    assert not result.has_checksums and result.problems == [] and result.files == 0
    (path / "frames" / "c" / "0" / "0" / "0" / "0" / "0").unlink()  # its frames files are still checked for presence
    with pytest.raises(DatasetFormatError, match="missing shard file frames/c/0/0/0/0/0 .shard 0."):
        open_dataset(path)


def test_a_shard_that_fails_to_decode_is_named_by_its_file(tmp_path):
    path = tmp_path / "d.zarr"
    _write(path, _frames()).finalize()
    _flip_byte(path / "frames" / "c" / "2" / "0" / "0" / "0" / "0", at=8)  # the blosc header of its first chunk
    ds = SequenceDataset(path, split="all")
    with pytest.raises(DatasetFormatError) as e:
        ds[len(ds) - 1]  # sequence 6, in shard 2
    assert str(e.value).startswith(f"{path}: cannot read frames (shard file frames/c/2/0/0/0/0: RuntimeError: ")


def test_a_damaged_small_array_read_whole_is_named_by_its_file(tmp_path):
    """qc_flags read whole (chdl info, the split of train and eval) said "cannot read qc_flags" and no file."""
    path = tmp_path / "d.zarr"
    _write(path, _frames()).finalize()
    (path / "qc_flags" / "c" / "1" / "0").write_bytes(b"xx")
    with pytest.raises(DatasetFormatError) as e:
        open_dataset(path).qc_flags
    assert str(e.value).startswith(f"{path}: cannot read qc_flags (shard file qc_flags/c/1/0: RuntimeError: "), e.value


def test_only_zarr_temporaries_are_removed_on_resume_and_finalize(tmp_path):
    path = tmp_path / "d.zarr"
    w = _write(path, _frames(), shards=[0, 1])
    tmp = path / "frames" / "c" / "0" / "0" / "0" / "0" / ("0." + "ab" * 16 + ".partial")
    mine = path / "notes.partial"  # not a name zarr writes: kept by both
    tmp.write_bytes(b"torn")
    mine.write_bytes(b"keep")
    assert w.remove_interrupted_writes() == 1 and not tmp.exists() and mine.exists()
    tmp.write_bytes(b"torn")
    r = w.shard_range(2)
    w.write_shard(2, frames=_frames()[r.start:r.stop])
    w.finalize()
    assert not tmp.exists() and mine.exists()


def test_a_lost_shard_done_file_is_damage_and_a_dataset_being_written_says_so(tmp_path):
    """A complete dataset with a shard_done file deleted was called 'incomplete ... its writer was interrupted —
    rerun the command' (the command then said it is complete); a dataset still being written was called
    interrupted too."""
    import subprocess
    import sys

    from chdl.dataset import writer_lock_path

    path = tmp_path / "d.zarr"
    _write(path, _frames()).finalize()
    (path / "shard_done" / "c" / "1").unlink()
    with pytest.raises(DatasetFormatError, match=r"marked complete, but shard_done says shard 1 was not written \(its "
                                                 r"file shard_done/c/1 is missing or damaged\); the dataset is damaged"):
        open_dataset(path)
    partial = tmp_path / "p.zarr"
    _write(partial, _frames(), shards=[0], provenance={"command": "chdl curate raw p.zarr", "curate_key": "k"})
    with pytest.raises(DatasetIncompleteError, match=r"its writer stopped before the end \(interrupted, or an error\)"):
        open_dataset(partial)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from chdl.locks import take_lock; take_lock(Path(sys.argv[1])); print('held', flush=True); "
                               "time.sleep(60)", str(writer_lock_path(partial))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DatasetIncompleteError, match=rf"\(1/3 shards written\): chdl is writing it now \(pid "
                                                         rf"{holder.pid}\); wait for it to finish"):
            open_dataset(partial)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("array, damage", [("frames", lambda b: b[:100] + b"\x00\x01" + b[102:]),
                                          ("split", lambda b: b"")])  # (empty: as an interrupted copy leaves it)
def test_a_damaged_array_metadata_document_is_one_line_naming_it(tmp_path, array, damage):
    """A damaged frames/zarr.json or an empty split/zarr.json ended info, verify, train and eval in a JSONDecodeError
    traceback (the group's own zarr.json was named already)."""
    from click.testing import CliRunner

    from chdl.cli import main

    _write(tmp_path / "d.zarr", _frames()).finalize()
    meta = tmp_path / "d.zarr" / array / "zarr.json"
    meta.write_bytes(damage(meta.read_bytes()))
    with pytest.raises(DatasetFormatError, match=rf"^{meta}: cannot read the array's metadata \(.+\)$"):
        open_dataset(tmp_path / "d.zarr")
    for command in ("info", "verify"):
        r = CliRunner().invoke(main, [command, str(tmp_path / "d.zarr")])
        assert r.exit_code == 1 and r.output.startswith(f"Error: {meta}: cannot read the array's metadata (") \
            and len(r.output.strip().splitlines()) == 1, r.output


def test_what_is_not_a_finished_dataset_is_named_for_what_it_is(tmp_path):
    """A raw recording (or a folder of them) passed as a dataset says to curate it; an interrupted dataset's
    error quotes the command that made it; creating over it says it is an incomplete dataset."""
    run = tmp_path / "raw" / "run1"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    (run / "frames.jsonl").write_text("")
    with pytest.raises(DatasetFormatError, match=rf"{run}: not a zarr v3 group \(no zarr.json\); it is a raw recording: "
                       rf"curate it first \(chdl curate {run} OUT.zarr\)"):
        open_dataset(run)
    with pytest.raises(DatasetFormatError, match="it holds raw recordings: curate them first"):
        open_dataset(tmp_path / "raw")
    path = tmp_path / "d.zarr"
    _write(path, _frames(), shards=[0], provenance={"command": "chdl import mnist --out d.zarr"})
    with pytest.raises(DatasetIncompleteError, match=r"rerun the command that made it \(chdl import mnist --out d.zarr\) "
                       "with --overwrite"):
        open_dataset(path)
    again = tmp_path / "e.zarr"  # a command that had --overwrite already: not "(... --overwrite) with --overwrite"
    _write(again, _frames(), shards=[0], provenance={"command": "chdl import mnist --out e.zarr --overwrite"})
    with pytest.raises(DatasetIncompleteError, match=r"rerun the command that made it \(chdl import mnist --out e.zarr "
                       r"--overwrite\) to make it again \(an import does not resume\)"):
        open_dataset(again)
    with pytest.raises(FileExistsError, match="already exists, an incomplete dataset .its writer stopped before the end, or is still running."):
        _write(path, _frames())


def test_a_url_whose_filesystem_package_is_missing_is_one_line():
    """s3:// without s3fs, gs:// without gcsfs: chdl info / verify / curate printed a 65-line traceback."""
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(DatasetFormatError, match=r"^gs://b/x\.zarr: gs:// URLs need a package that is not installed "
                                                 r"\(install its fsspec package; .*gcsfs"):
        dataset_path("gs://b/x.zarr")


def test_a_shard_with_pixels_above_max_value_is_refused(tmp_path):
    """uint16 noise over 0..65535 into a max_value 4095 dataset was written; eval then printed a copy-last PSNR of
    -18 dB as a per-pixel [0, 1] result."""
    path = tmp_path / "d.zarr"
    w = DatasetWriter.create(path, n_sequences=2, frames_per_sequence=4, channels=1, height=4, width=4,
                             dtype=np.uint16, max_value=4095, sequences_per_shard=2, in_frames=2, out_frames=2)
    frames = np.full((2, 4, 1, 4, 4), 4095, np.uint16)
    frames[1, 2, 0, 1, 1] = 4096
    with pytest.raises(ValueError, match=rf"^{path}: shard 0: frames: a pixel value of 4096, outside 0..4095 \(the "
                                         r"dataset's max_value\)$"):
        w.write_shard(0, frames=frames)
    frames[1, 2, 0, 1, 1] = 4095
    w.write_shard(0, frames=frames)  # at max_value: fine
    w.finalize()


def test_pixels_a_dtype_cannot_hold_and_unknown_split_codes_are_refused(tmp_path):
    """A fresh-user trial from Python: float frames in [0, 1) were stored as 0 (all black), a float 299.99 as 43 and
    an int 256 as 0 in a uint8 dataset, and split codes -1 and 7 were stored (255, 7): chdl info counted them in no
    split, indices("all") returned them, and train, eval and verify accepted the dataset."""
    path = tmp_path / "d.zarr"
    w = DatasetWriter.create(path, n_sequences=4, frames_per_sequence=4, channels=1, height=4, width=4,
                             dtype=np.uint8, max_value=255, sequences_per_shard=4, in_frames=2, out_frames=2)
    ok = np.full((4, 4, 1, 4, 4), 200, np.uint8)
    for frames, why in [(ok / 255.0, r"frames: pixel values of dtype float64, not integers"),
                        (ok.astype(np.int64) + 56, r"frames: a pixel value of 256, outside 0\.\.255"),
                        (ok.astype(np.int16) - 201, r"frames: a pixel value of -1, outside 0\.\.255")]:
        with pytest.raises(ValueError, match=rf"^{path}: shard 0: {why}"):
            w.write_shard(0, frames=frames)
    with pytest.raises(ValueError, match=r"shard 0: originals: a pixel value of 300"):
        w.write_shard(0, frames=ok, originals=[(0, 1, np.full((1, 4, 4), 300))])
    with pytest.raises(ValueError, match=rf"^{path}: shard 0: split code 7 \(known: 0 train, 1 val, 3 test, 2 excluded\)$"):
        w.write_shard(0, frames=ok, split=np.array([0, 1, 2, 7]))
    assert not w.group["shard_done"][0]  # nothing of a refused shard was marked written
    w.write_shard(0, frames=ok.astype(np.int64), split=np.array([0, 1, 2, 0]))  # integers in range: any int dtype
    w.finalize()
    assert list(open_dataset(path).indices("all")) == [0, 1, 3]
    # a dataset written before the check: its unknown code is named when a split is read
    group = zarr.open_group(str(path), mode="r+")
    group["split"][3] = 7
    with pytest.raises(DatasetFormatError, match=r"split: code 7 at sequence 3 \(known: 0 train, 1 val, 3 test, 2 excluded\)"):
        open_dataset(path).indices("all")
    from click.testing import CliRunner

    from chdl.cli import main

    r = CliRunner().invoke(main, ["info", str(path)])  # (it counted 3 of 4 sequences, naming nothing)
    assert "splits       train 1, val 1, excluded 1, unknown code 7 1" in r.output, r.output


def test_the_writing_example_of_the_format_docs_runs(tmp_path, monkeypatch):
    """docs/dataset-format.md's "Writing a dataset of your own" (a fresh-user trial had to read the code to use the
    writer: there was no example), run as written; the result opens with its splits."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "dataset-format.md").read_text()
    block = text.split("Writing a dataset of your own")[1].split("```python")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "dataset-format.md", "exec"), {})
    reader = open_dataset(tmp_path / "mine.zarr")
    assert (len(reader.indices("train")), len(reader.indices("val")), reader.attrs["max_value"]) == (32, 8, 4095)
    from click.testing import CliRunner

    from chdl.cli import main

    r = CliRunner().invoke(main, ["info", str(tmp_path / "mine.zarr")])  # (it printed "runs         0: ")
    assert r.exit_code == 0 and "runs         none recorded (a dataset written without raw recordings)" in r.output


def test_sequence_keys_name_where_frames_came_from_not_how_they_were_split(tmp_path):
    """The same lane and capture times give the same key in another dataset (another split, another run folder);
    imported data (lane -1) and sequences without capture times have none."""
    def write(path, lane, times, runs=("/a/run_00000",)):
        w = DatasetWriter.create(path, n_sequences=3, frames_per_sequence=4, channels=1, height=4, width=4,
                                 sequences_per_shard=3, in_frames=2, out_frames=2, runs=list(runs))
        w.write_shard(0, frames=np.zeros((3, 4, 1, 4, 4), np.uint8), split=np.array([0, 1, 0], np.uint8),
                      run_index=np.zeros(3, np.int32), lane=np.array(lane, np.int32), timestamp_ns=np.array(times))
        w.finalize()
        return open_dataset(path).sequence_keys([0, 1, 2])

    times = np.arange(12, dtype=np.int64).reshape(3, 4) * 10**8
    a = write(tmp_path / "a.zarr", [0, 1, 2], times)
    assert all(len(k) == 16 for k in a) and len(set(a)) == 3
    dropped = times.copy()
    dropped[1, -1] = -1  # a dropped last frame: the sequence is still told by its recorded frames
    b = write(tmp_path / "b.zarr", [0, 1, 2], dropped, runs=("/elsewhere/run_00000",))
    assert b[0] == a[0] and b[2] == a[2] and b[1] is not None
    assert write(tmp_path / "c.zarr", [-1, -1, 2], times)[:2] == [None, None]
    assert write(tmp_path / "d.zarr", [0, 1, 2], np.full((3, 4), -1))[0] is None
    assert write(tmp_path / "e.zarr", [0, 1, 2], times + 1) != a  # other captures
    later_end = times.copy()
    later_end[:, -1] += 10**6  # the same first capture, another last one (e.g. other frames_per_sequence)
    assert not set(write(tmp_path / "f.zarr", [0, 1, 2], later_end)) & set(a)
    assert b[1] != a[1]  # (the dropped last frame: the sequence ends at another recorded frame)


def test_a_shard_this_user_may_not_read_is_not_called_damage(tmp_path, monkeypatch):
    """A healthy shard file of another user's (mode 600) was "damaged on disk" in verify, train and eval: an
    admin could re-curate or delete a healthy dataset for it (emulated: reading it raises PermissionError, as it
    does for such a file; root may read anything)."""
    from click.testing import CliRunner

    from chdl import dataset as ds
    from chdl.cli import main

    path = tmp_path / "d.zarr"
    _write(path, _frames()).finalize()
    private = "frames/c/1/0/0/0/0"
    real = ds.file_checksum

    def checksum(p, key, *a, **kw):
        if key == private:
            raise PermissionError(13, "Permission denied")
        return real(p, key, *a, **kw)

    monkeypatch.setattr(ds, "file_checksum", checksum)
    result = open_dataset(path).verify()
    assert [(p.shard, p.file, p.problem) for p in result.problems] == [
        (1, private, "this user may not read it (Permission denied)")]
    assert result.error().startswith(f"{path}: shard 1 cannot be read by this user (") and "not damage" in result.error()
    r = CliRunner().invoke(main, ["verify", str(path), "-q"])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1] == (
        f"Error: {path}: 1 file(s) of shard(s) 1 cannot be read by this user: not damage (give this user read "
        "access, then verify again)"), r.output
