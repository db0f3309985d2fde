//! The tail thread: reads the stream as it grows and delivers each event to the shards.
//!
//! Owns the position in the stream: the id of the last entry read. It reads after it with
//! `XREAD BLOCK`, so a lost connection resumes exactly where it stopped, and an entry is never
//! delivered twice. It reads over a connection of its own (`wire`), each reply straight from
//! its bytes (`resp`): every event of the cluster passes here. It delivers through a [`Broadcast`] of its own (history, frame, fan-out),
//! so an event wakes no other thread of this node before the shards, which is what a cluster's
//! latency is made of: when a shard falls behind, the tail waits for room, and the stream
//! holds the rest.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::entry::{self, RawEntry, StreamId};
use super::resp;
use super::trim::StreamBytes;
use super::wire::{Wire, WireError};
use super::{now_ms, Backoff, ClusterShared, TailPosition};
use crate::broadcast::Broadcast;
use crate::event::{Publish, Target};
use crate::presence::ClusterRoster;

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
    con: Option<Wire>,
    backoff: Backoff,
    /// When the last read went out.
    last_read: Instant,
    /// With `--presence-events`: who is on each token across the cluster, so that a join or
    /// leave is delivered only when it is one for the whole cluster.
    presence: Option<ClusterRoster>,
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
            presence: None,
        }
    }

    /// Delivers a join or leave only when it is one for the whole cluster (`--presence-events`).
    pub(super) fn with_presence(self) -> Tail {
        Tail { presence: Some(ClusterRoster::default()), ..self }
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
                let mut xread = redis::cmd("XREAD");
                xread.arg("COUNT").arg(COUNT).arg("BLOCK").arg(BLOCK.as_millis() as u64);
                con.send(xread.arg("STREAMS").arg(&self.stream).arg(self.after.to_string()))?;
                let entries = resp::read_reply(con.reply()?)?.whole()?;
                self.take(&entries);
                Ok(())
            });
            self.con = Some(con);
            match read {
                Ok(()) => {}
                Err(e) => {
                    warn!(
                        "Cluster: lost the stream's tail ({e}); reconnecting, then reading on after {}",
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

    /// Delivers what one read found, waking the shards once for all of it, and says where the
    /// tail now is (for the trim) and how far behind the stream (for status). A read that
    /// found nothing ran out its `BLOCK`: the tail is up to date.
    fn take(&mut self, entries: &[RawEntry<'_>]) {
        if entries.is_empty() {
            self.shared.lag_ms.store(0, Ordering::Relaxed);
            return;
        }
        for raw in entries {
            self.deliver(raw);
        }
        self.broadcast.wake();
        *self.shared.tail.lock() = TailPosition { read: self.after, memory_cut: self.bytes.cut() };
        self.shared.lag_ms.store(now_ms().saturating_sub(self.after.ms), Ordering::Relaxed);
    }

    /// Delivers one entry (one that is not understood is skipped with a log line).
    fn deliver(&mut self, raw: &RawEntry<'_>) {
        let Ok(stream_id) = raw.stream_id() else {
            warn!("Cluster: stream entry id {:?} not understood; skipped", String::from_utf8_lossy(raw.id));
            return;
        };
        self.after = stream_id;
        self.bytes.read(stream_id, raw.size());
        match entry::decode(raw).and_then(|entry| Ok((entry.id.event_id()?, entry.publish))) {
            Ok((id, publish)) => {
                if let Some(publish) = self.cluster_wide(publish) {
                    self.broadcast.deliver_new(id, publish);
                }
            }
            Err(e) => warn!("Cluster: {e}; skipped"),
        }
    }

    /// A node's join or leave as the whole cluster sees it (`None`: it changes nothing there);
    /// any other event as it is.
    fn cluster_wide(&mut self, mut publish: Publish) -> Option<Publish> {
        let Some(roster) = &mut self.presence else { return Some(publish) };
        let token = match publish.audience.targets.as_slice() {
            [Target::Token(token)] => Some(token.as_str()),
            _ => None,
        };
        publish.message = roster.read(publish.event.as_deref(), token, &publish.message)?;
        Some(publish)
    }

    /// Starts a new epoch if the stream no longer holds the last entry read: `XREAD` would
    /// go on from the oldest entry left and never say what it skipped.
    fn check_epoch(&mut self, con: &mut Wire) -> Result<(), WireError> {
        let stream = self.stream.clone();
        self.epoch_unless_held(|id| {
            con.send(redis::cmd("XRANGE").arg(&stream).arg(id).arg(id))?;
            Ok(!resp::range_reply(con.reply()?)?.whole()?.is_empty())
        })
    }

    /// [`Tail::check_epoch`]'s decision, `held(id)` saying whether the stream holds the entry
    /// `id` (apart from the query, for the tests). Before anything was read, nothing is lost.
    fn epoch_unless_held(
        &mut self,
        held: impl FnOnce(&str) -> Result<bool, WireError>,
    ) -> Result<(), WireError> {
        if self.after == StreamId::ZERO || held(&self.after.to_string())? {
            return Ok(());
        }
        warn!("Cluster: the stream lost entry {} (Redis lost its data, or it was trimmed while this node was away): a new epoch", self.after);
        self.broadcast.new_epoch();
        Ok(())
    }

    fn reconnect(&mut self) {
        std::thread::sleep(self.backoff.left().min(BLOCK));
        if !self.backoff.left().is_zero() {
            return;
        }
        let info = self.client.get_connection_info();
        match Wire::connect(info).and_then(|mut con| self.check_epoch(&mut con).map(|()| con)) {
            Ok(con) => {
                info!("Cluster: tailing the stream after {}", self.after);
                self.last_read = Instant::now();
                self.con = Some(con);
                self.backoff.succeeded();
                self.shared.tail_connected.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                self.backoff.failed();
                warn!("Cluster: cannot reach Redis to tail the stream: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::broadcast::tests::{everyone_listens, publish, resume, state, TestShards};
    use std::borrow::Cow;

    use crate::cluster::resp::tests::{entry_bytes, xread_bytes};
    use crate::event::Publish;
    use crate::pipeline::{ShardCommand, SharedState};

    /// A tail over these shards that has read up to `after`; it never reaches Redis here.
    fn tail(shards: &TestShards, after: StreamId) -> (Tail, Arc<SharedState>, Arc<ClusterShared>) {
        let state = state(1);
        everyone_listens(&state, shards.handles.len());
        let shared = Arc::new(ClusterShared::default());
        let client = super::super::client("redis://127.0.0.1:1").unwrap();
        let broadcast = Broadcast::new(shards.handles.clone(), Arc::clone(&state));
        let tail = Tail::new(
            client,
            "hasses:events".into(),
            after,
            StreamBytes::new(1 << 20),
            broadcast,
            Arc::clone(&shared),
        );
        (tail, state, shared)
    }

    /// The entry `id` with these fields, as Redis writes it.
    fn entry(id: &str, fields: &[(&'static str, Cow<'_, [u8]>)]) -> Vec<u8> {
        let fields: Vec<(&[u8], &[u8])> =
            fields.iter().map(|(name, value)| (name.as_bytes(), &value[..])).collect();
        entry_bytes(id, &fields)
    }

    /// The entry `id` of `publish`, as Redis writes it.
    fn raw(id: &str, publish: &Publish) -> Vec<u8> {
        entry(id, &entry::fields(publish, "node-a", 1))
    }

    /// Hands `tail` an `XREAD` reply of these entries, read as the tail reads it.
    fn read(tail: &mut Tail, entries: Vec<Vec<u8>>) {
        let reply = xread_bytes(&entries);
        tail.take(&resp::read_reply(&reply).unwrap().whole().unwrap());
    }

    fn stream_id(text: &str) -> StreamId {
        StreamId::parse(text).unwrap()
    }

    #[test]
    fn a_read_is_delivered_with_the_stream_s_ids_and_woken_once() {
        let mut shards = TestShards::new(2, 16);
        let (mut tail, state, shared) = tail(&shards, StreamId::ZERO);
        let (a, b) = (publish("t", "a"), publish("u", "b"));
        read(&mut tail, vec![raw("1700000000000-5", &a), raw("1700000000001-0", &b)]);
        assert_eq!(shards.woken_all(), [true, true]);
        for inbox in &shards.inboxes {
            let delivered: Vec<_> = inbox
                .try_iter()
                .map(|command| match command {
                    ShardCommand::Deliver(event) => (event.id, event.frame.clone()),
                    other => panic!("{other:?}"),
                })
                .collect();
            let ids = [1_700_000_000_000_000_005, 1_700_000_000_001_000_000];
            let frames = [crate::broadcast::frame(ids[0], &a), crate::broadcast::frame(ids[1], &b)];
            assert_eq!(delivered, [(ids[0], frames[0].clone()), (ids[1], frames[1].clone())]);
        }
        assert_eq!(state.published.load(Ordering::Acquire), 1_700_000_000_001_000_000);
        assert_eq!(resume(&state, "t", 1).1, ["1700000000000000005"], "kept for resume");
        assert_eq!(tail.after, stream_id("1700000000001-0"));
        assert_eq!(shared.tail_position().read, tail.after, "the trim knows where the tail is");
        assert!(shared.lag_ms.load(Ordering::Relaxed) > 0, "entries from 2023 are late");
        // A read that found nothing: up to date, and nobody is woken.
        read(&mut tail, Vec::new());
        assert_eq!(shared.lag_ms.load(Ordering::Relaxed), 0);
        assert_eq!(shards.woken_all(), [false, false]);
    }

    #[test]
    fn an_entry_it_cannot_deliver_is_skipped_and_reading_goes_on_after_it() {
        let mut shards = TestShards::new(1, 16);
        let (mut tail, state, _) = tail(&shards, stream_id("5-0"));
        let good = publish("t", "x");
        // An id that is not `ms-seq`: not even a place in the stream to go on from.
        read(&mut tail, vec![raw("nonsense", &good)]);
        assert_eq!(tail.after, stream_id("5-0"));
        // An entry without data, and one whose id no event id can be: gone past.
        let mut fields = entry::fields(&good, "node-a", 1);
        fields.retain(|(name, _)| *name != "d");
        read(&mut tail, vec![entry("6-0", &fields)]);
        assert_eq!(tail.after, stream_id("6-0"));
        read(&mut tail, vec![raw("7-1000000", &good)]);
        assert_eq!(tail.after, stream_id("7-1000000"));
        assert!(shards.sent(0).is_empty());
        // One delivered already (read at start, or by an earlier read): not twice.
        state.published.store(8_000_000, Ordering::Release);
        read(&mut tail, vec![raw("8-0", &good), raw("8-1", &good)]);
        assert_eq!(shards.sent(0), ["deliver 8000001"]);
        assert_eq!(tail.after, stream_id("8-1"));
        assert!(shards.woken(0));
    }

    #[test]
    fn a_new_epoch_only_when_the_stream_lost_the_last_entry_read() {
        let shards = TestShards::new(1, 16);
        let (mut tail, state, _) = tail(&shards, StreamId::ZERO);
        // Nothing read yet: nothing to lose, nothing to ask.
        tail.epoch_unless_held(|_| panic!("asked the stream")).unwrap();
        read(&mut tail, vec![raw("9-0", &publish("t", "old"))]);
        let mut asked = Vec::new();
        tail.epoch_unless_held(|id| {
            asked.push(id.to_string());
            Ok(true)
        })
        .unwrap();
        assert_eq!(asked, ["9-0"], "it asks for the last entry read");
        assert_eq!(resume(&state, "t", 8_999_999), (false, vec!["9000000".to_string()]));
        // Redis did not answer: no decision, the error goes up (and the tail reconnects).
        assert!(tail.epoch_unless_held(|_| Err(WireError::Closed)).is_err());
        assert!(!resume(&state, "t", 8_999_999).0);
        // The stream no longer holds it: what came before now may be gone, and a resume from
        // before is told.
        tail.epoch_unless_held(|_| Ok(false)).unwrap();
        assert_eq!(resume(&state, "t", 8_999_999), (true, vec!["9000000".to_string()]));
    }
}
