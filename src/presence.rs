//! Who is here: the rows a presence question is answered with, and the join/leave notices of
//! `--presence-events`, debounced across reconnects.
//!
//! Owns what a client's coming and going means to the others of its tokens: a client (by id)
//! that comes is announced once (`join`), whatever number of streams it opens; one whose last
//! stream ends is announced (`leave`) only if no stream of it comes back within the debounce
//! time, so that a phone changing networks is neither a leave nor a join. Pure: the clock is
//! passed in; the shards report the changes, the control thread publishes the notices.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::event::Target;

/// A client that would receive a publish to the token asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRow {
    /// Its id (`id=` or its token's `sub`); empty when it gave none.
    pub id: String,
    /// Its token's `sub`, when it came with one.
    pub sub: Option<String>,
    /// When its stream started (its last handshake), in Unix seconds.
    pub since: u64,
    /// The cluster node it is on (in cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What a presence question about `token` asks about: whom a publish to it reaches, read as a
/// publisher's target is: `*` is everyone, `pre*` every token starting with `pre` (what
/// follows the first `*` ignored), anything else that token.
pub fn asked_target(token: &str) -> Target {
    match token.split_once('*') {
        Some(("", _)) => Target::All,
        Some((prefix, _)) => Target::Prefix(prefix.into()),
        None => Target::Token(token.into()),
    }
}

/// A shard's word that a stream started or ended, for `--presence-events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Started (true) or ended.
    pub joined: bool,
    /// The client's id: a client without one takes no part.
    pub id: Box<str>,
    /// Its token's `sub`.
    pub sub: Option<Box<str>>,
    /// Its tokens, `*` left out.
    pub tokens: Vec<Box<str>>,
}

/// What the others of a token are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `event: join`.
    Join,
    /// `event: leave`.
    Leave,
}

impl Kind {
    /// The SSE event name.
    pub fn event(self) -> &'static str {
        match self {
            Kind::Join => "join",
            Kind::Leave => "leave",
        }
    }
}

/// A join or leave to publish to `token`, to everyone but the client it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Join or leave.
    pub kind: Kind,
    /// To whom: the token's subscribers.
    pub token: String,
    /// About whom.
    pub id: String,
    /// Its `sub`, if it has one.
    pub sub: Option<String>,
}

impl Notice {
    /// The event's data: `{"id":…,"sub":…}`; in a cluster also the `node` whose client it is,
    /// which every node's tail reads (see [`ClusterRoster`]) and takes out.
    pub fn data(&self, node: Option<&str>) -> String {
        notice_data(&self.id, self.sub.as_deref(), node)
    }
}

/// A notice's data as clients get it (`node`: `None`) or as a node publishes it in a cluster.
fn notice_data(id: &str, sub: Option<&str>, node: Option<&str>) -> String {
    match node {
        Some(node) => serde_json::json!({ "id": id, "sub": sub, "node": node }).to_string(),
        None => serde_json::json!({ "id": id, "sub": sub }).to_string(),
    }
}

/// A node's join or leave as the stream carries it, read back by every node's tail.
#[derive(Debug, Deserialize)]
struct NodeNotice {
    id: String,
    sub: Option<String>,
    node: String,
}

/// Who is on each token across a cluster, as every node reads it from the stream: each node
/// announces its own clients' joins and (debounced) leaves, and every tail, reading them in the
/// stream's one order, delivers a join only when the first node has the client and a leave only
/// when the last one lets it go. A client that moves from one node to another (a reconnect
/// through a load balancer) is then neither a leave nor a join, on every node alike.
#[derive(Debug, Default)]
pub struct ClusterRoster {
    nodes: HashMap<Key, Vec<Box<str>>>,
}

impl ClusterRoster {
    /// What to deliver of a stream event named `event` to `token` with `data`: `None` when it
    /// is a node's join or leave that changes nothing cluster-wide (skip it); the data to
    /// deliver otherwise (a notice's, without its node; anything else's, as it is).
    pub fn read(&mut self, event: Option<&str>, token: Option<&str>, data: &[u8]) -> Option<Vec<u8>> {
        let kind = match event {
            Some("join") => Kind::Join,
            Some("leave") => Kind::Leave,
            _ => return Some(data.to_vec()),
        };
        let (Some(token), Ok(notice)) = (token, serde_json::from_slice::<NodeNotice>(data)) else {
            return Some(data.to_vec());
        };
        let key: Key = (token.into(), notice.id.as_str().into());
        let nodes = self.nodes.entry(key.clone()).or_default();
        let announce = match kind {
            Kind::Join => {
                let first = nodes.is_empty();
                if !nodes.iter().any(|n| **n == *notice.node) {
                    nodes.push(notice.node.into());
                }
                first
            }
            Kind::Leave => {
                nodes.retain(|n| **n != *notice.node);
                nodes.is_empty()
            }
        };
        if nodes.is_empty() {
            self.nodes.remove(&key);
        }
        announce.then(|| notice_data(&notice.id, notice.sub.as_deref(), None).into_bytes())
    }
}

type Key = (Box<str>, Box<str>);

/// A client on a token, as a process hands it to its successor at an upgrade: the successor
/// expects it back, and says nothing of it unless it does not come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Present {
    /// The token.
    pub token: String,
    /// The client's id.
    pub id: String,
    /// Its token's `sub`.
    pub sub: Option<String>,
}

/// One client on one token.
#[derive(Debug)]
struct Here {
    streams: u32,
    sub: Option<Box<str>>,
    /// Its last stream ended: it leaves then unless one comes back.
    leaving_at: Option<Instant>,
}

/// Who is on each token, as far as joins and leaves go: the clients with a stream, and those
/// whose last stream ended less than the debounce time ago.
#[derive(Debug)]
pub struct Roster {
    debounce: Duration,
    here: HashMap<Key, Here>,
    /// Leaves in the order they fall due (the debounce is the same for all); one whose client
    /// came back is skipped when it comes up.
    leaving: VecDeque<(Instant, Key)>,
}

impl Roster {
    /// An empty roster whose leaves wait `debounce`.
    pub fn new(debounce: Duration) -> Self {
        Roster { debounce, here: HashMap::new(), leaving: VecDeque::new() }
    }

    /// Takes a shard's change at `now`; the joins to announce at once.
    pub fn change(&mut self, change: Change, now: Instant) -> Vec<Notice> {
        if change.id.is_empty() {
            return Vec::new();
        }
        let mut joins = Vec::new();
        for token in change.tokens {
            let key = (token, change.id.clone());
            if change.joined {
                joins.extend(self.joined(key, change.sub.clone()));
            } else {
                self.left(key, now);
            }
        }
        joins
    }

    /// A stream of this client on this token started: a join unless it is here already or
    /// was about to leave.
    fn joined(&mut self, key: Key, sub: Option<Box<str>>) -> Option<Notice> {
        if let Some(here) = self.here.get_mut(&key) {
            here.streams += 1;
            here.leaving_at = None;
            return None;
        }
        let notice = notice(Kind::Join, &key, sub.as_deref());
        self.here.insert(key, Here { streams: 1, sub, leaving_at: None });
        Some(notice)
    }

    /// A stream of this client on this token ended: with its last one it leaves, after the
    /// debounce time.
    fn left(&mut self, key: Key, now: Instant) {
        let Some(here) = self.here.get_mut(&key) else { return };
        here.streams = here.streams.saturating_sub(1);
        if here.streams == 0 {
            let at = now + self.debounce;
            here.leaving_at = Some(at);
            self.leave_at(at, key);
        }
    }

    /// Puts a leave in its place among those due (most come last: the debounce is the same).
    fn leave_at(&mut self, at: Instant, key: Key) {
        let place = self.leaving.partition_point(|(due, _)| *due <= at);
        self.leaving.insert(place, (at, key));
    }

    /// Everyone on every token, for a successor (an upgrade).
    pub fn present(&self) -> Vec<Present> {
        let row = |((token, id), here): (&Key, &Here)| Present {
            token: token.to_string(),
            id: id.to_string(),
            sub: here.sub.as_deref().map(str::to_owned),
        };
        self.here.iter().map(row).collect()
    }

    /// Takes in the clients a predecessor had (an upgrade): each is expected back within `away`
    /// (its drain and retry wait); one that comes is no join, one that does not leaves after
    /// `away` and the debounce time.
    pub fn expect_back(&mut self, present: Vec<Present>, now: Instant, away: Duration) {
        let at = now + away + self.debounce;
        for Present { token, id, sub } in present {
            let key: Key = (token.into(), id.into());
            self.here
                .insert(key.clone(), Here { streams: 0, sub: sub.map(Into::into), leaving_at: Some(at) });
            self.leave_at(at, key);
        }
    }

    /// The leaves due at `now`: clients whose last stream ended the debounce time ago and
    /// did not come back.
    pub fn due(&mut self, now: Instant) -> Vec<Notice> {
        let mut leaves = Vec::new();
        while let Some((at, _)) = self.leaving.front() {
            if *at > now {
                break;
            }
            let Some((at, key)) = self.leaving.pop_front() else { break };
            if self.here.get(&key).is_some_and(|here| here.leaving_at == Some(at)) {
                if let Some(here) = self.here.remove(&key) {
                    leaves.push(notice(Kind::Leave, &key, here.sub.as_deref()));
                }
            }
        }
        leaves
    }

    /// When the next leave may fall due.
    pub fn next_due(&self) -> Option<Instant> {
        self.leaving.front().map(|(at, _)| *at)
    }
}

fn notice(kind: Kind, (token, id): &Key, sub: Option<&str>) -> Notice {
    Notice { kind, token: token.to_string(), id: id.to_string(), sub: sub.map(str::to_owned) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBOUNCE: Duration = Duration::from_secs(3);

    #[test]
    fn a_client_moving_between_nodes_is_no_leave_and_no_join_cluster_wide() {
        let mut roster = ClusterRoster::default();
        let on = |node: &str| format!(r#"{{"id":"u1","sub":null,"node":"{node}"}}"#).into_bytes();
        let shown = br#"{"id":"u1","sub":null}"#.to_vec();
        assert_eq!(roster.read(Some("join"), Some("t"), &on("a")), Some(shown.clone()), "its first node");
        assert_eq!(roster.read(Some("join"), Some("t"), &on("b")), None, "it came to b too: no join");
        assert_eq!(roster.read(Some("leave"), Some("t"), &on("a")), None, "it left a, not the cluster");
        assert_eq!(roster.read(Some("leave"), Some("t"), &on("b")), Some(shown), "gone from the last node");
        assert!(roster.read(Some("join"), Some("u"), &on("a")).is_some(), "another token: its own");
        let plain = b"just a publish named join".to_vec();
        assert_eq!(roster.read(Some("join"), Some("t"), &plain), Some(plain.clone()), "not a notice");
        assert_eq!(roster.read(Some("chat"), Some("t"), &on("a")), Some(on("a")), "not a join or leave");
    }

    #[test]
    fn clients_handed_over_come_back_without_a_join_or_leave_when_they_do_not() {
        let now = Instant::now();
        let mut old = Roster::new(DEBOUNCE);
        old.change(change(true, "a", &["t"]), now);
        old.change(change(true, "b", &["t"]), now);
        let mut new = Roster::new(DEBOUNCE);
        new.expect_back(old.present(), now, Duration::from_secs(10));
        assert_eq!(new.change(change(true, "a", &["t"]), now + Duration::from_secs(4)), vec![]);
        new.change(change(true, "c", &["t"]), now);
        new.change(change(false, "c", &["t"]), now);
        let due = new.due(now + DEBOUNCE);
        assert_eq!(due.iter().map(|n| (n.kind, n.id.as_str())).collect::<Vec<_>>(), [(Kind::Leave, "c")]);
        assert!(new.due(now + Duration::from_secs(12)).is_empty(), "b has until 13 s");
        let due = new.due(now + Duration::from_secs(13));
        assert_eq!(due.iter().map(|n| (n.kind, n.id.as_str())).collect::<Vec<_>>(), [(Kind::Leave, "b")]);
        assert!(new.due(now + Duration::from_secs(60)).is_empty(), "a came back");
    }

    fn change(joined: bool, id: &str, tokens: &[&str]) -> Change {
        Change { joined, id: id.into(), sub: None, tokens: tokens.iter().map(|t| (*t).into()).collect() }
    }

    fn shown(notices: &[Notice]) -> Vec<String> {
        notices.iter().map(|n| format!("{} {} {}", n.kind.event(), n.token, n.id)).collect()
    }

    #[test]
    fn a_client_joins_each_of_its_tokens_once_and_leaves_after_the_debounce() {
        let mut roster = Roster::new(DEBOUNCE);
        let t0 = Instant::now();
        assert_eq!(
            shown(&roster.change(change(true, "u1", &["room1", "u1"]), t0)),
            ["join room1 u1", "join u1 u1"]
        );
        assert!(roster.change(change(true, "u1", &["room1"]), t0).is_empty(), "a second tab is no join");
        assert!(roster.change(change(false, "u1", &["room1"]), t0).is_empty());
        assert!(roster.due(t0 + DEBOUNCE).is_empty(), "one stream is still open");
        roster.change(change(false, "u1", &["room1", "u1"]), t0 + Duration::from_secs(1));
        assert_eq!(roster.next_due(), Some(t0 + Duration::from_secs(1) + DEBOUNCE));
        assert!(roster.due(t0 + DEBOUNCE).is_empty(), "not before the debounce time");
        assert_eq!(shown(&roster.due(t0 + Duration::from_secs(4))), ["leave room1 u1", "leave u1 u1"]);
        assert_eq!(roster.next_due(), None);
        assert_eq!(
            shown(&roster.change(change(true, "u1", &["room1"]), t0 + DEBOUNCE * 2)),
            ["join room1 u1"]
        );
    }

    #[test]
    fn a_quick_reconnect_is_neither_a_leave_nor_a_join() {
        let mut roster = Roster::new(DEBOUNCE);
        let t0 = Instant::now();
        roster.change(change(true, "u1", &["room1"]), t0);
        roster.change(change(false, "u1", &["room1"]), t0);
        assert!(roster.change(change(true, "u1", &["room1"]), t0 + Duration::from_secs(2)).is_empty());
        assert!(roster.due(t0 + DEBOUNCE * 2).is_empty(), "the leave it was waiting for is void");
        // It goes for good later: one leave, at its own time.
        roster.change(change(false, "u1", &["room1"]), t0 + DEBOUNCE * 2);
        assert!(roster.due(t0 + DEBOUNCE * 2).is_empty());
        assert_eq!(shown(&roster.due(t0 + DEBOUNCE * 3)), ["leave room1 u1"]);
    }

    #[test]
    fn clients_without_an_id_take_no_part_and_the_data_names_the_sub() {
        let mut roster = Roster::new(DEBOUNCE);
        let now = Instant::now();
        assert!(roster.change(change(true, "", &["room1"]), now).is_empty());
        roster.change(change(false, "", &["room1"]), now);
        assert_eq!(roster.next_due(), None);
        let mut with_sub = change(true, "alice", &["room1"]);
        with_sub.sub = Some("alice".into());
        let joins = roster.change(with_sub, now);
        assert_eq!(joins[0].data(None), r#"{"id":"alice","sub":"alice"}"#);
        assert_eq!(change(true, "x", &[]).tokens.len(), 0);
        let leave = Notice { kind: Kind::Leave, token: "t".into(), id: "b".into(), sub: None };
        assert_eq!(leave.data(None), r#"{"id":"b","sub":null}"#);
    }

    #[test]
    fn a_presence_question_reads_its_token_as_a_publisher_would() {
        assert_eq!(asked_target("room1"), Target::Token("room1".into()));
        assert_eq!(asked_target("room*"), Target::Prefix("room".into()));
        assert_eq!(asked_target("room*x"), Target::Prefix("room".into()));
        assert_eq!(asked_target("*"), Target::All);
    }

    #[test]
    fn a_leave_for_a_client_never_seen_is_ignored() {
        let mut roster = Roster::new(DEBOUNCE);
        let now = Instant::now();
        roster.change(change(false, "ghost", &["room1"]), now);
        assert_eq!(roster.next_due(), None);
    }
}
