"""Shared fixtures: local swarms of real shoal processes, random files, and process logs on failure."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shoal.demo import make_file as make_random_file
from shoal.localswarm import LocalSwarm

ANNOUNCE_INTERVAL = 0.5
LOG_TAIL_LINES = 40


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that tunes the `swarm` fixture."""
    config.addinivalue_line("markers", "swarm_config(announce_interval=0.5): settings of the `swarm` fixture's tracker")


@contextmanager
def _running(workdir: Path, announce_interval: float) -> Iterator[LocalSwarm]:
    """A LocalSwarm with one tracker; every process it ever started is stopped on the way out."""
    # SHOAL_* settings of whoever runs the tests must not leak into the daemons (an empty value counts as unset).
    inherited = {name: "" for name in os.environ if name.startswith("SHOAL_") and name != "SHOAL_LOG_LEVEL"}
    swarm = LocalSwarm(workdir, announce_interval=announce_interval, extra_env=inherited)
    try:
        swarm.start_tracker()
        yield swarm
    finally:
        swarm.stop()


@pytest.fixture
def swarm(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalSwarm]:
    """A fresh swarm for one test: one tracker (announce interval 0.5 s) and no peers yet."""
    marker = request.node.get_closest_marker("swarm_config")
    interval = float(marker.kwargs.get("announce_interval", ANNOUNCE_INTERVAL)) if marker else ANNOUNCE_INTERVAL
    with _running(tmp_path / "swarm", interval) as running:
        yield running


@pytest.fixture(scope="module")
def module_swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    """One swarm shared by a module's tests (cheaper when the tests only read): one tracker, no peers."""
    with _running(tmp_path_factory.mktemp("swarm"), ANNOUNCE_INTERVAL) as running:
        yield running


write_random_file = make_random_file


@pytest.fixture(scope="session")
def make_file() -> Callable[[Path, int], str]:
    """make_file(path, size) writes a random file and returns its sha256 hex digest."""
    return write_random_file


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"(cannot read {path}: {err})"
    return "\n".join(text.splitlines()[-lines:])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failed setup or test, attach the tail of every swarm process's log to the report."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        funcargs = getattr(item, "funcargs", {})
        for value in funcargs.values():
            if isinstance(value, LocalSwarm):
                for proc in [*value.trackers, *value.peers]:
                    state = "running" if proc.alive() else f"exited {proc.popen.returncode}"
                    report.sections.append((f"shoal log {proc.name} ({proc.address}, {state})", _tail(proc.log_path)))
    return report
