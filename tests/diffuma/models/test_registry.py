"""Inputs every registered model refuses in one line (diffuma.models.registry.check_frames)."""

import pytest
import torch

from diffuma.models.registry import build_model, list_models

RECURRENT = {"convlstm", "predrnn", "predrnn_v2", "e3dlstm"}  # any T_in at run time


@pytest.mark.parametrize("name", list_models())
def test_a_wrong_frame_count_or_channel_count_is_one_line_naming_the_model(name):
    """A 4-frame DIFFUMA given 6 frames failed with torch's 'mat1 and mat2 shapes cannot be multiplied (768x6 and
    4x3)', a model of 1 channel given 3 somewhere inside its first conv: neither said what the model takes."""
    model = build_model(name, "tiny", in_frames=4, out_frames=2, channels=1, height=16, width=16).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 4, 1, 16, 16)).shape == (1, 2, 1, 16, 16)
        with pytest.raises(ValueError, match=r"input of shape \(1, 4, 3, 16, 16\); it takes \(B, T_in, C, H, W\) = "
                                             r"\(B, (4|any), 1, H, W\)"):
            model(torch.rand(1, 4, 3, 16, 16))
        if name in RECURRENT:
            assert model(torch.rand(1, 6, 1, 16, 16)).shape == (1, 2, 1, 16, 16)
        else:
            with pytest.raises(ValueError, match=r"input of shape \(1, 6, 1, 16, 16\)"):
                model(torch.rand(1, 6, 1, 16, 16))
    with pytest.raises(ValueError, match=r"input of shape \(1, 4, 3, 16, 16\)"):  # the training objective too
        model.train().training_loss(torch.rand(1, 4, 3, 16, 16), torch.rand(1, 2, 3, 16, 16))


def test_pastnet_takes_the_sizes_that_pad_to_its_grid():
    model = build_model("pastnet", "tiny", in_frames=4, out_frames=2, height=64, width=64).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 4, 1, 60, 60)).shape == (1, 2, 1, 60, 60)
        with pytest.raises(ValueError, match=r"PastNet: frames of 56x64 px; it was built for 64x64 \(padded to 64x64"):
            model(torch.rand(1, 4, 1, 56, 64))
