//! The server's figures as each thread keeps them: a shard's counters and client rows, the
//! control thread's, the history's and the cluster's. Plain values below every thread that
//! counts and every report that shows them (status, `tcpstatus`, `/metrics`, the status page).
//!
//! A shard's figures are declared once, in [`ShardFigures`]' `figures!` block: each with its
//! doc, its `tcpstatus` key and its place in `/metrics`. The struct, its sum over shards and the
//! list the reports iterate are generated from that block, so a new figure reaches `tcpstatus`,
//! `/metrics` and the status page (which reads both) with no other edit. The `status` block
//! stays written out by hand in `stats`: it is hasses' text, in hasses' order, that log
//! watchers grep.

use std::net::SocketAddr;
use std::ops::AddAssign;

use serde::Serialize;

/// How a figure moves, which decides its Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Counted since start: only ever goes up.
    Counter,
    /// What there is now (connections open): goes up and down.
    Gauge,
}

/// A Prometheus metric family: its name, help and type, and the label that tells its series
/// apart when several figures share it (`hasses_resumes_total{result="reset"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// The metric's name.
    pub name: &'static str,
    /// Its `# HELP` text.
    pub help: &'static str,
    /// Its `# TYPE`.
    pub kind: Kind,
    /// The label its series are told apart by, if it has several.
    pub label: Option<&'static str>,
}

impl Family {
    /// A counter family.
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Family { name, help, kind: Kind::Counter, label: None }
    }

    /// A gauge family.
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Family { name, help, kind: Kind::Gauge, label: None }
    }

    /// The family with its series told apart by `label`.
    pub const fn by(self, label: &'static str) -> Self {
        Family { label: Some(label), ..self }
    }

    /// A figure that is this family's only series, as it is without a label.
    pub const fn alone(self) -> Metric {
        Metric { family: self, value: None }
    }

    /// A figure that is the series of this family whose label is `value`.
    pub const fn series(self, value: &'static str) -> Metric {
        Metric { family: self, value: Some(value) }
    }
}

/// Where a figure goes in `/metrics`: its family, and its value of the family's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The family it belongs to.
    pub family: Family,
    /// Its value of the family's label (none for a family without one).
    pub value: Option<&'static str>,
}

/// One declared figure: what it is called in each report that iterates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figure {
    /// Its key in the `tcpstatus` reply (and the API's `/status`).
    pub json: &'static str,
    /// Its series in `/metrics`.
    pub metric: Metric,
}

/// Declares a struct of `u64` figures once: for each field its doc, its `tcpstatus` key and its
/// [`Metric`]. Generates the struct, `AddAssign` (summing over threads) and `FIGURES`, the list
/// of descriptors that `figures()` pairs with the values, so no report
/// lists the fields again.
macro_rules! figures {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $json:literal, $metric:expr;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: u64,
            )*
        }

        impl $name {
            /// Every figure declared, in declaration order.
            pub const FIGURES: &'static [Figure] = &[$(Figure { json: $json, metric: $metric }),*];

            /// Each figure's descriptor with its value, in declaration order.
            pub fn figures(&self) -> impl Iterator<Item = (&'static Figure, u64)> {
                Self::FIGURES.iter().zip([$(self.$field),*])
            }

            /// Every figure a different value (1, 2, 3, … in declaration order), so a test can
            /// tell in a report which figure went where.
            #[cfg(test)]
            pub fn numbered() -> Self {
                let mut next = 0;
                Self { $($field: { next += 1; next }),* }
            }
        }

        impl AddAssign for $name {
            fn add_assign(&mut self, other: Self) {
                $(self.$field += other.$field;)*
            }
        }
    };
}

/// The upper bounds of [`DeliveryLatency`]'s buckets, in nanoseconds: 100 µs to 2.5 s, about
/// three a decade, as Prometheus' default buckets are spread.
pub const LATENCY_BOUNDS_NS: [u64; 14] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// How long deliveries took, from the event's sequencing to the write that handed it to the
/// kernel, as a histogram: deliveries per bucket (not cumulative; the last counts those over
/// every bound) and the sum of their latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryLatency {
    /// Deliveries whose latency is at most the bucket's bound and over the one before; the
    /// last place holds those over every bound.
    pub buckets: [u64; LATENCY_BOUNDS_NS.len() + 1],
    /// The sum of every delivery's latency, in nanoseconds.
    pub sum_ns: u128,
}

impl DeliveryLatency {
    /// Counts `deliveries` that each took `latency`.
    pub fn observe(&mut self, latency: std::time::Duration, deliveries: u64) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.buckets[bucket] += deliveries;
        self.sum_ns += u128::from(ns) * u128::from(deliveries);
    }

    /// How many deliveries were counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Each bound (seconds) with the deliveries at most that long, as Prometheus' `le` series.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        LATENCY_BOUNDS_NS.iter().zip(self.buckets.iter()).scan(0, |total, (&bound, &n)| {
            *total += n;
            Some((bound as f64 / 1e9, *total))
        })
    }
}

impl AddAssign for DeliveryLatency {
    fn add_assign(&mut self, other: Self) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum_ns += other.sum_ns;
    }
}

/// Resumes with `Last-Event-ID`, by how they went.
const RESUMES: Family =
    Family::counter("hasses_resumes_total", "Resumes with Last-Event-ID: complete, or told of a gap (reset)")
        .by("result");
/// Subscriptions refused by the token check, by why.
const AUTH_REFUSED: Family =
    Family::counter("hasses_auth_refused_total", "Subscriptions refused by the token check").by("reason");
/// Subscriptions decided by the backend (`--auth-url`), by how.
const AUTH_BACKEND: Family = Family::counter(
    "hasses_auth_backend_verdicts_total",
    "Subscriptions decided by the auth backend (asked or cached): allowed, refused, or failed (disconnected)",
)
.by("result");
/// TLS handshakes, by whether they resumed a session.
const TLS_HANDSHAKES: Family = Family::counter(
    "hasses_tls_handshakes_total",
    "TLS handshakes completed: in full, or resuming a session",
)
.by("kind");

figures! {
    /// One shard's figures. The shard keeps this struct as its counters, bumped on its own
    /// thread, and fills in the gauges (connections, streaming) when asked; summed over shards
    /// for the server.
    pub struct ShardFigures {
        /// Open connections, handshaked or not (a gauge, counted when asked).
        connections: "allconncli",
            Family::gauge("hasses_connections", "Open client connections, all workers").alone();
        /// Handshaked (streaming) connections (a gauge, counted when asked).
        streaming: "sseconncli",
            Family::gauge("hasses_streaming_connections", "Handshaked client connections").alone();
        /// Handshakes since start (reinits not included).
        handshakes: "handshakecnt",
            Family::counter("hasses_handshakes_total", "Client handshakes, reinits not included").alone();
        /// Reinits since start.
        reinits: "reinitcnt",
            Family::counter("hasses_reinits_total", "Handshakes again on a streaming connection").alone();
        /// Events queued to clients since start.
        deliveries: "msgsendcnt",
            Family::counter("hasses_deliveries_total", "Events queued to clients").alone();
        /// Clients dropped because their unsent bytes went over the cap.
        dropped_slow: "droppedslowcli",
            Family::counter(
                "hasses_slow_clients_dropped_total",
                "Clients dropped for unsent bytes over --max-backlog",
            )
            .alone();
        /// Connections refused with 503 for a connection limit.
        refused: "refusedconncli",
            Family::counter(
                "hasses_connections_refused_total",
                "Client connections refused with 503 for a connection limit",
            )
            .by("reason")
            .series("limit");
        /// Resumes that got everything they asked for.
        resumes_complete: "resumecompletecnt", RESUMES.series("complete");
        /// Resumes told of a gap (`event: reset`).
        resumes_with_gap: "resumegapcnt", RESUMES.series("reset");
        /// Connections accepted since start (refused ones not included).
        accepted: "acceptedconncli",
            Family::counter("hasses_connections_accepted_total", "Client connections accepted").alone();
        /// Subscriptions refused without a token.
        auth_refused_missing: "authmissingcnt", AUTH_REFUSED.series("missing");
        /// Subscriptions refused for a malformed, badly signed or expired token.
        auth_refused_invalid: "authinvalidcnt", AUTH_REFUSED.series("invalid");
        /// Subscriptions refused for a token that does not grant what they asked.
        auth_refused_forbidden: "authforbiddencnt", AUTH_REFUSED.series("forbidden");
        /// Subscriptions put to the backend (`--auth-url`), not counting cache hits.
        auth_backend_asked: "authbackendasked",
            Family::counter("hasses_auth_backend_asked_total", "Subscriptions put to the auth backend").alone();
        /// Subscriptions the backend allowed (asked or cached).
        auth_backend_allowed: "authbackendallowed", AUTH_BACKEND.series("allowed");
        /// Subscriptions the backend refused with 401 or 403, or granted less than they asked.
        auth_backend_refused: "authbackendrefused", AUTH_BACKEND.series("refused");
        /// Subscriptions disconnected without an answer: the backend down, slow, answering
        /// something else or a malformed grant, or too many waiting.
        auth_backend_failed: "authbackendfailed", AUTH_BACKEND.series("failed");
        /// Subscriptions answered from the cache (`--auth-cache-secs`).
        auth_backend_cache_hits: "authbackendcachehits",
            Family::counter("hasses_auth_backend_cache_hits_total", "Subscriptions answered from the auth cache")
                .alone();
        /// Handshakes waiting for the backend's answer (a gauge, counted when asked).
        auth_backend_waiting: "authbackendwaiting",
            Family::gauge("hasses_auth_backend_waiting", "Handshakes waiting for the auth backend").alone();
        /// Subscriptions refused for a revoked token (`revoke`).
        auth_refused_revoked: "authrevokedcnt", AUTH_REFUSED.series("revoked");
        /// Subscriptions answered `204 No Content` for a ban (`disconnect … ban=SECS`).
        banned: "bannedcnt",
            Family::counter("hasses_banned_total", "Subscriptions answered 204 for a ban").alone();
        /// Streams ended by an order (`disconnect`, `revoke` of a `sub`).
        disconnected: "disconnectedcnt",
            Family::counter("hasses_disconnected_total", "Streams ended by a disconnect or revoke order")
                .alone();
        /// TLS handshakes completed in full: certificate and key exchange.
        tls_full_handshakes: "tlsfullhandshakes", TLS_HANDSHAKES.series("full");
        /// TLS handshakes that resumed a session (a ticket or a cached TLS 1.2 session).
        tls_resumed_handshakes: "tlsresumedhandshakes", TLS_HANDSHAKES.series("resumed");
        /// Open HTTP/2 connections (a gauge, counted when asked).
        http2_connections: "http2conncli",
            Family::gauge("hasses_http2_connections", "Open HTTP/2 client connections").alone();
        /// Open HTTP/2 streams, subscribed or not yet (a gauge, counted when asked).
        http2_streams: "http2streams",
            Family::gauge("hasses_http2_streams", "Open HTTP/2 streams").alone();
        /// Connections that took up HTTP/2 since start.
        http2_connections_opened: "http2conncnt",
            Family::counter("hasses_http2_connections_total", "Client connections that spoke HTTP/2").alone();
        /// HTTP/2 connections ended with GOAWAY for a fault of the client's or a flood.
        http2_goaways: "http2goawaycnt",
            Family::counter(
                "hasses_http2_goaways_total",
                "HTTP/2 connections ended for a protocol fault or a flood (GOAWAY)",
            )
            .alone();
        /// HTTP/2 streams reset because their window stayed shut with events waiting.
        dropped_slow_streams: "droppedslowstreams",
            Family::counter(
                "hasses_slow_streams_reset_total",
                "HTTP/2 streams reset for a window shut past the stall time",
            )
            .alone();
    }
}

impl ShardFigures {
    /// Resumes, however they went.
    pub fn resumes(&self) -> u64 {
        self.resumes_complete + self.resumes_with_gap
    }

    /// Subscriptions refused by token checks, for whatever reason.
    pub fn auth_refusals(&self) -> u64 {
        self.auth_refused_missing
            + self.auth_refused_invalid
            + self.auth_refused_forbidden
            + self.auth_refused_revoked
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
    /// Its HTTP/2 stream id, when it is a stream of an HTTP/2 connection (whose other streams
    /// have the same `fd`); `None` over HTTP/1.1.
    #[serde(rename = "h2stream")]
    pub h2_stream: Option<u32>,
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

/// The history file (`--history-file`) as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryFileFigures {
    /// The file's length.
    pub bytes: u64,
    /// Events written to it since the start.
    pub written: u64,
    /// It is still written: false once a write failed (logged), after which a restart tells
    /// resuming clients of a gap.
    pub writing: bool,
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_latency_falls_in_the_first_bucket_whose_bound_it_does_not_pass() {
        use std::time::Duration;
        let mut latency = DeliveryLatency::default();
        latency.observe(Duration::from_micros(100), 2);
        latency.observe(Duration::from_micros(101), 1);
        latency.observe(Duration::from_millis(3), 4);
        latency.observe(Duration::from_secs(9), 1);
        assert_eq!((latency.buckets[0], latency.buckets[1], latency.buckets[5]), (2, 1, 4));
        assert_eq!(latency.buckets[LATENCY_BOUNDS_NS.len()], 1, "over every bound");
        assert_eq!(latency.count(), 8);
        assert_eq!(latency.sum_ns, 200_000 + 101_000 + 12_000_000 + 9_000_000_000);
        let cumulative: Vec<(f64, u64)> = latency.cumulative().collect();
        assert_eq!((cumulative[0], cumulative[1], cumulative[4]), ((0.0001, 2), (0.00025, 3), (0.0025, 3)));
        assert_eq!(cumulative.last(), Some(&(2.5, 7)), "the ninth second is only in +Inf");
        let mut sum = latency;
        sum += latency;
        assert_eq!((sum.count(), sum.sum_ns), (16, 2 * latency.sum_ns));
    }

    /// A key or series declared twice would show one figure under another's name; a family
    /// declared two ways would be refused by the metrics encoder.
    #[test]
    fn declared_figures_have_keys_and_series_of_their_own() {
        let mut keys = HashSet::new();
        let mut series = HashSet::new();
        for figure in ShardFigures::FIGURES {
            assert!(keys.insert(figure.json), "tcpstatus key {} twice", figure.json);
            let Metric { family, value } = figure.metric;
            assert!(series.insert((family.name, value)), "series {} {value:?} twice", family.name);
            assert_eq!(family.label.is_some(), value.is_some(), "{}: a label needs a value", family.name);
            let mut same_name =
                ShardFigures::FIGURES.iter().map(|f| f.metric.family).filter(|f| f.name == family.name);
            assert!(same_name.all(|other| other == family), "{} declared two ways", family.name);
        }
    }
}
