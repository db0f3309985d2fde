//! The tail thread: reads the stream as it grows and delivers each event to the shards.
//!
//! Owns the position in the stream: the id of the last entry read. It reads after it with
//! `XREAD BLOCK`, so a lost connection resumes exactly where it stopped, and an entry is never
//! delivered twice. It delivers through a [`Broadcast`] of its own (history, frame, fan-out),
//! so an event wakes no other thread of this node before the shards, which is what a cluster's
//! latency is made of: when a shard falls behind, the tail waits for room, and the stream
//! holds the rest.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::entry::{self, RawEntry, StreamId};
use super::trim::StreamBytes;
use super::{connect, now_ms, query_range, unreadable, why, Backoff, ClusterShared, TailPosition};
use crate::broadcast::Broadcast;

/// How long one `XREAD` waits for an entry (below the reply timeout).
const BLOCK: Duration = Duration::from_secs(1);
/// Entries read at most per `XREAD`.
const COUNT: usize = 512;
/// A gap between two reads after which the tail checks that the stream still holds where it
/// was: a node's position key outlives its last beat by at least this.
const AWAY: Duration = Duration::from_secs(super::NODE_TTL);

/// The tail thread's state.
pub struct Tail {
    client: redis::Client,
    stream: String,
    /// The last entry read.
    after: StreamId,
    /// The bytes read, for the trim by `--history-memory`.
    bytes: StreamBytes,
    broadcast: Broadcast,
    shared: Arc<ClusterShared>,
    con: Option<redis::Connection>,
    backoff: Backoff,
    /// When the last read went out.
    last_read: Instant,
}

impl Tail {
    pub(super) fn new(
        client: redis::Client,
        stream: String,
        after: StreamId,
        bytes: StreamBytes,
        broadcast: Broadcast,
        shared: Arc<ClusterShared>,
    ) -> Tail {
        Tail {
            client,
            stream,
            after,
            bytes,
            broadcast,
            shared,
            con: None,
            backoff: Backoff::new(),
            last_read: Instant::now(),
        }
    }

    /// Runs until the node stops.
    pub fn run(mut self) -> std::io::Result<()> {
        while !self.shared.stopping.load(Ordering::Relaxed) {
            let Some(mut con) = self.con.take() else {
                self.reconnect();
                continue;
            };
            // Away longer than a node's keys may last since the last read went out (stopped,
            // starved of CPU, or held by a shard): the others may have trimmed past it.
            let away = self.last_read.elapsed() > AWAY;
            self.last_read = Instant::now();
            let read = if away { self.check_epoch(&mut con) } else { Ok(()) }.and_then(|()| {
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(COUNT)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&self.stream)
                    .arg(self.after.to_string())
                    .query(&mut con)
                    .and_then(|reply| entry::read_reply(reply).map_err(unreadable))
            });
            self.con = Some(con);
            match read {
                Ok(entries) if entries.is_empty() => self.shared.lag_ms.store(0, Ordering::Relaxed),
                Ok(entries) => {
                    for raw in entries {
                        self.deliver(raw);
                    }
                    self.broadcast.wake();
                    *self.shared.tail.lock() =
                        TailPosition { read: self.after, memory_cut: self.bytes.cut() };
                    self.shared.lag_ms.store(now_ms().saturating_sub(self.after.ms), Ordering::Relaxed);
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

    /// Delivers one entry (one that is not understood is skipped with a log line).
    fn deliver(&mut self, raw: RawEntry) {
        let Ok(stream_id) = StreamId::parse(&raw.id) else {
            warn!("Cluster: stream entry id {:?} not understood; skipped", raw.id);
            return;
        };
        self.after = stream_id;
        self.bytes.read(stream_id, raw.size());
        match entry::decode(raw).and_then(|entry| Ok((entry.id.event_id()?, entry.publish))) {
            Ok((id, publish)) => self.broadcast.deliver_new(id, publish),
            Err(e) => warn!("Cluster: {e}; skipped"),
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

    /// Starts a new epoch if the stream no longer holds the last entry read: `XREAD` would
    /// go on from the oldest entry left and never say what it skipped.
    fn check_epoch(&mut self, con: &mut redis::Connection) -> redis::RedisResult<()> {
        if !self.kept_last_read(con)? {
            warn!("Cluster: the stream lost entry {} (Redis lost its data, or it was trimmed while this node was away): a new epoch", self.after);
            self.broadcast.new_epoch();
        }
        Ok(())
    }

    fn reconnect(&mut self) {
        std::thread::sleep(self.backoff.left().min(BLOCK));
        if !self.backoff.left().is_zero() {
            return;
        }
        match connect(&self.client).and_then(|mut con| self.check_epoch(&mut con).map(|()| con)) {
            Ok(con) => {
                info!("Cluster: tailing the stream after {}", self.after);
                self.last_read = Instant::now();
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
