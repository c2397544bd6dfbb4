"""Process-anomaly scores from next-frame prediction error (Liu et al., CVPR 2018), made local.

Each frame of a lane pass is predicted from the previous ``t_in`` frames of the same pass (a predictor's
first predicted frame) and compared with what the camera delivered:

* error map: the per-pixel squared error (frame and prediction in [0, 1]), Gaussian-smoothed (sigma 1 px)
  against sensor noise, over the region the prediction covers (``valid``: a predictor that moves the
  last frame cannot know what entered the view; that strip is left out);
* per-frame score: log10 of the largest mean error over blocks of ``block`` x ``block`` pixels (max-pooled:
  the anomalies here are local, a whole-frame PSNR would dilute a 10-pixel crack in 30,000 pixels);
* normalisation: a running robust baseline, median and 1.4826 * MAD of the last ``window`` scores that did
  not alert (at least ``sigma_floor`` in log10 units); ``threshold = median + z_on * sigma``;
* alerts with hysteresis: the alert turns on when the score exceeds ``median + z_on * sigma`` and off when it
  falls below ``median + z_off * sigma``; a new lane pass starts with the alert off. No alert before
  ``min_history`` scores are in the baseline;
* box: the connected group of blocks around the worst one whose error is at least ``box_fraction`` of it,
  in pixels ``[x0, y0, x1, y1]`` (inclusive-exclusive).

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

import cv2
import numpy as np

MIN_PREDECESSORS = 2


def block_size(width: int) -> int:
    """Scoring block side in pixels: 16 at 200 px wide, 64 at 800 (blocks cover the same 96 um of field).
    Chosen on simulated lanes: 8-24 px at 200x150 were tried; larger blocks average out the single debris
    particles and chips that the lane's normal dynamics add every frame (docs/monitor.md)."""
    return max(4, int(round(width / 12.5)))


def motion_valid(shape: tuple[int, int], v: tuple[float, float], margin: int = 2) -> np.ndarray:
    """(H, W) bool: pixels whose source ``(y - dy, x - dx)`` lies inside the frame (``margin`` px inside)."""
    h, w = shape
    dy, dx = v
    ys, xs = np.arange(h)[:, None] - dy, np.arange(w)[None, :] - dx
    return (ys >= margin) & (ys <= h - 1 - margin) & (xs >= margin) & (xs <= w - 1 - margin)


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
        import torch

        from diffuma.training.checkpoint import build_model_from_checkpoint, load_checkpoint

        self.path = Path(path)
        state = load_checkpoint(self.path)
        info = state["data"]
        self.t_in = int(info["in_frames"])
        if shape is not None and (info["channels"], info["height"], info["width"]) != (1, *shape):
            raise ValueError(f"{self.path}: trained on frames {info['channels']}x{info['height']}x{info['width']} "
                             f"(C,H,W), the camera delivers 1x{shape[0]}x{shape[1]}")
        self.model, _ = build_model_from_checkpoint(state, "auto", self.path)
        self.model.to(device)
        self.device = device
        self.name = f"{state['model_name']}:{self.path.name}"
        self.fallback = ConstantMotion(self.t_in)
        torch.set_grad_enabled(False)

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
    z_on: float = 6.0  # alert on above median + z_on * sigma
    z_off: float = 3.0  # ... and off below median + z_off * sigma
    sigma_floor: float = 0.03  # log10 units: the baseline spread is at least this
    box_fraction: float = 0.3  # blocks at >= this fraction of the worst block's error make up the box


@dataclasses.dataclass
class Scored:
    """One scored frame."""

    score: float
    threshold: float
    alert: bool  # alert state after this frame
    new_alert: bool  # the alert turned on at this frame
    box: list[int] | None  # [x0, y0, x1, y1] of the worst region
    error: np.ndarray  # (H, W) float32 error map (squared error, smoothed; 0 outside the valid region)


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
        v = np.fromiter(self.values, float)
        med = float(np.median(v))
        return med, max(self.sigma_floor, 1.4826 * float(np.median(np.abs(v - med))))


class FrameScorer:
    """Scores frames against predictions, keeps the running baseline and the alert state (one stream)."""

    def __init__(self, config: ScorerConfig | None = None):
        self.config = config or ScorerConfig()
        self.baseline = RobustBaseline(self.config.window, self.config.sigma_floor)
        self.alert = False

    def new_pass(self) -> None:
        """A new lane pass: the alert is reset (the baseline is kept)."""
        self.alert = False

    def error_map(self, frame: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> np.ndarray:
        err = cv2.GaussianBlur(np.square(frame.astype(np.float32) - pred.astype(np.float32)), (0, 0), 1.0)
        err[~valid] = 0.0
        return err

    def raw_score(self, err: np.ndarray, valid: np.ndarray) -> tuple[float, list[int] | None]:
        """(log10 score, box) of an error map."""
        cfg = self.config
        if cfg.mode == "global":
            return math.log10(float(err[valid].mean()) + 1e-8) if valid.any() else math.nan, None
        h, w = err.shape
        b = cfg.block or block_size(w)
        nh, nw = h // b, w // b
        e = err[:nh * b, :nw * b].reshape(nh, b, nw, b).mean(axis=(1, 3))
        ok = valid[:nh * b, :nw * b].reshape(nh, b, nw, b).all(axis=(1, 3))
        if not ok.any():
            return math.nan, None
        e = np.where(ok, e, 0.0)
        iy, ix = np.unravel_index(int(np.argmax(e)), e.shape)
        worst = float(e[iy, ix])
        mask = (e >= cfg.box_fraction * worst).astype(np.uint8)
        _, comp = cv2.connectedComponents(mask, connectivity=8)
        ys, xs = np.nonzero(comp == comp[iy, ix])
        box = [int(xs.min() * b), int(ys.min() * b), int((xs.max() + 1) * b), int((ys.max() + 1) * b)]
        return math.log10(worst + 1e-8), box

    def score(self, frame: np.ndarray, pred: np.ndarray, valid: np.ndarray, learn: bool = True) -> Scored:
        """Score one frame ((H, W) in [0, 1]) against its prediction. ``learn=False``: the score does not
        enter the baseline (e.g. a frame the acquisition QC flagged) and cannot raise an alert."""
        cfg = self.config
        err = self.error_map(frame, pred, valid)
        s, box = self.raw_score(err, valid)
        med, sigma = self.baseline.stats()
        ready = len(self.baseline) >= cfg.min_history
        on, off = med + cfg.z_on * sigma, med + cfg.z_off * sigma
        was = self.alert
        if ready and learn and math.isfinite(s):
            self.alert = s > on if not was else s >= off
        elif not learn:
            self.alert = was and math.isfinite(s) and s >= off
        if learn and math.isfinite(s) and not self.alert:
            self.baseline.add(s)
        return Scored(score=s, threshold=on if ready else math.inf, alert=self.alert,
                      new_alert=self.alert and not was, box=box, error=err)


class LaneStream:
    """Frames of a recording in order -> predictions and scores, one lane pass at a time.

    ``push(frame, lane, position_index)`` returns ``(prediction, Scored)`` or None for a frame that is not
    scored (the first two of a pass, or after a gap in the positions: frames the monitor skipped)."""

    def __init__(self, predictor, scorer: FrameScorer, keep: int | None = None):
        self.predictor, self.scorer = predictor, scorer
        self.keep = max(getattr(predictor, "t_in", 1), MIN_PREDECESSORS, keep or 0)
        self.history: list[np.ndarray] = []
        self.lane = self.position = None

    def push(self, frame: np.ndarray, lane: int, position_index: int, learn: bool = True):
        if lane != self.lane:
            self.scorer.new_pass()
            self.history = []
        elif self.position is not None and position_index != self.position + 1:
            self.history = []  # a gap: the motion between the frames we have is not one step
        self.lane, self.position = lane, position_index
        out = None
        if len(self.history) >= MIN_PREDECESSORS:
            pred, valid = self.predictor.predict(np.stack(self.history))
            out = pred, self.scorer.score(frame, pred, valid, learn=learn)
        self.history = (self.history + [frame])[-self.keep:]
        return out


@dataclasses.dataclass
class FrameResult:
    """What the monitor reports for one scored frame (a line of scores.jsonl, plus the images)."""

    frame: int
    lane: int
    position: int
    score: float
    threshold: float
    alert: bool
    new_alert: bool
    acquisition: str | None  # None | "vibration" | "illumination"
    box: list[int] | None
    pixels: np.ndarray  # (H, W) in [0, 1]
    prediction: np.ndarray  # (H, W) in [0, 1]
    error: np.ndarray  # (H, W) error map


class MonitorPipeline:
    """Acquisition QC + prediction + scoring of one recording's frames, in order: ``push(index, lane,
    position_index, raw_pixels)`` -> FrameResult or None (frame not scored). A frame the acquisition QC
    flags is scored but neither enters the baseline nor raises a process alert. ``qc=False`` skips the QC."""

    def __init__(self, predictor, max_value: float, scorer: ScorerConfig | None = None, qc: bool = True):
        from chdl.monitor.acquisition_qc import AcquisitionQC

        self.max_value = float(max_value)
        self.stream = LaneStream(predictor, FrameScorer(scorer))
        self.qc = AcquisitionQC(max_value) if qc else None

    @property
    def predictor(self):
        return self.stream.predictor

    def push(self, index: int, lane: int, position: int, raw: np.ndarray) -> FrameResult | None:
        flag = self.qc.check(raw, lane) if self.qc is not None else None
        frame = raw.astype(np.float32) * np.float32(1.0 / self.max_value)
        out = self.stream.push(frame, lane, position, learn=flag is None)
        if out is None:
            return None
        pred, s = out
        return FrameResult(frame=index, lane=lane, position=position, score=s.score, threshold=s.threshold,
                           alert=s.alert, new_alert=s.new_alert, acquisition=flag, box=s.box, pixels=frame,
                           prediction=pred, error=s.error)
