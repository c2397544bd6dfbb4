"""How often the simulator's *normal* kerf dynamics change a frame as much as a process anomaly at the
visibility floor does: the measurement behind docs/monitor.md "Why the recall bar is out of reach".

Both sides are measured the same way as the floor itself (``acquisition.process_anomalies.anomaly_area_um2``:
800x600, noise-free, pixels changed by more than 10 grey levels, in um^2):

* natural: for each frame t = 1..9 of a lane pass, the view of frame t rendered at time t and at time t - 1
  (the same stage position, no anomalies, no faults), so the difference is what the lane itself did in one
  frame interval: chips born or grown, debris born, drifting or fading (an advancing cut front's new
  kerf is left out, as the monitor's cut-front zone leaves it out). The changed pixels are grouped into
  patches (8-connected after a dilation of ``--merge-um``, so a cluster of changes counts as one event, as a
  chip burst's chips would) and the frame's largest patch is kept;
* anomalies: ``anomaly_area_um2(kind, m)``: all the pixels the anomaly's onset changes.

Printed: the distribution of the natural largest patch per frame, and for each kind and magnitude the
fraction of clean frames whose natural patch is at least as large as the anomaly's onset, with what that
is per hour of 5 fps capture (an alert level that keeps false alarms under 1/h has to sit above the
natural patch of all but ~1 in 18,000 frames, if size were all a scorer saw).

    python tools/anomaly_separability.py --lanes 400          # ~4 minutes on one core
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_args import at_least, machine, numbers, output_file, write_json  # noqa: E402

from acquisition.process_anomalies import ANOMALY_KINDS, VISIBILITY_FLOOR, anomaly_area_um2  # noqa: E402
from acquisition.simulator import FIELD_UM, DicingLaneSimulator, SimConfig  # noqa: E402

FPS = 5.0
LEVELS = 10.0  # grey levels (8 bit), as anomaly_area_um2
ZONE_AHEAD, ZONE_BEHIND = 0.16, 0.08  # chdl.monitor.anomaly_score.cut_front_zone defaults (fractions of the width)


def natural_patches(lanes: int, frames: int, merge_um: float, seed: int) -> np.ndarray:
    """(lanes * frames,) um^2: per frame, the largest patch the lane's own dynamics changed in one interval."""
    sim = DicingLaneSimulator(SimConfig(seed=seed, noise=False, fault_rate=0.0))
    u = sim.config.um_per_px
    k = max(1, int(round(merge_um / u)) * 2 + 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    out = []
    t0 = time.time()
    for lane in range(lanes):
        for t in range(1, frames):
            pos = sim.position_um(t)
            now = sim.render(lane, t, pos, fault=None).pixels.astype(np.float32)
            before = sim.render(lane, t - 1, pos, fault=None).pixels.astype(np.float32)
            changed = (np.abs(now - before) > LEVELS).astype(np.uint8)
            front = sim.lane(lane).front_x(t)  # inf without a cut front in this lane
            if np.isfinite(front):  # what the monitor's cut-front zone leaves out (its ahead / behind widths)
                x_um = pos - FIELD_UM[0] / 2 + (np.arange(changed.shape[1]) + 0.5) * u
                near = (x_um > sim.lane(lane).front_x(t - 1) - ZONE_BEHIND * FIELD_UM[0]) & \
                    (x_um < front + ZONE_AHEAD * FIELD_UM[0])
                changed[:, near] = 0
            if not changed.any():
                out.append(0.0)
                continue
            n, labels = cv2.connectedComponents(cv2.dilate(changed, kernel), connectivity=8)
            out.append(float(np.bincount(labels[changed > 0], minlength=n)[1:].max()) * u * u)
        if lane % 50 == 49:
            print(f"  {lane + 1} lanes, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return np.array(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lanes", type=at_least(1), default=400, help="lane passes rendered (default 400)")
    ap.add_argument("--frames", type=at_least(2), default=10, help="frames per pass (default 10: t = 1..9 compared)")
    ap.add_argument("--merge-um", type=float, default=7.5, help="changes this close count as one patch (um)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--magnitudes", type=numbers, default="0.3,0.4,0.5,0.6,0.8,1.0")
    ap.add_argument("--json", type=output_file, help="also write the numbers here")
    args = ap.parse_args(argv)
    nat = natural_patches(args.lanes, args.frames, args.merge_um, args.seed)
    q = np.percentile(nat, [50, 90, 99, 99.9, 100])
    print(f"natural largest patch per frame ({len(nat)} frames of {args.lanes} lane passes, merge {args.merge_um} um): "
          f"median {q[0]:.0f}, p90 {q[1]:.0f}, p99 {q[2]:.0f}, p99.9 {q[3]:.0f}, max {q[4]:.0f} um^2")
    res = {"machine": machine(), "lanes": args.lanes, "frames_per_pass": args.frames, "merge_um": args.merge_um,
           "seed": args.seed, "frames": len(nat),
           "natural_percentiles_um2": dict(zip(("p50", "p90", "p99", "p99.9", "max"), q.tolist())), "kinds": {}}
    print(f"\n| kind | magnitude | onset area (um^2) | clean frames with a natural patch as large | per hour at {FPS:g} fps |")
    print("|---|---|---|---|---|")
    for kind in ANOMALY_KINDS:
        for m in args.magnitudes:
            area = anomaly_area_um2(kind, m)
            frac = float((nat >= area).mean())
            floor = " (floor)" if abs(m - VISIBILITY_FLOOR) < 1e-9 else ""
            print(f"| {kind} | {m:g}{floor} | {area:.0f} | {frac:.4f} ({int((nat >= area).sum())}) | {frac * FPS * 3600:.0f} |")
            res["kinds"].setdefault(kind, {})[str(m)] = {"onset_area_um2": area, "clean_fraction": frac}
    if args.json:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
