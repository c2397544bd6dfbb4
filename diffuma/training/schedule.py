"""Learning-rate schedules as pure functions of the optimiser step (nothing to save: resuming at step s
gives exactly the lr an uninterrupted run had at step s)."""

from __future__ import annotations

import math

ONECYCLE_DIV = 25.0  # onecycle starts at lr / 25 (torch OneCycleLR's div_factor) ...
ONECYCLE_FINAL_DIV = 1e4  # ... and ends at lr / 25 / 1e4 (final_div_factor)


def lr_at(step: int, total_steps: int, lr: float, schedule: str, warmup_steps: int = 0,
          min_lr_ratio: float = 0.0) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    cosine:   linear warm-up lr/warmup_steps, 2*lr/warmup_steps, ..., lr over steps 0..warmup_steps-1, then
              cosine from lr at step warmup_steps towards min_lr_ratio*lr, which it would reach at step
              total_steps (one past the last step, as in torch's CosineAnnealingLR(T_max=total_steps -
              warmup_steps) and timm/transformers' cosine-with-warm-up); every step after warm-up is
              ``_cos(lr, min, (step - warmup_steps) / (total_steps - warmup_steps))``.
    onecycle: exactly torch ``OneCycleLR(max_lr=lr, total_steps=total_steps, pct_start=warmup_steps /
              total_steps, anneal_strategy="cos", div_factor=25, final_div_factor=1e4, three_phase=False,
              cycle_momentum=False)``: step s gets the lr OneCycleLR gives after s ``scheduler.step()`` calls.
              With w = min(warmup_steps, total_steps): cosine lr/25 -> lr over steps 0..w-1 (the peak lr is
              used by step w-1), then cosine lr -> lr/25/1e4 over steps w-1..total_steps-1 (the last step
              uses lr/25/1e4). w = 1 starts at the peak (torch divides 0 by 0 there; this is its limit).
              w = 0 is OneCycleLR(pct_start=0.0): no warm-up, the peak sits at the virtual step -1, so step 0
              already uses _cos(lr, lr/25/1e4, 1/total_steps), just below lr.
    constant: linear warm-up as cosine's, then lr.
    Steps at or past total_steps get the final value.
    """
    total = max(total_steps, 1)
    if schedule == "onecycle":
        w = min(max(warmup_steps, 0), total)
        start, end = lr / ONECYCLE_DIV, lr / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
        peak = w - 1  # OneCycleLR's first phase ends at step pct_start*total - 1
        if step <= peak:
            return _cos(start, lr, step / peak) if peak > 0 else lr
        if total - w <= 0:  # no annealing phase (w == total): only reached past the last step
            return end
        return _cos(lr, end, min((step - peak) / (total - w), 1.0))
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
