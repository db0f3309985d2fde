//! SSE event framing: turns one message into the bytes of one HTTP chunk.
//!
//! Owns the wire format of an event (`<hex len>\r\n` `id: N\ndata: …\n\n` `\r\n`) and the event-id
//! scheme. Pure functions over bytes: no I/O, no knowledge of connections or subscriptions.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// One encoded event, ready to be written as is to every plain-TCP recipient.
/// Cloning shares the bytes; it never copies them.
pub type Frame = Bytes;

const ID_PREFIX: &[u8] = b"id: ";
/// hasses writes `data: <MESSAGE>`, with the space; EventSource drops exactly one such space.
const DATA_PREFIX: &[u8] = b"data: ";
const CRLF: &[u8] = b"\r\n";

/// Encodes `message` as one chunk of a chunked `text/event-stream` response.
///
/// A message never puts a line break inside a `data:` value: every `\n`, `\r\n` or lone `\r` in
/// it starts a new `data:` line, which an EventSource joins back with `\n`. An empty message gives
/// one empty `data: ` line, so the browser still sees an event.
///
/// The frame is built in one allocation of its exact size: it is encoded once per publish and
/// then shared by every recipient.
pub fn encode_event(id: u64, message: &[u8]) -> Frame {
    let payload = payload_len(id, message);
    let mut out = Vec::with_capacity(hex_digits(payload) + CRLF.len() + payload + CRLF.len());
    push_hex(&mut out, payload);
    out.extend_from_slice(CRLF);
    out.extend_from_slice(ID_PREFIX);
    push_decimal(&mut out, id);
    out.push(b'\n');
    for line in DataLines::new(message) {
        out.extend_from_slice(DATA_PREFIX);
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(CRLF);
    debug_assert_eq!(out.len(), out.capacity());
    Bytes::from(out)
}

/// The length of `id: N\n` + the `data:` lines + the blank line: the chunk's declared size.
fn payload_len(id: u64, message: &[u8]) -> usize {
    let data: usize = DataLines::new(message).map(|line| DATA_PREFIX.len() + line.len() + 1).sum();
    ID_PREFIX.len() + decimal_digits(id) + 1 + data + 1
}

fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

fn hex_digits(n: usize) -> usize {
    n.checked_ilog2().map_or(1, |log| log as usize / 4 + 1)
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes `n` in lowercase hex, as the chunk-size line of HTTP/1.1 chunked encoding.
fn push_hex(out: &mut Vec<u8>, n: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for i in (0..hex_digits(n)).rev() {
        out.push(DIGITS[(n >> (4 * i)) & 0xf]);
    }
}

/// The lines of a message, split on `\n`, `\r\n` or a lone `\r` (the three line endings of the
/// SSE grammar). A trailing line ending yields a last empty line, so the browser gets the message
/// back with its final newline.
struct DataLines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> DataLines<'a> {
    fn new(message: &'a [u8]) -> Self {
        Self { rest: Some(message) }
    }
}

impl<'a> Iterator for DataLines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') else {
            self.rest = None;
            return Some(rest);
        };
        let ending = if rest[end..].starts_with(CRLF) { 2 } else { 1 };
        self.rest = Some(&rest[end + ending..]);
        Some(&rest[..end])
    }
}

/// The chunk that sets how long a browser waits before it reconnects (`--retry`), sent at the
/// start of every stream.
pub fn retry_chunk(ms: u32) -> Frame {
    chunk(format!("retry: {ms}\n\n").as_bytes())
}

/// The event that tells a resuming client that something it would have received is gone:
/// `event: reset` (a named event, so hasses-era pages' `onmessage` never sees it) with the id
/// it asked for as JSON, and no `id:` line, so the browser's last id stays as it was.
pub fn reset_event(asked: &str) -> Frame {
    let data = serde_json::json!({ "lastEventId": asked });
    chunk(format!("event: reset\ndata: {data}\n\n").as_bytes())
}

/// `payload` as one HTTP chunk.
fn chunk(payload: &[u8]) -> Frame {
    let mut out = Vec::with_capacity(hex_digits(payload.len()) + payload.len() + 2 * CRLF.len());
    push_hex(&mut out, payload.len());
    out.extend_from_slice(CRLF);
    out.extend_from_slice(payload);
    out.extend_from_slice(CRLF);
    Bytes::from(out)
}

/// The chunk of an SSE comment (`:` and a blank line): EventSource ignores it, while proxies
/// and load balancers see traffic on an idle stream and a dead peer shows up as a failed write.
pub fn heartbeat() -> Frame {
    Bytes::from_static(b"3\r\n:\n\n\r\n")
}

/// The last chunk of a chunked response: the stream ends here, as HTTP says, before a close.
pub fn last_chunk() -> Frame {
    Bytes::from_static(b"0\r\n\r\n")
}

/// Hands out event ids: numeric, strictly increasing within a run and across restarts.
///
/// Ids are the run's start time in microseconds since the Unix epoch plus a counter, so a later
/// run starts above every id an earlier run could have issued (unless it published more than one
/// message per microsecond of its life).
#[derive(Debug)]
pub struct EventIds {
    next: u64,
}

impl EventIds {
    /// Starts the sequence at the current wall-clock time.
    ///
    /// A clock set before 1970 starts the sequence at 0: ids are still increasing within the run.
    pub fn starting_now() -> Self {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        // Microseconds fit in a u64 until the year 586,000.
        Self::starting_at(since_epoch.as_micros() as u64)
    }

    /// Starts the sequence at `first` (for tests).
    pub fn starting_at(first: u64) -> Self {
        Self { next: first }
    }

    /// The id the next call to [`EventIds::next_id`] returns.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// The next id; every call returns a larger one than the call before.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next;
        // Starting from today's microseconds, u64 lasts over 500,000 years: overflow would be a bug.
        self.next = id.checked_add(1).expect("event id overflow");
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Splits a frame into its declared length and its payload, checking the chunk framing.
    fn unchunk(frame: &[u8]) -> (usize, &[u8]) {
        let size_end = frame.windows(2).position(|w| w == CRLF).expect("size line");
        let declared = usize::from_str_radix(std::str::from_utf8(&frame[..size_end]).unwrap(), 16).unwrap();
        assert!(frame.ends_with(CRLF), "chunk ends with CRLF");
        (declared, &frame[size_end + 2..frame.len() - 2])
    }

    #[test]
    fn simple_message_exact_bytes() {
        let frame = encode_event(42, b"hello");
        assert_eq!(&frame[..], b"14\r\nid: 42\ndata: hello\n\n\r\n");
    }

    #[test]
    fn empty_message_gives_one_empty_data_line() {
        let frame = encode_event(0, b"");
        assert_eq!(&frame[..], b"e\r\nid: 0\ndata: \n\n\r\n");
    }

    #[test]
    fn every_line_ending_starts_a_data_line() {
        let frame = encode_event(7, b"a\nb\r\nc\rd");
        let (declared, payload) = unchunk(&frame);
        assert_eq!(payload, b"id: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
        assert_eq!(declared, payload.len());
    }

    #[test]
    fn trailing_and_doubled_line_endings_keep_empty_lines() {
        let frame = encode_event(1, b"a\n\r\r\n");
        let (_, payload) = unchunk(&frame);
        assert_eq!(payload, b"id: 1\ndata: a\ndata: \ndata: \ndata: \n\n");
    }

    #[test]
    fn large_message_has_correct_hex_length() {
        let message = vec![b'x'; 64 * 1024];
        let frame = encode_event(u64::MAX, &message);
        let (declared, payload) = unchunk(&frame);
        assert_eq!(declared, payload.len());
        assert_eq!(declared, "id: 18446744073709551615\n".len() + 6 + 64 * 1024 + 1 + 1);
        assert!(frame.starts_with(b"10021\r\n"));
    }

    #[test]
    fn digit_counts_at_boundaries() {
        for (n, dec) in [(0, 1), (9, 1), (10, 2), (99, 2), (100, 3), (u64::MAX, 20)] {
            assert_eq!(decimal_digits(n), dec, "{n}");
        }
        for (n, hex) in [(0, 1), (15, 1), (16, 2), (255, 2), (256, 3), (usize::MAX, 16)] {
            assert_eq!(hex_digits(n), hex, "{n}");
        }
    }

    #[test]
    fn ids_increase_from_now() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        let mut ids = EventIds::starting_now();
        let first = ids.next_id();
        assert!(first >= before);
        assert_eq!(ids.next_id(), first + 1);
    }

    proptest! {
        #[test]
        fn chunk_length_matches_and_data_values_are_single_lines(
            id in any::<u64>(),
            message in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let frame = encode_event(id, &message);
            let (declared, payload) = unchunk(&frame);
            prop_assert_eq!(declared, payload.len());
            let expected_id = format!("id: {id}\n");
            prop_assert!(payload.starts_with(expected_id.as_bytes()));
            prop_assert!(payload.ends_with(b"\n\n"));
            let body = &payload[expected_id.len()..payload.len() - 1];
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                prop_assert!(line.starts_with(DATA_PREFIX));
                prop_assert!(!line.contains(&b'\r'));
            }
            let lines_in = message.iter().filter(|b| **b == b'\n' || **b == b'\r').count()
                - message.windows(2).filter(|w| *w == CRLF).count() + 1;
            prop_assert_eq!(body.iter().filter(|b| **b == b'\n').count(), lines_in);
        }
    }
}
