"""Learning-rate schedules (diffuma/training/schedule.py) against torch's own schedulers, step by step."""

import math

import pytest
import torch

from diffuma.training.schedule import lr_at

LR = 1e-3


def _torch_lrs(scheduler_factory, total: int) -> list[float]:
    """The lr each of ``total`` optimiser steps uses under a torch scheduler (read before the step, then
    ``scheduler.step()`` after it — the usual loop; no step() after the last optimiser step)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=LR)
    sched = scheduler_factory(opt)
    out = []
    for s in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if s < total - 1:
            sched.step()
    return out


def _onecycle(total: int, pct_start: float):
    return lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, total_steps=total, pct_start=pct_start, anneal_strategy="cos", div_factor=25,
        final_div_factor=1e4, three_phase=False, cycle_momentum=False)


@pytest.mark.parametrize("total, warmup", [(100, 30), (100, 5), (10, 3), (9, 2), (7, 0), (1, 0), (50, 0),
                                           (6, 6), (40, 39), (1000, 500)])
def test_onecycle_matches_torch_onecyclelr_step_by_step(total, warmup):
    ref = _torch_lrs(_onecycle(total, warmup / total), total)
    ours = [lr_at(s, total, LR, "onecycle", warmup) for s in range(total)]
    assert ours == pytest.approx(ref, rel=1e-9, abs=0)
    if warmup < total:  # the last step uses the final lr (4e-9) ...
        assert ours[-1] == pytest.approx(LR / 25 / 1e4, rel=1e-9)
    if warmup >= 2:  # ... the first lr/25, and step warmup-1 the peak
        assert ours[0] == pytest.approx(LR / 25) and ours[warmup - 1] == pytest.approx(LR)
    assert lr_at(total + 3, total, LR, "onecycle", warmup) == pytest.approx(LR / 25 / 1e4)  # past the end


def test_onecycle_warmup_0_and_1():
    total = 20
    # warmup 0 = OneCycleLR(pct_start=0.0): the peak is "step -1", so step 0 is already annealing.
    assert lr_at(0, total, LR, "onecycle", 0) == pytest.approx(LR / 25 / 1e4 + (LR - LR / 25 / 1e4) * 0.5
                                                               * (1 + math.cos(math.pi / total)))
    assert lr_at(0, total, LR, "onecycle", 0) < LR
    # warmup 1: torch divides 0 by 0 at pct_start = 1/total; ours is its limit from below: the peak at step 0,
    # then the same annealing as torch with pct_start a hair under 1/total.
    with pytest.raises(ZeroDivisionError):
        _torch_lrs(_onecycle(total, 1 / total), total)
    ref = _torch_lrs(_onecycle(total, (1 - 1e-12) / total), total)
    ours = [lr_at(s, total, LR, "onecycle", 1) for s in range(total)]
    assert ours[0] == LR
    assert ours == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("total, warmup, min_ratio", [(20, 5, 0.0), (20, 0, 0.1), (7, 3, 0.05)])
def test_cosine_warmup_then_torch_cosine_annealing(total, warmup, min_ratio):
    ours = [lr_at(s, total, LR, "cosine", warmup, min_ratio) for s in range(total)]
    # Warm-up: linear, lr/warmup at step 0 (never a wasted lr-0 step), the full lr first at step `warmup`.
    assert ours[:warmup] == pytest.approx([LR * (s + 1) / warmup for s in range(warmup)])
    # Then torch's CosineAnnealingLR(T_max = total - warmup, eta_min = min_ratio * lr), started at step warmup.
    ref = _torch_lrs(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=total - warmup, eta_min=min_ratio * LR), total - warmup)
    assert ours[warmup:] == pytest.approx(ref, rel=1e-9)
    assert ours[warmup] == LR
    # End value: the last step is one cosine step above the floor, which is reached at step `total` and kept.
    floor = min_ratio * LR
    assert ours[-1] == pytest.approx(floor + (LR - floor) * 0.5 * (1 + math.cos(math.pi * (total - warmup - 1)
                                                                             / (total - warmup))))
    assert floor < ours[-1] < ours[-2]
    assert lr_at(total, total, LR, "cosine", warmup, min_ratio) == pytest.approx(floor, abs=1e-15)
    assert lr_at(total + 5, total, LR, "cosine", warmup, min_ratio) == pytest.approx(floor, abs=1e-15)


def test_constant_and_unknown():
    assert [lr_at(s, 10, LR, "constant", 4) for s in range(6)] == pytest.approx(
        [LR / 4, LR / 2, 3 * LR / 4, LR, LR, LR])
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, 10, LR, "linear")
