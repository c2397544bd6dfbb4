"""Per-frame QC scores and flags for one lane sequence (pure NumPy/OpenCV on a (T, H, W) array).

Every score compares a frame with its *aligned* temporal neighbours over the region the two frames
share, so what the scene contains (dies, pads, the kerf) cancels and what changed between the two
exposures remains. The neighbours are aligned with the stage motion measured by phase correlation.

Scores (one value per frame; NaN for a frame that is missing):

    sharpness          log of the frame's fine-to-coarse gradient energy ratio over its neighbours'.
                       Gradient energy at the sharpness scale / at twice that scale, per block: gain,
                       offset, flicker and shadow scale both alike, so an illumination change does not
                       look like blur, while blur removes fine detail first. Negative = blurrier.
    misregistration_px distance (full-resolution px) between where the frame is relative to its
                       neighbours (phase correlation) and where the expected stage step puts it (the
                       median measured step of the sequence); median over the neighbours, so a
                       neighbour whose own displacement is wrong (heavy blur) does not move it.
    brightness         median over a 4x4 grid of blocks of log(mean_frame / mean_neighbour).
    contrast           median over the blocks of log(std_frame / std_neighbour) (a gain change moves
                       it, an offset does not).
    shading            edge-to-edge change of the block log-ratio (slope of a plane fitted to the 4x4
                       grid of block log-ratios, times the frame size): a shadow gradient.
    banding            robust spread (1.4826 * MAD) of the row-by-row log-ratio profile after removing
                       its linear trend: flicker bands (a rolling-shutter/light-source flicker shows as
                       rows brighter and darker than the neighbour's). Rows, because the lane, the kerf
                       and flicker bands all run along x; the MAD ignores the few rows at the kerf edge.

Each frame is compared with up to four nearest available frames (within 3 steps); the score is the
median over those comparisons, so one faulty neighbour does not make a good frame look bad, and a good
frame's neighbour being bad does not move its median. The kerf widening from frame to frame changes a
few blocks only, and the per-block median ignores them — this is what keeps the illumination scores
quiet on real content change.

Flags: a score fires when it is further from the run's median than ``max(floor, z * sigma_run)``,
where ``sigma_run`` is 1.4826 * MAD of that score over a calibration sample of the run (see
:func:`calibrate`). The floors are the visibility limits (defaults in :class:`curation.config.QCConfig`);
the run term keeps a noisy camera from flooding the report. :func:`curate_flags` scores a sequence,
then re-scores with flagged frames barred as references (:func:`decide` turns scores into flags).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

SCORE_NAMES = ("sharpness", "misregistration_px", "brightness", "contrast", "shading", "banding")
I_SHARP, I_MISREG, I_BRIGHT, I_CONTRAST, I_SHADING, I_BANDING = range(len(SCORE_NAMES))
# how each score fires: "low" (only below centre), "abs" (either side), "high" (only above)
SCORE_SIDES = ("low", "high", "abs", "abs", "high", "high")

ATTRIBUTION_FACTOR = 3.0  # see decide()
MAX_REFS = 4  # neighbours compared with each frame (nearest first)
MAX_REF_DISTANCE = 3  # in frames
GRID = 4  # blocks per side for the brightness/shading grid
_G = np.arange(GRID + 1)


def _down(img: np.ndarray, f: int) -> np.ndarray:
    if f <= 1:
        return img
    return cv2.resize(img, (img.shape[1] // f, img.shape[0] // f), interpolation=cv2.INTER_AREA)


def scales(height: int, width: int) -> tuple[int, int]:
    """(sharpness factor, registration factor): sharpness is measured on a frame about 400-800 px wide
    (fine enough to see a 1 px blur), phase correlation and photometry on one half that size."""
    f_sharp = max(1, width // 400)
    return f_sharp, 2 * f_sharp


def _blocks(ii: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sums over the grid of blocks with edges ys (G+1,), xs (G+1,) from an integral image
    (h+1, w+1[, c]): (G, G[, c])."""
    a = ii[ys[:, None], xs[None, :]]
    return a[1:, 1:] - a[:-1, 1:] - a[1:, :-1] + a[:-1, :-1]


class _Frame:
    """Per-frame precomputation: the integral image of gradient energy at the sharpness scale; the
    registration-scale image, its spectrum (for phase correlation) and the integral images of
    (I, I^2, gradient energy) at that scale."""

    def __init__(self, img: np.ndarray, f_sharp: int, max_value: float, window: np.ndarray | None = None):
        # downsample in the integer domain first (averaging rounds by < 0.5 grey level), then to float
        sh = to_unit(_down(img, f_sharp), max_value)
        # float32 integral images: block sums agree with float64 ones to <3e-4 in every score (floors
        # are >= 0.035) and cost 1/3 less
        self.fine_ii = cv2.integral(_grad_energy(sh), sdepth=cv2.CV_32F)
        small = _down(sh, 2)
        self.small = small
        self.reg_ii = cv2.integral(cv2.merge([small, small * small, _grad_energy(small)]), sdepth=cv2.CV_32F)
        if window is None:
            window = cv2.createHanningWindow((small.shape[1], small.shape[0]), cv2.CV_32F)
        self.spectrum = whitened_spectrum(small * window)


def _median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Median along ``axis`` (0 or -1) by sorting (np.median costs ~50x more on the small arrays used here)."""
    x = np.sort(x, axis=axis)
    n = x.shape[axis]
    if axis == 0:
        return 0.5 * (x[(n - 1) // 2] + x[n // 2])
    return 0.5 * (x[..., (n - 1) // 2] + x[..., n // 2])


def _grad_energy(img: np.ndarray) -> np.ndarray:
    """Squared gradient magnitude (3x3 Sobel: its smoothing keeps sensor noise from dominating).
    (NumPy, not cv2.magnitude: that one's result depends on the buffer's memory alignment in its last
    bits, which would make a resumed dataset differ from an uninterrupted one.)"""
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.add(cv2.multiply(gx, gx), cv2.multiply(gy, gy))


def _parabola(left: float, mid: float, right: float) -> float:
    """Sub-sample offset of the vertex of the parabola through three samples around a peak."""
    den = left - 2.0 * mid + right
    return 0.0 if abs(den) < 1e-12 else float(np.clip(0.5 * (left - right) / den, -0.5, 0.5))


def whitened_spectrum(img: np.ndarray) -> np.ndarray:
    """The DFT of ``img`` (complex, 2 channels) scaled to unit magnitude. Phase correlation of two
    images is the inverse DFT of the product of one whitened spectrum with the other's conjugate, so
    each frame's spectrum is whitened once instead of every pair's cross-power spectrum."""
    f = cv2.dft(img, flags=cv2.DFT_COMPLEX_OUTPUT)
    mag = np.sqrt(f[..., 0] * f[..., 0] + f[..., 1] * f[..., 1])  # not cv2.magnitude: see _grad_energy
    f /= (mag + 1e-12)[..., None]
    return f


def spectrum_shift(fa: np.ndarray, fb: np.ndarray) -> tuple[np.ndarray, float]:
    """Phase correlation from two whitened spectra (:func:`whitened_spectrum` of the windowed images):
    the displacement d = (dx, dy) with b(x) ~ a(x - d), and the peak response. Sub-pixel: a parabola
    through the peak and its two neighbours on each axis (0.06 px rms on the simulator's frames, where
    cv2.phaseCorrelate's 5x5 weighted centroid gives 0.2 px and is pulled by noise in the window)."""
    r = cv2.mulSpectrums(fb, fa, 0, conjB=True)
    c = cv2.idft(r, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    h, w = c.shape
    _, peak, _, (px, py) = cv2.minMaxLoc(c)
    dx = px + _parabola(c[py, (px - 1) % w], peak, c[py, (px + 1) % w])
    dy = py + _parabola(c[(py - 1) % h, px], peak, c[(py + 1) % h, px])
    dx = dx - w if dx > w / 2 else dx
    dy = dy - h if dy > h / 2 else dy
    return np.array([dx, dy]), float(peak)


def _overlap(shape: tuple[int, int], d: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """Block grid edges (ys, xs) over the region of frame a that frame b also shows, and the integer
    offset (dy, dx) into b, for a content displacement d = (dx, dy) from a to b (b(x) = a(x - d)):
    a[y, x] shows what b shows at [y + dy, x + dx]."""
    h, w = shape
    dx, dy = int(round(d[0])), int(round(d[1]))
    y0, y1 = max(0, -dy), min(h, h - dy)
    x0, x1 = max(0, -dx), min(w, w - dx)
    if y1 - y0 < 2 * GRID or x1 - x0 < 2 * GRID:
        return None
    return y0 + _G * (y1 - y0) // GRID, x0 + _G * (x1 - x0) // GRID, dy, dx


def _compare(fa: _Frame, fb: _Frame, d_full: np.ndarray, f_sharp: int) -> np.ndarray | None:
    """Frame a relative to frame b over the region they share: (sharpness, brightness, contrast,
    shading slope x, shading slope y, banding), or None if they share too little. ``d_full`` is the
    displacement a -> b, full-res px. Each is robust over a block grid (or rows), so a local content
    change (the kerf widening, a chip) moves a few blocks and not the score. Swapping a and b negates
    all but banding."""
    os_ = _overlap((fa.fine_ii.shape[0] - 1, fa.fine_ii.shape[1] - 1), d_full / f_sharp)
    ov = _overlap(fa.small.shape, d_full / (2 * f_sharp))
    if ov is None or os_ is None:
        return None
    ys, xs, dy, dx = os_
    ea = _blocks(fa.fine_ii, ys, xs)
    eb = _blocks(fb.fine_ii, ys + dy, xs + dx)
    ys, xs, dy, dx = ov
    n = ((ys[1:] - ys[:-1])[:, None] * (xs[1:] - xs[:-1])[None, :])[..., None].astype(np.float64)
    A = _blocks(fa.reg_ii, ys, xs) / n  # per block: mean, mean of squares, mean gradient energy
    B = _blocks(fb.reg_ii, ys + dy, xs + dx) / n
    eps, tiny = 1e-3, 1e-12
    # sharpness: per block, fine-scale over coarse-scale gradient energy (block areas cancel). Gain,
    # offset, flicker bands and shadows scale both alike (or neither); blur removes the fine scale first.
    sharp_map = np.log(((ea + tiny) * (B[..., 2] + tiny)) / ((eb + tiny) * (A[..., 2] + tiny)))
    # photometry on the registration scale (coarse, so blur barely moves it)
    ratios = np.log((A[..., 0] + eps) / (B[..., 0] + eps))
    va = np.maximum(A[..., 1] - A[..., 0] ** 2, tiny)
    vb = np.maximum(B[..., 1] - B[..., 0] ** 2, tiny)
    sharp, bright, contrast = _median(np.stack([sharp_map, ratios, 0.5 * np.log(va / vb)]).reshape(3, -1), axis=1)
    # shading: plane fitted to the block log-ratios; slope * frame extent = edge-to-edge change
    h, w = fa.small.shape
    cy = ((ys[:-1] + ys[1:]) - (ys[0] + ys[-1])) / (2.0 * h)
    cx = ((xs[:-1] + xs[1:]) - (xs[0] + xs[-1])) / (2.0 * w)
    r = ratios - ratios.mean()
    gy = float((r.sum(1) @ cy) / max(GRID * float(cy @ cy), tiny))
    gx = float((r.sum(0) @ cx) / max(GRID * float(cx @ cx), tiny))
    # banding: per-row mean log-ratio over the full shared width, linear trend removed
    y0, y1, x0, x1 = ys[0], ys[-1], xs[0], xs[-1]
    ia, ib = fa.reg_ii[:, :, 0], fb.reg_ii[:, :, 0]
    ca = ia[y0:y1 + 1, x1] - ia[y0:y1 + 1, x0]
    cb = ib[y0 + dy:y1 + dy + 1, x1 + dx] - ib[y0 + dy:y1 + dy + 1, x0 + dx]
    rows_a, rows_b = ca[1:] - ca[:-1], cb[1:] - cb[:-1]
    prof = np.log((rows_a / (x1 - x0) + eps) / (rows_b / (x1 - x0) + eps))
    yy = np.arange(prof.size) - (prof.size - 1) / 2
    prof = prof - prof.mean() - yy * ((prof @ yy) / max(float(yy @ yy), tiny))
    banding = 1.4826 * float(_median(np.abs(prof - _median(prof))))
    return np.array([sharp, bright, contrast, gx, gy, banding])


def phase_shift(a: np.ndarray, b: np.ndarray, window: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Content displacement d = (dx, dy) from image a to image b (b(x) ~ a(x - d)) by phase
    correlation (:func:`spectrum_shift`), and the peak response. a, b float32 of one shape."""
    if window is None:
        window = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_32F)
    return spectrum_shift(whitened_spectrum(a * window), whitened_spectrum(b * window))


def to_unit(frame: np.ndarray, max_value: float) -> np.ndarray:
    """A frame as float32 in [0, 1]."""
    return frame.astype(np.float32) * np.float32(1.0 / max_value)


class SequenceQC:
    """Scores of one sequence's frames. ``frames`` (T, H, W) uint8/uint16 (or float in
    [0, max_value]); ``available`` (T,) bool (False: missing, its pixels are ignored).

    Pairwise measurements (phase-correlation displacement and :func:`_compare`) are made lazily and
    cached, so :meth:`scores` can be asked again with some frames barred as references (the second
    pass of :func:`curate_flags`) at the cost of the few extra pairs that needs."""

    def __init__(self, frames: np.ndarray, available: np.ndarray, max_value: float | None = None):
        T, H, W = frames.shape
        if max_value is None:
            max_value = float(np.iinfo(frames.dtype).max) if frames.dtype.kind in "ui" else 1.0
        self.T = T
        self.f_sharp, self.f_reg = scales(H, W)
        self.avail = [t for t in range(T) if available[t]]
        window = cv2.createHanningWindow((W // self.f_reg, H // self.f_reg), cv2.CV_32F)
        self.prep = {t: _Frame(frames[t], self.f_sharp, max_value, window) for t in self.avail}
        self._disp: dict[tuple[int, int], np.ndarray] = {}
        self._pair: dict[tuple[int, int], np.ndarray | None] = {}
        adjacent = [self.displacement(a, b) / (b - a) for a, b in zip(self.avail, self.avail[1:])]
        # the expected stage step: the median measured step (one bad pair does not move it)
        self.step = np.median(np.array(adjacent), axis=0) if adjacent else np.zeros(2)
        self._vignetting: np.ndarray | None = None

    def displacement(self, a: int, b: int) -> np.ndarray:
        """Content displacement a -> b (full-res px) by phase correlation at the registration scale."""
        if (a, b) not in self._disp:
            d, _ = spectrum_shift(self.prep[a].spectrum, self.prep[b].spectrum)
            self._disp[a, b] = d * self.f_reg
        return self._disp[a, b]

    def pair(self, a: int, b: int) -> np.ndarray | None:
        """a relative to b (a < b): [sharpness, brightness, contrast, slope x, slope y, banding,
        offset x, offset y] where offset = a's position relative to b's minus what the step predicts."""
        if (a, b) not in self._pair:
            d = self.displacement(a, b)
            c = _compare(self.prep[a], self.prep[b], d, self.f_sharp)
            self._pair[a, b] = None if c is None else np.concatenate([c, (b - a) * self.step - d])
        return self._pair[a, b]

    def _refs(self, t: int, allowed: set[int]) -> list[int]:
        cand = [r for r in allowed if r != t and abs(r - t) <= MAX_REF_DISTANCE]
        cand.sort(key=lambda r: (abs(r - t), r))
        return cand[:MAX_REFS]

    def _vignetting_slope(self) -> np.ndarray:
        """Ratio slope per px of displacement, per axis (see :meth:`scores`)."""
        if self._vignetting is None:
            keys = [k for k, v in self._pair.items() if v is not None]
            k_axis = np.zeros(2)
            if keys:
                d = np.array([self._disp[k] for k in keys]) / self.f_reg
                g = np.array([self._pair[k][3:5] for k in keys])
                for axis in (0, 1):
                    use = np.abs(d[:, axis]) >= 2.0
                    if use.sum() >= 3:
                        k_axis[axis] = float(np.median(g[use, axis] / d[use, axis]))
            self._vignetting = k_axis
        return self._vignetting

    def scores(self, barred: set[int] | frozenset = frozenset()) -> np.ndarray:
        """(T, K) float32 scores (NaN where missing). Frames in ``barred`` are not used as references
        (unless a frame would be left with none)."""
        T = self.T
        scores = np.full((T, len(SCORE_NAMES)), np.nan, np.float32)
        allowed = set(self.avail) - set(barred)
        refs = {}
        for t in self.avail:
            refs[t] = self._refs(t, allowed) or self._refs(t, set(self.avail))
            for r in refs[t]:
                self.pair(min(t, r), max(t, r))
        # vignetting: the same scene point seen at two places in the frame differs by the fall-off
        # between them, a ratio slope proportional to the displacement. It is estimated from the
        # first pass's pairs (a fault touches few of them) and removed, so only a shadow remains.
        k_vig = self._vignetting_slope()
        flip = np.array([-1.0, -1.0, -1.0, -1.0, -1.0, 1.0, -1.0, -1.0])
        for t in self.avail:
            comps = []
            for r in refs[t]:
                a, b = min(t, r), max(t, r)
                c = self._pair[a, b]
                if c is None:
                    continue
                c = c.copy()
                c[3:5] -= k_vig * self._disp[a, b] / self.f_reg
                comps.append(c if t < r else c * flip)
            if comps:
                med = _median(np.stack(comps), axis=0)
                scores[t, [I_SHARP, I_BRIGHT, I_CONTRAST, I_BANDING]] = med[[0, 1, 2, 5]]
                scores[t, I_SHADING] = np.hypot(med[3], med[4])
                scores[t, I_MISREG] = np.hypot(med[6], med[7])
        return scores


def measure(frames: np.ndarray, available: np.ndarray, max_value: float | None = None) -> np.ndarray:
    """(T, K) scores of one sequence, every available frame a possible reference."""
    return SequenceQC(frames, available, max_value).scores()


def curate_flags(frames: np.ndarray, available: np.ndarray, baseline: "Baseline", thr: np.ndarray,
                 max_value: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flag one sequence: (scores (T,K), vibration (T,), illumination (T,)).

    Every frame is first scored against its nearest neighbours. While some frame that is not yet
    barred is flagged, the most severe one (largest score / threshold) is barred as a reference and
    all frames are scored again. So a good frame next to faulty ones, whose medians the faults could
    sway, ends up judged against good frames only, and a faulty frame is still measured against good
    frames. (Pairwise measurements are cached: a rescoring costs medians, not image work.)"""
    q = SequenceQC(frames, available, max_value)
    barred: set[int] = set()
    scores = q.scores()
    vib, ill = decide(scores, baseline, thr)
    for _ in range(len(q.avail)):
        pending = [t for t in np.flatnonzero(vib | ill).tolist() if t not in barred]
        if not pending:
            break
        sev = severity(scores, baseline, thr)
        barred.add(max(pending, key=lambda t: (sev[t], -t)))
        scores = q.scores(barred)
        vib, ill = decide(scores, baseline, thr)
    return scores, vib, ill


@dataclasses.dataclass
class Baseline:
    """Run-level centre and robust spread of each score (from :func:`calibrate`)."""

    center: list[float]  # per score; 0 for misregistration (it is a distance)
    sigma: list[float]  # per score: 1.4826 * MAD (for misregistration: median distance / 1.1774)

    def to_dict(self) -> dict:
        return {"center": dict(zip(SCORE_NAMES, self.center)), "sigma": dict(zip(SCORE_NAMES, self.sigma))}

    @classmethod
    def from_dict(cls, d: dict) -> "Baseline":
        return cls([float(d["center"][n]) for n in SCORE_NAMES], [float(d["sigma"][n]) for n in SCORE_NAMES])


def calibrate(score_sets: list[np.ndarray]) -> Baseline:
    """Robust run baseline from the (T, K) scores of a sample of the run's sequences (median/MAD:
    a few faulty frames in the sample do not move it)."""
    s = np.concatenate([x for x in score_sets if x.size], axis=0) if score_sets else np.empty((0, len(SCORE_NAMES)))
    center, sigma = [], []
    for k, side in enumerate(SCORE_SIDES):
        v = s[:, k]
        v = v[np.isfinite(v)]
        if v.size < 5:
            center.append(0.0), sigma.append(0.0)
            continue
        if k == I_MISREG:
            # a 2-D Gaussian residual's distance has median 1.1774 sigma
            center.append(0.0), sigma.append(float(np.median(v) / 1.1774))
        elif k in (I_SHADING, I_BANDING):
            center.append(0.0), sigma.append(float(1.4826 * np.median(v)))
        else:
            m = float(np.median(v))
            center.append(m), sigma.append(float(1.4826 * np.median(np.abs(v - m))))
    return Baseline(center, sigma)


def thresholds(floors: dict[str, float], z: float, baseline: Baseline) -> np.ndarray:
    """Effective threshold per score: max(floor, z * sigma_run)."""
    return np.array([max(float(floors[n]), z * baseline.sigma[k]) for k, n in enumerate(SCORE_NAMES)])


def severity(scores: np.ndarray, baseline: "Baseline", thr: np.ndarray) -> np.ndarray:
    """(T,) largest deviation / threshold over the scores, on each score's firing side (NaN -> 0)."""
    dev = scores - np.asarray(baseline.center)[None, :]
    side = np.array([{"low": -1.0, "high": 1.0, "abs": 0.0}[x] for x in SCORE_SIDES])
    mag = np.where(side == 0, np.abs(dev), dev * side) / np.maximum(thr, 1e-12)[None, :]
    return np.nan_to_num(mag, nan=0.0).max(axis=1)


def exceed(scores: np.ndarray, baseline: Baseline, thr: np.ndarray) -> np.ndarray:
    """(T, K) bool: which scores fire for each frame."""
    dev = scores - np.asarray(baseline.center)[None, :]
    out = np.zeros(scores.shape, bool)
    with np.errstate(invalid="ignore"):
        for k, side in enumerate(SCORE_SIDES):
            if side == "low":
                out[:, k] = dev[:, k] < -thr[k]
            elif side == "high":
                out[:, k] = dev[:, k] > thr[k]
            else:
                out[:, k] = np.abs(dev[:, k]) > thr[k]
    return out


def decide(scores: np.ndarray, baseline: Baseline, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vibration (T,) bool, illumination (T,) bool) for a sequence's (T, K) scores.

    Attribution, where one cause can move another's score: fine flicker bands add coarse gradient
    energy (sharpness drops a little) and blur lowers fine-scale contrast. So contrast alone does not
    make an illumination flag on a frame whose sharpness fired, and on a frame with an illumination
    flag from brightness/shading/banding, sharpness must exceed ``ATTRIBUTION_FACTOR`` x its threshold
    to add a vibration flag. Either way the frame is flagged and reconstructed; this only keeps the
    report's per-cause counts honest."""
    fired = exceed(scores, baseline, thr)
    ill_strong = fired[:, I_BRIGHT] | fired[:, I_SHADING] | fired[:, I_BANDING]
    sharp_big = exceed(scores, baseline, thr * ATTRIBUTION_FACTOR)[:, I_SHARP]
    vibration = fired[:, I_MISREG] | (fired[:, I_SHARP] & (~ill_strong | sharp_big))
    illumination = ill_strong | (fired[:, I_CONTRAST] & ~fired[:, I_SHARP])
    return vibration, illumination
