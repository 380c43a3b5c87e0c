"""S3 origins via aiobotocore: the standard AWS credential chain (env, config, web identity/IRSA) and If-Match."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import UNSIGNED
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, ReadTimeoutError

from shoal.origins.base import Origin, OriginFile, OriginOptions, check_range
from shoal.origins.errors import OriginChanged, OriginError, OriginProtocolError, OriginUnavailable
from shoal.origins.retry import with_retries
from shoal.origins.transport import status_error

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

logger = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_CHANGED_CODES = frozenset({"PreconditionFailed", "412"})
# Botocore's own transport errors: resets, refused connections, timeouts; our RetryPolicy owns the retrying.
_TRANSIENT = (ConnectionError, HTTPClientError, ReadTimeoutError, asyncio.TimeoutError)


class S3Origin(Origin):
    """One object, s3://bucket/key; an endpoint (S3-compatible store) and region come from the options."""

    scheme = "s3"

    def __init__(self, bucket: str, key: str, options: OriginOptions) -> None:
        self.bucket = bucket
        self.key = key
        self.display_url = f"s3://{bucket}/{key}"
        self.options = options
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None
        self._lock = asyncio.Lock()

    async def stat(self) -> OriginFile:
        async def once() -> OriginFile:
            client = await self._s3()
            head = await self._call("stat", client.head_object(Bucket=self.bucket, Key=self.key))
            etag = head.get("ETag", "")
            if not etag:
                raise OriginProtocolError(self.display_url, "stat: the object has no ETag")
            return OriginFile(self.display_url, int(head["ContentLength"]), etag, self.options.expected_digest)

        return await with_retries(once, self.options.retry, what=self.display_url)

    async def read_range(self, offset: int, length: int, validator: str) -> bytes:
        """A GET with Range and If-Match: S3 answers 412 rather than another version's bytes."""
        check_range(offset, length)
        if not validator:
            raise ValueError("S3 reads need the ETag that stat() returned")

        async def once() -> bytes:
            client = await self._s3()
            reply = await self._call(
                "read",
                client.get_object(
                    Bucket=self.bucket, Key=self.key, Range=f"bytes={offset}-{offset + length - 1}", IfMatch=validator
                ),
            )
            got = reply.get("ETag", "")
            if validator and got and got != validator:
                raise OriginChanged(self.display_url, f"read: ETag {got} is not {validator}")
            async with reply["Body"] as stream:
                body = await self._call("read", stream.read())
            if len(body) != length:
                raise OriginUnavailable(self.display_url, f"read: short body ({len(body)} of {length} bytes)")
            return bytes(body)

        return await with_retries(once, self.options.retry, what=self.display_url)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def _s3(self) -> S3Client:
        """The client, made once: signed if the AWS chain finds credentials, anonymous (public bucket) if not."""
        async with self._lock:
            if self._client is None:
                session = get_session()
                credentials = await session.get_credentials()
                retries: Any = {"max_attempts": 1, "mode": "standard"}
                config = AioConfig(
                    signature_version=None if credentials is not None else UNSIGNED,
                    connect_timeout=self.options.connect_timeout,
                    read_timeout=self.options.read_timeout,
                    retries=retries,
                    s3={"addressing_style": "path" if self.options.s3_endpoint else "auto"},
                )
                if credentials is None:
                    logger.info("%s: no AWS credentials found; reading anonymously", self.display_url)
                client = session.create_client(
                    "s3",
                    region_name=self.options.s3_region or session.get_config_variable("region") or DEFAULT_REGION,
                    endpoint_url=self.options.s3_endpoint,
                    config=config,
                )
                self._client = await self._stack.enter_async_context(client)
            assert self._client is not None
            return self._client

    async def _call(self, what: str, call: Any) -> Any:
        """Await one botocore call, mapping its errors to ours once."""
        try:
            return await call
        except ClientError as err:
            raise self._client_error(what, err) from err
        except _TRANSIENT as err:
            raise OriginUnavailable(self.display_url, f"{what}: connection failed ({type(err).__name__})") from err
        except BotoCoreError as err:
            raise OriginProtocolError(self.display_url, f"{what}: {type(err).__name__}") from err

    def _client_error(self, what: str, err: ClientError) -> OriginError:
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)) or None
        if code in _CHANGED_CODES:
            return OriginChanged(self.display_url, f"{what}: the object changed at the origin", status)
        if code in _NOT_FOUND_CODES:
            return status_error(status or 404, self.display_url, what)
        if status is None:
            return OriginProtocolError(self.display_url, f"{what}: {code or 'error'}")
        return status_error(status, self.display_url, what)
