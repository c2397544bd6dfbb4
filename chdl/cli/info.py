"""``chdl info PATH``: what a curated dataset holds; ``chdl verify PATH``: whether its shard files are intact."""

from __future__ import annotations

import json

import click

from chdl.cli.options import quiet_option, shell_word
from chdl.dataset import DatasetFormatError, VerifyResult, open_dataset


@click.command("info")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(path: str, as_json: bool) -> None:
    """Summarise the curated dataset at PATH: shape, splits, QC counts, provenance."""
    try:
        reader = open_dataset(path, check_files=False)  # a dataset with missing files is summarised, then refused
        summary = reader.summary()
        missing = reader.missing_files()
        metadata = reader.metadata_problems()  # (a changed byte order reads every position wrong, silently)
    except DatasetFormatError as e:
        raise click.ClickException(str(e)) from None
    # splits and QC counts are read from qc_flags and split: where their files are gone, zarr reads fill values
    unreliable = any(not k.startswith(("frames/", "shard_checksums/")) for _, k in missing)
    summary["integrity"] = {"checksums": reader.has_checksums, "missing_files": [k for _, k in missing],
                            "counts_unreliable": unreliable}
    identity = reader.identity() if not missing else {}  # (digests of records that are gone: none)
    summary["content"], summary["data"] = identity.get("content"), identity.get("data")
    summary["integrity"]["metadata_problems"] = [f"{p.file}: {p.problem}" for p in metadata]
    damaged = None
    if missing:
        damaged = click.ClickException(f"{path}: damaged: {len(missing)} shard file(s) missing (first: {missing[0][1]})")
    elif metadata:  # (the line train, eval and verify give: the first problems, the attribute an edit changed)
        damaged = click.ClickException(VerifyResult(path, reader.has_checksums, 0, 0, 0, metadata).error())
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        if damaged:
            raise damaged
        return
    n, t, c, h, w = summary["shape"]
    caveat = "  (NOT RELIABLE: shard files of these arrays are missing, read as zeros)" if unreliable else ""
    prov = summary["provenance"]
    # a test split is listed where it has sequences or curate was asked for one (then an empty one is said)
    config = prov.get("config") if isinstance(prov, dict) else None
    split_cfg = config.get("split") if isinstance(config, dict) else None
    fraction = split_cfg.get("test_fraction") if isinstance(split_cfg, dict) else None
    asked = isinstance(fraction, (int, float)) and fraction > 0
    lines = [
        f"dataset      {summary['path']}  ({summary['schema']})",
        f"frames       {n} sequences x {t} frames x {c}x{h}x{w} {summary['dtype']} ({summary['pixel_format']}, "
        f"max_value {summary['max_value']:g}), "
        f"{summary['in_frames']} in -> {summary['out_frames']} out",
        f"storage      {_n(summary['n_shards'], 'shard')} of {_n(summary['sequences_per_shard'], 'sequence')}",
        "splits       " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items() if v or k != "test" or asked)
        + _split_rule(split_cfg) + caveat,
        _qc_line(summary) + caveat,
        (f"runs         {len(summary['runs'])}: " + ", ".join(summary["runs"][:5]) + (" ..." if len(summary["runs"]) > 5 else "")
         if summary["runs"] else "runs         none recorded (a dataset written without raw recordings)"),
        f"provenance   chdl {prov.get('tool_version', '?')}"
        + (f" (commit {(prov['code'].get('git_commit') or 'unknown')[:12]}{' edited' if prov['code'].get('git_dirty') else ''}"
           f", code {prov['code'].get('code')})" if isinstance(prov.get("code"), dict) else "")
        + f", created {prov.get('created', '?')}",
    ]
    if summary.get("content"):
        lines.append(f"content      BLAKE3 {summary['content']}  (the identity checkpoints, eval and bench record)")
        lines.append(f"data         BLAKE3 {summary['data']}  (the same without capture times: a replay of the same "
                     "recording curated the same way gives it again)")
    if prov.get("command"):
        lines.append(f"command      {prov['command']}")
    if metadata:
        lines.append(f"integrity    DAMAGED: metadata {'; '.join(f'{p.file}: {p.problem}' for p in metadata)}")
    if missing:
        shards = sorted({s for s, _ in missing})
        lines.append(f"integrity    DAMAGED: {len(missing)} shard file(s) missing, shard(s) "
                     f"{', '.join(map(str, shards[:10]))}{' ...' if len(shards) > 10 else ''} (chdl verify {shell_word(path)} lists them)")
    elif not metadata:  # (else its DAMAGED line above says what is wrong)
        lines.append(f"integrity    every shard file present; BLAKE3 checksum recorded for each (chdl verify {shell_word(path)} checks "
                     "them)" if reader.has_checksums else
                     "integrity    shard files present; no checksums (written before chdl recorded them)")
    click.echo("\n".join(lines))
    if damaged:
        raise damaged


@click.command("verify")
@click.argument("path", type=click.Path(path_type=str))
@quiet_option()
def verify(path: str, quiet: bool) -> None:
    """Check every shard file of the curated dataset at PATH against the BLAKE3 checksum and size recorded when it was
    written. Exit status 1 naming each damaged shard; 0 when all match (or there is nothing to check)."""
    try:
        reader = open_dataset(path, check_files=False)  # missing files are reported below, with the rest
        result = reader.verify(progress=not quiet)
    except DatasetFormatError as e:
        raise click.ClickException(str(e)) from None
    for p in result.problems:
        click.echo(f"{'metadata' if p.shard is None else f'shard {p.shard}'}: {p.file}: {p.problem}")
    bad, meta = result.bad_shards, result.bad_metadata
    if result.permissions_only:
        raise click.ClickException(f"{path}: {len(result.problems)} file(s) of shard(s) {', '.join(map(str, bad))} "
                                   "cannot be read by this user: not damage (give this user read access, then verify "
                                   "again)")
    if bad or meta:
        what = ([f"{len(bad)} of {result.shards} shards damaged (shard{'s' if len(bad) > 1 else ''} "
                 f"{', '.join(map(str, bad))})"] if bad else []) + ([f"metadata damaged ({', '.join(meta)})"] if meta else [])
        raise click.ClickException(f"{path}: {'; '.join(what)}")
    if not result.has_checksums:
        click.echo(f"{path}: written before chdl recorded shard checksums: nothing to verify "
                   f"(its {result.shards} frames shard files are present)")
        return
    click.echo(f"{path}: {_n(result.shards, 'shard')}, {_n(result.files, 'file')}, {result.bytes / 2**20:.1f} MiB: every "
               "checksum matches")


def _qc_line(summary: dict) -> str:
    """The ``qc`` line: frames flagged by kind and reconstructed by method, or that QC never ran (a dataset of
    ``chdl import``: its zero counts read as "checked, all clean", and a trial's six injected faults went in)."""
    if not summary["qc_score_names"]:
        flagged = {k: v for k, v in summary["qc_frames_flagged"].items() if v}
        return (f"qc           not run: {summary['qc_frames_total']} frames not checked for vibration or illumination "
                "(a dataset written without chdl curate, e.g. by chdl import; chdl curate runs QC on raw recordings)"
                + ("; flagged: " + ", ".join(f"{k} {v}" for k, v in flagged.items()) if flagged else ""))
    return (f"qc           {summary['qc_frames_total']} frames; flagged: "
            + ", ".join(f"{k} {v}" for k, v in summary["qc_frames_flagged"].items())
            + ("; reconstructed by " + ", ".join(f"{k} {v}" if k != "not recorded" else  # (a dataset from before 12-01)
                                                 f"a method not recorded {v} (written before chdl stored it)"
                                                 for k, v in summary["reconstructed_by"].items() if v)
               if any(summary["reconstructed_by"].values()) else ""))


def _split_rule(split_cfg) -> str:
    """`` (lane blocks of 2, val 0.5, test 0.2, seed 0)``: the rule curate dealt the splits by, where recorded
    (test only where asked for, as the count)."""
    if not isinstance(split_cfg, dict):
        return ""
    parts = [f"{label} {split_cfg[key]:g}" for label, key in (("val", "val_fraction"), ("test", "test_fraction"))
             if isinstance(split_cfg.get(key), (int, float)) and (key == "val_fraction" or split_cfg[key] > 0)]
    if isinstance(split_cfg.get("block_lanes"), int):
        parts.insert(0, f"lane blocks of {split_cfg['block_lanes']}")
    if isinstance(split_cfg.get("seed"), int):
        parts.append(f"seed {split_cfg['seed']}")
    return f"  ({', '.join(parts)})" if parts else ""


def _n(count: int, noun: str) -> str:
    """"1 shard", "2 shards"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
