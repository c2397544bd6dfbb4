"""``chdl info PATH``: what a curated dataset holds."""

from __future__ import annotations

import json

import click

from chdl.dataset import DatasetFormatError, open_dataset


@click.command("info")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(path: str, as_json: bool) -> None:
    """Summarise the curated dataset at PATH: shape, splits, QC counts, provenance."""
    try:
        summary = open_dataset(path).summary()
    except DatasetFormatError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    n, t, c, h, w = summary["shape"]
    prov = summary["provenance"]
    lines = [
        f"dataset      {summary['path']}  ({summary['schema']})",
        f"frames       {n} sequences x {t} frames x {c}x{h}x{w} {summary['dtype']} ({summary['pixel_format']}), "
        f"{summary['in_frames']} in -> {summary['out_frames']} out",
        f"storage      {summary['n_shards']} shards of {summary['sequences_per_shard']} sequences",
        "splits       " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()),
        f"qc           {summary['qc_frames_total']} frames; flagged: "
        + ", ".join(f"{k} {v}" for k, v in summary["qc_frames_flagged"].items()),
        f"runs         {len(summary['runs'])}: " + ", ".join(summary["runs"][:5]) + (" ..." if len(summary["runs"]) > 5 else ""),
        f"provenance   chdl {prov.get('tool_version', '?')}, created {prov.get('created', '?')}",
    ]
    if prov.get("command"):
        lines.append(f"command      {prov['command']}")
    click.echo("\n".join(lines))
