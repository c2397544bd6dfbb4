"""Simulated *process* anomalies: what goes wrong with the cut itself, apart from the acquisition faults
(vibration, illumination) that curation's QC handles.

Four kinds, each drawn into the wafer's reflectance (so it is blurred, lit and noised like the scene and
moves with the stage), anchored in lane coordinates at the view the camera had when it began:

``chipping_burst``  a cluster of 2-8 deep chips along one kerf edge, grown over ``extent`` frames (1-2);
                    at magnitude 1 the chips are up to 50 um deep along 160 um of edge (natural chips:
                    mostly 3-10 um, born one at a time).
``crack``           a thin dark fracture running from a kerf edge into the street and the die, growing
                    over 2-4 frames to 60 + 300 * m um long, 2 + 8 * m um wide.
``debris_splash``   a burst of 15 + 35 * m bright and dark particles (radius up to 2 + 8 * m um) flung out
                    from the kerf for 2-3 frames, fading; gone afterwards.
``kerf_widening``   a worn blade: from a wafer position on, both kerf edges move out by up to 8 + 40 * m um,
                    ramping up over 3-5 frames (then it stays).

Labels: an anomaly is *active* in the frames ``onset <= t < onset + extent`` of its lane pass (it is
changing there: that is what a frame-to-frame predictor can see). Chips, cracks and a widened kerf stay
in the scene afterwards, as ordinary (static) features that move with the stage; a splash vanishes.
For every active frame the truth holds the anomaly's bounding box in pixels ``[x0, y0, x1, y1]``
(inclusive-exclusive, clipped to the frame; None if it is out of view).

Visibility floor :data:`VISIBILITY_FLOOR` = 0.3, relative to the lane's normal dynamics (chips born, debris
drifting): at and above it the onset frame of every kind changes at least ~800 um^2 by more than 10 grey
levels (``anomaly_area_um2``; table in docs/simulator.md), over 12x the largest natural debris particle
(64 um^2) and 5x a typical natural chip (150 um^2); at 0.1 a crack or chip burst is the size of a few
natural chips. Magnitudes are drawn uniformly from [0.1, 1], so about 22 % fall below the floor.
The comparison is with *typical* natural events: the heavy tail of natural chips grows by up to ~4,000 um^2
in one frame (p99 of clean frames 1,600 um^2; tools/anomaly_separability.py), as much as a burst, crack or
splash near the floor changes (docs/monitor.md, "Why the recall bar stays out of reach").

Draws: frame ``t >= 1`` of lane ``lane`` is an anomaly onset with probability ``anomaly_rate``, from its
own generator ``default_rng([seed, 7, lane, t])``, so a frame's anomalies are a pure function of
(config, lane, t) and the positions the lane was viewed at (the anchor is the view centre at onset).
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

ANOMALY_KINDS = ("chipping_burst", "crack", "debris_splash", "kerf_widening")
VISIBILITY_FLOOR = 0.3  # magnitude at (and above) which an anomaly is labelled visible
MIN_MAGNITUDE = 0.1
PERSISTENT = {"chipping_burst", "crack", "kerf_widening"}  # stay in the scene after their extent
EXTENTS = {"chipping_burst": (1, 2), "crack": (2, 4), "debris_splash": (2, 3), "kerf_widening": (3, 5)}
_S_ANOMALY = 7  # random stream key (the simulator's streams are 1..6)
_SHIFT = 4  # sub-pixel bits for cv2 drawing


@dataclasses.dataclass(frozen=True)
class ProcessAnomaly:
    """One anomaly of one lane pass. Lengths in um, lane coordinates (x along the lane, y from the street
    centre); ``x_um`` is where it starts along the lane."""

    kind: str
    lane: int
    onset: int  # frame of the lane pass (t) at which it begins
    extent: int  # frames it is active (changing)
    magnitude: float  # 0..1
    x_um: float
    side: float  # -1: the kerf's upper edge, +1: the lower one
    seed: int  # for its shape

    @property
    def visible(self) -> bool:
        return self.magnitude >= VISIBILITY_FLOOR

    def active(self, t: int) -> bool:
        return self.onset <= t < self.onset + self.extent

    def present(self, t: int) -> bool:
        return t >= self.onset and (self.kind in PERSISTENT or t < self.onset + self.extent)

    def growth(self, t: int) -> float:
        """0..1: how far the anomaly has developed at frame t (1 from its last active frame on)."""
        return min(1.0, (t - self.onset + 1) / self.extent)


def draw_anomaly(rng_seed: tuple, lane: int, t: int, rate: float, kinds: tuple[str, ...], view_x_um: float,
                 field_w_um: float) -> ProcessAnomaly | None:
    """The anomaly beginning at frame ``t`` of ``lane`` (None for most frames; never at t = 0).
    ``view_x_um``: the view centre along the lane at frame t; the anomaly starts in the view's middle half,
    a little right of centre (the scene moves left as the stage advances, so it stays in view)."""
    if t < 1 or rate <= 0:
        return None
    r = np.random.default_rng([*rng_seed, _S_ANOMALY, lane, t])
    if r.random() >= rate:
        return None
    kind = kinds[int(r.integers(len(kinds)))]
    lo, hi = EXTENTS[kind]
    return ProcessAnomaly(kind=kind, lane=lane, onset=t, extent=int(r.integers(lo, hi + 1)),
                          magnitude=float(r.uniform(MIN_MAGNITUDE, 1.0)),
                          x_um=float(view_x_um + r.uniform(-0.2, 0.3) * field_w_um),
                          side=float(r.choice([-1.0, 1.0])), seed=int(r.integers(2 ** 31)))


def _shapes(a: ProcessAnomaly, t: int, kerf_y: float, half: float) -> dict:
    """The anomaly's geometry at frame t, in lane um: polygons to fill dark, lines, particles, a band."""
    r = np.random.default_rng([a.seed, 1])
    m, g = a.magnitude, a.growth(t)
    edge = kerf_y + a.side * (half - 1.0)
    out: dict = {"polys": [], "cores": [], "lines": [], "dots": [], "widen": None}
    if a.kind == "chipping_burst":
        n = 2 + int(round(6 * m))
        span = 40 + 120 * m
        xs = a.x_um + np.sort(r.uniform(0, span, n))
        th = np.linspace(0, np.pi, 9)
        for x in xs:
            depth = (4 + 46 * m) * r.uniform(0.6, 1.0) * g
            length = depth * r.uniform(1.2, 2.0) / 2 + 4
            ox, oy = np.cos(th) * r.uniform(0.7, 1.0, 9), np.sin(th) * r.uniform(0.6, 1.0, 9)
            poly = np.stack([x + ox * length, edge + a.side * oy * (depth + 1)], -1)
            out["polys"].append(poly)
            out["cores"].append(np.stack([x + ox * length * 0.55, edge + a.side * oy * (depth + 1) * 0.55], -1))
    elif a.kind == "crack":
        length = (60 + 300 * m) * g
        k = 10
        ang = a.side * (np.pi / 2 + r.uniform(-0.7, 0.7))  # away from the kerf
        steps = np.linspace(0, 1, k + 1)[:, None] * length
        wobble = np.concatenate([[0.0], np.cumsum(r.normal(0, 0.25, k))])
        dirs = np.stack([np.cos(ang + wobble), np.sin(ang + wobble)], -1)
        seg = np.diff(steps[:, 0], prepend=0.0)[:, None] * dirs
        pts = np.array([a.x_um, edge]) + np.cumsum(seg, 0)
        out["lines"].append((pts, 2 + 8 * m))
    elif a.kind == "debris_splash":
        n = 15 + int(round(35 * m))
        age = t - a.onset
        fade = max(0.0, 1.0 - age / a.extent)
        ox, oy = a.x_um, kerf_y + a.side * half * 0.5
        ang = r.uniform(0, 2 * np.pi, n)
        speed = r.uniform(15, 50, n)
        rad = (2 + 8 * m) * r.uniform(0.5, 1.0, n)
        level = np.where(r.random(n) < 0.6, r.uniform(0.85, 1.0, n), r.uniform(0.04, 0.12, n))
        d = speed * (age + 0.6)
        for i in range(n):
            out["dots"].append((ox + np.cos(ang[i]) * d[i], oy + np.sin(ang[i]) * d[i], rad[i], level[i], fade))
    else:  # kerf_widening
        out["widen"] = (a.x_um, (8 + 40 * m) * g)
    return out


def render_anomalies(img: np.ndarray, anomalies: list[ProcessAnomaly], t: int, x_cols: np.ndarray, y_top: float,
                     u: float, kerf_y: float, kerf_w: float, levels: dict) -> None:
    """Draw the anomalies present at frame ``t`` into ``img`` (float32 (H, W) reflectance, in place).
    ``x_cols``: lane x (um) of each column; ``y_top``: lane y (um) of row 0; ``u``: um per pixel."""
    H, W = img.shape
    half = kerf_w / 2
    scale = (1 << _SHIFT) / u

    def px(pts):
        return np.round(np.stack([(pts[:, 0] - x_cols[0]) * scale, (pts[:, 1] - y_top) * scale], -1)).astype(np.int32)

    for a in anomalies:
        if not a.present(t):
            continue
        s = _shapes(a, t, kerf_y, half)
        if s["polys"]:
            mask = np.zeros((H, W), np.uint8)
            core = np.zeros((H, W), np.uint8)
            cv2.fillPoly(mask, [px(p) for p in s["polys"]], 255, cv2.LINE_AA, shift=_SHIFT)
            cv2.fillPoly(core, [px(p) for p in s["cores"]], 255, cv2.LINE_AA, shift=_SHIFT)
            cm, cc = mask.astype(np.float32) / 255, core.astype(np.float32) / 255
            img[:] = img * (1 - cm) + levels["chip"] * cm
            img[:] = img * (1 - cc) + (levels["chip"] - 0.08) * cc
        for pts, width_um in s["lines"]:
            mask = np.zeros((H, W), np.uint8)
            thick = max(1, int(round(width_um / u)))
            cv2.polylines(mask, [px(pts)], False, 255, thick, cv2.LINE_AA, shift=_SHIFT)
            cov = mask.astype(np.float32) / 255 * min(1.0, width_um / (thick * u))
            img[:] = img * (1 - cov) + 0.06 * cov
        for x, y, rad, level, fade in s["dots"]:
            X, Y = (x - x_cols[0]) / u, (y - y_top) / u
            if -10 < X < W + 10 and -10 < Y < H + 10:
                rp = rad / u
                mask = np.zeros((H, W), np.uint8)
                cv2.circle(mask, (int(X * 16), int(Y * 16)), max(16, int(rp * 16)), 255, -1, cv2.LINE_AA, shift=_SHIFT)
                cov = mask.astype(np.float32) / 255 * (fade * min(1.0, rp * rp))
                img[:] = img * (1 - cov) + level * cov
        if s["widen"] is not None:
            x0, w = s["widen"]
            if w > 0:
                yb = (y_top + np.arange(H) * u)[:, None]
                ramp = np.clip((x_cols[None, :] - x0) / 40.0, 0, 1)
                extra = w * ramp
                top, bot = kerf_y - half, kerf_y + half
                inside = np.minimum(yb - (top - extra), (bot + extra) - yb) / u + 0.5
                outside_old = np.maximum(top - yb, yb - bot) / u + 0.5
                cov = np.clip(inside, 0, 1) * np.clip(outside_old, 0, 1) * (ramp > 0)
                img[:] = img * (1 - cov) + levels["kerf"] * cov


def anomaly_box(a: ProcessAnomaly, t: int, x_left_um: float, y_top: float, u: float, W: int, H: int,
                kerf_y: float, kerf_w: float) -> list[int] | None:
    """The anomaly's bounding box in frame t, pixels [x0, y0, x1, y1] (inclusive-exclusive, clipped, with a
    pixel of margin for the optical blur), or None when none of it is in view."""
    s = _shapes(a, t, kerf_y, kerf_w / 2)
    pts = [p for p in s["polys"]] + [p for p, _ in s["lines"]]
    pad = [0.0] * len(s["polys"]) + [w for _, w in s["lines"]]
    xs0, xs1, ys0, ys1 = [], [], [], []
    for p, w in zip(pts, pad):
        xs0.append(p[:, 0].min() - w), xs1.append(p[:, 0].max() + w), ys0.append(p[:, 1].min() - w), ys1.append(p[:, 1].max() + w)
    for x, y, rad, _, fade in s["dots"]:
        rad = max(rad, u) + u  # drawn at least 1 px in radius, anti-aliased over one more
        if fade > 0:
            xs0.append(x - rad), xs1.append(x + rad), ys0.append(y - rad), ys1.append(y + rad)
    if s["widen"] is not None and s["widen"][1] > 0:
        x0, w = s["widen"]
        half = kerf_w / 2
        xs0.append(x0), xs1.append(math.inf), ys0.append(kerf_y - half - w), ys1.append(kerf_y + half + w)
    if not xs0:
        return None
    bx0 = int(math.floor((min(xs0) - x_left_um) / u)) - 1
    bx1 = int(math.ceil((max(xs1) - x_left_um) / u)) + 1 if max(xs1) < math.inf else W
    by0 = int(math.floor((min(ys0) - y_top) / u)) - 1
    by1 = int(math.ceil((max(ys1) - y_top) / u)) + 1
    box = [max(0, bx0), max(0, by0), min(W, bx1), min(H, by1)]
    return box if box[0] < box[2] and box[1] < box[3] else None


class AnomalyTrack:
    """The process anomalies of one lane pass, drawn frame by frame as the lane is rendered.

    ``at(t, view_x_um)`` returns the anomalies present at frame t. It remembers the view position of every
    frame it was asked about, so an anomaly stays anchored where the view was at its onset; a frame asked
    for out of order assumes the other frames were ``step_um`` apart."""

    def __init__(self, seed: int, lane: int, rate: float, kinds: tuple[str, ...], step_um: float, field_w_um: float):
        self.seed, self.lane, self.rate, self.kinds = seed, lane, rate, kinds
        self.step_um, self.field_w_um = step_um, field_w_um
        self._views: dict[int, float] = {}

    def at(self, t: int, view_x_um: float) -> list[ProcessAnomaly]:
        self._views[t] = view_x_um
        if self.rate <= 0:
            return []
        found = []
        for t0 in range(1, t + 1):
            v = self._views.get(t0, view_x_um - (t - t0) * self.step_um)
            a = draw_anomaly((self.seed,), self.lane, t0, self.rate, self.kinds, v, self.field_w_um)
            if a is not None and a.present(t):
                found.append(a)
        return found


def anomaly_record(a: ProcessAnomaly) -> dict:
    """The truth line of an anomaly (without its frames/boxes, which the recording writer adds)."""
    return {"kind": a.kind, "lane": a.lane, "onset_t": a.onset, "extent": a.extent,
            "magnitude": round(a.magnitude, 4), "visible": round(a.magnitude, 4) >= VISIBILITY_FLOOR}


class AnomalyLog:
    """Collects the truth of a recording's process anomalies frame by frame: ``add(index, rendered.anomalies)``
    for every recorded frame in order, then ``records()`` -> one dict per anomaly::

        {"anomaly": 0, "kind": "crack", "lane": 3, "onset_t": 4, "onset_frame": 34, "extent": 5,
         "magnitude": 0.61, "visible": true, "frames": [34, 35, ...], "boxes": [[x0, y0, x1, y1] | null, ...]}

    ``frames`` are the recording indices of the anomaly's active frames that were recorded, ``boxes`` its
    bounding box in each (pixels, inclusive-exclusive)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[int, int], dict] = {}

    def add(self, index: int, active: list) -> None:
        for a, box in active:
            rec = self._by_key.setdefault((a.lane, a.onset), {**anomaly_record(a), "onset_frame": None,
                                                              "frames": [], "boxes": []})
            if not rec["frames"]:  # the first recorded active frame; the onset itself unless it was not recorded
                rec["onset_frame"] = int(index)
            rec["frames"].append(int(index))
            rec["boxes"].append(box)

    def records(self) -> list[dict]:
        out = sorted(self._by_key.values(), key=lambda r: (r["frames"][0], r["lane"]))
        return [{"anomaly": i, **r} for i, r in enumerate(out)]


def anomaly_area_um2(kind: str, magnitude: float, lanes: int = 4, levels: float = 10.0) -> float:
    """How large an anomaly is at its onset: the area (um^2) of the pixels its onset frame changes by more
    than ``levels`` grey levels (8 bit, 800x600 = 1.5 um/px, noise-free), averaged over ``lanes`` lanes
    (the anomaly placed right of the view centre, t = 4). For scale: one natural debris particle (radius
    1-4.5 um) covers 3-64 um^2, a typical natural chip (3-10 um deep) 15-150 um^2."""
    from acquisition.simulator import DicingLaneSimulator, SimConfig

    vals = []
    for lane in range(lanes):
        cfg = SimConfig(seed=0, noise=False, fault_rate=0.0)
        base = DicingLaneSimulator(cfg).render(lane, 4).pixels.astype(np.float32)
        sim = DicingLaneSimulator(dataclasses.replace(cfg, anomaly_rate=1.0))
        a = ProcessAnomaly(kind, lane, 4, EXTENTS[kind][0], magnitude, sim.position_um(4) + 100.0,
                           1.0 if lane % 2 else -1.0, 1234 + lane)
        sim.lane(lane).anomalies.at = lambda t, view_x, a=a: [a] if a.present(t) else []
        diff = np.abs(sim.render(lane, 4).pixels.astype(np.float32) - base)
        vals.append(float((diff > levels).sum()) * sim.config.um_per_px ** 2)
    return float(np.mean(vals))
