#!/usr/bin/env python
"""What shard checksums cost: the dataset writer with and without recording them, `chdl verify`'s read rate,
and the presence check every open does, on full-resolution 600x800 frames.

    python tools/bench_checksums.py            # 64 sequences of 10 frames (640 frames, 4 shards of 16), 3 repeats
    python tools/bench_checksums.py --quick    # 16 sequences, 1 repeat

The frames are textured like a dicing lane (smooth background, a dark advancing cut, sensor noise) so that blosc
compresses them as it does real frames: the bytes hashed per frame are realistic. "Without" is the writer with
the ``shard_checksums`` array removed, which is how writers before checksums behaved. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import blake3
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_args import existing_dir  # noqa: E402

from chdl.dataset import (CHECKSUMS, DatasetWriter, _array_files, _shard_arrays, file_checksum,  # noqa: E402
                          open_dataset, shard_files)

T, H, W, S = 10, 600, 800, 16


def lane_frames(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, T, 1, H, W) uint8 sequences of a dicing-lane-like texture."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    out = np.empty((n, T, 1, H, W), np.uint8)
    for i in range(n):
        base = 140 + 30 * np.sin(xx / 97.0 + rng.random() * 6) * np.cos(yy / 131.0)
        cut = np.abs(yy - rng.integers(H // 3, 2 * H // 3)) < 40
        for k in range(T):
            img = base.copy()
            img[cut & (xx < (k + 1) * W / T)] = 40
            img += rng.normal(0, 4, img.shape)
            out[i, k, 0] = np.clip(img, 0, 255)
    return out


def write(path: Path, frames: np.ndarray, n: int, checksums: bool) -> float:
    """Seconds spent in write_shard for all shards (the shard's frames reused)."""
    w = DatasetWriter.create(path, n_sequences=n, frames_per_sequence=T, channels=1, height=H, width=W,
                             sequences_per_shard=S, runs=["bench"], overwrite=True)
    if not checksums:
        del w.group[CHECKSUMS]
    spent = 0.0
    for s in range(w.n_shards):
        k = len(w.shard_range(s))
        t0 = time.perf_counter()
        w.write_shard(s, frames=frames[:k])
        spent += time.perf_counter() - t0
    w.finalize()
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 sequences, 1 repeat")
    ap.add_argument("--dir", type=existing_dir, default=None, help="where to write (default: a temporary folder)")
    a = ap.parse_args()
    n, repeats = (16, 1) if a.quick else (64, 3)
    frames = lane_frames(np.random.default_rng(0), S)
    root = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        path = root / "d.zarr"
        times = {"with": [], "without": []}
        for _ in range(repeats):
            for kind in ("without", "with"):
                times[kind].append(write(path, frames, n, kind == "with"))
        reader = open_dataset(path)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        # what write_shard adds (chdl.dataset.DatasetWriter._write_shard): name the shard's files (its arrays are
        # open), hash the frames shard from the bytes it just encoded (in memory: read here before the clock), and
        # read back and hash the small files zarr wrote. (Until 2026-12-02 this timed re-reading the frames shard
        # too, which the writer stopped doing on 2026-11-30: an upper bound.)
        record_s = []
        arrays = _shard_arrays(reader.group)
        frames_keys = {s: _array_files(reader.group["frames"], s * S)[0] for s in range(reader.attrs["n_shards"])}
        in_memory = {key: (path / key).read_bytes() for key in frames_keys.values()}
        for _ in range(repeats):
            t0 = time.perf_counter()
            for s in range(reader.attrs["n_shards"]):
                for key in shard_files(reader.group, s, arrays=arrays):
                    if key in in_memory:
                        blake3.blake3(in_memory[key]).hexdigest()
                    else:
                        file_checksum(path, key)
            record_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = reader.verify()
        verify_s = time.perf_counter() - t0
        assert not result.problems
        t0 = time.perf_counter()
        for _ in range(10):
            open_dataset(path)
        open_checked = (time.perf_counter() - t0) / 10
        t0 = time.perf_counter()
        for _ in range(10):
            open_dataset(path, check_files=False)
        open_plain = (time.perf_counter() - t0) / 10
    finally:
        shutil.rmtree(root)
    frames_total = n * T
    best = {k: min(v) for k, v in times.items()}
    print(json.dumps({
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "frames": frames_total, "shards": n // S, "dataset_mib": round(size / 2**20, 1),
        "write_ms_per_frame": {k: round(1e3 * v / frames_total, 3) for k, v in best.items()},
        "checksum_ms_per_frame": round(1e3 * min(record_s) / frames_total, 3),
        "checksum_share_of_write": round(min(record_s) / best["with"], 3),
        "verify_mib_per_s": round(result.bytes / 2**20 / verify_s, 1),
        "verify_ms_per_frame": round(1e3 * verify_s / frames_total, 3),
        "open_ms": {"with_presence_check": round(1e3 * open_checked, 2), "without": round(1e3 * open_plain, 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
