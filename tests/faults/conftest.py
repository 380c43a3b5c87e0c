"""Fault-injection suite: the results table (printed at the end, written to a file) and shared fixtures."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import pytest
from faults.report import Report
from helpers.tls import requested, swarm_files

from shoal.config import TlsFiles

ROOT = Path(__file__).resolve().parents[2]

logger = logging.getLogger(__name__)

# Where the table goes besides the terminal; docs/reliability.md is filled from it. A TLS run (SHOAL_TEST_TLS=1)
# writes a sibling, results-tls.md, and leaves the plaintext table alone.
_PLAINTEXT_REPORT = Path(os.environ.get("SHOAL_FAULTS_REPORT", ROOT / ".cache" / "faults" / "results.md"))
REPORT_PATH = (
    _PLAINTEXT_REPORT.with_name(f"{_PLAINTEXT_REPORT.stem}-tls{_PLAINTEXT_REPORT.suffix}")
    if requested()
    else _PLAINTEXT_REPORT
)


_REPORT = Report()


@pytest.fixture(scope="session")
def report() -> Report:
    """The session's results table."""
    return _REPORT


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles | None:
    """The certificates every swarm of the suite serves and dials with under SHOAL_TEST_TLS=1; None runs plaintext."""
    return swarm_files(tmp_path_factory)


@pytest.fixture(scope="session")
def root_user() -> None:
    """Skip scenarios that need network namespaces and iptables unless running as root (CI is)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and iptables")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the results table and write it (Markdown and JSON) for docs/reliability.md."""
    if not _REPORT.rows:
        return
    table = _REPORT.markdown()
    terminalreporter.section("fault-injection results" + (" (mutual TLS)" if requested() else ""))
    terminalreporter.write(table)
    try:
        REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
        REPORT_PATH.write_text(table)
        REPORT_PATH.with_suffix(".json").write_text(json.dumps([asdict(r) for r in _REPORT.rows], indent=2) + "\n")
        terminalreporter.write_line(f"results written to {REPORT_PATH}")
    except OSError as err:
        terminalreporter.write_line(f"could not write {REPORT_PATH}: {err}")
