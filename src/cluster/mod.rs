//! Cluster mode: several nodes act as one through a Redis (or Valkey) stream.
//!
//! Owns the node's side of the stream: every publish this node accepts is appended to it
//! (`outbox`, its own thread), and every node tails it (`tail`, its own thread) and
//! delivers what it reads, so every node delivers the same events in the same order with the
//! same ids ([`entry`]). A node's own publishes take the same path: a publish is delivered when
//! the tail reads it back. It never touches a client: the tail hands what it reads to the
//! shards through a [`crate::broadcast::Broadcast`] of its own, as the sequencer does alone.
//!
//! ```text
//!   sources ─► Sequencer ─► outbox thread ─XADD─► Redis stream ─XREAD BLOCK─► tail thread
//!              (queued)     (held while Redis      PREFIX:events                │
//!                            is unreachable)                                    ▼
//!   shards ◄──────── fan-out ◄─────── Broadcast: the entry's id, history, frame once
//! ```
//!
//! The stream is the cluster's history: the outbox cuts it to what the nodes' rings may keep,
//! never past an entry a node has still to read (the `trim` module).
//!
//! At start ([`Cluster::open`]) the node reads the stream whole into its history before it
//! serves anyone, so a resume on a node that just (re)started is served like on any other, and
//! a resume from before the stream's oldest entry is told of a gap.
//!
//! Questions every node answers for its own clients (presence) and orders every node carries
//! out (disconnect, revoke) go over a pub/sub channel beside the stream (`orders`).
//!
//! The Redis client is the `redis` crate's blocking one: each thread owns its connections, so
//! no async runtime runs inside the server.

pub mod entry;
mod orders;
mod outbox;
mod resp;
mod tail;
mod trim;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use tracing::warn;

use crate::broadcast::{Broadcast, Fanout};
use crate::event::{Publish, Receipt, ReceiptSender, ReceiptTo};
use crate::figures::ClusterFigures;
use crate::history::{History, HistoryLimits};
use crate::pipeline::{ShardHandle, SharedState};
use entry::StreamId;
use mio::Waker;
pub use orders::{ClusterAsker, Orders};
pub use outbox::Outbox;
pub use tail::Tail;

/// How long a node's liveness key outlives its last beat, and the key that says where a
/// starting node has read to outlives its last page.
const NODE_TTL: u64 = 10;
/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may wait for its reply before the connection counts as lost (a frozen
/// Redis is found this way). Longer than the tail's `BLOCK`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Entries read per `XRANGE` while backfilling.
const PAGE: usize = 1000;
/// How far (in event ids: a minute of the stream) a resume may be ahead of this node's tail
/// and be taken as lag (see [`History::with_lag_window`]).
const LAG_WINDOW: u64 = 60_000 * 1_000_000;
/// How long a sequencer waiting for room sleeps before it looks again (a wake-up may come
/// between its look and its wait).
const ROOM_RECHECK: Duration = Duration::from_millis(50);

/// `--cluster`, `--cluster-key`, `--cluster-buffer`, `--cluster-buffer-memory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS).
    pub url: String,
    /// The prefix of every key: the stream is `PREFIX:events`, nodes `PREFIX:node:ID`, where
    /// each has read `PREFIX:read:ID`.
    pub key: String,
    /// Publishes held while Redis is unreachable before more are refused.
    pub buffer_events: u64,
    /// The same, in bytes of data.
    pub buffer_bytes: u64,
}

impl ClusterSettings {
    /// The URL without its password, for log lines.
    pub fn shown_url(&self) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else { return self.url.clone() };
        let host_start = rest.find('/').unwrap_or(rest.len());
        match rest[..host_start].rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _password)) => format!("{scheme}://{user}:***@{host}{}", &rest[host_start..]),
                None => self.url.clone(),
            },
            None => self.url.clone(),
        }
    }

    fn stream(&self) -> String {
        format!("{}:events", self.key)
    }

    /// The channel presence questions and orders go to every node on.
    fn ask_channel(&self) -> String {
        format!("{}:ask", self.key)
    }

    /// The key that says where `node`'s tail is, for the trim.
    fn read_key(&self, node: &str) -> String {
        format!("{}:read:{node}", self.key)
    }
}

/// Why the node cannot join the cluster at start. `Display` is the one line printed before
/// exiting non-zero; later, Redis going away never stops the node.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The URL is not one the Redis client accepts.
    #[error("--cluster {url}: {reason}")]
    Url {
        /// The URL, without its password.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// Redis did not answer, refused the credentials, or refused a command.
    #[error("--cluster {url}: {reason}")]
    Redis {
        /// The URL, without its password.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// The cluster's figures, written by its threads and the sequencer, read by status.
#[derive(Debug, Default)]
pub struct ClusterShared {
    /// The outbox has a connection.
    outbox_connected: AtomicBool,
    /// The tail has a connection.
    tail_connected: AtomicBool,
    /// Milliseconds between Redis adding the newest entry the tail read and the tail reading it.
    lag_ms: AtomicU64,
    /// Publishes accepted and not yet appended to the stream.
    buffered_events: AtomicU64,
    /// Their data's bytes.
    buffered_bytes: AtomicU64,
    /// Nodes whose liveness key is there (counted every few seconds).
    nodes: AtomicU64,
    /// Where the tail is, for the trim.
    tail: Mutex<TailPosition>,
    /// The node is stopping: the threads end.
    stopping: AtomicBool,
    /// Signalled when the buffer has room again, or the outbox lost Redis.
    room: Condvar,
    room_lock: Mutex<()>,
}

/// Where the tail is: what the outbox needs to trim the stream.
#[derive(Debug, Default, Clone, Copy)]
struct TailPosition {
    /// The last entry read.
    read: StreamId,
    /// Where the newest `--history-memory` of entries read begin.
    memory_cut: StreamId,
}

impl ClusterShared {
    /// A snapshot for status.
    pub fn figures(&self) -> ClusterFigures {
        ClusterFigures {
            connected: self.outbox_connected.load(Ordering::Relaxed)
                && self.tail_connected.load(Ordering::Relaxed),
            lag_ms: self.lag_ms.load(Ordering::Relaxed),
            buffered: self.buffered_events.load(Ordering::Relaxed),
            nodes: self.nodes.load(Ordering::Relaxed),
        }
    }

    fn tail_position(&self) -> TailPosition {
        *self.tail.lock()
    }

    fn unbuffer(&self, bytes: usize) {
        self.buffered_events.fetch_sub(1, Ordering::Relaxed);
        self.buffered_bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    /// Wakes a sequencer waiting for room (after [`ClusterShared::unbuffer`], or when the
    /// outbox lost Redis and the wait must end in a refusal).
    fn wake_waiting(&self) {
        let _held = self.room_lock.lock();
        self.room.notify_all();
    }
}

/// The publish would go over `--cluster-buffer`: Redis has been unreachable too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cluster buffer full ({events} publishes, {bytes} bytes held while Redis is unreachable)")]
pub struct BufferFull {
    /// Publishes held.
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A publish on its way to the outbox, with where its receipt goes if its publisher asked.
type Outgoing = (Publish, Option<ReceiptTo>);

/// The sequencer's end of the cluster: publishes go out.
#[derive(Debug)]
pub struct ClusterLink {
    outbox: Sender<Outgoing>,
    /// The outbox's receipts for publishers that asked, read by the control thread.
    pub receipts: Receiver<(ReceiptTo, Receipt)>,
    shared: Arc<ClusterShared>,
    limits: (u64, u64),
}

impl ClusterLink {
    /// The sequencer's end of a cluster that holds at most `limits` (publishes, bytes) while
    /// Redis is unreachable, with the outbox's ends: where it reads the publishes, where it
    /// sends receipts. (Apart from [`Cluster::open`] so that the sequencer's tests have one.)
    pub(crate) fn new(
        shared: Arc<ClusterShared>,
        limits: (u64, u64),
    ) -> (ClusterLink, Receiver<Outgoing>, Sender<(ReceiptTo, Receipt)>) {
        let (outbox_in, outbox) = crossbeam_channel::unbounded();
        let (receipts, receipts_out) = crossbeam_channel::unbounded();
        (ClusterLink { outbox: outbox_in, receipts: receipts_out, shared, limits }, outbox, receipts)
    }

    /// Hands a publish to the outbox. With the buffer full, it waits for room while Redis is
    /// connected (backpressure: Redis is only slower than the publishers, and TCP flow
    /// control slows them down), and refuses it while Redis is unreachable.
    pub fn send(&self, publish: Publish, receipt: Option<ReceiptTo>) -> Result<(), BufferFull> {
        let shared = &self.shared;
        let size = publish.message.len() as u64;
        let mut held = shared.room_lock.lock();
        loop {
            let events = shared.buffered_events.load(Ordering::Relaxed);
            let bytes = shared.buffered_bytes.load(Ordering::Relaxed);
            if events < self.limits.0 && bytes + size <= self.limits.1 {
                break;
            }
            if !shared.outbox_connected.load(Ordering::Relaxed) || shared.stopping.load(Ordering::Relaxed) {
                return Err(BufferFull { events, bytes });
            }
            shared.room.wait_for(&mut held, ROOM_RECHECK);
        }
        drop(held);
        shared.buffered_events.fetch_add(1, Ordering::Relaxed);
        shared.buffered_bytes.fetch_add(size, Ordering::Relaxed);
        // The outbox ends only after the sequencer: a failed send cannot happen before.
        let _ = self.outbox.send((publish, receipt));
        Ok(())
    }

    /// Tells the cluster's threads to end.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
    }
}

/// A node that joined the cluster, before its threads run.
#[derive(Debug)]
pub struct Cluster {
    settings: ClusterSettings,
    client: redis::Client,
    node: String,
    shared: Arc<ClusterShared>,
    /// The newest entry read at start: the tail goes on after it.
    newest: StreamId,
    /// The bytes read at start, for the trim by `--history-memory`.
    bytes: trim::StreamBytes,
    outbox: Receiver<Outgoing>,
    /// Where the outbox sends receipts; the control thread reads them through the link.
    receipts: Sender<(ReceiptTo, Receipt)>,
    link: Option<ClusterLink>,
}

impl Cluster {
    /// Connects to Redis and reads the stream into a history with these limits. Fails when the
    /// URL is bad, Redis does not answer, or it refuses the credentials.
    pub fn open(
        settings: &ClusterSettings,
        limits: HistoryLimits,
    ) -> Result<(Cluster, History), ClusterError> {
        let url = settings.shown_url();
        let client = client(&settings.url)
            .map_err(|e| ClusterError::Url { url: url.clone(), reason: e.to_string() })?;
        let failed = |e: redis::RedisError| ClusterError::Redis { url: url.clone(), reason: why(&e) };
        let mut con = connect(&client).map_err(failed)?;
        let node = format!("{}-{}-{}", hostname(), std::process::id(), now_ms());
        let read_key = settings.read_key(&node);
        let backfilled = backfill(&mut con, &settings.stream(), &read_key, limits).map_err(|e| {
            // A start that failed holds nobody's trim back.
            let _ = redis::cmd("DEL").arg(&read_key).query::<()>(&mut con);
            failed(e)
        })?;
        let Backfilled { history, newest, bytes } = backfilled;
        let shared = Arc::new(ClusterShared::default());
        *shared.tail.lock() = TailPosition { read: newest, memory_cut: bytes.cut() };
        shared.outbox_connected.store(true, Ordering::Relaxed);
        shared.tail_connected.store(true, Ordering::Relaxed);
        let (link, outbox, receipts) =
            ClusterLink::new(Arc::clone(&shared), (settings.buffer_events, settings.buffer_bytes));
        let cluster = Cluster {
            settings: settings.clone(),
            client,
            node,
            shared,
            newest,
            bytes,
            outbox,
            receipts,
            link: Some(link),
        };
        Ok((cluster, history))
    }

    /// The sequencer's end (once).
    pub fn link(&mut self) -> Option<ClusterLink> {
        self.link.take()
    }

    /// This node's name among the cluster's.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The prefix of its keys.
    pub fn key(&self) -> &str {
        &self.settings.key
    }

    /// Its Redis, without the password.
    pub fn url(&self) -> String {
        self.settings.shown_url()
    }

    /// The figures status reads.
    pub fn shared(&self) -> Arc<ClusterShared> {
        Arc::clone(&self.shared)
    }

    /// The admin thread's end of the questions every node answers (presence, orders).
    pub fn asker(&self) -> ClusterAsker {
        ClusterAsker::new(self.client.clone(), &self.settings, &self.node)
    }

    /// The three threads' bodies: the outbox, which trims the stream to what `state`'s history
    /// may keep and wakes `control` with the receipts publishers asked for; the tail, which
    /// delivers what it reads to `shards`; and the listener that answers presence questions
    /// and carries out orders on them.
    pub fn threads(
        self,
        shards: Vec<ShardHandle>,
        state: Arc<SharedState>,
        control: Arc<Waker>,
        presence_events: bool,
    ) -> (Outbox, Tail, Orders) {
        let orders = Orders::new(
            self.client.clone(),
            &self.settings,
            &self.node,
            Fanout::new(shards.clone()),
            (Arc::clone(&state), Arc::clone(&self.shared)),
        );
        let stream = self.settings.stream();
        let broadcast = Broadcast::new(shards, Arc::clone(&state));
        let outbox = Outbox::new(
            self.client.clone(),
            &self.settings,
            self.node,
            self.newest,
            (self.outbox, ReceiptSender { receipts: self.receipts, waker: control }),
            Arc::clone(&self.shared),
            state,
        );
        let mut tail = Tail::new(self.client, stream, self.newest, self.bytes, broadcast, self.shared);
        if presence_events {
            tail = tail.with_presence();
        }
        (outbox, tail, orders)
    }
}

/// What went wrong with Redis, in an operator's words: a timeout is a Redis that does not
/// answer (frozen, or the network), which the client's own words hide.
fn why(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        format!("no reply within {} s", REPLY_TIMEOUT.as_secs())
    } else {
        e.to_string()
    }
}

/// A stream reply not understood, as the client's error: the connection is not to be trusted.
fn unreadable(e: entry::EntryError) -> redis::RedisError {
    (redis::ErrorKind::UnexpectedReturnType, "stream reply", e.to_string()).into()
}

/// A client for `url` whose connections send at once: the client's default leaves Nagle's
/// algorithm on, which may hold a command back until Redis acknowledges the one before. (The
/// bench's `stream-hop` connects the same way.)
pub fn client(url: &str) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info()?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    redis::Client::open(info.set_tcp_settings(tcp))
}

/// A connection with the timeouts every command of ours runs under.
fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(REPLY_TIMEOUT))?;
    con.set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(con)
}

/// What a node read of the stream at start.
struct Backfilled {
    history: History,
    /// The newest entry.
    newest: StreamId,
    /// The entries' bytes.
    bytes: trim::StreamBytes,
}

/// Reads the whole stream into a history. The history's first id is the oldest entry's: a
/// resume from before it is told of a gap. With no entry, it is now by Redis' clock: nothing
/// older can be replayed, and every later entry is newer. Meanwhile `read_key` says this node
/// is at the stream's start, so that no trim passes what it has still to read.
fn backfill(
    con: &mut redis::Connection,
    stream: &str,
    read_key: &str,
    limits: HistoryLimits,
) -> redis::RedisResult<Backfilled> {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query(con)?;
    let redis_now = seconds * 1000 + micros / 1000;
    let now = Instant::now();
    // An origin as old as the oldest event kept, so that each one keeps its true age.
    let origin = now.checked_sub(limits.max_age).unwrap_or(now);
    let mut history: Option<History> = None;
    let mut newest = StreamId::ZERO;
    let mut bytes = trim::StreamBytes::new(limits.max_bytes as u64);
    let xrange = |from: &str| redis::cmd("XRANGE").arg(stream).arg(from).arg("+").clone();
    pages(con, PAGE, xrange, "-", |con, page| {
        // Refreshed a page at a time, a key that outlives a failed start only briefly.
        let place = StreamId::ZERO.to_string();
        redis::cmd("SET").arg(read_key).arg(place).arg("EX").arg(NODE_TTL).query::<()>(con)?;
        for raw in page {
            let size = raw.size();
            let entry = match entry::decode(raw) {
                Ok(entry) => entry,
                Err(e) => {
                    warn!("Cluster: {e}; skipped");
                    continue;
                }
            };
            bytes.read(entry.id, size);
            let Ok(id) = entry.id.event_id() else { continue };
            let history = history.get_or_insert_with(|| History::new(limits, id, origin));
            let age = Duration::from_millis(redis_now.saturating_sub(entry.id.ms));
            let frame = crate::broadcast::frame(id, &entry.publish);
            history.append(id, &entry.publish.audience, &frame, now.checked_sub(age).unwrap_or(origin));
            newest = entry.id;
        }
        Ok(true)
    })?;
    let history = history.unwrap_or_else(|| {
        History::new(limits, StreamId { ms: redis_now, seq: 0 }.event_id().unwrap_or(0), origin)
    });
    Ok(Backfilled { history: history.with_lag_window(LAG_WINDOW), newest, bytes })
}

/// Reads a range `count` entries at a time: `query(from)` is the command (`XRANGE` or
/// `XREVRANGE`) for the entries from `from` on, and `each` takes every page until it says to
/// stop or a page is short.
fn pages<C: redis::ConnectionLike>(
    con: &mut C,
    count: usize,
    query: impl Fn(&str) -> redis::Cmd,
    first: &str,
    mut each: impl FnMut(&mut C, &[entry::RawEntry<'_>]) -> redis::RedisResult<bool>,
) -> redis::RedisResult<()> {
    let mut from = first.to_string();
    loop {
        let mut command = query(&from);
        command.arg("COUNT").arg(count);
        let reply: redis::Value = command.query(con)?;
        let page = entry::range_reply(&reply).map_err(unreadable)?;
        let next = page
            .last()
            .map(|raw| format!("({}", String::from_utf8_lossy(raw.id)))
            .filter(|_| page.len() == count);
        if !each(con, &page)? {
            return Ok(());
        }
        match next {
            Some(next) => from = next,
            None => return Ok(()),
        }
    }
}

/// This host's name, to tell nodes apart in Redis.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// This node's clock in milliseconds since 1970.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Waits growing from 100 ms to 5 s between attempts to reach Redis.
#[derive(Debug)]
struct Backoff {
    wait: Duration,
    next: Instant,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MOST: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff { wait: Self::FIRST, next: Instant::now() }
    }

    /// After a failure: the next attempt waits longer.
    fn failed(&mut self) {
        self.next = Instant::now() + self.wait;
        self.wait = (self.wait * 2).min(Self::MOST);
    }

    fn succeeded(&mut self) {
        self.wait = Self::FIRST;
    }

    /// How long until the next attempt is due.
    fn left(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> ClusterSettings {
        ClusterSettings { url: url.into(), key: "hasses".into(), buffer_events: 1, buffer_bytes: 1 }
    }

    #[test]
    fn a_password_never_reaches_a_log_line() {
        assert_eq!(settings("redis://u:secret@h:6379/2").shown_url(), "redis://u:***@h:6379/2");
        assert_eq!(settings("rediss://:secret@h").shown_url(), "rediss://:***@h");
        assert_eq!(settings("redis://h:6379").shown_url(), "redis://h:6379");
        assert_eq!(settings("redis://user@h:6379").shown_url(), "redis://user@h:6379");
    }

    #[test]
    fn backoff_grows_to_its_ceiling_and_resets() {
        let mut backoff = Backoff::new();
        for _ in 0..10 {
            backoff.failed();
        }
        assert_eq!(backoff.wait, Backoff::MOST);
        backoff.succeeded();
        assert_eq!(backoff.wait, Backoff::FIRST);
    }
}
