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
//!                                     ▲           (full while a shard holds for a slow client:
//!                                     │            the backpressure that reaches publishers)
//!   control thread:  sources ──► parse once ──► Sequencer: id, keep in the history,
//!   (TCP port, FIFO,              (Command)        │  frame once, fan out; questions go
//!    HTTP API)                                     │  out in the same order
//!                                                  ▼
//!   cluster threads: (with --cluster) the outbox appends publishes to a Redis stream; the
//!                    tail reads it and delivers every node's events as the Sequencer does
//!                    (id from the stream, history, frame once, fan out)
//!   admin thread:    gathers the shards' answers (status, client list, counts) and writes
//!                    the log lines, or sends JSON back to the control thread for the
//!                    connection that asked: no question holds up a publish
//! ```
//!
//! ## Layout
//! - [`config`]: legacy `-name=value` flags, `--long` flags and the config file → [`config::Config`].
//! - [`server`]: start-up order (bind, daemonize, pid file, privileges, threads), supervision of
//!   the threads, and shutdown.
//! - [`pipeline`]: the types the control side and the shards speak ([`pipeline::ShardCommand`],
//!   [`pipeline::Sequenced`]) and the atomics they share.
//! - [`cluster`]: cluster mode: the Redis stream every node appends to and tails.
//! - [`control`]: the control thread: its sources (TCP, FIFO, the HTTP API's connections), line
//!   framing, the command grammar, the sequencer (where a publish gets its id) and the fan-out.
//! - [`shard`]: a worker thread: accept, requests and handshakes, delivery (the hot path, in
//!   `shard/delivery.rs`), backpressure, timers.
//! - [`admin`]: the admin path: where status, client lists and counts are answered.
//! - [`api`]: the HTTP API's requests, routes and responses, and the metrics text (pure); its
//!   connections are the control thread's (`control/api.rs`).
//! - [`history`]: the events kept for resume, and what a resuming client is owed.
//! - [`auth`]: subscribers' signed grants (JWT): who may listen to what.
//! - [`http`]: judging a request head and the fixed responses (pure).
//! - [`sse`]: event framing and event ids (pure).
//! - [`stats`]: the status block, client list and their JSON forms.
//! - [`tls`]: the certificate and key as a rustls configuration, reloaded on SIGHUP, and the
//!   session ticket keys and TLS 1.2 session cache that outlive a reload.
//! - [`log`]: hasses' log levels and line format, a non-blocking writer, reopen on SIGHUP.
//! - [`nonblocking`]: one reading of a non-blocking call's outcome.
//! - [`limits`]: size limits shared by the parsers.
#![deny(missing_docs)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod broadcast;
pub mod cluster;
pub mod config;
pub mod control;
pub mod event;
pub mod figures;
pub mod history;
pub mod http;
pub mod limits;
pub mod log;
pub mod nonblocking;
pub mod pipeline;
pub mod publish;
pub mod server;
pub mod shard;
pub mod sse;
pub mod stats;
pub mod tls;
