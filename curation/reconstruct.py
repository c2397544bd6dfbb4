"""Reconstruction of bad or missing frames from their good neighbours, never worse than the naive choices.

Per frame, the method is chosen by a self-check (:func:`reconstruct`, method "auto"): each candidate
-- global motion compensation, dense optical flow, the neighbour average, the nearest copy -- rebuilds
a known-good neighbour in the same situation, and the one that did best there is used. Global motion
compensation ("motion"):

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

"flow" does the same with a dense optical flow (DIS) from a to b instead of one displacement, so
local motion and zoom are followed. The naive references ("average", "nearest") live here too, so
benchmarks measure exactly the same neighbour choice.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from chdl.dataset import RECONSTRUCTION_METHODS
from curation.qc import phase_shift, scales, to_unit, _down


def _warp(img: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice] | None]:
    """img moved by content displacement d = (dx, dy) (out(x) = img(x - d)), and the rectangle of out
    whose source pixels lie inside img, bilinear taps included ((rows, cols) slices; None if empty)."""
    h, w = img.shape
    m = np.float32([[1, 0, d[0]], [0, 1, d[1]]])
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    x0, x1 = max(0.0, d[0]), min(float(w - 1), w - 1 + d[0])
    y0, y1 = max(0.0, d[1]), min(float(h - 1), h - 1 + d[1])
    if x1 < x0 or y1 < y0:
        return out, None
    return out, (slice(int(np.ceil(y0)), int(np.floor(y1)) + 1), slice(int(np.ceil(x0)), int(np.floor(x1)) + 1))


def displacement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Content displacement from frame a to frame b (full-res px), phase correlation on the
    registration scale refined once at the sharpness scale. Inputs float32 in [0, 1]."""
    h, w = a.shape
    f_sharp, f_reg = scales(h, w)
    sa, sb = _down(a, f_reg), _down(b, f_reg)
    d, _ = phase_shift(sa, sb)
    d = d * f_reg
    if f_reg > 1:
        # refine at the finer scale: undo the coarse estimate, measure the small residual
        fa, fb = _down(a, f_sharp), _down(b, f_sharp)
        fa_w, _ = _warp(fa, d / f_sharp)
        r, _ = phase_shift(fa_w, fb)
        if np.all(np.abs(r) < 2.0):
            d = d + r * f_sharp
    return d


def _blend(parts: list[tuple[np.ndarray, tuple[slice, slice] | None, float]]) -> np.ndarray:
    """Warped frames (img, covered rectangle from :func:`_warp`, weight) averaged with their weights
    over the pixels each covers; where none covers, the edge-replicated frame of largest weight. Each
    frame is accumulated over its rectangle only: outside it the weight is 0 and adding 0 changes
    nothing, so the sums equal those over the whole frame with a 0/1 coverage mask."""
    num = np.zeros_like(parts[0][0])
    den = np.zeros_like(parts[0][0])
    for img, rect, wgt in parts:
        if rect is None:
            continue
        weight = np.float32(wgt)
        den[rect] += weight
        num[rect] += weight * img[rect]
    nearest = max(parts, key=lambda p: p[2])[0]  # edge-replicated nearer frame where nothing covers
    covered = den > 1e-6
    num /= np.maximum(den, 1e-6, out=den)
    return np.where(covered, num, nearest)


def _from_unit(x: np.ndarray, max_value: float, dtype: np.dtype) -> np.ndarray:
    y = x * max_value  # one work array, rounded and clipped in place (``x`` may be a cached frame)
    np.rint(y, out=y)
    return np.clip(y, 0, max_value, out=y).astype(dtype)


def _mse(x: np.ndarray, ref: np.ndarray) -> float:
    """Mean squared difference of two float32 frames (``np.mean((x - ref) ** 2)``, one work array)."""
    d = x - ref
    return float(np.mean(np.square(d, out=d)))


CANDIDATES = RECONSTRUCTION_METHODS  # what "auto" chooses from (the dataset records which: chdl.dataset)
METHODS = ("auto",) + CANDIDATES


_PER_THREAD = threading.local()  # each thread's DIS instance (one is not safe to share between threads)


def _to8(x: np.ndarray) -> np.ndarray:
    """A float frame in [0, 1] as uint8 (what the optical flow reads)."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _flow_field(a8: np.ndarray, b8: np.ndarray, fast: bool = False) -> np.ndarray:
    """Dense optical flow (H, W, 2) from uint8 frame a8 to frame b8 (DIS, OpenCV; :func:`_to8`): a point
    at x in a is at x + F(x) in b. Local motion (a walking person, a zoom, a rotation) is followed where
    one global displacement cannot. One DIS instance per thread, reused: it keeps nothing from one call to
    the next but its work buffers (the same flow as a fresh one: tests/curation/test_curate_throughput.py).
    ``fast``: DIS's FAST preset (about 2.5x cheaper, coarser) instead of MEDIUM: the self-check's flows."""
    key = "dis_fast" if fast else "dis"
    dis = getattr(_PER_THREAD, key, None)
    if dis is None:
        preset = cv2.DISOPTICAL_FLOW_PRESET_FAST if fast else cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
        dis = cv2.DISOpticalFlow_create(preset)
        setattr(_PER_THREAD, key, dis)
    return dis.calc(a8, b8, None)


_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x, y), each (h, w) float32, made once per frame size (read-only)."""
    if (h, w) not in _GRIDS:
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        gx.flags.writeable = gy.flags.writeable = False
        _GRIDS[h, w] = gx, gy
    return _GRIDS[h, w]


def _flow_warp(img: np.ndarray, flow: np.ndarray, k: float) -> np.ndarray:
    """out(y) = img(y - k * flow(y)) (bilinear, edges replicated)."""
    gx, gy = _grid(*img.shape)
    return cv2.remap(img, gx - np.float32(k) * flow[..., 0], gy - np.float32(k) * flow[..., 1],
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class _Rebuilder:
    """Reconstructions of one target frame from a given set of good frames, by each method, with the
    float frames, displacements and flows they need cached across targets and self-checks."""

    def __init__(self, frames, max_value: float):
        """``frames``: (T, H, W) or a list of T frames (None where a frame is never used: not good)."""
        self.frames, self.max_value = frames, max_value
        # 8-bit frames at full scale are exactly what the optical flow reads (to_unit then _to8 gives them back)
        self.flow_reads_frames = max_value == 255.0 and all(x is None or x.dtype == np.uint8 for x in frames)
        self.unit: dict[int, np.ndarray] = {}
        self.disp: dict[tuple[int, int], np.ndarray] = {}
        self.flows: dict[tuple[int, int, bool], np.ndarray] = {}

    def u(self, t: int) -> np.ndarray:
        if t not in self.unit:
            self.unit[t] = to_unit(self.frames[t], self.max_value)
        return self.unit[t]

    def d(self, a: int, b: int) -> np.ndarray:
        if (a, b) not in self.disp:
            self.disp[a, b] = displacement(self.u(a), self.u(b))
        return self.disp[a, b]

    def flow(self, a: int, b: int, fast: bool = False) -> np.ndarray:
        if (a, b, fast) not in self.flows:
            self.flows[a, b, fast] = _flow_field(*(self.frames[t] if self.flow_reads_frames else _to8(self.u(t))
                                                   for t in (a, b)), fast=fast)
        return self.flows[a, b, fast]

    def build(self, method: str, t: int, good: list[int], fast_flow: bool = False) -> np.ndarray:
        """Frame t (float, [0, 1]) by ``method`` from the sorted good frames ``good`` (t not among them);
        ``fast_flow``: "flow" with DIS's FAST preset (the self-check's, :meth:`choose`)."""
        before = [g for g in good if g < t]
        after = [g for g in good if g > t]
        if method == "nearest":
            return self.u(min(good, key=lambda g: (abs(g - t), g)))
        if before and after:
            a, b = before[-1], after[0]
            alpha = (t - a) / (b - a)
            if method == "average":
                return (1 - alpha) * self.u(a) + alpha * self.u(b)
            if method == "flow":
                f = self.flow(a, b, fast_flow)  # a point at x in a is at x + f in b
                wa = _flow_warp(self.u(a), f, alpha)
                wb = _flow_warp(self.u(b), f, -(1 - alpha))
                return (1 - alpha) * wa + alpha * wb
            d = self.d(a, b)
            wa, ma = _warp(self.u(a), alpha * d)
            wb, mb = _warp(self.u(b), -(1 - alpha) * d)
            return _blend([(wa, ma, 1 - alpha), (wb, mb, alpha)])
        n1, n2 = sorted(good, key=lambda g: (abs(g - t), g))[:2]
        if method == "average":
            return 0.5 * (self.u(n1) + self.u(n2))
        if method == "flow":
            # velocity per frame from n2 to n1, carried on from n1 to t
            return _flow_warp(self.u(n1), self.flow(n2, n1, fast_flow), (t - n1) / (n1 - n2))
        step = self.d(n1, n2) / (n2 - n1)  # displacement per frame
        parts = []
        for n in (n1, n2):
            w_img, m = _warp(self.u(n), (t - n) * step)
            parts.append((w_img, m, 1.0 / abs(t - n)))
        return _blend(parts)

    def choose(self, t: int, good: list[int]) -> str:
        """The method for frame t by self-check: each candidate rebuilds the good frame(s) next to
        t's gap -- in the same situation, i.e. with t (and the check frame) left out: an interior gap is
        checked on the good frames either side of it that have good frames on both sides of their own,
        a sequence end on the nearest good frame, which is then an end too -- and the method with the
        smallest mean squared error there wins. With no frame to check on: the neighbour average
        inside, the nearest copy at an end (no extrapolation without evidence that it works)."""
        before = [g for g in good if g < t]
        after = [g for g in good if g > t]
        interior = bool(before and after)
        checks = []
        for c in ([before[-1], after[0]] if interior else [min(good, key=lambda g: (abs(g - t), g))]):
            rest = [g for g in good if g != c]
            has_both = any(g < c for g in rest) and any(g > c for g in rest)
            if len(rest) >= 2 and has_both == interior:
                checks.append((c, rest))
        if not checks:
            return "average" if interior else "nearest"
        # the flow candidate is checked with DIS's FAST preset: which method wins is decided as well (on
        # real footage 2 of 185 choices moved, mean PSNR +0.007 dB; docs/curation.md) at 40 % of the cost
        err = {m: sum(_mse(self.build(m, c, rest, fast_flow=True), self.u(c)) for c, rest in checks)
               for m in CANDIDATES}
        return min(CANDIDATES, key=lambda m: (err[m], CANDIDATES.index(m)))


def reconstruct(frames: np.ndarray, good: np.ndarray, max_value: float | None = None,
                method: str = "auto", chosen: dict[int, str] | None = None,
                check_frames: list[np.ndarray | None] | None = None) -> tuple[np.ndarray, list[int]]:
    """Replace every frame with ``good[t] == False`` by a reconstruction from good neighbours.

    ``frames`` (T, H, W) uint8/uint16; ``method``: "auto" (per frame, the best of the methods below
    by a self-check on a good neighbour, made at the QC sharpness scale, ~400 px wide; see
    :meth:`_Rebuilder.choose`), "motion" (global
    motion-compensated interpolation / extrapolation), "flow" (the same with dense optical flow),
    "average" (temporal average of the two neighbours, no motion compensation), "nearest" (copy of
    the nearest good frame). ``chosen``, if given, receives {t: method used}. Returns (new frames,
    list of reconstructed t). Needs at least 2 good frames ("nearest" needs 1); ValueError otherwise.
    ``check_frames``: the frames at the self-check scale, ``_down(frames[t], scales(H, W)[0])`` for
    every good t (None elsewhere), if the caller has them (:meth:`curation.qc.SequenceQC.sharp_frames`);
    made here otherwise.
    """
    if method not in METHODS:
        raise ValueError(f"unknown reconstruction method {method!r} (one of {', '.join(METHODS)})")
    T = frames.shape[0]
    if max_value is None:
        max_value = float(np.iinfo(frames.dtype).max)
    good_idx = [t for t in range(T) if good[t]]
    need = 1 if method == "nearest" else 2
    if len(good_idx) < need:
        raise ValueError(f"cannot reconstruct: {len(good_idx)} good frame(s) in the sequence, need {need}")
    out = frames.copy()
    rb = _Rebuilder(frames, max_value)
    # the self-check runs on frames at about 400 px wide (the QC sharpness scale): which method works is
    # decided as well there, and an 800x600 check costs a quarter (DIS flow dominates it)
    f = scales(*frames.shape[1:])[0]
    if f > 1 and check_frames is None:
        check_frames = [_down(x, f) for x in frames]
    check = rb if f == 1 else _Rebuilder(check_frames, max_value)
    done = []
    for t in range(T):
        if good[t]:
            continue
        m = check.choose(t, good_idx) if method == "auto" else method
        if chosen is not None:
            chosen[t] = m
        out[t] = _from_unit(rb.build(m, t, good_idx), max_value, frames.dtype)
        done.append(t)
    return out, done
