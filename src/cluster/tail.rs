//! The tail thread: reads the stream as it grows and hands each event to the control thread.
//!
//! Owns the position in the stream: the id of the last entry read. It reads after it with
//! `XREAD BLOCK`, so a lost connection resumes exactly where it stopped, and an entry is never
//! handed over twice. Events go to the sequencer on a bounded channel, then its waker: when the
//! control thread falls behind, the tail waits, and the stream holds the rest.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{SendTimeoutError, Sender};
use mio::Waker;
use tracing::{info, warn};

use super::entry::{self, RawEntry, StreamId};
use super::trim::StreamBytes;
use super::{connect, now_ms, query_range, unreadable, why, Backoff, ClusterShared, TailPosition, Tailed};

/// How long one `XREAD` waits for an entry (below the reply timeout).
const BLOCK: Duration = Duration::from_secs(1);
/// Entries read at most per `XREAD`.
const COUNT: usize = 512;

/// The tail thread's state.
pub struct Tail {
    client: redis::Client,
    stream: String,
    /// The last entry read.
    after: StreamId,
    /// The bytes read, for the trim by `--history-memory`.
    bytes: StreamBytes,
    out: Sender<Tailed>,
    control: Arc<Waker>,
    shared: Arc<ClusterShared>,
    con: Option<redis::Connection>,
    backoff: Backoff,
}

impl Tail {
    pub(super) fn new(
        client: redis::Client,
        stream: String,
        after: StreamId,
        bytes: StreamBytes,
        out: Sender<Tailed>,
        control: Arc<Waker>,
        shared: Arc<ClusterShared>,
    ) -> Tail {
        Tail { client, stream, after, bytes, out, control, shared, con: None, backoff: Backoff::new() }
    }

    /// Runs until the node stops.
    pub fn run(mut self) -> std::io::Result<()> {
        while !self.shared.stopping.load(Ordering::Relaxed) {
            let Some(con) = &mut self.con else {
                self.reconnect();
                continue;
            };
            let read = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(self.after.to_string())
                .query(con)
                .and_then(|reply| entry::read_reply(reply).map_err(unreadable));
            match read {
                Ok(entries) if entries.is_empty() => self.shared.lag_ms.store(0, Ordering::Relaxed),
                Ok(entries) => {
                    for raw in entries {
                        if !self.hand_over(raw) {
                            return Ok(());
                        }
                    }
                    self.control.wake()?;
                    *self.shared.tail.lock() =
                        TailPosition { read: self.after, memory_cut: self.bytes.cut() };
                }
                Err(e) => {
                    warn!(
                        "Cluster: lost the stream's tail ({}); reconnecting, then reading on after {}",
                        why(&e),
                        self.after
                    );
                    self.con = None;
                    self.shared.tail_connected.store(false, Ordering::Relaxed);
                    self.backoff.failed();
                }
            }
        }
        Ok(())
    }

    /// Hands one entry to the sequencer; false when the node is stopping.
    fn hand_over(&mut self, raw: RawEntry) -> bool {
        let Ok(stream_id) = StreamId::parse(&raw.id) else {
            warn!("Cluster: stream entry id {:?} not understood; skipped", raw.id);
            return true;
        };
        self.after = stream_id;
        self.bytes.read(stream_id, raw.size());
        let decoded = entry::decode(raw)
            .and_then(|entry| Ok(Tailed::Event { id: entry.id.event_id()?, publish: entry.publish }));
        let tailed = match decoded {
            Ok(tailed) => tailed,
            Err(e) => {
                warn!("Cluster: {e}; skipped");
                return true;
            }
        };
        self.shared.lag_ms.store(now_ms().saturating_sub(stream_id.ms), Ordering::Relaxed);
        self.send(tailed)
    }

    /// Sends to the sequencer, waiting while it is behind; false when the node is stopping.
    fn send(&mut self, mut tailed: Tailed) -> bool {
        loop {
            match self.out.send_timeout(tailed, BLOCK) {
                Ok(()) => return true,
                Err(SendTimeoutError::Disconnected(_)) => return false,
                Err(SendTimeoutError::Timeout(back)) => {
                    // The control thread is behind: let it see what is there, unless it stops.
                    if self.shared.stopping.load(Ordering::Relaxed) || self.control.wake().is_err() {
                        return false;
                    }
                    tailed = back;
                }
            }
        }
    }

    /// Whether the stream still holds the last entry read (or nothing was read yet).
    fn kept_last_read(&self, con: &mut redis::Connection) -> redis::RedisResult<bool> {
        if self.after == StreamId::ZERO {
            return Ok(true);
        }
        let id = self.after.to_string();
        let found = query_range(redis::cmd("XRANGE").arg(&self.stream).arg(&id).arg(&id), con)?;
        Ok(!found.is_empty())
    }

    fn reconnect(&mut self) {
        std::thread::sleep(self.backoff.left().min(BLOCK));
        if !self.backoff.left().is_zero() {
            return;
        }
        match connect(&self.client).and_then(|mut con| self.kept_last_read(&mut con).map(|kept| (con, kept)))
        {
            Ok((con, kept)) => {
                info!("Cluster: tailing the stream after {}", self.after);
                if !kept {
                    warn!(
                        "Cluster: the stream lost entry {} (Redis lost its data?): a new epoch",
                        self.after
                    );
                    self.send(Tailed::NewEpoch);
                    let _ = self.control.wake();
                }
                self.con = Some(con);
                self.backoff.succeeded();
                self.shared.tail_connected.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                self.backoff.failed();
                warn!("Cluster: cannot reach Redis to tail the stream: {}", why(&e));
            }
        }
    }
}
