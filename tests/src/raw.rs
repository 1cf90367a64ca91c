//! A hand-rolled WebSocket client that never answers anything by itself.
//!
//! tungstenite answers pings whenever the stream is read, which makes it
//! useless for testing the heartbeat timeout. [`RawWs`] does the HTTP
//! upgrade by hand and parses frames itself: reading it shows exactly what
//! the server sent (pings included) while sending nothing back.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Opcodes of RFC 6455.
pub mod opcode {
    /// Continuation frame.
    pub const CONTINUATION: u8 = 0x0;
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// One frame as sent by the server.
#[derive(Debug, Clone)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (see [`opcode`]).
    pub opcode: u8,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// `(code, reason)` of a close frame with a status code.
    pub fn close_code(&self) -> Option<(u16, String)> {
        if self.opcode != opcode::CLOSE || self.payload.len() < 2 {
            return None;
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        Some((
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        ))
    }
}

/// What [`RawWs::read_until_close`] saw.
#[derive(Debug, Clone)]
pub struct RawCloseReport {
    /// Close code and reason, or `None` when the stream ended without one.
    pub close: Option<(u16, String)>,
    /// Ping frames received before the end.
    pub pings: usize,
    /// Data frames received before the end.
    pub data_frames: usize,
    /// The text frames among them, in order.
    pub texts: Vec<String>,
}

/// A raw WebSocket connection (client side).
#[derive(Debug)]
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades `GET path_and_query` on `addr`; fails unless answered 101.
    pub async fn connect(addr: SocketAddr, path_and_query: &str) -> Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                .await
                .context("upgrade response timed out")??;
            if n == 0 {
                bail!("connection closed during upgrade");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status_line = head.lines().next().unwrap_or_default();
        if status_line.split_whitespace().nth(1) != Some("101") {
            bail!("upgrade refused: {status_line}");
        }
        buf.drain(..head_end);
        Ok(Self { stream, buf })
    }

    /// Reads one frame; `Ok(None)` when the server closed the TCP stream.
    pub async fn read_frame(&mut self, timeout: Duration) -> Result<Option<RawFrame>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 16384];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .with_context(|| format!("no frame within {timeout:?}"))?;
            match read {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // A reset after the server gave up on us counts as the end.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn parse(&mut self) -> Result<Option<RawFrame>> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let op = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let mut pos = 2;
        let len = match b[1] & 0x7F {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                pos = 4;
                usize::from(u16::from_be_bytes([b[2], b[3]]))
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                pos = 10;
                let mut eight = [0u8; 8];
                eight.copy_from_slice(&b[2..10]);
                usize::try_from(u64::from_be_bytes(eight))?
            }
            n => usize::from(n),
        };
        if masked {
            bail!("server sent a masked frame (RFC 6455 forbids it)");
        }
        if b.len() < pos + len {
            return Ok(None);
        }
        let payload = b[pos..pos + len].to_vec();
        self.buf.drain(..pos + len);
        Ok(Some(RawFrame {
            fin,
            opcode: op,
            payload,
        }))
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, op: u8, payload: &[u8]) -> Result<()> {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | op];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | u8::try_from(n)?),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(n)?.to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&u64::try_from(n)?.to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send_frame(opcode::TEXT, text.as_bytes()).await
    }

    /// Reads (never answering) until a close frame or the end of the
    /// stream, for at most `timeout`.
    pub async fn read_until_close(&mut self, timeout: Duration) -> Result<RawCloseReport> {
        let deadline = Instant::now() + timeout;
        let mut report = RawCloseReport {
            close: None,
            pings: 0,
            data_frames: 0,
            texts: Vec::new(),
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self
                .read_frame(left)
                .await
                .with_context(|| format!("reading until close; so far {report:?}"))?;
            match frame {
                None => return Ok(report),
                Some(f) if f.opcode == opcode::CLOSE => {
                    report.close = Some(f.close_code().unwrap_or((1005, String::new())));
                    return Ok(report);
                }
                Some(f) if f.opcode == opcode::PING => report.pings += 1,
                Some(f) if f.opcode == opcode::PONG => {}
                Some(f) => {
                    report.data_frames += 1;
                    if f.opcode == opcode::TEXT {
                        report
                            .texts
                            .push(String::from_utf8_lossy(&f.payload).into_owned());
                    }
                }
            }
        }
    }
}
