//! `wscat`: a tiny command-line WebSocket client for trying the gateway.
//!
//! ```text
//! cargo run -q -p loadtest --bin wscat -- 'ws://127.0.0.1:8080/ws?user=alice'
//! cargo run -q -p loadtest --bin wscat -- --header 'Authorization: Bearer <jwt>' ws://127.0.0.1:8080/ws
//! ```
//!
//! Every text frame received is printed on its own line to stdout; a close
//! frame prints `closed CODE REASON`. Each line read from stdin is sent as one
//! text frame (blank lines are skipped). When stdin ends, the client sends a
//! close frame and waits (at most 5 s) for the server's close; when the server
//! closes the socket, the client exits. Diagnostics go to stderr.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// How long to wait for the server's close frame after sending ours.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Command-line WebSocket client: prints received text frames, sends stdin lines.
#[derive(Parser, Debug)]
#[command(name = "wscat", version, about)]
struct Args {
    /// WebSocket URL, e.g. 'ws://127.0.0.1:8080/ws?user=alice'.
    url: String,
    /// Extra request header as 'Name: value' (repeatable),
    /// e.g. --header 'Authorization: Bearer <jwt>'.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
}

/// Parses `Name: value` into a header pair.
fn parse_header(raw: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let Some((name, value)) = raw.split_once(':') else {
        bail!("header {raw:?} is not of the form 'Name: value'");
    };
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("invalid header name in {raw:?}"))?;
    let value = HeaderValue::from_str(value.trim())
        .with_context(|| format!("invalid header value in {raw:?}"))?;
    Ok((name, value))
}

/// Prints one received frame; returns `true` when it was a close frame.
fn print_frame(msg: &Message) -> bool {
    match msg {
        Message::Text(text) => println!("{}", text.as_str()),
        Message::Binary(bytes) => eprintln!("(binary frame, {} bytes)", bytes.len()),
        Message::Close(Some(frame)) => {
            let code = u16::from(frame.code);
            match frame.reason.as_str() {
                "" => println!("closed {code}"),
                reason => println!("closed {code} {reason}"),
            }
            return true;
        }
        Message::Close(None) => {
            println!("closed 1005");
            return true;
        }
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
    }
    false
}

/// Reads stdin on a plain thread (so a blocked read never delays exit) and
/// forwards each line; the channel closes when stdin ends.
fn spawn_stdin_reader() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("wscat: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wscat: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Connects, relays until the socket closes or stdin ends, then closes.
async fn run(args: Args) -> anyhow::Result<()> {
    let mut request = args
        .url
        .as_str()
        .into_client_request()
        .with_context(|| format!("invalid WebSocket URL {:?}", args.url))?;
    for raw in &args.headers {
        let (name, value) = parse_header(raw)?;
        request.headers_mut().append(name, value);
    }

    let (ws, _response) = match tokio_tungstenite::connect_async(request).await {
        Ok(ok) => ok,
        Err(WsError::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            bail!(
                "connection refused: HTTP {} {}",
                response.status(),
                body.trim()
            );
        }
        Err(err) => bail!("cannot connect to {}: {err}", args.url),
    };
    let (mut sink, mut stream) = ws.split();
    let mut lines = spawn_stdin_reader();

    // Phase 1: relay both ways until the server closes or stdin ends.
    loop {
        tokio::select! {
            incoming = stream.next() => match incoming {
                Some(Ok(msg)) => {
                    if print_frame(&msg) {
                        // The library answers the close; drain until the stream ends.
                        while let Ok(Some(Ok(msg))) =
                            tokio::time::timeout(CLOSE_WAIT, stream.next()).await
                        {
                            print_frame(&msg);
                        }
                        return Ok(());
                    }
                }
                Some(Err(err)) => bail!("connection error: {err}"),
                None => {
                    println!("closed 1006 connection lost");
                    return Ok(());
                }
            },
            line = lines.recv() => match line {
                Some(line) => {
                    if line.trim().is_empty() {
                        continue;
                    }
                    sink.send(Message::Text(line.into()))
                        .await
                        .context("sending a frame")?;
                }
                None => break,
            },
        }
    }

    // Phase 2: stdin ended. Close, then print what still arrives until the
    // server's close (bounded).
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    sink.send(Message::Close(Some(close)))
        .await
        .context("sending close")?;
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(msg))) => {
                if print_frame(&msg) {
                    break;
                }
            }
            Ok(Some(Err(WsError::ConnectionClosed))) | Ok(None) => break,
            Ok(Some(Err(err))) => bail!("connection error while closing: {err}"),
            Err(_) => {
                eprintln!("no close frame from the server within {CLOSE_WAIT:?}");
                break;
            }
        }
    }
    Ok(())
}
