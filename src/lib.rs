//! # hasses: a sharded Server-Sent Events notification server
//!
//! A drop-in replacement for hasses 1.30: browsers subscribe with
//! `GET /sse?subscribe=room1-user42&id=abc`, a web backend publishes `room1=hello` through a
//! FIFO or a TCP control port, and every matching browser receives the event.
//!
//! ```text
//!                  SO_REUSEPORT (the kernel spreads accepts)
//!   clients ──►  listener 0    listener 1   ...   listener N-1
//!                   │              │                  │
//!               worker 0       worker 1     ...   worker N-1    each: its own mio Poll, its own
//!               (Shard)        (Shard)            (Shard)       connections, subscription index
//!                   ▲              ▲                  ▲         and counters; optionally pinned
//!                   └──────────────┴──── fan-out ─────┘
//!                      bounded crossbeam channel + mio Waker per shard
//!                                     ▲
//!                  control thread: reads the TCP control port and the FIFO, parses each
//!                  line ONCE into a Command, frames each event ONCE, sends it to every
//!                  shard (which copies it once and shares that copy among its clients);
//!                  asks the shards for figures and merges the answers
//! ```
//!
//! ## Layout
//! - [`config`]: legacy `-name=value` flags, `--long` flags and the config file → [`config::Config`].
//! - [`server`]: start-up order (bind, daemonize, pid file, privileges, threads) and shutdown.
//! - [`shard`]: a worker thread: connections, their state machine, the subscription index,
//!   outbound queues, timeouts. The hot path lives here.
//! - [`control`]: the control thread: line framing, the command grammar, fan-out, figures.
//! - [`http`]: judging a request head and the fixed responses (pure).
//! - [`sse`]: event framing and event ids (pure).
//! - [`stats`]: the status block, client list and their JSON forms.
//! - [`tls`]: the certificate and key as a rustls configuration, reloaded on SIGHUP.
//! - [`log`]: hasses' log levels and line format, a non-blocking writer, reopen on SIGHUP.
//! - [`limits`]: size limits shared by the parsers.
#![deny(missing_docs)]

pub mod config;
pub mod control;
pub mod http;
pub mod limits;
pub mod log;
pub mod nonblocking;
pub mod pipeline;
pub mod server;
pub mod shard;
pub mod sse;
pub mod stats;
pub mod tls;
