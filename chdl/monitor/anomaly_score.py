"""Process-anomaly scores from next-frame prediction error (Liu et al., CVPR 2018), made local.

Each frame of a lane pass is predicted from the previous ``t_in`` frames of the same pass (a predictor's
first predicted frame) and compared with what the camera delivered:

* error map: the per-pixel squared error (frame and prediction in [0, 1]), Gaussian-smoothed (sigma 1 px)
  against sensor noise, over the region the prediction covers (``valid``: a predictor that moves the
  last frame cannot know what entered the view; that strip is left out), then opened by line segments
  (``remove_specks``): the lane's normal dynamics put a few new debris particles into every frame, each
  a speck no predictor can foresee; anomalies extend along a line or over an area;
* block z-scores: log10 of the map's mean over blocks of ``block`` x ``block`` pixels, each against the
  running median and 1.4826 * MAD of the same block row in the last ``row_window`` frames that did not
  alert. The lane runs along x, so a block row is a band across it: the kerf band, where chips and debris
  change every frame, gets its own wider normal range, and the same error in the quiet street stands out;
* per-frame score: the largest block z-score (max-pooled: the anomalies here are local, a whole-frame
  PSNR would dilute a 10-pixel crack in 30,000 pixels; ``mode="global"`` keeps that score as a baseline);
  with ``ScorerConfig.scorer_file`` instead the negative log density of a few features of the block
  z-scores and the error map under a model fitted on clean frames (``chdl.monitor.learned_score``);
* normalisation: a running robust baseline of the frame scores, median and 1.4826 * MAD of the last
  ``window`` scores that did not alert (at least ``sigma_floor``); ``threshold = median + z_on * sigma``;
  a learned score instead has the fixed baseline of the clean frames it was fitted on (``score_median``,
  ``score_sigma`` of its file);
* alerts with hysteresis: the alert turns on when the score exceeds ``median + z_on * sigma`` and off when it
  falls below ``median + z_off * sigma``; a new lane pass starts with the alert off. Warm-up: the first
  ``min_history`` frames only fill the row baseline (score NaN), the next ``min_history`` the frame
  baseline (no alert);
* box: the connected group of blocks around the worst one whose error is at least ``box_fraction`` of it,
  refined to the pixels there (and one block around) whose error is at least ``box_fraction`` of the
  largest, in pixels ``[x0, y0, x1, y1]`` (inclusive-exclusive).

First frames of a pass: frame 0 has nothing to predict from and frame 1 no motion to measure, so scoring
starts at the third frame of a pass (two predecessors). With 2 .. t_in - 1 predecessors a checkpoint
predictor falls back to constant motion over the frames there are (a model needs exactly t_in).

Predictors (all take ``history`` (T, H, W) float32 in [0, 1], oldest first, and return ``(prediction (H, W),
valid (H, W) bool)``): :class:`ConstantMotion` (``diffuma.motion``: the last frame moved by the measured
stage motion), :class:`CopyLast` (the last frame unchanged: a poor predictor of a moving stage, kept as a
baseline), :class:`CheckpointPredictor` (any chdl checkpoint, e.g. DIFFUMA). Baseline (a) of the issue,
the difference to the previous frame, is :class:`CopyLast` with ``mode="global"`` (whole-frame MSE).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from chdl.monitor import Z_OFF, Z_ON

MIN_PREDECESSORS = 2


def block_size(width: int) -> int:
    """Scoring block side in pixels: 16 at 200 px wide, 64 at 800 (blocks cover the same 96 um of field).
    Chosen on simulated lanes: 8-24 px at 200x150 were tried; larger blocks average out the single debris
    particles and chips that the lane's normal dynamics add every frame (docs/monitor.md)."""
    return max(4, int(round(width / 12.5)))


def motion_valid(shape: tuple[int, int], v: tuple[float, float], margin: int = 2) -> np.ndarray:
    """(H, W) bool: pixels whose source ``(y - dy, x - dx)`` lies inside the frame; along an axis that moves
    by half a pixel or more, ``margin`` more pixels on the side the content enters from are left out too
    (interpolated from the replicated border)."""
    h, w = shape
    dy, dx = v
    my, mx = (margin if abs(dy) >= 0.5 else 0), (margin if abs(dx) >= 0.5 else 0)
    ys, xs = np.arange(h)[:, None] - dy, np.arange(w)[None, :] - dx
    return (ys >= -0.01 + my * (dy > 0)) & (ys <= h - 1.0 + 0.01 - my * (dy < 0)) & \
        (xs >= -0.01 + mx * (dx > 0)) & (xs <= w - 1.0 + 0.01 - mx * (dx < 0))


def speck_length(width: int) -> int:
    """Length (px) of the line openings that remove point-like errors: 7 at 200 px wide (42 um of field)."""
    return max(3, int(round(width / 28)) | 1)


def remove_specks(err: np.ndarray, length: int) -> np.ndarray:
    """Grey-level opening of the error map by 4 line segments (0, 45, 90, 135 degrees) of ``length`` px, the
    largest of the four: keeps errors that extend along some line (a crack, a widened edge, a chip cluster)
    and removes specks smaller than ``length`` in every direction (single debris particles)."""
    h = np.zeros((length, length), np.uint8)
    h[length // 2] = 1
    kernels = (h, np.ascontiguousarray(h.T), np.eye(length, dtype=np.uint8),
               np.ascontiguousarray(np.fliplr(np.eye(length, dtype=np.uint8))))
    out = cv2.morphologyEx(err, cv2.MORPH_OPEN, kernels[0])
    for k in kernels[1:]:
        np.maximum(out, cv2.morphologyEx(err, cv2.MORPH_OPEN, k), out=out)
    return out


def cut_front_zone(image: np.ndarray, dark: float = 0.45, ahead: float = 0.16, behind: float = 0.08,
                   across: float = 0.1, min_rows: int = 3) -> np.ndarray:
    """(H, W) bool: where an advancing cut front can change the next frame, found from ``image`` alone
    (the prediction: the last frame moved to the current view; (H, W) float in [0, 1]).

    The kerf is a long dark band along the lane (x). Where it *ends inside the frame*, the blade is cutting
    there and the next frame shows newly cut kerf (and a debris spray) ahead of that end: a change no
    frame-to-frame predictor foresees, and the largest error of clean lanes. Found as: pixels darker than
    ``dark`` x the image's median, closed over 5 x 3 px (striations across the kerf, small gaps), opened
    with a horizontal line of W/8 px; per row, the first start and the last end of runs at least W/4 long,
    unless another run lies beyond them in that row (a band interrupted, e.g. by a debris splash, has
    not ended); ends that line up over at least ``min_rows`` rows and 60 % of their band's rows (a kerf
    that only widens from some point on has not ended) are a cut front. The zone around each is
    ``ahead`` x W px in the direction the band ends towards, ``behind`` x W px back into the band, and
    ``across`` x W px above and below it (fractions of the width, so the same field of view at any size).
    An empty zone when no band ends inside the frame (no front in view, or no kerf at all)."""
    h, w = image.shape
    mask = (image < dark * float(np.median(image))).astype(np.uint8)
    run = max(3, int(round(w / 8)))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 3), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((1, run), np.uint8))
    steps = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)  # +1 at a run's start, -1 after it
    ends = np.zeros((2, h, w), np.uint8)  # [0]: bands ending towards +x, [1]: towards -x
    long_rows = np.zeros(h, bool)
    for r in np.nonzero(mask.any(axis=1))[0]:
        starts, stops = np.nonzero(steps[r] == 1)[0], np.nonzero(steps[r] == -1)[0]  # runs [start, stop)
        long = stops - starts >= 2 * run
        if not long.any():
            continue
        long_rows[r] = True
        first, last = starts[long].min(), stops[long].max()
        if last < w - 2 and not (starts >= last).any():
            ends[0, r, last - 1] = 1
        if first > 2 and not (stops <= first).any():
            ends[1, r, first] = 1
    zone = np.zeros((h, w), bool)
    a, b, c = (int(round(w * f)) for f in (ahead, behind, across))
    # bands: consecutive rows with a long run; an end must cover most of its band's rows (a band that only
    # widens or narrows there, e.g. a worn blade's kerf, has not ended)
    band_id = np.cumsum(np.r_[1, np.diff(long_rows.astype(np.int8)) != 0])
    band_rows = np.bincount(band_id, weights=long_rows)
    for side in (0, 1):
        if not ends[side].any():
            continue
        n, _, stats, _ = cv2.connectedComponentsWithStats(cv2.dilate(ends[side], np.ones((1, 7), np.uint8)), connectivity=8)
        for x, y, ww, hh, _ in stats[1:]:
            if hh < max(min_rows, 0.6 * band_rows[band_id[y:y + hh]].max()):
                continue
            xc = x + ww // 2
            x0, x1 = (xc - b, xc + a) if side == 0 else (xc - a, xc + b)
            zone[max(0, y - c):y + hh + c, max(0, x0):max(0, x1)] = True
    return zone


class CopyLast:
    """The last frame as the prediction (valid everywhere)."""

    name = "copy-last"
    t_in = 1

    def predict(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return history[-1], np.ones(history.shape[1:], bool)


class ConstantMotion:
    """The last frame moved by the clip's global motion (``diffuma.motion.extrapolate``), over the last
    ``t_in`` frames (fewer at the start of a pass); valid where the moved frame has content."""

    name = "constant-motion"

    def __init__(self, t_in: int = 5):
        self.t_in = t_in

    def predict(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from diffuma.motion import estimate_velocity, translate

        x = torch.from_numpy(np.ascontiguousarray(history[-self.t_in:], np.float32))[None, :, None]
        v = estimate_velocity(x)                                             # (1, 2) dy, dx
        pred = translate(x[:, -1], v[:, None])[0, 0, 0].numpy()
        return pred, motion_valid(pred.shape, (float(v[0, 0]), float(v[0, 1])))


class CheckpointPredictor:
    """A trained chdl model (``chdl train`` checkpoint): its first predicted frame from the last ``t_in``
    frames. Valid where constant motion has content (the model cannot know what entered the view either).
    With fewer than ``t_in`` frames: constant motion. ValueError (one line naming the file) for a
    checkpoint that cannot be loaded or was trained on another frame size."""

    def __init__(self, path: str | Path, shape: tuple[int, int] | None = None, device: str = "cpu"):
        from diffuma.training.checkpoint import build_model_from_checkpoint, load_checkpoint

        self.path = Path(path)
        state = load_checkpoint(self.path)
        info = state["data"]
        self.t_in = int(info["in_frames"])
        self.trained_max_value = info.get("max_value")  # the intensity scale it learned (None: not recorded)
        if shape is not None and (info["channels"], info["height"], info["width"]) != (1, *shape):
            raise ValueError(f"{self.path}: trained on frames {info['channels']}x{info['height']}x{info['width']} "
                             f"(C,H,W), the frames to predict are 1x{shape[0]}x{shape[1]}")
        self.model, _ = build_model_from_checkpoint(state, "auto", self.path)
        self.model.to(device)
        self.device = device
        self.name = f"{state['model_name']}:{self.path.name}"
        self.fallback = ConstantMotion(self.t_in)  # (predict runs under inference_mode: no global grad switch, which
        # in-process monitor-eval and monitor-fit-scorer left off for everything after them)

    def predict(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if len(history) < self.t_in:
            return self.fallback.predict(history)
        from diffuma.motion import estimate_velocity

        x = torch.from_numpy(np.ascontiguousarray(history[-self.t_in:], np.float32))[None, :, None].to(self.device)
        with torch.inference_mode():
            pred = self.model(x)[0, 0, 0].float().clamp(0, 1).cpu().numpy()
            v = estimate_velocity(x)
        return pred, motion_valid(pred.shape, (float(v[0, 0]), float(v[0, 1])))


def scale_mismatch(checkpoint: str | Path, trained_max_value: float | None, max_value: float) -> str | None:
    """The warning for a checkpoint trained on frames scaled by another max_value than the monitored ones'
    (e.g. a Mono16 dataset of 12-bit data against a 12-bit recording: its predictions are off by 16x), or None.
    As ``chdl eval`` and ``chdl predict`` say it (``diffuma.training.data.other_max_value``)."""
    from diffuma.training.data import other_max_value

    trained = other_max_value({"max_value": trained_max_value}, max_value)
    if trained is None:
        return None
    return (f"{checkpoint} was trained on frames scaled by max_value {trained:g}; these frames are scaled by "
            f"{float(max_value):g}, so its predictions (and the scores) are not the ones it learned")


def make_predictor(name: str, checkpoint: str | Path | None = None, t_in: int = 5,
                   shape: tuple[int, int] | None = None):
    """"constant-motion", "copy-last" or "checkpoint" (needs ``checkpoint``)."""
    if checkpoint is not None or name == "checkpoint":
        return CheckpointPredictor(checkpoint, shape)
    if name == "constant-motion":
        return ConstantMotion(t_in)
    if name == "copy-last":
        return CopyLast()
    raise ValueError(f"unknown predictor {name!r} (constant-motion, copy-last, or a checkpoint)")


@dataclasses.dataclass
class ScorerConfig:
    mode: str = "block"  # "block": max-pooled block error; "global": whole-frame MSE (Liu et al.)
    block: int | None = None  # block side, px (None: block_size(width))
    window: int = 300  # scores in the running baseline
    min_history: int = 10  # no alert before this many scores are in the baseline
    z_on: float = Z_ON  # alert on above median + z_on * sigma (chdl.monitor.Z_ON: a measured operating point)
    z_off: float = Z_OFF  # ... and off below median + z_off * sigma
    sigma_floor: float = 0.1  # the frame baseline's spread is at least this (score units)
    row_window: int = 100  # frames in the per-block-row baseline
    row_sigma_floor: float = 0.15  # log10 units: a block row's spread is at least this
    open_px: int | None = None  # line length of the opening that removes specks (None: speck_length(width))
    box_fraction: float = 0.3  # blocks (then pixels) at >= this fraction of the worst one's error make up the box
    cut_front: bool = True  # block mode: leave out the zone around a kerf that ends in view (cut_front_zone)
    scorer_file: str | None = None  # block mode: a learned scorer (chdl.monitor.learned_score) gives the frame score
    features: bool = False  # block mode: compute the learned scorer's features (Scored.features) even without one


@dataclasses.dataclass
class Scored:
    """One scored frame."""

    score: float
    threshold: float
    z: float  # (score - baseline median) / baseline sigma: the level the alert compares with z_on (NaN in warm-up)
    alert: bool  # alert state after this frame
    new_alert: bool  # the alert turned on at this frame
    box: list[int] | None  # [x0, y0, x1, y1] of the worst region
    error: np.ndarray  # (H, W) float32 error map (squared error, smoothed; 0 outside the valid region)
    features: np.ndarray | None = None  # the learned scorer's features (learned_score.FEATURES), if computed


def robust_stats(values: np.ndarray, sigma_floor: float) -> tuple[float, float]:
    """(median, max(sigma_floor, 1.4826 * MAD)) of a 1-D array of values (the robust normal-consistent spread)."""
    med = float(np.median(values))
    return med, max(sigma_floor, 1.4826 * float(np.median(np.abs(values - med))))


class RobustBaseline:
    """Median and 1.4826 * MAD of the last ``window`` values added."""

    def __init__(self, window: int, sigma_floor: float):
        self.values: collections.deque = collections.deque(maxlen=window)
        self.sigma_floor = sigma_floor

    def __len__(self) -> int:
        return len(self.values)

    def add(self, v: float) -> None:
        self.values.append(float(v))

    def stats(self) -> tuple[float, float]:
        """(median, sigma); (nan, sigma_floor) while empty."""
        if not self.values:
            return math.nan, self.sigma_floor
        return robust_stats(np.fromiter(self.values, float), self.sigma_floor)


class FrameScorer:
    """Scores frames against predictions, keeps the running baseline and the alert state (one stream)."""

    def __init__(self, config: ScorerConfig | None = None):
        """ScorerFileError (a ValueError, one line naming the file) for a ``scorer_file`` that cannot be used."""
        self.config = config or ScorerConfig()
        self.learned = None
        if self.config.scorer_file is not None:
            from chdl.monitor.learned_score import LearnedScorer

            self.learned = LearnedScorer.load(self.config.scorer_file)
        self._frames_checked = False
        self.baseline = RobustBaseline(self.config.window, self.config.sigma_floor)
        self.rows: collections.deque = collections.deque(maxlen=self.config.row_window)
        self.alert = False

    def new_pass(self) -> None:
        """A new lane pass: the alert is reset (the baseline is kept)."""
        self.alert = False

    def error_map(self, frame: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> np.ndarray:
        err = cv2.GaussianBlur(np.square(frame.astype(np.float32) - pred.astype(np.float32)), (0, 0), 1.0)
        err[~valid] = 0.0
        if self.config.mode == "block":
            err = remove_specks(err, self.config.open_px or speck_length(err.shape[1]))
        return err

    def blocks(self, err: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(log10 block means (nh, nw), block fully valid (nh, nw), block side)."""
        h, w = err.shape
        b = self.config.block or block_size(w)
        nh, nw = h // b, w // b
        e = err[:nh * b, :nw * b].reshape(nh, b, nw, b).mean(axis=(1, 3))
        ok = valid[:nh * b, :nw * b].reshape(nh, b, nw, b).all(axis=(1, 3))
        return np.log10(e + 1e-6), ok, b

    def row_z(self, logs: np.ndarray, ok: np.ndarray) -> np.ndarray | None:
        """Block z-scores against the running median / MAD of the same block row in earlier frames
        (None until ``min_history`` frames are in)."""
        if len(self.rows) < self.config.min_history or self.rows[-1].shape != logs.shape:
            return None
        hist = np.stack(self.rows).transpose(1, 0, 2).reshape(logs.shape[0], -1)  # (nh, frames * nw)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(hist, axis=1)
                sig = 1.4826 * np.nanmedian(np.abs(hist - med[:, None]), axis=1)
        med = np.nan_to_num(med, nan=float(np.nanmedian(hist)) if np.isfinite(hist).any() else 0.0)
        sig = np.maximum(np.nan_to_num(sig, nan=self.config.row_sigma_floor), self.config.row_sigma_floor)
        return np.where(ok, (logs - med[:, None]) / sig[:, None], -np.inf)

    def raw_score(self, err: np.ndarray, valid: np.ndarray, diff: np.ndarray) -> tuple[
            float, list[int] | None, np.ndarray | None, np.ndarray | None]:
        """(score, box, block log errors for the row baseline, features or None) of an error map ``err``
        (``diff``: frame - prediction, for the learned scorer's ``change_area``). Block mode:
        the largest block z-score against its row's running baseline, or with a learned scorer the negative
        log density of the frame's features (NaN until the row baseline exists: the frame is not scored, its
        blocks only feed the row baseline); global mode: log10 of the whole-frame mean."""
        cfg = self.config
        if cfg.mode == "global":
            return (math.log10(float(err[valid].mean()) + 1e-8) if valid.any() else math.nan), None, None, None
        h, w = err.shape
        if self.learned is not None and not self._frames_checked:
            self.learned.check_frames((h, w))
            self._frames_checked = True
        logs, ok, b = self.blocks(err, valid)
        if not ok.any():
            return math.nan, None, None, None
        z = self.row_z(logs, ok)
        rank = z if z is not None else np.where(ok, logs, -np.inf)
        iy, ix = np.unravel_index(int(np.argmax(rank)), rank.shape)
        e = np.where(ok, 10.0 ** logs, 0.0)
        mask = ((e >= cfg.box_fraction * e[iy, ix]) & (rank > rank[iy, ix] - 3.0)).astype(np.uint8)
        _, comp = cv2.connectedComponents(mask, connectivity=8)
        ys, xs = np.nonzero(comp == comp[iy, ix])
        # refine to pixels: within those blocks and one block around, the pixels at >= box_fraction of the
        # largest pixel error there
        y0, y1 = max(0, (ys.min() - 1) * b), min(h, (ys.max() + 2) * b)
        x0, x1 = max(0, (xs.min() - 1) * b), min(w, (xs.max() + 2) * b)
        region = err[y0:y1, x0:x1]
        py, px = np.nonzero(region >= cfg.box_fraction * region.max())
        box = [int(x0 + px.min()), int(y0 + py.min()), int(x0 + px.max() + 1), int(y0 + py.max() + 1)]
        if z is None:
            return math.nan, box, np.where(ok, logs, np.nan), None
        feats = None
        if self.learned is not None or cfg.features:
            from chdl.monitor.learned_score import frame_features

            feats = frame_features(z, err, b, diff, valid)
        s = self.learned.score(feats) if self.learned is not None else float(rank[iy, ix])
        return s, box, np.where(ok, logs, np.nan), feats

    def score(self, frame: np.ndarray, pred: np.ndarray, valid: np.ndarray, learn: bool = True) -> Scored:
        """Score one frame ((H, W) in [0, 1]) against its prediction. ``learn=False``: the score does not
        enter the baseline (e.g. a frame the acquisition QC flagged) and cannot raise an alert."""
        cfg = self.config
        if cfg.mode == "block" and cfg.cut_front:
            valid = valid & ~cut_front_zone(pred)
        err = self.error_map(frame, pred, valid)
        s, box, logs, feats = self.raw_score(err, valid, frame.astype(np.float32) - pred.astype(np.float32))
        if self.learned is not None:  # a learned score is calibrated on clean frames: a fixed baseline
            med, sigma, ready = self.learned.score_median, self.learned.score_sigma, True
        else:
            med, sigma = self.baseline.stats()
            ready = len(self.baseline) >= cfg.min_history
        on, off = med + cfg.z_on * sigma, med + cfg.z_off * sigma
        was = self.alert
        if ready and learn and math.isfinite(s):
            self.alert = s > on if not was else s >= off
        elif not learn:
            self.alert = was and math.isfinite(s) and s >= off
        if learn and not self.alert:
            if math.isfinite(s):
                self.baseline.add(s)
            if logs is not None:
                self.rows.append(logs)
        z = (s - med) / sigma if ready and math.isfinite(s) else math.nan
        return Scored(score=s, threshold=on if ready else math.inf, z=z, alert=self.alert,
                      new_alert=self.alert and not was, box=box, error=err, features=feats)


class LaneStream:
    """Frames of a recording in order -> predictions and scores, one lane pass at a time.

    ``push(frame, lane, position_index)`` returns ``(prediction, Scored)`` or None for a frame that is not
    scored (the first two of a pass, or after a gap in the positions: frames the monitor skipped).

    Frames the acquisition QC flagged (``flagged``, or ``forget`` for the first frames of a pass, flagged late)
    would make the next frames' predictions wrong (a jerked or dimmed frame moved forward): a flagged frame that
    was predicted enters the history as its prediction where that is valid (the strip that entered the view
    stays the frame's own), and the frame after it, whose prediction still carries that strip, cannot raise an
    alert (:attr:`quarantined`); a flagged first frame, never predicted, leaves the history with the frames before
    it, and the frame scored now cannot alert either. (Before, the frame after a flagged one raised a process
    alert on the simulator's sample recording after 6 of its 6 mid-pass acquisition faults.)"""

    def __init__(self, predictor, scorer: FrameScorer, keep: int | None = None):
        self.predictor, self.scorer = predictor, scorer
        self.keep = max(getattr(predictor, "t_in", 1), MIN_PREDECESSORS, keep or 0)
        self.history: list[tuple[int, np.ndarray]] = []  # (position index, frame) of the pass, oldest first
        self.lane = self.position = None
        self.after_flag = False  # the last frame pushed was flagged
        self.quarantined = False  # the frame pushed last was predicted from a flagged one: no alert

    def push(self, frame: np.ndarray, lane: int, position_index: int, learn: bool = True, flagged: bool = False,
             forget: Sequence[int] = ()):
        if lane != self.lane:
            self.scorer.new_pass()
            self.history, self.after_flag = [], False
        elif self.position is not None and position_index != self.position + 1:
            self.history, self.after_flag = [], False  # a gap: the motion between the frames we have is not one step
        self.lane, self.position = lane, position_index
        self.quarantined = self.after_flag
        if forget:  # first frames flagged late: they and the frames before them leave the history
            last = max(forget)
            self.history = [(p, f) for p, f in self.history if p > last]
            self.quarantined = True
        out = None
        keep = frame
        if len(self.history) >= MIN_PREDECESSORS:
            pred, valid = self.predictor.predict(np.stack([f for _, f in self.history]))
            out = pred, self.scorer.score(frame, pred, valid, learn=learn and not self.quarantined)
            if flagged:
                keep = np.where(valid, pred, frame).astype(frame.dtype, copy=False)
        self.history = (self.history + [(position_index, keep)])[-self.keep:]
        self.after_flag = flagged
        return out


@dataclasses.dataclass
class FrameResult:
    """What the monitor reports for one scored frame (a line of scores.jsonl, plus the images)."""

    frame: int
    lane: int
    position: int
    score: float
    threshold: float
    z: float  # the score in baseline sigmas above the baseline median (Scored.z)
    alert: bool
    new_alert: bool
    acquisition: str | None  # None | "vibration" | "illumination" | "no image"
    box: list[int] | None
    pixels: np.ndarray  # (H, W) in [0, 1]
    prediction: np.ndarray  # (H, W) in [0, 1]
    error: np.ndarray  # (H, W) error map
    features: np.ndarray | None = None  # Scored.features
    earlier: list = dataclasses.field(default_factory=list)  # EarlierFlag of frames before this one, flagged now
    after_acquisition: bool = False  # predicted from a frame the acquisition QC flagged: cannot raise an alert


@dataclasses.dataclass
class EarlierFlag:
    """An earlier frame of the pass that the acquisition QC flagged late (the first frames of a pass are judged
    when the third has come: chdl.monitor.acquisition_qc), reported with the next scored frame."""

    frame: int
    lane: int
    position: int
    acquisition: str  # "vibration" | "illumination" | "no image"
    pixels: np.ndarray  # (H, W) in [0, 1]
    judged_at: int = -1  # the frame with which the QC judged it (itself: flagged on arrival, but not scored)


class MonitorPipeline:
    """Acquisition QC + prediction + scoring of one recording's frames, in order: ``push(index, lane,
    position_index, raw_pixels)`` -> FrameResult or None (frame not scored). A frame the acquisition QC
    flags is scored but neither enters the baseline nor raises a process alert. ``qc=False`` skips the QC."""

    def __init__(self, predictor, max_value: float, scorer: ScorerConfig | None = None, qc: bool = True):
        from chdl.monitor.acquisition_qc import AcquisitionQC

        self.max_value = float(max_value)
        self.stream = LaneStream(predictor, FrameScorer(scorer))
        self.qc = AcquisitionQC(max_value) if qc else None
        self.indices: dict[int, int] = {}  # position -> frame index in the current lane
        self.earlier: list[EarlierFlag] = []  # late QC flags not reported yet

    @property
    def predictor(self):
        return self.stream.predictor

    def take_earlier(self) -> list[EarlierFlag]:
        """The QC flags of frames not reported yet (judged late, or flagged on arrival but not scored); cleared. A
        scored frame's result carries them; after an unscored frame the caller takes them here."""
        earlier, self.earlier = self.earlier, []
        return earlier

    def push(self, index: int, lane: int, position: int, raw: np.ndarray) -> FrameResult | None:
        if lane != self.stream.lane:
            self.indices = {}
        self.indices[position] = index
        flag = self.qc.check(raw, lane, position) if self.qc is not None else None
        scale = np.float32(1.0 / self.max_value)
        late = self.qc.late if self.qc is not None else []
        for p, cause, pixels in late:
            self.earlier.append(EarlierFlag(self.indices[p], lane, p, cause, pixels.astype(np.float32) * scale, index))
        frame = raw.astype(np.float32) * scale
        out = self.stream.push(frame, lane, position, learn=flag is None, flagged=flag is not None,
                               forget=[p for p, _, _ in late])
        if out is None:  # not scored (a pass's first frames), but a flag on arrival ("no image") is still reported
            if flag is not None:
                self.earlier.append(EarlierFlag(index, lane, position, flag, frame, index))
            return None
        pred, s = out
        earlier = self.take_earlier()
        return FrameResult(frame=index, lane=lane, position=position, score=s.score, threshold=s.threshold,
                           z=s.z, alert=s.alert, new_alert=s.new_alert, acquisition=flag, box=s.box, pixels=frame,
                           prediction=pred, error=s.error, features=s.features, earlier=earlier,
                           after_acquisition=self.stream.quarantined)
