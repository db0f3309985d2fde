//! The per-shard subscription index: which streams listen to which tokens.
//!
//! Owns the map from token to stream keys, ordered so that a `pre*` publish is a range scan,
//! and the list of `*` subscribers. A publish to one token costs what it delivers, not a scan of
//! every stream. It says when a token appears in or leaves it, for the node-wide view of which
//! shards hold which token ([`crate::reach`]). It knows nothing of sockets or connections: it
//! speaks of streams.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use slab::Slab;

use super::keys::StreamKey;
use crate::event::{Name, Target};

pub use crate::reach::EVERYTHING;

/// Token → subscribed stream keys, plus the `*` subscribers.
///
/// Keys are 4 bytes ([`StreamKey`]), and a token with one subscriber, the common case of a
/// per-user token, keeps it in its entry: no allocation. A token with many (`*`, a room, `all`)
/// keeps them in a B-tree: a connection joins and leaves it in O(log n), where a list made each
/// close scan it, and closing everyone quadratic.
#[derive(Debug, Default)]
pub struct Subscriptions {
    /// A name of up to 15 bytes sits in the B-tree's node: a delivery's search compares bytes
    /// beside each other, not a pointer's target per comparison.
    by_token: BTreeMap<Name, Keys>,
    /// The streams of each token with more than one, where its [`Keys::Many`] points. Kept
    /// apart, so that an entry of `by_token` holds 8 bytes beside its name, not a pointer and a
    /// tag: on a node where every client has a token of its own, the index holds one per client.
    crowds: Slab<BTreeSet<StreamKey>>,
    everything: BTreeSet<StreamKey>,
}

/// The streams subscribed to one token: 8 bytes.
#[derive(Debug, Clone, Copy)]
enum Keys {
    One(StreamKey),
    Many(Crowd),
}

/// A set's place in [`Subscriptions::crowds`], in 4 bytes.
#[derive(Debug, Clone, Copy)]
struct Crowd(u32);

impl Crowd {
    fn place(self) -> usize {
        self.0 as usize
    }
}

impl Subscriptions {
    /// Subscribes connection `key` to each of `tokens` (already free of duplicates), calling
    /// `first` with each token no stream listened to before.
    pub fn add<'a>(
        &mut self,
        key: StreamKey,
        tokens: impl Iterator<Item = &'a str>,
        mut first: impl FnMut(&str),
    ) {
        for token in tokens {
            if token == EVERYTHING {
                if self.everything.is_empty() {
                    first(EVERYTHING);
                }
                self.everything.insert(key);
            } else if let Some(keys) = self.by_token.get_mut(token) {
                match *keys {
                    Keys::One(only) => *keys = Keys::Many(crowd_of(&mut self.crowds, [only, key])),
                    Keys::Many(crowd) => {
                        self.crowds[crowd.place()].insert(key);
                    }
                }
            } else {
                first(token);
                self.by_token.insert(token.into(), Keys::One(key));
            }
        }
    }

    /// Removes connection `key` from each of `tokens`, forgetting tokens nobody listens to, and
    /// calling `last` with each.
    pub fn remove<'a>(
        &mut self,
        key: StreamKey,
        tokens: impl Iterator<Item = &'a str>,
        mut last: impl FnMut(&str),
    ) {
        for token in tokens {
            if token == EVERYTHING {
                if self.everything.remove(&key) && self.everything.is_empty() {
                    last(token);
                }
                continue;
            }
            let Some(&keys) = self.by_token.get(token) else { continue };
            let gone = match keys {
                Keys::One(only) => only == key,
                Keys::Many(crowd) => {
                    let streams = &mut self.crowds[crowd.place()];
                    streams.remove(&key);
                    streams.is_empty()
                }
            };
            if gone {
                if let Keys::Many(crowd) = keys {
                    self.crowds.remove(crowd.place());
                }
                self.by_token.remove(token);
                last(token);
            }
        }
    }

    /// Calls `visit` for each stream of `keys`.
    fn each(&self, keys: Keys, visit: &mut impl FnMut(StreamKey)) {
        match keys {
            Keys::One(key) => visit(key),
            Keys::Many(crowd) => self.crowds[crowd.place()].iter().for_each(|&key| visit(key)),
        }
    }

    /// How many streams `keys` holds.
    fn len(&self, keys: Keys) -> usize {
        match keys {
            Keys::One(_) => 1,
            Keys::Many(crowd) => self.crowds[crowd.place()].len(),
        }
    }

    /// Calls `visit` for every connection that `target` reaches, `*` subscribers included.
    ///
    /// A connection with several matching tokens is visited once per token; the caller keeps
    /// each delivery unique. `Target::All` is not answered here: every handshaked connection
    /// is a recipient, and the shard walks its own connections for that.
    pub fn for_each_match(&self, target: &Target, mut visit: impl FnMut(StreamKey)) {
        self.everything.iter().for_each(|&key| visit(key));
        match target {
            Target::All => {}
            Target::Token(token) => {
                if let Some(&keys) = self.by_token.get(token.as_str()) {
                    self.each(keys, &mut visit);
                }
            }
            Target::Prefix(prefix) => {
                let from = Bound::Included(prefix.as_str());
                for (token, &keys) in self.by_token.range::<str, _>((from, Bound::Unbounded)) {
                    if !token.starts_with(prefix.as_str()) {
                        break;
                    }
                    self.each(keys, &mut visit);
                }
            }
        }
    }

    /// How many connections listen to exactly `token` (`*` subscribers are not counted).
    pub fn count_exact(&self, token: &str) -> usize {
        self.by_token.get(token).map_or(0, |&keys| self.len(keys))
    }

    /// Calls `visit` for every connection that listens to exactly `token`.
    pub fn for_each_exact(&self, token: &str, mut visit: impl FnMut(StreamKey)) {
        if let Some(&keys) = self.by_token.get(token) {
            self.each(keys, &mut visit);
        }
    }

    /// How many streams a publish to `token` reaches: its subscribers and the `*` ones, each
    /// once. From the sets' sizes, without a walk, unless a stream is in both (then only the
    /// smaller set is walked).
    pub fn count_reached(&self, token: &str) -> usize {
        let Some(&keys) = self.by_token.get(token) else { return self.everything.len() };
        if self.everything.is_empty() {
            return self.len(keys);
        }
        let both = match keys {
            Keys::One(key) => usize::from(self.everything.contains(&key)),
            Keys::Many(crowd) => {
                let streams = &self.crowds[crowd.place()];
                if streams.len() <= self.everything.len() {
                    streams.iter().filter(|key| self.everything.contains(key)).count()
                } else {
                    self.everything.iter().filter(|key| streams.contains(key)).count()
                }
            }
        };
        self.len(keys) + self.everything.len() - both
    }
}

/// Puts the set of `streams` in `crowds`, and says where.
fn crowd_of(crowds: &mut Slab<BTreeSet<StreamKey>>, streams: [StreamKey; 2]) -> Crowd {
    let place = crowds.insert(BTreeSet::from(streams));
    // A crowd holds two streams or more, each a distinct 32-bit key: fewer than 2^31 of them.
    Crowd(u32::try_from(place).expect("fewer crowds than stream keys"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens<'a>(list: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
        list.iter().copied()
    }

    /// Stream `n` (over HTTP/1.1, that of connection `n`).
    fn stream(n: usize) -> StreamKey {
        StreamKey::on(super::super::keys::ConnKey::new(n).unwrap())
    }

    fn matches(subs: &Subscriptions, target: Target) -> Vec<usize> {
        let mut keys = Vec::new();
        subs.for_each_match(&target, |k| keys.push(k.connection().index()));
        keys.sort_unstable();
        keys
    }

    fn index() -> Subscriptions {
        let mut subs = Subscriptions::default();
        subs.add(stream(1), tokens(&["room1", "user1"]), |_| {});
        subs.add(stream(2), tokens(&["room2"]), |_| {});
        subs.add(stream(3), tokens(&["*"]), |_| {});
        subs.add(stream(4), tokens(&["room", "roomy"]), |_| {});
        subs.add(stream(5), tokens(&["rom"]), |_| {});
        subs
    }

    #[test]
    fn exact_token_reaches_its_subscribers_and_wildcards() {
        let subs = index();
        assert_eq!(matches(&subs, Target::Token("room1".into())), vec![1, 3]);
        assert_eq!(matches(&subs, Target::Token("nobody".into())), vec![3]);
    }

    #[test]
    fn prefix_reaches_every_token_that_starts_with_it() {
        let subs = index();
        // Stream 4 matches twice (room, roomy): the caller de-duplicates.
        assert_eq!(matches(&subs, Target::Prefix("room".into())), vec![1, 2, 3, 4, 4]);
        assert_eq!(matches(&subs, Target::Prefix("ro".into())), vec![1, 2, 3, 4, 4, 5]);
        assert_eq!(matches(&subs, Target::Prefix("user".into())), vec![1, 3]);
        assert_eq!(matches(&subs, Target::Prefix("z".into())), vec![3]);
    }

    #[test]
    fn remove_forgets_the_stream_everywhere() {
        let mut subs = index();
        subs.remove(stream(1), tokens(&["room1", "user1"]), |_| {});
        subs.remove(stream(3), tokens(&["*"]), |_| {});
        assert_eq!(matches(&subs, Target::Token("room1".into())), Vec::<usize>::new());
        assert_eq!(matches(&subs, Target::Prefix("room".into())), vec![2, 4, 4]);
        assert!(!subs.by_token.contains_key("room1"));
    }

    #[test]
    fn a_token_s_first_and_last_stream_are_told() {
        let mut subs = Subscriptions::default();
        let mut told = Vec::new();
        subs.add(stream(1), tokens(&["room1", "*"]), |t| told.push(format!("+{t}")));
        subs.add(stream(2), tokens(&["room1", "*", "user2"]), |t| told.push(format!("+{t}")));
        assert_eq!(told, ["+room1", "+*", "+user2"]);
        told.clear();
        subs.remove(stream(1), tokens(&["room1", "*"]), |t| told.push(format!("-{t}")));
        assert_eq!(told, Vec::<String>::new(), "stream 2 still listens");
        subs.remove(stream(2), tokens(&["room1", "*", "user2"]), |t| told.push(format!("-{t}")));
        assert_eq!(told, ["-room1", "-*", "-user2"]);
        subs.remove(stream(2), tokens(&["room1", "*"]), |t| told.push(format!("again {t}")));
        assert_eq!(told.len(), 3, "a stream removed twice is not told twice");
    }

    #[test]
    fn count_exact_ignores_wildcards_and_prefixes() {
        let mut subs = index();
        subs.add(stream(6), tokens(&["room1"]), |_| {});
        assert_eq!(subs.count_exact("room1"), 2);
        assert_eq!(subs.count_exact("room"), 1);
        assert_eq!(subs.count_exact("*"), 0);
        assert_eq!(subs.count_exact("absent"), 0);
    }

    #[test]
    fn count_reached_counts_each_stream_a_publish_reaches_once() {
        let mut subs = index();
        assert_eq!(subs.count_reached("room1"), 2, "its subscriber and the * one");
        assert_eq!(subs.count_reached("nobody"), 1);
        subs.add(stream(7), tokens(&["*", "room1"]), |_| {});
        subs.add(stream(8), tokens(&["room1"]), |_| {});
        assert_eq!(subs.count_reached("room1"), 4, "stream 7 is in both, counted once");
        for token in ["room1", "room2", "user1", "nobody"] {
            assert_eq!(subs.count_reached(token), {
                let mut seen = Vec::new();
                subs.for_each_match(&Target::Token(token.into()), |k| seen.push(k));
                seen.sort_unstable();
                seen.dedup();
                seen.len()
            });
        }
        let mut exact = Vec::new();
        subs.for_each_exact("room1", |k| exact.push(k.connection().index()));
        exact.sort_unstable();
        assert_eq!(exact, [1, 7, 8]);
    }

    #[test]
    fn a_crowd_is_let_go_with_its_token_s_last_stream() {
        assert_eq!(std::mem::size_of::<Keys>(), 8);
        let mut subs = Subscriptions::default();
        for round in 0..3 {
            for n in 0..4 {
                subs.add(stream(n), tokens(&["room", &format!("user{n}")]), |_| {});
            }
            assert_eq!(subs.count_exact("room"), 4, "round {round}");
            assert_eq!(subs.crowds.len(), 1, "one crowd, for `room`");
            for n in 0..4 {
                subs.remove(stream(n), tokens(&["room", &format!("user{n}")]), |_| {});
            }
            assert!(subs.by_token.is_empty() && subs.crowds.is_empty(), "round {round}");
        }
    }

    #[test]
    fn a_large_index_stays_exact() {
        let mut subs = Subscriptions::default();
        for key in 0..100_000 {
            subs.add(stream(key), tokens(&["all", &format!("c{key}")]), |_| {});
        }
        assert_eq!(matches(&subs, Target::Token("c4242".into())), vec![4242]);
        assert_eq!(subs.count_exact("all"), 100_000);
        assert_eq!(matches(&subs, Target::Prefix("c9999".into())).len(), 11);
    }
}
