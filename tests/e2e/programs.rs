//! What the deploy tests need around the real programs they run (nginx, Apache, Chromium,
//! systemd-analyze, logrotate, all from Debian's packages): finding a program or failing with
//! the package to install, running it in a process group of its own that is always stopped,
//! a temporary directory, an SSE client that reads a stream a proxy has re-chunked, and
//! headless Chromium driven through the DevTools protocol over a pipe.
//!
//! Every wait has a deadline. Only loopback addresses are used.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{dup2, pipe2, Pid};
use serde_json::{json, Value};

use crate::common::{self, NotifySocket, Ready};

/// How long a started program gets to listen, or to exit after SIGTERM.
pub const START: Duration = Duration::from_secs(10);

/// The path of `name`, looked up in `PATH` and the usual system directories (`/usr/sbin` is
/// often missing from a user's `PATH`); panics naming the Debian package that provides it.
pub fn find_program(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(
        ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from),
    );
    for dir in dirs {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed: this test runs the real program. Install the Debian package \
         `{package}` (apt-get install {package}); .ci/test installs it."
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The repository file `relative` (e.g. `deploy/nginx/hasses.conf`), read whole.
pub fn repo_file(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The absolute path of the repository file `relative`.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The lines of a config file that are not comments (`#`) or blank, trimmed.
pub fn settings(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'))
}

/// Waits until the file at `path` has a whole line containing `text` and returns the file;
/// panics with `process`'s output after a few seconds.
pub fn wait_for_file_line(path: &Path, text: &str, process: &Process) -> String {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        // A line still being written may be cut short: only lines that end count.
        if content.split_inclusive('\n').any(|line| line.ends_with('\n') && line.contains(text)) {
            return content;
        }
        if Instant::now() >= deadline {
            panic!("no line with {text:?} in {}:\n{content}\n{}", path.display(), process.output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory removed with everything in it when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system's temp directory, readable by every user (nginx
    /// and Apache started as root read and write in it as `nobody`).
    pub fn new(name: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        let path = common::temp_path(name);
        std::fs::create_dir_all(&path).expect("create a temp directory");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the temp directory");
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to the file `name` inside it and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A program started in a process group of its own, its output going to a file. Dropping it
/// sends SIGTERM to the whole group (nginx's workers, Chromium's helpers), then SIGKILL to
/// whatever is left after a few seconds.
pub struct Process {
    child: Child,
    name: String,
    output: PathBuf,
    stopped: bool,
}

impl Process {
    /// Starts `command` with its standard output and error appended to `output`.
    pub fn spawn(mut command: Command, name: &str, output: PathBuf) -> Process {
        let file = File::options().create(true).append(true).open(&output).expect("open the output file");
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the output file"))
            .stderr(file)
            .process_group(0);
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process { child, name: name.to_owned(), output, stopped: false }
    }

    /// Starts hasses with `command` as [`Process::spawn`] does, telling it `notify` as systemd
    /// would, and waits until it says it is ready: what it said names its ports.
    pub fn start_hasses(mut command: Command, notify: &NotifySocket, output: PathBuf) -> (Process, Ready) {
        command.env("NOTIFY_SOCKET", &notify.env);
        let mut process = Process::spawn(command, "hasses", output);
        match notify.wait_ready(common::WAIT, || process.running()) {
            Some(ready) => (process, ready),
            None => panic!("hasses did not notify READY=1\n{}", process.output()),
        }
    }

    /// Starts a server program on a free loopback port: `command(dir, port)` writes its
    /// configuration into a fresh `dir` and returns the command line, whose `error.log` in `dir`
    /// is shown if it fails. A free port can be taken by someone else before the program binds
    /// it: then it tries again, with another port.
    pub fn start_listening(
        name: &str,
        mut command: impl FnMut(&TempDir, u16) -> Command,
    ) -> (Process, u16, TempDir) {
        let mut last_error = String::new();
        for _ in 0..3 {
            let dir = TempDir::new(name);
            let port = common::free_port();
            let mut process = Process::spawn(command(&dir, port), name, dir.join("stderr.log"));
            match process.try_wait_listening(port) {
                Ok(()) => return (process, port, dir),
                Err(why) => {
                    let errors = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                    last_error = format!("{why}\n{}\n--- error.log ---\n{errors}", process.output());
                    if !last_error.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("{name} did not start:\n{last_error}");
    }

    /// The process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the program printed, for failure messages.
    pub fn output(&self) -> String {
        let text = std::fs::read_to_string(&self.output).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- {} output ---\n{}", self.name, lines[lines.len().saturating_sub(60)..].join("\n"))
    }

    /// True while the main process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until something accepts connections on 127.0.0.1:`port`; says why not if the
    /// program exits or the deadline passes.
    pub fn try_wait_listening(&mut self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + START;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if !self.running() {
                return Err(format!("{} exited before listening on port {port}", self.name));
            }
            if Instant::now() >= deadline {
                return Err(format!("{} did not listen on port {port} within {START:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the group: SIGTERM, then SIGKILL after a few seconds; waits for the main process.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + START;
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Helpers that outlive the main process, or a main process that ignored SIGTERM.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One thing read from an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An event: its `id:` (if any) and its `data:` lines joined with `\n`.
    Event {
        /// The `id:` field.
        id: Option<String>,
        /// The data.
        data: String,
    },
    /// A comment line (`:…`), what heartbeats are; the text after the colon.
    Comment(String),
}

/// Why no item came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Nothing within the time given; the stream is still open.
    Timeout,
    /// The stream ended (the body ended, or the connection closed).
    Closed,
}

/// An SSE client for a stream that went through a proxy: the chunked body is decoded whatever
/// its chunk boundaries, and the event-stream text is parsed line by line as a browser does.
pub struct EventStream {
    stream: TcpStream,
    /// Bytes received and not yet decoded (chunk framing).
    raw: Vec<u8>,
    /// Decoded body not yet parsed.
    body: Vec<u8>,
    chunked: bool,
    body_ended: bool,
    /// The event being built.
    id: Option<String>,
    data: Vec<String>,
    /// The response status code.
    pub status: u16,
    /// The response headers, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl EventStream {
    /// Opens `GET /sse?QUERY` through `proxy`, listening on `port`, and asserts the
    /// event-stream answer with hasses' CORS header passed through.
    pub fn through(proxy: &Process, port: u16, query: &str, extra: &str) -> EventStream {
        let stream = EventStream::open(port, &format!("/sse?{query}"), extra)
            .unwrap_or_else(|| panic!("{} closed without answering\n{}", proxy.name, proxy.output()));
        assert_eq!(stream.status, 200, "headers: {:?}", stream.headers);
        assert_eq!(stream.header("content-type"), Some("text/event-stream"));
        assert_eq!(stream.header("access-control-allow-origin"), Some("*"), "the CORS header passes");
        stream
    }

    /// Sends `GET target` to 127.0.0.1:`port` as an EventSource does (plus `extra` header lines,
    /// each ending in `\r\n`) and reads the response head. `None` if the connection closed
    /// without a response head.
    pub fn open(port: u16, target: &str, extra: &str) -> Option<EventStream> {
        let mut stream = common::connect(port);
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\
             Cache-Control: no-cache\r\nConnection: keep-alive\r\nUser-Agent: hasses-deploy-test\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).expect("send the request");
        let mut client = EventStream {
            stream,
            raw: Vec::new(),
            body: Vec::new(),
            chunked: false,
            body_ended: false,
            id: None,
            data: Vec::new(),
            status: 0,
            headers: Vec::new(),
        };
        let deadline = Instant::now() + common::WAIT;
        loop {
            if let Some(end) = client.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&client.raw[..end]).into_owned();
                client.raw.drain(..end + 4);
                client.parse_head(&head);
                return Some(client);
            }
            match client.fill(deadline) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(End::Timeout) => panic!("no response head within {:?}", common::WAIT),
                Err(End::Closed) => return None,
            }
        }
    }

    fn parse_head(&mut self, head: &str) {
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        self.status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        self.headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        self.chunked = self.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    }

    /// The value of the header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Reads more bytes: `Ok(false)` on EOF or reset.
    fn fill(&mut self, deadline: Instant) -> Result<bool, End> {
        let left = deadline.checked_duration_since(Instant::now()).ok_or(End::Timeout)?;
        self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        let mut buf = [0u8; 16 * 1024];
        loop {
            return match self.stream.read(&mut buf) {
                Ok(0) => Ok(false),
                Ok(n) => {
                    self.raw.extend_from_slice(&buf[..n]);
                    Ok(true)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    Err(End::Timeout)
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(false),
                Err(e) => panic!("read failed: {e}"),
            };
        }
    }

    /// Moves complete chunks from `raw` to `body`.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        while !self.body_ended {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else { return };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?}"));
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            assert_eq!(&self.raw[start + size..start + size + 2], b"\r\n", "chunk not ended by CRLF");
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
            if size == 0 {
                self.body_ended = true;
            }
        }
    }

    /// Parses one item out of `body`, if a complete one is there.
    fn parse(&mut self) -> Option<Item> {
        while let Some(end) = self.body.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.body.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).trim_end_matches('\r').to_owned();
            if line.is_empty() {
                if self.data.is_empty() {
                    self.id = None;
                    continue;
                }
                let data = std::mem::take(&mut self.data).join("\n");
                return Some(Item::Event { id: self.id.take(), data });
            }
            if let Some(comment) = line.strip_prefix(':') {
                return Some(Item::Comment(comment.to_owned()));
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "id" => self.id = Some(value),
                "data" => self.data.push(value),
                _ => {}
            }
        }
        None
    }

    /// The next event or comment.
    pub fn next_item(&mut self, timeout: Duration) -> Result<Item, End> {
        let deadline = Instant::now() + timeout;
        loop {
            self.decode();
            if let Some(item) = self.parse() {
                return Ok(item);
            }
            if self.body_ended || !self.fill(deadline)? {
                self.decode();
                return self.parse().ok_or(End::Closed);
            }
        }
    }

    /// The next event's numeric id and data, skipping comments. Panics if none comes within
    /// `timeout`, or it has no id, with `context()` (the programs' output) in the message.
    pub fn expect_event(&mut self, timeout: Duration, context: impl Fn() -> String) -> (u64, String) {
        match self.next_event(timeout) {
            Ok((Some(id), data)) => (id.parse().expect("a numeric id"), data),
            Ok((None, data)) => panic!("event without id: {data:?}"),
            Err(why) => panic!("no event ({why:?})\n{}", context()),
        }
    }

    /// The next event, skipping comments: (id, data).
    pub fn next_event(&mut self, timeout: Duration) -> Result<(Option<String>, String), End> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Item::Event { id, data } = self.next_item(left)? {
                return Ok((id, data));
            }
        }
    }
}

/// Headless Chromium with a fresh profile in `profile`, none of its background traffic and no
/// sandbox (the tests may run as root); the caller adds the URL or `--remote-debugging-pipe`.
pub fn chromium_command(profile: &TempDir) -> Command {
    let mut command = Command::new(find_program("chromium", "chromium"));
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--disable-dev-shm-usage",
            "--no-proxy-server",
            "--mute-audio",
        ])
        .arg(format!("--user-data-dir={}", profile.join("profile").display()));
    command
}

/// How long Chromium may take to start and answer (a cold start on a busy CI machine).
const DEVTOOLS_WAIT: Duration = Duration::from_secs(20);

/// Headless Chromium driven through the DevTools protocol over `--remote-debugging-pipe`: it
/// reads JSON messages, each ended by a NUL byte, from its fd 3 and writes its own to fd 4. One
/// page, attached to with a flat session, on which scripts are evaluated.
pub struct Devtools {
    process: Process,
    to_browser: File,
    /// The messages Chromium wrote, read by a thread so every wait can have a deadline.
    from_browser: Receiver<Value>,
    next_id: u64,
    session: String,
}

impl Devtools {
    /// Chromium on `url`, attached to its page.
    pub fn launch(url: &str, profile: &TempDir) -> Devtools {
        Devtools::launch_with(url, profile, &[])
    }

    /// Chromium with the extra command-line `flags` on `url`, attached to its page.
    pub fn launch_with(url: &str, profile: &TempDir, flags: &[&str]) -> Devtools {
        let (browser_reads, test_writes) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let (test_reads, browser_writes) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let (reads, writes) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        let mut command = chromium_command(profile);
        command.args(flags).arg("--remote-debugging-pipe").arg(url);
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2). The ends
        // are first moved above 4, so placing one on 3 cannot close the other; dup2 clears
        // close-on-exec on 3 and 4.
        unsafe {
            command.pre_exec(move || {
                let reads = fcntl(reads, FcntlArg::F_DUPFD(10))?;
                let writes = fcntl(writes, FcntlArg::F_DUPFD(10))?;
                dup2(reads, 3)?;
                dup2(writes, 4)?;
                Ok(())
            });
        }
        let process = Process::spawn(command, "chromium", profile.join("chromium.log"));
        // Only Chromium holds its ends now: its exit is the reader's end of file.
        drop((browser_reads, browser_writes));
        let (sender, from_browser) = mpsc::channel();
        let mut reader = File::from(test_reads);
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    let value = serde_json::from_slice(&message[..end]).expect("a JSON message");
                    if sender.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        let mut devtools = Devtools {
            process,
            to_browser: File::from(test_writes),
            from_browser,
            next_id: 0,
            session: String::new(),
        };
        let targets = devtools.call(None, "Target.getTargets", json!({}));
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|infos| infos.iter().find(|info| info["type"] == "page"))
            .unwrap_or_else(|| panic!("no page among {targets}\n{}", devtools.process.output()))
            .clone();
        let attached = devtools.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": page["targetId"], "flatten": true }),
        );
        devtools.session = attached["sessionId"].as_str().expect("a sessionId").to_owned();
        devtools
    }

    /// Sends `method` (to the page's session, or to the browser) and waits for its answer:
    /// its `result`, or a panic with the error and Chromium's output.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .unwrap_or_else(|error| panic!("{method}: {error}\n{}", self.process.output()))
    }

    fn try_call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        if let Err(e) = self.to_browser.write_all(&bytes) {
            panic!("cannot send {method} to chromium: {e}\n{}", self.process.output());
        }
        let deadline = Instant::now() + DEVTOOLS_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_browser.recv_timeout(left) {
                // Events (no id) are not needed.
                Ok(answer) if answer["id"] == id => {
                    return match answer.get("error") {
                        Some(error) => Err(error.clone()),
                        None => Ok(answer["result"].clone()),
                    };
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "chromium did not answer {method} within {DEVTOOLS_WAIT:?}\n{}",
                        self.process.output()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("chromium closed its pipe before answering {method}\n{}", self.process.output())
                }
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value; panics on
    /// an exception.
    pub fn evaluate(&mut self, expression: &str) -> Value {
        self.try_evaluate(expression)
            .unwrap_or_else(|why| panic!("{expression}: {why}\n{}", self.process.output()))
    }

    fn try_evaluate(&mut self, expression: &str) -> Result<Value, String> {
        let session = self.session.clone();
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let answer = self.try_call(Some(&session), "Runtime.evaluate", params).map_err(|e| e.to_string())?;
        match answer.get("exceptionDetails") {
            Some(details) => Err(format!("exception {details}")),
            None => Ok(answer["result"]["value"].clone()),
        }
    }

    /// Evaluates `expression` until it is `true` (errors while the page loads count as not yet);
    /// panics with its last value and Chromium's output after a while.
    pub fn wait_until(&mut self, expression: &str) {
        let deadline = Instant::now() + DEVTOOLS_WAIT;
        loop {
            let last = self.try_evaluate(expression);
            if last == Ok(Value::Bool(true)) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("{expression} not true within {DEVTOOLS_WAIT:?}: {last:?}\n{}", self.process.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Chromium's last lines of output, for failure messages.
    pub fn output(&self) -> String {
        self.process.output()
    }
}
