// pusher-js (its Node build) as an application uses it, plus recorders that
// let a test wait, with a deadline, for what a client saw.

import PusherJs from "pusher-js";

import { waitFor } from "../../../clients/js/test/harness.mjs";
import { APP } from "./cluster.mjs";

export { PusherJs, waitFor };

const open = new Set();

/**
 * A pusher-js client on `port` (a gateway node or a proxy), configured as
 * the contract's "Clients users use" says; `user` is sent to the backend
 * (as the user_id parameter) by channel authorization and user
 * authentication. Every frame it receives is recorded in `client.frames`,
 * every connection error in `client.errors`, every state in `client.states`.
 */
export function connect(port, { backend, user, key = APP.key, extra = {} } = {}) {
  const params = user ? { user_id: user } : {};
  const pusher = new PusherJs(key, {
    wsHost: "127.0.0.1",
    wsPort: port,
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "mt1",
    channelAuthorization: { endpoint: `${backend}/pusher/auth`, transport: "ajax", params },
    userAuthentication: { endpoint: `${backend}/pusher/user-auth`, transport: "ajax", params },
    ...extra,
  });
  const client = record(pusher);
  open.add(pusher);
  return client;
}

/** Attach recorders to a Pusher instance (also used for Laravel Echo's). */
export function record(pusher) {
  const frames = [];
  const errors = [];
  const states = [];
  pusher.connection.bind("message", (m) => frames.push(m));
  pusher.connection.bind("error", (e) => errors.push(e));
  pusher.connection.bind("state_change", (s) => states.push(s.current));
  return {
    pusher,
    frames,
    errors,
    states,
    get socketId() {
      return pusher.connection.socket_id;
    },
    get state() {
      return pusher.connection.state;
    },
    /** Frames of `event` (on `channel`, if given) received so far. */
    got(event, channel) {
      return frames.filter((f) => f.event === event && (channel === undefined || f.channel === channel));
    },
    /** Wait for a received frame matching `pred`; returns it. */
    frame(pred, ms = 5000, what = "a frame") {
      return waitFor(() => frames.find(pred), ms, what);
    },
    /** Wait for the connection state `state` (e.g. "connected"). */
    waitState(state, ms = 5000) {
      return waitFor(() => pusher.connection.state === state, ms, `state ${state} (now ${pusher.connection.state})`);
    },
    disconnect() {
      pusher.disconnect();
      open.delete(pusher);
    },
  };
}

/**
 * The Pusher error code in a pusher-js connection "error" event: a
 * pusher:error frame or close code on an open connection gives
 * {type: "PusherError", data: {code}}, one during the handshake is wrapped
 * as {type: "WebSocketError", error: {type: "PusherError", data: {code}}}.
 */
export function errorCode(e) {
  return e?.data?.code ?? e?.error?.data?.code;
}

/** Disconnect every client `connect` made (after each test file). */
export function disconnectAll() {
  for (const p of open) p.disconnect();
  open.clear();
}

/**
 * Subscribe and resolve on pusher:subscription_succeeded with the channel
 * and what the event carried (the Members object on presence channels);
 * reject on pusher:subscription_error or after `ms`.
 */
export function subscribe(client, name, ms = 5000) {
  const channel = client.pusher.subscribe(name);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`subscribe ${name}: no answer in ${ms} ms`)), ms);
    channel.bind("pusher:subscription_succeeded", (data) => {
      clearTimeout(timer);
      resolve({ channel, data });
    });
    channel.bind("pusher:subscription_error", (err) => {
      clearTimeout(timer);
      reject(Object.assign(new Error(`subscribe ${name}: ${JSON.stringify(err)}`), { status: err?.status, detail: err }));
    });
  });
}

/**
 * Collect the events emitted by a channel (or `pusher.user`): every event
 * through bind_global, or only `names`, bound one by one, which also gets
 * the metadata pusher-js passes (user_id of presence client events).
 * Returns { events: [{event, data, meta}], of(event), wait(event, pred?, ms) }.
 */
export function collect(bindable, names) {
  const events = [];
  if (names) {
    for (const event of names) bindable.bind(event, (data, meta) => events.push({ event, data, meta }));
  } else {
    bindable.bind_global((event, data) => events.push({ event, data }));
  }
  return {
    events,
    of(event) {
      return events.filter((e) => e.event === event);
    },
    wait(event, pred = () => true, ms = 5000) {
      return waitFor(() => events.find((e) => e.event === event && pred(e.data, e.meta)), ms, `event ${event}`);
    },
  };
}

/**
 * Run `fn` (assertions) until it passes or `ms` runs out; then throw its
 * last failure. For what the cluster may take a moment to agree on (counts
 * and listings over REST while a node learns of another node's change).
 */
export async function eventually(fn, ms = 5000) {
  let last;
  try {
    return await waitFor(async () => {
      try {
        return (await fn()) ?? true;
      } catch (e) {
        last = e;
        return false;
      }
    }, ms);
  } catch (timeout) {
    throw last ?? timeout;
  }
}

/** Connect and wait until connected. */
export async function connected(port, opts) {
  const client = connect(port, opts);
  await client.waitState("connected", 10000);
  return client;
}
