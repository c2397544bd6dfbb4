#!/usr/bin/env python
"""Does data loading keep up with training? Sequences/s the SequenceDataset + DataLoader deliver at full
600x800 resolution with N workers, against the training step rate of a model.

    python tools/bench_loader.py                  # the real figure: 32 synthetic 600x800 sequences, 2 workers,
                                                  # 1 warm-up + 3 timed passes; on a CUDA machine also the DIFFUMA
                                                  # chdl-full bf16 training rate at batch 4 on the GPU
    python tools/bench_loader.py --model-rate 6.5 # compare against a step rate measured elsewhere (sequences/s,
                                                  # e.g. tools/bench_train_gpu.py on an H100)
    python tools/bench_loader.py --quick          # < 60 s: 16 sequences, 1 timed pass
    python tools/bench_loader.py --data my.zarr   # an existing curated dataset instead of the synthetic one

The synthetic dataset is written with chdl.dataset.DatasetWriter (blosc zstd, one chunk per sequence, as
curation writes it) and textured like a dicing lane (smooth background, a dark lane band that advances, sensor
noise) so its compression ratio — and so the decode cost — is realistic. A full-resolution training step on a
CPU takes minutes, so without CUDA the model rate is measured only with --model-on-cpu. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_args import at_least, existing_dir, machine, more_than  # noqa: E402

from chdl.dataset import DatasetWriter, open_dataset
from chdl.torch_dataset import SequenceDataset


def synth_dataset(path: Path, n: int, t: int = 10, h: int = 600, w: int = 800, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wr = DatasetWriter.create(path, n_sequences=n, frames_per_sequence=t, channels=1, height=h, width=w,
                              sequences_per_shard=8, runs=["synthetic"], provenance={"command": "bench_loader"})
    for s in range(wr.n_shards):
        seqs = []
        for _ in wr.shard_range(s):
            base = 140 + 30 * np.sin(xx / 97.0 + rng.random() * 6) * np.cos(yy / 131.0)
            lane_y = rng.integers(h // 3, 2 * h // 3)
            frames = []
            for k in range(t):
                img = base.copy()
                cut = np.abs(yy - lane_y) < 40
                img[cut & (xx < (k + 1) * w / t)] = 40  # the cut advances along the lane
                img += rng.normal(0, 4, img.shape)
                frames.append(np.clip(img, 0, 255).astype(np.uint8))
            seqs.append(np.stack(frames)[:, None])
        seqs = np.stack(seqs)
        split = np.zeros(len(seqs), np.uint8)
        wr.write_shard(s, frames=seqs, split=split)
    wr.finalize()
    return path


def loader_rate(data: Path, workers: int, batch_size: int, passes: int, integer: bool = True) -> dict:
    """Steady-state delivery: one untimed warm-up pass (worker start-up, page cache), then ``passes`` timed.

    integer=True is what the trainer uses (stored uint8 from the workers, scaled on the device);
    integer=False yields float32 from the workers (4x the bytes between processes)."""
    ds = SequenceDataset(data, "train", integer=integer)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, drop_last=False)
    for _ in loader:
        pass
    t0, n = time.perf_counter(), 0
    for _ in range(passes):
        for x, _ in loader:
            n += x.shape[0]
    dt = time.perf_counter() - t0
    return {"sequences": n, "seconds": dt, "sequences_per_s": n / dt,
            "sequence_shape": [ds.in_frames + ds.out_frames, *ds.frame_shape]}


def model_rate(data: Path, name: str, preset: str, batch_size: int, steps: int) -> dict:
    from diffuma.models.registry import build_model

    reader = open_dataset(data)
    _, _, c, h, w = reader.frames.shape
    t_in, t_out = int(reader.attrs["in_frames"]), int(reader.attrs["out_frames"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(name, preset, in_frames=t_in, out_frames=t_out, channels=c, height=h, width=w).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch_size, t_in, c, h, w, device=device)
    y = torch.rand(batch_size, t_out, c, h, w, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with amp:
            loss, _ = model.training_loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"model": f"{name}/{preset}", "device": str(device), "batch_size": batch_size, "steps": steps,
            "sequences_per_s": steps * batch_size / dt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=existing_dir, help="an existing curated dataset (default: synthesize one)")
    ap.add_argument("--sequences", type=at_least(1), default=None, help="synthetic sequences (600x800, 10 frames; "
                                                                        "default 32, --quick 16)")
    ap.add_argument("--workers", type=at_least(0), default=2, help="DataLoader worker processes (default 2)")
    ap.add_argument("--batch-size", type=at_least(1), default=4, help="sequences per batch (default 4)")
    ap.add_argument("--passes", type=at_least(1), default=None, help="timed passes (default 3, --quick 1)")
    ap.add_argument("--model", default="diffuma", help="model whose training step rate the loader is compared with")
    ap.add_argument("--preset", default="chdl-full", help="its preset (default chdl-full, 600x800)")
    ap.add_argument("--model-steps", type=at_least(1), default=5, help="timed training steps (default 5)")
    ap.add_argument("--model-rate", type=more_than(0), help="compare against this training rate (sequences/s) instead")
    ap.add_argument("--model-on-cpu", action="store_true", help="measure the model step rate even without CUDA")
    ap.add_argument("--quick", action="store_true", help="16 sequences, 1 timed pass (unless given)")
    args = ap.parse_args()
    args.sequences = args.sequences if args.sequences is not None else 16 if args.quick else 32
    args.passes = args.passes if args.passes is not None else 1 if args.quick else 3
    if args.data is not None:
        from chdl.dataset import DatasetFormatError

        try:
            open_dataset(args.data)
        except DatasetFormatError as e:
            raise SystemExit(f"error: {e}") from None
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        data = args.data
        if data is None:
            t0 = time.perf_counter()
            data = synth_dataset(Path(tmp) / "synthetic.zarr", args.sequences)
            print(f"[bench_loader] wrote {args.sequences} synthetic 600x800 sequences in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        result = {"machine": machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                  "workers": args.workers,
                  "batch_size": args.batch_size,
                  "loader": loader_rate(data, args.workers, args.batch_size, args.passes, integer=True),
                  "loader_float32_items": loader_rate(data, args.workers, args.batch_size, args.passes,
                                                      integer=False)}
        model = None
        if args.model_rate is not None:
            model = {"sequences_per_s": args.model_rate, "source": "--model-rate"}
        elif torch.cuda.is_available() or args.model_on_cpu:
            model = model_rate(data, args.model, args.preset, args.batch_size, args.model_steps)
        if model is None:
            result["model_step"] = "not measured (no CUDA; pass --model-rate N or --model-on-cpu)"
        else:
            result["model_step"] = model
            ratio = result["loader"]["sequences_per_s"] / model["sequences_per_s"]
            result["loader_over_model"] = ratio
            result["verdict"] = ("loader keeps up" if ratio >= 1 else "loader is the bottleneck") + \
                f" ({ratio:.2f}x the model's consumption)"
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
