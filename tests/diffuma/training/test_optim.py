"""The weight-decay policy (diffuma/training/optim.py) as the trainer applies it."""

import pytest
import torch
import torch.nn as nn

from diffuma.training.checkpoint import load_checkpoint
from diffuma.training.optim import param_groups
from diffuma.training.trainer import build_trainer

NO_DECAY_SUFFIXES = ("A_log", ".D", "dt_proj.bias", "pos_embed")


def _diffuma_trainer(data, out, **run):
    cfg = {"model": {"name": "diffuma", "preset": "tiny"},
           "run": {"epochs": 1, "batch_size": 2, "num_workers": 0, "lr": 1e-2, "weight_decay": 0.5,
                   "val_every_epochs": 0, **run}}
    return build_trainer(cfg, data, out, progress=False)


def _decay_of(optimizer, model) -> dict[str, float]:
    """{parameter name: weight_decay of the optimiser group holding it}, found by tensor identity."""
    where = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            assert id(p) not in where, "a parameter in two groups"
            where[id(p)] = g["weight_decay"]
    named = dict(model.named_parameters())
    assert set(where) == {id(p) for p in named.values()}, "every trainable parameter in exactly one group"
    return {n: where[id(p)] for n, p in named.items()}


def test_trainer_does_not_decay_ssm_parameters_pos_embed_norms_and_biases(tiny_dataset, tmp_path):
    t = _diffuma_trainer(tiny_dataset, tmp_path / "run")
    wd = _decay_of(t.optimizer, t.model)
    named = dict(t.model.named_parameters())
    special = [n for n in named if n.endswith(NO_DECAY_SUFFIXES)]
    assert any(n.endswith("A_log") for n in special) and any(n.endswith("pos_embed") for n in special)
    assert any(n.endswith(".D") for n in special) and any(n.endswith("dt_proj.bias") for n in special)
    for n in special:
        assert wd[n] == 0.0, n
    for n in t.model.no_weight_decay():
        assert wd[n] == 0.0, n
    for n, p in named.items():
        if p.ndim < 2:  # biases, norm weights
            assert wd[n] == 0.0, n
    # Conv and linear weights are decayed.
    kinds = {"conv": nn.Conv2d, "linear": nn.Linear}
    for kind, cls in kinds.items():
        weights = [f"{m_name}.weight" for m_name, m in t.model.named_modules() if type(m) is cls]
        assert weights, kind
        for n in weights:
            if n not in t.model.no_weight_decay():
                assert wd[n] == 0.5, n
    # The groups name their parameters (torch's param_names key), in the same order as the tensors.
    for g in t.optimizer.param_groups:
        assert all(named[n] is p for n, p in zip(g["param_names"], g["params"], strict=True))

    # What the policy means for AdamW: with zero gradients a step only applies the decoupled decay, so the
    # decayed weights shrink by (1 - lr * wd) and A_log / D / dt bias / pos_embed / norms stay put.
    before = {n: p.detach().clone() for n, p in named.items()}
    for g in t.optimizer.param_groups:
        g["lr"] = 1e-2
    for p in named.values():
        p.grad = torch.zeros_like(p)
    t.optimizer.step()
    for n, p in named.items():
        factor = 1 - 1e-2 * 0.5 if wd[n] else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, msg=n)
    a_log = next(n for n in special if n.endswith("A_log"))
    assert torch.equal(named[a_log].detach(), before[a_log])


def test_checkpointed_optimizer_keeps_the_groups_and_resumes(tiny_dataset, tmp_path):
    t = _diffuma_trainer(tiny_dataset, tmp_path / "run", max_steps=1)
    t.fit()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")  # weights_only
    saved = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in saved] == [0.5, 0.0]
    assert [g["param_names"] for g in saved] == [g["param_names"] for g in t.optimizer.param_groups]
    assert any(n.endswith("A_log") for n in saved[1]["param_names"])
    fresh = _diffuma_trainer(tiny_dataset, tmp_path / "other", max_steps=1)
    fresh.optimizer.load_state_dict(state["optimizer"])
    named_fresh, named_t = dict(fresh.model.named_parameters()), dict(t.model.named_parameters())
    for n in ("pos_embed", next(n for n in named_t if n.endswith("A_log"))):
        assert torch.equal(fresh.optimizer.state[named_fresh[n]]["exp_avg"], t.optimizer.state[named_t[n]]["exp_avg"])


def test_param_groups_policy_without_and_with_no_weight_decay():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.norm = nn.LayerNorm(4)
            self.table = nn.Parameter(torch.zeros(2, 4))
            self.frozen = nn.Parameter(torch.zeros(4, 4), requires_grad=False)

    class Named(Plain):
        def no_weight_decay(self):
            return {"table"}

    class Wrong(Plain):
        def no_weight_decay(self):
            return {"tabel"}

    def names(groups):
        return [(g["weight_decay"], g["param_names"]) for g in groups]

    assert names(param_groups(Plain(), 0.1)) == [(0.1, ["table", "lin.weight"]),
                                                 (0.0, ["lin.bias", "norm.weight", "norm.bias"])]
    assert names(param_groups(Named(), 0.1)) == [(0.1, ["lin.weight"]),
                                                 (0.0, ["table", "lin.bias", "norm.weight", "norm.bias"])]
    with pytest.raises(ValueError, match="tabel"):
        param_groups(Wrong(), 0.1)
    # An empty group is kept (fixed group order for checkpoints) and torch accepts it.
    torch.optim.AdamW(param_groups(nn.LayerNorm(3), 0.1))
