//! HTTP/2 frames (RFC 9113 §4, §6): the 9-byte frame header, and the control frames a server
//! sends, each built whole.
//!
//! Pure functions over bytes; what the frames mean to a connection is `session`'s.

/// What every HTTP/2 client sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A frame header's length.
pub const HEAD_LEN: usize = 9;

/// The largest frame payload a peer must accept (SETTINGS_MAX_FRAME_SIZE's initial value), and
/// the largest we accept: we never raise it.
pub const DEFAULT_MAX_FRAME: usize = 16_384;

/// The initial flow-control window of a connection and of each stream.
pub const DEFAULT_WINDOW: u32 = 65_535;

/// The largest a flow-control window may grow (2^31 - 1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// The frame types (RFC 9113 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Kind {
    Data = 0,
    Headers = 1,
    Priority = 2,
    RstStream = 3,
    Settings = 4,
    PushPromise = 5,
    Ping = 6,
    GoAway = 7,
    WindowUpdate = 8,
    Continuation = 9,
}

impl Kind {
    /// The type of byte `kind`; `None` for an extension type, which a receiver ignores.
    pub fn of(kind: u8) -> Option<Kind> {
        Some(match kind {
            0 => Kind::Data,
            1 => Kind::Headers,
            2 => Kind::Priority,
            3 => Kind::RstStream,
            4 => Kind::Settings,
            5 => Kind::PushPromise,
            6 => Kind::Ping,
            7 => Kind::GoAway,
            8 => Kind::WindowUpdate,
            9 => Kind::Continuation,
            _ => return None,
        })
    }
}

/// END_STREAM on DATA and HEADERS.
pub const END_STREAM: u8 = 0x1;
/// ACK on SETTINGS and PING.
pub const ACK: u8 = 0x1;
/// END_HEADERS on HEADERS and CONTINUATION.
pub const END_HEADERS: u8 = 0x4;
/// PADDED on DATA and HEADERS.
pub const PADDED: u8 = 0x8;
/// PRIORITY on HEADERS.
pub const PRIORITY: u8 = 0x20;

/// The settings we read (RFC 9113 §6.5.2); others are ignored, as the RFC says.
pub mod setting {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    /// SETTINGS_ENABLE_PUSH.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE.
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// The error codes of RST_STREAM and GOAWAY (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum ErrorCode {
    NoError = 0x0,
    ProtocolError = 0x1,
    InternalError = 0x2,
    FlowControlError = 0x3,
    SettingsTimeout = 0x4,
    StreamClosed = 0x5,
    FrameSizeError = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    CompressionError = 0x9,
    ConnectError = 0xa,
    EnhanceYourCalm = 0xb,
    InadequateSecurity = 0xc,
    Http11Required = 0xd,
}

impl ErrorCode {
    /// The code of number `code`, as a RST_STREAM or GOAWAY carries it; `None` for one RFC 9113
    /// does not define, which a receiver treats as INTERNAL_ERROR.
    pub fn of(code: u32) -> Option<ErrorCode> {
        const ALL: [ErrorCode; 14] = [
            ErrorCode::NoError,
            ErrorCode::ProtocolError,
            ErrorCode::InternalError,
            ErrorCode::FlowControlError,
            ErrorCode::SettingsTimeout,
            ErrorCode::StreamClosed,
            ErrorCode::FrameSizeError,
            ErrorCode::RefusedStream,
            ErrorCode::Cancel,
            ErrorCode::CompressionError,
            ErrorCode::ConnectError,
            ErrorCode::EnhanceYourCalm,
            ErrorCode::InadequateSecurity,
            ErrorCode::Http11Required,
        ];
        ALL.get(usize::try_from(code).ok()?).copied()
    }
}

/// A frame's header: its payload's length, type, flags and stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The payload's length (24 bits).
    pub len: usize,
    /// The type byte, as sent (an unknown one is ignored, not refused).
    pub kind: u8,
    /// The flags.
    pub flags: u8,
    /// The stream (31 bits; 0 is the connection).
    pub stream: u32,
}

impl Head {
    /// Reads a frame header (the reserved bit of the stream is ignored).
    pub fn parse(bytes: &[u8; HEAD_LEN]) -> Head {
        Head {
            len: usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]),
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & MAX_WINDOW,
        }
    }

    /// The header's 9 bytes. `len` must fit 24 bits: every frame we send is at most
    /// [`DEFAULT_MAX_FRAME`].
    pub fn encode(self) -> [u8; HEAD_LEN] {
        debug_assert!(self.len < 1 << 24);
        let len = (self.len as u32).to_be_bytes();
        let stream = self.stream.to_be_bytes();
        [len[1], len[2], len[3], self.kind, self.flags, stream[0], stream[1], stream[2], stream[3]]
    }

    /// Its type, if it is one of RFC 9113's.
    pub fn kind(self) -> Option<Kind> {
        Kind::of(self.kind)
    }

    /// Whether `flag` is set.
    pub fn has(self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A whole frame: its header, then `payload`.
pub fn frame(kind: Kind, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_LEN + payload.len());
    out.extend_from_slice(&Head { len: payload.len(), kind: kind as u8, flags, stream }.encode());
    out.extend_from_slice(payload);
    out
}

/// The header of a DATA frame of `len` bytes on `stream`.
pub fn data_head(stream: u32, len: usize, end_stream: bool) -> [u8; HEAD_LEN] {
    let flags = if end_stream { END_STREAM } else { 0 };
    Head { len, kind: Kind::Data as u8, flags, stream }.encode()
}

/// A SETTINGS frame with these settings.
pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = values
        .iter()
        .flat_map(|&(id, value)| [&id.to_be_bytes()[..], &value.to_be_bytes()].concat())
        .collect();
    frame(Kind::Settings, 0, 0, &payload)
}

/// The acknowledgement of the peer's SETTINGS.
pub fn settings_ack() -> Vec<u8> {
    frame(Kind::Settings, ACK, 0, &[])
}

/// The answer to a PING: its payload back, with ACK.
pub fn ping_ack(payload: &[u8; 8]) -> Vec<u8> {
    frame(Kind::Ping, ACK, 0, payload)
}

/// A WINDOW_UPDATE giving `stream` (0: the connection) `increment` more bytes.
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(Kind::WindowUpdate, 0, stream, &increment.to_be_bytes())
}

/// A RST_STREAM ending `stream` with `code`.
pub fn rst_stream(stream: u32, code: ErrorCode) -> Vec<u8> {
    frame(Kind::RstStream, 0, stream, &(code as u32).to_be_bytes())
}

/// A GOAWAY: no stream after `last_stream` will be processed; `code` says why.
pub fn goaway(last_stream: u32, code: ErrorCode) -> Vec<u8> {
    let mut payload = [0; 8];
    payload[..4].copy_from_slice(&last_stream.to_be_bytes());
    payload[4..].copy_from_slice(&(code as u32).to_be_bytes());
    frame(Kind::GoAway, 0, 0, &payload)
}

/// The settings in a SETTINGS payload; `None` when its length is not a multiple of 6.
pub fn parse_settings(payload: &[u8]) -> Option<impl Iterator<Item = (u16, u32)> + '_> {
    payload.len().is_multiple_of(6).then(|| {
        payload.chunks_exact(6).map(|pair| {
            (u16::from_be_bytes([pair[0], pair[1]]), u32::from_be_bytes([pair[2], pair[3], pair[4], pair[5]]))
        })
    })
}

/// Why a DATA or HEADERS frame's content cannot be taken out of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unframed {
    /// The payload is shorter than its pad length or its priority (FRAME_SIZE_ERROR).
    Short,
    /// The padding is longer than the payload (PROTOCOL_ERROR).
    OverPadded,
}

/// A DATA or HEADERS frame's content: its padding (PADDED) taken off.
pub fn unpad(head: Head, payload: &[u8]) -> Result<&[u8], Unframed> {
    if !head.has(PADDED) {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or(Unframed::Short)?;
    rest.len().checked_sub(usize::from(pad)).map(|len| &rest[..len]).ok_or(Unframed::OverPadded)
}

/// A HEADERS frame's block fragment: its padding and its priority (PRIORITY) taken off.
pub fn fragment(head: Head, payload: &[u8]) -> Result<&[u8], Unframed> {
    let unpadded = unpad(head, payload)?;
    match head.has(PRIORITY) {
        true => unpadded.get(5..).ok_or(Unframed::Short),
        false => Ok(unpadded),
    }
}

/// A 31-bit value at the start of `payload` (a window increment, a stream), the reserved bit
/// dropped; `None` when it is shorter than 4 bytes.
pub fn read_u31(payload: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = payload.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes) & MAX_WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_head_reads_back_as_written(len in 0usize..1 << 24, kind: u8, flags: u8, stream in 0u32..=MAX_WINDOW) {
            let head = Head { len, kind, flags, stream };
            prop_assert_eq!(Head::parse(&head.encode()), head);
        }
    }

    #[test]
    fn control_frames_are_laid_out_as_rfc_9113_says() {
        assert_eq!(settings_ack(), [0, 0, 0, 4, 1, 0, 0, 0, 0]);
        assert_eq!(window_update(3, 1000), [0, 0, 4, 8, 0, 0, 0, 0, 3, 0, 0, 0x03, 0xe8]);
        assert_eq!(goaway(7, ErrorCode::EnhanceYourCalm)[9..], [0, 0, 0, 7, 0, 0, 0, 0xb]);
        assert_eq!(rst_stream(5, ErrorCode::Cancel)[..9], [0, 0, 4, 3, 0, 0, 0, 0, 5]);
        let written = settings(&[(setting::MAX_CONCURRENT_STREAMS, 100), (setting::INITIAL_WINDOW_SIZE, 0)]);
        let read: Vec<_> = parse_settings(&written[9..]).unwrap().collect();
        assert_eq!(read, [(3, 100), (4, 0)]);
        assert!(parse_settings(&[0; 5]).is_none());
        assert_eq!(Head::parse(&[0, 0, 0, 0, 0, 0x80, 0, 0, 1]).stream, 1, "the reserved bit is dropped");
        let head = |flags| Head { len: 0, kind: Kind::Headers as u8, flags, stream: 1 };
        assert_eq!(fragment(head(PADDED | PRIORITY), &[1, 0, 0, 0, 0, 9, b'x', 0]), Ok(&b"x"[..]));
        assert_eq!(unpad(head(PADDED), &[]), Err(Unframed::Short));
        assert_eq!(unpad(head(PADDED), &[3, 1]), Err(Unframed::OverPadded));
        assert_eq!(fragment(head(PRIORITY), &[0; 4]), Err(Unframed::Short));
        for code in 0..=0xd {
            assert_eq!(ErrorCode::of(code).map(|c| c as u32), Some(code));
        }
        assert_eq!(ErrorCode::of(0xe), None);
    }
}
