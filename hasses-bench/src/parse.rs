//! The receive side's wire parser: the HTTP response head, the chunked transfer coding and
//! the SSE events inside it (`id: N\n`, `data: ...\n\n`); or, for an HTTP/2 stream, whose
//! DATA frames carry the SSE text bare, the events alone.
//!
//! Pure over bytes: no I/O, no allocation. All state lives in [`StreamParser`], so a read may
//! end anywhere (inside a chunk-size line, inside a field name, inside a number) and the next
//! read carries on. It understands exactly the payloads the bench publishes (see
//! [`crate::control`]): `b<seq>:<ts>:<pad>` for broadcasts and `t<seq>:<ts>:<target>:<pad>` for
//! targeted messages; an event whose data has another shape is handed over with `kind` as found
//! and fewer numbers, for the caller to count as foreign.

/// What the server must answer a subscription with (the status line's first 12 bytes).
const STATUS_OK: &[u8] = b"HTTP/1.1 200";
/// Blank line that ends the response head.
const HEAD_END: &[u8] = b"\r\n\r\n";
/// A chunk larger than this is taken as a corrupt stream rather than waited for.
const MAX_CHUNK: u64 = 16 << 20;
/// Numbers parsed from an event's data (`seq`, `ts`, `target`).
pub const NUMS: usize = 3;

/// One SSE event, as far as the bench cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Event {
    /// The `id:` field, when present and all digits.
    pub id: Option<u64>,
    /// It had an `event:` field: the server's own (the bench publishes none), in practice the
    /// `event: reset` that tells a resuming client of a gap.
    pub named: bool,
    /// The first byte of the data (`b` broadcast, `t` targeted), 0 when there was no data.
    pub kind: u8,
    /// The `:`-terminated decimal numbers after `kind`.
    pub nums: [u64; NUMS],
    /// How many of `nums` were terminated by a `:`.
    pub count: u8,
}

/// Why a stream cannot be read any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoError {
    /// The response is not `HTTP/1.1 200`.
    Status,
    /// A chunk-size line that is not hexadecimal, or too large.
    ChunkSize,
    /// Chunk data not followed by CRLF.
    ChunkEnd,
    /// The server ended the chunked stream (a zero-size chunk).
    EndOfStream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// In the response head; `status` bytes of the status line checked, `matched` bytes of
    /// the blank line seen.
    Head { status: u8, matched: u8 },
    /// In a chunk-size line; `digits` hex digits read so far.
    Size { digits: u8 },
    /// After `;` on a chunk-size line: skipping the extension.
    SizeExt,
    /// Inside chunk data.
    Data,
    /// After chunk data, expecting CR.
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// The SSE text alone, unframed (an HTTP/2 stream's DATA).
    Bare,
    /// A protocol error was found; everything is ignored.
    Failed(ProtoError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line.
    Start,
    /// In a field name (`name_len` bytes so far).
    Name,
    /// Right after the `:`: an optional single space may follow.
    ValueStart,
    /// In the value of an `id` field.
    Id,
    /// In the value of a `data` field, at its first byte (the kind).
    DataKind,
    /// In the value of a `data` field, inside the numbers.
    DataNums,
    /// In the value of a `retry` field (the reconnection time, ms).
    Retry,
    /// In a value nobody reads: skip to the end of the line.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Data,
    Event,
    Retry,
    Other,
}

/// The state of one connection's inbound stream.
#[derive(Debug, Clone)]
pub struct StreamParser {
    stage: Stage,
    chunk_left: u64,
    line: Line,
    field: Field,
    name: [u8; 5],
    name_len: u8,
    event: Event,
    id_ok: bool,
    has_data: bool,
    /// The `retry` value being read; None once a byte was not a digit.
    retry_value: Option<u64>,
    /// The last whole `retry` value the stream gave.
    retry: Option<u64>,
}

impl Default for StreamParser {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamParser {
    /// A parser expecting the response head.
    pub fn new() -> Self {
        StreamParser {
            stage: Stage::Head { status: 0, matched: 0 },
            chunk_left: 0,
            line: Line::Start,
            field: Field::Other,
            name: [0; 5],
            name_len: 0,
            event: Event::default(),
            id_ok: true,
            has_data: false,
            retry_value: None,
            retry: None,
        }
    }

    /// A parser of an HTTP/2 stream's SSE text: its head came in a HEADERS frame, its body in
    /// DATA frames without chunks.
    pub fn bare() -> Self {
        StreamParser { stage: Stage::Bare, ..Self::new() }
    }

    /// Whether the whole `200` response head has been read.
    pub fn handshaked(&self) -> bool {
        !matches!(self.stage, Stage::Head { .. } | Stage::Failed(_))
    }

    /// The reconnection time the stream asked for last (`retry:`, ms), if it did.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry
    }

    /// Reads `input`, calling `on_event` for every complete event, in order.
    pub fn feed(&mut self, input: &[u8], mut on_event: impl FnMut(&Event)) -> Result<(), ProtoError> {
        let mut pos = 0;
        while pos < input.len() {
            match self.stage {
                Stage::Head { status, matched } => {
                    pos += self.head(&input[pos..], status, matched)?;
                }
                Stage::Size { digits } => {
                    let b = input[pos];
                    pos += 1;
                    self.size_byte(b, digits)?;
                }
                Stage::SizeExt => match input[pos..].iter().position(|&b| b == b'\n') {
                    Some(at) => {
                        pos += at + 1;
                        self.end_size_line()?;
                    }
                    None => pos = input.len(),
                },
                Stage::Data => {
                    let take = self.chunk_left.min((input.len() - pos) as u64) as usize;
                    self.sse(&input[pos..pos + take], &mut on_event);
                    pos += take;
                    self.chunk_left -= take as u64;
                    if self.chunk_left == 0 {
                        self.stage = Stage::DataCr;
                    }
                }
                Stage::Bare => {
                    self.sse(&input[pos..], &mut on_event);
                    pos = input.len();
                }
                Stage::DataCr => {
                    self.expect(input[pos], b'\r', Stage::DataLf)?;
                    pos += 1;
                }
                Stage::DataLf => {
                    self.expect(input[pos], b'\n', Stage::Size { digits: 0 })?;
                    pos += 1;
                }
                Stage::Failed(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: ProtoError) -> Result<(), ProtoError> {
        self.stage = Stage::Failed(e);
        Err(e)
    }

    fn expect(&mut self, b: u8, want: u8, next: Stage) -> Result<(), ProtoError> {
        if b != want {
            return self.fail(ProtoError::ChunkEnd);
        }
        self.stage = next;
        Ok(())
    }

    /// Consumes head bytes; returns how many.
    fn head(&mut self, input: &[u8], mut status: u8, mut matched: u8) -> Result<usize, ProtoError> {
        for (i, &b) in input.iter().enumerate() {
            if (status as usize) < STATUS_OK.len() {
                if b != STATUS_OK[status as usize] {
                    self.fail(ProtoError::Status)?;
                }
                status += 1;
            }
            matched = if b == HEAD_END[matched as usize] { matched + 1 } else { u8::from(b == b'\r') };
            if matched as usize == HEAD_END.len() {
                self.stage = Stage::Size { digits: 0 };
                self.chunk_left = 0;
                return Ok(i + 1);
            }
        }
        self.stage = Stage::Head { status, matched };
        Ok(input.len())
    }

    fn size_byte(&mut self, b: u8, digits: u8) -> Result<(), ProtoError> {
        let value = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            b'\r' => return Ok(()),
            b';' => {
                self.stage = if digits == 0 { Stage::Failed(ProtoError::ChunkSize) } else { Stage::SizeExt };
                return if digits == 0 { Err(ProtoError::ChunkSize) } else { Ok(()) };
            }
            b'\n' if digits > 0 => return self.end_size_line(),
            _ => return self.fail(ProtoError::ChunkSize),
        };
        self.chunk_left = self.chunk_left * 16 + u64::from(value);
        if self.chunk_left > MAX_CHUNK {
            return self.fail(ProtoError::ChunkSize);
        }
        self.stage = Stage::Size { digits: digits.saturating_add(1) };
        Ok(())
    }

    fn end_size_line(&mut self) -> Result<(), ProtoError> {
        if self.chunk_left == 0 {
            return self.fail(ProtoError::EndOfStream);
        }
        self.stage = Stage::Data;
        Ok(())
    }

    /// Reads SSE bytes (the payload of chunks).
    fn sse(&mut self, input: &[u8], on_event: &mut impl FnMut(&Event)) {
        let mut pos = 0;
        while pos < input.len() {
            let b = input[pos];
            pos += 1;
            match self.line {
                Line::Start => match b {
                    b'\n' => self.dispatch(on_event),
                    b':' => self.line = Line::Skip,
                    _ => {
                        self.name[0] = b;
                        self.name_len = 1;
                        self.line = Line::Name;
                    }
                },
                Line::Name => match b {
                    b':' => {
                        self.field = match &self.name[..usize::from(self.name_len.min(5))] {
                            b"id" if self.name_len == 2 => Field::Id,
                            b"data" if self.name_len == 4 => Field::Data,
                            b"event" if self.name_len == 5 => Field::Event,
                            b"retry" if self.name_len == 5 => Field::Retry,
                            _ => Field::Other,
                        };
                        self.line = Line::ValueStart;
                    }
                    b'\n' => self.line = Line::Start,
                    _ => {
                        if let Some(slot) = self.name.get_mut(usize::from(self.name_len)) {
                            *slot = b;
                        }
                        self.name_len = self.name_len.saturating_add(1);
                    }
                },
                Line::ValueStart => {
                    self.start_value();
                    if b != b' ' {
                        pos -= 1;
                    }
                }
                Line::Id => match b {
                    b'0'..=b'9' => {
                        let id = self.event.id.unwrap_or(0);
                        self.event.id = Some(id.wrapping_mul(10).wrapping_add(u64::from(b - b'0')));
                    }
                    b'\n' => self.line = Line::Start,
                    _ => self.id_ok = false,
                },
                Line::Retry => match b {
                    b'0'..=b'9' => {
                        self.retry_value = self
                            .retry_value
                            .and_then(|v| v.checked_mul(10)?.checked_add(u64::from(b - b'0')));
                    }
                    b'\n' => {
                        self.retry = self.retry_value.or(self.retry);
                        self.line = Line::Start;
                    }
                    _ => self.retry_value = None,
                },
                Line::DataKind => {
                    if b == b'\n' {
                        self.line = Line::Start;
                    } else {
                        self.event.kind = b;
                        self.line = Line::DataNums;
                    }
                }
                Line::DataNums => match b {
                    b'0'..=b'9' => {
                        let n = &mut self.event.nums[usize::from(self.event.count)];
                        *n = n.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
                    }
                    b':' => {
                        self.event.count += 1;
                        if usize::from(self.event.count) == NUMS {
                            self.line = Line::Skip;
                        }
                    }
                    b'\n' => self.line = Line::Start,
                    _ => self.line = Line::Skip,
                },
                Line::Skip => match input[pos - 1..].iter().position(|&c| c == b'\n') {
                    Some(at) => {
                        pos += at;
                        self.line = Line::Start;
                    }
                    None => pos = input.len(),
                },
            }
        }
    }

    fn start_value(&mut self) {
        self.line = match self.field {
            Field::Id => {
                self.event.id = None;
                self.id_ok = true;
                Line::Id
            }
            Field::Data => {
                // A second data line would be joined with a newline by a browser; the bench
                // never sends one, so the later line simply replaces the first.
                self.has_data = true;
                self.event.kind = 0;
                self.event.nums = [0; NUMS];
                self.event.count = 0;
                Line::DataKind
            }
            Field::Event => {
                self.event.named = true;
                Line::Skip
            }
            Field::Retry => {
                self.retry_value = Some(0);
                Line::Retry
            }
            Field::Other => Line::Skip,
        };
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&Event)) {
        if self.has_data {
            if !self.id_ok {
                self.event.id = None;
            }
            on_event(&self.event);
        }
        self.event = Event::default();
        self.id_ok = true;
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
        Transfer-Encoding: chunked\r\n\r\n";

    fn chunk(event: &str) -> Vec<u8> {
        let mut out = format!("{:x}\r\n", event.len()).into_bytes();
        out.extend_from_slice(event.as_bytes());
        out.extend_from_slice(b"\r\n");
        out
    }

    fn stream() -> Vec<u8> {
        let mut all = HEAD.to_vec();
        all.extend(chunk("id: 17\ndata: b5:123456:xxxxxxxx\n\n"));
        all.extend(chunk("id: 18\ndata: t9:777:42:pad\n\n"));
        all.extend(chunk(": comment\nevent: x\nid: 19\ndata: hello\n\n"));
        all.extend(chunk("id:20\ndata:b6:1:\n\n"));
        all.extend(chunk("event: reset\ndata: {\"lastEventId\":\"7\"}\n\n"));
        all
    }

    fn expected() -> Vec<Event> {
        vec![
            Event { id: Some(17), kind: b'b', nums: [5, 123456, 0], count: 2, named: false },
            Event { id: Some(18), kind: b't', nums: [9, 777, 42], count: 3, named: false },
            Event { id: Some(19), kind: b'h', nums: [0, 0, 0], count: 0, named: true },
            Event { id: Some(20), kind: b'b', nums: [6, 1, 0], count: 2, named: false },
            Event { named: true, kind: b'{', ..Event::default() },
        ]
    }

    fn run(pieces: &[&[u8]]) -> (Vec<Event>, Result<(), ProtoError>, bool) {
        let mut p = StreamParser::new();
        let mut got = Vec::new();
        let mut res = Ok(());
        for piece in pieces {
            res = p.feed(piece, |e| got.push(*e));
            if res.is_err() {
                break;
            }
        }
        (got, res, p.handshaked())
    }

    #[test]
    fn whole_stream() {
        let all = stream();
        let (got, res, hs) = run(&[&all]);
        assert_eq!(res, Ok(()));
        assert!(hs);
        assert_eq!(got, expected());
    }

    #[test]
    fn byte_by_byte_gives_the_same() {
        let all = stream();
        let pieces: Vec<&[u8]> = all.chunks(1).collect();
        let (got, res, _) = run(&pieces);
        assert_eq!(res, Ok(()));
        assert_eq!(got, expected());
    }

    #[test]
    fn every_split_point_gives_the_same() {
        let all = stream();
        for at in 0..all.len() {
            let (got, res, _) = run(&[&all[..at], &all[at..]]);
            assert_eq!(res, Ok(()), "split at {at}");
            assert_eq!(got, expected(), "split at {at}");
        }
    }

    #[test]
    fn event_split_over_two_chunks() {
        let mut all = HEAD.to_vec();
        all.extend(chunk("id: 1\nda"));
        all.extend(chunk("ta: b3:4:\n\n"));
        let (got, res, _) = run(&[&all]);
        assert_eq!(res, Ok(()));
        assert_eq!(got, vec![Event { id: Some(1), kind: b'b', nums: [3, 4, 0], count: 2, named: false }]);
    }

    #[test]
    fn handshake_only_after_the_blank_line() {
        let mut p = StreamParser::new();
        p.feed(&HEAD[..HEAD.len() - 1], |_| ()).unwrap();
        assert!(!p.handshaked());
        p.feed(&HEAD[HEAD.len() - 1..], |_| ()).unwrap();
        assert!(p.handshaked());
    }

    #[test]
    fn refusals_and_corruption_are_errors() {
        let (_, res, hs) = run(&[b"HTTP/1.1 400 Bad Request\r\n\r\n"]);
        assert_eq!(res, Err(ProtoError::Status));
        assert!(!hs);
        let mut bad = HEAD.to_vec();
        bad.extend_from_slice(b"zz\r\n");
        assert_eq!(run(&[&bad]).1, Err(ProtoError::ChunkSize));
        let mut bad = HEAD.to_vec();
        bad.extend_from_slice(b"3\r\nabcX");
        assert_eq!(run(&[&bad]).1, Err(ProtoError::ChunkEnd));
        let mut end = HEAD.to_vec();
        end.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(run(&[&end]).1, Err(ProtoError::EndOfStream));
    }

    #[test]
    fn a_bare_stream_gives_the_same_events_split_anywhere() {
        let text = "id: 17\ndata: b5:123456:xxxxxxxx\n\nid: 18\ndata: t9:777:42:pad\n\n";
        for at in 0..text.len() {
            let mut parser = StreamParser::bare();
            assert!(parser.handshaked());
            let mut got = Vec::new();
            for piece in [&text[..at], &text[at..]] {
                parser.feed(piece.as_bytes(), |e| got.push(*e)).unwrap();
            }
            assert_eq!(got, expected()[..2], "split at {at}");
        }
    }

    #[test]
    fn bad_id_is_reported_missing() {
        let mut all = HEAD.to_vec();
        all.extend(chunk("id: 1x\ndata: b1:2:\n\n"));
        all.extend(chunk("data: b2:2:\n\n"));
        let (got, _, _) = run(&[&all]);
        assert_eq!(got[0].id, None);
        assert_eq!(got[1].id, None);
    }

    #[test]
    fn the_last_whole_retry_is_kept_and_dispatches_nothing() {
        let mut parser = StreamParser::new();
        assert_eq!(parser.retry_ms(), None);
        let mut all = HEAD.to_vec();
        all.extend(chunk("retry: 1500\n\n"));
        all.extend(chunk("retry: 25x\nid: 3\ndata: b1:2:\n\n"));
        let mut events = 0;
        // Byte by byte: a value split anywhere is read whole.
        for b in &all {
            parser.feed(std::slice::from_ref(b), |_| events += 1).unwrap();
        }
        assert_eq!((parser.retry_ms(), events), (Some(1500), 1), "a bad value leaves the last good one");
        parser.feed(&chunk("retry:40\n\n"), |_| events += 1).unwrap();
        assert_eq!(parser.retry_ms(), Some(40));
    }
}
