"""A grpc.aio server interceptor counting requests by method and status code, and timing them.

Names and labels follow go-grpc-prometheus (grpc_type, grpc_service, grpc_method, grpc_code) under the shoal_
prefix. Label values come only from methods registered on the server, so a client cannot grow them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

logger = logging.getLogger(__name__)

# Seconds: from sub-millisecond tracker calls to multi-minute streamed downloads (control Get).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
UNKNOWN = "unknown"

Behavior = Callable[..., Any]


def split_method(full: str) -> tuple[str, str]:
    """'/shoal.v1.Peer/GetChunk' -> ('shoal.v1.Peer', 'GetChunk')."""
    service, _, method = full.lstrip("/").rpartition("/")
    return (service or UNKNOWN), (method or UNKNOWN)


def rpc_type(handler: grpc.RpcMethodHandler) -> str:
    """The go-grpc-prometheus name of a handler's streaming shape."""
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def status_of(error: BaseException | None, context: grpc.aio.ServicerContext) -> str:
    """The status the client sees: what the handler set or aborted with, else OK, CANCELLED or UNKNOWN."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return grpc.StatusCode.OK.name
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED.name
    return grpc.StatusCode.UNKNOWN.name


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts started and handled calls and observes their latency, on the given registry."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "shoal_grpc_server_started_total", "RPCs started on the server.", labels, registry=registry
        )
        self.handled = Counter(
            "shoal_grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.latency = Histogram(
            "shoal_grpc_server_handling_seconds",
            "Time from the call reaching the handler to its last response (whole stream for streaming calls).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the method's handler; unregistered methods are counted under 'unknown'."""
        handler = await continuation(handler_call_details)
        if handler is None:
            self.started.labels(UNKNOWN, UNKNOWN, UNKNOWN).inc()
            self.handled.labels(UNKNOWN, UNKNOWN, UNKNOWN, grpc.StatusCode.UNIMPLEMENTED.name).inc()
            return handler
        service, method = split_method(handler_call_details.method)
        kind = rpc_type(handler)
        behavior, rebuild = {
            "unary": (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
            "server_stream": (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
            "client_stream": (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
            "bidi_stream": (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
        }[kind]
        if behavior is None:
            return handler
        wrapped = self._wrap(behavior, (kind, service, method))
        return rebuild(wrapped, handler.request_deserializer, handler.response_serializer)

    def _done(self, labels: tuple[str, str, str], started: float, code: str) -> None:
        self.handled.labels(*labels, code).inc()
        self.latency.labels(*labels).observe(self._clock() - started)

    def _wrap(self, behavior: Behavior, labels: tuple[str, str, str]) -> Behavior:
        """The same behavior, counted and timed; generators stay generators so streaming keeps working."""
        if inspect.isasyncgenfunction(behavior) or inspect.isgeneratorfunction(behavior):

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                self.started.labels(*labels).inc()
                started = self._clock()
                error: BaseException | None = None
                try:
                    responses = behavior(request, context)
                    if inspect.isasyncgen(responses):
                        async for response in responses:
                            yield response
                    else:
                        for response in responses:
                            yield response
                except BaseException as err:
                    error = err
                    raise
                finally:
                    self._done(labels, started, status_of(error, context))

            return streaming

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.started.labels(*labels).inc()
            started = self._clock()
            error: BaseException | None = None
            try:
                reply = behavior(request, context)
                return (await reply) if inspect.isawaitable(reply) else reply
            except BaseException as err:
                error = err
                raise
            finally:
                self._done(labels, started, status_of(error, context))

        return unary
