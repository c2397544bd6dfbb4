"""Global motion estimation and the constant-motion baseline (diffuma/motion.py)."""
import pytest
import torch
import torch.nn.functional as F

from diffuma.motion import constant_motion, estimate_velocity, motion_confidence, phase_correlation, translate, warp


def texture(n=1, size=96, seed=0):
    """Smooth random texture (n, 1, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    t = F.avg_pool2d(torch.rand(n, 1, size, size, generator=g, dtype=torch.float64), 5, 1, 2)
    return ((t - t.mean()) / t.std() * 0.15 + 0.5).clamp(0, 1)


def translating_clip(v, frames=6, seed=0, crop=(24, 72, 16, 80)):
    """Frames k = texture translated by k * v, cropped away from the replicated borders: (1, T, 1, h, w)."""
    big = texture(seed=seed)
    k = torch.arange(frames, dtype=torch.float64)
    clip = translate(big, k[None, :, None] * torch.tensor(v, dtype=torch.float64)[None, None])
    y0, y1, x0, x1 = crop
    return clip[..., y0:y1, x0:x1]


@pytest.mark.parametrize("v", [(0.0, 0.0), (1.3, -2.7), (-0.4, 0.25), (3.0, 5.5)])
def test_phase_correlation_recovers_known_subpixel_shifts(v):
    clip = translating_clip(v)[0, :, 0]                                        # (T, h, w)
    d = phase_correlation(clip[:-1], clip[1:])                                 # (T-1, 2)
    assert (d - torch.tensor(v, dtype=d.dtype)).abs().max() < 0.1


def test_translate_sign_convention_and_border_replication():
    f = torch.zeros(1, 1, 5, 6)
    f[0, 0, 2, 3] = 1.0
    out = translate(f, torch.tensor([[[1.0, -2.0]]]))[0, 0, 0]               # down 1, left 2
    expected = torch.zeros(5, 6)
    expected[3, 1] = 1.0
    torch.testing.assert_close(out, expected)
    ramp = torch.arange(6.0).expand(1, 1, 5, 6)
    moved = translate(ramp, torch.tensor([[[0.0, 2.0]]]))[0, 0, 0]           # right 2: left border repeats
    torch.testing.assert_close(moved[0], torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 3.0]))


def test_warp_with_a_constant_field_is_translate_and_flow_gets_gradients():
    f = texture(size=20)[:, :, :16].float()
    shifts = torch.tensor([[[0.5, -1.25], [2.0, 0.0]]])
    field = shifts[..., None, None].expand(1, 2, 2, 16, 20).clone().requires_grad_(True)
    torch.testing.assert_close(warp(f, field), translate(f, shifts))
    warp(f, field).sum().backward()
    assert field.grad.abs().sum() > 0


def test_estimate_velocity_is_the_median_so_one_disturbed_frame_does_not_move_it():
    clip = translating_clip((0.8, 1.6), frames=5)
    clip[0, 2] = torch.roll(clip[0, 2], shifts=7, dims=-1)                  # one jolted frame
    v = estimate_velocity(clip)
    assert (v[0] - torch.tensor([0.8, 1.6], dtype=v.dtype)).abs().max() < 0.15
    assert torch.equal(estimate_velocity(clip[:, :1]), torch.zeros(1, 2, dtype=clip.dtype))


def test_constant_motion_predicts_translation_far_better_than_copy_last():
    clip = translating_clip((1.1, -1.7), frames=10)
    x, y = clip[:, :5], clip[:, 5:]
    pred = constant_motion(x, 5)
    inner = (..., slice(8, -8), slice(8, -8))                                 # away from replicated borders
    mse_cm = F.mse_loss(pred[inner], y[inner])
    mse_copy = F.mse_loss(x[:, -1:].expand_as(y)[inner], y[inner])
    assert pred.shape == y.shape and mse_cm < 0.05 * mse_copy


def test_inconsistent_pair_motions_are_not_extrapolated():
    """Frames that jitter back and forth (pair shifts +0.4, -0.2, +0.5, -0.3 px, median 0.1) carry no steady
    motion: the scatter of the pair estimates exceeds the median, so the velocity is shrunk to zero."""
    big = texture()
    pos = torch.tensor([0.0, 0.4, 0.2, 0.7, 0.4], dtype=torch.float64)
    shifts = torch.stack([pos, torch.zeros_like(pos)], dim=-1)[None]                 # (1, 5, 2) dy only
    clip = translate(big, shifts)[..., 24:72, 16:80]
    d = phase_correlation(clip[0, :-1, 0], clip[0, 1:, 0])
    assert abs(d[:, 0].median().item()) > 0.05                                   # the plain median would move
    assert estimate_velocity(clip).abs().max() < 1e-6


def test_motion_that_stops_at_the_last_step_is_not_extrapolated():
    """A stage that moved 1.5 px per frame and then stopped: three of four pairs say 1.5 px (median and
    scatter keep it), but moving the second-to-last frame by it explains the last step worse than standing
    still, so the backtest fades it out -- while the same clip without the stop keeps its full motion."""
    moving = translating_clip((0.0, 1.5), frames=5)
    stopped = moving.clone()
    stopped[:, -1] = stopped[:, -2]
    assert (estimate_velocity(moving)[0] - torch.tensor([0.0, 1.5], dtype=moving.dtype)).abs().max() < 0.1
    assert estimate_velocity(stopped).abs().max() < 1e-6


def test_motion_confidence_grades_how_much_of_the_step_the_motion_explains():
    f = texture(size=40)[:, :, 4:36, 4:36]                                   # (1, 1, 32, 32)
    nxt = translate(f, torch.tensor([[[0.0, 2.0]]]))[:, 0]
    pair = torch.cat([f, nxt], dim=1)                                          # (1, 2, 32, 32)
    true, none, part = (torch.tensor([[0.0, v]], dtype=f.dtype) for v in (2.0, 0.0, 0.5))
    assert motion_confidence(pair, true).item() == 1.0                        # explains the step
    assert motion_confidence(pair, none).item() == 0.0                        # moves nothing: no gain
    wrong = torch.tensor([[0.0, -2.0]], dtype=f.dtype)
    assert motion_confidence(pair, wrong).item() == 0.0                       # worse than standing still
    assert 0.5 < motion_confidence(pair, part).item() < 1.0                   # a quarter of the step: partial
