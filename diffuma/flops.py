"""FLOPs of chdl's models: forward passes and training steps.

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions, attention;
elementwise ops -- including the selective scan's recurrence -- are not counted) on the "meta"
device, so even the full 600x800 preset is counted without allocating or computing anything.
One formula is replaced: torch's convolution-backward count ignores ``groups`` in the weight gradient, so a
depthwise conv's backward counted ``groups`` times too much (SimVP's training step: 29x its forward pass);
:func:`_conv_backward_flop` counts each gradient at the forward convolution's cost. Used by ``chdl model-info``
and by ``chdl bench`` (each model's training compute: samples x FLOPs per training sample).
"""
from __future__ import annotations


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of aten.convolution_backward: the input gradient and the weight gradient each cost what the forward
    convolution costs (the same multiply-adds, regrouped), grouped and depthwise convolutions included."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def format_params(n: int) -> str:
    """A parameter count as tables print it: 0.262M, 10.2M; under 10,000 the count itself (a 733-parameter model
    read 0.00M)."""
    return f"{n:,}" if n < 10_000 else f"{n / 1e6:.3g}M"


def count_flops(model, x, y=None) -> int:
    """FLOPs of model(x) (or, with y, of training_loss(x, y) forward + backward)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})
    with counter:
        if y is None:
            with torch.no_grad():
                model(x)
        else:
            loss, _ = model.training_loss(x, y, step=0, total_steps=1)  # (as the trainer calls it: keywords)
            loss.backward()
    return counter.get_total_flops()


def measure(name: str, preset: str, size=None, frames=None, batch: int = 1, train: bool = False) -> dict:
    """Params and FLOPs for one (model, preset, size, frames). Counted on the meta device."""
    import torch
    from diffuma.models.registry import build_model, model_config

    overrides = {}
    if size is not None:
        overrides.update(height=size[0], width=size[1])
    if frames is not None:
        overrides.update(in_frames=frames[0], out_frames=frames[1])
    cfg = model_config(name, preset, **overrides)
    with torch.device("meta"):
        model = build_model(name, preset, **overrides)
        x = torch.rand(batch, cfg.in_frames, cfg.channels, cfg.height, cfg.width)
        y = torch.rand(batch, cfg.out_frames, cfg.channels, cfg.height, cfg.width)
        row = {"model": name, "preset": preset, "frames": f"{cfg.in_frames}->{cfg.out_frames}",
               "size": f"{cfg.height}x{cfg.width}", "channels": cfg.channels, "batch": batch,
               "params": sum(p.numel() for p in model.parameters()),
               "gflops_forward": count_flops(model.eval(), x) / 1e9}
        if train:
            row["gflops_train_step"] = count_flops(model.train(), x, y) / 1e9
    return row


def train_flops_per_sample(name: str, model_config: dict, in_frames: int, out_frames: int, channels: int,
                           height: int, width: int) -> int:
    """FLOPs of one training sample's step (``training_loss`` forward + backward at batch 1) of the model
    ``name`` built from ``model_config`` (a checkpoint's), counted on the meta device."""
    import torch
    from diffuma.models.registry import build_model

    with torch.device("meta"):
        model = build_model(name, None, **model_config)
        x = torch.rand(1, in_frames, channels, height, width)
        y = torch.rand(1, out_frames, channels, height, width)
        return count_flops(model.train(), x, y)
