//! Reading one HTTP/1.1 request to the API from the bytes received so far: pure, no I/O.
//!
//! A request is a head (at most [`MAX_HEAD`] bytes) and a body whose length `Content-Length`
//! gives (at most the caller's limit). [`parse`] says whether the bytes hold a whole request
//! yet, and how many bytes it took, so that the rest (a pipelined next request) stays. Too big
//! is known as soon as the head says so, before the body is waited for. Chunked bodies are
//! refused: every client that publishes knows its body's length.
//!
//! A request borrows what it can from the bytes it was read from (its path, its query, its key):
//! reading one allocates nothing unless its key has to be decoded.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::ops::Range;

/// The longest request head: far beyond any API request, small enough to hold for every
/// connection.
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers read from one request; more is refused.
const MAX_HEADERS: usize = 32;

/// The methods the API answers; anything else is [`Method::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// Any other method: answered 405.
    Other,
}

/// The media types of a body the API reads (`Content-Type` before any `;`, in any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `application/json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// Any other: a body the API does not read.
    Other,
}

impl MediaType {
    /// The media type a `Content-Type` value names.
    fn of(value: &[u8]) -> MediaType {
        const JSON: &[u8] = b"application/json";
        const FORM: &[u8] = b"application/x-www-form-urlencoded";
        // Most clients write one of the two exactly: compared whole first (many bytes a step),
        // before a case-insensitive comparison byte by byte.
        if value == FORM {
            return MediaType::Form;
        }
        if value == JSON {
            return MediaType::Json;
        }
        let media = value.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
        if media.eq_ignore_ascii_case(JSON) {
            MediaType::Json
        } else if media.eq_ignore_ascii_case(FORM) {
            MediaType::Form
        } else {
            MediaType::Other
        }
    }
}

/// One request, read whole, borrowing from the bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Its method.
    pub method: Method,
    /// Its path, without the query.
    pub path: &'a str,
    /// Its query, without the `?`; empty when none.
    pub query: &'a str,
    /// The media type of its body (`Content-Type`), if it says one.
    pub content_type: Option<MediaType>,
    /// The key it carries: `Authorization: Bearer KEY` or `X-API-Key: KEY`, or the password of
    /// `Authorization: Basic` (decoded, so owned).
    pub key: Option<Cow<'a, [u8]>>,
    /// Whether the connection stays open after the answer: HTTP/1.1 unless `Connection: close`,
    /// HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// Where its body is in the bytes given to [`parse`].
    pub body: Range<usize>,
}

/// What the bytes received so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not a whole request yet: wait for more.
    Incomplete,
    /// A whole request, the first `consumed` bytes.
    Complete {
        /// The request.
        request: Request<'a>,
        /// How many bytes it took.
        consumed: usize,
    },
}

/// Why the bytes are not a request the API can read. After any of these the connection is
/// answered and closed: where the next request would start is not known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not HTTP/1.x as httparse reads it.
    #[error("malformed request: {0}")]
    Malformed(httparse::Error),
    /// The head is over [`MAX_HEAD`] bytes, or has over 32 headers.
    #[error("request head over {MAX_HEAD} bytes or 32 headers")]
    HeadTooLarge,
    /// `Content-Length` says more than the limit.
    #[error("request body of {len} bytes is over the {max}-byte limit")]
    BodyTooLarge {
        /// What `Content-Length` says.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A `Content-Length` that is not a number, or two that differ.
    #[error("bad Content-Length")]
    BadLength,
    /// `Transfer-Encoding` (chunked): the length must be given.
    #[error("Transfer-Encoding is not supported: send Content-Length")]
    LengthRequired,
}

impl RequestError {
    /// The status code it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Malformed(_) | RequestError::BadLength => 400,
            RequestError::HeadTooLarge => 431,
            RequestError::BodyTooLarge { .. } => 413,
            RequestError::LengthRequired => 411,
        }
    }
}

/// Reads the request at the start of `received`, if it is all there; a body over `max_body`
/// bytes is refused.
pub fn parse(received: &[u8], max_body: usize) -> Result<Parsed<'_>, RequestError> {
    // Left uninitialised: httparse writes those it fills, and a request has a handful.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut []);
    let head_len = match head.parse_with_uninit_headers(received, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Err(RequestError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) if received.len() > MAX_HEAD => return Err(RequestError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(e) => return Err(RequestError::Malformed(e)),
    };
    let fields = Fields::read(head.headers)?;
    if fields.length > max_body {
        return Err(RequestError::BodyTooLarge { len: fields.length, max: max_body });
    }
    let consumed = head_len + fields.length;
    if received.len() < consumed {
        return Ok(Parsed::Incomplete);
    }
    let method = match head.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        _ => Method::Other,
    };
    let target = head.path.unwrap_or("/");
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        Some(at) => (&target[..at], &target[at + 1..]),
        None => (target, ""),
    };
    let keep_alive = match (head.version, fields.connection) {
        (_, Some(Connection::Close)) => false,
        (_, Some(Connection::KeepAlive)) => true,
        (version, None) => version == Some(1),
    };
    let request = Request {
        method,
        path,
        query,
        content_type: fields.content_type,
        key: fields.key,
        keep_alive,
        body: head_len..consumed,
    };
    Ok(Parsed::Complete { request, consumed })
}

/// What a `Connection` header asks.
#[derive(Debug, Clone, Copy)]
enum Connection {
    Close,
    KeepAlive,
}

/// The headers the API looks at.
#[derive(Debug, Default)]
struct Fields<'a> {
    length: usize,
    content_type: Option<MediaType>,
    key: Option<Cow<'a, [u8]>>,
    connection: Option<Connection>,
}

impl<'a> Fields<'a> {
    fn read(headers: &[httparse::Header<'a>]) -> Result<Fields<'a>, RequestError> {
        let mut fields = Fields::default();
        let mut length = None;
        for header in headers {
            let name = header.name;
            let value = header.value;
            if name.eq_ignore_ascii_case("content-length") {
                let len = content_length(value).ok_or(RequestError::BadLength)?;
                // Two lengths that differ are how requests get smuggled: refused.
                if length.is_some_and(|earlier| earlier != len) {
                    return Err(RequestError::BadLength);
                }
                length = Some(len);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(RequestError::LengthRequired);
            } else if name.eq_ignore_ascii_case("content-type") {
                fields.content_type = Some(MediaType::of(value));
            } else if name.eq_ignore_ascii_case("authorization") {
                if let Some(key) =
                    bearer(value).map(Cow::Borrowed).or_else(|| basic_password(value).map(Cow::Owned))
                {
                    fields.key = Some(key);
                }
            } else if name.eq_ignore_ascii_case("x-api-key") {
                fields.key = Some(Cow::Borrowed(value.trim_ascii()));
            } else if name.eq_ignore_ascii_case("connection") {
                fields.connection = connection(value).or(fields.connection);
            }
        }
        fields.length = length.unwrap_or(0);
        Ok(fields)
    }
}

/// A `Content-Length` value: one or more digits, and a number a `usize` holds. Read straight
/// from the bytes, in one pass.
fn content_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0usize, |len, &byte| {
        let digit = byte.wrapping_sub(b'0');
        (digit <= 9).then_some(())?;
        len.checked_mul(10)?.checked_add(usize::from(digit))
    })
}

/// The token of `Bearer TOKEN` (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| token.trim_ascii())
}

/// The password of `Basic BASE64(USER:PASSWORD)`: how a browser gives the key it asked its user
/// for (the status page's `WWW-Authenticate: Basic`); the user name is not looked at.
fn basic_password(value: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let value = value.trim_ascii();
    let (scheme, encoded) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii()).ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// `close` or `keep-alive` among a `Connection` header's options.
fn connection(value: &[u8]) -> Option<Connection> {
    let options = value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
    let mut found = None;
    for option in options {
        if option.eq_ignore_ascii_case(b"close") {
            return Some(Connection::Close);
        }
        if option.eq_ignore_ascii_case(b"keep-alive") {
            found = Some(Connection::KeepAlive);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 100;

    /// Parses `bytes` whole, and checks that every shorter prefix is incomplete or already the
    /// same error: fed byte by byte, the answer is the same.
    fn parse_both_ways(bytes: &[u8]) -> Result<Parsed<'_>, RequestError> {
        let whole = parse(bytes, LIMIT);
        let mut early_error = None;
        for end in 0..bytes.len() {
            match parse(&bytes[..end], LIMIT) {
                Ok(Parsed::Incomplete) => {}
                Ok(complete) => panic!("complete after {end} of {} bytes: {complete:?}", bytes.len()),
                Err(e) => {
                    early_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = early_error {
            assert_eq!(whole, Err(e.clone()), "an error seen early stays the error");
        }
        whole
    }

    fn complete(bytes: &[u8]) -> (Request<'_>, usize) {
        match parse_both_ways(bytes) {
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn a_post_with_its_body_and_key() {
        let bytes =
            b"POST /publish?x=1 HTTP/1.1\r\nHost: h\r\nContent-Type: Application/JSON; charset=utf-8\r\n\
                      Authorization: bearer s3cret\r\nContent-Length: 5\r\n\r\nhello";
        let (request, consumed) = complete(bytes);
        assert_eq!(consumed, bytes.len());
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.path, "/publish");
        assert_eq!(request.content_type, Some(MediaType::Json));
        assert_eq!(request.key.as_deref(), Some(&b"s3cret"[..]));
        assert!(request.keep_alive);
        assert_eq!(&bytes[request.body], b"hello");
    }

    #[test]
    fn the_media_type_is_read_in_any_case_and_without_its_parameters() {
        assert_eq!(MediaType::of(b"application/x-www-form-urlencoded"), MediaType::Form);
        assert_eq!(MediaType::of(b"Application/X-WWW-Form-URLEncoded ; charset=utf-8"), MediaType::Form);
        assert_eq!(MediaType::of(b"application/json"), MediaType::Json);
        assert_eq!(MediaType::of(b"APPLICATION/JSON;charset=utf-8"), MediaType::Json);
        assert_eq!(MediaType::of(b"application/jsonx"), MediaType::Other);
        assert_eq!(MediaType::of(b"text/plain"), MediaType::Other);
        assert_eq!(MediaType::of(b"\xff"), MediaType::Other);
    }

    #[test]
    fn a_content_length_is_digits_a_usize_holds() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"007"), Some(7));
        assert_eq!(content_length(usize::MAX.to_string().as_bytes()), Some(usize::MAX));
        let over = format!("{}0", usize::MAX);
        for refused in [&b""[..], b"+1", b"-1", b"1 2", b"1a", b"\xd9\xa1", over.as_bytes()] {
            assert_eq!(content_length(refused), None, "{}", refused.escape_ascii());
        }
    }

    #[test]
    fn a_browsers_basic_credentials_give_the_key_as_their_password() {
        let key = |authorization: &str| {
            let bytes = format!("GET / HTTP/1.1\r\nAuthorization: {authorization}\r\n\r\n");
            complete(bytes.as_bytes()).0.key.map(Cow::into_owned)
        };
        // base64("anyone:s3c:ret")
        assert_eq!(key("Basic YW55b25lOnMzYzpyZXQ="), Some(b"s3c:ret".to_vec()));
        // base64(":k")
        assert_eq!(key("basic Oms="), Some(b"k".to_vec()));
        assert_eq!(key("Basic bm8gY29sb24="), None, "base64('no colon')");
        assert_eq!(key("Basic !!!"), None);
        assert_eq!(key("Digest x"), None);
    }

    #[test]
    fn a_pipelined_request_is_left_for_later() {
        let first = b"GET /status HTTP/1.1\r\nX-API-Key:  k \r\n\r\n";
        let bytes = [&first[..], b"GET /clients HTTP/1.1\r\n\r\n"].concat();
        let Ok(Parsed::Complete { request, consumed }) = parse(&bytes, LIMIT) else { panic!() };
        assert_eq!(consumed, first.len());
        assert_eq!(request.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(request.body, consumed..consumed);
        let (second, _) = complete(&bytes[consumed..]);
        assert_eq!(second.path, "/clients");
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_header() {
        let keep = |bytes: &[u8]| complete(bytes).0.keep_alive;
        assert!(keep(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n"));
    }

    #[test]
    fn other_methods_and_other_schemes() {
        let (request, _) = complete(b"DELETE /publish HTTP/1.1\r\nAuthorization: Basic abc\r\n\r\n");
        assert_eq!(request.method, Method::Other);
        assert_eq!(request.key, None);
    }

    #[test]
    fn too_big_is_known_before_the_body_comes() {
        let head = b"POST /publish HTTP/1.1\r\nContent-Length: 101\r\n\r\n";
        assert_eq!(parse_both_ways(head), Err(RequestError::BodyTooLarge { len: 101, max: LIMIT }));
        assert_eq!(RequestError::BodyTooLarge { len: 101, max: LIMIT }.status(), 413);
        let mut long = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse(&long, LIMIT), Err(RequestError::HeadTooLarge));
        assert_eq!(RequestError::HeadTooLarge.status(), 431);
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        let request = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(request.as_bytes(), LIMIT), Err(RequestError::HeadTooLarge));
    }

    #[test]
    fn lengths_that_cannot_be_trusted_are_refused() {
        let refused = |bytes: &[u8]| parse_both_ways(bytes).unwrap_err().status();
        assert_eq!(refused(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(refused(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), 400);
        assert_eq!(refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 411);
        assert_eq!(refused(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), 400);
        assert_eq!(refused(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse(&bytes, LIMIT);
        }
    }
}
