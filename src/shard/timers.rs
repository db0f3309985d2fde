//! Everything a shard does by the clock: handshake, auth-backend, age and token-expiry
//! deadlines, heartbeats, stalled clients.
//!
//! [`Timers`] owns the deadline queues (kept sorted by construction: one timeout for all
//! entries of a queue; token expiries each their own, so a heap) and the heartbeat's next time.
//! The shard asks it what is due and when the event loop must wake next; closing and writing
//! are the shard's own. A handshake deadline names a connection; age and expiry name a stream.
//! An age holds no time: the stream's handshake second, in its slot, gives it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::connection::{Phase, Stamp};
use super::keys::{ConnKey, StreamKey};
use super::wind_down::WindDown;
use super::{millis, Shard};
use crate::h2::frame::ErrorCode;
use crate::sse::{self, Frame};

/// Something that must be gone by a deadline unless it moved on since: the same key and
/// serial (the same connection, and no newer handshake: a reinit takes a new serial). There is
/// one per connection in each queue, so it is kept to 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Deadline<K> {
    /// Milliseconds from the shard's start.
    pub(super) at: u64,
    pub(super) key: K,
    /// Serials wrap; a stale deadline would match only after 2^32 newer handshakes on this
    /// shard while it waits, far beyond any --max-age.
    pub(super) serial: u32,
}

/// A stream that ends at `--max-age` after its handshake, unless it moved on since (as for a
/// [`Deadline`]). Its time is the handshake's second, read from the stream's slot, rounded up
/// ([`age_deadline`]): so it ends up to a second late, never early (hasses checked every 60 s),
/// and the queue holds 8 bytes a stream, not 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Aging {
    pub(super) key: StreamKey,
    pub(super) serial: u32,
}

/// A shard's deadlines and its heartbeat's next time, in milliseconds from the shard's start.
#[derive(Debug, Default)]
pub(super) struct Timers {
    /// Handshake (and last-answer) deadlines in the order they were set; with one timeout for
    /// all, that is deadline order.
    handshakes: VecDeque<Deadline<ConnKey>>,
    /// Streams to end at `--max-age`, in handshake order, so in deadline order too. Every
    /// stream has one: 8 bytes each (see [`Aging`]).
    ages: VecDeque<Aging>,
    /// When handshakes waiting for the backend give up (`--auth-timeout`), likewise sorted.
    authorizations: VecDeque<Deadline<StreamKey>>,
    /// When streams end because their token expires: each token its own time, so a heap.
    expiries: BinaryHeap<Reverse<Deadline<StreamKey>>>,
    /// When idle streams next get a heartbeat comment.
    pub(super) next_heartbeat: Option<Instant>,
}

impl Timers {
    /// Timers whose first heartbeat is due `heartbeat` from now, if heartbeats are on.
    pub(super) fn new(heartbeat: Option<Duration>) -> Timers {
        Timers {
            next_heartbeat: heartbeat.and_then(|every| Instant::now().checked_add(every)),
            ..Timers::default()
        }
    }

    /// The connection must have handshaked (or taken its last answer) by `at`.
    pub(super) fn handshake_by(&mut self, at: u64, key: ConnKey, serial: u32) {
        self.handshakes.push_back(Deadline { at, key, serial });
    }

    /// The connection waiting for the backend gives up at `at`.
    pub(super) fn authorize_by(&mut self, at: u64, key: StreamKey, serial: u32) {
        self.authorizations.push_back(Deadline { at, key, serial });
    }

    /// The stream, handshaked just now, ends at `--max-age`.
    pub(super) fn age(&mut self, key: StreamKey, serial: u32) {
        self.ages.push_back(Aging { key, serial });
    }

    /// The stream ends at `at`, when its token expires.
    pub(super) fn expire_by(&mut self, at: u64, key: StreamKey, serial: u32) {
        self.expiries.push(Reverse(Deadline { at, key, serial }));
    }

    /// The earliest deadline but the ages', in the shard's milliseconds.
    fn next_at(&self) -> Option<u64> {
        let expiry = self.expiries.peek().map(|Reverse(d)| d.at);
        let authorization = self.authorizations.front().map(|d| d.at);
        [self.handshakes.front().map(|d| d.at), expiry, authorization].into_iter().flatten().min()
    }

    /// The next handshake deadline due by `now`.
    fn due_handshake(&mut self, now: u64) -> Option<Deadline<ConnKey>> {
        pop_due(&mut self.handshakes, now)
    }

    /// The next wait for the backend due by `now`.
    fn due_authorization(&mut self, now: u64) -> Option<Deadline<StreamKey>> {
        pop_due(&mut self.authorizations, now)
    }

    /// The next token expiry due by `now`.
    fn due_expiry(&mut self, now: u64) -> Option<Deadline<StreamKey>> {
        self.expiries.peek().filter(|Reverse(d)| d.at <= now)?;
        self.expiries.pop().map(|Reverse(d)| d)
    }
}

impl Shard {
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let at = |millis: u64| self.started.checked_add(Duration::from_millis(millis));
        let deadline = self.timers.next_at().into_iter().chain(self.next_age_at()).min().and_then(at);
        let stall = self.stalls.next_deadline().and_then(at);
        let stream_stall = self.next_stream_stall().and_then(at);
        let wind_down = self.wind_down.as_ref().map(WindDown::next_at);
        [deadline, stall, stream_stall, self.timers.next_heartbeat, self.accept_pause.until, wind_down]
            .into_iter()
            .flatten()
            .min()
    }

    /// Closes connections whose handshake or age deadline has passed, and slow clients.
    pub(super) fn expire(&mut self, instant: Instant) {
        let now = millis(self.started, instant);
        while let Some(d) = self.timers.due_handshake(now) {
            if self.holds(d.key, d.serial, Phase::Handshaking) {
                self.close(d.key, "handshake timeout");
            } else if self.holds(d.key, d.serial, Phase::Closing) {
                self.close(d.key, "last answer not taken in time");
            } else if self.holds(d.key, d.serial, Phase::Lingering) {
                self.close(d.key, "not closed by the peer after GOAWAY");
            } else if self.holds(d.key, d.serial, Phase::Multiplexed) {
                self.idle_multiplexed(d.key, instant);
            }
        }
        while let Some(d) = self.timers.due_authorization(now) {
            self.authorization_overdue(d.key, d.serial);
        }
        while let Some(aging) = self.due_age(now) {
            self.end_stream(aging.key, instant, "maximum connection age reached");
        }
        while let Some(d) = self.timers.due_expiry(now) {
            if self.holds_stream(d.key, d.serial) {
                self.end_stream(d.key, instant, "its token expired");
            }
        }
        for key in self.stalls.expired(now) {
            self.drop_slow(key);
        }
        if !self.held_back.is_empty() {
            self.reset_stalled_streams(now);
        }
    }

    /// When the front age is due, in the shard's milliseconds: now when its stream moved on,
    /// so that the next [`Shard::expire`] takes it out.
    fn next_age_at(&self) -> Option<u64> {
        let front = self.timers.ages.front()?;
        Some(
            self.streaming_since(front.key, front.serial)
                .map_or(0, |at| age_deadline(at, self.settings.max_age)),
        )
    }

    /// Takes out the ages of streams that moved on, and the next one due by `now`.
    fn due_age(&mut self, now: u64) -> Option<Aging> {
        while let Some(front) = self.timers.ages.front() {
            match self.streaming_since(front.key, front.serial) {
                Some(at) if age_deadline(at, self.settings.max_age) > now => return None,
                Some(_) => return pop_front(&mut self.timers.ages),
                None => drop(pop_front(&mut self.timers.ages)),
            }
        }
        None
    }

    /// Ends a stream as HTTP says, with the last chunk, and closes the connection once that is
    /// out; a client that does not take it has until the handshake timeout.
    pub(super) fn end_stream(&mut self, stream: StreamKey, now: Instant, why: &str) {
        let key = stream.connection();
        if stream.slot().is_some() {
            self.finish_stream(stream);
            let conn = &self.connections[key];
            info!("Stream ended: {} <{}> HTTP/2 ({why})", conn.peer, conn.socket.as_raw_fd());
            // At a stop, a connection whose last stream ended goes too.
            if self.wind_down.is_some() && conn.h2.as_deref().is_some_and(|h2| h2.is_empty()) {
                return self.end_multiplexed(key, ErrorCode::NoError);
            }
            return self.flush(key);
        }
        self.stop_streaming(stream);
        let conn = &mut self.connections[key];
        conn.phase = Phase::Closing;
        conn.outbox.push(sse::last_chunk());
        let serial = conn.serial;
        info!("Stream ended: {} <{}> ({why})", conn.peer, conn.socket.as_raw_fd());
        let at = self.deadline(now, self.settings.handshake_timeout);
        self.timers.handshake_by(at, key, serial);
        self.flush(key);
    }

    /// Cuts a client whose socket took nothing for [`stalls::STALL_TIMEOUT`] while over the cap.
    fn drop_slow(&mut self, key: ConnKey) {
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
        let (Some(due), Some(every)) = (self.timers.next_heartbeat, self.settings.heartbeat) else { return };
        if due > now {
            return;
        }
        self.timers.next_heartbeat = now.checked_add(every);
        let idle: Vec<StreamKey> = self
            .connections
            .streaming()
            .filter(|(_, conn, ..)| conn.outbox.is_empty())
            .map(|(stream, ..)| stream)
            .collect();
        let frame = sse::heartbeat();
        for stream in idle {
            self.send_frame(stream, &frame);
            self.flush(stream.connection());
        }
    }

    /// True when a deadline's connection is still there, still the same one, in `phase`.
    pub(super) fn holds(&self, key: ConnKey, serial: u32, phase: Phase) -> bool {
        self.connections.get(key).is_some_and(|c| c.serial == serial && c.phase == phase)
    }

    /// True when `stream` is still the one streaming with `serial` (not ended, its slot or
    /// connection not taken by another since).
    pub(super) fn holds_stream(&self, stream: StreamKey, serial: u32) -> bool {
        self.streaming_since(stream, serial).is_some()
    }

    /// When `stream` handshaked, if it is still the one streaming with `serial`. (A stream's
    /// stamp is set with its phase; one without would count from the shard's start.)
    fn streaming_since(&self, stream: StreamKey, serial: u32) -> Option<Stamp> {
        let conn = self.connections.get(stream.connection())?;
        let (its_serial, phase, handshaked_at) = match stream.slot() {
            None => (conn.serial, conn.phase, conn.handshaked_at),
            Some(slot) => {
                let data = &conn.h2.as_deref()?.stream(slot)?.data;
                (data.serial, data.phase, data.handshaked_at)
            }
        };
        let streaming = its_serial == serial && phase == Phase::Streaming;
        streaming.then(|| handshaked_at.unwrap_or(Stamp::at(0)))
    }

    /// Queues `frame` (a chunk) on `stream`, however its connection speaks.
    pub(super) fn send_frame(&mut self, stream: StreamKey, frame: &Frame) {
        match stream.slot() {
            None => self.connections[stream.connection()].outbox.push(frame.clone()),
            Some(_) => self.send_on_stream(stream, frame),
        }
    }
}

/// The queue's room kept however few wait in it: a shard's ordinary traffic grows it no
/// further.
const KEPT_ROOM: usize = 256;

/// Takes the front deadline if it is due by `now`.
fn pop_due<K>(queue: &mut VecDeque<Deadline<K>>, now: u64) -> Option<Deadline<K>> {
    queue.front().filter(|d| d.at <= now)?;
    pop_front(queue)
}

/// Takes the front out. A queue a wave of connections grew gives its room back as it drains,
/// rather than keep a deadline's bytes per connection of the wave for the server's life.
fn pop_front<T>(queue: &mut VecDeque<T>) -> Option<T> {
    let front = queue.pop_front();
    if queue.capacity() > KEPT_ROOM && queue.len() < queue.capacity() / 4 {
        queue.shrink_to((queue.len() * 2).max(KEPT_ROOM));
    }
    front
}

/// When a stream handshaked at second `handshaked` ends, in the shard's milliseconds: the
/// second rounded up, then `max_age` (saturating: a huge one means never).
fn age_deadline(handshaked: Stamp, max_age: Duration) -> u64 {
    let max_age = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
    (u64::from(handshaked.seconds()) + 1).saturating_mul(1000).saturating_add(max_age)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_queue_gives_its_room_back_in_order() {
        let mut queue: VecDeque<Deadline<u32>> =
            (0..10_000).map(|at| Deadline { at, key: at as u32, serial: 0 }).collect();
        assert_eq!(pop_due(&mut queue, 9_000).map(|d| d.key), Some(0));
        let due: Vec<u32> = std::iter::from_fn(|| pop_due(&mut queue, 9_000)).map(|d| d.key).collect();
        assert_eq!(due, (1..=9_000).collect::<Vec<_>>(), "every due deadline, in order");
        assert_eq!(queue.front().map(|d| d.key), Some(9_001), "none taken before its time");
        assert!(queue.capacity() < 4_000, "room given back: {}", queue.capacity());
        std::iter::from_fn(|| pop_due(&mut queue, u64::MAX)).for_each(drop);
        assert!(queue.capacity() <= 2 * KEPT_ROOM, "room given back: {}", queue.capacity());
    }

    #[test]
    fn an_age_ends_within_the_second_after_its_time_never_before() {
        let max_age = Duration::from_millis(1_500);
        for handshaked_ms in [0, 1, 999, 1_000, 59_999] {
            let at = age_deadline(Stamp::at(handshaked_ms / 1000), max_age);
            let due = handshaked_ms as u64 + 1_500;
            assert!((due..=due + 1_000).contains(&at), "handshaked at {handshaked_ms} ms: {at}");
        }
        assert_eq!(age_deadline(Stamp::at(7), Duration::MAX), u64::MAX, "a huge --max-age is never");
    }
}
