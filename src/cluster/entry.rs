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

use std::borrow::Cow;

use redis::Value;

use crate::event::{Audience, Publish, Target};

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
    /// Redis' reply is not the shape a stream's reply has.
    #[error("stream reply not understood: {0}")]
    BadReply(String),
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
pub fn fields<'a>(publish: &'a Publish, node: &'a str, seq: u64) -> Vec<(&'static str, Cow<'a, [u8]>)> {
    let mut fields = vec![
        ("n", Cow::Borrowed(node.as_bytes())),
        ("s", Cow::Owned(seq.to_string().into_bytes())),
        ("t", Cow::Owned(encode_targets(&publish.audience.targets))),
    ];
    if let Some(except) = &publish.audience.except {
        fields.push(("x", Cow::Borrowed(except.as_bytes())));
    }
    if let Some(event) = &publish.event {
        fields.push(("e", Cow::Borrowed(event.as_bytes())));
    }
    if let Some(retry) = publish.retry {
        fields.push(("r", Cow::Owned(retry.to_string().into_bytes())));
    }
    fields.push(("d", Cow::Borrowed(&publish.message)));
    fields
}

/// One entry of a stream reply, its fields not read yet.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEntry {
    /// Its stream id, as Redis wrote it.
    pub id: String,
    /// Name, value, name, value, …
    pub fields: Vec<Value>,
}

impl RawEntry {
    /// Its size as the trim counts it: its fields' names and values, in bytes.
    pub fn size(&self) -> u64 {
        let len = |value: &Value| match value {
            Value::BulkString(bytes) => bytes.len() as u64,
            _ => 0,
        };
        self.fields.iter().map(len).sum()
    }
}

/// The entries of an `XRANGE` or `XREVRANGE` reply, in its order.
///
/// Replies are walked as the client's plain values rather than through its typed stream
/// replies, which copy every field into a map of its own: the tail reads every event of the
/// cluster, so this is its hot path.
pub fn range_reply(reply: Value) -> Result<Vec<RawEntry>, EntryError> {
    match reply {
        Value::Array(items) => items.into_iter().map(raw_entry).collect(),
        other => Err(EntryError::BadReply(format!("{other:?}"))),
    }
}

/// The entries of an `XREAD` reply (of one stream; none when it timed out).
pub fn read_reply(reply: Value) -> Result<Vec<RawEntry>, EntryError> {
    let ranges: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        // RESP2: [[stream, entries]]; RESP3: {stream: entries}.
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => Ok(pair.into_iter().nth(1).unwrap_or(Value::Nil)),
                other => Err(EntryError::BadReply(format!("{other:?}"))),
            })
            .collect::<Result<_, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, range)| range).collect(),
        other => return Err(EntryError::BadReply(format!("{other:?}"))),
    };
    let mut entries = Vec::new();
    for range in ranges {
        entries.extend(range_reply(range)?);
    }
    Ok(entries)
}

fn raw_entry(item: Value) -> Result<RawEntry, EntryError> {
    let bad = |what: &dyn std::fmt::Debug| EntryError::BadReply(format!("{what:?}"));
    let Value::Array(pair) = item else { return Err(bad(&item)) };
    let mut pair = pair.into_iter();
    match (pair.next(), pair.next(), pair.next()) {
        (Some(Value::BulkString(id)), Some(Value::Array(fields)), None) => {
            let id = String::from_utf8(id).map_err(|e| bad(&e))?;
            Ok(RawEntry { id, fields })
        }
        (id, fields, _) => Err(bad(&(id, fields))),
    }
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

/// The names of the fields an entry may have, in the order [`decode`] keeps them.
const NAMES: [&str; 7] = ["n", "s", "t", "x", "e", "r", "d"];

/// Reads an entry's fields back. Fields of other names are let be (a later version's).
pub fn decode(raw: RawEntry) -> Result<Entry, EntryError> {
    let RawEntry { id, fields } = raw;
    let stream_id = StreamId::parse(&id)?;
    let bad = |field| EntryError::BadField { id: id.clone(), field };
    let mut found: [Option<Vec<u8>>; NAMES.len()] = Default::default();
    let mut values = fields.into_iter();
    while let (Some(name), Some(value)) = (values.next(), values.next()) {
        let Value::BulkString(name) = name else { continue };
        let Some(slot) = NAMES.iter().position(|n| n.as_bytes() == name.as_slice()) else { continue };
        let Value::BulkString(bytes) = value else { return Err(bad(NAMES[slot])) };
        found[slot] = Some(bytes);
    }
    let mut take = |field: &'static str| NAMES.iter().position(|&n| n == field).and_then(|i| found[i].take());
    let text = |bytes: Option<Vec<u8>>, field| {
        bytes.map(|b| String::from_utf8(b).map_err(|_| bad(field))).transpose()
    };
    let number = |bytes: Option<Vec<u8>>, field| {
        text(bytes, field)?.map(|t| t.parse::<u64>().map_err(|_| bad(field))).transpose()
    };
    let targets =
        take("t").as_deref().and_then(decode_targets).filter(|t| !t.is_empty()).ok_or_else(|| bad("t"))?;
    let retry = number(take("r"), "r")?.map(|r| u32::try_from(r).map_err(|_| bad("r"))).transpose()?;
    Ok(Entry {
        id: stream_id,
        node: text(take("n"), "n")?.ok_or_else(|| bad("n"))?,
        seq: number(take("s"), "s")?.ok_or_else(|| bad("s"))?,
        publish: Publish {
            audience: Audience { targets, except: text(take("x"), "x")? },
            message: take("d").ok_or_else(|| bad("d"))?,
            event: text(take("e"), "e")?,
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
        let end = (colon + 1).checked_add(len)?;
        let name = rest.get(colon + 1..end)?;
        let name = String::from_utf8(name.to_vec()).ok()?;
        targets.push(match kind {
            b'*' if name.is_empty() => Target::All,
            b'=' => Target::Token(name),
            b'^' => Target::Prefix(name),
            _ => return None,
        });
        bytes = &rest[end..];
    }
    Some(targets)
}

#[cfg(test)]
pub(super) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The entry as Redis would give it back (the tail's tests read entries through it too).
    pub(in crate::cluster) fn as_raw(id: &str, fields: Vec<(&'static str, Cow<'_, [u8]>)>) -> RawEntry {
        let fields = fields
            .into_iter()
            .flat_map(|(name, value)| [name.as_bytes().to_vec(), value.into_owned()])
            .map(Value::BulkString)
            .collect();
        RawEntry { id: id.into(), fields }
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
        let good = as_raw("1-0", fields(&publish, "n1", 1));
        let with_t = |t: Value| {
            let mut raw = good.clone();
            let at = raw.fields.iter().position(|f| f == &Value::BulkString(b"t".to_vec())).unwrap();
            raw.fields[at + 1] = t;
            raw
        };
        let bad_t = Err(EntryError::BadField { id: "1-0".into(), field: "t" });
        assert_eq!(decode(with_t(Value::BulkString(b"=9:ab".to_vec()))), bad_t);
        assert_eq!(decode(with_t(Value::BulkString(b"=18446744073709551615:ab".to_vec()))), bad_t);
        assert_eq!(decode(with_t(Value::Int(3))), bad_t);
        let mut without_d = good.clone();
        without_d.fields.truncate(without_d.fields.len() - 2);
        assert_eq!(decode(without_d), Err(EntryError::BadField { id: "1-0".into(), field: "d" }));
        // A field a later version adds is let be.
        let mut later = good.clone();
        later.fields.extend([Value::BulkString(b"z".to_vec()), Value::BulkString(b"?".to_vec())]);
        assert_eq!(decode(later).map(|e| e.publish), Ok(publish));
    }

    #[test]
    fn replies_are_walked_in_their_order_and_a_strange_one_is_refused() {
        let entry = |id: &str| {
            let fields = vec![Value::BulkString(b"d".to_vec()), Value::BulkString(id.as_bytes().to_vec())];
            Value::Array(vec![Value::BulkString(id.as_bytes().to_vec()), Value::Array(fields)])
        };
        let range = Value::Array(vec![entry("1-0"), entry("1-1")]);
        let ids = |entries: Vec<RawEntry>| entries.into_iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(range_reply(range.clone()).unwrap()), ["1-0", "1-1"]);
        let key = Value::BulkString(b"hasses:events".to_vec());
        let resp2 = Value::Array(vec![Value::Array(vec![key.clone(), range.clone()])]);
        assert_eq!(ids(read_reply(resp2).unwrap()), ["1-0", "1-1"]);
        assert_eq!(ids(read_reply(Value::Map(vec![(key, range)])).unwrap()), ["1-0", "1-1"]);
        assert_eq!(read_reply(Value::Nil), Ok(Vec::new()));
        assert!(range_reply(Value::Int(1)).is_err());
        assert!(range_reply(Value::Array(vec![Value::Array(vec![Value::Int(1)])])).is_err());
        assert_eq!(range_reply(Value::Array(vec![entry("2-0")])).unwrap()[0].size(), 4);
    }

    #[test]
    fn an_entry_holds_the_fields_the_module_doc_names() {
        let targets = vec![Target::All, Target::Token("room1".into()), Target::Prefix("user".into())];
        let publish = Publish {
            audience: Audience { targets, except: Some("abc".into()) },
            message: b"hi".to_vec(),
            event: Some("news".into()),
            retry: Some(500),
        };
        let written: Vec<(&str, Vec<u8>)> =
            fields(&publish, "n1", 12).into_iter().map(|(name, value)| (name, value.into_owned())).collect();
        let expected: Vec<(&str, &[u8])> = vec![
            ("n", b"n1"),
            ("s", b"12"),
            ("t", b"*0:=5:room1^4:user"),
            ("x", b"abc"),
            ("e", b"news"),
            ("r", b"500"),
            ("d", b"hi"),
        ];
        assert_eq!(written, expected.into_iter().map(|(n, v)| (n, v.to_vec())).collect::<Vec<_>>());
        // Only what a publish has: hasses' plain form has no except, event or retry.
        let plain = Publish {
            audience: Audience { targets: vec![Target::All], except: None },
            event: None,
            retry: None,
            ..publish
        };
        let names: Vec<&str> = fields(&plain, "n1", 1).into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["n", "s", "t", "d"]);
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
            let entry = decode(as_raw("5-3", fields(&publish, "node-a", seq))).unwrap();
            prop_assert_eq!(entry, Entry {
                id: StreamId { ms: 5, seq: 3 },
                node: "node-a".into(),
                seq,
                publish,
            });
        }
    }
}
