"""The baseline rows of every evaluation (diffuma.evaluation.BASELINES): copy-last-frame and constant-motion."""

import pytest
import torch
import torch.nn.functional as F

from chdl.torch_dataset import SequenceDataset
from diffuma.evaluation import BASELINES, COPY_LAST_FRAME, evaluate, result_key
from diffuma.metrics import compute_metrics
from diffuma.motion import CONSTANT_MOTION, constant_motion


class FirstInputs(torch.nn.Module):
    """Any model will do: the baselines' rows do not depend on it."""

    def __init__(self, out_frames):
        super().__init__()
        self.out_frames = out_frames

    def forward(self, x):
        return x[:, :self.out_frames]


def test_every_evaluation_has_both_baseline_rows_in_table_order():
    assert list(BASELINES) == [COPY_LAST_FRAME, CONSTANT_MOTION]
    assert [result_key(n) for n in BASELINES] == ["copy_last_frame", "constant_motion"]


def test_constant_motion_row_is_the_metrics_of_constant_motion_on_the_same_sequences(tiny_dataset):
    ds = SequenceDataset(tiny_dataset, "val")
    res = evaluate(FirstInputs(5), ds, batch_size=3)  # 4 sequences in batches of 3 and 1
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    ys = torch.stack([ds[i][1] for i in range(len(ds))])
    direct = compute_metrics(constant_motion(xs, 5), ys)
    assert res["constant_motion"]["n_sequences"] == 4
    assert res["constant_motion"]["overall"] == pytest.approx(direct["overall"], rel=1e-6)
    assert res["constant_motion"]["per_frame"] == [pytest.approx(f, rel=1e-6) for f in direct["per_frame"]]
    assert set(evaluate(FirstInputs(5), ds, with_baselines=False)) == {"model"}


def translating_texture(n=3, t=8, size=48, velocity=(1, 2), seed=0):
    """n clips of t frames (1 x size x size, in [0, 1]): a window moving ``velocity`` (dy, dx) px per frame over
    a smooth random texture (the content moves by -velocity per frame). A list of (x (4, 1, size, size),
    y (t - 4, 1, size, size)) pairs, which evaluate() takes as a dataset."""
    g = torch.Generator().manual_seed(seed)
    big = F.avg_pool2d(torch.rand(n, 1, 2 * size, 2 * size, generator=g), 5, 1, 2)
    vy, vx = velocity
    clips = torch.stack([big[:, :, 8 + vy * k:8 + vy * k + size, 8 + vx * k:8 + vx * k + size]
                         for k in range(t)], dim=1)                                  # (n, t, 1, size, size)
    return [(c[:4], c[4:]) for c in clips]


def test_constant_motion_beats_copy_last_frame_on_a_translating_texture():
    res = evaluate(FirstInputs(4), translating_texture(), batch_size=2)
    copy, motion = res["copy_last_frame"]["overall"], res["constant_motion"]["overall"]
    assert copy["mse"] > 1e-3  # the texture really moves
    assert motion["mse"] < 0.2 * copy["mse"]
    assert motion["ssim"] > copy["ssim"]
