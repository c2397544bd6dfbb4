"""Curate one lane sequence: score, flag, decide, reconstruct. Pure function of the pixels, the
run's baseline and the config (no I/O), so a sequence curates identically in any worker."""

from __future__ import annotations

import dataclasses

import numpy as np

from chdl.dataset import FLAG_ILLUMINATION, FLAG_MISSING, FLAG_RECONSTRUCTED, FLAG_VIBRATION, reconstruction_bits
from curation import qc
from curation.reconstruct import reconstruct


@dataclasses.dataclass
class SequenceResult:
    frames: np.ndarray  # (T, H, W) what goes into the dataset
    flags: np.ndarray  # (T,) uint8 FLAG_* bits and, for reconstructed frames, the method's (chdl.dataset)
    scores: np.ndarray  # (T, K) float32 (NaN: missing frame)
    originals: list[tuple[int, np.ndarray]]  # (t, original pixels) of each replaced frame that had pixels
    excluded: bool  # more bad frames than the config allows: kept as recorded, never trained on
    n_bad: int


def curate_sequence(frames: np.ndarray, available: np.ndarray, baseline: qc.Baseline, thresholds: np.ndarray,
                    max_bad_frames: int, max_value: float, z_sequence: float = 0.0) -> SequenceResult:
    """``frames`` (T, H, W) uint8/uint16 (missing frames' pixels are ignored; zero them), ``available``
    (T,) bool. Bad = flagged or missing. An excluded sequence keeps its recorded pixels (zeros where
    missing) and gets no reconstruction. ``thresholds`` (K,) the run's; ``z_sequence`` see
    :func:`curation.qc.curate_flags`."""
    q = qc.SequenceQC(frames, available, max_value)
    scores, vib, ill = qc.flag_sequence(q, baseline, thresholds, z_sequence)  # = qc.curate_flags
    missing = ~available
    flags = (np.where(vib & available, FLAG_VIBRATION, 0) | np.where(ill & available, FLAG_ILLUMINATION, 0)
             | np.where(missing, FLAG_MISSING, 0)).astype(np.uint8)
    bad = flags != 0
    n_bad = int(bad.sum())
    excluded = n_bad > max_bad_frames
    out = frames  # copied below only if a frame changes
    if missing.any():
        out = frames.copy()
        out[missing] = 0
    originals: list[tuple[int, np.ndarray]] = []
    if n_bad and not excluded:
        # the self-check reads the frames at the QC sharpness scale: QC made them (missing ones are not read)
        chosen: dict[int, str] = {}
        out, done = reconstruct(out, ~bad, max_value, chosen=chosen, check_frames=q.sharp_frames())
        for t in done:
            flags[t] |= FLAG_RECONSTRUCTED | reconstruction_bits(chosen[t])
            if available[t]:
                originals.append((t, frames[t]))
    return SequenceResult(out, flags, scores, originals, excluded, n_bad)
