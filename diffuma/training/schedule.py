"""Learning-rate schedules as pure functions of the optimiser step (nothing to save: resuming at step s
gives exactly the lr an uninterrupted run had at step s)."""

from __future__ import annotations

import math

ONECYCLE_DIV = 25.0  # onecycle starts at lr / 25 (torch OneCycleLR's div_factor) ...
ONECYCLE_FINAL_DIV = 1e4  # ... and ends at lr / 25 / 1e4 (final_div_factor)


def lr_at(step: int, total_steps: int, lr: float, schedule: str, warmup_steps: int = 0,
          min_lr_ratio: float = 0.0) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    cosine:   linear warm-up 0 -> lr over warmup_steps, then cosine lr -> min_lr_ratio*lr at total_steps.
    onecycle: torch OneCycleLR's cosine-annealed shape (momentum is not cycled): cosine lr/25 -> lr over
              warmup_steps (at least 1), then cosine lr -> lr/25/1e4 at total_steps.
    constant: linear warm-up, then lr.
    """
    total = max(total_steps, 1)
    if schedule == "onecycle":
        up = max(warmup_steps, 1)
        start, end = lr / ONECYCLE_DIV, lr / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
        if step < up:
            return _cos(start, lr, step / up)
        return _cos(lr, end, min((step - up) / max(total - up, 1), 1.0))
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        frac = min((step - warmup_steps) / max(total - warmup_steps, 1), 1.0)
        return _cos(lr, lr * min_lr_ratio, frac)
    raise ValueError(f"unknown schedule {schedule!r}")


def _cos(a: float, b: float, frac: float) -> float:
    """Cosine interpolation from a (frac=0) to b (frac=1)."""
    return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * frac))
