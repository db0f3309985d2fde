//! Winding a shard down at a stop (`--drain-secs`): new connections are no longer taken, and
//! each stream is told to come back after a random wait (`retry:`), then ended, a few at a
//! time, so that a stop of 100,000 clients does not become one instant reconnect storm.
//!
//! [`WindDown`] owns the order and the pace: the streams' closes are spread over at most the
//! drain time, at no fewer than [`MIN_CLOSES_PER_SEC`] (a shard with a few streams stops at
//! once), and each reconnection wait is drawn from one to one plus the drain time seconds. The
//! shard ends the streams and closes their connections as it does for `--max-age`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::info;

use super::connection::Phase;
use super::keys::StreamKey;
use super::Shard;
use crate::h2::frame::ErrorCode;
use crate::sse;

/// The slowest pace of closes: a drain never takes longer than its streams need at this rate.
pub const MIN_CLOSES_PER_SEC: u32 = 1000;
/// The shortest wait a drained stream is told to make before it reconnects.
const RETRY_FLOOR_MS: u64 = 1000;
/// How long connections ended by the drain may take to take their last bytes.
const LAST_WRITES: Duration = Duration::from_secs(1);

/// A shard's streams being ended at a stop, in turn.
#[derive(Debug)]
pub(super) struct WindDown {
    /// The streams still to end, with their serials, in the order they will be.
    left: VecDeque<(StreamKey, u32)>,
    /// When the next one is ended; they come `step` apart.
    next_at: Instant,
    step: Duration,
    /// The reconnection waits are drawn from `RETRY_FLOOR_MS` to this many more.
    spread_ms: u64,
    /// After this, whatever is still open is closed at once.
    pub(super) deadline: Instant,
    /// The draw's state (splitmix64: no secret, just spread).
    seed: u64,
}

impl WindDown {
    /// Ends `streams` over at most `drain` from `now`.
    pub(super) fn new(streams: Vec<(StreamKey, u32)>, drain: Duration, now: Instant, seed: u64) -> WindDown {
        let n = u32::try_from(streams.len()).unwrap_or(u32::MAX).max(1);
        let step = (drain / n).min(Duration::from_secs(1) / MIN_CLOSES_PER_SEC);
        let spread_ms = u64::try_from(drain.as_millis()).unwrap_or(u64::MAX).max(RETRY_FLOOR_MS);
        WindDown {
            left: streams.into(),
            next_at: now,
            step,
            spread_ms,
            deadline: now + drain + LAST_WRITES,
            seed,
        }
    }

    /// The next stream due by `now`, with the wait in milliseconds to tell it.
    pub(super) fn due(&mut self, now: Instant) -> Option<(StreamKey, u32, u32)> {
        if self.next_at > now {
            return None;
        }
        let (stream, serial) = self.left.pop_front()?;
        self.next_at += self.step;
        let wait = RETRY_FLOOR_MS + self.draw() % self.spread_ms;
        Some((stream, serial, u32::try_from(wait).unwrap_or(u32::MAX)))
    }

    /// When the event loop must wake next for it.
    pub(super) fn next_at(&self) -> Instant {
        if self.left.is_empty() {
            self.deadline
        } else {
            self.next_at.min(self.deadline)
        }
    }

    /// Whether every stream was ended.
    pub(super) fn is_done(&self) -> bool {
        self.left.is_empty()
    }

    fn draw(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Shard {
    /// Stops taking connections and starts ending the streams (at once without a drain time).
    /// Connections not streaming are closed now: they have nothing to come back for.
    pub(super) fn start_wind_down(&mut self) {
        let Some(drain) = self.settings.drain else {
            self.stopping = true;
            return;
        };
        if self.wind_down.is_some() {
            return;
        }
        let _ = self.poll.registry().deregister(&mut self.listener);
        let streams: Vec<(StreamKey, u32)> =
            self.connections.streaming().map(|(stream, _, _, serial)| (stream, serial)).collect();
        let (mut multiplexed, mut others) = (Vec::new(), Vec::new());
        for (key, conn) in self.connections.iter() {
            match conn.phase {
                Phase::Streaming => {}
                Phase::Multiplexed => multiplexed.push(key),
                _ => others.push(key),
            }
        }
        // An HTTP/2 client is told at once that no new stream will be taken.
        for key in multiplexed {
            if let Some((h2, outbox)) = self.connections[key].multiplexed() {
                h2.goaway(ErrorCode::NoError, &mut |frame| outbox.push(frame));
            }
            self.flush(key);
        }
        for key in others {
            self.close(key, "server shutting down");
        }
        info!("Worker {}: ending {} streams over at most {drain:?}", self.number, streams.len());
        let now = Instant::now();
        let seed = now.duration_since(self.started).as_nanos() as u64 ^ self.number as u64;
        self.wind_down = Some(WindDown::new(streams, drain, now, seed));
        self.wind_down_step(now);
    }

    /// Ends the streams due by `now`, each told when to come back; the loop stops once every
    /// connection is closed, or at the drain's deadline.
    pub(super) fn wind_down_step(&mut self, now: Instant) {
        let Some(wind) = &mut self.wind_down else { return };
        let mut due = Vec::new();
        while let Some(next) = wind.due(now) {
            due.push(next);
        }
        let (done, deadline) = (wind.is_done(), wind.deadline);
        for (stream, serial, wait) in due {
            if self.holds_stream(stream, serial) {
                self.send_frame(stream, &sse::retry_chunk(wait));
                self.end_stream(stream, now, "server stopping");
            }
        }
        if (done && self.connections.len() == 0) || now >= deadline {
            self.stopping = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::keys::ConnKey;

    fn streams(n: usize) -> Vec<(StreamKey, u32)> {
        (0..n).map(|i| (StreamKey::on(ConnKey::new(i).unwrap()), 1)).collect()
    }

    /// Every stream in turn, with the time each came due.
    fn run(mut wind: WindDown, start: Instant) -> Vec<(Duration, u32)> {
        let mut due = Vec::new();
        while !wind.is_done() {
            let now = wind.next_at();
            while let Some((_, _, wait)) = wind.due(now) {
                due.push((now - start, wait));
            }
        }
        due
    }

    #[test]
    fn many_streams_are_spread_over_the_drain_a_few_at_once() {
        let start = Instant::now();
        let due = run(WindDown::new(streams(10_000), Duration::from_secs(5), start, 7), start);
        assert_eq!(due.len(), 10_000);
        let last = due.last().unwrap().0;
        assert!(last > Duration::from_secs(4) && last <= Duration::from_secs(5), "{last:?}");
        let waits: Vec<u32> = due.iter().map(|(_, w)| *w).collect();
        assert!(waits.iter().all(|w| (1000..6000).contains(w)));
        let early = waits.iter().filter(|w| **w < 3500).count();
        assert!((4000..6000).contains(&early), "the waits are spread evenly: {early} of 10000 early");
    }

    #[test]
    fn a_few_streams_end_at_once() {
        let start = Instant::now();
        let due = run(WindDown::new(streams(20), Duration::from_secs(5), start, 1), start);
        assert_eq!(due.len(), 20);
        assert!(due.last().unwrap().0 <= Duration::from_millis(20), "{:?}", due.last());
    }

    #[test]
    fn nothing_to_end_is_done_at_once() {
        let start = Instant::now();
        let wind = WindDown::new(Vec::new(), Duration::from_secs(5), start, 1);
        assert!(wind.is_done());
        assert_eq!(wind.next_at(), start + Duration::from_secs(5) + LAST_WRITES);
    }
}
