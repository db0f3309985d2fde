//! Fan-out from the control thread to the shards, and the answers back.
//!
//! Owns the order of commands to each shard and when shards are woken: a batch of commands is
//! sent, then each shard that got one is woken once. It does not parse or decide anything.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender, TrySendError};
use tracing::warn;

use crate::pipeline::{Delivery, ShardCommand, ShardHandle};

/// How long a shard may take to answer a figures or client-list request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The control thread's side of every shard's channel.
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

    /// True when there is no shard.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
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

    /// Asks every shard, after everything sent before, and collects the answers that come
    /// within the timeout (a shard that does not answer is left out and logged).
    pub fn ask<T: Send>(&mut self, request: impl Fn(Sender<T>) -> ShardCommand) -> Vec<T> {
        let (reply, answers) = bounded(self.shards.len());
        self.broadcast(|| request(reply.clone()));
        drop(reply);
        let deadline = std::time::Instant::now() + ANSWER_TIMEOUT;
        let mut collected = Vec::with_capacity(self.shards.len());
        while collected.len() < self.shards.len() {
            match answers.recv_deadline(deadline) {
                Ok(answer) => collected.push(answer),
                Err(_) => {
                    warn!(
                        "{} of {} workers did not answer",
                        self.shards.len() - collected.len(),
                        self.shards.len()
                    );
                    break;
                }
            }
        }
        collected
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
