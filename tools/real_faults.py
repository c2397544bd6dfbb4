"""Fault injector for the real-footage QC benchmark (tools/bench_qc_real.py).

Deliberately independent of the simulator's fault code (``acquisition.simulator``) and of
``curation.synthetic``: other kinds, other kernels, other parameters (physical units per kind, four
levels each, instead of one 0-1 magnitude), applied to decoded video frames rather than rendered
ones. It acts on a clean grey frame as float32 in [0, 1] and returns the faulty frame (clipped to
[0, 1]).

Kinds and their four levels (level 1 is below the stated visibility floor, levels 2-4 above):

    motion_blur   line kernel of this length (px) at a random angle          1.5, 3, 5, 8
    defocus       pillbox (disk) kernel of this radius (px)                  0.75, 1.25, 2, 3
    jitter        translation by this distance (px) at a random angle       0.75, 1.5, 3, 6
    gain          multiplicative change (random sign)                         3 %, 6 %, 12 %, 25 %
    offset        additive change, fraction of full scale (random sign)       2 %, 4 %, 8 %, 15 %
    flicker       sinusoidal row bands, relative amplitude (random period     3 %, 6 %, 12 %, 25 %
                  8-40 % of the height, random phase)
    shadow        edge-to-edge darkening: a linear ramp at a random angle     8 %, 15 %, 30 %, 50 %
                  or a radial vignette (chosen at random)
    overexposure  exposure raised by this many stops, clipped at full scale   0.2, 0.4, 0.7, 1.2
"""

from __future__ import annotations

import cv2
import numpy as np

LEVELS = {
    "motion_blur": (1.5, 3.0, 5.0, 8.0),
    "defocus": (0.75, 1.25, 2.0, 3.0),
    "jitter": (0.75, 1.5, 3.0, 6.0),
    "gain": (0.03, 0.06, 0.12, 0.25),
    "offset": (0.02, 0.04, 0.08, 0.15),
    "flicker": (0.03, 0.06, 0.12, 0.25),
    "shadow": (0.08, 0.15, 0.30, 0.50),
    "overexposure": (0.2, 0.4, 0.7, 1.2),
}
CAUSE = {"motion_blur": "vibration", "defocus": "vibration", "jitter": "vibration", "gain": "illumination",
         "offset": "illumination", "flicker": "illumination", "shadow": "illumination", "overexposure": "illumination"}
VISIBLE_FROM_LEVEL = 2  # the stated visibility floor: levels 2-4 must be found, level 1 may be missed
KINDS = tuple(LEVELS)


def _line_kernel(length: float, angle: float) -> np.ndarray:
    """Normalised motion-blur kernel: an anti-aliased line of ``length`` px, drawn 8x supersampled."""
    n = int(np.ceil(length)) | 1
    n += 2
    s = 8
    big = np.zeros((n * s, n * s), np.float32)
    c = (n * s - 1) / 2
    dx, dy = 0.5 * length * s * np.cos(angle), 0.5 * length * s * np.sin(angle)
    cv2.line(big, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0,
             thickness=s, lineType=cv2.LINE_AA)
    k = cv2.resize(big, (n, n), interpolation=cv2.INTER_AREA)
    return k / k.sum()


def _disk_kernel(radius: float) -> np.ndarray:
    """Normalised pillbox of ``radius`` px (area-weighted on an 8x grid)."""
    n = 2 * int(np.ceil(radius)) + 3
    s = 8
    yy, xx = (np.mgrid[0:n * s, 0:n * s] + 0.5) / s - n / 2
    big = (xx * xx + yy * yy <= radius * radius).astype(np.float32)
    k = cv2.resize(big, (n, n), interpolation=cv2.INTER_AREA)
    return k / k.sum()


def inject(img: np.ndarray, kind: str, level: int, rng: np.random.Generator) -> np.ndarray:
    """``img`` (H, W) float32 in [0, 1] with fault ``kind`` at ``level`` (1-4) applied; random choices
    (angle, sign, band period) from ``rng``."""
    v = LEVELS[kind][level - 1]
    h, w = img.shape
    if kind == "motion_blur":
        out = cv2.filter2D(img, -1, _line_kernel(v, rng.uniform(0, np.pi)), borderType=cv2.BORDER_REFLECT)
    elif kind == "defocus":
        out = cv2.filter2D(img, -1, _disk_kernel(v), borderType=cv2.BORDER_REFLECT)
    elif kind == "jitter":
        a = rng.uniform(0, 2 * np.pi)
        m = np.float32([[1, 0, v * np.cos(a)], [0, 1, v * np.sin(a)]])
        out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    elif kind == "gain":
        out = img * (1 + v * rng.choice([-1.0, 1.0]))
    elif kind == "offset":
        out = img + v * rng.choice([-1.0, 1.0])
    elif kind == "flicker":
        period = rng.uniform(0.08, 0.40) * h
        y = np.arange(h, dtype=np.float32)[:, None]
        out = img * (1 + v * np.sin(2 * np.pi * y / period + rng.uniform(0, 2 * np.pi)))
    elif kind == "shadow":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if rng.random() < 0.5:  # linear ramp across the frame at a random angle: 1 on one edge, 1 - v on the other
            a = rng.uniform(0, 2 * np.pi)
            p = (xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)
            ramp = (p - p.min()) / max(float(p.max() - p.min()), 1e-6)
            out = img * (1 - v * ramp)
        else:  # radial vignette: centre 1, corners 1 - v
            r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
            out = img * (1 - v * r2 / 2)
    elif kind == "overexposure":
        out = img * np.float32(2.0 ** v)
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)
