//! Logging: hasses' three levels, its line format, and a writer that never blocks the caller.
//!
//! Owns where log lines go (stdout, stderr or the log file), their prefix in the file
//! (`YYYY-MM-DD HH:MM:SS hasses: `), the level that can change at run time, and reopening the
//! file on SIGHUP. Lines are formatted on the calling thread and written by a background
//! thread; when that thread falls behind, lines are dropped (and the drop is logged) rather
//! than stall a worker.
//!
//! At the default level every connection logs two lines, so the writer is on the accept path:
//! while lines keep coming it takes them in batches every few milliseconds, one `write` per
//! batch, and a worker queueing a line never has to wake it (a wake-up per line cost more CPU
//! than accepting the connection). Only an idle writer blocks and is woken.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output, no prefix (legacy `-nodaemon`).
    Stdout,
    /// Standard error, no prefix (modern flags, in the foreground).
    Stderr,
    /// This file, each line prefixed `YYYY-MM-DD HH:MM:SS hasses: `.
    File(PathBuf),
}

/// The target of lines an operator asked for (status, client list): written at every level.
pub const REPORT: &str = "hasses::report";

/// Lines waiting for the writer at most; more are dropped and counted.
const QUEUED_LINES: usize = 64 * 1024;

/// While lines keep coming, the writer takes them this often, in one batch.
const BATCH_INTERVAL: Duration = Duration::from_millis(5);

/// 0 quiet, 1 normal, 2 debug: the level now in force.
static LEVEL: AtomicU8 = AtomicU8::new(1);

/// Sets the level (the `loglevel_*` commands), 0 to 2.
pub fn set_level(level: u8) {
    LEVEL.store(level.min(2), Ordering::Relaxed);
}

/// The level now in force.
pub fn level() -> u8 {
    LEVEL.load(Ordering::Relaxed)
}

/// Where lines end up. A file is kept open and reopened on request (logrotate's SIGHUP).
#[derive(Debug, Clone)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A log file, appended to.
    File(Arc<LogFile>),
}

/// An open log file and its path, to reopen it after rotation.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

/// Why the log cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open log file {path}: {source}")]
pub struct LogError {
    path: PathBuf,
    source: io::Error,
}

impl Sink {
    /// Opens where `target` says lines go; call before daemonizing or dropping privileges.
    pub fn open(target: &LogTarget) -> Result<Sink, LogError> {
        Ok(match target {
            LogTarget::Stdout => Sink::Stdout,
            LogTarget::Stderr => Sink::Stderr,
            LogTarget::File(path) => {
                let file = open_append(path)?;
                Sink::File(Arc::new(LogFile { path: path.clone(), file: Mutex::new(file) }))
            }
        })
    }

    /// Reopens the log file (after logrotate moved it); a no-op for stdout and stderr.
    pub fn reopen(&self) -> Result<(), LogError> {
        if let Sink::File(log) = self {
            *log.file.lock() = open_append(&log.path)?;
        }
        Ok(())
    }

    /// Starts the writer thread and makes this sink the destination of every log line.
    /// Call after daemonizing: a fork keeps no threads. Lines are flushed when the guard drops.
    pub fn install(&self, level: u8) -> io::Result<WriterGuard> {
        set_level(level);
        let (queue, guard) = spawn_writer(self.clone())?;
        let prefixed = matches!(self, Sink::File(_));
        let subscriber = tracing_subscriber::registry().with(Lines { queue, prefixed });
        // Only fails when a subscriber is already set (a second install in tests): keep that one.
        let _ = tracing::subscriber::set_global_default(subscriber);
        Ok(guard)
    }
}

/// What starts each line in the log file: `YYYY-MM-DD HH:MM:SS hasses: `, local time.
fn file_prefix() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S hasses: ").to_string()
}

/// What the writer thread is sent.
enum Message {
    Line(String),
    /// Write everything queued before this, then stop.
    Stop,
}

/// The loggers' end of the writer's queue.
struct Queue {
    sender: Sender<Message>,
    dropped: Arc<AtomicU64>,
}

impl Queue {
    /// Queues a line without waiting; a full queue drops it and counts the drop.
    fn push(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.sender.try_send(Message::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Stops the writer thread when dropped, after it has written every line queued before.
pub struct WriterGuard {
    sender: Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        // Blocks only while the queue is full, which the writer is emptying.
        let _ = self.sender.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn spawn_writer(sink: Sink) -> io::Result<(Queue, WriterGuard)> {
    let (sender, receiver) = crossbeam_channel::bounded(QUEUED_LINES);
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&dropped);
    let thread = thread::Builder::new()
        .name("hasses-log".into())
        .spawn(move || write_lines(&receiver, BufWriter::with_capacity(64 * 1024, sink), &counter))?;
    Ok((Queue { sender: sender.clone(), dropped }, WriterGuard { sender, thread: Some(thread) }))
}

/// The writer thread: blocks while idle; while lines keep coming, writes what a short pause
/// collected in one go. Write errors are ignored: there is nowhere left to report them.
fn write_lines(receiver: &Receiver<Message>, mut out: BufWriter<Sink>, dropped: &AtomicU64) {
    let prefixed = matches!(out.get_ref(), Sink::File(_));
    while let Ok(first) = receiver.recv() {
        let mut batch = Some(first);
        while let Some(first) = batch.take() {
            if write_batch(first, receiver, &mut out, dropped, prefixed) {
                return;
            }
            thread::sleep(BATCH_INTERVAL);
            batch = receiver.try_recv().ok();
        }
    }
}

/// Writes `first` and every line queued behind it, then says how many were dropped; true when
/// a `Stop` came among them.
fn write_batch(
    first: Message,
    receiver: &Receiver<Message>,
    out: &mut impl Write,
    dropped: &AtomicU64,
    prefixed: bool,
) -> bool {
    let mut stop = false;
    for message in std::iter::once(first).chain(receiver.try_iter()) {
        match message {
            Message::Line(line) => {
                let _ = out.write_all(line.as_bytes());
            }
            Message::Stop => {
                stop = true;
                break;
            }
        }
    }
    let lost = dropped.swap(0, Ordering::Relaxed);
    if lost > 0 {
        let prefix = if prefixed { file_prefix() } else { String::new() };
        let _ = writeln!(out, "{prefix}{lost} log lines dropped: the log could not keep up");
    }
    let _ = out.flush();
    stop
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError { path: path.to_path_buf(), source })
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout => io::stdout().write(buf),
            Sink::Stderr => io::stderr().write(buf),
            Sink::File(log) => log.file.lock().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout => io::stdout().flush(),
            Sink::Stderr => io::stderr().flush(),
            Sink::File(log) => log.file.lock().flush(),
        }
    }
}

/// The layer that turns events into hasses' log lines.
struct Lines {
    queue: Queue,
    prefixed: bool,
}

/// The hasses level a tracing level belongs to: warnings and errors show even when quiet.
fn verbosity(level: &Level) -> u8 {
    match *level {
        Level::ERROR | Level::WARN => 0,
        Level::INFO => 1,
        Level::DEBUG | Level::TRACE => 2,
    }
}

fn admits(meta: &Metadata<'_>) -> bool {
    meta.target() == REPORT || verbosity(meta.level()) <= level()
}

impl<S: Subscriber> Layer<S> for Lines {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The level changes at run time: ask on every event (one atomic load).
        Interest::sometimes()
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        admits(meta)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut line = String::with_capacity(128);
        if self.prefixed {
            line.push_str(&file_prefix());
        }
        event.record(&mut LineText(&mut line));
        line.push('\n');
        self.queue.push(line);
    }
}

/// Writes an event's message, then any other fields as ` name=value`.
struct LineText<'a>(&'a mut String);

impl Visit for LineText<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_keeps_warnings_and_reports_only() {
        assert_eq!(verbosity(&Level::WARN), 0);
        assert_eq!(verbosity(&Level::INFO), 1);
        assert_eq!(verbosity(&Level::DEBUG), 2);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let queue = Queue { sender, dropped: Arc::new(AtomicU64::new(0)) };
        queue.push("kept\n".into());
        queue.push("dropped\n".into());
        queue.push("dropped too\n".into());
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 2);
        assert!(matches!(receiver.try_recv(), Ok(Message::Line(line)) if line == "kept\n"));
    }

    #[test]
    fn a_batch_is_every_queued_line_then_the_drop_count_and_stops_at_stop() {
        let (sender, receiver) = crossbeam_channel::unbounded();
        sender.send(Message::Line("b\n".into())).unwrap();
        let dropped = AtomicU64::new(3);
        let mut out = Vec::new();
        assert!(!write_batch(Message::Line("a\n".into()), &receiver, &mut out, &dropped, false));
        assert_eq!(out, b"a\nb\n3 log lines dropped: the log could not keep up\n");

        sender.send(Message::Stop).unwrap();
        sender.send(Message::Line("after the stop\n".into())).unwrap();
        out.clear();
        assert!(write_batch(Message::Line("c\n".into()), &receiver, &mut out, &dropped, false));
        assert_eq!(out, b"c\n");
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = std::env::temp_dir().join(format!("hasses-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hasses.log");
        let mut sink = Sink::open(&LogTarget::File(path.clone())).unwrap();
        sink.write_all(b"before\n").unwrap();
        std::fs::rename(&path, dir.join("hasses.log.1")).unwrap();
        sink.reopen().unwrap();
        sink.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        assert_eq!(std::fs::read_to_string(dir.join("hasses.log.1")).unwrap(), "before\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
