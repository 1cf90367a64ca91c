/**
 * Browser (and Node) client for the gateway's WebSocket protocol v1
 * (docs/protocol.md). Dependency-free, one ES module.
 *
 * What it does for the app:
 * - connects with a token (or a callback that fetches a fresh one before
 *   every connect), waits for `welcome`, correlates requests and replies by
 *   id, and rejects a request that is refused (`error`) or times out;
 * - reconnects on its own with exponential backoff and full jitter, except
 *   after the close codes that say "do not reconnect";
 * - after a reconnect, resubscribes every channel with `since` = the last
 *   offset and epoch it saw, and tells the app when that recovery failed
 *   (`recovered: false`) so it can refetch its state;
 * - notices a dead connection with the protocol's `ping` op (browsers cannot
 *   see WebSocket ping frames) and reconnects.
 *
 * @module gateway-client
 */
/** Protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;
/** A refused, timed-out or interrupted request. */
export class GatewayError extends Error {
    constructor(code, message) {
        super(message);
        this.name = "GatewayError";
        this.code = code;
    }
}
/** Close codes after which the client does not reconnect (docs/protocol.md). */
export function isFatalCloseCode(code) {
    return code === 1008 || code === 1009 || (code >= 4500 && code <= 4999);
}
/**
 * Delay before reconnect attempt `attempt` (0-based): uniform in
 * `[min, min(max, min * 2^(attempt + 1))]`, i.e. exponential backoff with
 * full jitter above a floor: 0.5-1 s, 0.5-2 s, 0.5-4 s, ... 0.5-20 s.
 */
export function backoffDelay(attempt, min = 500, max = 20000, random = Math.random) {
    const ceiling = Math.min(max, min * Math.pow(2, Math.min(attempt + 1, 30)));
    return Math.round(min + random() * Math.max(0, ceiling - min));
}
class Emitter {
    constructor() {
        this.handlers = {};
    }
    on(event, fn) {
        let set = this.handlers[event];
        if (!set) {
            set = new Set();
            this.handlers[event] = set;
        }
        set.add(fn);
        return () => this.off(event, fn);
    }
    off(event, fn) {
        this.handlers[event]?.delete(fn);
    }
    emit(event, ...args) {
        const set = this.handlers[event];
        if (!set)
            return;
        for (const fn of [...set]) {
            try {
                fn(...args);
            }
            catch (e) {
                // An app handler's bug must not break the connection.
                console.error(`gateway-client: ${String(event)} handler threw`, e);
            }
        }
    }
}
/** One channel subscription; survives reconnects until unsubscribed. */
export class Subscription extends Emitter {
    /** @internal use {@link GatewayClient.subscribe}. */
    constructor(client, channel, since) {
        super();
        /** Current state. */
        this.state = "pending";
        /** Last position seen (`null` until subscribed, and in channels without history). */
        this.position = null;
        /** Why the subscription failed, when `state` is `"failed"`. */
        this.error = null;
        /** @internal top offset of the current subscription (for `replayed`). */
        this._top = null;
        /** @internal whether the client has been subscribed at least once. */
        this._everSubscribed = false;
        /**
         * Whether the server made this subscription (JWT or connect proxy
         * `subs`, or the HTTP API) rather than {@link GatewayClient.subscribe}.
         */
        this.server = false;
        /** @internal */
        this._retry = 0;
        this.readyWaiters = [];
        this.client = client;
        this.channel = channel;
        this._requested = since;
    }
    /** Resolves once subscribed (at once if it already is); rejects if it failed. */
    ready() {
        if (this.state === "subscribed") {
            return Promise.resolve({
                channel: this.channel,
                offset: this.position ? this.position.offset : null,
                epoch: this.position?.epoch ?? null,
                resubscribed: false,
            });
        }
        if (this.state === "failed" && this.error)
            return Promise.reject(this.error);
        if (this.state === "unsubscribed")
            return Promise.reject(new GatewayError("closed", "unsubscribed"));
        return new Promise((resolve, reject) => this.readyWaiters.push({ resolve, reject }));
    }
    /** Publish to this channel (see {@link GatewayClient.publish}). */
    publish(data, opts) {
        return this.client.publish(this.channel, data, opts);
    }
    /** Current members (presence-enabled channels). */
    presence(timeoutMs) {
        return this.client.presence(this.channel, timeoutMs);
    }
    /** Stop receiving; the client forgets the channel. */
    unsubscribe() {
        return this.client._unsubscribe(this);
    }
    /** @internal */
    _emit(event, ...args) {
        this.emit(event, ...args);
    }
    /** @internal */
    _settle(info, error) {
        const waiters = this.readyWaiters;
        this.readyWaiters = [];
        for (const w of waiters) {
            if (info)
                w.resolve(info);
            else
                w.reject(error ?? new GatewayError("closed", "unsubscribed"));
        }
    }
}
const OPEN = 1;
/** The `exp` claim of a JWT (Unix s), `null` when unreadable. The SDK only reads it to time the refresh. */
export function tokenExp(token) {
    if (!token)
        return null;
    const part = token.split(".")[1];
    if (!part)
        return null;
    try {
        const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
        const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
        const json = typeof atob === "function" ? atob(padded) : "";
        const exp = JSON.parse(json).exp;
        return typeof exp === "number" && Number.isFinite(exp) ? exp : null;
    }
    catch {
        return null;
    }
}
/**
 * A connection to the gateway that keeps itself alive.
 *
 * ```js
 * const client = new GatewayClient({ url: "wss://rt.example.com/ws", token: fetchToken });
 * client.subscribe("chat:lobby").on("message", (data, ctx) => show(data, ctx.from));
 * client.connect();
 * await client.publish("chat:lobby", { text: "hi" });
 * ```
 */
export class GatewayClient extends Emitter {
    constructor(options) {
        super();
        /** Current state. */
        this.state = "idle";
        /** The last `welcome` (connection id, node, user), `null` before the first. */
        this.welcome = null;
        this.ws = null;
        this.subs = new Map();
        this.pending = new Map();
        this.queue = [];
        this.nextId = 1;
        this.attempt = 0;
        this.urlIndex = 0;
        this.connectSeq = 0;
        this.lastRx = 0;
        this.pingSentAt = 0;
        this.connectedAt = 0;
        this.reconnectTimer = null;
        this.connectTimer = null;
        this.heartbeatTimer = null;
        this.stableTimer = null;
        this.refreshTimer = null;
        /** The token the current connection was opened (or last refreshed) with. */
        this.currentToken = null;
        if (!options || options.url === undefined)
            throw new TypeError("GatewayClient: `url` is required");
        this.opts = {
            ...options,
            requestTimeoutMs: options.requestTimeoutMs ?? 10000,
            connectTimeoutMs: options.connectTimeoutMs ?? 10000,
            minReconnectDelayMs: options.minReconnectDelayMs ?? 500,
            maxReconnectDelayMs: options.maxReconnectDelayMs ?? 20000,
            stableAfterMs: options.stableAfterMs ?? 10000,
            pongTimeoutMs: options.pongTimeoutMs ?? 10000,
            random: options.random ?? Math.random,
        };
    }
    /** Connection id of the current connection, `null` when not connected. */
    get conn() {
        return this.state === "connected" && this.welcome ? this.welcome.conn : null;
    }
    /** Node of the current connection, `null` when not connected. */
    get node() {
        return this.state === "connected" && this.welcome ? this.welcome.node : null;
    }
    /** Start connecting (no-op when already started). Reconnects until {@link close}. */
    connect() {
        if (this.state === "idle" || this.state === "closed") {
            this.attempt = 0;
            void this.open();
        }
        return this;
    }
    /** Close for good: no reconnect; pending requests are rejected with `closed`. */
    close(code = 1000, reason = "client closed") {
        if (this.state === "closed")
            return;
        const ws = this.ws;
        this.teardownSocket();
        if (ws) {
            try {
                ws.close(code, reason);
            }
            catch {
                // already closing
            }
        }
        this.failAll("closed", "client closed");
        this.setState("closed");
        this.emit("closed", { code, reason, byClient: true });
    }
    /**
     * Subscribe to `channel` (or return the existing subscription). Works
     * before `connect()` and while disconnected: the subscribe is sent as soon
     * as a connection is up, and again after every reconnect.
     */
    subscribe(channel, opts = {}) {
        let sub = this.subs.get(channel);
        if (sub && sub.state !== "failed" && sub.state !== "unsubscribed") {
            if (opts.onMessage)
                sub.on("message", opts.onMessage);
            return sub;
        }
        sub = new Subscription(this, channel, opts.since ? { ...opts.since } : null);
        if (opts.onMessage)
            sub.on("message", opts.onMessage);
        this.subs.set(channel, sub);
        if (this.state === "connected")
            this.sendSubscribe(sub);
        return sub;
    }
    /** The subscription of `channel`, if any. */
    getSubscription(channel) {
        return this.subs.get(channel);
    }
    /** Publish `data` (any JSON) to `channel`; resolves with its history offset. */
    async publish(channel, data, opts = {}) {
        const frame = { op: "publish", channel, data };
        if (opts.echo)
            frame.echo = true;
        const reply = await this.request(frame, opts.timeoutMs);
        return { offset: reply.offset ?? null };
    }
    /** Members of a presence-enabled channel. */
    async presence(channel, timeoutMs) {
        const reply = await this.request({ op: "presence", channel }, timeoutMs);
        return reply.members ?? [];
    }
    /** Round trip of a `ping` op, in ms. */
    /** Call the backend's rpc hook (docs/backend.md): resolves with the reply's `data`. */
    async rpc(method, data, timeoutMs) {
        const reply = await this.request({ op: "rpc", method, data: data ?? null }, timeoutMs);
        return reply.data;
    }
    async ping(timeoutMs) {
        const t0 = Date.now();
        await this.request({ op: "ping" }, timeoutMs);
        return Date.now() - t0;
    }
    /**
     * Send a raw op (`{op, ...fields}`) and resolve with its reply frame. A
     * request made while disconnected waits for the connection, within its
     * timeout. Rejects with a {@link GatewayError}.
     */
    request(frame, timeoutMs) {
        const timeout = timeoutMs ?? this.opts.requestTimeoutMs;
        if (this.state === "closed") {
            return Promise.reject(new GatewayError("closed", "client closed"));
        }
        if (this.state === "connected") {
            return this.send(frame, timeout);
        }
        return new Promise((resolve, reject) => {
            const q = {
                frame,
                resolve,
                reject,
                deadline: Date.now() + timeout,
                timer: setTimeout(() => {
                    this.queue = this.queue.filter((x) => x !== q);
                    reject(new GatewayError("timeout", `no connection within ${timeout} ms`));
                }, timeout),
            };
            this.queue.push(q);
        });
    }
    /** @internal */
    async _unsubscribe(sub) {
        if (sub.state === "unsubscribed")
            return;
        const wasActive = sub.state === "subscribed" || sub.state === "pending";
        sub.state = "unsubscribed";
        sub._settle(null, new GatewayError("closed", "unsubscribed"));
        if (this.subs.get(sub.channel) === sub)
            this.subs.delete(sub.channel);
        if (wasActive && this.state === "connected") {
            try {
                await this.send({ op: "unsubscribe", channel: sub.channel }, this.opts.requestTimeoutMs);
            }
            catch (e) {
                // not_found: the server had not subscribed us (yet); nothing to undo.
                if (!(e instanceof GatewayError) || (e.code !== "not_found" && e.code !== "disconnected"))
                    throw e;
            }
        }
    }
    // --- connection lifecycle ---------------------------------------------
    setState(state) {
        if (this.state === state)
            return;
        this.state = state;
        this.emit("state", state);
    }
    async resolveUrl() {
        const src = this.opts.url;
        let url;
        if (typeof src === "function") {
            url = await src(this.urlIndex);
        }
        else if (Array.isArray(src)) {
            if (src.length === 0)
                throw new TypeError("GatewayClient: empty url list");
            url = src[this.urlIndex % src.length];
        }
        else {
            url = src;
        }
        this.urlIndex++;
        const loc = globalThis.location;
        const u = loc ? new URL(url, loc.href) : new URL(url);
        if (u.protocol === "http:")
            u.protocol = "ws:";
        if (u.protocol === "https:")
            u.protocol = "wss:";
        const token = typeof this.opts.token === "function"
            ? await this.opts.token()
            : (this.opts.token ?? (this.opts.getToken ? await this.opts.getToken() : undefined));
        this.currentToken = token ?? null;
        if (token)
            u.searchParams.set("token", token);
        for (const [k, v] of Object.entries(this.opts.params ?? {}))
            u.searchParams.set(k, v);
        return u.toString();
    }
    async open() {
        const seq = ++this.connectSeq;
        this.setState("connecting");
        this.clearTimer("connectTimer");
        this.connectTimer = setTimeout(() => {
            if (seq === this.connectSeq && this.state === "connecting") {
                this.lost(4000, "connect timeout");
            }
        }, this.opts.connectTimeoutMs);
        let url;
        let ws;
        try {
            url = await this.resolveUrl();
            if (seq !== this.connectSeq || this.state !== "connecting")
                return;
            const Ctor = this.opts.WebSocket ?? globalThis.WebSocket;
            if (!Ctor)
                throw new Error("no WebSocket implementation: pass options.WebSocket");
            ws = new Ctor(url);
        }
        catch (e) {
            if (seq !== this.connectSeq || this.state !== "connecting")
                return;
            this.lost(4000, `cannot connect: ${e instanceof Error ? e.message : String(e)}`);
            return;
        }
        this.ws = ws;
        ws.onmessage = (ev) => {
            if (this.ws === ws)
                this.onFrame(ev.data);
        };
        ws.onclose = (ev) => {
            if (this.ws === ws)
                this.lost(ev.code, ev.reason || "");
        };
        ws.onerror = () => {
            // The spec fires `close` (1006) right after; some implementations
            // (Node 20's undici on a refused connection) never do.
            if (this.ws === ws)
                this.lost(1006, "connection error");
        };
    }
    /** The current socket is gone (closed, dead or never opened). */
    lost(code, reason) {
        if (this.state === "closed")
            return;
        const ws = this.ws;
        const wasStable = this.state === "connected" && Date.now() - this.connectedAt >= this.opts.stableAfterMs;
        this.teardownSocket();
        if (ws && ws.readyState <= OPEN) {
            try {
                ws.close(4000, reason.slice(0, 100));
            }
            catch {
                // ignore
            }
        }
        this.failPending("disconnected", `connection lost (${code}${reason ? " " + reason : ""})`);
        for (const sub of this.subs.values()) {
            if (sub.state === "subscribed")
                sub.state = "pending";
        }
        if (isFatalCloseCode(code)) {
            this.failAll("closed", `closed by the server (${code} ${reason})`);
            this.setState("closed");
            this.emit("disconnected", { code, reason, reconnect: false, delayMs: 0, attempt: this.attempt });
            this.emit("closed", { code, reason, byClient: false });
            return;
        }
        if (wasStable)
            this.attempt = 0;
        // 1001 (draining) and 4002 (token expired): the server spreads these
        // closes itself; reconnect at once, then back off if that fails.
        const immediate = (code === 1001 || code === 4002) && this.attempt === 0;
        const delay = immediate
            ? 0
            : backoffDelay(this.attempt, this.opts.minReconnectDelayMs, this.opts.maxReconnectDelayMs, this.opts.random);
        const attempt = this.attempt;
        this.attempt++;
        this.setState("disconnected");
        this.emit("disconnected", { code, reason, reconnect: true, delayMs: delay, attempt });
        this.clearTimer("reconnectTimer");
        this.reconnectTimer = setTimeout(() => {
            this.reconnectTimer = null;
            if (this.state === "disconnected")
                void this.open();
        }, delay);
    }
    teardownSocket() {
        const ws = this.ws;
        if (ws) {
            ws.onopen = null;
            ws.onmessage = null;
            ws.onclose = null;
            ws.onerror = null;
        }
        this.ws = null;
        this.connectSeq++;
        this.clearTimer("connectTimer");
        this.clearTimer("heartbeatTimer");
        this.clearTimer("stableTimer");
        this.clearTimer("reconnectTimer");
        this.clearTimer("refreshTimer");
    }
    /** Schedule the in-band refresh of a token expiring at `exp` (Unix s). */
    scheduleRefresh(exp) {
        this.clearTimer("refreshTimer");
        if (!this.opts.getToken || exp === null)
            return;
        const before = this.opts.refreshBeforeMs ?? 10000;
        const delay = Math.max(0, exp * 1000 - before - Date.now());
        const seq = this.connectSeq;
        this.refreshTimer = setTimeout(() => {
            this.refreshTimer = null;
            void this.refreshToken(seq);
        }, delay);
    }
    async refreshToken(seq) {
        try {
            const getToken = this.opts.getToken;
            if (!getToken)
                return;
            const token = await getToken();
            if (seq !== this.connectSeq || this.state !== "connected")
                return;
            const reply = await this.send({ op: "refresh", token }, this.opts.requestTimeoutMs);
            if (seq !== this.connectSeq)
                return;
            this.currentToken = token;
            const exp = Number(reply.exp);
            this.scheduleRefresh(exp);
            this.emit("refreshed", exp);
        }
        catch (e) {
            const err = e instanceof GatewayError ? e : new GatewayError("internal", String(e));
            this.emit("refreshFailed", err);
        }
    }
    clearTimer(name) {
        const t = this[name];
        if (t !== null)
            clearTimeout(t);
        this[name] = null;
    }
    failPending(code, message) {
        for (const [id, p] of this.pending) {
            clearTimeout(p.timer);
            this.pending.delete(id);
            p.reject(new GatewayError(code, message));
        }
    }
    failAll(code, message) {
        this.failPending(code, message);
        const queue = this.queue;
        this.queue = [];
        for (const q of queue) {
            clearTimeout(q.timer);
            q.reject(new GatewayError(code, message));
        }
        for (const sub of this.subs.values()) {
            if (sub.state === "pending")
                sub._settle(null, new GatewayError(code, message));
        }
    }
    onWelcome(frame) {
        this.welcome = {
            conn: String(frame.conn),
            node: String(frame.node),
            user: frame.user ?? null,
            ping_interval_ms: Number(frame.ping_interval_ms) || 25000,
        };
        this.clearTimer("connectTimer");
        this.connectedAt = Date.now();
        this.setState("connected");
        this.stableTimer = setTimeout(() => {
            this.stableTimer = null;
            this.attempt = 0;
        }, this.opts.stableAfterMs);
        this.scheduleHeartbeat(this.pingInterval());
        this.scheduleRefresh(tokenExp(this.currentToken));
        for (const sub of this.subs.values()) {
            if (sub.state === "pending")
                this.sendSubscribe(sub);
        }
        const queue = this.queue;
        this.queue = [];
        const now = Date.now();
        for (const q of queue) {
            clearTimeout(q.timer);
            this.sendWith(q.frame, Math.max(1, q.deadline - now), q.resolve, q.reject);
        }
        this.emit("connected", this.welcome);
    }
    // --- heartbeat ----------------------------------------------------------
    pingInterval() {
        return this.opts.pingIntervalMs ?? this.welcome?.ping_interval_ms ?? 25000;
    }
    scheduleHeartbeat(ms) {
        this.clearTimer("heartbeatTimer");
        this.heartbeatTimer = setTimeout(() => this.heartbeat(), ms);
    }
    /**
     * Runs after `pingInterval` of possible silence. Cost per received frame
     * is one timestamp; the timer only re-arms itself here.
     */
    heartbeat() {
        this.heartbeatTimer = null;
        if (this.state !== "connected")
            return;
        const now = Date.now();
        if (this.pingSentAt > this.lastRx) {
            // A ping is out and nothing came back.
            if (now - this.pingSentAt >= this.opts.pongTimeoutMs) {
                this.lost(4000, "ping timeout");
                return;
            }
            this.scheduleHeartbeat(this.pingSentAt + this.opts.pongTimeoutMs - now);
            return;
        }
        const idle = now - this.lastRx;
        const interval = this.pingInterval();
        if (idle < interval) {
            this.scheduleHeartbeat(interval - idle);
            return;
        }
        this.pingSentAt = now;
        this.send({ op: "ping" }, this.opts.pongTimeoutMs + 1000).catch(() => {
            // The heartbeat decides; a late pong is fine.
        });
        this.scheduleHeartbeat(this.opts.pongTimeoutMs);
    }
    // --- frames ---------------------------------------------------------------
    send(frame, timeoutMs) {
        return new Promise((resolve, reject) => this.sendWith(frame, timeoutMs, resolve, reject));
    }
    /**
     * Send `frame` with a fresh id; exactly one of the callbacks runs, and
     * synchronously with the reply frame's event (subscribe replies must be
     * handled before the replayed messages that follow in the same read).
     */
    sendWith(frame, timeoutMs, resolve, reject) {
        const ws = this.ws;
        if (!ws || this.state !== "connected") {
            reject(new GatewayError("disconnected", "not connected"));
            return;
        }
        const id = this.nextId++;
        const timer = setTimeout(() => {
            if (this.pending.delete(id)) {
                reject(new GatewayError("timeout", `no reply to ${String(frame.op)} within ${timeoutMs} ms`));
            }
        }, timeoutMs);
        this.pending.set(id, { resolve, reject, timer });
        try {
            ws.send(JSON.stringify({ ...frame, id }));
        }
        catch (e) {
            clearTimeout(timer);
            this.pending.delete(id);
            reject(new GatewayError("disconnected", `send failed: ${e instanceof Error ? e.message : String(e)}`));
        }
    }
    sendSubscribe(sub) {
        const resubscribe = sub._everSubscribed;
        const since = sub.position && sub.position.epoch !== undefined ? sub.position : sub._requested;
        const frame = { op: "subscribe", channel: sub.channel };
        if (since)
            frame.since = since.epoch ? { offset: since.offset, epoch: since.epoch } : { offset: since.offset };
        const seq = this.connectSeq;
        this.sendWith(frame, this.opts.requestTimeoutMs, (reply) => this.onSubscribed(sub, reply, since, resubscribe), (e) => {
            if (sub.state !== "pending" || this.subs.get(sub.channel) !== sub)
                return;
            if (e.code === "disconnected" || e.code === "closed")
                return; // resent after reconnect
            const transient = e.code === "timeout" || e.code === "unavailable" || e.code === "rate_limited" || e.code === "internal";
            if (transient) {
                const delay = backoffDelay(sub._retry++, this.opts.minReconnectDelayMs, this.opts.maxReconnectDelayMs, this.opts.random);
                setTimeout(() => {
                    if (this.connectSeq === seq && this.state === "connected" && sub.state === "pending")
                        this.sendSubscribe(sub);
                }, delay);
                sub._emit("error", e);
                return;
            }
            sub.state = "failed";
            sub.error = e;
            this.subs.delete(sub.channel);
            sub._emit("error", e);
            sub._settle(null, e);
        });
    }
    onSubscribed(sub, reply, since, resubscribe) {
        if (sub.state !== "pending" || this.subs.get(sub.channel) !== sub)
            return;
        const offset = typeof reply.offset === "number" ? reply.offset : null;
        const epoch = typeof reply.epoch === "string" ? reply.epoch : null;
        let recovered = typeof reply.recovered === "boolean" ? reply.recovered : undefined;
        if (offset === null || epoch === null) {
            sub.position = null;
            sub._top = null;
            if (resubscribe)
                recovered = false; // no history: a gap cannot be ruled out
        }
        else if (since && recovered !== undefined && (!since.epoch || since.epoch === epoch) && since.offset <= offset) {
            // Replay follows: keep our position, the replayed messages advance it.
            sub.position = { offset: since.offset, epoch };
            sub._top = offset;
        }
        else {
            // No since, or an epoch change / since ahead of the stream: nothing is
            // replayed and live messages start after `offset`.
            sub.position = { offset, epoch };
            sub._top = offset;
        }
        if (resubscribe && recovered === undefined)
            recovered = false;
        sub.state = "subscribed";
        sub._retry = 0;
        sub._everSubscribed = true;
        const info = { channel: sub.channel, offset, epoch, recovered, resubscribed: resubscribe };
        sub._emit("subscribed", info);
        sub._settle(info, null);
    }
    onFrame(raw) {
        this.lastRx = Date.now();
        if (typeof raw !== "string")
            return;
        let frame;
        try {
            frame = JSON.parse(raw);
        }
        catch {
            return;
        }
        if (!frame || typeof frame !== "object")
            return;
        switch (frame.type) {
            case "welcome":
                this.onWelcome(frame);
                return;
            case "message":
                this.onMessage(frame);
                return;
            case "join":
            case "leave": {
                const sub = this.subs.get(String(frame.channel));
                if (sub && sub.state !== "unsubscribed") {
                    sub._emit(frame.type, {
                        channel: String(frame.channel),
                        user: frame.user ?? null,
                        conn: String(frame.conn),
                    });
                }
                return;
            }
            case "subscribed":
            case "unsubscribed":
                if (frame.id === null || frame.id === undefined) {
                    this.onServerSubscription(frame);
                    return;
                }
                this.onReply(frame);
                return;
            case "broadcast":
                this.emit("broadcast", frame.data);
                return;
            case "direct":
                this.emit("direct", frame.data);
                return;
            default:
                this.onReply(frame);
        }
    }
    /** A `subscribed` or `unsubscribed` push (null id): the server's doing. */
    onServerSubscription(frame) {
        const channel = String(frame.channel);
        let sub = this.subs.get(channel);
        if (frame.type === "unsubscribed") {
            if (!sub)
                return;
            sub.state = "unsubscribed";
            this.subs.delete(channel);
            sub._settle(null, new GatewayError("closed", "unsubscribed by the server"));
            sub._emit("unsubscribed");
            return;
        }
        if (sub && sub.state === "pending") {
            // The app's own subscribe (new, or resent after a reconnect) met the
            // server's: the server's counts (no `since`, so nothing recovered),
            // and the reply to ours ("already subscribed") is then ignored.
            this.onSubscribed(sub, frame, null, sub._everSubscribed);
            return;
        }
        if (sub && sub.state === "subscribed")
            return;
        sub = new Subscription(this, channel, null);
        sub.server = true;
        this.subs.set(channel, sub);
        this.emit("serverSubscribed", sub);
        this.onSubscribed(sub, frame, null, false);
    }
    onMessage(frame) {
        const channel = String(frame.channel);
        const sub = this.subs.get(channel);
        if (!sub || sub.state === "unsubscribed" || sub.state === "failed")
            return;
        const offset = typeof frame.offset === "number" ? frame.offset : null;
        if (offset !== null && sub.position) {
            if (offset <= sub.position.offset)
                return; // already seen
            sub.position = { offset, epoch: sub.position.epoch };
        }
        const replayed = offset !== null && sub._top !== null && offset <= sub._top;
        sub._emit("message", frame.data, {
            channel,
            offset,
            from: frame.from ?? null,
            replayed,
        });
    }
    onReply(frame) {
        const id = typeof frame.id === "number" ? frame.id : null;
        const p = id !== null ? this.pending.get(id) : undefined;
        if (id === null || !p) {
            if (frame.type === "error") {
                this.emit("error", new GatewayError(String(frame.code), String(frame.message)));
            }
            return;
        }
        this.pending.delete(id);
        clearTimeout(p.timer);
        if (frame.type === "error")
            p.reject(new GatewayError(String(frame.code), String(frame.message)));
        else
            p.resolve(frame);
    }
}
