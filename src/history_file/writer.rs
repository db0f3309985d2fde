//! The history writer thread (`hasses-history`): appends every kept event to the history file,
//! syncs it every `--history-fsync`, rewrites it when it grew, and marks a clean stop.
//!
//! Owns the open file and when it is synced. Events come from the sequencer on a bounded
//! channel ([`HISTORY_QUEUE`]). While they flow, the writer takes them every [`GATHER`] on its
//! own, all that came meanwhile in one `write`, and sleeps between: a sleeping writer is not
//! waiting on the channel, so a send never wakes it (a wake-up per event, a futex call on the
//! sequencer's side and a context switch on a core the workers need, cost more than the
//! writing). It waits on the channel only once a round found nothing. A SIGKILL loses at most
//! what was still in the channel: about the last [`GATHER`]'s events. When the disk falls
//! [`HISTORY_QUEUE`] events behind, the sequencer waits for room (at most until the writer's
//! next round), as it does for a full shard: publishers are held, nothing is dropped, since a
//! dropped event would be a gap no restart could see. It never touches a connection and never
//! holds the history's lock but to copy it for a rewrite.
//!
//! A write that fails (a full disk) is logged once; from then on nothing is written and no
//! `Stop` either, so the next start tells resuming clients of a gap: the server goes on serving.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use nix::fcntl::Flock;
use tracing::{error, warn};

use super::record::{self, Record};
use super::{rewrite, COMPACT_FLOOR};
use crate::figures::HistoryFileFigures;
use crate::pipeline::{Sequenced, SharedState};

/// Events that may wait for the writer before the sequencer waits for room.
pub const HISTORY_QUEUE: usize = 65_536;
/// Events written in one batch at most.
const BATCH: usize = 4096;
/// While events flow, how long the writer lets them gather before it takes them.
const GATHER: Duration = Duration::from_millis(5);
/// About what a record adds to its event's frame on disk (length, checksum, kind, id, time,
/// audience), to tell what the rings' events take in the file.
const RECORD_OVERHEAD: u64 = 48;
/// How long the writer sleeps with nothing to sync.
const IDLE: Duration = Duration::from_secs(3600);

/// What the writer says of the file, for status and metrics: written by the writer thread,
/// read by the admin path.
#[derive(Debug, Default)]
pub struct FileFigures {
    bytes: AtomicU64,
    written: AtomicU64,
    failed: AtomicBool,
    /// The newest id the writer took and is done with (written, and the file rewritten if it
    /// grew): once it reaches the last id sequenced, the writer is idle.
    done_up_to: AtomicU64,
}

impl FileFigures {
    /// Whether the writer is done with every event up to `id`: it will touch the file again
    /// only for a later one (or to sync it).
    pub fn done_with(&self, id: u64) -> bool {
        self.done_up_to.load(Ordering::Acquire) >= id
    }

    /// A snapshot for status.
    pub fn figures(&self) -> HistoryFileFigures {
        HistoryFileFigures {
            bytes: self.bytes.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            writing: !self.failed.load(Ordering::Relaxed),
        }
    }
}

/// What a round of taking events found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Events: more are likely to come.
    Taken,
    /// Nothing: wait on the channel.
    Empty,
    /// Every sender is gone: the server is stopping.
    Ended,
}

/// The writer thread's state.
#[derive(Debug)]
pub struct HistoryWriter {
    path: PathBuf,
    /// The file's lock, held until the writer ends.
    _lock: Flock<File>,
    /// What status and metrics read of the file.
    figures: Arc<FileFigures>,
    /// None once a write failed.
    file: Option<File>,
    events: Receiver<Arc<Sequenced>>,
    /// The history, read only to rewrite the file.
    state: Arc<SharedState>,
    fsync: Duration,
    /// The file's length.
    size: u64,
    /// Rewrite the file once it is longer.
    compact_above: u64,
    /// Events up to this id are in the file already (written by the last rewrite).
    written_up_to: u64,
    /// The newest id handed over.
    newest: u64,
    /// When the oldest write not yet synced was made.
    unsynced_since: Option<Instant>,
    buffer: Vec<u8>,
    /// Events encoded into `buffer`.
    buffered_events: u64,
}

impl HistoryWriter {
    /// A writer appending to `file` (at `path`, `size` bytes long, just rewritten from the
    /// history, whose newest id was `written_up_to`), syncing every `fsync` (0: every batch).
    pub fn new(
        (path, lock, figures): (PathBuf, Flock<File>, Arc<FileFigures>),
        (file, size): (File, u64),
        written_up_to: u64,
        events: Receiver<Arc<Sequenced>>,
        state: Arc<SharedState>,
        fsync: Duration,
    ) -> Self {
        figures.bytes.store(size, Ordering::Relaxed);
        figures.done_up_to.store(written_up_to, Ordering::Release);
        HistoryWriter {
            path,
            _lock: lock,
            figures,
            file: Some(file),
            events,
            state,
            fsync,
            size,
            compact_above: (2 * size).max(COMPACT_FLOOR),
            written_up_to,
            newest: written_up_to,
            unsynced_since: None,
            buffer: Vec::new(),
            buffered_events: 0,
        }
    }

    /// Writes until every sender is gone (the sequencer stopped), then marks the clean stop.
    pub fn run(mut self) -> io::Result<()> {
        loop {
            let wait = self
                .unsynced_since
                .map_or(IDLE, |since| (since + self.fsync).saturating_duration_since(Instant::now()));
            match self.events.recv_timeout(wait) {
                Ok(first) => {
                    self.take(&first, super::wall_ms());
                    if self.gather() == Flow::Ended {
                        self.stop();
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.sync_if_due(),
                Err(RecvTimeoutError::Disconnected) => {
                    self.stop();
                    return Ok(());
                }
            }
        }
    }

    /// Takes what the channel holds every [`GATHER`], until a round finds nothing (or every
    /// sender is gone): the sequencer's sends meanwhile find no one waiting to wake.
    fn gather(&mut self) -> Flow {
        loop {
            let flow = self.drain();
            self.sync_if_due();
            self.compact_if_grown();
            self.figures.done_up_to.store(self.newest, Ordering::Release);
            if flow != Flow::Taken {
                return flow;
            }
            std::thread::sleep(GATHER);
        }
    }

    /// Writes whatever the channel holds (the clock read once: they were all kept within the
    /// last round), a batch at a time.
    fn drain(&mut self) -> Flow {
        let at_ms = super::wall_ms();
        let mut flow = Flow::Empty;
        loop {
            for _ in 0..BATCH {
                match self.events.try_recv() {
                    Ok(event) => {
                        self.take(&event, at_ms);
                        flow = Flow::Taken;
                    }
                    Err(TryRecvError::Empty) => {
                        self.write_buffer();
                        return flow;
                    }
                    Err(TryRecvError::Disconnected) => {
                        self.write_buffer();
                        return Flow::Ended;
                    }
                }
            }
            self.write_buffer();
        }
    }

    /// Encodes an event, kept at `at_ms`, into the batch, unless the last rewrite holds it.
    fn take(&mut self, event: &Sequenced, at_ms: u64) {
        self.newest = self.newest.max(event.id);
        if event.id > self.written_up_to && self.file.is_some() {
            record::encode_event(event.id, at_ms, &event.audience, &event.frame, &mut self.buffer);
            self.buffered_events += 1;
        }
    }

    fn write_buffer(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        if let Some(file) = &mut self.file {
            match file.write_all(&self.buffer) {
                Ok(()) => {
                    self.size += self.buffer.len() as u64;
                    self.figures.bytes.store(self.size, Ordering::Relaxed);
                    self.figures.written.fetch_add(self.buffered_events, Ordering::Relaxed);
                    self.unsynced_since.get_or_insert_with(Instant::now);
                }
                Err(e) => self.fail("cannot write", &e),
            }
        }
        self.buffer.clear();
        self.buffered_events = 0;
    }

    fn sync_if_due(&mut self) {
        let Some(since) = self.unsynced_since else { return };
        if since.elapsed() < self.fsync {
            return;
        }
        self.unsynced_since = None;
        if let Some(Err(e)) = self.file.as_ref().map(File::sync_data) {
            self.fail("cannot sync", &e);
        }
    }

    /// Rewrites the file from the rings once it holds more than twice what they keep (at least
    /// [`COMPACT_FLOOR`]), looked at every time it grew past `compact_above`. While the rings
    /// are still filling, the file holds what they do, and a rewrite would only write it again.
    /// On failure the file as it is stays (it is whole), and grows on.
    fn compact_if_grown(&mut self) {
        if self.size <= self.compact_above || self.file.is_none() {
            return;
        }
        let kept = self.state.history.read().figures();
        let kept_on_disk = kept.bytes + kept.events * RECORD_OVERHEAD;
        if self.size <= (2 * kept_on_disk).max(COMPACT_FLOOR) {
            self.compact_above = (2 * kept_on_disk).max(self.size + COMPACT_FLOOR);
            return;
        }
        let snapshot = self.state.history.read().snapshot(Instant::now());
        match rewrite(&self.path, &snapshot) {
            Ok((file, size)) => {
                self.file = Some(file);
                self.size = size;
                self.figures.bytes.store(size, Ordering::Relaxed);
                self.compact_above = (2 * size).max(COMPACT_FLOOR);
                self.written_up_to = snapshot.newest;
                // Synced whole by the rewrite.
                self.unsynced_since = None;
            }
            Err(e) => {
                warn!("Cannot rewrite the history file, it grows on: {e}");
                self.compact_above = 2 * self.size;
            }
        }
    }

    /// Every event sequenced is written: say so, and sync.
    fn stop(&mut self) {
        record::encode(&Record::Stop { newest: self.newest }, &mut self.buffer);
        self.write_buffer();
        if let Some(Err(e)) = self.file.as_ref().map(File::sync_data) {
            self.fail("cannot sync", &e);
        }
    }

    fn fail(&mut self, what: &str, e: &io::Error) {
        error!(
            "History file {}: {what}: {e}; it is no longer written, and after a restart resuming \
             clients will be told of a gap",
            self.path.display()
        );
        self.file = None;
        self.figures.failed.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Audience, ResumeFrom, Target};
    use crate::history::{History, HistoryLimits};
    use crate::history_file::record::Decoded;
    use crate::history_file::restore;
    use crate::sse::encode_event;
    use smallvec::smallvec;

    /// Every event id in the file, in file order.
    fn ids_in(path: &std::path::Path) -> Vec<u64> {
        let bytes = std::fs::read(path).unwrap();
        let mut at = record::HEADER_LEN;
        let mut ids = Vec::new();
        while let Decoded::Record(record, used) = record::decode(&bytes[at..]) {
            if let Record::Event(event) = record {
                ids.push(event.id);
            }
            at += used;
        }
        assert_eq!(at, bytes.len(), "whole records only");
        ids
    }

    /// A writer on a fresh file at `name`, syncing every batch, fed by a channel of `queue`.
    struct Started {
        path: std::path::PathBuf,
        state: Arc<SharedState>,
        figures: Arc<FileFigures>,
        disk: crossbeam_channel::Sender<Arc<Sequenced>>,
        thread: std::thread::JoinHandle<io::Result<()>>,
    }

    fn start(name: &str, limits: HistoryLimits, queue: usize) -> Started {
        let dir = std::env::temp_dir().join(format!("hasses-writer-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("history");
        let state = Arc::new(SharedState::new(false, History::new(limits, 100, Instant::now())));
        let snapshot = state.history.read().snapshot(Instant::now());
        let file = rewrite(&path, &snapshot).unwrap();
        let (disk, events) = crossbeam_channel::bounded(queue);
        let lock = super::super::lock(&path).unwrap();
        assert!(
            matches!(super::super::lock(&path), Err(super::super::HistoryFileError::InUse { .. })),
            "a second writer is kept off"
        );
        let figures = Arc::new(FileFigures::default());
        let writer = HistoryWriter::new(
            (path.clone(), lock, Arc::clone(&figures)),
            file,
            snapshot.newest,
            events,
            Arc::clone(&state),
            Duration::ZERO,
        );
        let thread = std::thread::spawn(move || writer.run());
        Started { path, state, figures, disk, thread }
    }

    #[test]
    fn it_writes_each_event_once_rewrites_when_grown_and_marks_a_clean_stop() {
        let limits =
            HistoryLimits { per_audience: 2, max_age: Duration::from_secs(3600), max_bytes: 1 << 30 };
        let Started { path, state, figures, disk, thread } = start("grown", limits, 4);
        let audience = Audience { targets: smallvec![Target::Token("t".into())], except: None };
        // 2.4 MB: the file is rewritten (from 2 events) at least once on the way.
        for id in 100..140u64 {
            let frame = encode_event(id, &[b'x'; 60_000]);
            state.history.write().append(id, &audience, &frame, Instant::now());
            disk.send(Arc::new(Sequenced { id, audience: audience.clone(), frame, at: Instant::now() }))
                .unwrap();
        }
        drop(disk);
        thread.join().unwrap().unwrap();
        let ids = ids_in(&path);
        let told = figures.figures();
        assert!(told.writing && told.written > 0, "{told:?}");
        assert_eq!(told.bytes, std::fs::metadata(&path).unwrap().len(), "status has the file's length");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "each once, in order: {ids:?}");
        assert!(ids.len() < 30 && ids.ends_with(&[138, 139]), "rewritten on the way: {ids:?}");
        let restored = restore(&path, limits, 1).unwrap();
        assert_eq!(restored.newest(), 139);
        let replay = restored.replay(ResumeFrom::After(137), ["t"].into_iter(), "", Instant::now());
        assert_eq!((replay.gap, replay.frames.len()), (false, 2), "a clean stop: no gap");
        let replay = restored.replay(ResumeFrom::After(136), ["t"].into_iter(), "", Instant::now());
        assert!(replay.gap, "137 was let go");
    }

    #[test]
    fn events_that_come_while_it_gathers_or_waits_are_all_written_in_order() {
        let limits =
            HistoryLimits { per_audience: 1000, max_age: Duration::from_secs(3600), max_bytes: 1 << 30 };
        // A queue far smaller than a spurt: the sender waits for room, and never for long.
        let Started { path, figures, disk, thread, .. } = start("spurts", limits, 8);
        let audience = Audience { targets: smallvec![Target::Token("t".into())], except: None };
        let send = |ids: std::ops::Range<u64>| {
            for id in ids {
                let frame = encode_event(id, b"x");
                disk.send(Arc::new(Sequenced { id, audience: audience.clone(), frame, at: Instant::now() }))
                    .unwrap();
            }
        };
        send(100..300);
        // Written without another event to push them out: the writer went back to waiting.
        let deadline = Instant::now() + Duration::from_secs(10);
        while figures.figures().written < 200 {
            assert!(Instant::now() < deadline, "written: {:?}", figures.figures());
            std::thread::sleep(Duration::from_millis(1));
        }
        send(300..310);
        drop(disk);
        thread.join().unwrap().unwrap();
        assert_eq!(ids_in(&path), (100..310).collect::<Vec<_>>());
        assert_eq!(figures.figures().written, 210);
        let restored = restore(&path, limits, 1).unwrap();
        let replay = restored.replay(ResumeFrom::After(299), ["t"].into_iter(), "", Instant::now());
        assert_eq!((replay.gap, replay.frames.len()), (false, 10), "stopped cleanly");
    }
}
