"""charts/shoal/README.md is generated from values.yaml's `# --` comments and kept up to date."""

from __future__ import annotations

import pytest
from tools import chart_docs

pytestmark = pytest.mark.chart


def test_readme_is_up_to_date() -> None:
    assert chart_docs.main(["--check"]) == 0, "charts/shoal/README.md is stale: run `make chart-docs`"


def test_every_documented_value_is_in_the_table() -> None:
    text = (chart_docs.CHART / "values.yaml").read_text()
    found = chart_docs.rows(text)
    assert len(found) == text.count("# --")
    keys = {row.key: row for row in found}
    assert keys["peer.config.chunkSize"].default == '"1MiB"'
    assert keys["global.imageRegistry"].type == "string"
    assert keys["metrics.prometheusRule.enabled"].default == "false"


def test_rows_follow_nesting_and_continuations() -> None:
    text = "a:\n  # -- first line\n  # second line\n  b: 1\n# plain comment\nc: x\n# -- list\nd: [1]\n"
    assert chart_docs.rows(text) == [
        chart_docs.Row("a.b", "int", "1", "first line second line"),
        chart_docs.Row("d", "list", "[1]", "list"),
    ]


def test_check_fails_on_a_stale_readme(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = chart_docs.CHART / "README.md"
    original = readme.read_text()
    monkeypatch.setattr(chart_docs, "render", lambda chart=chart_docs.CHART: original + "changed\n")
    assert chart_docs.main(["--check"]) == 1
    assert readme.read_text() == original
