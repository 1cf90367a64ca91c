"""Webhook signature checks (docs/backend.md, "The signature").

The gateway signs ``<X-Gateway-Timestamp>.<raw body>`` with HMAC-SHA256
keyed by ``webhook_secret`` and sends ``X-Gateway-Signature:
sha256=<hex>``; the timestamp is unix **milliseconds**. Verify over the raw
body bytes, before parsing JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any, Mapping, Optional, Union

from .errors import WebhookVerificationError

__all__ = [
    "TIMESTAMP_HEADER",
    "SIGNATURE_HEADER",
    "sign_webhook",
    "check_webhook",
    "verify_webhook",
    "verify_webhook_headers",
    "parse_webhook",
]

TIMESTAMP_HEADER = "X-Gateway-Timestamp"
SIGNATURE_HEADER = "X-Gateway-Signature"

Secret = Union[str, bytes]
Body = Union[bytes, bytearray, memoryview]


def _key(secret: Secret) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, (bytes, bytearray)) or not secret:
        raise ValueError("secret must be the gateway's webhook_secret (non-empty str or bytes)")
    return bytes(secret)


def _body(body: Any) -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError(
        f"body must be the raw request body as bytes (e.g. `await request.body()`), not {type(body).__name__}: "
        "the signature covers the exact bytes received"
    )


def sign_webhook(secret: Secret, body: Body, timestamp: Union[int, str]) -> str:
    """The ``X-Gateway-Signature`` value for ``body`` sent at ``timestamp`` (unix ms)."""
    ts = str(timestamp).encode()
    mac = hmac.new(_key(secret), ts + b"." + _body(body), hashlib.sha256).hexdigest()
    return "sha256=" + mac


def check_webhook(
    secret: Secret,
    body: Body,
    timestamp: Union[int, str, None],
    signature: Optional[str],
    *,
    tolerance: Optional[float] = 300,
    now: Optional[float] = None,
) -> None:
    """Raise :class:`WebhookVerificationError` unless ``signature`` is the
    gateway's for ``body`` and ``timestamp`` (unix ms) is within
    ``tolerance`` seconds of ``now`` (default: the clock; ``tolerance=None``
    skips the age check)."""
    key = _key(secret)
    raw = _body(body)
    if timestamp is None or timestamp == "":
        raise WebhookVerificationError(f"missing {TIMESTAMP_HEADER}")
    ts = str(timestamp).strip()
    if not ts.isdigit() or not ts.isascii():
        raise WebhookVerificationError(f"malformed {TIMESTAMP_HEADER} {str(timestamp)[:40]!r} (want unix milliseconds)")
    if not signature:
        raise WebhookVerificationError(f"missing {SIGNATURE_HEADER}")
    if tolerance is not None:
        clock = time.time() if now is None else now
        age = abs(clock * 1000 - int(ts)) / 1000
        if age > tolerance:
            raise WebhookVerificationError(
                f"{TIMESTAMP_HEADER} is {age:.0f} s away from now (tolerance {tolerance} s): stale or replayed"
            )
    want = sign_webhook(key, raw, ts)
    if not hmac.compare_digest(want.encode(), signature.strip().encode("utf-8", "replace")):
        raise WebhookVerificationError(f"{SIGNATURE_HEADER} does not match the body (wrong secret or tampered body)")


def verify_webhook(
    secret: Secret,
    body: Body,
    timestamp: Union[int, str, None],
    signature: Optional[str],
    *,
    tolerance: Optional[float] = 300,
    now: Optional[float] = None,
) -> bool:
    """Whether the webhook is genuine and fresh (:func:`check_webhook` as a bool).
    Bad argument types still raise ``TypeError``/``ValueError``."""
    try:
        check_webhook(secret, body, timestamp, signature, tolerance=tolerance, now=now)
    except WebhookVerificationError:
        return False
    return True


def _header(headers: Mapping[str, Any], name: str) -> Optional[str]:
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        value = headers.get(lower)
        if value is None:
            for k, v in headers.items():
                if isinstance(k, str) and k.lower() == lower:
                    value = v
                    break
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value


def verify_webhook_headers(
    secret: Secret,
    headers: Mapping[str, Any],
    body: Body,
    *,
    tolerance: Optional[float] = 300,
    now: Optional[float] = None,
) -> bool:
    """:func:`verify_webhook` taking the request's headers (any mapping;
    names matched case-insensitively)."""
    return verify_webhook(
        secret,
        body,
        _header(headers, TIMESTAMP_HEADER),
        _header(headers, SIGNATURE_HEADER),
        tolerance=tolerance,
        now=now,
    )


def parse_webhook(
    secret: Secret,
    headers: Mapping[str, Any],
    body: Body,
    *,
    tolerance: Optional[float] = 300,
    now: Optional[float] = None,
) -> Any:
    """Verify (raising :class:`WebhookVerificationError`) and return the parsed
    batch ``{"time_ms", "node", "events": [...]}``."""
    check_webhook(
        secret,
        body,
        _header(headers, TIMESTAMP_HEADER),
        _header(headers, SIGNATURE_HEADER),
        tolerance=tolerance,
        now=now,
    )
    try:
        return json.loads(bytes(body))
    except ValueError as e:
        raise WebhookVerificationError(f"signed body is not JSON: {e}") from None
