//! The node's one pub/sub connection and the `run` loop that owns it.
//!
//! The [`Subscriber`] handle sends subscribe/unsubscribe commands over a
//! bounded queue to a background task. The task:
//!
//! - always subscribes `P:node:<id>`, `P:all` and `P:probe:<id>`;
//! - keeps a reference count per topic: 0 -> 1 sends SUBSCRIBE, 1 -> 0 sends
//!   UNSUBSCRIBE; a subscribe is acknowledged only after Redis confirmed it,
//!   so a history read that follows cannot miss a publication;
//! - hands SUBSCRIBE/UNSUBSCRIBE to the connection in command order (so an
//!   UNSUBSCRIBE followed by a SUBSCRIBE of one topic ends subscribed) while
//!   waiting for the confirmations concurrently with message delivery;
//! - decodes each received message and calls `sink.deliver` inline, in
//!   arrival order (no task per message: per-channel order is kept);
//! - on connection loss marks the link down, fails pending subscribers with
//!   `Unavailable`, reconnects with exponential backoff and jitter
//!   (50 ms .. 1 s) and resubscribes every topic that still has references;
//! - publishes a liveness probe to its own probe channel every second (via
//!   the command pool) and rebuilds the connection when a probe does not
//!   come back in time: a connection can look open yet deliver nothing
//!   after a failover (centrifugal/centrifugo#1189).
//!
//! Invariant: a topic with references has been subscribed on the current
//! connection, or has a SUBSCRIBE in flight whose waiters are not yet
//! acknowledged, or the link is down (then it is resubscribed on reconnect).

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use ::redis::aio::{PubSubSink, PubSubStream};
use ::redis::{Msg, RedisResult};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{
    codec, redis_error, Shared, METRIC_ERRORS, METRIC_PROBE_FAILURES, METRIC_RECEIVED,
    METRIC_RECONNECTS,
};
use crate::backplane::{BackplaneError, Deliver};

/// Pending subscribe/unsubscribe commands.
const COMMAND_QUEUE: usize = 1024;
/// How often the liveness probe is published.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest and longest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// SUBSCRIBEs in flight while resubscribing after a reconnect.
const RESUBSCRIBE_CONCURRENCY: usize = 256;

type Ack = oneshot::Sender<Result<(), BackplaneError>>;
type Op = BoxFuture<'static, OpDone>;

enum Command {
    Subscribe { channel: String, ack: Ack },
    Unsubscribe { channel: String },
}

/// Handle to the subscriber task; dropping it stops the task.
pub(crate) struct Subscriber {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Subscriber {
    /// Spawn the subscriber task; it connects in the background.
    pub(crate) fn start(
        shared: Arc<Shared>,
        client: ::redis::Client,
        sink: Arc<dyn Deliver>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let cancel = CancellationToken::new();
        let node = &shared.settings.node_id;
        let task = SubscriberTask {
            fixed: vec![
                shared.keys.node(node),
                shared.keys.all(),
                shared.keys.probe(node),
            ],
            probe_channel: shared.keys.probe(node),
            shared: shared.clone(),
            client,
            sink,
            commands: rx,
            cancel: cancel.clone(),
            topics: HashMap::new(),
            next_op: 0,
            decode_warned: false,
        };
        let handle = tokio::spawn(task.run());
        Self {
            shared,
            commands: tx,
            cancel,
            task: Mutex::new(Some(handle)),
        }
    }

    /// Take a reference on a pub/sub channel; returns once Redis confirmed
    /// the subscription (or the channel was already subscribed). Fails
    /// fast with `Unavailable` while the link is down, and within the
    /// timeout otherwise.
    pub(crate) async fn subscribe(&self, channel: String) -> Result<(), BackplaneError> {
        if !self.shared.link.is_connected() {
            return Err(unavailable());
        }
        let deadline = Instant::now() + self.shared.settings.timeout;
        let (ack, mut done) = oneshot::channel();
        let sent = tokio::time::timeout_at(
            deadline,
            self.commands.send(Command::Subscribe { channel, ack }),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(BackplaneError::Unavailable("subscriber stopped".into())),
            Err(_) => return Err(BackplaneError::Unavailable("subscribe timed out".into())),
        }
        tokio::select! {
            result = &mut done => result.unwrap_or_else(|_| Err(unavailable())),
            () = tokio::time::sleep_until(deadline) => {
                // Close first: an acknowledgement that raced the deadline is
                // either taken here or refused (and then not counted).
                done.close();
                done.try_recv().unwrap_or_else(|_| {
                    Err(BackplaneError::Unavailable("subscribe timed out".into()))
                })
            }
        }
    }

    /// Drop a reference taken by [`Subscriber::subscribe`].
    pub(crate) async fn unsubscribe(&self, channel: String) {
        // The task drains the queue in every state, so this cannot block
        // for long; it fails only once the task has stopped.
        let _ = self.commands.send(Command::Unsubscribe { channel }).await;
    }

    /// Stop the task and wait (bounded) for it to finish.
    pub(crate) async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let limit = self.shared.settings.timeout.saturating_mul(2);
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!("Redis subscriber did not stop in time");
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn unavailable() -> BackplaneError {
    BackplaneError::Unavailable("Redis pub/sub is reconnecting".into())
}

/// Reference state of one pub/sub channel.
#[derive(Default)]
struct TopicState {
    /// References whose subscribe was acknowledged.
    confirmed: usize,
    /// Subscribers waiting for Redis's confirmation (not yet references).
    waiters: Vec<Ack>,
    /// Id of the SUBSCRIBE in flight on the current connection.
    pending: Option<u64>,
    /// Redis confirmed the subscription on the current connection.
    active: bool,
}

enum OpDone {
    Subscribed {
        channel: String,
        op: u64,
        result: RedisResult<()>,
    },
    Unsubscribed {
        result: RedisResult<()>,
    },
    Probe {
        result: Result<(), BackplaneError>,
    },
}

/// Why `serve` returned.
enum Exit {
    Cancelled,
    Lost(String),
}

/// The liveness probe in flight.
struct Probe {
    seq: u64,
    sent: Option<Instant>,
}

struct SubscriberTask {
    shared: Arc<Shared>,
    client: ::redis::Client,
    sink: Arc<dyn Deliver>,
    commands: mpsc::Receiver<Command>,
    cancel: CancellationToken,
    /// Always-on channels: node, all, probe.
    fixed: Vec<String>,
    probe_channel: String,
    /// Refcounted topics by pub/sub channel name.
    topics: HashMap<String, TopicState>,
    next_op: u64,
    decode_warned: bool,
}

impl SubscriberTask {
    async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut ever_up = false;
        let mut down_logged = false;
        loop {
            match self.establish().await {
                Ok((sink, stream)) => {
                    backoff.reset();
                    self.shared.link.up();
                    if ever_up {
                        metrics::counter!(METRIC_RECONNECTS).increment(1);
                        tracing::info!(topics = self.topics.len(), "Redis pub/sub reconnected");
                    } else {
                        tracing::info!("Redis pub/sub connected");
                    }
                    ever_up = true;
                    let exit = self.serve(sink, stream).await;
                    self.shared.link.down();
                    self.teardown();
                    match exit {
                        Exit::Cancelled => break,
                        Exit::Lost(reason) => {
                            tracing::warn!(%reason, "Redis pub/sub connection lost; reconnecting");
                            down_logged = true;
                        }
                    }
                }
                Err(e) => {
                    metrics::counter!(METRIC_ERRORS, "op" => "connect").increment(1);
                    if !down_logged {
                        tracing::warn!(error = %e, "cannot connect Redis pub/sub; retrying");
                        down_logged = true;
                    }
                }
            }
            if !self.idle(backoff.next()).await {
                break;
            }
        }
        self.shared.link.down();
        self.teardown();
    }

    /// Connect, subscribe the fixed channels and every referenced topic.
    async fn establish(&mut self) -> Result<(PubSubSink, PubSubStream), BackplaneError> {
        let timeout = self.shared.settings.timeout;
        let pubsub = tokio::time::timeout(timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| BackplaneError::Unavailable("connect timed out".into()))?
            .map_err(redis_error)?;
        let (sink, stream) = pubsub.split();
        let channels: Vec<String> = self
            .fixed
            .iter()
            .chain(self.topics.keys())
            .cloned()
            .collect();
        // Large resubscriptions get proportionally more time.
        let factor = u32::try_from(channels.len() / 10_000).unwrap_or(u32::MAX);
        let budget = timeout.saturating_mul(factor.saturating_add(1));
        let resubscribe = futures_util::stream::iter(channels)
            .map(|channel| {
                let mut sink = sink.clone();
                async move { sink.subscribe(channel).await }
            })
            .buffer_unordered(RESUBSCRIBE_CONCURRENCY)
            .try_collect::<Vec<()>>();
        tokio::time::timeout(budget, resubscribe)
            .await
            .map_err(|_| BackplaneError::Unavailable("resubscribe timed out".into()))?
            .map_err(redis_error)?;
        for state in self.topics.values_mut() {
            state.active = true;
        }
        Ok((sink, stream))
    }

    /// Deliver messages and run commands until the connection is lost or
    /// the task is cancelled.
    async fn serve(&mut self, sink: PubSubSink, mut stream: PubSubStream) -> Exit {
        let mut ops: FuturesUnordered<Op> = FuturesUnordered::new();
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let probe_timeout = (PROBE_INTERVAL * 3).max(self.shared.settings.timeout * 2);
        let mut probe = Probe { seq: 0, sent: None };
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return Exit::Cancelled,
                msg = stream.next() => match msg {
                    Some(msg) => self.on_message(&msg, &mut probe),
                    None => return Exit::Lost("connection closed".into()),
                },
                Some(done) = ops.next(), if !ops.is_empty() => {
                    if let Err(reason) = self.on_done(done, &sink, &mut ops, &mut probe).await {
                        return Exit::Lost(reason);
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd, &sink, &mut ops).await,
                    None => return Exit::Cancelled,
                },
                _ = tick.tick() => match probe.sent {
                    Some(sent) if sent.elapsed() > probe_timeout => {
                        metrics::counter!(METRIC_PROBE_FAILURES).increment(1);
                        return Exit::Lost("liveness probe did not come back".into());
                    }
                    Some(_) => {}
                    None => {
                        probe.seq += 1;
                        probe.sent = Some(Instant::now());
                        ops.push(self.probe_op(probe.seq));
                    }
                },
            }
        }
    }

    fn on_message(&mut self, msg: &Msg, probe: &mut Probe) {
        if msg.get_channel_name() == self.probe_channel {
            let seq = std::str::from_utf8(msg.get_payload_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            if probe.sent.is_some() && seq == Some(probe.seq) {
                probe.sent = None;
                if self.shared.link.set_healthy(true) {
                    tracing::info!("Redis liveness probe passes again; healthy");
                }
            }
            return;
        }
        match codec::decode(msg.get_payload_bytes()) {
            Ok(envelope) => {
                metrics::counter!(METRIC_RECEIVED).increment(1);
                self.sink.deliver(envelope);
            }
            Err(e) => {
                metrics::counter!(METRIC_ERRORS, "op" => "decode").increment(1);
                if self.decode_warned {
                    tracing::debug!(channel = msg.get_channel_name(), error = %e, "undecodable message");
                } else {
                    self.decode_warned = true;
                    tracing::warn!(channel = msg.get_channel_name(), error = %e, "undecodable message on Redis (further ones logged at debug)");
                }
            }
        }
    }

    async fn on_command(
        &mut self,
        cmd: Command,
        sink: &PubSubSink,
        ops: &mut FuturesUnordered<Op>,
    ) {
        match cmd {
            Command::Subscribe { channel, ack } => {
                let op = self.next_op;
                let state = self.topics.entry(channel.clone()).or_default();
                if state.active {
                    if ack.send(Ok(())).is_ok() {
                        state.confirmed += 1;
                    }
                    return;
                }
                state.waiters.push(ack);
                if state.pending.is_none() {
                    state.pending = Some(op);
                    self.next_op += 1;
                    enqueue(ops, subscribe_op(sink, channel, op)).await;
                }
            }
            Command::Unsubscribe { channel } => {
                if self.release(&channel) {
                    enqueue(ops, unsubscribe_op(sink, channel)).await;
                }
            }
        }
    }

    /// Drop one confirmed reference; returns whether Redis must now be told
    /// to unsubscribe (the last reference went and it was subscribed).
    fn release(&mut self, channel: &str) -> bool {
        let Some(state) = self.topics.get_mut(channel) else {
            tracing::debug!(channel, "unsubscribe of a topic without references");
            return false;
        };
        state.confirmed = state.confirmed.saturating_sub(1);
        if state.confirmed > 0 || !state.waiters.is_empty() {
            return false;
        }
        let subscribed = state.active || state.pending.is_some();
        self.topics.remove(channel);
        subscribed
    }

    async fn on_done(
        &mut self,
        done: OpDone,
        sink: &PubSubSink,
        ops: &mut FuturesUnordered<Op>,
        probe: &mut Probe,
    ) -> Result<(), String> {
        match done {
            OpDone::Subscribed { result: Err(e), .. } => Err(format!("SUBSCRIBE failed: {e}")),
            OpDone::Unsubscribed { result: Err(e) } => Err(format!("UNSUBSCRIBE failed: {e}")),
            OpDone::Unsubscribed { result: Ok(()) } => Ok(()),
            OpDone::Subscribed {
                channel,
                op,
                result: Ok(()),
            } => {
                let Some(state) = self.topics.get_mut(&channel) else {
                    return Ok(());
                };
                if state.pending != Some(op) {
                    return Ok(());
                }
                state.pending = None;
                state.active = true;
                for waiter in state.waiters.drain(..) {
                    // A waiter that gave up (timed out) takes no reference.
                    if waiter.send(Ok(())).is_ok() {
                        state.confirmed += 1;
                    }
                }
                if state.confirmed == 0 {
                    self.topics.remove(&channel);
                    enqueue(ops, unsubscribe_op(sink, channel)).await;
                }
                Ok(())
            }
            OpDone::Probe { result } => {
                if let Err(e) = result {
                    probe.sent = None;
                    if self.shared.link.set_healthy(false) {
                        tracing::warn!(error = %e, "Redis liveness probe cannot be published; unhealthy");
                    }
                }
                Ok(())
            }
        }
    }

    fn probe_op(&self, seq: u64) -> Op {
        let shared = self.shared.clone();
        let channel = self.probe_channel.clone();
        Box::pin(async move {
            let result = shared
                .call("probe", move |mut conn| async move {
                    ::redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(seq)
                        .query_async::<i64>(&mut conn)
                        .await
                })
                .await
                .map(|_| ());
            OpDone::Probe { result }
        })
    }

    /// Forget the connection: fail waiters, keep only confirmed references
    /// (to be resubscribed on the next connection).
    fn teardown(&mut self) {
        for state in self.topics.values_mut() {
            for waiter in state.waiters.drain(..) {
                let _ = waiter.send(Err(unavailable()));
            }
            state.active = false;
            state.pending = None;
        }
        self.topics.retain(|_, state| state.confirmed > 0);
    }

    /// Wait `delay` while the link is down, refusing subscribes at once and
    /// counting unsubscribes. Returns false when the task must stop.
    async fn idle(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep_until(deadline) => return true,
                cmd = self.commands.recv() => match cmd {
                    None => return false,
                    Some(Command::Subscribe { ack, .. }) => {
                        let _ = ack.send(Err(unavailable()));
                    }
                    Some(Command::Unsubscribe { channel }) => {
                        // Not connected: nothing to tell Redis.
                        let _ = self.release(&channel);
                    }
                },
            }
        }
    }
}

fn subscribe_op(sink: &PubSubSink, channel: String, op: u64) -> Op {
    let mut sink = sink.clone();
    Box::pin(async move {
        let result = sink.subscribe(&channel).await;
        OpDone::Subscribed {
            channel,
            op,
            result,
        }
    })
}

fn unsubscribe_op(sink: &PubSubSink, channel: String) -> Op {
    let mut sink = sink.clone();
    Box::pin(async move {
        let result = sink.unsubscribe(&channel).await;
        OpDone::Unsubscribed { result }
    })
}

/// Poll a pub/sub op once, which hands its command to the connection now
/// (in command order), then keep it to await Redis's confirmation.
async fn enqueue(ops: &mut FuturesUnordered<Op>, mut op: Op) {
    match futures_util::poll!(op.as_mut()) {
        Poll::Ready(done) => ops.push(Box::pin(std::future::ready(done))),
        Poll::Pending => ops.push(op),
    }
}

/// Exponential backoff with jitter between reconnection attempts.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next pause: uniform in [d/2, d] with d doubling up to the cap.
    fn next(&mut self) -> Duration {
        let full = BACKOFF_MIN
            .saturating_mul(1u32 << self.attempt.min(10))
            .min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(full.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_cap_with_jitter() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = b.next();
            assert!(last <= BACKOFF_MAX);
        }
        assert!(last >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next() <= BACKOFF_MIN);
    }
}
