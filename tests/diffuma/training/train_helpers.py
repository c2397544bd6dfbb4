"""Test data for the trainer tests (a module of its own so test files can import it by a unique name)."""

import sys
from pathlib import Path

import numpy as np

from chdl.dataset import DatasetWriter


def write_moving_square_dataset(path, n=12, n_val=4, t=10, h=16, w=16, in_frames=5, out_frames=5, seed=0,
                                split=None, captured_later_ns=0):
    """A small curated dataset of a bright square moving one pixel per frame over a noisy background: easy
    enough that a few training steps visibly lower the loss. Sequence i is lane i of run "r0", captured at
    ``seed * 10**12 + (i * t + k) * 200 ms`` (plus ``captured_later_ns``: a replay of the same frames); ``split``:
    codes per sequence (default: the last ``n_val`` val)."""
    rng = np.random.default_rng(seed)
    frames = (rng.integers(0, 30, size=(n, t, 1, h, w))).astype(np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w // 2)
        for k in range(t):
            xs = (x0 + k) % (w - 4)
            frames[i, k, 0, y0:y0 + 4, xs:xs + 4] = 220
    split = np.array([0] * (n - n_val) + [1] * n_val if split is None else split, np.uint8)
    times = captured_later_ns + seed * 10**12 + np.arange(n * t, dtype=np.int64).reshape(n, t) * 200_000_000
    wr = DatasetWriter.create(path, n_sequences=n, frames_per_sequence=t, channels=1, height=h, width=w,
                              sequences_per_shard=4, in_frames=in_frames, out_frames=out_frames, runs=["r0"])
    for s in range(wr.n_shards):
        r = wr.shard_range(s)
        wr.write_shard(s, frames=frames[r.start:r.stop], split=split[r.start:r.stop], run_index=np.zeros(len(r), np.int32),
                       lane=np.arange(r.start, r.stop, dtype=np.int32), timestamp_ns=times[r.start:r.stop])
    wr.finalize()
    return path


def standin_cli(*args, threads: int) -> list[str]:
    """The command line of a real ``chdl`` process (``python -c``) with the stand-in model registered as
    "standin" and torch at ``threads`` intra-op threads (bit-identity with an in-process run needs the same
    count), running ``chdl *args``. Run it with ``STANDIN_STEP_SLEEP=<s>`` in its environment for steps that
    take at least that long."""
    here = Path(__file__).parent
    script = (f"import sys; sys.path.insert(0, {str(here)!r})\n"
              f"import torch; torch.set_num_threads({threads})\n"
              "from diffuma.models import registry\n"
              "registry.MODELS['standin'] = 'standin_model:StandIn'\n"
              "from chdl.cli import main\n"
              f"main({[str(a) for a in args]!r}, prog_name='chdl')\n")
    return [sys.executable, "-c", script]
