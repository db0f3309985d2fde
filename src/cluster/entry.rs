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

use crate::event::{Audience, Name, Publish, Target, Targets};

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
        StreamId::from_bytes(text.as_bytes())
    }

    /// Parses `ms-seq` as Redis writes it in a reply, bytes that are not text included.
    pub fn from_bytes(bytes: &[u8]) -> Result<StreamId, EntryError> {
        let bad = || EntryError::BadId(String::from_utf8_lossy(bytes).into_owned());
        let dash = memchr::memchr(b'-', bytes).ok_or_else(bad)?;
        let (ms, seq) = (decimal(&bytes[..dash]), decimal(&bytes[dash + 1..]));
        Ok(StreamId { ms: ms.ok_or_else(bad)?, seq: seq.ok_or_else(bad)? })
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
    // Room for every field at once: one allocation per publish, not one per field added.
    let mut fields = Vec::with_capacity(NAMES.len());
    fields.extend([
        ("n", Cow::Borrowed(node.as_bytes())),
        ("s", Cow::Owned(seq.to_string().into_bytes())),
        ("t", Cow::Owned(encode_targets(&publish.audience.targets))),
    ]);
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

/// The number `digits` writes in decimal: one digit at least, nothing else (no sign), and
/// no more than a u64 holds. (Read per entry and per reply length, so not through `str`.)
pub fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &digit| {
        let digit = digit.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// One entry of a stream reply, its fields not read yet: borrowed from the reply (its bytes
/// for the tail, `cluster::resp`; the Redis client's values elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry<'a> {
    /// Its stream id, as Redis wrote it.
    pub id: &'a [u8],
    /// Its fields' names and values, in order.
    pub fields: Vec<(&'a [u8], &'a [u8])>,
}

impl RawEntry<'_> {
    /// Its size as the trim counts it: its fields' names and values, in bytes.
    pub fn size(&self) -> u64 {
        self.fields.iter().map(|(name, value)| (name.len() + value.len()) as u64).sum()
    }

    /// Its stream id.
    pub fn stream_id(&self) -> Result<StreamId, EntryError> {
        StreamId::from_bytes(self.id)
    }
}

/// The entries of an `XRANGE` or `XREVRANGE` reply as the Redis client's values, in its order
/// (the start's read of the whole stream, the outbox's look back; the tail reads the bytes).
/// A field whose value is not a string is left out: [`decode`] says which it misses.
pub fn range_reply(reply: &Value) -> Result<Vec<RawEntry<'_>>, EntryError> {
    match reply {
        Value::Array(items) => items.iter().map(raw_entry).collect(),
        other => Err(EntryError::BadReply(format!("{other:?}"))),
    }
}

fn raw_entry(item: &Value) -> Result<RawEntry<'_>, EntryError> {
    let bad = |what: &dyn std::fmt::Debug| EntryError::BadReply(format!("{what:?}"));
    match item {
        Value::Array(pair) => match pair.as_slice() {
            [Value::BulkString(id), Value::Array(fields)] => {
                let fields = fields
                    .chunks_exact(2)
                    .filter_map(|pair| match pair {
                        [Value::BulkString(name), Value::BulkString(value)] => Some((&name[..], &value[..])),
                        _ => None,
                    })
                    .collect();
                Ok(RawEntry { id, fields })
            }
            other => Err(bad(&other)),
        },
        other => Err(bad(other)),
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
pub fn decode(raw: &RawEntry<'_>) -> Result<Entry, EntryError> {
    let stream_id = raw.stream_id()?;
    let bad = |field| EntryError::BadField { id: stream_id.to_string(), field };
    let mut found: [Option<&[u8]>; NAMES.len()] = Default::default();
    for &(name, value) in &raw.fields {
        if let Some(slot) = NAMES.iter().position(|n| n.as_bytes() == name) {
            found[slot] = Some(value);
        }
    }
    let take = |field: &'static str| NAMES.iter().position(|&n| n == field).and_then(|i| found[i]);
    let text = |field| take(field).map(|b| String::from_utf8(b.to_vec()).map_err(|_| bad(field))).transpose();
    let number = |field| take(field).map(|digits| decimal(digits).ok_or_else(|| bad(field))).transpose();
    let targets = take("t").and_then(decode_targets).filter(|t| !t.is_empty()).ok_or_else(|| bad("t"))?;
    let retry = number("r")?.map(|r| u32::try_from(r).map_err(|_| bad("r"))).transpose()?;
    Ok(Entry {
        id: stream_id,
        node: text("n")?.ok_or_else(|| bad("n"))?,
        seq: number("s")?.ok_or_else(|| bad("s"))?,
        publish: Publish {
            audience: Audience { targets, except: text("x")? },
            message: take("d").ok_or_else(|| bad("d"))?.to_vec(),
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
        out.extend_from_slice(itoa::Buffer::new().format(name.len()).as_bytes());
        out.push(b':');
        out.extend_from_slice(name.as_bytes());
    }
    out
}

fn decode_targets(mut bytes: &[u8]) -> Option<Targets> {
    let mut targets = Targets::new();
    while let Some((&kind, rest)) = bytes.split_first() {
        let colon = rest.iter().position(|&b| b == b':')?;
        let len = usize::try_from(decimal(&rest[..colon])?).ok()?;
        let end = (colon + 1).checked_add(len)?;
        // A name of up to 15 bytes is read into its place: no allocation per target.
        let name = Name::from(std::str::from_utf8(rest.get(colon + 1..end)?).ok()?);
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
    use smallvec::smallvec;

    /// The entry as a read gives it back.
    fn as_raw<'a>(id: &'a str, fields: &'a [(&'static str, Cow<'_, [u8]>)]) -> RawEntry<'a> {
        RawEntry {
            id: id.as_bytes(),
            fields: fields.iter().map(|(name, value)| (name.as_bytes(), &value[..])).collect(),
        }
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
    fn an_id_is_read_from_its_bytes_and_nothing_else_passes() {
        assert_eq!(StreamId::from_bytes(b"1700000000000-7"), Ok(StreamId { ms: 1_700_000_000_000, seq: 7 }));
        let max = format!("{}-0", u64::MAX);
        assert_eq!(StreamId::parse(&max).map(|id| id.ms), Ok(u64::MAX));
        let over = format!("{}0-0", u64::MAX);
        for bad in ["", "-", "1-", "-1", "+1-1", "1-+1", "1 -1", "1-1-1", "1-\u{e9}", &over] {
            assert_eq!(StreamId::parse(bad), Err(EntryError::BadId(bad.to_string())), "{bad:?}");
        }
        assert_eq!(StreamId::from_bytes(b"1-\xff"), Err(EntryError::BadId("1-\u{fffd}".into())));
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(decimal(b"18446744073709551616"), None);
    }

    #[test]
    fn a_malformed_entry_is_refused_not_guessed() {
        let publish = Publish {
            audience: Audience { targets: smallvec![Target::All], except: None },
            message: b"x".to_vec(),
            event: None,
            retry: None,
        };
        let written = fields(&publish, "n1", 1);
        let good = as_raw("1-0", &written);
        let with = |field: &'static [u8], to: &'static [u8]| {
            let mut raw = good.clone();
            raw.fields.iter_mut().filter(|(name, _)| *name == field).for_each(|(_, value)| *value = to);
            raw
        };
        let bad_t = Err(EntryError::BadField { id: "1-0".into(), field: "t" });
        assert_eq!(decode(&with(b"t", b"=9:ab")), bad_t);
        assert_eq!(decode(&with(b"t", b"=18446744073709551615:ab")), bad_t);
        assert_eq!(decode(&with(b"t", b"=+2:ab")), bad_t);
        assert_eq!(decode(&with(b"t", b"")), bad_t);
        let bad_s = Err(EntryError::BadField { id: "1-0".into(), field: "s" });
        assert_eq!(decode(&with(b"s", b"+1")), bad_s);
        assert_eq!(decode(&with(b"s", b"")), bad_s);
        assert_eq!(decode(&with(b"s", b"18446744073709551615")).map(|e| e.seq), Ok(u64::MAX));
        let mut without_d = good.clone();
        without_d.fields.pop();
        assert_eq!(decode(&without_d), Err(EntryError::BadField { id: "1-0".into(), field: "d" }));
        // A field a later version adds is let be.
        let mut later = good.clone();
        later.fields.push((b"z", b"?"));
        assert_eq!(decode(&later).map(|e| e.publish), Ok(publish.clone()));
        assert_eq!(decode(&RawEntry { id: b"1", ..good }), Err(EntryError::BadId("1".into())));
    }

    #[test]
    fn replies_are_walked_in_their_order_and_a_strange_one_is_refused() {
        let entry = |id: &str| {
            let fields = vec![Value::BulkString(b"d".to_vec()), Value::BulkString(id.as_bytes().to_vec())];
            Value::Array(vec![Value::BulkString(id.as_bytes().to_vec()), Value::Array(fields)])
        };
        let range = Value::Array(vec![entry("1-0"), entry("1-1")]);
        let ids = |entries: Vec<RawEntry>| entries.into_iter().map(|e| e.id.to_vec()).collect::<Vec<_>>();
        assert_eq!(ids(range_reply(&range).unwrap()), [b"1-0", b"1-1"]);
        assert!(range_reply(&Value::Int(1)).is_err());
        assert!(range_reply(&Value::Array(vec![Value::Array(vec![Value::Int(1)])])).is_err());
        assert_eq!(range_reply(&Value::Array(vec![entry("2-0")])).unwrap()[0].size(), 4);
        // A field that is not a string is left out, for `decode` to name.
        let odd = Value::Array(vec![
            Value::BulkString(b"3-0".to_vec()),
            Value::Array(vec![Value::BulkString(b"t".to_vec()), Value::Int(3)]),
        ]);
        assert_eq!(range_reply(&Value::Array(vec![odd])).unwrap()[0].fields, []);
    }

    #[test]
    fn an_entry_holds_the_fields_the_module_doc_names() {
        let targets = smallvec![Target::All, Target::Token("room1".into()), Target::Prefix("user".into())];
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
            audience: Audience { targets: smallvec![Target::All], except: None },
            event: None,
            retry: None,
            ..publish
        };
        let names: Vec<&str> = fields(&plain, "n1", 1).into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["n", "s", "t", "d"]);
    }

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![
            Just(Target::All),
            any::<String>().prop_map(|name| Target::Token(name.into())),
            ".+".prop_map(|name| Target::Prefix(name.into())),
        ]
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
            let publish = Publish { audience: Audience { targets: targets.into(), except }, message, event, retry };
            let written = fields(&publish, "node-a", seq);
            let entry = decode(&as_raw("5-3", &written)).unwrap();
            prop_assert_eq!(entry, Entry {
                id: StreamId { ms: 5, seq: 3 },
                node: "node-a".into(),
                seq,
                publish,
            });
        }
    }
}
