//! Receiver threads: each owns a share of the N connections (connection i belongs to thread
//! i mod T) and one mio `Poll` over them, opens them, reads their event streams and counts.
//!
//! The hot path (readable → read → parse → count) allocates nothing and logs nothing: one
//! big read buffer per thread, one clock read per `read`, counters in plain fields. The
//! orchestrator talks to a thread only through [`Cmd`]s (a channel plus a `Waker`) and reads
//! its [`Progress`] atomics, which the thread refreshes once per poll round.
//!
//! A connection that is closed ([`Cmd::Disconnect`]) and opened again ([`Cmd::Connect`]) asks
//! to resume after the last event it received (`Last-Event-ID`), and goes on counting where it
//! left off: what it missed must come in its replay, in order, once.
//!
//! After [`Cmd::ComeBack`] a connection the server ends, or whose connect fails, is not a
//! failure: it comes back as EventSource does, after the last `retry:` its stream gave,
//! resuming, and again until it is answered (the restart scenario).
//!
//! With `--tls` each connection carries a rustls `ClientConnection`, driven non-blocking in
//! the same loop: ciphertext is read into a second big buffer, handed to rustls, and the
//! plaintext it yields goes to the same parser.
//!
//! With `--http2` each connection carries an [`h2::Client`] and several streams, each a
//! subscriber ([`Sub`]) with its own parser and counts: the frames' DATA goes to the stream's
//! parser, which reads the SSE text as it does inside HTTP/1.1's chunks. An HTTP/1.1 connection
//! is one subscriber.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver as ChanRx, Sender};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::errno::Errno;
use rustls::{ClientConnection, HandshakeKind};
use socket2::{Domain, Protocol, Socket, Type};

use crate::cli::Target;
use crate::h2::{self, Seen};
use crate::parse::{Event, ProtoError, StreamParser};
use crate::stats::{Counters, PerMessage, Progress};
use crate::sys;
use crate::tls::TlsSetup;

/// The waker's token, above every connection's (a connection's token is its local index).
const WAKER: Token = Token(usize::MAX);
/// Bytes read at once: a whole burst for one connection usually fits.
const READ_BUF: usize = 256 * 1024;
/// Readiness events taken per poll.
const EVENTS: usize = 1024;
/// Error messages kept per phase, as examples for the report.
const ERROR_SAMPLES: usize = 5;
/// How long a connection waits to come back before its stream gave a `retry:` (ms): what
/// browsers wait (Chromium and Firefox wait 3 s and 5 s).
pub const DEFAULT_RETRY_MS: u64 = 3000;

/// What the orchestrator asks of a receiver thread.
pub enum Cmd {
    /// Open this thread's connections that are not open, keeping at most its window in
    /// progress; one that received events before resumes after the last of them.
    Connect,
    /// A phase starts: broadcasts from `bcast_base` on, `bcast_count` of them, and targeted
    /// messages from `targeted_base` on, `targeted_count` of them, will be sent; the latency of
    /// each is kept.
    Begin {
        /// The first broadcast sequence number of the phase.
        bcast_base: u64,
        /// How many broadcasts the phase sends.
        bcast_count: usize,
        /// The first targeted sequence number of the phase.
        targeted_base: u64,
        /// How many targeted messages the phase sends (0: none whose latency to keep).
        targeted_count: usize,
    },
    /// The phase is over: count what never arrived and send back the phase's counters.
    Collect {
        /// Broadcast sequence numbers sent so far (all of them, every phase).
        bcast_sent: u64,
        /// Targeted messages sent so far.
        targeted_sent: u64,
        /// Where to send the counters.
        reply: Sender<Counters>,
    },
    /// Close every handshaked connection (counted as neither failed nor closed by the server),
    /// to open them again with the next `Connect`; reply when done.
    Disconnect(Sender<()>),
    /// From now on, a connection the server ends (or whose connect fails) comes back after
    /// its `retry`, resuming, instead of failing.
    ComeBack,
    /// Close everything and end the thread.
    Stop,
}

/// What a receiver thread needs to know about the target and its share.
#[derive(Debug, Clone)]
pub struct Setup {
    /// This thread's number.
    pub thread: u32,
    /// How many receiver threads there are.
    pub threads: u32,
    /// Connections over all threads.
    pub n: u32,
    /// The SSE addresses: connection i goes to the (i mod k)th of the k, and names it as written
    /// in its `Host` header.
    pub sse: Vec<Target>,
    /// The request path.
    pub path: String,
    /// Source addresses (round-robin by global index); empty = the kernel's choice.
    pub src: Vec<IpAddr>,
    /// Connections of this thread in progress at once.
    pub window: u32,
    /// Open the connections over TLS with these settings.
    pub tls: Option<TlsSetup>,
    /// Subscribe with this bearer token.
    pub bearer: Option<String>,
    /// Subscribe with this `User-Agent`.
    pub user_agent: Option<String>,
    /// Speak HTTP/2 (`--http2`).
    pub http2: bool,
    /// Streams per connection, each a subscriber (1 over HTTP/1.1).
    pub streams: u32,
}

impl Setup {
    /// Which of the SSE addresses connection `index` goes to: `index` mod their number.
    pub fn target_number(&self, index: u64) -> usize {
        (index % self.sse.len() as u64) as usize
    }

    /// The SSE address connection `index` goes to.
    fn target(&self, index: u64) -> &Target {
        &self.sse[self.target_number(index)]
    }

    /// Subscribers over all threads: stream s of connection i is subscriber i + s·n.
    fn subscribers(&self) -> u64 {
        u64::from(self.n) * u64::from(self.streams)
    }

    /// A parser for a new response: HTTP/1.1's head and chunks, or an HTTP/2 stream's bare text.
    fn parser(&self) -> StreamParser {
        if self.http2 {
            StreamParser::bare()
        } else {
            StreamParser::new()
        }
    }
}

/// The orchestrator's handle on a receiver thread.
pub struct Receiver {
    commands: Sender<Cmd>,
    waker: Arc<Waker>,
    /// The thread's running totals.
    pub progress: Arc<Progress>,
    join: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver thread.
    pub fn spawn(setup: Setup) -> io::Result<Receiver> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (commands, inbox) = crossbeam_channel::unbounded();
        let progress = Arc::new(Progress::default());
        let mut thread = Thread::new(setup, poll, inbox, Arc::clone(&progress));
        let join = std::thread::Builder::new()
            .name(format!("bench-recv-{}", thread.setup.thread))
            .spawn(move || thread.run())?;
        Ok(Receiver { commands, waker, progress, join: Some(join) })
    }

    /// Sends a command and wakes the thread.
    pub fn send(&self, cmd: Cmd) {
        // A thread that is gone has nothing left to do; its absence shows in the figures.
        if self.commands.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.send(Cmd::Stop);
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not open: not opened yet, or closed by [`Cmd::Disconnect`].
    Idle,
    /// Non-blocking connect in progress.
    Connecting,
    /// Request sent, waiting for the response head.
    AwaitHead,
    /// Handshaked: reading events.
    Streaming,
    /// Ended by the server, to come back after its `retry` ([`Cmd::ComeBack`]).
    Away,
    /// Failed or closed.
    Dead,
}

/// What a subscriber expects next.
#[derive(Debug, Clone, Copy, Default)]
struct Track {
    /// The subscriber's global index (its token is `c<index>`).
    index: u64,
    /// The next broadcast sequence number expected.
    next_b: u64,
    /// The next targeted sequence number expected (index, index + N, ...).
    next_t: u64,
    /// The last event id seen.
    last_id: Option<u64>,
}

/// Where a subscriber's response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Asked for (or to be), not answered yet.
    Waiting,
    /// Answered 200: reading events.
    Streaming,
    /// Failed or ended, and counted so.
    Ended,
}

/// One subscription: an HTTP/1.1 connection's, or an HTTP/2 stream's.
struct Sub {
    parser: StreamParser,
    track: Track,
    answer: Answer,
}

struct Conn {
    /// The connection's global index: which address and source address it uses.
    index: u64,
    stream: Option<TcpStream>,
    /// The TLS session (`--tls`), from the end of the TCP connect on.
    tls: Option<Box<ClientConnection>>,
    /// The HTTP/2 session (`--http2`), from the end of the TCP connect on.
    h2: Option<Box<h2::Client>>,
    state: State,
    /// Its subscribers: stream s is `subs[s]`; one over HTTP/1.1.
    subs: Box<[Sub]>,
    /// How long to wait before coming back, ms: the stream's last `retry:`.
    retry_ms: u64,
    /// Away since the server ended it, not yet answered again.
    away: bool,
}

/// Per-phase context the event handler needs besides the connection.
struct Ctx<'a> {
    counters: &'a mut Counters,
    n: u64,
    now: u64,
}

struct Thread {
    setup: Setup,
    poll: Poll,
    inbox: ChanRx<Cmd>,
    progress: Arc<Progress>,
    conns: Vec<Conn>,
    buf: Vec<u8>,
    /// Ciphertext read from a TLS connection's socket (empty without `--tls`).
    cipher: Vec<u8>,
    request: Vec<u8>,
    counters: Counters,
    /// Connections opened so far (the next to open is this local index).
    opened: usize,
    /// Connections connecting or awaiting their head.
    in_flight: u32,
    connecting: bool,
    /// Totals of finished phases, for the progress figures.
    done_handshaked: u64,
    done_failed: u64,
    done_delivered: u64,
    done_returned: u64,
    /// Connections the server ends come back ([`Cmd::ComeBack`]).
    come_back: bool,
    /// When each away connection is to come back (mono ns), soonest first.
    comebacks: BinaryHeap<Reverse<(u64, usize)>>,
    /// Connections away now.
    away: u64,
}

impl Thread {
    fn new(setup: Setup, poll: Poll, inbox: ChanRx<Cmd>, progress: Arc<Progress>) -> Thread {
        let share = (setup.n.saturating_sub(setup.thread)).div_ceil(setup.threads) as usize;
        let conns = (0..share)
            .map(|local| {
                let index = u64::from(setup.thread) + local as u64 * u64::from(setup.threads);
                let subs = (0..u64::from(setup.streams))
                    .map(|s| index + s * u64::from(setup.n))
                    .map(|sub| Sub {
                        parser: setup.parser(),
                        track: Track { index: sub, next_t: sub, ..Track::default() },
                        answer: Answer::Waiting,
                    })
                    .collect();
                Conn {
                    index,
                    stream: None,
                    tls: None,
                    h2: None,
                    state: State::Idle,
                    subs,
                    retry_ms: DEFAULT_RETRY_MS,
                    away: false,
                }
            })
            .collect();
        let cipher = if setup.tls.is_some() { vec![0; READ_BUF] } else { Vec::new() };
        Thread {
            setup,
            poll,
            inbox,
            progress,
            conns,
            buf: vec![0; READ_BUF],
            cipher,
            request: Vec::with_capacity(256),
            counters: Counters::default(),
            opened: 0,
            in_flight: 0,
            connecting: false,
            done_handshaked: 0,
            done_failed: 0,
            done_delivered: 0,
            done_returned: 0,
            come_back: false,
            comebacks: BinaryHeap::new(),
            away: 0,
        }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            if let Err(e) = self.poll.poll(&mut events, self.next_comeback()) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("hasses-bench: receiver thread {}: poll failed: {e}", self.setup.thread);
                return;
            }
            let mut woken = false;
            for ev in events.iter() {
                match ev.token() {
                    WAKER => woken = true,
                    Token(local) => self.ready(local, ev),
                }
            }
            if woken && !self.commands() {
                return;
            }
            if self.connecting {
                self.open_more();
            }
            self.come_back_due();
            self.publish();
        }
    }

    /// Handles every queued command; false on `Stop`.
    fn commands(&mut self) -> bool {
        while let Ok(cmd) = self.inbox.try_recv() {
            match cmd {
                Cmd::Connect => {
                    self.connecting = true;
                    self.opened = 0;
                }
                Cmd::Begin { bcast_base, bcast_count, targeted_base, targeted_count } => {
                    self.counters.last_b = PerMessage::new(bcast_base, bcast_count);
                    self.counters.last_t = PerMessage::new(targeted_base, targeted_count);
                }
                Cmd::Collect { bcast_sent, targeted_sent, reply } => {
                    self.count_missing(bcast_sent, targeted_sent);
                    let live = |c: &Conn| c.subs.iter().filter(|s| s.answer == Answer::Streaming).count();
                    self.counters.live = self.conns.iter().map(live).sum::<usize>() as u64;
                    self.counters.live_connections = self.conns.iter().filter(|c| live(c) > 0).count() as u64;
                    self.publish();
                    let c = std::mem::take(&mut self.counters);
                    self.done_handshaked += c.handshaked;
                    self.done_failed += c.failed_connections();
                    self.done_delivered += c.delivered_b + c.delivered_t;
                    self.done_returned += c.returned;
                    let _ = reply.send(c);
                }
                Cmd::Disconnect(reply) => {
                    self.disconnect();
                    let _ = reply.send(());
                }
                Cmd::ComeBack => self.come_back = true,
                Cmd::Stop => return false,
            }
        }
        true
    }

    fn publish(&self) {
        let c = &self.counters;
        let p = &self.progress;
        p.handshaked.store(self.done_handshaked + c.handshaked, Ordering::Relaxed);
        p.failed.store(self.done_failed + c.failed_connections(), Ordering::Relaxed);
        p.delivered.store(self.done_delivered + c.delivered_b + c.delivered_t, Ordering::Relaxed);
        p.returned.store(self.done_returned + c.returned, Ordering::Relaxed);
        p.away.store(self.away, Ordering::Relaxed);
    }

    /// How long the poll may sleep: until the next connection is due to come back.
    fn next_comeback(&self) -> Option<std::time::Duration> {
        let Reverse((due, _)) = self.comebacks.peek()?;
        Some(std::time::Duration::from_nanos(due.saturating_sub(sys::mono_ns())))
    }

    /// Opens again the away connections whose wait is over.
    fn come_back_due(&mut self) {
        let now = sys::mono_ns();
        while let Some(&Reverse((due, local))) = self.comebacks.peek() {
            if due > now {
                return;
            }
            self.comebacks.pop();
            if self.conns[local].state != State::Away {
                continue;
            }
            match self.open(local) {
                Ok(()) => self.in_flight += 1,
                Err(e) => self.fail(local, "connect", &e),
            }
        }
    }

    /// The server ended the connection, or would not take it: it comes back after its
    /// `retry`, as EventSource does (counted neither as failed nor as closed).
    fn go_away(&mut self, local: usize, refused: bool) {
        let conn = &mut self.conns[local];
        if matches!(conn.state, State::Connecting | State::AwaitHead) {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        if let Some(mut stream) = conn.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        conn.tls = None;
        conn.h2 = None;
        conn.state = State::Away;
        // Only HTTP/1.1 connections come back: one subscriber each.
        let sub = &mut conn.subs[0];
        sub.answer = Answer::Waiting;
        conn.retry_ms = sub.parser.retry_ms().unwrap_or(conn.retry_ms);
        if !conn.away {
            conn.away = true;
            self.away += 1;
        }
        self.counters.refused += u64::from(refused);
        let due = sys::mono_ns() + conn.retry_ms * 1_000_000;
        self.comebacks.push(Reverse((due, local)));
    }

    /// At the end of a phase: whatever a live connection has not received by now is lost.
    fn count_missing(&mut self, bcast_sent: u64, targeted_sent: u64) {
        let n = self.setup.subscribers();
        let subs = self.conns.iter_mut().flat_map(|c| c.subs.iter_mut());
        for sub in subs.filter(|s| s.answer == Answer::Streaming) {
            let t = &mut sub.track;
            if t.next_b < bcast_sent {
                self.counters.lost_b += bcast_sent - t.next_b;
                t.next_b = bcast_sent;
            }
            // The first targeted number at or past `targeted_sent` that is this connection's.
            let end = if t.index < targeted_sent {
                t.index + (targeted_sent - t.index).div_ceil(n) * n
            } else {
                t.index
            };
            if t.next_t < end {
                self.counters.lost_t += (end - t.next_t) / n;
                t.next_t = end;
            }
        }
    }

    fn open_more(&mut self) {
        while self.in_flight < self.setup.window && self.opened < self.conns.len() {
            let local = self.opened;
            self.opened += 1;
            // Failed ones stay failed: they were counted, and a phase that had any stops the run.
            if self.conns[local].state != State::Idle {
                continue;
            }
            match self.open(local) {
                Ok(()) => self.in_flight += 1,
                Err(e) => self.fail(local, "connect", &e),
            }
        }
        if self.opened == self.conns.len() {
            self.connecting = false;
        }
    }

    fn open(&mut self, local: usize) -> io::Result<()> {
        let conn = &mut self.conns[local];
        let sse = self.setup.target(conn.index).addr;
        let sock = Socket::new(Domain::for_address(sse), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
        if !self.setup.src.is_empty() {
            let src = self.setup.src[conn.index as usize % self.setup.src.len()];
            sys::set_bind_address_no_port(&sock)?;
            sock.bind(&SocketAddr::new(src, 0).into())?;
        }
        match sock.connect(&sse.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(Errno::EINPROGRESS as i32) => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(sock.into());
        self.poll.registry().register(&mut stream, Token(local), Interest::READABLE | Interest::WRITABLE)?;
        conn.stream = Some(stream);
        conn.state = State::Connecting;
        for sub in conn.subs.iter_mut() {
            sub.parser = self.setup.parser();
            sub.answer = Answer::Waiting;
        }
        Ok(())
    }

    /// Closes every handshaked connection (as a client that goes away, without a TLS
    /// close_notify); each keeps what it expects next, to resume, and TLS sessions to resume
    /// stay in the client's session store.
    fn disconnect(&mut self) {
        for conn in self.conns.iter_mut().filter(|c| c.state == State::Streaming) {
            if let Some(mut stream) = conn.stream.take() {
                let _ = self.poll.registry().deregister(&mut stream);
            }
            conn.tls = None;
            conn.h2 = None;
            conn.state = State::Idle;
            for sub in conn.subs.iter_mut().filter(|s| s.answer == Answer::Streaming) {
                sub.answer = Answer::Waiting;
            }
        }
    }

    /// Marks a connection dead and counts why, for each of its subscribers still counted as
    /// open; one that is to come back goes away instead, unless its stream broke the protocol.
    fn fail(&mut self, local: usize, what: &str, err: &dyn std::fmt::Display) {
        if self.come_back && !matches!(what, "protocol" | "tls") {
            return self.go_away(local, what == "connect");
        }
        let conn = &mut self.conns[local];
        let was = conn.state;
        conn.state = State::Dead;
        conn.stream = None;
        conn.tls = None;
        conn.h2 = None;
        if matches!(was, State::Idle | State::Connecting | State::AwaitHead) {
            self.in_flight = self.in_flight.saturating_sub(u32::from(was != State::Idle));
        }
        for sub in conn.subs.iter_mut() {
            end(sub, &mut self.counters, what, err);
        }
    }

    fn ready(&mut self, local: usize, ev: &mio::event::Event) {
        let Some(state) = self.conns.get(local).map(|c| c.state) else { return };
        match state {
            State::Connecting => {
                if ev.is_writable() || ev.is_error() || ev.is_read_closed() || ev.is_write_closed() {
                    self.connected(local);
                }
            }
            State::AwaitHead | State::Streaming if self.setup.tls.is_some() => self.tls_io(local),
            // h2c: what the socket did not take before goes first.
            State::AwaitHead | State::Streaming if self.setup.http2 => {
                if self.send_h2(local) {
                    self.read(local);
                }
            }
            State::AwaitHead | State::Streaming => self.read(local),
            State::Idle | State::Away | State::Dead => {}
        }
    }

    /// The connect has finished, one way or the other: send the request.
    fn connected(&mut self, local: usize) {
        let conn = &mut self.conns[local];
        let Some(stream) = conn.stream.as_mut() else { return };
        let err = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => None,
        };
        if let Some(e) = err {
            return self.fail(local, "connect", &e);
        }
        match stream.peer_addr() {
            Ok(_) => {}
            // A readiness report before the connect finished: wait for the next one.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => return self.fail(local, "connect", &e),
        }
        if let Some(tls) = &self.setup.tls {
            return self.start_tls(local, tls.clone());
        }
        if self.setup.http2 {
            return self.start_h2c(local);
        }
        subscription_request(&mut self.request, &self.setup, conn.index, &conn.subs[0].track);
        let res = stream.write(&self.request);
        let res = match res {
            Ok(n) if n == self.request.len() => {
                self.poll.registry().reregister(stream, Token(local), Interest::READABLE)
            }
            Ok(_) => Err(io::Error::new(io::ErrorKind::WriteZero, "short write of the request")),
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => {
                conn.state = State::AwaitHead;
                // The response may already be there; edge-triggered readiness would not repeat it.
                self.read(local);
            }
            Err(e) => self.fail(local, "request", &e),
        }
    }

    /// Reads until the socket is drained.
    fn read(&mut self, local: usize) {
        loop {
            let conn = &mut self.conns[local];
            let Some(stream) = conn.stream.as_mut() else { return };
            let got = match stream.read(&mut self.buf) {
                Ok(0) => {
                    return self.fail(local, "closed by the server", &"EOF");
                }
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return self.fail(local, "read", &e);
                }
            };
            if !self.feed(local, got, sys::mono_ns()) {
                return;
            }
            // A read shorter than the buffer emptied the socket's queue: data arriving later
            // raises a new edge, so the extra read that would say WouldBlock is skipped.
            if got < self.buf.len() {
                return;
            }
        }
    }

    /// Parses `buf[..got]`, received at `now`; false when that failed the connection.
    fn feed(&mut self, local: usize, got: usize, now: u64) -> bool {
        if self.setup.http2 {
            return self.feed_h2(local, got, now);
        }
        let n = self.setup.subscribers();
        let conn = &mut self.conns[local];
        let mut ctx = Ctx { counters: &mut self.counters, n, now };
        let Sub { parser, track, answer } = &mut conn.subs[0];
        let res = parser.feed(&self.buf[..got], |ev| on_event(ev, track, &mut ctx));
        if conn.state == State::AwaitHead && parser.handshaked() {
            conn.state = State::Streaming;
            *answer = Answer::Streaming;
            self.in_flight -= 1;
            self.counters.handshaked += 1;
            self.counters.last_handshake = now;
            if conn.away {
                conn.away = false;
                self.away -= 1;
                self.counters.returned += 1;
            }
        }
        match res {
            Ok(()) => true,
            // The server ended the stream: one that is to come back does.
            Err(ProtoError::EndOfStream) if self.come_back => {
                self.go_away(local, false);
                false
            }
            Err(e) => {
                self.fail(local, "protocol", &format!("{e:?}"));
                false
            }
        }
    }

    /// Over HTTP/2, takes in `buf[..got]`, received at `now`: each stream's DATA to its
    /// parser, and the answers the frames call for sent; false when the connection is gone.
    fn feed_h2(&mut self, local: usize, got: usize, now: u64) -> bool {
        let n = self.setup.subscribers();
        let conn = &mut self.conns[local];
        let Some(client) = conn.h2.as_mut() else { return false };
        let mut ctx = Ctx { counters: &mut self.counters, n, now };
        let subs = &mut conn.subs;
        if let Err(e) = client.feed(&self.buf[..got], |seen| on_seen(seen, subs, &mut ctx)) {
            self.fail(local, "protocol", &e);
            return false;
        }
        if !self.send_h2(local) {
            return false;
        }
        let conn = &mut self.conns[local];
        if conn.state == State::AwaitHead && conn.subs.iter().all(|s| s.answer != Answer::Waiting) {
            conn.state = State::Streaming;
            self.in_flight -= 1;
        }
        if conn.subs.iter().all(|s| s.answer == Answer::Ended) {
            // Every stream failed and was counted: the connection is of no more use.
            self.fail(local, "closed by the server", &"every stream ended");
            return false;
        }
        true
    }

    /// A new HTTP/2 session for connection `local`, every stream's request queued in it.
    fn h2_session(&self, local: usize) -> Box<h2::Client> {
        let conn = &self.conns[local];
        let mut client = Box::new(h2::Client::new(conn.subs.len()));
        let scheme: &[u8] = if self.setup.tls.is_some() { b"https" } else { b"http" };
        let authority = self.setup.target(conn.index).text.as_bytes();
        let bearer = self.setup.bearer.as_ref().map(|token| format!("Bearer {token}"));
        for (slot, sub) in conn.subs.iter().enumerate() {
            let path = subscription_target(&self.setup.path, sub.track.index);
            let last_id = sub.track.last_id.map(|id| id.to_string());
            let mut fields = vec![
                (":method", &b"GET"[..]),
                (":scheme", scheme),
                (":path", path.as_bytes()),
                (":authority", authority),
                ("user-agent", self.setup.user_agent.as_deref().unwrap_or("hasses-bench").as_bytes()),
            ];
            fields.extend(last_id.as_ref().map(|id| ("last-event-id", id.as_bytes())));
            fields.extend(bearer.as_ref().map(|value| ("authorization", value.as_bytes())));
            client.request(slot, fields);
        }
        client
    }

    /// The TCP connect is done, without TLS: HTTP/2 with prior knowledge (h2c), the preface
    /// and every stream's request sent at once. The socket stays registered for writability:
    /// what does not fit waits in the session until it does.
    fn start_h2c(&mut self, local: usize) {
        let client = self.h2_session(local);
        let conn = &mut self.conns[local];
        conn.h2 = Some(client);
        conn.state = State::AwaitHead;
        if self.send_h2(local) {
            self.read(local);
        }
    }

    /// Sends what the HTTP/2 session holds: over TLS into the session (sent by [`Self::tls_io`]),
    /// else to the socket, as much as it takes. False when that failed the connection.
    fn send_h2(&mut self, local: usize) -> bool {
        let conn = &mut self.conns[local];
        let (Some(client), Some(stream)) = (conn.h2.as_mut(), conn.stream.as_mut()) else { return false };
        let out = client.out();
        let sent = match conn.tls.as_mut() {
            Some(tls) => tls.writer().write_all(out).map(|()| out.len()),
            None => match stream.write(out) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                other => other,
            },
        };
        match sent {
            Ok(sent) => {
                out.drain(..sent);
                true
            }
            Err(e) => {
                self.fail(local, "write", &e);
                false
            }
        }
    }

    /// The TCP connect is done: starts the TLS session with the request (or HTTP/2's opening
    /// and requests) already queued in it (rustls sends it once the handshake is over) and
    /// sends the ClientHello. The socket stays registered for writability as well: a TLS
    /// flight may not fit the socket at once.
    fn start_tls(&mut self, local: usize, setup: TlsSetup) {
        let conn = &self.conns[local];
        let mut session = match setup.session(self.setup.target_number(conn.index)) {
            Ok(session) => Box::new(session),
            Err(e) => return self.fail(local, "tls", &e),
        };
        let request = if self.setup.http2 {
            let mut client = self.h2_session(local);
            let opening = std::mem::take(client.out());
            self.conns[local].h2 = Some(client);
            opening
        } else {
            subscription_request(&mut self.request, &self.setup, conn.index, &conn.subs[0].track);
            std::mem::take(&mut self.request)
        };
        let written = session.writer().write_all(&request);
        if !self.setup.http2 {
            self.request = request;
        }
        if let Err(e) = written {
            return self.fail(local, "request", &e);
        }
        let conn = &mut self.conns[local];
        conn.tls = Some(session);
        conn.state = State::AwaitHead;
        self.tls_io(local);
    }

    /// Sends what TLS holds, then reads ciphertext until the socket is drained, handing the
    /// plaintext to the parser; sends again whatever the records read called for.
    fn tls_io(&mut self, local: usize) {
        loop {
            if !self.tls_send(local) {
                return;
            }
            let conn = &mut self.conns[local];
            let Some(stream) = conn.stream.as_mut() else { return };
            let got = match stream.read(&mut self.cipher) {
                Ok(0) => return self.fail(local, "closed by the server", &"EOF"),
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(local, "read", &e),
            };
            let now = sys::mono_ns();
            let mut done = 0;
            while done < got {
                let conn = &mut self.conns[local];
                let Some(tls) = conn.tls.as_mut() else { return };
                let mut input = &self.cipher[done..got];
                match tls.read_tls(&mut input) {
                    Ok(taken) => done += taken,
                    Err(e) => return self.fail(local, "tls", &e),
                }
                let was_handshaking = tls.is_handshaking();
                if let Err(e) = tls.process_new_packets() {
                    // Send the alert rustls queued, as a client would, then give up.
                    self.tls_send(local);
                    return self.fail(local, "tls", &e);
                }
                if was_handshaking && !tls.is_handshaking() {
                    if self.setup.http2 && tls.alpn_protocol() != Some(b"h2") {
                        return self.fail(local, "tls", &"the server did not choose h2 (ALPN)");
                    }
                    self.counters.tls_handshaked += 1;
                    self.counters.tls_resumed +=
                        u64::from(tls.handshake_kind() == Some(HandshakeKind::Resumed));
                    self.counters.last_tls_handshake = now;
                }
                if !self.tls_plaintext(local, now) {
                    return;
                }
            }
            if got < self.cipher.len() {
                self.tls_send(local);
                return;
            }
        }
    }

    /// Parses all the plaintext TLS has decrypted; false when the connection is gone.
    fn tls_plaintext(&mut self, local: usize, now: u64) -> bool {
        loop {
            let conn = &mut self.conns[local];
            let Some(tls) = conn.tls.as_mut() else { return false };
            match tls.reader().read(&mut self.buf) {
                Ok(0) => {
                    self.fail(local, "closed by the server", &"close_notify");
                    return false;
                }
                Ok(got) => {
                    if !self.feed(local, got, now) {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    self.fail(local, "tls", &e);
                    return false;
                }
            }
        }
    }

    /// Writes what TLS holds until done or the socket is full; false when that failed the
    /// connection.
    fn tls_send(&mut self, local: usize) -> bool {
        let conn = &mut self.conns[local];
        let (Some(tls), Some(stream)) = (conn.tls.as_mut(), conn.stream.as_mut()) else { return false };
        while tls.wants_write() {
            match tls.write_tls(stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(local, "write", &e);
                    return false;
                }
            }
        }
        true
    }
}

/// What subscriber `i` asks for: `all` and its own `c<i>`.
fn subscription_target(path: &str, i: u64) -> String {
    format!("{path}?subscribe=all-c{i}&id=c{i}")
}

/// Puts connection `index`'s subscription request (its one subscriber's, `track`) in
/// `request`, resuming after the last event it received, if any.
fn subscription_request(request: &mut Vec<u8>, setup: &Setup, index: u64, track: &Track) {
    request.clear();
    let _ = write!(
        request,
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nConnection: keep-alive\r\n",
        subscription_target(&setup.path, track.index),
        setup.target(index).text
    );
    if let Some(id) = track.last_id {
        let _ = write!(request, "Last-Event-ID: {id}\r\n");
    }
    if let Some(token) = &setup.bearer {
        let _ = write!(request, "Authorization: Bearer {token}\r\n");
    }
    if let Some(agent) = &setup.user_agent {
        let _ = write!(request, "User-Agent: {agent}\r\n");
    }
    request.extend_from_slice(b"\r\n");
}

/// Ends a subscriber, counting why, unless it was already: a protocol error; closed (it had
/// been answered); or failed to connect (it had not).
fn end(sub: &mut Sub, counters: &mut Counters, what: &str, err: &dyn std::fmt::Display) {
    let answered = match sub.answer {
        Answer::Ended => return,
        Answer::Streaming => true,
        Answer::Waiting => false,
    };
    sub.answer = Answer::Ended;
    match (what, answered) {
        ("protocol", _) => counters.proto_errors += 1,
        (_, true) => counters.closed += 1,
        _ => counters.connect_failed += 1,
    }
    if counters.error_samples.len() < ERROR_SAMPLES {
        counters.error_samples.push(format!("c{}: {what}: {err}", sub.track.index));
    }
}

/// Acts on what an HTTP/2 connection's frames said about its streams, `subs`.
fn on_seen(seen: Seen<'_>, subs: &mut [Sub], cx: &mut Ctx<'_>) {
    match seen {
        Seen::Head { slot, status, ended } => {
            let sub = &mut subs[slot];
            match (sub.answer, status, ended) {
                (Answer::Waiting, Some(200), false) => {
                    sub.answer = Answer::Streaming;
                    cx.counters.handshaked += 1;
                    cx.counters.last_handshake = cx.now;
                }
                (Answer::Waiting, status, _) => {
                    end(sub, cx.counters, "protocol", &format!("answered {status:?}"))
                }
                (Answer::Streaming, _, true) => end(sub, cx.counters, "closed by the server", &"END_STREAM"),
                _ => {}
            }
        }
        Seen::Data { slot, bytes } => {
            let Sub { parser, track, answer } = &mut subs[slot];
            match answer {
                // A bare parser never fails.
                Answer::Streaming => {
                    let _ = parser.feed(bytes, |ev| on_event(ev, track, cx));
                }
                Answer::Waiting => {
                    end(&mut subs[slot], cx.counters, "protocol", &"DATA before the response head")
                }
                Answer::Ended => {}
            }
        }
        Seen::End { slot } => end(&mut subs[slot], cx.counters, "closed by the server", &"END_STREAM"),
        Seen::Reset { slot, code } => end(
            &mut subs[slot],
            cx.counters,
            "reset by the server",
            &format!("RST_STREAM {}", h2::code_name(code)),
        ),
        Seen::GoAway { last, code } => {
            // Streams after `last` will not be answered; on an error, none will go on.
            let why = format!("GOAWAY {} (last stream {last})", h2::code_name(code));
            for (slot, sub) in subs.iter_mut().enumerate() {
                if code != 0 || h2::stream_id(slot) > last {
                    end(sub, cx.counters, "closed by the server", &why);
                }
            }
        }
    }
}

/// Counts one event on one subscriber.
#[inline]
fn on_event(ev: &Event, t: &mut Track, cx: &mut Ctx<'_>) {
    let c = &mut *cx.counters;
    if ev.named {
        c.resets += 1;
        return;
    }
    match (ev.id, t.last_id) {
        (Some(id), Some(last)) if id <= last => c.id_errors += 1,
        (Some(id), _) => t.last_id = Some(id),
        (None, _) => c.id_errors += 1,
    }
    match (ev.kind, ev.count) {
        (b'b', 2..) => {
            let seq = ev.nums[0];
            if seq == t.next_b {
                t.next_b += 1;
            } else if seq > t.next_b {
                c.lost_b += seq - t.next_b;
                t.next_b = seq + 1;
            } else {
                c.dup_b += 1;
            }
            c.delivered_b += 1;
            let lat = cx.now.saturating_sub(ev.nums[1]);
            c.latency.record(lat);
            c.last_b.record(seq, lat);
        }
        (b't', 3..) => {
            let (seq, target) = (ev.nums[0], ev.nums[2]);
            c.delivered_t += 1;
            if target != t.index || seq % cx.n != t.index {
                c.misrouted += 1;
            } else if seq == t.next_t {
                t.next_t += cx.n;
            } else if seq > t.next_t {
                c.lost_t += (seq - t.next_t) / cx.n;
                t.next_t = seq + cx.n;
            } else {
                c.dup_t += 1;
            }
            let lat = cx.now.saturating_sub(ev.nums[1]);
            c.latency.record(lat);
            c.last_t.record(seq, lat);
        }
        _ => c.foreign += 1,
    }
    if c.first_recv == 0 {
        c.first_recv = cx.now;
    }
    c.last_recv = cx.now;
}
