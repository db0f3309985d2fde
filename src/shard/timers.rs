//! Everything a shard does by the clock: handshake and age deadlines, heartbeats, stalled clients.
//!
//! Owns the deadline queues (kept sorted by construction: one timeout for all entries of a
//! queue) and when the event loop must wake next. Closing and writing are the shard's own.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::connection::Phase;
use super::{millis, Shard};
use crate::sse;

/// A connection that must be gone by a deadline unless it moved on since: the same key and
/// serial (the same connection, and no newer handshake: a reinit takes a new serial). There is
/// one per connection in each queue, so it is kept to 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Deadline {
    /// Milliseconds from the shard's start.
    pub(super) at: u64,
    pub(super) key: u32,
    /// Serials wrap; a stale deadline would match only after 2^32 newer handshakes on this
    /// shard while it waits, far beyond any --max-age.
    pub(super) serial: u32,
}

impl Shard {
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let first = |q: &VecDeque<Deadline>| {
            q.front().and_then(|d| self.started.checked_add(Duration::from_millis(d.at)))
        };
        let stall =
            self.stalls.next_deadline().and_then(|at| self.started.checked_add(Duration::from_millis(at)));
        let expiry = self
            .expiry_deadlines
            .peek()
            .and_then(|Reverse(d)| self.started.checked_add(Duration::from_millis(d.at)));
        let timers = [self.next_heartbeat, self.accept_paused_until, stall, expiry];
        [first(&self.handshake_deadlines), first(&self.age_deadlines)]
            .into_iter()
            .chain(timers)
            .flatten()
            .min()
    }

    /// Closes connections whose handshake or age deadline has passed, and slow clients.
    pub(super) fn expire(&mut self, instant: Instant) {
        let now = millis(self.started, instant);
        while let Some(d) = pop_due(&mut self.handshake_deadlines, now) {
            if self.holds(d, Phase::Handshaking) {
                self.close(d.key as usize, "handshake timeout");
            } else if self.holds(d, Phase::Closing) {
                self.close(d.key as usize, "last answer not taken in time");
            }
        }
        while let Some(d) = pop_due(&mut self.age_deadlines, now) {
            if self.holds(d, Phase::Streaming) {
                self.end_stream(d.key as usize, instant, "maximum connection age reached");
            }
        }
        while let Some(&Reverse(d)) = self.expiry_deadlines.peek().filter(|Reverse(d)| d.at <= now) {
            self.expiry_deadlines.pop();
            if self.holds(d, Phase::Streaming) {
                self.end_stream(d.key as usize, instant, "its token expired");
            }
        }
        for key in self.stalls.expired(now) {
            self.drop_slow(key);
        }
    }

    /// Ends a stream as HTTP says, with the last chunk, and closes the connection once that is
    /// out; a client that does not take it has until the handshake timeout.
    fn end_stream(&mut self, key: usize, now: Instant, why: &str) {
        self.stop_streaming(key);
        let conn = &mut self.connections[key];
        conn.phase = Phase::Closing;
        conn.outbox.push(sse::last_chunk());
        let serial = conn.serial;
        info!("Stream ended: {} <{}> ({why})", conn.peer, conn.socket.as_raw_fd());
        let at = self.deadline(now, self.settings.handshake_timeout);
        self.handshake_deadlines.push_back(Deadline { at, key: key as u32, serial });
        self.flush(key);
    }

    /// Cuts a client whose socket took nothing for [`stalls::STALL_TIMEOUT`] while over the cap.
    fn drop_slow(&mut self, key: usize) {
        let conn = &self.connections[key];
        warn!(
            "Slow client dropped: {} id: {} ({} bytes unsent)",
            conn.peer,
            conn.client.id(),
            conn.outbox.len()
        );
        self.counters.dropped_slow += 1;
        // An abortive close (a reset, as nginx's `reset_timedout_connection`): a plain close
        // would leave what the kernel queued for it in an orphaned socket, still sent to it for
        // seconds and held in memory; a reset frees it now, and the client sees the cut at once.
        if let Err(e) = socket2::SockRef::from(&conn.socket).set_linger(Some(Duration::ZERO)) {
            debug!("Cannot set SO_LINGER 0 on {}: {e}", conn.peer);
        }
        self.close(key, "too slow");
    }

    /// `after` from `now`, in the deadline queues' milliseconds (saturating: a huge
    /// --max-age means never).
    pub(super) fn deadline(&self, now: Instant, after: Duration) -> u64 {
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        millis(self.started, now).saturating_add(after)
    }

    /// Sends the heartbeat comment to every stream with nothing queued (one that has bytes
    /// waiting is not idle), once per interval: one pass per interval, like a broadcast.
    pub(super) fn beat(&mut self, now: Instant) {
        let (Some(due), Some(every)) = (self.next_heartbeat, self.settings.heartbeat) else { return };
        if due > now {
            return;
        }
        self.next_heartbeat = now.checked_add(every);
        let idle: Vec<usize> = self
            .connections
            .iter()
            .filter(|(_, c)| c.phase == Phase::Streaming && c.outbox.is_empty())
            .map(|(key, _)| key)
            .collect();
        let frame = sse::heartbeat();
        for key in idle {
            self.connections[key].outbox.push(frame.clone());
            self.flush(key);
        }
    }

    /// True when the deadline's connection is still there, still the same one, in `phase`.
    fn holds(&self, d: Deadline, phase: Phase) -> bool {
        self.connections.get(d.key as usize).is_some_and(|c| c.serial == d.serial && c.phase == phase)
    }
}

fn pop_due(queue: &mut VecDeque<Deadline>, now: u64) -> Option<Deadline> {
    queue.front().filter(|d| d.at <= now)?;
    queue.pop_front()
}
