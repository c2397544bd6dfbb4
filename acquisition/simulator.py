"""A dicing-lane microscope simulator with ground-truth fault labels.

What it renders (top view through a coaxially lit microscope, like the CHDL rig's alignment camera):

* a wafer of identical dies (one random *die design* per wafer: bond pads, seal ring, memory gratings,
  Manhattan logic blocks, analog blocks), tiled along the lane with a random phase per lane;
* the street (scribe lane) between two die rows, with test pads (TEG groups) and alignment crosses;
* the kerf the blade cuts along the street: dark, with cutting striations, rough edges, irregular edge
  chips and silicon debris. Chips *appear and grow* during a lane pass (each has a birth time and a
  growth time), debris particles are born, drift with the coolant and fade, and on some lanes the cut
  front itself (a kerf that ends, with a debris spray ahead of it) advances through the view. So the
  sequence is not a static texture sliding by: the kerf's morphology changes between frames beyond the
  stage shift;
* the camera steps along the lane by the stage step, so consecutive frames shift by ``step_um``;
* optics and sensor: a slight defocus (finite depth of field), vignetting, shot + read noise, black level,
  8-bit, 12-bit (in uint16, max 4095) or 16-bit output.

Faults (default rate 1.3% of frames, as the CHDL paper reports) are drawn independently per frame and
labelled: ``vibration`` (``blur``: motion blur along a random direction; ``jitter``: position jitter;
``defocus``) and ``illumination`` (``gain``: global gain/offset change; ``flicker``: banded flicker;
``shadow``: a shadow gradient). A fault's ``magnitude`` in [0, 1] maps linearly to a physical size
(:data:`FAULT_SCALES`). At the visibility floor :data:`VISIBILITY_FLOOR` = 0.2 a fault is just noticeable
when flicking between the clean and the faulty frame: it changes the frame by about 2-6 grey levels on
average (1.1-3.5 x the sensor noise rms of 1.7 levels at 8 bit; jitter: a 3.3 px shift; measured by
``python tools/render_corpus.py --visibility``, table in docs/simulator.md). Magnitudes are drawn
uniformly from [0.05, 1], so about 16 % of the faults are below the floor and labelled ``visible: false``.
For every faulty frame the clean frame it replaced (same noise draw, no fault) is kept as ground truth.

Determinism: a frame is a pure function of ``(config, lane, t, position_um)``: the wafer, each lane and
each frame's fault come from their own ``np.random.default_rng([seed, stream, lane, ...])``, each frame's
sensor noise from OpenCV's Gaussian generator seeded the same way (3x faster than NumPy's), so any frame
can be rendered alone (random access, parallel rendering) and re-rendering gives identical pixels.

Geometry (choices, since CHDL's are not published): the field of view is fixed at 1200 x 900 um; an output
of ``width`` x ``height`` pixels samples it at ``1200/width`` um per pixel (800x600 -> 1.5 um/px), so a
reduced-resolution camera sees the same scene, like binning. Dies are 1.2-1.8 mm wide, streets 140-170 um,
the kerf 36-48 um. Time ``t`` counts frames since the lane pass began (5 fps in CHDL).

Ground truth on disk (beside a raw recording; :func:`write_truth` / :func:`load_truth`)::

    <run>/truth/labels.jsonl        one line per frame index:
                                    {"index", "fault": "none"|"vibration"|"illumination",
                                     "kind": "none"|"blur"|"jitter"|"defocus"|"gain"|"flicker"|"shadow",
                                     "magnitude": 0..1, "visible": bool}
    <run>/truth/clean/NNNNNN.png    the clean frame each faulty frame replaced (same format as the frame)
    <run>/truth/simulator.json      the simulator configuration that made the run
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np

from acquisition import files
from acquisition.process_anomalies import ANOMALY_KINDS, AnomalyTrack, anomaly_box, render_anomalies
from acquisition.raw import encode_png

SIM_VERSION = 1  # bump when the rendering changes (re-rendered frames would differ)
FIELD_UM = (1200.0, 900.0)  # field of view at the reference 800x600 sampling: 1.5 um/px
FAULTS = {"vibration": ("blur", "jitter", "defocus"), "illumination": ("gain", "flicker", "shadow")}
KINDS = tuple(k for kinds in FAULTS.values() for k in kinds)
FAULT_OF = {k: f for f, kinds in FAULTS.items() for k in kinds}
VISIBILITY_FLOOR = 0.2  # magnitude at (and above) which a fault is labelled visible
# magnitude 1.0 means: (each scales linearly with magnitude; values at the floor are 1/5 of these)
FAULT_SCALES = {
    "blur": 34.0,  # motion-blur streak length, um (22.7 px at 1.5 um/px)
    "jitter": 25.0,  # position offset, um
    "defocus": 7.5,  # extra Gaussian blur sigma, um
    "gain": 0.25,  # relative gain change (+-), plus a 0.1 x this offset
    "flicker": 0.35,  # amplitude of horizontal flicker bands (relative)
    "shadow": 0.7,  # depth of the shadow at its darkest edge (relative)
}
TRUTH_DIR = "truth"
LABELS = "labels.jsonl"
CLEAN_DIR = "clean"
CONFIG_FILE = "simulator.json"
ANOMALIES = "anomalies.jsonl"  # process anomalies (acquisition.process_anomalies), when anomaly_rate > 0

# random streams (the second key of every generator: keeps streams independent)
_S_WAFER, _S_LANE, _S_CHIPS, _S_DEBRIS, _S_FAULT, _S_NOISE = range(1, 7)
_SEGMENT_UM = 1500.0  # chips and debris are generated per segment of lane, so any position renders
_CHIP_VERTICES = 7


@dataclasses.dataclass
class SimConfig:
    """Everything that determines the rendered pixels (with ``lane`` and ``t``)."""

    seed: int = 0  # master seed
    width: int = 800  # output pixels; the field of view stays 1200 um wide (um/px = 1200 / width)
    height: int = 600  # output pixels
    bit_depth: int = 8  # 8 (uint8, max 255), 12 (uint16, max 4095: Mono12 data unpacked) or 16 (uint16, max 65535)
    step_um: float = 60.0  # stage step between positions along the lane (40 px at 800x600)
    fault_rate: float = 0.013  # probability that a frame is faulty (CHDL: ~1.3 %)
    fault_kinds: tuple[str, ...] = KINDS  # kinds drawn (uniformly) for faulty frames
    min_magnitude: float = 0.05  # fault magnitudes are uniform in [min_magnitude, 1]
    lanes_per_wafer: int = 20  # lanes 0..19 share wafer 0's die design, 20..39 wafer 1's, ...
    exposure: float = 1.0  # relative exposure (camera exposure / nominal); scales the signal
    noise: bool = True  # shot + read noise (False: the noise-free expectation, for tests and docs)
    full_well_e: float = 9000.0  # electrons at full scale (shot noise)
    read_noise_e: float = 10.0  # read noise, electrons rms
    black_level: float = 0.01  # offset, fraction of full scale
    psf_um: float = 0.9  # optical blur sigma (finite depth of field), um
    vignetting: float = 0.14  # relative fall-off at the corners
    anomaly_rate: float = 0.0  # probability that a frame (t >= 1) begins a process anomaly (process_anomalies)
    anomaly_kinds: tuple[str, ...] = ANOMALY_KINDS  # kinds drawn (uniformly) for process anomalies

    @property
    def um_per_px(self) -> float:
        return FIELD_UM[0] / self.width

    @property
    def max_value(self) -> int:
        return (1 << self.bit_depth) - 1

    def validate(self) -> "SimConfig":
        if self.width < 16 or self.height < 16:
            raise ValueError(f"simulator frame size {self.width}x{self.height} is too small (min 16x16)")
        if self.bit_depth not in (8, 12, 16):
            raise ValueError(f"bit_depth must be 8, 12 or 16, not {self.bit_depth}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], not {self.fault_rate}")
        bad = set(self.fault_kinds) - set(KINDS)
        if bad or not self.fault_kinds:
            raise ValueError(f"unknown fault kinds {sorted(bad)} (known: {', '.join(KINDS)})")
        if not 0.0 <= self.anomaly_rate <= 1.0:
            raise ValueError(f"anomaly_rate must be in [0, 1], not {self.anomaly_rate}")
        bad = set(self.anomaly_kinds) - set(ANOMALY_KINDS)
        if bad or not self.anomaly_kinds:
            raise ValueError(f"unknown anomaly kinds {sorted(bad)} (known: {', '.join(ANOMALY_KINDS)})")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, not {self.seed}")
        if self.lanes_per_wafer < 1:
            raise ValueError(f"lanes_per_wafer must be >= 1, not {self.lanes_per_wafer}")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["fault_kinds"] = list(self.fault_kinds)
        d["anomaly_kinds"] = list(self.anomaly_kinds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SimConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown simulator option(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        d = dict(d)
        for key in ("fault_kinds", "anomaly_kinds"):
            if key in d:
                kinds = d[key]
                d[key] = tuple(kinds.split(",") if isinstance(kinds, str) else kinds)
        return cls(**d).validate()


@dataclasses.dataclass(frozen=True)
class Fault:
    """One injected fault: what, how strong, and the random parameters that make it concrete."""

    kind: str  # one of KINDS
    magnitude: float  # 0..1
    angle: float = 0.0  # radians: blur direction, jitter direction, shadow direction
    phase: float = 0.0  # flicker band phase / gain sign (phase < pi: brighter)
    period: float = 0.3  # flicker band period as a fraction of the frame height

    @property
    def fault(self) -> str:
        return FAULT_OF[self.kind]

    @property
    def visible(self) -> bool:
        return self.magnitude >= VISIBILITY_FLOOR


def label(index: int, fault: Fault | None) -> dict:
    """The ground-truth label line for frame ``index``."""
    if fault is None:
        return {"index": index, "fault": "none", "kind": "none", "magnitude": 0.0, "visible": False}
    magnitude = round(float(fault.magnitude), 4)
    return {"index": index, "fault": fault.fault, "kind": fault.kind, "magnitude": magnitude,
            "visible": magnitude >= VISIBILITY_FLOOR}


@dataclasses.dataclass
class Rendered:
    """One simulated frame."""

    pixels: np.ndarray  # (H, W) uint8 | uint16: what the camera delivers
    clean: np.ndarray | None  # the same frame without the fault (same noise), None if not faulty
    fault: Fault | None
    anomalies: list = dataclasses.field(default_factory=list)  # [(ProcessAnomaly, box | None)] active in this frame


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


# ----------------------------------------------------------------------------------------------------
# The wafer: one die design, rendered once per wafer and pixel pitch
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _WaferParams:
    die_w: float  # die pitch along the lane, um
    die_h: float  # die body height across the lane, um (row pitch = die_h + street)
    street: float  # street width, um
    kerf: float  # nominal kerf width, um
    chip_density: float  # chips per mm of kerf edge
    debris_density: float  # debris particles born per mm of lane per frame
    levels: dict  # reflectances of the materials


def _wafer_params(seed: int, wafer: int) -> _WaferParams:
    r = _rng(seed, _S_WAFER, wafer, 0)
    die = r.uniform(1200, 1800)
    return _WaferParams(
        die_w=die, die_h=r.uniform(1000, 1500), street=r.uniform(140, 170), kerf=r.uniform(36, 48),
        chip_density=r.uniform(12, 28), debris_density=r.uniform(0.5, 1.2),
        levels=dict(die=r.uniform(0.30, 0.40), metal=r.uniform(0.60, 0.72), pad=r.uniform(0.80, 0.90),
                    street=r.uniform(0.46, 0.56), kerf=r.uniform(0.05, 0.10), chip=r.uniform(0.14, 0.24)))


def _blocks(r: np.random.Generator, x0: float, y0: float, x1: float, y1: float, depth: int) -> list:
    """Recursively split a rectangle (um) into circuit blocks."""
    w, h = x1 - x0, y1 - y0
    if depth == 0 or max(w, h) < 140 or (depth < 3 and r.random() < 0.25):
        return [(x0, y0, x1, y1)]
    if w >= h:
        c = x0 + w * r.uniform(0.3, 0.7)
        return _blocks(r, x0, y0, c, y1, depth - 1) + _blocks(r, c, y0, x1, y1, depth - 1)
    c = y0 + h * r.uniform(0.3, 0.7)
    return _blocks(r, x0, y0, x1, c, depth - 1) + _blocks(r, x0, c, x1, y1, depth - 1)


def _die_design(seed: int, wafer: int, p: _WaferParams, s: float) -> np.ndarray:
    """One die pitch at ``s`` px/um (supersampled by the caller), float32 (H, W): the die body at the
    top left, a cross street (uncut) on its right. Rows are the body only (the caller adds the street)."""
    r = _rng(seed, _S_WAFER, wafer, 1)
    lv = p.levels
    bw, bh = p.die_w - p.street, p.die_h  # die body, um
    W, H = int(round(p.die_w * s)), int(round(bh * s))
    img = np.full((H, W), lv["die"], np.float32)
    img[:, int(round(bw * s)):] = lv["street"]

    def rect(x0, y0, x1, y1, v, thick=-1):
        cv2.rectangle(img, (int(x0 * s), int(y0 * s)), (int(x1 * s) - 1, int(y1 * s) - 1), float(v), thick)

    def px(v):
        return max(1, int(round(v * s)))

    # seal ring: three bright rings just inside the die edge
    for inset, width in ((8, 5), (18, 3), (26, 2)):
        rect(inset, inset, bw - inset, bh - inset, lv["metal"] + 0.05, px(width))
    # bond pads all around (clear of the corners), some with probe marks
    pad, pitch, inset = r.uniform(55, 75), r.uniform(95, 120), 40.0
    for side in range(4):
        length = bw if side % 2 == 0 else bh
        n = int((length - 2 * (inset + pad + 20)) // pitch)
        start = (length - n * pitch + pitch - pad) / 2
        for i in range(n):
            a = start + i * pitch
            x0, y0 = (a, inset) if side == 0 else (a, bh - inset - pad) if side == 2 else \
                (inset, a) if side == 1 else (bw - inset - pad, a)
            rect(x0, y0, x0 + pad, y0 + pad, lv["die"] - 0.08)  # passivation opening rim
            rect(x0 + 4, y0 + 4, x0 + pad - 4, y0 + pad - 4, lv["pad"])
            if r.random() < 0.6:  # probe mark
                cx, cy = x0 + pad / 2 + r.normal(0, 6), y0 + pad / 2 + r.normal(0, 6)
                cv2.ellipse(img, (int(cx * s), int(cy * s)), (px(r.uniform(5, 9)), px(r.uniform(3, 5))),
                            float(r.uniform(0, 180)), 0, 360, float(lv["pad"] - 0.25), -1)
    # core: blocks of memory gratings, logic and analog
    core = inset + pad + 25
    for (x0, y0, x1, y1) in _blocks(r, core, core, bw - core, bh - core, 4):
        x0, y0, x1, y1 = x0 + 6, y0 + 6, x1 - 6, y1 - 6
        X0, Y0, X1, Y1 = int(x0 * s), int(y0 * s), int(x1 * s), int(y1 * s)
        if X1 - X0 < 2 or Y1 - Y0 < 2:
            continue
        view = img[Y0:Y1, X0:X1]
        kind = r.choice(3, p=[0.35, 0.45, 0.2])
        if kind == 0:  # memory array: a fine grating, with a decoder strip
            period, duty = r.uniform(3.5, 8.0), r.uniform(0.35, 0.6)
            axis = int(r.integers(2))
            n = view.shape[axis]
            on = ((np.arange(n) / s) % period) < duty * period
            on = on[:, None] if axis == 0 else on[None, :]
            view[...] = np.where(on, lv["metal"] - r.uniform(0, 0.1), lv["die"] + 0.04)
            strip = max(2, int(view.shape[1 - axis] * 0.08))
            if axis == 0:
                view[:, :strip] = lv["die"] + 0.12
            else:
                view[:strip, :] = lv["die"] + 0.12
        elif kind == 1:  # logic: rows of standard cells of random widths between power rails
            row = r.uniform(9, 16)  # cell row height, um
            rows_px = np.arange(view.shape[0]) / s
            row_of = (rows_px // row).astype(int)
            in_row = rows_px % row
            n_rows = int(row_of[-1]) + 1
            cols = np.empty((n_rows, view.shape[1]), np.float32)
            tones = np.array([lv["die"] + 0.03, lv["die"] + 0.12, lv["metal"] - 0.05, lv["metal"] - 0.15], np.float32)
            for k in range(n_rows):  # one row: cells 2-12 um wide, each with its own metal density
                widths = np.maximum(1, (r.uniform(2, 12, int(view.shape[1] / s / 2) + 2) * s).astype(int))
                tone = tones[r.integers(len(tones), size=len(widths))]
                cols[k] = np.repeat(tone, widths)[: view.shape[1]] if widths.sum() >= view.shape[1] else tone.mean()
            view[...] = cols[row_of]
            pin = ((np.arange(view.shape[1]) / s) % r.uniform(1.5, 3.0)) < 0.7  # poly/pin stripes in the cells
            mid = (in_row > 0.3 * row) & (in_row < 0.7 * row)
            view[np.ix_(mid, pin)] *= 0.85
            view[in_row < 1.4, :] = lv["metal"] + 0.04  # power rails
            for _ in range(int(r.integers(2, 6))):  # a few long routing tracks
                if r.random() < 0.5:
                    yy = int(r.integers(view.shape[0]))
                    view[yy:yy + px(2.5), :] = lv["metal"]
                else:
                    xx = int(r.integers(view.shape[1]))
                    view[:, xx:xx + px(2.5)] = lv["metal"]
        else:  # analog: a few large plates and guard rings
            view[...] = lv["die"] - 0.03
            for _ in range(int(r.integers(1, 4))):
                w, h = r.uniform(0.2, 0.6) * (x1 - x0), r.uniform(0.2, 0.6) * (y1 - y0)
                ax, ay = r.uniform(x0, x1 - w), r.uniform(y0, y1 - h)
                rect(ax, ay, ax + w, ay + h, lv["metal"] - 0.08)
                rect(ax - 4, ay - 4, ax + w + 4, ay + h + 4, lv["metal"] + 0.02, px(1.5))
    return img


def _street_pattern(seed: int, wafer: int, p: _WaferParams, s: float) -> np.ndarray:
    """One die pitch of street (height = street width), with TEG pad groups and alignment crosses."""
    r = _rng(seed, _S_WAFER, wafer, 2)
    lv = p.levels
    W, H = int(round(p.die_w * s)), max(2, int(round(p.street * s)))
    img = np.full((H, W), lv["street"], np.float32)
    cy = p.street / 2
    x = r.uniform(150, 300)
    while x < p.die_w - 300:
        if r.random() < 0.6:  # a TEG group: a row of probe pads joined by a thin line
            n, size, gap = int(r.integers(3, 7)), r.uniform(40, 60), r.uniform(15, 30)
            cv2.rectangle(img, (int(x * s), int((cy - 2) * s)), (int((x + n * (size + gap)) * s), int((cy + 2) * s)),
                          float(lv["metal"]), -1)
            for i in range(n):
                a = x + i * (size + gap)
                cv2.rectangle(img, (int(a * s), int((cy - size / 2) * s)), (int((a + size) * s), int((cy + size / 2) * s)),
                              float(lv["pad"]), -1)
            x += n * (size + gap) + r.uniform(80, 250)
        else:  # an alignment cross
            arm, t = r.uniform(30, 50), r.uniform(5, 9)
            off = cy + r.choice([-1, 1]) * (p.street / 2 - arm - 6)
            cv2.rectangle(img, (int((x - arm) * s), int((off - t / 2) * s)), (int((x + arm) * s), int((off + t / 2) * s)),
                          float(lv["pad"]), -1)
            cv2.rectangle(img, (int((x - t / 2) * s), int((off - arm) * s)), (int((x + t / 2) * s), int((off + arm) * s)),
                          float(lv["pad"]), -1)
            x += 2 * arm + r.uniform(100, 250)
    return img


@functools.lru_cache(maxsize=4)
def _wafer_tile(seed: int, wafer: int, um_per_px: float, rows: int, width: int) -> tuple[_WaferParams, np.ndarray, int]:
    """The lane's surroundings at ``um_per_px``: ``rows`` rows centred on the street centre, periodic
    along x with the die pitch. Returns (params, tile, period_px); the tile repeats the period so that any
    ``width`` columns starting inside the first period are a plain slice. Supersampled 2x, area-averaged."""
    p = _wafer_params(seed, wafer)
    ss = 2
    s = ss / um_per_px
    die = _die_design(seed, wafer, p, s)
    street = _street_pattern(seed, wafer, p, s)
    H2 = rows * ss
    W = die.shape[1]
    tile = np.empty((H2, W), np.float32)
    # y (um) of each supersampled row, 0 = street centre; die rows above and below the street
    y = (np.arange(H2) - H2 / 2 + 0.5) / s
    half = p.street / 2
    in_street = np.abs(y) < half
    # below the street: top of the next die row; above: bottom of the previous one (same design)
    pitch = p.die_h + p.street
    dy = np.where(y >= half, y - half, p.die_h - (-y - half) - 1e-3) % pitch
    rows_die = np.clip((dy * s).astype(int), 0, die.shape[0] - 1)
    tile[:] = die[rows_die]
    tile[dy >= p.die_h] = p.levels["street"]  # the next lane's street (uncut), if the view reaches it
    rows_street = np.clip(((y + half) * s).astype(int), 0, street.shape[0] - 1)
    # the street pattern has the die pitch too; widths can differ by a pixel of rounding
    w = min(W, street.shape[1])
    tile[in_street, :w] = street[rows_street[in_street], :w]
    out_w = max(1, int(round(W / ss)))
    tile = cv2.resize(tile, (out_w, rows), interpolation=cv2.INTER_AREA)
    reps = -(-(out_w + width) // out_w)
    return p, np.ascontiguousarray(np.tile(tile, (1, reps))), out_w


# ----------------------------------------------------------------------------------------------------
# A lane: the kerf, chips and debris (all in um, lane coordinates; x along the lane, y from street centre)
# ----------------------------------------------------------------------------------------------------

class _Lane:
    def __init__(self, cfg: SimConfig, lane: int, rows: int):
        self.cfg, self.lane = cfg, lane
        wafer = lane // cfg.lanes_per_wafer
        self.p, self.tile, self.period = _wafer_tile(cfg.seed, wafer, cfg.um_per_px, rows, cfg.width)
        r = _rng(cfg.seed, _S_LANE, lane)
        self.phase_px = int(r.integers(self.period))
        self.kerf_y = r.normal(0, 4)  # blade offset from the street centre, um
        self.kerf_w = self.p.kerf * r.uniform(0.92, 1.08)
        # edge roughness: a few sinusoids per edge (um amplitude, um wavelength)
        self.rough = [(r.uniform(0.2, 0.8, 6), r.uniform(15, 200, 6), r.uniform(0, 2 * np.pi, 6)) for _ in range(2)]
        # striations inside the kerf: a random profile across it
        self.striae = r.uniform(-1, 1, 24).astype(np.float32)
        self.chip_density = self.p.chip_density * r.uniform(0.5, 1.6)
        # the cut front: on ~30 % of lanes it moves through the view during the pass
        self.front = None
        if r.random() < 0.3:
            speed = r.uniform(40, 110)  # um per frame, faster than the 60 um step: it overtakes the view
            self.front = (r.uniform(200, 900) - speed * 2, speed)  # x at t=0, um/frame
        self.light = r.uniform(0.975, 1.025)  # lamp level of this pass: CHDL's 2000 +- 50 lux
        self._segments: dict[int, tuple] = {}
        self.anomalies = AnomalyTrack(cfg.seed, lane, cfg.anomaly_rate, cfg.anomaly_kinds, cfg.step_um, FIELD_UM[0])

    def front_x(self, t: float) -> float:
        return math.inf if self.front is None else self.front[0] + self.front[1] * t

    def segment(self, k: int) -> tuple:
        """Chips and debris of lane segment ``k`` (x in [k, k+1) * _SEGMENT_UM)."""
        if k not in self._segments:
            cfg = self.cfg
            x0 = k * _SEGMENT_UM
            r = _rng(cfg.seed, _S_CHIPS, self.lane, k + 2 ** 20)
            n = r.poisson(self.chip_density * _SEGMENT_UM / 1000 * 2)  # both edges
            x = x0 + r.uniform(0, _SEGMENT_UM, n)
            depth = np.minimum(70.0, r.pareto(2.5, n) * 6 + 3)  # heavy tail: mostly 3-10 um, ~1 % over 40 um
            born = r.uniform(-15, 12, n)  # frames: ~45 % are born during a 10-frame pass, the rest before
            if self.front is not None:  # no chip before the blade has passed
                born = np.maximum(born, (x - self.front[0]) / self.front[1] + r.uniform(0.3, 3, n))
            th = np.linspace(0, np.pi, _CHIP_VERTICES)  # outline: a jagged half-ellipse on the kerf edge
            chips = dict(x=x, side=r.choice([-1.0, 1.0], n), depth=depth, length=depth * r.uniform(1.0, 2.2, n),
                         born=born, grow=r.uniform(0.8, 4.0, n), level=self.p.levels["chip"] + r.uniform(-0.06, 0.1, n),
                         ox=np.cos(th) * r.uniform(0.6, 1.0, (n, _CHIP_VERTICES)),
                         oy=np.sin(th) * r.uniform(0.5, 1.0, (n, _CHIP_VERTICES)))
            r = _rng(cfg.seed, _S_DEBRIS, self.lane, k + 2 ** 20)
            n = r.poisson(self.p.debris_density * _SEGMENT_UM / 1000 * 40)
            debris = dict(x=x0 + r.uniform(0, _SEGMENT_UM, n),
                          y=self.kerf_y + r.normal(0, 45, n),
                          vx=r.normal(0, 8, n), vy=r.normal(0, 4, n),  # coolant drift, um/frame
                          born=r.uniform(-20, 20, n), life=r.uniform(2, 15, n),
                          radius=r.uniform(1.0, 4.5, n),
                          level=np.where(r.random(n) < 0.6, r.uniform(0.8, 1.0, n), r.uniform(0.05, 0.2, n)))
            self._segments[k] = (chips, debris)
        return self._segments[k]

    def reflectance(self, x_um: float, t: float, rows: int, W: int, H: int, dx_px: int = 0, dy_px: int = 0) -> np.ndarray:
        """The scene's reflectance (float32 (H, W)) seen by a view whose left edge is at ``x_um``."""
        cfg, p = self.cfg, self.p
        u = cfg.um_per_px
        x_px = int(round(x_um / u)) + dx_px
        c0 = (self.phase_px + x_px) % self.period
        r0 = (rows - H) // 2 + dy_px
        img = self.tile[r0:r0 + H, c0:c0 + W].copy()

        x_cols = (x_px + np.arange(W)) * u  # um, lane coordinates
        y_top = (r0 - rows / 2 + 0.5) * u  # um of row 0
        front = self.front_x(t)

        # the kerf band: rows that the kerf, its chips and its edges can touch
        half = self.kerf_w / 2
        reach = half + 65.0
        b0 = max(0, int((self.kerf_y - reach - y_top) / u))
        b1 = min(H, int(math.ceil((self.kerf_y + reach - y_top) / u)) + 1)
        if b1 > b0:
            band = img[b0:b1]
            yb = (y_top + np.arange(b0, b1) * u)[:, None]
            # chips: irregular dark bites into the street from both kerf edges, growing after birth
            cmask = np.zeros(band.shape, np.uint8)
            cval = np.zeros(band.shape, np.uint8)
            sh = 4  # sub-pixel bits for fillPoly
            scale = (1 << sh) / u
            for k in range(int(math.floor(x_cols[0] / _SEGMENT_UM)) - 1, int(x_cols[-1] / _SEGMENT_UM) + 1):
                c = self.segment(k)[0]
                g = (t - c["born"]) / c["grow"]
                on = np.nonzero((g > 0) & (c["x"] + c["length"] >= x_cols[0]) & (c["x"] - c["length"] <= x_cols[-1])
                                & (c["x"] <= front))[0]
                if not len(on):
                    continue
                g = np.minimum(1.0, g[on])[:, None]
                d, ln = c["depth"][on, None] * g, c["length"][on, None] * (0.5 + 0.5 * g) / 2
                side = c["side"][on, None]
                edge = self.kerf_y + side * (half - 2)
                pts = np.empty((len(on), _CHIP_VERTICES, 2), np.int32)
                pts[..., 0] = np.round((c["x"][on, None] + c["ox"][on] * ln - x_cols[0]) * scale)
                pts[..., 1] = np.round((edge + side * c["oy"][on] * (d + 2) - y_top - b0 * u) * scale)
                # a darker conchoidal core (fracture facet) inside each chip: the outline shrunk to 55 %
                base = np.stack([(c["x"][on, None] - x_cols[0]) * scale, (edge - y_top - b0 * u) * scale], -1)
                core = (base + (pts - base) * 0.55).astype(np.int32)
                cv2.fillPoly(cmask, list(pts), 255, cv2.LINE_AA, shift=sh)
                for j, level in enumerate(c["level"][on]):
                    cv2.fillPoly(cval, pts[j:j + 1], int(level * 255), cv2.LINE_8, shift=sh)
                    if d[j, 0] > 3 * u:
                        cv2.fillPoly(cval, core[j:j + 1], int(max(0.0, level - 0.08) * 255), cv2.LINE_8, shift=sh)
            cm = cmask.astype(np.float32) * (1 / 255)
            band[:] = band * (1 - cm) + cval.astype(np.float32) * (1 / 255) * cm
            # kerf edges: rough lines; coverage anti-aliased over one pixel
            top = self.kerf_y - half - self._rough(0, x_cols)
            bot = self.kerf_y + half + self._rough(1, x_cols)
            cov = np.clip(np.minimum(yb - top, bot - yb) / u + 0.5, 0, 1)
            if self.front is not None:  # the cut ends at the front, tapering over ~40 um
                depth = np.clip((front - x_cols) / 40.0, 0, 1)
                cov = cov * depth
            # inside: dark with striations along the cut
            rel = np.clip(((yb - top) / np.maximum(bot - top, 1e-3)) * (len(self.striae) - 1), 0, len(self.striae) - 1)
            kerf = p.levels["kerf"] * (1 + 0.35 * self.striae[rel.astype(int)])
            band[:] = band * (1 - cov) + kerf * cov
        # debris: particles that are born, drift with the coolant and fade
        k0, k1 = int(math.floor(x_cols[0] / _SEGMENT_UM)) - 1, int(x_cols[-1] / _SEGMENT_UM) + 1
        for k in range(k0, k1 + 1):
            d = self.segment(k)[1]
            age = t - d["born"]
            alive = (age >= 0) & (age < d["life"])
            if front < math.inf:  # debris only behind the front, plus a spray just ahead of it
                alive &= d["x"] < front + 80
            idx = np.nonzero(alive)[0]
            for i in idx:
                fade = min(1.0, age[i] + 0.3, d["life"][i] - age[i])
                x = (d["x"][i] + d["vx"][i] * age[i]) / u - x_cols[0] / u
                y = (d["y"][i] + d["vy"][i] * age[i] - y_top) / u
                if -8 < x < W + 8 and -8 < y < H + 8:
                    lvl = float(d["level"][i])
                    cv2.circle(img, (int(x * 4), int(y * 4)), max(1, int(d["radius"][i] / u * 4)),
                               lvl * fade + float(img[int(min(max(y, 0), H - 1)), int(min(max(x, 0), W - 1))]) * (1 - fade),
                               -1, cv2.LINE_8, shift=2)
        if self.cfg.anomaly_rate > 0:  # process anomalies, anchored where the view was at their onset
            render_anomalies(img, self.anomalies.at(int(t), x_um + FIELD_UM[0] / 2), int(t), x_cols, y_top, u,
                             self.kerf_y, self.kerf_w, p.levels)
        img *= np.float32(self.light)
        return img

    def _rough(self, edge: int, x: np.ndarray) -> np.ndarray:
        amp, lam, ph = self.rough[edge]
        return (amp[:, None] * np.sin(2 * np.pi * x[None, :] / lam[:, None] + ph[:, None])).sum(0)[None, :]


# ----------------------------------------------------------------------------------------------------
# The simulator
# ----------------------------------------------------------------------------------------------------

class DicingLaneSimulator:
    """Renders frames of lane passes: ``render(lane, t, position_um)``; see the module docstring."""

    def __init__(self, config: SimConfig | None = None):
        self.config = (config or SimConfig()).validate()
        cfg = self.config
        # rows of the wafer tile: the view plus room for the largest jitter
        self._margin = int(math.ceil(FAULT_SCALES["jitter"] / cfg.um_per_px)) + 2
        self._rows = cfg.height + 2 * self._margin
        yy, xx = np.mgrid[0:cfg.height, 0:cfg.width].astype(np.float32)
        rr = ((xx - cfg.width / 2) ** 2 + (yy - cfg.height / 2) ** 2) / ((cfg.width / 2) ** 2 + (cfg.height / 2) ** 2)
        self._illum = (0.82 * cfg.exposure * (1 - cfg.vignetting * rr)).astype(np.float32)  # vignetting x exposure
        self._yy, self._xx = yy, xx
        self._lanes: dict[int, _Lane] = {}

    def lane(self, lane: int) -> _Lane:
        if lane < 0:
            raise ValueError(f"lane must be >= 0, not {lane}")
        if lane not in self._lanes:
            if len(self._lanes) >= 8:
                self._lanes.pop(next(iter(self._lanes)))
            self._lanes[lane] = _Lane(self.config, lane, self._rows)
        return self._lanes[lane]

    def position_um(self, t: int) -> float:
        """Default stage position of frame ``t`` of a pass: ``t * step_um``."""
        return t * self.config.step_um

    def fault_at(self, lane: int, t: int) -> Fault | None:
        """The fault injected into frame ``t`` of lane ``lane`` (None for most frames)."""
        cfg = self.config
        r = _rng(cfg.seed, _S_FAULT, lane, t)
        if r.random() >= cfg.fault_rate:
            return None
        kind = cfg.fault_kinds[int(r.integers(len(cfg.fault_kinds)))]
        return Fault(kind, float(r.uniform(cfg.min_magnitude, 1.0)), angle=float(r.uniform(0, 2 * np.pi)),
                     phase=float(r.uniform(0, 2 * np.pi)), period=float(r.uniform(0.08, 0.4)))

    def render(self, lane: int, t: int, position_um: float | None = None, fault: Fault | None | str = "auto") -> Rendered:
        """Frame ``t`` (frames since the pass began) of ``lane``, the view's centre at ``position_um``
        along the lane (default ``t * step_um``). ``fault``: "auto" (drawn from the seed), None, or a Fault."""
        cfg = self.config
        if position_um is None:
            position_um = self.position_um(t)
        if isinstance(fault, str):
            fault = self.fault_at(lane, t)
        L = self.lane(lane)
        x_left = position_um - FIELD_UM[0] / 2
        noise = None
        if cfg.noise:  # OpenCV's Gaussian generator: ~3x faster than NumPy's; seeded per frame (thread-local)
            noise = np.empty((cfg.height, cfg.width), np.float32)
            cv2.setRNGSeed(int(np.random.SeedSequence([cfg.seed, _S_NOISE, lane, t]).generate_state(1)[0] >> 1))
            cv2.randn(noise, 0.0, 1.0)
        refl = L.reflectance(x_left, t, self._rows, cfg.width, cfg.height)
        anomalies = []
        if cfg.anomaly_rate > 0:  # boxes of the anomalies active (changing) in this frame
            u = cfg.um_per_px
            y_top = ((self._rows - cfg.height) // 2 - self._rows / 2 + 0.5) * u
            anomalies = [(a, anomaly_box(a, t, x_left, y_top, u, cfg.width, cfg.height, L.kerf_y, L.kerf_w))
                         for a in L.anomalies.at(t, position_um) if a.active(t)]
        clean = self._expose(self._optics(refl), noise)
        if fault is None:
            return Rendered(clean, None, None, anomalies)
        if fault.kind == "jitter":
            d = fault.magnitude * FAULT_SCALES["jitter"] / cfg.um_per_px
            dx, dy = int(round(d * math.cos(fault.angle))), int(round(d * math.sin(fault.angle)))
            dy = max(-self._margin, min(self._margin, dy))
            refl = L.reflectance(x_left, t, self._rows, cfg.width, cfg.height, dx, dy)
        pixels = self._expose(self._optics(refl, fault), noise, fault)
        return Rendered(pixels, clean, fault, anomalies)

    def sequence(self, lane: int, n: int = 10) -> tuple[np.ndarray, list[dict], dict[int, np.ndarray]]:
        """A lane pass of ``n`` frames at the default positions: (frames (n,H,W), labels, {t: clean})."""
        frames, labels, cleans = [], [], {}
        for t in range(n):
            out = self.render(lane, t)
            frames.append(out.pixels)
            labels.append(label(t, out.fault))
            if out.clean is not None:
                cleans[t] = out.clean
        return np.stack(frames), labels, cleans

    # -- image formation ---------------------------------------------------------------------------
    def _optics(self, img: np.ndarray, fault: Fault | None = None) -> np.ndarray:
        u = self.config.um_per_px
        sigma = self.config.psf_um / u
        if fault is not None and fault.kind == "defocus":
            sigma = math.hypot(sigma, fault.magnitude * FAULT_SCALES["defocus"] / u)
        if sigma > 0.25:
            img = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        if fault is not None and fault.kind == "blur":
            length = max(1.0, fault.magnitude * FAULT_SCALES["blur"] / u)
            k = int(math.ceil(length)) | 1
            kernel = np.zeros((k, k), np.float32)
            c = (k - 1) / 2
            dx, dy = math.cos(fault.angle) * (length - 1) / 2, math.sin(fault.angle) * (length - 1) / 2
            cv2.line(kernel, (int(round((c - dx) * 16)), int(round((c - dy) * 16))),
                     (int(round((c + dx) * 16)), int(round((c + dy) * 16))), 1.0, 1, cv2.LINE_AA, shift=4)
            img = cv2.filter2D(img, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)
        return img

    def _expose(self, refl: np.ndarray, noise: np.ndarray | None, fault: Fault | None = None) -> np.ndarray:
        cfg = self.config
        sig = refl * self._illum  # irradiance x exposure, fraction of full scale
        if fault is not None and fault.fault == "illumination":
            m = fault.magnitude * FAULT_SCALES[fault.kind]
            if fault.kind == "gain":
                sign = 1.0 if fault.phase < np.pi else -1.0
                sig = sig * (1 + sign * m) + sign * 0.1 * m
            elif fault.kind == "flicker":
                period = fault.period * cfg.height
                sig = sig * (1 + m * np.sin(2 * np.pi * self._yy[:, :1] / period + fault.phase))
            else:  # shadow: darkest at one edge, fading out across the frame along a random direction
                ux, uy = math.cos(fault.angle), math.sin(fault.angle)
                proj = ((self._xx - cfg.width / 2) * ux + (self._yy - cfg.height / 2) * uy)
                proj = proj / (abs(ux) * cfg.width / 2 + abs(uy) * cfg.height / 2)  # -1..1
                ramp = np.clip((proj + 0.2) / 1.2, 0, 1)
                sig = sig * (1 - m * ramp * ramp * (3 - 2 * ramp))
        sig += cfg.black_level
        if noise is not None:  # shot + read noise: sigma^2 = signal / full_well + (read / full_well)^2
            std = np.maximum(sig, 0)
            std *= 1 / cfg.full_well_e
            std += (cfg.read_noise_e / cfg.full_well_e) ** 2
            np.sqrt(std, out=std)
            std *= noise
            sig += std
        sig *= cfg.max_value
        sig += 0.5
        np.clip(sig, 0, cfg.max_value, out=sig)
        return sig.astype(np.uint8 if cfg.bit_depth == 8 else np.uint16)


# ----------------------------------------------------------------------------------------------------
# Ground truth on disk
# ----------------------------------------------------------------------------------------------------

def write_truth(run_path: str | os.PathLike, labels: list[dict], cleans: dict[int, np.ndarray], config: SimConfig,
                anomalies: list[dict] | None = None) -> Path:
    """Write ``<run>/truth/``: labels.jsonl (one line per frame index), clean/NNNNNN.png, simulator.json, and
    anomalies.jsonl (one line per process anomaly, :class:`AnomalyLog`) when ``anomalies`` is not None."""
    truth = Path(run_path) / TRUTH_DIR
    (truth / CLEAN_DIR).mkdir(parents=True, exist_ok=True)
    for index, pixels in sorted(cleans.items()):
        fmt = "Mono8" if pixels.dtype == np.uint8 else "Mono16"
        files.write_bytes(truth / CLEAN_DIR / f"{index:06d}.png", encode_png(pixels, fmt))
    lines = "".join(json.dumps(lb, separators=(",", ":")) + "\n" for lb in sorted(labels, key=lambda d: d["index"]))
    files.write_bytes(truth / CONFIG_FILE, (json.dumps({"sim_version": SIM_VERSION, "config": config.to_dict()},
                                                   indent=2, sort_keys=True) + "\n").encode())
    if anomalies is not None:
        files.write_bytes(truth / ANOMALIES, "".join(json.dumps(a, separators=(",", ":")) + "\n" for a in anomalies).encode())
    files.write_bytes(truth / LABELS, lines.encode())  # written last: its presence marks the truth complete
    return truth


@dataclasses.dataclass
class Truth:
    """The ground truth beside one recording."""

    path: Path  # <run>/truth
    labels: list[dict]  # one per frame index, in index order
    config: dict  # the simulator configuration (simulator.json), {} if absent
    anomalies: list[dict] = dataclasses.field(default_factory=list)  # anomalies.jsonl (process_anomalies.AnomalyLog)

    def faulty(self) -> list[dict]:
        return [lb for lb in self.labels if lb["fault"] != "none"]

    def clean(self, index: int) -> np.ndarray:
        """The clean frame that faulty frame ``index`` replaced."""
        file = self.path / CLEAN_DIR / f"{index:06d}.png"
        pixels = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise ValueError(f"{file}: missing or unreadable clean frame")
        return pixels


def load_truth(run_path: str | os.PathLike) -> Truth:
    """Read ``<run>/truth/``. ValueError naming the file for anything missing or malformed."""
    truth = Path(run_path) / TRUTH_DIR
    file = truth / LABELS
    if not file.is_file():
        raise ValueError(f"{file}: no ground truth (not a simulated recording, or truth not written)")
    labels = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        try:
            lb = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}:{lineno}: malformed label ({e.msg})") from None
        if not isinstance(lb, dict) or set(lb) != {"index", "fault", "kind", "magnitude", "visible"} \
                or lb["index"] != len(labels) or lb["fault"] not in ("none", *FAULTS):
            raise ValueError(f"{file}:{lineno}: malformed label {line[:80]!r}")
        labels.append(lb)
    cfg_file = truth / CONFIG_FILE
    config = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    anomalies = []
    a_file = truth / ANOMALIES
    if a_file.is_file():
        for lineno, line in enumerate(a_file.read_text(encoding="utf-8").splitlines(), 1):
            try:
                a = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{a_file}:{lineno}: malformed anomaly ({e.msg})") from None
            if not isinstance(a, dict) or not {"kind", "lane", "onset_frame", "frames", "boxes"} <= set(a) \
                    or len(a["frames"]) != len(a["boxes"]):
                raise ValueError(f"{a_file}:{lineno}: malformed anomaly {line[:80]!r}")
            anomalies.append(a)
    return Truth(truth, labels, config, anomalies)
