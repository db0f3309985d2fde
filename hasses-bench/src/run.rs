//! The orchestrator: runs a scenario's phases in order over one set of connections, drives
//! the publisher, watches the receivers' progress (a line on stderr once per second), and
//! turns each phase's counters and the CPU and memory samples into a [`PhaseResult`] with its
//! typed [`Figures`].
//!
//! It never touches a connection: receivers own them ([`crate::receiver`]).

use std::io;
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use crate::cli::{Options, Phase};
use crate::control::Control;
use crate::figures::{self, Figures, LastReceiver, Latency, TlsHandshakes, Usage};
use crate::presence;
use crate::receiver::{Cmd, Receiver, Setup};
use crate::stats::{Counters, PerMessage, Progress};
use crate::steady::Steady;
use crate::switch::{Server, Switch};
use crate::sys::{self, CpuSample, ServerProbe};
use crate::tls::TlsSetup;

/// How often the orchestrator looks at the receivers' progress.
const TICK: Duration = Duration::from_millis(10);
/// The shortest sleep between two ticks of a paced send (`--rate`): faster paces send
/// several messages a tick.
const PACE_TICK: Duration = Duration::from_millis(1);
/// How long a progress line waits after the previous one.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Bytes of targeted lines collected before one write.
const TARGETED_BATCH: usize = 64 * 1024;
/// How long receivers may take to hand over their counters.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A resume may cost this many times a plain handshake plus its missed events in a burst.
const RESUME_BUDGET_FACTOR: f64 = 1.5;
/// How long the steady publisher publishes, every client connected, before the switch.
const BEFORE_SWITCH: Duration = Duration::from_secs(1);

/// One phase's outcome.
#[derive(Debug)]
pub struct PhaseResult {
    /// Why the phase did not complete (deadline, stall, control failure), if it did not.
    pub incomplete: Option<String>,
    /// What the receivers counted.
    pub counters: Counters,
    /// Wall time of the phase's measured part, seconds.
    pub time_s: f64,
    /// CPU used by the server and the tool.
    pub usage: Usage,
    /// The phase's own figures (which also say which phase it was).
    pub figures: Figures,
    /// Oddities worth a look that do not fail the phase by themselves.
    pub notes: Vec<String>,
}

impl PhaseResult {
    fn new(
        incomplete: Option<String>,
        counters: Counters,
        time_s: f64,
        usage: Usage,
        figures: Figures,
    ) -> Self {
        PhaseResult { incomplete, counters, time_s, usage, figures, notes: Vec::new() }
    }

    /// Which phase.
    pub fn phase(&self) -> Phase {
        self.figures.phase()
    }

    /// Whether the phase completed without a single error.
    pub fn ok(&self) -> bool {
        self.incomplete.is_none() && !self.counters.any_error()
    }
}

/// CPU and time at the start of a measured window.
struct Window {
    t0: u64,
    server: Option<CpuSample>,
    own: u64,
}

/// Decides when a phase is over, and prints its progress.
struct Waiter {
    label: &'static str,
    quiet: bool,
    deadline: Instant,
    stall: Duration,
    last_value: u64,
    last_change: Instant,
    all_sent_at: Option<Instant>,
    last_print: Instant,
    start: Instant,
}

enum Wait {
    Done,
    Pending,
    Over(String),
}

impl Waiter {
    fn new(label: &'static str, opts: &Options) -> Waiter {
        let now = Instant::now();
        Waiter {
            label,
            quiet: opts.quiet,
            deadline: now + opts.timeout,
            stall: opts.stall,
            last_value: 0,
            last_change: now,
            all_sent_at: None,
            last_print: now,
            start: now,
        }
    }

    fn check(&mut self, value: u64, target: u64, all_sent: bool, what: &str) -> Wait {
        let now = Instant::now();
        if value != self.last_value {
            self.last_value = value;
            self.last_change = now;
        }
        if all_sent && self.all_sent_at.is_none() {
            self.all_sent_at = Some(now);
        }
        if all_sent && value >= target {
            return Wait::Done;
        }
        if !self.quiet && now - self.last_print >= PROGRESS_EVERY {
            self.last_print = now;
            let pct = if target > 0 { value as f64 * 100.0 / target as f64 } else { 100.0 };
            eprintln!(
                "[{}] {:6.1}s {what} {value}/{target} ({pct:.1}%)",
                self.label,
                (now - self.start).as_secs_f64()
            );
        }
        if now >= self.deadline {
            return Wait::Over(format!("timeout: {what} {value}/{target} at the deadline"));
        }
        if let Some(sent) = self.all_sent_at {
            if now - self.last_change.max(sent) >= self.stall {
                let secs = self.stall.as_secs_f64();
                return Wait::Over(format!("timeout: {what} {value}/{target}, nothing for {secs}s"));
            }
        }
        Wait::Pending
    }
}

/// The running bench: receivers, publisher, probe and the running sequence numbers.
pub struct Bench {
    opts: Options,
    receivers: Vec<Receiver>,
    control: Option<Control>,
    probe: Option<ServerProbe>,
    rss_start: Option<u64>,
    /// The receivers' TLS settings (`--tls`).
    tls: Option<TlsSetup>,
    /// Handshaked connections still open, as of the last phase's end.
    live: u64,
    bcast_sent: u64,
    targeted_sent: u64,
    /// The server process a switch left serving, stopped when the bench ends.
    started: Option<Server>,
}

impl Bench {
    /// Starts the receiver threads and reads the server's starting figures.
    pub fn new(opts: Options) -> io::Result<Bench> {
        let pids = &opts.server_pid;
        let probe = (!pids.is_empty()).then(|| ServerProbe::new(pids)).transpose()?;
        let rss_start = probe.as_ref().map(ServerProbe::rss).transpose()?;
        let threads = opts.threads.min(opts.connections);
        let window = opts.window.div_ceil(threads);
        let src = opts.src_addrs.as_ref().map(|s| s.0.clone()).unwrap_or_default();
        let tls = TlsSetup::from_options(&opts)?;
        let receivers = (0..threads)
            .map(|thread| {
                Receiver::spawn(Setup {
                    thread,
                    threads,
                    n: opts.connections,
                    sse: opts.sse.all().to_vec(),
                    path: opts.path.clone(),
                    src: src.clone(),
                    window,
                    tls: tls.clone(),
                    bearer: opts.bearer.clone(),
                    user_agent: opts.user_agent.clone(),
                    http2: opts.http2,
                    streams: opts.streams_per_connection,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Bench {
            opts,
            receivers,
            control: None,
            probe,
            rss_start,
            tls,
            live: 0,
            bcast_sent: 0,
            targeted_sent: 0,
            started: None,
        })
    }

    /// Runs the scenario's phases; stops after a phase that failed to complete.
    pub fn run(&mut self) -> Vec<PhaseResult> {
        let mut results = Vec::new();
        for phase in self.opts.phases() {
            let mut result = match phase {
                Phase::Connect => self.connect(Phase::Connect),
                Phase::Reconnect => self.reconnect(),
                Phase::Idle => self.idle(),
                Phase::Broadcast => self.broadcast(),
                Phase::Burst => self.burst(),
                Phase::Targeted => self.targeted(),
                Phase::Resume => self.resume(&results),
                Phase::Switch(switch) => self.switch(switch, &results),
                Phase::Presence => self.presence(),
            };
            let c = &result.counters;
            if result.usage.server_cpu_s == Some(0.0) && c.handshaked + c.delivered_b + c.delivered_t > 0 {
                result.notes.push("the server used no CPU for this work: is --server-pid the server?".into());
            }
            let stop = result.incomplete.is_some() || result.counters.failed_connections() > 0;
            results.push(result);
            if stop {
                break;
            }
        }
        results
    }

    /// Stops the receiver threads (closing every connection), then the server a switch
    /// started, if one did.
    pub fn stop(self) {
        for r in self.receivers {
            r.stop();
        }
        if let Some(server) = self.started {
            let pid = server.pid;
            if let Err(e) = server.stop(self.opts.timeout) {
                eprintln!("hasses-bench: stopping the server it started (pid {pid}): {e}");
            }
        }
    }

    fn total(&self, f: impl Fn(&Progress) -> u64) -> u64 {
        self.receivers.iter().map(|r| f(&r.progress)).sum()
    }

    /// Waits until `expected` more deliveries than `d0` arrived; why not, if they did not.
    fn wait_delivered(&self, waiter: &mut Waiter, d0: u64, expected: u64, what: &str) -> Option<String> {
        loop {
            match waiter.check(self.delivered() - d0, expected, true, what) {
                Wait::Done => return None,
                Wait::Over(why) => return Some(why),
                Wait::Pending => sleep(TICK),
            }
        }
    }

    fn delivered(&self) -> u64 {
        self.total(|p| Progress::get(&p.delivered))
    }

    /// Starts a measured window in which `bcast_count` broadcasts and `targeted_count`
    /// targeted messages will be sent, each one's latency kept.
    fn begin(&self, bcast_count: usize, targeted_count: usize) -> Window {
        for r in &self.receivers {
            r.send(Cmd::Begin {
                bcast_base: self.bcast_sent,
                bcast_count,
                targeted_base: self.targeted_sent,
                targeted_count,
            });
        }
        let server = self.probe.as_ref().and_then(|p| p.cpu().ok());
        Window { t0: sys::mono_ns(), server, own: sys::own_cpu_ns() }
    }

    fn usage(&self, w: &Window) -> Usage {
        let tool_cpu_s = sys::own_cpu_ns().saturating_sub(w.own) as f64 / 1e9;
        let now = self.probe.as_ref().and_then(|p| p.cpu().ok());
        match (now, &w.server) {
            (Some(a), Some(b)) => Usage {
                server_cpu_s: Some(a.since(b)),
                server_cpu_stat_s: Some(a.stat_since(b)),
                server_cpu_s_each: a.each_since(b),
                tool_cpu_s,
            },
            _ => Usage { tool_cpu_s, ..Usage::default() },
        }
    }

    fn collect(&mut self) -> Counters {
        let (tx, rx) = crossbeam_channel::bounded(self.receivers.len());
        for r in &self.receivers {
            r.send(Cmd::Collect {
                bcast_sent: self.bcast_sent,
                targeted_sent: self.targeted_sent,
                reply: tx.clone(),
            });
        }
        let mut merged = Counters::default();
        for _ in &self.receivers {
            match rx.recv_timeout(COLLECT_TIMEOUT) {
                Ok(c) => merged.merge(&c),
                Err(_) => merged.error_samples.push("a receiver thread did not answer".into()),
            }
        }
        self.live = merged.live;
        merged
    }

    fn control(&mut self) -> io::Result<&mut Control> {
        if self.control.is_none() {
            let c = Control::connect(self.opts.control.addr, self.opts.payload as usize, self.opts.timeout)?;
            self.control = Some(c);
        }
        Ok(self.control.as_mut().expect("just connected"))
    }

    /// Every receiver closes its handshaked connections; returns once they all have.
    fn disconnect_all(&self) {
        let (tx, rx) = crossbeam_channel::bounded(self.receivers.len());
        for r in &self.receivers {
            r.send(Cmd::Disconnect(tx.clone()));
        }
        for _ in &self.receivers {
            let _ = rx.recv_timeout(COLLECT_TIMEOUT);
        }
    }

    /// Closes every connection, waits until the server has closed them too, then opens them
    /// again: the measured window holds the new connections only, not the closing.
    fn reconnect(&mut self) -> PhaseResult {
        self.disconnect_all();
        let deadline = Instant::now() + self.opts.timeout;
        let mut left = self.control().and_then(|c| c.number_of_clients());
        while left.as_ref().is_ok_and(|&n| n > 0) && Instant::now() < deadline {
            sleep(TICK);
            left = self.control().and_then(|c| c.number_of_clients());
        }
        if let Some(tls) = &self.tls {
            tls.resume_from_now();
        }
        let mut result = self.connect(Phase::Reconnect);
        match left {
            Ok(0) => {}
            Ok(n) => result.notes.push(format!("the server still had {n} clients when the reconnect began")),
            Err(e) => {
                result.notes.push(format!("cannot tell whether the server closed the old connections: {e}"))
            }
        }
        result
    }

    /// Opens every connection: `Connect` the first time, `Reconnect` after a disconnect.
    fn connect(&mut self, phase: Phase) -> PhaseResult {
        let n = self.opts.subscribers();
        let w = self.begin(0, 0);
        let base = self.total(|p| Progress::get(&p.handshaked) + Progress::get(&p.failed));
        for r in &self.receivers {
            r.send(Cmd::Connect);
        }
        let mut waiter = Waiter::new(phase.name(), &self.opts);
        let mut incomplete = None;
        loop {
            let done = self.total(|p| Progress::get(&p.handshaked) + Progress::get(&p.failed)) - base;
            match waiter.check(done, n, true, "connections settled") {
                Wait::Done => break,
                Wait::Over(why) => {
                    incomplete = Some(why);
                    break;
                }
                Wait::Pending => sleep(TICK),
            }
        }
        let usage = self.usage(&w);
        let c = self.collect();
        let end = if c.last_handshake > w.t0 { c.last_handshake } else { sys::mono_ns() };
        let time_s = (end - w.t0) as f64 / 1e9;
        let server_clients = self.control().and_then(|c| c.number_of_clients()).ok();
        let tls = self.opts.tls.then(|| {
            // The TLS handshakes end a round trip before their connection's response head.
            let end = if c.last_tls_handshake > w.t0 { c.last_tls_handshake } else { sys::mono_ns() };
            TlsHandshakes {
                tls_handshakes: c.tls_handshaked,
                tls_resumed_handshakes: c.tls_resumed,
                tls_handshakes_per_s: c.tls_handshaked as f64 / ((end - w.t0) as f64 / 1e9).max(1e-9),
                server_cpu_us_per_tls_handshake: usage
                    .server_cpu_s
                    .filter(|_| c.tls_handshaked > 0)
                    .map(|s| s * 1e6 / c.tls_handshaked as f64),
                tool_cpu_us_per_tls_handshake: (c.tls_handshaked > 0)
                    .then(|| usage.tool_cpu_s * 1e6 / c.tls_handshaked as f64),
            }
        });
        let streams = self.opts.streams_per_connection;
        let per_stream = usage.server_cpu_s.map(|s| s * 1e6 / c.handshaked.max(1) as f64);
        let figures = figures::Connect {
            handshaked: c.handshaked,
            connections_per_s: c.handshaked as f64 / f64::from(streams) / time_s.max(1e-9),
            server_cpu_us_per_connection: per_stream.map(|us| us * f64::from(streams)),
            http2: self.opts.http2.then(|| figures::StreamsConnect {
                streams_per_connection: streams,
                streams_per_s: c.handshaked as f64 / time_s.max(1e-9),
                server_cpu_us_per_stream: per_stream,
            }),
            server_clients,
            server_rss_before_bytes: self.rss_start,
            server_rss_after_bytes: self.probe.as_ref().and_then(|p| p.rss().ok()),
            tls,
        };
        let live = c.live;
        let figures =
            if phase == Phase::Reconnect { Figures::Reconnect(figures) } else { Figures::Connect(figures) };
        let mut result = PhaseResult::new(incomplete, c, time_s, usage, figures);
        // Over several servers, the control one counts only its own share.
        let one_server = !self.opts.sse.several_servers();
        if let Some(seen) = server_clients.filter(|&seen| seen < live && one_server) {
            // The server does not know of connections that were answered: another process
            // (an old instance sharing the port through SO_REUSEPORT?) took some of them.
            result.notes.push(format!(
                "the server counts {seen} clients but {live} connections were answered on its port"
            ));
        }
        result
    }

    fn idle(&mut self) -> PhaseResult {
        let w = self.begin(0, 0);
        let start = Instant::now();
        sleep(self.opts.idle);
        let usage = self.usage(&w);
        let time_s = start.elapsed().as_secs_f64();
        let rss = self.probe.as_ref().and_then(|p| p.rss().ok());
        let c = self.collect();
        let grown = match (rss, self.rss_start) {
            (Some(after), Some(before)) => Some(after as f64 - before as f64),
            _ => None,
        };
        let per = |count: u64| grown.filter(|_| count > 0).map(|bytes| bytes / count as f64);
        let per_conn = per(c.live_connections);
        let figures = figures::Idle {
            idle_s: time_s,
            rss_before_bytes: self.rss_start,
            rss_after_bytes: rss,
            rss_bytes_per_connection: per_conn,
            rss_bytes_per_stream: per(c.live).filter(|_| self.opts.http2),
            rss_bytes_per_tls_connection: per_conn.filter(|_| self.opts.tls),
        };
        PhaseResult::new(None, c, time_s, usage, Figures::Idle(figures))
    }

    /// `--polls` presence counts, one after the other; each must count every open connection.
    fn presence(&mut self) -> PhaseResult {
        let w = self.begin(0, 0);
        let start = Instant::now();
        let polled = presence::poll(self.opts.api.addr, self.opts.polls, self.opts.timeout);
        let usage = self.usage(&w);
        let time_s = start.elapsed().as_secs_f64();
        let c = self.collect();
        let (polled, mut incomplete) = match polled {
            Ok(polled) => (polled, None),
            Err(e) => (presence::Polled::default(), Some(format!("presence: {e}"))),
        };
        if let Some(wrong) = polled.counts.iter().find(|&&n| n != self.live) {
            incomplete.get_or_insert(format!("presence counted {wrong}, {} are open", self.live));
        }
        let mut times = polled.times_ns.clone();
        times.sort_unstable();
        let polls = times.len() as u64;
        let figures = figures::Presence {
            polls,
            presence_count: polled.counts.last().copied().unwrap_or(0),
            expected_count: self.live,
            poll_ms_p50: ms(pick(&times, 0.50)),
            poll_ms_p99: ms(pick(&times, 0.99)),
            poll_ms_max: ms(times.last().copied().unwrap_or(0)),
            server_cpu_us_per_poll: usage.server_cpu_s.filter(|_| polls > 0).map(|s| s * 1e6 / polls as f64),
        };
        PhaseResult::new(incomplete, c, time_s, usage, Figures::Presence(figures))
    }

    fn broadcast(&mut self) -> PhaseResult {
        let count = u64::from(self.opts.messages);
        let interval = Duration::from_millis(self.opts.interval_ms);
        let expected = self.live * count;
        let w = self.begin(count as usize, 0);
        let d0 = self.delivered();
        let base = self.bcast_sent;
        let start = Instant::now();
        let mut waiter = Waiter::new("broadcast", &self.opts);
        let mut sent = 0;
        let mut incomplete = None;
        loop {
            let now = Instant::now();
            if sent < count && now >= start + interval * sent as u32 {
                let res = self.control().and_then(|c| {
                    c.broadcast(base + sent, sys::mono_ns());
                    c.flush()
                });
                if let Err(e) = res {
                    incomplete = Some(format!("control: {e}"));
                    break;
                }
                sent += 1;
                self.bcast_sent += 1;
                continue;
            }
            match waiter.check(self.delivered() - d0, expected, sent == count, "deliveries") {
                Wait::Done => break,
                Wait::Over(why) => {
                    incomplete = Some(why);
                    break;
                }
                Wait::Pending => {}
            }
            let next = start + interval * sent as u32;
            sleep(if sent < count { next.saturating_duration_since(Instant::now()).min(TICK) } else { TICK });
        }
        let usage = self.usage(&w);
        let c = self.collect();
        let time_s = (c.last_recv.max(w.t0) - w.t0) as f64 / 1e9;
        let deliveries = c.delivered_b;
        let figures = figures::Broadcast {
            messages: sent,
            interval_ms: self.opts.interval_ms,
            deliveries,
            expected_deliveries: expected,
            last_receiver: last_receiver(&c.last_b),
            latency: latency(&c),
            server_cpu_us_per_delivery: usage.server_cpu_s.map(|s| s * 1e6 / deliveries.max(1) as f64),
        };
        PhaseResult::new(incomplete, c, time_s, usage, Figures::Broadcast(figures))
    }

    fn burst(&mut self) -> PhaseResult {
        let count = u64::from(self.opts.burst);
        let expected = self.live * count;
        let w = self.begin(count as usize, 0);
        let d0 = self.delivered();
        let base = self.bcast_sent;
        let mut incomplete = None;
        let res = self.control().and_then(|c| {
            let ts = sys::mono_ns();
            for s in 0..count {
                c.broadcast(base + s, ts);
            }
            c.flush()
        });
        self.bcast_sent += count;
        if let Err(e) = res {
            incomplete = Some(format!("control: {e}"));
        }
        let mut waiter = Waiter::new("burst", &self.opts);
        if incomplete.is_none() {
            incomplete = self.wait_delivered(&mut waiter, d0, expected, "deliveries");
        }
        let usage = self.usage(&w);
        let c = self.collect();
        let time_s = (c.last_recv.max(w.t0) - w.t0) as f64 / 1e9;
        let deliveries = c.delivered_b;
        let figures = figures::Burst {
            messages: count,
            deliveries,
            expected_deliveries: expected,
            all_received_s: time_s,
            deliveries_per_s: deliveries as f64 / time_s.max(1e-9),
            latency: latency(&c),
            server_cpu_us_per_delivery: usage.server_cpu_s.map(|s| s * 1e6 / deliveries.max(1) as f64),
        };
        PhaseResult::new(incomplete, c, time_s, usage, Figures::Burst(figures))
    }

    /// Publishes `count` targeted messages, message k to connection k mod N: pipelined in
    /// batches, or with a `rate`, message k at k/rate seconds after the first (each tick sends
    /// what is due, each line stamped as it is written). Between batches, gives up past the
    /// phase's deadline (`waiter`, watching `expected` deliveries after `d0`). Why it stopped
    /// early, if it did.
    fn send_targeted(
        &mut self,
        count: u64,
        rate: Option<u32>,
        waiter: &mut Waiter,
        d0: u64,
        expected: u64,
    ) -> Option<String> {
        let n = self.opts.subscribers();
        let first = self.targeted_sent;
        let end = first + count;
        let start = sys::mono_ns();
        while self.targeted_sent < end {
            let due = rate.map_or(end, |r| (first + due_count(sys::mono_ns() - start, r)).min(end));
            let mut seq = self.targeted_sent;
            let res = self.control().and_then(|c| {
                let ts = sys::mono_ns();
                while seq < due && c.pending() < TARGETED_BATCH {
                    c.targeted(seq, seq % n, if rate.is_some() { sys::mono_ns() } else { ts });
                    seq += 1;
                }
                c.flush()
            });
            self.targeted_sent = seq;
            if let Err(e) = res {
                return Some(format!("control: {e}"));
            }
            if let Wait::Over(why) = waiter.check(self.delivered() - d0, expected, false, "messages received")
            {
                return Some(why);
            }
            if let Some(r) = rate.filter(|_| seq < end) {
                let next = start + due_at(seq - first, r);
                let wait = Duration::from_nanos(next.saturating_sub(sys::mono_ns()));
                sleep(wait.clamp(PACE_TICK, TICK));
            }
        }
        None
    }

    fn targeted(&mut self) -> PhaseResult {
        let count = u64::from(self.opts.targeted);
        let w = self.begin(0, count as usize);
        let d0 = self.delivered();
        let base = self.targeted_sent;
        let mut waiter = Waiter::new("targeted", &self.opts);
        let mut incomplete = self.send_targeted(count, self.opts.rate, &mut waiter, d0, count);
        if incomplete.is_none() {
            incomplete = self.wait_delivered(&mut waiter, d0, count, "messages received");
        }
        let usage = self.usage(&w);
        let c = self.collect();
        let time_s = (c.last_recv.max(w.t0) - w.t0) as f64 / 1e9;
        let received = c.delivered_t;
        let figures = figures::Targeted {
            messages: self.targeted_sent - base,
            received,
            all_received_s: time_s,
            messages_per_s: received as f64 / time_s.max(1e-9),
            rate_per_s: self.opts.rate,
            latency: latency(&c),
            last_receiver: last_receiver(&c.last_t),
            server_cpu_us_per_message: usage.server_cpu_s.map(|s| s * 1e6 / received.max(1) as f64),
        };
        PhaseResult::new(incomplete, c, time_s, usage, Figures::Targeted(figures))
    }

    /// One event each; all close; `--missed` each while away; all resume at once (measured
    /// until the last replay is in); one live event each. `earlier`: this run's phases so far,
    /// for the budget. Each step has its own deadline and stall limit.
    fn resume(&mut self, earlier: &[PhaseResult]) -> PhaseResult {
        let n = self.live;
        let missed = u64::from(self.opts.missed);
        let away = self.leave_after_one_event_each();
        let mut waiter = Waiter::new("resume", &self.opts);
        // The replays' window: from the reconnects until the last replayed event is in.
        let w = self.begin(0, 0);
        let d0 = self.delivered();
        let mut incomplete = away.or_else(|| {
            for r in &self.receivers {
                r.send(Cmd::Connect);
            }
            self.wait_delivered(&mut waiter, d0, n * missed, "replayed events received")
        });
        let usage = self.usage(&w);
        let replayed = self.delivered() - d0;
        let mut c = self.collect();
        let time_s = (c.last_recv.max(w.t0) - w.t0) as f64 / 1e9;
        let resumed = c.handshaked;
        let d1 = self.delivered();
        if incomplete.is_none() {
            // The seam: live delivery takes over after the replay, with nothing lost or twice.
            let mut waiter = Waiter::new("resume: live", &self.opts);
            incomplete = self
                .send_targeted(n, None, &mut waiter, d1, n)
                .or_else(|| self.wait_delivered(&mut waiter, d1, n, "live events after the replay"));
        }
        let live_after_replay = self.delivered() - d1;
        let seam = self.collect();
        c.merge(&seam);
        // Open connections are a state, not a count to add up.
        c.live = seam.live;
        c.live_connections = seam.live_connections;
        let figures = figures::Resume {
            resumed,
            missed_per_connection: missed,
            replayed,
            expected_replayed: n * missed,
            all_replayed_s: time_s,
            live_after_replay,
            server_cpu_us_per_resume: usage.server_cpu_s.map(|s| s * 1e6 / resumed.max(1) as f64),
            budget_us_per_resume: resume_budget(earlier, missed as f64),
        };
        let short = replayed < n * missed;
        let resets = c.resets;
        let mut result = PhaseResult::new(incomplete, c, time_s, usage, Figures::Resume(figures));
        if short || resets > 0 {
            result.notes.push(format!(
                "{resets} resumes were told of a gap (event: reset), {replayed} of {} missed events \
                 replayed: does the server keep history (the floor server keeps none), and room for \
                 {} events (--history-memory)?",
                n * missed,
                n * (missed + 1)
            ));
        }
        result
    }

    /// Every connection comes back when ended; a steady publisher publishes; after
    /// [`BEFORE_SWITCH`] the server gives way to a new one (`switch`, on a thread of its own:
    /// it lasts the old one's drain). Measured until every client is back and has every event
    /// published up to then (the wave); then the publisher stops, and every event it published
    /// must arrive. `earlier`: connect, for the wave's budget.
    fn switch(&mut self, switch: Switch, earlier: &[PhaseResult]) -> PhaseResult {
        let n = self.live;
        for r in &self.receivers {
            r.send(Cmd::ComeBack);
        }
        let w = self.begin(0, 0);
        let d0 = self.delivered();
        let sent = (self.bcast_sent, self.targeted_sent);
        // Deliveries owed, and publishes taken, for what the publisher got taken so far.
        let owed = |(bcast, targeted): (u64, u64)| n * (bcast - sent.0) + (targeted - sent.1);
        let published = |(bcast, targeted): (u64, u64)| (bcast - sent.0) + (targeted - sent.1);
        let every = Duration::from_millis(self.opts.publish_ms);
        let targets = self.opts.subscribers();
        let publishing =
            Steady::new(self.opts.control.addr, self.opts.payload as usize, targets, every, sent).start();
        let mut wave = Wave::default();
        let start = Instant::now();
        let mut switching: Option<JoinHandle<io::Result<Server>>> = None;
        let mut last_print = start;
        let incomplete = loop {
            let now = Instant::now();
            if wave.switched.is_none() && now >= start + BEFORE_SWITCH {
                let (old, timeout) = (self.opts.server_pid[0], self.opts.timeout);
                let command = self.opts.server_cmd.clone().unwrap_or_default();
                let delivered = (self.delivered() - d0).max(1) as f64;
                wave.steady = self.usage(&w).server_cpu_s.map(|s| s / delivered);
                wave.switched = Some(now);
                switching = Some(std::thread::spawn(move || switch.run(old, &command, timeout)));
            }
            if switching.as_ref().is_some_and(JoinHandle::is_finished) {
                match switching.take().map(JoinHandle::join) {
                    Some(Ok(Ok(server))) => {
                        self.serving(server, &mut wave, now);
                        wave.taken_at_start = publishing.taken();
                    }
                    Some(Ok(Err(e))) => break Some(format!("{}: {e}", switch.name())),
                    _ => break Some(format!("{}: its thread panicked", switch.name())),
                }
            }
            let returned = self.total(|p| Progress::get(&p.returned));
            let away = self.total(|p| Progress::get(&p.away));
            if wave.started.is_some() && wave.back.is_none() && returned >= n && away == 0 {
                wave.back = Some((now, owed(publishing.taken())));
            }
            if wave.back.is_some_and(|(_, owed)| self.delivered() - d0 >= owed) {
                wave.caught_up = Some((now, self.usage_since_start(&w), self.delivered()));
                wave.taken_at_caught_up = publishing.taken();
                break None;
            }
            if now >= start + self.opts.timeout {
                break Some(format!("timeout: {returned} of {n} back, {away} away at the deadline"));
            }
            if !self.opts.quiet && now - last_print >= PROGRESS_EVERY {
                last_print = now;
                let at = (now - start).as_secs_f64();
                let published = published(publishing.taken());
                eprintln!(
                    "[{}] {at:6.1}s published {published}, away {away}, back {returned}/{n}",
                    switch.name()
                );
            }
            sleep(TICK);
        };
        let steady = publishing.stop();
        let taken = (steady.bcast, steady.targeted);
        let mut waiter = Waiter::new(switch.name(), &self.opts);
        let incomplete = incomplete.or_else(|| {
            self.wait_delivered(&mut waiter, d0, owed(taken), "events published across the switch")
        });
        (self.bcast_sent, self.targeted_sent) = (steady.bcast, steady.targeted);
        let c = self.collect();
        let time_s = start.elapsed().as_secs_f64();
        let since_switch = |at: Instant| wave.switched.map(|s| (at - s).as_secs_f64());
        let (usage, wave_deliveries) = match &wave.caught_up {
            Some((_, usage, delivered)) => (usage.clone(), delivered - wave.delivered_at_start),
            None if wave.started.is_some() => (self.usage_since_start(&w), 0),
            None => (self.usage(&w), 0),
        };
        let returns = c.returned.max(1) as f64;
        // What was published while the new server served went to every client live or in
        // its replay alike: the rest of the wave's deliveries is what they missed.
        let live = if wave.caught_up.is_some() {
            owed(wave.taken_at_caught_up) - owed(wave.taken_at_start)
        } else {
            0
        };
        let missed_per_return = wave_deliveries.saturating_sub(live) as f64 / returns;
        let per_return = usage.server_cpu_s.filter(|_| wave.caught_up.is_some()).map(|s| s * 1e6 / returns);
        let sent_per_return = wave_deliveries as f64 / returns;
        let budget = wave.steady.and_then(|steady| handshake_budget(earlier, sent_per_return, steady * 1e6));
        let figures = figures::Switched {
            switch,
            published: published(taken),
            publishes_refused: steady.refused.0,
            longest_publish_gap_s: steady.longest_gap.as_secs_f64(),
            returned: c.returned,
            refused_connects: c.refused,
            switch_s: wave.started.and_then(since_switch).unwrap_or(0.0),
            all_back_s: wave.back.and_then(|(at, _)| since_switch(at)),
            all_caught_up_s: wave.caught_up.as_ref().and_then(|(at, _, _)| since_switch(*at)),
            wave_deliveries,
            missed_per_return,
            steady_server_cpu_us_per_delivery: wave.steady.map(|s| s * 1e6),
            server_cpu_us_per_return: per_return,
            budget_us_per_return: budget,
        };
        let mut result = PhaseResult::new(incomplete, c, time_s, usage, Figures::Switched(figures));
        if let (refused, Some(why)) = &steady.refused {
            result.notes.push(format!("{refused} publishes were refused, the last with {why:?}"));
        }
        result
    }

    /// The switch is over and `server` serves: its CPU is measured from its start, the
    /// control connection (the old server's) is gone.
    fn serving(&mut self, server: Server, wave: &mut Wave, now: Instant) {
        self.probe = ServerProbe::new(&[server.pid]).ok();
        self.started = Some(server);
        self.control = None;
        wave.started = Some(now);
        wave.delivered_at_start = self.delivered();
    }

    /// CPU used since `w` by the tool, and by the server since its start (a server a switch
    /// started: all of its CPU is the wave's).
    fn usage_since_start(&self, w: &Window) -> Usage {
        let from_start =
            Window { server: Some(CpuSample { stat_ns: 0, sched_ns: Some(0), each: Vec::new() }), ..*w };
        self.usage(&from_start)
    }

    /// Sends every connection one event of its own and waits for them; closes every connection
    /// and waits until the server has let go of them all; then publishes `--missed` events to
    /// each and waits until the server has sequenced them (a question on the control
    /// connection is answered after the publishes before it). Why not, if it could not.
    fn leave_after_one_event_each(&mut self) -> Option<String> {
        let n = self.live;
        let d0 = self.delivered();
        let mut waiter = Waiter::new("resume: first", &self.opts);
        if let Some(why) = self
            .send_targeted(n, None, &mut waiter, d0, n)
            .or_else(|| self.wait_delivered(&mut waiter, d0, n, "first events"))
        {
            return Some(why);
        }
        self.disconnect_all();
        let mut waiter = Waiter::new("resume: close", &self.opts);
        loop {
            match self.control().and_then(|c| c.number_of_clients()) {
                Ok(0) => break,
                Ok(clients) => match waiter.check(n - clients.min(n), n, true, "connections closed") {
                    Wait::Over(why) => return Some(why),
                    Wait::Done | Wait::Pending => sleep(TICK),
                },
                Err(e) => return Some(format!("control: {e}")),
            }
        }
        let missed = u64::from(self.opts.missed);
        let d1 = self.delivered();
        let mut waiter = Waiter::new("resume: away", &self.opts);
        self.send_targeted(n * missed, None, &mut waiter, d1, 0).or_else(|| {
            self.control().and_then(|c| c.number_of_clients()).err().map(|e| format!("control: {e}"))
        })
    }
}

/// What a switch phase saw, when.
#[derive(Default)]
struct Wave {
    /// The old server's CPU per delivery of the publishing before the switch, seconds.
    steady: Option<f64>,
    /// The switch began (SIGTERM).
    switched: Option<Instant>,
    /// The new server ran.
    started: Option<Instant>,
    /// Events delivered (ever) then.
    delivered_at_start: u64,
    /// The publisher's sequence numbers then, and when all had caught up.
    taken_at_start: (u64, u64),
    taken_at_caught_up: (u64, u64),
    /// Every connection was answered again, and the deliveries owed then (since the phase began).
    back: Option<(Instant, u64)>,
    /// Every connection had what it was owed then: the wave's CPU and the deliveries (ever).
    caught_up: Option<(Instant, Usage, u64)>,
}

/// 1.5 × (server CPU per connection + `missed` × server CPU per burst delivery), from `earlier`.
pub fn resume_budget(earlier: &[PhaseResult], missed: f64) -> Option<f64> {
    let burst = earlier.iter().find_map(|r| match &r.figures {
        Figures::Burst(f) => f.server_cpu_us_per_delivery,
        _ => None,
    })?;
    handshake_budget(earlier, missed, burst)
}

/// 1.5 × (server CPU per connection, from `earlier`'s connect + `events` × `per_event` µs).
fn handshake_budget(earlier: &[PhaseResult], events: f64, per_event: f64) -> Option<f64> {
    let connect = earlier.iter().find_map(|r| match &r.figures {
        Figures::Connect(f) => f.server_cpu_us_per_connection,
        _ => None,
    })?;
    Some(RESUME_BUDGET_FACTOR * (connect + events * per_event))
}

fn latency(c: &Counters) -> Latency {
    let h = &c.latency;
    Latency {
        latency_ms_p50: ms(h.quantile(0.50)),
        latency_ms_p99: ms(h.quantile(0.99)),
        latency_ms_max: ms(h.max()),
    }
}

/// Per message, until its last receiver had it: exact quantiles over the messages received.
fn last_receiver(per_message: &PerMessage) -> LastReceiver {
    let sorted = per_message.sorted();
    LastReceiver {
        last_receiver_ms_p50: ms(pick(&sorted, 0.50)),
        last_receiver_ms_p99: ms(pick(&sorted, 0.99)),
        last_receiver_ms_max: ms(sorted.last().copied().unwrap_or(0)),
    }
}

/// How many paced messages are due `elapsed` ns after the first was sent, at `rate` a second:
/// message k is due at k/rate seconds.
fn due_count(elapsed: u64, rate: u32) -> u64 {
    (u128::from(elapsed) * u128::from(rate) / 1_000_000_000) as u64 + 1
}

/// When paced message `k` is due, ns after the first, at `rate` a second (rounded up, so
/// that [`due_count`] counts it then).
pub(crate) fn due_at(k: u64, rate: u32) -> u64 {
    (u128::from(k) * 1_000_000_000).div_ceil(u128::from(rate)) as u64
}

/// The value at quantile `q` of sorted values (nearest rank).
pub(crate) fn pick(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(crate) fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::{due_at, due_count, pick};

    #[test]
    fn paced_messages_fall_due_at_k_over_the_rate() {
        assert_eq!(due_count(0, 1000), 1, "the first goes at once");
        assert_eq!(due_count(999_999, 1000), 1);
        assert_eq!(due_count(1_000_000, 1000), 2);
        assert_eq!(due_count(1_000_000_000, 1000), 1001);
        assert_eq!(due_at(0, 1000), 0);
        assert_eq!(due_at(1, 1000), 1_000_000);
        assert_eq!(due_at(3, 2), 1_500_000_000);
        for k in [1u64, 7, 999, 12_345] {
            assert_eq!(due_count(due_at(k, 3), 3), k + 1, "message {k} is due at its time");
        }
        // A year at ten million a second does not overflow.
        assert_eq!(due_count(365 * 86_400 * 1_000_000_000, 10_000_000), 365 * 86_400 * 10_000_000 + 1);
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(pick(&v, 0.5), 50);
        assert_eq!(pick(&v, 0.99), 99);
        assert_eq!(pick(&v, 1.0), 100);
        assert_eq!(pick(&[], 0.5), 0);
    }
}
