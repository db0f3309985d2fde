//! A shard: one worker thread, its own epoll loop, listener, connections and subscription index.
//!
//! Owns every connection it accepted, from accept to close, and everything about them: reading
//! requests, handshakes, delivering events, timeouts, its own counters. It shares nothing
//! mutable with other threads but a few atomics ([`SharedState`]): commands arrive already
//! parsed on its channel, and its figures leave as answers on channels carried in the requests.
//! The hot path (a delivery) takes no lock.
//!
//! This file holds the event loop and what every part uses (writing, interest, closing); each
//! other part of a connection's life has its file:
//! - `authorize`: a handshake parked while the backend is asked (`--auth-url`), its verdict;
//! - `accept`: accepting, the connection limits, pausing when out of descriptors;
//! - `request`: reading (plain and TLS), judging a request, answering it, the handshake;
//! - `delivery`: taking commands, and delivering events (the hot path);
//! - `timers`: handshake and age deadlines, heartbeats, cutting stalled clients;
//! - `report`: this shard's figures and client rows;
//! - `tls_session`: a connection's TLS session, over the shard's own TLS buffers;
//! - `multiplex`: HTTP/2 connections, whose streams are subscribers;
//! - `agents`: each `User-Agent` text its clients sent, kept once.

mod accept;
mod agents;
mod authorize;
mod connection;
mod delivery;
pub mod keys;
mod multiplex;
mod outbox;
mod report;
mod request;
mod settings;
mod stalls;
pub mod subscriptions;
mod timers;
mod tls_session;
mod wind_down;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, unbounded, Receiver};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::HandshakeKind;
use tracing::{info, warn};

use crate::auth::Refusal;
use crate::auth_hook::Reply;
use crate::figures::ShardFigures;
use crate::h2::fields::RequestHead;
use crate::pipeline::{Sequenced, ShardCommand, ShardHandle, SharedState};
use crate::presence::Change;
use accept::AcceptPause;
pub use accept::PerIpLimit;
use agents::Agents;
use authorize::Waiting;
use connection::{Client, Connections, Phase};
use keys::{ConnKey, StreamKey};
pub use multiplex::Http2;
use outbox::Flushed;
pub use settings::Settings;
use stalls::Stalls;
use subscriptions::Subscriptions;
use timers::Timers;
use tls_session::TlsBuffers;
use wind_down::WindDown;

/// The listener's token, at the top of the range where no slab key reaches.
const LISTENER: Token = Token(usize::MAX - 1);
/// The waker's token: commands are waiting on the channel, or the backend's verdicts on theirs.
const WAKER: Token = Token(usize::MAX);
/// How many readiness events one `epoll_wait` returns at most.
const EVENTS_PER_POLL: usize = 1024;
/// How much one `read` takes from a socket.
const READ_CHUNK: usize = 4096;

/// What the shard counts by kind: the kinds (a refusal, a TLS handshake) are the shard's
/// words, so sorting them into figures is done here rather than in `figures`.
impl ShardFigures {
    /// Counts a subscription refused by the token check, by why.
    fn count_refusal(&mut self, refusal: &Refusal) {
        *match refusal {
            Refusal::NoToken => &mut self.auth_refused_missing,
            Refusal::Invalid(_) => &mut self.auth_refused_invalid,
            Refusal::Forbidden(_) => &mut self.auth_refused_forbidden,
            // The backend's refusals are counted with its other verdicts.
            Refusal::BackendUnauthorized(_) | Refusal::BackendForbidden(_) => return,
        } += 1;
    }

    /// Counts a TLS handshake just completed, by how it went.
    fn count_tls_handshake(&mut self, kind: Option<HandshakeKind>) {
        *match kind {
            Some(HandshakeKind::Resumed) => &mut self.tls_resumed_handshakes,
            Some(HandshakeKind::Full | HandshakeKind::FullWithHelloRetryRequest) | None => {
                &mut self.tls_full_handshakes
            }
        } += 1;
    }
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
    settings: Arc<Settings>,
    state: Arc<SharedState>,
    per_ip: Option<Arc<PerIpLimit>>,
    connections: Connections,
    subscriptions: Subscriptions,
    timers: Timers,
    /// Handshakes waiting for the backend's verdict (`--auth-url`).
    waiting: Waiting,
    /// Connections given new bytes while draining commands, flushed once after the drain.
    dirty: Vec<ConnKey>,
    /// Consecutive publishes to one audience, gathered while draining commands (kept to reuse
    /// its allocation).
    run: Vec<Arc<Sequenced>>,
    /// The bytes of the events in `run`.
    run_bytes: usize,
    /// Clients over the cap: while any is held, commands wait on the channel.
    stalls: Stalls,
    /// HTTP/2 connections that may have a stream whose window holds events back.
    held_back: BTreeSet<ConnKey>,
    /// The request of the HTTP/2 stream being judged: asking the auth backend about it needs
    /// its fields (an HTTP/1.1 connection keeps its request's bytes until its handshake).
    judging: Option<RequestHead>,
    /// HTTP/2 connections with streams past their first counted against the connection limits
    /// (as connections are), and how many: kept here, so that a connection's slot pays nothing.
    charged: HashMap<ConnKey, u16>,
    /// Its clients' `User-Agent`s, each text once.
    agents: Agents,
    /// Commands were left on the channel for a held client: drain them once none is held (the
    /// waker will not fire again for them).
    commands_held: bool,
    next_serial: u32,
    /// Its figures: the counters bumped here; the gauges stay zero, counted when asked.
    counters: ShardFigures,
    /// How long its deliveries took.
    latency: delivery::Latency,
    /// What a socket is read into (a `Vec` so that it can be lent out without a copy).
    read_buf: Vec<u8>,
    /// What TLS sessions read into and encrypt into (empty without TLS).
    tls_buffers: TlsBuffers,
    stopping: bool,
    /// Ending the streams at a stop, a few at a time (`--drain-secs`).
    wind_down: Option<WindDown>,
    /// The origin of the shard's seconds clock, which connections keep their times on.
    started: Instant,
    /// Accepting paused for want of descriptors, and its reports.
    accept_pause: AcceptPause,
}

impl Shard {
    /// A shard around its listener, and the handle the control thread reaches it by.
    pub fn new(
        number: usize,
        mut listener: TcpListener,
        settings: Arc<Settings>,
        state: Arc<SharedState>,
        per_ip: Option<Arc<PerIpLimit>>,
        queue: usize,
    ) -> io::Result<(Self, ShardHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let (sender, commands) = bounded(queue);
        let handle = ShardHandle { commands: sender, waker: Arc::clone(&waker) };
        let (verdict_sender, verdicts) = unbounded();
        let reply = Reply::new(verdict_sender, Arc::clone(&waker));
        let shard = Shard {
            number,
            poll,
            listener,
            commands,
            _waker: waker,
            connections: Connections::default(),
            subscriptions: Subscriptions::default(),
            timers: Timers::new(settings.heartbeat),
            waiting: Waiting::new(verdicts, reply),
            dirty: Vec::new(),
            run: Vec::new(),
            run_bytes: 0,
            stalls: Stalls::default(),
            held_back: BTreeSet::new(),
            charged: HashMap::new(),
            agents: Agents::default(),
            judging: None,
            commands_held: false,
            next_serial: 0,
            counters: ShardFigures::default(),
            latency: delivery::Latency::default(),
            read_buf: vec![0; READ_CHUNK],
            tls_buffers: if settings.tls.is_some() { TlsBuffers::new() } else { TlsBuffers::default() },
            stopping: false,
            wind_down: None,
            started: Instant::now(),
            accept_pause: AcceptPause::default(),
            settings,
            state,
            per_ip,
        };
        Ok((shard, handle))
    }

    /// Runs the event loop until a `Shutdown` command and the wind-down it starts, then closes
    /// every connection still open.
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
                    WAKER => {
                        self.drain_commands();
                        self.take_verdicts();
                    }
                    token => {
                        let Some(key) = ConnKey::of_token(token) else { continue };
                        // A hang-up or error shows up as a failed or empty read.
                        let hung_up = event.is_read_closed() || event.is_error();
                        let readable = event.is_readable() || hung_up;
                        self.handle_socket(key, readable, event.is_writable(), hung_up);
                    }
                }
            }
            let now = Instant::now();
            self.expire(now);
            self.wind_down_step(now);
            self.beat(now);
            self.resume_accepting(now);
            if self.commands_held && self.stalls.is_empty() {
                self.drain_commands();
            }
        }
        self.close_all();
        Ok(())
    }

    fn handle_socket(&mut self, key: ConnKey, readable: bool, writable: bool, hung_up: bool) {
        if !self.connections.contains(key) {
            return;
        }
        if writable {
            self.flush(key);
        }
        if !readable || !self.connections.contains(key) {
            return;
        }
        // A handshake waiting for the backend is not read until the verdict; only its going
        // away is acted on.
        match (self.waiting.holds(StreamKey::on(key)), hung_up) {
            (false, _) => self.read(key, hung_up),
            (true, true) => self.gone_while_parked(key),
            (true, false) => {}
        }
    }

    /// Takes a stream out of the index (before a reinit, an answer, or a close), if it is
    /// streaming; an HTTP/2 stream is left `Closing`.
    fn stop_streaming(&mut self, stream: StreamKey) {
        let key = stream.connection();
        let Some(conn) = self.connections.get_mut(key) else { return };
        let client = match stream.slot() {
            None if conn.phase == Phase::Streaming => {
                self.stalls.release(key);
                std::mem::take(&mut conn.client)
            }
            None => return,
            Some(slot) => match conn.h2.as_deref_mut().and_then(|h2| h2.stream_mut(slot)) {
                Some(state) if state.data.phase == Phase::Streaming => {
                    state.data.phase = Phase::Closing;
                    std::mem::take(&mut state.data.client)
                }
                _ => return,
            },
        };
        self.unsubscribe(stream, &client);
        // Given back: a reinit counts on it, the client list shows an ending stream's.
        match stream.slot() {
            None => self.connections[key].client = client,
            Some(_) => {
                if let Some(state) = self.h2_stream(stream) {
                    state.client = client;
                }
            }
        }
    }

    /// Takes `client`'s stream out of the index, and tells presence it left.
    fn unsubscribe(&mut self, stream: StreamKey, client: &Client) {
        let (reach, number) = (&self.state.reach, self.number);
        self.subscriptions.remove(stream, client.tokens(), |token| reach.let_go(number, token));
        self.tell_presence(client, false);
    }

    /// With `--presence-events`, tells the control thread that a stream of a client with an
    /// id started or ended.
    fn tell_presence(&self, client: &Client, joined: bool) {
        let Some(link) = &self.settings.presence else { return };
        if client.id().is_empty() {
            return;
        }
        let change = Change {
            joined,
            id: client.id().into(),
            sub: client.sub().then(|| client.id().into()),
            tokens: client
                .tokens()
                .filter(|token| *token != subscriptions::EVERYTHING)
                .map(Into::into)
                .collect(),
        };
        if !link.tell(change) {
            warn!("Presence: the control thread is far behind; a join or leave of {} is lost", client.id());
        }
    }

    /// Writes what the socket takes; closes the connection when it failed or is finished.
    fn flush(&mut self, key: ConnKey) {
        let conn = &mut self.connections[key];
        let queued = conn.outbox.len();
        let flushed = match conn.tls.as_deref_mut() {
            Some(tls) => tls.flush_outbox(&mut conn.outbox, &mut self.tls_buffers.output, &mut conn.socket),
            None => conn.outbox.flush(&mut conn.socket),
        };
        match flushed {
            Ok(Flushed::All) if conn.is_finished() && conn.h2.is_some() => self.linger(key),
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
    fn pace(&mut self, key: ConnKey, queued: usize) {
        let conn = &self.connections[key];
        let cap = self.settings.max_backlog;
        let streams = matches!(conn.phase, Phase::Streaming | Phase::Multiplexed);
        if !streams || (conn.outbox.len() <= cap && self.stalls.is_empty()) {
            return;
        }
        let now = millis(self.started, Instant::now());
        self.stalls.after_write(key, queued, conn.outbox.len(), cap, now);
    }

    fn update_interest(&mut self, key: ConnKey) {
        let conn = &mut self.connections[key];
        let wanted = conn.interest();
        if wanted != conn.registered {
            match self.poll.registry().reregister(&mut conn.socket, key.token(), wanted) {
                Ok(()) => conn.registered = wanted,
                Err(e) => self.close(key, &format!("cannot watch socket: {e}")),
            }
        }
    }

    fn close(&mut self, key: ConnKey, why: &str) {
        self.stop_streaming(StreamKey::on(key));
        self.stop_streams(key);
        self.stalls.release(key);
        self.waiting.forget(StreamKey::on(key));
        self.held_back.remove(&key);
        self.uncharge_streams(key);
        // Closing the descriptor also takes it out of epoll: no deregister call needed.
        let conn = self.connections.remove(key);
        self.unaccount(conn.peer);
        info!("Connection closed: {} <{}> ({why})", conn.peer, conn.socket.as_raw_fd());
    }

    fn close_all(&mut self) {
        let keys: Vec<ConnKey> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key, "server shutting down");
        }
    }

    fn new_serial(&mut self) -> u32 {
        // Never 0: an HTTP/2 stream's serial is 0 until its request is judged.
        self.next_serial = self.next_serial.wrapping_add(1).max(1);
        self.next_serial
    }

    /// `now` on the shard's seconds clock.
    fn seconds(&self, now: Instant) -> u32 {
        seconds(self.started, now)
    }
}

/// Whole seconds from `origin` to `now`: 4 bytes a connection where an `Instant` takes 16
/// (a shard's clock runs 136 years before it saturates).
fn seconds(origin: Instant, now: Instant) -> u32 {
    u32::try_from(now.duration_since(origin).as_secs()).unwrap_or(u32::MAX)
}

/// Milliseconds from `origin` to `now`.
fn millis(origin: Instant, now: Instant) -> u64 {
    u64::try_from(now.duration_since(origin).as_millis()).unwrap_or(u64::MAX)
}
