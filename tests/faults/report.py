"""The fault suite's results table: one row per scenario, its outcome decided by the checks the test asserts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One expectation of a scenario: whether it held, and the failure message when it did not."""

    ok: bool
    failure: str


def verdict(checks: Sequence[Check]) -> str:
    """'pass' when every check held, else 'fail': the one rule behind both the row and the test's result."""
    if not checks:
        raise ValueError("a scenario with no checks cannot fail")
    return "pass" if all(check.ok for check in checks) else "fail"


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    expectation: str
    measured: str
    outcome: str


def _order(row: Row) -> str:
    """Scenarios named 'a) ...' sort by their letter; anything else after them."""
    head = row.scenario[:2]
    return head if len(head) == 2 and head[1] == ")" else "~"


@dataclass
class Report:
    """Rows collected over the session, in the order the scenarios ran."""

    rows: list[Row] = field(default_factory=list)

    def add(self, scenario: str, expectation: str, measured: str, checks: Sequence[Check]) -> None:
        """Record the scenario's row with the verdict of `checks`, then fail the test unless that verdict is pass."""
        outcome = verdict(checks)
        self.rows.append(Row(scenario, expectation, measured, outcome))
        logger.info("%s | %s | %s | %s", scenario, expectation, measured, outcome)
        assert outcome == "pass", "; ".join(check.failure for check in checks if not check.ok)

    def markdown(self) -> str:
        """The rows as a Markdown table, in the issue's scenario order (a, b, ...), extra checks last."""
        lines = ["| scenario | expectation | measured | outcome |", "| --- | --- | --- | --- |"]
        for row in sorted(self.rows, key=_order):
            cells = (row.scenario, row.expectation, row.measured, row.outcome)
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return "\n".join(lines) + "\n"
