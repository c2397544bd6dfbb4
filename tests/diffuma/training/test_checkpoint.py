"""diffuma.training.checkpoint: rebuilding a model from a checkpoint saved by an older chdl."""

import dataclasses

import torch

from diffuma.models.registry import build_model
from diffuma.training.checkpoint import build_model_from_checkpoint


def test_a_field_added_since_the_checkpoint_takes_its_dataclass_default_not_the_presets():
    """A tiny-mmnist checkpoint saved before `up_kernel` existed (its decoder: kernel 4; the preset now sets
    8) is rebuilt with the field's default, 4, so its weights fit and it predicts as it did."""
    old = build_model("diffuma", "tiny-mmnist", up_kernel=4, in_frames=3, out_frames=2, height=32, width=32)
    with torch.no_grad():
        old.decoder.head.weight.normal_()  # a trained-looking head, so the prediction depends on the decoder
    cfg = dataclasses.asdict(old.config)
    del cfg["up_kernel"]
    state = {"model_name": "diffuma", "model_config": cfg, "model": old.state_dict(), "ema": None,
             "config": {"model": {"name": "diffuma", "preset": "tiny-mmnist"}, "run": {}}}
    model, used = build_model_from_checkpoint(state, source="old.pt")
    assert used == "model" and model.config.up_kernel == 4
    x = torch.rand(1, 3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), old.eval()(x))
