"""Process helpers shared by the tests that kill a chdl command and check what it leaves running (Linux /proc),
and the probe for a private tmpfs (a real full disk)."""

import shutil
import subprocess
from pathlib import Path


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc/<pid>/stat)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def can_mount_tmpfs() -> bool:
    """Whether `unshare -m` can mount a private tmpfs here (the full-disk tests need it)."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0
