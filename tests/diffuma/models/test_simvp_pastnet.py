"""SimVP (gSTA and IncepU translators) and PastNet: shapes, padding, training signal, determinism."""

from __future__ import annotations

import pytest
import torch

from diffuma.models.registry import build_model, list_presets, model_config



VARIANTS = [("simvp", {}), ("simvp", {"translator": "incepu"}), ("pastnet", {})]
IDS = ["simvp-gsta", "simvp-incepu", "pastnet"]


@pytest.mark.parametrize("name,extra", VARIANTS, ids=IDS)
@pytest.mark.parametrize("t_in,t_out,h,w", [(5, 5, 64, 64), (10, 10, 64, 64), (12, 12, 32, 64), (5, 1, 48, 40)])
def test_forward_shapes(name, extra, t_in, t_out, h, w):
    torch.manual_seed(0)
    model = build_model(name, "tiny", in_frames=t_in, out_frames=t_out, height=h, width=w, **extra).eval()
    x = torch.rand(2, t_in, 1, h, w)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, t_out, 1, h, w)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name,extra", VARIANTS, ids=IDS)
def test_non_square_600x800_and_non_divisible_sizes(name, extra):
    torch.manual_seed(0)
    model = build_model(name, "tiny", in_frames=5, out_frames=5, height=600, width=800, **extra).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 5, 1, 600, 800))
    assert y.shape == (1, 5, 1, 600, 800)
    # 37x50 divides neither SimVP's stride nor PastNet's patch: padded inside, cropped back.
    odd = build_model(name, "tiny", in_frames=3, out_frames=7, height=37, width=50, channels=2, **extra).eval()
    with torch.no_grad():
        assert odd(torch.rand(1, 3, 2, 37, 50)).shape == (1, 7, 2, 37, 50)


@pytest.mark.parametrize("name,extra", VARIANTS, ids=IDS)
def test_training_steps_lower_the_loss(name, extra):
    torch.manual_seed(0)
    model = build_model(name, "tiny", in_frames=4, out_frames=4, height=32, width=32, **extra)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = torch.rand(4, 4, 1, 32, 32)
    y = x.flip(1)  # a learnable mapping: play the input backwards
    losses = []
    for step in range(8):
        loss, logs = model.training_loss(x, y, step=step, total_steps=8)
        assert loss.ndim == 0 and "mse" in logs
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_pastnet_loss_is_mse_plus_vq_and_codebook_follows_ema():
    torch.manual_seed(0)
    model = build_model("pastnet", "tiny", in_frames=4, out_frames=4, height=32, width=32)
    x, y = torch.rand(2, 4, 1, 32, 32), torch.rand(2, 4, 1, 32, 32)
    before = model.quantizer.codebook.clone()
    loss, logs = model.training_loss(x, y)
    assert loss.item() == pytest.approx(logs["mse"] + logs["vq"], rel=1e-5)
    assert logs["vq"] > 0 and logs["perplexity"] >= 1.0
    assert not torch.equal(before, model.quantizer.codebook)  # EMA update in training mode
    model.eval()
    frozen = model.quantizer.codebook.clone()
    model(x)
    assert torch.equal(frozen, model.quantizer.codebook)  # inference never touches the memory bank
    # Without EMA the codebook is a parameter trained by the codebook term.
    learned = build_model("pastnet", "tiny", in_frames=4, out_frames=4, height=32, width=32, codebook_ema_decay=0.0)
    loss, _ = learned.training_loss(x, y)
    loss.backward()
    assert learned.quantizer.codebook.grad is not None and learned.quantizer.codebook.grad.abs().sum() > 0


@pytest.mark.parametrize("name,extra", VARIANTS, ids=IDS)
def test_deterministic_given_rng_state(name, extra):
    def run():
        torch.manual_seed(123)
        model = build_model(name, "tiny", in_frames=5, out_frames=5, height=32, width=48, **extra)
        x, y = torch.rand(2, 5, 1, 32, 48), torch.rand(2, 5, 1, 32, 48)
        loss, _ = model.training_loss(x, y)
        model.eval()
        with torch.no_grad():
            return loss.detach(), model(x)

    (l1, p1), (l2, p2) = run(), run()
    assert torch.equal(l1, l2) and torch.equal(p1, p2)


def test_presets_and_translator_option():
    for name in ("simvp", "pastnet"):
        assert {"default", "tiny", "chdl"} <= set(list_presets(name))
        chdl = model_config(name, "chdl")
        assert (chdl.height, chdl.width, chdl.in_frames, chdl.out_frames) == (600, 800, 5, 1)
    assert model_config("simvp").translator == "gsta"
    assert model_config("simvp", "v1").translator == "incepu"
    # Moving MNIST defaults reproduce the published sizes: SimVPv2-gSTA is 46.8M parameters (OpenSTL).
    n = sum(p.numel() for p in build_model("simvp").parameters())
    assert 46.0e6 < n < 47.5e6
    with pytest.raises(ValueError, match="translator"):
        model_config("simvp", "tiny", translator="lstm")


@pytest.mark.parametrize("name", ["simvp", "pastnet"])
def test_runs_on_the_meta_device(name):
    """`chdl model-info` counts FLOPs on the meta device: forward and training_loss must not touch data."""
    with torch.device("meta"):
        model = build_model(name, "tiny", in_frames=5, out_frames=1, height=40, width=56)
        x, y = torch.rand(1, 5, 1, 40, 56), torch.rand(1, 1, 1, 40, 56)
        assert model(x).shape == (1, 1, 1, 40, 56)
        loss, logs = model.training_loss(x, y)
        loss.backward()
    assert loss.is_meta and set(logs) >= {"mse"}
