"""The asyncio client (:class:`AsyncClient`) over a pooled ``httpx.AsyncClient``:
the methods of :class:`gateway_client.Client`, as coroutines."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, List, Mapping, Optional

import httpx

from . import _ops as ops
from . import models as m
from .client import DEFAULT_RETRIES, DEFAULT_TIMEOUT, POOL_LIMITS, TimeoutArg, _check_retries, _headers, _http_timeout
from .errors import ApiError, GatewayError

__all__ = ["AsyncClient"]


class AsyncClient:
    """Like :class:`gateway_client.Client`, every API method a coroutine.

    ``transport`` is an ``httpx.AsyncBaseTransport``. Use ``async with`` or
    ``await client.aclose()`` (``close`` is an alias).
    """

    def __init__(
        self,
        url: str,
        api_key: Optional[str] = None,
        *,
        timeout: TimeoutArg = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        self.url = ops.check_base_url(url)
        self.retries = _check_retries(retries)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=_headers(api_key),
            timeout=_http_timeout(timeout),
            transport=transport,
            follow_redirects=False,
            limits=POOL_LIMITS,
        )

    # --- plumbing -------------------------------------------------------

    async def _call(self, call: "ops.Call[ops.T]") -> "ops.T":
        attempt = 0
        kw = ops.request_kwargs(call)
        while True:
            try:
                resp = await self._http.request(call.method, call.path, **kw)
            except httpx.RequestError as e:
                failure, retryable = ops.transport_failure(call, self.url, e)
                err: GatewayError = failure
                cause: Optional[BaseException] = e
            else:
                try:
                    return ops.outcome(call, resp)
                except ApiError as e:
                    err, retryable, cause = e, ops.retry_answer(call, e), None
            if retryable and attempt < self.retries:
                await asyncio.sleep(ops.backoff(attempt))
                attempt += 1
                continue
            raise ops.with_attempts(err, attempt + 1) from cause

    async def request(
        self, method: str, path: str, *, json: Any = None, params: Optional[Mapping[str, Any]] = None
    ) -> Any:
        """Any API request; see :meth:`gateway_client.Client.request`."""
        return await self._call(ops.raw(method, path, json, params))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def close(self) -> None:
        """Alias of :meth:`aclose`."""
        await self.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r})"

    # --- publishing and sending ------------------------------------------

    async def publish(self, channel: str, data: Any, *, exclude: Optional[str] = None) -> m.PublishResult:
        """See :meth:`gateway_client.Client.publish`."""
        return await self._call(ops.publish(channel, data, exclude))

    async def broadcast(self, data: Any) -> None:
        """See :meth:`gateway_client.Client.broadcast`."""
        await self._call(ops.broadcast(data))

    async def send_user(self, user: str, data: Any) -> None:
        """See :meth:`gateway_client.Client.send_user`."""
        await self._call(ops.send_user(user, data))

    async def send_connection(self, conn: str, data: Any) -> None:
        """See :meth:`gateway_client.Client.send_connection`."""
        await self._call(ops.send_connection(conn, data))

    async def disconnect_user(self, user: str, *, code: Optional[int] = None, reason: Optional[str] = None) -> None:
        """See :meth:`gateway_client.Client.disconnect_user`."""
        await self._call(ops.disconnect_user(user, code, reason))

    async def disconnect_connection(
        self, conn: str, *, code: Optional[int] = None, reason: Optional[str] = None
    ) -> None:
        """See :meth:`gateway_client.Client.disconnect_connection`."""
        await self._call(ops.disconnect_connection(conn, code, reason))

    # --- server-side subscriptions ---------------------------------------

    async def subscribe_user(self, user: str, channel: str) -> None:
        """See :meth:`gateway_client.Client.subscribe_user`."""
        await self._call(ops.subscription("users", user, channel, True))

    async def unsubscribe_user(self, user: str, channel: str) -> None:
        """See :meth:`gateway_client.Client.unsubscribe_user`."""
        await self._call(ops.subscription("users", user, channel, False))

    async def subscribe_connection(self, conn: str, channel: str) -> None:
        """See :meth:`gateway_client.Client.subscribe_connection`."""
        await self._call(ops.subscription("connections", conn, channel, True))

    async def unsubscribe_connection(self, conn: str, channel: str) -> None:
        """See :meth:`gateway_client.Client.unsubscribe_connection`."""
        await self._call(ops.subscription("connections", conn, channel, False))

    # --- reading state ---------------------------------------------------

    async def presence(self, channel: str) -> m.Presence:
        """See :meth:`gateway_client.Client.presence`."""
        return await self._call(ops.presence(channel))

    async def history(
        self, channel: str, *, since: Optional[int] = None, limit: Optional[int] = None
    ) -> m.History:
        """See :meth:`gateway_client.Client.history`."""
        return await self._call(ops.history(channel, since, limit))

    async def user_status(self, user: str) -> m.UserStatus:
        """See :meth:`gateway_client.Client.user_status`."""
        return await self._call(ops.user_status(user))

    async def nodes(self) -> List[m.NodeInfo]:
        """See :meth:`gateway_client.Client.nodes`."""
        return await self._call(ops.nodes())

    async def channel(self, channel: str) -> m.ChannelInfo:
        """See :meth:`gateway_client.Client.channel`."""
        return await self._call(ops.channel(channel))

    async def channels(
        self, prefix: Optional[str] = None, limit: Optional[int] = None, cursor: Optional[str] = None
    ) -> m.ChannelPage:
        """See :meth:`gateway_client.Client.channels`."""
        return await self._call(ops.channels(prefix, limit, cursor))

    async def iter_channels(
        self, prefix: Optional[str] = None, *, page_size: Optional[int] = None
    ) -> AsyncIterator[m.ChannelEntry]:
        """See :meth:`gateway_client.Client.iter_channels` (``async for``)."""
        cursor: Optional[str] = None
        while True:
            page = await self.channels(prefix, page_size, cursor)
            for entry in page.channels:
                yield entry
            if page.next_cursor is None or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    async def ready(self) -> bool:
        """See :meth:`gateway_client.Client.ready`."""
        try:
            return await self._call(ops.readyz())
        except GatewayError as e:
            if getattr(e, "status", None) == 503:
                return False
            raise

    # --- task logs -------------------------------------------------------

    async def task_log(
        self,
        task_id: str,
        level: str,
        message: str,
        *,
        progress: Optional[float] = None,
        finished: bool = False,
        channel_prefix: str = "task:",
    ) -> m.PublishResult:
        """Publish one task log record (see :func:`gateway_client.task_log`)."""
        from .tasklog import record

        channel, data = record(task_id, level, message, progress, finished, channel_prefix)
        return await self.publish(channel, data)
