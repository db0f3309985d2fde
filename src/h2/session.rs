//! One HTTP/2 connection's protocol state, server side (RFC 9113): frames in, events and frames
//! out, flow control, and the limits that keep a client from costing us more than it is worth.
//!
//! Pure: bytes arrive through [`Session::receive`], frames leave through the `out` sink every
//! call takes, and time is the caller's `now` in milliseconds. It knows nothing of SSE or of
//! sockets: a stream carries a `T` of the caller's, which it hands back when the stream goes.
//!
//! # Limits (each a test)
//! - A header block is at most [`MAX_BLOCK`] bytes encoded, however many CONTINUATION frames
//!   it takes (the 2024 CONTINUATION flood), and at most `max_header_list` decoded (an HPACK
//!   bomb is answered 431 on its stream, the table kept in step).
//! - Streams reset by the client, or refused by us, at most [`MAX_RESETS`] per [`FLOOD_WINDOW`]
//!   (Rapid Reset, CVE-2023-44487).
//! - Frames that cost us work and carry nothing (SETTINGS, PING, PRIORITY, empty DATA or
//!   CONTINUATION, WINDOW_UPDATE to a window we had not used), at most [`MAX_IDLE_FRAMES`] per
//!   [`FLOOD_WINDOW`].
//! - Past a limit, the connection is told GOAWAY ENHANCE_YOUR_CALM and closed.

use std::collections::VecDeque;

use bytes::Bytes;
use loona_hpack::Decoder;
use slab::Slab;

use super::fields::{decode_request, BlockError, RequestHead};
use super::frame::{
    self, setting, ErrorCode, Head, Kind, Unframed, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, HEAD_LEN, MAX_WINDOW,
    PREFACE,
};

/// The most bytes of one header block, encoded, across its CONTINUATION frames.
pub const MAX_BLOCK: usize = 16 * 1024;
/// The most streams a client may reset (or have refused) per [`FLOOD_WINDOW`].
pub const MAX_RESETS: u32 = 200;
/// The most frames that carry nothing per [`FLOOD_WINDOW`].
pub const MAX_IDLE_FRAMES: u32 = 1000;
/// The span the flood counters count over, in milliseconds.
pub const FLOOD_WINDOW: u64 = 10_000;
/// The dynamic table a client's encoder may use until it has our SETTINGS: HPACK's default,
/// which its first request (sent before our SETTINGS arrive) may fill.
const FIRST_HEADER_TABLE_SIZE: usize = 4096;
/// The dynamic table we let a client's encoder use once it acknowledged our SETTINGS: none.
/// A connection lives for hours and sends a request per EventSource: its table would be
/// kilobytes of memory kept to save a few hundred bytes of the few requests that follow.
const HEADER_TABLE_SIZE: u32 = 0;
/// A payload up to this size goes out in one buffer with its DATA header; a larger one as the
/// header and the shared payload.
const COPY_BELOW: usize = 512;

/// What a session is configured with.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the most a request's fields decode to.
    pub max_header_list: usize,
}

/// Something the caller must act on, found in the bytes received.
#[derive(Debug)]
pub enum Event<T> {
    /// A request opened stream `slot`. `Err(TooLarge)` is to be answered 431.
    Request {
        /// The stream's place, for [`Session::respond`], [`Session::send`] and the others.
        slot: usize,
        /// Its head, decoded and checked.
        head: Result<RequestHead, BlockError>,
    },
    /// Stream `slot` is gone: the client reset it, or we did for a fault of the client's on
    /// it (a window grown past 2^31-1 or by nothing). What it carried comes back.
    Reset {
        /// Its place, free now.
        slot: usize,
        /// What the caller kept on it.
        data: T,
    },
    /// A request that breaks the protocol was refused with RST_STREAM (stream `id`).
    Malformed {
        /// The stream's id.
        id: u32,
        /// Why.
        why: &'static str,
    },
    /// The client sent GOAWAY: it opens no more streams.
    GoAway,
}

/// Why the connection ends: answered with GOAWAY and this code, then closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why} ({code:?})")]
pub struct ConnectionError {
    /// The GOAWAY's code.
    pub code: ErrorCode,
    /// For the log.
    pub why: String,
}

fn fail<R>(code: ErrorCode, why: impl Into<String>) -> Result<R, ConnectionError> {
    Err(ConnectionError { code, why: why.into() })
}

/// A stream of the connection.
#[derive(Debug)]
pub struct Stream<T> {
    /// Its id.
    pub id: u32,
    /// How much more it may be sent (negative after the client shrank its windows).
    window: i32,
    /// The caller's end is sent once what the windows hold back is out.
    ending: bool,
    /// What the caller keeps on it.
    pub data: T,
}

/// Payload of one stream waiting for a window to open.
#[derive(Debug)]
struct Pending {
    slot: usize,
    chunks: VecDeque<Bytes>,
    bytes: usize,
    /// Since when (the caller's milliseconds) it has been waiting.
    since: u64,
}

/// A frame as it came: its header, its payload, and when (the caller's milliseconds).
#[derive(Debug, Clone, Copy)]
struct Incoming<'a> {
    head: Head,
    payload: &'a [u8],
    now: u64,
}

/// A header block being received across HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    bytes: Vec<u8>,
}

/// The flood counters over the current window.
#[derive(Debug, Default)]
struct Flood {
    started: u64,
    resets: u32,
    idle_frames: u32,
}

impl Flood {
    fn roll(&mut self, now: u64) {
        if now.saturating_sub(self.started) >= FLOOD_WINDOW {
            *self = Flood { started: now, ..Flood::default() };
        }
    }

    fn reset(&mut self, now: u64) -> Result<(), ConnectionError> {
        self.roll(now);
        self.resets += 1;
        if self.resets > MAX_RESETS {
            return fail(ErrorCode::EnhanceYourCalm, format!("more than {MAX_RESETS} streams reset in 10 s"));
        }
        Ok(())
    }

    fn idle_frame(&mut self, now: u64, kind: &str) -> Result<(), ConnectionError> {
        self.roll(now);
        self.idle_frames += 1;
        if self.idle_frames > MAX_IDLE_FRAMES {
            return fail(ErrorCode::EnhanceYourCalm, format!("flood of {kind} frames"));
        }
        Ok(())
    }
}

/// One HTTP/2 connection, server side.
pub struct Session<T> {
    limits: Limits,
    decoder: Decoder<'static>,
    /// Preface bytes still expected.
    preface_left: usize,
    /// The client's SETTINGS came (the first frame must be one).
    settings_seen: bool,
    /// A frame not complete yet, between two reads; empty most of the time.
    incoming: Vec<u8>,
    block: Option<Block>,
    /// How much more the connection may be sent.
    window: i32,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    initial_window: i32,
    streams: Slab<Stream<T>>,
    /// What windows hold back, by stream: empty but for a client that reads slower than it is
    /// sent to, so it is kept beside the streams rather than costing each one a pointer.
    held: Vec<Pending>,
    /// The highest stream id the client opened.
    last_id: u32,
    /// We sent GOAWAY: no new stream is taken.
    going_away: bool,
    flood: Flood,
}

impl<T> std::fmt::Debug for Session<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("streams", &self.streams.len())
            .field("last_id", &self.last_id)
            .field("window", &self.window)
            .finish()
    }
}

impl<T: Default> Session<T> {
    /// A session for a connection whose first bytes are about to be read, and our SETTINGS,
    /// which go out first.
    pub fn new(limits: Limits, out: &mut impl FnMut(Bytes)) -> Session<T> {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(FIRST_HEADER_TABLE_SIZE);
        out(Bytes::from(frame::settings(&[
            (setting::MAX_CONCURRENT_STREAMS, limits.max_streams),
            (setting::MAX_HEADER_LIST_SIZE, limits.max_header_list as u32),
            (setting::HEADER_TABLE_SIZE, HEADER_TABLE_SIZE),
        ])));
        Session {
            limits,
            decoder,
            preface_left: PREFACE.len(),
            settings_seen: false,
            incoming: Vec::new(),
            block: None,
            window: DEFAULT_WINDOW as i32,
            initial_window: DEFAULT_WINDOW as i32,
            streams: Slab::new(),
            held: Vec::new(),
            last_id: 0,
            going_away: false,
            flood: Flood::default(),
        }
    }

    /// Its open streams, by slot.
    pub fn streams(&self) -> impl Iterator<Item = (usize, &Stream<T>)> {
        self.streams.iter()
    }

    /// Its open streams, by slot, to change what the caller keeps on them.
    pub fn streams_mut(&mut self) -> impl Iterator<Item = (usize, &mut Stream<T>)> {
        self.streams.iter_mut()
    }

    /// The stream at `slot`, if open.
    pub fn stream(&self, slot: usize) -> Option<&Stream<T>> {
        self.streams.get(slot)
    }

    /// The stream at `slot`, if open, to change what the caller keeps on it.
    pub fn stream_mut(&mut self, slot: usize) -> Option<&mut Stream<T>> {
        self.streams.get_mut(slot)
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Bytes `slot` holds back for its window.
    pub fn held(&self, slot: usize) -> usize {
        self.held.iter().find(|p| p.slot == slot).map_or(0, |p| p.bytes)
    }

    /// Takes in what the socket gave, acting on every whole frame: answers go to `out`, what
    /// the caller must act on to `events`. An error ends the connection; [`Session::goaway`]
    /// says so to the client.
    pub fn receive(
        &mut self,
        mut input: &[u8],
        now: u64,
        events: &mut Vec<Event<T>>,
        out: &mut impl FnMut(Bytes),
    ) -> Result<(), ConnectionError> {
        if self.preface_left > 0 {
            let at = PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(input.len());
            if input[..n] != PREFACE[at..at + n] {
                return fail(ErrorCode::ProtocolError, "not the HTTP/2 preface");
            }
            self.preface_left -= n;
            input = &input[n..];
        }
        if self.incoming.is_empty() {
            let used = self.frames(input, now, events, out)?;
            self.incoming = input[used..].to_vec();
        } else {
            let mut buffered = std::mem::take(&mut self.incoming);
            buffered.extend_from_slice(input);
            let used = self.frames(&buffered, now, events, out)?;
            buffered.drain(..used);
            // An idle connection keeps no buffer.
            self.incoming = if buffered.is_empty() { Vec::new() } else { buffered };
        }
        Ok(())
    }

    /// Acts on the whole frames at the start of `input`; how many bytes they took.
    fn frames(
        &mut self,
        input: &[u8],
        now: u64,
        events: &mut Vec<Event<T>>,
        out: &mut impl FnMut(Bytes),
    ) -> Result<usize, ConnectionError> {
        let mut used = 0;
        while let Some(head_bytes) = input.get(used..used + HEAD_LEN) {
            let head = Head::parse(head_bytes.try_into().expect("nine bytes"));
            if head.len > DEFAULT_MAX_FRAME {
                return fail(ErrorCode::FrameSizeError, format!("frame of {} bytes", head.len));
            }
            let Some(payload) = input.get(used + HEAD_LEN..used + HEAD_LEN + head.len) else { break };
            self.frame(Incoming { head, payload, now }, events, out)?;
            used += HEAD_LEN + head.len;
        }
        Ok(used)
    }

    fn frame(
        &mut self,
        incoming: Incoming<'_>,
        events: &mut Vec<Event<T>>,
        out: &mut impl FnMut(Bytes),
    ) -> Result<(), ConnectionError> {
        let Incoming { head, payload, now } = incoming;
        let kind = head.kind();
        if !self.settings_seen && kind != Some(Kind::Settings) {
            return fail(ErrorCode::ProtocolError, "first frame is not SETTINGS");
        }
        if self.block.is_some() && kind != Some(Kind::Continuation) {
            return fail(ErrorCode::ProtocolError, "header block interrupted");
        }
        let Some(kind) = kind else { return self.flood.idle_frame(now, "unknown") };
        match kind {
            Kind::Settings => self.settings(incoming, out),
            Kind::Ping => self.ping(incoming, out),
            Kind::WindowUpdate => self.window_update(incoming, events, out),
            Kind::Headers => self.headers(incoming, events, out),
            Kind::Continuation => self.continuation(incoming, events, out),
            Kind::Data => self.data(incoming, out),
            Kind::RstStream => self.rst_stream(incoming, events),
            Kind::Priority => {
                if head.stream == 0 {
                    return fail(ErrorCode::ProtocolError, "PRIORITY on stream 0");
                }
                if payload.len() != 5 {
                    return fail(ErrorCode::FrameSizeError, "PRIORITY not of 5 bytes");
                }
                self.flood.idle_frame(now, "PRIORITY")
            }
            Kind::GoAway => {
                connection_only(head, "GOAWAY")?;
                events.push(Event::GoAway);
                Ok(())
            }
            Kind::PushPromise => fail(ErrorCode::ProtocolError, "PUSH_PROMISE from a client"),
        }
    }

    fn settings(
        &mut self,
        incoming: Incoming<'_>,
        out: &mut impl FnMut(Bytes),
    ) -> Result<(), ConnectionError> {
        let Incoming { head, payload, now } = incoming;
        connection_only(head, "SETTINGS")?;
        if head.has(frame::ACK) {
            if !payload.is_empty() {
                return fail(ErrorCode::FrameSizeError, "SETTINGS ACK with a payload");
            }
            // The client now has our table size: its next block starts by shrinking its table
            // to nothing (RFC 7541 section 4.2), so ours is let go at once, room and all.
            self.decoder = Decoder::new();
            self.decoder.set_max_table_size(HEADER_TABLE_SIZE as usize);
            self.decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE as usize);
            return Ok(());
        }
        if self.settings_seen {
            self.flood.idle_frame(now, "SETTINGS")?;
        }
        self.settings_seen = true;
        let Some(values) = frame::parse_settings(payload) else {
            return fail(ErrorCode::FrameSizeError, "SETTINGS not a multiple of 6 bytes");
        };
        for (id, value) in values {
            match id {
                setting::INITIAL_WINDOW_SIZE => self.set_initial_window(value)?,
                setting::MAX_FRAME_SIZE if !(DEFAULT_MAX_FRAME as u32..1 << 24).contains(&value) => {
                    return fail(ErrorCode::ProtocolError, "SETTINGS_MAX_FRAME_SIZE out of range");
                }
                setting::ENABLE_PUSH if value > 1 => {
                    return fail(ErrorCode::ProtocolError, "SETTINGS_ENABLE_PUSH not 0 or 1");
                }
                // We send frames of the default size, push nothing and use no dynamic table.
                _ => {}
            }
        }
        out(Bytes::from(frame::settings_ack()));
        Ok(())
    }

    /// A new SETTINGS_INITIAL_WINDOW_SIZE moves every stream's window by the difference.
    fn set_initial_window(&mut self, value: u32) -> Result<(), ConnectionError> {
        if value > MAX_WINDOW {
            return fail(ErrorCode::FlowControlError, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1");
        }
        let delta = i64::from(value) - i64::from(self.initial_window);
        for (_, stream) in self.streams.iter_mut() {
            let window = i64::from(stream.window) + delta;
            if window > i64::from(MAX_WINDOW) {
                return fail(ErrorCode::FlowControlError, "a stream's window over 2^31-1");
            }
            stream.window = window as i32;
        }
        self.initial_window = value as i32;
        Ok(())
    }

    fn ping(&mut self, incoming: Incoming<'_>, out: &mut impl FnMut(Bytes)) -> Result<(), ConnectionError> {
        let Incoming { head, payload, now } = incoming;
        connection_only(head, "PING")?;
        let Ok(data) = <&[u8; 8]>::try_from(payload) else {
            return fail(ErrorCode::FrameSizeError, "PING not of 8 bytes");
        };
        self.flood.idle_frame(now, "PING")?;
        if !head.has(frame::ACK) {
            out(Bytes::from(frame::ping_ack(data)));
        }
        Ok(())
    }

    fn window_update(
        &mut self,
        incoming: Incoming<'_>,
        events: &mut Vec<Event<T>>,
        out: &mut impl FnMut(Bytes),
    ) -> Result<(), ConnectionError> {
        let Incoming { head, payload, now } = incoming;
        let (Some(increment), 4) = (frame::read_u31(payload), payload.len()) else {
            return fail(ErrorCode::FrameSizeError, "WINDOW_UPDATE not of 4 bytes");
        };
        if head.stream == 0 {
            if increment == 0 {
                return fail(ErrorCode::ProtocolError, "WINDOW_UPDATE of 0 on the connection");
            }
            if self.window >= DEFAULT_WINDOW as i32 {
                self.flood.idle_frame(now, "WINDOW_UPDATE")?;
            }
            self.window = grow(self.window, increment).ok_or_else(|| ConnectionError {
                code: ErrorCode::FlowControlError,
                why: "connection window over 2^31-1".into(),
            })?;
            self.flush_all(now, out);
            return Ok(());
        }
        let Some(slot) = self.slot_of(head.stream) else {
            if head.stream > self.last_id {
                return fail(ErrorCode::ProtocolError, "WINDOW_UPDATE on an idle stream");
            }
            // A stream we ended: its updates may still be on their way.
            return Ok(());
        };
        let stream = &mut self.streams[slot];
        let idle = stream.window >= self.initial_window;
        match grow(stream.window, increment).filter(|_| increment > 0) {
            Some(window) => stream.window = window,
            None => {
                // A stream error: that stream is reset, and the caller told it is gone.
                let code =
                    if increment == 0 { ErrorCode::ProtocolError } else { ErrorCode::FlowControlError };
                if let Some(data) = self.reset(slot, code, out) {
                    gone(events, slot, data);
                }
                return Ok(());
            }
        }
        if idle {
            self.flood.idle_frame(now, "WINDOW_UPDATE")?;
        }
        self.flush_stream(slot, now, out);
        Ok(())
    }

    fn headers(
        &mut self,
        incoming: Incoming<'_>,
        events: &mut Vec<Event<T>>,
        out: &mut impl FnMut(Bytes),
    ) -> Result<(), ConnectionError> {
        let Incoming { head, payload, now } = incoming;
        if head.stream == 0 || head.stream.is_multiple_of(2) {
            return fail(ErrorCode::ProtocolError, "HEADERS on stream 0 or an even stream");
        }
        let fragment = unframed(frame::fragment(head, payload))?;
        if head.stream <= self.last_id {
            // Trailers on a stream still open are ignored; a closed one cannot take them.
            if self.slot_of(head.stream).is_none() {
                return fail(ErrorCode::StreamClosed, "HEADERS on a closed stream");
            }
        }
        let block = Block { stream: head.stream, bytes: fragment.to_vec() };
        if head.has(frame::END_HEADERS) {
            self.request(block, now, events, out)
        } else {
            self.block = Some(block);
            Ok(())
        }
    }

    fn continuation(
        &mut self,
        incoming: Incoming<'_>,
        events: &mut Vec<Event<T>>,
        out: &mut impl FnMut(Bytes),
    ) -> Result<(), ConnectionError> {
        let Incoming { head, payload, now } = incoming;
        let Some(block) = self.block.as_mut().filter(|block| block.stream == head.stream) else {
            return fail(ErrorCode::ProtocolError, "CONTINUATION without its HEADERS");
        };
        if payload.is_empty() {
            self.flood.idle_frame(now, "CONTINUATION")?;
        }
        if block.bytes.len() + payload.len() > MAX_BLOCK {
            return fail(ErrorCode::EnhanceYourCalm, format!("header block over {MAX_BLOCK} bytes"));
        }
        block.bytes.extend_from_slice(payload);
        if head.has(frame::END_HEADERS) {
            let block = self.block.take().expect("checked above");
            return self.request(block, now, events, out);
        }
        Ok(())
    }

    /// A whole header block: decoded (always, to keep the table in step), then a new stream,
    /// refused or taken.
    fn request(
        &mut self,
        block: Block,
        now: u64,
        events: &mut Vec<Event<T>>,
        out: &mut impl FnMut(Bytes),
    ) -> Result<(), ConnectionError> {
        let head = decode_request(&mut self.decoder, &block.bytes, self.limits.max_header_list);
        if let Err(BlockError::Compression(e)) = head {
            return fail(ErrorCode::CompressionError, format!("header block cannot be decoded: {e:?}"));
        }
        if block.stream <= self.last_id {
            return Ok(());
        }
        self.last_id = block.stream;
        if self.going_away {
            return Ok(());
        }
        if self.streams.len() >= self.limits.max_streams as usize {
            self.flood.reset(now)?;
            out(Bytes::from(frame::rst_stream(block.stream, ErrorCode::RefusedStream)));
            return Ok(());
        }
        if let Err(BlockError::Malformed(why)) = head {
            self.flood.reset(now)?;
            out(Bytes::from(frame::rst_stream(block.stream, ErrorCode::ProtocolError)));
            events.push(Event::Malformed { id: block.stream, why });
            return Ok(());
        }
        // Grown one stream at a time: a connection keeps its table for hours, and doubling
        // would leave up to half of it empty (a stream is about 90 bytes).
        if self.streams.len() == self.streams.capacity() {
            self.streams.reserve_exact(1);
        }
        let slot = self.streams.insert(Stream {
            id: block.stream,
            window: self.initial_window,
            ending: false,
            data: T::default(),
        });
        events.push(Event::Request { slot, head });
        Ok(())
    }

    fn data(&mut self, incoming: Incoming<'_>, out: &mut impl FnMut(Bytes)) -> Result<(), ConnectionError> {
        let Incoming { head, payload, now } = incoming;
        if head.stream == 0 {
            return fail(ErrorCode::ProtocolError, "DATA on stream 0");
        }
        if head.stream > self.last_id {
            return fail(ErrorCode::ProtocolError, "DATA on an idle stream");
        }
        unframed(frame::unpad(head, payload))?;
        // Our requests have no body: what arrives is dropped, and the connection's window given
        // back so that it never shuts; the stream's is not, so a client pushing a body stalls
        // itself. A frame that carries nothing is counted as a flood.
        if payload.is_empty() && !head.has(frame::END_STREAM) {
            self.flood.idle_frame(now, "empty DATA")?;
        }
        if !payload.is_empty() {
            out(Bytes::from(frame::window_update(0, payload.len() as u32)));
        }
        Ok(())
    }

    fn rst_stream(
        &mut self,
        incoming: Incoming<'_>,
        events: &mut Vec<Event<T>>,
    ) -> Result<(), ConnectionError> {
        let Incoming { head, payload, now } = incoming;
        if payload.len() != 4 {
            return fail(ErrorCode::FrameSizeError, "RST_STREAM not of 4 bytes");
        }
        if head.stream == 0 || head.stream > self.last_id {
            return fail(ErrorCode::ProtocolError, "RST_STREAM on stream 0 or an idle stream");
        }
        self.flood.reset(now)?;
        if let Some(slot) = self.slot_of(head.stream) {
            let stream = self.remove(slot);
            gone(events, slot, stream.data);
        }
        Ok(())
    }

    /// The slot of the open stream `id`.
    fn slot_of(&self, id: u32) -> Option<usize> {
        self.streams.iter().find(|(_, stream)| stream.id == id).map(|(slot, _)| slot)
    }

    /// Sends a response head on `slot` (an encoded block of at most 16 KiB: ours are a few
    /// hundred bytes), ending the stream with it when `end_stream`.
    pub fn respond(&mut self, slot: usize, block: &[u8], end_stream: bool, out: &mut impl FnMut(Bytes)) {
        let Some(stream) = self.streams.get(slot) else { return };
        let flags = frame::END_HEADERS | if end_stream { frame::END_STREAM } else { 0 };
        out(Bytes::from(frame::frame(Kind::Headers, flags, stream.id, block)));
        if end_stream {
            self.remove(slot);
        }
    }

    /// Sends `payload` on `slot` as DATA, as far as the windows let it; the rest waits for
    /// WINDOW_UPDATE.
    pub fn send(&mut self, slot: usize, payload: Bytes, now: u64, out: &mut impl FnMut(Bytes)) {
        let connection_window = self.window;
        let Some(stream) = self.streams.get_mut(slot) else { return };
        if stream.ending || payload.is_empty() {
            return;
        }
        let len = payload.len();
        // Checked first: nothing is held back on almost every connection.
        let holds = !self.held.is_empty() && self.held.iter().any(|p| p.slot == slot);
        let free = !holds && (len as i64) <= i64::from(stream.window.min(connection_window));
        if free {
            // The common case: the windows take it whole, in frames of the largest size.
            stream.window -= len as i32;
            self.window -= len as i32;
            let mut payload = payload;
            while payload.len() > DEFAULT_MAX_FRAME {
                data_frame(stream.id, payload.split_to(DEFAULT_MAX_FRAME), false, out);
            }
            data_frame(stream.id, payload, false, out);
            return;
        }
        let pending = match self.held.iter().position(|p| p.slot == slot) {
            Some(at) => &mut self.held[at],
            None => {
                self.held.push(Pending { slot, chunks: VecDeque::new(), bytes: 0, since: now });
                self.held.last_mut().expect("just pushed")
            }
        };
        pending.bytes += len;
        pending.chunks.push_back(payload);
        self.flush_stream(slot, now, out);
    }

    /// Ends `slot` with an empty DATA carrying END_STREAM, once what it holds back is out.
    pub fn finish(&mut self, slot: usize, now: u64, out: &mut impl FnMut(Bytes)) {
        let Some(stream) = self.streams.get_mut(slot) else { return };
        stream.ending = true;
        self.flush_stream(slot, now, out);
    }

    /// Resets `slot` with `code` at once, dropping what it holds back; what the caller kept on
    /// it comes back.
    pub fn reset(&mut self, slot: usize, code: ErrorCode, out: &mut impl FnMut(Bytes)) -> Option<T> {
        self.streams.get(slot)?;
        let stream = self.remove(slot);
        out(Bytes::from(frame::rst_stream(stream.id, code)));
        Some(stream.data)
    }

    /// Takes stream `slot` out, with what its window held back.
    fn remove(&mut self, slot: usize) -> Stream<T> {
        self.held.retain(|p| p.slot != slot);
        self.streams.remove(slot)
    }

    /// Tells the client no new stream will be taken, with `code` (NO_ERROR at a stop).
    pub fn goaway(&mut self, code: ErrorCode, out: &mut impl FnMut(Bytes)) {
        if !self.going_away {
            self.going_away = true;
            out(Bytes::from(frame::goaway(self.last_id, code)));
        }
    }

    /// The streams whose held-back data has waited since before `since` (the caller's
    /// milliseconds), or grown past `most` bytes: a client that stopped reading one stream and
    /// not the others.
    pub fn stalled(&self, since: u64, most: usize) -> Vec<usize> {
        self.held.iter().filter(|p| p.since < since || p.bytes > most).map(|p| p.slot).collect()
    }

    /// When the longest-waiting held-back data started waiting.
    pub fn stalled_since(&self) -> Option<u64> {
        self.held.iter().map(|p| p.since).min()
    }

    /// Sends what every stream holds back, as far as the windows now let it (an ending stream
    /// is one that holds some back: it ends as soon as that is out).
    fn flush_all(&mut self, now: u64, out: &mut impl FnMut(Bytes)) {
        let waiting: Vec<usize> = self.held.iter().map(|p| p.slot).collect();
        for slot in waiting {
            self.flush_stream(slot, now, out);
        }
    }

    /// Sends what `slot` holds back, as far as the windows let it; the end once all is out.
    fn flush_stream(&mut self, slot: usize, now: u64, out: &mut impl FnMut(Bytes)) {
        let Some(stream) = self.streams.get_mut(slot) else { return };
        if let Some(at) = self.held.iter().position(|p| p.slot == slot) {
            let pending = &mut self.held[at];
            let mut sent_any = false;
            while let Some(chunk) = pending.chunks.front_mut() {
                let room = stream.window.min(self.window).min(DEFAULT_MAX_FRAME as i32);
                if room <= 0 {
                    break;
                }
                let n = chunk.len().min(room as usize);
                let piece = if n == chunk.len() {
                    pending.chunks.pop_front().expect("front")
                } else {
                    chunk.split_to(n)
                };
                pending.bytes -= n;
                stream.window -= n as i32;
                self.window -= n as i32;
                data_frame(stream.id, piece, false, out);
                sent_any = true;
            }
            if pending.chunks.is_empty() {
                self.held.swap_remove(at);
            } else {
                if sent_any {
                    pending.since = now;
                }
                return;
            }
        }
        if stream.ending {
            out(Bytes::copy_from_slice(&frame::data_head(stream.id, 0, true)));
            self.remove(slot);
        }
    }
}

/// Writes a DATA frame: a small payload copied behind its header, a large one shared.
fn data_frame(stream: u32, payload: Bytes, end_stream: bool, out: &mut impl FnMut(Bytes)) {
    let head = frame::data_head(stream, payload.len(), end_stream);
    if payload.len() < COPY_BELOW {
        let mut whole = Vec::with_capacity(HEAD_LEN + payload.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(&payload);
        out(Bytes::from(whole));
    } else {
        out(Bytes::copy_from_slice(&head));
        out(payload);
    }
}

/// Tells the caller stream `slot` is gone, unless it has not been told of the stream yet (it
/// opened in the same bytes): then its request is taken back, and the caller never sees it.
/// Either way a later stream in the same slot is told apart: its request comes after.
fn gone<T>(events: &mut Vec<Event<T>>, slot: usize, data: T) {
    let unseen = events
        .iter()
        .position(|event| matches!(event, Event::Request { slot: opened, .. } if *opened == slot));
    match unseen {
        Some(at) => drop(events.remove(at)),
        None => events.push(Event::Reset { slot, data }),
    }
}

/// Refuses a frame of a kind (`what`) that only the connection may carry, sent on a stream.
fn connection_only(head: Head, what: &str) -> Result<(), ConnectionError> {
    if head.stream != 0 {
        return fail(ErrorCode::ProtocolError, format!("{what} on a stream"));
    }
    Ok(())
}

/// `window` grown by `increment`; `None` past 2^31 - 1.
fn grow(window: i32, increment: u32) -> Option<i32> {
    let grown = i64::from(window) + i64::from(increment);
    (grown <= i64::from(MAX_WINDOW)).then_some(grown as i32)
}

/// A frame's content, or the connection's end as RFC 9113 says for its fault.
fn unframed(content: Result<&[u8], Unframed>) -> Result<&[u8], ConnectionError> {
    content.or_else(|fault| match fault {
        Unframed::Short => fail(ErrorCode::FrameSizeError, "frame shorter than its pad length or priority"),
        Unframed::OverPadded => fail(ErrorCode::ProtocolError, "padding longer than the frame"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::fields::encode_block;
    use crate::h2::frame::{frame, settings, window_update};

    const LIMITS: Limits = Limits { max_streams: 3, max_header_list: 8192 };

    /// A session that has read the preface and `client_settings`; what it sent so far.
    fn opened(client_settings: &[(u16, u32)]) -> (Session<u32>, Vec<Bytes>) {
        let mut sent = Vec::new();
        let mut session = Session::new(LIMITS, &mut |b| sent.push(b));
        let mut input = PREFACE.to_vec();
        input.extend(settings(client_settings));
        session.receive(&input, 0, &mut Vec::new(), &mut |b| sent.push(b)).unwrap();
        (session, sent)
    }

    fn get(stream: u32) -> Vec<u8> {
        let block =
            encode_block([(":method", &b"GET"[..]), (":scheme", b"http"), (":path", b"/sse?subscribe=a")]);
        frame(Kind::Headers, frame::END_HEADERS | frame::END_STREAM, stream, &block)
    }

    fn feed(
        session: &mut Session<u32>,
        input: &[u8],
        now: u64,
    ) -> (Result<(), ConnectionError>, Vec<Event<u32>>, Vec<Bytes>) {
        let (mut events, mut sent) = (Vec::new(), Vec::new());
        let result = session.receive(input, now, &mut events, &mut |b| sent.push(b));
        (result, events, sent)
    }

    fn heads(sent: &[Bytes]) -> Vec<Head> {
        let wire: Vec<u8> = sent.iter().flat_map(|b| b.to_vec()).collect();
        let mut heads = Vec::new();
        let mut at = 0;
        while at + HEAD_LEN <= wire.len() {
            let head = Head::parse(wire[at..at + HEAD_LEN].try_into().unwrap());
            at += HEAD_LEN + head.len;
            heads.push(head);
        }
        heads
    }

    fn code(result: Result<(), ConnectionError>) -> ErrorCode {
        result.unwrap_err().code
    }

    #[test]
    fn settings_are_acknowledged_and_a_request_opens_a_stream_fed_whole_or_byte_by_byte() {
        let (_, sent) = opened(&[]);
        let kinds: Vec<_> = heads(&sent).iter().map(|h| (h.kind, h.flags)).collect();
        assert_eq!(kinds, [(Kind::Settings as u8, 0), (Kind::Settings as u8, frame::ACK)]);
        for step in [usize::MAX, 1] {
            let (mut session, _) = opened(&[]);
            let mut events = Vec::new();
            for piece in get(1).chunks(step.min(get(1).len())) {
                let (result, found, _) = feed(&mut session, piece, 0);
                result.unwrap();
                events.extend(found);
            }
            let [Event::Request { slot, head: Ok(head) }] = &events[..] else { panic!("{events:?}") };
            assert_eq!((head.method.as_str(), head.path.as_str()), ("GET", "/sse?subscribe=a"));
            assert_eq!(session.stream(*slot).unwrap().id, 1);
        }
    }

    #[test]
    fn data_waits_for_the_window_and_goes_when_it_opens() {
        let (mut session, _) = opened(&[(setting::INITIAL_WINDOW_SIZE, 10)]);
        let (_, events, _) = feed(&mut session, &get(1), 0);
        let [Event::Request { slot, .. }] = events[..] else { panic!() };
        let mut sent = Vec::new();
        session.send(slot, Bytes::from_static(b"0123456789abcdefghij"), 5, &mut |b| sent.push(b));
        assert_eq!(heads(&sent).iter().map(|h| h.len).collect::<Vec<_>>(), [10]);
        assert_eq!((session.held(slot), session.stalled_since()), (10, Some(5)));
        assert_eq!(session.stalled(6, usize::MAX), [slot], "a stream waiting since 5 has stalled by 6");
        assert_eq!(
            (session.stalled(5, 10), session.stalled(5, 9)),
            (vec![], vec![slot]),
            "or once over the most"
        );
        let (result, _, sent) = feed(&mut session, &window_update(1, 100), 7);
        result.unwrap();
        assert_eq!(heads(&sent).iter().map(|h| h.len).collect::<Vec<_>>(), [10]);
        assert_eq!((session.held(slot), session.stalled_since()), (0, None));
    }

    #[test]
    fn the_clients_table_is_let_go_once_it_has_our_settings() {
        let (mut session, _) = opened(&[]);
        // A first request that puts `x: y` in the table (literal with incremental indexing).
        let mut block = encode_block([(":method", &b"GET"[..]), (":scheme", b"http"), (":path", b"/sse")]);
        block.extend([0x40, 1, b'x', 1, b'y']);
        let first = frame(Kind::Headers, frame::END_HEADERS | frame::END_STREAM, 1, &block);
        feed(&mut session, &first, 0).0.unwrap();
        feed(&mut session, &frame::frame(Kind::Settings, frame::ACK, 0, &[]), 0).0.unwrap();
        // The next block shrinks the client's table first, as RFC 7541 says it must.
        let mut next = vec![0x20];
        next.extend(encode_block([(":method", &b"GET"[..]), (":scheme", b"http"), (":path", b"/sse")]));
        let (result, events, _) = feed(&mut session, &frame(Kind::Headers, frame::END_HEADERS, 3, &next), 0);
        result.unwrap();
        assert!(matches!(events[..], [Event::Request { head: Ok(_), .. }]));
        let stale = frame(Kind::Headers, frame::END_HEADERS, 5, &[&next[1..], &[0xbe]].concat());
        assert_eq!(code(feed(&mut session, &stale, 0).0), ErrorCode::CompressionError, "the entry is gone");
    }

    #[test]
    fn a_payload_larger_than_a_frame_goes_in_frames_of_the_largest_size() {
        let (mut session, _) = opened(&[(setting::INITIAL_WINDOW_SIZE, 1 << 20)]);
        feed(&mut session, &window_update(0, 1 << 20), 0).0.unwrap();
        let (_, events, _) = feed(&mut session, &get(1), 0);
        let [Event::Request { slot, .. }] = events[..] else { panic!() };
        let mut sent = Vec::new();
        session.send(slot, Bytes::from(vec![b'x'; 40_000]), 0, &mut |b| sent.push(b));
        let lens: Vec<usize> = heads(&sent).iter().map(|h| h.len).collect();
        assert_eq!(lens, [16_384, 16_384, 7_232]);
        assert_eq!(session.held(slot), 0);
    }

    #[test]
    fn a_shut_stream_does_not_hold_its_neighbours() {
        let (mut session, _) = opened(&[(setting::INITIAL_WINDOW_SIZE, 0)]);
        let (_, events, _) = feed(&mut session, &[get(1), get(3), window_update(3, 1000)].concat(), 0);
        let slots: Vec<usize> =
            events.iter().map(|e| if let Event::Request { slot, .. } = e { *slot } else { 99 }).collect();
        let mut sent = Vec::new();
        for &slot in &slots {
            session.send(slot, Bytes::from_static(b"data: x\n\n"), 0, &mut |b| sent.push(b));
        }
        let streams: Vec<u32> = heads(&sent).iter().map(|h| h.stream).collect();
        assert_eq!(streams, [3], "stream 3 has a window; stream 1 waits");
        assert_eq!(session.stalled(1, usize::MAX), [slots[0]]);
    }

    #[test]
    fn streams_over_the_limit_are_refused_and_rapid_resets_end_the_connection() {
        let (mut session, _) = opened(&[]);
        let (result, events, sent) = feed(&mut session, &[get(1), get(3), get(5), get(7)].concat(), 0);
        result.unwrap();
        assert_eq!(events.len(), 3);
        let refused = heads(&sent);
        assert_eq!((refused[0].kind, refused[0].stream), (Kind::RstStream as u8, 7));
        let mut result = Ok(());
        for id in (9..).step_by(2).take(MAX_RESETS as usize + 1) {
            (result, _, _) =
                feed(&mut session, &[get(id), frame::rst_stream(id, ErrorCode::Cancel)].concat(), 1);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(code(result), ErrorCode::EnhanceYourCalm);
    }

    #[test]
    fn a_stream_opened_and_reset_in_one_read_is_never_seen_and_its_slot_goes_to_the_next() {
        let (mut session, _) = opened(&[]);
        let input = [get(1), frame::rst_stream(1, ErrorCode::Cancel), get(3)].concat();
        let (result, events, _) = feed(&mut session, &input, 0);
        result.unwrap();
        let [Event::Request { slot, head: Ok(_) }] = events[..] else { panic!("{events:?}") };
        assert_eq!(session.stream(slot).unwrap().id, 3, "the one request left is stream 3's");
    }

    #[test]
    fn floods_of_frames_that_carry_nothing_end_the_connection() {
        let ping = frame(Kind::Ping, 0, 0, &[0; 8]);
        let empty_continuation = frame(Kind::Continuation, 0, 1, &[]);
        let update = window_update(0, 1);
        for flood in [ping, update] {
            let (mut session, _) = opened(&[]);
            let input = flood.repeat(MAX_IDLE_FRAMES as usize + 1);
            assert_eq!(code(feed(&mut session, &input, 0).0), ErrorCode::EnhanceYourCalm);
        }
        let (mut session, _) = opened(&[]);
        let open = frame(Kind::Headers, 0, 1, &[]);
        let input = [open, empty_continuation.repeat(MAX_IDLE_FRAMES as usize + 1)].concat();
        assert_eq!(code(feed(&mut session, &input, 0).0), ErrorCode::EnhanceYourCalm);
        let (mut session, _) = opened(&[]);
        let big = frame(Kind::Continuation, 0, 1, &[0; 8000]);
        let input = [frame(Kind::Headers, 0, 1, &[]), big.repeat(3)].concat();
        assert_eq!(code(feed(&mut session, &input, 0).0), ErrorCode::EnhanceYourCalm, "CONTINUATION flood");
    }

    #[test]
    fn frames_that_break_the_protocol_end_the_connection_with_rfc_9113_codes() {
        let cases: [(Vec<u8>, ErrorCode); 7] = [
            (frame(Kind::WindowUpdate, 0, 0, &[0, 0, 1]), ErrorCode::FrameSizeError),
            (frame(Kind::Ping, 0, 1, &[0; 8]), ErrorCode::ProtocolError),
            (frame(Kind::Data, 0, 0, b"x"), ErrorCode::ProtocolError),
            (frame(Kind::Headers, frame::END_HEADERS, 2, &[]), ErrorCode::ProtocolError),
            (frame(Kind::Continuation, frame::END_HEADERS, 1, &[]), ErrorCode::ProtocolError),
            (settings(&[(setting::INITIAL_WINDOW_SIZE, 1 << 31)]), ErrorCode::FlowControlError),
            ([&[0, 0x40, 1][..], &[0; 6], &[0; 16385]].concat(), ErrorCode::FrameSizeError),
        ];
        for (input, expected) in cases {
            let (mut session, _) = opened(&[]);
            assert_eq!(code(feed(&mut session, &input, 0).0), expected, "{:?}", &input[..9]);
        }
        let mut session: Session<u32> = Session::new(LIMITS, &mut |_| {});
        let wrong = feed(&mut session, b"GET / HTTP/1.1\r\n\r\n", 0).0;
        assert_eq!(code(wrong), ErrorCode::ProtocolError, "not the preface");
        let mut session: Session<u32> = Session::new(LIMITS, &mut |_| {});
        assert_eq!(
            code(feed(&mut session, &[PREFACE, &get(1)].concat(), 0).0),
            ErrorCode::ProtocolError,
            "no SETTINGS first"
        );
    }

    proptest::proptest! {
        /// Whatever frames a client sends, in whatever pieces, the session answers or ends the
        /// connection: it never panics, and it never holds more streams than its limit.
        #[test]
        fn any_frames_in_any_pieces_never_panic(
            frames in proptest::collection::vec(
                (0u8..11, proptest::prelude::any::<u8>(), 0u32..12, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
                0..40,
            ),
            piece in 1usize..64,
        ) {
            let (mut session, _) = opened(&[]);
            let mut input = Vec::new();
            for (kind, flags, stream, payload) in &frames {
                input.extend(Head { len: payload.len(), kind: *kind, flags: *flags, stream: *stream }.encode());
                input.extend(payload);
            }
            for (at, chunk) in input.chunks(piece).enumerate() {
                let (result, events, _) = feed(&mut session, chunk, at as u64);
                for event in events {
                    if let Event::Request { slot, .. } = event {
                        session.send(slot, Bytes::from_static(b"data: x\n\n"), at as u64, &mut |_| {});
                    }
                }
                if result.is_err() {
                    break;
                }
                proptest::prop_assert!(session.len() <= LIMITS.max_streams as usize);
            }
        }
    }

    #[test]
    fn a_finished_stream_ends_once_what_it_holds_back_is_out() {
        let (mut session, _) = opened(&[(setting::INITIAL_WINDOW_SIZE, 4)]);
        let (_, events, _) = feed(&mut session, &get(1), 0);
        let [Event::Request { slot, .. }] = events[..] else { panic!() };
        let mut sent = Vec::new();
        session.send(slot, Bytes::from_static(b"12345678"), 0, &mut |b| sent.push(b));
        session.finish(slot, 0, &mut |b| sent.push(b));
        assert!(!heads(&sent).iter().any(|h| h.has(frame::END_STREAM)));
        let (_, _, sent) = feed(&mut session, &window_update(1, 4), 1);
        let last = *heads(&sent).last().unwrap();
        assert!(last.has(frame::END_STREAM) && last.len == 0);
        assert!(session.is_empty());
    }
}
