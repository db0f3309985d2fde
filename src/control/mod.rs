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

pub mod command;
mod fanout;
pub mod lines;
mod sequencer;

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::{debug, info, warn};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use subtle::ConstantTimeEq;

use crate::admin::{self, Asker, ControlFigures, Question, Reply};
use crate::limits::Limits;
use crate::log::REPORT;
use crate::pipeline::SharedState;
use command::{auth_secret, parse_command, split_parts, Command, Query};
pub use fanout::Fanout;
use lines::{LineBuffer, LineTooLong, Piece};
pub use sequencer::Sequencer;

const LISTENER: Token = Token(usize::MAX - 2);
const FIFO: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
const READ_CHUNK: usize = 16 * 1024;
/// How long a line with neither a newline nor the separator at its end waits, with nothing more
/// arriving from its writer, before it is complete as it stands. Linux resends a lost TCP
/// segment no sooner than about a round trip plus 200 ms, so a line cut by a loss on the way
/// from any publisher with a round trip under about 300 ms is still joined.
pub const LINE_QUIET: Duration = Duration::from_millis(500);
/// The answer to any line but a right `auth` on a connection that must authenticate first.
const UNAUTHORIZED: &[u8] = b"ERR unauthorized\n";

/// What the control thread needs to know beyond what the shards share.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// The separator between commands on one line.
    pub separator: u8,
    /// Message size limit.
    pub limits: Limits,
    /// What a TCP publisher must send first, as `auth SECRET`, if anything.
    pub secret: Option<String>,
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

/// A TCP control connection.
struct Publisher {
    stream: TcpStream,
    peer: SocketAddr,
    /// Tells it from a later connection given the same slab key, for answers on their way.
    serial: u64,
    /// Answers it asked for that have not come back from the admin path yet: it is not closed
    /// before they are written.
    awaiting: u32,
    input: Input,
    /// Replies not yet written.
    out: Vec<u8>,
    /// No more input is taken (the peer finished sending, or it was refused): close once the
    /// replies are out.
    done: bool,
    /// It may give commands: it sent the right `auth` line, or no secret is set.
    authorized: bool,
    registered: Interest,
}

/// The control FIFO and the line it is delivering.
struct Fifo {
    file: File,
    input: Input,
}

/// Where a control line came from: the FIFO cannot be answered.
#[derive(Debug, Clone, Copy)]
enum Source {
    Fifo,
    Tcp(usize),
}

/// The control thread's state.
pub struct Control {
    poll: Poll,
    listener: Option<TcpListener>,
    fifo: Option<Fifo>,
    publishers: Slab<Publisher>,
    next_serial: u64,
    sequencer: Sequencer,
    state: Arc<SharedState>,
    settings: ControlSettings,
    admin: AdminLink,
    refused: u64,
    stop: Arc<AtomicBool>,
    read_buf: Vec<u8>,
}

/// How another thread stops the control thread.
#[derive(Debug, Clone)]
pub struct ControlStop {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
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
}

impl Control {
    /// Builds the control thread's state around its listener and FIFO.
    pub fn new(
        listener: Option<std::net::TcpListener>,
        fifo: Option<File>,
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
        if let Some(fifo) = &fifo {
            poll.registry().register(&mut SourceFd(&fifo.as_raw_fd()), FIFO, Interest::READABLE)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let control = Control {
            poll,
            listener,
            fifo: fifo.map(|file| Fifo { file, input: Input::new(settings.separator) }),
            publishers: Slab::new(),
            next_serial: 0,
            sequencer,
            state,
            settings,
            admin,
            refused: 0,
            stop: Arc::clone(&stop),
            read_buf: vec![0; READ_CHUNK],
        };
        Ok((control, ControlStop { stop, waker }))
    }

    /// Runs until stopped; then tells every shard to shut down.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Relaxed) {
            // No timer at all unless a line is waiting for its end.
            let timeout = self.next_quiet_left();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    FIFO => self.read_fifo(),
                    WAKER => self.take_replies(),
                    Token(key) => self.handle_publisher(key),
                }
            }
            self.complete_quiet_lines();
            // One wake per shard for everything this round of events produced.
            self.sequencer.wake();
        }
        self.sequencer.shut_down();
        Ok(())
    }

    /// Queues the admin path's answers on the connections that asked for them.
    fn take_replies(&mut self) {
        loop {
            let reply = match self.admin.replies.try_recv() {
                Ok(reply) => reply,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            };
            let key = reply.to.key;
            let Some(publisher) = self.publishers.get_mut(key).filter(|p| p.serial == reply.to.serial) else {
                continue;
            };
            publisher.awaiting -= 1;
            publisher.out.extend_from_slice(reply.text.as_bytes());
            self.write_publisher(key);
        }
    }

    fn accept_all(&mut self) {
        let Some(listener) = &self.listener else { return };
        loop {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let entry = self.publishers.vacant_entry();
                    let registered = Interest::READABLE;
                    if let Err(e) = self.poll.registry().register(&mut stream, Token(entry.key()), registered)
                    {
                        warn!("Cannot watch control connection from {peer}: {e}");
                        continue;
                    }
                    debug!("Control connection from {peer}");
                    self.next_serial += 1;
                    entry.insert(Publisher {
                        stream,
                        peer,
                        serial: self.next_serial,
                        awaiting: 0,
                        input: Input::new(self.settings.separator),
                        out: Vec::new(),
                        done: false,
                        authorized: self.settings.secret.is_none(),
                        registered,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("Control accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn read_fifo(&mut self) {
        let Some(mut fifo) = self.fifo.take() else { return };
        let max_line = self.settings.limits.max_control_line();
        loop {
            match fifo.file.read(&mut self.read_buf) {
                // Held open for writing too, so no end of input: 0 means nothing right now.
                Ok(0) => break,
                Ok(n) => {
                    fifo.input.last_input = Instant::now();
                    let input = std::mem::take(&mut self.read_buf);
                    fifo.input.lines.push(&input[..n], max_line, |piece| self.on_piece(piece, Source::Fifo));
                    self.read_buf = input;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("Reading the control FIFO failed: {e}");
                    break;
                }
            }
        }
        self.fifo = Some(fifo);
    }

    /// How long the poll may wait before a line in progress is complete by quiet; `None` (no
    /// timeout) when no line is in progress.
    fn next_quiet_left(&self) -> Option<Duration> {
        let fifo = self.fifo.iter().map(|fifo| &fifo.input);
        let tcp = self.publishers.iter().filter(|(_, p)| !p.done).map(|(_, p)| &p.input);
        fifo.chain(tcp).filter_map(Input::quiet_left).min()
    }

    /// Completes every line that has waited [`LINE_QUIET`] for its end with nothing arriving.
    fn complete_quiet_lines(&mut self) {
        if self.fifo.as_ref().is_some_and(|fifo| fifo.input.is_quiet()) {
            self.complete_quiet_line(Source::Fifo);
        }
        let quiet: Vec<usize> = self
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
        let Some(input) = self.input(source).filter(|input| input.is_quiet()) else { return };
        // Taken out while its pieces are carried out, which needs all of `self`.
        let mut lines = std::mem::take(&mut input.lines);
        lines.finish(|piece| {
            debug!("Control input: no line ending within {LINE_QUIET:?}; what came is complete");
            self.on_piece(Ok(piece), source);
        });
        if let Some(input) = self.input(source) {
            input.lines = lines;
        }
        if let Source::Tcp(key) = source {
            self.write_publisher(key);
        }
    }

    fn input(&mut self, source: Source) -> Option<&mut Input> {
        match source {
            Source::Fifo => self.fifo.as_mut().map(|fifo| &mut fifo.input),
            Source::Tcp(key) => self.publishers.get_mut(key).map(|publisher| &mut publisher.input),
        }
    }

    fn handle_publisher(&mut self, key: usize) {
        if !self.publishers.contains(key) {
            return;
        }
        if !self.publishers[key].done {
            self.read_publisher(key);
        }
        self.write_publisher(key);
    }

    fn read_publisher(&mut self, key: usize) {
        let max_line = self.settings.limits.max_control_line();
        let source = Source::Tcp(key);
        let mut lines = std::mem::take(&mut self.publishers[key].input.lines);
        let mut input = std::mem::take(&mut self.read_buf);
        loop {
            match self.publishers[key].stream.read(&mut input) {
                Ok(0) => {
                    lines.finish(|piece| self.on_piece(Ok(piece), source));
                    self.publishers[key].done = true;
                    break;
                }
                Ok(n) => {
                    self.publishers[key].input.last_input = Instant::now();
                    lines.push(&input[..n], max_line, |piece| self.on_piece(piece, source));
                    if self.publishers[key].done {
                        // Refused: nothing more is read; it is closed once the replies are out.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("Control connection from {} failed: {e}", self.publishers[key].peer);
                    self.publishers[key].done = true;
                    self.publishers[key].out.clear();
                    break;
                }
            }
        }
        self.read_buf = input;
        self.publishers[key].input.lines = lines;
    }

    /// Writes pending replies; closes a finished connection once they are out.
    fn write_publisher(&mut self, key: usize) {
        let publisher = &mut self.publishers[key];
        while !publisher.out.is_empty() {
            match publisher.stream.write(&publisher.out) {
                Ok(n) => {
                    publisher.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    publisher.out.clear();
                    publisher.done = true;
                }
            }
        }
        if publisher.done && publisher.out.is_empty() && publisher.awaiting == 0 {
            debug!("Control connection from {} closed", publisher.peer);
            self.publishers.remove(key);
            return;
        }
        let wanted = if publisher.out.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        if wanted != publisher.registered
            && self.poll.registry().reregister(&mut publisher.stream, Token(key), wanted).is_ok()
        {
            publisher.registered = wanted;
        }
    }

    /// Carries out a complete piece of input: a line, or commands the separator ended.
    fn on_piece(&mut self, piece: Result<Piece<'_>, LineTooLong>, source: Source) {
        if let Source::Tcp(key) = source {
            if self.publishers[key].done {
                // The rest of the input of a refused connection is not looked at.
                return;
            }
        }
        let piece = match piece {
            Ok(piece) => piece,
            Err(e) => return self.refuse_long_line(&e, source),
        };
        let admitted = match source {
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
                }
            }
        }
    }

    /// A line over the limit: the FIFO skips it; a TCP connection is closed (once its earlier
    /// replies are out), since what it sends after such a line cannot be trusted to be lines.
    fn refuse_long_line(&mut self, e: &LineTooLong, source: Source) {
        self.refused += 1;
        match source {
            Source::Fifo => warn!("Control FIFO: line skipped: {e}"),
            Source::Tcp(key) => {
                let publisher = &mut self.publishers[key];
                publisher.done = true;
                warn!("Control connection from {} closed: {e}", publisher.peer);
            }
        }
    }

    /// Whether a TCP connection's piece goes on to the commands: only once it is authorized.
    /// Before that, a right `auth` line authorizes it; anything else but a blank line is
    /// answered `ERR unauthorized` and the connection closed.
    fn admit(&mut self, key: usize, piece: Piece<'_>) -> bool {
        let publisher = &mut self.publishers[key];
        let given = piece.line().and_then(auth_secret);
        let refusal = match (&self.settings.secret, given) {
            (_, Some(_)) if publisher.authorized => {
                debug!("Control connection from {}: auth line ignored (already authorized)", publisher.peer);
                return false;
            }
            (_, None) if publisher.authorized => return true,
            (_, None) if piece.line().is_some_and(|line| line.trim_ascii().is_empty()) => return false,
            (Some(secret), Some(given)) if same_secret(given, secret.as_bytes()) => {
                publisher.authorized = true;
                debug!("Control connection from {} authenticated", publisher.peer);
                return false;
            }
            (_, Some(_)) => "wrong secret",
            (_, None) => "a command before auth",
        };
        info!("Control connection from {} refused: {refusal}", publisher.peer);
        publisher.out.extend_from_slice(UNAUTHORIZED);
        publisher.done = true;
        false
    }

    fn execute(&mut self, command: Command, source: Source) {
        match command {
            Command::Publish(publish) => {
                self.sequencer.publish(publish);
            }
            Command::Query(query, answer) => {
                let asker = match source {
                    Source::Tcp(key) => Some(Asker { key, serial: self.publishers[key].serial }),
                    Source::Fifo => None,
                };
                let Some(to) = admin::answer_to(answer, asker) else {
                    let command = Command::Query(query, answer);
                    return info!(
                        "Command ignored on the FIFO (it can only be answered over TCP): {command}"
                    );
                };
                self.ask(query, to);
            }
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

    /// Sends the shards their part of `query` behind everything sequenced so far, and hands the
    /// question to the admin path, which answers it: nothing here waits for the answer.
    fn ask(&mut self, query: Query, to: admin::AnswerTo) {
        let answers = self.sequencer.ask(&admin::shard_query(&query));
        let control = ControlFigures { processed: self.sequencer.processed(), refused: self.refused };
        let shards = self.sequencer.shard_count();
        if let admin::AnswerTo::Connection(asker) = to {
            self.publishers[asker.key].awaiting += 1;
        }
        if self.admin.questions.send(Question { query, control, to, answers, shards }).is_err() {
            warn!("The admin path is gone: a question about the server goes unanswered");
        }
    }
}

/// Compares a given secret with the configured one in time that does not depend on where the
/// first difference is (only on the lengths).
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.ct_eq(secret).into()
}

/// Warns (whatever the log level) when the control port can be reached from other hosts and
/// asks for no secret.
fn warn_if_exposed(addr: SocketAddr, has_secret: bool) {
    if !has_secret && !addr.ip().to_canonical().is_loopback() {
        warn!(
            "Control port {addr} is reachable from other hosts and has no --control-secret: anyone \
             who can connect can publish, list clients and change the log level"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3crett", b"s3cret"));
        assert!(!same_secret(b"s3crex", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
        assert!(!same_secret(b"s3cret\0", b"s3cret"));
        assert!(!same_secret(b"x", b""));
        assert!(same_secret(b"", b""));
    }
}
