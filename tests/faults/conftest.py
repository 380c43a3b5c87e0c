"""Fault-injection suite: the results table (printed at the end, written to a file) and shared fixtures."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import pytest
from faults.report import Report

ROOT = Path(__file__).resolve().parents[2]

logger = logging.getLogger(__name__)

# Where the table goes besides the terminal; docs/reliability.md is filled from it.
REPORT_PATH = Path(os.environ.get("SHOAL_FAULTS_REPORT", ROOT / ".cache" / "faults" / "results.md"))


_REPORT = Report()


@pytest.fixture(scope="session")
def report() -> Report:
    """The session's results table."""
    return _REPORT


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
    terminalreporter.section("fault-injection results")
    terminalreporter.write(table)
    try:
        REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
        REPORT_PATH.write_text(table)
        REPORT_PATH.with_suffix(".json").write_text(json.dumps([asdict(r) for r in _REPORT.rows], indent=2) + "\n")
        terminalreporter.write_line(f"results written to {REPORT_PATH}")
    except OSError as err:
        terminalreporter.write_line(f"could not write {REPORT_PATH}: {err}")
