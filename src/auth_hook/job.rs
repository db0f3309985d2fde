//! A question for the backend and its answer, as they travel between a shard and whatever
//! asks: the parked handshake's ticket, the way back to its shard, and the bell that wakes a
//! loop once for a burst. Below both the shards' handle (`pool`) and the askers (`plain`,
//! `pool`'s threads); it asks nothing itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use mio::Waker;

use super::{Answer, Question};

/// Which parked handshake an answer is for: a shard's connection key and its serial, as the
/// shard gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The connection's place in its shard.
    pub slot: usize,
    /// The connection's serial when it was parked.
    pub serial: u32,
}

/// A loop's waker, rung once for what comes while the loop has not looked: a burst of
/// verdicts for a shard, or of questions for the plain loop, wakes it once.
#[derive(Debug, Clone)]
pub struct Bell {
    waker: Arc<Waker>,
    /// Whether the loop was woken for what it has not taken yet.
    woken: Arc<AtomicBool>,
}

impl Bell {
    /// A bell that wakes `waker`'s loop.
    pub fn new(waker: Arc<Waker>) -> Bell {
        Bell { waker, woken: Arc::new(AtomicBool::new(false)) }
    }

    /// Wakes the loop unless it was woken since it last took what came: call it after sending.
    pub fn ring(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// Said by the loop before it takes what came: what is sent after rings again.
    pub fn taking(&self) {
        self.woken.swap(false, Ordering::AcqRel);
    }
}

/// Where an answer goes: the asking shard's channel and the bell of its loop.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The shard's end of its verdicts' channel.
    verdicts: Sender<Verdict>,
    /// Wakes the shard's loop to take them.
    bell: Bell,
}

impl Reply {
    /// The way back to a shard: its verdicts' channel and the waker of its loop.
    pub fn new(verdicts: Sender<Verdict>, waker: Arc<Waker>) -> Reply {
        Reply { verdicts, bell: Bell::new(waker) }
    }

    /// Sends `verdict` and rings the shard's bell.
    pub(super) fn send(&self, verdict: Verdict) {
        // A shard that stopped has dropped its end: nobody is waiting.
        if self.verdicts.send(verdict).is_ok() {
            self.bell.ring();
        }
    }

    /// Said by the shard before it takes its verdicts.
    pub fn taking(&self) {
        self.bell.taking();
    }
}

/// One question for the backend.
#[derive(Debug)]
pub struct Job {
    /// What to ask.
    pub question: Question,
    /// Whose question it is.
    pub ticket: Ticket,
    /// Where the answer goes.
    pub reply: Reply,
    /// When the shard stops waiting: a question still queued then is not asked.
    pub deadline: Instant,
}

/// The backend's answer to a shard's question.
#[derive(Debug)]
pub struct Verdict {
    /// Whose question it was.
    pub ticket: Ticket,
    /// What the backend said.
    pub answer: Answer,
}
