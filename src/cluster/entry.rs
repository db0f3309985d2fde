//! What a stream entry holds, and how its id becomes an event id (pure: no I/O).
//!
//! Owns the encoding of a publish as the fields of one Redis stream entry, and the mapping from
//! a stream entry id (`ms-seq`) to the numeric event id every node gives that event.
//!
//! # Event ids
//! A stream entry id is `ms-seq`: Redis' clock in milliseconds when the entry was added, and a
//! sequence number within that millisecond. The event id is `ms * 1_000_000 + seq`:
//! - the same on every node, since it is computed from the entry alone;
//! - strictly increasing with the stream, also across node and Redis restarts (Redis never
//!   hands out an id below the stream's last one, and a new stream starts at today's clock);
//! - above any id a single node hands out at the same time (those count microseconds since
//!   1970, a thousandth of this), so a site that turns the cluster on keeps ids increasing;
//! - good until the year 2554 in a u64. A `seq` of a million or more (a million entries in one
//!   millisecond, beyond any Redis) would not fit and is refused as [`EntryError::BadId`].
//!
//! # Fields
//! `n` the publishing node, `s` its publish sequence number (to find, after a lost reply, which
//! of its entries Redis has: see `cluster::outbox`), `t` the targets, `x` the client id
//! excepted, `e` the event type, `r` the reconnection time, `d` the data. `t` is each target
//! as a kind (`*` every client, `=` a token, `^` a prefix), the name's length in bytes, `:`,
//! and the name: `*0:=5:room1^4:user`. Names are taken byte for byte, whatever they hold.

use std::collections::HashMap;

use redis::Value;

use crate::control::command::Publish;
use crate::pipeline::{Audience, Target};

/// How far apart the event ids of two consecutive milliseconds are.
const PER_MS: u64 = 1_000_000;

/// A stream entry id, `ms-seq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    /// Redis' clock when the entry was added, in milliseconds since 1970.
    pub ms: u64,
    /// The entry's number within that millisecond.
    pub seq: u64,
}

impl StreamId {
    /// Before every entry: reading after it reads the whole stream.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// Parses `ms-seq`.
    pub fn parse(text: &str) -> Result<StreamId, EntryError> {
        let bad = || EntryError::BadId(text.to_string());
        let (ms, seq) = text.split_once('-').ok_or_else(bad)?;
        Ok(StreamId { ms: ms.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
    }

    /// The event id every node gives this entry's event.
    pub fn event_id(self) -> Result<u64, EntryError> {
        let bad = || EntryError::BadId(self.to_string());
        if self.seq >= PER_MS {
            return Err(bad());
        }
        self.ms.checked_mul(PER_MS).map(|base| base + self.seq).ok_or_else(bad)
    }

    /// The entry whose event id is `id`.
    pub fn of_event(id: u64) -> StreamId {
        StreamId { ms: id / PER_MS, seq: id % PER_MS }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a stream entry cannot be delivered. The entry is skipped with a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Its id is not `ms-seq`, or does not fit an event id.
    #[error("stream entry id {0:?} is not usable as an event id")]
    BadId(String),
    /// A field it needs is missing or malformed.
    #[error("stream entry {id}: field {field:?} missing or malformed")]
    BadField {
        /// The entry's id.
        id: String,
        /// The field's name.
        field: &'static str,
    },
}

/// The fields of the entry of `publish`, sent by `node` as its `seq`th publish.
pub fn fields(publish: &Publish, node: &str, seq: u64) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields = vec![
        ("n", node.as_bytes().to_vec()),
        ("s", seq.to_string().into_bytes()),
        ("t", encode_targets(&publish.audience.targets)),
    ];
    if let Some(except) = &publish.audience.except {
        fields.push(("x", except.clone().into_bytes()));
    }
    if let Some(event) = &publish.event {
        fields.push(("e", event.clone().into_bytes()));
    }
    if let Some(retry) = publish.retry {
        fields.push(("r", retry.to_string().into_bytes()));
    }
    fields.push(("d", publish.message.clone()));
    fields
}

/// An entry's size as the trim counts it: its fields' names and values, in bytes.
pub fn size(map: &HashMap<String, Value>) -> u64 {
    let value_len = |value: &Value| match value {
        Value::BulkString(bytes) => bytes.len(),
        _ => 0,
    };
    map.iter().map(|(name, value)| (name.len() + value_len(value)) as u64).sum()
}

/// An entry read back from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its stream id.
    pub id: StreamId,
    /// The node that published it.
    pub node: String,
    /// That node's publish sequence number.
    pub seq: u64,
    /// What to deliver.
    pub publish: Publish,
}

/// Reads an entry's fields back (as the `redis` crate gives them).
pub fn decode(id: &str, map: &HashMap<String, Value>) -> Result<Entry, EntryError> {
    let stream_id = StreamId::parse(id)?;
    let bad = |field| EntryError::BadField { id: id.to_string(), field };
    let bytes = |field: &'static str| match map.get(field) {
        Some(Value::BulkString(bytes)) => Ok(Some(bytes.as_slice())),
        None => Ok(None),
        Some(_) => Err(bad(field)),
    };
    let text = |field: &'static str| {
        bytes(field)?.map(|b| String::from_utf8(b.to_vec()).map_err(|_| bad(field))).transpose()
    };
    let number =
        |field: &'static str| text(field)?.map(|t| t.parse::<u64>().map_err(|_| bad(field))).transpose();
    let targets = bytes("t")?.and_then(decode_targets).filter(|t| !t.is_empty()).ok_or_else(|| bad("t"))?;
    let retry = number("r")?.map(|r| u32::try_from(r).map_err(|_| bad("r"))).transpose()?;
    Ok(Entry {
        id: stream_id,
        node: text("n")?.ok_or_else(|| bad("n"))?,
        seq: number("s")?.ok_or_else(|| bad("s"))?,
        publish: Publish {
            audience: Audience { targets, except: text("x")? },
            message: bytes("d")?.ok_or_else(|| bad("d"))?.to_vec(),
            event: text("e")?,
            retry,
        },
    })
}

fn encode_targets(targets: &[Target]) -> Vec<u8> {
    let mut out = Vec::new();
    for target in targets {
        let (kind, name) = match target {
            Target::All => (b'*', ""),
            Target::Token(name) => (b'=', name.as_str()),
            Target::Prefix(prefix) => (b'^', prefix.as_str()),
        };
        out.push(kind);
        out.extend_from_slice(name.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(name.as_bytes());
    }
    out
}

fn decode_targets(mut bytes: &[u8]) -> Option<Vec<Target>> {
    let mut targets = Vec::new();
    while let Some((&kind, rest)) = bytes.split_first() {
        let colon = rest.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
        let name = rest.get(colon + 1..colon + 1 + len)?;
        let name = String::from_utf8(name.to_vec()).ok()?;
        targets.push(match kind {
            b'*' if name.is_empty() => Target::All,
            b'=' => Target::Token(name),
            b'^' => Target::Prefix(name),
            _ => return None,
        });
        bytes = &rest[colon + 1 + len..];
    }
    Some(targets)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn as_map(fields: Vec<(&'static str, Vec<u8>)>) -> HashMap<String, Value> {
        fields.into_iter().map(|(k, v)| (k.to_string(), Value::BulkString(v))).collect()
    }

    #[test]
    fn event_ids_follow_the_stream_and_pass_single_node_ids() {
        let a = StreamId::parse("1700000000000-0").unwrap();
        let b = StreamId::parse("1700000000000-7").unwrap();
        let c = StreamId::parse("1700000000001-0").unwrap();
        let ids: Vec<u64> = [a, b, c].iter().map(|s| s.event_id().unwrap()).collect();
        assert_eq!(
            ids,
            vec![1_700_000_000_000_000_000, 1_700_000_000_000_000_007, 1_700_000_000_001_000_000]
        );
        // A single node's id in the same millisecond counts microseconds: at most this.
        assert!(ids[0] > 1_700_000_000_000_999);
        assert_eq!(StreamId::of_event(ids[1]), b);
        assert!(StreamId { ms: 1, seq: PER_MS }.event_id().is_err());
        assert!(StreamId::parse("12").is_err() && StreamId::parse("a-1").is_err());
    }

    #[test]
    fn a_malformed_entry_is_refused_not_guessed() {
        let publish = Publish {
            audience: Audience { targets: vec![Target::All], except: None },
            message: b"x".to_vec(),
            event: None,
            retry: None,
        };
        let mut map = as_map(fields(&publish, "n1", 1));
        map.insert("t".into(), Value::BulkString(b"=9:ab".to_vec()));
        assert_eq!(decode("1-0", &map), Err(EntryError::BadField { id: "1-0".into(), field: "t" }));
        map.remove("t");
        assert!(decode("1-0", &map).is_err());
    }

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![Just(Target::All), any::<String>().prop_map(Target::Token), ".+".prop_map(Target::Prefix),]
    }

    proptest! {
        /// Whatever a publish holds, every node reads back exactly what was sent.
        #[test]
        fn an_entry_reads_back_as_it_was_written(
            targets in prop::collection::vec(target(), 1..4),
            except in prop::option::of(any::<String>()),
            message in prop::collection::vec(any::<u8>(), 0..64),
            event in prop::option::of(any::<String>()),
            retry in prop::option::of(any::<u32>()),
            seq in any::<u64>(),
        ) {
            let publish = Publish { audience: Audience { targets, except }, message, event, retry };
            let entry = decode("5-3", &as_map(fields(&publish, "node-a", seq))).unwrap();
            prop_assert_eq!(entry, Entry {
                id: StreamId { ms: 5, seq: 3 },
                node: "node-a".into(),
                seq,
                publish,
            });
        }
    }
}
