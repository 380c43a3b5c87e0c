"""The fault suite's results table: one row per scenario, collected over the session."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    expectation: str
    measured: str
    outcome: str = "pass"


def _order(row: Row) -> str:
    """Scenarios named 'a) ...' sort by their letter; anything else after them."""
    head = row.scenario[:2]
    return head if len(head) == 2 and head[1] == ")" else "~"


@dataclass
class Report:
    """Rows collected over the session, in the order the scenarios ran."""

    rows: list[Row] = field(default_factory=list)

    def add(self, scenario: str, expectation: str, measured: str, outcome: str = "pass") -> None:
        """Record one measured outcome (call it before the final assertion, so failures show their numbers)."""
        self.rows.append(Row(scenario, expectation, measured, outcome))
        logger.info("%s | %s | %s | %s", scenario, expectation, measured, outcome)

    def markdown(self) -> str:
        """The rows as a Markdown table, in the issue's scenario order (a, b, ...), extra checks last."""
        lines = ["| scenario | expectation | measured | outcome |", "| --- | --- | --- | --- |"]
        for row in sorted(self.rows, key=_order):
            cells = (row.scenario, row.expectation, row.measured, row.outcome)
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return "\n".join(lines) + "\n"
