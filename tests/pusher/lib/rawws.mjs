// A bare-bones WebSocket client over a TCP socket, for what a real client
// library does not let a test do: stay completely silent (it never answers
// the server's WebSocket pings), and see the server's close frame and its
// pong frames. RFC 6455, enough of it: no extensions, no fragmentation.

import { connect } from "node:net";
import { randomBytes } from "node:crypto";

/**
 * Open `ws://127.0.0.1:{port}{path}`. Resolves once the server answered the
 * upgrade with 101, with { frames (text frames, parsed JSON), pings, pongs,
 * closeInfo ({code, reason} of the server's close frame, or {code: 1006}
 * when the TCP connection ended without one), sendText(s), sendPing(),
 * destroy() }.
 */
export function rawConnect(port, path) {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port });
    const c = { frames: [], pings: 0, pongs: 0, closeInfo: null };
    let buf = Buffer.alloc(0);
    let upgraded = false;

    const frame = (opcode, payload) => {
      const mask = randomBytes(4);
      const len = payload.length;
      const head = len < 126 ? Buffer.from([0x80 | opcode, 0x80 | len]) : Buffer.from([0x80 | opcode, 0x80 | 126, len >> 8, len & 0xff]);
      const body = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
      socket.write(Buffer.concat([head, mask, body]));
    };
    Object.assign(c, {
      sendText: (s) => frame(0x1, Buffer.from(s)),
      sendPing: () => frame(0x9, Buffer.from("hi")),
      destroy: () => socket.destroy(),
    });

    function parse() {
      for (;;) {
        if (buf.length < 2) return;
        const opcode = buf[0] & 0x0f;
        let len = buf[1] & 0x7f;
        let off = 2;
        if (len === 126) {
          if (buf.length < 4) return;
          len = buf.readUInt16BE(2);
          off = 4;
        } else if (len === 127) {
          if (buf.length < 10) return;
          len = Number(buf.readBigUInt64BE(2));
          off = 10;
        }
        if (buf.length < off + len) return;
        const payload = buf.subarray(off, off + len);
        buf = buf.subarray(off + len);
        if (opcode === 0x1) c.frames.push(JSON.parse(payload.toString("utf8")));
        else if (opcode === 0x9) c.pings++;
        else if (opcode === 0xa) c.pongs++;
        else if (opcode === 0x8) {
          c.closeInfo = {
            code: payload.length >= 2 ? payload.readUInt16BE(0) : 1005,
            reason: payload.subarray(2).toString("utf8"),
          };
        }
      }
    }

    socket.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (!upgraded) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buf.subarray(0, end).toString("latin1");
        buf = buf.subarray(end + 4);
        if (!/^HTTP\/1\.1 101/.test(head)) {
          socket.destroy();
          reject(new Error(`upgrade refused: ${head.split("\r\n")[0]}`));
          return;
        }
        upgraded = true;
        resolve(c);
      }
      parse();
    });
    socket.on("error", (e) => {
      if (!upgraded) reject(e);
    });
    socket.on("close", () => {
      if (!c.closeInfo) c.closeInfo = { code: 1006, reason: "" };
      if (!upgraded) reject(new Error("closed before the upgrade"));
    });
    socket.write(
      [
        `GET ${path} HTTP/1.1`,
        `Host: 127.0.0.1:${port}`,
        "Upgrade: websocket",
        "Connection: Upgrade",
        `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}`,
        "Sec-WebSocket-Version: 13",
        "",
        "",
      ].join("\r\n"),
    );
  });
}
