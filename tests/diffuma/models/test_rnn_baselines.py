"""ConvLSTM, PredRNN, PredRNN-v2, E3D-LSTM: shapes, padding, training signal, determinism, and
PredRNN-v2's decoupling loss and reverse scheduled sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffuma.models import rnn_common
from diffuma.models.registry import build_model, list_presets, model_class, model_config

NAMES = ["convlstm", "predrnn", "predrnn_v2", "e3dlstm"]
CLASSES = {"convlstm": "ConvLSTM", "predrnn": "PredRNN", "predrnn_v2": "PredRNNv2", "e3dlstm": "E3DLSTM"}


def moving_square(batch: int, frames: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(B, T, 1, h, w): a bright 6x6 square on a dim background moving 2 px/frame, random start and
    direction per clip - a predictable motion the models can start to learn in a few steps."""
    g = torch.Generator().manual_seed(seed)
    clips = torch.full((batch, frames, 1, h, w), 0.1)
    for b in range(batch):
        y0, x0 = (int(v) for v in torch.randint(0, min(h, w) - 6, (2,), generator=g))
        dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=g) * 2)
        for t in range(frames):
            y, x = (y0 + dy * t) % (h - 6), (x0 + dx * t) % (w - 6)
            clips[b, t, 0, y:y + 6, x:x + 6] = 0.9
    return clips


@pytest.mark.parametrize("name", NAMES)
def test_registry_classes_and_presets(name):
    assert model_class(name).__name__ == CLASSES[name]
    assert {"tiny", "default", "chdl"} <= set(list_presets(name))
    tiny = build_model(name, "tiny")
    assert sum(p.numel() for p in tiny.parameters()) < 1_000_000
    chdl = model_config(name, "chdl")
    assert (chdl.height, chdl.width, chdl.in_frames, chdl.out_frames) == (600, 800, 5, 1)
    with pytest.raises(TypeError):
        model_config(name, "tiny", no_such_field=1)


@pytest.mark.parametrize("name", NAMES)
def test_training_loss_runs_on_the_meta_device(name):
    """`chdl model-info --train` counts FLOPs of training_loss on the meta device: logs must not .item()."""
    with torch.device("meta"):
        model = build_model(name, "tiny", in_frames=3, out_frames=2)
        loss, logs = model.training_loss(torch.rand(2, 3, 1, 16, 16), torch.rand(2, 2, 1, 16, 16))
    assert loss.is_meta and math.isnan(logs["mse"])


def test_default_presets_are_the_papers_moving_mnist_models():
    conv = model_config("convlstm", "default")
    assert (conv.hidden, conv.filter_size, conv.patch, conv.loss) == ((128, 64, 64), 5, 4, "bce")
    for name in ("predrnn", "predrnn_v2"):
        cfg = model_config(name, "default")
        assert (cfg.num_layers, cfg.hidden, cfg.filter_size, cfg.patch) == (4, 128, 5, 4)
    v2 = model_config("predrnn_v2", "default")
    assert v2.decouple_beta == 0.1 and v2.reverse_sampling
    e3d = model_config("e3dlstm", "default")
    assert (e3d.num_layers, e3d.hidden, e3d.patch) == (4, 64, 4)
    assert (e3d.temporal_filter, e3d.filter_size, e3d.window, e3d.recall) == (2, 5, 2, 0)
    # PredRNN's published size (23.8M parameters) pins the ST-LSTM structure.
    n = sum(p.numel() for p in build_model("predrnn", "default").parameters())
    assert 23.5e6 < n < 24.0e6


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t_in,t_out,h,w", [(5, 5, 16, 24), (10, 10, 16, 16), (12, 12, 32, 64), (5, 1, 18, 30)])
def test_forward_shapes(name, t_in, t_out, h, w):
    torch.manual_seed(0)
    model = build_model(name, "tiny", in_frames=t_in, out_frames=t_out, height=h, width=w).eval()
    with torch.no_grad():
        y = model(torch.rand(2, t_in, 1, h, w))
    assert y.shape == (2, t_out, 1, h, w)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_non_square_600x800_and_multichannel(name):
    torch.manual_seed(0)
    # CHDL's 5 -> 1 (5 recurrent steps) keeps it fast on CPU; other lengths are tested above.
    model = build_model(name, "tiny", in_frames=5, out_frames=1, height=600, width=800).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 5, 1, 600, 800))
    assert y.shape == (1, 1, 1, 600, 800) and torch.isfinite(y).all()
    rgb = build_model(name, "tiny", in_frames=3, out_frames=4, channels=3).eval()
    with torch.no_grad():
        assert rgb(torch.rand(1, 3, 3, 13, 21)).shape == (1, 4, 3, 13, 21)


def test_patch_reshape_round_trip_and_padding():
    x = torch.rand(2, 3, 2, 13, 22)
    z = rnn_common.to_patches(x, 4)
    assert z.shape == (2, 3, 2 * 16, 4, 6)                      # 13x22 padded to 16x24
    assert torch.equal(rnn_common.from_patches(z, 4, 13, 22), x)
    # a cell of the grid holds exactly one 4x4 block of one channel
    assert torch.equal(z[0, 0, :16, 0, 0].reshape(4, 4), x[0, 0, 0, :4, :4])
    # the pad replicates the last row/column
    full = rnn_common.from_patches(z, 4, 16, 24)
    assert torch.equal(full[..., 13:, :22], x[..., 12:13, :].expand(-1, -1, -1, 3, -1))


@pytest.mark.parametrize("name", NAMES)
def test_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = build_model(name, "tiny", in_frames=4, out_frames=4, height=24, width=24)
    clips = moving_square(4, 8, 24, 24)
    x, y = clips[:, :4], clips[:, 4:]

    def loss_at_fixed_masks():
        torch.manual_seed(1)                                    # same sampling coins every time
        return float(model.training_loss(x, y, step=0, total_steps=100)[0].detach())

    before = loss_at_fixed_masks()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(12):
        loss, logs = model.training_loss(x, y, step=step, total_steps=100)
        assert math.isfinite(loss.item()) and "mse" in logs
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_at_fixed_masks()
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name):
    x, y = moving_square(2, 6, 16, 20).split(3, dim=1)

    def run():
        torch.manual_seed(7)
        model = build_model(name, "tiny", in_frames=3, out_frames=3)
        loss, logs = model.training_loss(x, y, step=3, total_steps=10)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        with torch.no_grad():
            torch.manual_seed(99)                               # inference must not use the RNG at all
            pred_a = model(x)
            torch.manual_seed(12345)
            pred_b = model(x)
        assert torch.equal(pred_a, pred_b)
        return logs, grads, pred_a

    (logs1, g1, p1), (logs2, g2, p2) = run(), run()
    assert logs1 == logs2
    assert torch.equal(g1, g2) and torch.equal(p1, p2)


def test_predrnn_v2_decoupling_loss_is_nonzero_and_trains_the_adapter():
    torch.manual_seed(0)
    model = build_model("predrnn_v2", "tiny", in_frames=3, out_frames=3)
    x, y = moving_square(2, 6, 16, 16).split(3, dim=1)
    loss, logs = model.training_loss(x, y, step=0, total_steps=10)
    assert 0.0 < logs["decouple"] <= 1.0                        # a mean |cosine|
    assert loss.item() == pytest.approx(logs["mse_next"] + 0.1 * logs["decouple"], rel=1e-5)
    loss.backward()
    assert model.decouple.weight.grad is not None and model.decouple.weight.grad.abs().sum() > 0
    # beta = 0 removes it from the objective but it is still reported
    torch.manual_seed(0)
    plain = build_model("predrnn_v2", "tiny", in_frames=3, out_frames=3, decouple_beta=0.0)
    loss0, logs0 = plain.training_loss(x, y, step=0, total_steps=10)
    assert loss0.item() == pytest.approx(logs0["mse_next"]) and logs0["decouple"] > 0


def test_reverse_scheduled_sampling_schedule():
    etas = rnn_common.reverse_sampling_etas
    assert etas(0, 80_000) == (0.5, 0.5)
    assert etas(24_999, 80_000) == (0.5, 0.5)
    r_mid, e_mid = etas(30_000, 80_000)                         # the released script's exact numbers
    assert r_mid == pytest.approx(1 - 0.5 * math.exp(-5_000 / 2_500))
    assert e_mid == pytest.approx(0.5 - 0.5 * 5_000 / 25_000)
    assert etas(50_000, 80_000) == (1.0, 0.0) and etas(80_000, 80_000) == (1.0, 0.0)
    seq = [etas(s, 1000) for s in range(0, 1001, 10)]
    assert all(a[0] <= b[0] and a[1] >= b[1] for a, b in zip(seq, seq[1:]))   # r_eta rises, eta falls
    # ordinary scheduled sampling: 1 -> 0 linearly by 62.5%
    assert rnn_common.scheduled_sampling_eta(0, 80_000) == 1.0
    assert rnn_common.scheduled_sampling_eta(25_000, 80_000) == pytest.approx(0.5)
    assert rnn_common.scheduled_sampling_eta(60_000, 80_000) == 0.0


def test_truth_mask_follows_the_probabilities():
    torch.manual_seed(0)
    m = rnn_common.truth_mask(4000, 5, 4, 0.5, 0.2)
    assert m.shape == (4000, 8) and m.dtype == torch.bool
    assert m[:, 0].all()                                        # step 0 always reads frame 1
    assert abs(m[:, 1:5].float().mean().item() - 0.5) < 0.03
    assert abs(m[:, 5:].float().mean().item() - 0.2) < 0.03
    assert not rnn_common.truth_mask(8, 5, 4, 1.0, 0.0)[:, 5:].any()
    assert rnn_common.truth_mask(8, 5, 4, 1.0, 0.0)[:, :5].all()


@pytest.mark.parametrize("name", ["predrnn", "predrnn_v2", "e3dlstm"])
def test_sampling_schedule_drives_the_training_rollout(name):
    """End of training: the training pass IS inference. PredRNN/E3D at the start: full teacher forcing
    of the forecast; PredRNN-v2 at the start: its encoder sometimes reads its own predictions."""
    torch.manual_seed(0)
    model = build_model(name, "tiny", in_frames=4, out_frames=3)
    x, y = moving_square(3, 7, 16, 16).split([4, 3], dim=1)
    with torch.no_grad():
        inference_mse = float(F.mse_loss(model(x), y))
        _, end = model.training_loss(x, y, step=100, total_steps=100)
        assert end["mse"] == pytest.approx(inference_mse, rel=1e-5)
        assert end["eta"] == 0.0 and end.get("r_eta", 1.0) == 1.0
        torch.manual_seed(1)
        _, start = model.training_loss(x, y, step=0, total_steps=100)
        if name == "predrnn_v2":
            assert (start["r_eta"], start["eta"]) == (0.5, 0.5)
            # the same coins, drawn by hand: some encoder steps must read a prediction
            torch.manual_seed(1)
            mask = rnn_common.truth_mask(3, 4, 3, 0.5, 0.5)
            assert not mask[:, 1:4].all()
        else:
            assert start["eta"] == 1.0
        assert start["mse"] != pytest.approx(inference_mse, rel=1e-5)


def test_convlstm_forecaster_has_no_input_and_losses():
    model = build_model("convlstm", "tiny", in_frames=3, out_frames=2)
    assert model.forecaster[0].gates.in_channels == model.config.hidden[0]   # reads only its own H
    x, y = moving_square(2, 5, 16, 16).split([3, 2], dim=1)
    with torch.no_grad():
        pred = model(x)
        assert ((pred > 0) & (pred < 1)).all()                   # sigmoid read-out
        loss, logs = model.training_loss(x, y)
        assert float(loss) == pytest.approx(float(F.binary_cross_entropy(pred, y)), rel=1e-4)
        assert logs["mse"] == pytest.approx(float(F.mse_loss(pred, y)), rel=1e-4)
        mse_model = build_model("convlstm", "tiny", in_frames=3, out_frames=2, loss="mse")
        mloss, mlogs = mse_model.training_loss(x, y)
        assert float(mloss) == mlogs["mse"]


def test_e3d_recall_window_bounds_the_attended_history():
    torch.manual_seed(0)
    r = torch.rand(1, 4, 2, 3, 3)
    hist = [torch.randn(1, 4, 2, 3, 3) for _ in range(3)]
    from diffuma.models.e3dlstm import E3DLSTMCell
    out = E3DLSTMCell.recall(r, hist)
    q = r.flatten(2)[0].T                                        # (18, 4)
    kv = torch.cat([h.flatten(2) for h in hist], dim=2)[0].T     # (54, 4)
    expected = (torch.softmax(q @ kv.T, dim=1) @ kv).T.reshape(r.shape)   # the paper's unscaled recall
    assert torch.allclose(out, expected, atol=1e-5)
    # tau = 1 vs all: different predictions once the sequence is longer than one step
    x = moving_square(1, 4, 16, 16)
    torch.manual_seed(3)
    a = build_model("e3dlstm", "tiny", in_frames=4, out_frames=2, recall=1).eval()
    torch.manual_seed(3)
    b = build_model("e3dlstm", "tiny", in_frames=4, out_frames=2, recall=0).eval()
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
