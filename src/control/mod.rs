//! The control thread: the TCP control port and the FIFO, each line parsed once and carried out.
//!
//! Owns reading publishers' input (line framing, the separator), turning each part into a
//! [`Command`], numbering and framing each event once, and answering the figures commands by
//! asking every shard and merging the answers. It never touches a client connection: shards do.

pub mod command;
mod fanout;
pub mod lines;

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::{debug, info, warn};

use crate::limits::Limits;
use crate::log::REPORT;
use crate::shard::{Delivery, ShardCommand, ShardHandle, Shared};
use crate::sse::{encode_event, EventIds};
use crate::stats::{self, ShardFigures, Status};
use command::{parse_command, split_parts, Command, Publish};
pub use fanout::Fanout;
use lines::LineBuffer;

const LISTENER: Token = Token(usize::MAX - 2);
const FIFO: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
const READ_CHUNK: usize = 16 * 1024;

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
}

/// A TCP control connection.
struct Publisher {
    stream: TcpStream,
    peer: SocketAddr,
    lines: LineBuffer,
    /// Replies not yet written.
    out: Vec<u8>,
    /// The peer finished sending: close once the replies are out.
    done: bool,
    registered: Interest,
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
    fifo: Option<(File, LineBuffer)>,
    publishers: Slab<Publisher>,
    shards: Fanout,
    shared: Arc<Shared>,
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
        shared: Arc<Shared>,
        settings: ControlSettings,
    ) -> io::Result<(Control, ControlStop)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
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
            fifo: fifo.map(|f| (f, LineBuffer::default())),
            publishers: Slab::new(),
            shards: Fanout::new(shards),
            shared,
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
            if let Err(e) = self.poll.poll(&mut events, None) {
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
        let Some((mut fifo, mut lines)) = self.fifo.take() else { return };
        let max_line = self.settings.limits.max_control_line();
        loop {
            match fifo.read(&mut self.read_buf) {
                // Held open for writing too, so no end of input: 0 means nothing right now.
                Ok(0) => break,
                Ok(n) => {
                    let input = std::mem::take(&mut self.read_buf);
                    lines.push(&input[..n], max_line, |line| self.on_line(line, &Source::Fifo));
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
        self.fifo = Some((fifo, lines));
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
                Ok(n) => lines.push(&input[..n], max_line, |line| self.on_line(line, &Source::Tcp(key))),
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

    fn on_line(&mut self, line: Result<&[u8], lines::LineTooLong>, source: &Source) {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                self.refused += 1;
                warn!("Control line refused: {e}");
                return;
            }
        };
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

    fn execute(&mut self, command: Command, source: &Source) {
        let publisher = match source {
            Source::Tcp(key) => Some(*key),
            Source::Fifo if command.replies_over_tcp() => {
                info!("Command ignored on the FIFO (it can only be answered over TCP): {command:?}");
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
                return info!(target: REPORT, "Loglevel set to {level}");
            }
            Command::SetReinit(allowed) => {
                self.shared.reinit.store(allowed, Ordering::Relaxed);
                return info!("Reinit {}", if allowed { "enabled" } else { "disabled" });
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
        debug!(
            "Message {id} for {:?} (except {:?}): {} bytes",
            publish.target,
            publish.except,
            publish.message.len()
        );
        let frame = encode_event(id, &publish.message);
        // Before any shard can see it: a handshake from now on is later than this publish.
        self.shared.published.store(id, Ordering::Release);
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
            reinit: self.shared.reinit.load(Ordering::Relaxed),
            cors_base: self.settings.cors_base.clone(),
            peak_connections: self.shared.peak.load(Ordering::Relaxed),
            processed: self.processed,
            refused: self.refused,
            workers: self.shards.len(),
            shards: self.figures(),
        }
    }
}

/// Writes an operator's report to the log, a line at a time, whatever the level.
fn report(lines: Vec<String>) {
    for line in lines {
        info!(target: REPORT, "{line}");
    }
}
