"""Motion-compensated bilinear reconstruction of bad or missing frames from their good neighbours.

For a bad frame t between the nearest good frames a < t < b:

1. estimate the displacement d_ab between a and b by phase correlation (content moves by the stage
   step per frame, so d_ab is (b - a) steps plus whatever the camera did);
2. t sits at the fraction alpha = (t - a) / (b - a) of the way, so a is warped forward by alpha * d_ab
   and b backward by (1 - alpha) * d_ab, each by bilinear sampling (cv2.warpAffine, INTER_LINEAR);
3. the two warped frames are blended by temporal distance, weights (1 - alpha) and alpha, over the
   pixels each one actually covers (content that entered the view from outside one neighbour is taken
   from the other alone).

At a sequence end (no good frame on one side) the two nearest good frames n1 (nearer) and n2 give the
per-frame displacement d = d(n1 -> n2) / (n2 - n1); n1 and n2 are warped to t's extrapolated position
and blended with inverse-distance weights. Pixels neither warped neighbour covers (content that was
never seen) are filled by edge replication of the nearer frame.

The comparison references used by the benchmark (:func:`average_neighbours`, :func:`nearest_copy`)
live here too, so the benchmark measures exactly the same neighbour choice.
"""

from __future__ import annotations

import cv2
import numpy as np

from curation.qc import phase_shift, scales, to_unit, _down


def _warp(img: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """img moved by content displacement d = (dx, dy) (out(x) = img(x - d)), and its coverage mask."""
    h, w = img.shape
    m = np.float32([[1, 0, d[0]], [0, 1, d[1]]])
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # coverage: 1 where the source pixel lies inside img (bilinear taps included)
    x0, x1 = max(0.0, d[0]), min(float(w - 1), w - 1 + d[0])
    y0, y1 = max(0.0, d[1]), min(float(h - 1), h - 1 + d[1])
    mask = np.zeros((h, w), np.float32)
    if x1 >= x0 and y1 >= y0:
        mask[int(np.ceil(y0)):int(np.floor(y1)) + 1, int(np.ceil(x0)):int(np.floor(x1)) + 1] = 1.0
    return out, mask


def displacement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Content displacement from frame a to frame b (full-res px), phase correlation on the
    registration scale refined once at the sharpness scale. Inputs float32 in [0, 1]."""
    h, w = a.shape
    f_sharp, f_reg = scales(h, w)
    sa, sb = _down(a, f_reg), _down(b, f_reg)
    win = cv2.createHanningWindow((sa.shape[1], sa.shape[0]), cv2.CV_32F)
    d, _ = phase_shift(sa, sb, win)
    d = d * f_reg
    if f_reg > 1:
        # refine at the finer scale: undo the coarse estimate, measure the small residual
        fa, fb = _down(a, f_sharp), _down(b, f_sharp)
        fa_w, _ = _warp(fa, d / f_sharp)
        win = cv2.createHanningWindow((fa.shape[1], fa.shape[0]), cv2.CV_32F)
        r, _ = phase_shift(fa_w, fb, win)
        if np.all(np.abs(r) < 2.0):
            d = d + r * f_sharp
    return d


def _blend(parts: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    num = np.zeros_like(parts[0][0])
    den = np.zeros_like(parts[0][0])
    for img, mask, wgt in parts:
        num += img * (mask * wgt)
        den += mask * wgt
    nearest = max(parts, key=lambda p: p[2])[0]  # edge-replicated nearer frame where nothing covers
    return np.where(den > 1e-6, num / np.maximum(den, 1e-6), nearest)


def _from_unit(x: np.ndarray, max_value: float, dtype: np.dtype) -> np.ndarray:
    return np.clip(np.rint(x * max_value), 0, max_value).astype(dtype)


def reconstruct(frames: np.ndarray, good: np.ndarray, max_value: float | None = None,
                method: str = "motion") -> tuple[np.ndarray, list[int]]:
    """Replace every frame with ``good[t] == False`` by a reconstruction from good neighbours.

    ``frames`` (T, H, W) uint8/uint16; ``method``: "motion" (this module's method), "average" (plain
    temporal average of the two neighbours, no motion compensation), "nearest" (copy of the nearest
    good frame). Returns (new frames, list of reconstructed t). Needs at least 2 good frames
    ("nearest" needs 1); ValueError otherwise.
    """
    T = frames.shape[0]
    if max_value is None:
        max_value = float(np.iinfo(frames.dtype).max)
    good_idx = [t for t in range(T) if good[t]]
    need = 1 if method == "nearest" else 2
    if len(good_idx) < need:
        raise ValueError(f"cannot reconstruct: {len(good_idx)} good frame(s) in the sequence, need {need}")
    out = frames.copy()
    unit: dict[int, np.ndarray] = {}
    disp: dict[tuple[int, int], np.ndarray] = {}

    def u(t: int) -> np.ndarray:
        if t not in unit:
            unit[t] = to_unit(frames[t], max_value)
        return unit[t]

    def dd(a: int, b: int) -> np.ndarray:
        if (a, b) not in disp:
            disp[a, b] = displacement(u(a), u(b))
        return disp[a, b]

    done = []
    for t in range(T):
        if good[t]:
            continue
        before = [g for g in good_idx if g < t]
        after = [g for g in good_idx if g > t]
        if method == "nearest":
            src = min(good_idx, key=lambda g: (abs(g - t), g))
            out[t] = frames[src]
            done.append(t)
            continue
        if before and after:
            a, b = before[-1], after[0]
            alpha = (t - a) / (b - a)
            if method == "average":
                img = (1 - alpha) * u(a) + alpha * u(b)
            else:
                d = dd(a, b)
                wa, ma = _warp(u(a), alpha * d)
                wb, mb = _warp(u(b), -(1 - alpha) * d)
                img = _blend([(wa, ma, 1 - alpha), (wb, mb, alpha)])
        else:
            near = sorted(good_idx, key=lambda g: (abs(g - t), g))[:2]
            n1, n2 = near
            if method == "average":
                img = 0.5 * (u(n1) + u(n2))
            else:
                step = dd(n1, n2) / (n2 - n1)  # displacement per frame
                parts = []
                for n in (n1, n2):
                    w_img, m = _warp(u(n), (t - n) * step)
                    parts.append((w_img, m, 1.0 / abs(t - n)))
                img = _blend(parts)
        out[t] = _from_unit(img, max_value, frames.dtype)
        done.append(t)
    return out, done
