//! Redis' replies to the tail's and the outbox's commands, read straight from the bytes, and
//! the outbox's `XADD`s written as bytes (pure: no I/O).
//!
//! Owns reading RESP (2 and 3) for exactly the shapes the tail and the outbox's appends are
//! answered with: a stream read (`XREAD`: nil when it timed out, else each stream's name and
//! entries, as pairs or a RESP3 map), a range (`XRANGE`: its entries), a bulk string (the id
//! `XADD` gives), a status (`+OK` to `AUTH` and `SELECT`), and an error reply; and writing a
//! command (an array of bulk strings). An entry's id and fields are borrowed from the buffer:
//! nothing is copied before `entry::decode` takes what it delivers, which is what lets one tail thread keep up with a
//! busy stream, where going through the Redis client's values built a value per field first.
//!
//! A reply cut short is [`Parsed::Incomplete`]: the caller reads more and asks again. Bytes that
//! are not RESP, or a reply of another shape, are a [`RespError`] saying what was found where;
//! whatever the bytes, reading never panics, and a length never reserves more than the bytes
//! at hand could hold.

use super::entry::{decimal, RawEntry};

/// The longest header line (`*`, `$`, `%` and a length): a line longer without its end is not
/// RESP.
const MOST_HEADER: usize = 32;
/// The longest bulk string Redis sends (its `proto-max-bulk-len`).
const MOST_BULK: usize = 512 * 1024 * 1024;

/// A reply read whole, or not all there yet.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The reply, and how many bytes it took.
    Whole(T, usize),
    /// The buffer ends within the reply: read more.
    Incomplete,
}

impl<T> Parsed<T> {
    /// The reply of a buffer [`reply_len`] found whole.
    pub fn whole(self) -> Result<T, RespError> {
        match self {
            Parsed::Whole(value, _) => Ok(value),
            Parsed::Incomplete => {
                Err(RespError::Unexpected { at: 0, what: "a reply shorter than its own lengths say".into() })
            }
        }
    }
}

/// Why a reply is not one the tail can read. The connection is not to be trusted after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// Redis answered with an error.
    #[error("Redis answered {0}")]
    Refused(String),
    /// The bytes are not RESP, or the reply is not of the shape the command has.
    #[error("reply not understood at byte {at}: {what}")]
    Unexpected {
        /// Where in the reply.
        at: usize,
        /// What was wrong there.
        what: String,
    },
}

/// How many bytes the reply at the start of `buf` takes, whatever its shape (`None`: more
/// are to come). Walked without building anything, and without recursion, however deep.
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, RespError> {
    let mut reader = Reader { buf, at: 0 };
    let mut pending: usize = 1;
    let stop = |stop: Stop| match stop {
        Stop::Incomplete => Ok(None),
        Stop::Bad(e) => Err(e),
    };
    while pending > 0 {
        pending -= 1;
        let more = match reader.header() {
            Ok(Header::Array(len)) => Some(len),
            Ok(Header::Map(len)) => len.checked_mul(2),
            Ok(Header::Bulk(len)) if len <= MOST_BULK => match reader.buf.len() - reader.at {
                left if left < len + 2 => return Ok(None),
                _ => {
                    reader.at += len + 2;
                    Some(0)
                }
            },
            Ok(Header::Bulk(_)) => None,
            Ok(_) => Some(0),
            Err(e) => return stop(e),
        };
        pending = more.and_then(|more| pending.checked_add(more)).ok_or_else(|| RespError::Unexpected {
            at: reader.at,
            what: "a length beyond any reply".into(),
        })?;
    }
    Ok(Some(reader.at))
}

/// The entries of an `XREAD` reply (all its streams'; none when it timed out).
pub fn read_reply(buf: &[u8]) -> Result<Parsed<Vec<RawEntry<'_>>>, RespError> {
    whole(buf, |reader| {
        let mut entries = Vec::new();
        let streams = match reader.header()? {
            Header::Null => return Ok(entries),
            Header::Array(streams) => streams,
            Header::Map(streams) => {
                for _ in 0..streams {
                    reader.bulk()?;
                    reader.entries(&mut entries)?;
                }
                return Ok(entries);
            }
            other => return Err(reader.unexpected(other, "an array, a map or nil")),
        };
        for _ in 0..streams {
            reader.array_of(2)?;
            reader.bulk()?;
            reader.entries(&mut entries)?;
        }
        Ok(entries)
    })
}

/// The entries of an `XRANGE` or `XREVRANGE` reply, in its order.
pub fn range_reply(buf: &[u8]) -> Result<Parsed<Vec<RawEntry<'_>>>, RespError> {
    whole(buf, |reader| {
        let mut entries = Vec::new();
        reader.entries(&mut entries)?;
        Ok(entries)
    })
}

/// A status reply (`+OK`): its text.
pub fn status_reply(buf: &[u8]) -> Result<Parsed<&[u8]>, RespError> {
    whole(buf, |reader| match reader.header()? {
        Header::Status(text) => Ok(text),
        other => Err(reader.unexpected(other, "a status")),
    })
}

/// A bulk string reply (the id `XADD` gave its entry): its bytes.
pub fn bulk_reply(buf: &[u8]) -> Result<Parsed<&[u8]>, RespError> {
    whole(buf, Reader::bulk)
}

/// Appends the command `args` (its name first) as Redis reads one: an array of bulk strings.
/// (The outbox's `XADD`s, a batch at a time into one buffer: no value built per argument.)
pub fn push_command<'a>(out: &mut Vec<u8>, args: impl Iterator<Item = &'a [u8]> + Clone) {
    push_header(out, b'*', args.clone().count());
    for arg in args {
        push_header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_header(out: &mut Vec<u8>, kind: u8, len: usize) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Runs `read` over the reply at the start of `buf`: an error reply is [`RespError::Refused`],
/// and a reply cut short is [`Parsed::Incomplete`].
fn whole<'a, T>(
    buf: &'a [u8],
    read: impl FnOnce(&mut Reader<'a>) -> Result<T, Stop>,
) -> Result<Parsed<T>, RespError> {
    let mut reader = Reader { buf, at: 0 };
    if buf.first() == Some(&b'-') {
        return match reader.line() {
            Ok(line) => Err(RespError::Refused(String::from_utf8_lossy(&line[1..]).into_owned())),
            Err(stop) => stop.into_result(),
        };
    }
    match read(&mut reader) {
        Ok(value) => Ok(Parsed::Whole(value, reader.at)),
        Err(stop) => stop.into_result(),
    }
}

/// Why reading stopped short of a reply.
enum Stop {
    /// The buffer ends within it.
    Incomplete,
    Bad(RespError),
}

impl Stop {
    fn into_result<T>(self) -> Result<Parsed<T>, RespError> {
        match self {
            Stop::Incomplete => Ok(Parsed::Incomplete),
            Stop::Bad(e) => Err(e),
        }
    }
}

/// One header line, read.
#[derive(Debug)]
enum Header<'a> {
    /// `*N` (a set `~N`, a push `>N`): N elements follow.
    Array(usize),
    /// `%N`: N keys and values follow.
    Map(usize),
    /// `$N` (a verbatim string `=N`, a blob error `!N`): N bytes follow.
    Bulk(usize),
    /// `*-1`, `$-1` or `_`.
    Null,
    /// `+text`.
    Status(&'a [u8]),
    /// `-text` within a reply.
    Error(&'a [u8]),
    /// Any other kind (a number, a double, a boolean...): one line, in no reply read here.
    Other(u8),
}

/// A place in the buffer.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// The line from here to its `\r\n`, which is passed.
    fn line(&mut self) -> Result<&'a [u8], Stop> {
        let rest = &self.buf[self.at..];
        // Byte by byte: a header line is a few bytes, too short for a search to pay its setup.
        let Some(end) = rest.windows(2).position(|pair| pair[0] == b'\r' && pair[1] == b'\n') else {
            return Err(if rest.len() > MOST_HEADER && rest[0] != b'-' && rest[0] != b'+' {
                self.bad(self.at, "a header line without its end")
            } else {
                Stop::Incomplete
            });
        };
        self.at += end + 2;
        Ok(&rest[..end])
    }

    fn header(&mut self) -> Result<Header<'a>, Stop> {
        let at = self.at;
        let line = self.line()?;
        let Some((&kind, rest)) = line.split_first() else { return Err(self.bad(at, "an empty line")) };
        let length = |reader: &Self| -> Result<Option<usize>, Stop> {
            match rest {
                b"-1" => Ok(None),
                _ => decimal(rest)
                    .and_then(|length| usize::try_from(length).ok())
                    .map(Some)
                    .ok_or_else(|| reader.bad(at, "a length that is not a number")),
            }
        };
        Ok(match kind {
            b'*' | b'~' | b'>' => length(self)?.map_or(Header::Null, Header::Array),
            b'%' => length(self)?.map_or(Header::Null, Header::Map),
            b'$' | b'=' | b'!' => length(self)?.map_or(Header::Null, Header::Bulk),
            b'_' => Header::Null,
            b'+' => Header::Status(rest),
            b'-' => Header::Error(rest),
            other => Header::Other(other),
        })
    }

    /// A bulk string's bytes.
    fn bulk(&mut self) -> Result<&'a [u8], Stop> {
        let len = match self.header()? {
            Header::Bulk(len) if len <= MOST_BULK => len,
            other => return Err(self.unexpected(other, "a bulk string")),
        };
        let rest = &self.buf[self.at..];
        if rest.len() < len + 2 {
            return Err(Stop::Incomplete);
        }
        if &rest[len..len + 2] != b"\r\n" {
            return Err(self.bad(self.at + len, "a bulk string longer than its length"));
        }
        self.at += len + 2;
        Ok(&rest[..len])
    }

    /// An array's length: an array is what must come here.
    fn array(&mut self) -> Result<usize, Stop> {
        match self.header()? {
            Header::Array(len) => Ok(len),
            other => Err(self.unexpected(other, "an array")),
        }
    }

    /// An array of exactly `len` elements.
    fn array_of(&mut self, len: usize) -> Result<(), Stop> {
        let at = self.at;
        match self.array()? {
            found if found == len => Ok(()),
            found => Err(self.bad(at, &format!("an array of {found} where {len} belong"))),
        }
    }

    /// A range of entries, added to `entries`. Nil (RESP3 may say so for none) adds none.
    fn entries(&mut self, entries: &mut Vec<RawEntry<'a>>) -> Result<(), Stop> {
        let count = match self.header()? {
            Header::Array(count) => count,
            Header::Null => return Ok(()),
            other => return Err(self.unexpected(other, "an array of entries")),
        };
        entries.reserve(self.room_for(count));
        for _ in 0..count {
            self.array_of(2)?;
            let id = self.bulk()?;
            let at = self.at;
            let values = self.array()?;
            if values % 2 != 0 {
                return Err(self.bad(at, "fields without their values"));
            }
            let mut fields = Vec::with_capacity(self.room_for(values / 2));
            for _ in 0..values / 2 {
                fields.push((self.bulk()?, self.bulk()?));
            }
            entries.push(RawEntry { id, fields });
        }
        Ok(())
    }

    /// How many of `count` elements the bytes left could hold at most (each takes at least
    /// four): what a length is trusted with before its elements are there.
    fn room_for(&self, count: usize) -> usize {
        count.min((self.buf.len() - self.at) / 4)
    }

    fn unexpected(&self, found: Header<'_>, wanted: &str) -> Stop {
        let found = match found {
            Header::Error(text) => {
                return Stop::Bad(RespError::Refused(String::from_utf8_lossy(text).into()))
            }
            Header::Other(kind) => format!("a reply of kind {:?}", char::from(kind)),
            other => format!("{other:?}"),
        };
        self.bad(self.at, &format!("{found} where {wanted} belongs"))
    }

    fn bad(&self, at: usize, what: &str) -> Stop {
        Stop::Bad(RespError::Unexpected { at, what: what.to_string() })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `items` as a RESP array of bulk strings.
    fn bulks(items: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", items.len()).into_bytes();
        for item in items {
            out.extend_from_slice(format!("${}\r\n", item.len()).as_bytes());
            out.extend_from_slice(item);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// An entry as Redis writes it: `*2`, its id, its fields.
    pub(in crate::cluster) fn entry_bytes(id: &str, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = format!("*2\r\n${}\r\n{id}\r\n", id.len()).into_bytes();
        let flat: Vec<&[u8]> = fields.iter().flat_map(|(name, value)| [*name, *value]).collect();
        out.extend(bulks(&flat));
        out
    }

    /// An `XREAD` reply of one stream holding `entries` (each from [`entry_bytes`]).
    pub(in crate::cluster) fn xread_bytes(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*1\r\n*2\r\n$13\r\nhasses:events\r\n*{}\r\n", entries.len()).into_bytes();
        entries.iter().for_each(|entry| out.extend_from_slice(entry));
        out
    }

    fn ids(parsed: Result<Parsed<Vec<RawEntry<'_>>>, RespError>) -> (Vec<String>, usize) {
        match parsed {
            Ok(Parsed::Whole(entries, used)) => {
                (entries.iter().map(|e| String::from_utf8_lossy(e.id).into_owned()).collect(), used)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_read_gives_its_entries_with_their_fields_borrowed() {
        let a = entry_bytes("1-0", &[(b"d", b"hello"), (b"t", b"=1:t")]);
        let b = entry_bytes("1-1", &[(b"d", b"")]);
        let reply = xread_bytes(&[a.clone(), b]);
        let Ok(Parsed::Whole(entries, used)) = read_reply(&reply) else { panic!() };
        assert_eq!(used, reply.len());
        assert_eq!(entries[0].id, b"1-0");
        assert_eq!(entries[0].fields, [(&b"d"[..], &b"hello"[..]), (b"t", b"=1:t")]);
        assert_eq!(entries[1].fields, [(&b"d"[..], &b""[..])]);
        // A range is the entries alone; whatever follows the reply is left for the next.
        let mut range = b"*1\r\n".to_vec();
        range.extend_from_slice(&a);
        let used = range.len();
        range.extend_from_slice(b"+OK\r\n");
        assert_eq!(ids(range_reply(&range)), (vec!["1-0".to_string()], used));
    }

    #[test]
    fn every_shape_of_an_empty_read_gives_no_entry() {
        for nil in [&b"*-1\r\n"[..], b"_\r\n", b"*0\r\n", b"%0\r\n"] {
            assert_eq!(ids(read_reply(nil)), (vec![], nil.len()), "{nil:?}");
        }
        assert_eq!(ids(range_reply(b"*0\r\n")), (vec![], 4));
    }

    #[test]
    fn a_resp3_map_reads_as_the_pairs_do() {
        let mut reply = b"%1\r\n$13\r\nhasses:events\r\n*1\r\n".to_vec();
        reply.extend(entry_bytes("7-2", &[(b"d", b"x")]));
        assert_eq!(ids(read_reply(&reply)), (vec!["7-2".to_string()], reply.len()));
    }

    #[test]
    fn a_command_is_written_as_the_redis_client_writes_it() {
        let args: [&[u8]; 6] = [b"XADD", b"hasses:events", b"*", b"d", b"line\r\ntwo", b""];
        let mut out = b"+before".to_vec();
        push_command(&mut out, args.iter().copied());
        let mut client = redis::cmd("XADD");
        args[1..].iter().for_each(|arg| {
            client.arg(*arg);
        });
        assert_eq!(out[7..], client.get_packed_command()[..]);
        assert_eq!(&out[..7], b"+before", "appended");
    }

    #[test]
    fn an_appended_entry_s_id_is_read_from_its_bulk_string() {
        assert_eq!(
            bulk_reply(b"$15\r\n1700000000000-0\r\n+x"),
            Ok(Parsed::Whole(&b"1700000000000-0"[..], 22))
        );
        assert_eq!(bulk_reply(b"$15\r\n1700000000000-0\r"), Ok(Parsed::Incomplete));
        assert!(
            matches!(bulk_reply(b"-WRONGTYPE no\r\n"), Err(RespError::Refused(e)) if e == "WRONGTYPE no")
        );
        assert!(matches!(bulk_reply(b"$-1\r\n"), Err(RespError::Unexpected { .. })));
        assert!(matches!(bulk_reply(b"$2\r\nabc\r\n"), Err(RespError::Unexpected { .. })));
    }

    #[test]
    fn a_status_and_an_error_are_told_apart() {
        assert_eq!(status_reply(b"+OK\r\n"), Ok(Parsed::Whole(&b"OK"[..], 5)));
        assert_eq!(status_reply(b"+OK\r"), Ok(Parsed::Incomplete));
        let refused = Err(RespError::Refused("WRONGPASS invalid username-password pair".into()));
        assert_eq!(status_reply(b"-WRONGPASS invalid username-password pair\r\n"), refused);
        assert!(matches!(read_reply(b"-ERR no\r\n"), Err(RespError::Refused(e)) if e == "ERR no"));
        assert!(matches!(status_reply(b":1\r\n"), Err(RespError::Unexpected { .. })));
    }

    #[test]
    fn what_is_not_a_stream_reply_is_refused_with_where() {
        let bad = |bytes: &[u8]| match read_reply(bytes) {
            Err(RespError::Unexpected { at, what }) => (at, what),
            other => panic!("{bytes:?}: {other:?}"),
        };
        assert_eq!(bad(b":5\r\n").0, 4);
        assert!(bad(b"*1\r\n*3\r\n").1.contains("an array of 3 where 2 belong"));
        assert!(bad(b"*x\r\n").1.contains("not a number"));
        assert!(bad(b"*+1\r\n").1.contains("not a number"));
        assert!(bad(&[b'*'; 40]).1.contains("without its end"));
        assert!(bad(b"\r\n").1.contains("empty"));
        // A field without its value; a bulk string longer than it says.
        let mut odd = xread_bytes(&[]);
        odd.truncate(odd.len() - 4);
        odd.extend_from_slice(b"*1\r\n*2\r\n$1\r\n1\r\n*1\r\n$1\r\nd\r\n");
        assert!(bad(&odd).1.contains("fields without their values"));
        assert!(matches!(range_reply(b"*1\r\n*2\r\n$1\r\n1-0\r\n"), Err(RespError::Unexpected { .. })));
    }

    #[test]
    fn a_reply_s_length_is_found_whatever_its_shape() {
        for reply in
            [&b"+OK\r\n"[..], b"-ERR x\r\n", b":12\r\n", b"$-1\r\n", b"*0\r\n", b"%1\r\n+a\r\n$1\r\nb\r\n"]
        {
            assert_eq!(reply_len(reply), Ok(Some(reply.len())), "{reply:?}");
            let mut two = reply.to_vec();
            two.extend_from_slice(b"+next\r\n");
            assert_eq!(reply_len(&two), Ok(Some(reply.len())), "only the first");
        }
        // Nested far deeper than any reply: no recursion to run out of stack.
        let deep = b"*1\r\n".repeat(100_000);
        assert_eq!(reply_len(&deep), Ok(None));
        assert!(reply_len(b"*1\r\n%9223372036854775808\r\n").is_err());
    }

    #[test]
    fn a_huge_length_reserves_nothing_it_has_not_seen() {
        assert_eq!(range_reply(b"*4611686018427387903\r\n"), Ok(Parsed::Incomplete));
        assert!(read_reply(b"*1\r\n*2\r\n$999999999999\r\n").is_err(), "over Redis' own bulk limit");
    }

    /// An entry's fields, owned.
    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn reply_of(entries: &[(u64, Fields)]) -> Vec<u8> {
        let entries: Vec<Vec<u8>> = entries
            .iter()
            .map(|(seq, fields)| {
                let fields: Vec<(&[u8], &[u8])> = fields.iter().map(|(n, v)| (&n[..], &v[..])).collect();
                entry_bytes(&format!("5-{seq}"), &fields)
            })
            .collect();
        xread_bytes(&entries)
    }

    fn some_entries() -> impl Strategy<Value = Vec<(u64, Fields)>> {
        let field = (prop::collection::vec(any::<u8>(), 0..4), prop::collection::vec(any::<u8>(), 0..40));
        prop::collection::vec((any::<u64>(), prop::collection::vec(field, 0..5)), 0..6)
    }

    proptest! {
        /// Whatever the fields hold (`\r\n` included), a reply reads back as written.
        #[test]
        fn a_reply_reads_back_as_written(entries in some_entries()) {
            let reply = reply_of(&entries);
            let Ok(Parsed::Whole(read, used)) = read_reply(&reply) else { panic!() };
            prop_assert_eq!(used, reply.len());
            prop_assert_eq!(reply_len(&reply), Ok(Some(used)));
            let read: Vec<(String, Fields)> = read
                .iter()
                .map(|e| (String::from_utf8_lossy(e.id).into_owned(), e.fields.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect()))
                .collect();
            let written: Vec<_> = entries.into_iter().map(|(seq, fields)| (format!("5-{seq}"), fields)).collect();
            prop_assert_eq!(read, written);
        }

        /// A reply cut anywhere is incomplete, never an error or a shorter reply.
        #[test]
        fn a_reply_cut_short_asks_for_more(entries in some_entries(), cut in any::<prop::sample::Index>()) {
            let reply = reply_of(&entries);
            let cut = cut.index(reply.len());
            prop_assert_eq!(read_reply(&reply[..cut]), Ok(Parsed::Incomplete));
            prop_assert_eq!(reply_len(&reply[..cut]), Ok(None));
        }

        /// Garbled bytes never panic: an error, a wait for more, or a reply within the buffer.
        #[test]
        fn garbled_bytes_never_panic(
            entries in some_entries(),
            changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            noise in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut reply = reply_of(&entries);
            for (at, byte) in changes {
                let at = at.index(reply.len());
                reply[at] = byte;
            }
            for bytes in [&reply[..], &noise[..]] {
                if let Ok(Parsed::Whole(_, used)) = read_reply(bytes) {
                    prop_assert!(used <= bytes.len());
                }
                if let Ok(Some(used)) = reply_len(bytes) {
                    prop_assert!(used <= bytes.len());
                }
                let _ = range_reply(bytes);
                let _ = status_reply(bytes);
            }
        }
    }
}
