#!/usr/bin/env python3
"""Simulator speed benchmark, extrapolated to a CHDL-sized corpus, and (with --out) a corpus maker.

    python tools/render_corpus.py                 # the real figure: 400 frames per stage, 1 and 2 processes
    python tools/render_corpus.py --quick         # < 60 s: 60 frames per stage
    python tools/render_corpus.py --out DIR --sequences 6000   # make a corpus (same as `chdl simulate corpus`)
    python tools/render_corpus.py --visibility    # what each fault does at the visibility floor (docs table)

Stages timed at 800x600 Mono8 (CHDL's size): ``render`` (the simulator alone: scene, optics, faults,
noise, quantisation), ``render+png`` (plus the lossless PNG encode a raw recording stores), and
``recording`` (the whole corpus path: sim camera -> RecordingWriter -> truth, in a temporary folder) with
1 process and with ``--workers`` processes. Each figure is extrapolated to 6,000 sequences x 10 frames.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from cli_args import at_least  # noqa: E402

CHDL_FRAMES = 6000 * 10


def _time_render(n: int, png: bool) -> tuple[float, float]:
    """(wall s, CPU s) per frame for rendering (and PNG-encoding) ``n`` frames of n/10 lane passes."""
    from acquisition.raw import encode_png
    from acquisition.simulator import DicingLaneSimulator, SimConfig

    sim = DicingLaneSimulator(SimConfig(seed=1))
    sim.render(0, 0)  # warm-up: the wafer's die design is rendered once per wafer
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        px = sim.render(i // 10, i % 10).pixels
        if png:
            encode_png(px, "Mono8")  # exactly what the raw format stores
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def _time_corpus(n_frames: int, workers: int) -> tuple[float, float]:
    """(wall s, CPU s of all processes) per frame for `chdl simulate corpus` of ``n_frames`` frames."""
    lanes_per_run = max(1, n_frames // 10 // max(workers, 1) // 2)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "chdl", "simulate", "corpus", str(Path(tmp) / "c"), "--sequences", str(n_frames // 10),
               "--lanes-per-run", str(lanes_per_run), "--workers", str(workers)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"})
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall / n_frames, cpu / n_frames


def visibility_table() -> None:
    """Mean |faulty - clean| (8-bit levels, noise-free, 800x600) per fault kind and magnitude, and the
    sensor noise for comparison: the numbers behind the documented visibility floor."""
    import numpy as np

    from acquisition.simulator import FAULT_SCALES, KINDS, VISIBILITY_FLOOR, DicingLaneSimulator, Fault, SimConfig

    clean_sim = DicingLaneSimulator(SimConfig(seed=0, noise=False))
    noisy = DicingLaneSimulator(SimConfig(seed=0)).render(0, 3, fault=None).pixels.astype(np.float32)
    mags = (0.05, 0.1, VISIBILITY_FLOOR, 0.5, 1.0)
    print(f"mean |faulty - clean| in 8-bit levels (800x600, noise-free), lanes 0-3 frame 3; sensor noise rms "
          f"{np.std(noisy - clean_sim.render(0, 3, fault=None).pixels):.2f} levels")
    print(f"{'kind':8s} {'scale at m=1':>16s} " + " ".join(f"m={m:<5}" for m in mags))
    for kind in KINDS:
        row = []
        for m in mags:
            d = []
            for lane in range(4):
                clean = clean_sim.render(lane, 3, fault=None).pixels.astype(np.float32)
                f = Fault(kind, m, angle=0.7 + lane, phase=1.0 + 2.5 * (lane % 2), period=0.2)
                d.append(np.abs(clean_sim.render(lane, 3, fault=f).pixels - clean).mean())
            row.append(f"{np.mean(d):7.2f}")
        print(f"{kind:8s} {FAULT_SCALES[kind]:16.2f} " + " ".join(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sample sizes (< 60 s)")
    ap.add_argument("--frames", type=at_least(20), default=None,
                    help="frames per timed stage, rounded down to whole lane passes of 10 (default 400, quick 60)")
    ap.add_argument("--workers", type=at_least(1), default=2, help="processes for the parallel corpus timing")
    ap.add_argument("--out", type=Path, help="make a corpus here instead of benchmarking (see `chdl simulate corpus --help`)")
    ap.add_argument("--sequences", type=int, default=6000)
    ap.add_argument("--visibility", action="store_true", help="print the fault visibility table and exit")
    args, rest = ap.parse_known_args()
    if rest and args.out is None:  # (only --out passes options on, to chdl simulate corpus: a typo ran the benchmark)
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.visibility:
        visibility_table()
        return
    if args.out is not None:
        # --out as the user typed it, from their folder (the command runs from the repository's: it landed there)
        cmd = [sys.executable, "-m", "chdl", "simulate", "corpus", os.path.abspath(args.out), "--sequences", str(args.sequences),
               "--workers", str(args.workers), *rest]
        sys.exit(subprocess.call(cmd, cwd=ROOT))
    n = args.frames if args.frames is not None else (60 if args.quick else 400)
    n = max(20, n // 10 * 10)
    load = os.getloadavg()[0]
    print(f"simulator benchmark, 800x600 Mono8, {n} frames per stage, {os.cpu_count()} CPUs visible, "
          f"load average {load:.1f}" + (" (above the CPU count = contended: trust the CPU columns)"
                                        if load > (os.cpu_count() or 1) else ""))
    rows = [("render (1 process)", *_time_render(n, png=False), 1),
            ("render+png (1 process)", *_time_render(n, png=True), 1),
            ("sim camera -> recording + truth (1 process)", *_time_corpus(n, 1), 1)]
    if args.workers > 1:
        rows.append((f"sim camera -> recording + truth ({args.workers} processes)",
                     *_time_corpus(n * args.workers, args.workers), args.workers))
    print(f"{'stage':52s} {'frames/s':>9s} {'CPU ms/frame':>13s} {'CHDL wall min':>14s} {'CHDL min, 2 idle cores':>23s}")
    for name, wall, cpu, procs in rows:
        print(f"{name:52s} {1 / wall:9.1f} {cpu * 1000:13.2f} {CHDL_FRAMES * wall / 60:14.1f} "
              f"{CHDL_FRAMES * cpu / 2 / 60:23.1f}")
    print("CHDL = 6,000 sequences x 10 frames. 'CHDL wall min' extrapolates the measured wall time; "
          "'2 idle cores' divides the measured CPU time by two (perfect 2-way parallelism, no contention).")


if __name__ == "__main__":
    main()
