"""Acquisition-QC flags for a live stream: curation's QC scores (``curation.qc``) of each frame against the
frames before it in its lane pass, so vibration and illumination faults are reported as what they are
(kind "acquisition"), not as process anomalies.

Causal version of what ``chdl curate`` does: the frame is compared with up to 4 previous frames of its pass
(curation also uses the frames after it); thresholds are ``max(floor, z * sigma_run)`` (the misregistration
one widened as at a sequence end, ``curation.qc.frame_thresholds``: the newest frame has no later neighbour) with the run's robust
spread re-calibrated (``curation.qc.calibrate``) from the scores of the passes seen so far, the floors and
``z`` of :class:`curation.config.QCConfig`. Until a pass has calibrated it (at least 5 scored frames) the QC
only measures: curate never judges against bare floors either (it calibrates on several sequences first),
and the causal comparison extrapolates the stage motion from the frames before, so at 800x600 with CHDL's
100 um step the first pass's clean frames reached 1.46-1.49 px of misregistration against a bare 1.5 px
threshold, and 3 of its 10 frames were flagged as vibration in each of 4 simulator seeds (then each
flagged frame left the next ones fewer references: a cascade). The passes after it saw none.
"""

from __future__ import annotations

import numpy as np

from curation import qc
from curation.config import QCConfig

HISTORY = qc.MAX_REFS  # previous frames compared with each frame


class AcquisitionQC:
    """``check(frame, lane, position)`` -> None | "vibration" | "illumination"; frames of one stream, in
    order (a gap in the positions, frames the monitor skipped, restarts the comparison window)."""

    def __init__(self, max_value: float, config: QCConfig | None = None):
        self.max_value = float(max_value)
        self.config = config or QCConfig()
        self.lane = self.position = None
        self.frames: list[np.ndarray] = []
        self.usable: list[bool] = []  # per frame of the window: a QC reference (False once flagged)
        self.lane_scores: list[np.ndarray] = []
        self.done_lanes: list[np.ndarray] = []
        self.baseline = qc.calibrate([])
        self.thr = qc.thresholds(self.config.floors, self.config.z, self.baseline)

    def check(self, frame: np.ndarray, lane: int, position: int) -> str | None:
        if lane != self.lane:
            if len(self.lane_scores) >= 5:
                self.done_lanes = (self.done_lanes + [np.stack(self.lane_scores)])[-20:]
                self.baseline = qc.calibrate(self.done_lanes)
                self.thr = qc.thresholds(self.config.floors, self.config.z, self.baseline)
            self.lane, self.frames, self.usable, self.lane_scores = lane, [], [], []
        elif position != self.position + 1:
            self.frames, self.usable = [], []
        self.position = position
        self.frames = (self.frames + [frame])[-(HISTORY + 1):]
        self.usable = (self.usable + [True])[-(HISTORY + 1):]
        if sum(self.usable) < 2:
            return None
        window = np.stack(self.frames)
        scores = qc.measure(window, np.array(self.usable), self.max_value)
        flag = None
        if self.done_lanes:  # else no pass calibrated yet: measure only (module docstring)
            # the newest frame is always the window's last: curate's sequence-end rule (qc.frame_thresholds)
            thr = qc.frame_thresholds(scores, self.thr, 0.0)[-1]
            vib, ill = qc.decide(scores[-1:], self.baseline, thr)
            flag = "vibration" if vib[0] else "illumination" if ill[0] else None
        scores = scores[-1]
        if flag is None:
            self.lane_scores.append(scores)
        else:  # a flagged frame is no reference for the next ones (it keeps its place in time)
            self.usable[-1] = False
        return flag
