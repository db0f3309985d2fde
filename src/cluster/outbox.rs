//! The outbox thread: appends this node's publishes to the stream, in order, once each.
//!
//! Owns the publishes the sequencer accepted and Redis has not confirmed, this node's liveness
//! and position keys, and trimming the stream. It never delivers: delivery is the tail's.
//!
//! # Nothing lost, nothing twice
//! Publishes are held in order until Redis confirms them, and sent in pipelined batches of
//! `XADD`s, written as bytes (`resp`) and their replies read from the bytes, over a connection
//! of its own (`wire`): every publish of the node passes here. When a reply does not come
//! (Redis went away or froze), some of the batch may have been applied and some not; Redis
//! applies a connection's commands in order, so what was applied is a first part of the batch.
//! Every entry carries this node's name and its publish number, so on reconnecting the outbox
//! reads the stream back from the newest entry down to the last one Redis confirmed to it
//! (`XREVRANGE`), finds its own highest number there, and drops what is held up to it before
//! sending the rest. A number per node, rather than an id chosen by the node for `XADD`, keeps
//! Redis the one that orders the cluster: ids chosen by nodes would need their clocks in step.
//!
//! What is held lives in memory: a node killed while Redis is unreachable loses it (its
//! publishers were answered, not told it reached every node).
//!
//! # Liveness, and trimming
//! Every [`BEAT`] it sets `PREFIX:node:ID` with a TTL of [`NODE_TTL`] and counts the keys of
//! every node (`SCAN`), for status. It also sets `PREFIX:read:ID`, the last entry its tail
//! read, for `--history-age`, reads every node's, and cuts the stream where [`trim::cut`]
//! says (`XTRIM MINID ~`). A node that stops deletes both keys.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tracing::{info, warn};

use super::entry::{self, StreamId};
use super::resp::{self, Parsed};
use super::wire::{Wire, WireError};
use super::{now_ms, pages, trim, why, Backoff, ClusterSettings, ClusterShared, TailPosition, NODE_TTL};
use crate::event::{Publish, Receipt, ReceiptSender, ReceiptTo};
use crate::pipeline::SharedState;

/// How often the node says it is alive.
const BEAT: Duration = Duration::from_secs(3);
/// `XADD`s per pipelined batch.
const BATCH: usize = 256;
/// Entries read per `XREVRANGE` when looking for what a lost reply applied.
const SCAN_PAGE: usize = 1000;

/// A publish held until Redis confirms it.
#[derive(Debug)]
struct Held {
    seq: u64,
    publish: Publish,
    /// Where its receipt goes, until it is given.
    receipt: Option<ReceiptTo>,
}

/// The outbox thread's state.
pub struct Outbox {
    client: redis::Client,
    url: String,
    stream: String,
    node: String,
    node_key: String,
    nodes_pattern: String,
    read_key: String,
    reads_pattern: String,
    max_age: Duration,
    publishes: Receiver<(Publish, Option<ReceiptTo>)>,
    /// Receipts for the publishers that asked.
    receipts: ReceiptSender,
    shared: Arc<ClusterShared>,
    /// The history, for the oldest event its rings keep.
    state: Arc<SharedState>,
    con: Option<Wire>,
    held: VecDeque<Held>,
    /// A batch of `XADD`s as sent (kept: its room is reused for the next).
    batch: Vec<u8>,
    next_seq: u64,
    /// An entry older than any of ours Redis may hold unconfirmed: the last one it confirmed,
    /// or the newest at start.
    floor: StreamId,
    /// A batch was sent and its reply did not come.
    unsure: bool,
    backoff: Backoff,
    next_beat: Instant,
}

impl Outbox {
    pub(super) fn new(
        client: redis::Client,
        settings: &ClusterSettings,
        node: String,
        floor: StreamId,
        (publishes, receipts): (Receiver<(Publish, Option<ReceiptTo>)>, ReceiptSender),
        shared: Arc<ClusterShared>,
        state: Arc<SharedState>,
    ) -> Outbox {
        let max_age = state.history.read().limits().max_age;
        Outbox {
            client,
            url: settings.shown_url(),
            stream: settings.stream(),
            node_key: format!("{}:node:{node}", settings.key),
            nodes_pattern: format!("{}:node:*", glob_escaped(&settings.key)),
            read_key: settings.read_key(&node),
            reads_pattern: format!("{}:read:*", glob_escaped(&settings.key)),
            node,
            max_age,
            publishes,
            receipts,
            shared,
            state,
            con: None,
            held: VecDeque::new(),
            batch: Vec::new(),
            next_seq: 1,
            floor,
            unsure: false,
            backoff: Backoff::new(),
            next_beat: Instant::now(),
        }
    }

    /// Runs until the node stops.
    pub fn run(mut self) -> std::io::Result<()> {
        while !self.shared.stopping.load(Ordering::Relaxed) {
            let wait = match &self.con {
                None => self.backoff.left(),
                Some(_) if self.held.is_empty() => self.next_beat.saturating_duration_since(Instant::now()),
                Some(_) => Duration::ZERO,
            };
            match self.publishes.recv_timeout(wait.min(BEAT)) {
                Ok((publish, receipt)) => self.hold(publish, receipt),
                Err(RecvTimeoutError::Timeout) => {}
                // The sequencer is gone: the node is stopping.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok((publish, receipt)) = self.publishes.try_recv() {
                self.hold(publish, receipt);
            }
            if self.con.is_none() && self.backoff.left().is_zero() {
                self.reconnect();
            }
            if let Err(e) = self.flush().and_then(|()| self.beat()) {
                self.lost(&e);
            }
        }
        // A node that stops appends what it accepted, if Redis is there to take it.
        while let Ok((publish, receipt)) = self.publishes.try_recv() {
            self.hold(publish, receipt);
        }
        let flushed = self.flush();
        self.answer_queued();
        if !self.held.is_empty() {
            let reason = flushed.err().map_or_else(|| "Redis unreachable".to_string(), |e| why(&e));
            warn!("Cluster: {} publishes not appended at stop: {reason}", self.held.len());
        }
        self.leave();
        Ok(())
    }

    /// Deletes this node's keys: it no longer counts, nor holds back the trim.
    fn leave(&mut self) {
        let Some(con) = &mut self.con else { return };
        if let Err(e) = redis::cmd("DEL").arg(&self.node_key).arg(&self.read_key).query::<()>(con) {
            warn!("Cluster: could not delete this node's keys at stop: {}", why(&e));
        }
    }

    /// Holds a publish until Redis confirms it. While Redis is unreachable its publisher is
    /// told at once that it is queued, rather than kept waiting for a Redis that may be gone
    /// for minutes.
    fn hold(&mut self, publish: Publish, mut receipt: Option<ReceiptTo>) {
        // Not `con`: there is none before the first publish, with Redis there all the same.
        if !self.shared.outbox_connected.load(Ordering::Relaxed) {
            if let Some(to) = receipt.take() {
                self.receipts.send(to, Receipt::Queued);
            }
        }
        self.held.push_back(Held { seq: self.next_seq, publish, receipt });
        self.next_seq += 1;
    }

    /// Tells every publisher still waiting for a receipt that its publish is queued: Redis is
    /// gone, or the node is stopping.
    fn answer_queued(&mut self) {
        for held in &mut self.held {
            if let Some(to) = held.receipt.take() {
                self.receipts.send(to, Receipt::Queued);
            }
        }
    }

    /// Connects, and settles what a lost reply may have applied.
    fn reconnect(&mut self) {
        let info = self.client.get_connection_info();
        let settled = Wire::connect(info).map_err(redis::RedisError::from).and_then(|mut con| {
            if self.unsure {
                self.drop_applied(&mut con)?;
            }
            Ok(con)
        });
        match settled {
            Ok(con) => {
                info!(
                    "Cluster: connected to Redis at {}; {} held publishes to append",
                    self.url,
                    self.held.len()
                );
                self.con = Some(con);
                self.backoff.succeeded();
                self.set_connected(true);
            }
            Err(e) => {
                self.backoff.failed();
                self.set_connected(false);
                warn!("Cluster: cannot reach Redis at {} to publish: {}", self.url, why(&e));
            }
        }
    }

    /// The connection failed: publishes are held until it is back.
    fn lost(&mut self, e: &redis::RedisError) {
        warn!(
            "Cluster: Redis at {} unreachable ({}); holding publishes ({} now), reconnecting",
            self.url,
            why(e),
            self.held.len()
        );
        self.con = None;
        self.backoff.failed();
        self.set_connected(false);
        self.answer_queued();
    }

    fn set_connected(&self, connected: bool) {
        self.shared.outbox_connected.store(connected, Ordering::Relaxed);
        if !connected {
            // A sequencer waiting for room now refuses instead.
            self.shared.wake_waiting();
        }
    }

    /// Appends everything held, a batch at a time.
    fn flush(&mut self) -> redis::RedisResult<()> {
        let Some(con) = &mut self.con else { return Ok(()) };
        while !self.held.is_empty() {
            let batch = self.held.len().min(BATCH);
            self.batch.clear();
            for held in self.held.range(..batch) {
                let fields = entry::fields(&held.publish, &self.node, held.seq);
                let head: [&[u8]; 3] = [b"XADD", self.stream.as_bytes(), b"*"];
                let fields = fields.iter().flat_map(|(name, value)| [name.as_bytes(), value.as_ref()]);
                resp::push_command(&mut self.batch, head.into_iter().chain(fields));
            }
            self.unsure = true;
            con.write(&self.batch)?;
            // Replies are taken one by one, each confirming its publish, and the first that
            // fails ends the batch (a frozen Redis costs one timeout, not one per command).
            for _ in 0..batch {
                let id = resp::bulk_reply(con.reply()?).and_then(Parsed::whole).map_err(WireError::from)?;
                let id = StreamId::from_bytes(id).ok();
                if let Some(id) = id {
                    self.floor = id;
                }
                if let Some(held) = self.held.pop_front() {
                    self.shared.unbuffer(held.publish.message.len());
                    if let Some(to) = held.receipt {
                        let event = id.and_then(|id| id.event_id().ok());
                        self.receipts.send(to, event.map_or(Receipt::Undeliverable, Receipt::Sequenced));
                    }
                }
            }
            self.unsure = false;
            self.shared.wake_waiting();
        }
        Ok(())
    }

    /// Drops the held publishes Redis already has: those up to this node's highest number in
    /// the entries after [`Outbox::floor`].
    fn drop_applied(&mut self, con: &mut Wire) -> redis::RedisResult<()> {
        let start = if self.floor == StreamId::ZERO { "-".to_string() } else { format!("({}", self.floor) };
        let xrevrange = |end: &str| redis::cmd("XREVRANGE").arg(&self.stream).arg(end).arg(&start).clone();
        let mut applied = None;
        pages(con, SCAN_PAGE, xrevrange, "+", |_, page| {
            let ours = page.iter().filter_map(|raw| entry::decode(raw).ok()).find(|e| e.node == self.node);
            applied = ours.map(|entry| entry.seq);
            Ok(applied.is_none())
        })?;
        let mut dropped = 0;
        while self.held.front().is_some_and(|held| Some(held.seq) <= applied) {
            if let Some(held) = self.held.pop_front() {
                self.shared.unbuffer(held.publish.message.len());
                dropped += 1;
            }
        }
        self.shared.wake_waiting();
        if dropped > 0 {
            info!(
                "Cluster: {dropped} publishes were appended before the connection was lost; not sent again"
            );
        }
        self.unsure = false;
        Ok(())
    }

    /// Says this node is alive and where its tail is, counts the nodes that are, and trims
    /// the stream, every [`BEAT`]. Only a failed connection is an error: Redis refusing a
    /// command (an ACL, a key of another type) is logged, and publishing goes on.
    fn beat(&mut self) -> redis::RedisResult<()> {
        if self.con.is_none() || Instant::now() < self.next_beat {
            return Ok(());
        }
        self.next_beat = Instant::now() + BEAT;
        match self.beat_now() {
            Err(e) if !is_lost(&e) => {
                warn!("Cluster: Redis refused a liveness or trim command: {}", why(&e));
                Ok(())
            }
            done => done,
        }
    }

    fn beat_now(&mut self) -> redis::RedisResult<()> {
        let Some(con) = &mut self.con else { return Ok(()) };
        let tail = self.shared.tail_position();
        redis::pipe()
            .cmd("SET")
            .arg(&self.node_key)
            .arg(now_ms())
            .arg("EX")
            .arg(NODE_TTL)
            .ignore()
            .cmd("SET")
            .arg(&self.read_key)
            .arg(tail.read.to_string())
            .arg("EX")
            // Never gone between two beats, whatever --history-age says.
            .arg(self.max_age.as_secs().max(NODE_TTL))
            .ignore()
            .query::<()>(con)?;
        let nodes = scan(con, &self.nodes_pattern)?;
        self.shared.nodes.store(nodes.len() as u64, Ordering::Relaxed);
        self.trim(tail)
    }

    /// Cuts the stream where [`trim::cut`] says: a key or value under `PREFIX:read:*` that is
    /// not a position holds nothing back.
    fn trim(&mut self, tail: TailPosition) -> redis::RedisResult<()> {
        let Some(con) = &mut self.con else { return Ok(()) };
        let reads = scan(con, &self.reads_pattern)?;
        let positions: Vec<Option<Vec<u8>>> =
            if reads.is_empty() { Vec::new() } else { redis::cmd("MGET").arg(&reads).query(con)? };
        let positions = positions
            .iter()
            .flatten()
            .filter_map(|p| std::str::from_utf8(p).ok().and_then(|p| StreamId::parse(p).ok()));
        let oldest_kept = self.state.history.read().figures().oldest.map(StreamId::of_event);
        let wanted = [
            StreamId { ms: now_ms().saturating_sub(self.max_age.as_millis() as u64), seq: 0 },
            oldest_kept.unwrap_or(tail.read),
            tail.memory_cut,
        ];
        if let Some(cut) = trim::cut(&wanted, positions.chain([tail.read])) {
            // `~`: whole nodes of the stream only, so one trim after a long hold-back never
            // keeps Redis busy for long; it never cuts more than asked.
            redis::cmd("XTRIM")
                .arg(&self.stream)
                .arg("MINID")
                .arg("~")
                .arg(cut.to_string())
                .query::<()>(con)?;
        }
        Ok(())
    }
}

/// `text` as a `SCAN MATCH` pattern that matches it alone: a prefix may hold `*`, `?`, `[`.
fn glob_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Whether the connection itself failed (rather than Redis refusing one command).
fn is_lost(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// The keys matching `pattern` (`SCAN`, a page at a time), as bytes: a key that is not text
/// is somebody else's, not an error.
fn scan(con: &mut Wire, pattern: &str) -> redis::RedisResult<Vec<Vec<u8>>> {
    let mut cursor = 0u64;
    let mut found = Vec::new();
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query(con)?;
        found.extend(keys);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::glob_escaped;

    #[test]
    fn a_prefix_is_matched_as_written_not_as_a_pattern() {
        assert_eq!(glob_escaped("hasses"), "hasses");
        assert_eq!(glob_escaped(r"a*b?[c]\d"), r"a\*b\?\[c\]\\d");
    }
}
