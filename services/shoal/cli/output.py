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
    took = final.transfer_seconds if final.transfer_seconds > 0 else final.seconds  # an older daemon: whole time
    rate = received / took if took > 0 else 0.0
    peers = f"{sources.peers} peer" + ("" if sources.peers == 1 else "s")
    resumed = f", {sources.resumed_chunks} chunks resumed from disk" if sources.resumed_chunks else ""
    return (
        f"{output}: received {format_size(received)} from {peers} in {took:.2f}s "
        f"({format_rate(rate)}); {share:.0f}% from peers still downloading{resumed}"
    )


_METHODS = {
    control_pb2.PUT_METHOD_MOVE: "moved into the data dir",
    control_pb2.PUT_METHOD_REFLINK: "reflinked, no bytes copied; your file stays writable",
    control_pb2.PUT_METHOD_LINK: "hard-linked, no bytes copied; your file is now read-only",
    control_pb2.PUT_METHOD_COPY: "copied",
}
_STATES = {
    control_pb2.LOCAL_FILE_STATE_COMPLETE: "complete",
    control_pb2.LOCAL_FILE_STATE_DOWNLOADING: "downloading",
    control_pb2.LOCAL_FILE_STATE_PARTIAL: "partial",
    control_pb2.LOCAL_FILE_STATE_STOPPED: "stopped",
}


def put_line(reply: control_pb2.PutResponse, asked_name: str) -> str:
    """What `put` did: how the bytes got in, or under which name the content was already held."""
    size = f"{format_size(reply.file.size)}, {reply.chunks} chunks"
    if reply.held_as:
        if reply.added_name:
            return f"already held as {escape(reply.held_as)} ({size}); added the name {escape(asked_name)}"
        if reply.held_as != asked_name:  # the name was already one of its names
            return f"already held as {escape(reply.held_as)}, also named {escape(asked_name)} ({size}); nothing stored"
        return f"already held as {escape(reply.held_as)} ({size}); nothing stored"
    how = _METHODS.get(reply.method, "stored")
    return f"published {escape(reply.file.name)} ({size}): {how}"


def last_use(unix: float, now: float) -> str:
    """A last-use time as a listing shows it: '42s ago', '5m ago', '3h ago', '2d ago', a date past a week."""
    if unix <= 0:
        return "-"
    ago = max(0.0, now - unix)
    if ago >= 7 * 86400:
        return time.strftime("%Y-%m-%d", time.localtime(unix))
    for span, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if ago >= span:
            return f"{ago // span:.0f}{unit} ago"
    return f"{ago:.0f}s ago"


def ls_lines(reply: control_pb2.ListResponse, now: float | None = None) -> list[str]:
    """`ls`: a header, then one row per file: id, size held/total, pinned, last use, state, names."""
    now = time.time() if now is None else now
    rows = [f"{'ID':<64}  {'SIZE':>10}  {'PIN':<3}  {'LAST USE':<10}  {'STATE':<11}  NAME"]
    for local in reply.files:
        state = _STATES.get(local.state, "complete" if local.complete else "partial")
        if not local.complete:
            state += f" {local.chunks_done}/{local.chunks_total}"
        names = ", ".join(escape(name) for name in [local.file.name, *local.aliases])
        if local.url:
            names += f"  {escape(local.url)}"
        pin = "yes" if local.pinned else "-"
        rows.append(
            f"{local.file.file_id}  {format_size(local.file.size):>10}  {pin:<3}  "
            f"{last_use(local.last_used_unix, now):<10}  {state:<11}  {names}"
        )
    return rows


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
