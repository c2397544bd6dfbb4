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
                       neighbours (phase correlation, block-wise consensus: see consensus_shift) and
                       where the stage motion fitted locally to the neighbours' steps puts it (see
                       SequenceQC.motion_model: smooth acceleration fits, a jerk does not); the
                       SMALLEST offset over the neighbours: a jerk of this frame moves it against every
                       neighbour alike, while an error of the motion model grows with the distance to
                       the neighbour (at a sequence end the expectation is an extrapolation) and a
                       neighbour that is itself misplaced or blurred disturbs one comparison only.
                       (Measured on real hand-held footage, tools/bench_qc_real.py: the median over the
                       neighbours flagged 3x more clean frames at the same recall.)
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
median over those comparisons (for misregistration the smallest offset, see above), so one faulty
neighbour does not make a good frame look bad, and a good frame's neighbour being bad does not move its
median. The kerf widening from frame to frame changes a few blocks only, and the per-block median
ignores them — this is what keeps the illumination scores quiet on real content change.

Flags: a score fires when it is further from the run's median than
``max(floor, z * sigma_run, z_sequence * sigma_sequence)`` (:func:`thresholds`, :func:`sequence_thresholds`),
where ``sigma_run`` is 1.4826 * MAD of that score over a calibration sample of the run (see
:func:`calibrate`) and ``sigma_sequence`` the same spread over the sequence's own frames. The floors are
the visibility limits (defaults in :class:`curation.config.QCConfig`); the run term keeps a noisy camera
from flooding the report, ``z`` is per score (the scores' spreads are not alike in shape), and the
sequence term keeps a stretch with real irregular content (a hand-held or jerky scene, a large moving
object) from being called faulty frame by frame — a single faulty frame of ten barely moves its MAD. :func:`curate_flags` scores a sequence,
then re-scores with flagged frames barred as references (:func:`decide` turns scores into flags).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import scipy.fft

SCORE_NAMES = ("sharpness", "misregistration_px", "brightness", "contrast", "shading", "banding")
I_SHARP, I_MISREG, I_BRIGHT, I_CONTRAST, I_SHADING, I_BANDING = range(len(SCORE_NAMES))
# how each score fires: "low" (only below centre), "abs" (either side), "high" (only above)
SCORE_SIDES = ("low", "high", "abs", "abs", "high", "high")
# scores that the barring loop of flag_sequence re-measures only for frames its first pass flagged: where
# a frame sits among its neighbours' motion and blur is judged against a model of the sequence's own
# irregularity (the local motion fit, the median over neighbours), which fewer references make worse;
# the photometric scores are plain pairwise comparisons, exact without the barred frame
FIRST_PASS_SCORES = np.isin(np.arange(len(SCORE_NAMES)), (I_SHARP, I_MISREG))

ATTRIBUTION_FACTOR = 3.0  # see decide()
MAX_REFS = 4  # neighbours compared with each frame (nearest first)
MAX_REF_DISTANCE = 3  # in frames
BAND_STRIPS = 5  # column strips of the banding profile (median over them per row)
GRID = 4  # blocks per side for the brightness/shading grid
_G = np.arange(GRID + 1)


NO_IMAGE_SPREAD = 0.01  # fraction of full scale: a frame whose pixels' standard deviation is below carries no image


def no_image(frame: np.ndarray, max_value: float) -> str | None:
    """Why ``frame`` (H, W), values in [0, max_value], carries no image, or None when it does: its pixels'
    standard deviation is under ``NO_IMAGE_SPREAD`` of full scale (a lens cap, the lamp off, no exposure, or a
    sensor saturated all over). Such frames agree with each other, so the scores above, which compare a frame
    with its neighbours, see nothing wrong in a sequence of them; curate treats them as missing and the monitor
    reports them as acquisition events. Measured: every frame of the four development videos (tree, box, cup,
    Megamind) has >= 17.6 % but Megamind's first, which is all zeros; dark noise (~1 grey level of 255) and a few
    hot pixels stay far under 1 %. Costs ~0.02 ms at 800x600 (one ``cv2.meanStdDev``)."""
    spread = float(cv2.meanStdDev(frame)[1][0, 0]) / float(max_value)
    if spread >= NO_IMAGE_SPREAD:
        return None
    return (f"no image (its pixels' standard deviation is {spread:.2%} of full scale, under "
            f"{NO_IMAGE_SPREAD:.0%}: a lens cap, the lamp off, no exposure, or a sensor saturated all over?)")


def _down(img: np.ndarray, f: int) -> np.ndarray:
    if f <= 1:
        return img
    return cv2.resize(img, (img.shape[1] // f, img.shape[0] // f), interpolation=cv2.INTER_AREA)


def scales(height: int, width: int) -> tuple[int, int]:
    """(sharpness factor, registration factor): sharpness is measured on a frame about 400-800 px wide
    (fine enough to see a 1 px blur), phase correlation and photometry on one half that size."""
    f_sharp = max(1, width // 400)
    return f_sharp, 2 * f_sharp


def _block_sums(ii: np.ndarray, k: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sums over a grid of blocks, for P pairs at once, from stacked integral images.

    ``ii`` (n, h+1, w+1) or (n, c, h+1, w+1); ``k`` (P,) which image; ``ys``, ``xs`` (P, G+1) block
    edges. Returns (P, G, G) or (P, G, G, c)."""
    if ii.ndim == 3:
        a = ii[k[:, None, None], ys[:, :, None], xs[:, None, :]]
    else:  # the channel slice between advanced indices puts the channel last: (P, G+1, G+1, c)
        a = ii[k[:, None, None], :, ys[:, :, None], xs[:, None, :]]
    return a[:, 1:, 1:] - a[:, :-1, 1:] - a[:, 1:, :-1] + a[:, :-1, :-1]


def _scratch(buffers: dict, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 work array of ``shape``, kept in ``buffers`` for the next frame of a sequence: a fresh
    array per frame costs page faults and cache misses (measured: a quarter of the per-frame preparation)."""
    key = (name, shape)
    if key not in buffers:
        buffers[key] = np.empty(shape, np.float32)
    return buffers[key]


def _prepare(img: np.ndarray, f_sharp: int, max_value: float, window: np.ndarray, fine_ii: np.ndarray,
             reg_ii: np.ndarray, buffers: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame precomputation, written into ``fine_ii`` (the integral image of gradient energy at the
    sharpness scale) and ``reg_ii`` (3, h+1, w+1: integral images of I, I^2 and gradient energy at the
    registration scale); returns the frame's whitened spectrum at the registration scale (for phase
    correlation), the frame at that scale (float32, [0, 1]) and the frame at the sharpness scale (its
    dtype: ``_down(img, f_sharp)``, what reconstruction's self-check reads). ``buffers``: see
    :func:`_scratch`."""
    # downsample in the integer domain first (averaging rounds by < 0.5 grey level), then to float
    small_sharp = _down(img, f_sharp)
    sh = to_unit(small_sharp, max_value, _scratch(buffers, "unit", small_sharp.shape))
    # float32 integral images: block sums agree with float64 ones to <3e-4 in every score (floors
    # are >= 0.035) and cost 1/3 less. Each is written straight into the sequence's stacked array.
    cv2.integral(_grad_energy(sh, buffers), fine_ii, sdepth=cv2.CV_32F)
    small = _down(sh, 2)
    square = cv2.multiply(small, small, dst=_scratch(buffers, "square", small.shape))
    for c, plane in enumerate((small, square, _grad_energy(small, buffers))):
        cv2.integral(plane, reg_ii[c], sdepth=cv2.CV_32F)
    return whitened_spectrum(cv2.multiply(small, window, dst=square), buffers), small, small_sharp


def _median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Median along ``axis`` (0 or -1) by sorting (np.median costs ~50x more on the small arrays used here)."""
    x = np.sort(x, axis=axis)
    n = x.shape[axis]
    if axis == 0:
        return 0.5 * (x[(n - 1) // 2] + x[n // 2])
    return 0.5 * (x[..., (n - 1) // 2] + x[..., n // 2])


def _masked_median(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Median of the first ``n[p]`` values of each row of ``x`` (P, L) (rows of different lengths)."""
    cols = np.arange(x.shape[1])[None, :]
    x = np.sort(np.where(cols < n[:, None], x, np.inf), axis=1)
    rows = np.arange(x.shape[0])
    return 0.5 * (x[rows, (n - 1) // 2] + x[rows, n // 2])


def _grad_energy(img: np.ndarray, buffers: dict) -> np.ndarray:
    """Squared gradient magnitude (3x3 Sobel: its smoothing keeps sensor noise from dominating), in a
    work array of ``buffers`` (:func:`_scratch`: valid until the next call for a frame of that size).
    (Elementwise multiply/add, not cv2.magnitude: that one's result depends on the buffer's memory
    alignment in its last bits, which would make a resumed dataset differ from an uninterrupted one.)"""
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, dst=_scratch(buffers, "gx", img.shape), ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, dst=_scratch(buffers, "gy", img.shape), ksize=3)
    cv2.multiply(gx, gx, dst=gx)  # in place: each new buffer costs page faults and cache misses
    cv2.multiply(gy, gy, dst=gy)
    return cv2.add(gx, gy, dst=gx)


def _peak_offset(left: float, mid: float, right: float) -> float:
    """Sub-sample offset of the vertex of the parabola through three samples around a peak. (The
    Foroosh estimate, larger neighbour / (neighbour + peak), halves the error on random shifts of real
    frames but is biased by the Hanning window near whole-sample shifts: not used.)"""
    den = left - 2.0 * mid + right
    return 0.0 if abs(den) < 1e-12 else min(0.5, max(-0.5, 0.5 * (left - right) / den))


def _whiten(f: np.ndarray, buffers: dict | None) -> np.ndarray:
    """A spectrum ``f`` (h, w', 2) float32 (re, im) scaled to unit magnitude in place, as (h, w')
    complex64. Correctly rounded elementwise steps only -- multiply, add, sqrt, divide -- so the result
    does not depend on memory alignment (see _grad_energy). ``buffers``: see :func:`_scratch`."""
    buffers = {} if buffers is None else buffers
    sq = cv2.multiply(f, f, dst=_scratch(buffers, "spectrum", f.shape))  # re^2, im^2 (no split into planes)
    inv = np.add(sq[..., 0], sq[..., 1], out=_scratch(buffers, "inverse", f.shape[:2]))
    np.sqrt(inv, out=inv)
    inv += np.float32(1e-12)
    np.divide(np.float32(1.0), inv, out=inv)
    return cv2.multiply(f, cv2.merge([inv, inv], dst=sq), dst=f).view(np.complex64)[..., 0]


def whitened_spectrum(img: np.ndarray, buffers: dict | None = None) -> np.ndarray:
    """The DFT of the real image ``img`` (h, w) float32 scaled to unit magnitude: its non-redundant half,
    (h, w // 2 + 1) complex64 (``scipy.fft.rfft2``; the rest is its conjugate mirror). Phase correlation
    of two images is the inverse DFT of the product of one whitened spectrum with the other's conjugate,
    so each frame's spectrum is whitened once instead of every pair's cross-power spectrum. (SciPy's real
    FFTs: on 200x150 the forward transform costs 0.09 ms against 0.18 with NumPy and 0.27 with OpenCV's
    full complex output, the inverse 0.10 against 0.29 for OpenCV's complex-to-real.)
    ``buffers``: work arrays to reuse, see :func:`_scratch`."""
    f = np.ascontiguousarray(scipy.fft.rfft2(img)).view(np.float32).reshape(img.shape[0], -1, 2)
    return _whiten(f, buffers)


def _correlation_peak(c: np.ndarray, near: np.ndarray | None = None, radius: int = 0) -> tuple[np.ndarray, float]:
    """The displacement (dx, dy) at the peak of a phase-correlation surface ``c`` (h, w) float32 (wrapped
    to +-half the size), sub-pixel from the peak and its two neighbours on each axis (:func:`_peak_offset`),
    and the peak value; with ``near`` (dx, dy) the peak within ``radius`` px of it."""
    h, w = c.shape
    if near is None:
        _, peak, _, (px, py) = cv2.minMaxLoc(c)
    else:
        ys = (int(round(near[1])) + np.arange(-radius, radius + 1)) % h
        xs = (int(round(near[0])) + np.arange(-radius, radius + 1)) % w
        sub = c[np.ix_(ys, xs)]
        iy, ix = np.unravel_index(int(np.argmax(sub)), sub.shape)
        py, px, peak = int(ys[iy]), int(xs[ix]), float(sub[iy, ix])
    dx = px + _peak_offset(float(c[py, (px - 1) % w]), peak, float(c[py, (px + 1) % w]))
    dy = py + _peak_offset(float(c[(py - 1) % h, px]), peak, float(c[(py + 1) % h, px]))
    dx = dx - w if dx > w / 2 else dx
    dy = dy - h if dy > h / 2 else dy
    return np.array([dx, dy]), float(peak)


def spectrum_shift(fa: np.ndarray, fb: np.ndarray, shape: tuple[int, int], near: np.ndarray | None = None,
                   radius: int = 0) -> tuple[np.ndarray, float]:
    """Phase correlation from two whitened spectra (:func:`whitened_spectrum` of the windowed images,
    both of ``shape`` (h, w)): the displacement d = (dx, dy) with b(x) ~ a(x - d), and the peak response.
    Sub-pixel: :func:`_correlation_peak`; accuracy on known shifts of real frames in docs/curation.md
    (tools/bench_registration.py). With ``near`` (dx, dy) the peak is sought only within ``radius`` px
    of it (a periodic pattern -- dies repeating along the lane -- has a peak at every multiple of its
    pitch; see :meth:`SequenceQC.displacement`)."""
    c = np.ascontiguousarray(scipy.fft.irfft2(fb * np.conj(fa), s=shape))  # (h, w) float32
    return _correlation_peak(c, near, radius)


MOTION_SIGMA = 2.5  # frames: how far the local fit of the stage motion looks (see SequenceQC.motion_model)
MOTION_RIDGE = 0.5  # ridge on the velocity's rate of change (keeps a fit on few pairs tame)
MOTION_C = 0.25  # px/frame: Cauchy scale of the robust reweighting
SINGLE_LAYER_PEAK = 0.5  # whole-frame phase-correlation peak above which the quadrants are not consulted
ALIAS_PX = 8.0  # full-res px: a pair's direct displacement this far from its chain of adjacent pairs is an alias
END_LIGHT = 3.0  # brightness/contrast threshold factor on a light level at a sequence edge (light_steps_at_edges)
LIGHT_RUN_RATIO = 1.5  # ... the frames of such a level agree within this factor
END_MISREG = 1.5  # misregistration threshold factor at a sequence's first and last frames (frame_thresholds)
ALIAS_PEAK = 0.5  # ... if the correlation near the chain peaks at least this fraction of the direct peak
BLOCK_TOL = 0.25  # registration-scale px: block estimates this close to another count as agreeing


_WINDOWS: dict[tuple[int, int], np.ndarray] = {}


def _hanning(w: int, h: int) -> np.ndarray:
    if (w, h) not in _WINDOWS:
        _WINDOWS[w, h] = cv2.createHanningWindow((w, h), cv2.CV_32F)
    return _WINDOWS[w, h]


def block_spectra(img: np.ndarray) -> list[np.ndarray]:
    """Whitened spectra of the four quadrants of ``img`` (each Hanning-windowed), for the block-wise
    consensus of :func:`consensus_shift`."""
    h, w = img.shape[0] // 2, img.shape[1] // 2
    win = _hanning(w, h)
    return [whitened_spectrum(cv2.multiply(np.ascontiguousarray(img[y:y + h, x:x + w]), win))
            for y in (0, h) for x in (0, w)]


def consensus_shift(whole: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """The global displacement from the whole-frame estimate and the quadrants' estimates (all (2,),
    same px): a local motion (a walking person, debris, a growing kerf) drags the whole-frame peak but
    only the quadrants it covers, and a low-texture quadrant can lock onto a fixed pattern (sensor
    pattern, compression blocks) at zero. The consensus is the per-axis median of the five; the
    estimates within ``BLOCK_TOL`` (or 15 % of the displacement, if more) of it are its supporters:
    the whole-frame estimate if it is one of them (the most precise), else their mean."""
    cands = np.vstack([whole[None, :], np.asarray(blocks)])
    med = np.median(cands, axis=0)
    tol = max(BLOCK_TOL, 0.15 * float(np.hypot(*med)))
    near = np.all(np.abs(cands - med[None, :]) <= tol, axis=1)
    if near[0] or not near.any():
        return whole if near[0] else med
    return cands[near].mean(axis=0)


def motion_layers(whole: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """(k, 2) the motion layers a pair of frames shows: the consensus (:func:`consensus_shift`) and,
    for every whole-frame or quadrant estimate that at least one other agrees with (within
    ``BLOCK_TOL``), the mean of those agreeing (a lone quadrant estimate, e.g. on a textureless
    region, is noise and left out)."""
    cands = np.vstack([whole[None, :], np.asarray(blocks)])
    near = np.all(np.abs(cands[:, None, :] - cands[None, :, :]) <= BLOCK_TOL, axis=2)
    support = near.sum(1)
    # each layer is the mean of an estimate and those agreeing with it (a single noisy quadrant must not
    # offer a value that happens to lie nearer to what is expected)
    means = (near[:, :, None] * cands[None, :, :]).sum(1) / support[:, None]
    return np.vstack([consensus_shift(whole, blocks)[None, :], means[support >= 2]])


def _overlaps(shape: tuple[int, int], d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For P content displacements d (P, 2) = (dx, dy) from frame a to frame b (b(x) = a(x - d)), in px
    of a frame of ``shape``: block grid edges ys, xs (P, G+1) over the region of a that b also shows,
    the integer offsets dy, dx (P,) into b (a[y, x] shows what b shows at [y + dy, x + dx]), and
    ``ok`` (P,): False where the two share too little (the other outputs are then placeholders)."""
    h, w = shape
    dx, dy = np.rint(d[:, 0]).astype(np.int64), np.rint(d[:, 1]).astype(np.int64)
    y0, y1 = np.maximum(0, -dy), np.minimum(h, h - dy)
    x0, x1 = np.maximum(0, -dx), np.minimum(w, w - dx)
    ok = (y1 - y0 >= 2 * GRID) & (x1 - x0 >= 2 * GRID)
    y0, y1, x0, x1 = (np.where(ok, v, dflt) for v, dflt in ((y0, 0), (y1, h), (x0, 0), (x1, w)))
    dy, dx = np.where(ok, dy, 0), np.where(ok, dx, 0)
    ys = y0[:, None] + _G[None, :] * (y1 - y0)[:, None] // GRID
    xs = x0[:, None] + _G[None, :] * (x1 - x0)[:, None] // GRID
    return ys, xs, dy, dx, ok


def _compare(fine_ii: np.ndarray, reg_ii: np.ndarray, ka: np.ndarray, kb: np.ndarray, d_full: np.ndarray,
             f_sharp: int) -> np.ndarray:
    """Frame a relative to frame b over the region they share, for P pairs at once: (P, 6) rows of
    (sharpness, brightness, contrast, shading slope x, shading slope y, banding), NaN where the two
    share too little. ``fine_ii``, ``reg_ii`` the sequence's stacked integral images (see
    :func:`_prepare`), ``ka``, ``kb`` (P,) the frames' slots in them, ``d_full`` (P, 2) the displacement
    a -> b in full-res px. Each score is robust over a block grid (or rows), so a local content change
    (the kerf widening, a chip) moves a few blocks and not the score. Swapping a and b negates all but
    banding."""
    P = len(ka)
    ysf, xsf, dyf, dxf, ok_f = _overlaps((fine_ii.shape[1] - 1, fine_ii.shape[2] - 1), d_full / f_sharp)
    h, w = reg_ii.shape[2] - 1, reg_ii.shape[3] - 1
    ys, xs, dy, dx, ok_r = _overlaps((h, w), d_full / (2 * f_sharp))
    ea = _block_sums(fine_ii, ka, ysf, xsf)  # (P, G, G)
    eb = _block_sums(fine_ii, kb, ysf + dyf[:, None], xsf + dxf[:, None])
    n = (np.diff(ys, axis=1)[:, :, None] * np.diff(xs, axis=1)[:, None, :])[..., None].astype(np.float64)
    A = _block_sums(reg_ii, ka, ys, xs) / n  # (P, G, G, 3) per block: mean, mean of squares, mean gradient energy
    B = _block_sums(reg_ii, kb, ys + dy[:, None], xs + dx[:, None]) / n
    eps, tiny = 1e-3, 1e-12
    # sharpness: per block, fine-scale over coarse-scale gradient energy (block areas cancel). Gain,
    # offset, flicker bands and shadows scale both alike (or neither); blur removes the fine scale first.
    # (float32 integral images can leave a flat block's energy a hair below 0: clamp before the log)
    ea, eb, ga, gb = (np.maximum(v, 0.0) + tiny for v in (ea, eb, A[..., 2], B[..., 2]))
    sharp_map = np.log((ea * gb) / (eb * ga))
    # photometry on the registration scale (coarse, so blur barely moves it)
    ratios = np.log((A[..., 0] + eps) / (B[..., 0] + eps))  # (P, G, G)
    va = np.maximum(A[..., 1] - A[..., 0] ** 2, tiny)
    vb = np.maximum(B[..., 1] - B[..., 0] ** 2, tiny)
    med = _median(np.stack([sharp_map, ratios, 0.5 * np.log(va / vb)], axis=1).reshape(P, 3, -1))  # (P, 3)
    # shading: plane fitted to the block log-ratios; slope * frame extent = edge-to-edge change
    cy = ((ys[:, :-1] + ys[:, 1:]) - (ys[:, :1] + ys[:, -1:])) / (2.0 * h)  # (P, G) block centres
    cx = ((xs[:, :-1] + xs[:, 1:]) - (xs[:, :1] + xs[:, -1:])) / (2.0 * w)
    r = ratios - ratios.mean(axis=(1, 2), keepdims=True)
    gy = (r.sum(2) * cy).sum(1) / np.maximum(GRID * (cy * cy).sum(1), tiny)
    gx = (r.sum(1) * cx).sum(1) / np.maximum(GRID * (cx * cx).sum(1), tiny)
    # banding: per-row mean log-ratio over the full shared width, linear trend removed (rows of
    # different pairs differ in number: rows past a pair's last are masked)
    y0, y1, x0, x1 = ys[:, 0], ys[:, -1], xs[:, 0], xs[:, -1]
    L = y1 - y0  # (P,) rows shared
    ry = y0[:, None] + np.minimum(np.arange(L.max() + 1)[None, :], L[:, None])  # (P, Lmax + 1) row edges
    ia, ib = ka[:, None], kb[:, None]
    xe = (x0[:, None] + np.arange(BAND_STRIPS + 1)[None, :] * (x1 - x0)[:, None] // BAND_STRIPS)[:, None, :]  # (P, 1, S+1)
    ca = np.diff(reg_ii[ia[..., None], 0, ry[..., None], xe], axis=2)  # (P, Lmax + 1, S) column sums per strip
    cb = np.diff(reg_ii[ib[..., None], 0, (ry + dy[:, None])[..., None], xe + dx[:, None, None]], axis=2)
    width = np.diff(xe, axis=2)  # (P, 1, S)
    strips = np.log((np.diff(ca, axis=1) / width + eps) / (np.diff(cb, axis=1) / width + eps))  # (P, Lmax, S)
    prof = _median(strips)  # (P, Lmax): a band spans every strip, a moving object only some
    valid = np.arange(prof.shape[1])[None, :] < L[:, None]
    prof = np.where(valid, prof, 0.0)
    yy = np.where(valid, np.arange(prof.shape[1])[None, :] - (L[:, None] - 1) / 2, 0.0)
    prof = prof - (prof.sum(1) / L)[:, None] - yy * ((prof * yy).sum(1) / np.maximum((yy * yy).sum(1), tiny))[:, None]
    banding = 1.4826 * _masked_median(np.abs(prof - _masked_median(prof, L)[:, None]), L)
    out = np.column_stack([med, gx, gy, banding])
    out[~(ok_f & ok_r)] = np.nan
    return out


def phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Content displacement d = (dx, dy) from image a to image b (b(x) ~ a(x - d)) by phase
    correlation, and the peak response (:func:`spectrum_shift` of the windowed images' whitened spectra).
    a, b float32 of one shape, windowed by the (cached) Hanning window of that shape. This is reconstruction's
    registration (curation.reconstruct). (On OpenCV's full complex transforms, which it used before,
    a 400x300 pair cost 5.0 ms against ~1.5 ms; the estimates differ in the last bits, which moved
    1 grey level in a few pixels of a motion-compensated reconstruction: docs/curation.md.)"""
    window = _hanning(a.shape[1], a.shape[0])
    return spectrum_shift(whitened_spectrum(a * window), whitened_spectrum(b * window), a.shape)


def to_unit(frame: np.ndarray, max_value: float, out: np.ndarray | None = None) -> np.ndarray:
    """A frame as float32 in [0, 1] (written into ``out``, float32 of its shape, if given)."""
    if out is None:
        out = frame.astype(np.float32)
    else:
        np.copyto(out, frame)
    out *= np.float32(1.0 / max_value)
    return out


class SequenceQC:
    """Scores of one sequence's frames. ``frames`` (T, H, W) uint8/uint16 (or float in
    [0, max_value]); ``available`` (T,) bool (False: missing, its pixels are ignored).

    Pairwise measurements (phase-correlation displacement and :func:`_compare`) are made lazily, all
    pairs a scoring needs in one batch, and cached, so :meth:`scores` can be asked again with some
    frames barred as references (the second pass of :func:`curate_flags`) at the cost of the few extra
    pairs that needs."""

    def __init__(self, frames: np.ndarray, available: np.ndarray, max_value: float | None = None):
        T, H, W = frames.shape
        if max_value is None:
            max_value = float(np.iinfo(frames.dtype).max) if frames.dtype.kind in "ui" else 1.0
        self.T = T
        self.f_sharp, self.f_reg = scales(H, W)
        self.avail = [t for t in range(T) if available[t]]
        self.slot = {t: k for k, t in enumerate(self.avail)}
        hf, wf = H // self.f_sharp, W // self.f_sharp
        hs, ws = hf // 2, wf // 2
        self.fine_ii = np.empty((len(self.avail), hf + 1, wf + 1), np.float32)
        self.reg_ii = np.empty((len(self.avail), 3, hs + 1, ws + 1), np.float32)
        window = _hanning(ws, hs)
        buffers: dict = {}
        prepared = [_prepare(frames[t], self.f_sharp, max_value, window, self.fine_ii[k], self.reg_ii[k], buffers)
                    for k, t in enumerate(self.avail)]
        self.spectra = [p[0] for p in prepared]
        self._small = [p[1] for p in prepared]  # registration-scale frames, for block spectra when needed
        self._sharp = [p[2] for p in prepared]  # sharpness-scale frames, for reconstruction (sharp_frames)
        self._blocks: dict[int, list[np.ndarray]] = {}
        self._disp: dict[tuple[int, int], np.ndarray] = {}
        self._layers: dict[tuple[int, int], np.ndarray] = {}  # (k, 2) see motion_layers
        self._pair: dict[tuple[int, int], np.ndarray | None] = {}
        adjacent = [self.displacement(a, b) / (b - a) for a, b in zip(self.avail, self.avail[1:])]
        # the expected stage step: the median measured step (one bad pair does not move it)
        self.step = np.median(np.array(adjacent), axis=0) if adjacent else np.zeros(2)
        self._vignetting: np.ndarray | None = None
        self._fresh = (dict(self._disp), dict(self._layers))

    def forget(self) -> None:
        """Back to the state just after construction (the adjacent pairs' displacements only): the motion
        model fits every displacement measured so far, so scoring again after other scorings (another
        barring order, other thresholds) can differ from a fresh object's. tools/bench_qc_real.py tunes
        thresholds on prepared objects and calls this before each decision, so each is made exactly as
        ``chdl curate`` makes it. The image work (spectra, quadrant spectra) is kept."""
        self._disp, self._layers = dict(self._fresh[0]), dict(self._fresh[1])
        self._pair = {}
        self._vignetting = None

    def sharp_frames(self) -> list[np.ndarray | None]:
        """(T,) the frames at the sharpness scale (``_down(frame, f_sharp)``, the input's dtype; None where
        missing): reconstruction's self-check runs at this scale (:func:`curation.reconstruct.reconstruct`'s
        ``check_frames``), so it need not downsample them again."""
        out: list[np.ndarray | None] = [None] * self.T
        for k, t in enumerate(self.avail):
            out[t] = self._sharp[k]
        return out

    def block(self, k: int) -> list[np.ndarray]:
        """The quadrant spectra of the frame in slot k (:func:`block_spectra`), made on first use."""
        if k not in self._blocks:
            self._blocks[k] = block_spectra(self._small[k])
        return self._blocks[k]

    def displacement(self, a: int, b: int) -> np.ndarray:
        """Content displacement a -> b (full-res px) by phase correlation at the registration scale.

        A pair more than one frame apart is checked against the chain of its adjacent pairs: where the
        two differ by more than ``ALIAS_PX`` (or a quarter of the chain), the direct peak is an alias of a
        periodic pattern (dies repeat along the lane: at 200 px wide their pitch is ~37 px, about two stage
        steps) and the pair is measured again with the peak sought near the chain; that peak is taken if it is
        at least ``ALIAS_PEAK`` of the direct one (an alias is about as strong; where the chain itself is
        wrong, through a blurred frame, nothing comparable is there). A jerk of an end frame
        is in both the direct pair and the chain; a jerk in between cancels out of the chain."""
        if (a, b) not in self._disp:
            ka, kb = self.slot[a], self.slot[b]
            d, peak = spectrum_shift(self.spectra[ka], self.spectra[kb], self._small[ka].shape)
            if peak >= SINGLE_LAYER_PEAK:  # one motion holds nearly all the correlation: no other layer to find
                self._disp[a, b] = d * self.f_reg
                self._layers[a, b] = self._disp[a, b][None, :]
            else:
                quad = (self._small[ka].shape[0] // 2, self._small[ka].shape[1] // 2)
                quads = [spectrum_shift(qa, qb, quad)[0] for qa, qb in zip(self.block(ka), self.block(kb))]
                self._disp[a, b] = consensus_shift(d, quads) * self.f_reg
                self._layers[a, b] = motion_layers(d, quads) * self.f_reg
            if b - a > 1 and all(t in self.slot for t in range(a, b + 1)):
                chain = sum((self.displacement(t, t + 1) for t in range(a, b)), np.zeros(2))
                tol = max(ALIAS_PX, 0.25 * float(np.hypot(*chain)))
                if np.hypot(*(self._disp[a, b] - chain)) > tol:
                    d_near, p_near = spectrum_shift(self.spectra[ka], self.spectra[kb], self._small[ka].shape,
                                                    chain / self.f_reg, int(np.ceil(tol / self.f_reg)))
                    if p_near >= ALIAS_PEAK * peak:  # an alias is as strong; a chain through a blurred frame is not
                        self._disp[a, b] = d_near * self.f_reg
                        self._layers[a, b] = self._disp[a, b][None, :]
        return self._disp[a, b]

    def pairs(self, wanted: list[tuple[int, int]]) -> None:
        """Measure every pair (a, b), a < b, in ``wanted`` that is not cached yet: a relative to b,
        [sharpness, brightness, contrast, slope x, slope y, banding] (None if they share too little).
        Their displacements are cached by :meth:`displacement`."""
        new = sorted({p for p in wanted if p not in self._pair})
        if not new:
            return
        d = np.array([self.displacement(a, b) for a, b in new])
        ka = np.array([self.slot[a] for a, _ in new])
        kb = np.array([self.slot[b] for _, b in new])
        c = _compare(self.fine_ii, self.reg_ii, ka, kb, d, self.f_sharp)
        for i, p in enumerate(new):
            self._pair[p] = None if np.isnan(c[i, 0]) else c[i]

    def motion_model(self, barred: set[int] | frozenset = frozenset()) -> tuple[np.ndarray, np.ndarray]:
        """The stage motion expected at each available frame from its *neighbours'* steps:
        (v0, v1), each (n_available, 2), the velocity (full-res px per frame) at the frame and its
        rate of change, so the expected displacement from t to r is (r-t)·v0 + v1·(r-t)²/2.

        Every measured displacement d(a, b) gives the mean velocity d / (b - a) at the time (a + b) / 2.
        For each frame t a line v(s) = v0 + v1 (s - t) is fitted to the pairs that do not involve t
        (nor a barred frame, while enough others remain), weighted by their baseline b - a and by a
        Gaussian in time (``MOTION_SIGMA`` frames), with a little ridge on v1, from a robust start (the best fit without one more frame's pairs, or
        none) with three rounds of Cauchy reweighting (``MOTION_C`` px/frame) so a jittered or blurred neighbour does not move it.
        A stage that speeds up or slows down smoothly fits the line; a frame that is not where its
        neighbours' motion puts it (a jerk, a misfire) does not, whatever the sequence's mean step."""
        keys = [k for k in self._disp if not (barred and (k[0] in barred or k[1] in barred))]
        if len(keys) < 2:
            keys = list(self._disp)
        n = len(self.avail)
        if not keys:
            return np.tile(self.step, (n, 1)), np.zeros((n, 2))
        a = np.array([k[0] for k in keys], np.float64)
        b = np.array([k[1] for k in keys], np.float64)
        y = np.array([self._disp[k] for k in keys]) / (b - a)[:, None]  # (P, 2)
        t = np.array(self.avail, np.float64)[:, None]
        x = (a + b)[None, :] / 2 - t  # (n, P)
        w0 = (b - a)[None, :] * np.exp(-0.5 * (x / MOTION_SIGMA) ** 2) * ((a[None, :] != t) & (b[None, :] != t))
        f = np.array(self.avail, np.float64)
        drop = np.concatenate([np.ones((1, len(keys))),  # variant v > 0 leaves out the pairs of frame v - 1
                               1.0 - ((a[None, :] == f[:, None]) | (b[None, :] == f[:, None]))])

        def fit(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # w (..., n, P)
            s0, s1, s2 = w.sum(-1), (w * x).sum(-1), (w * x * x).sum(-1) + MOTION_RIDGE
            y0, y1 = w @ y, (w * x) @ y
            det = np.maximum(s0 * s2 - s1 * s1, 1e-12)[..., None]
            v0 = (s2[..., None] * y0 - s1[..., None] * y1) / det
            v1 = (s0[..., None] * y1 - s1[..., None] * y0) / det
            r = np.hypot(*np.moveaxis(y - v0[..., None, :] - v1[..., None, :] * x[..., None], -1, 0))
            return v0, v1, r

        # start: of the fits without one more frame's pairs (or none), the one with the least robust
        # cost over all pairs it may use -- a misplaced neighbour is in many pairs, which near a
        # sequence end can be most of them -- then Cauchy reweighting
        v0, v1, r = fit(w0[None] * drop[:, None, :])  # (n + 1, n, ...)
        cost = (w0[None] * np.log1p((r / MOTION_C) ** 2)).sum(-1)  # (n + 1, n)
        best = np.argmin(cost, axis=0)
        r = r[best, np.arange(n)]
        for _ in range(3):
            v0, v1, r = fit(w0 / (1.0 + (r / MOTION_C) ** 2))
        lonely = w0.sum(1) <= 0  # no pair without t: the sequence's median step
        v0[lonely], v1[lonely] = self.step, 0.0
        return v0, v1

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
        refs = {t: self._refs(t, allowed) or self._refs(t, set(self.avail)) for t in self.avail}
        self.pairs([(min(t, r), max(t, r)) for t in self.avail for r in refs[t]])
        # vignetting: the same scene point seen at two places in the frame differs by the fall-off
        # between them, a ratio slope proportional to the displacement. It is estimated from the
        # first pass's pairs (a fault touches few of them) and removed, so only a shadow remains.
        k_vig = self._vignetting_slope()
        v0, v1 = self.motion_model(set(barred))
        # one row per comparison of a frame t (slot k) with a reference r: (R,) each
        rows = [(k, t, r) for k, t in enumerate(self.avail) for r in refs[t]
                if self._pair[min(t, r), max(t, r)] is not None]
        if not rows:
            return scores
        kk, tt, rr = (np.array(v) for v in zip(*rows))
        keys = [(min(t, r), max(t, r)) for _, t, r in rows]
        forward = (tt < rr)[:, None]  # the pair was measured as t relative to r
        c = np.array([self._pair[p] for p in keys])  # (R, 6)
        c[:, 3:5] -= k_vig * np.array([self._disp[p] for p in keys]) / self.f_reg
        c = np.where(forward, c, c * np.array([-1.0, -1.0, -1.0, -1.0, -1.0, 1.0]))
        # misregistration: where t sits relative to r, against what the neighbours' motion expects;
        # of the motion layers the pair shows, the one nearest to the expectation: a scene with
        # two layers (a static background, a large moving object) must not look like a jerk
        # whenever the consensus switches between them; a jerk moves every layer
        dt = (rr - tt)[:, None]
        expected = dt * v0[kk] + v1[kk] * dt ** 2 / 2  # (R, 2)
        layers = self._stacked_layers(keys)  # (R, L, 2)
        off = expected[:, None, :] - np.where(forward[:, :, None], layers, -layers)
        nearest = np.argmin(np.hypot(off[..., 0], off[..., 1]), axis=1)  # padding layers are infinitely far
        comps = np.concatenate([c, off[np.arange(len(rows)), nearest]], axis=1)  # (R, 8)
        # per frame, the median over its comparisons (rows padded with NaN, which sorts last)
        frames, first, n = np.unique(kk, return_index=True, return_counts=True)
        grid = np.full((len(frames), MAX_REFS, comps.shape[1]), np.nan)
        grid[np.searchsorted(frames, kk), np.arange(len(rows)) - np.repeat(first, n)] = comps
        srt = np.sort(grid, axis=1)
        g = np.arange(len(frames))
        med = 0.5 * (srt[g, (n - 1) // 2] + srt[g, n // 2])  # (F, 8)
        t_out = np.array(self.avail)[frames]
        scores[t_out[:, None], [I_SHARP, I_BRIGHT, I_CONTRAST, I_BANDING]] = med[:, [0, 1, 2, 5]]
        scores[t_out, I_SHADING] = np.hypot(med[:, 3], med[:, 4])
        dist = np.hypot(grid[..., 6], grid[..., 7])
        scores[t_out, I_MISREG] = np.min(np.where(np.arange(MAX_REFS)[None, :] < n[:, None], dist, np.inf), axis=1)
        return scores

    def _stacked_layers(self, keys: list[tuple[int, int]]) -> np.ndarray:
        """(P, L, 2) the motion layers of the pairs ``keys`` (:func:`motion_layers`), padded with +inf."""
        out = np.full((len(keys), max(len(self._layers[p]) for p in keys), 2), np.inf)
        for i, p in enumerate(keys):
            out[i, :len(self._layers[p])] = self._layers[p]
        return out


def measure(frames: np.ndarray, available: np.ndarray, max_value: float | None = None) -> np.ndarray:
    """(T, K) scores of one sequence, every available frame a possible reference."""
    return SequenceQC(frames, available, max_value).scores()


def curate_flags(frames: np.ndarray, available: np.ndarray, baseline: "Baseline", thr: np.ndarray,
                 max_value: float | None = None, z_sequence: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flag one sequence: (scores (T,K), vibration (T,), illumination (T,)). ``thr`` (K,) the run's
    thresholds (:func:`thresholds`), raised per sequence by ``z_sequence`` (:func:`sequence_thresholds`).

    Every frame is first scored against its nearest neighbours. While some frame that is not yet
    barred is flagged, the most severe one (largest score / threshold) is barred as a reference and
    all frames are scored again. So a good frame next to faulty ones, whose medians the faults could
    sway, ends up judged against good frames only, and a faulty frame is still measured against good
    frames. Frames the first pass did not flag keep their first sharpness and misregistration
    (``FIRST_PASS_SCORES``). (Pairwise measurements are cached: a rescoring costs medians, not image
    work.) The flags returned are exactly ``decide(scores, baseline, frame_thresholds(scores, thr,
    z_sequence))`` of the scores returned, so a report can say why from the stored scores alone."""
    return flag_sequence(SequenceQC(frames, available, max_value), baseline, thr, z_sequence)


def flag_sequence(q: SequenceQC, baseline: "Baseline", thr: np.ndarray,
                  z_sequence: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`curate_flags` on a prepared :class:`SequenceQC` (its pair measurements are cached, so
    deciding again with other thresholds costs medians only: tools/bench_qc_real.py tunes this way)."""
    barred: set[int] = set()
    first = q.scores()
    scores = first
    thr_s = frame_thresholds(scores, thr, z_sequence)
    vib, ill = decide(scores, baseline, thr_s)
    suspects = vib | ill  # the frames the first pass flagged: their FIRST_PASS_SCORES are measured again
    for _ in range(len(q.avail)):
        pending = [t for t in np.flatnonzero(vib | ill).tolist() if t not in barred]
        if not pending:
            break
        sev = severity(scores, baseline, thr_s)
        barred.add(max(pending, key=lambda t: (sev[t], -t)))
        # barring clears frames, it does not accuse them by motion or blur: a frame that fitted its
        # neighbours in the first pass keeps its first sharpness and misregistration (FIRST_PASS_SCORES).
        # Re-scored against fewer references, with a motion model fitted on fewer pairs, a good frame of
        # irregular footage can look misplaced, and barring it in turn cascades (real footage,
        # tools/bench_qc_real.py: 16 of 24 false flags; docs/curation.md). (Keeping the milder of the
        # two values instead lowers the sequence thresholds with them: 3 more false flags there.)
        # Photometric scores are taken as measured again: a neighbour with the same exposure fault can
        # hide a frame's until it is barred.
        scores = np.where(suspects[:, None] | ~FIRST_PASS_SCORES[None, :], q.scores(barred), first)
        thr_s = frame_thresholds(scores, thr, z_sequence)
        vib, ill = decide(scores, baseline, thr_s)
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


# Robust spread as a quantile q of the deviations, scaled to a Gaussian sigma: for the |x| of a zero-mean
# Gaussian (signed scores around their median, and the magnitudes shading and banding) sigma = quantile *
# ABS_SIGMA[q]; for the distance of a 2-D Gaussian (misregistration) sigma = quantile / DISTANCE_QUANTILE[q].
# q = 0.5 is the MAD (1.4826) and the Rayleigh median (1.1774); q = 0.3 see sequence_thresholds.
ABS_SIGMA = {0.5: 1.4826, 0.3: 1 / 0.38532}
DISTANCE_QUANTILE = {0.5: 1.1774, 0.3: 0.84460}


def _centre_spread(v: np.ndarray, k, q: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Robust centre and sigma of the values ``v`` (finite) of score ``k``: ``v`` (n,) with ``k`` an int,
    or (n, m) with ``k`` (m,) the scores of its columns (all at once: the same numbers as column by
    column). The sigma is from the ``q`` quantile of the deviations (q = 0.5: median / MAD). Returns
    (centre, sigma) float64, each () or (m,)."""
    quantile = (lambda x: np.median(x, axis=0)) if q == 0.5 else (lambda x: np.quantile(x, q, axis=0))
    k = np.asarray(k)
    distance = k == I_MISREG  # a distance, centred on 0
    centred = distance | (k == I_SHADING) | (k == I_BANDING)  # ... and magnitudes, centred on 0
    centre = np.where(centred, 0, np.median(v, axis=0)).astype(v.dtype)
    spread = quantile(np.where(centred, v, np.abs(v - centre)))
    sigma = np.where(distance, spread / DISTANCE_QUANTILE[q], ABS_SIGMA[q] * spread)
    return centre.astype(np.float64), sigma.astype(np.float64)


def calibrate(score_sets: list[np.ndarray]) -> Baseline:
    """Robust run baseline from the (T, K) scores of a sample of the run's sequences.

    Each sequence gives its own robust centre and spread per score (median / MAD of its frames: a
    faulty frame or two barely move them), and the run's centre and spread are the medians of those
    over the sequences, so a sequence full of faults (a shaky stretch, a flickering lamp) does not
    lift the thresholds either. With fewer than 3 usable sequences the frames are pooled instead."""
    sets = [x for x in score_sets if x.size]
    center, sigma = [], []
    for k in range(len(SCORE_NAMES)):
        per_seq = [x[:, k][np.isfinite(x[:, k])] for x in sets]
        per_seq = [v for v in per_seq if v.size >= 5]
        if len(per_seq) >= 3:
            cs = np.array([_centre_spread(v, k) for v in per_seq])  # (n_seq, 2)
            c, sg = float(np.median(cs[:, 0])), float(np.median(cs[:, 1]))
        else:
            v = np.concatenate([x[:, k] for x in sets]) if sets else np.empty(0)
            v = v[np.isfinite(v)]
            c, sg = map(float, _centre_spread(v, k)) if v.size >= 5 else (0.0, 0.0)
        center.append(c), sigma.append(sg)
    return Baseline(center, sigma)


def thresholds(floors: dict[str, float], z: dict[str, float], baseline: Baseline) -> np.ndarray:
    """(K,) the run's threshold per score: max(floor, z * sigma_run), ``z`` per score."""
    return np.array([max(float(floors[n]), float(z[n]) * baseline.sigma[k]) for k, n in enumerate(SCORE_NAMES)])


SEQUENCE_QUANTILE = 0.3  # of |deviation| within one sequence: robust to up to ~2/3 of its frames deviating


def sequence_thresholds(scores: np.ndarray, thr: np.ndarray, z_sequence: float) -> np.ndarray:
    """(K,) thresholds for one sequence: the run's ``thr`` (K,), raised to ``z_sequence`` times each
    score's spread over the sequence's own (T, K) ``scores``. The spread is the 0.3 quantile of the
    frames' deviations (from the sequence's median; magnitudes from 0) scaled to a Gaussian sigma, not
    the MAD: faults close together sway their good neighbours' scores in a first pass, and with three
    faults in ten frames most of a sequence can deviate, which must not lift its thresholds (needs 5
    finite values, else the run's threshold stands)."""
    if z_sequence <= 0:
        return thr
    out = np.array(thr, np.float64)
    finite = np.isfinite(scores)
    # a missing frame is missing in every score: all scores in one batch (else score by score)
    K = len(SCORE_NAMES)
    groups = [np.arange(K)] if (finite == finite[:, :1]).all() else [[k] for k in range(K)]
    for ks in groups:
        v = scores[finite[:, ks[0]]][:, ks].astype(np.float64)  # (n, len(ks))
        if len(v) >= 5:
            out[ks] = np.maximum(out[ks], z_sequence * _centre_spread(v, np.asarray(ks), SEQUENCE_QUANTILE)[1])
    return out


def frame_thresholds(scores: np.ndarray, thr: np.ndarray, z_sequence: float) -> np.ndarray:
    """(T, K) the threshold of every frame of a sequence: :func:`sequence_thresholds`, with the
    misregistration threshold ``END_MISREG`` times wider at the sequence's first and last scored frames,
    where the frame should be is an extrapolation of its neighbours' motion (one jittered
    neighbour, even an invisible one, moves it: measured on the simulator and on real footage)."""
    out = np.tile(sequence_thresholds(scores, thr, z_sequence), (scores.shape[0], 1))
    scored = np.flatnonzero(np.isfinite(scores[:, I_MISREG]))
    if scored.size:
        out[[scored[0], scored[-1]], I_MISREG] *= END_MISREG
    for k in (I_BRIGHT, I_CONTRAST):
        out[light_steps_at_edges(scores[:, k], out[:, k]), k] *= END_LIGHT
    return out


def light_steps_at_edges(v: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """(T,) bool: the frames of a light level that starts or ends the sequence. ``v`` (T,) a light-level
    score (brightness or contrast: each frame against the median of its neighbours), ``thr`` (T,) its
    thresholds.

    One exposure gone wrong is one frame (or a few in the middle of a sequence, each unlike its other
    neighbours). When the edge frame and the one beside it (and any further frames in a row) share a
    level -- each beyond half its threshold from the sequence's median, on one side, within
    ``LIGHT_RUN_RATIO`` of the edge frame -- the scene's light changed between them and the rest (a lamp
    warming, the object turning into the light), and the median over neighbours gives the frame just
    past that step about half the step, the other way: those frames are marked (their thresholds are
    widened by ``END_LIGHT``: a larger jump still fires). Two such frames and two bad exposures cannot be
    told apart from the sequence; a lasting step is the likelier. (A level held by three or more edge
    frames shows differently -- the edge frame sees its own level in most of its neighbours -- and is
    not covered.) Measured on real footage (tools/bench_qc_real.py, docs/curation.md)."""
    out = np.zeros(v.shape, bool)
    scored = np.flatnonzero(np.isfinite(v))
    if scored.size < 5:
        return out
    dev = v - np.median(v[scored])
    for order in (scored, scored[::-1]):
        d0 = dev[order[0]]
        run = 0
        for t in order:
            d = dev[t]
            if abs(d) < 0.5 * thr[t] or d * d0 <= 0 or not abs(d0) / LIGHT_RUN_RATIO <= abs(d) <= abs(d0) * LIGHT_RUN_RATIO:
                break
            run += 1
        if run >= 2:
            out[order[:run]] = True
            past = order[min(run, len(order) - 1)]  # the first frame on the other level: about half the step, the other way
            if dev[past] * d0 < 0 and abs(dev[past]) <= 0.75 * abs(d0):
                out[past] = True
    return out


SIDE_SIGN = np.array([{"low": -1.0, "high": 1.0, "abs": 0.0}[x] for x in SCORE_SIDES])  # 0: either side


def side_deviation(scores: np.ndarray, center) -> np.ndarray:
    """(T, K) each score's deviation from ``center`` (K,) on its firing side (positive = towards firing;
    NaN where missing): -dev for "low", dev for "high", |dev| for "abs"."""
    dev = scores - np.asarray(center)[None, :]
    return np.where(SIDE_SIGN == 0, np.abs(dev), dev * SIDE_SIGN)


def severity(scores: np.ndarray, baseline: "Baseline", thr: np.ndarray) -> np.ndarray:
    """(T,) largest deviation / threshold over the scores, on each score's firing side (NaN -> 0);
    ``thr`` (K,) or per frame (T, K)."""
    mag = side_deviation(scores, baseline.center) / np.maximum(np.broadcast_to(thr, scores.shape), 1e-12)
    return np.nan_to_num(mag, nan=0.0).max(axis=1)


def exceed(scores: np.ndarray, baseline: Baseline, thr: np.ndarray) -> np.ndarray:
    """(T, K) bool: which scores fire for each frame; ``thr`` (K,) or per frame (T, K)."""
    with np.errstate(invalid="ignore"):
        return side_deviation(scores, baseline.center) > thr


def decide(scores: np.ndarray, baseline: Baseline, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vibration (T,) bool, illumination (T,) bool) for a sequence's (T, K) scores.

    Attribution, where one cause can move another's score: fine flicker bands add coarse gradient
    energy (sharpness drops a little) and blur lowers fine-scale contrast. So contrast alone does not
    make an illumination flag on a frame whose sharpness fired, and on a frame with an illumination
    flag from brightness/shading/banding, sharpness must exceed ``ATTRIBUTION_FACTOR`` x its threshold
    to add a vibration flag. Either way the frame is flagged and reconstructed; this only keeps the
    report's per-cause counts honest."""
    c = counted(scores, baseline, thr)
    vibration = c[:, I_MISREG] | c[:, I_SHARP]
    illumination = c[:, I_BRIGHT] | c[:, I_SHADING] | c[:, I_BANDING] | c[:, I_CONTRAST]
    return vibration, illumination


def counted(scores: np.ndarray, baseline: Baseline, thr: np.ndarray) -> np.ndarray:
    """(T, K) bool: the scores that fire *and* count towards a flag under :func:`decide`'s attribution rules
    (contrast not where sharpness fired; sharpness not where brightness, shading or banding fired, unless it is
    beyond ``ATTRIBUTION_FACTOR`` x its threshold). ``thr`` (K,) or per frame (T, K)."""
    fired = exceed(scores, baseline, thr)
    ill_strong = fired[:, I_BRIGHT] | fired[:, I_SHADING] | fired[:, I_BANDING]
    sharp_big = exceed(scores, baseline, thr * ATTRIBUTION_FACTOR)[:, I_SHARP]
    out = fired.copy()
    out[:, I_SHARP] &= ~ill_strong | sharp_big
    out[:, I_CONTRAST] &= ~fired[:, I_SHARP]
    return out
