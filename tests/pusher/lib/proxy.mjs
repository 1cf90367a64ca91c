// A failover TCP proxy, what a load balancer in front of the cluster does:
// each new client connection goes to the first upstream (in order) that
// accepts it; when that upstream's socket ends or errors, the client's is
// destroyed too (an abrupt close, as when the node dies). pusher-js takes one
// host:port, so this is how a test gives it "the cluster": the test never
// flips anything by hand, a dead node simply refuses connections.

import { createServer, connect } from "node:net";

/**
 * Listen on a free port of 127.0.0.1 and forward to `upstreams` (ports).
 * Returns { port, connections (count of client connections per upstream
 * port), close() }.
 */
export async function startProxy(upstreams) {
  const sockets = new Set();
  const connections = new Map();

  function dial(i, client) {
    if (i >= upstreams.length || client.destroyed) {
      client.destroy();
      return;
    }
    const port = upstreams[i];
    const upstream = connect({ host: "127.0.0.1", port });
    let connected = false;
    upstream.once("connect", () => {
      connected = true;
      connections.set(port, (connections.get(port) ?? 0) + 1);
      sockets.add(upstream);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
    upstream.on("error", () => {
      if (!connected) dial(i + 1, client);
      else client.destroy();
    });
    upstream.on("close", () => {
      sockets.delete(upstream);
      if (connected) client.destroy();
    });
    client.on("close", () => upstream.destroy());
  }

  const server = createServer({ pauseOnConnect: true }, (client) => {
    sockets.add(client);
    client.on("error", () => {});
    client.on("close", () => sockets.delete(client));
    dial(0, client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    connections,
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
