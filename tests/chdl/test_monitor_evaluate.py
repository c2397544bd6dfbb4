"""monitor-eval's operating point: the scorer's hysteresis replayed on z levels, false alarms per hour."""

import math

from chdl.monitor.evaluate import FPS, operating_point, replay_alerts as _replay


def replay_alerts(rows, z_on, z_off):
    """The number of alerts raised."""
    return sum(r["new_alert"] for r in _replay(rows, z_on, z_off))


def _rows(zs, lane=0, run="r", flagged=()):
    return [{"run": run, "lane": lane, "frame": i, "z": z, "acquisition": "vibration" if i in flagged else None}
            for i, z in enumerate(zs)]


def test_replay_alerts_follows_the_scorers_hysteresis():
    rows = _rows([math.nan, 1, 7, 8, 4, 2, 7, 3.5, 9])  # on at 7, held at 8 and 4, off at 2, on at 7, held
    assert replay_alerts(rows, 6, 3) == 2
    assert replay_alerts(rows, 6, 5) == 3  # a higher off level: the 4 ends the first alert, the 9 raises a third
    assert replay_alerts(rows, 10, 5) == 0
    # a new lane pass starts with the alert off; a frame the acquisition QC flagged raises none
    assert replay_alerts(_rows([7, 4]) + _rows([4, 7], lane=1), 6, 3) == 2
    assert replay_alerts(_rows([1, 9, 1], flagged={1}), 6, 3) == 0
    assert replay_alerts(_rows([9, 9], run="a") + _rows([9], run="b"), 6, 3) == 2  # runs are separate too
    assert [r["alert"] for r in _replay(_rows([1, 7, 4, 2]), 6, 3)] == [False, True, True, False]


def test_operating_point_picks_the_lowest_level_that_stays_under_the_target():
    # 36 frames = 7.2 s at 5 fps: one false alarm is 500 per hour
    rows = _rows([1.0] * 30 + [4.5, 1.0, 5.5, 1.0, 9.0, 1.0])
    op = operating_point(rows, [4, 5, 6, 8, 10], fa_per_hour=500)
    hours = 36 / FPS / 3600
    assert math.isclose(op["clean_hours"], hours) and math.isclose(op["one_alarm_per_hour"], 1 / hours)
    assert [t["false_alarms"] for t in op["levels"]] == [3, 2, 1, 1, 0]
    assert op["chosen_z_on"] == 6 and op["levels"][0]["z_off"] == 2
    assert operating_point(rows, [4, 5], fa_per_hour=500)["chosen_z_on"] is None
    assert operating_point(rows, [4, 5, 6, 8, 10], fa_per_hour=0)["chosen_z_on"] == 10


class _Mixture:
    """Stands for a LearnedScorer: the mixture's z is the first feature, the tests' z's the last two."""
    score_median, score_sigma = 0.0, 1.0

    def nll(self, f):
        return f[0]

    def test_z(self, f):
        return f[-2:]


def test_learned_operating_point_weights_each_test_by_the_two_levels():
    from chdl.monitor.evaluate import learned_operating_point

    def rows(mix, splash, crack):
        return [{"run": "r", "lane": 0, "frame": i, "acquisition": None, "features": [m, 0, 0, 0, 0, 0, s, c]}
                for i, (m, s, c) in enumerate(zip(mix, splash, crack))]

    quiet = [1.0] * 30
    # one mixture spike of 5.5, one splash spike of 11 and one crack spike of 5.5: alone they need levels 6, 12
    # and 6, so the splash test weighs 0.5, the crack test 1, and all spikes are 5.5 in the combined z, which
    # level 6 keeps quiet
    op = learned_operating_point(rows(quiet + [5.5, 1, 1, 1, 1], quiet + [1, 1, 11, 1, 1], quiet + [1, 1, 1, 1, 5.5]),
                                 _Mixture(), [4, 5, 6, 8, 10, 12], fa_per_hour=0)
    assert (op["mixture"]["chosen_z_on"], op["tests"]["splash_area"]["chosen_z_on"], op["tests"]["crack_length"]["chosen_z_on"],
            op["test_gains"], op["chosen_z_on"]) == (6, 12, 6, [0.5, 1.0], 6)
    assert [t["false_alarms"] for t in op["levels"]] == [3, 3, 0, 0, 0, 0]
    # a splash spike above every level: no splash level, that test stays off and the others' level stands
    off = learned_operating_point(rows(quiet + [5.5], quiet + [20], quiet + [1]), _Mixture(), [4, 6, 12], fa_per_hour=0)
    assert off["test_gains"] == [None, 6.0 / 4] and off["chosen_z_on"] == off["mixture"]["chosen_z_on"] == 6


def test_each_method_s_plot_axis_names_its_own_score():
    """The frame-difference panel said "largest block z" over log10 whole-frame MSE values."""
    from chdl.monitor.evaluate import score_unit

    assert score_unit("frame-difference") == "score: log10 whole-frame MSE vs the previous frame"
    assert score_unit("constant-motion") == "score: largest block z of the error"
    assert score_unit("constant-motion+scorer:s.json") == "score: −log density of the error features"


def test_metrics_on_hand_made_rows():
    """Every number of metrics() checked on rows and truth made by hand: the detection window (onset to one frame
    after the last active frame), what is scorable (onset_t >= 2), the latency (the first alert of an anomaly),
    the one-frame tolerance of false alarms after an anomaly, the clean frames of the hours, and the AUROC's
    positives and negatives (the frames of an invisible anomaly left out, warm-up frames too)."""
    from chdl.monitor.evaluate import RunTruth, metrics

    def anomaly(frames, onset_t, visible=True):
        return {"lane": 0, "onset_frame": frames[0], "frames": frames, "onset_t": onset_t, "visible": visible}

    anomalies = [anomaly([10, 11, 12], 3),  # A: alerted at 11 (latency 1) and at 13 (one after its last frame)
                 anomaly([20, 21], 1),  # B: alerted at its onset (latency 0); too early in its pass to be scorable
                 anomaly([25], 2),  # D: alerted only the frame after it (26): detected, latency 1
                 anomaly([30], 4, visible=False),  # C: invisible, scored high; the alert at 31 is tolerated
                 anomaly([44, 45], 5)]  # E: never alerted
    truth = {"r": RunTruth(50, {i: 0 for i in range(50)}, {i: i for i in range(50)}, anomalies)}
    scores = {i: 1.0 for i in (10, 11, 12, 20, 21, 25)} | {44: 0.5, 45: 0.5, 30: 10.0, 40: 2.0, 0: math.nan, 1: math.nan}
    alerts = {11, 13, 20, 26, 31, 40}  # 40: the only false alarm
    rows = [{"run": "r", "lane": 0, "frame": i, "score": scores.get(i, 0.0), "new_alert": i in alerts}
            for i in range(50)]
    m = metrics(rows, truth)
    clean = 50 - 9  # the frames no anomaly (visible or not) is active in, warm-up included
    hours = clean / FPS / 3600
    assert m["events"] == 4 and m["event_recall"] == 3 / 4  # A, B, D of the four visible ones
    assert m["events_scorable"] == 3 and m["recall_scorable"] == 2 / 3  # A, D, E; A and D found
    assert m["latency_frames_median"] == 1.0 and m["latency_frames_max"] == 1  # latencies 1, 0, 1
    assert m["within_one_frame"] == 1.0
    assert m["false_alarms"] == 1 and math.isclose(m["clean_hours"], hours)
    assert math.isclose(m["false_alarms_per_hour"], 1 / hours)
    # 8 visible active frames; 41 clean frames less the 2 warm-up ones; C's frame neither
    assert (m["positive_frames"], m["negative_frames"]) == (8, 39)
    assert math.isclose(m["auroc"], 38 / 39)  # every positive above every negative but frame 40's 2.0


def test_offline_scoring_leaves_out_incomplete_frames(tmp_path):
    """A frame the camera delivered only partly (status "incomplete") has pixels in the recording but is no
    image of the sample: score_recording scores it no more than a dropped one (the pass resumes after the gap)."""
    import numpy as np

    from acquisition.raw import Recording, RecordingWriter
    from chdl.monitor.anomaly_score import ScorerConfig
    from chdl.monitor.evaluate import method_setup, score_recording

    manifest = {"camera": {"vendor": "test"}, "settings": {"width": 64, "height": 48, "pixel_format": "Mono8", "fps": 5},
                "plan": {"lanes": 1, "positions": 8}}
    with RecordingWriter.create(tmp_path / "run", manifest) as w:
        for i in range(8):
            pixels = np.random.default_rng(i).integers(100, 140, (48, 64), dtype=np.uint8)
            w.append(pixels, lane=0, position_index=i, position_um=60.0 * i, frame_id=i, device_timestamp_ns=None,
                     host_wall_ns=1000 + i, host_monotonic_ns=2000 + i, **({"status": "incomplete"} if i == 3 else {}))
    rec = Recording.open(tmp_path / "run")
    assert [f.status for f in rec.frames].count("incomplete") == 1
    predictor, _ = method_setup("copy-last")
    rows = score_recording(rec, predictor, ScorerConfig(), qc=False)
    assert [r["frame"] for r in rows] == [2, 6, 7]  # two frames of history before each score; 3 never seen
