"""FastAPI example: a web app whose WebSocket work is done by the gateway.

The app never holds a WebSocket. Browsers connect to the gateway's /ws with a
JWT the app mints (GET /token); the app talks to the gateway over its HTTP
API through the Python SDK (gateway_client). What a hand-written
ConnectionManager did maps to SDK calls (docs/migrating.md):

    broadcast to a room          -> gw.publish("chat:<room>", data)
    broadcast to others          -> gw.publish(..., exclude=<sender's conn>)
    send to a user (all devices) -> gw.send_user(user, data)
    is online                    -> gw.user_status(user)
    task logs for a page that
    may not be open yet          -> task_log(gw, task_id, ...) on a channel
                                    with history; the page replays it
    connection status / queued   -> gw.channel("task:<id>") (channel info)

Run next to a gateway (README.md):

    GATEWAY_JWT_SECRET=... GATEWAY_API_KEY=... uvicorn app:app

Settings (environment):

    GATEWAY_JWT_SECRET  HS256 secret shared with the gateway (required)
    GATEWAY_API_KEY     the gateway's HTTP API key (unset: the API is open)
    GATEWAY_API_URL     the gateway's HTTP base URL (http://127.0.0.1:8080)
    GATEWAY_WS_URL      WebSocket URL(s) for browsers, comma separated
                        (ws://127.0.0.1:8080/ws); several = fail over
    GATEWAY_SDK_JS      the browser SDK file to serve at /static/gateway-client.js
                        (../../clients/js/dist/gateway-client.js)
    TOKEN_TTL_SECS      lifetime of a minted JWT (600); the page refreshes it
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Dict, Optional, Set

from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from gateway_client import ApiError, AsyncClient, GatewayError, mint_token, task_log

HERE = Path(__file__).resolve().parent
JWT_SECRET = os.environ.get("GATEWAY_JWT_SECRET", "")
API_KEY = os.environ.get("GATEWAY_API_KEY") or None
API_URL = os.environ.get("GATEWAY_API_URL", "http://127.0.0.1:8080")
WS_URLS = [u.strip() for u in os.environ.get("GATEWAY_WS_URL", "ws://127.0.0.1:8080/ws").split(",") if u.strip()]
SDK_JS = Path(os.environ.get("GATEWAY_SDK_JS", HERE / ".." / ".." / "clients" / "js" / "dist" / "gateway-client.js"))
TOKEN_TTL_SECS = int(os.environ.get("TOKEN_TTL_SECS", "600"))

if len(JWT_SECRET) < 16:
    raise SystemExit("set GATEWAY_JWT_SECRET (the gateway's jwt_secret, at least 16 bytes)")

# A user name is used in channel names (user:<name>), so it keeps to their
# character set. Room names likewise.
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")

gw: AsyncClient  # set in lifespan()

# Tasks this process started: id -> {"state", "lines", "total"}. The log
# lines themselves live in the gateway's history, not here.
TASKS: Dict[str, Dict[str, Any]] = {}
_running: Set[asyncio.Task] = set()


@asynccontextmanager
async def lifespan(_app: FastAPI):
    global gw
    gw = AsyncClient(API_URL, API_KEY)
    try:
        yield
    finally:
        for t in list(_running):
            t.cancel()
        await gw.aclose()


app = FastAPI(title="gateway FastAPI example", lifespan=lifespan)


@app.exception_handler(GatewayError)
async def gateway_error(_request: Request, exc: GatewayError):
    # The gateway refused a call (ApiError: bad channel, 503 while Redis is
    # down, ...) or could not be reached: tell the browser, without details.
    code = exc.code if isinstance(exc, ApiError) else "unreachable"
    return JSONResponse({"error": f"gateway: {code}"}, status_code=502)


# --- login (a name in a cookie: a stand-in for your real session) -----------


def current_user(request: Request) -> Optional[str]:
    name = request.cookies.get("user")
    return name if name and NAME.match(name) else None


def require_user(request: Request) -> str:
    user = current_user(request)
    if user is None:
        raise HTTPException(401, "log in first: /login?name=alice")
    return user


def safe_next(path: Optional[str]) -> str:
    # Only paths on this site (no //host, no scheme).
    if path and path.startswith("/") and not path.startswith("//") and "\\" not in path:
        return path
    return "/"


@app.get("/login")
async def login(name: Optional[str] = None, next: Optional[str] = None):
    if name is None:
        return FileResponse(HERE / "static" / "login.html")
    if not NAME.match(name):
        raise HTTPException(400, "a name is 1-32 characters of A-Z a-z 0-9 _ . -")
    resp = RedirectResponse(safe_next(next), status_code=303)
    resp.set_cookie("user", name, httponly=True, samesite="lax")
    return resp


@app.post("/logout")
async def logout():
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie("user")
    return resp


@app.get("/")
async def index(request: Request):
    if current_user(request) is None:
        return RedirectResponse("/login", status_code=303)
    return FileResponse(HERE / "static" / "chat.html")


@app.get("/static/gateway-client.js")
async def sdk_js():
    # The browser SDK (clients/js/dist), served from this origin: the app
    # ships the SDK version it was written against (the gateway's /sdk
    # route is off once pages are off, the production setting).
    return FileResponse(SDK_JS, media_type="text/javascript")


# --- tokens -------------------------------------------------------------------


@app.get("/token")
async def token(request: Request):
    """A JWT for the gateway: who the user is and what they may subscribe to.

    Called by the page before every (re)connect and before the token
    expires (the JS SDK's getToken), so a logout or a ban takes effect
    within TOKEN_TTL_SECS.
    """
    user = require_user(request)
    jwt = mint_token(
        JWT_SECRET,
        user,
        expires_in=TOKEN_TTL_SECS,
        info={"name": user},
        channels=["chat:*", "task:*", f"user:{user}"],
    )
    return {"token": jwt, "user": user, "expires_in": TOKEN_TTL_SECS, "ws_urls": WS_URLS}


# --- chat: broadcast, broadcast to others, presence --------------------------


@app.post("/chat/{room}")
async def chat_send(request: Request, room: str, body: dict = Body(...)):
    """Publish a chat message to everyone in the room but the sender's
    connection (broadcast_to_others); the sender's page shows it itself."""
    user = require_user(request)
    if not NAME.match(room):
        raise HTTPException(400, "bad room name")
    text = str(body.get("text", "")).strip()[:500]
    if not text:
        raise HTTPException(400, "empty message")
    conn = body.get("conn")
    data = {"user": user, "text": text, "ts": int(time.time() * 1000)}
    res = await gw.publish(f"chat:{room}", data, exclude=conn if isinstance(conn, str) and conn else None)
    return {"offset": res.offset, "data": data}


@app.get("/chat/{room}/presence")
async def chat_presence(request: Request, room: str):
    require_user(request)
    if not NAME.match(room):
        raise HTTPException(400, "bad room name")
    p = await gw.presence(f"chat:{room}")
    return {"channel": p.channel, "users": p.users, "members": [m.raw for m in p.members]}


@app.get("/online/{user}")
async def online(user: str):
    """is_online(user): connected anywhere in the cluster, on how many devices."""
    s = await gw.user_status(user)
    return {"user": s.user, "online": s.online, "connections": [c.raw for c in s.connections]}


# --- notifications: every device of a user -----------------------------------


@app.post("/notify/{user}")
async def notify(request: Request, user: str, body: dict = Body(...)):
    """send_to_user: to every open connection of `user` (all devices, all
    nodes). With "persist": true it goes to the user's feed channel instead,
    whose history a page shows when it opens (for users who were offline)."""
    sender = require_user(request)
    if not NAME.match(user):
        raise HTTPException(400, "bad user name")
    data = {"kind": "notification", "from": sender, "text": str(body.get("text", ""))[:500], "ts": int(time.time() * 1000)}
    if body.get("persist"):
        await gw.publish(f"user:{user}", data)
    else:
        await gw.send_user(user, data)
    return {"sent": data}


# --- background tasks with a log page ----------------------------------------


async def run_task(task_id: str, lines: int, interval: float) -> None:
    """The "work": `lines` steps, each logged with task_log. Every line goes
    to channel task:<task_id> (history on), so a page opened at any time
    shows all of them, in order."""
    state = TASKS[task_id]
    try:
        for i in range(1, lines + 1):
            await asyncio.sleep(interval)  # stands for real work
            last = i == lines
            level = "warning" if i % 5 == 0 and not last else "info"
            message = "done" if last else f"step {i} of {lines}"
            await task_log(gw, task_id, level, message, progress=round(100 * i / lines, 2), finished=last)
            state["lines"] = i
        state["state"] = "finished"
    except asyncio.CancelledError:
        state["state"] = "cancelled"
        raise
    except Exception as e:  # noqa: BLE001 - report any failure on the task's log
        state["state"] = "failed"
        try:
            await task_log(gw, task_id, "error", f"failed: {e}", finished=True)
        except Exception:  # noqa: BLE001
            pass


@app.post("/tasks")
async def start_task(body: dict = Body(default={})):
    lines = int(body.get("lines", 20))
    interval = float(body.get("interval_ms", 300)) / 1000
    if not 1 <= lines <= 1000 or not 0 <= interval <= 10:
        raise HTTPException(400, "lines: 1-1000, interval_ms: 0-10000")
    task_id = secrets.token_hex(6)
    TASKS[task_id] = {"state": "running", "lines": 0, "total": lines}
    t = asyncio.create_task(run_task(task_id, lines, interval))
    _running.add(t)
    t.add_done_callback(_running.discard)
    return {"id": task_id, "channel": f"task:{task_id}", "page": f"/tasks/{task_id}", "status": f"/tasks/{task_id}/status"}


@app.get("/tasks/{task_id}")
async def task_page(request: Request, task_id: str):
    if not NAME.match(task_id):
        raise HTTPException(404, "no such task")
    if current_user(request) is None:
        return RedirectResponse(f"/login?next=/tasks/{task_id}", status_code=303)
    return FileResponse(HERE / "static" / "task.html")


@app.get("/tasks/{task_id}/status")
async def task_status(task_id: str):
    """get_connection_status + get_queued_message_count, from the gateway's
    channel info (cluster-wide, lagging subscribes by about 50 ms):

    - connected / subscribers: pages watching the task now;
    - queued_messages: lines a page opening now would replay (the retained
      history; nothing is queued per page any more);
    - top_offset: lines published so far (within the history's epoch).
    """
    if not NAME.match(task_id):
        raise HTTPException(404, "no such task")
    info = await gw.channel(f"task:{task_id}")
    history = info.history  # None only if the task namespace had no history
    return {
        "task_id": task_id,
        "state": TASKS.get(task_id, {}).get("state", "unknown"),
        "connected": info.subscribers > 0,
        "subscribers": info.subscribers,
        "queued_messages": history.length if history else 0,
        "top_offset": history.top_offset if history else 0,
        "epoch": history.epoch if history else None,
    }


# Last, so that the routes above (/static/gateway-client.js) match first.
app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
