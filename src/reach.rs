//! Which shards hold a subscriber of which token: the node-wide view a fan-out reads to send a
//! targeted event only to the shards it can reach.
//!
//! Owns, per token, the set of shards where at least one stream listens to it, and the set of
//! shards with a `*` subscriber. A shard changes only its own bit, when a token appears in or
//! leaves its own index (`shard::subscriptions`), not per connection: a thousand clients of
//! `room1` on a shard cost one bit. A fan-out asks [`Reach::shards_for`] for the shards of a
//! targeted event; an event to `*` goes to every shard without asking. It does not know
//! connections, and it never decides who gets an event within a shard.
//!
//! # Never skipping a shard that has a subscriber
//! A client must get every event published after it subscribed, and may get none published
//! before (the handshake's stamp, `SharedState::published`; see `shard::delivery`). The race
//! is a handshake on shard S subscribing to `t` while an event `e` to `t` is fanned out. The
//! two sides order their steps so that one of them always sees the other:
//! - the fan-out stores `published = e` (and appends `e` to the history) *before* it takes
//!   this view's lock to read who holds `t`;
//! - the handshake sets S's bit for `t` under this view's lock (or finds it set: S's index
//!   already held `t`, and only S's own thread clears S's bit) *before* it reads the history
//!   for a resume and `published` for its stamp.
//!
//! The lock orders the fan-out's read and S's write. If the read comes after, it sees the bit
//! and S gets `e`. If it comes before, the fan-out's store of `published` happened before S
//! took the lock, so S's stamp is at least `e` (and a resume's history read finds `e`): `e`
//! was published before the client subscribed and is not owed to it. A bit left set after a
//! shard's last subscriber of a token left costs one needless send, never a lost event; the
//! bit is cleared when the shard's index forgets the token. The shard sets bits before and
//! clears them after the fan-out holds no lock: the fan-out reads the set, lets the lock go,
//! and only then sends (a send may wait on a full shard, which may be taking this lock).

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use crate::event::{Audience, Name, Target};

/// The token a client subscribes with to get every event.
pub const EVERYTHING: &str = "*";

/// Shards by number, one bit each for the first 64. Shards from 64 on are not told apart:
/// every set holds them, so a targeted event always goes to them (on a node of more than 64
/// workers, a needless send there, never a lost event). Eight bytes: the view holds one per
/// token subscribed to, so on a node where every client has a token of its own, one per client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardSet(u64);

/// The shards a [`ShardSet`] tells apart.
const TOLD_APART: usize = 64;

impl ShardSet {
    /// Adds `shard`.
    pub fn insert(&mut self, shard: usize) {
        if shard < TOLD_APART {
            self.0 |= 1 << shard;
        }
    }

    /// Takes `shard` out; true when none of the shards told apart is left.
    fn remove(&mut self, shard: usize) -> bool {
        if shard < TOLD_APART {
            self.0 &= !(1 << shard);
        }
        self.is_empty()
    }

    /// Whether `shard` is in (every shard from 64 on is).
    pub fn contains(&self, shard: usize) -> bool {
        shard >= TOLD_APART || self.0 & (1 << shard) != 0
    }

    /// Whether none of the shards told apart is in.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// Adds every shard of `other`.
    fn add_all(&mut self, other: &ShardSet) {
        self.0 |= other.0;
    }

    /// Whether every shard below `count` is in.
    fn holds_all(&self, count: usize) -> bool {
        (0..count.min(TOLD_APART)).all(|shard| self.contains(shard))
    }

    /// Empties it.
    pub fn clear(&mut self) {
        self.0 = 0;
    }
}

/// Which shards hold a subscriber of which token (see the module doc).
#[derive(Debug, Default)]
pub struct Reach {
    held: RwLock<Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// Token → shards with a stream listening to it; a token no shard holds is not here. A
    /// name of up to 15 bytes sits in the B-tree's node itself: a fan-out's search down it
    /// compares bytes beside each other rather than following a pointer per comparison.
    by_token: BTreeMap<Name, ShardSet>,
    /// Shards with a `*` subscriber: they get every event.
    everything: ShardSet,
}

impl Reach {
    /// Shard `shard` now has a stream listening to `token` (its first).
    pub fn hold(&self, shard: usize, token: &str) {
        if shard >= TOLD_APART {
            // It gets every targeted event: nothing to note.
            return;
        }
        let mut held = self.held.write();
        if token == EVERYTHING {
            held.everything.insert(shard);
        } else if let Some(shards) = held.by_token.get_mut(token) {
            shards.insert(shard);
        } else {
            let mut shards = ShardSet::default();
            shards.insert(shard);
            held.by_token.insert(token.into(), shards);
        }
    }

    /// Shard `shard`'s last stream listening to `token` is gone.
    pub fn let_go(&self, shard: usize, token: &str) {
        if shard >= TOLD_APART {
            return;
        }
        let mut held = self.held.write();
        if token == EVERYTHING {
            held.everything.remove(shard);
        } else if let Some(shards) = held.by_token.get_mut(token) {
            if shards.remove(shard) {
                held.by_token.remove(token);
            }
        }
    }

    /// Fills `into` with the shards below `count` a targeted `audience` can reach: those
    /// holding one of its tokens, a token one of its prefixes starts, or a `*` subscriber. A
    /// prefix's scan stops once every shard is in. (An audience with `*` among its targets
    /// reaches every shard: the caller does not ask.)
    pub fn shards_for(&self, audience: &Audience, count: usize, into: &mut ShardSet) {
        into.clear();
        let held = self.held.read();
        into.add_all(&held.everything);
        for target in &audience.targets {
            match target {
                Target::All => (0..count).for_each(|shard| into.insert(shard)),
                Target::Token(token) => {
                    if let Some(shards) = held.by_token.get(token.as_str()) {
                        into.add_all(shards);
                    }
                }
                Target::Prefix(prefix) => {
                    let from = Bound::Included(prefix.as_str());
                    for (token, shards) in held.by_token.range::<str, _>((from, Bound::Unbounded)) {
                        if !token.starts_with(prefix.as_str()) || into.holds_all(count) {
                            break;
                        }
                        into.add_all(shards);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn audience(targets: &[Target]) -> Audience {
        Audience { targets: targets.iter().cloned().collect(), except: None }
    }

    fn token(name: &str) -> Target {
        Target::Token(name.into())
    }

    fn prefix(name: &str) -> Target {
        Target::Prefix(name.into())
    }

    /// The shards below `count` that `reach` sends `targets` to.
    fn shards(reach: &Reach, targets: &[Target], count: usize) -> Vec<usize> {
        let mut set = ShardSet::default();
        reach.shards_for(&audience(targets), count, &mut set);
        (0..count).filter(|&shard| set.contains(shard)).collect()
    }

    #[test]
    fn a_token_goes_to_the_shards_that_hold_it_and_those_with_a_star() {
        let reach = Reach::default();
        reach.hold(0, "room1");
        reach.hold(2, "room1");
        reach.hold(1, "user7");
        assert_eq!(shards(&reach, &[token("room1")], 4), [0, 2]);
        assert_eq!(shards(&reach, &[token("user7")], 4), [1]);
        assert_eq!(shards(&reach, &[token("nobody")], 4), Vec::<usize>::new());
        reach.hold(3, EVERYTHING);
        assert_eq!(shards(&reach, &[token("nobody")], 4), [3]);
        assert_eq!(shards(&reach, &[token("room1"), token("user7")], 4), [0, 1, 2, 3]);
        assert_eq!(shards(&reach, &[Target::All], 4), [0, 1, 2, 3]);
        reach.let_go(3, EVERYTHING);
        reach.let_go(0, "room1");
        assert_eq!(shards(&reach, &[token("room1")], 4), [2]);
        reach.let_go(2, "room1");
        assert!(!reach.held.read().by_token.contains_key("room1"), "a token nobody holds is forgotten");
    }

    #[test]
    fn a_prefix_goes_to_every_shard_holding_a_token_it_starts() {
        let reach = Reach::default();
        reach.hold(0, "room");
        reach.hold(1, "roomy");
        reach.hold(2, "rom");
        reach.hold(3, "user1");
        assert_eq!(shards(&reach, &[prefix("room")], 4), [0, 1]);
        assert_eq!(shards(&reach, &[prefix("ro")], 4), [0, 1, 2]);
        assert_eq!(shards(&reach, &[prefix("roomz")], 4), Vec::<usize>::new());
        assert_eq!(shards(&reach, &[prefix("r"), prefix("u")], 4), [0, 1, 2, 3]);
    }

    #[test]
    fn shards_past_sixty_four_get_every_targeted_event() {
        let reach = Reach::default();
        reach.hold(3, "t");
        reach.hold(1000, "t");
        let expected: Vec<usize> = std::iter::once(3).chain(64..1024).collect();
        assert_eq!(shards(&reach, &[token("t")], 1024), expected);
        assert_eq!(shards(&reach, &[token("u")], 1024), (64..1024).collect::<Vec<_>>(), "never skipped");
        reach.let_go(1000, "t");
        reach.let_go(3, "t");
        assert!(!reach.held.read().by_token.contains_key("t"));
        assert_eq!(std::mem::size_of::<ShardSet>(), 8);
    }

    proptest! {
        /// After any subscribes and closes, the shards an event goes to are exactly those where
        /// a stream listens to a token it reaches (or to `*`): none skipped, none extra.
        #[test]
        fn the_view_matches_the_shards_indexes(
            steps in prop::collection::vec((0..5usize, 0..6usize, any::<bool>()), 0..200),
            targets in prop::collection::vec((0..6usize, any::<bool>()), 1..3),
        ) {
            const TOKENS: [&str; 6] = ["a", "ab", "abc", "b", "ba", EVERYTHING];
            let reach = Reach::default();
            // Per shard, per token: how many streams listen (the shard's own index).
            let mut streams = [[0u32; TOKENS.len()]; 5];
            for (shard, token, subscribe) in steps {
                let count = &mut streams[shard][token];
                if subscribe {
                    *count += 1;
                    if *count == 1 {
                        reach.hold(shard, TOKENS[token]);
                    }
                } else if *count > 0 {
                    *count -= 1;
                    if *count == 0 {
                        reach.let_go(shard, TOKENS[token]);
                    }
                }
            }
            let targets: Vec<Target> = targets
                .into_iter()
                .filter(|&(index, _)| TOKENS[index] != EVERYTHING)
                .map(|(index, is_prefix)| if is_prefix { prefix(TOKENS[index]) } else { token(TOKENS[index]) })
                .collect();
            prop_assume!(!targets.is_empty());
            let reached = |name: &str| targets.iter().any(|target| match target {
                Target::Token(t) => t == name,
                Target::Prefix(p) => name.starts_with(p.as_str()),
                Target::All => true,
            });
            let expected: Vec<usize> = (0..5)
                .filter(|&shard| {
                    TOKENS.iter().enumerate().any(|(i, name)| {
                        streams[shard][i] > 0 && (*name == EVERYTHING || reached(name))
                    })
                })
                .collect();
            prop_assert_eq!(shards(&reach, &targets, 5), expected);
        }
    }
}
