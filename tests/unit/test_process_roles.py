"""Each process loads only its own code: the tracker never imports the peer, and the peer never the tracker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LOADED = "import json, sys; {imports}; print(json.dumps(sorted(sys.modules)))"


def loaded_after(*modules: str) -> list[str]:
    """The modules a fresh interpreter holds after importing `modules`, as the process entry points would."""
    code = LOADED.format(imports="; ".join(f"import {module}" for module in modules))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def under(package: str, loaded: list[str]) -> list[str]:
    return [name for name in loaded if name == package or name.startswith(package + ".")]


@pytest.mark.parametrize(
    ("entry", "own", "foreign"),
    [
        (("shoal.cli", "shoal.tracker.server"), "shoal.tracker", "shoal.peer"),
        (("shoal.cli", "shoal.peer.daemon"), "shoal.peer", "shoal.tracker"),
    ],
)
def test_a_process_loads_only_its_own_role(entry: tuple[str, ...], own: str, foreign: str) -> None:
    loaded = loaded_after(*entry)
    assert f"{own}.metrics" in loaded  # the check below is about this process, not an import that failed quietly
    assert "shoal.exporter" in loaded
    assert under(foreign, loaded) == []
