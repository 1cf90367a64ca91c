//! What runs on a shard connection's driver for every push: messages are
//! decoded and handed to the fan-out (never blocking); probe answers,
//! server-side unsubscribes and disconnections go to the task as
//! [`Event`]s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ::redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::super::{codec, METRIC_ERRORS, METRIC_RECEIVED};
use crate::backplane::Deliver;

/// What a push handler tells the task.
pub(super) enum Event {
    Probe { conn: u64, seq: u64 },
    SUnsubscribe { conn: u64, name: String },
    Disconnected { conn: u64 },
}

/// Runs on the connection's driver for every push: decodes and delivers
/// messages (never blocks), forwards the rest to the task.
pub(super) struct PushHandler {
    /// The shard connection whose pushes these are.
    pub(super) conn: u64,
    pub(super) probe_channel: String,
    pub(super) sink: Arc<dyn Deliver>,
    pub(super) events: mpsc::Sender<Event>,
    pub(super) decode_warned: Arc<AtomicBool>,
}

impl PushHandler {
    pub(super) fn handle(&self, info: PushInfo) -> Result<(), ()> {
        match info.kind {
            PushKind::SMessage | PushKind::Message => {
                let [channel, payload, ..] = info.data.as_slice() else {
                    return Ok(());
                };
                let (Some(channel), Some(payload)) = (bytes(channel), bytes(payload)) else {
                    return Ok(());
                };
                if channel == self.probe_channel.as_bytes() {
                    if let Some(seq) = std::str::from_utf8(payload)
                        .ok()
                        .and_then(|s| s.parse().ok())
                    {
                        let _ = self.events.try_send(Event::Probe {
                            conn: self.conn,
                            seq,
                        });
                    }
                    return Ok(());
                }
                match codec::decode(payload) {
                    Ok(envelope) => {
                        metrics::counter!(METRIC_RECEIVED).increment(1);
                        self.sink.deliver(envelope);
                    }
                    Err(e) => {
                        metrics::counter!(METRIC_ERRORS, "op" => "decode").increment(1);
                        let channel = String::from_utf8_lossy(channel);
                        if self.decode_warned.swap(true, Ordering::Relaxed) {
                            tracing::debug!(%channel, error = %e, "undecodable message");
                        } else {
                            tracing::warn!(%channel, error = %e, "undecodable message on Redis (further ones logged at debug)");
                        }
                    }
                }
            }
            PushKind::SUnsubscribe => {
                if let Some(name) = info.data.first().and_then(bytes) {
                    let name = String::from_utf8_lossy(name).into_owned();
                    let _ = self.events.try_send(Event::SUnsubscribe {
                        conn: self.conn,
                        name,
                    });
                }
            }
            PushKind::Disconnection => {
                let _ = self
                    .events
                    .try_send(Event::Disconnected { conn: self.conn });
            }
            _ => {}
        }
        Ok(())
    }
}

pub(super) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}
