"""The raw recording format: round trip, torn tails, and one-line errors that name the file."""

import json
import os

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


def test_a_complete_run_whose_index_lost_lines_reads_as_incomplete(tmp_path):
    """A complete run's frames.jsonl cut by one line after it closed was read as complete (a replay said
    source_complete: true and stopped a frame short)."""
    _record(tmp_path / "run")
    index = tmp_path / "run" / "frames.jsonl"
    index.write_text("".join(index.read_text().splitlines(keepends=True)[:-1]))
    rec = Recording.open(tmp_path / "run")
    assert not rec.complete and len(rec) == 3 and rec.lines_missing == 1
    assert Recording.open(tmp_path / "run").manifest["status"] == "complete"  # (as the run closed)


def test_a_frame_index_out_of_sequence_is_refused_naming_the_line(tmp_path):
    """Curation maps records to frames by position: a skipped, repeated or reordered line (two runs' indexes
    concatenated, a line lost in the middle) would give pixels another frame's lane, position and time."""
    _record(tmp_path / "run")
    index = tmp_path / "run" / "frames.jsonl"
    lines = index.read_text().splitlines(keepends=True)
    for broken, line, got, expected in ((lines[:1] + lines[2:], 2, 2, 1), (lines[:2] + lines[1:], 3, 1, 2),
                                        ([lines[1], lines[0], *lines[2:]], 1, 1, 0)):
        index.write_text("".join(broken))
        with pytest.raises(RawFormatError, match=rf"frames\.jsonl:{line}: frame index {got} out of sequence "
                                                 rf"\(expected {expected}\)$"):
            Recording.open(tmp_path / "run")


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


# ------------------------------------------------------------------------------------------------
# malformed input: every kind is one RawFormatError naming the file (and line) and the field
# ------------------------------------------------------------------------------------------------

def _edit_record(path, line, **fields):
    lines = (path / "frames.jsonl").read_text().splitlines()
    obj = json.loads(lines[line])
    obj.update(fields)
    lines[line] = json.dumps(obj)
    (path / "frames.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("fields,needle", [
    ({"lane": "one"}, "field 'lane' must be an integer, not str 'one'"),
    ({"file": 13}, "field 'file' must be a string, not int 13"),
    ({"index": "1"}, "field 'index' must be an integer, not str '1'"),
    ({"width": 8.5}, "field 'width' must be an integer"),
    ({"position_index": True}, "field 'position_index' must be an integer, not bool"),
    ({"position_um": float("nan")}, "field 'position_um' must be a finite number, not NaN"),
    ({"position_um": float("inf")}, "field 'position_um' must be a finite number"),
    ({"dropped_before": -1}, "field 'dropped_before' must be in [0, "),
    ({"lane": -1}, "field 'lane' must be in [0, 2147483647], not -1"),
    ({"host_wall_ns": 2**70}, "field 'host_wall_ns' must be in ["),
    ({"status": 3}, "field 'status' must be a string"),
    ({"status": "fine"}, "unknown frame status 'fine'"),
    ({"extra": 1}, "unknown field 'extra'"),
    ({"file": "../../other/frames/000001.png"}, "points outside the run folder"),
    ({"file": "/etc/hostname"}, "points outside the run folder"),
    ({"file": "frames/../../x.png"}, "points outside the run folder"),
])
def test_malformed_frame_record_names_line_and_field(tmp_path, fields, needle):
    _record(tmp_path / "run")
    _edit_record(tmp_path / "run", 1, **fields)
    with pytest.raises(RawFormatError) as e:
        Recording.open(tmp_path / "run")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'run' / 'frames.jsonl'}:2: ") and needle in msg and "\n" not in msg, msg


def test_missing_field_and_non_utf8_bytes(tmp_path):
    _record(tmp_path / "run")
    lines = (tmp_path / "run" / "frames.jsonl").read_text().splitlines()
    obj = json.loads(lines[0])
    del obj["lane"]
    (tmp_path / "run" / "frames.jsonl").write_text(json.dumps(obj) + "\n")
    with pytest.raises(RawFormatError, match=r"frames\.jsonl:1: malformed frame record \(missing field 'lane'\)"):
        Recording.open(tmp_path / "run")
    (tmp_path / "run" / "frames.jsonl").write_bytes(lines[0].replace('"ok"', '"o\xff"').encode("latin-1") + b"\n")
    with pytest.raises(RawFormatError, match=r"frames\.jsonl:1: malformed frame record \(not UTF-8: byte 0xff"):
        Recording.open(tmp_path / "run")


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m["settings"].update(width="abc"), "settings.width must be an integer, not str 'abc'"),
    (lambda m: m["settings"].update(height=0), "settings.height must be >= 1"),
    (lambda m: m["settings"].update(fps=float("nan")), "settings.fps must be a finite number, not NaN"),
    (lambda m: m["plan"].update(lanes="x"), "plan.lanes must be an integer"),
    (lambda m: m["plan"].update(positions=10**9), "plan.positions says 1000000000 positions but plan.positions_um lists 2"),
    (lambda m: m["plan"].update(positions_um=[0.0, float("nan")]), r"plan.positions_um[1] must be a finite number, not NaN"),
    (lambda m: m.update(run_id="../escape"), "is not a plain folder name"),
    (lambda m: m.update(run_id=5), "run id must be a non-empty string"),
    (lambda m: m.update(frames="many"), "frames must be an integer"),
    (lambda m: m.update(settings=[1]), "settings must be an object"),
    (lambda m: m.update(camera="viky"), "camera must be an object, not str 'viky'"),  # replay crashed on it
    (lambda m: m.update(camera={"transport": ["x"]}), "camera.transport must be a string, not list"),
    (lambda m: m["settings"].update(pixel_format="RGB8"),  # a replay of it ended in a traceback, its folder left
     "unsupported settings.pixel_format 'RGB8'; supported: Mono8, Mono10, Mono12, Mono16"),
])
def test_malformed_manifest_names_the_key(tmp_path, edit, needle):
    _record(tmp_path / "run")
    path = tmp_path / "run" / "manifest.json"
    m = json.loads(path.read_text())
    m["plan"]["positions_um"] = [0.0, 500.0]
    edit(m)
    path.write_text(json.dumps(m))
    with pytest.raises(RawFormatError) as e:
        Recording.open(tmp_path / "run")
    msg = str(e.value)
    assert msg.startswith(f"{path}: malformed manifest (") and needle in msg, msg


@pytest.mark.parametrize("schema, message", [
    ("chdl.raw/2", "a recording of schema chdl.raw/2 (made by a newer chdl); this chdl reads chdl.raw/1: upgrade "
                   "chdl to use it"),  # (it was "unsupported schema", like any other file's)
    ("other/1", "unsupported schema 'other/1' (expected 'chdl.raw/1')"),
])
def test_a_recording_of_a_newer_schema_says_to_upgrade(tmp_path, schema, message):
    _record(tmp_path / "run")
    path = tmp_path / "run" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema": schema}))
    with pytest.raises(RawFormatError) as e:
        Recording.open(tmp_path / "run")
    assert str(e.value) == f"{path}: {message}"


def test_writer_refuses_what_the_reader_refuses(tmp_path):
    with pytest.raises(RawFormatError, match="plan.positions_um.0. must be a finite number"):
        RecordingWriter.create(tmp_path / "a", {**MANIFEST, "plan": {"positions_um": [float("nan")]}})
    assert not (tmp_path / "a").exists()  # nothing written
    with RecordingWriter.create(tmp_path / "b", MANIFEST) as w, pytest.raises(ValueError):
        w.append(np.zeros((6, 8), np.uint8), **{**_meta(0), "position_um": float("nan")})


def test_frame_files_stay_inside_the_run(tmp_path):
    """A symlink (of the file, or of a folder on its way) that leads outside the run is refused when the
    frame is used; one that stays inside is fine; a symlink loop is named as such."""
    import os

    _record(tmp_path / "other")
    _record(tmp_path / "run")
    frames = tmp_path / "run" / "frames"
    (frames / "000000.png").unlink()
    os.symlink(tmp_path / "other" / "frames" / "000000.png", frames / "000000.png")
    (frames / "000001.png").unlink()
    os.symlink("000002.png", frames / "000001.png")  # inside: fine
    rec = Recording.open(tmp_path / "run")
    with pytest.raises(RawFormatError, match=r"000000\.png: symbolic link to .*outside the run folder"):
        rec.read(rec.frames[0])
    np.testing.assert_array_equal(rec.read(rec.frames[1]), rec.read(rec.frames[2]))
    os.rename(frames, tmp_path / "run" / "frames-real")
    os.symlink(tmp_path / "other" / "frames", frames)  # the folder itself leads out
    with pytest.raises(RawFormatError, match="outside the run folder"):
        rec.read(rec.frames[2])
    os.symlink("loop", tmp_path / "loop")
    with pytest.raises(RawFormatError, match="loop: symbolic link loop"):
        find_recordings(tmp_path / "loop")


def test_manifest_that_is_a_folder(tmp_path):
    (tmp_path / "run" / "manifest.json").mkdir(parents=True)
    with pytest.raises(RawFormatError, match=r"manifest\.json: is a folder, not a file"):
        Recording.open(find_recordings(tmp_path)[0])


def test_bit_depth_in_the_manifest(tmp_path):
    from acquisition.raw import bits_for_max, run_bit_depth, validate_manifest

    assert [bits_for_max(v) for v in (1, 255, 1000, 1023, 4095, 4096, 65535)] == [1, 8, 10, 10, 12, 13, 16]
    with pytest.raises(ValueError):
        bits_for_max(0)
    settings = MANIFEST["settings"]
    m = lambda fmt, **kw: {**MANIFEST, "schema": "chdl.raw/1", "status": "complete",  # noqa: E731
                           "settings": {**settings, "pixel_format": fmt, **kw}}
    assert run_bit_depth(m("Mono16", bit_depth=12)) == 12
    assert run_bit_depth(m("Mono12")) == 12 and run_bit_depth(m("Mono8")) == 8  # the format says
    assert run_bit_depth(m("Mono16")) is None and run_bit_depth(m("Mono16", bit_depth=None)) is None  # unknown
    assert validate_manifest(m("Mono16", bit_depth=12)) is None
    assert validate_manifest(m("Mono8", bit_depth=12)) == \
        "malformed manifest (settings.bit_depth must be an integer in [1, 8] for Mono8 pixels, not int 12)"
    for bad in (0, 17, "12", 12.0, True):
        assert "settings.bit_depth must be an integer in [1, 16]" in validate_manifest(m("Mono16", bit_depth=bad))
    with pytest.raises(RawFormatError, match="manifest.json: malformed manifest .settings.bit_depth"):
        RecordingWriter.create(tmp_path / "run", m("Mono10", bit_depth=11))  # the writer refuses it too


def test_a_dataset_given_where_recordings_are_expected_says_so(tmp_path):
    """`chdl curate out.zarr x.zarr` said "no recordings inside (no subfolder has manifest.json)"."""
    from acquisition.raw import find_recordings

    ds = tmp_path / "out.zarr"
    ds.mkdir()
    (ds / "zarr.json").write_text("{}")
    with pytest.raises(RawFormatError, match=r"out\.zarr: a curated dataset \(it holds zarr\.json\), not raw recordings"):
        find_recordings(ds)


def test_two_writers_that_find_one_folder_free_at_once_do_not_share_it(tmp_path, monkeypatch):
    """Two captures with the same --run-id (or the same default id, started within one second) both passed the
    "not empty" check, then shared one frames.jsonl (indices 0, 1, 0, 2, 1, ...): neither recording was readable.
    Here the other writer claims the folder between this one's check and its claim."""
    import acquisition.raw as raw

    check = raw.inside_other_data

    def the_other_writer_meanwhile(path):
        (path / raw.FRAMES_DIR).mkdir(parents=True)
        return check(path)

    monkeypatch.setattr(raw, "inside_other_data", the_other_writer_meanwhile)
    with pytest.raises(RawFormatError, match=r"same: another capture started writing there at the same time"):
        RecordingWriter.create(tmp_path / "same", MANIFEST)
    assert not (tmp_path / "same" / "manifest.json").exists()


def test_only_a_claim_is_what_a_writer_stopped_before_its_manifest_leaves(tmp_path):
    """An empty frames/ and a temporary manifest are a writer's claim and nothing more; a started recording, a frame,
    another temporary file or any other file are not."""
    from acquisition.raw import only_a_claim

    claim = tmp_path / "claim"
    (claim / "frames").mkdir(parents=True)
    assert only_a_claim(claim)
    (claim / ".manifest.json.tmp4242").write_text("{")
    assert only_a_claim(claim)
    for stray in ("frames/000000.png", ".notes.txt.tmp12", "notes.txt"):
        other = tmp_path / stray.replace("/", "_")
        (other / "frames").mkdir(parents=True)
        (other / stray).write_bytes(b"x")
        assert not only_a_claim(other), stray
    with RecordingWriter.create(tmp_path / "rec", MANIFEST):
        assert not only_a_claim(tmp_path / "rec")  # (the manifest has landed)


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_claim_whose_writer_is_gone_is_taken_over_and_a_live_ones_is_not(tmp_path):
    """A capture stopped between its claim (frames/) and its manifest left a folder every rerun with the same
    --run-id refused as "not an empty folder". Such a claim is taken over once its writer is gone; a running
    writer's claim (its pid in the temporary manifest's name, or a fresh claim with none) is still refused."""
    import os

    from acquisition.raw import CLAIM_GRACE_S, abandoned_claim, free_for_a_recording

    dead, live, fresh, old = (tmp_path / n for n in ("dead", "live", "fresh", "old"))
    for claim in (dead, live, fresh, old):
        (claim / "frames").mkdir(parents=True)
    (dead / f".manifest.json.tmp{_dead_pid()}").write_text("{")
    (live / f".manifest.json.tmp{os.getpid()}").write_text("{")
    then = (old / "frames").stat().st_mtime - CLAIM_GRACE_S - 1
    os.utime(old / "frames", (then, then))
    assert [abandoned_claim(c) for c in (dead, live, fresh, old)] == [True, False, False, True]
    assert [free_for_a_recording(c) for c in (dead, live, fresh, old)] == [True, False, False, True]
    for claim in (live, fresh):
        with pytest.raises(RawFormatError, match="already exists and is not an empty folder"):
            RecordingWriter.create(claim, MANIFEST)
    for claim in (dead, old):
        with RecordingWriter.create(claim, MANIFEST) as w:
            w.append(np.zeros((6, 8), np.uint8), **_meta(0))
        assert not [p for p in claim.iterdir() if p.name.startswith(".")]
        assert len(Recording.open(claim).frames) == 1
    (tmp_path / "rec" / "frames").mkdir(parents=True)
    (tmp_path / "rec" / "frames" / "000000.png").write_bytes(b"x")  # a frame: a recording, not a claim
    assert not free_for_a_recording(tmp_path / "rec") and free_for_a_recording(tmp_path / "none")


def test_a_recording_being_written_is_refused_as_such_not_as_one_to_move_away(tmp_path):
    """Two captures of one --run-id: the later was told the first's live recording "already holds a recording
    (incomplete, 1 frame) ... move it away". The manifest names its writer (pid, host) while it records."""
    import socket

    from acquisition.raw import live_writer, process_start, taken

    with RecordingWriter.create(tmp_path / "rec", MANIFEST) as w:
        w.append(np.zeros((6, 8), np.uint8), **_meta(0))
        manifest = json.loads((tmp_path / "rec" / "manifest.json").read_text())
        assert manifest["writer"] == {"pid": os.getpid(), "host": socket.gethostname(),
                                      "started": process_start(os.getpid())}
        assert manifest["writer"]["started"]  # (Linux: /proc)
        assert live_writer(manifest) == os.getpid()
        assert taken(tmp_path / "rec") == (f"{tmp_path / 'rec'}: another chdl process (pid {os.getpid()}) is recording "
                                           "there now (1 frame so far); refusing to share a recording")
        with pytest.raises(RawFormatError, match="is recording there now"):
            RecordingWriter.create(tmp_path / "rec", MANIFEST)
    assert taken(tmp_path / "rec").endswith("already holds a recording (complete, 1 frame); refusing to overwrite it "
                                            "(move it away to record there again)")
    for writer, status in (({"pid": _dead_pid(), "host": socket.gethostname()}, "recording"),  # killed
                           ({"pid": os.getpid(), "host": socket.gethostname() + "-other"}, "recording"),
                           ({"pid": os.getpid(), "host": socket.gethostname()}, "complete"), (None, "recording"),
                           # a killed writer's pid taken by another process since (or after a reboot): not the writer
                           ({"pid": os.getpid(), "host": socket.gethostname(), "started": "another boot:1"},
                            "recording")):
        assert live_writer({"status": status, "writer": writer}) is None, (writer, status)


def test_a_recording_that_lost_its_manifest_is_named_not_left_out(tmp_path):
    """A run whose manifest.json was deleted: given itself, the error said "no recordings inside (no subfolder has
    manifest.json)"; in a folder of runs it was left out without a word and the others curated."""
    for name in ("a", "b"):
        _record(tmp_path / "raw" / name)
    (tmp_path / "raw" / "b" / "manifest.json").unlink()
    b = tmp_path / "raw" / "b"
    with pytest.raises(RawFormatError) as e:
        find_recordings(b)
    assert str(e.value) == f"{b}: a recording without its manifest.json (frames.jsonl is there); it cannot be read " \
        "without it: restore it from a copy"
    with pytest.raises(RawFormatError) as e:
        find_recordings(tmp_path / "raw")
    assert str(e.value) == f"{b}: a recording without its manifest.json (frames.jsonl is there); it cannot be read " \
        f"without it: restore it from a copy, or move it out of {tmp_path / 'raw'}"
    (tmp_path / "raw" / "notes").mkdir()  # any other folder is still no business of find_recordings
    b.rename(tmp_path / "lost")
    assert find_recordings(tmp_path / "raw") == [tmp_path / "raw" / "a"]


def test_a_video_file_given_as_a_recording_says_how_to_import_it(tmp_path):
    """`chdl curate clip.avi` / `chdl curate videos/` said only "not a recording" / "no recordings inside": a user's
    own footage goes in through chdl import video."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "clip.AVI").write_bytes(b"x")
    hint = ("chdl import recordings writes {} raw recording for chdl curate (QC), chdl import video makes a dataset of "
            "{} without QC (docs/importers.md)")
    with pytest.raises(RawFormatError) as e:
        find_recordings(tmp_path / "videos" / "clip.AVI")
    assert str(e.value).endswith("not a recording or a folder of recordings; it is named like a video file: "
                                 + hint.format("it as a", "it"))
    with pytest.raises(RawFormatError) as e:
        find_recordings(tmp_path / "videos")
    assert str(e.value).endswith("; it holds video files: " + hint.format("each as a", "them"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(RawFormatError, match=r"notes.txt: not a recording or a folder of recordings$"):
        find_recordings(tmp_path / "notes.txt")


def test_a_folder_this_user_may_not_look_into_is_not_silently_left_out(tmp_path, monkeypatch):
    """Another user's recording (mode 700) among a folder of runs was skipped: curate made a dataset of the others,
    exit 0. Whether it is a recording cannot be told, so it is named (emulated: os.access says no, as it does for
    such a folder; root may look anywhere)."""
    import os

    _record(tmp_path / "runs" / "a")
    (tmp_path / "runs" / "b").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).endswith("/b") else real(p, mode, **kw))
    with pytest.raises(RawFormatError, match=r"runs/b: this user may not look inside it \(permissions; another "
                                             r"user's folder\?\), so whether it is a recording cannot be told"):
        find_recordings(tmp_path / "runs")
    monkeypatch.undo()
    assert find_recordings(tmp_path / "runs") == [tmp_path / "runs" / "a"]


def test_only_a_later_version_of_the_same_format_is_newer():
    """The 'upgrade chdl' refusal is for chdl.X/N+1 of the format expected, not for another format's name."""
    from acquisition.format_versions import newer_format

    assert newer_format("dataset of schema", "chdl.dataset/2", "chdl.dataset/1").startswith("a dataset of schema "
                                                                                            "chdl.dataset/2 (made by")
    for other in ("chdl.dataset/1", "chdl.raw/5", "other.fmt/5", "chdl.dataset/x", 2, None):
        assert newer_format("dataset of schema", other, "chdl.dataset/1") is None, other
