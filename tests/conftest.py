"""Shared fixtures: local swarms of real shoal processes, random files, and process logs on failure."""

from __future__ import annotations

import signal
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from helpers import files
from helpers.processes import running_swarm

from shoal.config import TlsFiles
from shoal.localswarm import LocalSwarm

ANNOUNCE_INTERVAL = 0.5
LOG_TAIL_LINES = 40


INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that tunes the `swarm` fixture, and the one every integration test gets."""
    # A shell without job control starts a backgrounded command with SIGINT ignored, and every process it starts
    # inherits that: the Ctrl-C tests' clients would then never see their SIGINT. A handler is not inherited.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line(
        "markers", "swarm_config(announce_interval=0.5, tls=False): settings of the `swarm` fixture's processes"
    )
    config.addinivalue_line(
        "markers", "integration: a test under tests/integration (added at collection; make test runs them with TLS too)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration `integration`, so `-m` can select the suite whatever paths are given."""
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _swarm_tls(factory: pytest.TempPathFactory, wanted: bool) -> TlsFiles | None:
    """Certificates from a fresh CA when a test asks for TLS, or when SHOAL_TEST_TLS=1 asks for it everywhere."""
    from helpers.tls import swarm_files

    return swarm_files(factory, wanted)


@pytest.fixture
def swarm(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSwarm]:
    """A fresh swarm for one test: one tracker (announce interval 0.5 s) and no peers yet."""
    marker = request.node.get_closest_marker("swarm_config")
    interval = float(marker.kwargs.get("announce_interval", ANNOUNCE_INTERVAL)) if marker else ANNOUNCE_INTERVAL
    tls = _swarm_tls(tmp_path_factory, bool(marker and marker.kwargs.get("tls")))
    with running_swarm(tmp_path / "swarm", interval, tls=tls) as running:
        yield running


@pytest.fixture(scope="module")
def module_swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    """One swarm shared by a module's tests (cheaper when the tests only read): one tracker, no peers."""
    tls = _swarm_tls(tmp_path_factory, False)
    with running_swarm(tmp_path_factory.mktemp("swarm"), ANNOUNCE_INTERVAL, tls=tls) as running:
        yield running


@pytest.fixture(scope="session")
def make_file() -> Callable[[Path, int], str]:
    """make_file(path, size) writes a random file and returns its sha256 hex digest (helpers.files.make_file)."""
    return files.make_file


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
