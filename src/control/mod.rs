//! The control thread: the TCP control port and the FIFO, each line parsed once and carried out.
//!
//! Owns its sources, the publishers' input (the TCP port and the FIFO: line framing, the
//! separator, auth), turning each part into a [`Command`] once, and carrying it out: a publish
//! goes to the [`Sequencer`] (which numbers, frames and fans it out), a question goes out to the
//! shards through the sequencer and on to the admin path ([`crate::admin`]), which answers it.
//! It never waits for an answer and never touches a client connection: shards do.
//!
//! # When a command is complete
//! hasses acts on every read as it comes, so its publishers may keep a connection open and write
//! `a=x;`, or just `a=x`, with no newline, and expect it served at once. Acting on reads cuts a
//! command that arrives in two reads in two, so instead ([`lines`]) a command is complete when
//! - a newline ends its line, or the separator ends it (at once: `a=x;` waits for nothing);
//! - text with neither ending has had nothing more from its writer for [`LINE_QUIET`], or its
//!   TCP connection closed. A line that arrives in pieces a few milliseconds apart, or split by a
//!   TCP retransmission, is still one line.
//!
//! The FIFO follows the same rules, quiet time included: the grammar is the same, and hasses
//! serves `printf 'a=x' > fifo` too. Since the server holds the FIFO open for writing as well,
//! it never sees a writer close; the quiet time is the only sign that a writer is done. A quiet
//! partial FIFO line could instead be discarded as the leftover of a writer that died mid-line,
//! but that would drop every command of a writer that writes `a=x` and nothing more; so it is
//! delivered as it stands, as a TCP publisher's is when it dies mid-line (its close ends the
//! line). Either way it is never glued to the front of the next writer's line. Writes to a pipe
//! of at most `PIPE_BUF` (4096) bytes are atomic, so a writer that writes each command in one
//! `write` never has it cut; a line that another writer completes within the quiet time cannot
//! be told apart from a slow writer's, and goes through joined.
//!
//! One timer serves every input: the poll waits no longer than the nearest quiet deadline of a
//! line in progress (TCP or FIFO), and without one it has no timeout at all.
//!
//! # Guarding the control channel
//! - **Auth.** With a secret (`--control-secret`), a TCP connection's first line must be
//!   `auth SECRET` (a line of its own, never split on the separator). A right secret is accepted
//!   silently, so a publisher can always send it and then go on as before; anything else (a
//!   command, a wrong secret) is answered `ERR unauthorized` and the connection is closed once
//!   that reply is out. Blank lines are ignored. The secret is compared in constant time. An
//!   `auth` line once authenticated, on a server without a secret or on the FIFO is ignored: the
//!   word `auth` never starts a publish. The FIFO needs no auth: its file mode guards it.
//! - **Exposure.** A control port bound to anything but loopback without a secret is warned about
//!   at start: whoever reaches it can publish, list clients and change the log level.
//! - **Long lines.** A command (or a line the separator does not cut, such as an auth line) over
//!   [`Limits::max_control_line`] is refused with a log line: on TCP that connection is closed
//!   (others keep working); on the FIFO the rest of the line is skipped. The limit is per
//!   command, not per line: a publisher that never sends a newline must not run into it.

mod api;
pub mod command;
mod fifo;
pub mod handover;
pub mod lines;
mod presence;
mod replies;
mod sequencer;
mod table;
mod tcp;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};

use crate::admin::{self, Question, Reply};
use crate::event::{ApiKey, Publish, PublisherKey, Receipt, ReceiptTo};
use crate::figures::{ControlFigures, Published};
use crate::gate::unix_now;
use crate::limits::Limits;
use crate::log::REPORT;
use crate::nonblocking::attempt;
use crate::pipeline::{Query, SharedState};
use crate::publish::{asks_ack, Ack};
use command::{auth_secret, parse_command, speaks_http, split_parts, Answer, Command};
use fifo::Fifo;
use handover::{Adopted, HandoverInbox, HandoverLink};
use lines::{LineBuffer, LineTooLong, Piece};
pub use presence::PresenceEvents;
pub use sequencer::{Accepted, Sequencer};
use table::{Named, Table};
use tcp::{warn_if_exposed, Publisher};

const API_LISTENER: Token = Token(usize::MAX - 3);
const LISTENER: Token = Token(usize::MAX - 2);
const FIFO: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
const READ_CHUNK: usize = 16 * 1024;
/// How long a line with neither a newline nor the separator at its end waits, with nothing more
/// arriving from its writer, before it is complete as it stands. Linux resends a lost TCP
/// segment no sooner than about a round trip plus 200 ms, so a line cut by a loss on the way
/// from any publisher with a round trip under about 300 ms is still joined.
pub const LINE_QUIET: Duration = Duration::from_millis(500);

/// What the control thread needs to know beyond what the shards share.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// The separator between commands on one line.
    pub separator: u8,
    /// Message size limit.
    pub limits: Limits,
    /// What a TCP publisher must send first, as `auth SECRET`, if anything.
    pub secret: Option<String>,
    /// What every API request but `/healthz` must carry, if anything.
    pub api_key: Option<Vec<u8>>,
}

/// The control thread's side of the admin path: questions go out, JSON answers come back.
#[derive(Debug)]
pub struct AdminLink {
    /// Questions, in the order they were asked.
    pub questions: Sender<Question>,
    /// Answers to connections that asked, in the same order.
    pub replies: Receiver<Reply>,
}

/// Control input being framed, and when bytes of it last arrived.
struct Input {
    lines: LineBuffer,
    last_input: Instant,
}

impl Input {
    fn new(separator: u8) -> Input {
        Input { lines: LineBuffer::new(separator), last_input: Instant::now() }
    }

    /// How long until the line in progress is complete by [`LINE_QUIET`]; `None` when no line
    /// is in progress.
    fn quiet_left(&self) -> Option<Duration> {
        self.lines.is_pending().then(|| LINE_QUIET.saturating_sub(self.last_input.elapsed()))
    }

    fn is_quiet(&self) -> bool {
        self.quiet_left() == Some(Duration::ZERO)
    }
}

/// Where a control line came from: the FIFO cannot be answered.
#[derive(Debug, Clone, Copy)]
enum Source {
    Fifo,
    Tcp(PublisherKey),
}

/// The control thread's state.
pub struct Control {
    /// What it reads from and answers, and the poll that watches them.
    sources: Sources,
    sequencer: Sequencer,
    state: Arc<SharedState>,
    settings: ControlSettings,
    admin: AdminLink,
    refused: u64,
    published: Published,
    stop: Arc<AtomicBool>,
    /// Requests to pack the sources for an upgrade, and what became of it.
    handover: HandoverInbox,
    /// `--presence-events`: the shards' changes, and who is here.
    presence: Option<PresenceEvents>,
}

/// What the control thread reads from and answers: the control port's listener and its
/// publishers, the FIFO, the HTTP API's listener and its clients, and the poll that watches
/// them all. What their input means is [`Control`]'s business.
struct Sources {
    poll: Poll,
    listener: Option<TcpListener>,
    fifo: Option<Fifo>,
    publishers: Table<PublisherKey, Publisher>,
    api_listener: Option<TcpListener>,
    apis: Table<ApiKey, api::ApiConnection>,
    /// When API connections are next checked against their deadlines.
    next_sweep: Instant,
    /// Tells a connection from a later one given the same key, for answers on their way.
    next_serial: u64,
    read_buf: Vec<u8>,
    /// Packed for an upgrade: nothing more is read until the sources are watched again.
    paused: bool,
}

impl Sources {
    /// Checks API connections against their deadlines, once per [`api::SWEEP_EVERY`].
    fn sweep_api_when_due(&mut self) {
        let now = Instant::now();
        if now >= self.next_sweep {
            self.sweep_api(now);
            self.next_sweep = now + api::SWEEP_EVERY;
        }
    }
    /// How long the poll may wait before a line in progress is complete by quiet; `None` (no
    /// timeout) when no line is in progress.
    fn next_quiet_left(&self) -> Option<Duration> {
        let fifo = self.fifo.iter().map(|fifo| &fifo.input);
        let tcp = self.publishers.iter().filter(|(_, p)| !p.done).map(|(_, p)| &p.input);
        fifo.chain(tcp).filter_map(Input::quiet_left).min()
    }

    /// How long until API connections are due to be checked; `None` without any.
    fn next_sweep_left(&self) -> Option<Duration> {
        (!self.apis.is_empty()).then(|| self.next_sweep.saturating_duration_since(Instant::now()))
    }

    fn input(&mut self, source: Source) -> Option<&mut Input> {
        match source {
            Source::Fifo => self.fifo.as_mut().map(|fifo| &mut fifo.input),
            Source::Tcp(key) => self.publishers.get_mut(key).map(|publisher| &mut publisher.input),
        }
    }
}

/// How another thread stops the control thread.
#[derive(Debug, Clone)]
pub struct ControlStop {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    handover: HandoverLink,
}

impl ControlStop {
    /// Asks the control thread to finish.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
    }

    /// What wakes the control thread (for the admin path's replies).
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// How the main thread has the control thread hand its sources to a new process.
    pub fn handover(&self) -> &HandoverLink {
        &self.handover
    }
}

impl Control {
    /// Builds the control thread's state around its listeners and FIFO, and the connections a
    /// predecessor handed over (an upgrade).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        (listener, api_listener, fifo): (
            Option<std::net::TcpListener>,
            Option<std::net::TcpListener>,
            Option<File>,
        ),
        adopted: Adopted,
        sequencer: Sequencer,
        state: Arc<SharedState>,
        settings: ControlSettings,
        admin: AdminLink,
    ) -> io::Result<(Control, ControlStop)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        if let Some(listener) = &listener {
            warn_if_exposed(listener.local_addr()?, settings.secret.is_some());
        }
        let mut listener = listener.map(TcpListener::from_std);
        if let Some(listener) = &mut listener {
            poll.registry().register(listener, LISTENER, Interest::READABLE)?;
        }
        if let Some(listener) = &api_listener {
            tcp::warn_if_api_exposed(listener.local_addr()?, settings.api_key.is_some());
        }
        let mut api_listener = api_listener.map(TcpListener::from_std);
        if let Some(listener) = &mut api_listener {
            poll.registry().register(listener, API_LISTENER, Interest::READABLE)?;
        }
        if let Some(fifo) = &fifo {
            poll.registry().register(&mut SourceFd(&fifo.as_raw_fd()), FIFO, Interest::READABLE)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sources = Sources {
            poll,
            listener,
            fifo: fifo.map(|file| Fifo { file, input: Input::new(settings.separator) }),
            publishers: Table::default(),
            api_listener,
            apis: Table::default(),
            next_sweep: Instant::now(),
            next_serial: 0,
            read_buf: vec![0; READ_CHUNK],
            paused: false,
        };
        let (link, inbox) = handover::link(Arc::clone(&waker));
        let mut control = Control {
            sources,
            sequencer,
            state,
            settings,
            admin,
            refused: 0,
            published: Published::default(),
            stop: Arc::clone(&stop),
            handover: inbox,
            presence: None,
        };
        control.adopt(adopted)?;
        Ok((control, ControlStop { stop, waker, handover: link }))
    }

    /// Publishes join and leave events from what the shards tell (`--presence-events`).
    pub fn with_presence(self, presence: PresenceEvents) -> Self {
        Control { presence: Some(presence), ..self }
    }

    /// Runs until stopped; then tells every shard to shut down.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Relaxed) {
            // No timer at all unless a line is waiting for its end or API connections are open.
            let presence = self.presence.as_ref().and_then(PresenceEvents::next_due_left);
            let timeout = self
                .sources
                .next_quiet_left()
                .into_iter()
                .chain(self.sources.next_sweep_left())
                .chain(presence)
                .min();
            if let Err(e) = self.sources.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self
                        .sources
                        .accept_publishers(self.settings.separator, self.settings.secret.is_some()),
                    API_LISTENER => self.sources.accept_api(),
                    FIFO => self.read_fifo(),
                    WAKER => {
                        woken = true;
                        self.take_replies();
                    }
                    token => match Named::of(token) {
                        Named::Publisher(key) => self.handle_publisher(key),
                        Named::Api(key) => self.serve_api(key),
                    },
                }
            }
            self.complete_quiet_lines();
            self.sources.sweep_api_when_due();
            self.take_presence();
            // One wake per shard for everything this round of events produced.
            self.sequencer.wake();
            if woken && self.hand_over_if_asked() {
                // The shards were told to drain when the sources were released.
                return Ok(());
            }
        }
        self.sequencer.shut_down();
        Ok(())
    }

    /// Completes every line that has waited [`LINE_QUIET`] for its end with nothing arriving.
    fn complete_quiet_lines(&mut self) {
        if self.sources.fifo.as_ref().is_some_and(|fifo| fifo.input.is_quiet()) {
            self.complete_quiet_line(Source::Fifo);
        }
        let quiet: Vec<PublisherKey> = self
            .sources
            .publishers
            .iter()
            .filter(|(_, p)| !p.done && p.input.is_quiet())
            .map(|(key, _)| key)
            .collect();
        for key in quiet {
            self.complete_quiet_line(Source::Tcp(key));
        }
    }

    /// Takes what is held of the line in progress of `source` as its last piece: its writer has
    /// sent nothing for [`LINE_QUIET`].
    fn complete_quiet_line(&mut self, source: Source) {
        // Bytes may have arrived while this thread was busy elsewhere: they belong to the line.
        match source {
            Source::Fifo => self.read_fifo(),
            Source::Tcp(key) => self.read_publisher(key),
        }
        let Some(input) = self.sources.input(source).filter(|input| input.is_quiet()) else { return };
        // Taken out while its pieces are carried out, which needs all of `self`.
        let mut lines = std::mem::take(&mut input.lines);
        lines.finish(|piece| {
            debug!("Control input: no line ending within {LINE_QUIET:?}; what came is complete");
            self.on_piece(Ok(piece), source);
        });
        if let Some(input) = self.sources.input(source) {
            input.lines = lines;
        }
        if let Source::Tcp(key) = source {
            self.sources.write_publisher(key);
        }
    }

    /// Carries out a complete piece of input: a line, or commands the separator ended.
    fn on_piece(&mut self, piece: Result<Piece<'_>, LineTooLong>, source: Source) {
        if let Source::Tcp(key) = source {
            if self.sources.publishers[key].done {
                // The rest of the input of a refused connection is not looked at.
                return;
            }
        }
        let piece = match piece {
            Ok(piece) => piece,
            Err(e) => return self.refuse_long_line(&e, source),
        };
        let admitted = match source {
            Source::Tcp(key) if speaks_http(piece.bytes()) => {
                self.refuse_http(key);
                false
            }
            Source::Tcp(key) => self.admit(key, piece),
            Source::Fifo => piece.line().and_then(auth_secret).is_none(),
        };
        if !admitted {
            return;
        }
        // A piece the separator ended holds one command; a held line may hold several.
        for part in split_parts(piece.bytes(), self.settings.separator) {
            match parse_command(part, &self.settings.limits) {
                Ok(command) => self.execute(command, source),
                Err(e) => {
                    self.refused += 1;
                    warn!("Malformed control command skipped: {e}");
                    let asked = if asks_ack(part) { Ack::Asked } else { Ack::AsConnection };
                    self.answer_error(source, asked, &e);
                }
            }
        }
    }

    /// Tells a TCP publisher that asked for answers why its command was refused.
    fn answer_error(&mut self, source: Source, ack: Ack, e: &dyn std::fmt::Display) {
        if let Source::Tcp(key) = source {
            let publisher = &mut self.sources.publishers[key];
            if publisher.acks || ack == Ack::Asked {
                publisher.replies.now(format!("ERR {e}\n").as_bytes());
            }
        }
    }

    /// A line over the limit: the FIFO skips it; a TCP connection is closed (once its earlier
    /// replies are out), since what it sends after such a line cannot be trusted to be lines.
    fn refuse_long_line(&mut self, e: &LineTooLong, source: Source) {
        self.refused += 1;
        self.answer_error(source, Ack::AsConnection, e);
        match source {
            Source::Fifo => warn!("Control FIFO: line skipped: {e}"),
            Source::Tcp(key) => {
                let publisher = &mut self.sources.publishers[key];
                publisher.done = true;
                warn!("Control connection from {} closed: {e}", publisher.peer);
            }
        }
    }

    fn execute(&mut self, command: Command, source: Source) {
        match command {
            Command::Publish(publish, ack) => self.publish(publish, ack, source),
            Command::Query(query, answer) => {
                let to = match (answer, source) {
                    (Answer::Log, _) => admin::AnswerTo::Log,
                    (Answer::Reply, Source::Tcp(key)) => {
                        let (asker, place) = self.answer_later(key);
                        admin::AnswerTo::Connection(asker, place)
                    }
                    (Answer::Reply, Source::Fifo) => return ignored_on_fifo(&Command::Query(query, answer)),
                };
                self.ask(query, to);
            }
            Command::Order(kind, args) => match kind.parse_args(&args, unix_now()) {
                Ok(order) => {
                    // An order is answered where it can be: its connection, or the log.
                    let to = match source {
                        Source::Tcp(key) => {
                            let (asker, place) = self.answer_later(key);
                            admin::AnswerTo::Connection(asker, place)
                        }
                        Source::Fifo => admin::AnswerTo::Log,
                    };
                    self.ask(Query::Order(order), to);
                }
                Err(e) => {
                    self.refused += 1;
                    warn!("Control order refused: {} {}: {e}", kind.word(), args.escape_debug());
                    self.answer_error(source, Ack::Asked, &e);
                }
            },
            Command::SetAcks(on) => match source {
                Source::Tcp(key) => {
                    let publisher = &mut self.sources.publishers[key];
                    publisher.acks = on;
                    publisher.replies.now(if on { b"OK ack on\n" } else { b"OK ack off\n" });
                }
                Source::Fifo => ignored_on_fifo(&command),
            },
            Command::SetLogLevel(level) => {
                crate::log::set_level(level);
                // hasses' words, written whatever the level (as hasses does).
                let words = ["the minimum", "normal", "the maximum"][usize::from(level.min(2))];
                info!(target: REPORT, "Set loglevel to {words}.");
            }
            Command::SetReinit(allowed) => {
                self.state.reinit.store(allowed, Ordering::Relaxed);
                info!(target: REPORT, "Reinit {}.", if allowed { "enabled" } else { "disabled" });
            }
        }
    }

    /// Hands a publish to the sequencer; a TCP publisher that asked is answered `OK <id>` or
    /// `ERR <reason>`, in a cluster once Redis holds it (the outbox's receipt).
    fn publish(&mut self, publish: Publish, ack: Ack, source: Source) {
        let asker = match source {
            Source::Tcp(key) => {
                self.published.tcp += 1;
                (self.sources.publishers[key].acks || ack == Ack::Asked).then(|| self.answer_later(key))
            }
            Source::Fifo => {
                self.published.fifo += 1;
                None
            }
        };
        let sequenced =
            match self.sequencer.publish(publish, asker.map(|(to, place)| ReceiptTo::Line(to, place))) {
                Ok(Accepted::Sequenced(id)) => Ok(id),
                // The outbox answers once Redis holds it.
                Ok(Accepted::Queued) => return,
                Err(full) => {
                    self.refused += 1;
                    warn!("Publish refused: {full}");
                    Err(full)
                }
            };
        // Written only for a publisher that reads it: most publish without acks.
        if let Some((to, place)) = asker {
            let answer = match sequenced {
                Ok(id) => Receipt::Sequenced(id).line(),
                Err(full) => format!("ERR {full}\n"),
            };
            self.sources.publishers[to.key].replies.fill(place, answer.as_bytes());
        }
    }

    /// Sends the shards their part of `query` behind everything sequenced so far, and hands the
    /// question to the admin path, which answers it: nothing here waits for the answer.
    ///
    /// A question a cluster answers as one is asked of no shard here: every node's listener,
    /// this one's too, answers it through Redis. Alone, an order's ban or revocation is in
    /// place before any shard ends a stream, so that no reconnect slips through.
    fn ask(&mut self, query: Query, to: admin::AnswerTo) {
        let cluster_wide = query.is_cluster_wide() && self.sequencer.in_cluster();
        if let (Query::Order(order), false) = (&query, cluster_wide) {
            let taken = self.state.gate.write().take(order, unix_now());
            if let Err(full) = taken {
                warn!("Order refused: {full}");
                return self.refuse_question(to, &full.to_string());
            }
        }
        let shard_query = query.shard_query().filter(|_| !cluster_wide);
        let answers = shard_query.map_or_else(Vec::new, |asked| self.sequencer.ask(&asked));
        let control = ControlFigures {
            processed: self.sequencer.processed(),
            refused: self.refused,
            published: self.published,
        };
        if self.admin.questions.send(Question { query, control, to, answers }).is_err() {
            warn!("The admin path is gone: a question about the server goes unanswered");
        }
    }
}

/// A command that needs an answer, which the FIFO cannot be given.
fn ignored_on_fifo(command: &Command) {
    info!("Command ignored on the FIFO (it can only be answered over TCP): {command}");
}

/// Writes as much of `out` as the socket takes, and drops what it took; false when the socket
/// failed (what was left is dropped too: nobody will read it).
fn write_out(stream: &mut mio::net::TcpStream, out: &mut Vec<u8>) -> bool {
    while !out.is_empty() {
        match attempt(|| io::Write::write(stream, out)) {
            Ok(Some(n)) => {
                out.drain(..n);
            }
            Ok(None) => return true,
            Err(_) => {
                out.clear();
                return false;
            }
        }
    }
    true
}

/// Watches a connection for reading, and for writing while `out` holds bytes; re-registers
/// only when that changes.
fn watch(
    registry: &mio::Registry,
    stream: &mut mio::net::TcpStream,
    token: Token,
    registered: &mut Interest,
    out: &[u8],
) {
    let wanted = if out.is_empty() { Interest::READABLE } else { Interest::READABLE | Interest::WRITABLE };
    if wanted != *registered && registry.reregister(stream, token, wanted).is_ok() {
        *registered = wanted;
    }
}
