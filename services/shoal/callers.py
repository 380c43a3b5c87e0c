"""The control API's caller credentials, CLI side and daemon side: the token file and the caller ticket.

Kept apart from peer.access so the CLI imports nothing of the daemon.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

logger = logging.getLogger(__name__)

TOKEN_HEADER = "shoal-control-token"
TICKET_HEADER = "shoal-caller-ticket"
MAX_TOKEN_BYTES = 4096


class AccessError(Exception):
    """A control setting cannot be used safely (the daemon refuses to start)."""


def read_token(path: Path) -> bytes:
    """The control token: the file must be a regular file no other user can read (0600 or stricter)."""
    try:
        st = path.stat()
        if not path.is_file():
            raise AccessError(f"control token file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise AccessError(
                f"control token file {path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it"
            )
        token = path.read_bytes().strip()
    except OSError as err:
        raise AccessError(f"cannot read control token file {path}: {err.strerror or err}") from err
    if not token or len(token) > MAX_TOKEN_BYTES:
        raise AccessError(f"control token file {path} is empty or too long")
    return token


def fetch_ticket(control_socket: Path, timeout: float = 5.0) -> str:
    """CLI side: a ticket from the daemon's .cred socket, '' when there is none (an older daemon)."""
    path = control_socket.with_name(control_socket.name + ".cred")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            return sock.recv(256).decode("ascii", "replace").strip()
    except OSError:
        return ""
