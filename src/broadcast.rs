//! From a numbered event to every shard: framing it once, keeping it for resume, and the
//! fan-out over the shards' channels. The sequencer's last step alone; in cluster mode the
//! tail's as well (each has a [`Broadcast`] of its own over the same shards' channels), since
//! the stream decides ids there. Below both, so that neither imports the other.
//!
//! Owns the order of commands to each shard and when shards are woken: a batch of commands is
//! sent, then each shard that got one is woken once. A shard whose queue is full (it is holding
//! for a slow client) makes the sender wait: that is the backpressure that reaches publishers.
//! It does not parse or decide anything, and it never waits for an answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use tracing::{debug, warn};

use crate::event::Publish;
use crate::history_file::{wall_ms, ToDisk};
use crate::pipeline::{Sequenced, ShardAnswer, ShardCommand, ShardHandle, ShardQuery, SharedState};
use crate::sse::{encode, EventFields, Frame};

/// Frames an event whose id is decided, keeps it, and hands it to every shard: the
/// sequencer's last step alone; in cluster mode the tail's, since the stream decides ids.
#[derive(Debug)]
pub struct Broadcast {
    /// Public to the sequencer, which asks the shards through it too.
    pub(crate) fanout: Fanout,
    state: Arc<SharedState>,
    /// The history writer's channel, with `--history-file`.
    disk: Option<Sender<ToDisk>>,
}

impl Broadcast {
    /// Delivers to these shards, keeping events in `state`'s history.
    pub fn new(shards: Vec<ShardHandle>, state: Arc<SharedState>) -> Self {
        Broadcast { fanout: Fanout::new(shards), state, disk: None }
    }

    /// Hands every kept event to the history writer too (`--history-file`). Its channel is
    /// bounded: a disk that far behind holds the sender, as a full shard does.
    pub fn keep_on_disk(&mut self, disk: Sender<ToDisk>) {
        self.disk = Some(disk);
    }

    /// Frames the event once, keeps it, and hands it to every shard; they are woken by
    /// [`Broadcast::wake`].
    pub fn deliver(&mut self, id: u64, publish: Publish) {
        debug!("Message {id} to subscribers of {publish}: {} bytes", publish.message.len());
        let frame = frame(id, &publish);
        // Kept before any shard can see it: a resume that reads the history then finds every
        // event its shard may already have delivered to others (see `shard::delivery`).
        self.state.history.write().append(id, &publish.audience, &frame, Instant::now());
        // Likewise: a fresh handshake from now on is later than this event.
        self.state.published.store(id, Ordering::Release);
        let event = Arc::new(Sequenced { id, audience: publish.audience, frame });
        if let Some(disk) = &self.disk {
            // A writer that is gone has logged why; delivery goes on.
            let _ = disk.send(ToDisk { event: Arc::clone(&event), at_ms: wall_ms() });
        }
        self.fanout.publish(event);
    }

    /// Delivers an event read from the cluster's stream, unless it was: ids only grow, so one
    /// at or below the last delivered was.
    pub fn deliver_new(&mut self, id: u64, publish: Publish) {
        if id > self.state.published.load(Ordering::Relaxed) {
            self.deliver(id, publish);
        }
    }

    /// The stream lost what came before now: a resume from before is told of a gap.
    pub fn new_epoch(&mut self) {
        self.state.history.write().new_epoch();
    }

    /// Wakes the shards that were sent something since the last wake.
    pub fn wake(&mut self) {
        self.fanout.wake();
    }
}

/// The event's frame: what every client it reaches is sent, and what history keeps.
pub fn frame(id: u64, publish: &Publish) -> Frame {
    encode(&EventFields {
        id: Some(id),
        event: publish.event.as_deref(),
        retry: publish.retry,
        data: Some(&publish.message),
    })
}

/// One sender's side of every shard's channel.
#[derive(Debug)]
pub struct Fanout {
    shards: Vec<ShardHandle>,
    unwoken: Vec<bool>,
}

impl Fanout {
    /// Fans out to these shards.
    pub fn new(shards: Vec<ShardHandle>) -> Self {
        let unwoken = vec![false; shards.len()];
        Fanout { shards, unwoken }
    }

    /// How many shards there are.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Queues the event on every shard; they are woken by [`Fanout::wake`].
    pub fn publish(&mut self, event: Arc<Sequenced>) {
        for shard in 0..self.shards.len() {
            self.send(shard, ShardCommand::Deliver(Arc::clone(&event)));
        }
    }

    /// Sends one command to every shard.
    pub fn broadcast(&mut self, command: impl Fn() -> ShardCommand) {
        for shard in 0..self.shards.len() {
            self.send(shard, command());
        }
        self.wake();
    }

    /// Wakes every shard that was sent something since the last wake.
    pub fn wake(&mut self) {
        for (shard, unwoken) in self.shards.iter().zip(self.unwoken.iter_mut()) {
            if std::mem::take(unwoken) {
                if let Err(e) = shard.waker.wake() {
                    warn!("Cannot wake a worker: {e}");
                }
            }
        }
    }

    /// Asks every shard, after everything sent before; each shard's answer arrives on its own
    /// receiver (so that who answered what is known), which whoever wants the answers reads (the
    /// admin path), not the caller.
    pub fn ask(&mut self, query: &ShardQuery) -> Vec<Receiver<ShardAnswer>> {
        let mut answers = Vec::with_capacity(self.shards.len());
        for shard in 0..self.shards.len() {
            let (reply, answer) = bounded(1);
            self.send(shard, ShardCommand::Ask(query.clone(), reply));
            answers.push(answer);
        }
        self.wake();
        answers
    }

    /// Sends without ever sleeping on a shard that was not woken: when its queue is full, wake
    /// it first, then wait for room.
    fn send(&mut self, shard: usize, command: ShardCommand) {
        let handle = &self.shards[shard];
        let command = match handle.commands.try_send(command) {
            Ok(()) => {
                self.unwoken[shard] = true;
                return;
            }
            Err(TrySendError::Full(command)) => command,
            Err(TrySendError::Disconnected(_)) => return,
        };
        let _ = handle.waker.wake();
        if handle.commands.send(command).is_ok() {
            self.unwoken[shard] = true;
        }
    }
}
