"""What the client commands print: JSON renderings, the `get` summary and its progress bar."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from google.protobuf.message import Message

from shoal.units import format_rate, format_size
from shoal.v1 import control_pb2

logger = logging.getLogger(__name__)


def escape(text: str) -> str:
    """Text from the network made safe for a terminal: control characters shown as escapes, never sent raw."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def plain(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data with integers kept as numbers and bytes as hex."""
    data: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        repeated = field.is_repeated

        def one(item: Any, field: Any = field) -> Any:
            if field.message_type is not None:
                return plain(item)
            if field.type == field.TYPE_BYTES:
                return bytes(item).hex()
            return item

        data[field.name] = [one(v) for v in value] if repeated else one(value)
    return data


def print_json(message: Message | dict[str, Any]) -> None:
    """One reply as an indented JSON document on stdout."""
    data = plain(message) if isinstance(message, Message) else message
    print(json.dumps(data, indent=2, sort_keys=True))


def print_json_line(data: dict[str, Any]) -> None:
    """One object on one line, flushed at once (a stream a reader consumes as it comes)."""
    print(json.dumps(data, sort_keys=True, separators=(",", ":")), flush=True)


def summary_data(final: control_pb2.GetProgress, output: Path) -> dict[str, Any]:
    """The last object of `get --json`: the final progress message plus where the file went."""
    data = plain(final)
    data["output"] = str(output)
    return data


def received_bytes(final: control_pb2.GetProgress) -> int:
    """Bytes this download took from other peers (not what was already on disk)."""
    return int(final.sources.from_complete_bytes + final.sources.from_partial_bytes)


def summary_line(final: control_pb2.GetProgress, output: Path) -> str:
    """One line a person reads after `get`: what moved, from how many peers, how fast."""
    sources = final.sources
    received = received_bytes(final)
    if received == 0 and sources.peers == 0 and final.total_bytes > 0:
        return f"{escape(final.file.name) or final.file.file_id} already held; exported to {output}"
    share = 100.0 * sources.from_partial_bytes / received if received else 0.0
    rate = received / final.seconds if final.seconds > 0 else 0.0
    peers = f"{sources.peers} peer" + ("" if sources.peers == 1 else "s")
    resumed = f", {sources.resumed_chunks} chunks resumed from disk" if sources.resumed_chunks else ""
    return (
        f"{output}: received {format_size(received)} from {peers} in {final.seconds:.2f}s "
        f"({format_rate(rate)}); {share:.0f}% from peers still downloading{resumed}"
    )


class ProgressBar:
    """A one-line bar on a terminal, in the same binary units as the summary; redrawn at most 10 times a second."""

    def __init__(
        self, label: str, total: int, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._label = label
        self._total = total
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._started = clock()
        self._drawn_at = -1.0
        self._open = True

    def update(self, done: int, *, force: bool = False) -> None:
        """Show `done` bytes of the total."""
        now = self._clock()
        if not self._open or (not force and now - self._drawn_at < 0.1):
            return
        self._drawn_at = now
        self._stream.write("\r" + self.render(done, now) + "\x1b[K")
        self._stream.flush()

    def render(self, done: int, now: float) -> str:
        """The bar's text for `done` bytes at time `now`, fitted to the terminal's width."""
        elapsed = max(now - self._started, 1e-9)
        fraction = done / self._total if self._total else 1.0
        rate = done / elapsed
        left = (self._total - done) / rate if rate > 0 else 0.0
        figures = (
            f" {fraction * 100:3.0f}% {format_size(done)}/{format_size(self._total)} {format_rate(rate)} "
            f"ETA {left:.0f}s"
        )
        width = shutil.get_terminal_size((80, 20)).columns - 1
        label = self._label[: max(8, width // 4)]
        cells = max(width - len(label) - len(figures) - 3, 0)
        filled = int(cells * min(fraction, 1.0))
        return f"{label} |{'#' * filled}{' ' * (cells - filled)}|{figures}"

    def close(self) -> None:
        """End the bar's line so whatever comes next starts on a clean one."""
        if self._open:
            self._open = False
            self._stream.write("\n")
            self._stream.flush()
