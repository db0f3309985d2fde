//! The auth hook (`--auth-url`): every subscription is first put to the web backend, which
//! knows its user by its own session.
//!
//! Owns what is asked (the client's credentials and where it came from, as headers), reading
//! the backend's answer into a [`Answer`], the cache of answers (`cache`) and the threads that
//! ask (`pool`). The questions and answers are pure functions over bytes; only `pool` does I/O,
//! on threads of its own: a shard never waits on the backend, it parks the handshake and takes
//! the verdict from a channel. What a granted answer lets a subscription have is
//! [`crate::auth::within_grant`]'s rule, the one JWT grants follow.

mod cache;
mod client;
mod job;
mod plain;
mod pool;

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::Refusal;
use crate::http::{self, MAX_HEADERS};
use crate::limits::{MAX_ID_LEN, MAX_REQUEST_HEAD, MAX_TOKEN_LEN};

pub use cache::Cache;
pub use job::{Job, Reply, Ticket, Verdict};
pub use pool::{AuthHook, HookError, QUEUE, THREADS};

/// The most bytes of a backend's answer read; a longer one is a failure.
pub const MAX_ANSWER: u64 = 64 * 1024;

/// The most bytes of a backend's refusal text passed on to the client.
const MAX_REASON: usize = 200;

/// The backend to ask, as the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSettings {
    /// `--auth-url`: an `http://` or `https://` URL.
    pub url: String,
    /// `--auth-timeout`: a handshake not answered by then is disconnected.
    pub timeout: Duration,
    /// `--auth-cache-secs`: how long an answer is reused; `None`: never.
    pub cache: Option<Duration>,
}

/// Whether `text` can be the backend's URL: `http` or `https`, with a host. Said at start, so
/// that a typo is not found at the first subscription.
pub fn check_url(text: &str) -> Result<(), &'static str> {
    let scheme = text.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("http" | "https")) {
        return Err("must be an http:// or https:// URL");
    }
    let uri: ureq::http::Uri = text.parse().map_err(|_| "not a URL")?;
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err("the URL has no host"),
    }
}

/// What the backend is asked about one subscription: the headers of the request to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Header names and values, in the order they are sent.
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// What its answer is cached by.
    pub key: CacheKey,
}

/// What makes two subscriptions the same question: the client's credentials and its query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    cookie: Vec<u8>,
    authorization: Vec<u8>,
    target: Vec<u8>,
}

impl CacheKey {
    /// Its bytes, which the cache's size bound counts.
    fn len(&self) -> usize {
        self.cookie.len() + self.authorization.len() + self.target.len()
    }
}

/// The question for the subscription whose request head is `head`, from the client at `peer`:
/// its `Cookie`s (joined), `Authorization` and `Origin` as they are; `X-Forwarded-For` with the
/// peer added, as a proxy does, and `X-Real-IP` the peer's address; `X-Original-URI` its path
/// and query. `None` when `head` is not a whole request head (never once it was judged).
pub fn question(head: &[u8], peer: SocketAddr) -> Option<Question> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    if !request.parse(&head[..head.len().min(MAX_REQUEST_HEAD)]).ok()?.is_complete() {
        return None;
    }
    Some(question_of(request.path?, request.headers, peer))
}

/// The question for a subscription to `target` with these `headers` (an HTTP/2 request's
/// fields, or an HTTP/1.1 head's), from the client at `peer`: see [`question`].
pub fn question_of(target: &str, headers: &[httparse::Header], peer: SocketAddr) -> Question {
    let target = target.as_bytes().to_vec();
    let all = |name: &'static str| headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));
    let first = |name: &'static str| all(name).next().map(|h| h.value.to_vec());
    let cookie = all("cookie").map(|h| h.value).collect::<Vec<_>>().join(&b"; "[..]);
    let authorization = first("authorization").unwrap_or_default();
    let peer_ip = peer.ip().to_canonical().to_string().into_bytes();
    let forwarded_for = match first("x-forwarded-for") {
        Some(mut chain) => {
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(&peer_ip);
            chain
        }
        None => peer_ip.clone(),
    };
    let mut sent = Vec::with_capacity(6);
    if !cookie.is_empty() {
        sent.push(("Cookie", cookie.clone()));
    }
    if !authorization.is_empty() {
        sent.push(("Authorization", authorization.clone()));
    }
    if let Some(origin) = first("origin") {
        sent.push(("Origin", origin));
    }
    sent.push(("X-Forwarded-For", forwarded_for));
    sent.push(("X-Real-IP", peer_ip));
    sent.push(("X-Original-URI", target.clone()));
    Question { headers: sent, key: CacheKey { cookie, authorization, target } }
}

/// What the backend said about a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `200`: the subscription may go on, within this grant.
    Allowed(Grant),
    /// `401` or `403`: passed on to the client, with the backend's reason.
    Refused(Refusal),
    /// No usable answer (down, timed out, another status, a malformed body): the client is
    /// disconnected without an answer, so that its EventSource tries again.
    Failed(String),
}

impl Answer {
    /// Whether it may be reused for the same question: a failure is asked again.
    pub fn is_cacheable(&self) -> bool {
        !matches!(self, Answer::Failed(_))
    }

    /// Whether it is a grant whose `expires` is at or before `unix_now`: a stream it allowed
    /// would end at once, and its EventSource come back at once, so it counts as a failure.
    pub fn has_expired(&self, unix_now: u64) -> bool {
        matches!(self, Answer::Allowed(Grant { expires: Some(at), .. }) if *at <= unix_now)
    }
}

/// Seconds since the Unix epoch, the clock of a grant's `expires`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// What a `200` answer's optional JSON body grants; an empty body grants what was asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The targets the client may subscribe to (tokens, `prefix*`, `*`); absent: any.
    pub subscribe: Option<Vec<String>>,
    /// The client's id: a different `id=` is refused, and without one the client takes it.
    pub id: Option<String>,
    /// When its stream ends, in seconds since the Unix epoch.
    pub expires: Option<u64>,
}

/// Reads the backend's answer: its status and body.
pub fn read_answer(status: u16, body: &[u8]) -> Answer {
    match status {
        200 => grant(body).map_or_else(Answer::Failed, Answer::Allowed),
        401 => Answer::Refused(Refusal::BackendUnauthorized(reason(body))),
        403 => Answer::Refused(Refusal::BackendForbidden(reason(body))),
        other => Answer::Failed(format!("it answered {other}")),
    }
}

/// A `200`'s body as a grant; unknown fields are refused, so that a misspelt `subscribe` does
/// not grant everything.
fn grant(body: &[u8]) -> Result<Grant, String> {
    if body.trim_ascii().is_empty() {
        return Ok(Grant::default());
    }
    let grant: Grant =
        serde_json::from_slice(body).map_err(|e| format!("its 200 answer is not a grant: {e}"))?;
    let bad = |what: &str| Err(format!("its 200 answer is not a grant: {what}"));
    let targets = grant.subscribe.iter().flatten();
    if targets
        .clone()
        .any(|target| target.is_empty() || http::check_value(target, "", MAX_TOKEN_LEN).is_err())
    {
        return bad("a target in \"subscribe\" is empty, too long or has a control character");
    }
    if grant.id.as_deref().is_some_and(|id| id.is_empty() || http::check_value(id, "", MAX_ID_LEN).is_err()) {
        return bad("\"id\" is empty, too long or has a control character");
    }
    Ok(grant)
}

/// The backend's reason for a refusal: its body's first line, printable and short.
fn reason(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("");
    let mut reason: String = line.chars().filter(|c| !c.is_control()).collect();
    if reason.len() > MAX_REASON {
        let cut = (0..=MAX_REASON).rev().find(|&i| reason.is_char_boundary(i)).unwrap_or(0);
        reason.truncate(cut);
    }
    if reason.is_empty() {
        reason.push_str("no reason given");
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "203.0.113.7:50000".parse().unwrap()
    }

    fn header<'q>(question: &'q Question, name: &str) -> Option<&'q [u8]> {
        question.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_slice())
    }

    #[test]
    fn the_question_carries_credentials_origin_address_and_target() {
        let head = b"GET /sse?subscribe=a-b&id=x HTTP/1.1\r\nHost: h\r\nCookie: PHPSESSID=abc\r\n\
            cookie: theme=dark\r\nAuthorization: Basic dTpw\r\nOrigin: https://app.example\r\n\
            X-Forwarded-For: 198.51.100.1\r\nUser-Agent: curl\r\n\r\n";
        let question = question(head, peer()).unwrap();
        assert_eq!(header(&question, "Cookie"), Some(&b"PHPSESSID=abc; theme=dark"[..]));
        assert_eq!(header(&question, "Authorization"), Some(&b"Basic dTpw"[..]));
        assert_eq!(header(&question, "Origin"), Some(&b"https://app.example"[..]));
        assert_eq!(header(&question, "X-Forwarded-For"), Some(&b"198.51.100.1, 203.0.113.7"[..]));
        assert_eq!(header(&question, "X-Real-IP"), Some(&b"203.0.113.7"[..]));
        assert_eq!(header(&question, "X-Original-URI"), Some(&b"/sse?subscribe=a-b&id=x"[..]));
        assert_eq!(header(&question, "User-Agent"), None, "only what the backend needs");
    }

    #[test]
    fn absent_credentials_are_not_sent_and_the_peer_starts_the_chain() {
        let v4_in_v6: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        let question = question(b"GET /sse?subscribe=a HTTP/1.1\r\n\r\n", v4_in_v6).unwrap();
        let names: Vec<_> = question.headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["X-Forwarded-For", "X-Real-IP", "X-Original-URI"]);
        assert_eq!(header(&question, "X-Real-IP"), Some(&b"127.0.0.1"[..]));
        assert!(super::question(b"GET /sse?subscribe=a HTTP/1.1\r\n", peer()).is_none());
    }

    #[test]
    fn the_same_credentials_and_query_are_the_same_question() {
        let ask = |head: &str| question(head.as_bytes(), peer()).unwrap().key;
        let a = ask("GET /sse?subscribe=a HTTP/1.1\r\nCookie: s=1\r\nUser-Agent: x\r\n\r\n");
        let same = ask("GET /sse?subscribe=a HTTP/1.1\r\nUser-Agent: y\r\nCookie: s=1\r\n\r\n");
        assert_eq!(a, same);
        assert_ne!(a, ask("GET /sse?subscribe=a HTTP/1.1\r\nCookie: s=2\r\n\r\n"));
        assert_ne!(a, ask("GET /sse?subscribe=b HTTP/1.1\r\nCookie: s=1\r\n\r\n"));
        assert_ne!(a, ask("GET /sse?subscribe=a HTTP/1.1\r\nCookie: s=1\r\nAuthorization: B x\r\n\r\n"));
    }

    #[test]
    fn a_200_grants_what_its_body_says() {
        assert_eq!(read_answer(200, b""), Answer::Allowed(Grant::default()));
        assert_eq!(read_answer(200, b" \n"), Answer::Allowed(Grant::default()));
        let body = br#"{"subscribe": ["room1", "user*"], "id": "u42", "expires": 1900000000}"#;
        let expected = Grant {
            subscribe: Some(vec!["room1".into(), "user*".into()]),
            id: Some("u42".into()),
            expires: Some(1_900_000_000),
        };
        assert_eq!(read_answer(200, body), Answer::Allowed(expected));
        assert!(!read_answer(200, body).has_expired(1_899_999_999));
        assert!(read_answer(200, body).has_expired(1_900_000_000));
        assert!(!read_answer(200, b"").has_expired(u64::MAX), "no expires: never");
        assert_eq!(
            read_answer(200, br#"{"subscribe": []}"#),
            Answer::Allowed(Grant { subscribe: Some(vec![]), ..Grant::default() })
        );
    }

    #[test]
    fn a_malformed_200_is_a_failure_not_a_grant() {
        for body in [
            &br#"{"subscrbe": ["a"]}"#[..],
            br#"{"subscribe": "a"}"#,
            br#"{"subscribe": [""]}"#,
            br#"{"id": "a\nb"}"#,
            br#"{"id": ""}"#,
            br#"{"expires": -1}"#,
            br#"["a"]"#,
            b"<html>ok</html>",
        ] {
            let answer = read_answer(200, body);
            assert!(
                matches!(&answer, Answer::Failed(why) if why.starts_with("its 200 answer")),
                "{answer:?}"
            );
            assert!(!answer.is_cacheable());
        }
    }

    #[test]
    fn refusals_carry_the_backends_first_line_and_other_statuses_fail() {
        assert_eq!(
            read_answer(403, b"\n  not logged in \nmore"),
            Answer::Refused(Refusal::BackendForbidden("not logged in".into()))
        );
        assert_eq!(
            read_answer(401, b""),
            Answer::Refused(Refusal::BackendUnauthorized("no reason given".into()))
        );
        let long = "é".repeat(300);
        let Answer::Refused(Refusal::BackendForbidden(cut)) = read_answer(403, long.as_bytes()) else {
            panic!("not a refusal")
        };
        assert!(cut.len() <= MAX_REASON && cut.chars().all(|c| c == 'é'));
        assert!(read_answer(403, b"x").is_cacheable());
        for status in [201, 302, 404, 500, 503] {
            assert_eq!(read_answer(status, b"{}"), Answer::Failed(format!("it answered {status}")));
        }
    }

    #[test]
    fn only_http_urls_with_a_host_are_taken() {
        assert_eq!(check_url("http://127.0.0.1:8000/auth.php"), Ok(()));
        assert_eq!(check_url("https://app.example/hasses/auth?x=1"), Ok(()));
        assert!(check_url("ftp://app.example/").is_err());
        assert!(check_url("127.0.0.1:8000/auth").is_err());
        assert!(check_url("http:///auth").is_err());
        assert!(check_url("not a url").is_err());
    }
}
