"""Small synthetic lane sequences with injected, labelled faults — for curation tests and as the
benchmark's fallback when the full simulator (``acquisition.simulator``) is not available.

A sequence is a window sliding along a random textured "wafer" canvas by a fixed stage step, with a
dark kerf band along the lane that widens frame by frame (real content change, which the illumination
detector must not mistake for a fault), plus sensor noise. Faults are applied to single frames:

    blur (defocus, Gaussian sigma px), motion (motion-blur length px), jitter (position offset px),
    gain (multiplicative, e.g. 0.8), offset (additive, fraction of full scale), shading (edge-to-edge
    gain ramp).

This is deliberately simpler than the simulator; it exists so the curation tests need nothing else.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

FAULT_KINDS = {"blur": "vibration", "motion": "vibration", "jitter": "vibration",
               "gain": "illumination", "offset": "illumination", "shading": "illumination"}


@dataclasses.dataclass
class SynthSpec:
    height: int = 96  # frame height, px
    width: int = 128  # frame width, px
    frames: int = 10  # frames per sequence
    step_px: float = 6.0  # stage step between frames, px (content moves by -step along x)
    noise: float = 2.0  # Gaussian sensor noise sigma, grey levels (8-bit scale)
    kerf_growth: float = 0.6  # kerf band widening per frame, px
    max_value: int = 255  # 255 for Mono8, 4095/65535 for Mono16
    accel_px: float = 0.0  # stage acceleration: the step grows by this many px every frame
    mover_px: float = 0.0  # a textured object (a ninth of the frame) crossing the view by this many px per frame


def _canvas(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A die-like texture: blurred noise at two scales plus bright rectangles ("pads"), in [0, 1]."""
    base = cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), 6)
    fine = cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), 1.2)
    img = 0.5 + 3.0 * (base - base.mean()) + 0.6 * (fine - fine.mean())
    for _ in range(max(4, h * w // 3000)):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        hh, ww = rng.integers(3, 12), rng.integers(3, 16)
        img[y:y + hh, x:x + ww] = rng.uniform(0.7, 0.9)
    return np.clip(img, 0.05, 0.95)


def _shift(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def apply_fault(img: np.ndarray, kind: str, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    """Apply one fault to a clean float frame in [0, 1] (before noise)."""
    h, w = img.shape
    if kind == "blur":
        return cv2.GaussianBlur(img, (0, 0), magnitude)
    if kind == "motion":
        n = max(2, int(round(magnitude)))
        k = np.zeros((n, n), np.float32)
        k[n // 2, :] = 1.0 / n
        angle = float(rng.uniform(0, 180))
        rot = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), angle, 1.0)
        k = cv2.warpAffine(k, rot, (n, n))
        return cv2.filter2D(img, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT)
    if kind == "gain":
        return img * magnitude
    if kind == "offset":
        return img + magnitude
    if kind == "shading":
        ramp = np.linspace(1 - magnitude / 2, 1 + magnitude / 2, w, dtype=np.float32)[None, :]
        if rng.random() < 0.5:
            ramp = ramp[:, ::-1]
        return img * ramp
    raise ValueError(f"unknown fault kind {kind!r}")


def make_sequence(spec: SynthSpec, seed: int, faults: dict[int, tuple[str, float]] | None = None):
    """Render one sequence. Returns ``(frames (T,H,W) uint, clean (T,H,W) uint)``; ``faults`` maps
    frame index -> (kind, magnitude). Jitter is applied by rendering the frame at an offset position."""
    rng = np.random.default_rng(seed)
    faults = faults or {}
    T, H, W = spec.frames, spec.height, spec.width
    margin = 16
    travel = [spec.step_px * t + spec.accel_px * t * t / 2 for t in range(T)]
    cw = int(W + max(max(travel), spec.step_px * T) - min(0.0, min(travel)) + 2 * margin)
    canvas = _canvas(rng, H + 2 * margin, cw)
    kerf_y = H / 2 + rng.uniform(-H / 8, H / 8)
    yy = np.arange(H + 2 * margin, dtype=np.float32)[:, None] - margin
    edge_noise = cv2.GaussianBlur(rng.standard_normal((1, cw)).astype(np.float32), (0, 0), 3)
    dtype = np.uint8 if spec.max_value <= 255 else np.uint16
    mover = _canvas(rng, H // 3, W // 3) * 0.6 + 0.35 if spec.mover_px else None  # brighter than the canvas
    frames, clean = [], []
    for t in range(T):
        half = 2.0 + spec.kerf_growth * t
        # the kerf is cut progressively: its width grows with t everywhere on the canvas, chipped edges
        band = np.abs(yy - kerf_y) < (half + 1.5 * edge_noise * (1 + t / T))
        scene = np.where(band, 0.08, canvas).astype(np.float32)
        x0 = margin + travel[t] - min(0.0, min(travel))

        def crop(dx=0.0, dy=0.0):
            m = np.float32([[1, 0, -(x0 + dx)], [0, 1, -(margin + dy)]])
            return cv2.warpAffine(scene, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

        def put_mover(img):
            if spec.mover_px:
                mx, my = int(round(spec.mover_px * t)) + W // 4, H // 3
                x_lo, x_hi = max(0, mx), min(W, mx + W // 3)
                if x_hi > x_lo:
                    img[my:my + H // 3, x_lo:x_hi] = mover[:, x_lo - mx:x_hi - mx]
            return img

        c = put_mover(crop())
        noise = rng.standard_normal((H, W)).astype(np.float32) * (spec.noise / 255.0)
        f = c
        if t in faults:
            kind, mag = faults[t]
            if kind == "jitter":
                ang = rng.uniform(0, 2 * np.pi)
                f = put_mover(crop(mag * np.cos(ang), mag * np.sin(ang)))
            else:
                f = apply_fault(c, kind, mag, rng)
        to_int = lambda a: np.clip(np.rint(a * spec.max_value), 0, spec.max_value).astype(dtype)
        frames.append(to_int(f + noise))
        clean.append(to_int(c + noise))
    return np.stack(frames), np.stack(clean)
