"""Per-frame latency of the monitor's scoring (acquisition QC + prediction + scoring), p50 / p99.

    python tools/bench_monitor.py [--checkpoint RUN/checkpoints/last.pt] [--scorer F] [--threads 2] [--frames 60]

Renders simulated lane passes (10 positions each) at 200x150 and 800x600 and times
``MonitorPipeline.push`` per frame in this process with ``--threads`` torch/OpenCV threads (default 1, as
the scorer process of ``chdl monitor``: on 2 cores, one is the capture's). The first lane pass is warm-up
(first calls, FFT plans) and not timed. Predictors: constant motion, and the checkpoint if given
(only at the frame size it was trained on); with ``--scorer F`` (a learned scorer file, chdl
monitor-fit-scorer) also its predictor with that scorer, at the frame size it was fitted on. 5 fps needs
p99 < 200 ms.

The timed part runs only on a quiet machine: with a 1-minute load average of 2 or more it prints the load
and stops (pass --force to time anyway; the figures are then marked "loaded").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_args import at_least, existing_file  # noqa: E402


def frames_for(width: int, height: int, n: int):
    from acquisition.simulator import DicingLaneSimulator, SimConfig

    sim = DicingLaneSimulator(SimConfig(seed=7, width=width, height=height, fault_rate=0.0))
    out = []
    for k in range(n):
        lane, t = divmod(k, 10)
        out.append((k, lane, t, sim.render(lane, t).pixels))
    return out


def time_pipeline(predictor, frames, max_value=255.0, scorer=None) -> list[float]:
    from chdl.monitor.anomaly_score import MonitorPipeline, ScorerConfig

    pipe = MonitorPipeline(predictor, max_value, ScorerConfig(scorer_file=scorer))
    times = []
    for k, lane, t, px in frames:
        t0 = time.perf_counter()
        r = pipe.push(k, lane, t, px)
        if r is not None and lane > 0:
            times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=existing_file, default=None)
    ap.add_argument("--scorer", type=existing_file, default=None, help="a learned scorer file, also timed with its predictor")
    ap.add_argument("--threads", type=at_least(1), default=1, help="torch/OpenCV threads (chdl monitor's scorer uses 1)")
    ap.add_argument("--frames", type=at_least(20), default=110,
                    help="frames rendered per size (10 per lane pass; the first pass is an untimed warm-up)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {platform.node()} {os.cpu_count()} cores, "
          f"load {load:.2f}")
    if load >= 2 and not args.force:
        print(f"machine loaded (1-min load average {load:.2f} >= 2): not timing; rerun when it is quiet or pass --force")
        return
    import cv2
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from chdl.monitor.anomaly_score import CheckpointPredictor, ConstantMotion
    from chdl.monitor.learned_score import LearnedScorer

    try:
        learned = LearnedScorer.load(args.scorer) if args.scorer is not None else None
    except ValueError as e:  # (a ScorerFileError: one line naming the file)
        raise SystemExit(f"error: {e}") from None

    tag = "" if load < 2 else " (loaded)"
    print("| size | predictor | p50 ms | p99 ms | keeps up with 5 fps |")
    print("|---|---|---|---|---|")
    for w, h in ((200, 150), (800, 600)):
        frames = frames_for(w, h, args.frames)
        preds = [ConstantMotion(5)]
        if args.checkpoint is not None:
            try:
                preds.append(CheckpointPredictor(args.checkpoint, (h, w)))
            except ValueError as e:
                print(f"({e})")
        runs = [(p, None) for p in preds]
        if learned is not None and (learned.height, learned.width) == (h, w):
            runs += [(p, args.scorer) for p in preds if (p.name == "constant-motion") == (learned.predictor == "constant-motion")]
        for p, scorer in runs:
            ms = np.array(time_pipeline(p, frames, scorer=None if scorer is None else str(scorer)))
            p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
            name = p.name + (f" + learned scorer {scorer.name}" if scorer is not None else "")
            print(f"| {w}x{h} | {name} | {p50:.1f} | {p99:.1f} | {'yes' if p99 < 200 else 'no'}{tag} |", flush=True)


if __name__ == "__main__":
    main()
