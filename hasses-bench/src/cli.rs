//! The bench's command line: the scenario, the target, the load's shape, and the outputs.
//!
//! Owns turning argv into one validated [`Options`]; it opens nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::switch::Switch;

/// The most source addresses a range may expand to.
const MAX_SRC_ADDRS: u32 = 65_536;
/// The longest duration a flag takes: a year is more than any run needs, and far from the
/// point where a deadline (now + the duration) would overflow.
const MAX_SECS: u64 = 365 * 86_400;

const AFTER_HELP: &str = "\
Every scenario first opens the N connections (the connect scenario); `all` runs connect, idle,
broadcast, burst and targeted in that order over the same connections.

resume runs connect, burst, then the resume phase: each connection gets one event of its own,
then all close; --missed M events are published to each connection's own token while they
are away (pipelined, as targeted); then all reconnect at once, each with `Last-Event-ID: <the
id of the last event it received>`. Each must receive exactly its M missed events, in order,
with no `event: reset` and no duplicate, and then one more event published live (the seam
between replay and live delivery). Figures: server CPU per resumed connection, from the
reconnects until the last replay is received (its wall time is `all replayed in`). The budget
printed beside it is the issue's target, from the same run: 1.5 × (connect's server CPU per
connection + M × burst's server CPU per delivery), that is, a resume may cost half again as
much as a plain handshake plus M deliveries in a burst. The server must keep N × (M + 1)
events: about N × (M + 1) × 100 bytes of --history-memory (hasses' default, 64 MiB, holds
them for N up to about 6,000). The floor server keeps no history: run resume against hasses
only.

restart runs connect, then the restart phase: every connection now comes back as
EventSource does when the server ends it or refuses it (after the last `retry:` its stream
gave, 3 s before any; resuming with Last-Event-ID). A publisher of its own publishes every
--publish-ms, broadcast and targeted in turn, each acknowledged (`ack on`): a publish counts
as sent once answered `OK`, and one left unanswered is sent again. After a second of it, the
server (--server-pid, one) is sent SIGTERM; once it is gone, --server-cmd starts the new one
(a shell command line; `exec` it, so that its process is the server's). upgrade does the
same with SIGUSR2 instead: the server starts its binary again, hands it everything and
drains; the new process is found as its child. Figures: lost,
duplicated, reordered (event ids that do not increase) and reset events over the whole phase;
the time from the SIGTERM until the new server ran (switch), until every connection was
answered again (back), and until each had every event published up to then (caught up), and
the longest time no publish was taken; the new server's CPU from its start until then (the
wave: handshakes, replays and the live events meanwhile), per client, against a budget shaped
as a resume's: 1.5 × (connect's CPU per connection + the wave's deliveries per client × the
CPU per delivery of the publishing in the second before the switch). The bench stops the server it started when it ends. The history file
(--history-file) is what lets the new server resume clients without a reset.

targeted --rate R paces the targeted phase (in targeted and all): message k is sent at k/R
seconds after the first, what is due going out every millisecond or so, each line stamped
with its own send time as it is written. The figure that matters then is latency at that
load: per message, from its publish to its delivery (last_receiver_ms_p50, _p99 and _max in
the JSON, exact over every message received; the table's p50/p99/max), measured the same
way unpaced. For a broadcast, the same fields are the time until its last receiver had it.

Connection i sends `GET <path>?subscribe=all-c<i>&id=c<i> HTTP/1.1` and reads the chunked
event stream. Messages go through one persistent control connection with the line protocol:
`all=b<seq>:<ts>:<pad>` to everyone and `c<i>=t<seq>:<ts>:<i>:<pad>` to connection i alone,
where ts is the send time on CLOCK_MONOTONIC. Latencies therefore need the bench and the
server on the same host; loss, duplicate and misroute counts work anywhere.

Every receiver counts lost messages (a gap in its sequence, or a message never received),
duplicates (a sequence number again or backwards, so also one out of order), misrouted ones (a
targeted message on another connection), event ids that do not increase, and resets (`event:
reset`, a resume told of a gap). The exit status is 1 when any of
these is non-zero, a connection failed or closed, or a phase timed out; 2 on a usage or
start-up error.

A cluster (several hasses nodes over one Redis, each started with --cluster redis://...): give
--sse the nodes' addresses, comma-separated. Connection i goes to the (i mod k)th of the k
addresses, with that address in its Host header and, over TLS, its IP as the name to verify
(unless --server-name). Messages still go through the one --control address: a publish on one
node must reach the subscribers of all, which is what the loss counts check. With several
distinct addresses, the connect phase's server_clients is the control node's own count, and
the reconnect (--tls-resume) and resume phases wait only for the control node's clients to
close.

Server figures (CPU seconds, CPU per unit, RSS) need --server-pid: CPU is read from
/proc/PID/task/*/schedstat (ns resolution) or else /proc/PID/stat utime+stime (clock
ticks); RSS from /proc/PID/status VmRSS. Given several process ids (a cluster's nodes, and
their Redis if it is to count), every server figure is the sum over them all, CPU and RSS
alike (RSS counts pages the processes share once per process); the table then adds a line per
phase with each process's CPU seconds, and the JSON their list (server_cpu_s_each, in the
order given). For idle memory per connection, start a fresh
server: RSS is read once before the first connection and again after the idle pause.

Example (this host, 18,000 connections over 8 source addresses):
  hasses-bench all -n 18000 --src-addrs 127.0.0.1-127.0.0.8 --server-pid $(pidof hasses) \\
      --json-out bench.jsonl

What the kernel alone costs: floor-server serves the same traffic with the least an epoll
server can do (the server's shape and parsers; no log, timeouts or queues; one write per
recipient). Run the same scenarios against it, on the same machine, and read the server's
figures against its figures:
  hasses-bench floor-server --sse '[::]:8090' --control 127.0.0.1:8095 &
  hasses-bench all -n 18000 --src-addrs 127.0.0.1-127.0.0.8 --sse 127.0.0.1:8090 \\
      --control 127.0.0.1:8095 --server-pid $!

What a cluster's hop through Redis alone costs: stream-hop appends --targeted entries at
--rate to a stream of its own in the Redis at --redis and reads them back on another
connection, with no server, as a node's outbox and tail do. Read a cluster's publish-to-delivery
latency, less a single node's, against its p50 and p99 (benches/cluster.sh runs it between the
single node and the cluster):
  hasses-bench stream-hop --redis redis://127.0.0.1:6379 --rate 1000 --targeted 10000

Over TLS, with a server started with --tls-cert cert.pem --tls-key key.pem. The certificate
must name 127.0.0.1 (or, with --server-name localhost, localhost) and, being self-signed, must
say CA:FALSE: rustls, unlike curl, refuses a CA certificate as the server's own.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \\
      -keyout key.pem -out cert.pem -subj /CN=localhost \\
      -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE
  hasses-bench all -n 5000 --tls --ca cert.pem --server-pid $(pidof hasses)
With --tls-resume, every connection is then closed and opened again, resuming its session: the
reconnect phase's server CPU per TLS handshake is a resumed handshake's, the connect phase's a
full one's.

Over HTTP/2 (--http2): over TLS the client offers only `h2` in ALPN; without --tls it speaks
h2c with prior knowledge (the preface first) on the plain port. Each of the N connections
carries --streams-per-connection S streams, each a `GET <path>?subscribe=all-c<j>&id=c<j>` of
its own whose DATA frames carry the SSE text: stream s of connection i is subscriber
j = i + s*N, and every figure counts subscribers as HTTP/1.1 counts connections (deliveries,
targeted messages to c<j>, lost and duplicated), but for connect's server CPU and idle's RSS
per connection, which are per connection of S streams, beside their figures per stream. The
client gives the server windows of 2^31-1 (SETTINGS_INITIAL_WINDOW_SIZE and a connection
WINDOW_UPDATE) so that flow control never throttles a run, and answers SETTINGS and PING.
benches/http2.sh reads HTTP/2's figures against HTTP/1.1 over TLS in one run:
  hasses-bench all -n 1800 --http2 --streams-per-connection 10 --tls --ca cert.pem \
      --server-pid $(pidof hasses)";

/// Capacity benchmark for hasses: N SSE connections, published messages, and the figures.
#[derive(Debug, Clone, Parser)]
#[command(name = "hasses-bench", version, after_long_help = AFTER_HELP)]
pub struct Options {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// The server's SSE address (host:port), or a comma-separated list of several (the nodes
    /// of a cluster): connection i goes to the (i mod k)th of the k addresses. floor-server: the
    /// one address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_targets, value_name = "ADDR[,ADDR...]")]
    pub sse: Targets,

    /// The server's control TCP address (host:port).
    #[arg(long, default_value = "127.0.0.1:8085", value_parser = parse_target)]
    pub control: Target,

    /// The SSE path to request.
    #[arg(long, default_value = "/sse")]
    pub path: String,

    /// Subscribe with `Authorization: Bearer TOKEN` (a server with --jwt-secret or --jwt-key):
    /// one token for every connection, granting `all` and `c*`.
    #[arg(long, value_name = "TOKEN")]
    pub bearer: Option<String>,

    /// Subscribe with `User-Agent: TEXT`, as a browser does (a browser's is 100 to 150 bytes,
    /// and what the server keeps of it counts in `idle`). Without it, none over HTTP/1.1 and
    /// `hasses-bench` over HTTP/2.
    #[arg(long, value_name = "TEXT")]
    pub user_agent: Option<String>,

    /// Speak HTTP/2: over TLS (--tls) with ALPN `h2`, else h2c with prior knowledge. Each
    /// connection carries --streams-per-connection streams, each a subscription of its own.
    #[arg(long)]
    pub http2: bool,

    /// With --http2: streams per connection, each a subscriber (at most the server's
    /// SETTINGS_MAX_CONCURRENT_STREAMS, hasses' --http2-max-streams, 100 by default).
    #[arg(long, value_name = "S", default_value_t = 1, requires = "http2",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub streams_per_connection: u32,

    /// Connections to open.
    #[arg(short = 'n', long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,

    /// Source addresses, used round-robin: `A-B` (an IPv4 range), `A`, or a comma-separated
    /// list of both. Each socket is bound with IP_BIND_ADDRESS_NO_PORT before connect, so the
    /// ephemeral ports are not exhausted across all of them. Default: let the kernel choose.
    #[arg(long, value_parser = parse_src_addrs)]
    pub src_addrs: Option<SrcAddrs>,

    /// The server's process id, for its CPU and memory figures. Several (the flag again, or a
    /// comma-separated list: a cluster's nodes, their Redis): the figures are the sum over them
    /// all, CPU and RSS alike, and the JSON adds each one's CPU (server_cpu_s_each).
    #[arg(long, value_name = "PID[,PID...]", value_delimiter = ',', value_parser = parse_pid)]
    pub server_pid: Vec<u32>,

    /// publish-http, presence: the server's HTTP API address (host:port).
    #[arg(long, default_value = "127.0.0.1:8086", value_parser = parse_target)]
    pub api: Target,

    /// stream-hop: the Redis to measure the hop through.
    #[arg(long, default_value = "redis://127.0.0.1:6379", value_name = "URL")]
    pub redis: String,

    /// publish-http: how many publishes each way.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub publishes: u32,

    /// publish-http: which ways to publish: both, or one alone (so that a profiler run over
    /// the server sees one kind: benches/publish-instructions.sh).
    #[arg(long, value_enum, default_value_t = Via::Both)]
    pub via: Via,

    /// broadcast: how many messages to everyone.
    #[arg(long, default_value_t = 50)]
    pub messages: u32,

    /// broadcast: milliseconds between two messages.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(..=MAX_SECS * 1000))]
    pub interval_ms: u64,

    /// burst: how many broadcasts to send back to back, in one write.
    #[arg(long, default_value_t = 100)]
    pub burst: u32,

    /// targeted: how many messages, message k to connection k mod N (pipelined, or paced
    /// with --rate).
    #[arg(long, default_value_t = 100_000)]
    pub targeted: u32,

    /// targeted: send at this pace, messages per second (message k at k/R seconds after the
    /// first, each stamped as it is written), instead of as fast as the control port takes
    /// them: publish-to-delivery latency at a given load.
    #[arg(long, value_name = "PER_SEC", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub rate: Option<u32>,

    /// restart: the command line that starts the server again after the SIGTERM (run with
    /// `sh -c`; start it with `exec`).
    #[arg(long, value_name = "COMMAND")]
    pub server_cmd: Option<String>,

    /// restart: milliseconds between two publishes of the steady publisher.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub publish_ms: u64,
    /// presence: how many `GET /presence?token=all&count` polls, one after the other.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub polls: u32,

    /// resume: events published to each connection while it is away.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub missed: u32,

    /// Bytes of data per message (the payload is padded up to this; its header, up to ~45
    /// bytes, is never cut).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(..=60_000))]
    pub payload: u32,

    /// idle: seconds to wait with every connection open before reading the server's RSS.
    #[arg(long = "idle-secs", value_name = "SECS", default_value = "3", value_parser = seconds)]
    pub idle: Duration,

    /// Each phase's deadline, in seconds.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = positive_seconds)]
    pub timeout: Duration,

    /// A phase also ends (as timed out) when nothing arrives for this many seconds after its
    /// last message was sent.
    #[arg(long = "stall-secs", value_name = "SECS", default_value = "10", value_parser = positive_seconds)]
    pub stall: Duration,

    /// Receiver threads (each one epoll loop over its share of the connections).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,

    /// Connections in progress (connecting or awaiting the response head) at once, over all
    /// receiver threads; keeps the server's accept backlog from overflowing.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub window: u32,

    /// Open the connections over TLS (rustls, TLS 1.3 or 1.2, no session resumption unless
    /// --tls-resume: every connection is a full handshake); needs --ca. The connect phase then also reports TLS
    /// handshakes per second and server CPU per handshake, idle the RSS per TLS connection.
    #[arg(long, requires = "ca")]
    pub tls: bool,

    /// With --tls: the PEM certificate(s) to trust (the server's self-signed certificate, or
    /// the CA that signed it).
    #[arg(long, requires = "tls")]
    pub ca: Option<PathBuf>,

    /// With --tls: the name the server's certificate is verified against, sent as SNI when it
    /// is a DNS name (e.g. localhost). Default: the IP address of --sse.
    #[arg(long, requires = "tls")]
    pub server_name: Option<String>,

    /// With --tls: after the connect phase, close every connection and open them all again
    /// (the reconnect phase), resuming the sessions the first ones got: full handshakes, then
    /// resumed ones, in one run. The connections share one store of session tickets.
    #[arg(long, requires = "tls")]
    pub tls_resume: bool,

    /// floor-server: worker threads, each with its own listener and epoll. Default: one per
    /// core, as the server's --workers.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub floor_workers: Option<u32>,

    /// Append one JSON object per scenario to this file (one per line).
    #[arg(long)]
    pub json_out: Option<PathBuf>,

    /// No progress lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The ways publish-http publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// Down the control port, then the HTTP API.
    Both,
    /// Down the control port only.
    Line,
    /// Down the HTTP API only.
    Http,
}

impl Via {
    /// Whether it publishes control lines.
    pub fn lines(self) -> bool {
        self != Via::Http
    }

    /// Whether it publishes over HTTP.
    pub fn http(self) -> bool {
        self != Via::Line
    }
}

/// A scenario of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Open N connections: time until all are handshaked, connections/s, server CPU per
    /// handshaked connection.
    Connect,
    /// connect, then wait --idle-secs: server RSS before/after and bytes per connection
    /// (needs --server-pid).
    Idle,
    /// connect, then --messages R broadcasts every --interval-ms: per message the time until
    /// the last receiver has it (p50/p99/max), server CPU per delivery.
    Broadcast,
    /// connect, then --burst M broadcasts back to back: deliveries/s, time until all are
    /// received, server CPU per delivery.
    Burst,
    /// connect, then --targeted K messages, each to one connection's own token, as fast as
    /// the control port accepts them or at --rate R a second: messages/s, per message the
    /// time from publish to delivery (p50/p99/max), server CPU per message.
    Targeted,
    /// connect, idle, broadcast, burst, targeted in order over one set of connections.
    All,
    /// connect, burst, then every connection closes, misses --missed events of its own and
    /// resumes with Last-Event-ID: server CPU per resume against its budget from connect and
    /// burst, time until the last replay is received. Needs a server that keeps history (not
    /// the floor server).
    Resume,
    /// connect, then the server is restarted (SIGTERM, then --server-cmd) while a publisher
    /// publishes every --publish-ms and every connection comes back as EventSource does: events
    /// lost, duplicated, reordered, resets; the time until every client is back and has what it
    /// missed; the new server's CPU for that wave against connect and the live traffic.
    Restart,
    /// restart's measure of an upgrade in place: the server is sent SIGUSR2 (it hands its
    /// sockets and history to a new process of its binary, then drains) instead of a restart.
    Upgrade,
    /// connect, then --polls `GET /presence?token=all&count` on the HTTP API (--api), one after
    /// the other down one keep-alive connection: per poll the time to its answer (p50/p99/max),
    /// server CPU per poll; every answer must count every open connection.
    Presence,
    /// --publishes events to a token nobody subscribes to, pipelined down one control connection,
    /// then the same down one keep-alive HTTP API connection (--api): publishes/s and the
    /// server's CPU per publish for each, and their ratio (needs --server-pid; no connections;
    /// --via to take one way alone).
    PublishHttp,
    /// -n connections over TLS (--tls, --ca), one after the other, each a full handshake, `GET
    /// /` and its answer; with --tls-resume as many more, each resuming a session of the first:
    /// the server's CPU per handshake (needs --server-pid). Works against any TLS server (nginx
    /// beside hasses: benches/tls-nginx.sh).
    TlsHandshakes,
    /// No server: the floor of a cluster's hop. --targeted entries appended at --rate (1000 if
    /// not given) to a stream of its own in the Redis at --redis, read back with XREAD BLOCK on
    /// another connection: per entry, the time from XADD to read (p50/p99/max). A cluster's
    /// publish crosses this hop once: read its latency, less a single node's, against this.
    StreamHop,
    /// No benchmark: serve as the floor, the least an epoll server does for this traffic, on
    /// --sse and --control (addresses to listen on) until killed. Run the scenarios against it
    /// to see what the kernel alone costs on this machine.
    FloorServer,
}

/// A scenario's phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening the connections.
    Connect,
    /// Closing them all and opening them again, resuming their TLS sessions (`--tls-resume`).
    Reconnect,
    /// Waiting with every connection open.
    Idle,
    /// Messages to everyone at an interval.
    Broadcast,
    /// Messages to everyone back to back.
    Burst,
    /// Messages to one connection each.
    Targeted,
    /// Closing, missing events, and resuming.
    Resume,
    /// The server gives way to a new one under its clients, with publishing going on.
    Switch(Switch),
    /// Asking how many are subscribed, again and again.
    Presence,
}

impl Phase {
    /// The name in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Reconnect => "reconnect",
            Phase::Idle => "idle",
            Phase::Broadcast => "broadcast",
            Phase::Burst => "burst",
            Phase::Targeted => "targeted",
            Phase::Resume => "resume",
            Phase::Switch(switch) => switch.name(),
            Phase::Presence => "presence",
        }
    }
}

impl Scenario {
    /// The phases to run.
    pub fn phases(self) -> &'static [Phase] {
        match self {
            Scenario::Connect => &[Phase::Connect],
            Scenario::Idle => &[Phase::Connect, Phase::Idle],
            Scenario::Broadcast => &[Phase::Connect, Phase::Broadcast],
            Scenario::Burst => &[Phase::Connect, Phase::Burst],
            Scenario::Targeted => &[Phase::Connect, Phase::Targeted],
            Scenario::All => &[Phase::Connect, Phase::Idle, Phase::Broadcast, Phase::Burst, Phase::Targeted],
            // Connect and burst give the resume's budget.
            Scenario::Resume => &[Phase::Connect, Phase::Burst, Phase::Resume],
            // Connect gives the reconnect wave's budget.
            Scenario::Restart => &[Phase::Connect, Phase::Switch(Switch::Restart)],
            Scenario::Upgrade => &[Phase::Connect, Phase::Switch(Switch::Upgrade)],
            Scenario::Presence => &[Phase::Connect, Phase::Presence],
            Scenario::FloorServer | Scenario::PublishHttp | Scenario::StreamHop | Scenario::TlsHandshakes => {
                &[]
            }
        }
    }
}

/// A server address, with the text it was given as (for the `Host` header).
#[derive(Debug, Clone)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// As written on the command line.
    pub text: String,
}

/// One or more SSE addresses (`--sse`), in the order given; never empty.
#[derive(Debug, Clone)]
pub struct Targets(Vec<Target>);

impl Targets {
    /// The addresses, in the order given.
    pub fn all(&self) -> &[Target] {
        &self.0
    }

    /// The first address (the only one, but for a list).
    pub fn first(&self) -> &Target {
        &self.0[0]
    }

    /// Whether they are several different addresses (the same one twice is one server).
    pub fn several_servers(&self) -> bool {
        self.0.iter().any(|t| t.addr != self.first().addr)
    }
}

/// A comma-separated list of addresses; an empty item or a bad address is an error.
fn parse_targets(s: &str) -> Result<Targets, String> {
    let targets = s
        .split(',')
        .map(str::trim)
        .map(|item| {
            if item.is_empty() {
                Err("an empty address (two commas in a row, or one at an end)".to_string())
            } else {
                parse_target(item)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Targets(targets))
}

fn parse_target(s: &str) -> Result<Target, String> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => s
            .to_socket_addrs()
            .map_err(|e| format!("{s}: {e}"))?
            .next()
            .ok_or_else(|| format!("{s}: resolves to no address"))?,
    };
    Ok(Target { addr, text: s.to_string() })
}

/// The source addresses, expanded.
#[derive(Debug, Clone)]
pub struct SrcAddrs(pub Vec<IpAddr>);

fn parse_src_addrs(s: &str) -> Result<SrcAddrs, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: Ipv4Addr = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
                let b: Ipv4Addr = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a >= MAX_SRC_ADDRS {
                    return Err(format!(
                        "{part}: the range must be ascending and at most {MAX_SRC_ADDRS} long"
                    ));
                }
                out.extend((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
            }
            None => out.push(part.parse().map_err(|e| format!("{part}: {e}"))?),
        }
    }
    if out.is_empty() {
        return Err("no address given".into());
    }
    Ok(SrcAddrs(out))
}

/// A process id, one item of `--server-pid`'s list.
fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim() {
        "" => Err("an empty process id (two commas in a row, or one at an end)".into()),
        pid => pid.parse().ok().filter(|&p| p > 0).ok_or_else(|| format!("{pid}: not a process id")),
    }
}

/// A duration in seconds (fractions allowed): finite, not negative, at most [`MAX_SECS`]. The
/// message is shown after clap's own, which names the flag and the value.
fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| "not a number of seconds".to_string())?;
    if !secs.is_finite() {
        return Err("not a finite number of seconds".into());
    }
    if secs < 0.0 {
        return Err("a negative number of seconds".into());
    }
    if secs > MAX_SECS as f64 {
        return Err(format!("more than a year ({MAX_SECS} seconds)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration in seconds, as [`seconds`], above zero.
fn positive_seconds(s: &str) -> Result<Duration, String> {
    seconds(s).and_then(|d| if d.is_zero() { Err("must be above zero".into()) } else { Ok(d) })
}

impl Options {
    /// The floor server's workers: `--floor-workers`, or one per core as the server's default.
    pub fn floor_workers(&self) -> usize {
        self.floor_workers
            .map_or_else(|| std::thread::available_parallelism().map_or(1, usize::from), |n| n as usize)
    }

    /// Subscribers over all connections: one per connection, or one per stream (`--http2`).
    pub fn subscribers(&self) -> u64 {
        u64::from(self.connections) * u64::from(self.streams_per_connection)
    }

    /// The phases to run: the scenario's, with reconnect after connect under `--tls-resume`.
    pub fn phases(&self) -> Vec<Phase> {
        let resume = self.tls_resume.then_some(Phase::Reconnect);
        let phases = self.scenario.phases().iter().copied();
        phases
            .flat_map(|phase| std::iter::once(phase).chain(resume.filter(|_| phase == Phase::Connect)))
            .collect()
    }

    /// Checks what clap cannot; returns why the options cannot run.
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') {
            return Err(format!("--path must start with '/': {}", self.path));
        }
        if self.path.contains(['?', ' ', '\r', '\n']) {
            return Err(format!("--path must be a bare path: {}", self.path));
        }
        if let Some(src) = &self.src_addrs {
            let sse = self.sse.all();
            if src.0.iter().any(|a| sse.iter().any(|t| a.is_ipv4() != t.addr.is_ipv4())) {
                return Err("--src-addrs must be of the same family as --sse".into());
            }
        }
        if self.scenario == Scenario::FloorServer && self.sse.all().len() > 1 {
            return Err("floor-server listens on one --sse address".into());
        }
        if let Some(pid) = self
            .server_pid
            .iter()
            .enumerate()
            .find_map(|(i, p)| self.server_pid[..i].contains(p).then_some(p))
        {
            return Err(format!("--server-pid {pid} is given twice: its CPU would count twice"));
        }
        if self.scenario == Scenario::Restart && (self.server_pid.len() != 1 || self.server_cmd.is_none()) {
            return Err("the restart scenario needs one --server-pid and --server-cmd".into());
        }
        if self.scenario == Scenario::Upgrade && self.server_pid.len() != 1 {
            return Err("the upgrade scenario needs one --server-pid".into());
        }
        let http1_only = [Scenario::Resume, Scenario::Restart, Scenario::Upgrade, Scenario::TlsHandshakes];
        if self.http2 && http1_only.contains(&self.scenario) {
            return Err(
                "--http2: the resume, restart, upgrade and tls-handshakes scenarios speak HTTP/1.1 only"
                    .into(),
            );
        }
        if self.scenario == Scenario::TlsHandshakes && !self.tls {
            return Err("the tls-handshakes scenario needs --tls and --ca".into());
        }
        let needs_pid =
            matches!(self.scenario, Scenario::Idle | Scenario::PublishHttp | Scenario::TlsHandshakes);
        if needs_pid && self.server_pid.is_empty() {
            return Err(format!(
                "the {} scenario needs --server-pid",
                self.scenario.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned())
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Options::command().debug_assert();
    }

    #[test]
    fn src_ranges_expand() {
        let s = parse_src_addrs("127.0.0.1-127.0.0.3,127.0.1.1").unwrap();
        let want: Vec<IpAddr> =
            ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.1.1"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(s.0, want);
        assert!(parse_src_addrs("127.0.0.8-127.0.0.1").is_err());
        assert!(parse_src_addrs("").is_err());
    }

    #[test]
    fn sse_takes_a_list_of_addresses_in_order() {
        let o = parse(&["--sse", "127.0.0.1:8081, 127.0.0.1:8082,127.0.0.1:8083"]).unwrap();
        let addrs: Vec<String> = o.sse.all().iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]);
        // The Host header is each address as written.
        assert_eq!(o.sse.all()[1].text, "127.0.0.1:8082");
        assert!(o.sse.several_servers());
        let o = parse(&["--sse", "[::1]:8080"]).unwrap();
        assert_eq!((o.sse.all().len(), o.sse.first().text.as_str()), (1, "[::1]:8080"));
        assert!(!o.sse.several_servers());
        assert!(!parse(&["--sse", "127.0.0.1:8080,127.0.0.1:8080"]).unwrap().sse.several_servers());
        assert_eq!(parse(&[]).unwrap().sse.first().addr.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn sse_lists_with_an_empty_item_or_a_bad_address_are_refused() {
        for bad in ["127.0.0.1:8081,", ",127.0.0.1:8081", "127.0.0.1:8081,,127.0.0.1:8082", " , "] {
            let err = parse(&["--sse", bad]).expect_err(bad);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}: {err}");
            assert!(err.to_string().contains("an empty address"), "{err}");
        }
        let err = parse(&["--sse", "127.0.0.1:8081,127.0.0.1"]).expect_err("no port");
        assert!(err.to_string().contains("127.0.0.1: invalid socket address"), "{err}");
        assert!(parse(&["--sse", "127.0.0.1:8081,127.0.0.1:99999"]).is_err());
    }

    #[test]
    fn server_pids_add_up_from_lists_and_repeated_flags() {
        assert!(parse(&[]).unwrap().server_pid.is_empty());
        assert_eq!(parse(&["--server-pid", "7"]).unwrap().server_pid, [7]);
        let o = parse(&["--server-pid", "7,8", "--server-pid", "9"]).unwrap();
        assert_eq!(o.server_pid, [7, 8, 9]);
        assert!(o.validate().is_ok());
        for bad in ["7,", ",7", "7,,8", "x", "7,x", "0", "-1"] {
            let arg = format!("--server-pid={bad}");
            let err = parse(&[&arg]).expect_err(bad);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}: {err}");
            let why = if bad.contains(",,") || bad.starts_with(',') || bad.ends_with(',') {
                "an empty process id"
            } else {
                "not a process id"
            };
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let twice = parse(&["--server-pid", "7,8", "--server-pid", "7"]).unwrap();
        assert!(twice.validate().unwrap_err().contains("--server-pid 7 is given twice"));
    }

    #[test]
    fn every_sse_address_must_match_the_source_family() {
        let o = parse(&["--sse", "127.0.0.1:8081,[::1]:8082", "--src-addrs", "127.0.0.1"]).unwrap();
        assert!(o.validate().unwrap_err().contains("same family"));
        let o = parse(&["--sse", "127.0.0.1:8081,127.0.0.2:8082", "--src-addrs", "127.0.0.1"]).unwrap();
        assert!(o.validate().is_ok());
        let o = Options::try_parse_from(["hasses-bench", "floor-server", "--sse", "127.0.0.1:1,127.0.0.1:2"])
            .unwrap();
        assert!(o.validate().unwrap_err().contains("one --sse address"));
    }

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from([&["hasses-bench", "connect"], args].concat())
    }

    #[test]
    fn durations_must_be_finite_and_not_negative() {
        for flag in ["--timeout", "--stall-secs", "--idle-secs"] {
            // `=` joins a value that starts with `-` to its flag (else clap takes it for a flag).
            for bad in ["inf", "-inf", "NaN", "-1", "-0.5", "1e300", "x", ""] {
                let arg = format!("{flag}={bad}");
                let err = parse(&[&arg]).expect_err(&arg);
                assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{arg}: {err}");
                assert!(err.to_string().contains(flag), "{err}");
            }
            assert!(parse(&[flag, "0.25"]).is_ok());
        }
        let o = parse(&["--timeout", "1.5", "--stall-secs", "2", "--idle-secs", "0"]).unwrap();
        assert_eq!(
            (o.timeout, o.stall, o.idle),
            (Duration::from_millis(1500), Duration::from_secs(2), Duration::ZERO)
        );
        // A deadline or a stall limit of zero would end every phase at once.
        assert!(parse(&["--timeout", "0"]).is_err());
        assert!(parse(&["--stall-secs", "0"]).is_err());
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.timeout, o.stall, o.idle),
            (Duration::from_secs(120), Duration::from_secs(10), Duration::from_secs(3))
        );
        assert!(parse(&["--interval-ms", "-1"]).is_err());
        assert!(parse(&["--interval-ms", &u64::MAX.to_string()]).is_err());
    }

    #[test]
    fn all_runs_every_phase_after_connect() {
        let phases = Scenario::All.phases();
        assert_eq!(phases[0], Phase::Connect);
        assert_eq!(phases.len(), 5);
    }

    #[test]
    fn tls_resume_reconnects_right_after_connect() {
        let o = parse(&["--tls", "--ca", "ca.pem", "--tls-resume"]).unwrap();
        let names: Vec<&str> = o.phases().into_iter().map(Phase::name).collect();
        assert_eq!(names, ["connect", "reconnect"]);
        let o = Options::try_parse_from(["hasses-bench", "all", "--tls", "--ca", "ca.pem", "--tls-resume"])
            .unwrap();
        let names: Vec<&str> = o.phases().into_iter().map(Phase::name).collect();
        assert_eq!(names, ["connect", "reconnect", "idle", "broadcast", "burst", "targeted"]);
        assert!(parse(&["--tls-resume"]).is_err(), "needs --tls");
    }

    #[test]
    fn http2_takes_streams_per_connection_and_the_scenarios_it_speaks() {
        let o = parse(&["-n", "30", "--http2", "--streams-per-connection", "10"]).unwrap();
        assert!(o.validate().is_ok());
        assert_eq!((o.connections, o.subscribers()), (30, 300));
        assert_eq!(parse(&["-n", "30"]).unwrap().subscribers(), 30, "one stream, one subscriber");
        assert!(parse(&["--streams-per-connection", "10"]).is_err(), "needs --http2");
        assert!(parse(&["--http2", "--streams-per-connection", "0"]).is_err());
        let resume = Options::try_parse_from(["hasses-bench", "resume", "--http2"]).unwrap();
        assert!(resume.validate().unwrap_err().contains("HTTP/1.1 only"));
    }

    #[test]
    fn restart_needs_one_server_to_stop_and_a_command_to_start_another() {
        let restart = |args: &[&str]| Options::try_parse_from([&["hasses-bench", "restart"], args].concat());
        let o = restart(&["--server-pid", "7", "--server-cmd", "exec hasses --port 8080"]).unwrap();
        assert!(o.validate().is_ok());
        let names: Vec<&str> = o.phases().into_iter().map(Phase::name).collect();
        assert_eq!(names, ["connect", "restart"]);
        for bad in [
            &["--server-pid", "7"][..],
            &["--server-cmd", "x"],
            &["--server-pid", "7,8", "--server-cmd", "x"],
        ] {
            let err = restart(bad).unwrap().validate().unwrap_err();
            assert!(err.contains("one --server-pid and --server-cmd"), "{bad:?}: {err}");
        }
    }
}
