//! The server's figures as each thread keeps them: a shard's counters and client rows, the
//! control thread's, the history's and the cluster's. Plain values below every thread that
//! counts and every report that shows them (status, `tcpstatus`, `/metrics`, the status page).

use std::net::SocketAddr;
use std::ops::AddAssign;

use serde::Serialize;

/// One shard's counters, as it answers a figures request; summed over shards for the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardFigures {
    /// Open connections, handshaked or not.
    pub connections: u64,
    /// Handshaked (streaming) connections.
    pub streaming: u64,
    /// Handshakes since start (reinits not included).
    pub handshakes: u64,
    /// Reinits since start.
    pub reinits: u64,
    /// Events queued to clients since start.
    pub deliveries: u64,
    /// Clients dropped because their unsent bytes went over the cap.
    pub dropped_slow: u64,
    /// Connections refused with 503 for a connection limit.
    pub refused: u64,
    /// Resumes that got everything they asked for.
    pub resumes_complete: u64,
    /// Resumes told of a gap (`event: reset`).
    pub resumes_with_gap: u64,
    /// Connections accepted since start (refused ones not included).
    pub accepted: u64,
    /// Subscriptions refused without a token.
    pub auth_refused_missing: u64,
    /// Subscriptions refused for a malformed, badly signed or expired token.
    pub auth_refused_invalid: u64,
    /// Subscriptions refused for a token that does not grant what they asked.
    pub auth_refused_forbidden: u64,
    /// TLS handshakes completed in full: certificate and key exchange.
    pub tls_full_handshakes: u64,
    /// TLS handshakes that resumed a session (a ticket or a cached TLS 1.2 session).
    pub tls_resumed_handshakes: u64,
}

impl ShardFigures {
    /// Subscriptions refused by token checks, for whatever reason.
    pub fn auth_refused(&self) -> u64 {
        self.auth_refused_missing + self.auth_refused_invalid + self.auth_refused_forbidden
    }
}

impl AddAssign for ShardFigures {
    fn add_assign(&mut self, other: Self) {
        self.connections += other.connections;
        self.streaming += other.streaming;
        self.handshakes += other.handshakes;
        self.reinits += other.reinits;
        self.deliveries += other.deliveries;
        self.dropped_slow += other.dropped_slow;
        self.refused += other.refused;
        self.resumes_complete += other.resumes_complete;
        self.resumes_with_gap += other.resumes_with_gap;
        self.accepted += other.accepted;
        self.auth_refused_missing += other.auth_refused_missing;
        self.auth_refused_invalid += other.auth_refused_invalid;
        self.auth_refused_forbidden += other.auth_refused_forbidden;
        self.tls_full_handshakes += other.tls_full_handshakes;
        self.tls_resumed_handshakes += other.tls_resumed_handshakes;
    }
}

/// One row of the client list.
#[derive(Debug, Clone, Serialize)]
pub struct ClientRow {
    /// The socket descriptor (`<6>` in hasses' list).
    pub fd: i32,
    /// The client's address.
    pub peer: SocketAddr,
    /// `NEW`, `SSE` or `END`.
    pub state: &'static str,
    /// Events queued for it.
    pub messages: u64,
    /// How many times it re-handshaked.
    pub reinits: u32,
    /// Seconds since it connected.
    pub connected_secs: u64,
    /// Seconds since its last handshake, if it handshaked.
    pub handshaked_secs: Option<u64>,
    /// Its unique id, or empty.
    pub id: String,
    /// Its User-Agent, or empty.
    pub agent: String,
    /// Its tokens, `*` first.
    pub tokens: Vec<String>,
    /// Which worker holds it.
    pub worker: usize,
    /// Under TLS: its protocol version and cipher suite (`-` until agreed).
    pub tls: Option<String>,
    /// The id of the last event queued for it (or, before any, of the last one published before
    /// it subscribed): where it would resume. In the JSON list only: hasses' text layout is
    /// parsed by scripts, and stays as it is.
    #[serde(rename = "lasteventid")]
    pub last_event_id: u64,
    /// Its token's `sub`, when subscriptions need a token and its token has one (then it is
    /// also its id).
    pub sub: Option<String>,
}

/// The control thread's own counters, as they were when it asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlFigures {
    /// Events sequenced.
    pub processed: u64,
    /// Control commands refused as malformed or too long.
    pub refused: u64,
    /// Events published, by source.
    pub published: Published,
}

/// Events published, by where they came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// On the TCP control port.
    pub tcp: u64,
    /// On the control FIFO.
    pub fifo: u64,
    /// Through the HTTP API.
    pub http: u64,
}

/// The history's figures, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryFigures {
    /// Events kept.
    pub events: u64,
    /// Their frames' bytes.
    pub bytes: u64,
    /// The oldest kept event's id.
    pub oldest: Option<u64>,
}

/// The cluster as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterFigures {
    /// Both the outbox and the tail have a connection to Redis.
    pub connected: bool,
    /// The tail's lag in milliseconds.
    pub lag_ms: u64,
    /// Publishes waiting to be appended.
    pub buffered: u64,
    /// Live nodes.
    pub nodes: u64,
}
