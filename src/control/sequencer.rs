//! The sequencer: every publish, whatever its source, passes here once.
//!
//! Owns the order of events and their ids (numeric and strictly increasing, also across
//! restarts), framing each event once, and handing it to every shard. Questions to the shards
//! (the admin path's) go out through it as well, in order behind the events sent before them, so
//! that their answers count those events; it never waits for an answer. Sources (the TCP port,
//! the FIFO) only parse; they decide nothing about order.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use tracing::debug;

use super::command::Publish;
use super::fanout::Fanout;
use crate::pipeline::{Delivery, ShardAnswer, ShardCommand, ShardHandle, ShardQuery, SharedState};
use crate::sse::{encode, EventFields, EventIds};

/// Numbers, frames and fans out every event.
#[derive(Debug)]
pub struct Sequencer {
    ids: EventIds,
    shards: Fanout,
    state: Arc<SharedState>,
    /// Events sequenced since the start.
    processed: u64,
}

impl Sequencer {
    /// A sequencer for these shards, handing out `ids`.
    pub fn new(shards: Vec<ShardHandle>, state: Arc<SharedState>, ids: EventIds) -> Self {
        Sequencer { ids, shards: Fanout::new(shards), state, processed: 0 }
    }

    /// Numbers and frames the event once, and hands it to every shard; returns its id.
    pub fn publish(&mut self, publish: Publish) -> u64 {
        self.processed += 1;
        let id = self.ids.next_id();
        debug!("Message {id} to subscribers of {publish}: {} bytes", publish.message.len());
        let frame = encode(&EventFields {
            id: Some(id),
            event: publish.event.as_deref(),
            retry: publish.retry,
            data: Some(&publish.message),
        });
        // Kept before any shard can see it: a resume that reads the history then finds every
        // event its shard may already have delivered to others (see `shard::delivery`).
        self.state.history.write().append(id, &publish.audience, &frame, Instant::now());
        // Likewise: a fresh handshake from now on is later than this event.
        self.state.published.store(id, Ordering::Release);
        self.shards.publish(Delivery { id, audience: publish.audience, frame });
        id
    }

    /// Asks every shard, behind every event sequenced so far; each shard's answer comes on its
    /// receiver.
    pub fn ask(&mut self, query: &ShardQuery) -> Vec<Receiver<ShardAnswer>> {
        self.shards.ask(query)
    }

    /// Events sequenced since the start.
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// How many shards it feeds.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Wakes the shards that were sent something since the last wake: once per round of input,
    /// so that a burst reaches a shard in one wake-up.
    pub fn wake(&mut self) {
        self.shards.wake();
    }

    /// Tells every shard to close its connections and end.
    pub fn shut_down(&mut self) {
        self.shards.broadcast(|| ShardCommand::Shutdown);
    }
}
