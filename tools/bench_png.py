#!/usr/bin/env python
"""Benchmark the raw-frame PNG settings (results in docs/raw-format.md and acquisition/png.py).

For three kinds of 800x600 frames -- simulator Mono8, simulator Mono16 and the viky GenTL test pattern
(a flat frame with a square; rendered here the same way when no capture is given) -- encodes every
frame with each candidate setting and decodes it with :func:`acquisition.png.decode` (the fast path
for "None"/"Up" rows, libpng for the rest), and prints ms per frame and the size as a fraction of the
raw pixels. Single process, one OpenCV thread, the curate workers' malloc policy.

    python tools/bench_png.py                         # ~30 s
    python tools/bench_png.py --viky raw/run-0001     # use frames of a real viky capture
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acquisition import png  # noqa: E402
from acquisition.raw import Recording  # noqa: E402
from acquisition.simulator import DicingLaneSimulator, SimConfig  # noqa: E402
from curation.pipeline import tune_process  # noqa: E402

C, F, S = cv2.IMWRITE_PNG_COMPRESSION, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_STRATEGY
SETTINGS = {
    "cv2 default (adaptive, level 1)": [C, 1],
    "Up + Huffman only": [C, 1, F, cv2.IMWRITE_PNG_FILTER_UP, S, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY],
    "Up + run-length (chdl)": png.PNG_PARAMS,
    "Up + level 1": [C, 1, F, cv2.IMWRITE_PNG_FILTER_UP],
}


def viky_like(n: int) -> list[np.ndarray]:
    """White frames with a dark square moving across (what viky's virtual camera delivers)."""
    out = []
    for i in range(n):
        img = np.full((600, 800), 255, np.uint8)
        x = 40 + 53 * i
        img[200:300, x:x + 100] = 20
        out.append(img)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20, help="frames per kind")
    ap.add_argument("--viky", type=Path, default=None, help="a recording of viky frames to use instead of the rendering")
    a = ap.parse_args()
    tune_process()
    sim8, sim16 = DicingLaneSimulator(SimConfig(seed=3)), DicingLaneSimulator(SimConfig(seed=3, bit_depth=16))
    kinds = {
        "simulator Mono8": [sim8.render(i // 10, i % 10).pixels for i in range(a.frames)],
        "simulator Mono16": [sim16.render(i // 10, i % 10).pixels for i in range(a.frames)],
    }
    if a.viky:
        rec = Recording.open(a.viky)
        kinds["viky capture"] = [rec.read(f) for f in rec.frames[:a.frames]]
    else:
        kinds["viky-like pattern"] = viky_like(a.frames)
    print(f"{'frames':20s} {'setting':34s} {'encode':>9s} {'decode':>9s} {'size':>7s}")
    for kind, frames in kinds.items():
        for name, params in SETTINGS.items():
            t = time.process_time()
            bufs = [cv2.imencode(".png", f, params)[1].tobytes() for f in frames]
            enc = (time.process_time() - t) / len(frames)
            png.decode(bufs[0])
            t = time.process_time()
            out = [png.decode(b) for b in bufs]
            dec = (time.process_time() - t) / len(frames)
            assert all(np.array_equal(o, f) for o, f in zip(out, frames)), "lossless round trip failed"
            size = np.mean([len(b) for b in bufs]) / frames[0].nbytes
            print(f"{kind:20s} {name:34s} {enc * 1e3:6.2f} ms {dec * 1e3:6.2f} ms {size:7.4f}")


if __name__ == "__main__":
    main()
