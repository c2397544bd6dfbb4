#!/usr/bin/env python
"""Benchmark DIFFUMA presets: forward and forward+backward time and peak memory.

CPU section (always): one thread, each preset at its own frame size (chdl-full: 600x800, 5->1);
every measurement runs in a fresh subprocess so its peak RSS is its own (Linux: VmHWM of the first,
cold step after a reset via /proc/self/clear_refs, minus the RSS just before it; model and inputs
excluded). The first step is also the warm-up; times are the median of --repeats after it.
CUDA section (only where CUDA is present): chdl-full at 600x800 in bf16 autocast with every scan
backend that runs ("torch"; "triton" where triton imports; "fused" where mamba-ssm does);
peak = torch.cuda.max_memory_allocated.

    python tools/bench_model.py --quick              # < 60 s: tiny + small, 1 repeat
    python tools/bench_model.py --json bench.json    # the real figures (quiet machine)

"fwd" = model(x) under no_grad in eval mode; "fwd+bwd" = training_loss(x, y) + backward (the
training step without the optimiser).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_args import at_least, output_file, write_json  # noqa: E402


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _build(preset: str, overrides: dict, device: str = "cpu"):
    import torch
    from diffuma.models.registry import build_model, model_config

    cfg = model_config("diffuma", preset, **overrides)
    torch.manual_seed(0)
    model = build_model("diffuma", preset, **overrides).to(device)
    return model, cfg


def cpu_worker(preset: str, mode: str, batch: int, repeats: int, overrides: dict) -> dict:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    torch.set_num_threads(1)
    model, cfg = _build(preset, overrides)
    x = torch.rand(batch, cfg.in_frames, cfg.channels, cfg.height, cfg.width)
    y = torch.rand(batch, cfg.out_frames, cfg.channels, cfg.height, cfg.width)

    def step():
        if mode == "fwd":
            with torch.no_grad():
                model.eval()(x)
        else:
            model.train().zero_grad(set_to_none=True)
            loss, _ = model.training_loss(x, y)
            loss.backward()

    # peak: high-water mark of the first (cold) step above the RSS just before it. After a step the
    # allocator keeps freed pages resident, so a later step would show (almost) no increase.
    base = _rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")        # reset the RSS high-water mark (Linux)
        step()
        peak = (_rss_kib("VmHWM") - base) / 1024
    except OSError:
        step()
        peak = float("nan")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"device": "cpu", "threads": 1, "preset": preset, "mode": mode, "batch": batch,
            "size": f"{cfg.height}x{cfg.width}", "frames": f"{cfg.in_frames}->{cfg.out_frames}",
            "seconds": statistics.median(times), "peak_mib": peak,
            "params": sum(p.numel() for p in model.parameters())}


def cuda_section(batch: int, repeats: int, overrides: dict) -> list[dict]:
    import torch
    from diffuma.models import ssm

    backends = ["torch"] + (["triton"] if ssm.triton is not None else []) + (["fused"] if ssm.fused_available() else [])
    rows = []
    for backend in backends:
        model, cfg = _build("chdl-full", {**overrides, "scan_backend": backend}, "cuda")
        x = torch.rand(batch, cfg.in_frames, cfg.channels, cfg.height, cfg.width, device="cuda")
        y = torch.rand(batch, cfg.out_frames, cfg.channels, cfg.height, cfg.width, device="cuda")
        for mode in ("fwd", "fwd+bwd"):
            def step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    if mode == "fwd":
                        with torch.no_grad():
                            model.eval()(x)
                        return
                    model.train().zero_grad(set_to_none=True)
                    loss, _ = model.training_loss(x, y)
                loss.backward()
            step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(repeats):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                step()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            rows.append({"device": torch.cuda.get_device_name(), "preset": "chdl-full", "mode": mode,
                         "backend": backend, "dtype": "bf16-autocast", "batch": batch,
                         "size": f"{cfg.height}x{cfg.width}", "frames": f"{cfg.in_frames}->{cfg.out_frames}",
                         "seconds": statistics.median(times),
                         "peak_mib": torch.cuda.max_memory_allocated() / 2**20})
        del model
        torch.cuda.empty_cache()
    by = {(r["backend"], r["mode"]): r["seconds"] for r in rows}
    for mode in ("fwd", "fwd+bwd"):
        for other in ("triton", "fused"):
            if (other, mode) in by:
                print(f"{other} speed-up over torch scan, {mode}: {by[('torch', mode)] / by[(other, mode)]:.2f}x")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny + small only, 1 repeat (< 60 s)")
    ap.add_argument("--presets", nargs="+", default=None, help="CPU presets (default: tiny small base chdl-full)")
    ap.add_argument("--batch", type=at_least(1), default=1, help="CPU batch size")
    ap.add_argument("--repeats", type=at_least(1), default=3)
    ap.add_argument("--cuda-batch", type=at_least(1), default=2, help="batch size of the CUDA section")
    ap.add_argument("--no-cuda", action="store_true", help="skip the CUDA section")
    ap.add_argument("--json", type=output_file, default=None, help="also write all rows to this JSON file")
    ap.add_argument("--_worker", nargs=3, metavar=("PRESET", "MODE", "OVERRIDES"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:                                          # child process: one measurement
        preset, mode, ov = args._worker
        print(json.dumps(cpu_worker(preset, mode, args.batch, args.repeats, json.loads(ov))))
        return

    presets = args.presets or (["tiny", "small"] if args.quick else ["tiny", "small", "base", "chdl-full"])
    from diffuma.models.diffuma import PRESETS

    if unknown := [p for p in presets if p not in PRESETS]:
        ap.error(f"argument --presets: unknown DIFFUMA preset {unknown[0]!r} (known: {', '.join(PRESETS)})")
    repeats = 1 if args.quick else args.repeats
    print(f"# load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (high = contended timings)")
    rows = []
    print(f"{'device':<8} {'preset':<10} {'size':>8} {'frames':>7} {'mode':<8} {'seconds':>9} {'peak MiB':>9}")
    for preset in presets:
        for mode in ("fwd", "fwd+bwd"):
            cmd = [sys.executable, __file__, "--_worker", preset, mode, "{}", "--batch", str(args.batch),
                   "--repeats", str(repeats)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"bench_model: {preset}/{mode} failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{'cpu x1':<8} {preset:<10} {r['size']:>8} {r['frames']:>7} {mode:<8} "
                  f"{r['seconds']:>9.3f} {r['peak_mib']:>9.1f}", flush=True)

    import torch
    if torch.cuda.is_available() and not args.no_cuda:
        for r in cuda_section(args.cuda_batch, repeats, {}):
            rows.append(r)
            print(f"{'cuda':<8} {r['backend']:<10} {r['size']:>8} {r['frames']:>7} {r['mode']:<8} "
                  f"{r['seconds']:>9.3f} {r['peak_mib']:>9.1f}   ({r['device']}, bf16, batch {r['batch']})")
    else:
        print("# CUDA section skipped (no CUDA device)" if not args.no_cuda else "# CUDA section skipped (--no-cuda)")
    if args.json:
        write_json(args.json, {"rows": rows, "torch": torch.__version__})


if __name__ == "__main__":
    main()
