"""The HTTP API v1 as data: one :class:`Call` per route, shared by the sync
and async clients, plus the retry policy and the mapping of answers and
transport failures to results and exceptions.

Invariant: only a :class:`Call` with ``idempotent=True`` (the GETs) is
retried after the request may have reached the gateway; a POST is retried
only when it provably was not sent (connect refused, connect or pool
timeout). The API has no idempotency key, so a publish that timed out is
never repeated behind the caller's back.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Mapping, Optional, Tuple, TypeVar
from urllib.parse import quote

import httpx

from .errors import ApiError, GatewayError, GatewayTimeout, GatewayUnavailable, error_from_response
from . import models as m

T = TypeVar("T")

#: Statuses a GET is retried on (the answer says "later", nothing was done).
RETRY_STATUSES = frozenset({429, 502, 503, 504})

#: First backoff pause and the longest one, in seconds.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request: where it goes, its body, and how to read the answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    body: Optional[bytes] = None
    params: Optional[Dict[str, str]] = None
    idempotent: bool = False
    #: False: a 2xx answer is success whatever its body (``/readyz``).
    expect_json: bool = True


def backoff(attempt: int) -> float:
    """Pause before retry ``attempt`` (0-based): exponential, capped, jittered
    uniformly in [d/2, d]."""
    d = min(BACKOFF_CAP, BACKOFF_BASE * (2**attempt))
    return random.uniform(d / 2, d)


def check_base_url(url: str) -> str:
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be the gateway's base URL, e.g. 'http://127.0.0.1:8080', not {url!r}")
    u = httpx.URL(url)
    if u.scheme not in ("http", "https") or not u.host:
        raise ValueError(
            f"url must be an http:// or https:// base URL of the gateway (e.g. 'http://127.0.0.1:8080'), not {url!r}"
        )
    return url.rstrip("/")


def _seg(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    return quote(value, safe="")


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


def encode(body: Mapping[str, Any], what: str) -> bytes:
    """The JSON body bytes; a clear error when ``data`` cannot be JSON."""
    try:
        return json.dumps(body, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as e:
        raise type(e)(f"{what}: the body must be JSON-serializable ({e})") from None


def _none(d: Any) -> None:
    m.empty_from_json(d)
    return None


def _post(path: str, body: Mapping[str, Any], parse: Callable[[Any], T], what: str) -> Call[T]:
    return Call("POST", path, parse, body=encode(body, what))


def publish(channel: str, data: Any, exclude: Optional[str]) -> Call[m.PublishResult]:
    body: Dict[str, Any] = {"channel": _str(channel, "channel"), "data": data}
    if exclude is not None:
        if not isinstance(exclude, str):
            raise TypeError(
                f"exclude must be one connection id (str) - the API excludes a single connection - "
                f"not {type(exclude).__name__}"
            )
        body["exclude"] = _str(exclude, "exclude")
    return _post("/api/publish", body, m.PublishResult.from_json, "publish")


def broadcast(data: Any) -> Call[None]:
    return _post("/api/broadcast", {"data": data}, _none, "broadcast")


def send_user(user: str, data: Any) -> Call[None]:
    return _post(f"/api/users/{_seg(user, 'user')}/send", {"data": data}, _none, "send_user")


def send_connection(conn: str, data: Any) -> Call[None]:
    return _post(f"/api/connections/{_seg(conn, 'conn')}/send", {"data": data}, _none, "send_connection")


def _close_body(code: Optional[int], reason: Optional[str]) -> Dict[str, Any]:
    body: Dict[str, Any] = {}
    if code is not None:
        body["code"] = _int(code, "code")
    if reason is not None:
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        body["reason"] = reason
    return body


def disconnect_user(user: str, code: Optional[int], reason: Optional[str]) -> Call[None]:
    return _post(f"/api/users/{_seg(user, 'user')}/disconnect", _close_body(code, reason), _none, "disconnect_user")


def disconnect_connection(conn: str, code: Optional[int], reason: Optional[str]) -> Call[None]:
    return _post(
        f"/api/connections/{_seg(conn, 'conn')}/disconnect", _close_body(code, reason), _none, "disconnect_connection"
    )


def subscription(kind: str, target: str, channel: str, subscribe: bool) -> Call[None]:
    what = "user" if kind == "users" else "conn"
    op = "subscribe" if subscribe else "unsubscribe"
    return _post(
        f"/api/{kind}/{_seg(target, what)}/{op}",
        {"channel": _str(channel, "channel")},
        _none,
        f"{op}_{'user' if kind == 'users' else 'connection'}",
    )


def presence(channel: str) -> Call[m.Presence]:
    return Call("GET", f"/api/channels/{_seg(channel, 'channel')}/presence", m.Presence.from_json, idempotent=True)


def history(channel: str, since: Optional[int], limit: Optional[int]) -> Call[m.History]:
    params: Dict[str, str] = {}
    if since is not None:
        if _int(since, "since") < 0:
            raise ValueError("since must be >= 0")
        params["since"] = str(since)
    if limit is not None:
        if _int(limit, "limit") < 0:
            raise ValueError("limit must be >= 0")
        params["limit"] = str(limit)
    return Call(
        "GET",
        f"/api/channels/{_seg(channel, 'channel')}/history",
        m.History.from_json,
        params=params or None,
        idempotent=True,
    )


def channel(channel: str) -> Call[m.ChannelInfo]:
    return Call("GET", f"/api/channels/{_seg(channel, 'channel')}", m.ChannelInfo.from_json, idempotent=True)


def channels(prefix: Optional[str], limit: Optional[int], cursor: Optional[str]) -> Call[m.ChannelPage]:
    params: Dict[str, str] = {}
    if prefix is not None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if prefix:
            params["prefix"] = prefix
    if limit is not None:
        if not 1 <= _int(limit, "limit") <= 1000:
            raise ValueError(f"limit must be 1..=1000, not {limit}")
        params["limit"] = str(limit)
    if cursor is not None:
        if not isinstance(cursor, str):
            raise TypeError(f"cursor must be a str, not {type(cursor).__name__}")
        if cursor:
            params["cursor"] = cursor
    return Call("GET", "/api/channels", m.ChannelPage.from_json, params=params or None, idempotent=True)


def user_status(user: str) -> Call[m.UserStatus]:
    return Call("GET", f"/api/users/{_seg(user, 'user')}", m.UserStatus.from_json, idempotent=True)


def nodes() -> Call[Any]:
    return Call("GET", "/api/nodes", m.nodes_from_json, idempotent=True)


def readyz() -> Call[bool]:
    return Call("GET", "/readyz", lambda _: True, expect_json=False)


def raw(method: str, path: str, json_body: Any, params: Optional[Mapping[str, Any]]) -> Call[Any]:
    method = _str(method, "method").upper()
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"path must start with '/', not {path!r}")
    body = None
    if json_body is not None or method == "POST":
        body = encode({} if json_body is None else json_body, f"{method} {path}")
    p = None if params is None else {k: str(v) for k, v in params.items() if v is not None}
    return Call(method, path, lambda d: d, body=body, params=p, idempotent=method in ("GET", "HEAD"))


# --- answers and failures ---------------------------------------------------


def request_kwargs(call: Call[Any]) -> Dict[str, Any]:
    kw: Dict[str, Any] = {}
    if call.body is not None:
        kw["content"] = call.body
        kw["headers"] = {"Content-Type": "application/json"}
    if call.params:
        kw["params"] = call.params
    return kw


def outcome(call: Call[T], resp: httpx.Response) -> T:
    """The parsed answer; raises :class:`ApiError` for an error answer and
    :class:`GatewayError` for one that is not the gateway's JSON."""
    text = resp.text
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if 200 <= resp.status_code < 300:
        if not call.expect_json:
            return call.parse(None)
        if body is None and text:
            snippet = text.strip()[:200]
            raise GatewayError(f"{call.method} {call.path}: the answer is not JSON (is this the gateway?): {snippet!r}")
        try:
            return call.parse({} if body is None else body)
        except (KeyError, TypeError, ValueError) as e:
            raise GatewayError(f"{call.method} {call.path}: unexpected answer {body!r} ({e!r})") from None
    raise error_from_response(resp.status_code, body, text, call.method, call.path)


def retry_answer(call: Call[Any], err: ApiError) -> bool:
    """Whether an error answer may be retried: only a GET's, and only a "later"."""
    return call.idempotent and err.status in RETRY_STATUSES


def transport_failure(call: Call[Any], base_url: str, exc: httpx.RequestError) -> Tuple[GatewayError, bool]:
    """(error, retryable) for a request that got no answer."""
    where = f"{call.method} {base_url}{call.path}"
    not_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    detail = str(exc) or type(exc).__name__
    err: GatewayError
    if isinstance(exc, httpx.TimeoutException):
        err = GatewayTimeout(f"gateway timed out ({type(exc).__name__}): {where}: {detail}", sent=not not_sent)
    elif isinstance(exc, httpx.ConnectError):
        err = GatewayUnavailable(f"cannot reach the gateway: {where}: {detail}", sent=False)
    else:
        err = GatewayUnavailable(
            f"connection to the gateway failed ({type(exc).__name__}): {where}: {detail}", sent=True
        )
    return err, not_sent or call.idempotent


def with_attempts(err: GatewayError, attempts: int) -> GatewayError:
    if attempts > 1 and isinstance(err, GatewayUnavailable) and not isinstance(err, ApiError) and err.args:
        err.args = (f"{err.args[0]} (after {attempts} attempts)",) + err.args[1:]
        err.message = err.args[0]
    return err
