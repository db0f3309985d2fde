//! SSE event framing: turns one event into the bytes of one HTTP chunk.
//!
//! Owns the wire format of an event (`<hex len>\r\n` `id: N\n` `event: TYPE\n` `retry: MS\n`
//! `data: …\n` `\n` `\r\n`, every field but the blank line optional) and the event-id scheme.
//! Pure functions over bytes: no I/O, no knowledge of connections or subscriptions.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// One encoded event, ready to be written as is to every plain-TCP recipient.
/// Cloning shares the bytes; it never copies them.
pub type Frame = Bytes;

const ID_PREFIX: &[u8] = b"id: ";
const EVENT_PREFIX: &[u8] = b"event: ";
const RETRY_PREFIX: &[u8] = b"retry: ";
/// hasses writes `data: <MESSAGE>`, with the space; EventSource drops exactly one such space.
const DATA_PREFIX: &[u8] = b"data: ";
const CRLF: &[u8] = b"\r\n";

/// The fields of one event, written in this order; a field that is `None` is left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventFields<'a> {
    /// `id:`. Without it the browser keeps the id it had, and sends that on reconnection.
    pub id: Option<u64>,
    /// `event:`, the event type (the browser's default is `message`). Only its first line is
    /// written: a line break would end the field and start another, so a type could forge an
    /// `id:` or `data:` line. Commands refuse such types before they get here.
    pub event: Option<&'a str>,
    /// `retry:`, the reconnection time in milliseconds the browser keeps from then on.
    pub retry: Option<u32>,
    /// The `data:` lines, split on line endings as [`encode_event`] says; `None` writes none,
    /// and then the browser dispatches no event (the block only sets fields).
    pub data: Option<&'a [u8]>,
}

/// Encodes `message` as event `id`: `id: N` and its `data:` lines, the form of every hasses
/// publish. See [`encode`].
///
/// A message never puts a line break inside a `data:` value: every `\n`, `\r\n` or lone `\r` in
/// it starts a new `data:` line, which an EventSource joins back with `\n`. An empty message gives
/// one empty `data: ` line, so the browser still sees an event.
pub fn encode_event(id: u64, message: &[u8]) -> Frame {
    encode(&EventFields { id: Some(id), data: Some(message), ..EventFields::default() })
}

/// Encodes an event as one chunk of a chunked `text/event-stream` response.
///
/// The frame is built in one allocation of its exact size: it is encoded once per publish and
/// then shared by every recipient.
pub fn encode(fields: &EventFields<'_>) -> Frame {
    let event = fields.event.map(first_line);
    let payload = payload_len(fields.id, event, fields.retry, fields.data);
    let mut out = Vec::with_capacity(hex_digits(payload) + CRLF.len() + payload + CRLF.len());
    push_hex(&mut out, payload);
    out.extend_from_slice(CRLF);
    if let Some(id) = fields.id {
        push_field(&mut out, ID_PREFIX, itoa::Buffer::new().format(id).as_bytes());
    }
    if let Some(event) = event {
        push_field(&mut out, EVENT_PREFIX, event);
    }
    if let Some(retry) = fields.retry {
        push_field(&mut out, RETRY_PREFIX, itoa::Buffer::new().format(retry).as_bytes());
    }
    for line in fields.data.into_iter().flat_map(DataLines::new) {
        push_field(&mut out, DATA_PREFIX, line);
    }
    out.push(b'\n');
    out.extend_from_slice(CRLF);
    debug_assert_eq!(out.len(), out.capacity());
    Bytes::from(out)
}

/// A chunk that only sets the browser's reconnection time (`retry: MS` and a blank line): it
/// dispatches no event, so it may start any stream.
pub fn retry_chunk(ms: u32) -> Frame {
    encode(&EventFields { retry: Some(ms), ..EventFields::default() })
}

/// The `reset` event, telling a client that the `Last-Event-ID` it `asked` to resume from is
/// gone from history: `event: reset` and `data: {"lastEventId":"…"}`. It has no `id:`, so the
/// browser keeps the id it had.
pub fn reset_event(asked: &str) -> Frame {
    let data = serde_json::json!({ "lastEventId": asked }).to_string();
    encode(&EventFields { event: Some("reset"), data: Some(data.as_bytes()), ..EventFields::default() })
}

fn push_field(out: &mut Vec<u8>, prefix: &[u8], value: &[u8]) {
    out.extend_from_slice(prefix);
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A field's length on the wire: its prefix, its value and its `\n`.
fn field_len(prefix: &[u8], value_len: usize) -> usize {
    prefix.len() + value_len + 1
}

/// The fields and the blank line: the chunk's declared size.
fn payload_len(id: Option<u64>, event: Option<&[u8]>, retry: Option<u32>, data: Option<&[u8]>) -> usize {
    let id = id.map_or(0, |id| field_len(ID_PREFIX, decimal_digits(id)));
    let event = event.map_or(0, |event| field_len(EVENT_PREFIX, event.len()));
    let retry = retry.map_or(0, |ms| field_len(RETRY_PREFIX, decimal_digits(u64::from(ms))));
    let data: usize =
        data.into_iter().flat_map(DataLines::new).map(|line| field_len(DATA_PREFIX, line.len())).sum();
    id + event + retry + data + 1
}

/// `text` up to its first line break: what a one-line field may hold.
fn first_line(text: &str) -> &[u8] {
    DataLines::new(text.as_bytes()).next().unwrap_or_default()
}

fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

fn hex_digits(n: usize) -> usize {
    n.checked_ilog2().map_or(1, |log| log as usize / 4 + 1)
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

/// The chunk of an SSE comment (`:` and a blank line): EventSource ignores it, while proxies
/// and load balancers see traffic on an idle stream and a dead peer shows up as a failed write.
pub fn heartbeat() -> Frame {
    Bytes::from_static(b"3\r\n:\n\n\r\n")
}

/// The last chunk of a chunked response: the stream ends here, as HTTP says, before a close.
pub fn last_chunk() -> Frame {
    Bytes::from_static(b"0\r\n\r\n")
}

/// The SSE text inside a chunk this module built (a frame, a heartbeat, the last chunk), as an
/// HTTP/2 stream sends it in DATA: the same bytes, without the chunk's size line and its CRLF.
/// Shares the frame's bytes; a frame that is not a chunk comes back whole.
pub fn chunk_payload(frame: &Frame) -> Frame {
    frame.slice_ref(chunk_text(frame))
}

/// The SSE text inside `chunk`, as [`chunk_payload`], borrowed.
pub fn chunk_text(chunk: &[u8]) -> &[u8] {
    let Some(start) = chunk.windows(2).position(|pair| pair == CRLF).map(|at| at + 2) else {
        return chunk;
    };
    let end = chunk.len().saturating_sub(CRLF.len()).max(start);
    &chunk[start..end]
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

    /// Goes on above `last`, an id an earlier run issued (read back from the history file):
    /// ids keep growing even when the clock went back.
    pub fn above(self, last: u64) -> Self {
        Self { next: self.next.max(last.saturating_add(1)) }
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

    #[test]
    fn ids_go_on_above_an_earlier_run_even_when_the_clock_went_back() {
        assert_eq!(EventIds::starting_at(100).above(500).next_id(), 501);
        assert_eq!(EventIds::starting_at(100).above(50).next_id(), 100);
        assert_eq!(EventIds::starting_at(100).above(u64::MAX).peek(), u64::MAX);
    }

    #[test]
    fn every_field_in_order_exact_bytes() {
        let fields = EventFields { id: Some(5), event: Some("chat"), retry: Some(3000), data: Some(b"a\nb") };
        let frame = encode(&fields);
        let (declared, payload) = unchunk(&frame);
        assert_eq!(payload, b"id: 5\nevent: chat\nretry: 3000\ndata: a\ndata: b\n\n");
        assert_eq!(declared, payload.len());
    }

    #[test]
    fn a_hasses_message_is_the_same_frame_either_way() {
        let fields = EventFields { id: Some(42), data: Some(b"hello"), ..EventFields::default() };
        assert_eq!(encode(&fields), encode_event(42, b"hello"));
    }

    #[test]
    fn an_event_type_keeps_only_its_first_line() {
        let fields = EventFields { event: Some("chat\r\ndata: forged\nid: 1"), ..EventFields::default() };
        assert_eq!(&encode(&fields)[..], b"d\r\nevent: chat\n\n\r\n");
    }

    #[test]
    fn retry_chunk_only_sets_the_reconnection_time() {
        assert_eq!(&retry_chunk(3000)[..], b"d\r\nretry: 3000\n\n\r\n");
        let frame = retry_chunk(u32::MAX);
        let (declared, payload) = unchunk(&frame);
        assert_eq!((declared, payload), (payload.len(), &b"retry: 4294967295\n\n"[..]));
    }

    #[test]
    fn reset_event_has_no_id_and_escapes_what_was_asked() {
        let frame = reset_event("12\"\n\\x");
        let (declared, payload) = unchunk(&frame);
        assert_eq!(payload, b"event: reset\ndata: {\"lastEventId\":\"12\\\"\\n\\\\x\"}\n\n");
        assert_eq!(declared, payload.len());
        let data = std::str::from_utf8(&payload[19..payload.len() - 2]).unwrap();
        let json: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(json["lastEventId"], "12\"\n\\x");
    }

    fn line_breaks() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), any::<u8>()], 0..512)
    }

    proptest! {
        #[test]
        fn chunk_length_matches_and_data_values_are_single_lines(
            id in any::<u64>(),
            message in line_breaks(),
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

        /// Whatever the fields hold, the chunk's size is exact and every line of it is one
        /// whole field, in order: no value ever holds a CR or LF.
        #[test]
        fn any_fields_give_an_exact_chunk_of_one_line_fields(
            id in proptest::option::of(any::<u64>()),
            event in proptest::option::of("[a\r\n\u{0}-\u{10FFFF}]{0,20}"),
            retry in proptest::option::of(any::<u32>()),
            data in proptest::option::of(line_breaks()),
        ) {
            let fields = EventFields { id, event: event.as_deref(), retry, data: data.as_deref() };
            let frame = encode(&fields);
            let (declared, payload) = unchunk(&frame);
            prop_assert_eq!(declared, payload.len());
            prop_assert!(payload.ends_with(b"\n\n") || payload == b"\n");
            let body = &payload[..payload.len() - 1];
            prop_assert!(!body.contains(&b'\r'));
            let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
            let prefixes = [ID_PREFIX, EVENT_PREFIX, RETRY_PREFIX, DATA_PREFIX];
            let mut last = 0;
            for line in &lines {
                let field = prefixes.iter().position(|p| line.starts_with(p));
                prop_assert!(field.is_some_and(|f| f >= last), "{:?}", line.escape_ascii().to_string());
                last = field.unwrap_or(last);
            }
            let count = |prefix: &[u8]| lines.iter().filter(|l| l.starts_with(prefix)).count();
            prop_assert_eq!(count(ID_PREFIX), usize::from(id.is_some()));
            prop_assert_eq!(count(EVENT_PREFIX), usize::from(event.is_some()));
            prop_assert_eq!(count(RETRY_PREFIX), usize::from(retry.is_some()));
            prop_assert_eq!(count(DATA_PREFIX), data.as_deref().map_or(0, |d| DataLines::new(d).count()));
        }
    }

    #[test]
    fn a_chunk_payload_is_the_event_text_alone() {
        assert_eq!(chunk_payload(&encode_event(7, b"hi\nyou")), &b"id: 7\ndata: hi\ndata: you\n\n"[..]);
        assert_eq!(chunk_payload(&heartbeat()), &b":\n\n"[..]);
        assert!(chunk_payload(&last_chunk()).is_empty());
        assert_eq!(chunk_payload(&retry_chunk(10)), &b"retry: 10\n\n"[..]);
    }
}
