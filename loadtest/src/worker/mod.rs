//! Client worker processes and the parent's handle on them.
//!
//! One process may hold about 20,000 open files here, so the parent
//! re-executes its own binary as `loadtest __worker`, each worker holding
//! fewer than 15,000 sockets. The parent writes a [`WorkerSpec`] and then
//! [`Cmd`]s to the worker's stdin, one JSON object per line; the worker
//! answers with [`Ev`]s on stdout, one JSON object per line, and the parent
//! aggregates them. Worker diagnostics go to stderr (inherited).
//!
//! Client `i` (a global index across all workers) connects to
//! `urls[i % urls]` from `src_ips[i % src_ips]` as user `<prefix><i>`, and
//! subscribes to `<group.prefix><i % group.count>` for every group.
//!
//! One job per file:
//!
//! - `protocol`: what parent and worker say to each other (spec, commands,
//!   events, reports);
//! - `ctx`: a worker's shared state, the counters its client tasks update
//!   and the reports read from them;
//! - `seq`: a subscriber's receive accounting (sequences per publisher
//!   lane, refused publications, broadcasts) and the frame parsing it needs;
//! - `handshake`: what a setup waits for after the upgrade, v1 or Pusher;
//! - `client`: the client tasks (connect + subscribe, receive until
//!   stopped, one churn cycle);
//! - `process`: the worker process itself (`loadtest __worker`): its command
//!   loop and the connect, finish and churn phases;
//! - `pool`: the parent side, which starts the workers, talks to them and
//!   splits clients among them.
//!
//! Invariants: every wait is bounded; a worker whose stdin closes (the
//! parent died) stops its clients and exits; the parent kills workers that
//! outlive their handle.

mod client;
mod ctx;
mod handshake;
mod pool;
mod process;
mod protocol;
mod seq;

pub use pool::{split, Pool};
pub use process::worker_main;
pub use protocol::{
    ChurnReport, ChurnSpec, Cmd, ConnectReport, Ev, Group, Mode, SeqReport, StopReport, WorkerSpec,
};
