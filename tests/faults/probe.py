"""Runs inside a lab namespace: for each tracker address read on stdin, print its view as one JSON line."""

from __future__ import annotations

import json
import logging
import sys

from faults.harness import tracker_view

logger = logging.getLogger(__name__)


def main() -> None:
    """Answer until stdin closes; `null` for a tracker that does not answer."""
    for line in sys.stdin:
        view = tracker_view(line.strip(), timeout=1.0)
        answer = None if view is None else {"peers": [list(p) for p in view.peers], "files": view.files}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
