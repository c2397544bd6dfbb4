"""How much memory the machine has free, for refusing work that cannot fit before starting it."""

from __future__ import annotations


def available_memory() -> int | None:
    """Bytes of memory available now (Linux: ``MemAvailable`` of /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
