"""Runs inside a lab namespace: for each tracker address read on stdin, print its view as one JSON line.

With --tls-cert/--tls-key/--tls-ca it dials over mutual TLS, as the lab's peers do; a line `plaintext ADDRESS`
dials without TLS whatever the flags (the suite's check that a TLS tracker refuses it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from faults.harness import tracker_view

from shoal.config import TlsFiles

logger = logging.getLogger(__name__)

PLAINTEXT = "plaintext "


def main() -> None:
    """Answer until stdin closes; `null` for a tracker that does not answer."""
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--tls-cert", "--tls-key", "--tls-ca"):
        parser.add_argument(flag, type=Path)
    args = parser.parse_args()
    files = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    for line in sys.stdin:
        address = line.strip()
        dial_with = files
        if address.startswith(PLAINTEXT):
            address, dial_with = address.removeprefix(PLAINTEXT), None
        view = tracker_view(address, dial_with, timeout=1.0)
        answer = None if view is None else {"peers": [list(p) for p in view.peers], "files": view.files}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
