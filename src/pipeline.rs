//! The types the control thread and the shards speak, in a module of neither.
//!
//! Owns the messages that cross from the control side to a shard ([`ShardCommand`], with the
//! [`Sequenced`] the sequencer built once for every shard), how a shard is reached
//! ([`ShardHandle`]), and the few figures both sides read and write across threads
//! ([`SharedState`]). It holds no logic: who sends what, and when, is the control side's
//! business; what a shard does with it is the shard's.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use crossbeam_channel::Sender;
use mio::Waker;
use parking_lot::RwLock;

use crate::event::Audience;
use crate::figures::{ClientRow, ShardFigures};
use crate::history::History;
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

/// A question about the server, answered off the publish path (by [`crate::admin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
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
            reach: Reach::default(),
        }
    }
}
