//! Where the stream is cut: what no node's history needs and no node has still to read.
//!
//! Owns the rule, as pure functions over ids and byte counts; the outbox applies it with
//! `XTRIM MINID ~` every beat. The stream is the cluster's history: a node that starts reads it
//! whole into its rings, so it keeps what the rings may hold, and no more:
//! - nothing older than `--history-age`;
//! - nothing older than the oldest event this node's rings still keep (they let events go by
//!   `--history` per audience and `--history-memory` in all);
//! - no more than `--history-memory` of entries' bytes, counted as the backfill and the tail
//!   read them (an old event of a quiet audience would otherwise hold back the cut, and every
//!   busier audience's entries since with it).
//!
//! Whatever those say, an entry some node has not read yet stays: each node says where its
//! tail is in a key that lives for `--history-age` (10 s at least) after its last beat, so a
//! node cut off from Redis, or stopped with SIGSTOP, reads on where it left off when it is
//! back within that time (one away longer checks, and starts a new epoch if it was passed).
//! Nodes of a cluster share their `--history*` settings: the node that keeps least cuts for
//! all.

use std::collections::VecDeque;

use super::entry::StreamId;

/// How many marks [`StreamBytes`] keeps per `--history-memory`: the cut keeps between
/// 1 − 1/MARKS and all of it.
const MARKS: u64 = 32;

/// Where the stream may be cut (`XTRIM MINID`: entries before it go), or `None` for nowhere.
///
/// `wanted` are the cuts the history's limits ask for (age, the rings' oldest, memory);
/// `positions` the entries each live node read last, this one's included: none of them, nor
/// what follows, goes.
pub fn cut(wanted: &[StreamId], positions: impl IntoIterator<Item = StreamId>) -> Option<StreamId> {
    let slowest = positions.into_iter().min()?;
    let wanted = wanted.iter().copied().max()?;
    Some(wanted.min(slowest)).filter(|&cut| cut > StreamId::ZERO)
}

/// The entries' bytes the tail read, as a few marks: enough to say where the stream's newest
/// `limit` bytes begin, in constant memory.
#[derive(Debug)]
pub struct StreamBytes {
    limit: u64,
    /// Bytes read in all.
    total: u64,
    /// Entries where a mark was set, with the bytes read before each, oldest first: a mark
    /// every `limit / MARKS` bytes, none of them more than `limit` from the end.
    marks: VecDeque<(StreamId, u64)>,
    /// The last entry read.
    last: StreamId,
}

impl StreamBytes {
    /// Marks for a stream to be kept to `limit` bytes.
    pub fn new(limit: u64) -> StreamBytes {
        StreamBytes { limit: limit.max(1), total: 0, marks: VecDeque::new(), last: StreamId::ZERO }
    }

    /// Entry `id`, of `bytes` bytes, was read (by the backfill or the tail).
    pub fn read(&mut self, id: StreamId, bytes: u64) {
        let step = (self.limit / MARKS).max(1);
        // An entry of a step or more gets a mark of its own, so that it is not cut with the
        // smaller ones before it when it alone fits.
        if bytes >= step || self.marks.back().is_none_or(|&(_, before)| self.total - before >= step) {
            self.marks.push_back((id, self.total));
        }
        self.total += bytes;
        self.last = id;
        while self.marks.front().is_some_and(|&(_, before)| self.total - before > self.limit) {
            self.marks.pop_front();
        }
    }

    /// Where the newest entries of at most `limit` bytes begin, to a mark's precision:
    /// [`StreamId::ZERO`] (nothing to cut) while all that was read fits, just after the last
    /// entry when that one alone is over.
    pub fn cut(&self) -> StreamId {
        if self.total <= self.limit {
            return StreamId::ZERO;
        }
        match self.marks.front() {
            Some(&(id, _)) => id,
            None => StreamId { ms: self.last.ms, seq: self.last.seq.saturating_add(1) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    #[test]
    fn the_cut_is_the_strictest_limit_held_back_by_the_slowest_node() {
        assert_eq!(cut(&[id(10), id(30), id(20)], [id(50), id(40)]), Some(id(30)));
        // A node that has read only up to 25 keeps 25 and what follows.
        assert_eq!(cut(&[id(10), id(30)], [id(50), id(25)]), Some(id(25)));
        assert_eq!(cut(&[StreamId::ZERO], [id(50)]), None);
        assert_eq!(cut(&[id(10)], []), None);
    }

    #[test]
    fn stream_bytes_cut_where_the_newest_limit_bytes_begin() {
        let mut bytes = StreamBytes::new(3200);
        for ms in 1..=100 {
            bytes.read(id(ms), 100);
        }
        // 10,000 bytes read: the newest 3,200 are entries 69 to 100; a mark every 100 bytes.
        assert_eq!(bytes.cut(), id(69));
        assert!(bytes.marks.len() <= MARKS as usize + 2, "{} marks", bytes.marks.len());
        // All that was read fits: nothing is cut, not even what came before the first read.
        let mut fits = StreamBytes::new(1 << 20);
        assert_eq!(fits.cut(), StreamId::ZERO);
        fits.read(id(1), 100);
        assert_eq!(fits.cut(), StreamId::ZERO);
        let mut over = StreamBytes::new(50);
        over.read(id(7), 100);
        assert_eq!(over.cut(), StreamId { ms: 7, seq: 1 });
        // A large entry that fits alone is kept, whatever small ones came before it.
        let mut large = StreamBytes::new(3200);
        large.read(id(1), 10);
        large.read(id(2), 3195);
        assert_eq!(large.cut(), id(2));
    }

    #[test]
    fn stream_bytes_keep_at_most_the_limit_and_most_of_it_whatever_the_sizes() {
        let mut bytes = StreamBytes::new(64 * 1024);
        let mut read: Vec<(StreamId, u64)> = Vec::new();
        for ms in 1..=5000u64 {
            // Mostly under a step (2,048 bytes here), now and then a few steps' worth.
            let size = if ms % 97 == 0 { 9000 } else { 1 + (ms * 7919) % 700 };
            bytes.read(id(ms), size);
            read.push((id(ms), size));
            let kept: u64 = read.iter().filter(|(at, _)| *at >= bytes.cut()).map(|(_, s)| s).sum();
            let total: u64 = read.iter().map(|(_, s)| s).sum();
            assert!(kept <= 64 * 1024, "kept {kept}");
            assert!(kept >= total.min(64 * 1024 - 64 * 1024 / MARKS - 9000), "kept {kept} of {total}");
        }
        assert!(bytes.marks.len() <= MARKS as usize + 2);
    }
}
