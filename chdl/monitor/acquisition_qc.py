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

**The first frames of a pass** (or after a gap) have nothing before them to be compared with: they wait
until the third frame has come; then the first two are scored against the other two of the three and
judged on sharpness and illumination (not on misregistration: which of three frames moved is ambiguous, a
jerked middle frame makes both ends look moved, so they are not judged on it, as two frames never were),
and the third against those of them not flagged. A first frame flagged then is reported late
(:attr:`AcquisitionQC.late`) and is no reference for the next ones. Judged on arrival instead, a defocused first frame of a pass was never
flagged (nothing before it) and, as a reference, made two clean frames after it look like illumination
faults (frames 62 and 63 of samples/sim-200x150, 2026-12-01). From the fourth frame on each frame is
judged on arrival against up to 4 before it. A pass of two frames is not judged.

**A frame that carries no image** (``curation.qc.no_image``: a lens cap, the lamp off) is flagged "no image" on
arrival, before any comparison: frames like it agree with each other, so a stream of them raised nothing. It is
no reference, and the comparison window starts again after it.
"""

from __future__ import annotations

import numpy as np

from curation import qc
from curation.config import QCConfig

HISTORY = qc.MAX_REFS  # previous frames compared with each frame
FIRST_JUDGED = 3  # the first frames of a pass are judged together once this many have come


class AcquisitionQC:
    """``check(frame, lane, position)`` -> None | "vibration" | "illumination" | "no image" for the frame, and in ``late``
    the earlier frames of its pass judged only now (module docstring); frames of one stream, in order (a gap
    in the positions, frames the monitor skipped, restarts the comparison window)."""

    def __init__(self, max_value: float, config: QCConfig | None = None):
        self.max_value = float(max_value)
        self.config = config or QCConfig()
        self.lane = self.position = None
        self.frames: list[np.ndarray] = []
        self.positions: list[int] = []  # the pass position of each frame of the window
        self.usable: list[bool] = []  # per frame of the window: a QC reference (False once flagged)
        self.judged = 0  # frames since the window's (re)start: the first FIRST_JUDGED are judged together
        self.late: list[tuple[int, str, np.ndarray]] = []  # (position, cause, frame) flagged by the last check
        self.first_flag: str | None = None  # the third frame's flag from _judge_first_three
        self.lane_scores: list[np.ndarray] = []
        self.done_lanes: list[np.ndarray] = []
        self.baseline = qc.calibrate([])
        self.thr = qc.thresholds(self.config.floors, self.config.z, self.baseline)

    def check(self, frame: np.ndarray, lane: int, position: int) -> str | None:
        self.late = []
        if qc.no_image(frame, self.max_value):  # (curate treats it as missing): no reference for the next frames,
            self.lane, self.position = lane, position  # whose window starts again after it
            self.frames, self.positions, self.usable, self.judged = [], [], [], 0
            return "no image"
        if lane != self.lane:
            if len(self.lane_scores) >= 5:
                self.done_lanes = (self.done_lanes + [np.stack(self.lane_scores)])[-20:]
                self.baseline = qc.calibrate(self.done_lanes)
                self.thr = qc.thresholds(self.config.floors, self.config.z, self.baseline)
            self.lane, self.lane_scores = lane, []
            self.frames, self.positions, self.usable, self.judged = [], [], [], 0
        elif position != self.position + 1:
            self.frames, self.positions, self.usable, self.judged = [], [], [], 0
        self.position = position
        self.judged += 1
        self.frames = (self.frames + [frame])[-(HISTORY + 1):]
        self.positions = (self.positions + [position])[-(HISTORY + 1):]
        self.usable = (self.usable + [True])[-(HISTORY + 1):]
        if self.judged < FIRST_JUDGED:  # the first frames wait for two later ones (module docstring)
            return None
        first = self.judged == FIRST_JUDGED  # the window's first two frames are judged now, before this one
        calibrated = bool(self.done_lanes)  # else no pass calibrated yet: measure only (module docstring)
        if first and calibrated:
            self._judge_first_three()
            if not self.usable[-1]:  # the third itself was barred there (a sharpness or illumination fault)
                return self.first_flag
            if sum(self.usable) < 2:
                return None
        scores = qc.measure(np.stack(self.frames), np.array(self.usable), self.max_value)
        flag = self._flags(scores)[-1] if calibrated else None
        if flag is None:
            self.lane_scores.append(scores[-1])
        else:  # a flagged frame is no reference for the next ones (it keeps its place in time)
            self.usable[-1] = False
        return flag

    def _judge_first_three(self) -> None:
        """The window's first three frames, each scored against the others, judged as curate judges a
        sequence (``curation.qc.curate_flags``): while one is flagged, the most severe is barred as a reference
        and the rest scored again; but on sharpness and illumination only (module docstring). Flagged first
        two go to ``late``; a flagged third is left in ``first_flag`` for :meth:`check` to return."""
        self.first_flag = None
        while True:
            scores = qc.measure(np.stack(self.frames), np.array(self.usable), self.max_value)
            scores[:, qc.I_MISREG] = np.where(np.isnan(scores[:, qc.I_MISREG]), np.nan, 0.0)
            thr = qc.frame_thresholds(scores, self.thr, 0.0)
            flags = [f if ok else None for f, ok in zip(self._flags(scores, thr), self.usable)]
            if not any(flags):
                break
            worst = int(np.argmax(np.where([f is not None for f in flags], qc.severity(scores, self.baseline, thr), -1)))
            self.usable[worst] = False
            if worst < len(scores) - 1:
                self.late.append((self.positions[worst], flags[worst], self.frames[worst]))
            else:
                self.first_flag = flags[worst]
        # (their scores do not enter the calibration: without misregistration they are not whole rows)

    def _flags(self, scores: np.ndarray, thr: np.ndarray | None = None) -> list[str | None]:
        """The flag of every row of a window's (T, K) scores: curate's rule (``curation.qc.decide``) against
        ``thr``, the sequence-end thresholds (``curation.qc.frame_thresholds``) unless given."""
        if thr is None:
            thr = qc.frame_thresholds(scores, self.thr, 0.0)
        vib, ill = qc.decide(scores, self.baseline, thr)
        return ["vibration" if v else "illumination" if i else None for v, i in zip(vib, ill)]
