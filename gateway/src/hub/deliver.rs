//! The hub as the sink of the backplane ([`Deliver`]): each envelope
//! encoded once and queued to the local connections it is for (a
//! channel's subscribers, a user's devices, one connection, everyone), or
//! turned into closes and server-side (un)subscription requests.

use axum::extract::ws::Utf8Bytes;

use super::channel::At;
use super::{frame, message_frame, Hub};
use crate::backplane::{Deliver, Envelope};
use crate::metrics as m;
use crate::protocol::{CloseReason, ServerFrame};

impl Hub {
    fn fan_out(
        &self,
        channel: &str,
        frame: &Utf8Bytes,
        position: Option<At<'_>>,
        exclude: Option<&str>,
    ) -> u64 {
        let entry = self.channels.shard(channel).lock().get(channel).cloned();
        entry.map_or(0, |c| c.fan_out(frame, position, exclude))
    }

    fn to_all(&self, frame: &Utf8Bytes) -> u64 {
        // Under the shard locks, without cloning every handle: a push is a
        // short deque append (closing a slow consumer does not re-enter the
        // hub).
        // A v1 broadcast: Pusher connections have no such frame.
        let mut n = 0;
        self.for_each_conn(|conn| {
            if !conn.is_pusher() {
                n += u64::from(conn.push(frame));
            }
        });
        n
    }
}

impl Deliver for Hub {
    fn deliver(&self, envelope: Envelope) {
        let delivered = match &envelope {
            Envelope::Message(p) if crate::pusher::names::is_control(&p.channel) => {
                // A Pusher user's connections are terminated.
                let reason = CloseReason::new(
                    crate::protocol::close::DISCONNECTED,
                    "terminated by the app",
                );
                self.close_subscribers(&p.channel, &reason);
                0
            }
            Envelope::Message(p) => {
                if p.ts_us > 0 {
                    let lag_us = crate::clock::now_us().saturating_sub(p.ts_us);
                    m::hot().lag.record(lag_us as f64 / 1e6);
                }
                // A Pusher channel's publication is its frame, encoded by
                // the publisher (docs/pusher.md).
                let frame = if crate::pusher::names::is_pusher(&p.channel) {
                    Utf8Bytes::from(p.data.get().to_owned())
                } else {
                    message_frame(p)
                };
                let position = p
                    .offset
                    .zip(p.epoch.as_deref())
                    .map(|(offset, epoch)| At { offset, epoch });
                self.fan_out(&p.channel, &frame, position, p.exclude.as_deref())
            }
            Envelope::Join(e) => {
                let f = frame(&ServerFrame::Join {
                    channel: &e.channel,
                    user: &e.user,
                    conn: &e.conn,
                });
                self.fan_out(&e.channel, &f, None, Some(&e.conn))
            }
            Envelope::Leave(e) => {
                let f = frame(&ServerFrame::Leave {
                    channel: &e.channel,
                    user: &e.user,
                    conn: &e.conn,
                });
                self.fan_out(&e.channel, &f, None, Some(&e.conn))
            }
            Envelope::Broadcast { data } => self.to_all(&frame(&ServerFrame::Broadcast { data })),
            Envelope::User { user, data } => {
                let f = frame(&ServerFrame::Direct { data });
                self.user_conns(user)
                    .iter()
                    .map(|c| u64::from(c.push(&f)))
                    .sum()
            }
            Envelope::Conn { conn, data } => match self.conn(conn) {
                Some(c) => u64::from(c.push(&frame(&ServerFrame::Direct { data }))),
                None => 0,
            },
            Envelope::DisconnectUser { user, code, reason } => {
                self.close_user(user, &CloseReason::new(*code, reason));
                0
            }
            Envelope::DisconnectConn { conn, code, reason } => {
                self.close_conn(conn, &CloseReason::new(*code, reason));
                0
            }
            Envelope::SubscribeUser {
                user,
                channel,
                subscribe,
            } => {
                for c in self.user_conns(user) {
                    c.control(crate::outbox::Control::new(channel, *subscribe));
                }
                0
            }
            Envelope::SubscribeConn {
                conn,
                channel,
                subscribe,
            } => {
                if let Some(c) = self.conn(conn) {
                    c.control(crate::outbox::Control::new(channel, *subscribe));
                }
                0
            }
        };
        if delivered > 0 {
            m::hot().deliveries.increment(delivered);
        }
    }
}
