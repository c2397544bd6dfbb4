"""Simulated process anomalies: drawn by seed, rendered where their truth says, labelled on disk."""

import json

import numpy as np
import pytest
from acq_helpers import chdl

from acquisition.process_anomalies import ANOMALY_KINDS, VISIBILITY_FLOOR, AnomalyLog, ProcessAnomaly
from acquisition.simulator import DicingLaneSimulator, SimConfig, load_truth

SMALL = dict(width=200, height=150, fault_rate=0.0)


def _pass(sim, lane, n=12):
    return [sim.render(lane, t) for t in range(n)]


def test_anomalies_are_deterministic_and_rate_zero_changes_nothing():
    a = _pass(DicingLaneSimulator(SimConfig(seed=4, anomaly_rate=0.3, **SMALL)), 1)
    b = _pass(DicingLaneSimulator(SimConfig(seed=4, anomaly_rate=0.3, **SMALL)), 1)
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a, b))
    assert [[(p.kind, p.onset, box) for p, box in x.anomalies] for x in a] == \
        [[(p.kind, p.onset, box) for p, box in x.anomalies] for x in b]
    assert any(x.anomalies for x in a)
    plain = _pass(DicingLaneSimulator(SimConfig(seed=4, **SMALL)), 1)
    off = _pass(DicingLaneSimulator(SimConfig(seed=4, anomaly_rate=0.0, anomaly_kinds=("crack",), **SMALL)), 1)
    assert all(np.array_equal(x.pixels, y.pixels) and not y.anomalies for x, y in zip(plain, off))


def test_draws_follow_the_rate_and_kinds():
    from acquisition.process_anomalies import draw_anomaly

    drawn = [draw_anomaly((2,), lane, t, 0.1, ANOMALY_KINDS, 0.0, 1200.0) for lane in range(300) for t in range(10)]
    hit = [d for d in drawn if d is not None]
    assert 0.07 < len(hit) / len(drawn) < 0.11  # t = 0 never begins one: 9 of 10 frames can
    assert {d.kind for d in hit} == set(ANOMALY_KINDS) and all(d.onset >= 1 for d in hit)
    assert all(0.1 <= d.magnitude <= 1 for d in hit)
    assert 0.1 < np.mean([not d.visible for d in hit]) < 0.35  # uniform in [0.1, 1]: ~22 % below the floor


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_each_kind_appears_at_its_onset_inside_its_box(kind, monkeypatch):
    """A single anomaly, forced into lane 0 at t = 4: frames before are untouched, the onset frame differs
    from the anomaly-free render only inside the labelled box, and the label says what was drawn."""
    import acquisition.process_anomalies as pa

    forced = ProcessAnomaly(kind, 0, 4, 3, 0.8, 4 * 60.0 + 150.0, 1.0, 99)
    monkeypatch.setattr(pa, "draw_anomaly", lambda seed, lane, t, *a: forced if (lane, t) == (0, 4) else None)
    cfg = dict(seed=1, noise=False, **SMALL)
    with_a = _pass(DicingLaneSimulator(SimConfig(anomaly_rate=0.5, **cfg)), 0, 8)
    without = _pass(DicingLaneSimulator(SimConfig(**cfg)), 0, 8)
    for t in range(4):
        assert np.array_equal(with_a[t].pixels, without[t].pixels) and not with_a[t].anomalies
    (a, box), = with_a[4].anomalies
    assert a == forced and box is not None
    diff = np.abs(with_a[4].pixels.astype(int) - without[4].pixels.astype(int))
    x0, y0, x1, y1 = box
    inside = diff[y0:y1, x0:x1]
    assert inside.max() >= 20, f"{kind} at magnitude 0.8 barely changes its box ({inside.max()} levels)"
    outside = diff.copy()
    outside[y0:y1, x0:x1] = 0
    assert outside.max() <= 2, f"{kind} changed pixels outside its labelled box {box}"
    # active for its extent (3 frames), boxes moving left with the stage (60 um = 10 px per frame)
    assert [bool(r.anomalies) for r in with_a[4:8]] == [True, True, True, False]
    assert with_a[5].anomalies[0][1][0] < x0
    log = AnomalyLog()
    for i, r in enumerate(with_a):
        log.add(100 + i, r.anomalies)
    (rec,) = log.records()
    assert rec["onset_frame"] == 104 and rec["frames"] == [104, 105, 106] and rec["boxes"][0] == box
    assert rec["kind"] == kind and rec["visible"] == (0.8 >= VISIBILITY_FLOOR) and rec["extent"] == 3


def test_corpus_and_sim_camera_write_the_same_anomaly_truth(tmp_path):
    out = chdl("simulate", "corpus", tmp_path / "corpus", "--sequences", "6", "--positions", "8", "--lanes-per-run", "6",
               "--width", "96", "--height", "72", "--fault-rate", "0", "--anomaly-rate", "0.3", "--seed", "2", "-q")
    assert out.returncode == 0, out.stderr
    assert "process anomalies" in out.stdout
    run = tmp_path / "corpus" / "run_00000"
    truth = load_truth(run)
    assert truth.anomalies and all(a["frames"][0] == a["onset_frame"] for a in truth.anomalies)
    assert all(truth.anomalies[i]["anomaly"] == i for i in range(len(truth.anomalies)))
    # the same camera through chdl capture, then truth re-derived from the recording: the same anomalies
    (tmp_path / "cams.yaml").write_text("cameras:\n  simA: {backend: sim, index: 20000, seed: 20000, fault_rate: 0.0, "
                                        "anomaly_rate: 0.3}\n")
    cap = chdl("capture", "--camera", "simA", "--camera-config", tmp_path / "cams.yaml", "--out", tmp_path / "raw",
               "--run-id", "r", "--lanes", "6", "--positions", "8", "--step-um", "60", "--width", "96", "--height", "72",
               "--fps", "200", "-q")  # (the sim camera delivers at most fps frames a second)
    assert cap.returncode == 0, cap.stderr
    tr = chdl("simulate", "truth", tmp_path / "raw" / "r", "-q")
    assert tr.returncode == 0, tr.stderr
    assert load_truth(tmp_path / "raw" / "r").anomalies == truth.anomalies
    lines = (run / "truth" / "anomalies.jsonl").read_text().splitlines()
    assert json.loads(lines[0]).keys() >= {"kind", "lane", "onset_frame", "extent", "frames", "boxes", "magnitude",
                                           "visible"}
