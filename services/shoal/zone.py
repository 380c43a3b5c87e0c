"""Which topology zone this peer is in: SHOAL_ZONE, else its Node's topology.kubernetes.io/zone label."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from typing import Any

from shoal.v1 import common_pb2

logger = logging.getLogger(__name__)

ZONE_LABEL = "topology.kubernetes.io/zone"
LEGACY_ZONE_LABEL = "failure-domain.beta.kubernetes.io/zone"


def zone_of(labels: dict[str, str] | None) -> str:
    """The zone named by a Node's labels ('' when it has none)."""
    labels = labels or {}
    return labels.get(ZONE_LABEL) or labels.get(LEGACY_ZONE_LABEL) or ""


def node_zone(node_name: str, api: Any = None) -> str:
    """Read the Node object with the kubernetes client (in-cluster config unless `api` is given)."""
    from kubernetes import client, config  # imported lazily: only pods in a cluster need it

    if api is None:
        config.load_incluster_config()
        api = client.CoreV1Api()
    node = api.read_node(node_name, _request_timeout=5)
    return zone_of(node.metadata.labels)


def detect_zone(configured: str) -> str:
    """The configured zone, else the Node's label when running in a cluster with SHOAL_NODE_NAME set."""
    if configured:
        return configured
    node_name = os.environ.get("SHOAL_NODE_NAME", "")
    if not node_name or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return ""
    try:
        zone = node_zone(node_name)
    except Exception as err:  # any client, RBAC or network failure: run zone-less, say why
        logger.warning("cannot read zone of node %s: %s; running without a zone", node_name, err)
        return ""
    logger.info("zone %r from node %s", zone, node_name)
    return zone


def prefer_zone(
    peers: Sequence[common_pb2.PeerInfo], zone: str, rng: random.Random | None = None
) -> list[common_pb2.PeerInfo]:
    """Same-zone peers first (cross-zone traffic costs money on EKS), random order within each group."""
    shuffled = list(peers)
    (rng or random).shuffle(shuffled)
    if zone:
        shuffled.sort(key=lambda peer: peer.zone != zone)
    return shuffled
