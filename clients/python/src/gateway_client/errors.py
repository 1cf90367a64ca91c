"""Exceptions raised by the SDK.

Two families, both under :class:`GatewayError`:

- :class:`ApiError`: the gateway answered with an error body
  ``{"error": {"code", "message"}}``. One subclass per API error code
  (``bad_request`` -> :class:`BadRequest`, ...); ``status``, ``code`` and
  ``message`` come from the answer.
- :class:`GatewayUnavailable`: no usable answer: the gateway could not be
  reached, the connection broke, or the request timed out
  (:class:`GatewayTimeout`). :class:`Unavailable` (the API's own
  ``unavailable``, HTTP 503: its backend, e.g. Redis, did not acknowledge)
  is both an :class:`ApiError` and a :class:`GatewayUnavailable`, so one
  ``except GatewayUnavailable`` covers every "try again later".
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
    "GatewayError",
    "GatewayUnavailable",
    "GatewayTimeout",
    "ApiError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "TooLarge",
    "RateLimited",
    "Unavailable",
    "InternalError",
    "WebhookVerificationError",
]


class GatewayError(Exception):
    """Base class of every error this package raises on purpose."""


class GatewayUnavailable(GatewayError):
    """The gateway could not be reached or gave no usable answer in time.

    ``sent`` tells whether the request may have reached the gateway: a
    connect error means it did not (safe to retry anything); after a read
    timeout a publish may have been applied.
    """

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.sent = sent


class GatewayTimeout(GatewayUnavailable):
    """The request timed out (connect, write, read or pool timeout)."""


class ApiError(GatewayError):
    """The gateway answered with an API error.

    Attributes: ``status`` (HTTP status), ``code`` (the API's error code,
    e.g. ``"bad_request"``), ``message`` (its text), ``body`` (the parsed
    answer, or ``None`` when it was not JSON).
    """

    #: The API error code this class stands for (``None``: any other).
    api_code: Optional[str] = None

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        body: Any = None,
        method: str = "",
        path: str = "",
    ) -> None:
        where = f" ({method} {path})" if method else ""
        super().__init__(f"{status} {code}: {message}{where}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        self.method = method
        self.path = path


class BadRequest(ApiError):
    """``bad_request`` (400, also 415 and 408): invalid body, channel name,
    unknown namespace, feature not enabled for the namespace, ..."""

    api_code = "bad_request"


class Unauthorized(ApiError):
    """``unauthorized`` (401): missing or wrong API key."""

    api_code = "unauthorized"


class Forbidden(ApiError):
    """``forbidden`` (403)."""

    api_code = "forbidden"


class NotFound(ApiError):
    """``not_found`` (404): no such API route or target."""

    api_code = "not_found"


class TooLarge(ApiError):
    """``too_large`` (413): the body exceeds the gateway's size limit."""

    api_code = "too_large"


class RateLimited(ApiError):
    """``rate_limited`` (429)."""

    api_code = "rate_limited"


class Unavailable(ApiError, GatewayUnavailable):
    """``unavailable`` (503): the gateway's backend did not acknowledge in
    time, or the node is draining. A publish answered so may still have
    been applied (docs/protocol.md)."""

    api_code = "unavailable"

    def __init__(self, status: int, code: str, message: str, **kw: Any) -> None:
        ApiError.__init__(self, status, code, message, **kw)
        self.sent = True


class InternalError(ApiError):
    """``internal`` (500): the gateway's fault; details are in its log."""

    api_code = "internal"


class WebhookVerificationError(GatewayError, ValueError):
    """A webhook request failed verification (bad or missing signature,
    malformed or stale timestamp)."""


_BY_CODE: Dict[str, Type[ApiError]] = {
    cls.api_code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        TooLarge,
        RateLimited,
        Unavailable,
        InternalError,
    )
    if cls.api_code is not None
}

_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "bad_request",
    413: "too_large",
    415: "bad_request",
    429: "rate_limited",
    500: "internal",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}


def error_from_response(status: int, body: Any, text: str, method: str, path: str) -> ApiError:
    """The :class:`ApiError` for an error answer (``body`` parsed JSON or None)."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        code = err["code"]
        message = str(err.get("message", ""))
    else:
        # Not the gateway's error format (a proxy in between, or not a gateway).
        code = _CODE_BY_STATUS.get(status, "http_error")
        snippet = text.strip().replace("\n", " ")[:200]
        message = f"unexpected answer (not a gateway error body): {snippet!r}"
    cls = _BY_CODE.get(code, ApiError)
    return cls(status, code, message, body=body, method=method, path=path)
