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
    pub fn with_history_file(
        mut self,
        disk: crossbeam_channel::Sender<Arc<crate::pipeline::Sequenced>>,
    ) -> Self {
        self.broadcast.keep_on_disk(disk);
        self
    }

    /// Forwards every event to the process this one replaced (an upgrade), while it drains.
    pub fn with_forward(mut self, forward: crate::forward::Forward) -> Self {
        self.broadcast.forward_to(forward);
        self
    }

    /// Delivers an event a successor sequenced and forwarded, as it is: this process drains.
    pub fn deliver_forwarded(&mut self, event: crate::history_file::StoredEvent) {
        self.broadcast.deliver_framed(event.id, event.audience, event.frame);
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

    /// Whether it is a node of a cluster.
    pub fn in_cluster(&self) -> bool {
        self.cluster.is_some()
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
        self.stop_cluster();
        self.drain_shards();
    }

    /// Tells every shard to close its connections and end (they drain, `--drain-secs`).
    pub fn drain_shards(&mut self) {
        self.broadcast.fanout.broadcast(|| ShardCommand::Shutdown);
    }

    /// Tells the cluster's threads to end.
    pub fn stop_cluster(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::broadcast::tests::{everyone_listens, publish, resume, state, TestShards};
    use crate::cluster::ClusterShared;
    use crate::event::{Asker, PublisherKey};

    fn sequencer(shards: &TestShards, first_id: u64) -> (Sequencer, Arc<SharedState>) {
        let state = state(1);
        everyone_listens(&state, shards.handles.len());
        let ids = EventIds::starting_at(first_id);
        (Sequencer::new(shards.handles.clone(), Arc::clone(&state), ids), state)
    }

    #[test]
    fn ids_strictly_increase_and_every_shard_gets_each_publish_once() {
        let mut shards = TestShards::new(3, 16);
        let (mut sequencer, state) = sequencer(&shards, 1000);
        assert_eq!(sequencer.shard_count(), 3);
        let accepted: Vec<Accepted> =
            ["a", "b", "c"].iter().map(|data| sequencer.publish(publish("t", data), None).unwrap()).collect();
        assert_eq!(accepted, [1000, 1001, 1002].map(Accepted::Sequenced));
        assert_eq!(sequencer.processed(), 3);
        assert_eq!(state.published.load(Ordering::Acquire), 1002);
        assert_eq!(resume(&state, "t", 999).1, ["1000", "1001", "1002"], "each kept for resume");
        assert_eq!(shards.woken_all(), [false; 3], "woken once the round of input is over");
        sequencer.wake();
        assert_eq!(shards.woken_all(), [true; 3]);
        for shard in 0..3 {
            assert_eq!(shards.sent(shard), ["deliver 1000", "deliver 1001", "deliver 1002"]);
        }
    }

    #[test]
    fn a_question_goes_out_behind_the_events_sent_before_it() {
        let mut shards = TestShards::new(2, 16);
        let (mut sequencer, _state) = sequencer(&shards, 1);
        sequencer.publish(publish("t", "before"), None).unwrap();
        let answers = sequencer.ask(&ShardQuery::CountSubscribed(Arc::from("t")));
        sequencer.publish(publish("t", "after"), None).unwrap();
        assert_eq!(answers.len(), 2, "one answer per shard");
        assert_eq!(shards.woken_all(), [true; 2], "a question wakes the shards at once");
        for shard in 0..2 {
            assert_eq!(shards.sent(shard), ["deliver 1", "ask", "deliver 2"]);
        }
        // It never waits for the answers: nobody has answered, and it went on.
        assert!(answers.iter().all(|answer| answer.is_empty()));
    }

    #[test]
    fn shut_down_reaches_every_shard_behind_what_went_before() {
        let mut shards = TestShards::new(2, 16);
        let (mut sequencer, _state) = sequencer(&shards, 1);
        sequencer.publish(publish("t", "last"), None).unwrap();
        sequencer.shut_down();
        assert_eq!(shards.woken_all(), [true; 2]);
        for shard in 0..2 {
            assert_eq!(shards.sent(shard), ["deliver 1", "shutdown"]);
        }
    }

    #[test]
    fn in_cluster_mode_a_publish_goes_to_the_link_not_to_the_shards() {
        let mut shards = TestShards::new(2, 16);
        let (sequencer, state) = sequencer(&shards, 1);
        let (link, outbox, receipts) = ClusterLink::new(Arc::new(ClusterShared::default()), (2, 1 << 20));
        let mut sequencer = sequencer.with_cluster(link);
        let asker = ReceiptTo::Line(Asker { key: PublisherKey(3), serial: 9 }, 1);
        assert_eq!(sequencer.publish(publish("t", "a"), Some(asker)), Ok(Accepted::Queued));
        assert_eq!(sequencer.publish(publish("t", "b"), None), Ok(Accepted::Queued));
        assert_eq!(
            outbox.try_iter().collect::<Vec<_>>(),
            [(publish("t", "a"), Some(asker)), (publish("t", "b"), None)]
        );
        sequencer.wake();
        assert_eq!(shards.woken_all(), [false; 2], "no shard hears of it before the stream has it");
        assert!(shards.sent(0).is_empty() && shards.sent(1).is_empty());
        assert_eq!(state.published.load(Ordering::Acquire), 0, "nor any id");
        assert_eq!(sequencer.processed(), 2);
        // Over --cluster-buffer, with Redis unreachable (as the outbox has not said otherwise).
        let refused = sequencer.publish(publish("t", "c"), None);
        assert_eq!(refused, Err(BufferFull { events: 2, bytes: 2 }));
        assert_eq!(sequencer.processed(), 2, "a refused publish is not counted");
        // The outbox's receipts come back through the sequencer, to the control thread.
        receipts.send((asker, Receipt::Sequenced(77))).unwrap();
        assert_eq!(sequencer.receipts().collect::<Vec<_>>(), [(asker, Receipt::Sequenced(77))]);
    }

    #[test]
    fn alone_there_are_no_receipts_to_wait_for() {
        let shards = TestShards::new(1, 16);
        let (sequencer, _state) = sequencer(&shards, 1);
        assert_eq!(sequencer.receipts().count(), 0);
    }
}
