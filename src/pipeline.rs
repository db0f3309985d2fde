//! The types the control thread and the shards speak, in a module of neither.
//!
//! Owns the messages that cross from the control side to a shard ([`ShardCommand`], with the
//! [`Delivery`] the sequencer built once for every shard), how a shard is reached
//! ([`ShardHandle`]), and the few figures both sides read and write across threads
//! ([`SharedState`]). It holds no logic: who sends what, and when, is the control side's
//! business; what a shard does with it is the shard's.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use crossbeam_channel::Sender;
use mio::Waker;
use parking_lot::RwLock;

use crate::history::History;
use crate::sse::Frame;
use crate::stats::{ClientRow, ShardFigures};

/// Which subscriptions a publish matches. A client subscribed to `*` matches every target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// `*`: every handshaked client.
    All,
    /// `name`: clients subscribed to exactly `name`.
    Token(String),
    /// `pre*`: clients subscribed to any token that starts with `pre` (never empty; `*` is `All`).
    Prefix(String),
}

/// `*`, `name` or `pre*`, as a publisher writes it.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("*"),
            Target::Token(name) => write_escaped(f, name),
            Target::Prefix(prefix) => {
                write_escaped(f, prefix)?;
                f.write_str("*")
            }
        }
    }
}

/// Who gets an event: every client one of `targets` matches, but the one whose id is `except`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Audience {
    /// What it was published to: never empty; a client matching several gets one copy.
    pub targets: Vec<Target>,
    /// The `id` of a client that must not get it, whatever it subscribed to.
    pub except: Option<String>,
}

impl Audience {
    /// True when it goes to every client (one of its targets is `*`).
    pub fn is_everyone(&self) -> bool {
        self.targets.contains(&Target::All)
    }

    /// Whether a client with these tokens (`*` among them for every event) and this id gets it:
    /// the rule live delivery follows, for replays.
    pub fn reaches<'t>(&self, mut tokens: impl Iterator<Item = &'t str> + Clone, id: &str) -> bool {
        if self.except.as_deref().is_some_and(|except| !id.is_empty() && except == id) {
            return false;
        }
        self.is_everyone()
            || tokens.clone().any(|token| token == "*")
            || self.targets.iter().any(|target| match target {
                Target::All => true,
                Target::Token(name) => tokens.clone().any(|token| token == name),
                Target::Prefix(prefix) => tokens.any(|token| token.starts_with(prefix.as_str())),
            })
    }
}

/// `room1`, `room1,user*`, `room1-abc`: as a publisher writes it (a list for several targets).
impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, target) in self.targets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{target}")?;
        }
        if let Some(except) = &self.except {
            f.write_str("-")?;
            write_escaped(f, except)?;
        }
        Ok(())
    }
}

/// Writes `text` with its control characters escaped: a publisher's token must not be able to
/// break or forge a log line.
pub(crate) fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for c in text.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            fmt::Write::write_char(f, c)?;
        }
    }
    Ok(())
}

/// An event to deliver, numbered and framed once by the sequencer.
#[derive(Debug)]
pub struct Delivery {
    /// Its event id: increasing, so it also orders publishes.
    pub id: u64,
    /// Who gets it.
    pub audience: Audience,
    /// The encoded event, shared by every recipient.
    pub frame: Frame,
}

/// A connection of the control thread's (a TCP publisher or an API client), as other threads
/// name it when they answer it: its slab key, and a serial that tells it from a later
/// connection given the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asker {
    /// The connection's key in the control thread's slab.
    pub key: usize,
    /// Unique for the control thread's run.
    pub serial: u64,
}

/// What became of a publish, for the publisher that asked: the HTTP API always does, a control
/// connection when it turned acknowledgments on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// Delivered with this id (in a cluster: Redis holds it under this id).
    Sequenced(u64),
    /// In a cluster while Redis is unreachable: buffered, delivered when Redis is back, its id
    /// not known yet.
    Queued,
    /// In a cluster: Redis gave the entry an id that no event can have (a sequence number of a
    /// million or more within one millisecond), so no node delivers it.
    Undeliverable,
}

impl Receipt {
    /// The answer a control connection gets: `OK <id>`, `OK queued` or `ERR <reason>`, with
    /// its newline.
    pub fn line(self) -> String {
        match self {
            Receipt::Sequenced(id) => format!("OK {id}\n"),
            Receipt::Queued => "OK queued\n".to_string(),
            Receipt::Undeliverable => "ERR Redis gave the entry an id no event can have\n".to_string(),
        }
    }
}

/// Where a [`Receipt`] that comes later (from the cluster's outbox) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptTo {
    /// A control connection, as the answer with this place among its answers.
    Line(Asker, u64),
    /// An API connection, as the answer to its request in progress.
    Http(Asker),
}

/// How a thread that learns a publish's fate later hands the receipt back to the control
/// thread, which owns the connection that asked.
#[derive(Debug, Clone)]
pub struct ReceiptSender {
    /// Receipts, in the order they were decided.
    pub receipts: Sender<(ReceiptTo, Receipt)>,
    /// Wakes the control thread to write them.
    pub waker: Arc<Waker>,
}

impl ReceiptSender {
    /// Hands `receipt` to the connection `to`; a control thread that is gone has nobody to tell.
    pub fn send(&self, to: ReceiptTo, receipt: Receipt) {
        if self.receipts.send((to, receipt)).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// What the control side asks of a shard, in order.
#[derive(Debug)]
pub enum ShardCommand {
    /// Queue this event for every matching client.
    Deliver(Arc<Delivery>),
    /// Answer this, on that channel (read by the admin path, never by the sequencer).
    Ask(ShardQuery, Sender<ShardAnswer>),
    /// Close every connection and end the thread.
    Shutdown,
}

/// What the admin path asks every shard. A shard answers when it reaches the question in its
/// queue, so the answer counts every event sent before it.
#[derive(Debug, Clone)]
pub enum ShardQuery {
    /// This shard's counters.
    Figures,
    /// A row per connection.
    ClientList,
    /// How many connections listen to exactly this token.
    CountSubscribed(Arc<str>),
}

/// A shard's answer to a [`ShardQuery`].
#[derive(Debug)]
pub enum ShardAnswer {
    /// To [`ShardQuery::Figures`].
    Figures(ShardFigures),
    /// To [`ShardQuery::ClientList`].
    ClientList(Vec<ClientRow>),
    /// To [`ShardQuery::CountSubscribed`].
    Count(u64),
}

/// How the control side reaches one shard.
#[derive(Debug, Clone)]
pub struct ShardHandle {
    /// Commands, in order.
    pub commands: Sender<ShardCommand>,
    /// Wakes the shard's `epoll_wait` after commands were sent.
    pub waker: Arc<Waker>,
}

/// What every thread reads and writes across threads: a few atomics, none of them touched per
/// delivery, and the history: written by the sequencer, read on resume.
#[derive(Debug)]
pub struct SharedState {
    /// Whether a handshaked connection may send a new `GET` to re-handshake (`reinit on|off`).
    pub reinit: AtomicBool,
    /// Open connections across all shards, to know the peak (touched on accept and close only).
    pub open: AtomicU64,
    /// The most connections that were ever open at once.
    pub peak: AtomicU64,
    /// The id of the last event the sequencer accepted, set before it is fanned out. A
    /// handshake reads it, so that a client never gets an event published before it subscribed,
    /// whichever shard it is on and however far behind that shard's queue is.
    pub published: AtomicU64,
    /// The events kept for resume.
    pub history: RwLock<History>,
}

impl SharedState {
    /// The state at start: reinit allowed or not, nothing open, nothing published.
    pub fn new(reinit: bool, history: History) -> Self {
        SharedState {
            reinit: AtomicBool::new(reinit),
            open: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            published: AtomicU64::new(0),
            history: RwLock::new(history),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audience(targets: &[Target], except: Option<&str>) -> Audience {
        Audience { targets: targets.to_vec(), except: except.map(str::to_string) }
    }

    #[test]
    fn an_audience_reaches_whom_live_delivery_reaches() {
        let room1 = Target::Token("room1".into());
        let users = Target::Prefix("user".into());
        let reaches = |a: &Audience, tokens: &[&str], id: &str| a.reaches(tokens.iter().copied(), id);
        let both = audience(&[room1.clone(), users], None);
        assert!(reaches(&both, &["room1"], ""));
        assert!(reaches(&both, &["x", "user42"], ""));
        assert!(!reaches(&both, &["room2", "use"], ""));
        assert!(reaches(&both, &["*"], ""), "a `*` subscriber gets everything");
        assert!(reaches(&audience(&[Target::All], None), &["anything"], ""));
        let but_me = audience(&[room1], Some("me"));
        assert!(!reaches(&but_me, &["room1"], "me"));
        assert!(!reaches(&but_me, &["*"], "me"));
        assert!(reaches(&but_me, &["room1"], "you"));
        assert!(reaches(&but_me, &["room1"], ""), "a client without an id is never the sender");
    }
}
