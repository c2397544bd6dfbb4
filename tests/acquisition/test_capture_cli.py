"""`chdl cameras` / `chdl capture` through the real CLI in a subprocess: replay round trip, signals, kill -9."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from acq_helpers import chdl, chdl_popen, viky_config
from process_helpers import can_mount_tmpfs

from acquisition.raw import Recording


def test_cameras_lists_aliases(tmp_path):
    out = chdl("cameras", "--camera-config", viky_config(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    rows = [r for r in json.loads(out.stdout) if r["backend"] == "gentl"]
    assert [(r["alias"], r["serial"], r["model"], r["transport"]) for r in rows] == [
        ("viky0", "0", "Viky", "Custom"), ("viky1", "1", "Viky", "Custom"), ("custom2", "2", "Viky", "Custom")]
    table = chdl("cameras", "--cti", "viky")
    assert table.returncode == 0 and "custom1" in table.stdout and "Machine Vision Games Ltd." in table.stdout
    # the address is printed whole (a sim camera's carries its configuration; it was cut at 40 characters)
    sim = next(r for r in json.loads(out.stdout) if r["alias"] == "sim0")
    assert len(sim["address"]) > 40 and any(ln.endswith(sim["address"]) for ln in table.stdout.splitlines())


def test_a_configured_sim0_is_listed_once_with_the_camera_it_selects(tmp_path):
    """A config mapping sim0 to a sim camera of seed 3 listed sim0 twice: the built-in seed-0 camera, which
    `--camera sim0` no longer selects, and the configured one."""
    from acquisition.backends.sim import list_sim_cameras
    from acquisition.camera_config import load_camera_config

    config = tmp_path / "cams.yaml"
    config.write_text("cameras:\n  sim0: {backend: sim, seed: 3}\n  line2: {backend: sim, seed: 4}\n")
    rows = list_sim_cameras(load_camera_config(config, ()))
    assert [a for a, _ in rows] == ["sim0", "line2"] and "seed=3" in rows[0][1].address
    assert [a for a, _ in list_sim_cameras(load_camera_config(None, ()))] == ["sim0"]  # the built-in one


def test_one_camera_seen_through_two_producers_has_one_alias_per_device(tmp_path):
    """viky.cti and a copy of it: custom0/2/4 were listed twice and custom1/3/5 never, --camera custom1 opened the
    device listed as custom0, and a config entry {serial: "1"} opened the first of two matching devices silently."""
    import os
    import shutil

    import genicam

    copy = tmp_path / "viky2.cti"
    shutil.copy(os.path.join(os.path.dirname(genicam.__file__), "viky.cti"), copy)
    out = chdl("cameras", "--cti", "viky", "--cti", copy, "--json")
    assert out.returncode == 0, out.stderr
    rows = [r for r in json.loads(out.stdout) if r["backend"] == "gentl"]
    assert sorted(r["alias"] for r in rows) == [f"custom{k}" for k in range(6)]
    listed = next(r for r in rows if r["alias"] == "custom1")
    r = chdl("capture", "--camera", "custom1", "--cti", "viky", "--cti", copy, "--positions", "1", "-q",
             "--out", tmp_path, "--run-id", "c1")
    assert r.returncode == 0, r.stderr
    camera = Recording.open(tmp_path / "c1").manifest["camera"]
    assert (camera["serial"], camera.get("producer")) == (listed["serial"], listed["producer"]), camera
    (tmp_path / "two.yaml").write_text(f'producers: [viky, {copy}]\ncameras:\n  a: {{serial: "1"}}\n')
    r = chdl("capture", "--camera", "a", "--camera-config", tmp_path / "two.yaml", "--out", tmp_path, "-q")
    assert r.returncode == 1 and "camera 'a' (serial='1') matches 2 devices" in r.stderr, r.stderr


@pytest.mark.parametrize("args,message", [
    (["--camera", "custom0", "--cti", "/nonexistent/x.cti"], "Error: /nonexistent/x.cti: GenTL producer (.cti) not found"),
    # the sim camera needs no producer, but one given that does not exist is said (it recorded, exit 0)
    (["--camera", "sim0", "--cti", "/nonexistent/x.cti"], "Error: /nonexistent/x.cti: GenTL producer (.cti) not found"),
    (["--camera", "custom0", "--cti", "viky", "--width", "1000"], "Width=1000 refused; valid range 100..800"),
    # an IFloat with an increment: 7.3 was rounded to 7.0 and recorded so, exit 0
    (["--camera", "custom0", "--cti", "viky", "--fps", "7.3"],
     "AcquisitionFrameRate=7.3 refused; valid range 1.0..200.0 in steps of 1.0"),
    (["--camera", "gige0", "--cti", "viky"], "no GEV device number 0"),
    (["--camera", "custom0", "--cti", "viky", "--trigger", "software"], "'software' not offered by this camera"),
    # no producer at all: the error points a user without hardware to the simulator and `chdl cameras`
    (["--camera", "gige0"], "no GenTL producer: set GENICAM_GENTL64_PATH"),
    (["--camera", "gige0"], "no hardware? --camera sim0 is the simulated camera, and `chdl cameras` lists"),
])
def test_capture_errors_are_one_line_and_write_nothing(tmp_path, args, message):
    out = chdl("capture", "--out", tmp_path / "raw", *args)
    assert out.returncode == 1 and message in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "raw").exists()


def test_usage_errors(tmp_path):
    out = chdl("capture", "--out", tmp_path)
    assert out.returncode == 2 and "exactly one of --camera ALIAS or --replay" in out.stderr
    out = chdl("capture", "--replay", tmp_path, "--out", tmp_path / "o", "--fps", "3")
    assert out.returncode == 2 and "--fps does not apply to --replay" in out.stderr
    out = chdl("capture", "--replay", tmp_path, "--out", tmp_path / "o")
    assert out.returncode == 1 and f"Error: {tmp_path}: empty folder" in out.stderr


def test_a_recording_is_never_written_inside_another_recording_or_a_dataset(tmp_path):
    """A run inside a recording was never curated (curate reads a folder's direct subfolders) and one inside a
    zarr store hid among its shards; both were written with exit 0."""
    args = ("--camera", "sim0", "--width", "64", "--height", "48", "--fps", "500", "--positions", "2", "-q")
    assert chdl("capture", *args, "--out", tmp_path / "raw", "--run-id", "outer").returncode == 0
    (tmp_path / "d.zarr" / "sub").mkdir(parents=True)
    (tmp_path / "d.zarr" / "zarr.json").write_text("{}")
    for out, what in ((tmp_path / "raw" / "outer", f"inside the recording {tmp_path / 'raw' / 'outer'}"),
                      (tmp_path / "d.zarr" / "sub", f"inside the zarr store {tmp_path / 'd.zarr'}")):
        r = chdl("capture", *args, "--out", out, "--run-id", "inner")
        assert r.returncode == 1 and f"Error: {out / 'inner'}: {what}" in r.stderr, r.stderr
        assert "choose another output folder" in r.stderr and not (out / "inner").exists()


def test_a_wrong_bit_depth_stops_the_capture_at_the_first_frame_and_leaves_nothing(tmp_path):
    """--bit-depth 6 for 8-bit data was recorded with exit 0; chdl curate refused the recording later. Then the refused
    capture kept a recording of no frame, and curating the folder of runs failed on it after a corrected rerun (its
    bit depth differs from the rerun's): a capture stopped before its first frame leaves nothing, live or monitored."""
    args = ("--camera", "sim0", "--width", "64", "--height", "48", "--fps", "500", "--positions", "5", "-q",
            "--out", tmp_path / "raw")
    r = chdl("capture", *args, "--bit-depth", "6", "--run-id", "r")
    assert r.returncode == 1, r.stderr
    assert "Error: chdl DicingLaneSim v1 (serial SIM0000), lane 0 position 0: pixel values up to " in r.stderr and ", above 63: the " \
        f"camera sends more than the 6 significant bits --bit-depth says; stopped before the first frame: nothing " \
        f"recorded, {tmp_path / 'raw' / 'r'} removed" in r.stderr
    assert not (tmp_path / "raw").exists()  # the new --out went with its empty run folder
    (tmp_path / "raw").mkdir()  # an --out of the user's stays
    r = chdl("capture", *args, "--bit-depth", "6", "--run-id", "r")
    assert r.returncode == 1 and list((tmp_path / "raw").iterdir()) == [], r.stderr
    (tmp_path / "raw" / "mine").mkdir()  # a folder the user made, given empty: emptied again, kept
    r = chdl("capture", *args, "--bit-depth", "6", "--run-id", "mine")
    assert r.returncode == 1 and list((tmp_path / "raw").iterdir()) == [tmp_path / "raw" / "mine"], r.stderr
    assert f"nothing recorded, {tmp_path / 'raw' / 'mine'} emptied" in r.stderr  # (it said "removed")
    assert list((tmp_path / "raw" / "mine").iterdir()) == []
    r = chdl("monitor", *args, "--bit-depth", "6", "--run-id", "m")
    assert r.returncode == 1 and "nothing recorded" in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["mine"]
    r = chdl("capture", *args, "--run-id", "r")
    assert r.returncode == 0 and Recording.open(tmp_path / "raw" / "r").complete, r.stderr


def test_positions_without_a_frame_are_counted_and_a_run_without_any_frame_fails(tmp_path):
    """With viky at 5 fps a 1 ms frame timeout gets no frame: 2 positions (fewer than the 3 in a row that mean
    'camera lost') were 'captured 0 frames', status complete, exit 0, and the manifest counted nothing. (At 1 fps:
    a frame that happens to arrive within the 1 ms, likelier on a loaded machine, made this test fail at 5 fps.)"""
    r = chdl("capture", "--camera", "custom0", "--cti", "viky", "--fps", "1", "--positions", "2", "--frame-timeout",
             "0.001", "-q", "--out", tmp_path, "--run-id", "none")
    assert r.returncode == 1 and "Error: camera lost: no frame at any of the 2 positions (frame timeout 0.001 s)" \
        in r.stderr, r.stderr
    rec = Recording.open(tmp_path / "none")
    assert not rec.complete and rec.manifest["notes"]["dropped_positions"] == 2
    r = chdl("capture", "--camera", "sim0", "--width", "64", "--height", "48", "--fps", "50", "--positions", "4", "-q",
             "--out", tmp_path, "--run-id", "all")
    assert r.returncode == 0 and "(4 positions (0 without a frame)" in r.stdout and "warning" not in r.stderr
    assert Recording.open(tmp_path / "all").manifest["notes"]["dropped_positions"] == 0


def test_default_run_ids_of_captures_within_one_second_differ(tmp_path):
    """The default run id has one-second resolution: a scripted capture right after another was refused ("already
    exists and is not an empty folder")."""
    from acquisition.capture import default_run_id

    for _ in range(5):  # (retried if the second turns between the calls)
        base = default_run_id("sim0")
        (tmp_path / base).mkdir(exist_ok=True)
        (tmp_path / f"{base}_2.monitor").mkdir(exist_ok=True)  # a monitor folder takes its run's name too
        got = default_run_id("sim0", tmp_path)
        if got.startswith(base):
            assert got == f"{base}_3" and base.endswith("Z_sim0")
            return
    raise AssertionError("the clock's second kept turning")


def _same_frames(a: Recording, b: Recording) -> None:
    keys = ("lane", "position_index", "position_um", "frame_id", "device_timestamp_ns", "status", "dropped_before",
            "file", "width", "height", "pixel_format")
    assert [[getattr(f, k) for k in keys] for f in a.frames] == [[getattr(f, k) for k in keys] for f in b.frames]
    for fa, fb in zip(a.frames, b.frames):
        if fa.file:
            assert (a.path / fa.file).read_bytes() == (b.path / fb.file).read_bytes()  # byte-identical PNGs


def test_record_replay_record_round_trip(tmp_path):
    config = viky_config(tmp_path)
    rec = chdl("capture", "--camera", "viky0", "--camera-config", config, "--out", tmp_path / "a", "--run-id", "run1",
               "--lanes", "2", "--positions", "4", "--fps", "50", "--width", "320", "--height", "240", "--quiet")
    assert rec.returncode == 0, rec.stderr
    assert "captured 8 frames" in rec.stdout
    first = Recording.open(tmp_path / "a" / "run1")
    rep = chdl("capture", "--replay", tmp_path / "a" / "run1", "--out", tmp_path / "b", "--as-fast-as-possible", "--quiet")
    assert rep.returncode == 0, rep.stderr
    second = Recording.open(tmp_path / "b" / "run1")
    rep2 = chdl("capture", "--replay", tmp_path / "b", "--out", tmp_path / "c", "--quiet")  # a folder of runs, paced
    assert rep2.returncode == 0, rep2.stderr
    third = Recording.open(tmp_path / "c" / "run1")
    assert first.complete and second.complete and third.complete and len(first) == 8
    _same_frames(first, second)
    _same_frames(second, third)
    assert second.manifest["settings"] == first.manifest["settings"]
    assert second.manifest["plan"]["positions_um"] == first.manifest["plan"]["positions_um"]
    assert second.manifest["camera"]["backend"] == "replay" and second.manifest["notes"]["source_run_id"] == "run1"
    assert third.manifest["notes"]["paced"] is True and second.manifest["notes"]["paced"] is False


def test_bit_depth_is_recorded_overridden_refused_and_kept_by_a_replay(tmp_path):
    args = ("--camera", "sim0", "--pixel-format", "Mono16", "--width", "64", "--height", "48", "--fps", "500",
            "--positions", "2", "--quiet")
    rec = chdl("capture", *args, "--out", tmp_path / "a", "--run-id", "r")  # the simulator's own: 12-bit data
    assert rec.returncode == 0, rec.stderr
    assert Recording.open(tmp_path / "a" / "r").settings["bit_depth"] == 12
    rec = chdl("capture", *args, "--out", tmp_path / "b", "--run-id", "r", "--bit-depth", "14")  # an override
    assert rec.returncode == 0 and Recording.open(tmp_path / "b" / "r").settings["bit_depth"] == 14, rec.stderr
    rep = chdl("capture", "--replay", tmp_path / "b" / "r", "--out", tmp_path / "c", "--as-fast-as-possible", "--quiet")
    assert rep.returncode == 0 and Recording.open(tmp_path / "c" / "r").settings["bit_depth"] == 14, rep.stderr
    bad = chdl("capture", *args[:3], "Mono8", *args[4:], "--out", tmp_path / "d", "--bit-depth", "12")
    assert bad.returncode == 2 and "Invalid value for --bit-depth: bit depth must be an integer in [1, 8] for " \
        "Mono8 pixels, not int 12" in bad.stderr and not (tmp_path / "d").exists()
    bad = chdl("capture", "--replay", tmp_path / "b" / "r", "--out", tmp_path / "e", "--bit-depth", "12")
    assert bad.returncode == 2 and "--bit-depth does not apply to --replay" in bad.stderr


def test_a_replay_puts_every_frame_at_its_recorded_place(tmp_path):
    """A recording that lost the line of lane 0 position 3 (index renumbered, so the file is valid) was replayed
    one position early from there on: lane 1's first frame became lane 0 position 9. Now each record goes to its
    own lane and position and the missing one is a dropped position; a place recorded twice is refused."""
    import json

    src = tmp_path / "src"
    r = chdl("capture", "--camera", "sim0", "--out", tmp_path, "--run-id", "src", "--lanes", "2", "--positions", "5",
             "--width", "64", "--height", "48", "--fps", "50", "-q")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in (src / "frames.jsonl").read_text().splitlines()]
    del lines[3]
    for i, line in enumerate(lines):
        line["index"] = i
    (src / "frames.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    r = chdl("capture", "--replay", src, "--out", tmp_path / "out", "--as-fast-as-possible", "-q")
    assert r.returncode == 0, r.stderr
    got = [(f.lane, f.position_index, f.frame_id, f.status) for f in Recording.open(tmp_path / "out" / "src").frames]
    want = [(f["lane"], f["position_index"], f["frame_id"], f["status"]) for f in lines]
    assert got == want[:3] + [(0, 3, None, "dropped")] + want[3:], got
    (src / "frames.jsonl").write_text("".join(json.dumps({**line, "position_index": 2} if line["index"] == 4 else line)
                                              + "\n" for line in lines))
    r = chdl("capture", "--replay", src, "--out", tmp_path / "out2", "--as-fast-as-possible", "-q")
    assert r.returncode == 1 and "lane 1 position 2 recorded twice (frames 4 and 6)" in r.stderr, r.stderr


def test_replay_keeps_dropped_and_incomplete_frames(tmp_path):
    from acquisition.raw import RecordingWriter

    manifest = {"camera": {"vendor": "v", "model": "m", "serial": "s", "user_name": "", "transport": "GEV"},
                "settings": {"width": 16, "height": 8, "pixel_format": "Mono16", "fps": 5.0, "exposure_us": 100.0},
                "plan": {"lanes": 1, "positions": 3, "step_um": 10.0, "positions_um": [0.0, 10.0, 20.0], "trigger": "software"}}
    rng = np.random.default_rng(0)
    with RecordingWriter.create(tmp_path / "src", manifest) as w:
        for p, status in enumerate(["ok", "dropped", "incomplete"]):
            pixels = None if status == "dropped" else rng.integers(0, 65535, (8, 16), dtype=np.uint16)
            w.append(pixels, lane=0, position_index=p, position_um=10.0 * p, frame_id=None if pixels is None else 7 + p,
                     device_timestamp_ns=None, host_wall_ns=0, host_monotonic_ns=p * 1000, status=status,
                     dropped_before=3 if p == 2 else 0)
    out = chdl("capture", "--replay", tmp_path / "src", "--out", tmp_path / "out", "--as-fast-as-possible", "--quiet")
    assert out.returncode == 0, out.stderr
    _same_frames(Recording.open(tmp_path / "src"), Recording.open(tmp_path / "out" / "src"))


def _wait_for_frames(run, n, proc, limit=60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        index = run / "frames.jsonl"
        if index.exists() and index.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {n} frames in {run} within {limit} s")


def _long_capture(tmp_path):
    run = tmp_path / "raw" / "long"
    proc = chdl_popen("capture", "--camera", "viky0", "--camera-config", viky_config(tmp_path), "--out", tmp_path / "raw",
                      "--run-id", "long", "--lanes", "100", "--positions", "10", "--fps", "50", "--width", "320",
                      "--height", "240")
    _wait_for_frames(run, 3, proc)
    return run, proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])  # SIGHUP: the terminal closed
def test_ctrl_c_stops_cleanly_and_closes_the_device(tmp_path, sig):
    run, proc = _long_capture(tmp_path)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    lines = [ln for ln in stderr.splitlines() if "interrupted" in ln]
    assert len(lines) == 1 and lines[0].startswith("interrupted: device closed; stopped after "), stderr
    assert "recording kept (marked incomplete) at" in lines[0] and "Traceback" not in stderr
    assert f"{run}: " in stdout and "interrupted" not in stdout, stdout
    rec = Recording.open(run)
    assert not rec.complete and rec.manifest["status"] == "incomplete" and rec.manifest["notes"]["stopped_by"] == "interrupted"
    assert len(rec) >= 3 and not rec.torn_tail and all(rec.read(f).shape == (240, 320) for f in rec.frames)
    # replaying it ends where it ends: every frame replayed, exit 0 (it was "camera lost", exit 1, and chdl monitor
    # called such a run "failed")
    rep = chdl("capture", "--replay", run, "--out", tmp_path / "rep", "--as-fast-as-possible", "--quiet")
    assert rep.returncode == 0, rep.stderr
    assert f"replay: end of recording {run} after {len(rec)} frames; stopped after {len(rec)} of 1000" in rep.stdout
    again = Recording.open(tmp_path / "rep" / "long")
    assert len(again) == len(rec) and again.manifest["notes"]["stopped_by"] == "source ended" and not again.complete


def test_kill_9_leaves_a_readable_incomplete_recording(tmp_path):
    run, proc = _long_capture(tmp_path)
    time.sleep(0.3)
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    rec = Recording.open(run)
    assert not rec.complete and rec.manifest["status"] == "recording"
    assert len(rec) >= 3 and all(rec.read(f).shape == (240, 320) for f in rec.frames)
    assert [f.index for f in rec.frames] == list(range(len(rec)))


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs `unshare -m` and mount rights for a private tmpfs")
def test_real_full_disk(tmp_path):
    """A 160 KiB tmpfs in a private mount namespace fills up after a few dozen frames."""
    disk = tmp_path / "disk"
    disk.mkdir()
    config = viky_config(tmp_path)
    check = textwrap.dedent(f"""
        import json
        from acquisition.raw import Recording
        rec = Recording.open({str(disk / 'run')!r})
        print(json.dumps({{"complete": rec.complete, "status": rec.manifest["status"], "n": len(rec),
                           "notes": rec.manifest.get("notes"), "readable": all(rec.read(f) is not None for f in rec.frames)}}))
    """)
    (tmp_path / "check.py").write_text(check)
    script = (f"mount -t tmpfs -o size=160k tmpfs {disk} && "
              f"{sys.executable} -m chdl capture --camera viky0 --camera-config {config} --out {disk} --run-id run "
              f"--lanes 50 --positions 10 --fps 100 --quiet; echo RC=$?; {sys.executable} {tmp_path / 'check.py'}")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert "RC=1" in out.stdout, out.stdout + out.stderr
    assert "disk full (No space left on device)" in out.stderr and "Traceback" not in out.stderr
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state["complete"] is False and state["n"] >= 3 and state["readable"]
    assert state["status"] == "incomplete" and state["notes"]["stopped_by"] == "disk full"  # the reserve made room to close


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs `unshare -m` and mount rights for a private tmpfs")
def test_a_read_only_output_says_the_recording_cannot_be_written_there(tmp_path):
    """It said only "Error: raw: Read-only file system"."""
    disk = tmp_path / "ro"
    disk.mkdir()
    script = (f"mount -t tmpfs -o ro,size=64k tmpfs {disk} && {sys.executable} -m chdl capture --camera sim0 "
              f"--out {disk / 'raw'} --positions 2 --width 64 --height 48 --quiet")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip() == (
        f"Error: {disk / 'raw'}: cannot write the recording there (Read-only file system)"), out.stderr


@pytest.mark.parametrize("args,message", [
    (["--step-um", "nan"], "Invalid value for '--step-um': 'nan' is not a finite number."),
    (["--step-um", "-5"], "Invalid value for '--step-um': -5.0 is not in the range 0<x<=1000000.0."),
    (["--step-um", "1e300"], "Invalid value for '--step-um': 1e+300 is not in the range 0<x<=1000000.0."),
    (["--frame-timeout", "-1"], "Invalid value for '--frame-timeout': -1.0 is not in the range x>0."),
    (["--fps", "inf"], "Invalid value for '--fps': 'inf' is not a finite number."),
    (["--settle-s", "nan"], "Invalid value for '--settle-s'"),
    (["--exposure-us", "0"], "Invalid value for '--exposure-us'"),
    (["--width", "0"], "Invalid value for '--width'"),
    (["--run-id", "../escape"], "run id '../escape' is not a plain folder name"),
    (["--run-id", "a/b"], "is not a plain folder name"),
    (["--camera", "sim0/../../x"], "is not a plain folder name (no '/', '\\', '..' or control characters); pass --run-id NAME"),
])
def test_capture_option_values_are_checked_before_anything_is_written(tmp_path, args, message):
    from click.testing import CliRunner

    from chdl.cli import main

    r = CliRunner().invoke(main, ["capture", "--camera", "sim0", "--positions", "2", "--out", str(tmp_path / "raw"), *args])
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "raw").exists() and not (tmp_path / "escape").exists()


def test_every_float_option_of_the_cli_refuses_nan_and_inf():
    """The whole kind: every float-valued option of every command is a FiniteFloat (click's float types
    let NaN through any range)."""
    import click

    from chdl.cli import COMMANDS, main
    from chdl.cli.options import FiniteFloat

    def commands(cmd, ctx, path=()):
        yield path, cmd
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                yield from commands(cmd.get_command(ctx, name), ctx, path + (name,))

    ctx = click.Context(main)
    floats = [(" ".join(path), p) for path, cmd in commands(main, ctx) for p in cmd.params
              if isinstance(p.type, (click.types.FloatParamType, click.FloatRange))]
    names = {c.split()[0] for c, _ in floats}
    assert len(floats) >= 10 and names >= {"capture", "simulate", "bench", "predict"}, floats
    wrong = [(c, p.name) for c, p in floats if not isinstance(p.type, FiniteFloat)]
    assert not wrong, f"float options that accept NaN: {wrong}"
    assert set(COMMANDS) <= {path[0] for path, _ in commands(main, ctx) if path}


def test_replay_records_an_unreadable_source_frame_as_dropped_and_goes_on(tmp_path):
    """A source frame file that is corrupt or gone: a warning naming it, a dropped position in the new recording
    (as chdl curate reads it: a missing frame), every other frame replayed byte for byte, exit 0."""
    from acquisition.raw import RecordingWriter

    manifest = {"camera": {"vendor": "v", "model": "m", "serial": "s", "user_name": "", "transport": "GEV"},
                "settings": {"width": 16, "height": 8, "pixel_format": "Mono8", "fps": 5.0, "exposure_us": 100.0},
                "plan": {"lanes": 1, "positions": 4, "step_um": 10.0, "positions_um": [0.0, 10.0, 20.0, 30.0],
                         "trigger": "software"}}
    rng = np.random.default_rng(1)
    with RecordingWriter.create(tmp_path / "src", manifest) as w:
        for p in range(4):
            w.append(rng.integers(0, 255, (8, 16), dtype=np.uint8), lane=0, position_index=p, position_um=10.0 * p,
                     frame_id=p, device_timestamp_ns=None, host_wall_ns=0, host_monotonic_ns=p * 1000, status="ok",
                     dropped_before=0)
    src = Recording.open(tmp_path / "src")
    bad, gone = (tmp_path / "src" / src.frames[i].file for i in (1, 2))
    bad.write_bytes(bad.read_bytes()[:30])  # truncated
    gone.unlink()
    out = chdl("capture", "--replay", tmp_path / "src", "--out", tmp_path / "out", "--as-fast-as-possible", "--quiet")
    assert out.returncode == 0, out.stderr
    warned = [x for x in out.stderr.splitlines() if x.startswith("warning: replay:")]
    assert len(warned) == 2 and bad.name in warned[0] and gone.name in warned[1], out.stderr
    assert all(x.endswith("recorded as a dropped frame") for x in warned)
    # the closing warning blames the recording, not a camera's speed (it advised a longer --frame-timeout)
    assert (f"warning: {tmp_path / 'out' / 'src'}: 2 of 4 positions got no frame (recorded as dropped, "
            "notes.dropped_positions; the recording replayed has no usable frame there: see the warnings above)"
            in out.stderr), out.stderr
    # the summary counts frames with pixels (it said "captured 4 frames" with 2 of them dropped)
    assert out.stdout.startswith(f"captured 2 frames into {tmp_path / 'out' / 'src'} (4 positions (2 without a frame), "), out.stdout
    rec = Recording.open(tmp_path / "out" / "src")
    assert [f.status for f in rec.frames] == ["ok", "dropped", "dropped", "ok"]
    for i in (0, 3):
        assert np.array_equal(rec.read(rec.frames[i]), src.read(src.frames[i]))


def test_replaying_a_folder_checks_every_destination_before_it_replays_any(tmp_path):
    """`capture --replay raw/ --out replayed/` after one run of raw/ had been replayed there: the other run was
    replayed, then the command stopped at the taken one, leaving the folder half-replayed."""
    for run_id in ("a", "b"):
        r = chdl("capture", "--camera", "sim0", "--out", tmp_path / "raw", "--run-id", run_id, "--positions", "2",
                 "--width", "64", "--height", "48", "-q")
        assert r.returncode == 0, r.stderr
    r = chdl("capture", "--replay", tmp_path / "raw" / "b", "--out", tmp_path / "rep", "--as-fast-as-possible", "-q")
    assert r.returncode == 0, r.stderr
    r = chdl("capture", "--replay", tmp_path / "raw", "--out", tmp_path / "rep", "--as-fast-as-possible", "-q")
    assert r.returncode == 1 and r.stderr.strip() == (
        f"Error: {tmp_path / 'rep' / 'b'}: already holds a recording (complete, 2 frames); refusing to overwrite it "
        "(move it away to record there again); choose another --out or --run-id; nothing was replayed"), r.stderr
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["b"]  # a was not replayed first


def test_a_capture_stopped_before_its_manifest_is_rerun_under_the_same_run_id(tmp_path):
    """A capture stopped between its claim (an empty frames/) and its manifest left a folder that refused every rerun
    with the same --run-id, live or replayed, as "not an empty folder". The rerun now records there; a folder with a
    frame in it is still refused."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a writer that is gone: its pid names the temporary manifest
    for run_id in ("live", "replayed"):
        (tmp_path / "out" / run_id / "frames").mkdir(parents=True)
        (tmp_path / "out" / run_id / f".manifest.json.tmp{child.pid}").write_text('{"camera"')
    args = ("--width", "64", "--height", "48", "--positions", "2", "-q", "--out", tmp_path / "out")
    r = chdl("capture", "--camera", "sim0", "--run-id", "live", *args)
    assert r.returncode == 0, r.stderr
    live = Recording.open(tmp_path / "out" / "live")
    assert live.complete and len(live.frames) == 2
    assert not [p.name for p in live.path.iterdir() if p.name.startswith(".")]
    r = chdl("capture", "--replay", live.path, "--run-id", "replayed", "--as-fast-as-possible", *args[-3:])
    assert r.returncode == 0, r.stderr
    _same_frames(live, Recording.open(tmp_path / "out" / "replayed"))
    r = chdl("capture", "--camera", "sim0", "--run-id", "live", *args)
    assert r.returncode == 1 and r.stderr.strip() == (  # (it said "not an empty folder", nothing of what to do)
        f"Error: {live.path}: already holds a recording (complete, 2 frames); refusing to overwrite it (move it away "
        "to record there again)"), r.stderr
    (tmp_path / "out" / "other").mkdir()
    (tmp_path / "out" / "other" / "notes.txt").write_text("mine")
    r = chdl("capture", "--camera", "sim0", "--run-id", "other", *args)
    assert r.returncode == 1 and r.stderr.strip() == (
        f"Error: {tmp_path / 'out' / 'other'}: already exists and is not an empty folder; refusing to overwrite a "
        "recording"), r.stderr


def test_replaying_a_recording_of_a_pixel_format_chdl_cannot_read_is_one_line_and_writes_nothing(tmp_path):
    """A manifest saying RGB8: `capture --replay` ended in a traceback from the PNG encoder and left an incomplete
    recording of 0 frames behind (curate said it in one line)."""
    r = chdl("capture", "--camera", "sim0", "--out", tmp_path / "raw", "--run-id", "r", "--positions", "2",
             "--width", "64", "--height", "48", "-q")
    assert r.returncode == 0, r.stderr
    manifest = tmp_path / "raw" / "r" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["settings"]["pixel_format"] = "RGB8"
    manifest.write_text(json.dumps(m))
    for command in (("capture",), ("monitor",)):
        r = chdl(*command, "--replay", tmp_path / "raw" / "r", "--out", tmp_path / "rep", "--as-fast-as-possible", "-q")
        assert r.returncode == 1 and r.stderr.strip().splitlines() == [
            f"Error: {manifest}: malformed manifest (unsupported settings.pixel_format 'RGB8'; supported: Mono8, "
            "Mono10, Mono12, Mono16)"], (command, r.stderr)
        assert not (tmp_path / "rep").exists()


def test_a_default_run_id_another_capture_claimed_meanwhile_moves_on_to_the_next(tmp_path, monkeypatch):
    """Two captures of the sim camera started in one second both picked the free default name; the later one, which
    lost the race for the folder while opening its camera, failed instead of taking `_2` as a later capture does."""
    from click.testing import CliRunner

    import acquisition.capture
    from chdl.cli import main

    args = ["capture", "--camera", "sim0", "--width", "64", "--height", "48", "--fps", "500", "--positions", "2", "-q",
            "--out", str(tmp_path / "raw")]
    first = "20990101T000000Z_sim0"
    assert chdl(*args, "--run-id", first).returncode == 0  # the other capture's recording, already there
    picked = iter([first, f"{first}_2"])  # what each pick saw: the name free, then (the folder taken) the next one
    monkeypatch.setattr(acquisition.capture, "default_run_id", lambda alias, out=None: next(picked))
    monkeypatch.setenv("CHDL_CAMERAS", "")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert Recording.open(tmp_path / "raw" / f"{first}_2").complete and len(Recording.open(tmp_path / "raw" / first)) == 2
    r = CliRunner().invoke(main, [*args, "--run-id", first])  # a name the user gave is not changed
    assert r.exit_code == 1 and f"{tmp_path / 'raw' / first}: already holds a recording (complete" in r.output, r.output
