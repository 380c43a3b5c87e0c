"""`python -m tools.rehearsal up|down`: leave a rehearsal running to poke at by hand, or remove it.

The checks themselves live in tests/chart/test_rehearsal.py (`make rehearsal`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tools.rehearsal import engine
from tools.rehearsal.scenario import Rehearsal

logger = logging.getLogger(__name__)


def main() -> int:
    """Parse the command and run it."""
    parser = argparse.ArgumentParser(prog="python -m tools.rehearsal", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--base-image", default="", help="use this base image instead of the debootstrap one")
    parser.add_argument("-f", "--values", action="append", default=[], help="values file, relative to the chart")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "down":
        engine.remove_labelled()
        engine.remove_images(["shoal:rehearsal"])
        return 0
    rehearsal = Rehearsal(base_image=args.base_image, values=tuple(args.values))
    rehearsal.build()
    rehearsal.render()
    rehearsal.up()
    rehearsal.wait_serving()
    print(json.dumps(rehearsal.report, indent=2, sort_keys=True))
    peers = rehearsal.of("peer")
    print(f"\nup. try:\n  docker exec {peers[0].pod} shoal status\n  python -m tools.rehearsal down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
