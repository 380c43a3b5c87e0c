"""How often a Get stream sends progress: the client's wish, within bounds."""

from __future__ import annotations

import pytest

from shoal.peer.control import PROGRESS_EVERY, progress_every
from shoal.v1 import control_pb2


@pytest.mark.parametrize(
    ("asked_ms", "seconds"),
    [(0, PROGRESS_EVERY), (1, 0.05), (1000, 1.0), (5000, 5.0), (3_600_000, 60.0)],
)
def test_progress_interval_is_the_clients_within_bounds(asked_ms: int, seconds: float) -> None:
    assert progress_every(control_pb2.GetRequest(progress_every_ms=asked_ms)) == pytest.approx(seconds)
