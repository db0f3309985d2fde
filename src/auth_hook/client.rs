//! The hook's own HTTP/1.1 for `http://` backends, as pure functions over bytes: the one request
//! the hook ever makes, and its answer.
//!
//! Owns the bytes of that request ([`write_request`]), reading the backend's answer out of the
//! bytes received so far ([`read_response`]: `Content-Length`, chunked or until close, at most
//! [`MAX_ANSWER`] bytes of body, and whether the connection may be kept), and the words for
//! what went wrong ([`AskError`]). It does no I/O (`plain` does), knows nothing of redirects,
//! proxies or TLS (`https://` backends are asked through `ureq`), and does not judge what an
//! answer means (`read_answer` does).

use std::io;

use super::MAX_ANSWER;

/// The most bytes of an answer's head (status line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// The most header lines of an answer's head.
const MAX_HEADERS: usize = 64;

/// Where the hook's request goes: a `http://` URL taken apart once, at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host to connect to, without an IPv6 literal's brackets.
    host: String,
    port: u16,
    /// The `Host` header: the URL's host and port as written.
    authority: String,
    /// The path and query asked for.
    path: String,
}

impl Target {
    /// The target of `url` when it is an `http://` URL with a host; `None` for any other
    /// (`https://` ones are not this client's).
    pub fn of(url: &str) -> Option<Target> {
        let uri: ureq::http::Uri = url.parse().ok()?;
        if !uri.scheme_str()?.eq_ignore_ascii_case("http") {
            return None;
        }
        let authority = uri.authority()?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        let port = authority.port_u16().unwrap_or(80);
        let hostport = authority.as_str().rsplit('@').next().unwrap_or_default();
        Some(Target {
            host: host.to_owned(),
            port,
            authority: hostport.to_owned(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        })
    }

    /// The host and port to connect to.
    pub fn address(&self) -> (&str, u16) {
        (&self.host, self.port)
    }
}

/// A header value that would break the request: it has a CR, LF or NUL byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {0} header to send has a line break or NUL in it")]
pub struct BadHeader(pub &'static str);

/// Writes the request for `target` with `headers` into `into` (emptied first).
pub fn write_request(
    into: &mut Vec<u8>,
    target: &Target,
    headers: &[(&'static str, Vec<u8>)],
) -> Result<(), BadHeader> {
    into.clear();
    into.extend_from_slice(b"GET ");
    into.extend_from_slice(target.path.as_bytes());
    into.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    into.extend_from_slice(target.authority.as_bytes());
    into.extend_from_slice(concat!("\r\nUser-Agent: hasses/", env!("CARGO_PKG_VERSION"), "\r\n").as_bytes());
    into.extend_from_slice(b"Accept: */*\r\n");
    for (name, value) in headers {
        if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(BadHeader(name));
        }
        into.extend_from_slice(name.as_bytes());
        into.extend_from_slice(b": ");
        into.extend_from_slice(value);
        into.extend_from_slice(b"\r\n");
    }
    into.extend_from_slice(b"\r\n");
    Ok(())
}

/// A whole answer from the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Its status code.
    pub status: u16,
    /// Its body, de-chunked.
    pub body: Vec<u8>,
    /// Whether the connection cannot carry another request after it.
    pub close: bool,
}

/// How far the bytes received so far go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The answer is not whole yet: read more.
    Partial,
    /// The answer is whole.
    Whole(Response),
}

/// Why an answer cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    /// Its head is not HTTP.
    #[error("its head is not HTTP: {0}")]
    Head(httparse::Error),
    /// Its head is over [`MAX_HEAD`] bytes.
    #[error("its head is over {MAX_HEAD} bytes")]
    HeadTooLong,
    /// Its body is over [`MAX_ANSWER`] bytes.
    #[error("its answer is over {MAX_ANSWER} bytes")]
    TooLong,
    /// Its `Content-Length` is not a number, or two disagree.
    #[error("its Content-Length is not one number")]
    Length,
    /// Its chunked body is malformed.
    #[error("its chunked body is malformed")]
    Chunk,
    /// The connection closed before the answer was whole.
    #[error("the connection closed in the middle of it")]
    Cut,
}

/// How an answer's body ends.
enum Framing {
    Length(u64),
    Chunked { length_too: bool },
    UntilClose,
}

/// Reads an answer out of `bytes`, all received so far; `closed`: the backend closed the
/// connection after them. Only a whole answer's bytes are expected: the hook sends one request
/// at a time.
pub fn read_response(bytes: &[u8], closed: bool) -> Result<Progress, BadAnswer> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes).map_err(BadAnswer::Head)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if bytes.len() > MAX_HEAD => return Err(BadAnswer::HeadTooLong),
        httparse::Status::Partial => return partial(closed),
    };
    let status = response.code.unwrap_or_default();
    let close = asks_to_close(&response);
    let rest = &bytes[head_len..];
    let (body, close) = match framing(&response)? {
        // A `1xx`, `204` and `304` have no body; an interim `1xx` is not waited past.
        _ if status < 200 || status == 204 || status == 304 => (Vec::new(), close || status < 200),
        Framing::Length(length) if length > MAX_ANSWER => return Err(BadAnswer::TooLong),
        Framing::Length(length) => match rest.get(..length as usize) {
            Some(body) => (body.to_vec(), close),
            None => return partial(closed),
        },
        // With a Content-Length too, what follows the body cannot be trusted: not kept.
        Framing::Chunked { length_too } => match dechunk(rest)? {
            Some(body) => (body, close || length_too),
            None => return partial(closed),
        },
        Framing::UntilClose if rest.len() as u64 > MAX_ANSWER => return Err(BadAnswer::TooLong),
        Framing::UntilClose if closed => (rest.to_vec(), true),
        Framing::UntilClose => return Ok(Progress::Partial),
    };
    Ok(Progress::Whole(Response { status, body, close }))
}

/// Not whole yet: more may come, unless the connection closed.
fn partial(closed: bool) -> Result<Progress, BadAnswer> {
    if closed {
        Err(BadAnswer::Cut)
    } else {
        Ok(Progress::Partial)
    }
}

/// Whether `response` says the connection closes after it: HTTP/1.0, or `Connection: close`.
fn asks_to_close(response: &httparse::Response) -> bool {
    response.version == Some(0)
        || response.headers.iter().any(|header| {
            header.name.eq_ignore_ascii_case("connection")
                && tokens(header.value).any(|token| token.eq_ignore_ascii_case(b"close"))
        })
}

/// How the body of `response` ends.
fn framing(response: &httparse::Response) -> Result<Framing, BadAnswer> {
    let mut chunked = None;
    let mut length = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked =
                Some(tokens(header.value).last().is_some_and(|last| last.eq_ignore_ascii_case(b"chunked")));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value.trim_ascii()).ok();
            let value = value.filter(|v| v.bytes().all(|b| b.is_ascii_digit()));
            let value: u64 = value.and_then(|v| v.parse().ok()).ok_or(BadAnswer::Length)?;
            if length.is_some_and(|seen| seen != value) {
                return Err(BadAnswer::Length);
            }
            length = Some(value);
        }
    }
    Ok(match (chunked, length) {
        (Some(true), length) => Framing::Chunked { length_too: length.is_some() },
        (Some(false), _) | (None, None) => Framing::UntilClose,
        (None, Some(length)) => Framing::Length(length),
    })
}

/// The comma-separated tokens of a header value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|token| !token.is_empty())
}

/// The body of a chunked answer whose bytes after the head are `bytes`; `None` until whole.
fn dechunk(bytes: &[u8]) -> Result<Option<Vec<u8>>, BadAnswer> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (size_len, size) = match httparse::parse_chunk_size(&bytes[at..]).map_err(|_| BadAnswer::Chunk)? {
            httparse::Status::Complete(found) => found,
            httparse::Status::Partial => return Ok(None),
        };
        at += size_len;
        if size == 0 {
            return Ok(trailers_end(&bytes[at..]).map(|_| body));
        }
        if (body.len() as u64).saturating_add(size) > MAX_ANSWER {
            return Err(BadAnswer::TooLong);
        }
        let end = at + size as usize;
        match bytes.get(at..end + 2) {
            Some(chunk) if chunk.ends_with(b"\r\n") => body.extend_from_slice(&chunk[..size as usize]),
            Some(_) => return Err(BadAnswer::Chunk),
            None => return Ok(None),
        }
        at = end + 2;
    }
}

/// Where the trailer section of a chunked body (after its last chunk) ends, once whole.
fn trailers_end(bytes: &[u8]) -> Option<usize> {
    if bytes.starts_with(b"\r\n") {
        return Some(2);
    }
    bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
}

/// Why asking failed.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The backend's host has no address, or none that takes a connection.
    #[error("cannot reach it: {0}")]
    Unreachable(io::Error),
    /// The whole answer did not come in time.
    #[error("no answer within --auth-timeout")]
    Timeout,
    /// The connection failed while asking.
    #[error("its answer cannot be read: {0}")]
    Broken(io::Error),
    /// The answer is not HTTP, too long or cut.
    #[error("its answer cannot be read: {0}")]
    Answer(#[from] BadAnswer),
}

impl AskError {
    /// Whether a kept connection may have been closed by the backend before the request came:
    /// the request is sent again, once, on a new one.
    pub fn may_be_stale(&self) -> bool {
        matches!(self, AskError::Broken(_) | AskError::Answer(BadAnswer::Cut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Response {
        match read_response(bytes, false) {
            Ok(Progress::Whole(response)) => response,
            other => panic!("not whole: {other:?}"),
        }
    }

    #[test]
    fn the_request_names_path_host_and_headers() {
        let target = Target::of("http://App.example:8080/hasses/auth?x=1").unwrap();
        let mut bytes = b"old".to_vec();
        let headers = [("Cookie", b"s=1".to_vec()), ("X-Real-IP", b"127.0.0.1".to_vec())];
        write_request(&mut bytes, &target, &headers).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let expected = format!(
            "GET /hasses/auth?x=1 HTTP/1.1\r\nHost: App.example:8080\r\nUser-Agent: hasses/{}\r\n\
             Accept: */*\r\nCookie: s=1\r\nX-Real-IP: 127.0.0.1\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(text, expected);
        let mut bytes = Vec::new();
        assert_eq!(
            write_request(&mut bytes, &target, &[("Cookie", b"a\r\nX: y".to_vec())]),
            Err(BadHeader("Cookie"))
        );
    }

    #[test]
    fn only_http_urls_are_targets() {
        let target = Target::of("http://[::1]/auth").unwrap();
        assert_eq!((target.host.as_str(), target.port, target.authority.as_str()), ("::1", 80, "[::1]"));
        assert_eq!(Target::of("http://u:p@h:81").unwrap().authority, "h:81");
        assert_eq!(Target::of("http://h").unwrap().path, "/");
        assert_eq!(Target::of("https://h/auth"), None);
        assert_eq!(Target::of("http:///auth"), None);
    }

    #[test]
    fn a_body_is_read_by_its_length_and_the_connection_kept() {
        let bytes = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nnope!";
        for cut in 0..bytes.len() {
            assert_eq!(read_response(&bytes[..cut], false), Ok(Progress::Partial), "{cut}");
            assert_eq!(read_response(&bytes[..cut], true), Err(BadAnswer::Cut), "{cut}");
        }
        assert_eq!(whole(bytes), Response { status: 403, body: b"nope!".to_vec(), close: false });
        let closing = whole(b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, Close\r\ncontent-length: 0\r\n\r\n");
        assert!(closing.close && closing.body.is_empty());
        assert!(whole(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").close);
        assert!(!whole(b"HTTP/1.1 204 No Content\r\n\r\n").close);
    }

    #[test]
    fn a_chunked_body_is_put_together() {
        let bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            4\r\n{\"id\r\n9;ext=1\r\n\": \"u42\"}\r\n0\r\nX-Trailer: t\r\n\r\n";
        for cut in 0..bytes.len() {
            assert_eq!(read_response(&bytes[..cut], false), Ok(Progress::Partial), "{cut}");
        }
        assert_eq!(whole(bytes), Response { status: 200, body: br#"{"id": "u42"}"#.to_vec(), close: false });
        let plain_end = whole(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n");
        assert_eq!(plain_end.body, b"x");
    }

    #[test]
    fn a_body_without_a_length_ends_with_the_connection() {
        let bytes = b"HTTP/1.1 200 OK\r\n\r\n{}";
        assert_eq!(read_response(bytes, false), Ok(Progress::Partial));
        assert_eq!(
            read_response(bytes, true),
            Ok(Progress::Whole(Response { status: 200, body: b"{}".to_vec(), close: true }))
        );
        let gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 1\r\n\r\nxy";
        assert_eq!(read_response(gzip, false), Ok(Progress::Partial), "not chunked: until close");
    }

    #[test]
    fn garbled_and_oversized_answers_are_errors() {
        let over = MAX_ANSWER + 1;
        for (bytes, error) in [
            (b"SMTP ready\r\n\r\n".to_vec(), BadAnswer::Head(httparse::Error::Version)),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n".to_vec(), BadAnswer::Length),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
                BadAnswer::Length,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n".to_vec(), BadAnswer::Length),
            (format!("HTTP/1.1 200 OK\r\nContent-Length: {over}\r\n\r\n").into_bytes(), BadAnswer::TooLong),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), BadAnswer::Chunk),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n".to_vec(), BadAnswer::Chunk),
            (
                format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{over:x}\r\n").into_bytes(),
                BadAnswer::TooLong,
            ),
            (
                format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", u64::MAX)
                    .into_bytes(),
                BadAnswer::TooLong,
            ),
            ([&b"HTTP/1.1 200 OK\r\n"[..], &[b'a'; MAX_HEAD]].concat(), BadAnswer::HeadTooLong),
        ] {
            assert_eq!(read_response(&bytes, false), Err(error), "{}", String::from_utf8_lossy(&bytes));
        }
        let mut long = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        long.resize(long.len() + over as usize, b'x');
        assert_eq!(read_response(&long, false), Err(BadAnswer::TooLong));
    }

    #[test]
    fn no_bytes_make_it_panic() {
        // A small deterministic generator: every prefix of many mangled answers.
        let seeds: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"HTTP/1.0 403 No\r\n\r\nreason",
        ];
        let mut state = 0x2545_f491_u32;
        for round in 0..3000 {
            let mut bytes = seeds[round % seeds.len()].to_vec();
            for _ in 0..(round % 4) {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let at = state as usize % bytes.len();
                bytes[at] = (state >> 8) as u8;
            }
            for cut in 0..=bytes.len() {
                let _ = read_response(&bytes[..cut], cut % 2 == 0);
            }
        }
    }
}
