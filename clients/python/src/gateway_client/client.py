"""The synchronous client (:class:`Client`) over a pooled ``httpx.Client``."""

from __future__ import annotations

import time
from typing import Any, Iterator, List, Mapping, Optional, Union

import httpx

from . import _ops as ops
from . import models as m
from .errors import ApiError, GatewayError

__all__ = ["Client", "DEFAULT_TIMEOUT", "DEFAULT_RETRIES"]

#: Seconds per request (connect, each read and write), by default.
DEFAULT_TIMEOUT = 5.0
#: Retries of a retry-safe request, by default.
DEFAULT_RETRIES = 2

TimeoutArg = Union[float, httpx.Timeout, None]

#: Idle pooled connections are dropped after 5 s, before the gateway closes
#: them (its keep-alive idle limit is ``header_timeout_ms``, 10 s by
#: default), so a request rarely meets a connection closing under it.
POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


def _http_timeout(timeout: TimeoutArg) -> httpx.Timeout:
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout must be a positive number of seconds (or None), not {timeout!r}")
    return httpx.Timeout(timeout)


def _check_retries(retries: Any) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, not {retries!r}")
    return retries


def _headers(api_key: Optional[str]) -> Mapping[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "gateway-client-python"}
    if api_key is not None:
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key must be a non-empty str (or None for a gateway without a key)")
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class Client:
    """A client of the gateway's HTTP API v1.

    ``url`` is the base URL of any node (``http://127.0.0.1:8080``); with a
    cluster, any node (or the load balancer) answers for the whole cluster.
    ``api_key`` is sent as ``Authorization: Bearer <key>``. ``timeout``
    bounds each request (seconds; an ``httpx.Timeout`` for finer control).
    ``retries``: how often a retry-safe request is repeated after a
    connection failure or a 429/502/503/504 (GETs; POSTs only when the
    request was provably not sent), with exponential backoff and jitter.
    ``transport``: an ``httpx.BaseTransport`` (tests, proxies, UDS).

    Thread-safe (one connection pool); use as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        api_key: Optional[str] = None,
        *,
        timeout: TimeoutArg = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self.url = ops.check_base_url(url)
        self.retries = _check_retries(retries)
        self._http = httpx.Client(
            base_url=self.url,
            headers=_headers(api_key),
            timeout=_http_timeout(timeout),
            transport=transport,
            follow_redirects=False,
            limits=POOL_LIMITS,
        )

    # --- plumbing -------------------------------------------------------

    def _call(self, call: "ops.Call[ops.T]") -> "ops.T":
        attempt = 0
        kw = ops.request_kwargs(call)
        while True:
            try:
                resp = self._http.request(call.method, call.path, **kw)
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
                time.sleep(ops.backoff(attempt))
                attempt += 1
                continue
            raise ops.with_attempts(err, attempt + 1) from cause

    def request(
        self, method: str, path: str, *, json: Any = None, params: Optional[Mapping[str, Any]] = None
    ) -> Any:
        """Any API request (``path`` like ``/api/nodes``); returns the parsed
        JSON answer, raises like the other methods. For routes this SDK does
        not know yet."""
        return self._call(ops.raw(method, path, json, params))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- publishing and sending ------------------------------------------

    def publish(self, channel: str, data: Any, *, exclude: Optional[str] = None) -> m.PublishResult:
        """Publish ``data`` (any JSON value) to ``channel``; ``exclude``: one
        connection id that must not receive it. Returns the offset (``None``
        without history). Never retried once sent (no idempotency key in
        the API): a :class:`GatewayTimeout` or :class:`Unavailable` means
        "maybe published"; put an id in ``data`` to deduplicate."""
        return self._call(ops.publish(channel, data, exclude))

    def broadcast(self, data: Any) -> None:
        """Send ``data`` to every connection in the cluster."""
        self._call(ops.broadcast(data))

    def send_user(self, user: str, data: Any) -> None:
        """Send ``data`` (a ``direct`` push) to every connection of ``user``.
        Not an error when the user is offline (at-most-once)."""
        self._call(ops.send_user(user, data))

    def send_connection(self, conn: str, data: Any) -> None:
        """Send ``data`` (a ``direct`` push) to one connection."""
        self._call(ops.send_connection(conn, data))

    def disconnect_user(self, user: str, *, code: Optional[int] = None, reason: Optional[str] = None) -> None:
        """Close every connection of ``user`` (close ``code`` 4000-4999,
        default 4004; ``reason`` at most 120 bytes)."""
        self._call(ops.disconnect_user(user, code, reason))

    def disconnect_connection(self, conn: str, *, code: Optional[int] = None, reason: Optional[str] = None) -> None:
        """Close one connection (``code``, ``reason`` as for :meth:`disconnect_user`)."""
        self._call(ops.disconnect_connection(conn, code, reason))

    # --- server-side subscriptions ---------------------------------------

    def subscribe_user(self, user: str, channel: str) -> None:
        """Subscribe every open connection of ``user`` to ``channel``."""
        self._call(ops.subscription("users", user, channel, True))

    def unsubscribe_user(self, user: str, channel: str) -> None:
        """Unsubscribe every open connection of ``user`` from ``channel``."""
        self._call(ops.subscription("users", user, channel, False))

    def subscribe_connection(self, conn: str, channel: str) -> None:
        """Subscribe one connection to ``channel``."""
        self._call(ops.subscription("connections", conn, channel, True))

    def unsubscribe_connection(self, conn: str, channel: str) -> None:
        """Unsubscribe one connection from ``channel``."""
        self._call(ops.subscription("connections", conn, channel, False))

    # --- reading state ---------------------------------------------------

    def presence(self, channel: str) -> m.Presence:
        """Every member (connection) of a presence-enabled channel."""
        return self._call(ops.presence(channel))

    def history(self, channel: str, *, since: Optional[int] = None, limit: Optional[int] = None) -> m.History:
        """Retained publications with offset above ``since`` (default 0: all),
        at most ``limit`` (default and cap: the namespace's history size)."""
        return self._call(ops.history(channel, since, limit))

    def user_status(self, user: str) -> m.UserStatus:
        """Whether ``user`` is online anywhere in the cluster, and where."""
        return self._call(ops.user_status(user))

    def nodes(self) -> List[m.NodeInfo]:
        """The live nodes of the cluster."""
        return self._call(ops.nodes())

    def channel(self, channel: str) -> m.ChannelInfo:
        """Cluster-wide subscribers, presence and history summary of a channel."""
        return self._call(ops.channel(channel))

    def channels(
        self, prefix: Optional[str] = None, limit: Optional[int] = None, cursor: Optional[str] = None
    ) -> m.ChannelPage:
        """One page of the channels with subscribers, by name (``limit`` 1-1000,
        default 100); pass ``next_cursor`` as ``cursor`` for the next page."""
        return self._call(ops.channels(prefix, limit, cursor))

    def iter_channels(
        self, prefix: Optional[str] = None, *, page_size: Optional[int] = None
    ) -> Iterator[m.ChannelEntry]:
        """Every channel with subscribers whose name starts with ``prefix``,
        following the cursors page by page."""
        cursor: Optional[str] = None
        while True:
            page = self.channels(prefix, page_size, cursor)
            yield from page.channels
            if page.next_cursor is None or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    def ready(self) -> bool:
        """``GET /readyz``: True when the node is ready, False while it drains
        or its backend is down. Raises :class:`GatewayUnavailable` when it
        cannot be reached."""
        try:
            return self._call(ops.readyz())
        except GatewayError as e:
            if getattr(e, "status", None) == 503:
                return False
            raise

    # --- task logs -------------------------------------------------------

    def task_log(
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
        return self.publish(channel, data)
