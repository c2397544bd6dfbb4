"""The learned frame score (chdl.monitor.learned_score): features, fit on clean frames, scorer file."""

import json
import math

import numpy as np
import pytest

from chdl.monitor.anomaly_score import FrameScorer, ScorerConfig
from chdl.monitor import Z_OFF, Z_ON
from chdl.monitor.learned_score import (CHANGE_LEVEL, CRACK_LEVEL, FEATURES, FORMAT, SPLASH_LEVEL, TESTS, LearnedScorer,
                                        ScorerFileError, alert_levels, change_area, crack_length, fit, frame_features)
NF = len(FEATURES) + len(TESTS)  # frame_features: the mixture's, then the tests' (splash_area, crack_length)

H, W = 96, 128
BACKGROUND = np.random.default_rng(0).uniform(0.4, 0.6, (H, W)).astype(np.float32)


def _frame(seed: int, crack: bool = False) -> np.ndarray:
    """The background with sensor noise and the "normal dynamics": one to three compact bright particles
    (6-9 px, contrast up to 0.45) at random places; ``crack``: a thin dark line (40 x 2 px) instead, with
    less error than the brightest particles."""
    rng = np.random.default_rng(seed)
    img = BACKGROUND + rng.normal(0, 0.01, (H, W)).astype(np.float32)
    for _ in range(0 if crack else rng.integers(1, 4)):
        s, y, x = int(rng.integers(6, 10)), int(rng.integers(0, H - 10)), int(rng.integers(0, W - 10))
        img[y:y + s, x:x + s] += rng.uniform(0.05, 0.45)
    if crack:
        img[60:62, 40:80] -= 0.3
    return np.clip(img, 0, 1)


def _scores(cfg: ScorerConfig, seeds, crack: int | None = None) -> list:
    """Score the frames of ``seeds`` (a crack in the one of seed ``crack``) against the exact background:
    the prediction of a perfect predictor of the scene."""
    scorer, valid = FrameScorer(cfg), np.ones((H, W), bool)
    return [scorer.score(_frame(s, crack=s == crack), BACKGROUND, valid) for s in seeds]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A scorer fitted on 300 clean frames, saved to a file."""
    rows = _scores(ScorerConfig(features=True, z_on=math.inf, z_off=math.inf), range(300))
    feats = np.array([r.features for r in rows if r.features is not None])
    assert feats.shape == (290, NF)  # the first 10 only fill the row baseline
    path = tmp_path_factory.mktemp("scorer") / "scorer.json"
    fit(feats, "constant-motion", W, H, components=2).save(path)
    return path


def test_features_tell_a_compact_speck_from_a_thin_line():
    z = np.full((6, 8), -1.0)
    z[3, 4], z[3, 5], z[2, 1] = 9.0, 6.0, np.inf * -1  # an invalid block counts as INVALID_Z, not -inf
    none, valid = np.zeros((H, W), np.float32), np.ones((H, W), bool)
    err = np.zeros((H, W), np.float32)
    err[50:58, 66:74] = 0.01  # a compact 8 x 8 blob in block (3, 4)
    speck = frame_features(z, err, 16, none, valid)
    err = np.zeros((H, W), np.float32)
    err[52:54, 50:90] = 0.01  # a 40 x 2 line
    line = frame_features(z, err, 16, none, valid)
    names = dict(zip(FEATURES, zip(speck, line)))
    assert names["change_area"] == (0.0, 0.0) and (list(speck[-2:]), list(line[-2:])) == ([0, 0], [0, 0])  # no change
    assert names["z1"] == (9.0, 9.0) and names["z2"] == (6.0, 6.0) and names["z3"] == (-1.0, -1.0)
    assert names["elongation"][0] == pytest.approx(1.0) and names["elongation"][1] > 10
    assert names["log_mass"][0] == pytest.approx(np.log10(0.64), abs=1e-4)
    assert np.isnan(frame_features(np.full((6, 8), -np.inf), err, 16, none, valid)).all()  # no valid block: none


def test_change_area_counts_the_largest_patch_of_strong_change_with_nearby_particles_merged():
    diff, valid = np.zeros((H, W), np.float32), np.ones((H, W), bool)
    diff[10:20, 10:20] = -0.3  # a dark 10 x 10 patch: 100 px (the 0.7 px blur keeps its edge pixels above 0.16)
    assert change_area(diff, valid) == pytest.approx(np.log10(101))
    diff[60:62, 60:62] = 0.5  # a bright 2 x 2 particle elsewhere: the largest patch is still the first
    assert change_area(diff, valid) == pytest.approx(np.log10(101))
    splash = np.zeros((H, W), np.float32)
    for y, x in [(40, 40), (40, 44), (44, 42), (47, 46)]:  # four 3 x 3 particles a pixel or two apart
        splash[y:y + 3, x:x + 3] = 0.6
    merged = change_area(splash, valid)
    assert 10 ** merged - 1 > 4 * 9 * 0.8  # one patch: the four particles' pixels together
    assert change_area(diff * 0.4, valid) == 0.0  # 0.12 < CHANGE_LEVEL: no strong change
    assert CHANGE_LEVEL == 0.16
    valid[:, :30] = False  # outside the valid region nothing counts
    assert change_area(diff, valid) < np.log10(10)


def test_a_fitted_scorer_puts_an_injected_crack_above_every_clean_frame(fitted):
    """The crack's largest block z-score is within the clean frames' range (the block scorer cannot tell
    it from a bright particle); the learned score, which knows clean frames have compact blobs, puts it
    above every one of 100 new clean frames."""
    seeds = range(1000, 1101)
    block = _scores(ScorerConfig(), seeds, crack=1100)
    learned = _scores(ScorerConfig(scorer_file=str(fitted)), seeds, crack=1100)
    clean_block = max(r.score for r in block[10:-1])
    clean_learned = max(r.score for r in learned[10:-1])
    assert block[-1].score < clean_block  # a particle of the clean frames scores higher than the crack
    assert learned[-1].score > clean_learned + 1.0  # nats
    # alerts against the fixed baseline of the fitted frames (no running one): the crack raises one
    f = LearnedScorer.load(fitted)
    crack = learned[-1]
    assert crack.threshold == pytest.approx(f.score_median + Z_ON * f.score_sigma)
    assert crack.z == pytest.approx((crack.score - f.score_median) / f.score_sigma) and crack.new_alert
    assert all(r.features is not None and len(r.features) == NF for r in learned[10:])
    # change_area from the scorer's own frame - prediction: the crack's 40 x 2 px (-0.3) change, one patch
    assert 10 ** crack.features[FEATURES.index("change_area")] - 1 >= 60


def test_scorer_file_round_trip(fitted, tmp_path):
    a = LearnedScorer.load(fitted)
    d = json.loads(fitted.read_text())
    assert d["format"] == FORMAT and d["features"] == list(FEATURES) and d["predictor"] == "constant-motion"
    assert (d["width"], d["height"], len(d["weights"]), d["fitted_on"]["frames"]) == (W, H, 2, 290)
    a.save(tmp_path / "again.json")
    b = LearnedScorer.load(tmp_path / "again.json")
    x = np.array([8.0, 5.0, 3.0, 4.0, -1.0, 2.5, 1.0, 0.0])
    assert b.score(x) == a.score(x) and math.isfinite(a.score(x))
    assert a.score(x) > a.score(np.r_[a.floor, 1.0, 0.0])  # above the clean medians in every feature: less likely
    assert math.isnan(a.score(np.r_[x[:5], np.nan, 1.0, 0.0]))
    assert d["score_sigma"] > 0 and math.isfinite(d["score_median"])
    assert d["tests"] == [{"feature": t, "level": lv, "median": float(m), "sigma": float(sd), "gain": None}
                          for t, lv, m, sd in zip(TESTS, (SPLASH_LEVEL, CRACK_LEVEL), a.test_median, a.test_sigma)]
    assert (a.test_sigma > 0).all()
    b.test_gain = [0.5, None]
    b.save(tmp_path / "gain.json")
    assert LearnedScorer.load(tmp_path / "gain.json").test_gain == [0.5, None]
    a.check_frames((H, W))
    with pytest.raises(ScorerFileError, match=rf"^{fitted}: fitted on {W}x{H} frames, these are 200x150$"):
        a.check_frames((150, 200))


@pytest.mark.parametrize("content,message", [
    (None, "cannot read the scorer file"),
    ("{not json", "not a scorer file (not JSON"),
    ('{"format": "chdl.monitor/1"}', "not a scorer file (format 'chdl.monitor/1'"),
    ('{"format": "chdl.monitor-scorer/1"}', "a scorer file of format chdl.monitor-scorer/1 (five features, without "
     "change_area); this chdl reads chdl.monitor-scorer/4: fit it again with chdl monitor-fit-scorer"),
    ('{"format": "chdl.monitor-scorer/2"}', "chdl.monitor-scorer/2 (without the splash and crack tests); this chdl reads"),
    ('{"format": "chdl.monitor-scorer/3"}', "chdl.monitor-scorer/3 (without the crack test); this chdl reads"),
    ("[1, 2]", "not a scorer file (format 'list'"),
    ('{"format": "chdl.monitor-scorer/9"}', "a scorer file of format chdl.monitor-scorer/9 (made by a newer chdl); "
     "this chdl reads chdl.monitor-scorer/4: upgrade chdl to use it"),
    ("DROP:weights", "scorer file lacks 'weights'"),
    ("SET:features=[\"z1\"]", "bad scorer file: features ['z1']"),
    ("SET:means=[[1, 2]]", "bad scorer file: means: expected finite numbers of shape"),
    ("SET:weights=[-1, 2]", "bad scorer file: weights and scales must be positive"),
    ("SET:alert_levels={\"z_on\": 2, \"z_off\": 3}", "bad scorer file: alert_levels: need 0 < z_off <= z_on"),
    ("SET:alert_levels={\"z_on\": 2}", "scorer file lacks 'z_off'"),
    ("SET:score_sigma=0", "bad scorer file: score_median and score_sigma must be finite, score_sigma positive"),
    ("SET:score_sigma=\"1.0\"", "bad scorer file: score_sigma: expected a number, got '1.0'"),  # was taken as 1.0
    ("SET:width=\"200\"", "bad scorer file: width: expected a positive integer, got '200'"),
    ("SET:alert_levels={\"z_on\": null, \"z_off\": 3}", "bad scorer file: alert_levels.z_on: expected a number, got None"),
    ("DROP:tests", "scorer file lacks 'tests'"),
    ("SET:tests=[{\"feature\": \"splash_area\", \"level\": 0.2, \"median\": 1, \"sigma\": 0.1}]",
     "bad scorer file: tests: expected [('splash_area', 0.05), ('crack_length', 0.12)]"),
    ("SET:tests=[{\"feature\": \"splash_area\", \"level\": 0.05, \"median\": 1, \"sigma\": 0.1, \"gain\": -1}, "
     "{\"feature\": \"crack_length\", \"level\": 0.12, \"median\": 0, \"sigma\": 1}]",
     "bad scorer file: tests: medians and sigmas must be finite, sigmas and gains positive"),
])
def test_a_bad_scorer_file_gives_a_one_line_error_naming_it(fitted, tmp_path, content, message):
    path = tmp_path / "bad.json"
    if content is not None and content.startswith(("DROP:", "SET:")):
        d = json.loads(fitted.read_text())
        if content.startswith("DROP:"):
            del d[content[5:]]
        else:
            key, value = content[4:].split("=", 1)
            d[key] = json.loads(value)
        content = json.dumps(d)
    if content is not None:
        path.write_text(content)
    with pytest.raises(ScorerFileError) as e:
        FrameScorer(ScorerConfig(scorer_file=str(path)))
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_alert_levels_as_given_else_the_scorers_measured_ones_else_the_defaults(fitted):
    learned = LearnedScorer.load(fitted)
    assert alert_levels() == alert_levels(learned) == {"z_on": Z_ON, "z_off": Z_OFF}  # none measured
    learned.alert_levels = {"z_on": 5.0, "z_off": 2.5, "clean_hours": 0.45}
    assert alert_levels(learned) == {"z_on": 5.0, "z_off": 2.5}
    assert alert_levels(learned, z_on=9.0) == {"z_on": 9.0, "z_off": 4.5}  # z_off: the same fraction of z_on as the file's
    assert alert_levels(None, z_off=1.0) == {"z_on": Z_ON, "z_off": 1.0}


def test_fit_needs_enough_finite_frames():
    x = np.ones((50, NF))
    x[:20, 0] = np.nan
    with pytest.raises(ValueError, match="30 scored clean frames are too few to fit 2 components"):
        fit(x, "constant-motion", W, H, components=2)


def test_a_checkpoint_scorer_is_refused_with_another_checkpoint_file(tmp_path):
    """The scorer records its checkpoint's SHA-256; any other file (another run's last.pt, or best.pt) is one
    line naming both; a scorer without the hash (fitted before it was recorded) is taken as it is."""
    from chdl.monitor.learned_score import ScorerFileError, file_sha256, fit

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights of run A")
    b.write_bytes(b"weights of run B")
    feats = np.random.default_rng(0).normal(size=(200, NF))
    scorer = fit(feats, "checkpoint:last.pt", 200, 150, components=1, fitted_on={"checkpoint_sha256": file_sha256(a)})
    scorer.check_checkpoint(a)
    scorer.check_checkpoint(None)
    with pytest.raises(ScorerFileError, match=r"another checkpoint \(checkpoint:last.pt, SHA-256 [0-9a-f]{12}\.\.\.\), "
                       f"not {b}"):
        scorer.check_checkpoint(b)
    fit(feats, "checkpoint:last.pt", 200, 150, components=1).check_checkpoint(b)


def test_splash_area_sees_a_spread_of_faint_particles_that_change_area_does_not():
    """A debris splash: many particles a few px apart, each changing the frame by less than CHANGE_LEVEL but more
    than SPLASH_LEVEL. change_area sees nothing; splash_area counts them as one patch."""
    diff, valid = np.zeros((H, W), np.float32), np.ones((H, W), bool)
    for y in range(30, 70, 4):
        for x in range(40, 90, 4):
            diff[y:y + 3, x:x + 3] = 0.12  # 130 faint 3 x 3 particles, a pixel apart
    z = np.zeros((6, 8))
    f = frame_features(z, np.zeros((H, W), np.float32), 16, diff, valid)
    assert f[FEATURES.index("change_area")] == 0.0
    splash = f[len(FEATURES) + TESTS.index("splash_area")]
    assert 10 ** splash - 1 > 100 and splash == pytest.approx(change_area(diff, valid, SPLASH_LEVEL))


def test_a_test_raises_the_score_only_when_weighted_in_and_beyond_the_mixture():
    """score = max(mixture nll, score_median + score_sigma x gain_i x z_i): with no gain measured a test is off;
    with one, a frame whose splash_area is far above the fitted frames' scores by it, a frame at the median
    by its mixture alone (or at the median score: no alert level is below it)."""
    rng = np.random.default_rng(1)
    feats = np.c_[rng.normal(size=(300, len(FEATURES))), rng.normal(1.0, 0.1, 300), np.zeros(300)]
    s = fit(feats, "constant-motion", W, H, components=1)
    assert s.test_sigma[1] == 1.0  # crack_length: no line in any fitted frame, MAD 0: the floor (1 px)
    quiet = np.r_[np.zeros(len(FEATURES)), s.test_median]
    splash = quiet + np.r_[np.zeros(len(FEATURES)), 3.0, 0.0]
    assert s.score(splash) == s.score(quiet) == s.nll(quiet)  # off: the mixture alone
    s.test_gain = [0.5, None]
    z = (s.score(splash) - s.score_median) / s.score_sigma
    assert z == pytest.approx(0.5 * s.test_z(splash)[0]) and z > (s.nll(splash) - s.score_median) / s.score_sigma
    assert s.score(quiet) == max(s.nll(quiet), s.score_median)  # at the median a test's z is 0: z >= 0 only
    crack = quiet + np.r_[np.zeros(len(FEATURES)), 0.0, 40.0]
    assert s.score(crack) == s.score(quiet)  # the crack test has no weight yet
    s.test_gain = [0.5, 0.25]
    assert (s.score(crack) - s.score_median) / s.score_sigma == pytest.approx(0.25 * 40.0)


def test_crack_length_measures_thin_patches_across_the_lane_only():
    """A 30 x 2 px dark line across the lane (along y) is a crack of ~30 px; the same line along the lane (a
    kerf edge predicted a little off), a compact blob, and a faint line below CRACK_LEVEL are not."""
    valid = np.ones((H, W), bool)

    def length(diff):
        return crack_length(np.abs(diff), valid)

    across, along, blob, faint = (np.zeros((H, W), np.float32) for _ in range(4))
    across[30:60, 50:52] = 0.3
    along[40:42, 30:60] = 0.3
    blob[40:50, 40:50] = 0.3
    faint[30:60, 50:52] = 0.5 * CRACK_LEVEL
    assert length(across) == pytest.approx(30 * 4 / np.sqrt(12), rel=0.05)  # 4 x the std of a 30 px uniform line
    assert length(along) == length(blob) == length(faint) == 0.0
    valid[:, 40:60] = False  # outside the valid region nothing counts
    assert length(across) == 0.0


def test_the_mixture_fit_does_not_depend_on_its_seed():
    """The mixture keeps the best of N_INIT EM starts. With 3 starts, seeds 0, 1 and 2 of these frames (7 heavy-tailed
    clusters for 4 components) gave three fits whose clean medians differed by up to 0.07 nats and a frame's score
    by 0.75; on the simulator's fitting lanes two seeds put the alert level at 12.5 and 9.5 (docs/monitor.md)."""
    from chdl.monitor import learned_score
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 2, (7, 6))
    x = np.concatenate([rng.standard_t(3, (300, 6)) * 0.5 + c for c in centres])
    x = np.c_[x, rng.random((len(x), len(learned_score.TESTS)))]
    fits = [learned_score.fit(x, "constant-motion", 200, 150, seed=s) for s in (0, 2)]  # 3 starts: these two differ
    assert all(f.fitted_on["n_init"] == learned_score.N_INIT for f in fits)
    medians = [f.score_median for f in fits]
    scores = [f.nll(x[5]) for f in fits]
    assert max(medians) - min(medians) < 1e-3 and max(scores) - min(scores) < 1e-3, (medians, scores)


def test_a_lone_z_on_below_the_default_z_off_is_a_valid_hysteresis():
    """`--z-on 3` alone was refused ('Invalid value for --z-off: must not exceed --z-on (3)', an option never given)."""
    from chdl.monitor import Z_OFF, Z_ON

    assert alert_levels(None, z_on=3.0) == {"z_on": 3.0, "z_off": 3.0 * Z_OFF / Z_ON}


def test_fitting_leaves_out_flagged_frames_and_the_frames_predicted_from_them(tmp_path, monkeypatch):
    """The frame after an acquisition fault is predicted from the fault (its error holds it): like the flagged frame,
    it is no example of the lane's normal errors."""
    from click.testing import CliRunner

    from chdl.cli import main
    from chdl.monitor import evaluate
    from chdl.monitor.learned_score import fit_recordings

    out = tmp_path / "corpus"
    r = CliRunner().invoke(main, ["simulate", "corpus", str(out), "--sequences", "12", "--positions", "10",
                                  "--lanes-per-run", "12", "--width", "64", "--height", "48", "--fault-rate", "0", "-q"])
    assert r.exit_code == 0, r.output
    real, seen = evaluate.score_recording, []

    def marked(*a, **k):  # of every three scored frames: one flagged, one predicted from a flagged one, one clean
        rows = real(*a, **k)
        for i, row in enumerate(rows):
            row["acquisition"] = "vibration" if i % 3 == 0 else None
            row["after_acquisition"] = i % 3 == 1
            seen.append(row["features"])
        return rows

    monkeypatch.setattr(evaluate, "score_recording", marked)
    fitted = fit_recordings([out], components=1, qc=False, progress=False)
    assert fitted.fitted_on["frames"] == sum(1 for i, f in enumerate(seen) if i % 3 == 2 and f is not None) >= 20


def test_a_scorer_warns_of_lanes_stepped_otherwise_than_those_it_was_fitted_on(fitted):
    from chdl.monitor.learned_score import STEP_TOLERANCE, stage_step_um

    assert stage_step_um({"plan": {"step_um": 60}}) == 60.0 and stage_step_um({}) is None
    fitted = LearnedScorer.load(fitted)
    fitted.fitted_on = {"stage_step_um": [60.0]}
    assert fitted.step_mismatch(60.0 * (1 + STEP_TOLERANCE)) is None and fitted.step_mismatch(None) is None
    assert "fitted on lanes stepped 60 µm between frames, these step 100 µm" in fitted.step_mismatch(100.0)
    fitted.fitted_on = {}  # fitted before chdl recorded the step: nothing to compare
    assert fitted.step_mismatch(100.0) is None


def test_features_below_their_floor_count_as_the_floor(fitted):
    """Features are raised to their clean medians before scaling (only "more than usual" counts): without that a
    frame quieter than the clean ones (fewer particles, a smaller error) scored as unusual as a louder one."""
    from chdl.monitor.learned_score import standardise

    floor, scale = np.array([1.0, 2.0, -3.0]), np.array([2.0, 0.5, 1.0])
    np.testing.assert_array_equal(standardise(np.array([[0.0, -5.0, -4.0], [3.0, 2.5, -3.0]]), floor, scale),
                                  [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    scorer = LearnedScorer.load(fitted)
    at_floor = np.r_[scorer.floor, np.zeros(len(TESTS))]
    quieter = np.r_[scorer.floor - 3 * scorer.scale, np.zeros(len(TESTS))]
    assert math.isfinite(scorer.score(at_floor))
    assert scorer.score(quieter) == scorer.score(at_floor)
    assert scorer.nll(quieter) == scorer.nll(at_floor)
