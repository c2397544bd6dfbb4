"""`chdl model-info`: parameter counts and FLOPs of model presets at given frame sizes/counts (counted by
:mod:`diffuma.flops`, which says how)."""

from __future__ import annotations

import json

import click

from diffuma.flops import format_params, measure


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
    from acquisition.config_validation import did_you_mean
    from diffuma.models.registry import list_models, list_presets

    if name not in list_models():
        raise click.UsageError(f"unknown model {name!r}{did_you_mean(name, list_models())}")
    known = list_presets(name)
    for p in presets:
        if p not in known:
            raise click.UsageError(f"unknown preset {p!r} for {name}{did_you_mean(p, known)}")
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
                f"{format_params(r['params']):>11} {r['gflops_forward']:>11.3f}")
        if train:
            line += f" {r['gflops_train_step']:>13.3f}"
        click.echo(line)
