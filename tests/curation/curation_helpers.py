"""Helpers for the curation tests: small raw recordings written with the real RecordingWriter from
curation.synthetic sequences (shifted textures, a widening kerf, injected faults)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from acquisition.raw import RecordingWriter
from curation.synthetic import SynthSpec, make_sequence

H, W, T = 120, 160, 10
SPEC = SynthSpec(height=H, width=W, step_px=8.0)


def manifest(lanes: int, width: int = W, height: int = H, fmt: str = "Mono8", positions: int = T,
             bit_depth: int | None = None) -> dict:
    """A manifest like chdl capture writes; without ``bit_depth``, one recorded before chdl recorded it."""
    settings = {"width": width, "height": height, "pixel_format": fmt, "fps": 5.0, "exposure_us": None}
    if bit_depth is not None:
        settings["bit_depth"] = bit_depth
    return {"camera": {"vendor": "test", "model": "synthetic", "serial": "1", "user_name": "t", "transport": "Sim",
                       "backend": "sim", "producer": None},
            "settings": settings,
            "plan": {"lanes": lanes, "positions": positions, "step_um": 50.0,
                     "positions_um": [50.0 * p for p in range(positions)], "trigger": "software"}}


def write_run(path: Path, lanes: int = 4, faults: dict | None = None, seed: int = 0, drop: set | None = None,
              skip: set | None = None, spec: SynthSpec = SPEC, fmt: str = "Mono8", close: str = "complete",
              bit_depth: int | None = None):
    """A recording of ``lanes`` lane passes of T frames. ``faults``: {(lane, t): (kind, magnitude)};
    ``drop``: {(lane, t)} recorded as dropped; ``skip``: {(lane, t)} never recorded.
    Returns {(lane, t): (frame, clean)}."""
    faults, drop, skip = faults or {}, drop or set(), skip or set()
    truth = {}
    w = RecordingWriter.create(path, manifest(lanes, spec.width, spec.height, fmt, bit_depth=bit_depth))
    i = 0
    for lane in range(lanes):
        lane_faults = {t: f for (ln, t), f in faults.items() if ln == lane}
        frames, clean = make_sequence(spec, seed * 1000 + lane, lane_faults)
        for t in range(T):
            truth[lane, t] = (frames[t], clean[t])
            if (lane, t) in skip:
                continue
            px = None if (lane, t) in drop else frames[t]
            w.append(px, lane=lane, position_index=t, position_um=50.0 * t, frame_id=i, device_timestamp_ns=None,
                     host_wall_ns=10**18 + i, host_monotonic_ns=i)
            i += 1
    w.close(close)
    return truth


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(peak * peak / mse)
