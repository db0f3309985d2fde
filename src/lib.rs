//! # hasses: a sharded Server-Sent Events notification server
//!
//! A drop-in replacement for hasses 1.30: browsers subscribe with
//! `GET /sse?subscribe=room1-user42&id=abc`, a web backend publishes `room1=hello` through a
//! FIFO or a TCP control port, and every matching browser receives the event.
//!
//! ```text
//!   clients ──► listener 0  …  listener N-1       SO_REUSEPORT: the kernel spreads accepts
//!                  │               │
//!           hasses-worker-0 … hasses-worker-N-1   each a Shard: its own epoll loop, connections,
//!                  ▲               ▲              streams (HTTP/1.1, HTTP/2), index, timers; pinnable
//!                  └─── fan-out ───┘              a bounded channel + waker per worker, full while
//!                       ▲       ▲                 a worker holds for a slow client (backpressure)
//!                       │       └─────────────────────────────────────────────────────────┐
//!   hasses-control: TCP port, FIFO, HTTP API ─► parse once ─► Sequencer                   │
//!                       │ questions                           │ (--cluster)               │
//!                       ▼                                     ▼                           │
//!   hasses-admin:   the workers' answers              hasses-cluster-out ─► Redis ─► hasses-cluster-tail
//!                   merged: log lines, or             appends in order;               reads every node's
//!                   JSON to hasses-control            receipts to control             events: id, history,
//!                                                                                     frame once, fan out
//!   hasses-auth:    (--auth-url) ask the web backend about a handshake the worker parked;
//!                   the answer goes back on the worker's channel, with its waker
//!   hasses-history: (--history-file) appends the Sequencer's events to the file, synced on a timer
//!   hasses-cluster-orders: (--cluster) answers every node's presence questions, carries out orders
//!   hasses-log:     writes the log lines the other threads format
//!   main:           signals (SIGTERM stops, SIGHUP reloads, SIGUSR2 upgrades), supervises the
//!                   threads, stops them
//! ```
//!
//! ## Layout
//! - [`config`]: legacy `-name=value` flags, `--long` flags and the config file → [`config::Config`].
//! - [`server`]: start-up order (bind, daemonize, pid file, privileges, threads), supervision of
//!   the threads, and shutdown.
//! - [`pipeline`]: the types the control side and the shards speak ([`pipeline::ShardCommand`],
//!   [`pipeline::Sequenced`], [`pipeline::Query`]) and the atomics they share.
//! - [`broadcast`]: from a numbered event to every shard: framed once, kept, fanned out; the
//!   sequencer's last step, and the cluster tail's.
//! - [`event`]: a publish and who gets it, where a resume starts, a publish's receipt: the
//!   values every thread speaks.
//! - [`figures`]: every thread's figures, as the reports read them.
//! - [`gate`]: the orders that throw someone out (`disconnect`, `revoke`), and the bans and
//!   revoked tokens they leave behind.
//! - [`presence`]: who is here: presence rows, and join/leave notices debounced across
//!   reconnects (`--presence-events`).
//! - [`reach`]: which shards hold a subscriber of which token, so that a targeted event goes
//!   only to the shards it can reach.
//! - [`publish`]: the publish grammars (hasses' line and the JSON object), for the control
//!   thread and the HTTP API.
//! - [`cluster`]: cluster mode: the Redis stream every node appends to and tails.
//! - [`control`]: the control thread: its sources (TCP, FIFO, the HTTP API's connections), line
//!   framing, the command words, the sequencer (where a publish gets its id), and the answers
//!   its publishers get.
//! - [`shard`]: a worker thread: accept, requests and handshakes, delivery (the hot path, in
//!   `shard/delivery.rs`), backpressure, timers; a subscriber is a stream on a connection.
//! - [`admin`]: the admin path: where status, client lists and counts are answered.
//! - [`api`]: the HTTP API's requests, routes and responses, and the metrics text (pure); its
//!   connections are the control thread's (`control/api.rs`).
//! - [`history`]: the events kept for resume, and what a resuming client is owed.
//! - [`history_file`]: the history on disk (`--history-file`): its format, reading it back at
//!   start, and its writer thread (`hasses-history`), which the sequencer hands events to.
//! - [`auth`]: subscribers' signed grants (JWT): who may listen to what.
//! - [`auth_hook`]: the auth hook (`--auth-url`): subscriptions put to the web backend, by
//!   a thread of its own (`hasses-auth`; `hasses-auth-N` for https), and its answers cached.
//! - [`http`]: judging a request head and the fixed responses (pure).
//! - [`h2`]: HTTP/2 (pure): frames, a request's header block, one connection's session with its
//!   flow control and limits; the shard carries one on each HTTP/2 connection, whose streams
//!   are subscribers.
//! - [`sse`]: event framing and event ids (pure).
//! - [`tally`]: one node's answer to a question a cluster answers as one (presence, orders),
//!   and the nodes' answers told as one.
//! - [`stats`]: the status block, client list and their JSON forms.
//! - [`tls`]: the certificate and key as a rustls configuration, reloaded on SIGHUP, and the
//!   session ticket keys and TLS 1.2 session cache that outlive a reload.
//! - [`log`]: hasses' log levels and line format, a non-blocking writer, reopen on SIGHUP.
//! - [`nonblocking`]: one reading of a non-blocking call's outcome.
//! - [`limits`]: size limits shared by the parsers.
//! - [`forward`]: events a new process forwards to the one it replaced while that one drains.
//! - [`upgrade`]: replacing the binary with no gap (SIGUSR2): the sockets, connections and
//!   history handed to a new process, which says when it serves; the old one then drains.
#![deny(missing_docs)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod auth_hook;
pub mod broadcast;
pub mod cluster;
pub mod config;
pub mod control;
pub mod event;
pub mod figures;
pub mod forward;
pub mod gate;
pub mod h2;
pub mod history;
pub mod history_file;
pub mod http;
pub mod limits;
pub mod log;
pub mod nonblocking;
pub mod pipeline;
pub mod presence;
pub mod publish;
pub mod reach;
pub mod server;
pub mod shard;
pub mod sse;
pub mod stats;
pub mod tally;
pub mod tls;
pub mod upgrade;
