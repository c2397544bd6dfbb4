"""The ``sim`` camera backend: Contract 2 behaviour, recordings through the real capture path, truth, corpora."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from acquisition.backends import list_cameras, open_camera
from acquisition.backends.base import CameraError, CaptureSettings
from acquisition.backends.sim import SimCamera, parse_sim_address, write_recording_truth
from acquisition.camera_config import load_camera_config
from acquisition.capture import CapturePlan, run_capture
from acquisition.raw import Recording
from acquisition.simulator import DicingLaneSimulator, SimConfig, load_truth
from acquisition.stage import SimulatedStage
from process_helpers import alive, children

SETTINGS = CaptureSettings(200, 150, "Mono8", 5.0, None)


def test_alias_opens_through_the_registry_and_is_listed(tmp_path):
    config_file = tmp_path / "cameras.yaml"
    config_file.write_text("cameras:\n  faulty: {backend: sim, seed: 9, fault_rate: 0.5}\n")
    config = load_camera_config(config_file)
    cam = open_camera("sim3", config)
    assert isinstance(cam, SimCamera) and cam.info.backend == "sim" and cam.info.user_name == "sim3"
    assert parse_sim_address(cam.info.address)[1]["seed"] == 3
    faulty = open_camera("faulty", config)
    assert parse_sim_address(faulty.info.address)[1]["fault_rate"] == 0.5
    aliases = [alias for alias, info in list_cameras(config) if info.backend == "sim"]
    assert aliases == ["sim0", "faulty"]
    with pytest.raises(CameraError, match="unknown simulator option"):
        SimCamera("bad", {"blur": 3})


def test_settings_are_applied_read_back_and_range_checked():
    with SimCamera("sim0", {"index": 0}) as cam:
        got = cam.apply(CaptureSettings(320, 240, "Mono16", 10.0, 4000.0))
        assert (got.width, got.height, got.pixel_format, got.fps, got.exposure_us) == (320, 240, "Mono16", 10.0, 4000.0)
        assert cam.config.bit_depth == 12 and cam.config.exposure == 2.0
        assert cam.apply(CaptureSettings(320, 240, "Mono8", 10.0, None)).exposure_us == 4000.0  # None keeps it
        for bad, what in [(CaptureSettings(8, 8, "Mono8", 5, None), "Width x Height"),
                          (CaptureSettings(64, 64, "RGB8", 5, None), "PixelFormat"),
                          (CaptureSettings(64, 64, "Mono8", 0, None), "AcquisitionFrameRate"),
                          (CaptureSettings(64, 64, "Mono8", 5, 1.0), "ExposureTime")]:
            with pytest.raises(CameraError, match=what):
                cam.apply(bad)
        with pytest.raises(CameraError, match=r"sim0: trigger mode 'line' not supported \(supported: freerun, software\)"):
            cam.start("line")


def test_software_trigger_renders_what_the_stage_sees():
    stage = SimulatedStage()
    with SimCamera("sim0", {"index": 4, "fault_rate": 0.0}) as cam:
        cam.apply(SETTINGS)
        cam.attach_stage(stage)
        assert cam.trigger_modes() == {"software", "freerun"}
        cam.start("software")
        with pytest.raises(TimeoutError):
            cam.fetch(0.01)
        frames = []
        for x in (300.0, 360.0):
            stage.move_to(2, x)
            cam.software_trigger()
            frames.append(cam.fetch(1.0))
        cam.stop()
        sim = DicingLaneSimulator(cam.config)
    assert [f.frame_id for f in frames] == [0, 1]
    # frame 1 at 5 fps: taken at least a frame period after frame 0, on the device clock read when it was taken
    assert frames[1].device_timestamp_ns - frames[0].device_timestamp_ns >= 190_000_000
    assert frames[0].pixels.shape == (150, 200) and frames[0].pixels.dtype == np.uint8
    assert np.array_equal(frames[0].pixels, sim.render(2, 0, 300.0).pixels)  # t counts frames on the lane
    assert np.array_equal(frames[1].pixels, sim.render(2, 1, 360.0).pixels)


def test_without_a_stage_the_camera_scans_lanes_itself():
    with SimCamera("sim0", {"index": 1, "realtime": False, "positions": 3, "step_um": 50.0}) as cam:
        cam.apply(SETTINGS)
        cam.start("freerun")
        got = [cam.fetch(1.0).pixels for _ in range(4)]
        sim = DicingLaneSimulator(cam.config)
    assert np.array_equal(got[2], sim.render(0, 2, 100.0).pixels)
    assert np.array_equal(got[3], sim.render(1, 0, 0.0).pixels)


def test_free_run_frames_queued_during_a_host_stall_say_when_they_were_taken():
    """After the capture process was paused for 3 s in free-run, the frames that had waited came at once stamped
    3-4 ms apart at 5 fps: the camera stamped them when they were rendered, not when they were due."""
    import time

    with SimCamera("sim0", {"index": 0, "positions": 50}) as cam:
        cam.apply(CaptureSettings(64, 48, "Mono8", 20.0, None))
        cam.start("freerun")
        cam.fetch(1.0)
        time.sleep(0.5)  # the host does not fetch: ten frames fall due meanwhile
        stamps = [cam.fetch(1.0).device_timestamp_ns for _ in range(6)]
    gaps = np.diff(stamps) / 1e9
    assert np.allclose(gaps, 0.05, atol=0.002), gaps  # one period apart, as taken (they were fetched at once)


def test_capture_from_the_sim_camera_is_a_valid_recording_with_truth(tmp_path):
    camera = SimCamera("sim2", {"index": 2, "fault_rate": 0.2})
    result = run_capture(camera, SimulatedStage(), tmp_path / "run", SETTINGS, CapturePlan.evenly(3, 5, 60.0))
    assert result.status == "complete" and result.frames == 15
    rec = Recording.open(tmp_path / "run")
    assert rec.complete and len(rec) == 15 and rec.manifest["camera"]["backend"] == "sim"
    assert all(rec.read(f).shape == (150, 200) for f in rec.frames)
    counts = write_recording_truth(tmp_path / "run")
    truth = load_truth(tmp_path / "run")
    assert len(truth.labels) == 15 and counts["faulty"] == len(truth.faulty()) > 0
    sim = DicingLaneSimulator(SimConfig.from_dict({**truth.config["config"]}))
    for lb in truth.faulty():  # the clean frame is the recorded frame's lane/position rendered without the fault
        f = rec.frames[lb["index"]]
        assert np.array_equal(truth.clean(lb["index"]), sim.render(f.lane, f.position_index, f.position_um, fault=None).pixels)
        assert not np.array_equal(truth.clean(lb["index"]), rec.read(f))


def test_mono16_recording_truth_keeps_16_bit_clean_frames(tmp_path):
    camera = SimCamera("sim5", {"index": 5, "fault_rate": 1.0, "bit_depth": 16})
    run_capture(camera, SimulatedStage(), tmp_path / "run", CaptureSettings(96, 72, "Mono16", 5.0, None),
                CapturePlan.evenly(1, 3, 60.0))
    write_recording_truth(tmp_path / "run")
    truth = load_truth(tmp_path / "run")
    assert [lb["index"] for lb in truth.faulty()] == [0, 1, 2]
    clean = truth.clean(1)
    assert clean.dtype == np.uint16 and clean.max() > 4095  # full 16-bit data, not 12


def test_truth_refuses_a_recording_the_simulator_did_not_make(tmp_path):
    run_capture(SimCamera("sim0", {"index": 0}), SimulatedStage(), tmp_path / "run", SETTINGS, CapturePlan.evenly(1, 2, 60.0))
    manifest = tmp_path / "run" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["camera"]["address"] = m["camera"]["address"].replace("seed=0", "seed=1")
    manifest.write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"000000\.png: differs from the simulator's re-render"):
        write_recording_truth(tmp_path / "run")
    m["camera"]["backend"] = "gentl"
    manifest.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="not recorded from a sim camera"):
        write_recording_truth(tmp_path / "run")


def test_chdl_capture_then_simulate_truth_cli(tmp_path):
    """The samples' path: `chdl capture --camera sim0`, then `chdl simulate truth`."""
    run = [sys.executable, "-m", "chdl"]
    subprocess.run(run + ["capture", "--camera", "sim0", "--out", str(tmp_path), "--run-id", "r", "--lanes", "1",
                          "--positions", "3", "--step-um", "60", "--width", "160", "--height", "120", "--quiet"],
                   check=True, capture_output=True)
    out = subprocess.run(run + ["simulate", "truth", str(tmp_path / "r")], check=True, capture_output=True, text=True)
    assert "truth for 3 frames" in out.stdout
    assert len(load_truth(tmp_path / "r").labels) == 3
    folder = subprocess.run(run + ["simulate", "truth", str(tmp_path)], capture_output=True, text=True)
    assert folder.returncode == 0 and "truth for 3 frames" in folder.stdout  # a folder of runs: each gets its truth
    err = subprocess.run(run + ["simulate", "truth", str(tmp_path / "r" / "frames")], capture_output=True, text=True)
    assert err.returncode == 1 and "frames" in err.stderr


def test_simulate_corpus_writes_labelled_recordings_and_resumes(tmp_path):
    from chdl.cli.simulate import simulate

    args = ["corpus", str(tmp_path / "c"), "--sequences", "3", "--positions", "4", "--lanes-per-run", "2",
            "--width", "96", "--height", "72", "--fault-rate", "0.3", "--workers", "1"]
    res = CliRunner().invoke(simulate, args)
    assert res.exit_code == 0, res.output
    runs = sorted(p for p in (tmp_path / "c").iterdir() if p.is_dir())
    assert [r.name for r in runs] == ["run_00000", "run_00001"] and (tmp_path / "c" / "corpus.json").is_file()
    recs = [Recording.open(r) for r in runs]
    assert [len(r) for r in recs] == [8, 4] and all(r.complete for r in recs)
    truth = load_truth(runs[0])
    assert len(truth.labels) == 8 and truth.faulty()
    # host stamps follow the simulated 5 fps capture, not the (much faster) rendering: a replay runs at 5 fps
    for stamps in ([f.host_monotonic_ns for f in recs[0].frames], [f.host_wall_ns for f in recs[0].frames]):
        assert {b - a for a, b in zip(stamps, stamps[1:])} == {200_000_000}
    # the directly written corpus is exactly what the camera records: its truth re-derives identically
    (runs[0] / "truth" / "labels.jsonl").rename(tmp_path / "labels.orig")
    write_recording_truth(runs[0])
    assert (runs[0] / "truth" / "labels.jsonl").read_text() == (tmp_path / "labels.orig").read_text()
    stamp = (runs[1] / "manifest.json").stat().st_mtime_ns
    res = CliRunner().invoke(simulate, args)
    assert res.exit_code == 0 and "2 finished runs kept" in res.output
    assert (runs[1] / "manifest.json").stat().st_mtime_ns == stamp


def test_software_triggered_frames_come_at_most_at_the_frame_rate(tmp_path):
    """With an instant stage the capture loop triggers as fast as it can; the camera still delivers at most fps
    frames a second (it delivered at render speed while the manifest and the device timestamps said fps), so host
    and device times agree. ``realtime: false`` renders at once (corpora, tests)."""
    settings = CaptureSettings(64, 48, "Mono8", 20.0, None)
    run_capture(SimCamera("sim0", {"index": 0}), SimulatedStage(), tmp_path / "paced", settings, CapturePlan.evenly(1, 6, 60.0))
    rec = Recording.open(tmp_path / "paced")
    host = np.diff([f.host_monotonic_ns for f in rec.frames]) / 1e9
    device = np.diff([f.device_timestamp_ns for f in rec.frames]) / 1e9
    # host times are stamped after rendering: each gap is 1/fps plus the difference of two render times, so the
    # gaps sum to 4/fps plus the last render time minus the first; the first render is the slow one (the wafer is
    # drawn), and on a loaded machine its gap came out 0.03 s: the first gap is left out (unpaced: ~1 ms a gap)
    assert len(host) == 5 and host[1:].sum() >= 4 * 0.05 - 0.015 and np.all(device >= 0.05 - 0.01)
    assert np.all(np.abs(device - host) < 0.04)  # the device clock is read when the frame is taken
    # a stage that takes 0.15 s to settle: frames are taken 0.15 s apart, and the device clock says so (it said
    # frame_id / fps, 0.05 s apart, whatever happened)
    run_capture(SimCamera("sim0", {"index": 0}), SimulatedStage(0.15), tmp_path / "settle", settings,
                CapturePlan.evenly(1, 3, 60.0))
    settle = Recording.open(tmp_path / "settle")
    assert np.all(np.diff([f.device_timestamp_ns for f in settle.frames]) / 1e9 >= 0.15)
    run_capture(SimCamera("sim0", {"index": 0, "realtime": False}), SimulatedStage(), tmp_path / "fast",
                CaptureSettings(64, 48, "Mono8", 0.5, None), CapturePlan.evenly(1, 3, 60.0))
    fast = Recording.open(tmp_path / "fast")
    assert (fast.frames[-1].host_monotonic_ns - fast.frames[0].host_monotonic_ns) / 1e9 < 2.0  # not 2 s a frame


def test_corpus_rendering_is_not_paced_by_the_frame_rate(tmp_path):
    """chdl simulate corpus drives the camera directly and stamps the simulated clock: at fps 0.5 three frames
    carry host times 2 s apart but take no 2 s each to make (a paced camera would need at least 4 s)."""
    import time

    from acquisition.backends.sim import render_recording

    t = time.monotonic()
    render_recording(tmp_path / "c", options={"index": 0}, settings=CaptureSettings(64, 48, "Mono8", 0.5, None),
                     lanes=1, positions=3)
    assert time.monotonic() - t < 3.9
    rec = Recording.open(tmp_path / "c")
    assert np.diff([f.host_monotonic_ns for f in rec.frames]).tolist() == [2_000_000_000, 2_000_000_000]


def test_simulate_corpus_resumes_only_with_the_arguments_it_was_made_with(tmp_path):
    """OUT/corpus.json records the arguments: a rerun with other ones is one line naming the folder and each
    difference, and touches nothing (it rendered the missing runs with the new ones: a mixed corpus); the same
    arguments resume. A corpus made before corpus.json resumes if its finished runs show these arguments (and
    gets the file), else it is refused naming the run."""
    import shutil

    from chdl.cli.simulate import simulate

    out = tmp_path / "c"
    args = ["corpus", str(out), "--sequences", "3", "--positions", "2", "--lanes-per-run", "1", "--width", "32",
            "--height", "24", "--workers", "1", "-q"]
    res = CliRunner().invoke(simulate, args)
    assert res.exit_code == 0, res.output
    made = json.loads((out / "corpus.json").read_text())
    assert made["format"] == "chdl.sim-corpus/1" and made["parameters"] == {
        "sequences": 3, "positions": 2, "step_um": 60.0, "lanes_per_run": 1, "seed": 0, "width": 32, "height": 24,
        "pixel_format": "Mono8", "bit_depth": 8, "fault_rate": 0.013, "anomaly_rate": 0.0, "sim_version": 1}
    # the data depth, as the runs record it (a Mono8 corpus said 12: --bit-depth's unused Mono16 default)
    assert Recording.open(out / "run_00000").manifest["settings"].get("bit_depth", 8) == 8
    res = CliRunner().invoke(simulate, args + ["--bit-depth", "16"])
    assert res.exit_code == 2 and "--bit-depth 16 is the depth of Mono16 data; Mono8 frames are 8 bits" in res.output
    shutil.rmtree(out / "run_00002")  # as a killed corpus leaves it: the last run not finished
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    advice = f"; use another folder, or delete {out} to render it anew"
    for extra, diff in [(["--width", "48", "--height", "36"], "--width 32 (now 48), --height 24 (now 36)"),
                        (["--seed", "5"], "--seed 0 (now 5)"), (["--sequences", "4"], "--sequences 3 (now 4)")]:
        res = CliRunner().invoke(simulate, args + extra)  # the last of a repeated option counts
        assert res.exit_code == 1, res.output
        assert res.output.splitlines() == [f"Error: {out}: a corpus rendered with other arguments: {diff}{advice}"]
        assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before
    old = {"format": made["format"], "parameters": {**made["parameters"], "bit_depth": 12}}
    (out / "corpus.json").write_text(json.dumps(old))  # as a Mono8 corpus recorded it before 2026-12-02
    res = CliRunner().invoke(simulate, args + ["--workers", "2"])  # how it is rendered is not what it is
    assert res.exit_code == 0 and "wrote 1 recording (" in res.output and "2 finished runs kept" in res.output
    assert Recording.open(out / "run_00002").manifest["settings"]["width"] == 32
    (out / "corpus.json").write_text(json.dumps(made))
    # made before corpus.json: judged by its finished runs' manifests
    (out / "corpus.json").unlink()
    res = CliRunner().invoke(simulate, args + ["--height", "30"])
    assert res.exit_code == 1 and res.output.splitlines() == [
        f"Error: {out}: run_00000 was rendered with other arguments: --height 24 (now 30){advice}"]
    res = CliRunner().invoke(simulate, args[:3] + ["2"] + args[4:])  # --sequences 2: run_00002 is not one of them
    assert res.exit_code == 1 and "its finished run_00002 is beyond the 2 runs of these arguments" in res.output
    assert not (out / "corpus.json").exists()
    res = CliRunner().invoke(simulate, args)
    assert res.exit_code == 0 and "wrote 0 recordings" in res.output and "3 finished runs kept" in res.output
    assert json.loads((out / "corpus.json").read_text()) == made


def test_simulate_corpus_does_not_write_into_a_folder_that_is_not_a_corpus(tmp_path):
    """A folder of someone's files, or a recording: refused in one line, nothing added (it wrote run_00000/ and
    corpus.json into both)."""
    from chdl.cli.simulate import simulate

    args = ["--sequences", "1", "--positions", "2", "--width", "32", "--height", "24", "--workers", "1", "-q"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "important.txt").write_text("x")
    res = CliRunner().invoke(simulate, ["corpus", str(mine), *args])
    assert res.exit_code == 1 and res.output.splitlines() == [
        f"Error: {mine}: exists and is not a corpus folder (it holds important.txt); choose another folder"]
    assert sorted(p.name for p in mine.iterdir()) == ["important.txt"]
    assert CliRunner().invoke(simulate, ["corpus", str(tmp_path / "c"), *args]).exit_code == 0
    rec = tmp_path / "c" / "run_00000"
    before = sorted(p.name for p in rec.iterdir())
    res = CliRunner().invoke(simulate, ["corpus", str(rec), *args])
    assert res.exit_code == 1 and "exists and is not a corpus folder (it holds frames, frames.jsonl, manifest.json, ...)" in res.output
    assert sorted(p.name for p in rec.iterdir()) == before


def test_simulate_corpus_inside_a_dataset_or_a_recording_is_one_line_and_writes_nothing(tmp_path):
    """It was a traceback from the first run's writer, after corpus.json was written inside the dataset (which then
    blocked an --overwrite of that dataset as "holds other files")."""
    import json

    ds = tmp_path / "d.zarr"
    ds.mkdir()
    (ds / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    run = tmp_path / "raw" / "r"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    for out, what in ((ds / "corp", f"the zarr store {ds} (a curated dataset)"), (run / "corp", f"the recording {run}")):
        r = subprocess.run([sys.executable, "-m", "chdl", "simulate", "corpus", str(out), "--sequences", "2",
                            "--width", "64", "--height", "48", "-q"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"Error: {out}: inside {what}") and r.stderr.count("\n") == 1, r.stderr
        assert not out.exists()


def test_a_run_interrupted_before_its_manifest_is_redone_and_a_foreign_one_refused(tmp_path):
    """A corpus stopped between a run's claim (its empty frames/) and its manifest: the rerun redoes the run (it
    refused it as "not a simulated run", which failed a CI run of the Ctrl-C test); a run folder holding anything
    else without a sim manifest is still refused, untouched."""
    from chdl.cli.simulate import simulate

    out = tmp_path / "c"
    args = ["corpus", str(out), "--sequences", "2", "--positions", "2", "--lanes-per-run", "1", "--width", "32",
            "--height", "24", "--workers", "1", "-q"]
    assert CliRunner().invoke(simulate, args).exit_code == 0
    run = out / "run_00001"
    shutil.rmtree(run)
    (run / "frames").mkdir(parents=True)
    (run / ".manifest.json.tmp4242").write_text("{")
    res = CliRunner().invoke(simulate, args)
    assert res.exit_code == 0 and "wrote 1 recording (" in res.output, res.output
    assert "; 1 finished run kept; 1 half-written run rendered again" in res.output, res.output
    assert Recording.open(run).complete
    for stray in ("frames/000000.png", "notes.txt", ".notes.txt.tmp12"):  # (only the manifest's temporary is a claim)
        shutil.rmtree(run)
        (run / "frames").mkdir(parents=True)
        (run / stray).write_bytes(b"x")
        res = CliRunner().invoke(simulate, args)
        assert res.exit_code == 1 and res.output.splitlines() == [
            f"Error: {run}: exists and is not a simulated run; refusing to overwrite it"], res.output
        assert (run / stray).read_bytes() == b"x"


def test_ctrl_c_on_simulate_corpus_counts_every_finished_run_it_keeps(tmp_path, monkeypatch):
    """The interrupt's line counts the finished runs on disk, the last one included, out of all the corpus's runs
    (deterministic: the interrupt comes before any job of the rerun renders)."""
    import chdl.cli.simulate as sim_cli
    from chdl.cli.simulate import simulate

    out = tmp_path / "c"
    args = ["corpus", str(out), "--sequences", "3", "--positions", "2", "--lanes-per-run", "1", "--width", "32",
            "--height", "24", "--workers", "1", "-q"]
    assert CliRunner().invoke(simulate, args).exit_code == 0
    shutil.rmtree(out / "run_00001")  # runs 0 and 2 finished, run 1 not begun

    def interrupted(results, out):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(sim_cli, "_resumable", interrupted)
    res = CliRunner().invoke(simulate, args)
    assert res.exit_code == 130, res.output
    assert res.stderr.splitlines() == [f"interrupted: {out} is incomplete (2 of 3 runs finished, kept); rerun the "
                                       "same command to resume"], res.output


@pytest.mark.parametrize("case", ["a file on the way", "a read-only folder"])
def test_simulate_corpus_output_that_cannot_be_made_is_one_line(tmp_path, monkeypatch, case):
    """`chdl simulate corpus afile/c` (afile a file) or into a folder nobody may write: one line naming the
    folder, exit 1 (was a NotADirectoryError traceback)."""
    import errno

    from chdl.cli.simulate import simulate

    if case == "a file on the way":
        (tmp_path / "afile").write_text("")
        out, why = tmp_path / "afile" / "c", f": {tmp_path / 'afile'} is a file, not a folder"  # ("(Not a directory)")
    else:  # simulated: root writes into read-only folders
        out, why = tmp_path / "ro" / "c", " (Permission denied)"

        def refused(self, *a, **k):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))

        monkeypatch.setattr(Path, "mkdir", refused)
    res = CliRunner().invoke(simulate, ["corpus", str(out), "--sequences", "2", "-q"])
    assert res.exit_code == 1, res.output + repr(res.exception)
    assert res.output.splitlines() == [f"Error: {out}: cannot create the corpus folder{why}"]


def test_simulate_corpus_that_cannot_write_its_runs_is_one_line(tmp_path, monkeypatch):
    """A full disk (or a folder it may not write) while rendering: one line naming the path, exit 1, and the
    rerun resumes (injected ENOSPC from the recording writer)."""
    import errno

    import acquisition.raw as raw
    from chdl.cli.simulate import simulate

    real = raw.files.write_bytes

    def full(path, data, durable=False):
        if path.suffix == ".png" and path.parent.parent.name == "run_00001":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, durable=durable)

    monkeypatch.setattr(raw.files, "write_bytes", full)
    out = tmp_path / "c"
    args = ["corpus", str(out), "--sequences", "2", "--positions", "2", "--lanes-per-run", "1", "--width", "32",
            "--height", "24", "--workers", "1", "-q"]
    res = CliRunner().invoke(simulate, args)
    assert res.exit_code == 1, res.output + repr(res.exception)
    assert res.output.splitlines() == [f"Error: {out}: disk full (No space left on device); {out} is incomplete: fix "
                                       "that and rerun the same command to resume"]
    monkeypatch.setattr(raw.files, "write_bytes", real)
    res = CliRunner().invoke(simulate, args)
    assert res.exit_code == 0 and "wrote 1 recording (" in res.output and "1 finished run kept" in res.output


def test_a_killed_corpus_leaves_no_worker_rendering_on(tmp_path):
    """SIGKILL of `chdl simulate corpus`: its pool workers end at once (they rendered their runs on, for
    seconds, and a rerun meanwhile cleared and redid those runs under them: two writers in one run folder)."""
    import os
    import time

    out = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-m", "chdl", "simulate", "corpus", str(out), "--sequences", "2",
                             "--lanes-per-run", "1", "--positions", "2000", "--width", "200", "--height", "150",
                             "--workers", "2", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # (no pipes: the orphans would hold them)
    index = out / "run_00000" / "frames.jsonl"
    deadline = time.monotonic() + 60
    while not (index.is_file() and len(index.read_text().splitlines()) >= 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [c for c in children(proc.pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    proc.kill()
    proc.wait(timeout=30)
    assert workers and index.is_file(), "no worker was rendering"
    deadline = time.monotonic() + 3  # a run of 2,000 frames takes a worker ~20 s or more
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), "a worker rendered on after its corpus was killed"


def test_ctrl_c_on_simulate_corpus_is_one_line_and_the_rerun_finishes_it(tmp_path):
    """SIGINT to the process group (a terminal's Ctrl-C) mid-corpus: exit 130 with one line saying how to resume (it
    said "Aborted!", exit 1, and each pool worker printed a KeyboardInterrupt traceback); the same command again
    finishes the corpus."""
    import os
    import signal
    import time

    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "chdl", "simulate", "corpus", str(out), "--sequences", "4", "--lanes-per-run", "1",
           "--positions", "400", "--width", "96", "--height", "72", "--workers", "2", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    index = out / "run_00000" / "frames.jsonl"
    deadline = time.monotonic() + 60
    while not (index.is_file() and len(index.read_text().splitlines()) >= 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    finished = sum((out / f"run_{k:05d}" / "truth" / "labels.jsonl").is_file() for k in range(4))
    assert lines == [f"interrupted: {out} is incomplete ({finished} of 4 runs finished, kept); rerun the same command "
                     "to resume"], err
    begun = sum((out / f"run_{k:05d}").exists() for k in range(4)) - finished
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and "wrote" in again.stdout, again.stderr
    assert (f"; {begun} half-written run{'s' if begun > 1 else ''} rendered again" in again.stdout) == (begun > 0)
    assert begun > 0, "the interrupt came before any run began: the test checks nothing of the resume"
    assert all(Recording.open(out / f"run_{k:05d}").complete for k in range(4))
