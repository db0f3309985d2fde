//! What each phase measured, typed: one struct per phase, plus the CPU used and the latency
//! quantiles several of them share.
//!
//! Owns the names of the JSON line's fields (the serde names below); it computes nothing and
//! formats nothing: [`crate::run`] fills these, [`crate::report`] shows them.

use serde::Serialize;

use crate::cli::Phase;
use crate::switch::Switch;

/// A phase's own figures.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Figures {
    /// Opening the connections.
    Connect(Connect),
    /// Opening them again, resuming their TLS sessions (`--tls-resume`).
    Reconnect(Connect),
    /// Waiting with every connection open.
    Idle(Idle),
    /// Messages to everyone at an interval.
    Broadcast(Broadcast),
    /// Messages to everyone back to back.
    Burst(Burst),
    /// Messages to one connection each.
    Targeted(Targeted),
    /// Closing, missing events, and resuming.
    Resume(Resume),
    /// The server giving way to a new one under its clients.
    Switched(Switched),
    /// Asking how many are subscribed.
    Presence(Presence),
}

impl Figures {
    /// The phase these figures are of.
    pub fn phase(&self) -> Phase {
        match self {
            Figures::Connect(_) => Phase::Connect,
            Figures::Reconnect(_) => Phase::Reconnect,
            Figures::Idle(_) => Phase::Idle,
            Figures::Broadcast(_) => Phase::Broadcast,
            Figures::Burst(_) => Phase::Burst,
            Figures::Targeted(_) => Phase::Targeted,
            Figures::Resume(_) => Phase::Resume,
            Figures::Switched(f) => Phase::Switch(f.switch),
            Figures::Presence(_) => Phase::Presence,
        }
    }
}

/// CPU used over a phase's measured window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// The server's CPU seconds (schedstat, else stat), when `--server-pid` was given: the sum
    /// over its processes.
    pub server_cpu_s: Option<f64>,
    /// The server's CPU seconds by `/proc/PID/stat` alone (clock-tick resolution).
    pub server_cpu_stat_s: Option<f64>,
    /// With several `--server-pid`s, each one's CPU seconds, in their order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_cpu_s_each: Vec<f64>,
    /// This tool's CPU seconds.
    pub tool_cpu_s: f64,
}

/// Receive latency over every delivery of a phase (receive time minus the send time in the
/// payload), in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// The median.
    pub latency_ms_p50: f64,
    /// The 99th percentile.
    pub latency_ms_p99: f64,
    /// The largest.
    pub latency_ms_max: f64,
}

/// Per message, the time from its publish (the send time in it) until its last receiver had
/// it, over the messages of a phase that were received, in milliseconds (exact, nearest rank).
/// A targeted message has one receiver: the figures are its publish-to-delivery latency.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LastReceiver {
    /// The median.
    pub last_receiver_ms_p50: f64,
    /// The 99th percentile.
    pub last_receiver_ms_p99: f64,
    /// The largest.
    pub last_receiver_ms_max: f64,
}

/// The connect phase.
#[derive(Debug, Clone, Serialize)]
pub struct Connect {
    /// Subscribers (connections, or HTTP/2 streams) whose response head arrived.
    pub handshaked: u64,
    /// Handshaked connections per second of the phase.
    pub connections_per_s: f64,
    /// Server CPU per handshaked connection (with `--http2`, with all its streams), µs.
    pub server_cpu_us_per_connection: Option<f64>,
    /// With `--http2`: the streams' figures.
    #[serde(flatten)]
    pub http2: Option<StreamsConnect>,
    /// What the server answers to `tcpnumberofclients` after the phase.
    pub server_clients: Option<u64>,
    /// The server's RSS before the first connection, bytes.
    pub server_rss_before_bytes: Option<u64>,
    /// The server's RSS after the phase, bytes.
    pub server_rss_after_bytes: Option<u64>,
    /// With `--tls`: the handshakes' figures.
    #[serde(flatten)]
    pub tls: Option<TlsHandshakes>,
}

/// The streams of the connect phase (`--http2`).
#[derive(Debug, Clone, Serialize)]
pub struct StreamsConnect {
    /// Streams each connection asked for.
    pub streams_per_connection: u32,
    /// Streams answered per second of the phase.
    pub streams_per_s: f64,
    /// Server CPU per answered stream (its connection's share included), µs.
    pub server_cpu_us_per_stream: Option<f64>,
}

/// The TLS handshakes of the connect and reconnect phases (`--tls`).
#[derive(Debug, Clone, Serialize)]
pub struct TlsHandshakes {
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// Of those, the ones that resumed a session (none without `--tls-resume`).
    pub tls_resumed_handshakes: u64,
    /// Completed per second, until the last one.
    pub tls_handshakes_per_s: f64,
    /// Server CPU per handshake (and its connection's response head), µs.
    pub server_cpu_us_per_tls_handshake: Option<f64>,
    /// This tool's CPU per handshake, µs.
    pub tool_cpu_us_per_tls_handshake: Option<f64>,
}

/// The idle phase.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    /// How long the connections were left idle, seconds.
    pub idle_s: f64,
    /// The server's RSS before the first connection, bytes.
    pub rss_before_bytes: Option<u64>,
    /// The server's RSS after the pause, bytes.
    pub rss_after_bytes: Option<u64>,
    /// RSS growth per open connection (with `--http2`, with all its streams), bytes.
    pub rss_bytes_per_connection: Option<f64>,
    /// With `--http2`: RSS growth per open stream (its connection's share included), bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes_per_stream: Option<f64>,
    /// The same, under the name of a TLS run (`--tls` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes_per_tls_connection: Option<f64>,
}

/// The broadcast phase.
#[derive(Debug, Clone, Serialize)]
pub struct Broadcast {
    /// Broadcasts sent.
    pub messages: u64,
    /// The interval between two, ms.
    pub interval_ms: u64,
    /// Broadcast events received, over all connections.
    pub deliveries: u64,
    /// Open connections × messages.
    pub expected_deliveries: u64,
    /// Per message, the time until its last receiver had it.
    #[serde(flatten)]
    pub last_receiver: LastReceiver,
    /// Every delivery's latency.
    #[serde(flatten)]
    pub latency: Latency,
    /// Server CPU per delivery, µs.
    pub server_cpu_us_per_delivery: Option<f64>,
}

/// The burst phase.
#[derive(Debug, Clone, Serialize)]
pub struct Burst {
    /// Broadcasts sent back to back.
    pub messages: u64,
    /// Broadcast events received, over all connections.
    pub deliveries: u64,
    /// Open connections × messages.
    pub expected_deliveries: u64,
    /// From the first send until the last delivery, seconds.
    pub all_received_s: f64,
    /// Deliveries per second over that time.
    pub deliveries_per_s: f64,
    /// Every delivery's latency.
    #[serde(flatten)]
    pub latency: Latency,
    /// Server CPU per delivery, µs.
    pub server_cpu_us_per_delivery: Option<f64>,
}

/// The targeted phase.
#[derive(Debug, Clone, Serialize)]
pub struct Targeted {
    /// Messages sent, each to one connection.
    pub messages: u64,
    /// Targeted events received.
    pub received: u64,
    /// From the first send until the last one was received, seconds.
    pub all_received_s: f64,
    /// Messages received per second over that time.
    pub messages_per_s: f64,
    /// The pace they were sent at, messages per second (`--rate`); none: as fast as the
    /// control port took them.
    pub rate_per_s: Option<u32>,
    /// Every message's latency (histogram).
    #[serde(flatten)]
    pub latency: Latency,
    /// Every message's latency, exact.
    #[serde(flatten)]
    pub last_receiver: LastReceiver,
    /// Server CPU per message, µs.
    pub server_cpu_us_per_message: Option<f64>,
}

/// The resume phase.
#[derive(Debug, Clone, Serialize)]
pub struct Resume {
    /// Connections that reconnected with `Last-Event-ID` and were answered.
    pub resumed: u64,
    /// Events published to each connection while it was away.
    pub missed_per_connection: u64,
    /// Missed events received in the replays, over all connections.
    pub replayed: u64,
    /// Connections × missed events.
    pub expected_replayed: u64,
    /// From the first reconnect until the last replayed event was received, seconds.
    pub all_replayed_s: f64,
    /// Events published after the replays, one per connection, received (the seam).
    pub live_after_replay: u64,
    /// Server CPU per resumed connection (handshake and replay), µs.
    pub server_cpu_us_per_resume: Option<f64>,
    /// The target for it from this run's connect and burst: 1.5 × (server CPU per connection
    /// + missed × server CPU per burst delivery), µs.
    pub budget_us_per_resume: Option<f64>,
}

/// A switch phase (restart): the server gave way to a new one while the clients were
/// connected and a publisher published. Lost, duplicated, reordered (`id_errors`) and resets
/// are the phase's counts.
#[derive(Debug, Clone, Serialize)]
pub struct Switched {
    /// Which switch (the JSON's `scenario` names it).
    #[serde(skip)]
    pub switch: Switch,
    /// Publishes the server took (answered `OK`) during the phase.
    pub published: u64,
    /// Publishes it refused (answered `ERR`).
    pub publishes_refused: u64,
    /// The longest time between two publishes the server took, seconds: how long publishers
    /// were held (not answered, refused or unable to connect) across the switch.
    pub longest_publish_gap_s: f64,
    /// Connections the server ended that came back and were answered again.
    pub returned: u64,
    /// Connects refused while they came back (the server was away).
    pub refused_connects: u64,
    /// From the switch (the SIGTERM) until the new server process ran, seconds.
    pub switch_s: f64,
    /// From the switch until every connection was answered again, seconds.
    pub all_back_s: Option<f64>,
    /// From the switch until every connection had every event published before it was back,
    /// seconds.
    pub all_caught_up_s: Option<f64>,
    /// Events delivered from the new server's start until all had caught up (replayed and
    /// live), over all connections.
    pub wave_deliveries: u64,
    /// Of those, per returned client, the events published before the new server started:
    /// what each missed, on average.
    pub missed_per_return: f64,
    /// The old server's CPU per delivery of the publishing before the switch, every client
    /// connected, µs: what a live event costs.
    pub steady_server_cpu_us_per_delivery: Option<f64>,
    /// The new server's CPU from its start until all had caught up (the wave, `server_cpu_s`),
    /// per returned client, µs: its handshake, its replay, and the live events meanwhile.
    pub server_cpu_us_per_return: Option<f64>,
    /// The target for it, shaped as a resume's: 1.5 × (connect's server CPU per connection +
    /// the wave's deliveries per return × the steady CPU per delivery), µs.
    pub budget_us_per_return: Option<f64>,
}

/// The presence phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Presence {
    /// Polls answered.
    pub polls: u64,
    /// What the last answer counted.
    pub presence_count: u64,
    /// The open connections it should count.
    pub expected_count: u64,
    /// The median time from a poll's request to its whole answer, ms.
    pub poll_ms_p50: f64,
    /// The 99th percentile.
    pub poll_ms_p99: f64,
    /// The largest.
    pub poll_ms_max: f64,
    /// Server CPU per poll, µs.
    pub server_cpu_us_per_poll: Option<f64>,
}
