"""`chdl model-info` FLOPs: a training step of grouped / depthwise convolutions is counted right."""

import pytest
import torch

from diffuma.flops import count_flops, measure


class _Conv(torch.nn.Module):
    def __init__(self, groups: int, transposed: bool):
        super().__init__()
        cls = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
        self.a = torch.nn.Conv2d(8, 64, 1)  # so the grouped conv's input needs a gradient too
        self.b = cls(64, 64, 3, padding=1, groups=groups)

    def forward(self, x):
        return self.b(self.a(x))

    def training_loss(self, x, y, step=0, total_steps=1):  # (the model contract: the trainer passes both)
        return (self(x) - y).square().mean(), {}


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("groups", [1, 4, 64])
def test_backward_of_grouped_convolutions_costs_twice_their_forward(groups, transposed):
    x, y = torch.randn(2, 8, 12, 12), torch.randn(2, 64, 12, 12)
    model = _Conv(groups, transposed)
    forward_a = 2 * 2 * 64 * 8 * 12 * 12  # 2 FLOPs per multiply-add: N * C_out * C_in * H * W
    forward_b = 2 * 2 * 64 * (64 // groups) * 9 * 12 * 12
    assert count_flops(model, x) == forward_a + forward_b
    # a: forward + weight gradient (its input needs none); b: forward + input gradient + weight gradient
    assert count_flops(model, x, y) == 2 * forward_a + 3 * forward_b


def test_a_training_loss_written_as_the_contract_says_is_counted():
    """docs/model.md gives training_loss(x, y, step, total_steps) with no defaults; model-info and bench called it
    as training_loss(x, y) (every built-in model has defaults) and a model written from the docs failed there."""
    class Literal(_Conv):
        def training_loss(self, x, y, step, total_steps):
            return (self(x) - y).square().mean(), {}

    x, y = torch.randn(2, 8, 12, 12), torch.randn(2, 64, 12, 12)
    assert count_flops(Literal(1, False), x, y) == count_flops(_Conv(1, False), x, y) > 0


def test_simvp_training_step_is_about_three_forward_passes():
    row = measure("simvp", "tiny", train=True)
    assert 2.0 <= row["gflops_train_step"] / row["gflops_forward"] <= 3.5


def test_the_table_columns_line_up_for_a_long_preset_name():
    """The preset column is as wide as the longest name, so every row's columns sit under the header's."""
    from click.testing import CliRunner

    from chdl.cli.model import model_info

    res = CliRunner().invoke(model_info, ["--preset", "tiny-mmnist", "--preset", "tiny", "--frames", "5:5"])
    assert res.exit_code == 0, res.output
    head, *rows = res.output.splitlines()
    assert len(rows) == 2
    for row in rows:  # each right-aligned column ends where its header ends
        for col in ("frames", "params", "GFLOPs fwd"):
            end = head.index(col) + len(col)
            assert row[end - 1] != " " and (end == len(row) or row[end] == " "), (col, row)
