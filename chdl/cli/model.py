"""`chdl model-info`: parameter counts and FLOPs of model presets at given frame sizes/counts.

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions, attention;
elementwise ops -- including the selective scan's recurrence -- are not counted) on the "meta"
device, so even the full 600x800 preset is counted without allocating or computing anything.
One formula is replaced: torch's convolution-backward count ignores ``groups`` in the weight gradient, so a
depthwise conv's backward counted ``groups`` times too much (SimVP's training step: 29x its forward pass);
:func:`_conv_backward_flop` counts each gradient at the forward convolution's cost.
"""
from __future__ import annotations

import json

import click


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        assert h > 0 and w > 0
    except (ValueError, AssertionError):
        raise click.BadParameter(f"{text!r}: expected HxW, e.g. 600x800") from None
    return h, w


def _parse_frames(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(":"))
        assert a > 0 and b > 0
    except (ValueError, AssertionError):
        raise click.BadParameter(f"{text!r}: expected IN:OUT frame counts, e.g. 5:1") from None
    return a, b


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of aten.convolution_backward: the input gradient and the weight gradient each cost what the forward
    convolution costs (the same multiply-adds, regrouped), grouped and depthwise convolutions included."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


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
            loss, _ = model.training_loss(x, y)
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


@click.command("model-info")
@click.option("--model", "name", default="diffuma", show_default=True, help="Registered model name.")
@click.option("--preset", "presets", multiple=True, help="Preset(s); default: all of the model's presets.")
@click.option("--size", "sizes", multiple=True, callback=lambda c, p, v: [_parse_size(s) for s in v],
              help="Frame size HxW (repeatable); default: each preset's own size.")
@click.option("--frames", "frames", multiple=True, callback=lambda c, p, v: [_parse_frames(s) for s in v],
              help="IN:OUT frame counts (repeatable), e.g. 5:1; default: each preset's own.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Batch size for FLOPs.")
@click.option("--train", is_flag=True, help="Also count a training step (training_loss forward + backward).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per row instead of a table.")
def model_info(name, presets, sizes, frames, batch, train, as_json):
    """Print parameter counts and FLOPs (FlopCounterMode, meta device) per preset, frame size and
    frame count. Example: chdl model-info --preset chdl-full --size 600x800 --frames 5:1 --train"""
    from diffuma.models.registry import list_models, list_presets

    if name not in list_models():
        raise click.UsageError(f"unknown model {name!r} (known: {', '.join(list_models())})")
    known = list_presets(name)
    for p in presets:
        if p not in known:
            raise click.UsageError(f"unknown preset {p!r} for {name} (known: {', '.join(known)})")
    rows = []
    for preset in presets or known:
        for size in sizes or [None]:
            for fr in frames or [None]:
                try:
                    rows.append(measure(name, preset, size, fr, batch, train))
                except (ValueError, TypeError, RuntimeError) as e:
                    raise click.ClickException(f"{name}/{preset}: {e}") from None
    if as_json:
        for r in rows:
            click.echo(json.dumps(r))
        return
    pw = max([10, *(len(r["preset"]) for r in rows)])  # the preset column fits the longest name
    head = f"{'model':<10} {'preset':<{pw}} {'frames':>7} {'size':>9} {'C':>2} {'params':>11} {'GFLOPs fwd':>11}"
    head += f" {'GFLOPs train':>13}" if train else ""
    click.echo(head + f"   (batch {batch})")
    for r in rows:
        line = (f"{r['model']:<10} {r['preset']:<{pw}} {r['frames']:>7} {r['size']:>9} {r['channels']:>2} "
                f"{r['params'] / 1e6:>10.3f}M {r['gflops_forward']:>11.3f}")
        if train:
            line += f" {r['gflops_train_step']:>13.3f}"
        click.echo(line)
