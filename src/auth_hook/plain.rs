//! The thread that asks an `http://` backend (`hasses-auth`): up to [`CONNECTIONS`]
//! questions at once, each on a kept-alive connection of its own, all on one mio loop.
//!
//! Owns those connections and the questions on them: a question is taken from the queue when a
//! connection is free, its request written, its answer read as it comes (`client`'s pure
//! [`read_response`]), and the verdict sent back to the shard. A connection the backend closed
//! while it was kept is opened again, once, for the question that found it so. One thread for
//! many questions: answers that arrive together are read in one wake-up, where a thread per
//! question would be switched to for each. It does not judge answers (`read_answer` does), nor
//! speak TLS (`https://` backends are `pool`'s threads').

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use parking_lot::Mutex;
use tracing::{debug, warn};

use super::client::{read_response, write_request, AskError, BadAnswer, Progress, Response, Target};
use super::job::{Bell, Job, Verdict};
use super::{read_answer, unix_now, Answer, Cache};

/// How many questions are asked at once: a slow backend holds up this many, not more.
pub const CONNECTIONS: usize = 16;
/// The token of the loop's waker, rung when a question is queued.
pub const WAKER: Token = Token(CONNECTIONS);
/// The bytes of an answer read at once, at first.
const READ_CHUNK: usize = 4096;

/// One connection to the backend, and the question on it, if any.
struct Line {
    stream: Option<TcpStream>,
    /// Whether `stream` finished connecting.
    connected: bool,
    question: Option<Asking>,
    /// The request's bytes; reused.
    request: Vec<u8>,
    /// What is read of the answer: zeroed once, not for each read.
    received: Vec<u8>,
}

/// A question being asked on a line.
struct Asking {
    job: Job,
    /// Of the request, the bytes written.
    written: usize,
    /// Of `received`, the bytes read.
    filled: usize,
    /// Whether it was sent on a kept connection, which the backend may have closed meanwhile.
    kept: bool,
    /// Which of the backend's addresses the connection went to.
    address: usize,
}

/// The loop: its poll, lines, the queue of questions and the backend's addresses.
pub struct Asker {
    poll: Poll,
    lines: Vec<Line>,
    queue: Receiver<Job>,
    /// Rung by the shards with each question; quiet while the loop has not looked.
    bell: Bell,
    cache: Option<Arc<Mutex<Cache>>>,
    target: Target,
    /// The backend's addresses: looked up at start, and again when none takes a connection.
    addresses: Vec<SocketAddr>,
}

impl Asker {
    /// A loop for `target`'s questions from `queue`; `poll` is the one `bell` rings.
    pub fn new(
        poll: Poll,
        bell: Bell,
        queue: Receiver<Job>,
        cache: Option<Arc<Mutex<Cache>>>,
        target: Target,
    ) -> Asker {
        let lines = (0..CONNECTIONS)
            .map(|_| Line {
                stream: None,
                connected: false,
                question: None,
                request: Vec::new(),
                received: vec![0; READ_CHUNK],
            })
            .collect();
        let mut asker = Asker { poll, lines, queue, bell, cache, target, addresses: Vec::new() };
        // A host not found now is looked up again, and said, at the first question.
        let _ = asker.look_up();
        asker
    }

    /// Asks until the shards are gone.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(CONNECTIONS + 1);
        loop {
            let timeout = self.next_deadline().map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("Auth hook: its loop cannot wait for the backend: {e}");
                    return;
                }
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.progress(event.token().0);
                }
            }
            self.expire(Instant::now());
            if !self.take_questions() {
                return;
            }
        }
    }

    /// The earliest deadline of the questions being asked.
    fn next_deadline(&self) -> Option<Instant> {
        self.lines.iter().filter_map(|line| line.question.as_ref().map(|q| q.job.deadline)).min()
    }

    /// Fails the questions past their deadline; their connections are dropped.
    fn expire(&mut self, now: Instant) {
        for index in 0..self.lines.len() {
            if self.lines[index].question.as_ref().is_some_and(|q| q.job.deadline <= now) {
                self.answer(index, Answer::Failed(AskError::Timeout.to_string()), true);
            }
        }
    }

    /// Starts queued questions on free lines; false once the shards are gone and none is asked.
    fn take_questions(&mut self) -> bool {
        self.bell.taking();
        while let Some(index) = self.lines.iter().position(|line| line.question.is_none()) {
            match self.queue.try_recv() {
                Ok(job) => self.start(index, job),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return self.lines.iter().any(|l| l.question.is_some()),
            }
        }
        true
    }

    /// Starts asking `job` on line `index`.
    fn start(&mut self, index: usize, job: Job) {
        if job.deadline <= Instant::now() {
            // The shard gave up on it already, and said so.
            debug!("Auth hook: a question waited past its deadline, not asked");
            return;
        }
        let line = &mut self.lines[index];
        if let Err(e) = write_request(&mut line.request, &self.target, &job.question.headers) {
            job.reply.send(Verdict { ticket: job.ticket, answer: Answer::Failed(e.to_string()) });
            return;
        }
        let kept = line.stream.is_some();
        line.question = Some(Asking { job, written: 0, filled: 0, kept, address: 0 });
        if kept {
            self.progress(index);
        } else {
            self.connect(index, 0, None);
        }
    }

    /// Opens line `index`'s connection to the backend's address `address`; `failed`: why the
    /// one before did not take it.
    fn connect(&mut self, index: usize, address: usize, mut failed: Option<io::Error>) {
        if self.addresses.is_empty() {
            failed = self.look_up().err().or(failed);
        }
        let Some(&to) = self.addresses.get(address) else {
            // Looked up again next time: the host may have moved.
            self.addresses.clear();
            let why =
                failed.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "its host has no address"));
            return self.answer(index, Answer::Failed(AskError::Unreachable(why).to_string()), true);
        };
        let line = &mut self.lines[index];
        line.stream = None;
        line.connected = false;
        if let Some(question) = line.question.as_mut() {
            (question.written, question.filled, question.kept, question.address) = (0, 0, false, address);
        }
        let opened = TcpStream::connect(to).and_then(|mut stream| {
            let interest = Interest::READABLE | Interest::WRITABLE;
            self.poll.registry().register(&mut stream, Token(index), interest)?;
            Ok(stream)
        });
        match opened {
            Ok(stream) => self.lines[index].stream = Some(stream),
            Err(e) => self.connect(index, address + 1, Some(e)),
        }
    }

    /// Looks the backend's host up; on failure, the next connection looks again.
    fn look_up(&mut self) -> io::Result<()> {
        self.addresses = self.target.address().to_socket_addrs()?.collect();
        Ok(())
    }

    /// Moves line `index` on as far as its socket lets it: connected, the request written, the
    /// answer read.
    fn progress(&mut self, index: usize) {
        let line = &mut self.lines[index];
        let Some(stream) = line.stream.as_mut() else { return };
        let Some(question) = line.question.as_mut() else {
            // A kept connection with nothing asked: the backend closed it, or spoke out of turn.
            let mut byte = [0u8; 1];
            if !matches!(stream.read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                line.stream = None;
            }
            return;
        };
        if !line.connected {
            match stream.peer_addr() {
                Ok(_) => {
                    line.connected = true;
                    let _ = stream.set_nodelay(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => match stream.take_error() {
                    Ok(None) => return,
                    Ok(Some(e)) | Err(e) => {
                        let next = question.address + 1;
                        return self.connect(index, next, Some(e));
                    }
                },
                Err(e) => {
                    let next = question.address + 1;
                    return self.connect(index, next, Some(e));
                }
            }
        }
        let kept = question.kept;
        match exchange(stream, question, &line.request, &mut line.received) {
            Ok(None) => {}
            Ok(Some(response)) => {
                let answer = read_answer(response.status, &response.body);
                self.answer(index, answer, response.close);
            }
            Err(e) if kept && e.may_be_stale() => self.connect(index, 0, None),
            Err(e) => self.answer(index, Answer::Failed(e.to_string()), true),
        }
    }

    /// Sends line `index`'s question its `answer`, frees the line, and drops its connection
    /// when `close`.
    fn answer(&mut self, index: usize, answer: Answer, close: bool) {
        let line = &mut self.lines[index];
        if close {
            line.stream = None;
        }
        let Some(Asking { job, .. }) = line.question.take() else { return };
        if let Some(cache) = self.cache.as_ref().filter(|_| !answer.has_expired(unix_now())) {
            cache.lock().put(job.question.key.clone(), answer.clone(), Instant::now());
        }
        job.reply.send(Verdict { ticket: job.ticket, answer });
    }
}

/// Writes what is left of `request` and reads what has come of the answer; the answer once
/// whole, `None` while the socket has no more to take or give. A request sent whole at once
/// is not read after: its answer cannot be there yet, and its coming wakes the loop. One sent
/// in parts is: the backend may have answered before its end.
fn exchange(
    stream: &mut TcpStream,
    question: &mut Asking,
    request: &[u8],
    received: &mut Vec<u8>,
) -> Result<Option<Response>, AskError> {
    if question.written < request.len() {
        let at_once = question.written == 0;
        write(stream, question, request)?;
        if at_once || question.written < request.len() {
            return Ok(None);
        }
    }
    loop {
        if question.filled == received.len() {
            // Bounded: `read_response` refuses an answer longer than it takes.
            received.resize(2 * question.filled, 0);
        }
        let closed = match stream.read(&mut received[question.filled..]) {
            Ok(0) => true,
            Ok(read) => {
                question.filled += read;
                false
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(AskError::Broken(e)),
        };
        match read_response(&received[..question.filled], closed)? {
            Progress::Whole(response) => return Ok(Some(response)),
            // `read_response` says so itself; this keeps the loop finite whatever it says.
            Progress::Partial if closed => return Err(AskError::Answer(BadAnswer::Cut)),
            Progress::Partial => {}
        }
    }
}

/// Writes what the socket takes of what is left of `request`.
fn write(stream: &mut TcpStream, question: &mut Asking, request: &[u8]) -> Result<(), AskError> {
    while question.written < request.len() {
        match stream.write(&request[question.written..]) {
            Ok(0) => return Err(AskError::Broken(io::ErrorKind::WriteZero.into())),
            Ok(written) => question.written += written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(AskError::Broken(e)),
        }
    }
    Ok(())
}
