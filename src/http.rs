//! The HTTP side of the SSE port: judging a request head, and the responses.
//!
//! Owns what hasses 1.30 answers to every request (status codes, their order of checks, the
//! exact handshake headers), and the words of every refusal, which its body carries. Pure
//! functions over bytes: the shard feeds it whatever a connection has buffered so far and
//! writes what it returns; nothing here reads or writes a socket.
//!
//! # What a refusal looks like
//! Its status, `Content-Length`, `Connection: close`, and as its body the reason its log line
//! gives, one line of `text/plain` (hasses sent a tiny HTML page naming the status: a reason
//! tells a developer in curl or a browser's network tab what to change). Nothing secret goes
//! into a reason: a refused path is shown without its query, which may hold a token.
//!
//! # What a request must be
//! - Its head ends with a blank line within [`MAX_REQUEST_HEAD`] bytes and has at most
//!   [`MAX_HEADERS`] header lines (else 431). Lines end in `\r\n` or `\n`; empty lines before the
//!   request line are skipped (RFC 9112 allows it). Bytes after the head are not looked at.
//! - Bytes httparse cannot read as a request head get 501 as soon as they are seen. A version
//!   httparse does not know (`HTTP/2.0`) is such an error, so it gets 501 whatever the path.
//! - `GET`, `HEAD`, `OPTIONS` are served, case-sensitively; any other method gets 501 on any path.
//! - Then the path (404), the version (501 unless `HTTP/1.1`), and for `GET` the `Connection`
//!   header (400 when it says `close` without `keep-alive`) and the query (400).
//!
//! # The query of a `GET`
//! Split on `&`, names and values percent-decoded (`%XX` and `+`); unknown names are ignored.
//! When a name appears twice, the first one wins (`subscribe=&subscribe=a` is refused).
//! - `subscribe=T1-T2`: decoded first, then split on `-` (so `%2D` separates too). Empty tokens
//!   and repeats are dropped, order kept; none left is 400. A token over [`MAX_TOKEN_LEN`] bytes
//!   is 400, not cut. A lone `*` is the wildcard; a `*` inside a token is an ordinary character
//!   (hasses treats it so too, and a `pre*` message still reaches it).
//! - `id=UNIQ`: empty is no id; over [`MAX_ID_LEN`] bytes is 400.
//! - A token or id with a control character (C0, DEL, C1) or bytes that were not UTF-8 once
//!   decoded is 400: the client list in the log shows both, one client per line.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::SocketAddr;
use std::ops::Range;

use bytes::Bytes;

use crate::auth::Refusal;
use crate::event::ResumeFrom;
use crate::limits::{MAX_AGENT_LEN, MAX_ID_LEN, MAX_REQUEST_HEAD, MAX_TOKEN_LEN};

/// The most header lines a request may have (else 431); browsers send about fifteen.
pub const MAX_HEADERS: usize = 64;

/// The most bytes of a refused method or path that go into a log line.
const MAX_LOGGED: usize = 128;

/// The CORS value hasses sends for `Access-Control-Allow-Headers`.
const ALLOWED_HEADERS: &str = "cache-control, last-event-id, X-Requested-With";

/// What to make of the bytes a connection has sent so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// The head has not ended yet (no blank line) and is still under the size cap: read more.
    Incomplete,
    /// `GET` on the path with valid subscriptions: answer with the handshake, then stream.
    Subscribe(Subscribe),
    /// `HEAD` on the path: answer with the event-stream headers, then close.
    Head,
    /// `OPTIONS` on the path or `*`: answer with the CORS headers, then close.
    Options,
    /// Anything else: answer with this error, then close.
    Reject(Reject),
}

/// A valid SSE subscription request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The tokens, percent-decoded, without duplicates, in request order; `*` means everything.
    pub tokens: Vec<String>,
    /// The client's unique id (`id=`), if it gave one.
    pub id: Option<String>,
    /// `User-Agent`, cut to [`crate::limits::MAX_AGENT_LEN`] bytes; empty when absent.
    pub user_agent: String,
    /// Where it resumes: the `Last-Event-ID` header, else the `lastEventId` query parameter
    /// (also spelled `last_event_id` or `lastEventID`); `None` for a fresh subscription.
    pub resume: Option<ResumeFrom>,
    /// Its authorization token: `Authorization: Bearer …`, else the `access_token` query
    /// parameter (EventSource cannot set headers), else the `hasses_token` cookie.
    pub token: Option<String>,
}

/// Why a request is refused. `status()` says the HTTP status; `Display` says why, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// The bytes are not an HTTP/1.x request head (501).
    #[error("not an HTTP request ({0})")]
    Malformed(httparse::Error),
    /// A method other than `GET`, `HEAD`, `OPTIONS` (501); at most 128 bytes of it are kept.
    // httparse admits no control character in a method or target: quoted as they are.
    #[error("method \"{0}\" not implemented")]
    Method(String),
    /// `HTTP/1.0` (501); the number is the minor version.
    #[error("HTTP/1.{0} not supported, only HTTP/1.1")]
    Version(u8),
    /// A target that is not the served path (404): its path, without the query, at most
    /// 128 bytes of it.
    #[error("path \"{0}\" not served")]
    Path(String),
    /// `Connection: close` on a `GET`, which asks for a stream that stays open (400).
    #[error("Connection: close on an event-stream request")]
    ConnectionClose,
    /// No `subscribe` parameter, or one without a non-empty token (400).
    #[error("no subscribe token")]
    NoSubscription,
    /// A token or id longer than its limit (400).
    #[error("{param} of {len} bytes is over the limit of {max}")]
    TooLong {
        /// `subscribe` or `id`.
        param: &'static str,
        /// Its length in bytes, decoded.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A token or id with a control character or bytes that are not UTF-8 (400).
    #[error("control character or invalid UTF-8 in {param}")]
    BadCharacter {
        /// `subscribe` or `id`.
        param: &'static str,
    },
    /// A `Last-Event-ID` (or `lastEventId`) that is neither an event id nor `earliest` (400).
    #[error("Last-Event-ID is not an event id or \"earliest\": \"{0}\"")]
    BadLastEventId(String),
    /// More than [`MAX_HEADERS`] header lines (431).
    #[error("more than {} header lines", MAX_HEADERS)]
    TooManyHeaders,
    /// No blank line within [`MAX_REQUEST_HEAD`] bytes (431).
    #[error("request head over {} bytes", MAX_REQUEST_HEAD)]
    HeadTooLarge,
    /// Plain text (plain HTTP, mostly) on the HTTPS port (400): `url` is where to go instead.
    #[error("this port speaks HTTPS: use {url}")]
    NotTls {
        /// `https://`, the host the client asked for, and the served path.
        url: String,
    },
}

impl Reject {
    /// The HTTP status code this refusal is answered with (400, 404, 431 or 501).
    pub fn status(&self) -> u16 {
        self.class().status() as u16
    }

    fn class(&self) -> Class {
        match self {
            Self::Malformed(_) | Self::Method(_) | Self::Version(_) => Class::NotImplemented,
            Self::Path(_) => Class::NotFound,
            Self::ConnectionClose
            | Self::NoSubscription
            | Self::TooLong { .. }
            | Self::BadCharacter { .. }
            | Self::BadLastEventId(_)
            | Self::NotTls { .. } => Class::BadRequest,
            Self::TooManyHeaders | Self::HeadTooLarge => Class::HeaderTooLarge,
        }
    }
}

/// The kinds of refusal of a request head: a status and a response head each.
#[derive(Debug, Clone, Copy)]
enum Class {
    BadRequest,
    NotFound,
    HeaderTooLarge,
    NotImplemented,
}

impl Class {
    fn status(self) -> Status {
        match self {
            Self::BadRequest => Status::BadRequest,
            Self::NotFound => Status::NotFound,
            Self::HeaderTooLarge => Status::HeaderTooLarge,
            Self::NotImplemented => Status::NotImplemented,
        }
    }
}

/// The error statuses.
#[derive(Debug, Clone, Copy)]
enum Status {
    BadRequest = 400,
    Unauthorized = 401,
    Forbidden = 403,
    NotFound = 404,
    HeaderTooLarge = 431,
    NotImplemented = 501,
    Unavailable = 503,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Self::BadRequest => "400 Bad Request",
            Self::Unauthorized => "401 Unauthorized",
            Self::Forbidden => "403 Forbidden",
            Self::NotFound => "404 Not Found",
            Self::HeaderTooLarge => "431 Request Header Fields Too Large",
            Self::NotImplemented => "501 Not Implemented",
            Self::Unavailable => "503 Service Unavailable",
        }
    }
}

/// What a request must look like to be served: the `-murl` path.
#[derive(Debug, Clone)]
pub struct Route {
    /// The path SSE clients request, e.g. `/sse`.
    pub path: String,
}

impl Route {
    /// The query of `target` when it is this path, alone or followed by `?query`.
    fn query<'t>(&self, target: &'t str) -> Option<&'t str> {
        match target.strip_prefix(self.path.as_str())? {
            "" => Some(""),
            rest => rest.strip_prefix('?'),
        }
    }
}

/// Judges the bytes received so far on a connection.
pub fn judge(received: &[u8], route: &Route) -> Judgement {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    // Only the first MAX_REQUEST_HEAD bytes are ever parsed, so the answer does not depend on
    // how the bytes arrive: a fault past the cap is never seen, whole or in pieces.
    let head = &received[..received.len().min(MAX_REQUEST_HEAD)];
    let outcome = match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => judge_complete(&request, route),
        Ok(httparse::Status::Partial) if received.len() > MAX_REQUEST_HEAD => Err(Reject::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(Judgement::Incomplete),
        Err(httparse::Error::TooManyHeaders) => Err(Reject::TooManyHeaders),
        Err(error) => Err(Reject::Malformed(error)),
    };
    outcome.unwrap_or_else(Judgement::Reject)
}

/// Judges the first bytes sent to the HTTPS port when they are plain text, not TLS: refused,
/// with the address to use instead. Its host is the request's `Host` when the head is whole
/// and has a usable one, else `local` (the address the client connected to).
pub fn judge_not_tls(received: &[u8], route: &Route, local: Option<SocketAddr>) -> Reject {
    let host = match (request_host(received), local) {
        (Some(host), _) => host.to_owned(),
        (None, Some(local)) => local.to_string(),
        (None, None) => "HOST:PORT".to_owned(),
    };
    Reject::NotTls { url: format!("https://{host}{}", route.path) }
}

/// The `Host` of a whole request head, when it is a plain host name or address and port:
/// it is repeated to the client, so nothing else is taken.
fn request_host(received: &[u8]) -> Option<&str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head = &received[..received.len().min(MAX_REQUEST_HEAD)];
    if !request.parse(head).ok()?.is_complete() {
        return None;
    }
    let value = request.headers.iter().find(|header| header.name.eq_ignore_ascii_case("host"))?.value;
    let host = std::str::from_utf8(value).ok()?.trim();
    let usable = (1..=255).contains(&host.len())
        && host.bytes().all(|byte| byte.is_ascii_alphanumeric() || b".-:[]".contains(&byte));
    usable.then_some(host)
}

/// The methods served.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Options,
}

/// Judges a complete head, in hasses' order: method, path, version, then the `GET` specifics.
fn judge_complete(request: &httparse::Request, route: &Route) -> Result<Judgement, Reject> {
    const FILLED: &str = "httparse fills the request line of a complete head";
    let method = served_method(request.method.expect(FILLED))?;
    let target = request.path.expect(FILLED);
    let query = served_query(method, target, route)?;
    match request.version.expect(FILLED) {
        1 => {}
        minor => return Err(Reject::Version(minor)),
    }
    judge_served(method, query, request.headers)
}

/// Judges an HTTP/2 request (its `:method`, `:path` and fields, decoded and checked by
/// [`crate::h2::fields`]) as an HTTP/1.1 one with the same method, target and headers.
pub fn judge_multiplexed(
    method: &str,
    target: &str,
    headers: &[httparse::Header],
    route: &Route,
) -> Judgement {
    let judged = served_method(method).and_then(|method| {
        let query = served_query(method, target, route)?;
        judge_served(method, query, headers)
    });
    judged.unwrap_or_else(Judgement::Reject)
}

/// The checks after the request line: for `GET` its headers and query.
fn judge_served(method: Method, query: &str, headers: &[httparse::Header]) -> Result<Judgement, Reject> {
    match method {
        Method::Get => subscription(headers, query).map(Judgement::Subscribe),
        Method::Head => Ok(Judgement::Head),
        Method::Options => Ok(Judgement::Options),
    }
}

fn served_method(method: &str) -> Result<Method, Reject> {
    match method {
        "GET" => Ok(Method::Get),
        "HEAD" => Ok(Method::Head),
        "OPTIONS" => Ok(Method::Options),
        other => Err(Reject::Method(cut(other, MAX_LOGGED).to_owned())),
    }
}

/// The query of a target on the route; `OPTIONS *` asks about the server, so it is served too.
fn served_query<'t>(method: Method, target: &'t str, route: &Route) -> Result<&'t str, Reject> {
    if method == Method::Options && target == "*" {
        return Ok("");
    }
    // The query is left out of the refusal: it may hold a token (`access_token`).
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    route.query(target).ok_or_else(|| Reject::Path(cut(path, MAX_LOGGED).to_owned()))
}

/// The `GET` checks after path and version: `Connection`, then the query.
fn subscription(headers: &[httparse::Header], query: &str) -> Result<Subscribe, Reject> {
    if asks_to_close(headers) {
        return Err(Reject::ConnectionClose);
    }
    let query = Query::parse(query);
    Ok(Subscribe {
        tokens: tokens(query.subscribe)?,
        id: client_id(query.id)?,
        user_agent: user_agent(headers),
        resume: resume_from(headers, query.last_event_id)?,
        token: bearer(headers)
            .or_else(|| query.access_token.map(decode))
            .or_else(|| cookie(headers, TOKEN_COOKIE)),
    })
}

/// The cookie a same-site page's EventSource (`withCredentials`) carries its token in.
const TOKEN_COOKIE: &str = "hasses_token";

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &[httparse::Header]) -> Option<String> {
    let header = headers.iter().find(|header| header.name.eq_ignore_ascii_case("authorization"))?;
    let value = std::str::from_utf8(header.value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// The value of cookie `name`, from any `Cookie` header.
fn cookie(headers: &[httparse::Header], name: &str) -> Option<String> {
    headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("cookie"))
        .filter_map(|header| std::str::from_utf8(header.value).ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"').to_owned())
}

/// Where a subscription resumes: the header wins over the query parameter, which polyfills
/// send because they cannot set it. An empty value is none (a browser that saw no id yet).
fn resume_from(headers: &[httparse::Header], query: Option<&str>) -> Result<Option<ResumeFrom>, Reject> {
    let header = headers.iter().find(|header| header.name.eq_ignore_ascii_case("last-event-id"));
    let text = match header {
        Some(header) => String::from_utf8_lossy(header.value).trim().to_owned(),
        None => query.map(decode).unwrap_or_default(),
    };
    match text.as_str() {
        "" => Ok(None),
        "earliest" => Ok(Some(ResumeFrom::Earliest)),
        id => id
            .parse()
            .map(|id| Some(ResumeFrom::After(id)))
            .map_err(|_| Reject::BadLastEventId(cut(&id.escape_debug().to_string(), MAX_LOGGED).to_owned())),
    }
}

/// True when the `Connection` headers say `close` and not `keep-alive`. HTTP/1.1 is persistent
/// without the header, so an absent one is fine (curl sends none; browsers send keep-alive).
fn asks_to_close(headers: &[httparse::Header]) -> bool {
    let (mut close, mut keep_alive) = (false, false);
    let options = headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("connection"))
        .flat_map(|header| header.value.split(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii);
    for option in options {
        close |= option.eq_ignore_ascii_case(b"close");
        keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
    }
    close && !keep_alive
}

/// The query parameters we use, as sent (still escaped); the first of each name wins.
///
/// The values stay escaped here because `subscribe` is split on `-` before its tokens are
/// decoded: an escaped `%2D` is then part of a token rather than a separator.
#[derive(Default)]
struct Query<'q> {
    subscribe: Option<&'q str>,
    id: Option<&'q str>,
    last_event_id: Option<&'q str>,
    access_token: Option<&'q str>,
}

impl<'q> Query<'q> {
    fn parse(query: &'q str) -> Self {
        let mut found = Self::default();
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            // Compared where it lies: a name with nothing to decode allocates nothing.
            let slot = match &*form_component(name.as_bytes()) {
                "subscribe" => &mut found.subscribe,
                "id" => &mut found.id,
                "lastEventId" | "last_event_id" | "lastEventID" => &mut found.last_event_id,
                "access_token" => &mut found.access_token,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        found
    }
}

/// Decodes one query component (`%XX` and `+`); it holds no `&`, as the query was split on them.
fn decode(component: &str) -> String {
    form_component(component.as_bytes()).into_owned()
}

/// The fields of an `application/x-www-form-urlencoded` text (a form body, a query), decoded as
/// the `form_urlencoded` crate reads them: split on `&` (empty pieces skipped), then at each
/// piece's first `=`, `+` and `%XX` decoded, invalid UTF-8 replaced. A field with nothing to
/// decode (most: tokens, ids, plain text) is borrowed; only the others go through the crate.
pub fn form_fields(text: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    FormFields {
        text,
        utf8: std::str::from_utf8(text).ok(),
        plain: memchr::memchr2(b'%', b'+', text).is_none(),
        at: 0,
    }
}

/// The fields of a form text ([`form_fields`]). The text is checked once, whole, for UTF-8 and
/// for anything to decode, rather than field by field: a field of a text that is both is a
/// slice of it, with no pass of its own over its bytes.
struct FormFields<'a> {
    text: &'a [u8],
    /// The text, if it is UTF-8.
    utf8: Option<&'a str>,
    /// Whether it has no `%` and no `+`: nothing to decode anywhere.
    plain: bool,
    /// Where the next field starts.
    at: usize,
}

impl<'a> Iterator for FormFields<'a> {
    type Item = (Cow<'a, str>, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        let len = self.text.len();
        loop {
            let start = self.at;
            let rest = self.text.get(start..).filter(|rest| !rest.is_empty())?;
            if rest[0] == b'&' {
                self.at += 1;
                continue;
            }
            // A name is short, so its end is looked for byte by byte; a value may be long, so
            // its end is memchr's, which takes many bytes a step.
            let (name, value) = match rest.iter().position(|&b| b == b'=' || b == b'&') {
                Some(at) if rest[at] == b'=' => {
                    let from = start + at + 1;
                    let end = memchr::memchr(b'&', &self.text[from..]).map_or(len, |end| from + end);
                    (start..start + at, from..end)
                }
                Some(at) => (start..start + at, start + at..start + at),
                None => (start..len, len..len),
            };
            self.at = value.end + 1;
            return Some((self.component(name), self.component(value)));
        }
    }
}

impl<'a> FormFields<'a> {
    /// The component at `range`, decoded.
    fn component(&self, range: Range<usize>) -> Cow<'a, str> {
        let bytes = &self.text[range.clone()];
        let borrowed = (self.plain || memchr::memchr2(b'%', b'+', bytes).is_none())
            .then(|| self.utf8.and_then(|text| text.get(range)).or_else(|| std::str::from_utf8(bytes).ok()))
            .flatten();
        borrowed.map_or_else(|| form_component(bytes), Cow::Borrowed)
    }
}

/// One component of a form field, decoded (see [`form_fields`]). The crate decodes everything
/// after a pair's first `=`, so a component that needs decoding is given to it as the value of
/// a nameless pair: an `=` inside the component stays part of it.
fn form_component(bytes: &[u8]) -> Cow<'_, str> {
    if memchr::memchr2(b'%', b'+', bytes).is_none() {
        if let Ok(text) = std::str::from_utf8(bytes) {
            return Cow::Borrowed(text);
        }
    }
    let pair = [b"=", bytes].concat();
    let decoded = form_urlencoded::parse(&pair).next().map(|(_, value)| value.into_owned());
    Cow::Owned(decoded.unwrap_or_default())
}

/// The tokens of a `subscribe` value: split on `-`, then each decoded; non-empty, each once,
/// in order.
fn tokens(subscribe: Option<&str>) -> Result<Vec<String>, Reject> {
    let mut seen = HashSet::new();
    let mut tokens = Vec::new();
    for escaped in subscribe.unwrap_or("").split('-').filter(|escaped| !escaped.is_empty()) {
        let token = decode(escaped);
        check_value(&token, "subscribe", MAX_TOKEN_LEN)?;
        if seen.insert(token.clone()) {
            tokens.push(token);
        }
    }
    if tokens.is_empty() {
        return Err(Reject::NoSubscription);
    }
    Ok(tokens)
}

/// The decoded `id`, if one was given and is not empty.
fn client_id(id: Option<&str>) -> Result<Option<String>, Reject> {
    match id.map(decode).filter(|id| !id.is_empty()) {
        None => Ok(None),
        Some(id) => check_value(&id, "id", MAX_ID_LEN).map(|()| Some(id)),
    }
}

/// Refuses a value over `max` bytes, or one that would break a log line.
/// Whether `value` may be a token or id (`param`, for the refusal): at most `max` bytes, no
/// control character, nothing that was not UTF-8.
pub fn check_value(value: &str, param: &'static str, max: usize) -> Result<(), Reject> {
    if value.len() > max {
        return Err(Reject::TooLong { param, len: value.len(), max });
    }
    // Decoding turned bytes that are not UTF-8 into U+FFFD: refuse them rather than merge
    // distinct tokens into one.
    if value.chars().any(|c| c.is_control() || c == char::REPLACEMENT_CHARACTER) {
        return Err(Reject::BadCharacter { param });
    }
    Ok(())
}

/// The first `User-Agent`, made UTF-8 and cut for the client list; empty when absent.
fn user_agent(headers: &[httparse::Header]) -> String {
    headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("user-agent"))
        .map(|header| cut(&String::from_utf8_lossy(header.value), MAX_AGENT_LEN).to_owned())
        .unwrap_or_default()
}

/// The longest start of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Why a connection is refused as soon as it is accepted (503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overload {
    /// `--max-connections` are open.
    #[error("connection limit reached")]
    Connections,
    /// `--max-connections-per-ip` are open from this client's address.
    #[error("connection limit per IP reached")]
    ConnectionsPerIp,
}

/// The responses, built once per server from the CORS base: the fixed ones whole, the
/// refusals whose reason depends on the request as a head their reason is added to.
///
/// Every refusal carries its reason as a one-line `text/plain` body, the words its log line
/// has, so that a developer sees in their browser's network tab or in curl why. Refusals whose
/// reason is always the same words are built here once: answering them allocates nothing.
#[derive(Debug, Clone)]
pub struct Responses {
    /// `200` + event-stream headers, sent before the first event.
    pub handshake: Bytes,
    /// `200` + event-stream headers for `HEAD`.
    pub head: Bytes,
    /// `200` + CORS headers + `Allow` for `OPTIONS`.
    pub options: Bytes,
    /// `204 No Content` + CORS headers, for a banned client: it stops EventSource retrying
    /// (a cross-origin answer without the CORS headers would be a network error, retried).
    pub banned: Bytes,
    bad_request: ErrorHead,
    not_found: ErrorHead,
    header_too_large: ErrorHead,
    not_implemented: ErrorHead,
    invalid_token: ErrorHead,
    insufficient_scope: ErrorHead,
    /// The backend's refusals: its status, and no challenge (the backend's scheme is its own).
    backend_unauthorized: ErrorHead,
    backend_forbidden: ErrorHead,
    /// The refusals with fixed words, whole.
    fixed: Vec<(Reject, Bytes)>,
    no_token: Bytes,
    over_connections: Bytes,
    over_connections_per_ip: Bytes,
}

/// The refusals whose reason never changes (a `Version` can only be `HTTP/1.0`: httparse reads
/// no other): answered from [`Responses::fixed`], without an allocation each.
const FIXED_REJECTS: [Reject; 7] = [
    Reject::NoSubscription,
    Reject::ConnectionClose,
    Reject::BadCharacter { param: "subscribe" },
    Reject::BadCharacter { param: "id" },
    Reject::Version(0),
    Reject::TooManyHeaders,
    Reject::HeadTooLarge,
];

impl Responses {
    /// Builds every fixed response for this CORS base, which must hold no CR or LF; with
    /// `credentials` (subscriptions need a token, or the backend's session), a named origin is
    /// told it may send its cookies.
    ///
    /// Each response is one buffer, head and body, so that it goes out in a single write.
    pub fn new(cors_base: &str, credentials: bool) -> Self {
        // A page's token may be in its `hasses_token` cookie, its session in the backend's
        // (EventSource `withCredentials`); browsers never send credentials to the origin `*`,
        // so only a named one is told.
        let credentials =
            if credentials && cors_base != "*" { "Access-Control-Allow-Credentials: true\r\n" } else { "" };
        let cors = format!(
            "Access-Control-Allow-Origin: {cors_base}\r\n\
             Access-Control-Allow-Methods: GET\r\n\
             Access-Control-Allow-Headers: {ALLOWED_HEADERS}\r\n\
             {credentials}"
        );
        // RFC 6750: the challenge names the realm, and the error once a token was given.
        let challenge = |error: &str| format!("WWW-Authenticate: Bearer realm=\"hasses\"{error}\r\n{cors}");
        // HEAD gets the same head as GET, so that a client can see what it would get.
        // `X-Accel-Buffering: no` (ours) stops nginx from holding events back in its buffers.
        let stream = Bytes::from(format!(
            "HTTP/1.1 200 OK\r\n\
             Server: hasses\r\n\
             {cors}\
             Cache-Control: no-cache\r\n\
             Keep-Alive: timeout=300, max=100\r\n\
             Connection: Keep-Alive\r\n\
             Transfer-Encoding: chunked\r\n\
             Content-Type: text/event-stream\r\n\
             X-Accel-Buffering: no\r\n\r\n"
        ));
        let options = Bytes::from(format!(
            "HTTP/1.1 200 OK\r\n\
             Server: hasses\r\n\
             {cors}\
             Allow: GET, HEAD, OPTIONS\r\n\
             Content-Length: 0\r\n\
             Connection: close\r\n\r\n"
        ));
        let banned = Bytes::from(format!(
            "HTTP/1.1 204 No Content\r\n\
             Server: hasses\r\n\
             {cors}\
             Connection: close\r\n\r\n"
        ));
        let unavailable =
            ErrorHead::new(Status::Unavailable, &format!("Retry-After: {RETRY_AFTER_SECS}\r\n"));
        let mut responses = Self {
            handshake: stream.clone(),
            head: stream,
            options,
            banned,
            bad_request: ErrorHead::new(Status::BadRequest, ""),
            not_found: ErrorHead::new(Status::NotFound, ""),
            header_too_large: ErrorHead::new(Status::HeaderTooLarge, ""),
            not_implemented: ErrorHead::new(Status::NotImplemented, &format!("Allow: GET, HEAD\r\n{cors}")),
            invalid_token: ErrorHead::new(Status::Unauthorized, &challenge(", error=\"invalid_token\"")),
            insufficient_scope: ErrorHead::new(
                Status::Forbidden,
                &challenge(", error=\"insufficient_scope\""),
            ),
            backend_unauthorized: ErrorHead::new(Status::Unauthorized, &cors),
            backend_forbidden: ErrorHead::new(Status::Forbidden, &cors),
            fixed: Vec::new(),
            no_token: ErrorHead::new(Status::Unauthorized, &challenge("")).answer(&Refusal::NoToken),
            over_connections: unavailable.answer(&Overload::Connections),
            over_connections_per_ip: unavailable.answer(&Overload::ConnectionsPerIp),
        };
        responses.fixed =
            FIXED_REJECTS.into_iter().map(|reject| (reject.clone(), responses.build(&reject))).collect();
        responses
    }

    /// The complete error response for `reject`, its reason as the body.
    pub fn error(&self, reject: &Reject) -> Bytes {
        match self.fixed.iter().find(|(fixed, _)| fixed == reject) {
            Some((_, answer)) => answer.clone(),
            None => self.build(reject),
        }
    }

    fn build(&self, reject: &Reject) -> Bytes {
        match reject.class() {
            Class::BadRequest => &self.bad_request,
            Class::NotFound => &self.not_found,
            Class::HeaderTooLarge => &self.header_too_large,
            Class::NotImplemented => &self.not_implemented,
        }
        .answer(reject)
    }

    /// The RFC 6750 answer to a subscription its token does not allow (401 or 403, with the
    /// challenge), the refusal as the body.
    pub fn refusal(&self, refusal: &Refusal) -> Bytes {
        match refusal {
            Refusal::NoToken => self.no_token.clone(),
            Refusal::Invalid(_) => self.invalid_token.answer(refusal),
            Refusal::Forbidden(_) => self.insufficient_scope.answer(refusal),
            Refusal::BackendUnauthorized(_) => self.backend_unauthorized.answer(refusal),
            Refusal::BackendForbidden(_) => self.backend_forbidden.answer(refusal),
        }
    }

    /// `503` with `Retry-After`, for a connection over a connection limit.
    pub fn unavailable(&self, overload: Overload) -> &Bytes {
        match overload {
            Overload::Connections => &self.over_connections,
            Overload::ConnectionsPerIp => &self.over_connections_per_ip,
        }
    }
}

/// How long a client refused for a connection limit is asked to wait before trying again.
const RETRY_AFTER_SECS: u32 = 5;

/// An error response's head, cut at its `Content-Length` value: a reason is added to it as
/// the body.
#[derive(Debug, Clone)]
struct ErrorHead {
    /// The status line and headers, up to `Content-Length: `.
    start: Box<str>,
    /// `Connection: close`, the other headers, and the blank line.
    end: Box<str>,
}

impl ErrorHead {
    /// The head of `status`; `extra` is more header lines, each ending in CRLF.
    ///
    /// `nosniff`: the body may repeat what the request said (its path, its method), and must
    /// stay text to a browser whatever it looks like.
    fn new(status: Status, extra: &str) -> Self {
        let line = status.line();
        ErrorHead {
            start: format!(
                "HTTP/1.1 {line}\r\n\
                 Server: hasses\r\n\
                 Content-Type: text/plain; charset=utf-8\r\n\
                 X-Content-Type-Options: nosniff\r\n\
                 Content-Length: "
            )
            .into(),
            end: format!("\r\nConnection: close\r\n{extra}\r\n").into(),
        }
    }

    /// The whole response with `reason` and a line feed as its body, in one buffer of the
    /// exact size (the reason is formatted twice rather than into a buffer of its own).
    fn answer(&self, reason: &dyn fmt::Display) -> Bytes {
        let body = ByteCount::of(reason) + 1;
        let mut length = itoa::Buffer::new();
        let length = length.format(body);
        let total = self.start.len() + length.len() + self.end.len() + body;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(self.start.as_bytes());
        out.extend_from_slice(length.as_bytes());
        out.extend_from_slice(self.end.as_bytes());
        writeln!(out, "{reason}").expect("writing to a Vec cannot fail");
        debug_assert_eq!(out.len(), total, "the reason wrote what it was counted at");
        Bytes::from(out)
    }
}

/// Counts the bytes a `Display` writes, without keeping them.
#[derive(Default)]
struct ByteCount(usize);

impl ByteCount {
    fn of(value: &dyn fmt::Display) -> usize {
        let mut count = ByteCount::default();
        write!(count, "{value}").expect("counting cannot fail");
        count.0
    }
}

impl fmt::Write for ByteCount {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0 += text.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn form_fields_read_as_the_crate_reads_them(text in proptest::collection::vec(proptest::prelude::any::<u8>().prop_map(|b| b"ab=&+%2F\xc3\xa9\xff"[usize::from(b) % 11]), 0..40)) {
            let ours: Vec<(String, String)> =
                form_fields(&text).map(|(n, v)| (n.into_owned(), v.into_owned())).collect();
            let theirs: Vec<(String, String)> =
                form_urlencoded::parse(&text).map(|(n, v)| (n.into_owned(), v.into_owned())).collect();
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn a_plain_form_field_is_borrowed_and_an_encoded_one_decoded() {
        let fields: Vec<_> = form_fields(b"to=room1&data=a+b%21&&x&y=1=2").collect();
        assert!(matches!(fields[0], (Cow::Borrowed("to"), Cow::Borrowed("room1"))));
        assert_eq!(fields[1], (Cow::Borrowed("data"), Cow::Owned("a b!".to_string())));
        assert_eq!(fields[2], (Cow::Borrowed("x"), Cow::Borrowed("")));
        assert_eq!(fields[3], (Cow::Borrowed("y"), Cow::Borrowed("1=2")));
    }
    use proptest::prelude::*;

    fn route() -> Route {
        Route { path: "/sse".to_owned() }
    }

    fn judge_str(request: &str) -> Judgement {
        judge(request.as_bytes(), &route())
    }

    /// A request with this request line and header lines, ended by a blank line.
    fn request(line: &str, headers: &[&str]) -> String {
        let mut text = format!("{line}\r\n");
        for header in headers {
            text.push_str(header);
            text.push_str("\r\n");
        }
        text + "\r\n"
    }

    fn get(target: &str, headers: &[&str]) -> Judgement {
        judge_str(&request(&format!("GET {target} HTTP/1.1"), headers))
    }

    fn rejected(judgement: Judgement) -> Reject {
        match judgement {
            Judgement::Reject(reject) => reject,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn status(judgement: Judgement) -> u16 {
        rejected(judgement).status()
    }

    fn subscribed(judgement: Judgement) -> Subscribe {
        match judgement {
            Judgement::Subscribe(subscribe) => subscribe,
            other => panic!("expected a subscription, got {other:?}"),
        }
    }

    fn tokens_of(target: &str) -> Vec<String> {
        subscribed(get(target, &[])).tokens
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    // ----- the fixed responses -----

    const HANDSHAKE: &str = "HTTP/1.1 200 OK\r\n\
        Server: hasses\r\n\
        Access-Control-Allow-Origin: https://example.org\r\n\
        Access-Control-Allow-Methods: GET\r\n\
        Access-Control-Allow-Headers: cache-control, last-event-id, X-Requested-With\r\n\
        Cache-Control: no-cache\r\n\
        Keep-Alive: timeout=300, max=100\r\n\
        Connection: Keep-Alive\r\n\
        Transfer-Encoding: chunked\r\n\
        Content-Type: text/event-stream\r\n\
        X-Accel-Buffering: no\r\n\
        \r\n";

    #[test]
    fn handshake_and_head_are_the_exact_event_stream_head() {
        let responses = Responses::new("https://example.org", false);
        assert_eq!(responses.handshake, HANDSHAKE.as_bytes());
        assert_eq!(responses.head, HANDSHAKE.as_bytes());
    }

    #[test]
    fn options_answer_is_exact() {
        let expected = "HTTP/1.1 200 OK\r\n\
            Server: hasses\r\n\
            Access-Control-Allow-Origin: *\r\n\
            Access-Control-Allow-Methods: GET\r\n\
            Access-Control-Allow-Headers: cache-control, last-event-id, X-Requested-With\r\n\
            Allow: GET, HEAD, OPTIONS\r\n\
            Content-Length: 0\r\n\
            Connection: close\r\n\
            \r\n";
        assert_eq!(Responses::new("*", false).options, expected.as_bytes());
    }

    #[test]
    fn not_found_answer_is_exact_and_says_why() {
        let body = "path \"/x\" not served\n";
        let expected = format!(
            "HTTP/1.1 404 Not Found\r\n\
             Server: hasses\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             X-Content-Type-Options: nosniff\r\n\
             Content-Length: 21\r\n\
             Connection: close\r\n\
             \r\n{body}"
        );
        assert_eq!(body.len(), 21);
        let reject = Reject::Path("/x".to_owned());
        assert_eq!(Responses::new("*", false).error(&reject), expected.as_bytes());
    }

    #[test]
    fn not_implemented_answer_carries_allow_and_cors() {
        let body = "method \"POST\" not implemented\n";
        let expected = format!(
            "HTTP/1.1 501 Not Implemented\r\n\
             Server: hasses\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             X-Content-Type-Options: nosniff\r\n\
             Content-Length: {}\r\n\
             Connection: close\r\n\
             Allow: GET, HEAD\r\n\
             Access-Control-Allow-Origin: *\r\n\
             Access-Control-Allow-Methods: GET\r\n\
             Access-Control-Allow-Headers: cache-control, last-event-id, X-Requested-With\r\n\
             \r\n{body}",
            body.len()
        );
        let reject = Reject::Method("POST".to_owned());
        assert_eq!(Responses::new("*", false).error(&reject), expected.as_bytes());
    }

    /// Splits a whole response into its head (without the blank line) and body, checking
    /// what every refusal has: its status line, `Content-Length` of the body, `Connection:
    /// close`, and a body of one line.
    fn refusal_parts(response: &Bytes, line: &str) -> (String, String) {
        let text = String::from_utf8(response.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with(&format!("HTTP/1.1 {line}\r\nServer: hasses\r\n")), "{head}");
        assert!(head.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"), "{head}");
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())), "{head}");
        assert!(head.contains("\r\nConnection: close"), "{head}");
        assert_eq!(body.find('\n'), Some(body.len() - 1), "one line: {body:?}");
        (head.to_owned(), body.to_owned())
    }

    /// One refusal of each kind, the fixed ones among them.
    fn every_kind_of_refusal() -> Vec<Reject> {
        let mut rejects = FIXED_REJECTS.to_vec();
        rejects.extend([
            Reject::Malformed(httparse::Error::Token),
            Reject::Method("PUT".to_owned()),
            Reject::Version(1),
            Reject::Path("/x".to_owned()),
            Reject::TooLong { param: "id", len: 65, max: 64 },
            Reject::BadLastEventId("abc".to_owned()),
            Reject::NotTls { url: "https://x/sse".to_owned() },
        ]);
        rejects
    }

    #[test]
    fn every_error_answer_has_its_status_line_exact_length_and_reason() {
        let responses = Responses::new("*", false);
        for reject in every_kind_of_refusal() {
            let line = match reject.status() {
                400 => "400 Bad Request",
                404 => "404 Not Found",
                431 => "431 Request Header Fields Too Large",
                501 => "501 Not Implemented",
                other => panic!("{other}"),
            };
            let (head, body) = refusal_parts(&responses.error(&reject), line);
            assert_eq!(body, format!("{reject}\n"));
            assert_eq!(head.contains("Allow: GET, HEAD"), line.starts_with("501"));
            assert_eq!(head.contains("Access-Control-Allow-Origin: *"), line.starts_with("501"), "{head}");
        }
    }

    #[test]
    fn fixed_refusals_are_the_same_bytes_each_time_without_building_them() {
        let responses = Responses::new("*", false);
        for reject in FIXED_REJECTS {
            let (first, second) = (responses.error(&reject), responses.error(&reject));
            assert_eq!(first.as_ptr(), second.as_ptr(), "{reject}: shared, not built again");
            assert_eq!(first, responses.build(&reject), "{reject}");
        }
    }

    #[test]
    fn token_refusals_carry_their_challenge_and_reason() {
        let responses = Responses::new("*", true);
        let cases = [
            (Refusal::NoToken, "401 Unauthorized", "\"hasses\"\r\n"),
            (Refusal::Invalid("expired".to_owned()), "401 Unauthorized", "error=\"invalid_token\""),
            (
                Refusal::Forbidden("token \"b\" is not among the grants".to_owned()),
                "403 Forbidden",
                "error=\"insufficient_scope\"",
            ),
        ];
        for (refusal, line, challenge) in cases {
            let (head, body) = refusal_parts(&responses.refusal(&refusal), line);
            assert!(head.contains(challenge), "{head}");
            assert!(head.contains("Access-Control-Allow-Origin: *"), "{head}");
            assert_eq!(body, format!("{refusal}\n"));
        }
    }

    #[test]
    fn backend_refusals_keep_its_status_and_reason_without_a_challenge() {
        let responses = Responses::new("https://app.example", true);
        let cases = [
            (Refusal::BackendUnauthorized("log in first".to_owned()), "401 Unauthorized"),
            (Refusal::BackendForbidden("not in this room".to_owned()), "403 Forbidden"),
        ];
        for (refusal, line) in cases {
            let (head, body) = refusal_parts(&responses.refusal(&refusal), line);
            assert!(!head.contains("WWW-Authenticate"), "{head}");
            assert!(head.contains("Access-Control-Allow-Credentials: true"), "{head}");
            assert_eq!(body, format!("{refusal}\n"));
        }
        assert_eq!(
            Refusal::BackendForbidden("not in this room".to_owned()).to_string(),
            "refused by the backend (403): not in this room"
        );
    }

    #[test]
    fn connection_limits_are_503_with_retry_after_and_reason() {
        let responses = Responses::new("*", false);
        for overload in [Overload::Connections, Overload::ConnectionsPerIp] {
            let (head, body) = refusal_parts(responses.unavailable(overload), "503 Service Unavailable");
            assert!(head.contains("\r\nRetry-After: 5"), "{head}");
            assert_eq!(body, format!("{overload}\n"));
        }
        assert_eq!(Overload::ConnectionsPerIp.to_string(), "connection limit per IP reached");
    }

    #[test]
    fn a_refused_path_leaves_its_query_out() {
        let reject = rejected(get("/other?subscribe=a&access_token=s.e.cret", &[]));
        assert_eq!(reject, Reject::Path("/other".to_owned()));
        let response = Responses::new("*", false).error(&reject);
        assert!(!String::from_utf8_lossy(&response).contains("cret"));
    }

    #[test]
    fn every_refusal_has_its_status() {
        let cases = [
            (Reject::Malformed(httparse::Error::Token), 501),
            (Reject::Method("PUT".to_owned()), 501),
            (Reject::Version(0), 501),
            (Reject::Path("/x".to_owned()), 404),
            (Reject::ConnectionClose, 400),
            (Reject::NoSubscription, 400),
            (Reject::TooLong { param: "id", len: 65, max: 64 }, 400),
            (Reject::BadCharacter { param: "id" }, 400),
            (Reject::TooManyHeaders, 431),
            (Reject::HeadTooLarge, 431),
        ];
        for (reject, code) in cases {
            assert_eq!(reject.status(), code, "{reject}");
        }
    }

    #[test]
    fn refusals_say_why() {
        let too_long = Reject::TooLong { param: "subscribe", len: 129, max: 128 };
        assert_eq!(too_long.to_string(), "subscribe of 129 bytes is over the limit of 128");
        assert_eq!(Reject::Path("/x".to_owned()).to_string(), "path \"/x\" not served");
        assert_eq!(Reject::HeadTooLarge.to_string(), "request head over 8192 bytes");
        assert_eq!(Reject::Version(0).to_string(), "HTTP/1.0 not supported, only HTTP/1.1");
    }

    #[test]
    fn plain_text_on_the_https_port_is_told_where_to_go() {
        let local = Some("127.0.0.1:8443".parse().unwrap());
        let url = |received: &[u8], local| match judge_not_tls(received, &route(), local) {
            Reject::NotTls { url } => url,
            other => panic!("{other:?}"),
        };
        let curl = b"GET /sse?subscribe=a&access_token=x HTTP/1.1\r\nHost: example.org:8443\r\n\r\n";
        assert_eq!(url(curl, local), "https://example.org:8443/sse");
        assert_eq!(url(b"GET / HTTP/1.1\r\nhost: [::1]:8443\r\n\r\n", local), "https://[::1]:8443/sse");
        // No whole head, no Host, or one that is not a plain address: where the client connected.
        for received in [
            &b"GET /sse HTTP/1.1\r\nHost: example.org"[..],
            b"GET /sse HTTP/1.1\r\n\r\n",
            b"GET /sse HTTP/1.1\r\nHost: <b>x</b>\r\n\r\n",
            b"GET /sse HTTP/1.1\r\nHost: \r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
        ] {
            assert_eq!(url(received, local), "https://127.0.0.1:8443/sse", "{received:?}");
        }
        assert_eq!(url(b"\0", None), "https://HOST:PORT/sse");
        let reject = judge_not_tls(curl, &route(), local);
        assert_eq!(reject.status(), 400);
        assert_eq!(reject.to_string(), "this port speaks HTTPS: use https://example.org:8443/sse");
    }

    // ----- GET -----

    #[test]
    fn browser_request_subscribes() {
        let judgement = get(
            "/sse?subscribe=room624-lobby&id=u1",
            &[
                "Host: example.org",
                "User-Agent: Mozilla/5.0",
                "Accept: text/event-stream",
                "Connection: keep-alive",
            ],
        );
        let expected = Subscribe {
            tokens: strings(&["room624", "lobby"]),
            id: Some("u1".to_owned()),
            user_agent: "Mozilla/5.0".to_owned(),
            resume: None,
            token: None,
        };
        assert_eq!(judgement, Judgement::Subscribe(expected));
    }

    #[test]
    fn a_resume_comes_from_the_header_or_the_query_and_the_header_wins() {
        let resume = |target: &str, headers: &[&str]| subscribed(get(target, headers)).resume;
        assert_eq!(resume("/sse?subscribe=a", &[]), None);
        assert_eq!(resume("/sse?subscribe=a", &["Last-Event-ID: 42"]), Some(ResumeFrom::After(42)));
        assert_eq!(resume("/sse?subscribe=a", &["last-event-id:  7 "]), Some(ResumeFrom::After(7)));
        for name in ["lastEventId", "last_event_id", "lastEventID"] {
            assert_eq!(resume(&format!("/sse?subscribe=a&{name}=9"), &[]), Some(ResumeFrom::After(9)));
        }
        assert_eq!(
            resume("/sse?subscribe=a&lastEventId=9", &["Last-Event-ID: 8"]),
            Some(ResumeFrom::After(8))
        );
        assert_eq!(resume("/sse?subscribe=a&lastEventId=earliest", &[]), Some(ResumeFrom::Earliest));
        assert_eq!(resume("/sse?subscribe=a", &["Last-Event-ID:"]), None, "no id seen yet");
        let refused = get("/sse?subscribe=a", &["Last-Event-ID: abc"]);
        assert_eq!(refused, Judgement::Reject(Reject::BadLastEventId("abc".into())));
        assert_eq!(Reject::BadLastEventId(String::new()).status(), 400);
    }

    #[test]
    fn the_token_comes_from_the_header_the_query_or_the_cookie() {
        let token = |target: &str, headers: &[&str]| subscribed(get(target, headers)).token;
        assert_eq!(token("/sse?subscribe=a", &[]), None);
        assert_eq!(token("/sse?subscribe=a", &["Authorization: Bearer h.e.ader"]), Some("h.e.ader".into()));
        assert_eq!(token("/sse?subscribe=a", &["authorization: bearer  x "]), Some("x".into()));
        assert_eq!(token("/sse?subscribe=a", &["Authorization: Basic dXNlcjpwdw=="]), None);
        assert_eq!(token("/sse?subscribe=a&access_token=q.u%2Dery", &[]), Some("q.u-ery".into()));
        assert_eq!(
            token("/sse?subscribe=a", &["Cookie: theme=dark; hasses_token=c.oo.kie"]),
            Some("c.oo.kie".into())
        );
        let all = ["Authorization: Bearer header", "Cookie: hasses_token=cookie"];
        assert_eq!(token("/sse?subscribe=a&access_token=query", &all), Some("header".into()));
        assert_eq!(token("/sse?subscribe=a&access_token=query", &all[1..]), Some("query".into()));
    }

    #[test]
    fn with_tokens_a_named_origin_may_send_credentials_and_refusals_carry_a_challenge() {
        let credentials = "Access-Control-Allow-Credentials: true\r\n";
        let named = Responses::new("https://example.org", true);
        assert!(String::from_utf8_lossy(&named.handshake).contains(credentials));
        assert!(!String::from_utf8_lossy(&Responses::new("*", true).handshake).contains(credentials));
        assert!(!String::from_utf8_lossy(&Responses::new("https://example.org", false).options)
            .contains(credentials));
        let text = |refusal: Refusal| String::from_utf8_lossy(&named.refusal(&refusal)).into_owned();
        let no_token = text(Refusal::NoToken);
        assert!(no_token.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(no_token.contains("WWW-Authenticate: Bearer realm=\"hasses\"\r\n"));
        assert!(no_token.contains(credentials));
        let invalid = text(Refusal::Invalid("expired".to_owned()));
        assert!(invalid.contains("Bearer realm=\"hasses\", error=\"invalid_token\"\r\n"));
        let forbidden = text(Refusal::Forbidden(String::new()));
        assert!(forbidden.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(forbidden.contains("error=\"insufficient_scope\""));
    }

    #[test]
    fn bare_newlines_end_lines_too() {
        let text = "GET /sse?subscribe=a HTTP/1.1\nHost: x\nUser-Agent: curl\n\n";
        let expected = Subscribe {
            tokens: strings(&["a"]),
            id: None,
            user_agent: "curl".to_owned(),
            resume: None,
            token: None,
        };
        assert_eq!(judge_str(text), Judgement::Subscribe(expected));
    }

    #[test]
    fn a_head_without_its_blank_line_is_incomplete() {
        let cases = [
            "",
            "G",
            "GET /sse?subscribe=a HTTP/1.1",
            "GET /sse?subscribe=a HTTP/1.1\r\n",
            "GET /sse?subscribe=a HTTP/1.1\r\nHost: x\r\n",
            "GET /sse?subscribe=a HTTP/1.1\r\nHost: x\r\n\r",
            "POST /sse HTTP/1.1\r\n",
        ];
        for text in cases {
            assert_eq!(judge_str(text), Judgement::Incomplete, "{text:?}");
        }
    }

    #[test]
    fn empty_lines_before_the_request_line_are_skipped() {
        let judgement = judge_str("\r\n\nGET /sse?subscribe=a HTTP/1.1\r\n\r\n");
        assert_eq!(subscribed(judgement).tokens, strings(&["a"]));
    }

    #[test]
    fn bytes_after_the_head_are_not_looked_at() {
        let text = "GET /sse?subscribe=a HTTP/1.1\r\n\r\n\0\0garbage";
        assert_eq!(subscribed(judge_str(text)).tokens, strings(&["a"]));
    }

    #[test]
    fn get_checks_path_then_version_then_connection_then_subscribe() {
        let close = ["Connection: close"];
        let cases = [
            ("GET /nope HTTP/1.0", &close[..], 404),
            ("GET /sse HTTP/1.0", &close[..], 501),
            ("GET /sse HTTP/1.1", &close[..], 400),
            ("GET /sse HTTP/1.1", &[][..], 400),
        ];
        for (line, headers, code) in cases {
            assert_eq!(status(judge_str(&request(line, headers))), code, "{line}");
        }
        assert_eq!(
            rejected(get("/sse", &close)),
            Reject::ConnectionClose,
            "Connection comes before subscribe"
        );
        assert_eq!(rejected(get("/sse", &[])), Reject::NoSubscription);
        assert_eq!(rejected(judge_str(&request("GET /sse?subscribe=a HTTP/1.0", &[]))), Reject::Version(0));
    }

    #[test]
    fn path_must_match_exactly_then_end_or_query() {
        assert_eq!(tokens_of("/sse?subscribe=a"), strings(&["a"]));
        assert_eq!(rejected(get("/sse", &[])), Reject::NoSubscription);
        assert_eq!(rejected(get("/sse?", &[])), Reject::NoSubscription);
        for target in ["/ssex?subscribe=a", "/sse/x?subscribe=a", "/sse/", "/SSE?subscribe=a", "/", "*"] {
            let path = target.split('?').next().unwrap().to_owned();
            assert_eq!(rejected(get(target, &[])), Reject::Path(path), "{target}");
        }
    }

    #[test]
    fn root_path_matches_only_itself() {
        let root = Route { path: "/".to_owned() };
        let accepted = judge(b"GET /?subscribe=a HTTP/1.1\r\n\r\n", &root);
        assert_eq!(subscribed(accepted).tokens, strings(&["a"]));
        let other = judge(b"GET /sse?subscribe=a HTTP/1.1\r\n\r\n", &root);
        assert_eq!(status(other), 404);
    }

    #[test]
    fn refused_path_is_cut_for_the_log() {
        let target = format!("/{}", "x".repeat(300));
        match rejected(get(&target, &[])) {
            Reject::Path(logged) => assert_eq!(logged, target[..128]),
            other => panic!("{other:?}"),
        }
    }

    // ----- methods -----

    #[test]
    fn other_methods_are_not_implemented_on_any_path() {
        for method in ["POST", "PUT", "DELETE", "TRACE", "CONNECT", "PATCH", "FOO", "get"] {
            for target in ["/sse?subscribe=a", "/nope", "*"] {
                let judgement = judge_str(&request(&format!("{method} {target} HTTP/1.1"), &[]));
                assert_eq!(rejected(judgement), Reject::Method(method.to_owned()), "{method} {target}");
            }
        }
    }

    #[test]
    fn head_needs_path_and_version_only() {
        let head = |line: &str, headers: &[&str]| judge_str(&request(line, headers));
        assert_eq!(head("HEAD /sse HTTP/1.1", &[]), Judgement::Head);
        assert_eq!(head("HEAD /sse?x=1 HTTP/1.1", &["Connection: close"]), Judgement::Head);
        assert_eq!(status(head("HEAD /nope HTTP/1.0", &[])), 404);
        assert_eq!(status(head("HEAD * HTTP/1.1", &[])), 404);
        assert_eq!(status(head("HEAD /sse HTTP/1.0", &[])), 501);
    }

    #[test]
    fn options_on_the_path_or_star() {
        let options = |line: &str| judge_str(&request(line, &["Origin: https://a.example"]));
        assert_eq!(options("OPTIONS /sse HTTP/1.1"), Judgement::Options);
        assert_eq!(options("OPTIONS /sse?subscribe=a HTTP/1.1"), Judgement::Options);
        assert_eq!(options("OPTIONS * HTTP/1.1"), Judgement::Options);
        assert_eq!(status(options("OPTIONS /nope HTTP/1.0")), 404);
        assert_eq!(status(options("OPTIONS /sse HTTP/1.0")), 501);
        assert_eq!(status(options("OPTIONS * HTTP/1.0")), 501);
    }

    // ----- not HTTP, too large -----

    #[test]
    fn garbage_is_not_implemented_at_once() {
        let cases: [&[u8]; 6] = [
            b"\0",
            b"\0GET /sse?subscribe=a HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b" GET /sse HTTP/1.1\r\n\r\n",
            b"GET /sse HTTP/2.0\r\n\r\n",
        ];
        for bytes in cases {
            let reject = rejected(judge(bytes, &route()));
            assert!(matches!(reject, Reject::Malformed(_)), "{bytes:?}: {reject:?}");
            assert_eq!(reject.status(), 501);
        }
    }

    #[test]
    fn a_head_that_never_ends_is_refused_past_the_cap() {
        let mut text = "GET /sse?subscribe=a HTTP/1.1\r\nX-Pad: ".to_owned();
        text.push_str(&"a".repeat(MAX_REQUEST_HEAD - text.len()));
        assert_eq!(text.len(), MAX_REQUEST_HEAD);
        assert_eq!(judge_str(&text), Judgement::Incomplete);
        text.push('a');
        assert_eq!(rejected(judge_str(&text)), Reject::HeadTooLarge);
    }

    #[test]
    fn a_complete_head_over_the_cap_is_refused_too() {
        let start = "GET /sse?subscribe=a HTTP/1.1\r\nX-Pad: ";
        let fits = MAX_REQUEST_HEAD - start.len() - 4;
        let at_cap = format!("{start}{}\r\n\r\n", "a".repeat(fits));
        assert_eq!(at_cap.len(), MAX_REQUEST_HEAD);
        assert_eq!(subscribed(judge_str(&at_cap)).tokens, strings(&["a"]));
        let over = format!("{start}{}\r\n\r\n", "a".repeat(fits + 1));
        assert_eq!(rejected(judge_str(&over)), Reject::HeadTooLarge);
    }

    #[test]
    fn too_many_header_lines_are_refused() {
        let names: Vec<String> = (0..MAX_HEADERS).map(|n| format!("X-{n}: v")).collect();
        let mut headers: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(tokens_of_headers(&headers), strings(&["a"]));
        headers.push("X-Last: v");
        assert_eq!(rejected(get("/sse?subscribe=a", &headers)), Reject::TooManyHeaders);
        assert_eq!(Reject::TooManyHeaders.status(), 431);
    }

    fn tokens_of_headers(headers: &[&str]) -> Vec<String> {
        subscribed(get("/sse?subscribe=a", headers)).tokens
    }

    // ----- Connection -----

    #[test]
    fn connection_absent_or_keep_alive_is_accepted() {
        let accepted = [
            "Connection: keep-alive",
            "Connection: Keep-Alive",
            "connection: KEEP-ALIVE",
            "CONNECTION:keep-alive",
            "Connection: Upgrade",
            "Connection: keep-alive, Upgrade",
            "Connection: close, keep-alive",
            "Connection:  keep-alive ,close",
        ];
        assert_eq!(tokens_of_headers(&[]), strings(&["a"]));
        for header in accepted {
            assert_eq!(tokens_of_headers(&[header]), strings(&["a"]), "{header}");
        }
        let both = ["Connection: close", "Connection: keep-alive"];
        assert_eq!(tokens_of_headers(&both), strings(&["a"]));
    }

    #[test]
    fn connection_close_is_refused() {
        for header in ["Connection: close", "connection: Close", "Connection: Upgrade, CLOSE"] {
            assert_eq!(rejected(get("/sse?subscribe=a", &[header])), Reject::ConnectionClose, "{header}");
        }
    }

    // ----- the query -----

    #[test]
    fn values_are_split_on_dashes_then_percent_decoded() {
        assert_eq!(tokens_of("/sse?subscribe=a%20b+c-%2A"), strings(&["a b c", "*"]));
        assert_eq!(tokens_of("/sse?subscribe=x%2Dy"), strings(&["x-y"]));
        assert_eq!(tokens_of("/sse?subscribe=x%2dy-z"), strings(&["x-y", "z"]));
        assert_eq!(tokens_of("/sse?subscribe=a=b-c%3Dd"), strings(&["a=b", "c=d"]));
        assert_eq!(tokens_of("/sse?subscribe=a%26b&id=u"), strings(&["a&b"]));
        assert_eq!(tokens_of("/sse?sub%73cribe=x"), strings(&["x"]));
        assert_eq!(tokens_of("/sse?subscribe=%C3%A9t%C3%A9"), strings(&["été"]));
        let id = subscribed(get("/sse?subscribe=a&id=x%2Dy+z", &[])).id;
        assert_eq!(id.as_deref(), Some("x-y z"));
    }

    #[test]
    fn tokens_drop_empties_and_repeats_keeping_order() {
        assert_eq!(tokens_of("/sse?subscribe=b--a-b-"), strings(&["b", "a"]));
        assert_eq!(tokens_of("/sse?subscribe=*-a-*"), strings(&["*", "a"]));
    }

    #[test]
    fn a_star_inside_a_token_is_kept_as_is() {
        assert_eq!(tokens_of("/sse?subscribe=news*-a*b"), strings(&["news*", "a*b"]));
    }

    #[test]
    fn no_token_is_refused() {
        for target in [
            "/sse?subscribe=",
            "/sse?subscribe",
            "/sse?subscribe=---",
            "/sse?id=u1",
            "/sse?Subscribe=a",
            "/sse?subscribe=&subscribe=a",
        ] {
            assert_eq!(rejected(get(target, &[])), Reject::NoSubscription, "{target}");
        }
    }

    #[test]
    fn the_first_subscribe_and_id_win_and_unknown_names_are_ignored() {
        let judgement = get("/sse?x=1&subscribe=a&id=one&subscribe=b&id=two&&y", &[]);
        let subscribe = subscribed(judgement);
        assert_eq!(subscribe.tokens, strings(&["a"]));
        assert_eq!(subscribe.id.as_deref(), Some("one"));
    }

    #[test]
    fn token_length_is_limited_not_cut() {
        let longest = "t".repeat(MAX_TOKEN_LEN);
        assert_eq!(tokens_of(&format!("/sse?subscribe=a-{longest}")), vec!["a".to_owned(), longest.clone()]);
        let accents = "%C3%A9".repeat(MAX_TOKEN_LEN / 2);
        assert_eq!(tokens_of(&format!("/sse?subscribe={accents}"))[0].len(), 128);
        let reject = rejected(get(&format!("/sse?subscribe=a-{longest}t"), &[]));
        let expected = Reject::TooLong { param: "subscribe", len: MAX_TOKEN_LEN + 1, max: MAX_TOKEN_LEN };
        assert_eq!(reject, expected);
        assert_eq!(reject.status(), 400);
    }

    #[test]
    fn id_is_limited_and_empty_means_none() {
        let longest = "i".repeat(MAX_ID_LEN);
        let judgement = get(&format!("/sse?subscribe=a&id={longest}"), &[]);
        assert_eq!(subscribed(judgement).id, Some(longest.clone()));
        let reject = rejected(get(&format!("/sse?subscribe=a&id={longest}i"), &[]));
        let expected = Reject::TooLong { param: "id", len: MAX_ID_LEN + 1, max: MAX_ID_LEN };
        assert_eq!(reject, expected);
        assert_eq!(subscribed(get("/sse?subscribe=a&id=", &[])).id, None);
        assert_eq!(subscribed(get("/sse?subscribe=a", &[])).id, None);
    }

    #[test]
    fn control_characters_and_non_utf8_are_refused() {
        for value in ["a%0Db", "a%0A", "%00", "a%09b", "%7F", "%C2%85", "%FF", "a%C3"] {
            let target = format!("/sse?subscribe=ok-{value}");
            assert_eq!(rejected(get(&target, &[])), Reject::BadCharacter { param: "subscribe" }, "{value}");
            let target = format!("/sse?subscribe=ok&id={value}");
            assert_eq!(rejected(get(&target, &[])), Reject::BadCharacter { param: "id" }, "{value}");
        }
    }

    // ----- User-Agent -----

    #[test]
    fn user_agent_is_cut_at_a_character_boundary() {
        let agent = |header: &str| subscribed(get("/sse?subscribe=a", &[header])).user_agent;
        let long = "a".repeat(300);
        assert_eq!(agent(&format!("User-Agent: {long}")), long[..MAX_AGENT_LEN]);
        let straddling = format!("{}é", "a".repeat(MAX_AGENT_LEN - 1));
        assert_eq!(agent(&format!("user-agent: {straddling}")), "a".repeat(MAX_AGENT_LEN - 1));
        assert_eq!(subscribed(get("/sse?subscribe=a", &[])).user_agent, "");
    }

    #[test]
    fn user_agent_bytes_that_are_not_utf8_are_replaced() {
        let text = b"GET /sse?subscribe=a HTTP/1.1\r\nUser-Agent: x\xffy\r\n\r\n";
        assert_eq!(subscribed(judge(text, &route())).user_agent, "x\u{fffd}y");
    }

    // ----- properties -----

    /// The judgement once bytes arrive one at a time, and how many had arrived then.
    fn judge_byte_by_byte(text: &[u8]) -> (usize, Judgement) {
        let mut received = Vec::new();
        for &byte in text {
            received.push(byte);
            let judgement = judge(&received, &route());
            if judgement != Judgement::Incomplete {
                return (received.len(), judgement);
            }
        }
        (received.len(), Judgement::Incomplete)
    }

    fn well_formed_request() -> impl Strategy<Value = String> {
        let method = prop::sample::select(vec!["GET", "HEAD", "OPTIONS"]);
        let target = prop_oneof![
            Just("/sse".to_owned()),
            Just("*".to_owned()),
            "/[a-z/]{0,8}",
            concat!(
                "/sse\\?(subscribe=[a-z*%0-9-]{0,20}|id=[a-z0-9]{0,70}|[a-z]{1,5}=[a-z]{0,5})",
                "(&subscribe=[a-z-]{0,10})?"
            ),
        ];
        let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]);
        let header =
            prop_oneof!["[A-Za-z-]{1,12}: [!-~][ -~]{0,30}", "(Connection|User-Agent): [ -~]{0,30}",];
        let headers = prop::collection::vec(header, 0..8);
        let end = prop::sample::select(vec!["\r\n", "\n"]);
        (method, target, version, headers, end).prop_map(|(method, target, version, headers, end)| {
            let mut text = format!("{method} {target} {version}{end}");
            for header in headers {
                text.push_str(&header);
                text.push_str(end);
            }
            text + end
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..10_000),
            path in "/[ -~]{0,10}",
        ) {
            judge(&bytes, &Route { path });
        }

        /// Whatever is refused is answered with its reason, one line, counted exactly.
        #[test]
        fn a_refusal_answers_with_one_line_of_its_reason(
            text in prop_oneof![well_formed_request(), "[ -~\r\n%]{0,120}"],
            bytes in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let responses = Responses::new("*", false);
            for received in [text.as_bytes(), &bytes[..]] {
                if let Judgement::Reject(reject) = judge(received, &route()) {
                    let answer = responses.error(&reject);
                    let line = format!("{reject}\n");
                    prop_assert!(answer.ends_with(line.as_bytes()), "{:?}", answer);
                    prop_assert_eq!(line.find('\n'), Some(line.len() - 1));
                    let length = format!("\r\nContent-Length: {}\r\n", line.len());
                    prop_assert!(answer.windows(length.len()).any(|w| w == length.as_bytes()));
                }
            }
        }

        #[test]
        fn request_like_text_never_panics(tail in "[ -~\r\n%]{0,300}") {
            judge(format!("GET /sse?{tail}").as_bytes(), &route());
        }

        /// The shard judges what has arrived after each read and acts on the first judgement
        /// that is not `Incomplete`: that must be the judgement of the whole, however it is cut.
        #[test]
        fn any_bytes_in_any_pieces_get_the_judgement_of_the_whole(
            start in prop_oneof![well_formed_request(), "[ -~\r\n]{0,40}"],
            pad in prop_oneof![0usize..200, (MAX_REQUEST_HEAD - 150)..(MAX_REQUEST_HEAD + 50)],
            tail in prop::collection::vec(any::<u8>(), 0..40),
            cuts in prop::collection::vec(
                prop_oneof![0usize..(MAX_REQUEST_HEAD + 400), (MAX_REQUEST_HEAD - 20)..(MAX_REQUEST_HEAD + 100)],
                0..6,
            ),
        ) {
            // A header line of `pad` bytes after the start, so faults land on both sides of the
            // cap, and cuts near the cap too.
            let mut text = start.trim_end_matches(['\r', '\n']).as_bytes().to_vec();
            text.extend_from_slice(b"\r\nX-Pad: ");
            text.resize(text.len() + pad, b'p');
            text.extend_from_slice(&tail);
            let whole = judge(&text, &route());
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c < text.len()).collect();
            cuts.sort_unstable();
            let first = cuts
                .into_iter()
                .map(|cut| judge(&text[..cut], &route()))
                .find(|judgement| *judgement != Judgement::Incomplete);
            prop_assert_eq!(first.unwrap_or_else(|| whole.clone()), whole);
        }

        #[test]
        fn prefixes_are_incomplete_and_the_head_is_judged_as_a_whole(
            text in well_formed_request(),
        ) {
            let whole = judge(text.as_bytes(), &route());
            prop_assert_ne!(&whole, &Judgement::Incomplete);
            let (arrived, judgement) = judge_byte_by_byte(text.as_bytes());
            prop_assert_eq!(arrived, text.len());
            prop_assert_eq!(judgement, whole);
        }
    }
}
