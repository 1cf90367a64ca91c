"""Connection tokens: JWTs the gateway accepts on ``/ws`` (docs/protocol.md, "JWT claims")."""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Optional, Union

import jwt

__all__ = ["mint_token", "ALGORITHMS"]

#: The algorithms the gateway can be configured for (it accepts exactly one).
ALGORITHMS = ("HS256", "RS256")

_RESERVED = ("sub", "exp")


def _channel_list(value: Optional[Iterable[str]], what: str) -> Optional[List[str]]:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what} must be a list of channel names or patterns, not a single {type(value).__name__}")
    out = list(value)
    for v in out:
        if not isinstance(v, str) or not v:
            raise TypeError(f"{what} must hold non-empty str channel names or patterns, got {v!r}")
    return out


def mint_token(
    secret: Union[str, bytes, Any],
    user: str,
    *,
    expires_in: float = 3600,
    info: Any = None,
    channels: Optional[Iterable[str]] = None,
    subs: Optional[Iterable[str]] = None,
    publish: Optional[Iterable[str]] = None,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """A signed connection token for ``user``.

    - ``secret``: the gateway's ``jwt_secret`` (HS256), or the PEM private
      key matching its ``jwt_public_key_file`` (RS256; needs
      ``pip install gateway-client[rs256]``).
    - ``expires_in``: seconds until ``exp`` (the connection is closed with
      4002 then; no leeway).
    - ``info``: any JSON, shown to others in presence.
    - ``channels`` / ``publish``: patterns (``chat:*``) the token may
      subscribe / publish to; ``None`` = any.
    - ``subs``: channels subscribed on connect.
    - ``claims``: any other claim (``iss``, ``aud``, ``nbf``...).

    Adds ``iat``. Raises ``ValueError`` / ``TypeError`` on bad input.
    """
    if not isinstance(user, str) or not user:
        raise ValueError(f"user must be a non-empty str, not {user!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS} (what the gateway accepts), not {algorithm!r}")
    if secret is None or (isinstance(secret, (str, bytes)) and not secret):
        raise ValueError("secret must be the gateway's jwt_secret (HS256) or a PEM private key (RS256)")
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
        raise ValueError(f"expires_in must be a positive number of seconds, not {expires_in!r}")
    clash = [k for k in _RESERVED if k in claims]
    if clash:
        raise ValueError(f"pass the user and expires_in instead of the claims {clash}")
    now = int(time.time())
    payload: Dict[str, Any] = {"sub": user, "iat": now, "exp": now + int(expires_in)}
    if info is not None:
        payload["info"] = info
    for name, value in (("channels", channels), ("subs", subs), ("publish", publish)):
        lst = _channel_list(value, name)
        if lst is not None:
            payload[name] = lst
    payload.update(claims)
    token = jwt.encode(payload, secret, algorithm=algorithm)
    # PyJWT < 2 returned bytes; >= 2 returns str.
    return token if isinstance(token, str) else token.decode()
