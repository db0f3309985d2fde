//! The sequencer: every publish, whatever its source, passes here once.
//!
//! Owns the order of events and their ids (numeric and strictly increasing, also across
//! restarts), framing each event once, and handing it to every shard. Questions to the shards
//! (the admin path's) go out through it as well, in order behind the events sent before them, so
//! that their answers count those events; it never waits for an answer. Sources (the TCP port,
//! the FIFO) only parse; they decide nothing about order.
//!
//! In cluster mode ([`crate::cluster`]) Redis decides order and ids: a publish is handed to the
//! outbox and is *queued* ([`Accepted::Queued`]); it is delivered, as every node's publishes
//! are, when the stream's tail reads it back, by the tail's own [`Broadcast`]: one thread
//! hand-off fewer per event than coming back through this thread. Alone, a publish is
//! *sequenced* here at once ([`Accepted::Sequenced`]), at no cost beyond one branch.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::broadcast::Broadcast;
use crate::cluster::{BufferFull, ClusterLink};
use crate::event::{Publish, Receipt, ReceiptTo};
use crate::pipeline::{ShardAnswer, ShardCommand, ShardHandle, ShardQuery, SharedState};
use crate::sse::EventIds;

/// What became of a publish the sequencer took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Delivered with this id.
    Sequenced(u64),
    /// Handed to the cluster: delivered, with an id Redis gives it, when the stream's tail
    /// reads it back; its receipt, if one was asked for, comes later from the outbox.
    Queued,
}

/// Numbers, frames and fans out every event.
#[derive(Debug)]
pub struct Sequencer {
    ids: EventIds,
    /// Frames, keeps and fans out; questions to the shards go out through its fan-out too.
    broadcast: Broadcast,
    /// Events taken since the start.
    processed: u64,
    /// In cluster mode: where publishes go.
    cluster: Option<ClusterLink>,
}

impl Sequencer {
    /// A sequencer for these shards, handing out `ids`.
    pub fn new(shards: Vec<ShardHandle>, state: Arc<SharedState>, ids: EventIds) -> Self {
        Sequencer { ids, broadcast: Broadcast::new(shards, state), processed: 0, cluster: None }
    }

    /// Hands every event to the history writer too (`--history-file`).
    pub fn with_history_file(mut self, disk: crossbeam_channel::Sender<crate::history_file::ToDisk>) -> Self {
        self.broadcast.keep_on_disk(disk);
        self
    }

    /// The same in cluster mode: publishes go to the stream, and the tail delivers them.
    pub fn with_cluster(self, link: ClusterLink) -> Self {
        Sequencer { cluster: Some(link), ..self }
    }

    /// Takes a publish: numbers, frames and delivers it at once, or in cluster mode hands it
    /// to the stream, with where its receipt goes if its publisher asked for one. Refused only
    /// in cluster mode, when Redis has been unreachable for longer than `--cluster-buffer` holds.
    pub fn publish(&mut self, publish: Publish, receipt: Option<ReceiptTo>) -> Result<Accepted, BufferFull> {
        if let Some(cluster) = &self.cluster {
            cluster.send(publish, receipt)?;
            self.processed += 1;
            return Ok(Accepted::Queued);
        }
        self.processed += 1;
        let id = self.ids.next_id();
        self.broadcast.deliver(id, publish);
        Ok(Accepted::Sequenced(id))
    }

    /// Asks every shard, behind every event sequenced so far; each shard's answer comes on its
    /// receiver. (In cluster mode the tail's deliveries go on meanwhile: an answer counts the
    /// events delivered up to the moment the shard reads the question.)
    pub fn ask(&mut self, query: &ShardQuery) -> Vec<Receiver<ShardAnswer>> {
        self.broadcast.fanout.ask(query)
    }

    /// The receipts the cluster's outbox decided since the last call (none on a single node).
    pub fn receipts(&self) -> impl Iterator<Item = (ReceiptTo, Receipt)> + '_ {
        self.cluster.iter().flat_map(|cluster| cluster.receipts.try_iter())
    }

    /// Events sequenced since the start.
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// How many shards it feeds.
    pub fn shard_count(&self) -> usize {
        self.broadcast.fanout.shard_count()
    }

    /// Wakes the shards that were sent something since the last wake: once per round of input,
    /// so that a burst reaches a shard in one wake-up.
    pub fn wake(&mut self) {
        self.broadcast.wake();
    }

    /// Tells every shard (and the cluster's threads) to close its connections and end.
    pub fn shut_down(&mut self) {
        if let Some(cluster) = &self.cluster {
            cluster.stop();
        }
        self.broadcast.fanout.broadcast(|| ShardCommand::Shutdown);
    }
}
