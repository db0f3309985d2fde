//! The control thread: the TCP control port and the FIFO, each line parsed once and carried out.
//!
//! Owns reading publishers' input (line framing, the separator), turning each part into a
//! [`Command`], numbering and framing each event once, and answering the figures commands by
//! asking every shard and merging the answers. It never touches a client connection: shards do.
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
//! - **Long lines.** A line over [`Limits::max_control_line`] is refused with a log line: on TCP
//!   that connection is closed (others keep working); on the FIFO the line is skipped.
//! - **Abandoned FIFO lines.** The FIFO is held open for writing too, so it never reports end of
//!   input and a writer that dies mid-line cannot be seen directly. Writes to a pipe of at most
//!   `PIPE_BUF` (4096) bytes are atomic, so a publisher that writes each line in one `write`
//!   delivers it whole. A partial line after which nothing arrives on the FIFO for
//!   [`FIFO_QUIET`] is taken as abandoned and discarded with a log line, so it cannot be glued
//!   to the front of the next publisher's line. (A line that another writer completes within
//!   that second cannot be told apart from a slow writer's, and goes through joined.)

pub mod command;
mod fanout;
pub mod lines;

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

use crate::limits::Limits;
use crate::log::REPORT;
use crate::pipeline::{Delivery, ShardCommand, ShardHandle, SharedState};
use crate::sse::{encode_event, EventIds};
use crate::stats::{self, ShardFigures, Status};
use crate::tls::TlsFiles;
use command::{auth_secret, parse_command, split_parts, Command, Publish};
pub use fanout::Fanout;
use lines::{LineBuffer, LineTooLong};

const LISTENER: Token = Token(usize::MAX - 2);
const FIFO: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
const READ_CHUNK: usize = 16 * 1024;
/// How long a partial FIFO line may wait, with nothing arriving on the FIFO, before it is taken
/// as abandoned by a writer that died mid-line.
pub const FIFO_QUIET: Duration = Duration::from_secs(1);
/// The answer to any line but a right `auth` on a connection that must authenticate first.
const UNAUTHORIZED: &[u8] = b"ERR unauthorized\n";

/// What the control thread needs to know beyond what the shards share.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// The separator between commands on one line.
    pub separator: u8,
    /// Message size limit.
    pub limits: Limits,
    /// The CORS base, for the status block.
    pub cors_base: String,
    /// The user privileges were dropped to, for the status block.
    pub user: Option<String>,
    /// When the server started.
    pub started: Instant,
    /// What a TCP publisher must send first, as `auth SECRET`, if anything.
    pub secret: Option<String>,
    /// The certificate and key served, for the status block.
    pub tls: Option<TlsFiles>,
}

/// A TCP control connection.
struct Publisher {
    stream: TcpStream,
    peer: SocketAddr,
    lines: LineBuffer,
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
    lines: LineBuffer,
    /// When bytes last arrived: a partial line quiet for [`FIFO_QUIET`] is abandoned.
    last_input: Instant,
}

/// Where a control line came from: the FIFO cannot be answered.
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
    shards: Fanout,
    state: Arc<SharedState>,
    settings: ControlSettings,
    ids: EventIds,
    processed: u64,
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
}

impl Control {
    /// Builds the control thread's state around its listener and FIFO.
    pub fn new(
        listener: Option<std::net::TcpListener>,
        fifo: Option<File>,
        shards: Vec<ShardHandle>,
        state: Arc<SharedState>,
        settings: ControlSettings,
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
            fifo: fifo.map(|file| Fifo { file, lines: LineBuffer::default(), last_input: Instant::now() }),
            publishers: Slab::new(),
            shards: Fanout::new(shards),
            state,
            settings,
            ids: EventIds::starting_now(),
            processed: 0,
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
            // No timer at all unless a partial FIFO line is waiting for its end.
            let timeout = self.fifo_quiet_left();
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
                    WAKER => {}
                    Token(key) => self.handle_publisher(key),
                }
            }
            self.expire_abandoned_fifo_line();
            // One wake per shard for everything this round of events produced.
            self.shards.wake();
        }
        self.shards.broadcast(|| ShardCommand::Shutdown);
        Ok(())
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
                    entry.insert(Publisher {
                        stream,
                        peer,
                        lines: LineBuffer::default(),
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
                    fifo.last_input = Instant::now();
                    let input = std::mem::take(&mut self.read_buf);
                    fifo.lines.push(&input[..n], max_line, |line| self.on_line(line, &Source::Fifo));
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

    /// How long the poll may wait before a partial FIFO line is due to be abandoned; `None`
    /// (no timeout) when no line is in progress.
    fn fifo_quiet_left(&self) -> Option<Duration> {
        let fifo = self.fifo.as_ref().filter(|fifo| fifo.lines.is_pending())?;
        Some(FIFO_QUIET.saturating_sub(fifo.last_input.elapsed()))
    }

    /// Discards a partial FIFO line that has waited [`FIFO_QUIET`] for its end: its writer died
    /// mid-line, and its bytes must not become the start of the next publisher's line.
    fn expire_abandoned_fifo_line(&mut self) {
        if self.fifo_quiet_left() != Some(Duration::ZERO) {
            return;
        }
        // Bytes may have arrived while this thread was busy elsewhere: they would end the line.
        self.read_fifo();
        if self.fifo_quiet_left() != Some(Duration::ZERO) {
            return;
        }
        let Some(fifo) = &mut self.fifo else { return };
        let held = fifo.lines.abandon();
        if held == 0 {
            // The rest of an over-long line, refused and counted already, never came.
            return debug!("Control FIFO: the end of an over-long line never came; taking new lines");
        }
        self.refused += 1;
        warn!(
            "Control FIFO: incomplete line of {held} bytes discarded (no end of line within {}s; \
             its writer died mid-line?)",
            FIFO_QUIET.as_secs()
        );
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
        let mut lines = std::mem::take(&mut self.publishers[key].lines);
        let mut input = std::mem::take(&mut self.read_buf);
        loop {
            match self.publishers[key].stream.read(&mut input) {
                Ok(0) => {
                    lines.finish(|line| self.on_line(Ok(line), &Source::Tcp(key)));
                    self.publishers[key].done = true;
                    break;
                }
                Ok(n) => {
                    lines.push(&input[..n], max_line, |line| self.on_line(line, &Source::Tcp(key)));
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
        self.publishers[key].lines = lines;
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
        if publisher.done && publisher.out.is_empty() {
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

    fn on_line(&mut self, line: Result<&[u8], LineTooLong>, source: &Source) {
        if let Source::Tcp(key) = *source {
            if self.publishers[key].done {
                // The rest of the input of a refused connection is not looked at.
                return;
            }
        }
        let line = match line {
            Ok(line) => line,
            Err(e) => return self.refuse_long_line(&e, source),
        };
        let admitted = match *source {
            Source::Tcp(key) => self.admit(key, line),
            Source::Fifo => auth_secret(line).is_none(),
        };
        if !admitted {
            return;
        }
        for part in split_parts(line, self.settings.separator) {
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
    fn refuse_long_line(&mut self, e: &LineTooLong, source: &Source) {
        self.refused += 1;
        match *source {
            Source::Fifo => warn!("Control FIFO: line skipped: {e}"),
            Source::Tcp(key) => {
                let publisher = &mut self.publishers[key];
                publisher.done = true;
                warn!("Control connection from {} closed: {e}", publisher.peer);
            }
        }
    }

    /// Whether a TCP connection's line goes on to the commands: only once it is authorized.
    /// Before that, a right `auth` line authorizes it; any other line (but a blank one) is
    /// answered `ERR unauthorized` and the connection closed.
    fn admit(&mut self, key: usize, line: &[u8]) -> bool {
        let publisher = &mut self.publishers[key];
        let given = auth_secret(line);
        let refusal = match (&self.settings.secret, given) {
            (_, Some(_)) if publisher.authorized => {
                debug!("Control connection from {}: auth line ignored (already authorized)", publisher.peer);
                return false;
            }
            (_, None) if publisher.authorized => return true,
            (_, None) if line.trim_ascii().is_empty() => return false,
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

    fn execute(&mut self, command: Command, source: &Source) {
        let publisher = match source {
            Source::Tcp(key) => Some(*key),
            Source::Fifo if command.replies_over_tcp() => {
                info!("Command ignored on the FIFO (it can only be answered over TCP): {command}");
                return;
            }
            Source::Fifo => None,
        };
        let reply = match command {
            Command::Publish(publish) => return self.publish(publish),
            Command::Status => return report(self.status().lines()),
            Command::ClientList => return report(stats::client_list_lines(&self.client_rows())),
            Command::NumberOfClients => {
                return report(vec![format!("Number of connected clients: {}", self.figures().connections)])
            }
            Command::SubscribedClients(token) => {
                let count = self.count_subscribed(&token);
                return report(vec![format!("Client count subscribed for \"{token}\": {count}")]);
            }
            Command::SetLogLevel(level) => {
                crate::log::set_level(level);
                // hasses' words, written whatever the level (as hasses does).
                let words = ["the minimum", "normal", "the maximum"][usize::from(level.min(2))];
                return info!(target: REPORT, "Set loglevel to {words}.");
            }
            Command::SetReinit(allowed) => {
                self.state.reinit.store(allowed, Ordering::Relaxed);
                return info!(target: REPORT, "Reinit {}.", if allowed { "enabled" } else { "disabled" });
            }
            Command::TcpStatus => self.status().json(),
            Command::TcpClientList => stats::client_list_json(&self.client_rows()),
            Command::TcpNumberOfClients => {
                serde_json::json!({ "numberofclients": self.figures().connections })
            }
            Command::TcpSubscribedClients(token) => {
                let count = self.count_subscribed(&token);
                serde_json::json!({ "subscribedclients": count, "subscribedfor": token })
            }
        };
        if let Some(key) = publisher {
            let out = &mut self.publishers[key].out;
            out.extend_from_slice(reply.to_string().as_bytes());
            out.push(b'\n');
        }
    }

    /// Numbers and frames the event once, and hands it to every shard.
    fn publish(&mut self, publish: Publish) {
        self.processed += 1;
        let id = self.ids.next_id();
        debug!("Message {id} to subscribers of {publish}: {} bytes", publish.message.len());
        let frame = encode_event(id, &publish.message);
        // Before any shard can see it: a handshake from now on is later than this publish.
        self.state.published.store(id, Ordering::Release);
        self.shards.publish(Delivery { id, target: publish.target, except: publish.except, frame });
    }

    fn figures(&mut self) -> ShardFigures {
        let mut total = ShardFigures::default();
        for figures in self.shards.ask(ShardCommand::Figures) {
            total += figures;
        }
        total
    }

    fn count_subscribed(&mut self, token: &str) -> u64 {
        let token: Arc<str> = Arc::from(token);
        self.shards.ask(|reply| ShardCommand::CountSubscribed(Arc::clone(&token), reply)).into_iter().sum()
    }

    fn client_rows(&mut self) -> Vec<stats::ClientRow> {
        let mut rows: Vec<_> = self.shards.ask(ShardCommand::ClientList).into_iter().flatten().collect();
        rows.sort_by_key(|row| row.fd);
        rows
    }

    fn status(&mut self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION"),
            compiled: env!("HASSES_BUILD_DATE"),
            pid: std::process::id(),
            uid: nix::unistd::getuid().as_raw(),
            user: self.settings.user.clone(),
            running: self.settings.started.elapsed(),
            log_level: crate::log::level(),
            reinit: self.state.reinit.load(Ordering::Relaxed),
            cors_base: self.settings.cors_base.clone(),
            peak_connections: self.state.peak.load(Ordering::Relaxed),
            processed: self.processed,
            refused: self.refused,
            workers: self.shards.len(),
            shards: self.figures(),
            tls: self.settings.tls.clone(),
        }
    }
}

/// Compares a given secret with the configured one in time that depends only on the given
/// secret's length, not on where the first difference is.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != secret.len());
    for (i, byte) in given.iter().enumerate() {
        let expected = secret.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(byte ^ expected);
    }
    diff == 0
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

/// Writes an operator's report to the log, a line at a time, whatever the level.
fn report(lines: Vec<String>) {
    for line in lines {
        info!(target: REPORT, "{line}");
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
