"""CPU time of one tool's processes from a cgroup v2 group: it counts children and exited processes exactly.

Reading /proc/PID/stat misses a process that exits between two reads and every child it reaped; a cgroup's
`cpu.stat` (usage_usec, kept by the kernel without any controller enabled) misses nothing. A process joins the
group before it execs its command (`wrap`), so everything it starts is counted too.

    group = CpuGroup.create("shoal")        # None where no writable cgroup2 hierarchy is mounted
    proc = subprocess.Popen(group.wrap(["aria2c", ...]))
    before = group.usage(); ...; spent = group.usage() - before
    group.remove()
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from bench.netns import kill_pids, pid_alive

logger = logging.getLogger(__name__)

PREFIX = "shoal-bench-"
# `sh` writes its own pid into the group's cgroup.procs ($0), then execs the command ($@): same pid throughout.
JOIN = 'echo $$ > "$0" && exec "$@"'


class CgroupError(RuntimeError):
    """The group could not be read or removed."""


def cgroup2_root(mounts: str | None = None) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    text = Path("/proc/self/mounts").read_text() if mounts is None else mounts
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def parse_usage(cpu_stat: str) -> float:
    """CPU seconds (user + system) from a cgroup v2 cpu.stat file."""
    for line in cpu_stat.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise CgroupError("cpu.stat has no usage_usec line")


class CpuGroup:
    """A cgroup v2 group of this bench, named after its owner pid so a crashed run's group can be swept."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, tool: str, root: Path | None = None) -> CpuGroup | None:
        """A fresh group for `tool`, or None where cgroup v2 is missing or not writable (a container, say)."""
        root = root or cgroup2_root()
        if root is None:
            return None
        sweep(root)
        path = root / f"{PREFIX}{os.getpid()}-{tool}"
        try:
            if path.exists():
                cls(path).remove()
            path.mkdir()
            parse_usage((path / "cpu.stat").read_text())
        except (OSError, CgroupError) as exc:
            logger.warning("no cgroup for %s CPU accounting (%s): falling back to /proc/PID/stat", tool, exc)
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return cls(path)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """`argv` started inside this group."""
        return ["sh", "-c", JOIN, str(self.path / "cgroup.procs"), *argv]

    def usage(self) -> float:
        """CPU seconds used by every process that ever ran in the group."""
        return parse_usage((self.path / "cpu.stat").read_text())

    def pids(self) -> list[int]:
        """Processes in the group now."""
        try:
            return [int(word) for word in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def remove(self, grace: float = 5.0) -> None:
        """Stop whatever still runs in the group, then delete it."""
        if not self.path.exists():
            return
        kill_pids(self.pids(), grace)
        deadline = time.monotonic() + grace
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:  # EBUSY until the last killed process is reaped
                if time.monotonic() > deadline:
                    raise CgroupError(f"cannot remove {self.path}: {exc}") from exc
                time.sleep(0.05)


def sweep(root: Path) -> None:
    """Remove groups left by bench runs whose process is gone (SIGKILLed: no cleanup ran)."""
    for path in root.glob(f"{PREFIX}*-*"):
        owner = path.name.removeprefix(PREFIX).split("-", 1)[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            logger.warning("removing %s, left by an earlier run", path)
            with contextlib.suppress(CgroupError):
                CpuGroup(path).remove(grace=2.0)
