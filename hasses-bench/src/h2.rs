//! `--http2`: one connection's HTTP/2, client side. It opens the connection (preface, SETTINGS
//! and a connection WINDOW_UPDATE that give the server windows of 2^31-1, so flow control
//! never throttles a benchmark), asks for its streams, and reads the server's frames: each
//! response head and the bytes of each DATA frame are handed to the caller by stream, what
//! must be answered (SETTINGS, PING, windows running low) is answered.
//!
//! Pure over bytes, no I/O: the receivers feed it what they read and send what it queues. Frames
//! are laid out and read with the server's own codec (`hasses::h2::frame`) and requests encoded
//! with its stateless HPACK blocks (`hasses::h2::fields::encode_block`); responses are decoded
//! with loona-hpack, as the server decodes requests. DATA payloads are not copied: they go to
//! the caller piece by piece as they arrive, however a read cut them.

use std::fmt;

use hasses::h2::fields::encode_block;
use hasses::h2::frame::{
    self, setting, ErrorCode, Head, Kind, Unframed, ACK, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, END_HEADERS,
    END_STREAM, HEAD_LEN, MAX_WINDOW, PADDED, PREFACE,
};
use loona_hpack::decoder::DecoderError;
use loona_hpack::Decoder;

/// Bytes received past which a window is given back: half of what it was opened to.
const REFILL: u32 = MAX_WINDOW / 2;

/// What the server sent that the caller acts on. A stream is named by its slot: slot `s` is
/// the stream of id `2s + 1`, the `s`th the connection asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen<'a> {
    /// A header block: the response head (`status`), or trailers (no status).
    Head {
        /// The stream.
        slot: usize,
        /// `:status`, when it is there and a number.
        status: Option<u16>,
        /// It ended the stream (END_STREAM).
        ended: bool,
    },
    /// Payload of a DATA frame, or a piece of it.
    Data {
        /// The stream.
        slot: usize,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// A DATA frame ended the stream (END_STREAM).
    End {
        /// The stream.
        slot: usize,
    },
    /// The server reset the stream (RST_STREAM).
    Reset {
        /// The stream.
        slot: usize,
        /// The error code (RFC 9113 §7).
        code: u32,
    },
    /// The server takes no more streams after `last`, and will close (GOAWAY).
    GoAway {
        /// The last stream it processed.
        last: u32,
        /// The error code: 0 for a drain, 0xb for ENHANCE_YOUR_CALM, ...
        code: u32,
    },
}

/// Why the connection cannot be read any further: the server broke the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum H2Error {
    /// A frame larger than the 16 KiB we allow, or a control frame of the wrong length.
    FrameSize(usize),
    /// A frame that RFC 9113 forbids here.
    Protocol(&'static str),
    /// The server answered in HTTP/1.1: it does not speak HTTP/2 on this port.
    Http1,
    /// A header block that does not decode.
    Compression(DecoderError),
}

impl fmt::Display for H2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            H2Error::FrameSize(len) => write!(f, "HTTP/2 frame of {len} bytes (FRAME_SIZE_ERROR)"),
            H2Error::Protocol(why) => write!(f, "HTTP/2 PROTOCOL_ERROR: {why}"),
            H2Error::Http1 => write!(f, "the server answered in HTTP/1.1, not HTTP/2"),
            H2Error::Compression(e) => write!(f, "HTTP/2 COMPRESSION_ERROR: {e:?}"),
        }
    }
}

/// A header block being gathered across HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
}

/// One connection's HTTP/2, client side.
pub struct Client {
    /// Streams asked for: ids 1, 3, ... 2·streams − 1.
    streams: usize,
    decoder: Decoder<'static>,
    /// The frame header being read, and how many of its bytes came so far.
    head: [u8; HEAD_LEN],
    head_got: usize,
    /// A frame came: the server speaks HTTP/2.
    framed: bool,
    /// The frame whose payload is being read, and how many of its bytes are still to come.
    reading: Option<(Head, usize)>,
    /// The payload of a frame other than unpadded DATA, gathered whole (empty most of the time).
    payload: Vec<u8>,
    block: Option<Block>,
    /// DATA bytes received since the connection's window was last given back.
    conn_taken: u32,
    /// The same, per stream.
    stream_taken: Box<[u32]>,
    /// Frames to send.
    out: Vec<u8>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("streams", &self.streams).field("out", &self.out.len()).finish()
    }
}

impl Client {
    /// A connection that will ask for `streams` streams, its opening queued: the preface, our
    /// SETTINGS (no push; streams' windows 2^31-1) and the connection's window raised to 2^31-1.
    pub fn new(streams: usize) -> Client {
        let mut out = PREFACE.to_vec();
        out.extend(frame::settings(&[(setting::ENABLE_PUSH, 0), (setting::INITIAL_WINDOW_SIZE, MAX_WINDOW)]));
        out.extend(frame::window_update(0, MAX_WINDOW - DEFAULT_WINDOW));
        Client {
            streams,
            decoder: Decoder::new(),
            head: [0; HEAD_LEN],
            head_got: 0,
            framed: false,
            reading: None,
            payload: Vec::new(),
            block: None,
            conn_taken: 0,
            stream_taken: vec![0; streams].into_boxed_slice(),
            out,
        }
    }

    /// Queues the request of stream `slot`: a HEADERS frame with END_STREAM (a GET has no body).
    pub fn request<'a>(&mut self, slot: usize, fields: impl IntoIterator<Item = (&'a str, &'a [u8])>) {
        let block = encode_block(fields);
        self.out.extend(frame::frame(Kind::Headers, END_HEADERS | END_STREAM, stream_id(slot), &block));
    }

    /// The frames queued to send; the caller drains what it sent.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Reads what the server sent, handing each thing the caller acts on to `on`, in order;
    /// queues the answers. A read may end anywhere: the next carries on.
    pub fn feed(&mut self, input: &[u8], mut on: impl FnMut(Seen<'_>)) -> Result<(), H2Error> {
        let mut pos = 0;
        while pos < input.len() {
            let Some((head, left)) = self.reading else {
                let take = (HEAD_LEN - self.head_got).min(input.len() - pos);
                self.head[self.head_got..self.head_got + take].copy_from_slice(&input[pos..pos + take]);
                self.head_got += take;
                pos += take;
                if self.head_got == HEAD_LEN {
                    self.head_got = 0;
                    self.begin(Head::parse(&self.head), &mut on)?;
                }
                continue;
            };
            let take = left.min(input.len() - pos);
            let piece = &input[pos..pos + take];
            pos += take;
            if streamed(head) {
                on(Seen::Data { slot: self.slot(head.stream)?, bytes: piece });
            } else {
                self.payload.extend_from_slice(piece);
            }
            self.reading = Some((head, left - take));
            if left == take {
                self.reading = None;
                self.end(head, &mut on)?;
            }
        }
        Ok(())
    }

    /// A frame's header is in: checks it, and acts at once on a frame without payload.
    fn begin(&mut self, head: Head, on: &mut impl FnMut(Seen<'_>)) -> Result<(), H2Error> {
        if !self.framed && self.head.starts_with(b"HTTP/1.") {
            return Err(H2Error::Http1);
        }
        self.framed = true;
        if head.len > DEFAULT_MAX_FRAME {
            return Err(H2Error::FrameSize(head.len));
        }
        if self.block.is_some() && head.kind() != Some(Kind::Continuation) {
            return Err(H2Error::Protocol("header block interrupted"));
        }
        if head.kind() == Some(Kind::Data) {
            self.slot(head.stream)?;
        }
        self.payload.clear();
        if head.len == 0 {
            return self.end(head, on);
        }
        self.reading = Some((head, head.len));
        Ok(())
    }

    /// A whole frame is in (its payload in `self.payload`, unless streamed): acts on it.
    fn end(&mut self, head: Head, on: &mut impl FnMut(Seen<'_>)) -> Result<(), H2Error> {
        let Some(kind) = head.kind() else { return Ok(()) };
        match kind {
            Kind::Data => self.data(head, on),
            Kind::Headers => {
                let bytes = unframed(head, frame::fragment(head, &self.payload))?.to_vec();
                self.block = Some(Block { stream: head.stream, end_stream: head.has(END_STREAM), bytes });
                self.block_done(head, on)
            }
            Kind::Continuation => {
                let block = self.block.as_mut().ok_or(H2Error::Protocol("CONTINUATION without HEADERS"))?;
                if block.stream != head.stream {
                    return Err(H2Error::Protocol("CONTINUATION on another stream"));
                }
                block.bytes.extend_from_slice(&self.payload);
                self.block_done(head, on)
            }
            Kind::Settings if head.has(ACK) => Ok(()),
            Kind::Settings => {
                if frame::parse_settings(&self.payload).is_none() {
                    return Err(H2Error::FrameSize(head.len));
                }
                self.out.extend(frame::settings_ack());
                Ok(())
            }
            Kind::Ping if head.has(ACK) => Ok(()),
            Kind::Ping => {
                let payload: &[u8; 8] =
                    self.payload.as_slice().try_into().map_err(|_| H2Error::FrameSize(head.len))?;
                self.out.extend(frame::ping_ack(payload));
                Ok(())
            }
            Kind::RstStream => {
                let code = read_u32(&self.payload).ok_or(H2Error::FrameSize(head.len))?;
                if let Ok(slot) = self.slot(head.stream) {
                    on(Seen::Reset { slot, code });
                }
                Ok(())
            }
            Kind::GoAway => {
                let last = frame::read_u31(&self.payload).ok_or(H2Error::FrameSize(head.len))?;
                let code = self.payload.get(4..).and_then(read_u32).ok_or(H2Error::FrameSize(head.len))?;
                on(Seen::GoAway { last, code });
                Ok(())
            }
            Kind::PushPromise => Err(H2Error::Protocol("PUSH_PROMISE, though push is off")),
            Kind::WindowUpdate | Kind::Priority => Ok(()),
        }
    }

    /// A DATA frame is in: a padded one's data goes to the caller now (an unpadded one's went
    /// as it came), the stream's end, and the windows given back once half used.
    fn data(&mut self, head: Head, on: &mut impl FnMut(Seen<'_>)) -> Result<(), H2Error> {
        let slot = self.slot(head.stream)?;
        if !streamed(head) {
            let bytes = unframed(head, frame::unpad(head, &self.payload))?;
            if !bytes.is_empty() {
                on(Seen::Data { slot, bytes });
            }
        }
        if head.has(END_STREAM) {
            on(Seen::End { slot });
        }
        let len = head.len as u32;
        self.conn_taken += len;
        if self.conn_taken >= REFILL {
            self.out.extend(frame::window_update(0, std::mem::take(&mut self.conn_taken)));
        }
        let taken = &mut self.stream_taken[slot];
        *taken += len;
        if *taken >= REFILL && !head.has(END_STREAM) {
            self.out.extend(frame::window_update(head.stream, std::mem::take(taken)));
        }
        Ok(())
    }

    /// After HEADERS or CONTINUATION: once the block is whole, decodes it and hands its status
    /// to the caller.
    fn block_done(&mut self, head: Head, on: &mut impl FnMut(Seen<'_>)) -> Result<(), H2Error> {
        if !head.has(END_HEADERS) {
            return Ok(());
        }
        let Some(block) = self.block.take() else { return Ok(()) };
        // Decoded whatever the stream, so that the table stays in step with the server's.
        let mut status = None;
        self.decoder
            .decode_with_cb(&block.bytes, |name, value| {
                if &name[..] == b":status" {
                    status = std::str::from_utf8(&value).ok().and_then(|s| s.parse().ok());
                }
            })
            .map_err(H2Error::Compression)?;
        let slot = self.slot(block.stream)?;
        on(Seen::Head { slot, status, ended: block.end_stream });
        Ok(())
    }

    /// The slot of a stream we opened; a frame that must be on one, on another, breaks the
    /// protocol.
    fn slot(&self, stream: u32) -> Result<usize, H2Error> {
        let slot = (stream as usize).wrapping_sub(1) / 2;
        if stream % 2 == 1 && slot < self.streams {
            Ok(slot)
        } else {
            Err(H2Error::Protocol("a stream we did not open"))
        }
    }
}

/// The id of stream `slot`: client streams are odd, in the order opened.
pub fn stream_id(slot: usize) -> u32 {
    2 * slot as u32 + 1
}

/// An error code's name (RFC 9113 §7), with its number.
pub fn code_name(code: u32) -> String {
    match ErrorCode::of(code) {
        Some(known) => format!("{known:?} ({code:#x})"),
        None => format!("unknown code {code:#x}"),
    }
}

/// Whether a frame's payload goes to the caller as it arrives: DATA without padding.
fn streamed(head: Head) -> bool {
    head.kind() == Some(Kind::Data) && !head.has(PADDED)
}

/// A frame's content, or the error the server's fault is (`unpad`'s or `fragment`'s).
fn unframed(head: Head, content: Result<&[u8], Unframed>) -> Result<&[u8], H2Error> {
    content.map_err(|fault| match fault {
        Unframed::Short => H2Error::FrameSize(head.len),
        Unframed::OverPadded => H2Error::Protocol("padding over the frame"),
    })
}

/// A 32-bit value at the start of `bytes` (an error code).
fn read_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hasses::h2::frame::{data_head, goaway, rst_stream};

    /// What a client with `streams` streams hands its caller for `input`, fed in pieces of
    /// `piece` bytes; DATA pieces joined per frame, as the caller's parser would see them.
    fn seen(client: &mut Client, input: &[u8], piece: usize) -> Result<Vec<String>, H2Error> {
        let mut got: Vec<String> = Vec::new();
        for part in input.chunks(piece) {
            client.feed(part, |s| match s {
                Seen::Data { slot, bytes } => {
                    let text = String::from_utf8_lossy(bytes);
                    let key = format!("data {slot}: ");
                    match got.last_mut().filter(|last| last.starts_with(&key)) {
                        Some(last) => last.push_str(&text),
                        None => got.push(format!("{key}{text}")),
                    }
                }
                other => got.push(format!("{other:?}")),
            })?;
        }
        Ok(got)
    }

    fn response_head(stream: u32, status: &str, flags: u8) -> Vec<u8> {
        let block =
            encode_block([(":status", status.as_bytes()), ("content-type", &b"text/event-stream"[..])]);
        frame::frame(Kind::Headers, END_HEADERS | flags, stream, &block)
    }

    fn data(stream: u32, text: &str, end: bool) -> Vec<u8> {
        [&data_head(stream, text.len(), end)[..], text.as_bytes()].concat()
    }

    /// A server's answer to two streams: SETTINGS, a PING, both heads, events on each, a
    /// padded DATA frame, then stream 3 ended and a drain.
    fn conversation() -> Vec<u8> {
        let mut padded = vec![4];
        padded.extend_from_slice(b"id: 3\ndata: b2:1:\n\n");
        padded.extend_from_slice(&[0; 4]);
        [
            frame::settings(&[(setting::MAX_CONCURRENT_STREAMS, 100)]),
            frame::frame(Kind::Ping, 0, 0, b"12345678"),
            response_head(1, "200", 0),
            response_head(3, "200", 0),
            data(1, "id: 1\ndata: b0:1:\n\n", false),
            data(3, "id: 1\ndata: b0:1:\n\nid: 2\ndata: b1:1:\n\n", false),
            frame::frame(Kind::Data, PADDED, 1, &padded),
            data(3, "", true),
            rst_stream(1, ErrorCode::Cancel),
            goaway(3, ErrorCode::NoError),
        ]
        .concat()
    }

    #[test]
    fn the_opening_is_the_preface_our_settings_and_a_wide_connection_window() {
        let mut client = Client::new(2);
        client.request(1, [(":method", &b"GET"[..]), (":path", b"/sse?subscribe=a")]);
        let out = client.out().clone();
        assert!(out.starts_with(PREFACE));
        let settings = &out[PREFACE.len()..];
        let head = Head::parse(settings[..HEAD_LEN].try_into().unwrap());
        assert_eq!((head.kind(), head.stream), (Some(Kind::Settings), 0));
        let values: Vec<_> =
            frame::parse_settings(&settings[HEAD_LEN..HEAD_LEN + head.len]).unwrap().collect();
        assert_eq!(values, [(setting::ENABLE_PUSH, 0), (setting::INITIAL_WINDOW_SIZE, MAX_WINDOW)]);
        let update = &settings[HEAD_LEN + head.len..];
        assert_eq!(update[..HEAD_LEN + 4], frame::window_update(0, MAX_WINDOW - DEFAULT_WINDOW)[..]);
        let request = Head::parse(update[HEAD_LEN + 4..][..HEAD_LEN].try_into().unwrap());
        assert_eq!(
            (request.kind(), request.stream, request.flags),
            (Some(Kind::Headers), 3, END_HEADERS | END_STREAM)
        );
    }

    #[test]
    fn heads_data_ends_resets_and_goaway_reach_the_caller_however_the_reads_cut_them() {
        let expected = [
            "Head { slot: 0, status: Some(200), ended: false }",
            "Head { slot: 1, status: Some(200), ended: false }",
            "data 0: id: 1\ndata: b0:1:\n\n",
            "data 1: id: 1\ndata: b0:1:\n\nid: 2\ndata: b1:1:\n\n",
            "data 0: id: 3\ndata: b2:1:\n\n",
            "End { slot: 1 }",
            "Reset { slot: 0, code: 8 }",
            "GoAway { last: 3, code: 0 }",
        ];
        for piece in [1, 2, 7, 9, 10, 1000] {
            let mut client = Client::new(2);
            client.out().clear();
            let got = seen(&mut client, &conversation(), piece).unwrap();
            assert_eq!(got, expected, "pieces of {piece}");
            let answers = [frame::settings_ack(), frame::ping_ack(b"12345678")].concat();
            assert_eq!(client.out(), &answers, "SETTINGS and PING answered, pieces of {piece}");
        }
    }

    #[test]
    fn a_refusal_is_a_head_that_ends_its_stream_and_a_block_may_take_continuations() {
        let block = encode_block([(":status", &b"403"[..]), ("content-length", b"3")]);
        let (first, rest) = block.split_at(5);
        let input = [
            frame::frame(
                Kind::Headers,
                END_STREAM | frame::PRIORITY,
                1,
                &[&[0, 0, 0, 0, 16][..], first].concat(),
            ),
            frame::frame(Kind::Continuation, END_HEADERS, 1, rest),
        ]
        .concat();
        let got = seen(&mut Client::new(1), &input, 3).unwrap();
        assert_eq!(got, ["Head { slot: 0, status: Some(403), ended: true }"]);
    }

    #[test]
    fn windows_are_given_back_once_half_used() {
        let mut client = Client::new(1);
        client.out().clear();
        let chunk = vec![b':'; DEFAULT_MAX_FRAME];
        let frame = [&data_head(1, chunk.len(), false)[..], &chunk].concat();
        let frames = (REFILL as usize).div_ceil(DEFAULT_MAX_FRAME);
        for _ in 0..frames {
            client.feed(&frame, |_| ()).unwrap();
        }
        let given = (frames * DEFAULT_MAX_FRAME) as u32;
        let expected = [frame::window_update(0, given), frame::window_update(1, given)].concat();
        assert_eq!(client.out(), &expected);
    }

    #[test]
    fn frames_that_break_the_protocol_end_the_connection() {
        let big = Head { len: DEFAULT_MAX_FRAME + 1, kind: Kind::Data as u8, flags: 0, stream: 1 }.encode();
        let cases: [(Vec<u8>, H2Error); 5] = [
            (big.to_vec(), H2Error::FrameSize(DEFAULT_MAX_FRAME + 1)),
            (data(5, "x", false), H2Error::Protocol("a stream we did not open")),
            (data(2, "x", false), H2Error::Protocol("a stream we did not open")),
            (
                frame::frame(Kind::PushPromise, END_HEADERS, 1, &[0, 0, 0, 2]),
                H2Error::Protocol("PUSH_PROMISE, though push is off"),
            ),
            (
                [frame::frame(Kind::Headers, 0, 1, &[0x88]), frame::settings(&[])].concat(),
                H2Error::Protocol("header block interrupted"),
            ),
        ];
        for (input, error) in cases {
            assert_eq!(seen(&mut Client::new(2), &input, 4), Err(error.clone()), "{error}");
        }
        let http1 = b"HTTP/1.1 400 Bad Request\r\n\r\n";
        assert_eq!(seen(&mut Client::new(1), http1, 3), Err(H2Error::Http1));
        let bad_block = frame::frame(Kind::Headers, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(seen(&mut Client::new(1), &bad_block, 100), Err(H2Error::Compression(_))));
    }
}
