//! The node's one pub/sub connection and the `run` loop that owns it: it
//! reads, decodes and hands off; it never fans out itself.
//!
//! The task:
//!
//! - always subscribes `P:node:<id>`, `P:all` and `P:probe:<id>`;
//! - subscribes what the hub wants ([`super::interest::Registry`]): it is
//!   woken when a wanted state changes, hands SUBSCRIBE/UNSUBSCRIBE to the
//!   connection in that order (so an UNSUBSCRIBE followed by a SUBSCRIBE of
//!   one channel ends subscribed) and waits for the confirmations
//!   concurrently with reading;
//! - decodes each received message and hands it to `sink` (the fan-out
//!   workers, [`crate::fanout`]), which never blocks: a large fan-out does
//!   not stall the reading of Redis, so Redis never sees this node's
//!   pub/sub output buffer grow because of our own work;
//! - on connection loss marks the link down, fails the waiters with
//!   `Unavailable`, reconnects with exponential backoff and jitter
//!   (50 ms .. 1 s) and resubscribes everything wanted;
//! - runs on a thread of its own (a current-thread runtime), so a node busy
//!   with its connections never delays the reading of Redis;
//! - publishes a liveness probe to its own probe channel every second (on a
//!   command connection of its own, made on this thread) and rebuilds the connection when a probe does not
//!   come back in time: a connection can look open yet deliver nothing
//!   after a failover (centrifugal/centrifugo#1189). Since the reader only
//!   decodes, the probe measures Redis and the link, not our fan-out;
//! - connects to the shared [`super::shared::Target`]'s current client and
//!   reconnects at once when it changes (a Sentinel failover followed by
//!   [`super::sentinel`]), so the link's next `up` retires the command
//!   connections to the old primary.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use ::redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use ::redis::{Msg, RedisResult};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::interest::{Change, Registry};
use super::sharded::ShardedTask;
use super::{
    codec, redis_error, Shared, METRIC_ERRORS, METRIC_PROBE_FAILURES, METRIC_RECEIVED,
    METRIC_RECONNECTS,
};
use crate::backplane::{BackplaneError, Deliver};

/// How often the liveness probe is published.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// SUBSCRIBEs in flight while resubscribing after a reconnect.
const RESUBSCRIBE_CONCURRENCY: usize = 256;

type Op = BoxFuture<'static, OpDone>;

/// Handle to the subscriber task; dropping it stops the task.
pub(crate) struct Subscriber {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    /// Resolves when the reader thread has finished.
    done: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Subscriber {
    /// Start the subscriber task on a thread of its own (a current-thread
    /// runtime): the node's connections and fan-out workers can keep every
    /// runtime thread busy, and the reader must still read Redis and see its
    /// probes come back on time. It connects in the background; commands of
    /// its own (the probe) run on the caller's runtime.
    pub(crate) fn start(
        shared: Arc<Shared>,
        registry: Arc<Registry>,
        sink: Arc<dyn Deliver>,
    ) -> Result<Self, BackplaneError> {
        if let Some(cluster) = shared.cluster.clone() {
            let task = ShardedTask::new(shared.clone(), cluster, registry, sink);
            return Self::spawn(shared, move || task.run());
        }
        let node = &shared.settings.node_id;
        let task = SubscriberTask {
            probe_conn: None,
            fixed: vec![
                shared.keys.node(node),
                shared.keys.all(),
                shared.keys.probe(node),
            ],
            probe_channel: shared.keys.probe(node),
            shared: shared.clone(),
            registry,
            target: shared.target.subscribe(),
            sink,
            cancel: shared.cancel.clone(),
            next_op: 0,
            decode_warned: false,
        };
        Self::spawn(shared, move || task.run())
    }

    /// Run `task` on the reader thread.
    fn spawn<F, Fut>(shared: Arc<Shared>, task: F) -> Result<Self, BackplaneError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let cancel = shared.cancel.clone();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("redis-pubsub".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(task()),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build the Redis reader's runtime")
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| BackplaneError::Protocol(format!("cannot start the Redis reader: {e}")))?;
        Ok(Self {
            shared,
            cancel,
            done: Mutex::new(Some(done_rx)),
        })
    }

    /// Stop the task and wait (bounded) for it to finish.
    pub(crate) async fn shutdown(&self) {
        self.cancel.cancel();
        let done = self.done.lock().take();
        if let Some(done) = done {
            let limit = self.shared.settings.timeout.saturating_mul(2);
            if tokio::time::timeout(limit, done).await.is_err() {
                tracing::warn!("Redis subscriber did not stop in time");
            }
        }
        self.shared.tasks.close();
        let limit = self.shared.settings.timeout.saturating_mul(2);
        if tokio::time::timeout(limit, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("Redis Sentinel watcher did not stop in time");
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
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
    /// The target changed (Sentinel failover): reconnect to the new one.
    Moved,
}

/// The liveness probe in flight.
struct Probe {
    seq: u64,
    sent: Option<Instant>,
}

struct SubscriberTask {
    /// The probe's own command connection, made with each pub/sub
    /// connection on this thread: the probe measures Redis and this link,
    /// not how busy the node's runtime (and its command pool) is.
    probe_conn: Option<MultiplexedConnection>,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    /// The server to connect to (changes on a Sentinel failover).
    target: tokio::sync::watch::Receiver<Option<::redis::Client>>,
    sink: Arc<dyn Deliver>,
    cancel: CancellationToken,
    /// Always-on channels: node, all, probe.
    fixed: Vec<String>,
    probe_channel: String,
    next_op: u64,
    decode_warned: bool,
}

impl SubscriberTask {
    async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut ever_up = false;
        let mut down_logged = false;
        loop {
            // Sentinel mode before the first resolution: nothing to try yet
            // (the watcher logs and counts its own failures).
            if self.target.borrow_and_update().is_none() {
                tokio::select! {
                    () = self.cancel.cancelled() => break,
                    _ = self.target.changed() => {}
                }
                continue;
            }
            match self.establish().await {
                Ok((sink, stream)) => {
                    backoff.reset();
                    self.shared.link.up();
                    if ever_up {
                        metrics::counter!(METRIC_RECONNECTS).increment(1);
                        tracing::info!(topics = self.registry.len(), "Redis pub/sub reconnected");
                    } else {
                        tracing::info!("Redis pub/sub connected");
                    }
                    ever_up = true;
                    let exit = self.serve(sink, stream).await;
                    self.shared.link.down();
                    self.registry.lost();
                    match exit {
                        Exit::Cancelled => break,
                        Exit::Lost(reason) => {
                            self.shared.target.suspect();
                            tracing::warn!(%reason, "Redis pub/sub connection lost; reconnecting");
                            down_logged = true;
                        }
                        Exit::Moved => {
                            tracing::info!("Redis primary changed; pub/sub reconnecting to it");
                            backoff.reset();
                            continue;
                        }
                    }
                }
                Err(e) => {
                    self.shared.target.suspect();
                    metrics::counter!(METRIC_ERRORS, "op" => "connect").increment(1);
                    if !down_logged {
                        tracing::warn!(error = %e, "cannot connect Redis pub/sub; retrying");
                        down_logged = true;
                    }
                }
            }
            let pause = backoff.next();
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
                // A new primary: try it now rather than after the pause.
                _ = self.target.changed() => {}
            }
        }
        self.shared.link.down();
        self.registry.lost();
    }

    /// Connect, subscribe the fixed channels and everything wanted.
    async fn establish(&mut self) -> Result<(PubSubSink, PubSubStream), BackplaneError> {
        let timeout = self.shared.settings.timeout;
        let client = self
            .target
            .borrow_and_update()
            .clone()
            .ok_or_else(|| redis_error(super::target::unresolved()))?;
        let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
            .await
            .map_err(|_| BackplaneError::Unavailable("connect timed out".into()))?
            .map_err(redis_error)?;
        let probe_conn = tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| BackplaneError::Unavailable("connect timed out".into()))?
            .map_err(redis_error)?;
        self.probe_conn = Some(probe_conn);
        let (mut sink, stream) = pubsub.split();
        let wanted = self.registry.wanted();
        let channels: Vec<String> = self.fixed.iter().chain(&wanted).cloned().collect();
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
        // Dropped by the hub while we subscribed: unsubscribe again.
        for stale in self.registry.established(wanted) {
            tokio::time::timeout(timeout, sink.unsubscribe(stale))
                .await
                .map_err(|_| BackplaneError::Unavailable("unsubscribe timed out".into()))?
                .map_err(redis_error)?;
        }
        Ok((sink, stream))
    }

    /// Read messages, follow the wanted set and probe until the connection
    /// is lost or the task is cancelled.
    async fn serve(&mut self, sink: PubSubSink, mut stream: PubSubStream) -> Exit {
        let mut ops: FuturesUnordered<Op> = FuturesUnordered::new();
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let probe_timeout = (PROBE_INTERVAL * 3).max(self.shared.settings.timeout * 2);
        let mut probe = Probe { seq: 0, sent: None };
        // Changes made while the link was down or being established.
        self.reconcile(&sink, &mut ops).await;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return Exit::Cancelled,
                _ = self.target.changed() => return Exit::Moved,
                msg = stream.next() => match msg {
                    Some(msg) => self.on_message(&msg, &mut probe),
                    None => return Exit::Lost("connection closed".into()),
                },
                Some(done) = ops.next(), if !ops.is_empty() => {
                    if let Err(reason) = self.on_done(done) {
                        return Exit::Lost(reason);
                    }
                }
                () = self.registry.wake.notified() => self.reconcile(&sink, &mut ops).await,
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

    /// Hand Redis the SUBSCRIBE/UNSUBSCRIBE commands the wanted set needs.
    async fn reconcile(&mut self, sink: &PubSubSink, ops: &mut FuturesUnordered<Op>) {
        for change in self.registry.reconcile(&mut self.next_op) {
            let op = match change {
                Change::Subscribe(channel, op) => subscribe_op(sink, channel, op),
                Change::Unsubscribe(channel, _) => unsubscribe_op(sink, channel),
            };
            enqueue(ops, op).await;
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

    fn on_done(&mut self, done: OpDone) -> Result<(), String> {
        match done {
            OpDone::Subscribed { result: Err(e), .. } => Err(format!("SUBSCRIBE failed: {e}")),
            OpDone::Unsubscribed { result: Err(e) } => Err(format!("UNSUBSCRIBE failed: {e}")),
            OpDone::Unsubscribed { result: Ok(()) } => Ok(()),
            OpDone::Subscribed {
                channel,
                op,
                result: Ok(()),
            } => {
                self.registry.confirmed(&channel, op);
                Ok(())
            }
            OpDone::Probe { result } => {
                // A failed probe stays in flight: unless a later one comes
                // back, the connections are rebuilt when it is overdue.
                if let Err(e) = result {
                    if self.shared.link.set_healthy(false) {
                        tracing::warn!(error = %e, "Redis liveness probe cannot be published; unhealthy");
                    }
                }
                Ok(())
            }
        }
    }

    fn probe_op(&self, seq: u64) -> Op {
        let conn = self.probe_conn.clone();
        let channel = self.probe_channel.clone();
        let timeout = self.shared.settings.timeout;
        Box::pin(async move {
            let result = match conn {
                None => Err(BackplaneError::Unavailable("no probe connection".into())),
                Some(mut conn) => {
                    let mut cmd = ::redis::cmd("PUBLISH");
                    cmd.arg(&channel).arg(seq);
                    let publish = cmd.query_async::<i64>(&mut conn);
                    match tokio::time::timeout(timeout, publish).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(redis_error(e)),
                        Err(_) => Err(BackplaneError::Unavailable("probe timed out".into())),
                    }
                }
            };
            if result.is_err() {
                metrics::counter!(METRIC_ERRORS, "op" => "probe").increment(1);
            }
            OpDone::Probe { result }
        })
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
