//! A shard: one worker thread, its own epoll loop, listener, connections and subscription index.
//!
//! Owns every connection it accepted, from accept to close, and everything about them: reading
//! requests, handshakes, delivering events, timeouts, its own counters. It shares nothing
//! mutable with other threads: commands arrive already parsed on its channel, and its figures
//! leave as answers on channels carried in the requests. The hot path (a publish) takes no lock.

mod connection;
mod outbox;
mod stalls;
pub mod subscriptions;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;
use slab::Slab;
use tracing::{debug, info, warn};

use crate::control::command::Target;
use crate::http::{self, Judgement, Responses, Route};
use crate::sse::{self, Frame};
use crate::stats::{ClientRow, ShardFigures};
use crate::tls::Tls;
use connection::{Client, Connection, Peer, Phase};
use outbox::Flushed;
use stalls::Stalls;
use subscriptions::{Subscriptions, EVERYTHING};

/// The listener's token, at the top of the range where no slab key reaches.
const LISTENER: Token = Token(usize::MAX - 1);
/// The waker's token: commands are waiting on the channel.
const WAKER: Token = Token(usize::MAX);
/// How many readiness events one `epoll_wait` returns at most.
const EVENTS_PER_POLL: usize = 1024;
/// How long accepting pauses when the process is out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How often a worker out of descriptors says so.
const ACCEPT_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// How much one `read` takes from a socket.
const READ_CHUNK: usize = 4096;
/// A run of publishes is offered once it holds this many bytes: a burst of small events still
/// goes as one queue entry per client, while the most a run can put over a client's cap before
/// the shard tries to write stays small.
const RUN_BYTES: usize = 64 * 1024;

/// Settings and counters every shard and the control thread share.
#[derive(Debug)]
pub struct Shared {
    /// The path SSE clients request.
    pub route: Route,
    /// The fixed responses.
    pub responses: Responses,
    /// A client whose unsent bytes would exceed this is dropped.
    pub max_backlog: usize,
    /// A connection that has not handshaked after this long is closed.
    pub handshake_timeout: Duration,
    /// A handshaked connection is closed this long after its last handshake.
    pub max_age: Duration,
    /// Every streaming client with nothing queued gets a comment this often.
    pub heartbeat: Option<Duration>,
    /// The kernel hands over connections with their request already there (`--defer-accept`).
    pub read_on_accept: bool,
    /// Serve HTTPS with these settings.
    pub tls: Option<Tls>,
    /// Connections beyond this many open at once are refused with 503.
    pub max_connections: Option<u64>,
    /// Connections beyond a number per IP are refused with 503.
    pub per_ip: Option<PerIpLimit>,
    /// Whether a handshaked connection may send a new `GET` to re-handshake.
    pub reinit: AtomicBool,
    /// Open connections across all shards, to know the peak (touched on accept and close only).
    pub open: AtomicU64,
    /// The most connections that were ever open at once.
    pub peak: AtomicU64,
    /// The id of the last event the control thread accepted, set before it is fanned out. A
    /// handshake reads it, so that a client never gets an event published before it subscribed,
    /// whichever shard it is on and however far behind that shard's queue is.
    pub published: AtomicU64,
}

/// Open connections per client IP, server-wide. Locked on accept and close only, and only
/// when `--max-connections-per-ip` is set: never on the publish path.
#[derive(Debug)]
pub struct PerIpLimit {
    limit: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl PerIpLimit {
    /// At most `limit` (at least 1) connections from one IP.
    pub fn new(limit: u32) -> Self {
        PerIpLimit { limit, open: Mutex::new(HashMap::new()) }
    }

    /// Counts one more connection from `ip`, unless it already has its limit.
    fn try_open(&self, ip: IpAddr) -> bool {
        let mut open = self.open.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return false;
        }
        *count += 1;
        true
    }

    fn close(&self, ip: IpAddr) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// A message to deliver, parsed and framed once by the control thread.
#[derive(Debug)]
pub struct Delivery {
    /// Its event id: increasing, so it also orders publishes.
    pub id: u64,
    /// Who gets it.
    pub target: Target,
    /// The `id` of a client that must not get it.
    pub except: Option<String>,
    /// The encoded event, shared by every recipient.
    pub frame: Frame,
}

impl Delivery {
    /// Whether `other` goes to exactly the clients this one goes to.
    fn same_audience(&self, other: &Delivery) -> bool {
        self.target == other.target && self.except == other.except
    }
}

/// What the control thread asks of a shard.
#[derive(Debug)]
pub enum ShardCommand {
    /// Queue this event for every matching client.
    Publish(Arc<Delivery>),
    /// Answer with this shard's counters.
    Figures(Sender<ShardFigures>),
    /// Answer with a row per connection.
    ClientList(Sender<Vec<ClientRow>>),
    /// Answer with how many connections listen to exactly this token.
    CountSubscribed(Arc<str>, Sender<u64>),
    /// Close every connection and end the thread.
    Shutdown,
}

/// How the control thread reaches one shard.
#[derive(Debug, Clone)]
pub struct ShardHandle {
    /// Commands, in order.
    pub commands: Sender<ShardCommand>,
    /// Wakes the shard's `epoll_wait` after commands were sent.
    pub waker: Arc<Waker>,
}

/// A connection that must be gone by a deadline unless it moved on since: the same key and
/// serial (the same connection, and no newer handshake: a reinit takes a new serial). There is
/// one per connection in each queue, so it is kept to 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    /// Milliseconds from the shard's start.
    at: u64,
    key: u32,
    /// Serials wrap; a stale deadline would match only after 2^32 newer handshakes on this
    /// shard while it waits, far beyond any --max-age.
    serial: u32,
}

/// Counters only this shard writes.
#[derive(Debug, Default)]
struct Counters {
    handshakes: u64,
    reinits: u64,
    deliveries: u64,
    dropped_slow: u64,
    refused: u64,
}

/// One worker's state. Built on its own thread and never leaves it.
pub struct Shard {
    number: usize,
    poll: Poll,
    listener: TcpListener,
    commands: Receiver<ShardCommand>,
    /// Held for as long as the shard runs: when the control thread drops its handles first,
    /// closing the last reference would take the eventfd out of epoll with a wake in flight.
    _waker: Arc<Waker>,
    shared: Arc<Shared>,
    connections: Slab<Connection>,
    subscriptions: Subscriptions,
    /// Handshake deadlines in accept order; with one timeout for all, that is deadline order.
    handshake_deadlines: VecDeque<Deadline>,
    /// Max-age deadlines in handshake order, likewise sorted.
    age_deadlines: VecDeque<Deadline>,
    /// Connections given new bytes while draining commands, flushed once after the drain.
    dirty: Vec<usize>,
    /// Consecutive publishes to one audience, gathered while draining commands (kept to reuse
    /// its allocation).
    run: Vec<Arc<Delivery>>,
    /// The bytes of the events in `run`.
    run_bytes: usize,
    /// Clients over the cap: while any is held, commands wait on the channel.
    stalls: Stalls,
    /// Commands were left on the channel for a held client: drain them once none is held (the
    /// waker will not fire again for them).
    commands_held: bool,
    next_serial: u32,
    counters: Counters,
    read_buf: Box<[u8; READ_CHUNK]>,
    stopping: bool,
    /// The origin of the shard's seconds clock, which connections keep their times on.
    started: Instant,
    /// When idle streams next get a heartbeat comment.
    next_heartbeat: Option<Instant>,
    /// Accepting is paused until then (out of descriptors).
    accept_paused_until: Option<Instant>,
    /// Accepts that failed for want of descriptors since the last report.
    accept_failures: u64,
    /// When the next report of failed accepts may be written.
    accept_report_due: Option<Instant>,
}

impl Shard {
    /// A shard around its listener, and the handle the control thread reaches it by.
    pub fn new(
        number: usize,
        mut listener: TcpListener,
        shared: Arc<Shared>,
        queue: usize,
    ) -> io::Result<(Self, ShardHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let (sender, commands) = bounded(queue);
        let handle = ShardHandle { commands: sender, waker: Arc::clone(&waker) };
        let shard = Shard {
            number,
            poll,
            listener,
            commands,
            _waker: waker,
            connections: Slab::new(),
            subscriptions: Subscriptions::default(),
            handshake_deadlines: VecDeque::new(),
            age_deadlines: VecDeque::new(),
            dirty: Vec::new(),
            run: Vec::new(),
            run_bytes: 0,
            stalls: Stalls::default(),
            commands_held: false,
            next_serial: 0,
            counters: Counters::default(),
            read_buf: Box::new([0; READ_CHUNK]),
            stopping: false,
            started: Instant::now(),
            next_heartbeat: shared.heartbeat.and_then(|every| Instant::now().checked_add(every)),
            accept_paused_until: None,
            accept_failures: 0,
            accept_report_due: None,
            shared,
        };
        Ok((shard, handle))
    }

    /// Runs the event loop until a `Shutdown` command, then closes every connection.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        while !self.stopping {
            let timeout = self.next_deadline().map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.drain_commands(),
                    Token(key) => {
                        // A hang-up or error shows up as a failed or empty read.
                        let hung_up = event.is_read_closed() || event.is_error();
                        let readable = event.is_readable() || hung_up;
                        self.handle_socket(key, readable, event.is_writable(), hung_up);
                    }
                }
            }
            let now = Instant::now();
            self.expire(now);
            self.beat(now);
            self.resume_accepting(now);
            if self.commands_held && self.stalls.is_empty() {
                self.drain_commands();
            }
        }
        self.close_all();
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let first = |q: &VecDeque<Deadline>| {
            q.front().and_then(|d| self.started.checked_add(Duration::from_millis(d.at)))
        };
        let stall =
            self.stalls.next_deadline().and_then(|at| self.started.checked_add(Duration::from_millis(at)));
        let timers = [self.next_heartbeat, self.accept_paused_until, stall];
        [first(&self.handshake_deadlines), first(&self.age_deadlines)]
            .into_iter()
            .chain(timers)
            .flatten()
            .min()
    }

    fn accept_all(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            match self.listener.accept() {
                // `[::]` listeners see IPv4 clients as `::ffff:a.b.c.d`; show them as hasses did.
                Ok((socket, peer)) => {
                    self.admit(socket, Peer(SocketAddr::new(peer.ip().to_canonical(), peer.port())))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_out_of_descriptors(&e) => return self.pause_accepting(&e),
                // The client gave up before we took it (ECONNABORTED and the like): next one.
                Err(e) => debug!("Accept failed on worker {}: {e}", self.number),
            }
        }
    }

    /// Out of descriptors: leave new connections queued in the kernel for a moment rather than
    /// spin on a listener that stays readable; report it once per interval, not per attempt.
    fn pause_accepting(&mut self, error: &io::Error) {
        let now = Instant::now();
        self.accept_paused_until = Some(now + ACCEPT_PAUSE);
        self.accept_failures += 1;
        if self.accept_report_due.is_none_or(|due| due <= now) {
            warn!(
                "Accepting paused on worker {}: {error} ({} times since the last report)",
                self.number, self.accept_failures
            );
            self.accept_failures = 0;
            self.accept_report_due = Some(now + ACCEPT_REPORT_INTERVAL);
        }
    }

    /// Accepts again once a pause is over: the kernel will not signal connections that were
    /// already queued while paused.
    fn resume_accepting(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| until <= now) {
            self.accept_paused_until = None;
            self.accept_all();
        }
    }

    fn admit(&mut self, socket: mio::net::TcpStream, peer: Peer) {
        let open = self.shared.open.fetch_add(1, Ordering::Relaxed) + 1;
        if self.shared.max_connections.is_some_and(|max| open > max) {
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            return self.refuse(socket, peer, "connection limit");
        }
        if self.shared.per_ip.as_ref().is_some_and(|limit| !limit.try_open(peer.0.ip())) {
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            return self.refuse(socket, peer, "connection limit per IP");
        }
        self.shared.peak.fetch_max(open, Ordering::Relaxed);
        let tls = match self.shared.tls.as_ref().map(Tls::session).transpose() {
            Ok(tls) => tls.map(Box::new),
            Err(e) => {
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
                if let Some(limit) = &self.shared.per_ip {
                    limit.close(peer.0.ip());
                }
                return warn!("Cannot start TLS for {peer}: {e}");
            }
        };
        let key = self.connections.vacant_key();
        let now = Instant::now();
        let serial = self.new_serial();
        info!("Connection accepted: {peer} <{}> worker {}", socket.as_raw_fd(), self.number);
        self.connections.insert(Connection::accepted(socket, tls, peer, serial, seconds(self.started, now)));
        let conn = &mut self.connections[key];
        if let Err(e) = self.poll.registry().register(&mut conn.socket, Token(key), Interest::READABLE) {
            return self.close(key, &format!("cannot watch socket: {e}"));
        }
        let at = self.deadline(now, self.shared.handshake_timeout);
        self.handshake_deadlines.push_back(Deadline { at, key: key as u32, serial });
        if self.shared.read_on_accept {
            // The request is there already: read it now rather than after another wait. No
            // event said whether the peer closed after sending it: read to the end.
            self.read(key, true);
        }
    }

    /// Answers 503 to a connection over a limit, and closes it.
    fn refuse(&mut self, mut socket: mio::net::TcpStream, peer: Peer, limit: &str) {
        self.counters.refused += 1;
        info!("Connection refused: {peer} ({limit})");
        // Take what it sent first: closing with unread bytes would reset the connection, and
        // the client could lose the answer. A fresh socket takes this small answer whole.
        let _ = socket.read(&mut self.read_buf[..]);
        let _ = socket.write(&self.shared.responses.unavailable);
        let _ = socket.shutdown(std::net::Shutdown::Write);
    }

    fn handle_socket(&mut self, key: usize, readable: bool, writable: bool, hung_up: bool) {
        if !self.connections.contains(key) {
            return;
        }
        if writable {
            self.flush(key);
        }
        if readable && self.connections.contains(key) {
            self.read(key, hung_up);
        }
    }

    /// Reads until the socket has nothing more, acting on what arrives. A read shorter than
    /// the buffer emptied the socket: data arriving later raises a new edge, so the read that
    /// would only say `WouldBlock` (one syscall per request) is skipped, unless the peer may
    /// have closed (`hung_up`), which only a read of 0 bytes tells.
    fn read(&mut self, key: usize, hung_up: bool) {
        if self.connections[key].tls.is_some() {
            return self.read_tls(key);
        }
        loop {
            let conn = &mut self.connections[key];
            match conn.socket.read(&mut self.read_buf[..]) {
                Ok(0) => return self.close(key, "closed by peer"),
                Ok(n) => {
                    self.received(key, n);
                    if !self.connections.contains(key) || (n < self.read_buf.len() && !hung_up) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(key, &e.to_string()),
            }
        }
    }

    /// Reads TLS records until the socket has nothing more, acting on the plaintext in them,
    /// then sends what TLS wants to (handshake messages, alerts).
    fn read_tls(&mut self, key: usize) {
        loop {
            let conn = &mut self.connections[key];
            let Some(tls) = conn.tls.as_mut() else { return };
            match tls.read_tls(&mut conn.socket) {
                Ok(0) => return self.close(key, "closed by peer"),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.close(key, &e.to_string()),
            }
            if let Err(e) = tls.process_new_packets() {
                // Tell the peer why (the alert rustls queued), then give up on it.
                let _ = outbox::send_tls(tls, &mut conn.socket);
                info!("TLS failed with {}: {e}", conn.peer);
                return self.close(key, &format!("TLS error: {e}"));
            }
            if !self.take_plaintext(key) {
                return;
            }
        }
        self.flush(key);
    }

    /// Acts on all the plaintext TLS has decrypted, which epoll will not signal again; false
    /// when the connection is gone.
    fn take_plaintext(&mut self, key: usize) -> bool {
        loop {
            let Some(tls) = self.connections[key].tls.as_mut() else { return true };
            match tls.reader().read(&mut self.read_buf[..]) {
                Ok(0) => {
                    self.close(key, "closed by peer");
                    return false;
                }
                Ok(n) => {
                    self.received(key, n);
                    if !self.connections.contains(key) {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    self.close(key, &e.to_string());
                    return false;
                }
            }
        }
    }

    /// Acts on `n` bytes just read into `read_buf`.
    fn received(&mut self, key: usize, n: usize) {
        let takes_request = match self.connections[key].phase {
            Phase::Handshaking => true,
            Phase::Streaming => self.wants_reinit(key, n),
            Phase::Closing => false,
        };
        let conn = &mut self.connections[key];
        if !takes_request {
            debug!("Data ignored from {} ({n} bytes)", conn.peer);
            return;
        }
        conn.request.extend_from_slice(&self.read_buf[..n]);
        let judgement = http::judge(&conn.request, &self.shared.route);
        if judgement != Judgement::Incomplete && tracing::enabled!(tracing::Level::DEBUG) {
            debug!("Request from {}: {}", conn.peer, request_line(&conn.request));
        }
        self.answer(key, judgement);
    }

    /// True when data from a streaming client is (the start of) a reinit request to act on.
    fn wants_reinit(&self, key: usize, n: usize) -> bool {
        let conn = &self.connections[key];
        if !self.shared.reinit.load(Ordering::Relaxed) {
            return false;
        }
        // A request in progress keeps accumulating; otherwise only a new `GET ` starts one.
        let data = &self.read_buf[..n];
        !conn.request.is_empty() || data.starts_with(b"GET ") || b"GET ".starts_with(data)
    }

    fn answer(&mut self, key: usize, judgement: Judgement) {
        let conn = &mut self.connections[key];
        let responses = &self.shared.responses;
        let reply = match judgement {
            Judgement::Incomplete => return,
            Judgement::Subscribe(request) => return self.handshake(key, Client::from_request(request)),
            Judgement::Head => responses.head.clone(),
            Judgement::Options => responses.options.clone(),
            Judgement::Reject(reject) => {
                info!("Request refused from {}: {} {reject}", conn.peer, reject.status());
                responses.error(&reject)
            }
        };
        self.stop_streaming(key);
        let conn = &mut self.connections[key];
        conn.request = Vec::new();
        conn.phase = Phase::Closing;
        conn.outbox.push(reply);
        self.flush(key);
    }

    /// A first handshake or a reinit: (re)subscribes the client and sends the response head.
    fn handshake(&mut self, key: usize, mut client: Client) {
        let now = Instant::now();
        let reinit = self.connections[key].phase == Phase::Streaming;
        if reinit {
            let old = &self.connections[key].client;
            client.reinits = old.reinits + 1;
            client.messages = old.messages;
            self.stop_streaming(key);
            self.counters.reinits += 1;
        } else {
            self.counters.handshakes += 1;
        }
        let conn = &mut self.connections[key];
        info!(
            "{} {} <{}> subscribes: {} id: {}",
            if reinit { "Reinit" } else { "Handshake" },
            conn.peer,
            conn.socket.as_raw_fd(),
            client.token_list(),
            client.id()
        );
        self.subscriptions.add(key, client.tokens());
        conn.client = client;
        conn.request = Vec::new();
        conn.phase = Phase::Streaming;
        conn.handshaked_at = Some(seconds(self.started, now));
        conn.last_publish = self.shared.published.load(Ordering::Acquire);
        conn.outbox.push(self.shared.responses.handshake.clone());
        let serial = if reinit { self.new_serial() } else { conn.serial };
        self.connections[key].serial = serial;
        let at = self.deadline(now, self.shared.max_age);
        self.age_deadlines.push_back(Deadline { at, key: key as u32, serial });
        self.flush(key);
    }

    /// Takes a streaming connection out of the index (before a reinit, an answer, or a close).
    fn stop_streaming(&mut self, key: usize) {
        let conn = &self.connections[key];
        if conn.phase == Phase::Streaming {
            self.subscriptions.remove(key, conn.client.tokens());
            self.stalls.release(key);
        }
    }

    /// Writes what the socket takes; closes the connection when it failed or is finished.
    fn flush(&mut self, key: usize) {
        let conn = &mut self.connections[key];
        let queued = conn.outbox.len();
        let flushed = match conn.tls.as_deref_mut() {
            Some(tls) => conn.outbox.flush_tls(tls, &mut conn.socket),
            None => conn.outbox.flush(&mut conn.socket),
        };
        match flushed {
            Ok(Flushed::All) if conn.is_finished() => self.close(key, "response complete"),
            Ok(_) => {
                self.pace(key, queued);
                self.update_interest(key);
            }
            Err(e) => self.close(key, &format!("write failed: {e}")),
        }
    }

    /// Holds or lets go a streaming client by what its queue holds after a write (`queued`
    /// before it): see [`stalls`]. Costs nothing while no client is near its cap.
    fn pace(&mut self, key: usize, queued: usize) {
        let conn = &self.connections[key];
        let cap = self.shared.max_backlog;
        if conn.phase != Phase::Streaming || (conn.outbox.len() <= cap && self.stalls.is_empty()) {
            return;
        }
        let now = millis(self.started, Instant::now());
        self.stalls.after_write(key, queued, conn.outbox.len(), cap, now);
    }

    fn update_interest(&mut self, key: usize) {
        let conn = &mut self.connections[key];
        let wanted = conn.interest();
        if wanted != conn.registered {
            match self.poll.registry().reregister(&mut conn.socket, Token(key), wanted) {
                Ok(()) => conn.registered = wanted,
                Err(e) => self.close(key, &format!("cannot watch socket: {e}")),
            }
        }
    }

    fn close(&mut self, key: usize, why: &str) {
        self.stop_streaming(key);
        self.stalls.release(key);
        // Closing the descriptor also takes it out of epoll: no deregister call needed.
        let conn = self.connections.remove(key);
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(limit) = &self.shared.per_ip {
            limit.close(conn.peer.0.ip());
        }
        info!("Connection closed: {} <{}> ({why})", conn.peer, conn.socket.as_raw_fd());
    }

    fn close_all(&mut self) {
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key, "server shutting down");
        }
    }

    /// Closes connections whose handshake or age deadline has passed, and slow clients.
    fn expire(&mut self, instant: Instant) {
        let now = millis(self.started, instant);
        while let Some(d) = pop_due(&mut self.handshake_deadlines, now) {
            if self.holds(d, Phase::Handshaking) {
                self.close(d.key as usize, "handshake timeout");
            } else if self.holds(d, Phase::Closing) {
                self.close(d.key as usize, "last answer not taken in time");
            }
        }
        while let Some(d) = pop_due(&mut self.age_deadlines, now) {
            if self.holds(d, Phase::Streaming) {
                self.end_stream(d.key as usize, instant);
            }
        }
        for key in self.stalls.expired(now) {
            self.drop_slow(key);
        }
    }

    /// Ends a stream as HTTP says, with the last chunk, and closes the connection once that is
    /// out; a client that does not take it has until the handshake timeout.
    fn end_stream(&mut self, key: usize, now: Instant) {
        self.stop_streaming(key);
        let conn = &mut self.connections[key];
        conn.phase = Phase::Closing;
        conn.outbox.push(sse::last_chunk());
        let serial = conn.serial;
        info!("Stream ended: {} <{}> (maximum connection age reached)", conn.peer, conn.socket.as_raw_fd());
        let at = self.deadline(now, self.shared.handshake_timeout);
        self.handshake_deadlines.push_back(Deadline { at, key: key as u32, serial });
        self.flush(key);
    }

    /// Cuts a client whose socket took nothing for [`stalls::STALL_TIMEOUT`] while over the cap.
    fn drop_slow(&mut self, key: usize) {
        let conn = &self.connections[key];
        warn!(
            "Slow client dropped: {} id: {} ({} bytes unsent)",
            conn.peer,
            conn.client.id(),
            conn.outbox.len()
        );
        self.counters.dropped_slow += 1;
        self.close(key, "too slow");
    }

    /// `after` from `now`, in the deadline queues' milliseconds (saturating: a huge
    /// --max-age means never).
    fn deadline(&self, now: Instant, after: Duration) -> u64 {
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        millis(self.started, now).saturating_add(after)
    }

    fn new_serial(&mut self) -> u32 {
        self.next_serial = self.next_serial.wrapping_add(1);
        self.next_serial
    }

    /// Sends the heartbeat comment to every stream with nothing queued (one that has bytes
    /// waiting is not idle), once per interval: one pass per interval, like a broadcast.
    fn beat(&mut self, now: Instant) {
        let (Some(due), Some(every)) = (self.next_heartbeat, self.shared.heartbeat) else { return };
        if due > now {
            return;
        }
        self.next_heartbeat = now.checked_add(every);
        let idle: Vec<usize> = self
            .connections
            .iter()
            .filter(|(_, c)| c.phase == Phase::Streaming && c.outbox.is_empty())
            .map(|(key, _)| key)
            .collect();
        let frame = sse::heartbeat();
        for key in idle {
            self.connections[key].outbox.push(frame.clone());
            self.flush(key);
        }
    }

    /// True when the deadline's connection is still there, still the same one, in `phase`.
    fn holds(&self, d: Deadline, phase: Phase) -> bool {
        self.connections.get(d.key as usize).is_some_and(|c| c.serial == d.serial && c.phase == phase)
    }

    /// Acts on every waiting command, then writes to each client that got new events in one go,
    /// so a burst of publishes reaches a client in one write. Consecutive publishes to the same
    /// audience are offered as one run: one pass over the recipients, one queue entry each.
    /// Stops early while a client is over its cap (see [`stalls`]): the rest waits on the channel.
    fn drain_commands(&mut self) {
        self.commands_held = false;
        loop {
            if !self.stalls.is_empty() {
                self.commands_held = true;
                break;
            }
            match self.commands.try_recv() {
                Ok(command) => self.execute(command),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.stopping = true;
                    break;
                }
            }
        }
        self.publish_run();
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if self.connections.contains(key) {
                self.flush(key);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn execute(&mut self, command: ShardCommand) {
        if !matches!(command, ShardCommand::Publish(_)) {
            // Figures and lists must count the publishes sent before them.
            self.publish_run();
        }
        match command {
            ShardCommand::Publish(delivery) => {
                if self.run.last().is_some_and(|last| !last.same_audience(&delivery)) {
                    self.publish_run();
                }
                self.run_bytes += delivery.frame.len();
                self.run.push(delivery);
                if self.run_bytes >= RUN_BYTES {
                    self.publish_run();
                }
            }
            ShardCommand::Figures(reply) => {
                let _ = reply.send(self.figures());
            }
            ShardCommand::ClientList(reply) => {
                let _ = reply.send(self.client_rows());
            }
            ShardCommand::CountSubscribed(token, reply) => {
                let _ = reply.send(self.subscriptions.count_exact(&token) as u64);
            }
            ShardCommand::Shutdown => self.stopping = true,
        }
    }

    /// Offers the publishes gathered so far, and starts a new run.
    fn publish_run(&mut self) {
        let mut run = std::mem::take(&mut self.run);
        self.publish(&run);
        run.clear();
        self.run = run;
        self.run_bytes = 0;
    }

    /// Queues a run of events (same audience, increasing ids) for every matching client, once
    /// each; writes at once to those it put over the cap, and holds those still over it.
    fn publish(&mut self, run: &[Arc<Delivery>]) {
        let Some(first) = run.first() else { return };
        let mut recipients = Recipients {
            dirty: &mut self.dirty,
            counters: &mut self.counters,
            over_cap: Vec::new(),
            run,
            copy: None,
            max_backlog: self.shared.max_backlog,
        };
        let connections = &mut self.connections;
        match &first.target {
            Target::All => connections.iter_mut().for_each(|(key, conn)| recipients.offer(key, conn)),
            target => {
                self.subscriptions.for_each_match(target, |key| recipients.offer(key, &mut connections[key]))
            }
        }
        for key in recipients.over_cap {
            self.flush(key);
        }
    }

    fn figures(&self) -> ShardFigures {
        let streaming = self.connections.iter().filter(|(_, c)| c.phase == Phase::Streaming).count();
        ShardFigures {
            connections: self.connections.len() as u64,
            streaming: streaming as u64,
            handshakes: self.counters.handshakes,
            reinits: self.counters.reinits,
            deliveries: self.counters.deliveries,
            dropped_slow: self.counters.dropped_slow,
            refused: self.counters.refused,
        }
    }

    fn client_rows(&self) -> Vec<ClientRow> {
        let now = self.seconds(Instant::now());
        self.connections.iter().map(|(_, conn)| self.row(conn, now)).collect()
    }

    /// `now` on the shard's seconds clock.
    fn seconds(&self, now: Instant) -> u32 {
        seconds(self.started, now)
    }

    fn row(&self, conn: &Connection, now: u32) -> ClientRow {
        let client = &conn.client;
        let mut tokens: Vec<String> = client.tokens().map(str::to_string).collect();
        // hasses lists a wildcard subscriber's `*` first.
        tokens.sort_by_key(|t| t != EVERYTHING);
        ClientRow {
            fd: conn.socket.as_raw_fd(),
            peer: conn.peer.0,
            state: conn.state_code(),
            tls: conn.tls_summary(),
            messages: client.messages,
            reinits: client.reinits,
            connected_secs: u64::from(now - conn.connected_at),
            handshaked_secs: conn.handshaked_at.map(|at| u64::from(now - at)),
            id: client.id().to_string(),
            agent: client.user_agent().to_string(),
            tokens,
            worker: self.number,
        }
    }
}

/// A run of events in this shard's own copy: one buffer holding them all. Every recipient takes
/// and drops references to it; on the frames the control thread built, every shard would fight
/// over one reference count's cache line.
struct Run {
    /// Every event, in order.
    all: Frame,
    /// Where each event starts in `all`.
    starts: Vec<usize>,
}

impl Run {
    fn new(run: &[Arc<Delivery>]) -> Run {
        let mut all = BytesMut::with_capacity(run.iter().map(|d| d.frame.len()).sum());
        let mut starts = Vec::with_capacity(run.len());
        for delivery in run {
            starts.push(all.len());
            all.extend_from_slice(&delivery.frame);
        }
        Run { all: all.freeze(), starts }
    }

    /// The events from the `first`-th on, as one frame.
    fn from(&self, first: usize) -> Frame {
        self.all.slice(self.starts[first]..)
    }
}

/// The recipients of a run of events, being offered them one connection at a time.
struct Recipients<'a> {
    dirty: &'a mut Vec<usize>,
    counters: &'a mut Counters,
    over_cap: Vec<usize>,
    /// The events: same audience, increasing ids.
    run: &'a [Arc<Delivery>],
    /// The shard's copy of them, made for the first recipient (a targeted message has none on
    /// most shards).
    copy: Option<Run>,
    max_backlog: usize,
}

impl Recipients<'_> {
    fn offer(&mut self, key: usize, conn: &mut Connection) {
        if conn.phase != Phase::Streaming {
            return;
        }
        // Ids only grow: an id at or below the stamp was delivered already (through another of
        // its tokens) or published before this client handshaked.
        let Some(fresh) = self.run.iter().position(|d| d.id > conn.last_publish) else { return };
        let last = &self.run[self.run.len() - 1];
        conn.last_publish = last.id;
        if last.except.as_deref().is_some_and(|id| conn.has_id(id)) {
            return;
        }
        let run = self.copy.get_or_insert_with(|| Run::new(self.run));
        let was_idle = conn.outbox.is_empty();
        conn.outbox.push(run.from(fresh));
        let taken = run.starts.len() - fresh;
        // Over the cap, the shard writes at once rather than after the drain; otherwise one
        // write after the drain carries the whole burst.
        if conn.outbox.len() > self.max_backlog {
            self.over_cap.push(key);
        } else if was_idle {
            self.dirty.push(key);
        }
        conn.client.messages += taken as u64;
        self.counters.deliveries += taken as u64;
        if tracing::enabled!(tracing::Level::DEBUG) {
            for _ in 0..taken {
                debug!("Message sent to {} id: {}", conn.peer, conn.client.id());
            }
        }
    }
}

/// The first line of a request, for the debug log: printable, and short.
fn request_line(request: &[u8]) -> String {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(&line[..line.len().min(256)]).escape_debug().to_string()
}

/// Whole seconds from `origin` to `now`: 4 bytes a connection where an `Instant` takes 16
/// (a shard's clock runs 136 years before it saturates).
fn seconds(origin: Instant, now: Instant) -> u32 {
    u32::try_from(now.duration_since(origin).as_secs()).unwrap_or(u32::MAX)
}

/// EMFILE, ENFILE and their kin: the kind of accept failure that repeats until something closes.
fn is_out_of_descriptors(error: &io::Error) -> bool {
    use nix::libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
    matches!(error.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

/// Milliseconds from `origin` to `now`.
fn millis(origin: Instant, now: Instant) -> u64 {
    u64::try_from(now.duration_since(origin).as_millis()).unwrap_or(u64::MAX)
}

fn pop_due(queue: &mut VecDeque<Deadline>, now: u64) -> Option<Deadline> {
    queue.front().filter(|d| d.at <= now)?;
    queue.pop_front()
}
