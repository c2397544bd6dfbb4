"""A frame score learned from clean recordings: what normal prediction errors look like.

The block scorer's frame score is one number, the largest block z-score; on simulated lanes a single
debris particle or chip born in the kerf scores as high as a visible anomaly's onset. A learned scorer
describes each frame's error by a few features (:data:`FEATURES`) that tell one small, compact blob from a
spreading or elongated one, fits a Gaussian mixture (scikit-learn) to those of CLEAN frames only (no
anomaly labels), and scores a frame by the negative log density of its features (nats): the rarer the
combination among clean frames, the higher. The monitor then treats that score like any other (running
robust baseline, hysteresis).

Features of a frame (from :class:`chdl.monitor.anomaly_score.FrameScorer`'s block z-scores and its opened
error map), :func:`frame_features`:

    z1, z2, z3   the three largest block z-scores (row sigmas; an invalid block counts as -5)
    elongation   the blob around the error map's largest pixel in the 3 x 3 blocks around the worst
                 block (connected pixels at >= 0.3 x that pixel's error): sqrt of the ratio of its
                 principal second moments (+0.25 px^2 each), 1 for a round speck, large for a crack or an
                 edge that moved
    log_mass     log10 of the summed error of those 3 x 3 blocks' pixels at >= 0.1 x the largest
                 (squared-error units: absolute, not row-normalised)
    change_area  log10(1 + pixels) of the largest patch of strong change anywhere in the valid region:
                 pixels where the frame differs from the prediction by more than :data:`CHANGE_LEVEL`
                 (after a 0.7 px Gaussian), 8-connected after a 3 x 3 dilation (so a splash's particles
                 or a chip cluster count as one patch), counted before the dilation. It sees what the
                 speck opening of the error map removes and ignores contrast beyond the level: one
                 natural debris particle or chip changes a few pixels, a visible anomaly's onset tens
                 to hundreds (docs/monitor.md, "Second round")

Single-feature tests (file version 3: splash; 4: crack), each feature tested on its own beside the mixture,
z_i = (feature - the fitted frames' median) / (1.4826 x MAD, floored):

    splash_area   log10(1 + pixels) of the largest patch as ``change_area``, at :data:`SPLASH_LEVEL` (0.05):
                  a debris splash flings tens of faint particles at once; no block and no blob stands out
    crack_length  px, the longest thin patch of change > :data:`CRACK_LEVEL` that runs across the lane
                  (:func:`crack_length`): a crack grows from a kerf edge into the street and the die

The mixture's tail, which also holds clean frames with many strong features, ranks most such onsets as
normal. The frame score is max(mixture score, score_median + score_sigma x gain_i x z_i): its z is the
largest of the mixture's z and the weighted test z's. ``gain_i`` = the mixture's alert level / test i's own,
measured on other clean recordings by tools/monitor_operating_point.py (None until then: that test is off).
Chosen and measured in docs/monitor.md ("Single-feature tests").

Each feature is raised to its clean median (only "more than usual" counts: a frame quieter than normal is
not an anomaly), standardised by the clean standard deviation, and scored by the mixture. The score is
calibrated on clean frames, so the monitor compares it with a fixed baseline, the fitted frames' median
and 1.4826 x MAD (``score_median``, ``score_sigma``), not with a running one: many quiet frames share one
score (every feature at its floor), which let a running baseline's spread shrink to nothing, and a
recording with many anomalies raised it.

The scorer file (:data:`FORMAT`, JSON, a few kB; written by ``chdl monitor-fit-scorer``, read by
``chdl monitor --scorer F`` and ``chdl monitor-eval --scorer F``) holds the features' names, the floors
and scales, the mixture (weights, means, full covariances), and what it was fitted on (predictor, frame
size, recordings, frames), the tests' statistics and weights: docs/monitor.md "Learned scorer". Version 2
added ``change_area``, version 3 the splash test, version 4 the crack test; older files are refused with a line saying to
fit them again (:data:`OLD_FORMATS`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np

from chdl.monitor import SCORER_FORMAT as FORMAT  # the file format (defined where --help can read it)
from acquisition.format_versions import newer_format

FEATURES = ("z1", "z2", "z3", "elongation", "log_mass", "change_area")  # the mixture's
TESTS = ("splash_area", "crack_length")  # tested one by one beside the mixture (frame_features: after FEATURES)
STEP_TOLERANCE = 0.1  # relative: a stage step this close to one a scorer was fitted at counts as the same

OLD_FORMATS = {"chdl.monitor-scorer/1": "five features, without change_area",  # refused, with what to do
               "chdl.monitor-scorer/2": "without the splash and crack tests",
               "chdl.monitor-scorer/3": "without the crack test"}
CHANGE_LEVEL = 0.16  # change_area: |frame - prediction| above this (frames in [0, 1]; 41 of 255 grey levels)
SPLASH_LEVEL = 0.05  # splash_area: the same at this level (13 grey levels; chosen on the development corpora)
CRACK_LEVEL = 0.12  # crack_length: change above this (31 grey levels; chosen on the development corpora)
CRACK_THIN = 3.0  # ... patches whose principal axes differ by more than this factor
CRACK_MIN_PX = 6  # ... of at least this many pixels
TEST_LEVELS = {"splash_area": SPLASH_LEVEL, "crack_length": CRACK_LEVEL}
N_INIT = 20  # the mixture's EM starts (scikit-learn n_init): the best likelihood of these is kept
TEST_SIGMA_FLOOR = {"splash_area": 0.05, "crack_length": 1.0}  # log10 px; px (most clean frames have no line: MAD 0)
INVALID_Z = -5.0  # the z-score an invalid block counts as among the top three
BLOB_FRACTION = 0.3  # blob: pixels at >= this fraction of the region's largest error
MASS_FRACTION = 0.1  # mass: pixels at >= this fraction of it


class ScorerFileError(ValueError):
    """A scorer file that cannot be used (one line naming the file)."""


def change_area(diff: np.ndarray, valid: np.ndarray, level: float = CHANGE_LEVEL) -> float:
    """log10(1 + pixels) of the largest patch where ``diff`` (H, W) = frame - prediction (in [0, 1] units)
    exceeds ``level`` in magnitude after a 0.7 px Gaussian, within ``valid`` (H, W) bool; patches are
    8-connected after a 3 x 3 dilation, their pixels counted before it. At :data:`CHANGE_LEVEL` the
    ``change_area`` feature, at :data:`SPLASH_LEVEL` ``splash_area``."""
    return _largest_patch(np.abs(cv2.GaussianBlur(diff.astype(np.float32), (0, 0), 0.7)), valid, level)


def crack_length(absdiff: np.ndarray, valid: np.ndarray, level: float = CRACK_LEVEL) -> float:
    """The ``crack_length`` feature (px): of the 8-connected patches where ``absdiff`` (H, W) = |frame -
    prediction| (blurred 0.7 px) exceeds ``level`` within ``valid``, those of >= :data:`CRACK_MIN_PX` pixels
    that are thin (principal axes' ratio > :data:`CRACK_THIN`) and run across the lane (major axis within 60
    degrees of the frame's y axis: the lane runs along x), the longest one's length (4 x the major axis's
    standard deviation); 0 if there is none. A crack runs from a kerf edge into the street and the die; a
    kerf edge that moved, or was predicted a little off, gives thin patches along the lane."""
    strong = ((absdiff > level) & valid).astype(np.uint8)
    n, labels = cv2.connectedComponents(strong, connectivity=8)
    if n <= 1:
        return 0.0
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    xs, ys = xs.astype(np.float64), ys.astype(np.float64)
    cnt = np.bincount(lab, minlength=n).astype(np.float64)
    c = np.maximum(cnt, 1.0)
    mx, my = np.bincount(lab, xs, n) / c, np.bincount(lab, ys, n) / c
    vx = np.bincount(lab, xs * xs, n) / c - mx * mx + 1.0 / 12  # + a pixel's own extent
    vy = np.bincount(lab, ys * ys, n) / c - my * my + 1.0 / 12
    cxy = np.bincount(lab, xs * ys, n) / c - mx * my
    half, root = (vx + vy) / 2, np.sqrt(((vx - vy) / 2) ** 2 + cxy ** 2)
    major, minor = half + root, np.maximum(half - root, 1e-9)
    across = np.abs(np.sin(0.5 * np.arctan2(2 * cxy, vx - vy))) > 0.5
    ok = (cnt >= CRACK_MIN_PX) & (np.sqrt(major / minor) > CRACK_THIN) & across
    ok[0] = False
    return float(4.0 * np.sqrt(major[ok]).max()) if ok.any() else 0.0


def _largest_patch(absdiff: np.ndarray, valid: np.ndarray, level: float) -> float:
    strong = ((absdiff > level) & valid).astype(np.uint8)
    if not strong.any():
        return 0.0
    n, labels = cv2.connectedComponents(cv2.dilate(strong, np.ones((3, 3), np.uint8)), connectivity=8)
    return math.log10(1.0 + float(np.bincount(labels[strong > 0], minlength=n)[1:].max()))


def frame_features(z: np.ndarray, err: np.ndarray, block: int, diff: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(len(FEATURES) + len(TESTS),) float64 features of one frame, :data:`FEATURES` then :data:`TESTS`: ``z``
    (nh, nw) block z-scores (-inf where a block is not valid), ``err`` (H, W) the opened error map,
    ``block`` the block side in px, ``diff`` (H, W) frame - prediction and ``valid`` (H, W) bool where it
    counts (for ``change_area`` and the tests' features). NaN if no block is valid."""
    zz = np.where(np.isfinite(z), z, INVALID_Z)
    if not np.isfinite(z).any():
        return np.full(len(FEATURES) + len(TESTS), np.nan)
    absdiff = np.abs(cv2.GaussianBlur(diff.astype(np.float32), (0, 0), 0.7))
    area = _largest_patch(absdiff, valid, CHANGE_LEVEL)
    measured = {"splash_area": _largest_patch(absdiff, valid, SPLASH_LEVEL), "crack_length": crack_length(absdiff, valid)}
    tests = [measured[t] for t in TESTS]
    top = np.sort(zz.ravel())[::-1]
    top = np.r_[top, [INVALID_Z] * 3][:3]
    iy, ix = np.unravel_index(int(np.argmax(zz)), zz.shape)
    y0, x0 = max(0, (iy - 1) * block), max(0, (ix - 1) * block)
    region = err[y0:(iy + 2) * block, x0:(ix + 2) * block]
    peak = float(region.max()) if region.size else 0.0
    if peak <= 0:
        return np.r_[top, 1.0, -6.0, area, tests]
    _, labels = cv2.connectedComponents((region >= BLOB_FRACTION * peak).astype(np.uint8), connectivity=8)
    py, px = np.unravel_index(int(np.argmax(region)), region.shape)
    ys, xs = np.nonzero(labels == labels[py, px])
    elongation = 1.0
    if len(ys) > 2:
        lo, hi = np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(float)))
        elongation = math.sqrt((max(hi, 0.0) + 0.25) / (max(lo, 0.0) + 0.25))
    mass = float(region[region >= MASS_FRACTION * peak].sum())
    return np.r_[top, elongation, math.log10(mass + 1e-6), area, tests]


def standardise(feats: np.ndarray, floor: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(..., F) features raised to their clean medians ``floor`` (only "more than usual" counts) and divided by
    their clean standard deviations ``scale`` (F,)."""
    return (np.maximum(feats, floor) - floor) / scale


def is_scorer_file(path: str | Path) -> bool:
    """Whether ``path`` is a scorer file of any version of :data:`FORMAT` (JSON whose ``format`` is
    ``chdl.monitor-scorer/N``), readable by this chdl or not: what ``monitor-fit-scorer --overwrite`` may replace."""
    try:
        data = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("format", "")).startswith(FORMAT.split("/")[0] + "/")


@dataclasses.dataclass
class LearnedScorer:
    """A Gaussian mixture over the clean frames' standardised features; :meth:`score` = its negative log
    density (nats). ``predictor``: what the errors were fitted on ("constant-motion" or "checkpoint:<file
    name>"); ``width`` x ``height``: the frame size (the features are in pixels)."""

    floor: np.ndarray  # (F,) clean medians: each feature is raised to at least this
    scale: np.ndarray  # (F,) clean standard deviations
    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, F)
    covariances: np.ndarray  # (K, F, F)
    score_median: float  # median score (nats) of the frames it was fitted on: the alerts' fixed baseline
    score_sigma: float  # 1.4826 x their MAD: its spread (z = (score - score_median) / score_sigma)
    predictor: str
    width: int
    height: int
    fitted_on: dict
    alert_levels: dict | None = None  # {"z_on", "z_off", ...}: measured for this scorer (tools/monitor_operating_point.py)
    test_median: np.ndarray | None = None  # (len(TESTS),) each test feature's median over the fitted frames
    test_sigma: np.ndarray | None = None  # (len(TESTS),) ... 1.4826 x MAD (floored: TEST_SIGMA_FLOOR); z = (x - median) / sigma
    test_gain: list | None = None  # per test its weight, z_on / its own alert level, measured with z_on by
    #                                tools/monitor_operating_point.py (None: not measured yet, that test is off)
    features: tuple = FEATURES
    path: Path | None = None

    def __post_init__(self):
        from scipy.stats import multivariate_normal

        self._components = [multivariate_normal(m, c) for m, c in zip(self.means, self.covariances)]
        self._log_w = np.log(self.weights)
        if self.test_median is None:
            self.test_median = np.zeros(len(TESTS))
        if self.test_sigma is None:
            self.test_sigma = np.ones(len(TESTS))
        if self.test_gain is None:
            self.test_gain = [None] * len(TESTS)

    def transform(self, feats: np.ndarray) -> np.ndarray:
        """(..., F) features -> raised to the floor and standardised."""
        return standardise(feats, self.floor, self.scale)

    def nll(self, feats: np.ndarray) -> float:
        """The mixture's negative log density (nats) of one frame's features (:func:`frame_features`: the
        mixture's :data:`FEATURES` first); NaN if any is NaN."""
        feats = np.asarray(feats, float)[:len(FEATURES)]
        if not np.isfinite(feats).all():
            return math.nan
        from scipy.special import logsumexp

        x = self.transform(feats)
        return -float(logsumexp([lw + c.logpdf(x) for lw, c in zip(self._log_w, self._components)]))

    def test_z(self, feats: np.ndarray) -> np.ndarray:
        """(len(TESTS),) each test's z: its feature (after the mixture's in :func:`frame_features`) in robust
        sigmas above the fitted frames' median."""
        x = np.asarray(feats, float)[len(FEATURES):len(FEATURES) + len(TESTS)]
        return (x - self.test_median) / self.test_sigma

    def score(self, feats: np.ndarray) -> float:
        """The frame score (nats): the mixture's negative log density, or where a test says more, its z mapped
        onto the same scale: max(nll, score_median + score_sigma x gain_i x z_i over the tests with a gain), so
        (score - score_median) / score_sigma, what the alerts compare with z_on, is the largest of the
        mixture's z and the weighted test z's. NaN if a mixture feature is NaN."""
        nll = self.nll(feats)
        if not math.isfinite(nll):
            return nll
        z = self.test_z(feats)
        weighted = [g * v for g, v in zip(self.test_gain, z) if g is not None and math.isfinite(v)]
        return max([nll] + [self.score_median + self.score_sigma * w for w in weighted])

    def check_frames(self, shape: tuple[int, int]) -> None:
        """ScorerFileError unless frames of ``shape`` (H, W) are the size this scorer was fitted on."""
        if tuple(shape) != (self.height, self.width):
            raise ScorerFileError(f"{self.path or 'scorer'}: fitted on {self.width}x{self.height} frames, "
                                  f"these are {shape[1]}x{shape[0]}")

    def step_mismatch(self, step_um: float | None) -> str | None:
        """A warning when frames taken at stage step ``step_um`` (µm between positions) are not like those this
        scorer was fitted on (``fitted_on["stage_step_um"]``, the fitting recordings' steps; a file fitted before
        chdl recorded them has none): a lane that moves further between frames changes more, and the level measured
        for the scorer does not hold there (a scorer fitted on 60 µm lanes raised 11-15 false alarms in 54 clean
        frames at 100 µm, none at 60). None when it matches one of them within ``STEP_TOLERANCE``, or nothing is
        known."""
        fitted = [float(s) for s in (self.fitted_on or {}).get("stage_step_um") or []]
        if step_um is None or not fitted or any(abs(step_um - s) <= STEP_TOLERANCE * s for s in fitted):
            return None
        return (f"{self.path or 'scorer'} was fitted on lanes stepped {', '.join(f'{s:g}' for s in fitted)} µm "
                f"between frames, these step {step_um:g} µm: its alert level may not hold (false alarms); fit one on "
                "clean recordings stepped like these")

    def check_checkpoint(self, checkpoint) -> None:
        """ScorerFileError unless ``checkpoint`` is the file this scorer's errors were fitted with: its SHA-256,
        recorded in ``fitted_on["checkpoint_sha256"]`` by monitor-fit-scorer. Nothing to check for a scorer
        fitted on constant motion, for ``checkpoint`` None, or for a file without the hash (fitted before it
        was recorded)."""
        want = (self.fitted_on or {}).get("checkpoint_sha256")
        if checkpoint is None or want is None:
            return
        if file_sha256(checkpoint) != want:
            raise ScorerFileError(f"{self.path or 'scorer'}: fitted on the prediction errors of another checkpoint "
                                  f"({self.predictor}, SHA-256 {want[:12]}...), not {checkpoint}: fit one with "
                                  "monitor-fit-scorer for it")

    def to_json(self) -> dict:
        return {"format": FORMAT, "kind": "gaussian-mixture", "features": list(self.features),
                "floor": self.floor.tolist(), "scale": self.scale.tolist(), "weights": self.weights.tolist(),
                "means": self.means.tolist(), "covariances": self.covariances.tolist(),
                "score_median": self.score_median, "score_sigma": self.score_sigma,
                "tests": [{"feature": t, "level": TEST_LEVELS[t], "median": float(m), "sigma": float(sd), "gain": g}
                          for t, m, sd, g in zip(TESTS, self.test_median, self.test_sigma, self.test_gain)],
                "predictor": self.predictor, "width": self.width, "height": self.height, "fitted_on": self.fitted_on,
                "alert_levels": self.alert_levels}

    def save(self, path: str | Path) -> None:
        """Write the scorer file atomically (JSON)."""
        from acquisition import files

        files.write_bytes(Path(path), (json.dumps(self.to_json(), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> "LearnedScorer":
        """Read a scorer file; ScorerFileError (one line naming the file) if it is missing, not JSON, of
        another format, or inconsistent."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ScorerFileError(f"{path}: cannot read the scorer file ({e.strerror or e})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ScorerFileError(f"{path}: not a scorer file (not JSON: {str(e).splitlines()[0]})") from None
        if isinstance(d, dict) and d.get("format") in OLD_FORMATS:
            raise ScorerFileError(f"{path}: a scorer file of format {d['format']} ({OLD_FORMATS[d['format']]}); "
                                  f"this chdl reads {FORMAT}: fit it again with chdl monitor-fit-scorer")
        if isinstance(d, dict) and (newer := newer_format("scorer file of format", d.get("format"), FORMAT)):
            raise ScorerFileError(f"{path}: {newer}")
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ScorerFileError(f"{path}: not a scorer file (format {got!r}, expected {FORMAT!r})")
        try:
            if tuple(d["features"]) != FEATURES:
                raise ValueError(f"features {d['features']} (this chdl computes {list(FEATURES)})")
            f, k = len(FEATURES), len(d["weights"])
            arrays = {name: np.asarray(d[name], float) for name in ("floor", "scale", "weights", "means", "covariances")}
            shapes = {"floor": (f,), "scale": (f,), "weights": (k,), "means": (k, f), "covariances": (k, f, f)}
            for name, shape in shapes.items():
                if arrays[name].shape != shape or not np.isfinite(arrays[name]).all():
                    raise ValueError(f"{name}: expected finite numbers of shape {shape}, got {arrays[name].shape}")
            if k < 1 or (arrays["weights"] <= 0).any() or (arrays["scale"] <= 0).any():
                raise ValueError("weights and scales must be positive")
            med, sigma = _number(d, "score_median"), _number(d, "score_sigma")
            if not (math.isfinite(med) and math.isfinite(sigma) and sigma > 0):
                raise ValueError("score_median and score_sigma must be finite, score_sigma positive")
            tests = d["tests"]
            want = [(t, TEST_LEVELS[t]) for t in TESTS]
            if not isinstance(tests, list) or [(x.get("feature"), x.get("level")) if isinstance(x, dict) else x
                                               for x in tests] != want:
                raise ValueError(f"tests: expected {want} (feature, level), got {tests!r}")
            t_med = np.array([_number(x, "median", f"tests[{i}].") for i, x in enumerate(tests)])
            t_sigma = np.array([_number(x, "sigma", f"tests[{i}].") for i, x in enumerate(tests)])
            t_gain = [None if x.get("gain") is None else _number(x, "gain", f"tests[{i}].") for i, x in enumerate(tests)]
            if not (np.isfinite(t_med).all() and np.isfinite(t_sigma).all() and (t_sigma > 0).all()
                    and all(g is None or (math.isfinite(g) and g > 0) for g in t_gain)):
                raise ValueError("tests: medians and sigmas must be finite, sigmas and gains positive")
            levels = d.get("alert_levels")
            if levels is not None:
                z_on, z_off = _number(levels, "z_on", "alert_levels."), _number(levels, "z_off", "alert_levels.")
                if not (0 < z_off <= z_on < math.inf):
                    raise ValueError(f"alert_levels: need 0 < z_off <= z_on, got z_on {z_on}, z_off {z_off}")
            for key in ("width", "height"):
                if not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 1:
                    raise ValueError(f"{key}: expected a positive integer, got {d[key]!r}")
            if not isinstance(d["predictor"], str):
                raise ValueError(f"predictor: expected a string, got {d['predictor']!r}")
            return cls(**arrays, score_median=med, score_sigma=sigma, predictor=d["predictor"], width=d["width"],
                       height=d["height"], fitted_on=dict(d.get("fitted_on") or {}), alert_levels=levels,
                       test_median=t_med, test_sigma=t_sigma, test_gain=t_gain, path=path)
        except KeyError as e:
            raise ScorerFileError(f"{path}: scorer file lacks {e.args[0]!r}") from None
        except (ValueError, TypeError, np.linalg.LinAlgError) as e:
            raise ScorerFileError(f"{path}: bad scorer file: {str(e).splitlines()[0]}") from None


def _number(d: dict, key: str, where: str = "") -> float:
    """``d[key]`` as a float if it is a JSON number (not a string, a bool or null); ValueError naming the key."""
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where}{key}: expected a number, got {v!r}")
    return float(v)


def fit(features: np.ndarray, predictor: str, width: int, height: int, components: int = 4, seed: int = 0,
        fitted_on: dict | None = None) -> LearnedScorer:
    """Fit a :class:`LearnedScorer` to (N, F + T) features of clean frames (:func:`frame_features`; rows with a
    NaN are dropped): the mixture to the first F, each test's median and spread to the last T (their weights,
    ``test_gain``, are measured with the alert level: tools/monitor_operating_point.py). ValueError if fewer
    than 20 x ``components`` frames remain."""
    from sklearn.mixture import GaussianMixture

    from chdl.monitor.anomaly_score import robust_stats

    x = np.asarray(features, float)
    x = x[np.isfinite(x).all(axis=1)]
    tests = x[:, len(FEATURES):len(FEATURES) + len(TESTS)]
    x = x[:, :len(FEATURES)]
    if len(x) < 20 * components:
        raise ValueError(f"{len(x)} scored clean frames are too few to fit {components} components "
                         f"(at least {20 * components})")
    floor = np.median(x, axis=0)
    scale = np.maximum(x.std(axis=0), 1e-6)
    xs = standardise(x, floor, scale)
    # N_INIT starts, the best likelihood kept: with 3, seeds 0 and 2 of the same 2,100 frames gave two fits whose
    # alert levels were 12.5 and 9.5 and recall on held-out A 0.62 and 0.58; with 20 seeds 0-2 agree (docs/monitor.md)
    gm = GaussianMixture(components, covariance_type="full", reg_covar=1e-3, n_init=N_INIT, random_state=seed).fit(xs)
    meta = {"frames": int(len(x)), "components": components, "seed": seed, "n_init": N_INIT,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **(fitted_on or {})}
    scorer = LearnedScorer(floor=floor, scale=scale, weights=gm.weights_, means=gm.means_, covariances=gm.covariances_,
                           score_median=0.0, score_sigma=1.0, predictor=predictor, width=int(width), height=int(height),
                           fitted_on=meta)
    nll = np.array([scorer.nll(v) for v in x])
    scorer.score_median, scorer.score_sigma = robust_stats(nll, 1e-3)
    stats = [robust_stats(tests[:, i], TEST_SIGMA_FLOOR[t]) for i, t in enumerate(TESTS)]
    scorer.test_median, scorer.test_sigma = np.array([m for m, _ in stats]), np.array([sd for _, sd in stats])
    return scorer


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes (a checkpoint's identity for the scorers fitted with it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def refuse_anomalies(recordings: list, what: str) -> None:
    """ValueError (one line naming the recording) for the first recording whose truth lists process anomalies;
    one without any truth (a real capture) is taken as clean, as the user says. ``what``: the advice that ends
    the line (e.g. "fit on clean recordings only")."""
    from chdl.monitor.evaluate import run_truth

    for rec in recordings:
        try:
            anomalies = run_truth(rec).anomalies
        except ValueError:
            anomalies = []
        if anomalies:
            raise ValueError(f"{rec.path}: its truth lists {len(anomalies)} process anomalies; {what}")


def stage_step_um(manifest: dict) -> float | None:
    """The stage step (µm between positions) a recording's ``manifest.json`` records (``plan.step_um``), or None."""
    step = (manifest.get("plan") or {}).get("step_um")
    return float(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None


def fit_recordings(paths: list, checkpoint=None, components: int = 4, qc: bool = True, progress: bool = True) -> LearnedScorer:
    """Fit a scorer to clean recordings (recordings or folders of them): every frame scored by the monitor's
    own pipeline (predictor: constant motion, or ``checkpoint``; acquisition QC on unless ``qc=False``;
    alerts off), the features of every scored frame the QC did not flag and that was not predicted from one
    it flagged. ValueError (one line) for a
    recording whose truth lists process anomalies (fit on clean ones only), recordings of different frame
    sizes, or too few frames."""
    from tqdm import tqdm

    from acquisition.raw import Recording
    from chdl.monitor.evaluate import find_runs, method_setup, score_recording

    runs = find_runs(paths)
    feats, shape = [], None
    name = "constant-motion" if checkpoint is None else f"checkpoint:{Path(checkpoint).name}"
    recs = [Recording.open(r) for r in runs]
    refuse_anomalies(recs, "fit on clean recordings only")
    total = sum(len(rec.frames) for rec in recs)
    with tqdm(total=total, unit="frame", desc="fit-scorer", disable=not progress) as bar:
        for rec in recs:
            frames = [f for f in rec.frames if f.file is not None and f.status == "ok"]
            if not frames:
                continue
            s = rec.read(frames[0]).shape
            if shape is not None and s != shape:
                raise ValueError(f"{rec.path}: frames {s[1]}x{s[0]}, the others {shape[1]}x{shape[0]} (one scorer per frame size)")
            if shape is None:
                predictor, cfg = method_setup("checkpoint" if checkpoint else "constant-motion", checkpoint, s)
                cfg = dataclasses.replace(cfg, z_on=math.inf, z_off=math.inf, features=True)
            shape = s

            def counted(it):
                for f in it:
                    yield f
                    bar.update(1)
            for row in score_recording(rec, predictor, cfg, qc=qc, progress=counted):
                # not the frames the QC flagged, nor those predicted from one (after_acquisition): their errors
                # hold the fault, not the lane's normal dynamics
                if row["acquisition"] is None and not row["after_acquisition"] and row["features"] is not None:
                    feats.append(row["features"])
    if shape is None:
        raise ValueError(f"{', '.join(map(str, paths))}: no frames to fit on")
    if len(feats) < 20 * components:  # fit() would say so without naming the recordings
        raise ValueError(f"{', '.join(map(str, paths))}: {len(feats)} scored clean frames of {total} recorded are too "
                         f"few to fit {components} components (at least {20 * components}; a frame is scored only after "
                         "enough earlier frames of its lane): record more or longer lanes, or lower --components")
    return fit(np.array(feats).reshape(-1, len(FEATURES) + len(TESTS)), name, shape[1], shape[0], components,
               fitted_on={"recordings": [str(Path(r).resolve()) for r in runs], "qc": qc,
                          "stage_step_um": sorted({s for r in recs if (s := stage_step_um(r.manifest)) is not None}),
                          **({"checkpoint_sha256": file_sha256(checkpoint)} if checkpoint else {})})


def alert_levels(learned: LearnedScorer | None = None, z_on: float | None = None, z_off: float | None = None) -> dict:
    """``{"z_on", "z_off"}``: each as given, else the scorer's measured level (``alert_levels`` of its file),
    else the block scorer's defaults (chdl.monitor.Z_ON / Z_OFF). A ``z_on`` given alone brings its ``z_off``: the
    same fraction of it as the levels it replaces have (a lone --z-on 3 was refused: 3.75 above it)."""
    from chdl.monitor import Z_OFF, Z_ON

    own = (learned.alert_levels if learned is not None else None) or {}
    on, off = float(own.get("z_on", Z_ON)), float(own.get("z_off", Z_OFF))
    if z_on is not None and z_off is None:
        return {"z_on": float(z_on), "z_off": float(z_on) * off / on}
    return {"z_on": float(z_on if z_on is not None else on), "z_off": float(z_off if z_off is not None else off)}
