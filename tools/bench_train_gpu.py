#!/usr/bin/env python
"""Full-resolution DIFFUMA on one CUDA GPU: training samples/s and peak memory (bf16 autocast, AdamW, batch >= 4),
and single-sequence inference latency (target: < 50 ms on an H100, since the camera delivers a frame every 200 ms).

    python tools/bench_train_gpu.py               # the real figure: chdl-full preset, 600x800, 5 -> 5, batch 4,
                                                  # 5 warm-up + 20 timed training steps, 50 timed inferences
    python tools/bench_train_gpu.py --quick       # < 60 s: 2 warm-up + 5 timed steps, 10 inferences
    python tools/bench_train_gpu.py --out-frames 1 --batch-size 8   # the paper's 5 -> 1 setting

Synthetic tensors already on the GPU, so this measures the model, not the loader (tools/bench_loader.py measures
that). Needs CUDA: exits with status 2 and a one-line message without it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="diffuma")
    ap.add_argument("--preset", default="chdl-full")
    ap.add_argument("--height", type=int, default=600)
    ap.add_argument("--width", type=int, default=800)
    ap.add_argument("--in-frames", type=int, default=5)
    ap.add_argument("--out-frames", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    ap.add_argument("--scan-backend", default="auto", choices=("auto", "torch", "fused", "triton"),
                    help="DIFFUMA's selective-scan backend (diffuma/models/ssm.py)")
    ap.add_argument("--quick", action="store_true", help="2 warm-up + 5 timed steps, 10 inferences")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_train_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "run it on a GPU machine, e.g. `python tools/bench_train_gpu.py`", file=sys.stderr)
        return 2
    if args.quick:
        args.warmup, args.steps, args.latency_runs = 2, 5, 10
    from diffuma.models.registry import build_model

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    extra = {"scan_backend": args.scan_backend} if args.model == "diffuma" else {}
    model = build_model(args.model, args.preset, in_frames=args.in_frames, out_frames=args.out_frames, channels=1,
                        height=args.height, width=args.width, **extra).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x = torch.rand(args.batch_size, args.in_frames, 1, args.height, args.width, device=dev)
    y = torch.rand(args.batch_size, args.out_frames, 1, args.height, args.width, device=dev)

    def autocast():
        return torch.autocast("cuda", dtype=dtype, enabled=dtype is not None)

    def step(i):
        with autocast():
            loss, _ = model.training_loss(x, y, step=i, total_steps=args.warmup + args.steps)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    model.train()
    for i in range(args.warmup):
        step(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    peak_train = torch.cuda.max_memory_allocated()

    model.eval()
    x1 = x[:1].contiguous()
    times = []
    with torch.inference_mode():
        for i in range(args.latency_runs + 5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with autocast():
                model(x1)
            torch.cuda.synchronize()
            if i >= 5:  # 5 untimed warm-up calls
                times.append((time.perf_counter() - t0) * 1000)
    latency_ms = statistics.median(times)
    result = {
        "device": torch.cuda.get_device_name(0),
        "model": f"{args.model}/{args.preset}", "parameters": n_params, "precision": args.precision,
        "scan_backend": args.scan_backend,
        "frames": f"{args.in_frames}->{args.out_frames} at {args.height}x{args.width}",
        "train": {"batch_size": args.batch_size, "timed_steps": args.steps,
                  "samples_per_s": args.steps * args.batch_size / train_s,
                  "step_ms": train_s / args.steps * 1000, "peak_memory_gib": peak_train / 2**30},
        "inference_one_sequence": {"median_ms": latency_ms, "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))],
                                   "runs": len(times), "target_ms": 50.0,
                                   "meets_target": latency_ms < 50.0},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
