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

/** Connection state of a {@link GatewayClient}. */
export type ConnectionState = "idle" | "connecting" | "connected" | "disconnected" | "closed";

/** A position in a channel's history stream. */
export interface StreamPosition {
  /** Offset of the last publication seen (0 = none). */
  offset: number;
  /** Epoch of the stream; absent or empty matches any epoch. */
  epoch?: string;
}

/** A member of a presence-enabled channel. */
export interface Member {
  user: string | null;
  conn: string;
  node: string;
  info?: unknown;
}

/** The server's `welcome` frame. */
export interface Welcome {
  conn: string;
  node: string;
  user: string | null;
  ping_interval_ms: number;
}

/** Context passed with every channel message. */
export interface MessageContext {
  channel: string;
  /** History offset, `null` in a channel without history. */
  offset: number | null;
  /** Publishing user, `null` for the HTTP API or anonymous publishers. */
  from: string | null;
  /**
   * True when the message was published before this (re)subscription and
   * is being replayed from history (offset at or below the `subscribed`
   * reply's offset).
   */
  replayed: boolean;
}

/** Passed to `subscribed` handlers after every (re)subscription. */
export interface SubscribedInfo {
  channel: string;
  /** Top offset of the stream at subscribe time (`null` without history). */
  offset: number | null;
  /** Stream epoch (`null` without history). */
  epoch: string | null;
  /**
   * Whether every publication since the last one seen was delivered.
   * - First subscribe: the server's value when `since` was given, else
   *   `undefined`.
   * - Resubscribe after a reconnect: always a boolean; `false` means
   *   messages may have been lost (history trimmed or expired, the stream's
   *   epoch changed, or the channel has no history): refetch your state.
   */
  recovered?: boolean;
  /** True when this follows a reconnect (not the app's own subscribe). */
  resubscribed: boolean;
}

/** A join or leave push. */
export interface PresenceEvent {
  channel: string;
  user: string | null;
  conn: string;
}

/** Passed to `disconnected` handlers. */
export interface DisconnectInfo {
  /** WebSocket close code (1006 when the connection just died). */
  code: number;
  reason: string;
  /** Whether the client will reconnect on its own. */
  reconnect: boolean;
  /** Delay before the next attempt, in ms (when `reconnect`). */
  delayMs: number;
  /** Consecutive failed attempts so far (0 after a stable connection). */
  attempt: number;
}

/** Passed to `closed` handlers: the client stopped for good. */
export interface CloseInfo {
  code: number;
  reason: string;
  /** True when the app called {@link GatewayClient.close}. */
  byClient: boolean;
}

/** A refused, timed-out or interrupted request. */
export class GatewayError extends Error {
  /**
   * A protocol error code (`bad_request`, `unauthorized`, `forbidden`,
   * `not_found`, `too_large`, `rate_limited`, `unavailable`, `internal`) or
   * one of the client's own: `timeout` (no reply in time), `disconnected`
   * (the connection dropped before the reply), `closed` (the client was
   * closed).
   */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "GatewayError";
    this.code = code;
  }
}

/** The part of the WebSocket API this client uses (browser or Node 22+). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Where to connect: one URL, a list tried in turn, or a callback. */
export type UrlSource = string | string[] | ((attempt: number) => string | Promise<string>);

/** Options of {@link GatewayClient}. */
export interface ClientOptions {
  /**
   * WebSocket URL(s) of `/ws`. A list is tried in turn: every new attempt
   * moves to the next entry, so a client whose node died reconnects through
   * another one. A callback gets the attempt number and returns the URL.
   * In a browser, `"/ws"` and `http(s)://` URLs are turned into `ws(s)://`
   * URLs on the page's host.
   */
  url: UrlSource;
  /**
   * JWT passed as `?token=`; a callback is called before every connect so
   * it can return a fresh one.
   */
  token?: string | (() => string | Promise<string>);
  /**
   * In-band token refresh: called `refreshBeforeMs` before the current
   * token's `exp`; the fresh token (same user, later `exp`) is sent with the
   * `refresh` op, so the connection outlives the token without a reconnect.
   * Also used for the first connect when `token` is not set.
   */
  getToken?: () => string | Promise<string>;
  /** How long before `exp` {@link ClientOptions.getToken} is called, ms. Default 10000. */
  refreshBeforeMs?: number;
  /** Extra query parameters, e.g. `{ user: "alice" }` in open development mode. */
  params?: Record<string, string>;
  /** WebSocket implementation; default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Default timeout of a request, ms. Default 10000. */
  requestTimeoutMs?: number;
  /** How long a connect may take until `welcome`, ms. Default 10000. */
  connectTimeoutMs?: number;
  /** Backoff floor, ms. Default 500. */
  minReconnectDelayMs?: number;
  /** Backoff ceiling, ms. Default 20000. */
  maxReconnectDelayMs?: number;
  /** A connection open this long resets the backoff, ms. Default 10000. */
  stableAfterMs?: number;
  /**
   * Send a `ping` op after this much silence from the server, ms. Default:
   * the server's `ping_interval_ms` from `welcome` (25000 by default).
   */
  pingIntervalMs?: number;
  /** After a ping, declare the connection dead if nothing arrives within this, ms. Default 10000. */
  pongTimeoutMs?: number;
  /** Source of randomness in [0, 1) for the jitter (tests). Default `Math.random`. */
  random?: () => number;
}

/** Options of {@link GatewayClient.subscribe}. */
export interface SubscribeOptions {
  /**
   * Start from this position instead of "now": `{ offset: 0 }` replays
   * everything retained (e.g. a task's log lines published before the
   * page opened).
   */
  since?: StreamPosition;
  /** Shorthand for `sub.on("message", fn)`. */
  onMessage?: (data: unknown, ctx: MessageContext) => void;
}

/** Close codes after which the client does not reconnect (docs/protocol.md). */
export function isFatalCloseCode(code: number): boolean {
  return code === 1008 || code === 1009 || (code >= 4500 && code <= 4999);
}

/**
 * Delay before reconnect attempt `attempt` (0-based): uniform in
 * `[min, min(max, min * 2^(attempt + 1))]`, i.e. exponential backoff with
 * full jitter above a floor: 0.5-1 s, 0.5-2 s, 0.5-4 s, ... 0.5-20 s.
 */
export function backoffDelay(
  attempt: number,
  min = 500,
  max = 20000,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(max, min * Math.pow(2, Math.min(attempt + 1, 30)));
  return Math.round(min + random() * Math.max(0, ceiling - min));
}

type Handler<T extends unknown[]> = (...args: T) => void;

class Emitter<E extends Record<string, unknown[]>> {
  private handlers: { [K in keyof E]?: Set<Handler<E[K]>> } = {};

  on<K extends keyof E>(event: K, fn: Handler<E[K]>): () => void {
    let set = this.handlers[event];
    if (!set) {
      set = new Set();
      this.handlers[event] = set;
    }
    set.add(fn);
    return () => this.off(event, fn);
  }

  off<K extends keyof E>(event: K, fn: Handler<E[K]>): void {
    this.handlers[event]?.delete(fn);
  }

  protected emit<K extends keyof E>(event: K, ...args: E[K]): void {
    const set = this.handlers[event];
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        // An app handler's bug must not break the connection.
        console.error(`gateway-client: ${String(event)} handler threw`, e);
      }
    }
  }
}

/** Events of a {@link Subscription}. */
export type SubscriptionEvents = {
  message: [data: unknown, ctx: MessageContext];
  join: [event: PresenceEvent];
  leave: [event: PresenceEvent];
  subscribed: [info: SubscribedInfo];
  /** The server ended the subscription (an `unsubscribed` push: the HTTP API). */
  unsubscribed: [];
  error: [error: GatewayError];
};

/** Subscription state. */
export type SubscriptionState = "pending" | "subscribed" | "failed" | "unsubscribed";

/** One channel subscription; survives reconnects until unsubscribed. */
export class Subscription extends Emitter<SubscriptionEvents> {
  readonly channel: string;
  /** Current state. */
  state: SubscriptionState = "pending";
  /** Last position seen (`null` until subscribed, and in channels without history). */
  position: StreamPosition | null = null;
  /** Why the subscription failed, when `state` is `"failed"`. */
  error: GatewayError | null = null;
  /** @internal */
  _requested: StreamPosition | null;
  /** @internal top offset of the current subscription (for `replayed`). */
  _top: number | null = null;
  /** @internal whether the client has been subscribed at least once. */
  _everSubscribed = false;
  /**
   * Whether the server made this subscription (JWT or connect proxy
   * `subs`, or the HTTP API) rather than {@link GatewayClient.subscribe}.
   */
  server = false;
  /** @internal */
  _retry = 0;
  private readonly client: GatewayClient;
  private readyWaiters: Array<{ resolve: (i: SubscribedInfo) => void; reject: (e: GatewayError) => void }> = [];

  /** @internal use {@link GatewayClient.subscribe}. */
  constructor(client: GatewayClient, channel: string, since: StreamPosition | null) {
    super();
    this.client = client;
    this.channel = channel;
    this._requested = since;
  }

  /** Resolves once subscribed (at once if it already is); rejects if it failed. */
  ready(): Promise<SubscribedInfo> {
    if (this.state === "subscribed") {
      return Promise.resolve({
        channel: this.channel,
        offset: this.position ? this.position.offset : null,
        epoch: this.position?.epoch ?? null,
        resubscribed: false,
      });
    }
    if (this.state === "failed" && this.error) return Promise.reject(this.error);
    if (this.state === "unsubscribed") return Promise.reject(new GatewayError("closed", "unsubscribed"));
    return new Promise((resolve, reject) => this.readyWaiters.push({ resolve, reject }));
  }

  /** Publish to this channel (see {@link GatewayClient.publish}). */
  publish(data: unknown, opts?: { echo?: boolean; timeoutMs?: number }): Promise<{ offset: number | null }> {
    return this.client.publish(this.channel, data, opts);
  }

  /** Current members (presence-enabled channels). */
  presence(timeoutMs?: number): Promise<Member[]> {
    return this.client.presence(this.channel, timeoutMs);
  }

  /** Stop receiving; the client forgets the channel. */
  unsubscribe(): Promise<void> {
    return this.client._unsubscribe(this);
  }

  /** @internal */
  _emit<K extends keyof SubscriptionEvents>(event: K, ...args: SubscriptionEvents[K]): void {
    this.emit(event, ...args);
  }

  /** @internal */
  _settle(info: SubscribedInfo | null, error: GatewayError | null): void {
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) {
      if (info) w.resolve(info);
      else w.reject(error ?? new GatewayError("closed", "unsubscribed"));
    }
  }
}

/** Events of a {@link GatewayClient}. */
export type ClientEvents = {
  /** Every state change. */
  state: [state: ConnectionState];
  /** `welcome` received: the connection is usable. */
  connected: [welcome: Welcome];
  /** The connection ended; see `reconnect` and `delayMs`. */
  disconnected: [info: DisconnectInfo];
  /** The client stopped for good (a "do not reconnect" close code, or `close()`). */
  closed: [info: CloseInfo];
  /** A `broadcast` push. */
  broadcast: [data: unknown];
  /** A `direct` push (to this user or this connection). */
  direct: [data: unknown];
  /** An `error` frame that answers no pending request. */
  error: [error: GatewayError];
  /** The token was refreshed in band; `exp` is the connection's new expiry (Unix s). */
  refreshed: [exp: number];
  /** An in-band refresh failed (the server closes with 4002 at `exp`; the reconnect fetches a new token). */
  refreshFailed: [error: GatewayError];
  /**
   * The server subscribed this connection to a channel the app had not
   * subscribed (JWT or connect proxy `subs`, the HTTP API): attach
   * handlers to `sub` here; its messages follow this event. Like any
   * subscription it is kept across reconnects (resubscribed with
   * recovery unless the server subscribes it again first).
   */
  serverSubscribed: [sub: Subscription];
};

interface Pending {
  resolve: (frame: Frame) => void;
  reject: (e: GatewayError) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface Queued {
  frame: Record<string, unknown>;
  resolve: (frame: Frame) => void;
  reject: (e: GatewayError) => void;
  deadline: number;
  timer: ReturnType<typeof setTimeout>;
}

type Frame = Record<string, unknown> & { type: string };

const OPEN = 1;

/** The `exp` claim of a JWT (Unix s), `null` when unreadable. The SDK only reads it to time the refresh. */
export function tokenExp(token: string | null): number | null {
  if (!token) return null;
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const json = typeof atob === "function" ? atob(padded) : "";
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === "number" && Number.isFinite(exp) ? exp : null;
  } catch {
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
export class GatewayClient extends Emitter<ClientEvents> {
  /** Current state. */
  state: ConnectionState = "idle";
  /** The last `welcome` (connection id, node, user), `null` before the first. */
  welcome: Welcome | null = null;

  private readonly opts: Required<
    Pick<
      ClientOptions,
      | "requestTimeoutMs"
      | "connectTimeoutMs"
      | "minReconnectDelayMs"
      | "maxReconnectDelayMs"
      | "stableAfterMs"
      | "pongTimeoutMs"
      | "random"
    >
  > &
    ClientOptions;
  private ws: WebSocketLike | null = null;
  private readonly subs = new Map<string, Subscription>();
  private readonly pending = new Map<number, Pending>();
  private queue: Queued[] = [];
  private nextId = 1;
  private attempt = 0;
  private urlIndex = 0;
  private connectSeq = 0;
  private lastRx = 0;
  private pingSentAt = 0;
  private connectedAt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private connectTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setTimeout> | null = null;
  private stableTimer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  /** The token the current connection was opened (or last refreshed) with. */
  private currentToken: string | null = null;

  constructor(options: ClientOptions) {
    super();
    if (!options || options.url === undefined) throw new TypeError("GatewayClient: `url` is required");
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
  get conn(): string | null {
    return this.state === "connected" && this.welcome ? this.welcome.conn : null;
  }

  /** Node of the current connection, `null` when not connected. */
  get node(): string | null {
    return this.state === "connected" && this.welcome ? this.welcome.node : null;
  }

  /** Start connecting (no-op when already started). Reconnects until {@link close}. */
  connect(): this {
    if (this.state === "idle" || this.state === "closed") {
      this.attempt = 0;
      void this.open();
    }
    return this;
  }

  /** Close for good: no reconnect; pending requests are rejected with `closed`. */
  close(code = 1000, reason = "client closed"): void {
    if (this.state === "closed") return;
    const ws = this.ws;
    this.teardownSocket();
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
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
  subscribe(channel: string, opts: SubscribeOptions = {}): Subscription {
    let sub = this.subs.get(channel);
    if (sub && sub.state !== "failed" && sub.state !== "unsubscribed") {
      if (opts.onMessage) sub.on("message", opts.onMessage);
      return sub;
    }
    sub = new Subscription(this, channel, opts.since ? { ...opts.since } : null);
    if (opts.onMessage) sub.on("message", opts.onMessage);
    this.subs.set(channel, sub);
    if (this.state === "connected") this.sendSubscribe(sub);
    return sub;
  }

  /** The subscription of `channel`, if any. */
  getSubscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  /** Publish `data` (any JSON) to `channel`; resolves with its history offset. */
  async publish(
    channel: string,
    data: unknown,
    opts: { echo?: boolean; timeoutMs?: number } = {},
  ): Promise<{ offset: number | null }> {
    const frame: Record<string, unknown> = { op: "publish", channel, data };
    if (opts.echo) frame.echo = true;
    const reply = await this.request(frame, opts.timeoutMs);
    return { offset: (reply.offset as number | null) ?? null };
  }

  /** Members of a presence-enabled channel. */
  async presence(channel: string, timeoutMs?: number): Promise<Member[]> {
    const reply = await this.request({ op: "presence", channel }, timeoutMs);
    return (reply.members as Member[]) ?? [];
  }

  /** Round trip of a `ping` op, in ms. */
  /** Call the backend's rpc hook (docs/backend.md): resolves with the reply's `data`. */
  async rpc(method: string, data?: unknown, timeoutMs?: number): Promise<unknown> {
    const reply = await this.request({ op: "rpc", method, data: data ?? null }, timeoutMs);
    return reply.data;
  }

  async ping(timeoutMs?: number): Promise<number> {
    const t0 = Date.now();
    await this.request({ op: "ping" }, timeoutMs);
    return Date.now() - t0;
  }

  /**
   * Send a raw op (`{op, ...fields}`) and resolve with its reply frame. A
   * request made while disconnected waits for the connection, within its
   * timeout. Rejects with a {@link GatewayError}.
   */
  request(frame: Record<string, unknown>, timeoutMs?: number): Promise<Frame> {
    const timeout = timeoutMs ?? this.opts.requestTimeoutMs;
    if (this.state === "closed") {
      return Promise.reject(new GatewayError("closed", "client closed"));
    }
    if (this.state === "connected") {
      return this.send(frame, timeout);
    }
    return new Promise((resolve, reject) => {
      const q: Queued = {
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
  async _unsubscribe(sub: Subscription): Promise<void> {
    if (sub.state === "unsubscribed") return;
    const wasActive = sub.state === "subscribed" || sub.state === "pending";
    sub.state = "unsubscribed";
    sub._settle(null, new GatewayError("closed", "unsubscribed"));
    if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
    if (wasActive && this.state === "connected") {
      try {
        await this.send({ op: "unsubscribe", channel: sub.channel }, this.opts.requestTimeoutMs);
      } catch (e) {
        // not_found: the server had not subscribed us (yet); nothing to undo.
        if (!(e instanceof GatewayError) || (e.code !== "not_found" && e.code !== "disconnected")) throw e;
      }
    }
  }

  // --- connection lifecycle ---------------------------------------------

  private setState(state: ConnectionState): void {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  private async resolveUrl(): Promise<string> {
    const src = this.opts.url;
    let url: string;
    if (typeof src === "function") {
      url = await src(this.urlIndex);
    } else if (Array.isArray(src)) {
      if (src.length === 0) throw new TypeError("GatewayClient: empty url list");
      url = src[this.urlIndex % src.length];
    } else {
      url = src;
    }
    this.urlIndex++;
    const loc = (globalThis as { location?: { href: string } }).location;
    const u = loc ? new URL(url, loc.href) : new URL(url);
    if (u.protocol === "http:") u.protocol = "ws:";
    if (u.protocol === "https:") u.protocol = "wss:";
    const token =
      typeof this.opts.token === "function"
        ? await this.opts.token()
        : (this.opts.token ?? (this.opts.getToken ? await this.opts.getToken() : undefined));
    this.currentToken = token ?? null;
    if (token) u.searchParams.set("token", token);
    for (const [k, v] of Object.entries(this.opts.params ?? {})) u.searchParams.set(k, v);
    return u.toString();
  }

  private async open(): Promise<void> {
    const seq = ++this.connectSeq;
    this.setState("connecting");
    this.clearTimer("connectTimer");
    this.connectTimer = setTimeout(() => {
      if (seq === this.connectSeq && this.state === "connecting") {
        this.lost(4000, "connect timeout");
      }
    }, this.opts.connectTimeoutMs);
    let url: string;
    let ws: WebSocketLike;
    try {
      url = await this.resolveUrl();
      if (seq !== this.connectSeq || this.state !== "connecting") return;
      const Ctor =
        this.opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
      if (!Ctor) throw new Error("no WebSocket implementation: pass options.WebSocket");
      ws = new Ctor(url);
    } catch (e) {
      if (seq !== this.connectSeq || this.state !== "connecting") return;
      this.lost(4000, `cannot connect: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (this.ws === ws) this.onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this.lost(ev.code, ev.reason || "");
    };
    ws.onerror = () => {
      // The spec fires `close` (1006) right after; some implementations
      // (Node 20's undici on a refused connection) never do.
      if (this.ws === ws) this.lost(1006, "connection error");
    };
  }

  /** The current socket is gone (closed, dead or never opened). */
  private lost(code: number, reason: string): void {
    if (this.state === "closed") return;
    const ws = this.ws;
    const wasStable = this.state === "connected" && Date.now() - this.connectedAt >= this.opts.stableAfterMs;
    this.teardownSocket();
    if (ws && ws.readyState <= OPEN) {
      try {
        ws.close(4000, reason.slice(0, 100));
      } catch {
        // ignore
      }
    }
    this.failPending("disconnected", `connection lost (${code}${reason ? " " + reason : ""})`);
    for (const sub of this.subs.values()) {
      if (sub.state === "subscribed") sub.state = "pending";
    }
    if (isFatalCloseCode(code)) {
      this.failAll("closed", `closed by the server (${code} ${reason})`);
      this.setState("closed");
      this.emit("disconnected", { code, reason, reconnect: false, delayMs: 0, attempt: this.attempt });
      this.emit("closed", { code, reason, byClient: false });
      return;
    }
    if (wasStable) this.attempt = 0;
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
      if (this.state === "disconnected") void this.open();
    }, delay);
  }

  private teardownSocket(): void {
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
  private scheduleRefresh(exp: number | null): void {
    this.clearTimer("refreshTimer");
    if (!this.opts.getToken || exp === null) return;
    const before = this.opts.refreshBeforeMs ?? 10000;
    const delay = Math.max(0, exp * 1000 - before - Date.now());
    const seq = this.connectSeq;
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      void this.refreshToken(seq);
    }, delay);
  }

  private async refreshToken(seq: number): Promise<void> {
    try {
      const getToken = this.opts.getToken;
      if (!getToken) return;
      const token = await getToken();
      if (seq !== this.connectSeq || this.state !== "connected") return;
      const reply = await this.send({ op: "refresh", token }, this.opts.requestTimeoutMs);
      if (seq !== this.connectSeq) return;
      this.currentToken = token;
      const exp = Number(reply.exp);
      this.scheduleRefresh(exp);
      this.emit("refreshed", exp);
    } catch (e) {
      const err = e instanceof GatewayError ? e : new GatewayError("internal", String(e));
      this.emit("refreshFailed", err);
    }
  }

  private clearTimer(
    name: "reconnectTimer" | "connectTimer" | "heartbeatTimer" | "stableTimer" | "refreshTimer",
  ): void {
    const t = this[name];
    if (t !== null) clearTimeout(t);
    this[name] = null;
  }

  private failPending(code: string, message: string): void {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(new GatewayError(code, message));
    }
  }

  private failAll(code: string, message: string): void {
    this.failPending(code, message);
    const queue = this.queue;
    this.queue = [];
    for (const q of queue) {
      clearTimeout(q.timer);
      q.reject(new GatewayError(code, message));
    }
    for (const sub of this.subs.values()) {
      if (sub.state === "pending") sub._settle(null, new GatewayError(code, message));
    }
  }

  private onWelcome(frame: Frame): void {
    this.welcome = {
      conn: String(frame.conn),
      node: String(frame.node),
      user: (frame.user as string | null) ?? null,
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
      if (sub.state === "pending") this.sendSubscribe(sub);
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

  private pingInterval(): number {
    return this.opts.pingIntervalMs ?? this.welcome?.ping_interval_ms ?? 25000;
  }

  private scheduleHeartbeat(ms: number): void {
    this.clearTimer("heartbeatTimer");
    this.heartbeatTimer = setTimeout(() => this.heartbeat(), ms);
  }

  /**
   * Runs after `pingInterval` of possible silence. Cost per received frame
   * is one timestamp; the timer only re-arms itself here.
   */
  private heartbeat(): void {
    this.heartbeatTimer = null;
    if (this.state !== "connected") return;
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

  private send(frame: Record<string, unknown>, timeoutMs: number): Promise<Frame> {
    return new Promise((resolve, reject) => this.sendWith(frame, timeoutMs, resolve, reject));
  }

  /**
   * Send `frame` with a fresh id; exactly one of the callbacks runs, and
   * synchronously with the reply frame's event (subscribe replies must be
   * handled before the replayed messages that follow in the same read).
   */
  private sendWith(
    frame: Record<string, unknown>,
    timeoutMs: number,
    resolve: (frame: Frame) => void,
    reject: (e: GatewayError) => void,
  ): void {
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
    } catch (e) {
      clearTimeout(timer);
      this.pending.delete(id);
      reject(new GatewayError("disconnected", `send failed: ${e instanceof Error ? e.message : String(e)}`));
    }
  }

  private sendSubscribe(sub: Subscription): void {
    const resubscribe = sub._everSubscribed;
    const since = sub.position && sub.position.epoch !== undefined ? sub.position : sub._requested;
    const frame: Record<string, unknown> = { op: "subscribe", channel: sub.channel };
    if (since) frame.since = since.epoch ? { offset: since.offset, epoch: since.epoch } : { offset: since.offset };
    const seq = this.connectSeq;
    this.sendWith(
      frame,
      this.opts.requestTimeoutMs,
      (reply) => this.onSubscribed(sub, reply, since, resubscribe),
      (e: GatewayError) => {
        if (sub.state !== "pending" || this.subs.get(sub.channel) !== sub) return;
        if (e.code === "disconnected" || e.code === "closed") return; // resent after reconnect
        const transient = e.code === "timeout" || e.code === "unavailable" || e.code === "rate_limited" || e.code === "internal";
        if (transient) {
          const delay = backoffDelay(sub._retry++, this.opts.minReconnectDelayMs, this.opts.maxReconnectDelayMs, this.opts.random);
          setTimeout(() => {
            if (this.connectSeq === seq && this.state === "connected" && sub.state === "pending") this.sendSubscribe(sub);
          }, delay);
          sub._emit("error", e);
          return;
        }
        sub.state = "failed";
        sub.error = e;
        this.subs.delete(sub.channel);
        sub._emit("error", e);
        sub._settle(null, e);
      },
    );
  }

  private onSubscribed(sub: Subscription, reply: Frame, since: StreamPosition | null, resubscribe: boolean): void {
    if (sub.state !== "pending" || this.subs.get(sub.channel) !== sub) return;
    const offset = typeof reply.offset === "number" ? reply.offset : null;
    const epoch = typeof reply.epoch === "string" ? reply.epoch : null;
    let recovered = typeof reply.recovered === "boolean" ? reply.recovered : undefined;
    if (offset === null || epoch === null) {
      sub.position = null;
      sub._top = null;
      if (resubscribe) recovered = false; // no history: a gap cannot be ruled out
    } else if (since && recovered !== undefined && (!since.epoch || since.epoch === epoch) && since.offset <= offset) {
      // Replay follows: keep our position, the replayed messages advance it.
      sub.position = { offset: since.offset, epoch };
      sub._top = offset;
    } else {
      // No since, or an epoch change / since ahead of the stream: nothing is
      // replayed and live messages start after `offset`.
      sub.position = { offset, epoch };
      sub._top = offset;
    }
    if (resubscribe && recovered === undefined) recovered = false;
    sub.state = "subscribed";
    sub._retry = 0;
    sub._everSubscribed = true;
    const info: SubscribedInfo = { channel: sub.channel, offset, epoch, recovered, resubscribed: resubscribe };
    sub._emit("subscribed", info);
    sub._settle(info, null);
  }

  private onFrame(raw: unknown): void {
    this.lastRx = Date.now();
    if (typeof raw !== "string") return;
    let frame: Frame;
    try {
      frame = JSON.parse(raw) as Frame;
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
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
            user: (frame.user as string | null) ?? null,
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
  private onServerSubscription(frame: Frame): void {
    const channel = String(frame.channel);
    let sub = this.subs.get(channel);
    if (frame.type === "unsubscribed") {
      if (!sub) return;
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
    if (sub && sub.state === "subscribed") return;
    sub = new Subscription(this, channel, null);
    sub.server = true;
    this.subs.set(channel, sub);
    this.emit("serverSubscribed", sub);
    this.onSubscribed(sub, frame, null, false);
  }

  private onMessage(frame: Frame): void {
    const channel = String(frame.channel);
    const sub = this.subs.get(channel);
    if (!sub || sub.state === "unsubscribed" || sub.state === "failed") return;
    const offset = typeof frame.offset === "number" ? frame.offset : null;
    if (offset !== null && sub.position) {
      if (offset <= sub.position.offset) return; // already seen
      sub.position = { offset, epoch: sub.position.epoch };
    }
    const replayed = offset !== null && sub._top !== null && offset <= sub._top;
    sub._emit("message", frame.data, {
      channel,
      offset,
      from: (frame.from as string | null) ?? null,
      replayed,
    });
  }

  private onReply(frame: Frame): void {
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
    if (frame.type === "error") p.reject(new GatewayError(String(frame.code), String(frame.message)));
    else p.resolve(frame);
  }
}
