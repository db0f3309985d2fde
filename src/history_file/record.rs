//! The history file's bytes: its header and its records, encoded and decoded without I/O.
//!
//! ```text
//! header   "hassesHF" (8 bytes), format version (u32)
//! record   body length (u32), CRC-32 of the body (u32), body
//! body     kind (u8), then by kind:
//!   1 Start  first id (u64), highest id lost by a forgotten ring (u64)
//!   2 Lost   highest id lost (u64), audience
//!   3 Event  id (u64), when it was kept (u64, ms since the Unix epoch), audience, frame (the rest)
//!   4 Stop   newest id sequenced (u64)
//! audience except (u8 0 or 1, then a string if 1), targets (u32 count), each a kind
//!          (u8: 0 `*`, 1 token, 2 prefix) and, for 1 and 2, a string
//! string   length (u32), UTF-8 bytes
//! ```
//!
//! Integers are little-endian. Owns the layout and its checks (a length, a checksum, every
//! field in bounds); it never panics on what it reads, and it does no I/O.

use bytes::Bytes;

use crate::event::{Audience, Target, Targets};
use crate::sse::Frame;

/// What a history file starts with.
pub const MAGIC: [u8; 8] = *b"hassesHF";
/// The format this build writes and reads; a file of another is refused, never guessed at.
pub const VERSION: u32 = 1;
/// The header's length: the magic and the version.
pub const HEADER_LEN: usize = MAGIC.len() + 4;
/// A record's length and checksum.
const RECORD_HEAD: usize = 8;
/// The longest body accepted: a length beyond it is damage, not an event.
const MAX_BODY: usize = 1 << 30;

const START: u8 = 1;
const LOST: u8 = 2;
const EVENT: u8 = 3;
const STOP: u8 = 4;

/// One record of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// What follows is a history in which nothing before `first_id` is known, and forgotten
    /// rings lost events up to `forgotten_up_to`: written first in a fresh or compacted file.
    Start {
        /// The first id the history knows of.
        first_id: u64,
        /// The highest id lost by a ring that was forgotten.
        forgotten_up_to: u64,
    },
    /// The ring of `audience` lost events up to `up_to` before what follows was written.
    Lost {
        /// Whose ring.
        audience: Audience,
        /// The highest id it lost.
        up_to: u64,
    },
    /// A kept event.
    Event(StoredEvent),
    /// The server stopped cleanly: every event it sequenced, up to `newest`, is written above.
    Stop {
        /// The newest id it sequenced.
        newest: u64,
    },
}

/// An event as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its id.
    pub id: u64,
    /// When it was kept, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Who gets it.
    pub audience: Audience,
    /// Its frame, as sent.
    pub frame: Frame,
}

/// What the start of a file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Our magic and version: the records follow.
    Ours,
    /// Fewer bytes than a header, all of them a header's beginning: a file cut while it was made.
    Short,
    /// Our magic, another version.
    Version(u32),
    /// Not a history file.
    Foreign,
}

/// The header this build writes.
pub fn header() -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..MAGIC.len()].copy_from_slice(&MAGIC);
    header[MAGIC.len()..].copy_from_slice(&VERSION.to_le_bytes());
    header
}

/// Reads the header at the start of `bytes` (a non-empty file).
pub fn read_header(bytes: &[u8]) -> Header {
    let ours = header();
    if bytes.len() < HEADER_LEN {
        return if ours.starts_with(bytes) { Header::Short } else { Header::Foreign };
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Header::Foreign;
    }
    match u32_at(bytes, MAGIC.len()) {
        Some(VERSION) => Header::Ours,
        Some(other) => Header::Version(other),
        None => Header::Foreign,
    }
}

/// What is at the start of the bytes after the header (or after the last whole record).
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole record, and how many bytes it took.
    Record(Record, usize),
    /// The bytes end inside a record (a write cut short).
    Incomplete,
    /// The bytes are not a record: why.
    Corrupt(&'static str),
}

/// Appends the record to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Start { first_id, forgotten_up_to } => framed(out, |body| {
            body.push(START);
            body.extend_from_slice(&first_id.to_le_bytes());
            body.extend_from_slice(&forgotten_up_to.to_le_bytes());
        }),
        Record::Lost { audience, up_to } => framed(out, |body| {
            body.push(LOST);
            body.extend_from_slice(&up_to.to_le_bytes());
            put_audience(body, audience);
        }),
        Record::Event(event) => encode_event(event.id, event.at_ms, &event.audience, &event.frame, out),
        Record::Stop { newest } => framed(out, |body| {
            body.push(STOP);
            body.extend_from_slice(&newest.to_le_bytes());
        }),
    }
}

/// Appends an event record to `out`, from borrowed parts (the writer's, without a copy first).
pub fn encode_event(id: u64, at_ms: u64, audience: &Audience, frame: &[u8], out: &mut Vec<u8>) {
    framed(out, |body| {
        body.push(EVENT);
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(&at_ms.to_le_bytes());
        put_audience(body, audience);
        body.extend_from_slice(frame);
    });
}

/// Writes a record's length and checksum around the body `fill` appends.
fn framed(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let head = out.len();
    out.extend_from_slice(&[0; RECORD_HEAD]);
    fill(out);
    let body = &out[head + RECORD_HEAD..];
    let length = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(body);
    out[head..head + 4].copy_from_slice(&length.to_le_bytes());
    out[head + 4..head + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_audience(out: &mut Vec<u8>, audience: &Audience) {
    match &audience.except {
        Some(except) => {
            out.push(1);
            put_str(out, except);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(audience.targets.len() as u32).to_le_bytes());
    for target in &audience.targets {
        match target {
            Target::All => out.push(0),
            Target::Token(name) => {
                out.push(1);
                put_str(out, name);
            }
            Target::Prefix(prefix) => {
                out.push(2);
                put_str(out, prefix);
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Decodes the record at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Decoded {
    let (Some(length), Some(crc)) = (u32_at(bytes, 0), u32_at(bytes, 4)) else {
        return Decoded::Incomplete;
    };
    let length = length as usize;
    if length > MAX_BODY {
        return Decoded::Corrupt("a record longer than any event");
    }
    let Some(body) = bytes.get(RECORD_HEAD..RECORD_HEAD + length) else {
        return Decoded::Incomplete;
    };
    if crc32fast::hash(body) != crc {
        return Decoded::Corrupt("a record whose checksum does not match");
    }
    match decode_body(body) {
        Some(record) => Decoded::Record(record, RECORD_HEAD + length),
        None => Decoded::Corrupt("a record whose fields do not fit"),
    }
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let mut r = Reader { bytes: body, at: 0 };
    let record = match r.u8()? {
        START => Record::Start { first_id: r.u64()?, forgotten_up_to: r.u64()? },
        LOST => {
            let up_to = r.u64()?;
            Record::Lost { audience: r.audience()?, up_to }
        }
        EVENT => {
            let (id, at_ms) = (r.u64()?, r.u64()?);
            let audience = r.audience()?;
            let frame = Bytes::copy_from_slice(r.rest());
            Record::Event(StoredEvent { id, at_ms, audience, frame })
        }
        STOP => Record::Stop { newest: r.u64()? },
        _ => return None,
    };
    r.rest().is_empty().then_some(record)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let field = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes(field.try_into().ok()?))
}

/// Reads fields off a record's body; `None` when one runs past its end.
struct Reader<'b> {
    bytes: &'b [u8],
    at: usize,
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        let field = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(field)
    }

    fn rest(&mut self) -> &'b [u8] {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        self.at = self.bytes.len();
        rest
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let length = self.u32()? as usize;
        String::from_utf8(self.take(length)?.to_vec()).ok()
    }

    fn audience(&mut self) -> Option<Audience> {
        let except = match self.u8()? {
            0 => None,
            1 => Some(self.string()?),
            _ => return None,
        };
        let count = self.u32()? as usize;
        // Each target takes a byte at least: a count beyond the bytes left is damage.
        if count == 0 || count > self.bytes.len() - self.at {
            return None;
        }
        let mut targets = Targets::with_capacity(count);
        for _ in 0..count {
            targets.push(match self.u8()? {
                0 => Target::All,
                1 => Target::Token(self.string()?.into()),
                2 => Target::Prefix(self.string()?.into()),
                _ => return None,
            });
        }
        Some(Audience { targets, except })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use smallvec::smallvec;

    fn event(id: u64) -> Record {
        Record::Event(StoredEvent {
            id,
            at_ms: 1_700_000_000_000,
            audience: Audience {
                targets: smallvec![Target::Token("room1".into()), Target::Prefix("user".into()), Target::All],
                except: Some("abc".into()),
            },
            frame: crate::sse::encode_event(id, b"hello"),
        })
    }

    #[test]
    fn the_header_is_told_from_another_version_and_from_other_files() {
        let ours = header();
        assert_eq!(read_header(&ours), Header::Ours);
        assert_eq!(read_header(&ours[..5]), Header::Short);
        let mut next = ours;
        next[8] = 2;
        assert_eq!(read_header(&next), Header::Version(2));
        assert_eq!(read_header(b"id: 1\ndata: x\n"), Header::Foreign);
        assert_eq!(read_header(b"x"), Header::Foreign);
    }

    #[test]
    fn a_flipped_byte_is_corrupt_never_a_different_record() {
        let mut bytes = Vec::new();
        encode(&event(7), &mut bytes);
        for at in 4..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert_eq!(
                decode(&damaged),
                Decoded::Corrupt("a record whose checksum does not match"),
                "byte {at}"
            );
        }
        let mut long = bytes.clone();
        long[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&long), Decoded::Corrupt("a record longer than any event"));
    }

    #[test]
    fn a_body_that_checks_but_does_not_fit_is_corrupt() {
        for body in [
            &[9u8][..],
            &[START, 1, 2],
            &[STOP, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[LOST, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let mut bytes = Vec::new();
            framed(&mut bytes, |out| out.extend_from_slice(body));
            assert_eq!(decode(&bytes), Decoded::Corrupt("a record whose fields do not fit"), "{body:?}");
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop::string::string_regex("[a-z0-9é\n-]{0,12}").unwrap()
    }

    fn audience() -> impl Strategy<Value = Audience> {
        let target = prop_oneof![
            Just(Target::All),
            text().prop_map(|name| Target::Token(name.into())),
            text().prop_map(|name| Target::Prefix(name.into())),
        ];
        (prop::collection::vec(target, 1..4), prop::option::of(text()))
            .prop_map(|(targets, except)| Audience { targets: targets.into(), except })
    }

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            (any::<u64>(), any::<u64>())
                .prop_map(|(first_id, forgotten_up_to)| Record::Start { first_id, forgotten_up_to }),
            (audience(), any::<u64>()).prop_map(|(audience, up_to)| Record::Lost { audience, up_to }),
            (any::<u64>(), any::<u64>(), audience(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(
                |(id, at_ms, audience, frame)| Record::Event(StoredEvent {
                    id,
                    at_ms,
                    audience,
                    frame: frame.into()
                })
            ),
            any::<u64>().prop_map(|newest| Record::Stop { newest }),
        ]
    }

    /// Decodes records one after another, as the file is read.
    fn decode_all(mut bytes: &[u8]) -> (Vec<Record>, Decoded) {
        let mut records = Vec::new();
        loop {
            if bytes.is_empty() {
                return (records, Decoded::Incomplete);
            }
            match decode(bytes) {
                Decoded::Record(record, used) => {
                    records.push(record);
                    bytes = &bytes[used..];
                }
                end => return (records, end),
            }
        }
    }

    proptest! {
        /// What is encoded decodes to the same records, in order, each taking its own bytes.
        #[test]
        fn records_round_trip(records in prop::collection::vec(record(), 0..8)) {
            let mut bytes = Vec::new();
            for record in &records {
                encode(record, &mut bytes);
            }
            let (decoded, end) = decode_all(&bytes);
            prop_assert_eq!(decoded, records);
            prop_assert_eq!(end, Decoded::Incomplete);
        }

        /// Cut anywhere, the bytes give the whole records before the cut and nothing else, and
        /// never a panic: what a write cut short by a crash leaves.
        #[test]
        fn every_prefix_gives_the_whole_records_before_it(records in prop::collection::vec(record(), 1..5)) {
            let mut bytes = Vec::new();
            let mut ends = Vec::new();
            for record in &records {
                encode(record, &mut bytes);
                ends.push(bytes.len());
            }
            for cut in 0..=bytes.len() {
                let (decoded, end) = decode_all(&bytes[..cut]);
                let whole = ends.iter().filter(|e| **e <= cut).count();
                prop_assert_eq!(&decoded[..], &records[..whole]);
                prop_assert_eq!(end, Decoded::Incomplete);
            }
        }

        /// Whatever the bytes, decoding ends without a panic.
        #[test]
        fn any_bytes_decode_without_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_all(&bytes);
            let _ = read_header(&bytes);
        }
    }
}
