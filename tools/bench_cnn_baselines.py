"""Throughput and size of the CNN baselines (SimVP gSTA, SimVP IncepU, PastNet) at their presets.

For each (model, preset) it builds the model from the registry, then times -- with the same function
``chdl bench`` uses (``diffuma.bench.measure_throughput``) -- training steps (training_loss + backward +
AdamW step) and no-grad inference on random [0, 1] frames of the preset's shape, after warm-up steps:

    default  64x64 Moving MNIST, 10 -> 10, batch 16 (the papers' setting)
    chdl     600x800 CHDL, 5 -> 1, batch 4

and prints a Markdown table (also written as JSON with --json). On CUDA it runs in bf16 autocast (the
trainer's "auto" precision) and reports peak memory.

    python tools/bench_cnn_baselines.py                # the real figures (a quiet machine; GPU if present)
    python tools/bench_cnn_baselines.py --quick        # < 60 s smoke run: tiny presets, 64x64, CPU-sized
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_args import at_least, output_file, write_json  # noqa: E402
from diffuma.bench import amp_dtype_for, measure_throughput  # noqa: E402
from diffuma.models.registry import build_model  # noqa: E402

CASES = [  # (label, model, preset, batch)
    ("SimVP gSTA", "simvp", "default", 16),
    ("SimVP IncepU (v1)", "simvp", "v1", 16),
    ("PastNet", "pastnet", "default", 16),
    ("SimVP gSTA", "simvp", "chdl", 4),
    ("PastNet", "pastnet", "chdl", 4),
]
QUICK = [("SimVP gSTA", "simvp", "tiny", 4), ("SimVP IncepU", "simvp", "tiny", 4), ("PastNet", "pastnet", "tiny", 4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny presets, few steps (< 60 s on 2 CPU cores)")
    ap.add_argument("--steps", type=at_least(1), default=None, help="timed steps per measurement (default 10, quick 2)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--json", type=output_file, default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    amp = amp_dtype_for("auto", device)
    steps = args.steps or (2 if args.quick else 10)
    cases = QUICK if args.quick else CASES
    rows = []
    for label, name, preset, batch in cases:
        extra = {"translator": "incepu"} if args.quick and "IncepU" in label else {}
        torch.manual_seed(0)
        model = build_model(name, preset, **extra)
        c = model.config
        x = torch.rand(batch, c.in_frames, c.channels, c.height, c.width)
        y = torch.rand(batch, c.out_frames, c.channels, c.height, c.width)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = measure_throughput(model, x, y, device=device, amp_dtype=amp, steps=steps, warmup=1 if args.quick else 3)
        row = {"model": label, "preset": preset, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
               "frames": f"{c.in_frames}->{c.out_frames} @ {c.height}x{c.width}", "batch": batch, **t}
        if device.type == "cuda":
            row["peak_mem_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(row)
        print(f"{label} [{preset}]: train {t['train_samples_per_s']:.3g}/s, infer {t['infer_samples_per_s']:.3g}/s",
              flush=True)
    where = f"{platform.node()} {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"\n{where}; {steps} timed steps after warm-up; precision {rows[0]['precision']}\n")
    print("| model | preset | params | frames | batch | train samples/s | inference samples/s |"
          + (" peak GiB |" if device.type == "cuda" else ""))
    print("|---|---|---:|---|---:|---:|---:|" + ("---:|" if device.type == "cuda" else ""))
    for r in rows:
        print(f"| {r['model']} | {r['preset']} | {r['params_M']:.2f}M | {r['frames']} | {r['batch']} | "
              f"{r['train_samples_per_s']:.3g} | {r['infer_samples_per_s']:.3g} |"
              + (f" {r['peak_mem_GiB']:.1f} |" if device.type == "cuda" else ""))
    if args.json:
        write_json(args.json, {"where": where, "steps": steps, "rows": rows})


if __name__ == "__main__":
    main()
