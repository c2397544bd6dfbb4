"""Helpers for tests that need a dataset as an older chdl wrote it."""

import json
import shutil
from pathlib import Path


def as_written_before_checksums(path: Path) -> None:
    """Make the dataset at ``path`` look like one written before chdl recorded integrity data (2026-11-30): no
    ``shard_checksums`` array, and none of the group attributes that came with or after it (a dataset that has those
    and lacks the array is damaged, not old)."""
    shutil.rmtree(path / "shard_checksums")
    meta = json.loads((path / "zarr.json").read_text())
    for key in ("metadata_blake3", "reconstruction_method_bits", "attributes_blake3"):
        meta["attributes"].pop(key, None)
    meta["attributes"].get("split_codes", {}).pop("test", None)
    (path / "zarr.json").write_text(json.dumps(meta))
