"""Which code made a result: recorded in datasets (``provenance.code``), checkpoints (``code``), ``chdl eval`` and
``chdl bench`` results, so that a number can be traced to the code that produced it.

``chdl.__version__`` alone cannot do that: it names releases, and a checkout between two of them, or one with
local edits, carries the same string. So the record also holds the git commit of the checkout (where chdl runs
from one, with whether tracked files were edited) and a digest of the source itself, which an installed wheel
has too. Part of the dataset format's side of ``chdl``: it imports neither curation nor diffuma.
"""

from __future__ import annotations

import functools
import importlib.util
import platform
import subprocess
from pathlib import Path

PACKAGES = ("acquisition", "curation", "chdl", "diffuma")  # chdl's own code, in the order data flows


@functools.lru_cache(maxsize=None)
def code_fingerprint(packages: tuple[str, ...] = PACKAGES) -> str:
    """A BLAKE3 digest (16 hex digits) of the ``.py`` source of ``packages`` as imported here (names and bytes):
    two trees that differ in one line differ here, whatever their version string or git state."""
    import blake3

    h = blake3.blake3()
    for package in packages:
        spec = importlib.util.find_spec(package)
        root = Path(spec.origin).parent if spec and spec.origin else None
        if root is None:
            continue
        for f in sorted(root.rglob("*.py")):
            h.update(f"{package}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def git_state(root: Path | None = None) -> dict:
    """``{"commit": 40 hex digits, "dirty": bool}`` of the git checkout chdl is imported from (or ``root``), or both
    None where it is not one (an installed wheel) or git is not there. ``dirty``: tracked files differ from the
    commit."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        def git(*args: str) -> str:
            # safe.directory: on a shared install the checkout belongs to another user, and git refuses it as of
            # "dubious ownership": every other user's datasets and evals recorded commit null
            return subprocess.run(["git", "-c", f"safe.directory={root}", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()

        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def code_version(torch: bool = False) -> dict:
    """What to record beside a result: ``{"chdl": version, "git_commit", "git_dirty", "code": code_fingerprint(),
    "python": "3.11.9"[, "torch": "2.14.1"]}`` (``torch=True`` for model results)."""
    import chdl

    git = git_state()
    out = {"chdl": chdl.__version__, "git_commit": git["commit"], "git_dirty": git["dirty"],
           "code": code_fingerprint(), "python": platform.python_version()}
    if torch:
        import torch as torch_

        out["torch"] = str(torch_.__version__)  # (a str subclass that weights_only loading refuses)
    return out
