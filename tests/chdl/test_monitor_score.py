"""The monitor's scorer: robust baseline, hysteresis, localisation, lane handling, predictors."""

import math

import numpy as np
import pytest

from chdl.monitor.anomaly_score import (ConstantMotion, CopyLast, FrameScorer, LaneStream, RobustBaseline,
                                        ScorerConfig, cut_front_zone, motion_valid)

H, W = 64, 96
CFG = ScorerConfig(block=8, min_history=5, z_on=6.0, z_off=3.0)


def _noise(seed, sigma=0.01):
    return np.random.default_rng(seed).normal(0.5, sigma, (H, W)).astype(np.float32)


def _with_blob(img, x0, y0, size=10, level=0.0):
    out = img.copy()
    out[y0:y0 + size, x0:x0 + size] = level
    return out


def test_robust_baseline_ignores_outliers_and_has_a_floor():
    b = RobustBaseline(window=50, sigma_floor=0.01)
    assert math.isnan(b.stats()[0])
    for v in [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 50.0, -40.0]:
        b.add(v)
    med, sigma = b.stats()
    assert abs(med - 1.0) < 0.03 and sigma < 0.2  # two wild values barely move median and MAD
    c = RobustBaseline(window=3, sigma_floor=0.5)
    for v in [5.0, 5.0, 5.0, 9.0, 9.0, 9.0]:
        c.add(v)
    assert c.stats() == (9.0, 0.5)  # only the last 3 values; the spread never below the floor


def _warm(scorer, n=12):
    """Feed noise-only frames until both baselines (block rows, frame scores) are ready."""
    valid = np.ones((H, W), bool)
    out = [scorer.score(_noise(i), _noise(1000 + i), valid) for i in range(n)]
    return valid, out


def test_scores_wait_for_the_row_baseline_and_no_alert_before_min_history():
    s = FrameScorer(CFG)
    valid, out = _warm(s, 4)
    assert all(math.isnan(r.score) and r.threshold == math.inf and not r.alert for r in out)
    _, out = _warm(s, 10)
    assert all(math.isfinite(r.score) for r in out[5:]) and not any(r.alert for r in out)


def test_alert_turns_on_above_z_on_stays_on_above_z_off_and_the_box_finds_the_blob():
    s = FrameScorer(CFG)
    valid, _ = _warm(s, 14)
    med, sigma = s.baseline.stats()
    hit = s.score(_with_blob(_noise(20), 40, 24), _noise(2020), valid)
    assert hit.alert and hit.new_alert and hit.score > hit.threshold
    x0, y0, x1, y1 = hit.box
    assert x0 <= 40 and y0 <= 24 and x1 >= 50 and y1 >= 34 and (x1 - x0) * (y1 - y0) <= 16 * 16
    # find a blob level whose score lies between the off and the on level: it keeps the alert on
    # (hysteresis) without raising a new one, and it does not raise one when the alert is off
    on, off = med + CFG.z_on * sigma, med + CFG.z_off * sigma
    lo, hi = 0.0, 0.5  # blob level: the score falls as the level nears the background (0.5); bisect
    for _ in range(40):
        mid = (lo + hi) / 2
        probe = FrameScorer(CFG)
        probe.rows, probe.baseline.values = s.rows.copy(), s.baseline.values.copy()
        r = probe.score(_with_blob(_noise(21), 40, 24, level=mid), _noise(2021), valid)
        if r.score > (on + off) / 2:
            lo = mid
        else:
            hi = mid
    assert off + 0.1 * sigma < r.score < on - 0.1 * sigma, "no blob level scores between the hysteresis levels"
    kept = s.score(_with_blob(_noise(21), 40, 24, level=mid), _noise(2021), valid)
    assert kept.alert and not kept.new_alert
    quiet = s.score(_noise(22), _noise(2022), valid)
    assert not quiet.alert and quiet.score < off
    again = s.score(_with_blob(_noise(21), 40, 24, level=mid), _noise(2021), valid)
    assert not again.alert  # the same middle frame with the alert off raises none
    n = len(s.baseline)
    s.score(_with_blob(_noise(23), 40, 24), _noise(2023), valid)
    assert len(s.baseline) == n  # an alerting frame stays out of the baseline


def test_row_baseline_makes_a_busy_row_quiet_and_a_still_row_loud():
    """A row where big errors are normal (the kerf) needs a bigger error to stand out than a still one."""
    s = FrameScorer(CFG)
    valid = np.ones((H, W), bool)
    rng = np.random.default_rng(5)
    for i in range(14):  # block row 0 changes all the time, by amounts spread over decades
        busy = _noise(i)
        busy[:8] += np.repeat(rng.choice([-1, 1], W // 8) * 10 ** rng.uniform(-2.5, -0.5, W // 8), 8)[None, :]
        s.score(busy, _noise(1000 + i), valid)
    in_busy = s.score(_with_blob(_noise(30), 40, 0, size=8, level=0.1), _noise(3030), valid)
    in_still = s.score(_with_blob(_noise(30), 40, 40, size=8, level=0.1), _noise(3030), valid)
    assert in_still.score > in_busy.score + 3


def test_invalid_region_is_not_scored_and_global_mode_dilutes_a_local_blob():
    valid = np.ones((H, W), bool)
    valid[:, 80:] = False
    block = FrameScorer(CFG)
    err = block.error_map(_with_blob(_noise(1), 84, 10), _noise(2), valid)
    assert err[:, 80:].max() == 0
    logs_hidden, ok, _ = block.blocks(err, valid)
    logs_seen, _, _ = block.blocks(block.error_map(_with_blob(_noise(1), 40, 10), _noise(2), valid), valid)
    assert logs_seen[ok].max() > logs_hidden[ok].max() + 1.5
    glob = FrameScorer(ScorerConfig(mode="global"))
    frame, pred = _with_blob(_noise(1), 40, 10), _noise(2)
    g_seen, box, _, _ = glob.raw_score(glob.error_map(frame, pred, valid), valid, frame - pred)
    assert box is None and g_seen < logs_seen[ok].max() - 1.0  # 100 of 6144 pixels: a whole-frame MSE hardly moves


def _kerf(x0, x1, width=200, height=150, rows=(70, 78)):
    """A grey scene with a dark kerf band in ``rows`` from x0 to x1."""
    img = np.random.default_rng(0).normal(0.5, 0.01, (height, width)).astype(np.float32)  # one still scene
    img[rows[0]:rows[1], x0:x1] = 0.07
    return img


def test_cut_front_zone_lies_ahead_of_a_kerf_that_ends_in_view_and_nowhere_else():
    zone = cut_front_zone(_kerf(0, 120))  # cut up to x = 120, the blade moving towards +x
    assert zone[74, 121:150].all() and zone[74, 110:120].all()  # ahead (0.16 W) and a little behind (0.08 W)
    assert not zone[74, :100].any() and not zone[74, 160:].any()
    assert zone[52:96, 130].all() and not zone[:45].any() and not zone[105:].any()  # across: 0.1 W = 20 px
    left = cut_front_zone(_kerf(80, 200))  # a kerf cut from the right: its end at x = 80 faces -x
    assert left[74, 50:80].all() and not left[74, 100:].any() and not left[74, :40].any()
    assert not cut_front_zone(_kerf(0, 200)).any()  # the kerf crosses the view: no front in it
    assert not cut_front_zone(np.full((150, 200), 0.5, np.float32)).any()  # no kerf at all
    broken = _kerf(0, 200)
    broken[70:78, 90:110] = 0.9  # a bright particle across the kerf: interrupted, not ended
    assert not cut_front_zone(broken).any()
    widened = _kerf(0, 200)
    widened[78:81, 100:] = 0.07  # a worn blade: the kerf widens from x = 100 on, it does not end there
    assert not cut_front_zone(widened).any()


def test_an_advancing_cut_front_raises_no_alert_but_an_anomaly_beside_it_does():
    """A kerf growing 4 px per frame (a cut front moving through a still view) changes every frame where
    no predictor can know it; the scorer leaves that zone out (cut_front=True, the default) and still
    finds a chip elsewhere. Without it, the front alone alerts."""
    def run(cut_front):
        s = FrameScorer(ScorerConfig(min_history=5, cut_front=cut_front))
        valid = np.ones((150, 200), bool)
        out = []
        for t in range(30):  # 15 frames of a lane cut through, then one with its front in view
            front = 200 if t < 15 else 80 + 4 * (t - 15)
            pred, frame = _kerf(0, front), _kerf(0, min(200, front + 4))
            frame += np.random.default_rng(100 + t).normal(0, 0.01, frame.shape).astype(np.float32)
            out.append(s.score(frame, pred, valid))
        chip = _with_blob(_kerf(0, 144 + 4), 40, 110, size=12, level=0.05)  # far from the front
        return out[15:], s.score(chip, _kerf(0, 144), valid)

    with_zone, chip = run(True)
    assert not any(r.alert for r in with_zone) and chip.new_alert
    x0, y0, x1, y1 = chip.box
    assert x0 <= 40 < 52 <= x1 and y0 <= 110 < 122 <= y1
    without, _ = run(False)
    assert any(r.new_alert for r in without)


def test_lane_stream_scores_from_the_third_frame_and_restarts_after_a_gap():
    stream = LaneStream(CopyLast(), FrameScorer(CFG))
    got = [stream.push(_noise(i), lane=0, position_index=i) is not None for i in range(5)]
    assert got == [False, False, True, True, True]
    assert stream.push(_noise(9), lane=1, position_index=0) is None  # a new lane starts over
    assert stream.push(_noise(10), lane=1, position_index=1) is None
    assert stream.push(_noise(11), lane=1, position_index=3) is None  # position 2 skipped: history restarts
    assert stream.push(_noise(12), lane=1, position_index=4) is None
    assert stream.push(_noise(13), lane=1, position_index=5) is not None


def test_constant_motion_predicts_a_moving_texture_and_masks_what_entered():
    rng = np.random.default_rng(3)
    import cv2

    wide = cv2.GaussianBlur(rng.random((H, W + 60)).astype(np.float32), (0, 0), 1.5)
    frames = np.stack([wide[:, 6 * t: 6 * t + W] for t in range(6)])  # the scene moves 6 px left per frame
    pred, valid = ConstantMotion(5).predict(frames[:5])
    assert not valid[:, -8:].any() and valid[:, :W - 9].all()  # 6 px entered, 2 px margin
    err_cm = np.abs(pred - frames[5])[valid].mean()
    err_copy = np.abs(CopyLast().predict(frames[:5])[0] - frames[5]).mean()
    assert err_cm < 0.2 * err_copy
    assert motion_valid((4, 4), (0.0, 0.0), margin=0).all()


def test_acquisition_faults_are_flagged_as_such_not_as_process_alerts():
    """A frame with a gain fault (illumination) and one shaken by jitter (vibration) in a simulated pass:
    the QC names them, they raise no process alert and stay out of the baselines."""
    from acquisition.simulator import DicingLaneSimulator, Fault, SimConfig
    from chdl.monitor.anomaly_score import MonitorPipeline

    sim = DicingLaneSimulator(SimConfig(seed=2, width=200, height=150, fault_rate=0.0))
    faults = {(3, 5): Fault("gain", 1.0, phase=1.0), (4, 6): Fault("jitter", 1.0, angle=1.2)}
    pipe = MonitorPipeline(ConstantMotion(5), 255.0, ScorerConfig(min_history=5))
    seen = {}
    for lane in range(5):
        for t in range(10):
            px = sim.render(lane, t, fault=faults.get((lane, t))).pixels
            r = pipe.push(lane * 10 + t, lane, t, px)
            if r is not None:
                seen[(lane, t)] = r
    assert seen[(3, 5)].acquisition == "illumination" and seen[(4, 6)].acquisition == "vibration"
    assert not seen[(3, 5)].new_alert and not seen[(4, 6)].new_alert
    assert [k for k, r in seen.items() if r.acquisition] == [(3, 5), (4, 6)]


def test_the_monitor_scales_a_recording_by_its_bit_depth_as_curate_does():
    from chdl.monitor.runtime import run_max_value

    mono16 = {"settings": {"pixel_format": "Mono16"}}
    assert run_max_value({"settings": {"pixel_format": "Mono16", "bit_depth": 12}}) == 4095  # not 65535
    assert run_max_value({"settings": {"pixel_format": "Mono8"}}) == 255
    assert run_max_value({"settings": {"pixel_format": "Mono12"}}) == 4095
    assert run_max_value(mono16) == 65535  # a Mono16 run that does not say: the full range (curate's rule)


def test_the_first_pass_only_calibrates_the_acquisition_qc():
    """At 800x600 with CHDL's 100 um step the causal QC, against bare floors (no run spread yet), flagged 3 of the
    first pass's 10 clean frames as vibration; the first pass now only calibrates, and the next one, judged
    against the run's spread, raises no flag either."""
    from acquisition.simulator import DicingLaneSimulator, SimConfig
    from chdl.monitor.acquisition_qc import AcquisitionQC

    sim = DicingLaneSimulator(SimConfig(seed=0, width=800, height=600, fault_rate=0.0))
    qc = AcquisitionQC(255.0)
    flags = [(lane, p) for lane in range(2) for p in range(10)
             if qc.check(sim.render(lane, p, p * 100.0).pixels, lane, p) is not None]
    assert flags == [] and len(qc.done_lanes) == 1


def test_a_faulty_first_frame_of_a_pass_is_flagged_late_and_is_no_reference():
    """The first frames of a pass are judged together once the third has come (as curate judges a sequence).
    Judged on arrival, a defocused first frame had nothing to be compared with and was never flagged, and as a
    reference it made clean frames after it look faulty (frames 62 and 63 of samples/sim-200x150)."""
    from acquisition.simulator import DicingLaneSimulator, Fault, SimConfig
    from chdl.monitor.anomaly_score import MonitorPipeline

    sim = DicingLaneSimulator(SimConfig(seed=2, width=200, height=150, fault_rate=0.0))
    faults = {(2, 0): Fault("defocus", 0.7), (3, 1): Fault("gain", 1.0, phase=1.0)}
    pipe = MonitorPipeline(ConstantMotion(5), 255.0, ScorerConfig(min_history=5))
    flagged, late = [], []
    for lane in range(4):
        for t in range(10):
            r = pipe.push(1000 + lane * 10 + t, lane, t, sim.render(lane, t, fault=faults.get((lane, t))).pixels)
            if r is not None:
                flagged += [(lane, t)] if r.acquisition else []
                late += [(e.frame, e.lane, e.position, e.acquisition, r.position) for e in r.earlier]
                assert all(e.pixels.shape == (150, 200) and e.pixels.max() <= 1.0 for e in r.earlier)
    # reported with the pass's next scored frame, by frame index; nothing else flagged. A flagged first frame leaves
    # the history with those before it: with fewer than two predecessors left, the next scored frame is one later
    # (position 3 after a flagged position 0, 4 after a flagged position 1)
    assert late == [(1020, 2, 0, "vibration", 3), (1031, 3, 1, "illumination", 4)]
    assert flagged == []


@pytest.mark.parametrize("fault", ["jitter", "gain"])
def test_the_frames_after_an_acquisition_fault_are_not_predicted_from_it(fault):
    """The frame after a flagged one was predicted from the faulty frame as it was: on samples/sim-200x150 each of 6
    mid-pass acquisition faults was followed by a false process alert. The flagged frame now enters the history as
    its prediction, and the next frame (its prediction still holds the faulty entering strip) cannot alert."""
    from acquisition.simulator import DicingLaneSimulator, Fault, SimConfig

    sim = DicingLaneSimulator(SimConfig(seed=2, width=200, height=150, fault_rate=0.0))
    bad = {"jitter": Fault("jitter", 1.0, angle=1.2), "gain": Fault("gain", 1.0, phase=1.0)}[fault]
    z = {}
    for flagged in (False, True):  # False: what the stream did before (the flag was not passed on)
        stream = LaneStream(ConstantMotion(5), FrameScorer(ScorerConfig(min_history=5)))
        for lane in range(3):
            for t in range(10):
                px = sim.render(lane, t, fault=bad if (lane, t) == (2, 5) else None).pixels.astype(np.float32) / 255
                out = stream.push(px, lane, t, learn=(lane, t) != (2, 5), flagged=flagged and (lane, t) == (2, 5))
                if lane == 2 and out is not None:
                    z[flagged, t] = out[1].z
                    assert stream.quarantined == (flagged and t == 6)
    assert z[False, 5] > 5 and z[True, 5] == z[False, 5]  # the faulty frame itself scores high either way
    assert z[False, 6] > 5 and z[True, 6] < 3.5  # the next frame: predicted from the prediction, not the fault
    if fault == "jitter":
        assert z[False, 7] > 5 and z[True, 7] < 3.5  # (constant motion's step is measured on the frame before too)


def test_a_frame_predicted_from_a_flagged_one_cannot_alert():
    stream = LaneStream(CopyLast(), FrameScorer(ScorerConfig(min_history=2, z_on=0.5, z_off=0.25)))
    for i in range(8):
        stream.push(_noise(i) * 0.01, lane=0, position_index=i)
    stream.push(_noise(8), lane=0, position_index=8, learn=False, flagged=True)  # a flagged, very different frame
    pred, s = stream.push(_noise(9), lane=0, position_index=9)
    assert stream.quarantined and s.z > 0.5 and not s.new_alert
    stream.push(_noise(10) * 0.01, lane=0, position_index=10, forget=[9])  # a late flag: 9 leaves the history
    assert stream.quarantined and [p for p, _ in stream.history] == [10]


def test_a_frame_without_an_image_is_an_acquisition_flag_and_no_reference():
    """A stream gone black (lens cap, lamp off) raised nothing: its frames agree with each other. Each is flagged
    "no image" on arrival; the frames after it are compared with each other again, not with it."""
    from acquisition.simulator import DicingLaneSimulator, SimConfig
    from chdl.monitor.acquisition_qc import AcquisitionQC

    sim = DicingLaneSimulator(SimConfig(seed=0, width=200, height=150, fault_rate=0.0))
    qc = AcquisitionQC(255.0)
    black = np.zeros((150, 200), np.uint8)
    flags = []
    for lane in range(3):
        for p in range(10):
            frame = black if (lane == 1 and p >= 6) or (lane == 2 and p == 4) else sim.render(lane, p).pixels
            flags.append(qc.check(frame, lane, p))
    assert [i for i, f in enumerate(flags) if f] == [16, 17, 18, 19, 24] and set(filter(None, flags)) == {"no image"}
    assert qc.frames and not any(np.array_equal(f, black) for f in qc.frames)


def test_the_spread_is_normal_consistent():
    """sigma = 1.4826 x MAD (the spread of a normal distribution): the z_on / z_off operating points were measured on
    it, so a plain MAD would move every alert level by a factor of 1.48."""
    from chdl.monitor.anomaly_score import robust_stats

    assert robust_stats(np.array([1.0, 2.0, 3.0, 4.0, 10.0]), 0.0) == (3.0, 1.4826 * 1.0)  # |v - 3|: 2 1 0 1 7
    assert robust_stats(np.array([1.0, 2.0, 3.0, 4.0, 10.0]), 2.0) == (3.0, 2.0)  # the floor


def test_a_new_lane_pass_starts_with_the_alert_off_and_flagged_frames_can_end_an_alert():
    s = FrameScorer(CFG)
    valid, _ = _warm(s, 14)
    assert s.score(_with_blob(_noise(20), 40, 24), _noise(2020), valid).alert
    s.new_pass()  # an alert still on at the end of one lane does not carry into the next
    assert s.alert is False
    first = s.score(_with_blob(_noise(21), 40, 24), _noise(2021), valid)
    assert first.alert and first.new_alert  # an anomaly at the start of the next lane is a new event
    # a frame the acquisition QC flagged (learn=False) neither raises an alert nor holds one the score no longer bears
    kept = s.score(_with_blob(_noise(22), 40, 24), _noise(2022), valid, learn=False)
    assert kept.alert and not kept.new_alert
    ended = s.score(_noise(23), _noise(2023), valid, learn=False)
    assert not ended.alert
    assert not s.score(_with_blob(_noise(24), 40, 24), _noise(2024), valid, learn=False).alert
