"""SIGKILL ``chdl curate`` before each of its file-system writes in turn, rerun it, and check that every
rerun ends with the same dataset and report as an uninterrupted run.

A "write" is every call that changes the output: zarr's store writes (each an atomic temp-file + rename
in zarr >= 3.1), ``os.rename``/``os.replace`` (dataset creation, the QC report) and ``shutil.rmtree``.
A kill *inside* one of them leaves the old or the new file (all are atomic), so killing before each one
covers every state the output can be left in. Each attempt forks this process (imports are shared, so
an attempt costs what curation costs), kills the child with SIGKILL at write number k, then reruns the
same command in a fresh child and compares the result with the reference:

* every file of the dataset byte for byte, except the group's ``zarr.json`` whose attributes are
  compared with ``provenance.created`` and ``cwd`` left out (when and where the first attempt ran);
* the QC report JSON, and the HTML byte for byte.

Usage: python tools/curate_kill_sweep.py [--every N] RAW WORKDIR  (also used by
tests/curation/test_curate_kill.py on a small recording).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_args import at_least, existing_dir, existing_file, new_or_empty_dir  # noqa: E402


OUT = "d.zarr"  # every attempt writes this name in its own folder, so the recorded command is the same


def _curate_args(raw: Path, config: Path | None) -> list[str]:
    return ["curate", str(raw.resolve()), OUT, "--quiet"] + (["--config", str(config.resolve())] if config else [])


def _in_child(fn) -> int:
    """Run fn() in a forked child; return its exit status (negative: killed by that signal)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn() or 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _run_cli(args: list[str], cwd: Path, kill_at: int | None = None, counter: list | None = None,
             trace: bool = False):
    def go():
        os.chdir(cwd)
        import shutil as _shutil

        import zarr.storage._local as local

        from chdl.cli import main

        n = [0]

        def wrap(mod, name):
            real = getattr(mod, name)

            def wrapped(*a, **k):
                n[0] += 1
                if trace:
                    print(f"write {n[0]}: {name} {str(a[0])[-60:]}", file=sys.stderr)
                if kill_at is not None and n[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*a, **k)
            setattr(mod, name, wrapped)
        for mod, name in ((local, "_put"), (os, "rename"), (os, "replace"), (_shutil, "rmtree")):
            wrap(mod, name)
        try:
            main(args, standalone_mode=False)
        except Exception as e:  # noqa: BLE001 - report what a rerun refused, then fail
            print(f"{type(e).__name__}: {getattr(e, 'message', e)}", file=sys.stderr)
            return 1
        finally:
            if counter is not None:
                Path(counter[0]).write_text(str(n[0]))
        return 0
    return _in_child(go)


def _snapshot(out: Path) -> dict:
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p == out / "zarr.json":
                meta = json.loads(data)
                for key in ("created", "cwd"):  # when and where the command ran
                    meta["attributes"]["provenance"].pop(key, None)
                meta["attributes"].get("attributes_blake3", {}).pop("provenance", None)  # (its digest: the same)
                data = json.dumps(meta, sort_keys=True).encode()
            files[str(p.relative_to(out))] = data
    stem = out.name[:-5] if out.name.endswith(".zarr") else out.name
    for suffix in (".qc.json", ".qc.html"):
        files[suffix] = (out.parent / (stem + suffix)).read_bytes()
    return files


def sweep(raw: Path, work: Path, config: Path | None = None, every: int = 1, kill_points=None,
          log=lambda msg: print(msg, file=sys.stderr)) -> dict:
    """Returns {"writes": n, "killed_at": [...], "failures": [(k, why), ...]}."""
    from chdl.dataset import DatasetFormatError, open_dataset

    # absolute: the child processes run inside WORK's subfolders (a relative WORK's writes.txt was not found there)
    raw, work = Path(raw).absolute(), Path(work).absolute()
    config = None if config is None else Path(config).absolute()
    args = _curate_args(raw, config)
    ref = work / "ref"
    ref.mkdir(parents=True, exist_ok=True)
    count_file = work / "writes.txt"
    status = _run_cli(args, ref, counter=[count_file])
    if status != 0:
        raise RuntimeError(f"reference run failed (exit {status})")
    writes = int(count_file.read_text())
    reference = _snapshot(ref / OUT)
    failures, killed = [], []
    points = kill_points if kill_points is not None else range(1, writes + 1, every)
    for k in points:
        here = work / f"k{k}"
        here.mkdir()
        status = _run_cli(args, here, kill_at=k)
        if status != -signal.SIGKILL:
            failures.append((k, f"not killed (exit {status})"))
            continue
        killed.append(k)
        try:
            open_dataset(here / OUT)
            complete = True  # killed after the dataset was marked complete: nothing left to resume
        except DatasetFormatError:
            complete = False
        if not complete:
            status = _run_cli(args, here)
            if status != 0:
                failures.append((k, f"rerun failed (exit {status})"))
                continue
        got = _snapshot(here / OUT)
        diff = sorted(set(got) ^ set(reference)) or [f for f in reference if got[f] != reference[f]]
        if diff:
            failures.append((k, f"differs from the uninterrupted run: {', '.join(diff[:5])}"))
        log(f"kill before write {k}/{writes}: {'ok' if not diff else 'DIFFERS'}")
        shutil.rmtree(here)
    return {"writes": writes, "killed_at": killed, "failures": failures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", type=existing_dir, help="the recordings to curate (small: every write is a run)")
    ap.add_argument("work", type=new_or_empty_dir, help="a new or empty folder for the runs")
    ap.add_argument("--config", type=existing_file, help="chdl curate --config (e.g. sequences_per_shard: 1)")
    ap.add_argument("--every", type=at_least(1), default=1, help="kill before every N-th write only")
    a = ap.parse_args()
    res = sweep(a.raw, a.work, a.config, a.every)
    print(f"{len(res['killed_at'])} kill points of {res['writes']} writes; {len(res['failures'])} failures")
    for k, why in res["failures"]:
        print(f"  write {k}: {why}")
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
