//! Logging: hasses' three levels, its line format, and a writer that never blocks the caller.
//!
//! Owns where log lines go (stdout, stderr or the log file), their prefix in the file
//! (`YYYY-MM-DD HH:MM:SS hasses: `), the level that can change at run time, and reopening the
//! file on SIGHUP. Lines are formatted on the calling thread and written by a background
//! thread; when that thread falls behind, lines are dropped rather than stall a worker.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::config::LogTarget;

/// The target of lines an operator asked for (status, client list): written at every level.
pub const REPORT: &str = "hasses::report";

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
    pub fn install(&self, level: u8) -> WorkerGuard {
        set_level(level);
        let prefixed = matches!(self, Sink::File(_));
        let (writer, guard) = NonBlockingBuilder::default().lossy(true).finish(self.clone());
        let subscriber = tracing_subscriber::registry().with(Lines { writer, prefixed });
        // Only fails when a subscriber is already set (a second install in tests): keep that one.
        let _ = tracing::subscriber::set_global_default(subscriber);
        guard
    }
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
    writer: NonBlocking,
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
            line.push_str(&chrono::Local::now().format("%Y-%m-%d %H:%M:%S hasses: ").to_string());
        }
        event.record(&mut LineText(&mut line));
        line.push('\n');
        // Lossy and non-blocking: an error here means a line was dropped, which is the design.
        let _ = self.writer.clone().write_all(line.as_bytes());
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
