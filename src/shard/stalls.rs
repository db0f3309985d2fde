//! Clients whose queue is over `--max-backlog`: the shard's backpressure.
//!
//! A client is slow only when its own socket refuses bytes, never because a burst arrived faster
//! than one write: the shard queues a burst, tries to write, and only a client still over the cap
//! after that write is held here. While any client is held, the shard takes no new commands, so
//! its channel fills and the control thread stops reading publishers (TCP flow control and the
//! FIFO's pipe hold them). A held client whose socket takes bytes again is let go once its queue
//! is back under the cap; one whose socket takes nothing for [`STALL_TIMEOUT`] is slow, and the
//! shard cuts it. Pure bookkeeping: it decides, the shard writes and closes.

use std::time::Duration;

use super::keys::ConnKey;

/// How long a client over the cap may take no byte at all before it is cut as slow. Long enough
/// for a reader on a busy machine to be scheduled; short enough that a dead reader holds up the
/// rest of its shard only briefly.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The clients over the cap, each with when its socket last took bytes (milliseconds on the
/// shard's clock). Rarely more than a few, so a vector.
#[derive(Debug, Default)]
pub struct Stalls {
    held: Vec<Stall>,
}

#[derive(Debug, Clone, Copy)]
struct Stall {
    key: ConnKey,
    progress_at: u64,
}

impl Stalls {
    /// True when no client is held: the shard may take commands.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Notes a write attempt on `key`: `before` bytes were queued, `after` still are.
    pub fn after_write(&mut self, key: ConnKey, before: usize, after: usize, cap: usize, now: u64) {
        let held = self.held.iter().position(|s| s.key == key);
        match held {
            _ if after <= cap => self.release(key),
            Some(i) if after < before => self.held[i].progress_at = now,
            Some(_) => {}
            None => self.held.push(Stall { key, progress_at: now }),
        }
    }

    /// Forgets `key` (it went under the cap, stopped streaming, or closed).
    pub fn release(&mut self, key: ConnKey) {
        self.held.retain(|s| s.key != key);
    }

    /// Takes out and returns the clients whose socket took nothing for [`STALL_TIMEOUT`].
    pub fn expired(&mut self, now: u64) -> Vec<ConnKey> {
        let timeout = STALL_TIMEOUT.as_millis() as u64;
        let (slow, held) = self.held.iter().partition(|s| now.saturating_sub(s.progress_at) >= timeout);
        self.held = held;
        slow.into_iter().map(|s: Stall| s.key).collect()
    }

    /// When the first held client will have stalled for too long.
    pub fn next_deadline(&self) -> Option<u64> {
        let timeout = STALL_TIMEOUT.as_millis() as u64;
        self.held.iter().map(|s| s.progress_at.saturating_add(timeout)).min()
    }
}

#[cfg(test)]
mod tests {
    /// Connection `n`.
    fn key(n: usize) -> super::ConnKey {
        super::ConnKey::new(n).unwrap()
    }

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::shard::outbox::{Outbox, Socket};

    const TIMEOUT: u64 = STALL_TIMEOUT.as_millis() as u64;

    #[test]
    fn a_burst_over_the_cap_is_not_a_stall_when_the_write_takes_it() {
        let mut stalls = Stalls::default();
        stalls.after_write(key(1), 5000, 10, 1000, 0);
        assert!(stalls.is_empty());
    }

    #[test]
    fn a_client_is_held_until_under_the_cap_and_cut_only_without_progress() {
        let mut stalls = Stalls::default();
        stalls.after_write(key(1), 5000, 4000, 1000, 0);
        assert!(!stalls.is_empty());
        stalls.after_write(key(1), 4000, 3000, 1000, TIMEOUT - 1);
        assert!(stalls.expired(TIMEOUT).is_empty(), "it took bytes a moment ago");
        assert_eq!(stalls.next_deadline(), Some(2 * TIMEOUT - 1));
        stalls.after_write(key(1), 3000, 3000, 1000, 2 * TIMEOUT - 2);
        assert_eq!(stalls.expired(2 * TIMEOUT - 1), vec![key(1)]);
        assert!(stalls.is_empty());

        stalls.after_write(key(2), 5000, 4000, 1000, 0);
        stalls.after_write(key(2), 4000, 900, 1000, 1);
        assert!(stalls.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// An event of this size is published (taken only while the client is not held).
        Publish(usize),
        /// Time passes, then the socket takes up to this many bytes.
        Drain { millis: u64, room: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1usize..3000).prop_map(Step::Publish),
            (0u64..1500, prop_oneof![Just(0usize), 1usize..6000])
                .prop_map(|(millis, room)| Step::Drain { millis, room }),
        ]
    }

    proptest! {
        /// The delivery rules, as the shard applies them: queue, write when over the cap, hold
        /// the publisher while over, cut only after a whole timeout without a byte taken. Over
        /// any interleaving: a client that took bytes within the timeout is never cut, what it
        /// received is exactly the events offered, in order, and its queue stays within the cap
        /// plus one event.
        #[test]
        fn only_a_socket_that_takes_nothing_is_cut(steps in prop::collection::vec(step(), 1..200)) {
            const CAP: usize = 4000;
            let (mut outbox, mut stalls) = (Outbox::default(), Stalls::default());
            let mut socket = Socket { taken: Vec::new(), room: 0 };
            let (mut offered, mut now, mut last_taken_at, mut next_byte) = (Vec::new(), 0u64, 0u64, 0u8);
            for step in steps {
                let before = outbox.len();
                match step {
                    Step::Publish(_) if !stalls.is_empty() => continue,
                    Step::Publish(size) => {
                        let frame: Vec<u8> = (0..size).map(|_| { next_byte = next_byte.wrapping_add(1); next_byte }).collect();
                        offered.extend_from_slice(&frame);
                        outbox.push(Bytes::from(frame));
                        if outbox.len() <= CAP {
                            continue;
                        }
                        socket.room = 0;
                    }
                    Step::Drain { millis, room } => {
                        now += millis;
                        socket.room = room;
                    }
                }
                let _ = outbox.flush(&mut socket).unwrap();
                if outbox.len() < before {
                    last_taken_at = now;
                }
                stalls.after_write(key(0), before, outbox.len(), CAP, now);
                prop_assert!(outbox.len() <= CAP + 3000);
                if stalls.expired(now) == vec![key(0)] {
                    prop_assert!(now - last_taken_at >= TIMEOUT, "cut {} ms after its socket took bytes", now - last_taken_at);
                    break;
                }
            }
            prop_assert_eq!(&socket.taken[..], &offered[..socket.taken.len()]);
        }
    }
}
