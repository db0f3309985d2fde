//! Criterion micro-benchmarks: the pieces of a publish, from the control line to the sockets.
//!
//! - `command`: parsing one part of a control line, and splitting + parsing a 10-part line.
//! - `frame`: encoding one event as an HTTP chunk, for 64 B, 1 KiB and 64 KiB messages.
//! - `subscriptions`: the shard's index at 1k and 100k connections (each on `all` and `c<i>`).
//! - `history/*` and `history_memory`: the events kept for resume (see [`history`]).
//! - `idle_memory`: the index's and the reach view's bytes per idle connection (see [`idle`]).
//! - `fanout`: the real server end to end. It runs as a child process (one process cannot hold
//!   10k client sockets and 10k server sockets under a 20,000 open-files limit) and this process
//!   holds 10k SSE clients in one mio loop. One iteration publishes `all=<seq>` on a control
//!   connection and waits until every client has read that event, so it measures the time until
//!   the last of 10k has it: server CPU and the clients' reads share this machine's cores.
//!
//! Run with `cargo bench --bench micro` (it builds the `hasses` binary too). Under
//! `cargo test --benches` criterion runs each benchmark once, and `fanout` holds only
//! 100 clients: a smoke test, not a figure.

use std::hint::black_box;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use hasses::control::command::{parse_command, split_parts};
use hasses::event::Target;
use hasses::limits::Limits;
use hasses::shard::keys::{ConnKey, StreamKey};
use hasses::shard::subscriptions::Subscriptions;
use hasses::sse::encode_event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use nix::libc;

// Beside this file in a folder of its own: a file directly in `benches/` would be a target.
#[path = "micro/auth.rs"]
mod auth;
#[path = "micro/counting.rs"]
mod counting;
#[path = "micro/history.rs"]
mod history;
#[path = "micro/idle.rs"]
mod idle;

/// An event id as the server hands them out: microseconds since the epoch, in 2025.
const TYPICAL_ID: u64 = 1_760_000_000_000_000;

fn command(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("command");
    group.throughput(Throughput::Elements(1));
    let parts: [(&str, &[u8]); 3] = [
        ("publish", b"room42-abc=hello world"),
        ("prefix_publish", b"room*=hello world"),
        ("status", b"status"),
    ];
    for (name, part) in parts {
        group.bench_function(name, |b| b.iter(|| parse_command(black_box(part), &limits)));
    }
    let line: &[u8] = b"room1=hello;room2-u7=hi there;*=to everyone;room*=prefix;status;\
        user42=just you;a=x=y;tcpnumberofclients;chat9-abc={\"n\":1};subscribedclients:room1";
    assert_eq!(split_parts(line, b';').filter(|p| parse_command(p, &limits).is_ok()).count(), 10);
    group.throughput(Throughput::Elements(10));
    group.bench_function("split_and_parse_10_parts", |b| {
        b.iter(|| {
            for part in split_parts(black_box(line), b';') {
                black_box(parse_command(part, &limits)).ok();
            }
        })
    });
    group.finish();
}

fn frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for (name, len) in [("64B", 64), ("1KiB", 1024), ("64KiB", 64 * 1024)] {
        // Printable text without line breaks: the common JSON-ish payload, one `data:` line.
        let message: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("encode_event", name), |b| {
            b.iter(|| encode_event(black_box(TYPICAL_ID), black_box(&message)))
        });
    }
    group.finish();
}

/// `n` streams (on connections 0..n), each subscribed to `all` and its own `c<key>`.
fn index_of(n: usize) -> Subscriptions {
    let mut subs = Subscriptions::default();
    for (key, conn) in (0..n).filter_map(|key| Some((key, ConnKey::new(key)?))) {
        let own = format!("c{key}");
        subs.add(StreamKey::on(conn), ["all", own.as_str()].into_iter(), |_| {});
    }
    subs
}

/// Visits every match of `target`; the sum keeps the visits from being optimized away.
fn visit(subs: &Subscriptions, target: &Target) -> usize {
    let mut sum = 0usize;
    subs.for_each_match(target, |key| sum = sum.wrapping_add(key.connection().index()));
    sum
}

fn subscriptions(c: &mut Criterion) {
    let mut group = c.benchmark_group("subscriptions");
    for (name, n) in [("1k", 1_000), ("100k", 100_000)] {
        let subs = index_of(n);
        let tokens: Vec<Target> = (0..n).map(|i| Target::Token(format!("c{i}").into())).collect();
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("token", name), |b| {
            let mut next = tokens.iter().cycle();
            b.iter(|| visit(&subs, next.next().expect("cycle never ends")))
        });
        let prefix = Target::Prefix("c99".into());
        let mut matches = 0;
        subs.for_each_match(&prefix, |_| matches += 1);
        group.throughput(Throughput::Elements(matches));
        group.bench_function(BenchmarkId::new("prefix_c99", name), |b| b.iter(|| visit(&subs, &prefix)));
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("count_exact_all", name), |b| {
            b.iter(|| subs.count_exact(black_box("all")))
        });
        if n == 1_000 {
            let all = Target::Token("all".into());
            group.throughput(Throughput::Elements(n as u64));
            group.bench_function(BenchmarkId::new("visit_all", name), |b| b.iter(|| visit(&subs, &all)));
        }
    }
    group.finish();
}

/// SSE clients in the fan-out benchmark (`cargo bench`), and in a smoke run (`cargo test --benches`).
const FANOUT_CLIENTS: usize = 10_000;
const SMOKE_CLIENTS: usize = 100;
/// Connections opened but not yet streaming, at most: more would overflow the listen backlog and
/// wait out SYN retransmits.
const HANDSHAKES_IN_FLIGHT: usize = 256;
/// Bounds on every wait: the server's start, all handshakes, one broadcast's deliveries.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
const READ_CHUNK: usize = 64 * 1024;

fn fanout(c: &mut Criterion) {
    // Criterion runs benchmarks only when cargo passes `--bench`; otherwise it tests each once.
    let args: Vec<String> = std::env::args().collect();
    let measuring = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let n = if measuring { FANOUT_CLIENTS } else { SMOKE_CLIENTS };
    let mut group = c.benchmark_group("fanout");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(n as u64));
    // Set up on first use, so that a filter that skips this benchmark starts no server; dropped
    // (server killed) when this function returns or unwinds.
    let mut bench: Option<FanoutBench> = None;
    group.bench_function(BenchmarkId::new("broadcast_until_last_reads", n), |b| {
        let bench = bench.get_or_insert_with(|| FanoutBench::start(n));
        b.iter_custom(|iters| (0..iters).map(|_| bench.broadcast()).sum())
    });
    group.finish();
    if let Some(bench) = &bench {
        bench.cpu.report(n);
    }
}

/// The server binary as a child process, killed when dropped (also while a panic unwinds).
struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Starts `hasses` on free ports and returns it with its SSE and control addresses.
    fn start() -> (ServerProcess, SocketAddr, SocketAddr) {
        let args = ["--port", "0", "--control-port", "0", "--workers", "2", "--log-level", "0"];
        let mut child = Command::new(env!("CARGO_BIN_EXE_hasses"))
            .args(args)
            .args(["--heartbeat", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start target/release/hasses");
        let stderr = child.stderr.take().expect("piped stderr");
        let server = ServerProcess { child };
        let lines = forward_lines(stderr);
        let (mut sse, mut control) = (None, None);
        let deadline = Instant::now() + START_TIMEOUT;
        while sse.is_none() || control.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).expect("hasses did not report its ports in time");
            sse = sse.or_else(|| port_after(&line, "SSE listening on "));
            control = control.or_else(|| port_after(&line, "Control listening on "));
        }
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        (server, local(sse.expect("loop ends with it")), local(control.expect("loop ends with it")))
    }

    /// The server's CPU time so far, all threads.
    fn cpu_time(&self) -> Duration {
        cpu_time(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Already exited is fine: nothing else to clean up.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the server's log lines on a thread: to the returned channel while it is held, then to
/// this process's stderr (draining the pipe, so the server never blocks on its log).
fn forward_lines(stderr: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Err(mpsc::SendError(line)) = sender.send(line) {
                eprintln!("hasses: {line}");
            }
        }
    });
    lines
}

/// The port in `... {label}ADDR:PORT ...` (`[::]:8080 path /sse`, `127.0.0.1:8085`).
fn port_after(line: &str, label: &str) -> Option<u16> {
    let (_, rest) = line.split_once(label)?;
    let addr = rest.split_whitespace().next()?;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Raises the soft open-files limit to the hard one: many systems start at 1024.
fn raise_open_files_limit(needed: usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: both calls only read or write the `rlimit` we pass, which outlives them.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    assert!(
        raised && limit.rlim_cur as usize >= needed,
        "need {needed} open files, the limit is {} (hard {})",
        limit.rlim_cur,
        limit.rlim_max
    );
}

/// The server, its clients and a control connection.
struct FanoutBench {
    poll: Poll,
    events: Events,
    clients: Clients,
    control: StdTcpStream,
    /// The last sequence number published; every client has read it.
    seq: u64,
    cpu: CpuTally,
    // Last: the clients close before the server is killed.
    server: ServerProcess,
}

impl FanoutBench {
    /// Starts the server and connects `n` streaming clients.
    fn start(n: usize) -> FanoutBench {
        raise_open_files_limit(n + 64);
        let (server, sse, control) = ServerProcess::start();
        let control = StdTcpStream::connect(control).expect("connect to the control port");
        control.set_nodelay(true).expect("TCP_NODELAY on the control connection");
        let poll = Poll::new().expect("a mio Poll");
        let clients = Clients { list: Vec::with_capacity(n), scratch: vec![0; READ_CHUNK] };
        let mut bench = FanoutBench {
            poll,
            events: Events::with_capacity(1024),
            clients,
            control,
            seq: 0,
            cpu: CpuTally::default(),
            server,
        };
        bench.connect_all(sse, n);
        bench
    }

    /// Opens `n` connections, a bounded number at a time, until each has its `200` head.
    fn connect_all(&mut self, sse: SocketAddr, n: usize) {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut streaming = 0;
        while streaming < n {
            while self.clients.list.len() < n && self.clients.list.len() - streaming < HANDSHAKES_IN_FLIGHT {
                self.clients.open(&self.poll, sse);
            }
            assert!(Instant::now() < deadline, "only {streaming} of {n} clients handshaked in time");
            self.poll.poll(&mut self.events, Some(POLL_TIMEOUT)).expect("epoll_wait");
            for event in self.events.iter() {
                streaming += self.clients.on_ready(event.token().0, 0).handshaked;
            }
        }
    }

    /// One timed broadcast, with the CPU time that the server and this thread spent on it.
    fn broadcast(&mut self) -> Duration {
        let before = (self.server.cpu_time(), cpu_time("/proc/thread-self/stat"));
        let took = self.publish_and_wait();
        let after = (self.server.cpu_time(), cpu_time("/proc/thread-self/stat"));
        self.cpu.server += after.0 - before.0;
        self.cpu.clients += after.1 - before.1;
        self.cpu.broadcasts += 1;
        took
    }

    /// Publishes the next sequence number to `all` and waits until every client has read it.
    fn publish_and_wait(&mut self) -> Duration {
        self.seq += 1;
        let start = Instant::now();
        self.control.write_all(format!("all={}\n", self.seq).as_bytes()).expect("publish");
        let (n, mut delivered) = (self.clients.list.len(), 0);
        while delivered < n {
            let waited = start.elapsed();
            assert!(
                waited < DELIVERY_TIMEOUT,
                "event {}: {delivered} of {n} clients after {waited:?}",
                self.seq
            );
            self.poll.poll(&mut self.events, Some(POLL_TIMEOUT)).expect("epoll_wait");
            for event in self.events.iter() {
                delivered += self.clients.on_ready(event.token().0, self.seq).delivered;
            }
        }
        start.elapsed()
    }
}

/// CPU time spent during the timed broadcasts: the figure that wall time alone hides on a
/// machine where the server and the clients share two cores.
#[derive(Default)]
struct CpuTally {
    broadcasts: u32,
    server: Duration,
    clients: Duration,
}

impl CpuTally {
    fn report(&self, n: usize) {
        let deliveries = (self.broadcasts as usize * n).max(1) as f64;
        let per_delivery = |cpu: Duration| cpu.as_secs_f64() * 1e6 / deliveries;
        eprintln!(
            "fanout: {} broadcasts to {n} clients; CPU per delivery: server {:.2} µs, bench clients {:.2} µs",
            self.broadcasts,
            per_delivery(self.server),
            per_delivery(self.clients),
        );
    }
}

/// User + system CPU time from a `/proc/.../stat` file (clock-tick resolution).
fn cpu_time(stat: &str) -> Duration {
    let text = std::fs::read_to_string(stat).unwrap_or_else(|e| panic!("{stat}: {e}"));
    // Fields after the `(comm)`: state is the 3rd field, utime and stime the 14th and 15th.
    let after_comm = &text[text.rfind(')').expect("(comm) in a stat line") + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// Every SSE client; a client's index is its mio token.
struct Clients {
    list: Vec<Client>,
    /// One read buffer for all: only a partial chunk stays in a client's own buffer.
    scratch: Vec<u8>,
}

struct Client {
    stream: TcpStream,
    phase: Phase,
    /// Bytes read but not yet understood: part of the head, or a partial chunk.
    pending: Vec<u8>,
    /// The sequence number of the last event this client read.
    last_seq: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Head,
    Streaming,
}

/// What one readiness event moved forward.
#[derive(Default)]
struct Progress {
    handshaked: usize,
    delivered: usize,
}

impl Clients {
    /// Starts a non-blocking connect for the next client.
    fn open(&mut self, poll: &Poll, sse: SocketAddr) {
        let token = Token(self.list.len());
        let mut stream = TcpStream::connect(sse).expect("connect to the SSE port");
        poll.registry()
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            .expect("register");
        self.list.push(Client { stream, phase: Phase::Connecting, pending: Vec::new(), last_seq: 0 });
    }

    /// Handles readiness of client `index` while `seq` is the event in flight.
    fn on_ready(&mut self, index: usize, seq: u64) -> Progress {
        let client = &mut self.list[index];
        let mut progress = Progress::default();
        if client.phase == Phase::Connecting && !client.send_request(index) {
            return progress;
        }
        client.read_all(&mut self.scratch);
        if client.phase == Phase::Head && client.take_head() {
            progress.handshaked = 1;
        }
        if client.phase == Phase::Streaming {
            progress.delivered = client.take_events(seq);
        }
        progress
    }
}

impl Client {
    /// Sends the request once connected; false while the connect is still under way.
    fn send_request(&mut self, index: usize) -> bool {
        if let Some(error) = self.stream.take_error().expect("SO_ERROR") {
            panic!("client {index}: connect failed: {error}");
        }
        match self.stream.peer_addr() {
            Err(error) if error.kind() == ErrorKind::NotConnected => return false,
            Err(error) => panic!("client {index}: connect failed: {error}"),
            Ok(_) => {}
        }
        let request = format!("GET /sse?subscribe=all-c{index}&id=c{index} HTTP/1.1\r\nHost: x\r\n\r\n");
        // A fresh socket's send buffer takes a whole request in one write.
        let written = self.stream.write(request.as_bytes()).expect("send the request");
        assert_eq!(written, request.len(), "client {index}: short write of the request");
        self.phase = Phase::Head;
        true
    }

    /// Reads until the socket is drained (mio is edge-triggered).
    fn read_all(&mut self, scratch: &mut [u8]) {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => panic!("the server closed a client connection"),
                Ok(n) => self.pending.extend_from_slice(&scratch[..n]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => panic!("reading a client connection: {error}"),
            }
        }
    }

    /// Takes the response head once complete; true when the client is streaming.
    fn take_head(&mut self) -> bool {
        let Some(end) = find(&self.pending, b"\r\n\r\n") else { return false };
        let head = String::from_utf8_lossy(&self.pending[..end]);
        assert!(head.starts_with("HTTP/1.1 200 "), "handshake refused: {head}");
        self.pending.drain(..end + 4);
        self.phase = Phase::Streaming;
        true
    }

    /// Takes every complete chunk; counts the events carrying `seq`, the only one in flight.
    fn take_events(&mut self, seq: u64) -> usize {
        let (mut at, mut got) = (0, 0);
        while let Some((payload, len)) = next_chunk(&self.pending[at..]) {
            if let Some(data) = data_value(payload) {
                let data = parse_decimal(data).expect("a sequence number in the event's data");
                assert!(
                    data == seq && self.last_seq < seq,
                    "got event {data} after {}, expected {seq}",
                    self.last_seq
                );
                self.last_seq = seq;
                got += 1;
            }
            at += len;
        }
        self.pending.drain(..at);
        got
    }
}

/// The payload and whole length of the first complete HTTP chunk in `bytes`, if there is one.
fn next_chunk(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let size_end = find(bytes, b"\r\n")?;
    let size = std::str::from_utf8(&bytes[..size_end]).ok().and_then(|s| usize::from_str_radix(s, 16).ok());
    let size = size.unwrap_or_else(|| panic!("not a chunk size: {:?}", bytes.escape_ascii().to_string()));
    let start = size_end + 2;
    let len = start + size + 2;
    (bytes.len() >= len).then(|| (&bytes[start..start + size], len))
}

/// The value of the first `data: ` line of an SSE event.
fn data_value(event: &[u8]) -> Option<&[u8]> {
    let start = find(event, b"\ndata: ")? + 7;
    let len = event[start..].iter().position(|b| *b == b'\n')?;
    Some(&event[start..start + len])
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1));
    targets = command, frame, subscriptions, history::replay_near_end, history::append, auth::check,
        history::memory, idle::memory, fanout
}
criterion_main!(micro);
