//! The types the control thread and the shards speak, in a module of neither.
//!
//! Owns the messages that cross from the control side to a shard ([`ShardCommand`], with the
//! [`Sequenced`] the sequencer built once for every shard), how a shard is reached
//! ([`ShardHandle`]), and the few figures both sides read and write across threads
//! ([`SharedState`]). It holds no logic: who sends what, and when, is the control side's
//! business; what a shard does with it is the shard's.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crossbeam_channel::Sender;
use mio::Waker;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::event::Audience;
use crate::figures::{ClientRow, DeliveryLatency, ShardFigures};
use crate::gate::{Gate, Order, Who};
use crate::history::History;
use crate::presence::{Change, PresenceRow};
use crate::reach::Reach;
use crate::sse::Frame;

/// An event to deliver, numbered and framed once by the sequencer.
#[derive(Debug)]
pub struct Sequenced {
    /// Its event id: increasing, so it also orders publishes.
    pub id: u64,
    /// Who gets it.
    pub audience: Audience,
    /// The encoded event, shared by every recipient.
    pub frame: Frame,
    /// When it was sequenced (or, in a cluster, read from the stream): where its delivery
    /// latency is measured from.
    pub at: Instant,
}

/// What the control side asks of a shard, in order.
#[derive(Debug)]
pub enum ShardCommand {
    /// Queue this event for every matching client.
    Deliver(Arc<Sequenced>),
    /// Answer this, on that channel (read by the admin path, never by the sequencer).
    Ask(ShardQuery, Sender<ShardAnswer>),
    /// Close every connection and end the thread.
    Shutdown,
}

/// A question about the server, answered off the publish path (by [`crate::admin`]). The
/// questions a cluster answers as one go to every node as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Query {
    /// `status`: the status block; `tcpstatus`: the same as JSON.
    Status,
    /// `clientlist`: a block per client; `tcpclientlist`: a JSON array (ours; hasses has none).
    ClientList,
    /// `numberofclients`: `Number of connected clients: N`; `tcpnumberofclients`:
    /// `{"numberofclients": N}`.
    NumberOfClients,
    /// `subscribedclients:TOKEN`: `Client count subscribed for "TOKEN": N`;
    /// `tcpsubscribedclients:TOKEN`: `{"subscribedclients": N, "subscribedfor": "TOKEN"}`.
    SubscribedClients(String),
    /// `presence:TOKEN` / `tcppresence:TOKEN`, `GET /presence?token=TOKEN`: the clients a
    /// publish to the token reaches (on every node of a cluster); with `count`, their number.
    Presence {
        /// The token asked about.
        token: String,
        /// Just the number.
        count: bool,
    },
    /// `disconnect …`, `revoke …`, `POST /disconnect`, `POST /revoke` (on every node of a
    /// cluster): answered with the number of streams ended.
    Order(Order),
}

impl Query {
    /// What each shard must be asked to answer it; `None` when the shards have nothing to say
    /// (an order that ends no stream).
    pub fn shard_query(&self) -> Option<ShardQuery> {
        Some(match self {
            Query::Status | Query::NumberOfClients => ShardQuery::Figures,
            Query::ClientList => ShardQuery::ClientList,
            Query::SubscribedClients(token) => ShardQuery::CountSubscribed(Arc::from(token.as_str())),
            Query::Presence { token, count: false } => ShardQuery::Presence(Arc::from(token.as_str())),
            Query::Presence { token, count: true } => ShardQuery::CountReached(Arc::from(token.as_str())),
            Query::Order(order) => ShardQuery::End(Arc::new(order.ends()?)),
        })
    }

    /// Whether a cluster answers it as one: every node for its own clients.
    pub fn is_cluster_wide(&self) -> bool {
        matches!(self, Query::Presence { .. } | Query::Order(_))
    }
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
    /// A row per stream a publish to this token reaches.
    Presence(Arc<str>),
    /// How many streams a publish to this token reaches, from the index: no walk over them.
    CountReached(Arc<str>),
    /// End these streams now; answered with how many ended.
    End(Arc<Who>),
}

/// A shard's answer to a [`ShardQuery`].
#[derive(Debug)]
pub enum ShardAnswer {
    /// To [`ShardQuery::Figures`]: its counters, and how long its deliveries took.
    Figures(Box<ShardFigures>, Box<DeliveryLatency>),
    /// To [`ShardQuery::ClientList`].
    ClientList(Vec<ClientRow>),
    /// To [`ShardQuery::CountSubscribed`], [`ShardQuery::CountReached`], [`ShardQuery::End`].
    Count(u64),
    /// To [`ShardQuery::Presence`].
    Presence(Vec<PresenceRow>),
}

/// How the control side reaches one shard.
#[derive(Debug, Clone)]
pub struct ShardHandle {
    /// Commands, in order.
    pub commands: Sender<ShardCommand>,
    /// Wakes the shard's `epoll_wait` after commands were sent.
    pub waker: Arc<Waker>,
}

/// How shards tell the control thread of streams that start and end (`--presence-events`).
#[derive(Debug, Clone)]
pub struct PresenceLink {
    /// The changes, in order per shard.
    pub changes: Sender<Change>,
    /// Wakes the control thread; set once it is built (after the shards).
    pub control: Arc<OnceLock<Arc<Waker>>>,
}

impl PresenceLink {
    /// Hands a change to the control thread and wakes it; false when its queue is full (the
    /// control thread is far behind) or gone, and the change is lost.
    pub fn tell(&self, change: Change) -> bool {
        if self.changes.try_send(change).is_err() {
            return false;
        }
        if let Some(waker) = self.control.get() {
            let _ = waker.wake();
        }
        true
    }
}

/// What every thread reads and writes across threads: a few atomics, none of them touched per
/// delivery; the history: written by the sequencer, read on resume; and which shards hold
/// which tokens.
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
    /// Who is kept out: bans and revoked tokens (read at each handshake, written by orders).
    pub gate: RwLock<Gate>,
    /// Which shards hold a subscriber of which token: written by the shards on subscribe and
    /// close, read by a fan-out per targeted event.
    pub reach: Reach,
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
            gate: RwLock::new(Gate::default()),
            reach: Reach::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_query_asks_the_shards_for_what_its_answer_is_made_of() {
        assert!(matches!(Query::Status.shard_query(), Some(ShardQuery::Figures)));
        assert!(matches!(Query::NumberOfClients.shard_query(), Some(ShardQuery::Figures)));
        assert!(matches!(Query::ClientList.shard_query(), Some(ShardQuery::ClientList)));
        let subscribed = Query::SubscribedClients("room1".into()).shard_query();
        assert!(matches!(subscribed, Some(ShardQuery::CountSubscribed(token)) if &*token == "room1"));
        let rows = Query::Presence { token: "room1".into(), count: false }.shard_query();
        assert!(matches!(rows, Some(ShardQuery::Presence(token)) if &*token == "room1"));
        let count = Query::Presence { token: "room1".into(), count: true }.shard_query();
        assert!(matches!(count, Some(ShardQuery::CountReached(token)) if &*token == "room1"));
        let kick = Query::Order(Order::Disconnect { who: Who::Id("u1".into()), ban_until: None });
        assert!(matches!(kick.shard_query(), Some(ShardQuery::End(who)) if *who == Who::Id("u1".into())));
        let revoke_jti =
            Query::Order(Order::Revoke { what: crate::gate::Revoked::Jti("j".into()), until: 1 });
        assert!(revoke_jti.shard_query().is_none(), "no stream is known by its jti");
        assert!(kick.is_cluster_wide() && !Query::Status.is_cluster_wide());
    }
}
