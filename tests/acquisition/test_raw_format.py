"""The raw recording format: round trip, torn tails, and one-line errors that name the file."""

import json

import numpy as np
import pytest

from acquisition.raw import RawFormatError, Recording, RecordingWriter, find_recordings

MANIFEST = {"camera": {"vendor": "test"}, "settings": {"width": 8, "height": 6, "pixel_format": "Mono8", "fps": 5},
            "plan": {"lanes": 1, "positions": 2}}


def _meta(i):
    return dict(lane=0, position_index=i, position_um=500.0 * i, frame_id=i, device_timestamp_ns=None,
                host_wall_ns=1000 + i, host_monotonic_ns=2000 + i)


def _record(path, n=3, dtype=np.uint8, fmt="Mono8"):
    frames = [np.random.default_rng(i).integers(0, np.iinfo(dtype).max, (6, 8), dtype=dtype) for i in range(n)]
    with RecordingWriter.create(path, {**MANIFEST, "settings": {**MANIFEST["settings"], "pixel_format": fmt}}) as w:
        for i, f in enumerate(frames):
            w.append(f, **_meta(i))
        w.append(None, **_meta(n), dropped_before=0)
    return frames


@pytest.mark.parametrize("dtype,fmt", [(np.uint8, "Mono8"), (np.uint16, "Mono16")])
def test_round_trip(tmp_path, dtype, fmt):
    frames = _record(tmp_path / "run", dtype=dtype, fmt=fmt)
    rec = Recording.open(tmp_path / "run")
    assert rec.complete and rec.manifest["frames"] == 4 and rec.manifest["schema"] == "chdl.raw/1"
    assert [f.status for f in rec] == ["ok", "ok", "ok", "dropped"]
    for f, expected in zip(rec.frames, frames):
        np.testing.assert_array_equal(rec.read(f), expected)
    with pytest.raises(RawFormatError, match="dropped"):
        rec.read(rec.frames[3])


def test_exception_marks_incomplete_and_torn_tail_is_skipped(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with RecordingWriter.create(tmp_path / "run", MANIFEST) as w:
            w.append(np.zeros((6, 8), np.uint8), **_meta(0))
            raise KeyboardInterrupt
    rec = Recording.open(tmp_path / "run")
    assert not rec.complete and "KeyboardInterrupt" in rec.manifest["notes"]["error"]
    with open(tmp_path / "run" / "frames.jsonl", "a") as f:
        f.write('{"index": 1, "lane"')  # what a kill -9 mid-line leaves
    rec = Recording.open(tmp_path / "run")
    assert len(rec) == 1 and rec.torn_tail


def test_errors_name_the_file(tmp_path):
    _record(tmp_path / "run")
    (tmp_path / "run" / "frames" / "000001.png").write_bytes(b"\x89PNG\r\n")
    rec = Recording.open(tmp_path / "run")
    with pytest.raises(RawFormatError, match=r"000001\.png: truncated or corrupt PNG"):
        rec.read(rec.frames[1])
    (tmp_path / "run" / "manifest.json").write_text("{not json")
    with pytest.raises(RawFormatError, match=r"manifest\.json: malformed JSON"):
        Recording.open(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RawFormatError, match="empty folder"):
        find_recordings(tmp_path / "empty")
    with pytest.raises(RawFormatError, match="not a recording"):
        Recording.open(tmp_path / "empty")
    with pytest.raises(RawFormatError, match="already exists"):
        RecordingWriter.create(tmp_path / "run", MANIFEST)


def test_find_recordings(tmp_path):
    _record(tmp_path / "raw" / "b")
    _record(tmp_path / "raw" / "a")
    assert [p.name for p in find_recordings(tmp_path / "raw")] == ["a", "b"]
    assert find_recordings(tmp_path / "raw" / "a") == [tmp_path / "raw" / "a"]
    lines = (tmp_path / "raw" / "a" / "frames.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["file"] == "frames/000000.png"
