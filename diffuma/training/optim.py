"""The optimiser's parameter groups: one weight-decay policy, owned by the model, used by the trainer.

No decay on
  * every parameter the model names in ``model.no_weight_decay()`` (full names as in
    ``model.named_parameters()``; DIFFUMA: the SSM's A_log and D, the dt bias, the positional embedding,
    norms), when the model defines that method;
  * every parameter with fewer than 2 dimensions (biases, norm weights and biases), for every model.
Everything else (conv / linear / embedding weights) is decayed with ``run.weight_decay``.

The groups carry their parameters' names under torch's own ``param_names`` key (what an optimiser built
from ``named_parameters()`` stores), so ``optimizer.param_groups`` and the checkpointed
``optimizer.state_dict()`` say which parameter is decayed; ``load_state_dict`` ignores the names.
"""

from __future__ import annotations

import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """``[decayed group, no-decay group]`` for a torch optimiser, each ``{"params": [...], "param_names":
    [...], "weight_decay": ...}``.

    Both groups are always present (possibly empty), in this order, so a checkpoint's optimiser state
    lines up with a rebuilt optimiser. Frozen parameters (``requires_grad=False``) are left out.
    Raises ValueError when ``no_weight_decay()`` names something that is not a parameter of the model.
    """
    named = dict(model.named_parameters())
    fn = getattr(model, "no_weight_decay", None)
    skip = set(fn()) if callable(fn) else set()
    unknown = sorted(skip - set(named))
    if unknown:
        raise ValueError(f"{type(model).__name__}.no_weight_decay() names {len(unknown)} parameter(s) the model "
                         f"does not have: {', '.join(unknown[:5])}")
    decay, no_decay = [], []
    for name, p in named.items():
        if not p.requires_grad:
            continue
        (no_decay if name in skip or p.ndim < 2 else decay).append((name, p))
    # Explicit param_names (rather than (name, p) pairs) so that an empty group still has the key torch
    # requires every group to have once one has it.
    return [{"params": [p for _, p in g], "param_names": [n for n, _ in g], "weight_decay": wd}
            for g, wd in ((decay, weight_decay), (no_decay, 0.0))]
