"""The standard grpc.health.v1 service: SERVING once ready, NOT_SERVING while draining."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shoal import net

logger = logging.getLogger(__name__)


class Health:
    """Owns one process's health servicer and flips every listed service together."""

    def __init__(self, services: list[str]) -> None:
        self._servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._services = ["", *services]

    def attach(self, server: grpc.aio.Server) -> None:
        """Register the health service on a server."""
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def serve_plaintext(self, address: str) -> grpc.aio.Server:
        """Serve only this health service, without TLS, on its own address (probes of a TLS process)."""
        server = grpc.aio.server(options=net.SERVER_OPTIONS)
        self.attach(server)
        port = net.bind(server, address, "health address")
        await server.start()
        logger.info("plaintext health service on %s", address.rsplit(":", 1)[0] + f":{port}")
        return server

    async def serving(self) -> None:
        """Report SERVING for the process and each named service."""
        for name in self._services:
            await self._servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def draining(self) -> None:
        """Report NOT_SERVING (we are shutting down)."""
        for name in self._services:
            await self._servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
