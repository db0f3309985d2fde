//! `floor-server`: the yardstick the server's figures are read against. It does the least an
//! epoll server can do for this bench's traffic, so that a run against it shows what the kernel
//! alone charges on this machine, in the same hour, with the same clients.
//!
//! Its shape is the server's: `--floor-workers` workers (one per core, as the server's default),
//! each with its own `SO_REUSEPORT` listener on the `--sse` address and its own epoll, and a
//! control thread that frames each published message once, with the server's own parser and
//! encoder, and hands it to every worker. Per connection a worker accepts, registers, reads the request, judges it
//! with the server's own parser and writes its response head; per recipient it makes one
//! `write`, one for a run of messages to the same target. It keeps nothing else: no log,
//! timeouts, counters or queues, and a socket that does not take a write whole is closed. It
//! answers `tcpnumberofclients` and ignores every other command; like the server it takes several
//! commands on one line, `;` between them. Not a server to deploy.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use crossbeam_channel::{unbounded, Receiver, Sender};
use hasses::control::command::{parse_command, split_parts, Answer, Command};
use hasses::control::lines::LineBuffer;
use hasses::event::Target;
use hasses::http::{judge, Judgement, Responses, Route};
use hasses::limits::Limits;
use hasses::pipeline::Query;
use hasses::server;
use hasses::sse::{encode_event, EventIds, Frame};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;
use socket2::SockRef;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
const READ_CHUNK: usize = 4096;

/// One published message, framed once for every worker.
struct Message {
    target: Target,
    frame: Frame,
}

/// How the control thread reaches a worker.
struct WorkerHandle {
    messages: Sender<Arc<Message>>,
    waker: Waker,
}

/// Runs the floor server until the process is killed; returns only on an error it cannot go on
/// from (binding its ports, accepting a control connection).
pub fn serve(sse: SocketAddr, control: SocketAddr, workers: usize, path: &str) -> io::Result<()> {
    let streaming = Arc::new(AtomicU64::new(0));
    // Port 0 picks a free port for the first listener; the others share that one.
    let first = listen(sse, true)?;
    let sse = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(listen(sse, true)?);
    }
    let mut handles = Vec::new();
    for listener in listeners {
        let (worker, handle) = Worker::new(TcpListener::from_std(listener), path, Arc::clone(&streaming))?;
        std::thread::Builder::new().name("floor-worker".into()).spawn(move || worker.run())?;
        handles.push(handle);
    }
    let control_listener = listen(control, false)?;
    // One thread per publisher, each blocking on its own connection.
    control_listener.set_nonblocking(false)?;
    let control = control_listener.local_addr()?;
    eprintln!("floor-server: SSE on {sse} ({workers} workers), control on {control}");
    let handles = Arc::new(handles);
    let ids = Arc::new(Mutex::new(EventIds::starting_now()));
    for stream in control_listener.incoming() {
        let (stream, handles, ids, streaming) =
            (stream?, Arc::clone(&handles), Arc::clone(&ids), Arc::clone(&streaming));
        std::thread::spawn(move || control_connection(stream, &handles, &ids, &streaming));
    }
    Ok(())
}

/// A listener opened by the server's own [`server::listen`] (`shared` ones take `SO_REUSEPORT`,
/// one per worker), whose accepted sockets inherit `TCP_NODELAY` as the server's SSE ones do.
fn listen(addr: SocketAddr, shared: bool) -> io::Result<StdListener> {
    let listener = server::listen(addr, shared).map_err(io::Error::other)?;
    SockRef::from(&listener).set_nodelay(true)?;
    Ok(listener)
}

/// The separator between commands on a control line: the server's default (`--separator`).
const SEPARATOR: u8 = b';';

/// Reads control lines until the publisher hangs up; wakes each worker once per read.
fn control_connection(
    mut stream: StdStream,
    workers: &[WorkerHandle],
    ids: &Mutex<EventIds>,
    streaming: &AtomicU64,
) {
    let mut publisher = Publisher { workers, ids, streaming, limits: Limits::default(), replies: Vec::new() };
    let mut lines = LineBuffer::new(SEPARATOR);
    let mut chunk = vec![0; 64 * 1024];
    while let Ok(got @ 1..) = stream.read(&mut chunk) {
        let max_line = publisher.limits.max_control_line();
        lines.push(&chunk[..got], max_line, |line| {
            // A line over the limit is skipped.
            if let Ok(piece) = line {
                publisher.line(piece.bytes());
            }
        });
        for worker in workers {
            let _ = worker.waker.wake();
        }
        let replies = std::mem::take(&mut publisher.replies);
        if !replies.is_empty() && stream.write_all(&replies).is_err() {
            return;
        }
    }
}

/// The commands one control line holds, split as the server's control thread splits a line.
/// Kept to itself so that it follows the server's framing of commands as that changes.
fn commands(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    split_parts(line, SEPARATOR)
}

/// What a control connection's commands act on, and the replies it has not written yet.
struct Publisher<'a> {
    workers: &'a [WorkerHandle],
    ids: &'a Mutex<EventIds>,
    streaming: &'a AtomicU64,
    limits: Limits,
    replies: Vec<u8>,
}

impl Publisher<'_> {
    /// Publishes every message of a line to every worker (without waking them) and queues the
    /// replies; a command that does not parse is ignored, as is any other than those two.
    fn line(&mut self, line: &[u8]) {
        for part in commands(line) {
            match parse_command(part, &self.limits) {
                // hasses' form, the load tools' own: one target.
                Ok(Command::Publish(publish, _)) if publish.audience.targets.len() == 1 => {
                    let frame = encode_event(self.ids.lock().next_id(), &publish.message);
                    let target = publish.audience.targets.into_iter().next().unwrap_or(Target::All);
                    let message = Arc::new(Message { target, frame });
                    for worker in self.workers {
                        let _ = worker.messages.send(Arc::clone(&message));
                    }
                }
                Ok(Command::Query(Query::NumberOfClients, Answer::Reply)) => {
                    let count = self.streaming.load(Ordering::Relaxed);
                    let _ = writeln!(self.replies, "{{\"numberofclients\":{count}}}");
                }
                _ => {}
            }
        }
    }
}

/// A connection: its socket, and the request head until it is complete.
struct Connection {
    socket: TcpStream,
    request: Vec<u8>,
    streaming: bool,
}

/// A worker's connections, indexed by token. A key is never reused, so a stale entry in the
/// subscriber lists finds `None`.
struct Connections {
    slots: Vec<Option<Connection>>,
    /// Streaming connections over all workers, for `tcpnumberofclients`.
    streaming: Arc<AtomicU64>,
}

impl Connections {
    /// Writes `bytes` to a streaming connection; closes one that does not take them whole.
    fn send(&mut self, key: usize, bytes: &[u8]) {
        let Some(conn) = self.slots[key].as_mut().filter(|c| c.streaming) else { return };
        if !matches!(conn.socket.write(bytes), Ok(n) if n == bytes.len()) {
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        if self.slots[key].take().is_some_and(|c| c.streaming) {
            self.streaming.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One worker's state, on its own thread.
struct Worker {
    poll: Poll,
    listener: TcpListener,
    messages: Receiver<Arc<Message>>,
    connections: Connections,
    subscribers: HashMap<String, Vec<usize>>,
    responses: Responses,
    route: Route,
    read_buf: Box<[u8; READ_CHUNK]>,
}

impl Worker {
    fn new(
        mut listener: TcpListener,
        path: &str,
        streaming: Arc<AtomicU64>,
    ) -> io::Result<(Worker, WorkerHandle)> {
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (sender, messages) = unbounded();
        let worker = Worker {
            poll,
            listener,
            messages,
            connections: Connections { slots: Vec::new(), streaming },
            subscribers: HashMap::new(),
            responses: Responses::new("*", false),
            route: Route { path: path.to_string() },
            read_buf: Box::new([0; READ_CHUNK]),
        };
        Ok((worker, WorkerHandle { messages: sender, waker }))
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return eprintln!("floor-server: epoll failed: {e}");
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.deliver_all(),
                    Token(key) => self.read(key),
                }
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut socket, _)) => {
                    let slots = &mut self.connections.slots;
                    if self
                        .poll
                        .registry()
                        .register(&mut socket, Token(slots.len()), Interest::READABLE)
                        .is_ok()
                    {
                        slots.push(Some(Connection { socket, request: Vec::new(), streaming: false }));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return eprintln!("floor-server: accept failed: {e}"),
            }
        }
    }

    /// Reads until a short read (the server's trick too); the request head gets the response
    /// head, and anything after it is ignored.
    fn read(&mut self, key: usize) {
        loop {
            let Some(conn) = self.connections.slots[key].as_mut() else { return };
            let got = match conn.socket.read(&mut self.read_buf[..]) {
                Ok(0) => return self.connections.close(key),
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.connections.close(key),
            };
            if !conn.streaming {
                conn.request.extend_from_slice(&self.read_buf[..got]);
                match judge(&conn.request, &self.route) {
                    Judgement::Incomplete => {}
                    Judgement::Subscribe(request) => self.stream(key, request.tokens),
                    _ => return self.connections.close(key),
                }
            }
            if got < READ_CHUNK {
                return;
            }
        }
    }

    fn stream(&mut self, key: usize, tokens: Vec<String>) {
        let Some(conn) = self.connections.slots[key].as_mut() else { return };
        conn.streaming = true;
        conn.request = Vec::new();
        self.connections.streaming.fetch_add(1, Ordering::Relaxed);
        for token in tokens {
            self.subscribers.entry(token).or_default().push(key);
        }
        self.connections.send(key, &self.responses.handshake);
    }

    /// Sends every waiting message; consecutive messages to one target go out in one write.
    fn deliver_all(&mut self) {
        let messages: Vec<Arc<Message>> = self.messages.try_iter().collect();
        for run in messages.chunk_by(|a, b| a.target == b.target) {
            let bytes = match run {
                [one] => one.frame.clone(),
                _ => run
                    .iter()
                    .fold(BytesMut::new(), |mut all, m| {
                        all.extend_from_slice(&m.frame);
                        all
                    })
                    .freeze(),
            };
            match &run[0].target {
                Target::All => {
                    (0..self.connections.slots.len()).for_each(|key| self.connections.send(key, &bytes))
                }
                Target::Token(token) => {
                    for &key in self.subscribers.get(token.as_str()).into_iter().flatten() {
                        self.connections.send(key, &bytes);
                    }
                }
                Target::Prefix(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's end of its channel, with the waker the publisher would wake.
    fn worker() -> (WorkerHandle, Receiver<Arc<Message>>, Poll) {
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), WAKER).unwrap();
        let (messages, inbox) = unbounded();
        (WorkerHandle { messages, waker }, inbox, poll)
    }

    #[test]
    fn a_line_holds_several_commands_as_the_servers_do() {
        let (handle, inbox, _poll) = worker();
        let workers = [handle];
        let ids = Mutex::new(EventIds::starting_now());
        let streaming = AtomicU64::new(7);
        let mut publisher = Publisher {
            workers: &workers,
            ids: &ids,
            streaming: &streaming,
            limits: Limits::default(),
            replies: Vec::new(),
        };
        publisher.line(b"a=1;b=2; ;tcpnumberofclients;nonsense");
        let targets: Vec<Target> = inbox.try_iter().map(|m| m.target.clone()).collect();
        assert_eq!(targets, [Target::Token("a".into()), Target::Token("b".into())]);
        assert_eq!(publisher.replies, b"{\"numberofclients\":7}\n");
    }
}
