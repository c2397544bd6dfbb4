"""QC scores, flag decisions and reconstruction on synthetic sequences (pure functions, no I/O)."""

import numpy as np
import pytest

from curation import qc
from curation.config import CurateConfig
from curation.reconstruct import reconstruct
from curation.sequence import curate_sequence
from curation.synthetic import SynthSpec, make_sequence
from chdl.dataset import (FLAG_ILLUMINATION, FLAG_MISSING, FLAG_RECONSTRUCTED, FLAG_VIBRATION, RECONSTRUCTION_MASK,
                          reconstruction_method)

SPEC = SynthSpec(height=120, width=160, step_px=8.0)
ALL = np.ones(10, bool)
Z_SEQ = CurateConfig().qc.z_sequence  # the pipeline's default: every flag test runs as `chdl curate` does


def _baseline(seeds=range(6)) -> qc.Baseline:
    return qc.calibrate([qc.measure(make_sequence(SPEC, s)[0], ALL) for s in seeds])


@pytest.fixture(scope="module")
def baseline():
    return _baseline()


@pytest.fixture(scope="module")
def thr(baseline):
    return qc.thresholds(CurateConfig().qc.floors, CurateConfig().qc.z, baseline)


def test_measure_finds_the_stage_step():
    frames, _ = make_sequence(SPEC, 1)
    q = qc.SequenceQC(frames, ALL)
    # content moves left by the step each frame
    assert q.step[0] == pytest.approx(-SPEC.step_px, abs=0.3) and abs(q.step[1]) < 0.3
    assert np.nanmax(q.scores()[:, qc.I_MISREG]) < 1.5


def test_sequence_thresholds_follow_the_sequences_own_spread():
    thr = np.array([0.08, 1.0, 0.035, 0.1, 0.1, 0.045])
    scores = np.zeros((10, 6), np.float32)
    scores[:, qc.I_MISREG] = [0.5, 2.0, 1.0, 3.0, 1.5, 2.5, 0.8, 1.2, 2.2, 1.8]
    out = qc.sequence_thresholds(scores, thr, 4.0)
    # the 0.3 quantile of the ten distances (1.11 px), over a 2-D Gaussian's 0.3 quantile of its sigma (0.8446)
    assert out[qc.I_MISREG] == pytest.approx(4.0 * np.quantile(scores[:, qc.I_MISREG], 0.3) / 0.84460, rel=1e-5)
    assert np.array_equal(np.delete(out, qc.I_MISREG), np.delete(thr, qc.I_MISREG))  # no spread: the run's stand
    assert np.array_equal(qc.sequence_thresholds(scores, thr, 0.0), thr)
    scores[4:, qc.I_MISREG] = np.nan  # fewer than 5 values: no spread to trust
    assert qc.sequence_thresholds(scores, thr, 4.0)[qc.I_MISREG] == 1.0
    # per frame: the misregistration threshold is END_MISREG x wider at the first and last scored frames
    scores[:, qc.I_MISREG] = 0.1
    scores[0] = np.nan  # frame 0 missing: frame 1 is the first scored
    per_frame = qc.frame_thresholds(scores, thr, 4.0)
    assert per_frame.shape == (10, 6) and np.array_equal(per_frame[5], thr)
    assert per_frame[1, qc.I_MISREG] == per_frame[9, qc.I_MISREG] == 1.0 * qc.END_MISREG
    assert np.array_equal(np.delete(per_frame[1], qc.I_MISREG), np.delete(thr, qc.I_MISREG))


def test_a_sequence_shaking_throughout_is_judged_against_its_own_spread(baseline, thr):
    # a hand-held camera: every frame 1.5-2.5 px off the smooth path, in a run whose other sequences are steady
    frames, _ = make_sequence(SPEC, 31, {t: ("jitter", 1.5 + (t % 3) * 0.5) for t in range(10)})
    _, vib_run, _ = qc.curate_flags(frames, ALL, baseline, thr, None, 0.0)
    _, vib, ill = qc.curate_flags(frames, ALL, baseline, thr, None, Z_SEQ)
    assert vib_run.sum() >= 3, vib_run  # against the run alone, the shaking is flagged frame by frame
    assert not (vib | ill).any(), np.flatnonzero(vib | ill)
    # while one jerk in a steady sequence stands out of that sequence's own spread
    frames, _ = make_sequence(SPEC, 31, {6: ("jitter", 2.0)})
    _, vib, ill = qc.curate_flags(frames, ALL, baseline, thr, None, Z_SEQ)
    assert list(np.flatnonzero(vib | ill)) == [6]


def test_clean_sequences_with_a_growing_kerf_are_not_flagged(baseline, thr):
    flagged = 0
    for seed in range(10, 20):  # not the calibration seeds
        frames, _ = make_sequence(SPEC, seed)
        _, vib, ill = qc.curate_flags(frames, ALL, baseline, thr, None, Z_SEQ)
        flagged += int(vib.sum() + ill.sum())
    assert flagged == 0  # of 100 frames, with the kerf widening 0.6 px every frame


@pytest.mark.parametrize("spec", [
    SynthSpec(height=120, width=160, step_px=1.0, accel_px=1.6),  # the step grows from 1 to 15 px
    SynthSpec(height=120, width=160, step_px=14.0, accel_px=-1.4),  # a stage slowing to a stop
    SynthSpec(height=120, width=160, step_px=8.0, mover_px=6.0),  # an object (a ninth of the view) crossing it
    SynthSpec(height=120, width=160, step_px=0.0, mover_px=-5.0),  # static camera, moving object
], ids=["accelerating", "decelerating", "moving-object", "static-moving-object"])
def test_a_clean_sequence_with_an_accelerating_stage_or_a_moving_object_raises_no_flag(baseline, thr, spec):
    for seed in (21, 22, 23):
        frames, _ = make_sequence(spec, seed)
        s, vib, ill = qc.curate_flags(frames, ALL, baseline, thr, None, Z_SEQ)
        assert not (vib | ill).any(), f"seed {seed}: flagged {np.flatnonzero(vib | ill)}, misreg {s[:, qc.I_MISREG]}"
        assert np.nanmax(s[:, qc.I_MISREG]) < 0.75  # the floor is 1.0 px


def test_a_jerk_on_an_accelerating_stage_is_still_flagged(baseline, thr):
    spec = SynthSpec(height=120, width=160, step_px=1.0, accel_px=1.6)
    for t in (0, 5, 9):
        frames, _ = make_sequence(spec, 24, {t: ("jitter", 2.0)})
        _, vib, ill = qc.curate_flags(frames, ALL, baseline, thr, None, Z_SEQ)
        assert list(np.flatnonzero(vib | ill)) == [t] and vib[t]


@pytest.mark.parametrize("kind,mag,cause", [
    ("blur", 1.5, "vibration"), ("motion", 7.0, "vibration"), ("jitter", 4.0, "vibration"),
    ("gain", 0.8, "illumination"), ("offset", 0.1, "illumination"), ("shading", 0.4, "illumination"),
])
@pytest.mark.parametrize("t", [0, 4, 9])
def test_each_fault_is_flagged_with_its_cause(baseline, thr, kind, mag, cause, t):
    frames, _ = make_sequence(SPEC, 3, {t: (kind, mag)})
    _, vib, ill = qc.curate_flags(frames, ALL, baseline, thr, None, Z_SEQ)
    got = vib if cause == "vibration" else ill
    other = ill if cause == "vibration" else vib
    assert got[t], f"{kind} at t={t} not flagged as {cause}"
    assert not other[t], f"{kind} at t={t} also flagged as the other cause"
    assert (vib | ill).sum() == 1, f"other frames flagged: {np.flatnonzero(vib | ill)}"


def test_sharpness_ignores_gain_and_brightness_ignores_blur():
    frames, _ = make_sequence(SPEC, 2, {5: ("gain", 0.7)})
    s = qc.measure(frames, ALL)
    assert abs(s[5, qc.I_SHARP]) < 0.05 and s[5, qc.I_BRIGHT] < -0.2
    frames, _ = make_sequence(SPEC, 2, {5: ("blur", 2.0)})
    s = qc.measure(frames, ALL)
    assert s[5, qc.I_SHARP] < -0.3 and abs(s[5, qc.I_BRIGHT]) < 0.02


def test_missing_frames_get_no_scores_and_do_not_disturb_the_rest(baseline, thr):
    frames, _ = make_sequence(SPEC, 4)
    avail = ALL.copy()
    avail[[2, 7]] = False
    frames[[2, 7]] = 0
    s = qc.measure(frames, avail)
    assert np.isnan(s[[2, 7]]).all() and np.isfinite(s[avail]).all()
    vib, ill = qc.decide(s, baseline, thr)
    assert not (vib | ill)[avail].any()


@pytest.mark.parametrize("faulty", [[3, 4, 6], [4, 6, 7], [0, 1, 2]])
def test_barring_flagged_references_clears_good_frames_between_faults(baseline, thr, faulty):
    """With several faults close together, a good frame's nearest references are mostly bad and a
    single scoring pass flags it too; barring the flagged frames as references fixes that."""
    mixed = faulty == [0, 1, 2]
    kinds = [("gain", 0.8), ("blur", 2.0), ("jitter", 4.0)] if mixed else [("gain", 0.8)] * 3
    frames, _ = make_sequence(SPEC, 8, dict(zip(faulty, kinds)))
    single_pass = qc.decide(qc.measure(frames, ALL), baseline, thr)
    _, vib, ill = qc.curate_flags(frames, ALL, baseline, thr, None, Z_SEQ)
    assert list(np.flatnonzero(vib | ill)) == faulty
    if not mixed:
        assert (single_pass[0] | single_pass[1]).sum() > len(faulty)


def _lit(frames: np.ndarray, ts, gain: float) -> np.ndarray:
    """``frames`` with frames ``ts`` multiplied by ``gain`` (a change of light or of exposure)."""
    out = frames.astype(np.float32)
    out[list(ts)] *= gain
    return np.clip(np.rint(out), 0, 255).astype(frames.dtype)


@pytest.mark.parametrize("ts", [[0, 1], [8, 9]])
def test_a_light_level_that_starts_or_ends_the_sequence_is_no_fault(baseline, thr, ts):
    """The first (or last) two frames sharing one level are the scene's light changing, not two bad
    exposures; the frame just past the step (half the step by the median) is not flagged either."""
    frames, _ = make_sequence(SPEC, 6)
    single_pass = qc.decide(qc.measure(_lit(frames, ts, 1.08), ALL), baseline, thr)
    assert (single_pass[0] | single_pass[1])[ts].all()  # plain medians see two bad exposures
    _, vib, ill = qc.curate_flags(_lit(frames, ts, 1.08), ALL, baseline, thr, None, Z_SEQ)
    assert not (vib | ill).any(), np.flatnonzero(vib | ill)


@pytest.mark.parametrize("ts", [[0], [9], [4, 5]])
def test_exposure_faults_are_flagged_alone_or_together_inside(baseline, thr, ts):
    frames, _ = make_sequence(SPEC, 6)
    _, vib, ill = qc.curate_flags(_lit(frames, ts, 1.08), ALL, baseline, thr, None, Z_SEQ)
    assert list(np.flatnonzero(vib | ill)) == ts and ill[ts].all()


class _StubQC:
    """flag_sequence's view of a SequenceQC: prepared scores per barred set."""

    def __init__(self, passes: dict):
        self.avail = list(range(10))
        self.passes = passes

    def scores(self, barred=frozenset()):
        return self.passes[frozenset(barred)].copy()


def test_barring_rescores_photometry_but_not_motion_of_frames_that_fitted():
    """A frame the first pass found in place keeps its misregistration when a flagged neighbour is
    barred (fewer references and a poorer motion fit must not accuse it), while its
    photometric scores are measured again (a neighbour with the same exposure fault hid its own)."""
    base = qc.Baseline([0.0] * 6, [0.01] * 6)
    thr = np.array([0.08, 1.0, 0.035, 0.1, 0.1, 0.045])
    first = np.zeros((10, 6), np.float32)
    first[2, qc.I_BRIGHT] = 0.3  # a bad exposure
    first[6, qc.I_MISREG] = 0.5
    second = first.copy()
    second[6, qc.I_MISREG] = 3.0  # without frame 2 as a reference frame 6 looks misplaced ...
    second[8, qc.I_BRIGHT] = 0.2  # ... and frame 8, which shared frame 2's exposure, shows its own
    third = second.copy()
    stub = _StubQC({frozenset(): first, frozenset({2}): second, frozenset({2, 8}): third})
    scores, vib, ill = qc.flag_sequence(stub, base, thr, 0.0)
    assert list(np.flatnonzero(vib | ill)) == [2, 8] and not vib.any()
    assert scores[6, qc.I_MISREG] == 0.5
    assert scores[8, qc.I_BRIGHT] == pytest.approx(0.2)
    # the flags are what the stored scores say (the report's "why")
    assert np.array_equal(ill, qc.decide(scores, base, qc.frame_thresholds(scores, thr, 0.0))[1])


def test_forget_makes_a_used_sequence_score_as_a_fresh_one(baseline, thr):
    frames, _ = make_sequence(SPEC, 9, {3: ("jitter", 3.0), 7: ("gain", 0.8)})
    fresh = qc.flag_sequence(qc.SequenceQC(frames, ALL), baseline, thr, Z_SEQ)
    q = qc.SequenceQC(frames, ALL)
    q.scores(frozenset({0, 1, 2, 4, 5}))  # other barrings: pairs a fresh scoring would not measure
    assert len(q._disp) > 9
    q.forget()
    assert sorted(q._disp) == [(t, t + 1) for t in range(9)]
    for a, b in zip(qc.flag_sequence(q, baseline, thr, Z_SEQ), fresh):
        assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("bad", [[4], [0], [9], [3, 4], [2, 6]])
def test_motion_compensated_reconstruction_beats_both_references(bad):
    from curation_helpers import psnr

    frames, clean = make_sequence(SPEC, 5, {b: ("blur", 2.0) for b in bad})
    good = ALL.copy()
    good[bad] = False
    out = {m: reconstruct(frames, good, method=m) for m in ("motion", "average", "nearest")}
    assert out["motion"][1] == bad
    for m in out:  # good frames are untouched
        np.testing.assert_array_equal(out[m][0][good], frames[good])
    for b in bad:
        p = {m: psnr(o[0][b], clean[b]) for m, o in out.items()}
        assert p["motion"] > p["average"] + 3 and p["motion"] > p["nearest"] + 3, p
        assert p["motion"] > 25, p


def test_motion_extrapolation_at_the_ends_carries_the_step_on_and_weighs_by_inverse_distance():
    """At a sequence end, "motion" takes the per-frame displacement d(n1 -> n2) / (n2 - n1) from the two
    nearest good frames, warps both to the end frame's position and blends them with weights 1/|t - n|
    (module docstring). Content moves by an exact (-8, -1) px per frame and the light rises by K grey levels
    per frame, which no warp follows: the texture is rebuilt pixel for pixel, the light level is the
    inverse-distance blend of the neighbours' (good frames 3 and 8 only: frame 9 weighs them 1 : 1/6, frame 0
    1/3 : 1/8). Equal weights, the nearer frame alone or 1/d^2 miss that level by 3 grey levels or more."""
    import cv2

    rng = np.random.default_rng(0)
    canvas = cv2.GaussianBlur(rng.random((120 + 10, 160 + 80), np.float32), (0, 0), 2.0)
    canvas = (canvas - canvas.min()) / np.ptp(canvas)
    K = 6.0
    texture = np.stack([20 + 160 * canvas[t:t + 120, 8 * t:8 * t + 160] for t in range(10)])
    frames = np.rint(texture + K * np.arange(10, dtype=np.float32)[:, None, None]).astype(np.uint8)
    good = np.zeros(10, bool)
    good[[3, 8]] = True
    out, done = reconstruct(frames, good, method="motion")
    assert done == [0, 1, 2, 4, 5, 6, 7, 9]
    # t, (n1, n2), the pixels both warped neighbours cover (n2 is carried 6 resp. 8 frames), 2 px in from the edges
    for t, (n1, n2), both in ((9, (8, 3), np.s_[2:112, 2:110]), (0, (3, 8), np.s_[10:-2, 66:-2])):
        w1, w2 = 1 / abs(t - n1), 1 / abs(t - n2)
        light = K * (w1 * n1 + w2 * n2) / (w1 + w2)
        err = out[t][both].astype(np.float32) - (texture[t][both] + light)
        assert abs(err.mean()) < 1.0 and np.abs(err).mean() < 1.0, (t, err.mean(), np.abs(err).mean())


def test_reconstruction_needs_two_good_frames():
    frames, _ = make_sequence(SPEC, 6)
    good = np.zeros(10, bool)
    good[3] = True
    with pytest.raises(ValueError, match="1 good frame"):
        reconstruct(frames, good)


def test_curate_sequence_flags_reconstructs_and_excludes(baseline, thr):
    frames, clean = make_sequence(SPEC, 7, {3: ("gain", 0.75), 8: ("jitter", 5.0)})
    avail = ALL.copy()
    avail[5] = False
    r = curate_sequence(frames, avail, baseline, thr, max_bad_frames=3, max_value=255)
    bits = r.flags & ~np.uint8(RECONSTRUCTION_MASK)
    assert bits[3] == FLAG_ILLUMINATION | FLAG_RECONSTRUCTED
    assert bits[8] == FLAG_VIBRATION | FLAG_RECONSTRUCTED
    assert bits[5] == FLAG_MISSING | FLAG_RECONSTRUCTED
    # each reconstructed frame records the method the self-check chose for it, and only those do
    chosen: dict[int, str] = {}
    zeroed = frames.copy()
    zeroed[5] = 0
    reconstruct(zeroed, (r.flags == 0), 255.0, chosen=chosen, check_frames=qc.SequenceQC(frames, avail, 255).sharp_frames())
    assert {t: reconstruction_method(r.flags[t]) for t in range(len(r.flags))} == {
        t: chosen.get(t) for t in range(len(r.flags))}
    assert set(chosen) == {3, 5, 8}
    assert not r.excluded and r.n_bad == 3
    assert [t for t, _ in r.originals] == [3, 8]  # the missing frame had no original
    np.testing.assert_array_equal(r.originals[0][1], frames[3])
    assert r.frames[5].any()  # reconstructed, not zero
    # the same sequence with a stricter limit is excluded and stored as recorded (zeros where missing)
    r2 = curate_sequence(frames, avail, baseline, thr, max_bad_frames=2, max_value=255)
    assert r2.excluded and not (r2.flags & FLAG_RECONSTRUCTED).any() and r2.originals == []
    np.testing.assert_array_equal(r2.frames[avail], frames[avail])
    assert not r2.frames[5].any()


def test_uint16_frames_are_scored_like_uint8(baseline, thr):
    spec16 = SynthSpec(height=120, width=160, step_px=8.0, max_value=4095)
    frames, _ = make_sequence(spec16, 3, {4: ("blur", 1.5)})
    assert frames.dtype == np.uint16
    _, vib, ill = qc.curate_flags(frames, ALL, baseline, thr, 4095, Z_SEQ)
    assert vib[4] and vib.sum() == 1 and not ill.any()
    out, done = reconstruct(frames, ~vib, 4095)
    assert done == [4] and out.dtype == np.uint16 and out.max() <= 4095


def test_scores_do_not_depend_on_memory_alignment():
    """Resumed and uninterrupted runs must write bit-identical scores: no alignment-dependent SIMD."""
    frames, _ = make_sequence(SPEC, 9, {4: ("blur", 1.5)})
    ref = qc.measure(frames, ALL)
    for off in (1, 3, 8):
        buf = np.zeros(frames.size + off, np.uint8)
        moved = buf[off:].reshape(frames.shape)
        moved[:] = frames
        np.testing.assert_array_equal(qc.measure(moved, ALL), ref)


@pytest.mark.parametrize("spec", [
    SynthSpec(height=120, width=160, step_px=0.0, mover_px=-5.0, noise=4.0),  # static camera, moving object
    SynthSpec(height=120, width=160, step_px=8.0),  # moving stage
    SynthSpec(height=120, width=160, step_px=1.0, accel_px=1.6),  # accelerating stage
], ids=["static", "moving", "accelerating"])
@pytest.mark.parametrize("bad", [[0], [4], [9], [3, 4]])
def test_reconstruction_is_never_worse_than_the_neighbour_average(spec, bad):
    """The self-check picks, per frame, a method at least as good as the naive ones: on a static
    camera (where motion compensation has nothing to gain) it matches the average, where the view
    moves it beats it clearly; at the ends it does not extrapolate into worse than a copy."""
    from curation_helpers import psnr

    frames, clean = make_sequence(spec, 31)
    good = ALL.copy()
    good[bad] = False
    chosen = {}
    auto, done = reconstruct(frames, good, chosen=chosen)
    assert done == bad and set(chosen) == set(bad)
    ref = {m: reconstruct(frames, good, method=m)[0] for m in ("average", "nearest")}
    for b in bad:
        p = psnr(auto[b], clean[b])
        p_avg, p_near = psnr(ref["average"][b], clean[b]), psnr(ref["nearest"][b], clean[b])
        assert p >= max(p_avg, p_near) - 0.3, (b, chosen[b], p, p_avg, p_near)
        if spec.step_px:
            assert p > p_avg + 1, (b, chosen[b], p, p_avg)  # the bar: >= 1 dB where frames move


def test_unknown_reconstruction_method_is_refused():
    frames, _ = make_sequence(SPEC, 6)
    with pytest.raises(ValueError, match="unknown reconstruction method 'cubic'"):
        reconstruct(frames, ALL, method="cubic")


def test_faulty_calibration_sequences_do_not_lift_the_thresholds(baseline):
    """Two of six calibration sequences full of faults (a shaky, flickering stretch) leave the run
    baseline where the clean sequences put it."""
    faulty = {t: ("gain", 0.85 if t % 2 else 1.15) for t in range(0, 10, 2)} | {t: ("jitter", 3.0) for t in range(1, 10, 4)}
    sets = [qc.measure(make_sequence(SPEC, s)[0], ALL) for s in range(4)]
    sets += [qc.measure(make_sequence(SPEC, s, faulty)[0], ALL) for s in (4, 5)]
    b = qc.calibrate(sets)
    for k in (qc.I_MISREG, qc.I_BRIGHT, qc.I_CONTRAST):
        assert b.sigma[k] < 1.5 * baseline.sigma[k] + 1e-3, (qc.SCORE_NAMES[k], b.sigma[k], baseline.sigma[k])


def test_a_periodic_die_pattern_does_not_alias_the_registration():
    """The simulator's dies repeat along the lane; at 200x150 with 100 um steps their pitch is about two stage
    steps, so a two-step pair's phase correlation has an alias peak as high as the true one. Measured with the
    chain of adjacent pairs as the reference, no clean frame is misregistered (without it: up to 12.5 px)."""
    from acquisition.simulator import DicingLaneSimulator, SimConfig

    sim = DicingLaneSimulator(SimConfig(width=200, height=150, step_um=100.0, fault_rate=0.0, seed=0, bit_depth=8))
    seqs = [sim.sequence(lane, 10)[0] for lane in (0, 2, 5)]
    base = qc.calibrate([qc.measure(s, ALL) for s in seqs])
    thr = qc.thresholds(CurateConfig().qc.floors, CurateConfig().qc.z, base)
    for s in seqs:
        q = qc.SequenceQC(s, ALL)
        assert np.nanmax(q.scores()[:, qc.I_MISREG]) < 0.75
        assert abs(q.displacement(3, 5)[0] - 2 * q.step[0]) < 2.0  # not the alias one pitch away
        _, vib, ill = qc.curate_flags(s, ALL, base, thr, None, Z_SEQ)
        assert not (vib | ill).any()


@pytest.mark.parametrize("width", [160, 161])  # odd: the half spectrum does not tell the width
def test_scipy_phase_correlation_agrees_with_opencv(width):
    """QC's phase correlation (SciPy real FFTs on half spectra; reconstruction's registration too) finds what
    OpenCV's full complex transforms find, on known sub-pixel shifts, to rounding; the peak sought near a given
    displacement is the same peak. (With sensor noise, as in every real frame: on a noiseless smooth
    image the whitened phase of the nearly empty high frequencies is rounding noise in either
    implementation, and the two estimates differ by up to ~0.01 px.)"""
    import cv2

    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.random((140, width + 40), np.float32), (0, 0), 2.0)
    noise = lambda img: (img + rng.normal(0, 2 / 255, img.shape)).astype(np.float32)  # 2 grey levels of 255
    a = noise(base[10:130, 20:20 + width])
    win = cv2.createHanningWindow((width, 120), cv2.CV_32F)
    for dx, dy in ((3.3, -1.6), (-7.75, 2.2), (0.0, 0.0)):
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        b = noise(cv2.warpAffine(base, m, base.shape[::-1], flags=cv2.INTER_CUBIC)[10:130, 20:20 + width])
        fa, fb = qc.whitened_spectrum(a * win), qc.whitened_spectrum(b * win)
        assert fa.shape == (120, width // 2 + 1)
        d, peak = qc.spectrum_shift(fa, fb, a.shape)
        fa_cv, fb_cv = (qc._whiten(cv2.dft(x * win, flags=cv2.DFT_COMPLEX_OUTPUT), None) for x in (a, b))
        c_cv = cv2.idft((fb_cv * np.conj(fa_cv)).view(np.float32).reshape(fa_cv.shape + (2,)),
                        flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
        d_cv, peak_cv = qc._correlation_peak(c_cv)
        np.testing.assert_allclose(d, d_cv, atol=1e-4)
        assert peak == pytest.approx(peak_cv, abs=1e-5)
        np.testing.assert_array_equal(qc.phase_shift(a, b)[0], d)  # reconstruction's registration
        assert np.hypot(*(d - [dx, dy])) < 0.5  # near the truth (accuracy: tools/bench_registration.py)
        d_near, peak_near = qc.spectrum_shift(fa, fb, a.shape, near=np.array([dx, dy]) + 1.0, radius=3)
        np.testing.assert_array_equal(d_near, d)
        assert peak_near == peak


def test_a_frame_without_an_image_is_told_apart_from_dark_and_flat_ones():
    """A lens cap, the lamp off, a sensor saturated all over: what is left is noise and a few hot pixels; every
    frame of real or simulated content spreads far wider (>= 17.6 % of full scale on the development videos)."""
    rng = np.random.default_rng(0)
    dark = np.clip(rng.normal(2, 1, (600, 800)), 0, 255).astype(np.uint8)
    dark[rng.integers(0, 600, 30), rng.integers(0, 800, 30)] = 255  # hot pixels
    assert "no image (its pixels' standard deviation is" in qc.no_image(dark, 255)
    assert qc.no_image(np.full((60, 80), 255, np.uint8), 255).startswith("no image (its pixels' standard deviation "
                                                                         "is 0.00% of full scale, under 1%")
    frames, _ = make_sequence(SynthSpec(), 0, {})
    assert all(qc.no_image(f, 255) is None for f in frames)
    assert qc.no_image((frames[0].astype(np.uint16) * 16), 4095) is None  # 12-bit data in Mono16: its own scale
    assert qc.no_image((frames[0].astype(np.uint16) * 16), 65535 * 40) is not None  # (the scale decides)


def test_strong_blur_counts_as_vibration_even_with_an_exposure_fault():
    """On a frame whose brightness fired, sharpness counts only beyond ATTRIBUTION_FACTOR x its threshold (flicker
    bands lower it a little); alone it counts from 1x. Contrast never counts where sharpness fired."""
    K = len(qc.SCORE_NAMES)
    base = qc.Baseline([0.0] * K, [1.0] * K)
    thr = np.ones(K)
    scores = np.zeros((4, K))
    scores[0, qc.I_BRIGHT], scores[0, qc.I_SHARP] = 2.0, -2.0 * qc.ATTRIBUTION_FACTOR  # exposure + strong blur
    scores[1, qc.I_BRIGHT], scores[1, qc.I_SHARP] = 2.0, -1.5  # exposure + a small sharpness drop: exposure only
    scores[2, qc.I_SHARP] = -1.5  # blur alone
    scores[3, qc.I_SHARP], scores[3, qc.I_CONTRAST] = -1.5, 2.0  # blur that lowers contrast: not an exposure fault
    vibration, illumination = qc.decide(scores, base, thr)
    assert vibration.tolist() == [True, False, True, True]
    assert illumination.tolist() == [True, True, False, False]


def test_the_frame_just_past_a_light_step_at_an_edge_is_part_of_it():
    """Two edge frames at one light level, the rest at another: each frame's brightness against the median of its
    neighbours gives the first frame past the step about half the step, the other way; it is marked with them."""
    v = np.array([0.1, 0.1, -0.05, 0, 0, 0, 0, 0, 0, 0])
    assert qc.light_steps_at_edges(v, np.full(10, 0.06)).tolist() == [True] * 3 + [False] * 7
    v[2] = -0.09  # more than 0.75 of the step the other way: a fault of its own, not the step's echo
    assert qc.light_steps_at_edges(v, np.full(10, 0.06)).tolist() == [True] * 2 + [False] * 8


def test_without_a_frame_to_check_on_auto_copies_at_the_ends_and_averages_inside():
    """"No extrapolation without evidence": with too few good frames for the self-check, a sequence end gets the
    nearest good frame's copy, a frame between two good ones their average."""
    frames = np.random.default_rng(0).integers(0, 255, (10, 32, 48), np.uint8)
    chosen = {}
    out, done = reconstruct(frames, np.array([False, True, True] + [False] * 7), method="auto", chosen=chosen)
    assert chosen == {0: "nearest", **{t: "nearest" for t in range(3, 10)}}
    np.testing.assert_array_equal(out[0], frames[1])
    np.testing.assert_array_equal(out[9], frames[2])
    chosen = {}
    reconstruct(frames, np.array([True, False, True] + [False] * 7), method="auto", chosen=chosen)
    assert chosen[1] == "average" and chosen[5] == "nearest"
