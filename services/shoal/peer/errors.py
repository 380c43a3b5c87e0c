"""What can go wrong between two peers, as types: the transport maps gRPC codes to these once."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class LinkError(Exception):
    """A call to another peer failed; the subclass says how, the message names the cause."""


class Busy(LinkError):
    """Every upload slot of the peer is taken: ask again shortly."""


class NotHeld(LinkError):
    """The peer does not hold the file or the chunk (any more)."""


class Lied(LinkError):
    """The reply breaks the protocol: a bad manifest, a refused valid request, an oversized or malformed chunk."""


class Unreachable(LinkError):
    """Down, hung, shutting down or failing: nothing says it lied, it just did not deliver."""


class Draining(LinkError):
    """This peer is shutting down and serves no more chunks."""


class Corrupt(LinkError):
    """A held file changed on disk; it has been dropped from this peer."""


class TrackersUnavailable(Exception):
    """No tracker replica answered."""


class DownloadError(Exception):
    """A download cannot finish; the message is for the user."""


class NoHolders(DownloadError):
    """No live peer holds (the rest of) the file."""
