"""How much memory this process can still take: what the machine has free, or less where a container's
(cgroup) limit leaves less. Read before loading a data set, so that one too large is refused with the numbers."""

from __future__ import annotations

import os
from pathlib import Path


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _cgroup_room() -> int | None:
    """What this process's memory cgroup (a container, a SLURM job) still lets it take, counting reclaimable
    page cache (inactive_file) as free; None without a limit."""
    for folder, limit_file, usage_file in (
        (Path("/sys/fs/cgroup"), "memory.max", "memory.current"),  # cgroup v2
        (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.usage_in_bytes"),  # v1
    ):
        try:
            limit_text = (folder / limit_file).read_text().strip()
            if limit_text == "max" or int(limit_text) >= 1 << 60:  # v1 writes "no limit" as a huge number
                continue
            used = int((folder / usage_file).read_text())
            stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines() if " " in line)
            reclaimable = int(stat.get("inactive_file", stat.get("total_inactive_file", 0)))
            return max(0, int(limit_text) - used + reclaimable)
        except (OSError, ValueError):
            continue
    return None


def available_memory() -> int | None:
    """Bytes of memory this process can still take: MemAvailable (/proc/meminfo; else the free pages), or
    less where a cgroup limit leaves less; None when neither can be read."""
    free, room = _meminfo_available(), _cgroup_room()
    if free is None or room is None:
        return free if room is None else room
    return min(free, room)
