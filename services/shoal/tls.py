"""Mutual TLS for every gRPC listener and channel, with certificate files re-read when they change.

Peers and tracker replicas are dialled by IP:port, so a server's certificate is checked against a fixed
role name (TRACKER_NAME, PEER_NAME) instead of the address: any certificate the CA signed for that role is
accepted. docs/security.md says what that proves and what it does not.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from shoal import net
from shoal.config import TlsFiles

logger = logging.getLogger(__name__)

# The DNS names a tracker's and a peer's certificate carry (subjectAltName), checked by whoever dials them.
TRACKER_NAME = "shoal-tracker"
PEER_NAME = "shoal-peer"
# How often an outbound side looks at the files' metadata; servers look on every handshake.
RECHECK_SECONDS = 1.0

_Stamp = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class _Pem:
    """One reading of the three files."""

    cert: bytes
    key: bytes
    ca: bytes
    stamp: _Stamp


def _stamp(files: TlsFiles) -> _Stamp:
    """What changes when cert-manager swaps a mounted Secret (its ..data symlink) or a file is rewritten."""
    stamps = []
    for path in (files.cert, files.key, files.ca):
        st = os.stat(path)
        stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def _read(files: TlsFiles) -> _Pem:
    stamp = _stamp(files)
    return _Pem(files.cert.read_bytes(), files.key.read_bytes(), files.ca.read_bytes(), stamp)


class Transport:
    """How one process listens and dials: mutual TLS from files when `files` is set, else plaintext."""

    def __init__(
        self, files: TlsFiles | None, clock: Callable[[], float] = time.monotonic, recheck: float = RECHECK_SECONDS
    ) -> None:
        self.files = files
        self._clock = clock
        self._recheck = recheck
        self._lock = threading.Lock()
        self._pem = _read(files) if files is not None else None  # OSError here: a clear line at start
        self._checked = clock()
        self.generation = 0  # bumped each time the files are read anew
        self._channel_credentials = self._make_channel_credentials()

    @property
    def secure(self) -> bool:
        """True when every listener and channel uses mutual TLS."""
        return self.files is not None

    def warn_if_plaintext(self, what: str) -> None:
        """Say loudly, once at start, that traffic is neither encrypted nor authenticated."""
        if self.files is None:
            logger.warning(
                "%s runs WITHOUT TLS: gRPC traffic is plaintext and any client is accepted; "
                "set --tls-cert, --tls-key and --tls-ca outside a local demo",
                what,
            )
        else:
            logger.info("%s uses mutual TLS (cert %s, CA %s)", what, self.files.cert, self.files.ca)

    def _reload(self) -> bool:
        """Re-read the files if their metadata changed; True when they did. Keeps the old ones on an error."""
        assert self.files is not None and self._pem is not None
        with self._lock:
            try:
                if _stamp(self.files) == self._pem.stamp:
                    return False
                pem = _read(self.files)
            except OSError as err:
                logger.warning("cannot re-read TLS files, keeping the current ones: %s", err)
                return False
            self._pem = pem
            self.generation += 1
            self._channel_credentials = self._make_channel_credentials()
        logger.info("TLS files changed: certificate reloaded (generation %d)", self.generation)
        return True

    # ---- listening ------------------------------------------------------------------------------

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials requiring a client certificate from the CA, re-read on the first handshake after a change."""
        if self._pem is None:
            return None

        def config() -> grpc.ServerCertificateConfiguration:
            assert self._pem is not None
            pem = self._pem
            return grpc.ssl_server_certificate_configuration([(pem.key, pem.cert)], root_certificates=pem.ca)

        served = [self.generation]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC for every new handshake, on one of its threads: None keeps the current config.
            self._reload()
            if self.generation == served[0]:
                return None
            served[0] = self.generation
            return config()

        # grpc-stubs says the fetcher never returns None; gRPC's docs say None means "no change".
        return grpc.dynamic_ssl_server_credentials(
            config(),
            fetch,  # type: ignore[arg-type]
            require_client_authentication=True,
        )

    def bind(self, server: grpc.aio.Server, address: str, what: str = "") -> int:
        """Add a listening address, TLS when configured (net.bind's contract)."""
        return net.bind(server, address, what, credentials=self.server_credentials())

    # ---- dialling -------------------------------------------------------------------------------

    def _make_channel_credentials(self) -> grpc.ChannelCredentials | None:
        if self._pem is None:
            return None
        pem = self._pem
        return grpc.ssl_channel_credentials(root_certificates=pem.ca, private_key=pem.key, certificate_chain=pem.cert)

    def current(self) -> int:
        """The generation of the files, looked at again at most every `recheck` seconds."""
        if self.files is not None and self._clock() - self._checked >= self._recheck:
            self._checked = self._clock()
            self._reload()
        return self.generation

    def open_channel(
        self, address: str, server_name: str, max_receive: int = net.MAX_MESSAGE_BYTES, *, own_connection: bool = False
    ) -> grpc.aio.Channel:
        """A channel to `address` presenting our certificate and expecting one issued for `server_name`."""
        self.current()
        name = server_name if self.secure else None
        credentials = self._channel_credentials
        return net.open_channel(
            address, max_receive, credentials=credentials, server_name=name, own_connection=own_connection
        )


def proven_ips(context: grpc.aio.ServicerContext) -> frozenset[str]:
    """The IP addresses the caller's certificate names (subjectAltName IP entries); empty without TLS or without any.

    A role certificate shared by every peer names none and proves only that the CA admitted the caller; a
    per-pod certificate (cert-manager's csi-driver with the pod IP, say) also proves which address it may use."""
    found = context.auth_context().get("peer_ip") or []
    return frozenset(str(ipaddress.ip_address(ip.decode())) for ip in found)


def address_allowed(address: str, proven: frozenset[str]) -> bool:
    """May a caller whose certificate names `proven` IPs announce `address`? Anyone may when it names none."""
    if not proven:
        return True
    host, _ = net.split_host_port(address)
    try:
        return str(ipaddress.ip_address(host)) in proven
    except ValueError:  # a DNS name: not something an IP-bound certificate proves
        return False


def plaintext() -> Transport:
    """The transport of a process without TLS files (the local demo, most tests)."""
    return Transport(None)
