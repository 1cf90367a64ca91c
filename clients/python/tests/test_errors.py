"""Error paths: API errors with their codes, bad input caught before any
request, and a gateway that is down, killed mid-test or frozen (a clear
exception within a bounded time, never a hang; a publish is never retried
once it may have been sent)."""

from __future__ import annotations

import math
import time

import httpx
import pytest
from harness import API_KEY, JWT_SECRET, Gateway, Redis, eventually, free_port, unique

from gateway_client import (
    ApiError,
    AsyncClient,
    BadRequest,
    Client,
    GatewayError,
    GatewayTimeout,
    GatewayUnavailable,
    Forbidden,
    InternalError,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
)


# --- API errors ---------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_bad_or_missing_api_key_is_unauthorized(gw, key):
    with Client(gw.api, key) as c:
        for call in (lambda: c.publish("plain:x", 1), lambda: c.nodes(), lambda: c.presence("chat:x")):
            with pytest.raises(Unauthorized) as e:
                call()
            assert (e.value.status, e.value.code) == (401, "unauthorized")
            assert isinstance(e.value, ApiError) and isinstance(e.value, GatewayError)
            assert e.value.message


def test_unknown_namespace_is_bad_request(client):
    for call in (
        lambda: client.publish("nope:x", 1),
        lambda: client.presence("nope:x"),
        lambda: client.history("nope:x"),
        lambda: client.channel("nope:x"),
        lambda: client.subscribe_user("u", "nope:x"),
        lambda: client.subscribe_connection("c", "nope:x"),
    ):
        with pytest.raises(BadRequest) as e:
            call()
        assert (e.value.status, e.value.code) == (400, "bad_request")
        assert "namespace" in e.value.message


def test_feature_not_enabled_is_bad_request(client):
    with pytest.raises(BadRequest, match="presence is not enabled"):
        client.presence(unique("hist:"))
    with pytest.raises(BadRequest, match="history is not enabled"):
        client.history(unique("chat:"))


def test_invalid_names_and_values_are_bad_request(client):
    with pytest.raises(BadRequest, match="invalid channel name"):
        client.publish("bad channel!", 1)
    with pytest.raises(BadRequest, match="invalid channel name"):
        client.presence("chat:" + "x" * 300)
    with pytest.raises(BadRequest, match="4000"):
        client.disconnect_user("u", code=1000)
    with pytest.raises(BadRequest, match="120 bytes"):
        client.disconnect_connection("c", reason="x" * 121)
    with pytest.raises(BadRequest, match="invalid prefix"):
        client.channels(prefix="bad prefix")
    with pytest.raises(BadRequest, match="invalid cursor"):
        client.channels(cursor="bad cursor")


def test_bad_body_is_bad_request(client):
    with pytest.raises(BadRequest, match="unknown field") as e:
        client.request("POST", "/api/publish", json={"channel": "plain:x", "data": 1, "extra": True})
    assert e.value.body == {"error": {"code": "bad_request", "message": e.value.message}}
    with pytest.raises(BadRequest, match="missing field"):
        client.request("POST", "/api/publish", json={"channel": "plain:x"})
    with pytest.raises(BadRequest):
        client.request("POST", "/api/broadcast", json=[1, 2])


def test_oversized_body_is_too_large(client):
    with pytest.raises(TooLarge) as e:
        client.publish(unique("plain:"), "x" * (2 * 1024 * 1024))
    assert (e.value.status, e.value.code) == (413, "too_large")


def test_unparsable_query_and_wrong_method_are_json_errors(client):
    # A query string the gateway cannot parse and a method a route does not
    # take answer the documented JSON error body (400 saying what is wrong,
    # and 405), mapped to their classes.
    with pytest.raises(BadRequest, match="query string") as e:
        client.history(unique("hist:"), limit=10**30)
    assert (e.value.status, e.value.code) == (400, "bad_request")
    assert e.value.body is not None and e.value.body["error"]["code"] == "bad_request"
    with pytest.raises(ApiError) as e:
        client.request("GET", "/api/publish")  # a POST route
    assert (e.value.status, e.value.code) == (405, "bad_request")


def test_unknown_route_is_not_found(client):
    with pytest.raises(NotFound) as e:
        client.request("GET", "/api/no-such-route")
    assert (e.value.status, e.value.code) == (404, "not_found")


def test_non_json_content_type_is_415_bad_request(gw):
    # The SDK always sends JSON; check the mapping of the 415 answer anyway.
    def add_text(request: httpx.Request) -> None:
        request.headers["Content-Type"] = "text/plain"

    with Client(gw.api, API_KEY) as c:
        c._http.event_hooks["request"] = [add_text]
        with pytest.raises(BadRequest) as e:
            c.publish("plain:x", 1)
    assert (e.value.status, e.value.code) == (415, "bad_request")


# --- bad input, refused before sending ------------------------------------------


def test_bad_input_is_refused_locally(client):
    with pytest.raises(ValueError, match="channel must not be empty"):
        client.publish("", 1)
    with pytest.raises(TypeError, match="channel must be a str"):
        client.publish(None, 1)
    with pytest.raises(TypeError, match="JSON-serializable"):
        client.publish("plain:x", {"when": object()})
    with pytest.raises(ValueError, match="JSON-serializable"):
        client.publish("plain:x", math.nan)
    with pytest.raises(TypeError, match="single connection"):
        client.publish("plain:x", 1, exclude=["a", "b"])
    with pytest.raises(ValueError, match="user must not be empty"):
        client.send_user("", 1)
    with pytest.raises(TypeError, match="code must be an int"):
        client.disconnect_user("u", code="4000")
    with pytest.raises(ValueError, match="limit must be 1..=1000"):
        client.channels(limit=0)
    with pytest.raises(ValueError, match="since must be >= 0"):
        client.history("hist:x", since=-1)


@pytest.mark.parametrize("url", ["", "127.0.0.1:8080", "ws://127.0.0.1:8080/ws", "ftp://x"])
def test_bad_url_is_refused(url):
    with pytest.raises(ValueError, match="http"):
        Client(url)
    with pytest.raises(ValueError, match="http"):
        AsyncClient(url)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="timeout"):
        Client("http://127.0.0.1:1", timeout=0)
    with pytest.raises(ValueError, match="retries"):
        Client("http://127.0.0.1:1", retries=-1)
    with pytest.raises(ValueError, match="api_key"):
        Client("http://127.0.0.1:1", "")


# --- the gateway is down ---------------------------------------------------------


def test_nothing_listening_fails_fast():
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, API_KEY, timeout=2, retries=2) as c:
        for call in (lambda: c.publish("plain:x", 1), lambda: c.nodes(), lambda: c.send_user("u", 1)):
            start = time.monotonic()
            with pytest.raises(GatewayUnavailable) as e:
                call()
            assert time.monotonic() - start < 2
            assert e.value.sent is False
            assert "cannot reach the gateway" in str(e.value) and "after 3 attempts" in str(e.value)
            assert not isinstance(e.value, ApiError)
        assert c.ready.__self__ is c
        with pytest.raises(GatewayUnavailable):
            c.ready()


async def test_nothing_listening_fails_fast_async():
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(url, API_KEY, timeout=2, retries=1) as c:
        start = time.monotonic()
        with pytest.raises(GatewayUnavailable) as e:
            await c.publish("plain:x", 1)
        with pytest.raises(GatewayUnavailable):
            await c.presence("chat:x")
        assert time.monotonic() - start < 2
        assert "after 2 attempts" in str(e.value)


def _own_gateway(name: str) -> Gateway:
    return Gateway(name, {"GATEWAY_API_KEY": API_KEY, "GATEWAY_JWT_SECRET": JWT_SECRET})


def test_gateway_killed_mid_test():
    gw = _own_gateway("killed")
    try:
        with Client(gw.http, API_KEY, timeout=2) as c:
            assert c.publish("plain:x", 1).offset is None  # a pooled keep-alive connection now
            gw.kill()
            start = time.monotonic()
            with pytest.raises(GatewayUnavailable):
                c.publish("plain:x", 2)
            with pytest.raises(GatewayUnavailable):
                c.user_status("u")
            assert time.monotonic() - start < 3
    finally:
        gw.kill()


async def test_gateway_killed_mid_test_async():
    gw = _own_gateway("killed-async")
    try:
        async with AsyncClient(gw.http, API_KEY, timeout=2) as c:
            assert (await c.publish("plain:x", 1)).offset is None
            gw.kill()
            start = time.monotonic()
            with pytest.raises(GatewayUnavailable):
                await c.publish("plain:x", 2)
            with pytest.raises(GatewayUnavailable):
                await c.nodes()
            assert time.monotonic() - start < 3
    finally:
        gw.kill()


def test_redis_down_is_unavailable_and_not_ready():
    redis = Redis()
    gw = Gateway(
        "redis-down",
        {
            "GATEWAY_API_KEY": API_KEY,
            "GATEWAY_JWT_SECRET": JWT_SECRET,
            "GATEWAY_REDIS_URL": redis.url,
            "GATEWAY_REDIS_PREFIX": unique("pysdk"),
            "GATEWAY_REDIS_TIMEOUT_MS": "300",
        },
    )
    try:
        with Client(gw.http, API_KEY, timeout=3, retries=0) as c:
            eventually(c.ready, "the cluster node is ready")
            assert c.publish(unique("hist:"), 1).offset == 1
            redis.stop()
            start = time.monotonic()
            with pytest.raises(Unavailable) as e:
                c.publish(unique("hist:"), 2)
            assert time.monotonic() - start < 3
            assert (e.value.status, e.value.code) == (503, "unavailable")
            assert isinstance(e.value, GatewayUnavailable) and e.value.sent is True
            with pytest.raises(Unavailable):
                c.history(unique("hist:"))
            eventually(lambda: c.ready() is False, "/readyz says not ready without Redis")
    finally:
        gw.kill()
        redis.stop()


def test_frozen_gateway_times_out_and_publish_is_not_retried():
    gw = _own_gateway("frozen")
    try:
        with Client(gw.http, API_KEY, timeout=0.5, retries=2) as c:
            c.publish("plain:x", "warm the pool")
            gw.freeze()
            start = time.monotonic()
            with pytest.raises(GatewayTimeout) as e:
                c.publish("plain:x", "maybe published")
            took = time.monotonic() - start
            assert e.value.sent is True
            assert took < 1.4, f"a publish that may have been sent was retried ({took:.2f} s)"
            assert "after" not in str(e.value)
            # A GET is safe to retry: three attempts, each bounded by the timeout.
            start = time.monotonic()
            with pytest.raises(GatewayTimeout) as e:
                c.nodes()
            took = time.monotonic() - start
            assert 1.0 < took < 4.0 and "after 3 attempts" in str(e.value)
            gw.freeze(False)
            eventually(lambda: c.ready(), "the thawed gateway answers")
            assert c.publish("plain:x", "after the thaw").offset is None
    finally:
        gw.kill()


# --- retry policy, with a scripted transport -----------------------------------------


class Script(httpx.BaseTransport):
    """Answers each request with the next scripted step (an exception to
    raise, or a status and JSON body)."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.seen = []

    def handle_request(self, request):
        self.seen.append((request.method, request.url.path))
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        status, body = step
        return httpx.Response(status, json=body)


OK_PUBLISH = (200, {"offset": 7})
UNAVAILABLE = (503, {"error": {"code": "unavailable", "message": "backend timed out"}})


def test_connect_errors_are_retried_for_every_call():
    t = Script(httpx.ConnectError("refused"), httpx.ConnectError("refused"), OK_PUBLISH)
    with Client("http://gw.invalid", transport=t, retries=2) as c:
        assert c.publish("plain:x", 1).offset == 7
    assert len(t.seen) == 3


def test_read_timeout_retries_get_but_not_publish():
    t = Script(httpx.ReadTimeout("slow"))
    with Client("http://gw.invalid", transport=t, retries=2) as c:
        with pytest.raises(GatewayTimeout):
            c.publish("plain:x", 1)
        assert len(t.seen) == 1
        with pytest.raises(GatewayTimeout):
            c.history("hist:x")
        assert len(t.seen) == 4


def test_unavailable_answer_retries_get_but_not_publish():
    t = Script(UNAVAILABLE)
    with Client("http://gw.invalid", transport=t, retries=2) as c:
        with pytest.raises(Unavailable) as e:
            c.publish("plain:x", 1)
        assert len(t.seen) == 1
        assert isinstance(e.value, GatewayUnavailable) and e.value.code == "unavailable" and e.value.status == 503
        t.steps = [UNAVAILABLE, (200, {"nodes": []})]
        assert c.nodes() == []
        assert len(t.seen) == 3


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (400, "bad_request", BadRequest),
        (401, "unauthorized", Unauthorized),
        (403, "forbidden", Forbidden),
        (404, "not_found", NotFound),
        (413, "too_large", TooLarge),
        (429, "rate_limited", RateLimited),
        (503, "unavailable", Unavailable),
        (500, "internal", InternalError),
        (418, "teapot", ApiError),
    ],
)
def test_every_api_code_has_its_class(status, code, cls):
    t = Script((status, {"error": {"code": code, "message": f"m-{code}"}}))
    with Client("http://gw.invalid", transport=t, retries=0) as c:
        with pytest.raises(cls) as e:
            c.send_user("u", 1)
    assert type(e.value) is cls
    assert (e.value.status, e.value.code, e.value.message) == (status, code, f"m-{code}")
    assert f"{status} {code}: m-{code}" in str(e.value)


def test_retries_zero_means_one_attempt():
    t = Script(httpx.ConnectError("refused"))
    with Client("http://gw.invalid", transport=t, retries=0) as c:
        with pytest.raises(GatewayUnavailable):
            c.nodes()
    assert len(t.seen) == 1


def test_non_gateway_answers_are_clear_errors():
    class Html(httpx.BaseTransport):
        def handle_request(self, request):
            return httpx.Response(502 if request.method == "POST" else 200, text="<html>proxy</html>")

    with Client("http://gw.invalid", transport=Html(), retries=0) as c:
        with pytest.raises(Unavailable, match="not a gateway error body"):
            c.publish("plain:x", 1)
        with pytest.raises(GatewayError, match="not JSON"):
            c.nodes()


async def test_async_retry_policy():
    class AScript(httpx.AsyncBaseTransport):
        def __init__(self, *steps):
            self.steps, self.seen = list(steps), 0

        async def handle_async_request(self, request):
            self.seen += 1
            step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
            if isinstance(step, Exception):
                raise step
            return httpx.Response(step[0], json=step[1])

    t = AScript(httpx.ReadTimeout("slow"))
    async with AsyncClient("http://gw.invalid", transport=t, retries=2) as c:
        with pytest.raises(GatewayTimeout):
            await c.publish("plain:x", 1)
        assert t.seen == 1
        t.steps = [httpx.ConnectError("refused"), OK_PUBLISH]
        assert (await c.publish("plain:x", 1)).offset == 7
        assert t.seen == 3
