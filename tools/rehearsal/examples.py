"""examples/sidecar/deployment.yaml from snippet.yaml: rendered through a parent chart that depends on ours.

`python -m tools.rehearsal.examples` rewrites it; tests/chart/test_sidecar.py checks it is up to date.
"""

from __future__ import annotations

import logging
import sys

from tools.rehearsal.chart import ROOT, render_parent

logger = logging.getLogger(__name__)

SIDECAR = ROOT / "examples" / "sidecar"
PARENT_VALUES = "shoal:\n  tests:\n    enabled: false\n"
HEADER = """\
# A Deployment whose pods each carry a Shoal peer as a native sidecar (Kubernetes >= 1.29): the peer starts first,
# the fetch init container asks it for the file (peer to peer, from the release's peers and the other replicas),
# the app starts with the file in /shared/files, and the sidecar keeps serving it to other pods until the pod ends.
#
#   kubectl apply -f examples/sidecar/deployment.yaml   # after replacing FILE_ID (`shoal put` prints it)
#
# Generated from snippet.yaml with the chart's shoal.sidecar and shoal.sidecar.fetch templates
# (python -m tools.rehearsal.examples; tests/chart/test_sidecar.py checks they agree). Assumes a release named
# shoal in namespace shoal and the image shoal:0.1.0.
"""


def sidecar_deployment() -> str:
    """What deployment.yaml should hold: snippet.yaml rendered, helm's `# Source:` line dropped."""
    out = render_parent({"deployment.yaml": (SIDECAR / "snippet.yaml").read_text()}, PARENT_VALUES)
    (doc,) = [d for d in out.split("\n---\n") if "\n  name: model-server\n" in d]
    body = doc[doc.index("apiVersion:") :].strip()  # from the object on: no `# Source:`, no snippet header
    return HEADER + body + "\n"


def main() -> int:
    """Rewrite examples/sidecar/deployment.yaml."""
    (SIDECAR / "deployment.yaml").write_text(sidecar_deployment())
    return 0


if __name__ == "__main__":
    sys.exit(main())
