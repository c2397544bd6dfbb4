#!/usr/bin/env python
"""CPU cost of one DIFFUMA training step relative to SimVP's, per data family (issue 12: "presets whose CPU
cost per sample is close to SimVP's at the same frame size").

For each family it builds SimVP `tiny` and the DIFFUMA presets from the registry at the family's frame size
and clip length, then times training steps (``training_loss`` + backward + AdamW step, batch 4, random
[0, 1] frames) **interleaved step by step** in one process on one torch thread, so whatever else the machine
does falls on every model alike. Time is ``time.process_time`` (this process's CPU, not the wall clock);
the figure is the median over --steps steps after one warm-up step, and the ratio is the median over the
rounds of (this model's step / SimVP's step of the same round). Families (the data of docs/model-quality.md):

    lanes   150x200 (the model pads to 152x200), 5 -> 5: DIFFUMA tiny
    real    120x160, 5 -> 5: DIFFUMA tiny
    mmnist  64x64, 10 -> 10: DIFFUMA tiny-mmnist (its preset there) and tiny

    python tools/bench_step_cost.py                     # all families, 8 steps each (~2 min)
    python tools/bench_step_cost.py --quick             # mmnist only, 2 steps (< 30 s)
    python tools/bench_step_cost.py --json cost.json    # also write the rows as JSON
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_args import at_least, output_file, write_json  # noqa: E402
from diffuma.models.registry import build_model, model_class  # noqa: E402

FAMILIES = {  # name -> (height, width, T_in, T_out, DIFFUMA presets)
    "lanes": (150, 200, 5, 5, ("tiny",)),
    "real": (120, 160, 5, 5, ("tiny",)),
    "mmnist": (64, 64, 10, 10, ("tiny-mmnist", "tiny")),
}
BATCH = 4


def _build(name: str, preset: str, height: int, width: int, t_in: int, t_out: int) -> torch.nn.Module:
    """The registry's model at this frame size and clip length (only the fields its config has)."""
    fields = {f.name for f in dataclasses.fields(model_class(name).Config)}
    size = dict(in_frames=t_in, out_frames=t_out, height=height, width=width)
    return build_model(name, preset, **{k: v for k, v in size.items() if k in fields})


def _step(model, opt, x, y) -> float:
    """CPU seconds of one training step (loss + backward + AdamW)."""
    t0 = time.process_time()
    loss, _ = model.training_loss(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.process_time() - t0


def measure(family: str, steps: int, seed: int = 0) -> list[dict]:
    """Rows {family, model, preset, frame, ms_per_step, ratio_to_simvp} for one family."""
    height, width, t_in, t_out, presets = FAMILIES[family]
    torch.manual_seed(seed)
    runs = [("simvp", "tiny")] + [("diffuma", p) for p in presets]
    models = []
    for name, preset in runs:
        m = _build(name, preset, height, width, t_in, t_out)
        models.append((name, preset, m, torch.optim.AdamW(m.parameters(), lr=1e-3)))
    x = torch.rand(BATCH, t_in, 1, height, width)
    y = torch.rand(BATCH, t_out, 1, height, width)
    times: dict[tuple[str, str], list[float]] = {(n, p): [] for n, p, _, _ in models}
    for i in range(steps + 1):                        # step 0 is the warm-up
        for name, preset, m, opt in models:
            dt = _step(m, opt, x, y)
            if i:
                times[(name, preset)].append(dt)
    simvp = times[("simvp", "tiny")]
    return [{"family": family, "model": name, "preset": preset, "frame": f"{height}x{width}",
             "clip": f"{t_in}->{t_out}", "batch": BATCH, "ms_per_step": round(1000 * statistics.median(v), 1),
             # per round (the steps taken side by side), then the median: robust to the machine's drift
             "ratio_to_simvp": round(statistics.median(a / b for a, b in zip(v, simvp)), 3)}
            for (name, preset), v in times.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    ap.add_argument("--steps", type=at_least(1), default=8, help="timed steps per model after one warm-up (median)")
    ap.add_argument("--quick", action="store_true", help="mmnist only, 2 steps")
    ap.add_argument("--json", type=output_file, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.families, args.steps = ["mmnist"], 2
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    rows = [row for fam in args.families for row in measure(fam, args.steps)]
    print(f"# step cost, batch {BATCH}, one thread, median of {args.steps} interleaved steps, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {load:.1f} at start")
    print("| family | frame, clip | model | CPU ms / step | / SimVP tiny |\n|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['family']} | {r['frame']}, {r['clip']} | {r['model']} `{r['preset']}` | {r['ms_per_step']} | "
              f"{r['ratio_to_simvp']:.2f}× |")
    if args.json:
        write_json(args.json, {"load_at_start": load, "steps": args.steps, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
