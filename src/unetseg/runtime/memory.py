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


V2 = (Path("/sys/fs/cgroup"), "memory.max", "memory.current")
V1 = (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.usage_in_bytes")


def _own_cgroups(proc_cgroup: str) -> list[tuple[Path, str, str]]:
    """The memory cgroup folders of this process and of every cgroup above it (a SLURM step sits in its job's),
    from /proc/self/cgroup's text: v2's ``0::/path`` and v1's memory controller line. Inside a container with
    its own cgroup namespace the path is ``/``: the mounted root is the container's own cgroup."""
    found = []
    for line in proc_cgroup.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base, limit_file, usage_file = V2
        elif "memory" in controllers.split(","):
            base, limit_file, usage_file = V1
        else:
            continue
        folder = base / path.strip().lstrip("/")
        for level in [folder, *folder.parents]:
            found.append((level, limit_file, usage_file))
            if level == base:
                break
    return found


def _room_in(folder: Path, limit_file: str, usage_file: str) -> int | None:
    """What one cgroup still lets its processes take, counting reclaimable page cache (inactive_file) as free;
    None without a limit (or where the files cannot be read)."""
    try:
        limit_text = (folder / limit_file).read_text().strip()
        if limit_text == "max" or int(limit_text) >= 1 << 60:  # v1 writes "no limit" as a huge number
            return None
        used = int((folder / usage_file).read_text())
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines() if " " in line)
        reclaimable = int(stat.get("total_inactive_file", stat.get("inactive_file", 0)))
        return max(0, int(limit_text) - used + reclaimable)
    except (OSError, ValueError):
        return None


def _cgroup_room() -> int | None:
    """What this process's memory cgroups (a container, a SLURM job, a benchmark's budget) still let it take:
    the tightest of its own cgroup and those above it; None without a limit."""
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        text = ""
    candidates = _own_cgroups(text) or [V2, V1]
    rooms = [room for room in (_room_in(*candidate) for candidate in candidates) if room is not None]
    return min(rooms) if rooms else None


def available_memory() -> int | None:
    """Bytes of memory this process can still take: MemAvailable (/proc/meminfo; else the free pages), or
    less where a cgroup limit leaves less; None when neither can be read."""
    free, room = _meminfo_available(), _cgroup_room()
    if free is None or room is None:
        return free if room is None else room
    return min(free, room)
