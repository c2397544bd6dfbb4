"""``python -m chdl``: the CLI. ``-m`` puts the working folder first on ``sys.path``, so a file of the user's named
like one of chdl's packages (``acquisition.py``, ``curation.py``, ``diffuma.py`` in the folder the command runs
in) was imported in its place. The working folder is taken off the path unless chdl itself lives there (a
checkout run from its root), as Python's own ``-P`` / PYTHONSAFEPATH would."""

import os
import sys
from pathlib import Path

import chdl

if sys.path and not sys.flags.safe_path:
    first = Path(sys.path[0] or os.curdir).resolve()
    if first != Path(chdl.__file__).resolve().parents[1]:
        del sys.path[0]

from chdl.cli import run  # noqa: E402 (after the path is safe)

run()
