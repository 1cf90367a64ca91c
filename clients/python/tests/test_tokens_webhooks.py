"""mint_token against the gateway's JWT checks, and webhook verification
against real webhooks the gateway sends (plus tampered and stale ones)."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from harness import JWT_SECRET, WEBHOOK_SECRET, WsClient, eventually, unique

from gateway_client import (
    WebhookVerificationError,
    check_webhook,
    mint_token,
    parse_webhook,
    sign_webhook,
    verify_webhook,
    verify_webhook_headers,
)

# --- tokens ----------------------------------------------------------------------


def test_minted_token_is_accepted(gw):
    user = unique("user")
    c = WsClient(gw.ws, mint_token(JWT_SECRET, user))
    try:
        assert c.welcome["user"] == user
    finally:
        c.close()


def _refused(url: str, token: str) -> str:
    with pytest.raises(Exception) as e:
        WsClient(url, token).close()
    return str(e.value)


def test_wrong_secret_and_not_yet_valid_tokens_are_refused(gw):
    assert "401" in _refused(gw.ws, mint_token("another-secret-0123456789abcdef-x", "mallory"))
    assert "401" in _refused(gw.ws, mint_token(JWT_SECRET, "early", nbf=int(time.time()) + 3600))


def test_token_claims_are_honoured(client, ws):
    user = unique("user")
    home = unique("chat:")
    c = ws(user, channels=["chat:ok-*"], publish=["chat:ok-*"], subs=[home], info={"n": 1})
    push = c.expect(lambda f: f["type"] == "subscribed" and f["channel"] == home, "subs claim subscribed push")
    assert push["id"] is None
    rid = c.send("subscribe", channel=unique("chat:no-"))
    assert c.expect(lambda f: f.get("id") == rid, "refusal")["code"] == "forbidden"
    ok = unique("chat:ok-")
    c.subscribe(ok)
    rid = c.send("publish", channel=unique("chat:no-"), data=1)
    assert c.expect(lambda f: f.get("id") == rid, "refusal")["code"] == "forbidden"
    client.publish(home, "to the subs channel")
    assert c.message(home)["data"] == "to the subs channel"


def test_token_payload():
    before = int(time.time())
    tok = mint_token(JWT_SECRET, "alice", expires_in=60, info={"name": "A"}, channels=("chat:*",),
                     subs=["news"], iss="me", aud="gw")
    claims = jwt.decode(tok, JWT_SECRET, algorithms=["HS256"], audience="gw")
    assert claims["sub"] == "alice" and claims["iss"] == "me"
    assert before + 60 <= claims["exp"] <= int(time.time()) + 60
    assert claims["info"] == {"name": "A"} and claims["channels"] == ["chat:*"] and claims["subs"] == ["news"]
    assert "publish" not in claims


def test_token_bad_input():
    with pytest.raises(ValueError, match="user"):
        mint_token(JWT_SECRET, "")
    with pytest.raises(ValueError, match="secret"):
        mint_token("", "alice")
    with pytest.raises(ValueError, match="expires_in"):
        mint_token(JWT_SECRET, "alice", expires_in=0)
    with pytest.raises(TypeError, match="list of channel"):
        mint_token(JWT_SECRET, "alice", channels="chat:*")
    with pytest.raises(ValueError, match="HS256"):
        mint_token(JWT_SECRET, "alice", algorithm="none")
    with pytest.raises(ValueError, match="expires_in instead"):
        mint_token(JWT_SECRET, "alice", exp=1)


# --- webhooks --------------------------------------------------------------------


@pytest.fixture
def hook(single, sink):
    """A real webhook: the request the gateway sent about a connection closed here."""
    c = WsClient(single.ws, mint_token(JWT_SECRET, unique("hooked")))
    conn = c.id
    c.close()
    req = eventually(
        lambda: sink.find_event(lambda e: e.get("name") == "connection_closed" and e.get("conn") == conn),
        f"connection_closed webhook for {conn}",
    )
    return req, conn


def test_real_webhook_verifies(hook):
    req, conn = hook
    h, body = req["headers"], req["body"]
    assert h["x-gateway-signature"].startswith("sha256=")
    assert verify_webhook(WEBHOOK_SECRET, body, h["x-gateway-timestamp"], h["x-gateway-signature"])
    assert verify_webhook(WEBHOOK_SECRET.encode(), body, int(h["x-gateway-timestamp"]), h["x-gateway-signature"])
    assert verify_webhook_headers(WEBHOOK_SECRET, h, body)
    title_case = {"X-Gateway-Timestamp": h["x-gateway-timestamp"], "X-GATEWAY-SIGNATURE": h["x-gateway-signature"]}
    assert verify_webhook_headers(WEBHOOK_SECRET, title_case, body)
    batch = parse_webhook(WEBHOOK_SECRET, h, body)
    assert batch["node"] == "s1" and any(e["conn"] == conn for e in batch["events"] if "conn" in e)
    assert sign_webhook(WEBHOOK_SECRET, body, h["x-gateway-timestamp"]) == h["x-gateway-signature"]


def test_tampered_stale_and_wrongly_keyed_webhooks_fail(hook):
    req, _ = hook
    h, body = req["headers"], req["body"]
    ts, sig = h["x-gateway-timestamp"], h["x-gateway-signature"]
    tampered = body.replace(b"connection_closed", b"connection_opened")
    assert tampered != body
    assert not verify_webhook(WEBHOOK_SECRET, tampered, ts, sig)
    assert not verify_webhook(WEBHOOK_SECRET, body + b" ", ts, sig)
    assert not verify_webhook("not-the-secret-0123456789", body, ts, sig)
    assert not verify_webhook(WEBHOOK_SECRET, body, str(int(ts) + 1), sig)  # a replay with a new timestamp
    sent = int(ts) / 1000
    assert verify_webhook(WEBHOOK_SECRET, body, ts, sig, now=sent + 299)
    assert not verify_webhook(WEBHOOK_SECRET, body, ts, sig, now=sent + 301)
    assert not verify_webhook(WEBHOOK_SECRET, body, ts, sig, now=sent - 301)
    assert verify_webhook(WEBHOOK_SECRET, body, ts, sig, now=sent + 10_000, tolerance=None)
    assert not verify_webhook(WEBHOOK_SECRET, body, ts, sig, now=sent + 10, tolerance=5)
    with pytest.raises(WebhookVerificationError, match="tampered"):
        check_webhook(WEBHOOK_SECRET, tampered, ts, sig)
    with pytest.raises(WebhookVerificationError, match="stale"):
        check_webhook(WEBHOOK_SECRET, body, ts, sig, now=sent + 3600)
    with pytest.raises(WebhookVerificationError, match="missing X-Gateway-Signature"):
        parse_webhook(WEBHOOK_SECRET, {"x-gateway-timestamp": ts}, body)
    with pytest.raises(WebhookVerificationError, match="missing X-Gateway-Timestamp"):
        parse_webhook(WEBHOOK_SECRET, {"x-gateway-signature": sig}, body)
    with pytest.raises(WebhookVerificationError, match="malformed"):
        check_webhook(WEBHOOK_SECRET, body, "12s", sig)
    assert not verify_webhook_headers(WEBHOOK_SECRET, {}, body)


def test_webhook_documented_vector_and_bad_input():
    sig = "sha256=3370e449c8aa4b1816f06780f8cbf8d0ebc7865f656a7f66332720a5fa026f04"
    assert sign_webhook("key", b'{"events":[]}', 1700000000000) == sig
    assert verify_webhook("key", b'{"events":[]}', "1700000000000", sig, now=1700000000.5)
    with pytest.raises(TypeError, match="raw request body as bytes"):
        verify_webhook("key", json.dumps({"events": []}), "1700000000000", sig)
    with pytest.raises(ValueError, match="webhook_secret"):
        verify_webhook("", b"{}", "1700000000000", sig)
