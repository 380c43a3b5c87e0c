"""The results table's outcome and the scenario's assertion come from the same checks (no fault injected)."""

from __future__ import annotations

import pytest
from faults.report import Check, Report, verdict


def test_a_row_passes_only_when_every_check_holds() -> None:
    assert verdict([Check(True, "x"), Check(True, "y")]) == "pass"
    assert verdict([Check(True, "x"), Check(False, "y")]) == "fail"


def test_a_scenario_without_checks_is_refused() -> None:
    with pytest.raises(ValueError):
        verdict([])


def test_a_failed_check_records_a_fail_row_and_fails_the_test() -> None:
    report = Report()
    with pytest.raises(AssertionError, match="too slow; wrong bytes"):
        report.add("a) x", "fast", "slow", [Check(False, "too slow"), Check(True, "ok"), Check(False, "wrong bytes")])
    report.add("b) y", "fast", "fast", [Check(True, "too slow")])
    assert [(row.scenario, row.outcome) for row in report.rows] == [("a) x", "fail"), ("b) y", "pass")]
    assert "| a) x | fast | slow | fail |" in report.markdown()
