"""Sources in and out of one download: admitting them with their tasks, and dropping the dead, stalled and failing.

A mixin of swarm.Download; the rules themselves (pace, stall, strikes, cool-offs) are peer.sources'.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from shoal.peer.errors import LinkError
from shoal.peer.node import Node
from shoal.peer.picker import Picker
from shoal.peer.ports import Link, Links
from shoal.peer.sources import COOL_OFF_FAILING, COOL_OFF_STALLED, Source, Sources

logger = logging.getLogger(__name__)


@dataclass
class Session:
    """The tasks running against one admitted source."""

    link: Link
    exchange: asyncio.Task[None] | None = None
    fetches: dict[int, asyncio.Task[None]] = field(default_factory=dict)


class SourceSessions:
    """Which sources a download uses, and the exchange and fetch tasks running against each."""

    node: Node
    file_id: str
    _links: Links
    _sources: Sources
    _sessions: dict[str, Session]
    _picker: Picker | None
    _chunk_size: int
    _clock: Callable[[], float]

    @abstractmethod
    async def _exchange_loop(self, source: Source, link: Link) -> None: ...

    @abstractmethod
    def _notify(self) -> None: ...

    @abstractmethod
    def _spawn(self, coro: Coroutine[None, None, None]) -> None: ...

    def _admit(self) -> None:
        new, retire = self._sources.admit()
        if retire is not None:
            self._retire(retire)
        for source in new:
            session = self._sessions[source.key] = Session(self._links.link(source.key))
            session.exchange = asyncio.create_task(self._exchange_loop(source, session.link))

    def _stop(self, source: Source) -> None:
        """Cancel its tasks and take its chunks out of the picker's counts."""
        session = self._sessions.pop(source.key, None)
        if session is not None:
            if session.exchange is not None:
                session.exchange.cancel()
            for task in session.fetches.values():
                task.cancel()
        if self._picker is not None:
            self._picker.remove_source(source.key)

    def _retire(self, source: Source) -> None:
        self._stop(source)
        self._sources.remove(source)

    def _drop_dead(self, source: Source, cool_off: float) -> None:
        """Stop using it, and keep it out (but remembered) for `cool_off` seconds."""
        source.cool_off(cool_off)
        self._stop(source)
        self.node.forget(self.file_id, source.info.peer_id)
        self._notify()

    def _drop_stalled(self) -> None:
        """A source that hangs (no RST, e.g. SIGSTOP) or crawls: hand its in-flight chunks to others."""
        assert self._picker is not None
        for source in self._sources.stalled(self._chunk_size, self._picker.useful):
            quiet = self._clock() - source.last_activity
            logger.warning(
                "source %s sent nothing for %.0fs with %d requests in flight; switching",
                source.key,
                quiet,
                source.inflight,
            )
            self._drop_dead(source, COOL_OFF_STALLED)

    def _failed(self, source: Source, err: LinkError) -> None:
        if source.failed():
            logger.warning("source %s failing (%s); switching to other holders", source.key, err)
            self._drop_dead(source, COOL_OFF_FAILING)
            self._spawn(self._links.drop(source.key))
