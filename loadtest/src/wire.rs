//! A lean WebSocket client for load generation: one TCP socket bound to a
//! chosen 127.0.0.x source address, the RFC 6455 handshake, and an in-place
//! frame parser over one read buffer.
//!
//! Why not tokio-tungstenite for the load: the load generator shares this
//! machine's two cores with the gateway it measures, so every nanosecond it
//! spends per received frame is taken from the gateway. tungstenite
//! allocates and UTF-8-validates every message; this client parses frames in
//! place and never allocates on the receive path, like the ceiling probe's
//! client (which only counts bytes). The handshake's key and accept value
//! come from tungstenite, so the upgrade itself is the standard one.
//!
//! Scope: what the gateway sends (unfragmented text frames, pings, close).
//! A fragmented or oversized frame is an error, never silently skipped.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest frame accepted (the gateway's own default limit is 64 KiB; its
/// replies and pushes are far smaller).
const MAX_FRAME: usize = 1 << 20;
/// Largest handshake response accepted.
const MAX_HEADER: usize = 16 * 1024;

/// Frame opcodes.
pub mod op {
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: &'a str,
    /// Request path with query (`/ws?user=u1`).
    pub path: &'a str,
    /// Source address to bind before connecting (None: the kernel picks).
    pub src: Option<Ipv4Addr>,
    /// `Authorization: Bearer` token.
    pub bearer: Option<&'a str>,
    /// Initial read buffer size (grows for larger frames).
    pub read_buf: usize,
}

/// Why a connect failed, in a few stable categories for the reports.
#[derive(Debug)]
pub struct ConnectError {
    /// `tcp`, `http_<status>`, `handshake` or `timeout`.
    pub kind: String,
    /// Details.
    pub error: anyhow::Error,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {:#}", self.kind, self.error)
    }
}

fn cerr(kind: impl Into<String>, error: anyhow::Error) -> ConnectError {
    ConnectError {
        kind: kind.into(),
        error,
    }
}

/// One client WebSocket.
pub struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    mask: u32,
    out: Vec<u8>,
}

/// A parsed frame: opcode and payload position in the read buffer (valid
/// until the next read).
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// Opcode (see [`op`]).
    pub opcode: u8,
    start: usize,
    end: usize,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Ws {
    /// Connects, upgrades and returns the socket; bytes that followed the
    /// handshake response stay buffered.
    pub async fn connect(t: &Target<'_>, timeout: Duration) -> Result<Ws, ConnectError> {
        match tokio::time::timeout(timeout, Self::connect_inner(t)).await {
            Ok(r) => r,
            Err(_) => Err(cerr(
                "timeout",
                anyhow!("connect + upgrade took more than {timeout:?}"),
            )),
        }
    }

    async fn connect_inner(t: &Target<'_>) -> Result<Ws, ConnectError> {
        let socket = TcpSocket::new_v4().map_err(|e| cerr("tcp", e.into()))?;
        if let Some(src) = t.src {
            socket
                .bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))
                .map_err(|e| cerr("bind", anyhow!("bind {src}: {e}")))?;
        }
        let stream = socket
            .connect(t.addr)
            .await
            .map_err(|e| cerr("tcp", anyhow!("connect {}: {e}", t.addr)))?;
        stream
            .set_nodelay(true)
            .map_err(|e| cerr("tcp", e.into()))?;
        let key = tungstenite::handshake::client::generate_key();
        let auth = match t.bearer {
            Some(token) => format!("Authorization: Bearer {token}\r\n"),
            None => String::new(),
        };
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n",
            t.path, t.host
        );
        let mut ws = Ws {
            stream,
            buf: vec![0; t.read_buf.max(1024)],
            start: 0,
            end: 0,
            mask: seed_mask(),
            out: Vec::new(),
        };
        ws.stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| cerr("tcp", anyhow!("write upgrade request: {e}")))?;
        let header_end = loop {
            if let Some(p) = find(&ws.buf[..ws.end], b"\r\n\r\n") {
                break p + 4;
            }
            if ws.end >= MAX_HEADER {
                return Err(cerr("handshake", anyhow!("response header too long")));
            }
            let n = ws
                .fill()
                .await
                .map_err(|e| cerr("tcp", anyhow!("reading upgrade response: {e}")))?;
            if n == 0 {
                return Err(cerr(
                    "handshake",
                    anyhow!(
                        "connection closed during the upgrade (got {:?})",
                        String::from_utf8_lossy(&ws.buf[..ws.end])
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&ws.buf[..header_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| cerr("handshake", anyhow!("bad status line in {head:?}")))?;
        if status != 101 {
            let body = String::from_utf8_lossy(&ws.buf[header_end..ws.end]).into_owned();
            return Err(cerr(
                format!("http_{status}"),
                anyhow!("upgrade refused with {status}: {}", body.trim()),
            ));
        }
        let want = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept_ok = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == want
            })
        });
        if !accept_ok {
            return Err(cerr(
                "handshake",
                anyhow!("missing or wrong Sec-WebSocket-Accept in {head:?}"),
            ));
        }
        ws.start = header_end;
        Ok(ws)
    }

    /// Reads once more from the socket into the buffer; returns the bytes
    /// read (0: the peer closed).
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.compact();
            if self.end == self.buf.len() {
                let len = (self.buf.len() * 2).min(MAX_FRAME + 16);
                if len == self.buf.len() {
                    return Err(std::io::Error::other("frame larger than the limit"));
                }
                self.buf.resize(len, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// The next complete frame in the buffer, if any. Errors on frames this
    /// client does not support (fragmented, reserved bits, too large).
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 2 {
            return Ok(None);
        }
        let b0 = avail[0];
        let b1 = avail[1];
        if b0 & 0x80 == 0 || b0 & 0x0f == 0 {
            bail!("fragmented frames are not supported (byte0 {b0:#04x})");
        }
        if b0 & 0x70 != 0 {
            bail!("reserved bits set (byte0 {b0:#04x})");
        }
        let masked = b1 & 0x80 != 0;
        let (len, mut hdr) = match b1 & 0x7f {
            126 => {
                if avail.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([avail[2], avail[3]]) as usize, 4)
            }
            127 => {
                if avail.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&avail[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if len > MAX_FRAME {
            bail!("frame of {len} bytes is larger than {MAX_FRAME}");
        }
        if masked {
            hdr += 4;
        }
        if avail.len() < hdr + len {
            // Make room for the whole frame so the next fill can finish it.
            if self.buf.len() < hdr + len {
                self.compact();
                self.buf.resize(hdr + len, 0);
            }
            return Ok(None);
        }
        let start = self.start + hdr;
        let end = start + len;
        if masked {
            let k = self.start + hdr - 4;
            let key = [
                self.buf[k],
                self.buf[k + 1],
                self.buf[k + 2],
                self.buf[k + 3],
            ];
            for (i, b) in self.buf[start..end].iter_mut().enumerate() {
                *b ^= key[i & 3];
            }
        }
        self.start = end;
        Ok(Some(Frame {
            opcode: b0 & 0x0f,
            start,
            end,
        }))
    }

    /// The payload of a frame returned by [`Ws::next_frame`] since the last
    /// [`Ws::fill`].
    pub fn payload(&self, f: &Frame) -> &[u8] {
        &self.buf[f.start..f.end]
    }

    /// Sends one masked frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.encode(opcode, payload);
        self.stream.write_all(&self.out).await
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        self.send(op::TEXT, text.as_bytes()).await
    }

    /// Queues a text frame; [`Ws::flush_queued`] writes every queued frame
    /// with one `write_all` (fewer syscalls for a publisher with many in
    /// flight).
    pub fn queue_text(&mut self, text: &str) {
        self.append(op::TEXT, text.as_bytes());
    }

    /// Writes the frames queued with [`Ws::queue_text`].
    pub async fn flush_queued(&mut self) -> std::io::Result<()> {
        let r = self.stream.write_all(&self.out).await;
        self.out.clear();
        r
    }

    fn encode(&mut self, opcode: u8, payload: &[u8]) {
        self.out.clear();
        self.append(opcode, payload);
    }

    fn append(&mut self, opcode: u8, payload: &[u8]) {
        self.out.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            self.out.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            self.out.push(0x80 | 126);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(0x80 | 127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        // xorshift32: a fresh mask per frame, cheaply.
        let mut x = self.mask;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask = x;
        let key = x.to_be_bytes();
        self.out.extend_from_slice(&key);
        self.out
            .extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
    }

    /// Answers a ping (payload copied out of the read buffer).
    pub async fn pong(&mut self, f: &Frame) -> std::io::Result<()> {
        let payload = self.payload(f).to_vec();
        self.send(op::PONG, &payload).await
    }

    /// Clean close: sends a close frame with `code` and waits (bounded) for
    /// the server's close frame or the end of the stream. Returns whether
    /// the handshake completed.
    pub async fn close(&mut self, code: u16, wait: Duration) -> bool {
        if self.send(op::CLOSE, &code.to_be_bytes()).await.is_err() {
            return false;
        }
        let _ = self.stream.flush().await;
        tokio::time::timeout(wait, async {
            loop {
                loop {
                    match self.next_frame() {
                        Ok(Some(f)) if f.opcode == op::CLOSE => return true,
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(_) => return false,
                    }
                }
                match self.fill().await {
                    Ok(0) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Abrupt close: a TCP reset (SO_LINGER 0), no close frame, no FIN.
    pub fn reset(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }

    /// Abrupt close: a TCP FIN without a close frame.
    pub fn drop_fin(self) {
        drop(self.stream);
    }
}

fn seed_mask() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEED: AtomicU32 = AtomicU32::new(0x9e37_79b9);
    let s = SEED.fetch_add(0x6d2b_79f5, Ordering::Relaxed);
    (s ^ std::process::id().rotate_left(16)) | 1
}

/// Parses `ws://host:port/path?query` into the socket address, the `Host`
/// value and the path. Only literal IPv4 addresses or `localhost` (traffic
/// stays on loopback).
pub fn parse_ws_url(url: &str) -> Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("{url:?}: only ws:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/ws"),
    };
    let hp = hostport.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = hp
        .parse()
        .with_context(|| format!("{url:?}: host must be IPv4:port"))?;
    if !addr.ip().is_loopback() {
        bail!("{url:?}: the load generator only targets loopback addresses");
    }
    Ok((addr, hostport.to_owned(), path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() -> Result<()> {
        let (a, h, p) = parse_ws_url("ws://127.0.0.1:8080/ws")?;
        assert_eq!(a.port(), 8080);
        assert_eq!(h, "127.0.0.1:8080");
        assert_eq!(p, "/ws");
        let (_, _, p) = parse_ws_url("ws://localhost:1")?;
        assert_eq!(p, "/ws");
        assert!(parse_ws_url("ws://10.0.0.1:80/ws").is_err());
        Ok(())
    }
}
