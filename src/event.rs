//! An event and who gets it, where a resuming client starts, and what its publisher is told:
//! the values every thread speaks, in a module below all of them.
//!
//! Owns [`Publish`] (a message and its [`Audience`] of [`Target`]s), [`ResumeFrom`], and the
//! receipt of a publish ([`Receipt`], sent back to the connection that asked, [`Asker`]). Plain
//! data with the few rules that belong to it (whom an audience reaches, how it is written in a
//! log line); no I/O, no parsing: the grammars that build these live with their sources.

use std::fmt;
use std::sync::Arc;

use crossbeam_channel::Sender;
use ecow::EcoString;
use mio::Waker;
use smallvec::SmallVec;

/// A token or a prefix as a publisher names it: up to 15 bytes (a user's or a room's token:
/// `-` separates a client's tokens, so they are short words) kept in its own place, not behind
/// a pointer, so that the maps keyed by it (the history's rings, the shards' indexes, the view
/// of which shard holds what) compare it without a cache miss, and a publish to it allocates
/// nothing for it. 16 bytes: on a node where each client has a token of its own, a shard's index
/// and the view each hold one per client. A longer name is shared by its copies.
pub type Name = EcoString;

/// An audience's targets: one, the usual, kept inline.
pub type Targets = SmallVec<[Target; 1]>;

/// A message and who gets it: `TOKEN[-UNIQ]=MESSAGE`.
///
/// ```text
/// room1=hello        Token("room1"), to clients subscribed to room1
/// *=hello            All
/// room*=hello        Prefix("room"), to clients subscribed to room1, room2, …
/// room1-abc=hello    Token("room1"), except the client whose id is abc (also *-abc, room*-abc)
/// ```
///
/// ASCII whitespace around `TOKEN[-UNIQ]` is ignored; the message is everything after the first
/// `=`, byte for byte (it may hold `=`, be empty, or be any bytes). The JSON form
/// ([`JsonPublish`](crate::publish::JsonPublish)) gives the same, and may add an event type and a reconnection time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Who gets it: the subscribers its targets match, less the client `-UNIQ` names.
    pub audience: Audience,
    /// Everything after the first `=`, as sent: the event's data.
    pub message: Vec<u8>,
    /// The event's type (`event:`), from a JSON command; none for hasses' form.
    pub event: Option<String>,
    /// The reconnection time to set (`retry:`, milliseconds), from a JSON command.
    pub retry: Option<u32>,
}

/// `"room1"`, `"room1" except "abc"`: whom a publish is for, in the words of hasses' log line.
impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, target) in self.audience.targets.iter().enumerate() {
            f.write_str(if i == 0 { "\"" } else { ", \"" })?;
            write!(f, "{target}\"")?;
        }
        if let Some(except) = &self.audience.except {
            f.write_str(" except \"")?;
            write_escaped(f, except)?;
            f.write_str("\"")?;
        }
        Ok(())
    }
}

/// Which subscriptions a publish matches. A client subscribed to `*` matches every target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// `*`: every handshaked client.
    All,
    /// `name`: clients subscribed to exactly `name`.
    Token(Name),
    /// `pre*`: clients subscribed to any token that starts with `pre` (never empty; `*` is `All`).
    Prefix(Name),
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
    pub targets: Targets,
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

/// Where a resuming client asks to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom {
    /// `earliest`: everything still kept.
    Earliest,
    /// Everything after this event id (`Last-Event-ID`).
    After(u64),
}

/// A connection of the control thread's (a TCP publisher, [`PublisherKey`], or an API client,
/// [`ApiKey`]), as other threads name it when they answer it: its key, and a serial that tells
/// it from a later connection given the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asker<K> {
    /// The connection's key among the control thread's connections of its kind.
    pub key: K,
    /// Unique for the control thread's run.
    pub serial: u64,
}

/// A TCP publisher's place among the control thread's publishers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublisherKey(pub usize);

/// An HTTP API client's place among the control thread's API connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKey(pub usize);

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
    Line(Asker<PublisherKey>, u64),
    /// An API connection, as the answer to its request in progress.
    Http(Asker<ApiKey>),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn audience(targets: &[Target], except: Option<&str>) -> Audience {
        Audience { targets: targets.iter().cloned().collect(), except: except.map(str::to_string) }
    }

    #[test]
    fn a_short_name_is_kept_in_its_own_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Name>(), 16);
        let short = Name::from("notifications42");
        let long = Name::from("a-token-of-sixteen");
        assert_eq!((short.as_str(), long.as_str()), ("notifications42", "a-token-of-sixteen"));
        assert!(long < short && long.clone() == long, "ordered as their bytes");
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
