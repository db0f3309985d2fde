//! The history on disk (`--history-file`): read back into the rings at start, before anything
//! is served, and written by a thread of its own ([`HistoryWriter`]) as events are sequenced.
//!
//! Owns the file: its format (`record.rs`), reading it back, rewriting it, and what a restart
//! may believe. It must not sit on the hot path: the sequencer hands each kept event to the
//! writer over a channel and goes on; the disk delays what is written, never what is delivered.
//!
//! What a restart believes:
//! - The file is a [`Record::Start`] (where the history begins, what it lost), a
//!   [`Record::Lost`] per ring that let events go, the kept events, then every event sequenced
//!   since, and [`Record::Stop`] when the server stopped cleanly. Read back through the same
//!   [`History::append`] as live events, the rings keep what they would have kept (the limits
//!   in force now apply).
//! - Ended by `Stop`: every event sequenced is in the file, so a resume from an id it covers is
//!   not a gap. Ended without (a SIGKILL, a crash, a power loss): events sequenced in the last
//!   moment may not have reached the file, so every resume from before this start is told of a
//!   gap (`event: reset`) and still gets what the file kept. Exactness over comfort.
//! - A cut or damaged tail is cut at the last whole record, with a log line; the server starts.
//!   A file of another format version is refused.
//!
//! Size: the file is rewritten from the rings (compacted: a temporary file beside it, synced,
//! then renamed over it) at start, which also drops a damaged tail, and whenever it holds more
//! than twice what the rings keep (at least [`COMPACT_FLOOR`]): so it stays within about twice
//! what the rings hold, which `--history*` bound, and a history still filling up is never
//! written twice.

mod record;
mod writer;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::{info, warn};

pub use record::{decode as decode_record, encode_event, Decoded, Record, StoredEvent};
pub use writer::{FileFigures, HistoryWriter, HISTORY_QUEUE};

use crate::history::{History, HistoryLimits, Snapshot};
use record::{Header, VERSION};

/// The file is not rewritten below this size: a small file costs nothing to keep.
pub const COMPACT_FLOOR: u64 = 1 << 20;

/// Why the history file cannot be used. `Display` is the line printed before exiting non-zero.
#[derive(Debug, thiserror::Error)]
pub enum HistoryFileError {
    /// It cannot be read, written, synced or renamed.
    #[error("history file {}: {source}", path.display())]
    Io {
        /// The file (or its temporary companion).
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// Something else is at that path.
    #[error("history file {}: not a hasses history file; give another --history-file or move it away", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// Another process holds the file's lock: two servers must not write one history.
    #[error("history file {}: in use by another hasses (its lock {} is held); give each server a --history-file of its own", path.display(), lock.display())]
    InUse {
        /// The file.
        path: PathBuf,
        /// The lock file beside it.
        lock: PathBuf,
    },
    /// It was written in a format this build does not read.
    #[error("history file {}: format version {found}, this hasses reads version {VERSION}; move it away to start with an empty history", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it says.
        found: u32,
    },
}

/// The lock that keeps a second server off the file at `path`: `PATH.lock` beside it, locked
/// (`flock`, exclusive) for as long as the returned value lives. A lock file of its own rather
/// than the history file's, since a rewrite replaces that one.
pub fn lock(path: &Path) -> Result<Flock<File>, HistoryFileError> {
    lock_with(path, None)
}

/// [`lock`], where the lock may have been handed over by a predecessor (an upgrade): the same
/// lock, still held, so that no other server can take the file between the two processes. A
/// handed lock of another file (the path changed) is let go.
pub fn lock_with(path: &Path, handed: Option<File>) -> Result<Flock<File>, HistoryFileError> {
    use std::os::unix::fs::MetadataExt;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock = PathBuf::from(name);
    let same = |file: &File| match (file.metadata(), std::fs::metadata(&lock)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let file = match handed.filter(same) {
        Some(file) => file,
        None => OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock)
            .map_err(fail(&lock))?,
    };
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        Errno::EWOULDBLOCK => HistoryFileError::InUse { path: path.to_owned(), lock: lock.clone() },
        other => HistoryFileError::Io { path: lock.clone(), source: other.into() },
    })
}

/// Reads the file at `path` (none yet: an empty history) into a history with these limits, for
/// a run whose first id would be `run_first`; a damaged tail is cut (logged). The history's
/// newest id is at least every id the file names: this run's ids go on above it.
pub fn restore(path: &Path, limits: HistoryLimits, run_first: u64) -> Result<History, HistoryFileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(HistoryFileError::Io { path: path.to_path_buf(), source }),
    };
    restore_bytes(&bytes, path, limits, run_first)
}

/// Reads a history in the file's format from `bytes` (the file at `path`, or what a
/// predecessor handed over at an upgrade, named by `path` in the log), as [`restore`] does.
pub fn restore_bytes(
    bytes: &[u8],
    path: &Path,
    limits: HistoryLimits,
    run_first: u64,
) -> Result<History, HistoryFileError> {
    let now = Instant::now();
    // Events kept before this start must fit the history's clock: it starts one `--history-age`
    // ago (an older event is let go as soon as the next one is kept).
    let origin = now.checked_sub(limits.max_age).unwrap_or(now);
    let mut history = History::new(limits, run_first, origin);
    if bytes.is_empty() {
        return Ok(history);
    }
    match record::read_header(bytes) {
        Header::Ours => {}
        Header::Short => {
            warn!("History file {}: cut inside its header; starting empty", path.display());
            return Ok(history);
        }
        Header::Version(found) => return Err(HistoryFileError::Version { path: path.to_path_buf(), found }),
        Header::Foreign => return Err(HistoryFileError::Foreign { path: path.to_path_buf() }),
    }
    let mut reader = Rebuild { history: &mut history, now, wall_now: wall_ms(), newest: None, clean: false };
    let mut at = record::HEADER_LEN;
    let mut events = 0u64;
    while at < bytes.len() {
        match record::decode(&bytes[at..]) {
            Decoded::Record(record, used) => {
                events += u64::from(matches!(record, Record::Event(_)));
                reader.apply(record);
                at += used;
            }
            Decoded::Incomplete => {
                cut(path, at, bytes.len(), "the last record is cut short");
                break;
            }
            Decoded::Corrupt(why) => {
                cut(path, at, bytes.len(), why);
                break;
            }
        }
    }
    if !reader.clean {
        warn!(
            "History file {}: the server did not stop cleanly; resuming clients are told of a gap \
             (event: reset) and get what the file kept",
            path.display()
        );
        // Even when the clock went back: every id the file names is before this run.
        let first_id = run_first.max(history.newest().saturating_add(1));
        history.begin(first_id, 0);
    }
    info!("History file {}: {events} events read", path.display());
    Ok(history)
}

/// Logs where the file's tail is cut.
fn cut(path: &Path, at: usize, length: usize, why: &str) {
    warn!(
        "History file {}: {why} at byte {at} of {length}; the {} bytes from there are dropped",
        path.display(),
        length - at
    );
}

/// Applies records, in file order, to a history being rebuilt.
struct Rebuild<'h> {
    history: &'h mut History,
    now: Instant,
    wall_now: u64,
    newest: Option<u64>,
    /// The last run in the file ended with a `Stop`.
    clean: bool,
}

impl Rebuild<'_> {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Start { first_id, forgotten_up_to } => {
                self.history.begin(first_id, forgotten_up_to);
                self.clean = false;
            }
            Record::Lost { audience, up_to } => self.history.mark_lost(&audience, up_to),
            Record::Event(event) => {
                // Ids only grow; one that does not (a file put together by hand) is not kept.
                if self.newest.is_some_and(|newest| event.id <= newest) {
                    return;
                }
                let age = Duration::from_millis(self.wall_now.saturating_sub(event.at_ms));
                let kept = self.now.checked_sub(age).unwrap_or(self.now);
                self.history.append(event.id, &event.audience, &event.frame, kept);
                self.newest = Some(event.id);
                self.clean = false;
            }
            Record::Stop { newest } => {
                self.history.sequenced(newest);
                self.clean = true;
            }
        }
    }
}

/// Milliseconds since the Unix epoch, now (0 for a clock before 1970).
pub fn wall_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Writes the history of `snapshot` to a new file beside `path`, syncs it, and renames it over
/// `path`: at every moment the path holds a whole file, the old or the new. Returns the new file,
/// open for appending, and its length.
pub fn rewrite(path: &Path, snapshot: &Snapshot) -> Result<(File, u64), HistoryFileError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let bytes = encode_snapshot(snapshot, wall_ms());
    // Events may hold what only their subscribers should read: the file is the server's alone.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(fail(&temporary))?;
    file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(fail(&temporary))?;
    std::fs::rename(&temporary, path).map_err(fail(path))?;
    // The rename itself is durable once the directory is synced.
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        File::open(dir).and_then(|dir| dir.sync_all()).map_err(fail(dir))?;
    }
    let file = OpenOptions::new().append(true).open(path).map_err(fail(path))?;
    Ok((file, bytes.len() as u64))
}

/// What an I/O error on `path` is, for `map_err`.
fn fail(path: &Path) -> impl FnOnce(io::Error) -> HistoryFileError {
    let path = path.to_path_buf();
    move |source| HistoryFileError::Io { path, source }
}

/// The history of `snapshot` in the file's format, ended as a clean stop is, with `newest` the
/// last id sequenced: what an upgrade hands the new process, which reads it with
/// [`restore_bytes`] and resumes every client without a gap.
pub fn encode_handover(snapshot: &Snapshot, newest: u64) -> Vec<u8> {
    let mut out = encode_snapshot(snapshot, wall_ms());
    record::encode(&Record::Stop { newest }, &mut out);
    out
}

/// The whole file for a snapshot taken when the wall clock said `wall_now` (ms).
fn encode_snapshot(snapshot: &Snapshot, wall_now: u64) -> Vec<u8> {
    let mut out = record::header().to_vec();
    let start = Record::Start { first_id: snapshot.first_id, forgotten_up_to: snapshot.forgotten_up_to };
    record::encode(&start, &mut out);
    for (audience, lost) in &snapshot.rings {
        if *lost > 0 {
            record::encode(&Record::Lost { audience: audience.clone(), up_to: *lost }, &mut out);
        }
    }
    for event in &snapshot.events {
        let at_ms = wall_now.saturating_sub(u64::try_from(event.age.as_millis()).unwrap_or(u64::MAX));
        record::encode_event(event.id, at_ms, &snapshot.rings[event.ring].0, &event.frame, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::{Audience, ResumeFrom, Target};
    use crate::sse::encode_event;
    use smallvec::smallvec;

    const HOUR: Duration = Duration::from_secs(3600);

    fn limits(per_audience: usize) -> HistoryLimits {
        HistoryLimits { per_audience, max_age: HOUR, max_bytes: 1 << 20 }
    }

    fn to(token: &str) -> Audience {
        Audience { targets: smallvec![Target::Token(token.into())], except: None }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hasses-history-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("history")
    }

    /// Reads the file back for a run whose clock would start at 1.
    fn read(path: &Path, per_audience: usize) -> History {
        restore(path, limits(per_audience), 1).unwrap()
    }

    fn datas(history: &History, from: u64, token: &str) -> (bool, Vec<String>) {
        let replay = history.replay(ResumeFrom::After(from), [token].into_iter(), "", Instant::now());
        let datas = replay
            .frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).split("data: ").nth(1).unwrap()[..1].to_string());
        (replay.gap, datas.collect())
    }

    /// A history with events 100… to `a` and `b` alternately, written down, a `Stop` appended
    /// when `clean`.
    fn written(path: &Path, per_audience: usize, count: u64, clean: bool) -> History {
        let now = Instant::now();
        let mut history = History::new(limits(per_audience), 100, now);
        for id in 100..100 + count {
            let token = if id % 2 == 0 { "a" } else { "b" };
            history.append(id, &to(token), &encode_event(id, (id % 10).to_string().as_bytes()), now);
        }
        let (mut file, _) = rewrite(path, &history.snapshot(now)).unwrap();
        if clean {
            let mut stop = Vec::new();
            record::encode(&Record::Stop { newest: 100 + count - 1 }, &mut stop);
            file.write_all(&stop).unwrap();
        }
        history
    }

    #[test]
    fn a_clean_file_rebuilds_the_rings_with_what_they_lost() {
        let path = temp("clean");
        written(&path, 2, 6, true);
        let restored = read(&path, 2);
        assert_eq!(restored.newest(), 105);
        assert_eq!(datas(&restored, 102, "a"), (false, vec!["4".into()]));
        assert_eq!(datas(&restored, 100, "a"), (false, vec!["2".into(), "4".into()]));
        assert_eq!(datas(&restored, 100, "b"), (true, vec!["3".into(), "5".into()]), "101 was let go");
        assert_eq!(datas(&restored, 99, "a"), (true, vec!["2".into(), "4".into()]), "before the start");
        written(&path, 0, 3, true);
        assert_eq!(read(&path, 0).newest(), 102, "nothing kept, and still the ids go on above the stop's");
    }

    #[test]
    fn a_file_without_a_stop_tells_every_earlier_resume_of_a_gap() {
        let path = temp("unclean");
        written(&path, 10, 4, false);
        let restored = restore(&path, limits(10), 5000).unwrap();
        assert_eq!(restored.newest(), 103);
        assert_eq!(datas(&restored, 101, "b"), (true, vec!["3".into()]));
        let clock_back = read(&path, 10);
        assert_eq!(clock_back.newest(), 103, "ids go on above the file's");
        assert!(datas(&clock_back, 103, "b").0, "the newest in the file may not be the last sequenced");
    }

    #[test]
    fn a_damaged_tail_is_cut_at_the_last_whole_record() {
        let path = temp("damaged");
        written(&path, 10, 4, true);
        let whole = std::fs::read(&path).unwrap();
        let mut garbage = whole.clone();
        garbage.extend_from_slice(b"\x10\0\0\0garbage after the stop");
        std::fs::write(&path, &garbage).unwrap();
        assert_eq!(read(&path, 10).newest(), 103);
        // Cut inside the last event: the Stop goes with it, so the run did not end cleanly.
        std::fs::write(&path, &whole[..whole.len() - 20]).unwrap();
        let restored = read(&path, 10);
        assert_eq!(restored.newest(), 102);
        assert!(datas(&restored, 101, "a").0);
    }

    #[test]
    fn another_version_or_another_file_is_refused_and_none_is_empty() {
        let path = temp("version");
        let mut bytes = record::header().to_vec();
        bytes[8] = 9;
        std::fs::write(&path, &bytes).unwrap();
        let error = restore(&path, limits(10), 5000).unwrap_err().to_string();
        assert!(error.contains("format version 9, this hasses reads version 1"), "{error}");
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(restore(&path, limits(10), 5000), Err(HistoryFileError::Foreign { .. })));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read(&path, 10).newest(), 0);
    }

    fn audience() -> impl Strategy<Value = Audience> {
        let target =
            prop::sample::select(vec!["a", "b", "ab", "a*", "*"]).prop_map(|t| match t.strip_suffix('*') {
                Some("") => Target::All,
                Some(prefix) => Target::Prefix(prefix.into()),
                None => Target::Token(t.into()),
            });
        (prop::collection::vec(target, 1..3), prop::option::of(prop::sample::select(vec!["me".to_string()])))
            .prop_map(|(targets, except)| Audience { targets: targets.into(), except })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Written down and read back after a clean stop, a history answers every resume as it
        /// did: the same replay, the same gaps.
        #[test]
        fn a_history_read_back_answers_every_resume_as_before(
            audiences in prop::collection::vec(audience(), 0..40),
            per_audience in 0usize..4,
            max_events in 1usize..30,
        ) {
            let now = Instant::now();
            let frame = encode_event(100, b"x").len();
            let limits = HistoryLimits { per_audience, max_age: HOUR, max_bytes: max_events * frame };
            let mut before = History::new(limits, 100, now);
            for (i, audience) in audiences.iter().enumerate() {
                before.append(100 + i as u64, audience, &encode_event(100 + i as u64, b"x"), now);
            }
            let path = temp("proptest");
            let (mut file, _) = rewrite(&path, &before.snapshot(now)).unwrap();
            let mut stop = Vec::new();
            record::encode(&Record::Stop { newest: before.newest() }, &mut stop);
            file.write_all(&stop).unwrap();
            let after = restore(&path, limits, 10_000).unwrap();
            for from in 98..100 + audiences.len() as u64 + 1 {
                for tokens in [&["a"][..], &["b", "ab"], &["c"], &["*"]] {
                    for id in ["", "me"] {
                        let was = before.replay(ResumeFrom::After(from), tokens.iter().copied(), id, now);
                        let is = after.replay(ResumeFrom::After(from), tokens.iter().copied(), id, now);
                        prop_assert_eq!((was.gap, was.frames), (is.gap, is.frames), "from {} {:?} {}", from, tokens, id);
                    }
                }
            }
        }
    }
}
