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


def more_than(bound: float):
    """A float option strictly above ``bound`` (a rate, a duration: 0 divides or measures nothing)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > bound:  # (also refuses nan)
            raise argparse.ArgumentTypeError(f"must be more than {bound:g}, got {text}")
        return value

    parse.__name__ = f"number > {bound:g}"
    return parse


def existing_dir(text: str) -> Path:
    """A folder that exists now (an input)."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder" if not path.exists() else f"{text}: not a folder")
    return path


def existing_file(text: str) -> Path:
    """A file that exists now (an input)."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file" if not path.exists() else f"{text}: not a file")
    return path


def new_or_empty_dir(text: str) -> Path:
    """An output folder that does not exist yet or is empty: a script never deletes what it did not write."""
    path = Path(text)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise argparse.ArgumentTypeError(f"{text}: exists and is not an empty folder; give a new one")
    if not path.exists() and not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: the folder {path.parent} does not exist")
    return path


def machine() -> dict:
    """When and where a measurement ran, for its JSON (the docs quote both): UTC time, CPU model and count, load."""
    import datetime
    import platform

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), None) \
        if os.path.exists("/proc/cpuinfo") else None
    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "cpu": cpu or platform.processor(), "cpu_count": os.cpu_count(), "load_avg": list(os.getloadavg()),
            "platform": platform.platform()}


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON at ``path``, whole (acquisition.files: an interrupted write leaves the earlier
    file or none, never half of one)."""
    import json

    from acquisition import files

    files.write_text(path, json.dumps(data, indent=1, default=float) + "\n")
