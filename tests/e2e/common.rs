//! What every end-to-end test needs: the real `hasses` binary started on free ports with its log
//! captured, an SSE client that speaks just enough HTTP to check every byte, and the control port.
//!
//! A server is asked for port 0 and says which ports it got as systemd's units do: in the
//! message that tells its readiness on `NOTIFY_SOCKET` (see [`NotifySocket`]), sent once every
//! listener is up, so a test neither parses log lines nor races the start.
//!
//! Every wait has a deadline (a few seconds) and every loop a bound, so a broken server fails a
//! test instead of hanging it. All traffic stays on loopback. Each test starts its own server, so
//! tests run in parallel.

pub mod api;
pub mod bench_tool;

pub use api::{Api, Reply};

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(5);

/// How often [`wait_until`] looks.
const LOOK: Duration = Duration::from_millis(20);

/// Waits up to `timeout` for `condition` to hold, looking every [`LOOK`]; panics saying `what`
/// did not happen. What a test writes instead of sleeping "long enough for X": it waits as long
/// as X takes, and fails, rather than passing by luck or hanging, when X never comes. Bounded
/// in looks as well as in time, however long a look takes.
pub fn wait_until(timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
    if !holds_within(timeout, condition) {
        panic!("not within {timeout:?}: {what}");
    }
}

/// Whether `condition` holds within `timeout`, looking every [`LOOK`]: [`wait_until`] for a
/// caller that goes on either way.
pub fn holds_within(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let looks = timeout.as_millis() / LOOK.as_millis() + 1;
    for _ in 0..looks {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(LOOK);
    }
    false
}

/// Where a log line was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (legacy `-nodaemon`).
    Stdout,
    /// Standard error (modern flags).
    Stderr,
}

/// Log lines captured from the server, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Log {
    lines: Arc<Mutex<Vec<(Stream, String)>>>,
    /// Streams still being read.
    open: Arc<AtomicUsize>,
}

impl Log {
    fn capture(&self, from: impl Read + Send + 'static, stream: Stream) {
        let (lines, open) = (Arc::clone(&self.lines), Arc::clone(&self.open));
        open.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || {
            for line in BufReader::new(from).lines().map_while(Result::ok) {
                lines.lock().unwrap().push((stream, line));
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Whether every stream was read to its end (the process and whatever it started closed it).
    fn read_to_end(&self) -> bool {
        self.open.load(Ordering::SeqCst) == 0
    }

    /// How many lines have arrived so far: pass it to the `_from` waits to skip older lines.
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().map(|(_, l)| l.clone()).collect()
    }

    /// Every line so far with where it was written.
    pub fn lines_with_stream(&self) -> Vec<(Stream, String)> {
        self.lines.lock().unwrap().clone()
    }

    /// The lines from index `start` on.
    pub fn lines_from(&self, start: usize) -> Vec<String> {
        self.lines.lock().unwrap().iter().skip(start).map(|(_, l)| l.clone()).collect()
    }

    /// The index and text of the first line at or after `start` that matches, waiting up to `timeout`.
    pub fn find_from(
        &self,
        start: usize,
        predicate: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                if let Some((i, (_, l))) =
                    lines.iter().enumerate().skip(start).find(|(_, (_, l))| predicate(l))
                {
                    return Some((i, l.clone()));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first line at or after `start` that matches; panics with the log after `timeout`.
    pub fn wait_for_line_from(
        &self,
        start: usize,
        predicate: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> (usize, String) {
        match self.find_from(start, predicate, timeout) {
            Some(found) => found,
            None => panic!("no matching log line within {timeout:?}; log:\n{}", self.dump()),
        }
    }

    /// The first line that matches; panics with the log after `timeout`.
    pub fn wait_for_line(&self, predicate: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.wait_for_line_from(0, predicate, timeout).1
    }

    /// The lines of a block that starts with the line `first` and ends with the line `last`
    /// (both included), the first such block at or after `start`.
    pub fn wait_for_block(&self, start: usize, first: &str, last: &str) -> Vec<String> {
        let (begin, _) = self.wait_for_line_from(start, |l| l == first, WAIT);
        let (end, _) = self.wait_for_line_from(begin + 1, |l| l == last, WAIT);
        self.lines.lock().unwrap()[begin..=end].iter().map(|(_, l)| l.clone()).collect()
    }

    /// True when a line at or after `start` matches (no waiting).
    pub fn has_from(&self, start: usize, predicate: impl Fn(&str) -> bool) -> bool {
        self.lines.lock().unwrap().iter().skip(start).any(|(_, l)| predicate(l))
    }

    /// The whole log, for failure messages (the last 200 lines).
    pub fn dump(&self) -> String {
        let lines = self.lines.lock().unwrap();
        let skip = lines.len().saturating_sub(200);
        lines.iter().skip(skip).map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
    }
}

/// The running server; stopped with SIGTERM (then SIGKILL if it lingers) when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// What it logged.
    pub log: Log,
    /// The SSE port.
    pub sse_port: u16,
    /// The control port, if it has one.
    pub control_port: Option<u16>,
    /// Where it tells systemd its state (`NOTIFY_SOCKET`).
    pub notify: NotifySocket,
    /// What it said when it became ready (empty until [`Server::listening`]).
    pub ready: Ready,
    exited: Option<ExitStatus>,
}

impl Server {
    /// Starts the server with modern flags on free ports: `--port 0 --control-port 0 --api-bind
    /// 127.0.0.1:0 --workers 2 --match-url /sse`, then `extra` (a later flag wins over an earlier
    /// one). The API's default port is not used: tests run in parallel.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_wrapped(&[], extra)
    }

    /// Starts the server as [`Server::start`] does, through `wrapper` (a command that runs the
    /// rest of its command line, e.g. `prlimit --nofile=64 --`).
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Server {
        let mut args = vec![
            "--port",
            "0",
            "--control-port",
            "0",
            "--api-bind",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--match-url",
            "/sse",
        ];
        args.extend_from_slice(extra);
        Server::spawn_wrapped(wrapper, &args).listening(WAIT)
    }

    /// Starts the binary with exactly `args` (legacy flags, a config file) and takes its ports
    /// from its readiness message, as [`Server::start`] does. Ask for port 0 (`-p=0 -cp=0`, also
    /// in a config file): the kernel picks a free port as the server binds it, so nothing can
    /// take it in between, as can happen to a port picked ahead with [`free_port`].
    pub fn start_exact(args: &[&str]) -> Server {
        Server::spawn(args).listening(WAIT)
    }

    /// Waits up to `timeout` until the server says it is ready, and takes its ports from what
    /// it says. Panics with the log if it exits first (a bad flag, a port in use) or the time is
    /// up.
    pub fn listening(mut self, timeout: Duration) -> Server {
        let ready = self.notify.wait_ready(timeout, || self.child.try_wait().ok().flatten().is_none());
        let Some(ready) = ready else {
            panic!("the server did not notify READY=1; log:\n{}", self.stop_and_dump());
        };
        self.sse_port = ready.sse_port();
        self.control_port = ready.control_port();
        self.ready = ready;
        self
    }

    /// Starts the binary with exactly `args`, capturing stdout and stderr; waits for nothing.
    pub fn spawn(args: &[&str]) -> Server {
        Server::spawn_wrapped(&[], args)
    }

    /// Starts the binary with exactly `args`, through `wrapper` if it is not empty.
    pub fn spawn_wrapped(wrapper: &[&str], args: &[&str]) -> Server {
        let binary = env!("CARGO_BIN_EXE_hasses");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command.args(args);
        Server::spawn_command(command)
    }

    /// Runs `command`, which starts the server (e.g. `cargo run`), capturing stdout and stderr,
    /// with a [`NotifySocket`] of its own; waits for nothing.
    pub fn spawn_command(mut command: Command) -> Server {
        let notify = NotifySocket::new();
        let mut child = command
            .env("NOTIFY_SOCKET", &notify.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let log = Log::default();
        log.capture(child.stdout.take().expect("piped stdout"), Stream::Stdout);
        log.capture(child.stderr.take().expect("piped stderr"), Stream::Stderr);
        Server { child, log, sse_port: 0, control_port: None, notify, ready: Ready::default(), exited: None }
    }

    /// The HTTP API's port (the server must have the API).
    pub fn api_port(&self) -> u16 {
        self.ready.api_port().expect("this server has the HTTP API")
    }

    /// The control port (the server must have one).
    pub fn cport(&self) -> u16 {
        self.control_port.expect("this server has a control port")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the server.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the server");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server: SIGTERM, then SIGKILL after a few seconds.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() && self.child.try_wait().ok().flatten().is_none() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
        }
        let status = self.wait_exit(WAIT);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }

    fn stop_and_dump(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its last lines are what tells why: read them all, unless something it started holds
        // its output open.
        holds_within(Duration::from_secs(1), || self.log.read_to_end());
        self.log.dump()
    }

    /// Sends `input` to the control port and returns every byte of the reply (see [`control`]).
    pub fn control(&self, input: &str) -> String {
        control(self.cport(), input)
    }

    /// Publishes a control line that expects no reply.
    pub fn publish(&self, line: &str) {
        let reply = self.control(&format!("{line}\n"));
        assert_eq!(reply, "", "a publish gets no reply");
    }

    /// One `tcp…` command's JSON reply.
    pub fn tcp_json(&self, command: &str) -> serde_json::Value {
        tcp_json(self.cport(), command)
    }

    /// Polls the `tcp…` command `command` until `key` in its reply equals `expected`; returns the last reply.
    pub fn wait_json(&self, command: &str, key: &str, expected: u64) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.tcp_json(command);
            if value[key] == expected || Instant::now() >= deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `status` and returns its block from the log.
    pub fn status_block(&self) -> Vec<String> {
        let start = self.log.len();
        self.publish("status");
        self.log.wait_for_block(start, STATUS_FIRST, STATUS_LAST)
    }

    /// Runs `clientlist` and returns its block from the log.
    pub fn client_list(&self) -> Vec<String> {
        let start = self.log.len();
        self.publish("clientlist");
        self.log.wait_for_block(start, LIST_FIRST, LIST_LAST)
    }

    /// A subscribed SSE client (`GET /sse?QUERY`, asserted `200`).
    pub fn subscribe(&self, query: &str) -> SseClient {
        SseClient::<TcpStream>::subscribe(self.sse_port, query)
    }

    /// Sends `request` on a new connection and reads the whole answer (the server must close).
    pub fn request(&self, bytes: &[u8]) -> Response {
        request(self.sse_port, bytes)
    }
}

impl Drop for Server {
    /// Cleanup only: SIGKILL, so a server that ignores SIGTERM does not slow every test down
    /// (the SIGTERM behaviour has tests of its own).
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A unix datagram socket a server tells its state on, as systemd gives one to a `Type=notify`
/// unit in `NOTIFY_SOCKET`: a file in the temp directory, or a name in the abstract namespace.
pub struct NotifySocket {
    socket: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    pub env: String,
    /// The socket's file, removed when dropped.
    _file: Option<TempFile>,
}

impl NotifySocket {
    /// A socket at a fresh path in the temp directory, writable by every user: a server started
    /// with `--user` has dropped root by the time it is ready.
    pub fn new() -> NotifySocket {
        use std::os::unix::fs::PermissionsExt;
        let file = TempFile::new("notify.sock");
        let socket = UnixDatagram::bind(file.path()).expect("bind the notification socket");
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o666))
            .expect("chmod the notification socket");
        NotifySocket { socket, env: file.arg().to_owned(), _file: Some(file) }
    }

    /// A socket named `name` in the abstract namespace (`NOTIFY_SOCKET=@name`).
    pub fn abstract_named(name: &str) -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).expect("bind the abstract notification socket");
        NotifySocket { socket, env: format!("@{name}"), _file: None }
    }

    /// The next message; `None` if none came within `timeout`.
    pub fn receive(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("cannot read the notification socket: {e}"),
        }
    }

    /// The first message with `READY=1`, waiting up to `timeout` while `running()` says the
    /// server has not exited; `None` if it exited or the time is up.
    pub fn wait_ready(&self, timeout: Duration, mut running: impl FnMut() -> bool) -> Option<Ready> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            // Short waits, so a server that exited fails the test at once.
            if let Some(message) = self.receive(left.min(Duration::from_millis(50))) {
                if message.lines().any(|line| line == "READY=1") {
                    return Some(Ready(message));
                }
            }
            if !running() {
                return None;
            }
        }
    }
}

/// A server's readiness message: `READY=1`, then `STATUS=…` (what `systemctl status` shows),
/// `X_HASSES_SSE=ADDRESS`, `X_HASSES_CONTROL=ADDRESS` if it has a control port and
/// `X_HASSES_API=ADDRESS` if it has the HTTP API, a line each.
#[derive(Debug, Clone, Default)]
pub struct Ready(pub String);

impl Ready {
    /// The value assigned to `name`, if a line assigns it.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
    }

    /// The address assigned to `name`, if a line assigns it.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        let value = self.value(name)?;
        Some(value.parse().unwrap_or_else(|e| panic!("{name}={value} is not an address ({e}): {:?}", self.0)))
    }

    /// The SSE port.
    pub fn sse_port(&self) -> u16 {
        self.address("X_HASSES_SSE").unwrap_or_else(|| panic!("no X_HASSES_SSE in {:?}", self.0)).port()
    }

    /// The control port, if the server has one.
    pub fn control_port(&self) -> Option<u16> {
        self.address("X_HASSES_CONTROL").map(|addr| addr.port())
    }

    /// The HTTP API's port, if the server has one.
    pub fn api_port(&self) -> Option<u16> {
        self.address("X_HASSES_API").map(|addr| addr.port())
    }
}

/// The port at the end of the address that follows `prefix` (`[::]:PORT`, `127.0.0.1:PORT`).
pub fn port_after(line: &str, prefix: &str) -> Option<u16> {
    let rest = line.split(prefix).nth(1)?;
    let addr = rest.split_whitespace().next()?;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// A port that was free a moment ago, for programs that cannot be asked for port 0 (nginx,
/// Apache). Another program can take it before the one it is meant for binds it: start such a
/// program with `programs::Process::start_listening`, which tries again with another port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A path under the temp directory that no other test uses (nothing is created there).
pub fn temp_path(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    std::env::temp_dir().join(format!("hasses-test-{}-{n}-{nanos}-{name}", std::process::id()))
}

/// Removes a file when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// A fresh path (see [`temp_path`]), removed when dropped.
    pub fn new(name: &str) -> TempFile {
        TempFile(temp_path(name))
    }

    /// The path as text, for a command line.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `text` to the FIFO at `path` (the server holds it open, so this does not block).
pub fn write_fifo(path: &Path, text: &[u8]) {
    let mut fifo = std::fs::OpenOptions::new().write(true).open(path).expect("open the FIFO for writing");
    fifo.write_all(text).expect("write to the FIFO");
}

/// Connects to 127.0.0.1:`port` with read and write timeouts.
pub fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the server");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `input` to the control port, shuts down writing, and returns the reply read to EOF.
pub fn control(port: u16, input: &str) -> String {
    control_bytes(port, &[input.as_bytes()], Duration::ZERO)
}

/// Sends each piece in its own write, `pause` apart, then shuts down writing and reads to EOF.
pub fn control_bytes(port: u16, pieces: &[&[u8]], pause: Duration) -> String {
    let mut stream = connect(port);
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        stream.write_all(piece).expect("write to the control port");
    }
    stream.shutdown(Shutdown::Write).expect("shut down writing");
    let bytes = read_to_eof(&mut stream, Vec::new(), WAIT).expect("the control port closes after replying");
    String::from_utf8(bytes).expect("a UTF-8 reply")
}

/// The JSON reply of one `tcp…` command, which must be one line.
pub fn tcp_json(port: u16, command: &str) -> serde_json::Value {
    let reply = control(port, &format!("{command}\n"));
    assert!(reply.ends_with('\n'), "the reply to {command} ends with a newline: {reply:?}");
    assert_eq!(reply.matches('\n').count(), 1, "one line in reply to {command}: {reply:?}");
    serde_json::from_str(reply.trim_end())
        .unwrap_or_else(|e| panic!("invalid JSON for {command}: {e}: {reply}"))
}

/// Reads until EOF (or a reset), appending to `buf`; `None` if the peer kept it open past `timeout`.
pub fn read_to_eof(stream: &mut TcpStream, mut buf: Vec<u8>, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return Some(buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(buf),
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// A parsed HTTP response head.
#[derive(Debug, Clone)]
pub struct Head {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// The status code.
    pub status: u16,
    /// Header lines in order, as (name, value).
    pub headers: Vec<(String, String)>,
}

impl Head {
    fn parse(text: &str) -> Head {
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            panic!("not an HTTP status line: {status_line:?} in {text:?}");
        });
        assert!(status_line.starts_with("HTTP/1.1 "), "status line {status_line:?}");
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (name, value) =
                    l.split_once(':').unwrap_or_else(|| panic!("malformed header line {l:?}"));
                (name.to_string(), value.trim().to_string())
            })
            .collect();
        Head { status_line, status, headers }
    }

    /// The value of header `name` (case-insensitive), if present once; panics if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "header {name} repeated in {:?}", self.headers);
        first
    }

    /// The header names, lowercased.
    pub fn names(&self) -> Vec<String> {
        self.headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect()
    }
}

/// A whole response to a request the server answers and closes.
#[derive(Debug, Clone)]
pub struct Response {
    /// Its head.
    pub head: Head,
    /// Everything after the head.
    pub body: Vec<u8>,
}

/// Splits `bytes` at the end of the first head (`\r\n\r\n`).
fn split_head(bytes: &[u8]) -> Option<(Head, Vec<u8>)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&bytes[..end]).expect("a UTF-8 response head");
    Some((Head::parse(text), bytes[end + 4..].to_vec()))
}

/// Sends `request` on a new connection; reads the answer to EOF (panics if the server keeps the
/// connection open for more than a few seconds).
pub fn request(port: u16, request: &[u8]) -> Response {
    let mut stream = connect(port);
    stream.write_all(request).expect("send the request");
    let bytes = read_to_eof(&mut stream, Vec::new(), WAIT).unwrap_or_else(|| {
        panic!("the server did not close after answering {:?}", String::from_utf8_lossy(request))
    });
    let (head, body) = split_head(&bytes)
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&bytes)));
    Response { head, body }
}

/// `GET /sse?QUERY HTTP/1.1` as a browser's EventSource sends it.
pub fn get_request(query: &str) -> String {
    format!(
        "GET /sse?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\nConnection: keep-alive\r\nUser-Agent: hasses-test\r\n\r\n"
    )
}

/// One event as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its `id:`; 0 for an event without one (such as `event: reset`: real ids are never 0).
    pub id: u64,
    /// Its `event:` type, if it is a named event.
    pub event: Option<String>,
    /// Its `data:` lines joined with `\n`.
    pub data: String,
}

/// Why no event came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoEvent {
    /// Nothing within the time given.
    Timeout,
    /// The server closed the connection.
    Closed,
}

/// The first and last lines of the `status` block in the log.
pub const STATUS_FIRST: &str = "------- status of hasses -------";
pub const STATUS_LAST: &str = "------------- end --------------";
/// The first and last lines of the `clientlist` block in the log.
pub const LIST_FIRST: &str = "------- requested client list -------";
pub const LIST_LAST: &str = "---------------- end ----------------";

/// Runs the binary with `args` to its exit (within a few seconds): status, stdout, stderr.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hasses"));
    command.args(args);
    run_bounded(command, WAIT)
}

/// Runs `command` to its exit within `limit` (else kills it and panics): its status, standard
/// output and standard error. The outputs are read while it runs, so a long one cannot fill a
/// pipe and stall it.
pub fn run_bounded(mut command: Command, limit: Duration) -> (ExitStatus, String, String) {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let pipe = |mut from: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = from.read_to_string(&mut text);
            text
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// What an [`SseClient`] reads events from: a TCP stream, or TLS over one (the `tls` tests).
pub trait Transport: Read + Write {
    /// The TCP socket underneath, for its timeouts.
    fn socket(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

/// An SSE client that checks the chunked framing of every event.
pub struct SseClient<S = TcpStream> {
    /// The connection.
    pub stream: S,
    /// Bytes read but not consumed yet.
    buf: Vec<u8>,
    /// The handshake's response head.
    pub head: Option<Head>,
    /// Comment chunks (heartbeats) skipped so far.
    pub comments: usize,
    /// The last `retry:` seen.
    pub retry: Option<u32>,
    /// The server ended the stream as HTTP does (the last chunk, of size 0).
    pub ended: bool,
}

impl SseClient {
    /// A connection on which nothing has been sent yet.
    pub fn connect(port: u16) -> SseClient {
        SseClient::over(connect(port))
    }

    /// Wraps a connection made elsewhere (e.g. with socket options of its own).
    pub fn from_stream(stream: TcpStream) -> SseClient {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        SseClient::over(stream)
    }

    /// Connects, sends `GET /sse?QUERY`, and asserts the `200` handshake.
    pub fn subscribe(port: u16, query: &str) -> SseClient {
        let mut client = Self::connect(port);
        client.handshake(get_request(query).as_bytes());
        client
    }
}

impl<S: Transport> SseClient<S> {
    /// A client on `stream`, on which nothing has been read yet.
    pub fn over(stream: S) -> SseClient<S> {
        SseClient { stream, buf: Vec::new(), head: None, comments: 0, retry: None, ended: false }
    }

    /// Sends `request` and asserts the answer is the `200` handshake.
    pub fn handshake(&mut self, request: &[u8]) -> &Head {
        self.send(request);
        let head = self.read_head(WAIT).unwrap_or_else(|| {
            panic!("no response head to {:?}", String::from_utf8_lossy(request));
        });
        assert_eq!(head.status_line, "HTTP/1.1 200 OK", "handshake refused: {head:?}");
        self.head = Some(head);
        self.head.as_ref().unwrap()
    }

    /// Writes bytes to the server.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the server");
        self.stream.flush().expect("write to the server");
    }

    /// Reads more bytes; false on EOF or reset. Errors with `Timeout` after `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<bool, NoEvent> {
        let left = deadline.checked_duration_since(Instant::now()).ok_or(NoEvent::Timeout)?;
        self.stream.socket().set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(NoEvent::Timeout)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // TLS says UnexpectedEof for a close without close_notify.
                Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof) => {
                    return Ok(false)
                }
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Reads a response head (also one that arrives in the middle of the stream, as after a
    /// reinit); `None` on timeout or close.
    pub fn read_head(&mut self, timeout: Duration) -> Option<Head> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((head, rest)) = split_head(&self.buf) {
                self.buf = rest;
                return Some(head);
            }
            if !self.fill(deadline).ok()? {
                return None;
            }
        }
    }

    /// The next event, checking its chunk framing exactly.
    pub fn try_next_event(&mut self, timeout: Duration) -> Result<Event, NoEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.take_event() {
                return Ok(event);
            }
            if self.ended {
                return Err(NoEvent::Closed);
            }
            if !self.fill(deadline)? {
                assert!(self.buf.is_empty(), "the stream ended inside a chunk: {:?}", self.preview());
                return Err(NoEvent::Closed);
            }
        }
    }

    /// The next event; panics if none comes within a few seconds.
    pub fn next_event(&mut self) -> Event {
        match self.try_next_event(WAIT) {
            Ok(event) => event,
            Err(why) => panic!("no event: {why:?}"),
        }
    }

    /// The data of the next event.
    pub fn next_data(&mut self) -> String {
        self.next_event().data
    }

    /// Asserts the next event carries `data`.
    pub fn expect_data(&mut self, data: &str) -> Event {
        let event = self.next_event();
        assert_eq!(event.data, data, "unexpected event {event:?}");
        event
    }

    /// Waits until the server closes the connection, discarding what arrives; false on timeout.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.buf.clear();
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => return true,
                Err(_) => return false,
            }
        }
    }

    /// True when the connection is still open after `wait` (and nothing arrived on it).
    pub fn still_open_after(&mut self, wait: Duration) -> bool {
        matches!(self.try_next_event(wait), Err(NoEvent::Timeout)) && self.buf.is_empty()
    }

    fn preview(&self) -> String {
        String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)]).into_owned()
    }

    /// The lines of the next chunk that is not a comment, as sent (without the blank line that
    /// ends it); panics if none comes within a few seconds.
    pub fn next_lines(&mut self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(payload) = self.take_chunk() {
                let body =
                    payload.strip_suffix("\n\n").unwrap_or_else(|| panic!("no blank line: {payload:?}"));
                assert!(!body.contains('\r'), "{payload:?}");
                return body.split('\n').map(str::to_owned).collect();
            }
            assert!(self.fill(deadline).expect("a chunk in time"), "the server closed the stream");
        }
    }

    /// Takes one complete event out of the buffer. Comment-only chunks (heartbeats, `:\n\n`)
    /// and chunks that only set `retry:` are skipped.
    fn take_event(&mut self) -> Option<Event> {
        loop {
            let payload = self.take_chunk()?;
            let (event, retry) = parse_event(&payload);
            self.retry = retry.or(self.retry);
            if let Some(event) = event {
                return Some(event);
            }
        }
    }

    /// Takes one complete chunk that is not a comment out of the buffer, checking every byte of
    /// its framing; comment chunks (heartbeats) are counted and skipped.
    fn take_chunk(&mut self) -> Option<String> {
        loop {
            let line_end = self.buf.windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&self.buf[..line_end]).expect("a chunk size line");
            let size = usize::from_str_radix(size_text, 16)
                .unwrap_or_else(|_| panic!("not a chunk size: {size_text:?} in {:?}", self.preview()));
            let start = line_end + 2;
            if self.buf.len() < start + size + 2 {
                return None;
            }
            if size == 0 {
                // The last chunk: the stream ended (a drain, `--max-age`).
                self.buf.drain(..start + 2);
                self.ended = true;
                return None;
            }
            assert_eq!(
                &self.buf[start + size..start + size + 2],
                b"\r\n",
                "chunk not ended by CRLF: {:?}",
                self.preview()
            );
            let payload = String::from_utf8(self.buf[start..start + size].to_vec()).expect("a UTF-8 event");
            self.buf.drain(..start + size + 2);
            if is_comment(&payload) {
                self.comments += 1;
                continue;
            }
            return Some(payload);
        }
    }
}

/// True for a chunk that holds only SSE comment lines (`:…`), such as a heartbeat.
fn is_comment(payload: &str) -> bool {
    payload.strip_suffix("\n\n").is_some_and(|body| body.split('\n').all(|l| l.starts_with(':')))
}

/// `id: N\ndata: …\n(data: …\n)*\n` → the event.
fn parse_event(payload: &str) -> (Option<Event>, Option<u32>) {
    let body = payload
        .strip_suffix("\n\n")
        .unwrap_or_else(|| panic!("event not ended by a blank line: {payload:?}"));
    let (mut id, mut event, mut retry, mut data) = (None, None, None, Vec::new());
    for line in body.split('\n') {
        let (field, value) =
            line.split_once(": ").unwrap_or_else(|| panic!("not a field {line:?} in {payload:?}"));
        match field {
            "id" => id = Some(value.parse().unwrap_or_else(|_| panic!("not a numeric id: {payload:?}"))),
            "event" => event = Some(value.to_owned()),
            "retry" => retry = Some(value.parse().unwrap_or_else(|_| panic!("not a retry: {payload:?}"))),
            "data" => data.push(value),
            _ => panic!("unknown field {line:?} in {payload:?}"),
        }
        assert!(data.is_empty() || field == "data", "a field after the data lines: {payload:?}");
    }
    if data.is_empty() {
        assert!(id.is_none() && event.is_none(), "event without data: {payload:?}");
        return (None, retry);
    }
    assert!(id.is_some() || event.is_some(), "an unnamed event without an id: {payload:?}");
    (Some(Event { id: id.unwrap_or(0), event, data: data.join("\n") }), retry)
}

/// The uid this test runs as (the server reports its own, the same).
pub fn my_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}
