//! Fan-out to the shards: from the sequencer, and in cluster mode from the tail as well (each
//! has a fan-out of its own over the same shards' channels).
//!
//! Owns the order of commands to each shard and when shards are woken: a batch of commands is
//! sent, then each shard that got one is woken once. A shard whose queue is full (it is holding
//! for a slow client) makes the sender wait: that is the backpressure that reaches publishers.
//! It does not parse or decide anything, and it never waits for an answer.

use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, TrySendError};
use tracing::warn;

use crate::pipeline::{Delivery, ShardAnswer, ShardCommand, ShardHandle, ShardQuery};

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
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Queues the delivery on every shard; they are woken by [`Fanout::wake`].
    pub fn publish(&mut self, delivery: Delivery) {
        let delivery = Arc::new(delivery);
        for shard in 0..self.shards.len() {
            self.send(shard, ShardCommand::Deliver(Arc::clone(&delivery)));
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
