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
export declare const PROTOCOL_VERSION = 1;
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
export declare class GatewayError extends Error {
    /**
     * A protocol error code (`bad_request`, `unauthorized`, `forbidden`,
     * `not_found`, `too_large`, `rate_limited`, `unavailable`, `internal`) or
     * one of the client's own: `timeout` (no reply in time), `disconnected`
     * (the connection dropped before the reply), `closed` (the client was
     * closed).
     */
    readonly code: string;
    constructor(code: string, message: string);
}
/** The part of the WebSocket API this client uses (browser or Node 22+). */
export interface WebSocketLike {
    readonly readyState: number;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
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
export declare function isFatalCloseCode(code: number): boolean;
/**
 * Delay before reconnect attempt `attempt` (0-based): uniform in
 * `[min, min(max, min * 2^(attempt + 1))]`, i.e. exponential backoff with
 * full jitter above a floor: 0.5-1 s, 0.5-2 s, 0.5-4 s, ... 0.5-20 s.
 */
export declare function backoffDelay(attempt: number, min?: number, max?: number, random?: () => number): number;
type Handler<T extends unknown[]> = (...args: T) => void;
declare class Emitter<E extends Record<string, unknown[]>> {
    private handlers;
    on<K extends keyof E>(event: K, fn: Handler<E[K]>): () => void;
    off<K extends keyof E>(event: K, fn: Handler<E[K]>): void;
    protected emit<K extends keyof E>(event: K, ...args: E[K]): void;
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
export declare class Subscription extends Emitter<SubscriptionEvents> {
    readonly channel: string;
    /** Current state. */
    state: SubscriptionState;
    /** Last position seen (`null` until subscribed, and in channels without history). */
    position: StreamPosition | null;
    /** Why the subscription failed, when `state` is `"failed"`. */
    error: GatewayError | null;
    /**
     * Whether the server made this subscription (JWT or connect proxy
     * `subs`, or the HTTP API) rather than {@link GatewayClient.subscribe}.
     */
    server: boolean;
    private readonly client;
    private readyWaiters;
    /** Resolves once subscribed (at once if it already is); rejects if it failed. */
    ready(): Promise<SubscribedInfo>;
    /** Publish to this channel (see {@link GatewayClient.publish}). */
    publish(data: unknown, opts?: {
        echo?: boolean;
        timeoutMs?: number;
    }): Promise<{
        offset: number | null;
    }>;
    /** Current members (presence-enabled channels). */
    presence(timeoutMs?: number): Promise<Member[]>;
    /** Stop receiving; the client forgets the channel. */
    unsubscribe(): Promise<void>;
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
type Frame = Record<string, unknown> & {
    type: string;
};
/** The `exp` claim of a JWT (Unix s), `null` when unreadable. The SDK only reads it to time the refresh. */
export declare function tokenExp(token: string | null): number | null;
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
export declare class GatewayClient extends Emitter<ClientEvents> {
    /** Current state. */
    state: ConnectionState;
    /** The last `welcome` (connection id, node, user), `null` before the first. */
    welcome: Welcome | null;
    private readonly opts;
    private ws;
    private readonly subs;
    private readonly pending;
    private queue;
    private nextId;
    private attempt;
    private urlIndex;
    private connectSeq;
    private lastRx;
    private pingSentAt;
    private connectedAt;
    private reconnectTimer;
    private connectTimer;
    private heartbeatTimer;
    private stableTimer;
    private refreshTimer;
    /** The token the current connection was opened (or last refreshed) with. */
    private currentToken;
    constructor(options: ClientOptions);
    /** Connection id of the current connection, `null` when not connected. */
    get conn(): string | null;
    /** Node of the current connection, `null` when not connected. */
    get node(): string | null;
    /** Start connecting (no-op when already started). Reconnects until {@link close}. */
    connect(): this;
    /** Close for good: no reconnect; pending requests are rejected with `closed`. */
    close(code?: number, reason?: string): void;
    /**
     * Subscribe to `channel` (or return the existing subscription). Works
     * before `connect()` and while disconnected: the subscribe is sent as soon
     * as a connection is up, and again after every reconnect.
     */
    subscribe(channel: string, opts?: SubscribeOptions): Subscription;
    /** The subscription of `channel`, if any. */
    getSubscription(channel: string): Subscription | undefined;
    /** Publish `data` (any JSON) to `channel`; resolves with its history offset. */
    publish(channel: string, data: unknown, opts?: {
        echo?: boolean;
        timeoutMs?: number;
    }): Promise<{
        offset: number | null;
    }>;
    /** Members of a presence-enabled channel. */
    presence(channel: string, timeoutMs?: number): Promise<Member[]>;
    /** Round trip of a `ping` op, in ms. */
    /** Call the backend's rpc hook (docs/backend.md): resolves with the reply's `data`. */
    rpc(method: string, data?: unknown, timeoutMs?: number): Promise<unknown>;
    ping(timeoutMs?: number): Promise<number>;
    /**
     * Send a raw op (`{op, ...fields}`) and resolve with its reply frame. A
     * request made while disconnected waits for the connection, within its
     * timeout. Rejects with a {@link GatewayError}.
     */
    request(frame: Record<string, unknown>, timeoutMs?: number): Promise<Frame>;
    private setState;
    private resolveUrl;
    private open;
    /** The current socket is gone (closed, dead or never opened). */
    private lost;
    private teardownSocket;
    /** Schedule the in-band refresh of a token expiring at `exp` (Unix s). */
    private scheduleRefresh;
    private refreshToken;
    private clearTimer;
    private failPending;
    private failAll;
    private onWelcome;
    private pingInterval;
    private scheduleHeartbeat;
    /**
     * Runs after `pingInterval` of possible silence. Cost per received frame
     * is one timestamp; the timer only re-arms itself here.
     */
    private heartbeat;
    private send;
    /**
     * Send `frame` with a fresh id; exactly one of the callbacks runs, and
     * synchronously with the reply frame's event (subscribe replies must be
     * handled before the replayed messages that follow in the same read).
     */
    private sendWith;
    private sendSubscribe;
    private onSubscribed;
    private onFrame;
    /** A `subscribed` or `unsubscribed` push (null id): the server's doing. */
    private onServerSubscription;
    private onMessage;
    private onReply;
}
export {};
