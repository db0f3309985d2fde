//! The events kept for resume: written once by the sequencer, read when a client resumes.
//!
//! Owns which events are kept and for how long, and what a resuming client is owed. Events are
//! kept per audience (what a publish was sent to: `room1`, `user*`, `*`, a list of them, less
//! an `except` id), each audience a ring in id order bounded by `--history` events; all of them
//! together are bounded by `--history-age` and `--history-memory`, the oldest going first.
//!
//! A resume from an id merges the rings that can reach the client (its tokens, prefixes that
//! match them, `*`; never the rings that exclude its id: the live delivery rule,
//! [`Audience::reaches`]) into id order. Finding where each ring's replay starts is a binary
//! search. Where the rings to look at outnumber the events since the id (a ring per sender of
//! `room1-<sender>`), it walks back from the newest event instead. A gap is told, never
//! guessed: [`Replay::gap`] is set when something this client would have received may be gone:
//! evicted from a ring that reaches it, too old, or published before this server started. A
//! ring that has lost events keeps the highest id it lost, even once empty, so that the answer
//! stays exact; only past [`MAX_EMPTY_RINGS`] empty rings is the oldest of them forgotten, and
//! then every resume from before its last loss is told of a gap.
//!
//! What it holds can be written down and read back ([`History::snapshot`], [`History::begin`],
//! [`History::mark_lost`]): the history file ([`crate::history_file`]) rebuilds it at start with
//! what it lost, so that a restart is not a gap.
//!
//! Pure bookkeeping: no I/O and no clock of its own (times are passed in).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::event::{Audience, Name, ResumeFrom, Target};
use crate::figures::HistoryFigures;
use crate::sse::Frame;

/// How many empty rings (audiences whose events all went, remembered for what they lost) are
/// kept before the oldest is forgotten: enough for every user token of a large site.
pub const MAX_EMPTY_RINGS: usize = 100_000;

/// How much is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Events kept per audience (`--history`); 0 keeps none (history off).
    pub per_audience: usize,
    /// How long an event is kept (`--history-age`).
    pub max_age: Duration,
    /// The frames' bytes kept in all, the oldest going first (`--history-memory`).
    pub max_bytes: usize,
}

/// What a resuming client is owed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Something this client would have received may be gone: it must be told (`event: reset`).
    pub gap: bool,
    /// The kept events it would have received, in id order.
    pub frames: Vec<Frame>,
    /// The newest id sequenced: live delivery takes over after it.
    pub newest: u64,
}

/// Everything a history holds, to write it down (and rebuild it from that).
#[derive(Debug)]
pub struct Snapshot {
    /// Nothing before this id is known.
    pub first_id: u64,
    /// The highest id lost by a ring that was forgotten.
    pub forgotten_up_to: u64,
    /// Every ring: its audience and the highest id it lost (0: none).
    pub rings: Vec<(Audience, u64)>,
    /// Every kept event, in id order.
    pub events: Vec<SnapshotEvent>,
    /// The newest id sequenced.
    pub newest: u64,
}

/// A kept event in a [`Snapshot`].
#[derive(Debug)]
pub struct SnapshotEvent {
    /// Its id.
    pub id: u64,
    /// Its ring: an index into [`Snapshot::rings`].
    pub ring: usize,
    /// How long ago it was kept (whole seconds).
    pub age: Duration,
    /// Its frame.
    pub frame: Frame,
}

/// An event kept in a ring.
#[derive(Debug)]
struct Kept {
    id: u64,
    /// Seconds from the history's origin.
    at: u32,
    frame: Frame,
}

/// One audience's events, oldest first.
#[derive(Debug)]
struct Ring {
    audience: Audience,
    kept: VecDeque<Kept>,
    /// The highest id this ring ever let go of (0: none).
    lost_up_to: u64,
    /// How many events it let go of (wrapping): its oldest kept event's number in the ring.
    evicted: u32,
    /// While it keeps no event (it lost them all): the number its emptying took in
    /// [`History::emptied`].
    empty_since: Option<u32>,
}

impl Ring {
    /// The number in this ring of the event it keeps next (wrapping).
    fn next_number(&self) -> u32 {
        self.evicted.wrapping_add(self.kept.len() as u32)
    }
}

/// An event in the order of all rings together, for evicting the oldest first: its ring, and
/// its number there. 8 bytes, since there is one per kept event. Entries whose event already
/// left its ring (by its ring's count) stay until they reach the front.
#[derive(Debug, Clone, Copy)]
struct Ordered {
    ring: u32,
    number: u32,
}

/// Every kept event.
#[derive(Debug)]
pub struct History {
    limits: HistoryLimits,
    origin: Instant,
    /// The first id of this server's run: anything before it may have existed and is gone.
    first_id: u64,
    newest: u64,
    rings: Slab<Ring>,
    by_audience: HashMap<Audience, usize>,
    /// The rings whose audience names each token, as (token, ring): a token's rings are a
    /// range, and a ring forgotten leaves in O(log n) however many share its token (hasses'
    /// `room1-<sender>` makes a ring of `room1` per sender).
    by_token: BTreeSet<(Name, usize)>,
    /// The rings whose audience has a prefix or `*`: they may reach any client. A set, for the
    /// same reason (`*-<sender>`).
    broad: BTreeSet<usize>,
    order: VecDeque<Ordered>,
    /// Entries of `order` whose event already left its ring.
    stale: usize,
    events: usize,
    bytes: usize,
    /// Rings in the order they became empty, each with the number its emptying took. A ring
    /// that kept an event since (and may have emptied again, later in the queue) no longer
    /// has that number: its entry is passed over, and taken out once such entries are many.
    emptied: VecDeque<(usize, u32)>,
    /// How many rings keep no event: the entries of `emptied` that still stand.
    empty: usize,
    /// The number the last emptying took (wrapping).
    emptyings: u32,
    /// Empty rings kept before the oldest is forgotten: [`MAX_EMPTY_RINGS`] but in tests.
    max_empty_rings: usize,
    /// The highest id lost by a ring that was forgotten.
    forgotten_up_to: u64,
    /// The highest id let go of by age or memory, or marked lost by a restore: a ring that
    /// lost an event this way may keep none after it (see [`History::way_to_replay`]).
    dropped_up_to: u64,
    /// How far past the newest id a resume may ask and still be taken at its word (see
    /// [`History::with_lag_window`]); 0 alone.
    lag_window: u64,
}

impl History {
    /// An empty history for a server whose first event id is `first_id`.
    pub fn new(limits: HistoryLimits, first_id: u64, origin: Instant) -> Self {
        History {
            limits,
            origin,
            first_id,
            newest: first_id.saturating_sub(1),
            rings: Slab::new(),
            by_audience: HashMap::new(),
            by_token: BTreeSet::new(),
            broad: BTreeSet::new(),
            order: VecDeque::new(),
            stale: 0,
            events: 0,
            bytes: 0,
            emptied: VecDeque::new(),
            empty: 0,
            emptyings: 0,
            max_empty_rings: MAX_EMPTY_RINGS,
            forgotten_up_to: 0,
            dropped_up_to: 0,
            lag_window: 0,
        }
    }

    /// In a cluster, a client may resume on a node that has not read as far in the stream as
    /// the node it came from: an id up to `window` past the newest is then one this node has
    /// yet to read, and live delivery takes over after it, not before (which would send the
    /// client again what it had). An id further ahead is not believed.
    pub fn with_lag_window(self, window: u64) -> Self {
        History { lag_window: window, ..self }
    }

    /// Forgets empty rings past `max` rather than [`MAX_EMPTY_RINGS`], so that a test sees it.
    #[cfg(test)]
    fn with_max_empty_rings(self, max: usize) -> Self {
        History { max_empty_rings: max, ..self }
    }

    /// Keeps an event (ids only grow), then lets go of what is over the limits.
    pub fn append(&mut self, id: u64, audience: &Audience, frame: &Frame, now: Instant) {
        self.newest = id;
        let ring = self.ring_for(audience);
        if self.limits.per_audience == 0 {
            return self.lose_at_once(ring, id);
        }
        let at = self.seconds(now);
        self.refilled(ring);
        let number = self.rings[ring].next_number();
        push_back_snug(&mut self.rings[ring].kept, Kept { id, at, frame: frame.clone() });
        push_back_snug(&mut self.order, Ordered { ring: ring as u32, number });
        self.events += 1;
        self.bytes += frame.len();
        if self.rings[ring].kept.len() > self.limits.per_audience {
            self.evict_front(ring);
            self.stale += 1;
        }
        self.evict_oldest(at);
        // Rebuilding `order` costs a visit to every ring and event: done once the stale
        // entries are as many, so that it costs each append a constant share.
        if self.stale > self.events + self.rings.len() + 1024 {
            self.compact_order();
        }
    }

    /// History off (`--history 0`): the event is let go of as it comes. Its ring keeps only
    /// that, for an exact gap, and is one of the empty rings from its first loss on.
    fn lose_at_once(&mut self, ring: usize, id: u64) {
        let r = &mut self.rings[ring];
        r.lost_up_to = r.lost_up_to.max(id);
        self.emptied_out(ring);
    }

    /// `ring` keeps no event now: it joins the empty rings (if it is not one already), and the
    /// oldest of them are forgotten while they are too many.
    fn emptied_out(&mut self, ring: usize) {
        if self.rings[ring].empty_since.is_some() {
            return;
        }
        self.emptyings = self.emptyings.wrapping_add(1);
        self.rings[ring].empty_since = Some(self.emptyings);
        self.emptied.push_back((ring, self.emptyings));
        self.empty += 1;
        self.forget_empty_rings();
    }

    /// `ring` is about to keep an event: it is no longer an empty ring. Its entry stays in
    /// `emptied`, passed over, until such entries outnumber those that stand.
    fn refilled(&mut self, ring: usize) {
        if self.rings[ring].empty_since.take().is_none() {
            return;
        }
        self.empty -= 1;
        if self.emptied.len() > 2 * self.empty + 1024 {
            let rings = &self.rings;
            self.emptied
                .retain(|&(ring, number)| rings.get(ring).is_some_and(|r| r.empty_since == Some(number)));
        }
    }

    /// What a client with these tokens and this id, resuming from `from`, is owed.
    pub fn replay<'t>(
        &self,
        from: ResumeFrom,
        tokens: impl Iterator<Item = &'t str> + Clone,
        id: &str,
        now: Instant,
    ) -> Replay {
        let way = self.way_to_replay(after(from), tokens.clone(), id);
        self.replay_by(way, from, tokens, id, now)
    }

    /// [`History::replay`], the way given.
    fn replay_by<'t>(
        &self,
        way: Way,
        from: ResumeFrom,
        tokens: impl Iterator<Item = &'t str> + Clone,
        id: &str,
        now: Instant,
    ) -> Replay {
        let after = after(from);
        let now = self.seconds(now);
        let gap =
            matches!(from, ResumeFrom::After(after) if after < self.first_id) || self.forgotten_up_to > after;
        let mut owed = Owed { after, gap, kept: Vec::new() };
        match way {
            Way::RingByRing(rings) => {
                for ring in rings {
                    let ring = &self.rings[ring];
                    let start = ring.kept.partition_point(|k| k.id <= after);
                    owed.lost(ring);
                    ring.kept.range(start..).for_each(|k| owed.take(k, self.is_too_old(k.at, now)));
                }
            }
            Way::BackFromNewest => {
                for (ring, k) in self.kept_after(after) {
                    if ring.audience.reaches(tokens.clone(), id) {
                        owed.lost(ring);
                        owed.take(k, self.is_too_old(k.at, now));
                    }
                }
            }
        }
        owed.kept.sort_unstable_by_key(|(id, _)| *id);
        let ahead = after > self.newest && after - self.newest <= self.lag_window;
        Replay {
            gap: owed.gap,
            frames: owed.kept.into_iter().map(|(_, frame)| frame.clone()).collect(),
            newest: if ahead { after } else { self.newest },
        }
    }

    /// How a resume from `after` finds what it is owed. Back from the newest event when that
    /// meets fewer events than there are rings to look at (a client of `room1` where each
    /// sender's `room1-<sender>` is a ring, or anyone where each actor's `*-<actor>` is), and
    /// when it is exact: a ring that lost an event after `after` to its own `--history` keeps
    /// later ones, so it is met on the way, but one that lost it to age or memory (or history
    /// off) may keep none. Otherwise ring by ring.
    fn way_to_replay<'t>(&self, after: u64, tokens: impl Iterator<Item = &'t str> + Clone, id: &str) -> Way {
        if !self.meets_every_loss_after(after) {
            return Way::RingByRing(self.reaching(tokens, id, usize::MAX).unwrap_or_default());
        }
        let events = usize::try_from(self.newest.saturating_sub(after)).unwrap_or(usize::MAX);
        self.reaching(tokens, id, events).map_or(Way::BackFromNewest, Way::RingByRing)
    }

    /// Whether every ring that let go of an event after `after` still keeps a later one: it
    /// lost it to its own `--history` alone, not to history off, age or memory.
    fn meets_every_loss_after(&self, after: u64) -> bool {
        self.limits.per_audience > 0 && after >= self.dropped_up_to
    }

    /// The kept events after `after` with their rings, newest first: the live entries of
    /// `order` from its back (stale ones are passed over) down to the first at or before it.
    fn kept_after(&self, after: u64) -> impl Iterator<Item = (&Ring, &Kept)> {
        let live = self.order.iter().rev().filter_map(|entry| {
            let ring = self.rings.get(entry.ring as usize)?;
            Some((ring, ring.kept.get(entry.number.wrapping_sub(ring.evicted) as usize)?))
        });
        live.take_while(move |(_, k)| k.id > after)
    }

    /// Events before now may be gone (the cluster's stream was lost): a resume from before
    /// now is told of a gap, and gets what is kept.
    pub fn new_epoch(&mut self) {
        self.first_id = self.newest + 1;
    }

    /// Nothing before `first_id` is known (a resume from before it is told of a gap); rings
    /// that were forgotten lost events up to `forgotten_up_to`. For a history rebuilt from its
    /// file: the run that wrote it started there, or this run does, when the file may miss
    /// events.
    pub fn begin(&mut self, first_id: u64, forgotten_up_to: u64) {
        self.first_id = first_id;
        self.forgotten_up_to = self.forgotten_up_to.max(forgotten_up_to);
    }

    /// Ids up to `newest` were handed out (by a run whose stop its file recorded).
    pub fn sequenced(&mut self, newest: u64) {
        self.newest = self.newest.max(newest);
    }

    /// The ring of `audience` lost events up to `up_to`, as a history rebuilt from its file
    /// learns of what was let go before it was written.
    pub fn mark_lost(&mut self, audience: &Audience, up_to: u64) {
        let ring = self.ring_for(audience);
        self.dropped_up_to = self.dropped_up_to.max(up_to);
        let r = &mut self.rings[ring];
        r.lost_up_to = r.lost_up_to.max(up_to);
        if r.kept.is_empty() {
            self.emptied_out(ring);
        }
    }

    /// Everything it holds at `now`, to write it down: the events in id order.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let now = self.seconds(now);
        let mut rings = Vec::with_capacity(self.rings.len());
        let mut events = Vec::with_capacity(self.events);
        for (_, ring) in &self.rings {
            for k in &ring.kept {
                let age = Duration::from_secs(u64::from(now.saturating_sub(k.at)));
                events.push(SnapshotEvent { id: k.id, ring: rings.len(), age, frame: k.frame.clone() });
            }
            rings.push((ring.audience.clone(), ring.lost_up_to));
        }
        events.sort_unstable_by_key(|e| e.id);
        Snapshot {
            first_id: self.first_id,
            forgotten_up_to: self.forgotten_up_to,
            rings,
            events,
            newest: self.newest,
        }
    }

    /// What it keeps.
    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    /// The newest id kept or sequenced.
    pub fn newest(&self) -> u64 {
        self.newest
    }

    /// Events and bytes kept, and the oldest id.
    pub fn figures(&self) -> HistoryFigures {
        // Entries before the first kept one are all stale: `kept_front` holds for each in turn.
        let oldest = self.order.iter().find_map(|o| self.kept_front(o)).map(|k| k.id);
        HistoryFigures { events: self.events as u64, bytes: self.bytes as u64, oldest }
    }

    fn seconds(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.origin).as_secs()).unwrap_or(u32::MAX)
    }

    /// Whether an event kept at `at` is past `--history-age` at `now` (both in seconds).
    fn is_too_old(&self, at: u32, now: u32) -> bool {
        u64::from(now.saturating_sub(at)) >= self.limits.max_age.as_secs()
    }

    /// The rings that can reach a client with these tokens and this id, each once; `None` when
    /// there are more than `most` to look at.
    fn reaching<'t>(
        &self,
        tokens: impl Iterator<Item = &'t str> + Clone,
        id: &str,
        most: usize,
    ) -> Option<Vec<usize>> {
        let mut rings: Vec<usize> = if tokens.clone().any(|t| t == "*") {
            if self.rings.len() > most {
                return None;
            }
            self.rings.iter().map(|(key, _)| key).collect()
        } else {
            let named = tokens.clone().flat_map(|t| self.rings_naming(t));
            let candidates = named.chain(self.broad.iter().copied());
            let rings: Vec<usize> = candidates.take(most.saturating_add(1)).collect();
            if rings.len() > most {
                return None;
            }
            rings
        };
        rings.sort_unstable();
        rings.dedup();
        rings.retain(|&ring| self.rings[ring].audience.reaches(tokens.clone(), id));
        Some(rings)
    }

    /// The rings whose audience names `token`.
    fn rings_naming(&self, token: &str) -> impl Iterator<Item = usize> + '_ {
        let token = Name::from(token);
        self.by_token.range((token.clone(), 0)..=(token, usize::MAX)).map(|(_, ring)| *ring)
    }

    /// The ring of `audience`, made (and indexed) if it is new.
    fn ring_for(&mut self, audience: &Audience) -> usize {
        if let Some(&ring) = self.by_audience.get(audience) {
            return ring;
        }
        let ring = self.rings.insert(Ring {
            audience: audience.clone(),
            kept: VecDeque::new(),
            lost_up_to: 0,
            evicted: 0,
            empty_since: None,
        });
        self.by_audience.insert(audience.clone(), ring);
        for target in &audience.targets {
            if let Target::Token(name) = target {
                self.by_token.insert((name.clone(), ring));
            }
        }
        if audience.targets.iter().any(|t| !matches!(t, Target::Token(_))) {
            self.broad.insert(ring);
        }
        ring
    }

    /// Lets go of the oldest event of `ring`.
    fn evict_front(&mut self, ring: usize) {
        let Some(k) = self.rings[ring].kept.pop_front() else { return };
        self.events -= 1;
        self.bytes -= k.frame.len();
        let r = &mut self.rings[ring];
        r.lost_up_to = r.lost_up_to.max(k.id);
        r.evicted = r.evicted.wrapping_add(1);
        if r.kept.is_empty() {
            self.emptied_out(ring);
        }
    }

    /// Lets go of the oldest events while they are too old or the bytes too many.
    fn evict_oldest(&mut self, now: u32) {
        while let Some(&front) = self.order.front() {
            let Some(kept) = self.kept_front(&front) else {
                self.order.pop_front();
                self.stale -= 1;
                continue;
            };
            if !self.is_too_old(kept.at, now) && self.bytes <= self.limits.max_bytes {
                break;
            }
            self.dropped_up_to = self.dropped_up_to.max(kept.id);
            self.order.pop_front();
            self.evict_front(front.ring as usize);
        }
    }

    /// The event of `entry`, which must come before every kept entry of `order`, if it is still
    /// kept. Every older event of its ring is gone (its entry came earlier, and left only with
    /// it), so it is kept exactly when it is its ring's oldest.
    fn kept_front(&self, entry: &Ordered) -> Option<&Kept> {
        let ring = self.rings.get(entry.ring as usize)?;
        ring.kept.front().filter(|_| ring.evicted == entry.number)
    }

    /// Rebuilds the order of all events from the rings, without the entries that left.
    fn compact_order(&mut self) {
        let mut order: Vec<(u64, Ordered)> = self
            .rings
            .iter()
            .flat_map(|(ring, r)| {
                let numbered = r.kept.iter().zip(0u32..);
                numbered.map(move |(k, i)| {
                    (k.id, Ordered { ring: ring as u32, number: r.evicted.wrapping_add(i) })
                })
            })
            .collect();
        order.sort_unstable_by_key(|(id, _)| *id);
        self.order = order.into_iter().map(|(_, o)| o).collect();
        self.stale = 0;
    }

    /// Forgets the rings that emptied first while more than [`MAX_EMPTY_RINGS`] are empty.
    fn forget_empty_rings(&mut self) {
        while self.empty > self.max_empty_rings {
            let Some((ring, number)) = self.emptied.pop_front() else { return };
            if self.rings.get(ring).is_some_and(|r| r.empty_since == Some(number)) {
                self.empty -= 1;
                self.forget(ring);
            }
        }
    }

    /// Forgets an empty ring. No entry of `order` names it, so its key may be taken by a new
    /// ring numbering from 0: it let go of its last event as that event's entry left the front
    /// of `order`, after the entries of all its earlier events (`order` is in id order), or it
    /// never kept one. (An event let go of by its own ring's limit leaves a stale entry, but
    /// never its ring's last event: that limit is at least 1, history off keeps nothing.)
    fn forget(&mut self, ring: usize) {
        let r = self.rings.remove(ring);
        self.forgotten_up_to = self.forgotten_up_to.max(r.lost_up_to);
        self.by_audience.remove(&r.audience);
        for target in &r.audience.targets {
            if let Target::Token(name) = target {
                self.by_token.remove(&(name.clone(), ring));
            }
        }
        self.broad.remove(&ring);
    }
}

/// The id a resume asks for what came after (0: from the earliest).
fn after(from: ResumeFrom) -> u64 {
    match from {
        ResumeFrom::Earliest => 0,
        ResumeFrom::After(after) => after,
    }
}

/// How [`History::replay`] finds the events.
#[derive(Debug)]
enum Way {
    /// Each of these rings (those that can reach the client), from after the id asked for.
    RingByRing(Vec<usize>),
    /// The newest events back to the id asked for, each whose ring can reach the client.
    BackFromNewest,
}

/// What a resume is owed, as it is found.
struct Owed<'a> {
    after: u64,
    gap: bool,
    kept: Vec<(u64, &'a Frame)>,
}

impl<'a> Owed<'a> {
    /// A ring that reaches the client: it is a gap if the ring let go of anything after.
    fn lost(&mut self, ring: &Ring) {
        self.gap |= ring.lost_up_to > self.after;
    }

    /// A kept event it would have received: owed, or a gap when past its age but not evicted
    /// yet (nothing was published since).
    fn take(&mut self, kept: &'a Kept, too_old: bool) {
        if too_old {
            self.gap = true;
        } else {
            self.kept.push((kept.id, &kept.frame));
        }
    }
}

/// Pushes onto `queue`, growing it by a quarter rather than doubling it when full: a kept
/// event's share of the queues is part of its memory budget, and a doubled queue is half empty.
fn push_back_snug<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.len() == queue.capacity() {
        queue.reserve_exact(queue.len() / 4 + 4);
    }
    queue.push_back(item);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::sse::encode_event;

    const FIRST: u64 = 1000;
    const HOUR: Duration = Duration::from_secs(3600);

    fn limits(per_audience: usize, max_bytes: usize) -> HistoryLimits {
        HistoryLimits { per_audience, max_age: HOUR, max_bytes }
    }

    fn to(targets: &[&str], except: Option<&str>) -> Audience {
        let target = |t: &&str| match t.strip_suffix('*') {
            Some("") => Target::All,
            Some(prefix) => Target::Prefix(prefix.into()),
            None => Target::Token((*t).into()),
        };
        Audience { targets: targets.iter().map(target).collect(), except: except.map(str::to_string) }
    }

    /// Appends events `FIRST`, `FIRST + 1`, … to these audiences, all at `origin`.
    fn history(limits: HistoryLimits, audiences: &[Audience], origin: Instant) -> History {
        let mut history = History::new(limits, FIRST, origin);
        for (i, audience) in audiences.iter().enumerate() {
            let id = FIRST + i as u64;
            history.append(id, audience, &encode_event(id, b"x"), origin);
        }
        history
    }

    fn ids(replay: &Replay) -> Vec<u64> {
        replay
            .frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).split("id: ").nth(1).unwrap()[..4].parse().unwrap())
            .collect()
    }

    /// What `replay` gives, checked against each way that is exact here: they must agree.
    fn resume(h: &History, from: ResumeFrom, tokens: &[&str], id: &str, now: Instant) -> Replay {
        let replay = h.replay(from, tokens.iter().copied(), id, now);
        let rings = h.reaching(tokens.iter().copied(), id, usize::MAX).unwrap();
        let by_rings = h.replay_by(Way::RingByRing(rings), from, tokens.iter().copied(), id, now);
        assert_eq!(replay, by_rings, "ring by ring");
        if h.meets_every_loss_after(after(from)) {
            let back = h.replay_by(Way::BackFromNewest, from, tokens.iter().copied(), id, now);
            assert_eq!(replay, back, "back from the newest");
        }
        replay
    }

    #[test]
    fn a_resume_gets_what_it_would_have_received_live_in_order() {
        let now = Instant::now();
        let audiences = [
            to(&["room1"], None),
            to(&["room2"], None),
            to(&["room*"], None),
            to(&["*"], None),
            to(&["room1"], Some("me")),
            to(&["room2", "room1"], None),
        ];
        let h = history(limits(10, 1 << 20), &audiences, now);
        let replay = resume(&h, ResumeFrom::After(FIRST), &["room1"], "me", now);
        assert_eq!((ids(&replay), replay.gap, replay.newest), (vec![1002, 1003, 1005], false, 1005));
        let replay = resume(&h, ResumeFrom::After(FIRST), &["room1"], "you", now);
        assert_eq!(ids(&replay), vec![1002, 1003, 1004, 1005]);
        let everything = resume(&h, ResumeFrom::Earliest, &["*"], "", now);
        assert_eq!((ids(&everything).len(), everything.gap), (6, false));
        assert_eq!(
            resume(&h, ResumeFrom::After(1005), &["room1"], "", now),
            Replay { gap: false, frames: vec![], newest: 1005 }
        );
    }

    #[test]
    fn an_event_lost_by_a_ring_that_reaches_the_client_is_a_gap_others_are_not() {
        let now = Instant::now();
        let h = history(
            limits(2, 1 << 20),
            &[to(&["a"], None), to(&["a"], None), to(&["a"], None), to(&["b"], None)],
            now,
        );
        let replay = resume(&h, ResumeFrom::After(FIRST), &["a"], "", now);
        assert_eq!(
            (ids(&replay), replay.gap),
            (vec![1001, 1002], false),
            "1000 was lost, but it was not after the id asked for"
        );
        let replay = resume(&h, ResumeFrom::Earliest, &["a"], "", now);
        assert!(replay.gap, "1000 is gone");
        assert!(!resume(&h, ResumeFrom::Earliest, &["b"], "", now).gap);
        assert_eq!(
            h.figures(),
            HistoryFigures {
                events: 3,
                bytes: 3 * encode_event(1000, b"x").len() as u64,
                oldest: Some(1001)
            }
        );
    }

    #[test]
    fn memory_lets_the_oldest_go_first_and_age_too() {
        let now = Instant::now();
        let frame = encode_event(FIRST, b"x").len();
        let h = history(limits(10, 2 * frame), &[to(&["a"], None), to(&["b"], None), to(&["a"], None)], now);
        assert_eq!(h.figures().oldest, Some(1001));
        assert!(resume(&h, ResumeFrom::After(FIRST), &["b", "a"], "", now).frames.len() == 2);
        assert!(resume(&h, ResumeFrom::Earliest, &["a"], "", now).gap);

        let later = now + HOUR;
        let replay = resume(&h, ResumeFrom::After(FIRST), &["a"], "", later);
        assert_eq!((replay.frames.len(), replay.gap), (0, true), "kept past --history-age: gone");
    }

    #[test]
    fn a_resume_a_little_ahead_of_this_node_goes_on_after_the_id_asked_for() {
        let now = Instant::now();
        let h = history(limits(10, 1 << 20), &[to(&["a"], None)], now).with_lag_window(10);
        assert_eq!(resume(&h, ResumeFrom::After(FIRST + 10), &["a"], "", now).newest, FIRST + 10);
        assert_eq!(resume(&h, ResumeFrom::After(FIRST + 11), &["a"], "", now).newest, FIRST, "not believed");
        let alone = history(limits(10, 1 << 20), &[to(&["a"], None)], now);
        assert_eq!(resume(&alone, ResumeFrom::After(FIRST + 1), &["a"], "", now).newest, FIRST);
    }

    #[test]
    fn a_resume_from_before_this_server_started_is_told_of_a_gap() {
        let now = Instant::now();
        let h = history(limits(10, 1 << 20), &[to(&["a"], None)], now);
        assert!(resume(&h, ResumeFrom::After(FIRST - 1), &["zzz"], "", now).gap);
        assert!(!resume(&h, ResumeFrom::After(FIRST), &["zzz"], "", now).gap);
        let off = history(limits(0, 1 << 20), &[to(&["a"], None)], now);
        let replay = resume(&off, ResumeFrom::Earliest, &["a"], "", now);
        assert_eq!((replay.frames.len(), replay.gap), (0, true), "history off: everything is gone");
        assert!(!resume(&off, ResumeFrom::Earliest, &["b"], "", now).gap);
    }

    #[test]
    fn a_ring_that_empties_again_and_again_counts_once_among_the_empty() {
        let now = Instant::now();
        let frame = encode_event(FIRST, b"x").len();
        // Memory for one event: each append lets go of the one before, emptying its ring. `z`
        // empties first and stays empty; `a` and `b` empty and fill again in turn.
        let mut h = History::new(limits(10, frame), FIRST, now).with_max_empty_rings(2);
        for (i, token) in ["z"].iter().chain(["a", "b"].iter().cycle().take(20)).enumerate() {
            let id = FIRST + i as u64;
            h.append(id, &to(&[token], None), &encode_event(id, b"x"), now);
        }
        assert_eq!((h.empty, h.rings.len(), h.forgotten_up_to), (2, 3, 0), "two empty rings, none forgotten");
        assert!(!resume(&h, ResumeFrom::After(FIRST + 5), &["c"], "", now).gap, "c lost nothing");
    }

    fn audience() -> impl Strategy<Value = Audience> {
        let target = prop::sample::select(vec!["a", "b", "ab", "a*", "*", "c"]);
        (prop::collection::vec(target, 1..3), prop::option::of(prop::sample::select(vec!["me", "you"])))
            .prop_map(|(targets, except)| to(&targets, except))
    }

    proptest! {
        /// A replay is exactly the kept events the client would have received live; it says
        /// there is a gap exactly when one of those is missing (or it asks from before the start).
        #[test]
        fn a_replay_is_exact_and_a_gap_never_invented(
            audiences in prop::collection::vec(audience(), 0..60),
            per_audience in 0usize..6,
            max_events in 1usize..40,
            after in (FIRST - 2)..(FIRST + 62),
            tokens in prop::sample::subsequence(vec!["a", "b", "ab", "c", "*"], 0..4),
            id in prop::sample::select(vec!["", "me", "you"]),
        ) {
            let now = Instant::now();
            let frame = encode_event(FIRST, b"x").len();
            let h = history(limits(per_audience, max_events * frame), &audiences, now);
            let replay = resume(&h, ResumeFrom::After(after), &tokens, id, now);
            let owed: Vec<u64> = audiences
                .iter()
                .enumerate()
                .map(|(i, a)| (FIRST + i as u64, a))
                .filter(|(event, a)| *event > after && a.reaches(tokens.iter().copied(), id))
                .map(|(event, _)| event)
                .collect();
            let got = ids(&replay);
            prop_assert!(got.iter().all(|e| owed.contains(e)), "replayed {:?}, owed {:?}", got, owed);
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(replay.gap, got != owed || after < FIRST, "replayed {:?}, owed {:?}", got, owed);
        }

        /// What is kept is what the limits leave, the oldest going first, while rings empty,
        /// are forgotten and their keys taken by new rings (whose events must never be taken
        /// for the forgotten ones'); a resume says there is a gap wherever one is.
        #[test]
        fn forgotten_rings_leave_what_is_kept_exact(
            audiences in prop::collection::vec(audience(), 0..80),
            per_audience in 0usize..4,
            max_events in 1usize..20,
            max_empty in 0usize..3,
            tokens in prop::sample::subsequence(vec!["a", "b", "ab", "c", "*"], 0..4),
        ) {
            let now = Instant::now();
            let frame = encode_event(FIRST, b"x").len();
            let mut h = History::new(limits(per_audience, max_events * frame), FIRST, now)
                .with_max_empty_rings(max_empty);
            let mut model: Vec<(u64, &Audience)> = Vec::new();
            for (i, audience) in audiences.iter().enumerate() {
                let id = FIRST + i as u64;
                h.append(id, audience, &encode_event(id, b"x"), now);
                model.push((id, audience));
                let same: Vec<u64> = model.iter().filter(|(_, a)| *a == audience).map(|(e, _)| *e).collect();
                if same.len() > per_audience {
                    model.retain(|(e, _)| *e != same[0]);
                }
                if model.len() > max_events {
                    model.remove(0);
                }
            }
            let empty = h.rings.iter().filter(|(_, r)| r.kept.is_empty()).count();
            prop_assert_eq!((h.empty, h.empty <= max_empty), (empty, true));
            let kept: Vec<u64> = h.snapshot(now).events.iter().map(|e| e.id).collect();
            let expected: Vec<u64> = model.iter().map(|(e, _)| *e).collect();
            prop_assert_eq!(&kept, &expected);
            let replay = resume(&h, ResumeFrom::Earliest, &tokens, "", now);
            let owed: Vec<u64> = audiences
                .iter()
                .enumerate()
                .filter(|(_, a)| a.reaches(tokens.iter().copied(), ""))
                .map(|(i, _)| FIRST + i as u64)
                .collect();
            prop_assert!(replay.gap || ids(&replay) == owed, "replayed {:?}, owed {:?}", ids(&replay), owed);
        }
    }
}
