"""`chdl monitor` / `chdl monitor-eval` through the real CLI in a subprocess: replayed recordings, an injected
anomaly, byte-identical recordings next to `chdl capture`, SIGKILL."""

import importlib.util
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from acquisition.raw import Recording, encode_png
from process_helpers import alive, can_mount_tmpfs, children

ENV = {**os.environ, "CHDL_CAMERAS": "", "GENICAM_GENTL64_PATH": "", "XDG_CONFIG_HOME": "/nonexistent-chdl-test",
       "OMP_NUM_THREADS": "1"}
W, H = 120, 90
INJECTED = 36  # lane 3, position 6 of a 5 x 10 recording
STATUS_KEYS = {"format", "run_id", "state", "predictor", "t_in", "scorer", "z_on", "z_off", "frames_captured",
               "frames_scored", "frames_skipped", "frames_unscored",
               "events", "width", "height", "updated_utc"}
SCORE_KEYS = {"frame", "lane", "position", "score", "threshold", "alert", "acquisition", "latency_ms"}
EVENT_KEYS = {"event", "kind", "frame", "lane", "position", "score", "threshold", "box", "reason", "snapshot",
              "raised_utc"}


def chdl(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "chdl", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """A simulated recording without faults or anomalies: 5 lanes x 10 positions of 120x90."""
    root = tmp_path_factory.mktemp("clean")
    out = chdl("simulate", "corpus", root, "--sequences", "5", "--positions", "10", "--lanes-per-run", "5",
               "--width", W, "--height", H, "--fault-rate", "0", "--seed", "1", "-q")
    assert out.returncode == 0, out.stderr
    return root / "run_00000"


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _index_without_host_times(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("host_")} for r in _lines(run / "frames.jsonl")]


def test_clean_replay_no_events_and_recording_identical_to_capture(clean_run, tmp_path):
    mon = chdl("monitor", "--replay", clean_run, "--out", tmp_path / "m", "--as-fast-as-possible", "--queue-depth", "100",
               "--z-on", "9.5", "-q")
    assert mon.returncode == 0, mon.stderr
    assert "40 frames scored, 0 skipped, 10 unscored (no history yet in their lane pass), 0 events" in mon.stdout
    cap = chdl("capture", "--replay", clean_run, "--out", tmp_path / "c", "--as-fast-as-possible", "-q")
    assert cap.returncode == 0, cap.stderr
    a, b = tmp_path / "m" / "run_00000", tmp_path / "c" / "run_00000"
    names = sorted(p.name for p in (a / "frames").iterdir())
    assert names == sorted(p.name for p in (b / "frames").iterdir()) and len(names) == 50
    assert all((a / "frames" / n).read_bytes() == (b / "frames" / n).read_bytes() for n in names)
    assert _index_without_host_times(a) == _index_without_host_times(b)
    ma, mb = (json.loads((r / "manifest.json").read_text()) for r in (a, b))
    per_process = ("created", "writer")  # (when, and which process: the rest is the same)
    assert {k: v for k, v in ma.items() if k not in per_process} == {k: v for k, v in mb.items() if k not in per_process}
    assert ma["writer"]["pid"] != mb["writer"]["pid"]
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())  # nothing of the monitor inside
    folder = tmp_path / "m" / "run_00000.monitor"
    status = json.loads((folder / "status.json").read_text())
    assert set(status) == STATUS_KEYS
    assert (status["format"], status["state"], status["predictor"], status["t_in"], status["scorer"]) == \
        ("chdl.monitor/1", "finished", "constant-motion", 5, "block-z")
    from chdl.monitor import Z_OFF, Z_ON
    assert (status["z_on"], status["z_off"]) == (9.5, 9.5 * Z_OFF / Z_ON)  # --z-on as given, z_off the same fraction of it
    # every frame counted once: a lane pass's first two have no history (they were in no count)
    assert (status["frames_captured"], status["frames_scored"], status["frames_skipped"], status["frames_unscored"],
            status["events"]) == (50, 40, 0, 10, 0)
    assert (status["width"], status["height"]) == (W, H)
    scores = _lines(folder / "scores.jsonl")
    assert len(scores) == 40 and all(set(s) == SCORE_KEYS for s in scores)
    assert [s["position"] for s in scores[:8]] == list(range(2, 10))  # from the third frame of each pass
    assert not any(s["alert"] for s in scores) and (folder / "events.jsonl").read_text() == ""
    for name in ("frame", "prediction", "error"):
        assert cv2.imread(str(folder / "live" / f"{name}.png"), cv2.IMREAD_UNCHANGED).shape == (H, W)


def _inject(clean_run: Path, tmp_path: Path) -> Path:
    """A copy of the clean recording with a dark chip-like bite at the kerf edge drawn into frame INJECTED."""
    run = tmp_path / "src" / "run_00000"
    shutil.copytree(clean_run, run)
    rec = Recording.open(run)
    f = rec.frames[INJECTED]
    assert (f.lane, f.position_index) == (3, 6)
    pixels = rec.read(f).copy()
    cv2.ellipse(pixels, (70, 38), (12, 6), 0, 0, 360, 10, -1)
    (run / f.file).write_bytes(encode_png(pixels, "Mono8"))
    return run


def test_injected_anomaly_raises_a_process_event_at_its_frame_and_lane(clean_run, tmp_path):
    run = _inject(clean_run, tmp_path)
    mon = chdl("monitor", "--replay", run, "--out", tmp_path / "m", "--as-fast-as-possible", "--queue-depth", "100", "-q")
    assert mon.returncode == 0, mon.stderr
    folder = tmp_path / "m" / "run_00000.monitor"
    events = _lines(folder / "events.jsonl")
    assert [(e["event"], e["kind"], e["frame"], e["lane"], e["position"]) for e in events] == [(0, "process", INJECTED, 3, 6)]
    e = events[0]
    assert set(e) == EVENT_KEYS and e["score"] > e["threshold"]
    import datetime

    raised = datetime.datetime.fromisoformat(e["raised_utc"])  # when (events had no time: a fresh-user trial)
    assert raised.utcoffset() == datetime.timedelta(0) and abs(datetime.datetime.now(datetime.timezone.utc) - raised) \
        < datetime.timedelta(minutes=10)
    x0, y0, x1, y1 = e["box"]
    assert x0 <= 70 < x1 and y0 <= 38 < y1 and (x1 - x0) <= 40 and (y1 - y0) <= 30
    snap = cv2.imread(str(folder / e["snapshot"]), cv2.IMREAD_UNCHANGED)
    # frame | prediction | error map under a strip naming them (it had no labels, no scale, grey gaps)
    strip = snap.shape[0] - H
    assert snap.shape[1] == 3 * W + 4 and 6 <= strip <= 30 and e["snapshot"] == f"snapshots/{INJECTED:06d}.png"
    assert snap[:strip].max() == 255 and (snap[strip:, W] == 255).all() and (snap[strip:, 2 * W + 2] == 255).all()
    scores = {s["frame"]: s for s in _lines(folder / "scores.jsonl")}
    assert scores[INJECTED]["alert"] and not scores[INJECTED - 1]["alert"]
    # without -q each event is a line in the terminal as it comes (the summary's count was all it said)
    loud = chdl("monitor", "--replay", run, "--out", tmp_path / "m2", "--as-fast-as-possible", "--queue-depth", "100")
    assert loud.returncode == 0, loud.stderr
    said = [ln for ln in loud.stderr.replace("\r", "\n").splitlines() if " event at frame " in ln]
    assert said == [f"process event at frame {INJECTED}: {e['reason']}"], said
    assert "no frame could alert" not in loud.stderr


def test_a_recording_too_short_for_the_baseline_says_no_frame_could_alert(clean_run, tmp_path):
    """A run shorter than the scorer's warm-up reported '0 events' as if all were clear."""
    run = tmp_path / "short" / "run_00000"
    shutil.copytree(clean_run, run)
    (run / "frames.jsonl").write_text("".join((clean_run / "frames.jsonl").read_text().splitlines(keepends=True)[:12]))
    m = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**m, "status": "incomplete", "frames": 12}))
    mon = chdl("monitor", "--replay", run, "--out", tmp_path / "m", "--as-fast-as-possible", "-q")
    assert mon.returncode == 0, mon.stderr
    assert "warning: no frame could alert: the scorer first builds its baseline (about 20 frames of a recording) and " \
           "this one had 7 scored frames to build it from; monitor longer recordings" in mon.stderr, mon.stderr


def test_frames_without_an_image_are_events_scored_or_not_and_a_dark_run_says_why_nothing_alerts(clean_run, tmp_path):
    """Frames that carry no image were reported only where they were scored: the first two of each pass had no
    event. A run of nothing but such frames warned that it was too short for the baseline (80 frames 'scored')."""
    run = tmp_path / "dark" / "run_00000"
    shutil.copytree(clean_run, run)
    index = _lines(run / "frames.jsonl")
    black = [r for r in index if r["lane"] == 1 and r["position_index"] in (0, 1, 5)]
    for r in black:
        cv2.imwrite(str(run / r["file"]), np.zeros((H, W), np.uint8))
    mon = chdl("monitor", "--replay", run, "--out", tmp_path / "m", "--as-fast-as-possible", "--queue-depth", "100",
               "--z-on", "9.5", "-q")
    assert mon.returncode == 0, mon.stderr
    events = _lines(tmp_path / "m" / "run_00000.monitor" / "events.jsonl")
    dark = [(e["frame"], e["kind"]) for e in events if "no image" in e["reason"]]
    assert dark == [(r["index"], "acquisition") for r in black], events
    first = next(e for e in events if e["frame"] == black[0]["index"])
    assert "(on arrival; not scored: too little history in its lane pass)" in first["reason"], first
    for r in index:  # every frame black: no baseline, and the warning says so
        cv2.imwrite(str(run / r["file"]), np.zeros((H, W), np.uint8))
    mon = chdl("monitor", "--replay", run, "--out", tmp_path / "m2", "--as-fast-as-possible", "--queue-depth", "100", "-q")
    assert mon.returncode == 0, mon.stderr
    assert "warning: no frame could alert: every one of the 40 scored frames was flagged by the acquisition QC " \
           "(40 no image; events.jsonl lists them)" in mon.stderr, mon.stderr
    assert "monitor longer recordings" not in mon.stderr
    assert len(_lines(tmp_path / "m2" / "run_00000.monitor" / "events.jsonl")) == 50  # one per frame, scored or not


def test_a_run_name_too_long_for_the_monitor_folder_is_one_line(clean_run, tmp_path):
    """A 250-character run name is a valid folder, but its "<name>.monitor" is too long: a traceback (stat)."""
    run = tmp_path / "raw" / ("L" * 250)
    shutil.copytree(clean_run, run)
    m = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**m, "run_id": run.name}))
    mon = chdl("monitor", "--replay", run, "--out", tmp_path / "m", "--as-fast-as-possible", "-q")
    folder = tmp_path / "m" / f"{run.name}.monitor"
    assert mon.returncode == 1 and mon.stderr.strip() == \
        f"Error: {folder}: cannot create the monitor folder (File name too long)", mon.stderr


def test_an_incomplete_frame_is_neither_scored_nor_a_reference(clean_run, tmp_path):
    """A buffer the camera delivered partially (frame INJECTED recorded with status "incomplete", its lower half
    never filled) is not scored: the live monitor's records go through Monitor.offer to the scorer's loop (run here
    in this process, as the scoring process runs it), and that frame gets no score line and no event (scored, its
    black half would be an alert), it is counted unscored; and it is no reference either: its lane pass starts its
    history again after it, so the two frames after it are unscored too (docs/monitor.md, frames_unscored)."""
    from chdl.monitor.runtime import Monitor, _score_loop

    run = tmp_path / "src" / "run_00000"
    shutil.copytree(clean_run, run)
    f = Recording.open(run).frames[INJECTED]
    pixels = Recording.open(run).read(f).copy()
    pixels[H // 2:] = 0
    (run / f.file).write_bytes(encode_png(pixels, "Mono8"))
    index = _lines(run / "frames.jsonl")
    index[INJECTED]["status"] = "incomplete"
    (run / "frames.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index))
    records = Recording.open(run).frames
    assert (records[INJECTED].status, records[INJECTED].file) == ("incomplete", f.file)
    spec = {"predictor": "constant-motion", "t_in": 5}
    mon = Monitor(spec, depth=len(records) + 1)
    for r in records:
        mon.offer(run, r)
    mon.queue.put(None)
    folder = tmp_path / "m"
    folder.mkdir()
    for sub in ("snapshots", "live"):
        (folder / sub).mkdir()
    import torch

    threads = torch.get_num_threads()  # (the loop sets the scoring process's count: this process's is restored)
    try:
        _score_loop(spec, run, folder, mon.queue, {k: mon.shared[k] for k in ("scored", "unscored", "events")},
                    mon.shared["ready"])
    finally:
        torch.set_num_threads(threads)
    scored = [s["frame"] for s in _lines(folder / "scores.jsonl")]
    assert INJECTED not in scored and (folder / "events.jsonl").read_text() == ""
    assert INJECTED + 1 not in scored and INJECTED + 2 not in scored and INJECTED + 3 in scored
    assert (len(scored), mon.skipped, mon.shared["unscored"].value, mon.shared["events"].value) == (37, 0, 13, 0)


def test_a_jerked_frame_is_an_acquisition_event_and_its_snapshot_has_no_box(clean_run, tmp_path):
    """A frame moved 6 px against its lane (vibration): the acquisition QC's event, box null, and the snapshot's
    frame panel is the recorded frame itself (no rectangle drawn from the error map's blob)."""
    run = tmp_path / "src" / "run_00000"
    shutil.copytree(clean_run, run)
    rec = Recording.open(run)
    f = rec.frames[INJECTED]
    pixels = np.ascontiguousarray(np.roll(rec.read(f), 6, axis=1))
    (run / f.file).write_bytes(encode_png(pixels, "Mono8"))
    mon = chdl("monitor", "--replay", run, "--out", tmp_path / "m", "--as-fast-as-possible", "--queue-depth", "100", "-q")
    assert mon.returncode == 0, mon.stderr
    folder = tmp_path / "m" / "run_00000.monitor"
    events = [e for e in _lines(folder / "events.jsonl") if e["frame"] == INJECTED]
    assert [(e["kind"], e["box"]) for e in events] == [("acquisition", None)], events
    assert "vibration" in events[0]["reason"]
    snap = cv2.imread(str(folder / events[0]["snapshot"]), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(snap[-H:, :W], pixels)  # (under the label strip)


def test_a_defocused_first_frame_of_a_pass_is_a_late_acquisition_event(clean_run, tmp_path):
    """The first frame of lane 3's pass blurred (defocus): never scored, it is judged once the third frame of the
    pass has come; its event carries its own frame, lane and position, no score or box, and the frame alone as
    the snapshot. The clean frames after it raise nothing (judged on arrival against it, two of them did)."""
    run = tmp_path / "src" / "run_00000"
    shutil.copytree(clean_run, run)
    rec = Recording.open(run)
    f = rec.frames[30]
    assert (f.lane, f.position_index) == (3, 0)
    pixels = cv2.GaussianBlur(rec.read(f), (0, 0), 3.0)
    (run / f.file).write_bytes(encode_png(pixels, "Mono8"))
    mon = chdl("monitor", "--replay", run, "--out", tmp_path / "m", "--as-fast-as-possible", "--queue-depth", "100", "-q")
    assert mon.returncode == 0, mon.stderr
    folder = tmp_path / "m" / "run_00000.monitor"
    events = _lines(folder / "events.jsonl")
    assert [(e["kind"], e["frame"], e["lane"], e["position"], e["score"], e["box"]) for e in events] == \
        [("acquisition", 30, 3, 0, None, None)], events
    assert set(events[0]) == EVENT_KEYS and "vibration" in events[0]["reason"] and "at frame 32" in events[0]["reason"]
    assert np.array_equal(cv2.imread(str(folder / events[0]["snapshot"]), cv2.IMREAD_UNCHANGED), pixels)
    assert json.loads((folder / "status.json").read_text())["events"] == 1


def test_a_scorer_fitted_on_other_clean_runs_finds_the_injected_anomaly(clean_run, tmp_path, capsys):
    """chdl monitor-fit-scorer on 20 clean simulated lanes (another seed), then chdl monitor --scorer: one event,
    at the injected frame and lane; the scorer file is refused for another predictor or frame size."""
    corpus = tmp_path / "fit"
    out = chdl("simulate", "corpus", corpus, "--sequences", "20", "--positions", "10", "--lanes-per-run", "20",
               "--width", W, "--height", H, "--fault-rate", "0", "--seed", "2", "-q")
    assert out.returncode == 0, out.stderr
    scorer = tmp_path / "scorer.json"
    fit = chdl("monitor-fit-scorer", corpus, "-o", scorer, "--components", "2", "-q")
    assert fit.returncode == 0, fit.stderr
    assert f"fitted on 150 clean frames (constant-motion, {W}x{H}) -> {scorer}" in fit.stdout  # 160 scored, 10 warm-up
    assert f"--scorer {scorer} --write-scorer" in fit.stdout  # how to measure its alert level, said where it is needed
    fitted = json.loads(scorer.read_text())
    assert fitted["fitted_on"]["stage_step_um"] == [60.0]  # simulate corpus's default step
    other_step = tmp_path / "step100.scorer.json"  # as if fitted on lanes stepped as chdl capture's default
    other_step.write_text(json.dumps({**fitted, "fitted_on": {**fitted["fitted_on"], "stage_step_um": [100.0]}}))
    run = _inject(clean_run, tmp_path)
    mon = chdl("monitor", "--replay", run, "--out", tmp_path / "m", "--as-fast-as-possible", "--queue-depth", "100",
               "--scorer", scorer, "-q")
    assert mon.returncode == 0, mon.stderr
    assert "warning" not in mon.stderr  # (fitted at this recording's stage step)
    folder = tmp_path / "m" / "run_00000.monitor"
    events = _lines(folder / "events.jsonl")
    assert [(e["kind"], e["frame"], e["lane"], e["position"]) for e in events] == [("process", INJECTED, 3, 6)]
    # a scorer fitted at another stage step: its level does not hold there (a README user got 11-15 false alarms in
    # 54 clean frames): said before the capture starts
    from click.testing import CliRunner

    from chdl.cli import main

    (tmp_path / "m2" / run.name).mkdir(parents=True)  # (then it stops there, before it records: no second replay)
    (tmp_path / "m2" / run.name / "notes.txt").write_text("taken")
    other = CliRunner().invoke(main, ["monitor", "--replay", str(run), "--out", str(tmp_path / "m2"),
                                      "--scorer", str(other_step), "-q"])
    assert other.exit_code == 1 and "already exists" in other.output, other.output
    assert (f"warning: {other_step} was fitted on lanes stepped 100 µm between frames, these step 60 µm: its alert "
            "level may not hold (false alarms); fit one on clean recordings stepped like these") in other.output
    assert "learned score" in events[0]["reason"]
    status = json.loads((folder / "status.json").read_text())
    assert status["scorer"] == f"learned:{scorer}"
    from chdl.monitor import Z_OFF, Z_ON
    assert (status["z_on"], status["z_off"]) == (Z_ON, Z_OFF)  # the levels in use: the file has none, so the defaults
    import click

    from chdl.cli.monitor import _check_scorer

    with pytest.raises(click.ClickException, match="fitted on the prediction errors of constant-motion, the monitor "
                       "predicts with the checkpoint m.pt"):
        _check_scorer(scorer, Path("m.pt"), (H, W))
    with pytest.raises(click.ClickException, match=f"fitted on {W}x{H} frames, these are 200x150"):
        _check_scorer(scorer, None, (150, 200))
    # the alert level measured for the scorer goes into its file, and from there to monitor-eval (and monitor)
    spec = importlib.util.spec_from_file_location("op_tool", Path(__file__).resolve().parents[2] / "tools" / "monitor_operating_point.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    # ... measured on clean recordings it was NOT fitted on (on its own it scores low: a level far too low)
    assert tool.main([str(corpus), "--scorer", str(scorer), "--write-scorer"]) == 1
    assert capsys.readouterr().err == (f"Error: {corpus / 'run_00000'}: {scorer} was fitted on this recording; "
                                       "measure its alert level on other clean recordings\n")
    assert "alert_levels" not in json.loads(scorer.read_text()) or not json.loads(scorer.read_text())["alert_levels"]
    # measured on lanes stepped otherwise than the scorer was fitted on: measured, with a word
    assert tool.main([str(clean_run), "--scorer", str(other_step), "--levels", "8:9:1"]) == 0
    assert (f"warning: {other_step} was fitted on lanes stepped 100 µm between frames, these step 60 µm"
            in capsys.readouterr().err)
    assert tool.main([str(clean_run), "--scorer", str(scorer), "--write-scorer", "--fa-per-hour", "1e6",
                      "--out", str(tmp_path / "op.json")]) == 0
    op = json.loads((tmp_path / "op.json").read_text())
    assert op["chosen_z_on"] == 3.0  # every level qualifies at 1e6/h
    # ... which is where the grid starts, not a measurement: said (the weights followed the grid's start silently)
    assert "caution: the mixture raised no false alarm even at the lowest level tried (3): its level" in \
        capsys.readouterr().out
    # an existing --out is replaced only with --overwrite (it was replaced silently)
    assert tool.main([str(clean_run), "--scorer", str(scorer), "--out", str(tmp_path / "op.json"), "-q"]) == 1
    assert capsys.readouterr().err == f"Error: {tmp_path / 'op.json'}: already exists (use --overwrite to replace it)\n"
    assert json.loads(scorer.read_text())["alert_levels"] == {
        "z_on": 3.0, "z_off": 1.5, "target_per_hour": 1e6, "clean_frames": op["clean_frames"],
        "clean_hours": round(op["clean_hours"], 4), "runs": [str(clean_run)]}
    # monitor-eval: a z_off above the file's z_on is a usage error; a scorer of another frame size one line
    bad = chdl("monitor-eval", run, "--out", tmp_path / "e1", "--scorer", scorer, "--z-off", "5", "--no-qc", "-q")
    assert bad.returncode == 2 and "Invalid value for --z-off: must not exceed --z-on (3)" in bad.stderr
    other = chdl("simulate", "corpus", tmp_path / "other", "--sequences", "2", "--positions", "10", "--lanes-per-run",
                 "2", "--width", "80", "--height", "60", "--fault-rate", "0", "--seed", "3", "-q")
    assert other.returncode == 0, other.stderr
    bad = chdl("monitor-eval", tmp_path / "other" / "run_00000", "--out", tmp_path / "e2", "--scorer", scorer,
               "--no-qc", "-q")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        f"Error: {scorer}: fitted on {W}x{H} frames, these are 80x60 (those of {tmp_path / 'other' / 'run_00000'})"], \
        bad.stderr
    assert not (tmp_path / "e2").exists()
    from chdl.monitor.evaluate import evaluate

    name = "constant-motion+scorer:scorer.json"
    ev = evaluate([corpus / "run_00000"], tmp_path / "e", qc=False, progress=False, methods=[], scorers=[scorer],
                  alert_levels={"z_off": 1.0})
    assert ev["methods"][name]["alert_levels"] == {"z_on": 3.0, "z_off": 1.0}  # given, else the file's
    assert ev["markdown"].startswith(f"alerts at z_on 7.5, z_off 1; {name}: z_on 3, z_off 1 (")


def test_monitor_fit_scorer_errors_are_one_line(clean_run, tmp_path):
    corpus = tmp_path / "anom"
    out = chdl("simulate", "corpus", corpus, "--sequences", "2", "--positions", "6", "--lanes-per-run", "2",
               "--width", "64", "--height", "48", "--fault-rate", "0", "--anomaly-rate", "0.5", "--seed", "3", "-q")
    assert out.returncode == 0, out.stderr
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    (tmp_path / "afile").write_text("x")
    manifest = (clean_run / "manifest.json").read_bytes()
    for args, message in [([corpus, "-o", tmp_path / "s.json"], "process anomalies; fit on clean recordings only"),
                          ([corpus, "-o", tmp_path / "no" / "s.json"], f"the folder {tmp_path / 'no'} does not exist"),
                          ([corpus, "-o", corpus / "s.json"], "is inside the input"),  # was written into it
                          # --overwrite replaced the recording's manifest with a scorer (only a scorer file now)
                          ([clean_run, "-o", clean_run / "manifest.json", "--overwrite"], "is inside the input"),
                          ([clean_run, "-o", tmp_path / "notes.json", "--overwrite"],
                           "notes.json: not a scorer file (chdl.monitor-scorer/N); --overwrite replaces only"),
                          ([clean_run, "-o", tmp_path / "afile" / "s.json"], "the folder "
                           f"{tmp_path / 'afile'} is a file, not a folder"),
                          # 5 lanes x 10 positions: 30 frames scored (the first of each lane only fill its history); 32 components need 640
                          ([clean_run, "-o", tmp_path / "s.json", "--components", "32"],
                           f"{clean_run}: 30 scored clean frames of 50 recorded are too few to fit 32 components")]:
        fit = chdl("monitor-fit-scorer", *args, "-q")
        assert fit.returncode == 1 and message in fit.stderr and "Traceback" not in fit.stderr
        assert len(fit.stderr.strip().splitlines()) == 1 and not (tmp_path / "s.json").exists()
    assert (clean_run / "manifest.json").read_bytes() == manifest and (tmp_path / "notes.json").read_text() == '{"mine": 1}'


def test_sigkill_leaves_a_readable_recording_and_no_scorer_behind(tmp_path):
    run = tmp_path / "raw" / "long"
    proc = subprocess.Popen([sys.executable, "-m", "chdl", "monitor", "--camera", "sim0", "--out", tmp_path / "raw",
                             "--run-id", "long", "--lanes", "200", "--positions", "10", "--width", "96", "--height", "72"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        index = run / "frames.jsonl"
        if index.is_file() and len(index.read_text().splitlines()) >= 5:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"no frames recorded: {proc.communicate()[1][-2000:]}")
    child_pids = children(proc.pid)
    assert child_pids, "the scorer runs in its own process"
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    rec = Recording.open(run)
    assert not rec.complete and len(rec) >= 5 and all(rec.read(f).shape == (72, 96) for f in rec.frames)
    assert [f.index for f in rec.frames] == list(range(len(rec)))
    status = json.loads((tmp_path / "raw" / "long.monitor" / "status.json").read_text())
    assert status["state"] == "running"  # it never finished; the file is whole (replaced atomically)
    deadline = time.monotonic() + 10
    while any(alive(c) for c in child_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(c) for c in child_pids), "the scorer outlived the killed monitor"


def test_monitor_eval_refuses_truth_that_is_not_the_recordings(clean_run, tmp_path):
    """Truth of another length, or an anomaly at a frame of another lane or past the end: one line naming the
    truth file, exit 1 (it scored them before, with exit 0)."""
    run = tmp_path / "short" / "run_00000"
    shutil.copytree(clean_run, run)
    labels = run / "truth" / "labels.jsonl"
    labels.write_text("".join(labels.read_text().splitlines(keepends=True)[:30]))
    bad = chdl("monitor-eval", run, "--out", tmp_path / "e1", "--no-qc", "-q")
    assert bad.returncode == 1 and f"{labels}: 30 labels for the 50 frames of {run}" in bad.stderr, bad.stderr
    assert not (tmp_path / "e1" / "metrics.json").exists()
    run2 = tmp_path / "far" / "run_00000"
    shutil.copytree(clean_run, run2)
    (run2 / "truth" / "anomalies.jsonl").write_text(json.dumps(
        {"kind": "crack", "lane": 4, "onset_frame": 999, "onset_t": 2, "frames": [999, 1000], "boxes": [None, None],
         "magnitude": 0.5, "visible": True, "extent": 2}) + "\n")
    bad = chdl("monitor-eval", run2, "--out", tmp_path / "e2", "--no-qc", "-q")
    assert bad.returncode == 1 and "anomalies.jsonl:1: an anomaly of lane 4 at frame 999" in bad.stderr, bad.stderr


def test_monitor_eval_of_a_damaged_recording_is_one_line_or_a_note(clean_run, tmp_path):
    """A malformed frame index or manifest: one line naming the file, exit 1, nothing written (a traceback before);
    a frame file that does not decode is left unscored, as chdl monitor leaves it, and the results say so."""
    index = tmp_path / "index" / "run_00000"
    shutil.copytree(clean_run, index)
    lines = (index / "frames.jsonl").read_text().splitlines(keepends=True)
    (index / "frames.jsonl").write_text("".join(lines[:6] + ['{"garbage": \n'] + lines[7:]))
    bad = chdl("monitor-eval", index, "--out", tmp_path / "e1", "--no-qc", "-q")
    assert bad.returncode == 1 and bad.stderr.startswith(f"Error: {index / 'frames.jsonl'}:7: malformed frame record"), \
        bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "e1").exists()
    manifest = tmp_path / "manifest" / "run_00000"
    shutil.copytree(clean_run, manifest)
    (manifest / "manifest.json").write_text('{"x":')
    bad = chdl("monitor-eval", manifest, "--out", tmp_path / "e2", "--no-qc", "-q")
    assert bad.returncode == 1 and bad.stderr.startswith(f"Error: {manifest / 'manifest.json'}: malformed JSON"), \
        bad.stderr
    frame = tmp_path / "frame" / "run_00000"
    shutil.copytree(clean_run, frame)
    (frame / _lines(frame / "frames.jsonl")[0]["file"]).write_text("garbage")  # the very first frame
    (frame / _lines(frame / "frames.jsonl")[23]["file"]).write_bytes(b"")
    ok = chdl("monitor-eval", frame, "--out", tmp_path / "e3", "--no-qc", "-q")
    assert ok.returncode == 0, ok.stderr
    notes = json.loads((tmp_path / "e3" / "metrics.json").read_text())["notes"]
    assert any(n.startswith(f"2 frames of {frame} could not be read and were not scored") for n in notes), notes
    assert "could not be read" in (tmp_path / "e3" / "metrics.md").read_text()
    # a torn last index line and a run not closed complete: noted, as curate warns of them (scored without a word)
    torn = tmp_path / "torn" / "run_00000"
    shutil.copytree(clean_run, torn)
    index = (torn / "frames.jsonl").read_bytes()
    (torn / "frames.jsonl").write_bytes(index[:-40])
    manifest = json.loads((torn / "manifest.json").read_text())
    ok = chdl("monitor-eval", torn, "--out", tmp_path / "e4", "--no-qc", "-q")
    assert ok.returncode == 0, ok.stderr
    notes = json.loads((tmp_path / "e4" / "metrics.json").read_text())["notes"]
    assert f"{torn}: the last line of frames.jsonl is torn (capture cut off): that frame was not scored" in notes
    assert f"{torn}: frames.jsonl holds 49 of the 50 frames manifest.json counts: the others were not scored" in notes
    manifest["status"] = "incomplete"
    (torn / "manifest.json").write_text(json.dumps(manifest))
    (torn / "frames.jsonl").write_bytes(index)
    ok = chdl("monitor-eval", torn, "--out", tmp_path / "e5", "--no-qc", "-q")
    assert json.loads((tmp_path / "e5" / "metrics.json").read_text())["notes"] == [
        f"{torn}: run is 'incomplete', not complete: the 50 frames it holds were scored"]


def test_monitor_eval_scores_every_method_on_labelled_runs(tmp_path):
    corpus = tmp_path / "corpus"
    out = chdl("simulate", "corpus", corpus, "--sequences", "4", "--positions", "10", "--lanes-per-run", "4",
               "--width", "96", "--height", "72", "--fault-rate", "0", "--anomaly-rate", "0.25", "--seed", "5", "-q")
    assert out.returncode == 0, out.stderr
    ev = chdl("monitor-eval", corpus, "--out", tmp_path / "eval", "--no-qc", "-q")
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    from chdl.provenance import code_fingerprint
    assert metrics["format"] == "chdl.monitor-eval/1" and metrics["code"]["code"] == code_fingerprint()  # which code
    assert list(metrics["methods"]) == ["frame-difference", "copy-last", "constant-motion"]
    assert metrics["alert_levels"] == {"z_on": 7.5, "z_off": 3.75}  # the levels in use, not only those given
    for m in metrics["methods"].values():
        assert 0.0 <= m["auroc"] <= 1.0 and m["events"] > 0 and 0.0 <= m["event_recall"] <= 1.0
        assert m["positive_frames"] > 0 and m["negative_frames"] > 0
        assert [t["z_on"] for t in m["sweep"]] == [3, 4, 5, 6, 7.5, 8, 10, 12]  # the trade-off, replayed (7.5: default)
        assert all(0.0 <= t["event_recall"] <= 1.0 and t["false_alarms_per_hour"] >= 0 for t in m["sweep"])
        assert m["sweep"][0]["false_alarms"] >= m["sweep"][-1]["false_alarms"]
    # every method's AUROC over the same frames (the frame difference scored frames the block scorers' warm-up skips)
    assert len({(m["positive_frames"], m["negative_frames"]) for m in metrics["methods"].values()}) == 1
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| constant-motion |" in md and "AUROC" in ev.stdout
    assert md.startswith("alerts at z_on 7.5, z_off 3.75 (") and "| z_on 7.5 |" in md
    assert cv2.imread(str(tmp_path / "eval" / "scores_corpus_run_00000.png")) is not None
    # a monitor folder stands for its recording, whose truth is that of the recording it replays
    mon = chdl("monitor", "--replay", corpus / "run_00000", "--out", tmp_path / "m", "--as-fast-as-possible", "-q",
               "--queue-depth", "100")
    assert mon.returncode == 0, mon.stderr
    from chdl.monitor.evaluate import evaluate

    again = evaluate([tmp_path / "m" / "run_00000.monitor"], tmp_path / "eval2", qc=False, progress=False)
    assert again["methods"] == metrics["methods"]  # the same frames, the same truth, the same scores
    # a replay given beside the recording it replays would count every event twice: one line, nothing written
    from chdl.monitor.evaluate import EvalError

    with pytest.raises(EvalError, match=r"run_00000: replays .*corpus/run_00000, which is given too: its anomalies"):
        evaluate([corpus / "run_00000", tmp_path / "m" / "run_00000.monitor"], tmp_path / "eval3", qc=False,
                 progress=False)
    assert not (tmp_path / "eval3").exists()
    # ... and so would one recording given twice (it counted 6 events for 3, and the clean hours twice)
    with pytest.raises(EvalError, match=r"run_00000: given twice \(also as .*corpus/run_00000\): its anomalies"):
        evaluate([corpus / "run_00000", corpus / "." / "run_00000"], tmp_path / "eval3", qc=False, progress=False)
    with pytest.raises(EvalError, match="given twice"):
        evaluate([corpus, corpus / "run_00000"], tmp_path / "eval3", qc=False, progress=False)
    assert not (tmp_path / "eval3").exists()


def test_monitor_eval_keeps_a_plot_per_recording_and_checks_every_method_before_scoring(clean_run, tmp_path,
                                                                                       monkeypatch):
    """Runs y/cut/run_00000_3, a/cut/run_00000, b/cut/run_00000: b's plot replaced y's (3 runs, 2 plots). And a
    scorer of another frame size was refused only after the other methods had scored every recording."""
    from chdl.monitor import evaluate as ev

    runs = [tmp_path / "y" / "cut" / "run_00000_3", tmp_path / "a" / "cut" / "run_00000", tmp_path / "b" / "cut" / "run_00000"]
    for r in runs:
        shutil.copytree(clean_run, r)
    ev.evaluate(runs, tmp_path / "e", qc=False, progress=False, methods=["copy-last"])
    assert sorted(p.name for p in (tmp_path / "e").glob("*.png")) == [
        "scores_cut_run_00000.png", "scores_cut_run_00000_2.png", "scores_cut_run_00000_3.png"]
    scorer = tmp_path / "s.json"
    fit = chdl("monitor-fit-scorer", clean_run, "-o", scorer, "--components", "1", "--no-qc", "-q")
    assert fit.returncode == 0, fit.stderr
    data = json.loads(scorer.read_text())
    scorer.write_text(json.dumps({**data, "width": 2 * data["width"]}))
    monkeypatch.setattr(ev, "score_recording", lambda *a, **k: pytest.fail("scored before the scorer was checked"))
    with pytest.raises(ev.EvalError, match="(those of .*run_00000_3)"):
        ev.evaluate(runs[:1], tmp_path / "e2", qc=False, progress=False, methods=["copy-last"], scorers=[scorer])


@pytest.mark.parametrize("args,message", [
    (["--replay", "{clean}", "--checkpoint", "{bad}"], "Error: "),
    (["--replay", "{clean}", "--run-id", "a/b"], "--run-id"),
    (["--camera", "gige0"], "Error: no GenTL producer"),  # fails after the scorer started: nothing left either
    (["--replay", "{clean}", "--scorer", "{bad}"], "bad.pt: not a scorer file (not JSON"),
    (["--replay", "{clean}", "--scorer", "{missing}"], "missing.json: cannot read the scorer file"),
])
def test_monitor_errors_are_one_line_and_leave_nothing(clean_run, tmp_path, args, message):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    args = [a.replace("{bad}", str(bad)).replace("{clean}", str(clean_run)).replace("{missing}", str(tmp_path / "missing.json"))
            for a in args]
    out = chdl("monitor", "--out", tmp_path / "m", *args)
    assert out.returncode in (1, 2) and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "m").exists()


def test_a_slow_scorer_skips_frames_and_says_so_the_recording_keeps_them_all(clean_run, tmp_path):
    """Replayed as fast as possible (~300 frames/s) into a queue of one frame: the scorer (~15 ms a frame)
    falls behind, frames are skipped and counted, and every frame is still recorded."""
    mon = chdl("monitor", "--replay", clean_run, "--out", tmp_path / "m", "--as-fast-as-possible", "--queue-depth", "1",
               "-q")
    assert mon.returncode == 0, mon.stderr
    status = json.loads((tmp_path / "m" / "run_00000.monitor" / "status.json").read_text())
    assert status["frames_captured"] == 50 and status["frames_skipped"] > 0
    assert status["frames_scored"] == len(_lines(tmp_path / "m" / "run_00000.monitor" / "scores.jsonl")) < 40
    assert f"{status['frames_skipped']} skipped, {status['frames_unscored']} unscored" in mon.stdout
    assert status["frames_scored"] + status["frames_skipped"] + status["frames_unscored"] == 50
    # most frames unscored is a warning on stderr, not only a count
    warned = f"warning: {status['frames_skipped']} of 50 frames were skipped (the scorer fell behind)" in mon.stderr
    assert warned == (status["frames_skipped"] > status["frames_scored"]), mon.stderr
    rec = Recording.open(tmp_path / "m" / "run_00000")
    assert rec.complete and len(rec) == 50


def test_monitor_serve_shows_the_injected_anomaly_live_in_a_real_browser(clean_run, tmp_path, chromium):
    """What a fab engineer watches: `chdl monitor --replay ... --serve` paced at the recorded rate, the dashboard
    open in headless Chromium while it runs, and the anomaly injected at lane 3, position 6 appearing as a
    process alert at its frame; a screenshot of the page."""
    run = tmp_path / "src" / "run_00000"
    shutil.copytree(clean_run, run)
    rec = Recording.open(run)
    f = rec.frames[INJECTED]
    pixels = rec.read(f).copy()
    cv2.ellipse(pixels, (70, 38), (12, 6), 0, 0, 360, 10, -1)
    (run / f.file).write_bytes(encode_png(pixels, "Mono8"))
    index = _lines(run / "frames.jsonl")  # the corpus is stamped at 5 fps: replay it at 10 fps, a shorter test
    for i, r in enumerate(index):
        r["host_monotonic_ns"] = index[0]["host_monotonic_ns"] + i * 100_000_000
        r["host_wall_ns"] = index[0]["host_wall_ns"] + i * 100_000_000
    (run / "frames.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index))
    proc = subprocess.Popen([sys.executable, "-m", "chdl", "monitor", "--replay", str(run), "--out", str(tmp_path / "m"),
                             "--queue-depth", "100", "--serve", "-q"], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stderr.readline()
        assert line.startswith("dashboard: http://127.0.0.1:"), line
        page = chromium.new_page(viewport={"width": 1280, "height": 800})
        page.goto(line.split()[1])
        page.wait_for_selector('#state[data-state="running"]', timeout=20_000)
        alert = page.wait_for_selector(f'li.alert[data-frame="{INJECTED}"][data-lane="3"]', timeout=60_000)
        assert alert.get_attribute("data-kind") == "process"
        shot = page.screenshot(path=tmp_path / "monitor.png", full_page=True)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "1 events" in out and len(page.query_selector_all("li.alert")) == 1
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000


def test_a_forced_scan_backend_that_cannot_run_is_refused_before_recording(monkeypatch):
    """The scorer predicts on the CPU: CHDL_SCAN_BACKEND=triton (or a checkpoint whose config forces it) is one
    line naming the checkpoint before anything is recorded, not a dead scorer mid-capture."""
    import click

    from chdl.cli.monitor import _predictor_spec
    from diffuma.training import checkpoint as ck

    state = {"model_name": "diffuma", "model_config": {"scan_backend": "auto"}, "data": {"in_frames": 4}}
    monkeypatch.setattr(ck, "load_checkpoint", lambda path: state)
    monkeypatch.setenv("CHDL_SCAN_BACKEND", "triton")
    with pytest.raises(click.ClickException, match=r"^m\.pt: scan backend 'triton' was forced but cannot run"):
        _predictor_spec(Path("m.pt"), 5)
    monkeypatch.delenv("CHDL_SCAN_BACKEND")
    assert _predictor_spec(Path("m.pt"), 5)[2] == 4
    state["model_config"]["scan_backend"] = "fused"
    with pytest.raises(click.ClickException, match=r"^m\.pt: scan backend 'fused' was forced"):
        _predictor_spec(Path("m.pt"), 5)
    # a model without a scan (SimVP) does not care which scan backend the environment forces
    monkeypatch.setenv("CHDL_SCAN_BACKEND", "triton")
    simvp = {"model_name": "simvp", "model_config": {"spatial_hidden": 8}, "data": {"in_frames": 3}}
    monkeypatch.setattr(ck, "load_checkpoint", lambda path: simvp)
    assert _predictor_spec(Path("s.pt"), 5)[2] == 3


def test_operating_point_tool_refuses_a_recording_with_anomalies(clean_run, monkeypatch, capsys):
    """Its alerts would count as false alarms and lift the level: refused by name, as monitor-fit-scorer does."""
    from types import SimpleNamespace

    from chdl.monitor import evaluate

    spec = importlib.util.spec_from_file_location("op_tool", Path(__file__).resolve().parents[2] / "tools" / "monitor_operating_point.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(evaluate, "run_truth", lambda rec: SimpleNamespace(anomalies=["crack", "splash"]))
    assert tool.main([str(clean_run)]) == 1
    assert capsys.readouterr().err == (f"Error: {clean_run}: its truth lists 2 process anomalies; the alert level is "
                                       "measured on clean capture only\n")


def test_monitor_eval_sets_each_method_up_once_per_frame_size(clean_run, tmp_path, monkeypatch):
    """A checkpoint or scorer file is loaded (and hashed) once for all recordings of one frame size, not once
    per recording; every recording is still scored."""
    from chdl.monitor import evaluate as ev

    copy = tmp_path / "copy" / "run_00000"
    shutil.copytree(clean_run, copy)
    calls, real = [], ev.method_setup
    monkeypatch.setattr(ev, "method_setup", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    res = ev.evaluate([clean_run, copy], tmp_path / "e", qc=False, progress=False, methods=["copy-last", "constant-motion"])
    assert sorted(calls) == ["constant-motion", "copy-last"]
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["runs"] == [str(clean_run), str(copy)]
    one = ev.evaluate([clean_run], tmp_path / "e1", qc=False, progress=False, methods=["constant-motion"])
    twice, once = res["methods"]["constant-motion"], one["methods"]["constant-motion"]
    assert twice["negative_frames"] == 2 * once["negative_frames"] > 0  # both recordings scored, alike


def test_offline_scoring_runs_with_the_live_scorers_thread_count(clean_run):
    """monitor-eval, monitor-fit-scorer and the operating-point tool score through score_recording with torch's
    intra-op threads as the live scorer process has them (1; more made scoring ~7x slower on a busy 2-core
    machine), and give the caller's count back afterwards."""
    import torch

    from chdl.monitor.anomaly_score import ConstantMotion, ScorerConfig
    from chdl.monitor.evaluate import score_recording
    from chdl.monitor.runtime import SCORER_THREADS

    seen = []

    class Spy(ConstantMotion):
        def predict(self, history):
            seen.append(torch.get_num_threads())
            return super().predict(history)

    before = torch.get_num_threads()
    torch.set_num_threads(SCORER_THREADS + 1)
    try:
        rows = score_recording(Recording.open(clean_run), Spy(), ScorerConfig(), qc=False)
        assert rows and len(seen) == len(rows) and set(seen) == {SCORER_THREADS}
        assert torch.get_num_threads() == SCORER_THREADS + 1
    finally:
        torch.set_num_threads(before)


def test_a_checkpoint_of_another_frame_size_is_refused_before_recording(clean_run, tmp_path, monkeypatch):
    """A model trained on 200x150 cannot predict 120x90 frames: one line naming the checkpoint and both sizes,
    exit 1, no recording or monitor folder (chdl eval refuses the same pair)."""
    from click.testing import CliRunner

    from chdl.cli import main
    from diffuma.training import checkpoint as ck

    state = {"model_name": "diffuma", "model_config": {}, "data": {"in_frames": 5, "channels": 1, "height": 150,
                                                                  "width": 200}}
    monkeypatch.setattr(ck, "load_checkpoint", lambda path: state)
    model = tmp_path / "m.pt"
    model.write_bytes(b"stands for a checkpoint")
    out = CliRunner().invoke(main, ["monitor", "--replay", str(clean_run), "--out", str(tmp_path / "m"),
                                    "--checkpoint", str(model), "-q"])
    assert out.exit_code == 1
    assert f"{model}: trained on frames 1x150x200 (C,H,W), the monitored frames are 1x{H}x{W}" in out.output
    assert not (tmp_path / "m").exists()
    from chdl.cli.monitor import _predictor_spec

    state["data"].update(height=H, width=W)  # the right size passes
    assert _predictor_spec(model, 5, (H, W))[2] == 5


def _wait_for(path: Path, lines: int, proc, timeout: float = 90) -> None:
    """Until ``path`` has ``lines`` lines (0: exists), or fail with the monitor's stderr."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and len(path.read_text().splitlines()) >= lines:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"{path} never came: {proc.communicate()[1][-2000:]}")


def test_ctrl_c_to_the_process_group_is_an_interrupted_run_not_a_failed_one(clean_run, tmp_path):
    """Ctrl-C in a terminal signals the whole process group, the scorer too: it ignores SIGINT (the capture side
    ends the run, as curate's pool workers leave it to their parent), so the run is "interrupted", with the
    summary line and exit 130; it was "failed" with 'scorer: KeyboardInterrupt'."""
    proc = subprocess.Popen([sys.executable, "-m", "chdl", "monitor", "--replay", clean_run, "--out", tmp_path / "m",
                             "--queue-depth", "100", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, start_new_session=True)  # paced at the recorded 5 fps: 10 s for 50 frames
    _wait_for(tmp_path / "m" / "run_00000" / "frames.jsonl", 5, proc)
    child_pids = children(proc.pid)
    assert child_pids, "the scorer runs in its own process"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "error" not in err.lower(), err
    status = json.loads((tmp_path / "m" / "run_00000.monitor" / "status.json").read_text())
    assert status["state"] == "interrupted"
    assert f"monitor: {status['frames_scored']} frames scored, 0 skipped, {status['frames_unscored']} unscored" in out
    assert 0 < status["frames_scored"] <= status["frames_captured"] < 50
    rec = Recording.open(tmp_path / "m" / "run_00000")
    assert not rec.complete and len(rec) == status["frames_captured"] and all(rec.read(f).shape == (H, W) for f in rec.frames)
    deadline = time.monotonic() + 10  # (the scorer ends before the monitor; multiprocessing's resource tracker after it)
    while any(alive(c) for c in child_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(c) for c in child_pids)
    assert not list((tmp_path / "m" / "run_00000.monitor").glob("*.tmp")) and \
        not (tmp_path / "m" / "run_00000.monitor" / ".chdl-reserve").exists()


def test_ctrl_c_while_the_scorer_loads_is_an_interruption_not_a_traceback(tmp_path):
    """SIGINT to the process group as soon as the monitor folder exists, while the scorer still loads its
    predictor (seconds: it imports torch) and nothing is recorded yet: one line, exit 130, nothing left (it
    was a KeyboardInterrupt traceback, or click's 'Aborted!' and exit 1)."""
    proc = subprocess.Popen([sys.executable, "-m", "chdl", "monitor", "--camera", "sim0", "--out", tmp_path / "raw",
                             "--run-id", "r", "--lanes", "20", "--positions", "10", "--width", "64", "--height", "48"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    _wait_for(tmp_path / "raw" / "r.monitor" / "status.json", 0, proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "Aborted" not in err, err
    if (tmp_path / "raw" / "r").exists():  # the scorer was quicker than ever measured: the capture had begun
        assert json.loads((tmp_path / "raw" / "r.monitor" / "status.json").read_text())["state"] == "interrupted"
    else:
        assert err.strip().splitlines() == ["interrupted before the capture began: nothing recorded"]
        assert not (tmp_path / "raw").exists()


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs `unshare -m` and mount rights for a private tmpfs")
def test_a_full_disk_is_one_line_and_a_failed_status(clean_run, tmp_path):
    """A 224 KiB tmpfs in a private mount namespace fills up after a few frames: one error line naming the path and
    'disk full', exit 1, status.json "failed" (the folder's reserve left room for it), no .tmp file, the recording
    closed and readable. It was a 65-line traceback, status.json "running" and a status.json.tmp."""
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "check.py").write_text(textwrap.dedent(f"""
        import json, os
        from acquisition.raw import Recording
        rec = Recording.open({str(disk / 'run_00000')!r})
        folder = {str(disk / 'run_00000.monitor')!r}
        print(json.dumps({{"status": rec.manifest["status"], "n": len(rec), "stopped_by": rec.manifest["notes"]["stopped_by"],
                           "readable": all(rec.read(f) is not None for f in rec.frames),
                           "state": json.load(open(os.path.join(folder, "status.json")))["state"],
                           "files": sorted(os.listdir(folder)) + sorted(os.listdir(os.path.join(folder, "live")))}}))
    """))
    script = (f"mount -t tmpfs -o size=224k tmpfs {disk} && {sys.executable} -m chdl monitor --replay {clean_run} "
              f"--out {disk} --as-fast-as-possible --queue-depth 100 -q; echo RC=$?; {sys.executable} {tmp_path / 'check.py'}")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120, env=ENV)
    assert "RC=1" in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr
    assert out.stderr.startswith("Error: ") and "disk full (No space left on device)" in out.stderr
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state["status"] == "incomplete" and state["stopped_by"] == "disk full" and state["readable"]
    assert state["state"] == "failed"
    assert not [f for f in state["files"] if ".tmp" in f or f == ".chdl-reserve"], state["files"]


def test_a_status_json_that_cannot_be_written_is_one_line_and_leaves_no_tmp(clean_run, tmp_path, monkeypatch):
    """ENOSPC from every status.json write after the first (injected here; the real full disk is the test above):
    the writes while running are retried quietly, the last one's failure is one line naming status.json and
    'disk full', exit 1, no status.json.tmp; the recording is complete. It was a traceback per failed write."""
    import errno

    from click.testing import CliRunner

    from chdl.cli import main

    real, writes = Path.write_bytes, {"n": 0}

    def full_disk(self, data):
        if not self.name.startswith(".status.json.tmp"):
            return real(self, data)
        writes["n"] += 1
        if writes["n"] == 1:
            return real(self, data)
        self.touch()  # created, then the write fails: what a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    res = CliRunner().invoke(main, ["monitor", "--replay", str(clean_run), "--out", str(tmp_path / "m"),
                                    "--as-fast-as-possible", "--queue-depth", "100", "-q"])
    folder = tmp_path / "m" / "run_00000.monitor"
    assert res.exit_code == 1, res.output + repr(res.exception)
    assert [line for line in res.output.splitlines() if "rror" in line] == \
        [f"error: {folder / 'status.json'}: disk full (No space left on device)"], res.output
    assert writes["n"] >= 2 and not list(folder.glob(".status.json.tmp*")) and not (folder / ".chdl-reserve").exists()
    assert json.loads((folder / "status.json").read_text())["state"] == "running"  # its last whole version
    assert "monitor: 40 frames scored" in res.output and Recording.open(tmp_path / "m" / "run_00000").complete


@pytest.mark.parametrize("case", ["a file on the way", "a read-only folder"])
def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch, case):
    """`--out afile/` (a file) or a folder nobody may write: one line naming the folder, exit 1 (was a traceback)."""
    import errno

    from click.testing import CliRunner

    from chdl.cli import main

    if case == "a file on the way":
        out, why = tmp_path / "afile", f": {tmp_path / 'afile'} is a file, not a folder"  # ("(Not a directory)")
        out.write_text("")
    else:  # simulated: root writes into read-only folders
        out, why = tmp_path / "ro", " (Permission denied)"

        def refused(self, *a, **k):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))

        monkeypatch.setattr(Path, "mkdir", refused)
    res = CliRunner().invoke(main, ["monitor", "--camera", "sim0", "--out", f"{out}/", "--run-id", "r", "--lanes", "1",
                                    "--positions", "3", "--width", "64", "--height", "48"])
    assert res.exit_code == 1, res.output + repr(res.exception)
    assert res.output.splitlines() == [f"Error: {out / 'r.monitor'}: cannot create the monitor folder{why}"]


def test_monitor_eval_fit_scorer_and_the_operating_point_tool_check_their_outputs_first(clean_run, tmp_path, capsys):
    """An output that cannot be written is one line before any scoring (monitor-eval scored for minutes, then
    printed a traceback); monitor-fit-scorer does not replace a scorer file, which may carry a measured alert
    level, without --overwrite."""
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    r = chdl("monitor-eval", clean_run, "--out", afile / "ev", "--no-qc", "-q")
    assert r.returncode == 1 and r.stderr.strip() == f"Error: {afile / 'ev'}: cannot create the output folder: {afile} is a file, not a folder"
    assert r.stdout == ""  # nothing was scored
    scorer = tmp_path / "s.json"
    scorer.write_text("{}")
    r = chdl("monitor-fit-scorer", clean_run, "-o", scorer, "-q")
    assert r.returncode == 1 and r.stderr.strip() == (f"Error: {scorer}: already exists (use --overwrite to replace it and "
                                                      "its measured alert level, or -o another file)")
    assert scorer.read_text() == "{}"
    spec = importlib.util.spec_from_file_location("op_tool", Path(__file__).resolve().parents[2] / "tools" / "monitor_operating_point.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(clean_run), "--out", str(afile / "op.json"), "-q"]) == 1
    assert capsys.readouterr().err == f"Error: {afile / 'op.json'}: cannot write the table there ({afile} is not a folder)\n"


def test_monitor_eval_counts_only_recorded_anomalies_and_replaces_an_evaluation_only_when_told(tmp_path):
    """A run cut off (Ctrl-C, kill -9) was scored against the truth of the whole run: the anomalies after its last
    frame counted as missed. --out replaced an earlier evaluation silently, deleted other files' scores_*.png, and
    could lie inside an input."""
    import shutil

    corpus = tmp_path / "corpus"
    out = chdl("simulate", "corpus", corpus, "--sequences", "4", "--positions", "10", "--lanes-per-run", "4",
               "--width", "96", "--height", "72", "--fault-rate", "0", "--anomaly-rate", "0.25", "--seed", "5", "-q")
    assert out.returncode == 0, out.stderr
    run = corpus / "run_00000"
    anomalies = [json.loads(x) for x in (run / "truth" / "anomalies.jsonl").read_text().splitlines()]
    n = 20  # keep the first two lanes
    assert any(a["onset_frame"] < n for a in anomalies) and any(a["onset_frame"] >= n for a in anomalies)
    cut = tmp_path / "cut" / "run_00000"
    shutil.copytree(run, cut)
    (cut / "frames.jsonl").write_text("".join((run / "frames.jsonl").read_text().splitlines(keepends=True)[:n]))
    manifest = json.loads((cut / "manifest.json").read_text())
    (cut / "manifest.json").write_text(json.dumps({**manifest, "status": "incomplete", "frames": n}))
    ev = chdl("monitor-eval", cut, "--out", tmp_path / "ev", "--no-qc", "-q", "--z-on", "6", "--z-off", "3")
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    inside = [a for a in anomalies if a["onset_frame"] < n and a["visible"]]
    assert {m["events"] for m in metrics["methods"].values()} == {len(inside)}
    later = sum(a["onset_frame"] >= n for a in anomalies)
    assert f"note: {cut} ends at frame {n - 1}: {later} anomal" in ev.stdout
    # an earlier evaluation is replaced only with --overwrite; a folder of other files never
    again = chdl("monitor-eval", cut, "--out", tmp_path / "ev", "--no-qc", "-q")
    assert again.returncode == 1 and again.stderr.strip() == (f"Error: {tmp_path / 'ev'}: holds an earlier evaluation "
                                                              "(metrics.json); use --overwrite to replace it, or another --out")
    assert chdl("monitor-eval", cut, "--out", tmp_path / "ev", "--no-qc", "-q", "--overwrite").returncode == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "scores_old_thing.png").write_bytes(b"not ours")
    r = chdl("monitor-eval", cut, "--out", mine, "--no-qc", "-q", "--overwrite")
    assert r.returncode == 1 and "not empty and not a monitor-eval folder" in r.stderr
    assert (mine / "scores_old_thing.png").read_bytes() == b"not ours"
    r = chdl("monitor-eval", cut, "--out", cut / "ev", "--no-qc", "-q")
    assert r.returncode == 1 and f"{cut / 'ev'}: is inside the input {cut}" in r.stderr and not (cut / "ev").exists()
    # monitoring a replay of the cut-off run ends when it does: "finished", exit 0 (it was "failed", camera lost)
    mon = chdl("monitor", "--replay", cut, "--out", tmp_path / "m", "--as-fast-as-possible", "--queue-depth", "100", "-q")
    assert mon.returncode == 0, mon.stderr
    status = json.loads((tmp_path / "m" / "run_00000.monitor" / "status.json").read_text())
    assert status["state"] == "finished" and status["frames_captured"] == n


def test_lane_passes_too_short_to_score_are_warned_about(tmp_path):
    """Passes of 2 positions: nothing can be predicted, and the run ended "0 frames scored ... 0 events" (all clear?)."""
    mon = chdl("monitor", "--camera", "sim0", "--out", tmp_path / "m", "--lanes", "3", "--positions", "2",
               "--width", "64", "--height", "48", "--fps", "20", "-q")
    assert mon.returncode == 0, mon.stderr
    assert "monitor: 0 frames scored, 0 skipped, 6 unscored" in mon.stdout
    assert ("warning: no frame could be scored: all 6 came with too little history in their lane pass (a pass needs 3 "
            "positions or more") in mon.stderr, mon.stderr


def test_two_monitors_that_find_one_folder_free_at_once_do_not_share_it(tmp_path):
    """The monitor folder was created with exist_ok: two monitors of one run id, started at once, both passed the
    CLI's "not empty" check and wrote one events.jsonl and status.json. Here the other has just claimed it."""
    from chdl.monitor.runtime import Monitor, MonitorError, monitor_dir

    run = tmp_path / "run1"
    (monitor_dir(run) / "snapshots").mkdir(parents=True)  # the other monitor, a moment earlier
    loser = Monitor({})
    with pytest.raises(MonitorError, match=r"run1\.monitor: another monitor started writing there at the same time"):
        loser.start(run, "run1", "constant-motion", 2)
    assert not (monitor_dir(run) / "status.json").exists()
    # not the loser's to remove: chdl monitor removes mon.folder when it recorded nothing, and it removed the
    # winner's folder, scores and events with it (a verification trial: 5 times in 6)
    assert loser.folder is None


def _last_frame_model(monkeypatch, trained_max_value):
    """diffuma.training.checkpoint's loaders replaced: a 'checkpoint' of this frame size trained at
    ``trained_max_value``, whose model predicts the last frame."""
    import torch

    from diffuma.training import checkpoint as ck

    class LastFrame(torch.nn.Module):
        def forward(self, x):  # (B, T, C, H, W) -> (B, 1, C, H, W)
            return x[:, -1:]

    state = {"model_name": "diffuma", "model_config": {},
             "data": {"in_frames": 5, "channels": 1, "height": H, "width": W, "max_value": trained_max_value}}
    monkeypatch.setattr(ck, "load_checkpoint", lambda path: state)
    monkeypatch.setattr(ck, "build_model_from_checkpoint", lambda s, weights, path: (LastFrame(), weights))


def test_monitor_eval_notes_a_checkpoint_trained_at_another_max_value(clean_run, tmp_path, monkeypatch):
    """A model trained on 16-bit-scaled frames (e.g. a Mono16 dataset of 12-bit data) scoring 8-bit frames: the
    evaluation says so in its table and its metrics.json (eval and predict do too); at the same scale, no note."""
    from chdl.monitor import evaluate as ev

    model = tmp_path / "m.pt"
    model.write_bytes(b"stands for a checkpoint")
    _last_frame_model(monkeypatch, 65535)
    res = ev.evaluate([clean_run], tmp_path / "e", checkpoint=model, qc=False, progress=False, methods=[])
    note = (f"note: {model} was trained on frames scaled by max_value 65535; these frames are scaled by 255, so its "
            f"predictions (and the scores) are not the ones it learned ({clean_run})")
    assert note in res["markdown"].splitlines()
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["notes"] == [note.removeprefix("note: ")]
    _last_frame_model(monkeypatch, 255)
    res = ev.evaluate([clean_run], tmp_path / "e2", checkpoint=model, qc=False, progress=False, methods=[])
    assert "max_value" not in res["markdown"] and "notes" not in json.loads((tmp_path / "e2" / "metrics.json").read_text())


def test_monitor_warns_of_a_checkpoint_trained_at_another_max_value(clean_run, monkeypatch):
    """The live monitor learns the recording's scale at its first frame: a checkpoint trained at another one is
    announced then (above the bar) and kept for the summary's warnings."""
    from types import SimpleNamespace

    from chdl.monitor.runtime import Monitor

    said = []
    frame = SimpleNamespace(index=0, lane=0, position_index=0, file=None, status="dropped")  # (not queued)
    for trained, expected in ((65535, 1), (255, 0), (None, 0)):
        mon = Monitor({"predictor": "checkpoint", "checkpoint": "m.pt", "trained_max_value": trained},
                      announce=said.append)
        mon.offer(clean_run, frame)
        assert len(mon.warnings) == expected and mon.max_value == 255
    assert said == ["warning: m.pt was trained on frames scaled by max_value 65535; these frames are scaled by 255, "
                    "so its predictions (and the scores) are not the ones it learned"]


def test_offering_the_first_frame_imports_nothing(clean_run):
    """Monitor.offer runs in the capture's writer thread: at the first frame it imported chdl.dataset (zarr), which
    held that thread 2-10 s on a 2-core machine, filled the capture's queue and made a viky capture skip free-run
    frames (3.4 frames/s against a plain capture's 5.0). Everything it needs is imported when the Monitor is made
    (in a fresh interpreter: this one has imported it all already)."""
    code = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from types import SimpleNamespace
        from chdl.monitor.runtime import Monitor
        mon = Monitor({"predictor": "checkpoint", "checkpoint": "m.pt", "trained_max_value": 255})
        before = set(sys.modules)
        mon.offer(Path(sys.argv[1]), SimpleNamespace(index=0, lane=0, position_index=0, file=None, status="dropped"))
        print(json.dumps([mon.max_value, sorted(set(sys.modules) - before)]))
    """)
    out = subprocess.run([sys.executable, "-c", code, str(clean_run)], capture_output=True, text=True,
                         cwd=Path(__file__).parents[2], timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [255, []]


def test_a_checkpoint_predictor_leaves_autograd_as_it_found_it(tmp_path, monkeypatch):
    """CheckpointPredictor switched gradients off for the whole process: after an in-process monitor-eval every
    training step in it failed ("element 0 of tensors does not require grad")."""
    import torch

    from chdl.monitor.anomaly_score import CheckpointPredictor

    _last_frame_model(monkeypatch, 255)
    model = tmp_path / "m.pt"
    model.write_bytes(b"stands for a checkpoint")
    predictor = CheckpointPredictor(model, (H, W))
    assert torch.is_grad_enabled()
    pred, _ = predictor.predict(np.random.default_rng(0).random((5, H, W), dtype=np.float32))
    assert pred.shape == (H, W) and torch.is_grad_enabled()


def test_monitor_serve_takes_a_token_file(clean_run, tmp_path):
    """Loopback is open to every user of a shared server: a user without read access to the monitor folder read
    the live frames through it. `chdl dashboard` took a token; `monitor --serve` now does too."""
    token = tmp_path / "token"
    token.write_text("s3cret-token-of-the-line\n")
    r = chdl("monitor", "--replay", clean_run, "--out", tmp_path / "m", "--token-file", token, "-q")
    assert r.returncode == 2 and "--token-file is for --serve" in r.stderr
    r = chdl("monitor", "--replay", clean_run, "--out", tmp_path / "m", "--as-fast-as-possible", "--queue-depth", "100",
             "--serve", "--token-file", token, "-q")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/\?token=s3cret-token-of-the-line$", r.stderr, re.M), r.stderr
