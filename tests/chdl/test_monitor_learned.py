"""The learned frame score (chdl.monitor.learned_score): features, fit on clean frames, scorer file."""

import json
import math

import numpy as np
import pytest

from chdl.monitor.anomaly_score import FrameScorer, ScorerConfig
from chdl.monitor import Z_OFF, Z_ON
from chdl.monitor.learned_score import (CHANGE_LEVEL, FEATURES, FORMAT, SPLASH_LEVEL, LearnedScorer, ScorerFileError,
                                        alert_levels, change_area, fit, frame_features)

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
    assert feats.shape == (290, len(FEATURES) + 1)  # the first 10 only fill the row baseline; + splash_area
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
    assert names["change_area"] == (0.0, 0.0) and (speck[-1], line[-1]) == (0.0, 0.0)  # no change (splash_area last)
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
    assert all(r.features is not None and len(r.features) == len(FEATURES) + 1 for r in learned[10:])
    # change_area from the scorer's own frame - prediction: the crack's 40 x 2 px (-0.3) change, one patch
    assert 10 ** crack.features[FEATURES.index("change_area")] - 1 >= 60


def test_scorer_file_round_trip(fitted, tmp_path):
    a = LearnedScorer.load(fitted)
    d = json.loads(fitted.read_text())
    assert d["format"] == FORMAT and d["features"] == list(FEATURES) and d["predictor"] == "constant-motion"
    assert (d["width"], d["height"], len(d["weights"]), d["fitted_on"]["frames"]) == (W, H, 2, 290)
    a.save(tmp_path / "again.json")
    b = LearnedScorer.load(tmp_path / "again.json")
    x = np.array([8.0, 5.0, 3.0, 4.0, -1.0, 2.5, 1.0])
    assert b.score(x) == a.score(x) and math.isfinite(a.score(x))
    assert a.score(x) > a.score(np.r_[a.floor, 1.0])  # above the clean medians in every feature: less likely
    assert math.isnan(a.score(np.r_[x[:5], np.nan, 1.0]))
    assert d["score_sigma"] > 0 and math.isfinite(d["score_median"])
    assert d["splash"] == {"feature": "splash_area", "level": SPLASH_LEVEL, "median": a.splash_median,
                           "sigma": a.splash_sigma, "gain": None} and a.splash_sigma > 0
    b.splash_gain = 0.5
    b.save(tmp_path / "gain.json")
    assert LearnedScorer.load(tmp_path / "gain.json").splash_gain == 0.5
    a.check_frames((H, W))
    with pytest.raises(ScorerFileError, match=rf"^{fitted}: fitted on {W}x{H} frames, these are 200x150$"):
        a.check_frames((150, 200))


@pytest.mark.parametrize("content,message", [
    (None, "cannot read the scorer file"),
    ("{not json", "not a scorer file (not JSON"),
    ('{"format": "chdl.monitor/1"}', "not a scorer file (format 'chdl.monitor/1'"),
    ('{"format": "chdl.monitor-scorer/1"}', "a scorer file of format chdl.monitor-scorer/1 (five features, without "
     "change_area); this chdl reads chdl.monitor-scorer/3: fit it again with chdl monitor-fit-scorer"),
    ('{"format": "chdl.monitor-scorer/2"}', "chdl.monitor-scorer/2 (without the splash test); this chdl reads"),
    ("[1, 2]", "not a scorer file (format 'list'"),
    ("DROP:weights", "scorer file lacks 'weights'"),
    ("SET:features=[\"z1\"]", "bad scorer file: features ['z1']"),
    ("SET:means=[[1, 2]]", "bad scorer file: means: expected finite numbers of shape"),
    ("SET:weights=[-1, 2]", "bad scorer file: weights and scales must be positive"),
    ("SET:alert_levels={\"z_on\": 2, \"z_off\": 3}", "bad scorer file: alert_levels: need 0 < z_off <= z_on"),
    ("SET:alert_levels={\"z_on\": 2}", "scorer file lacks 'z_off'"),
    ("SET:score_sigma=0", "bad scorer file: score_median and score_sigma must be finite, score_sigma positive"),
    ("DROP:splash", "scorer file lacks 'splash'"),
    ("SET:splash={\"feature\": \"splash_area\", \"level\": 0.2, \"median\": 1, \"sigma\": 0.1}",
     "bad scorer file: splash: expected the splash_area test at level 0.05"),
    ("SET:splash={\"feature\": \"splash_area\", \"level\": 0.05, \"median\": 1, \"sigma\": 0.1, \"gain\": -1}",
     "bad scorer file: splash: median and sigma must be finite, sigma and gain positive"),
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
    assert alert_levels(learned, z_on=9.0) == {"z_on": 9.0, "z_off": 2.5}
    assert alert_levels(None, z_off=1.0) == {"z_on": Z_ON, "z_off": 1.0}


def test_fit_needs_enough_finite_frames():
    x = np.ones((50, len(FEATURES) + 1))
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
    feats = np.random.default_rng(0).normal(size=(200, len(FEATURES) + 1))
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
    assert 10 ** f[-1] - 1 > 100 and f[-1] == pytest.approx(change_area(diff, valid, SPLASH_LEVEL))


def test_the_splash_test_raises_the_score_only_when_weighted_in_and_beyond_the_mixture():
    """score = max(mixture nll, score_median + score_sigma x gain x splash z): with no gain measured the splash
    test is off; with one, a frame whose splash_area is far above the fitted frames' scores by it, a frame at
    the median splash_area by its mixture alone (or at the median score: no alert level is below it)."""
    rng = np.random.default_rng(1)
    feats = np.c_[rng.normal(size=(300, len(FEATURES))), rng.normal(1.0, 0.1, 300)]
    s = fit(feats, "constant-motion", W, H, components=1)
    quiet, splash = np.r_[np.zeros(len(FEATURES)), s.splash_median], np.r_[np.zeros(len(FEATURES)), s.splash_median + 3.0]
    assert s.score(splash) == s.score(quiet) == s.nll(quiet)  # off: the mixture alone
    s.splash_gain = 0.5
    z = (s.score(splash) - s.score_median) / s.score_sigma
    assert z == pytest.approx(0.5 * s.splash_z(splash)) and z > (s.nll(splash) - s.score_median) / s.score_sigma
    assert s.score(quiet) == max(s.nll(quiet), s.score_median)  # at the median the splash z is 0: z >= 0 only
