"""Argument types the scripts under tools/ share: what cannot be measured (a count of 0, a JSON path whose folder
is missing) is refused by argparse in one line before any measuring, instead of a traceback after it.

    import sys; sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (also when loaded by a test)
    from cli_args import at_least, numbers, output_file
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def at_least(n: int):
    """An int option of at least ``n``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < n:
            raise argparse.ArgumentTypeError(f"must be at least {n}, got {value}")
        return value

    parse.__name__ = f"integer >= {n}"
    return parse


def numbers(text: str) -> list[float]:
    """A comma-separated list of numbers (``0.3,0.5,1``)."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 0.3,0.5,1") from None


def output_file(text: str) -> Path:
    """A file written when the measuring is done: its folder must exist and be writable now."""
    path = Path(text)
    folder = path.parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder, not a file")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: the folder {folder} is not writable")
    return path
