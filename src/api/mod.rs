//! The HTTP API's protocol: requests to routes, publishes out of bodies, and responses as bytes.
//!
//! Pure: it reads bytes and builds bytes, and never touches a socket, a shard or the sequencer.
//! The control thread owns the API's connections (`control/api.rs`) and carries out what a
//! request asks; the admin thread formats the answers to questions ([`ApiQuery`]).
//!
//! ```text
//! POST /publish   form (to, except, data, event, retry) or the JSON of a control line → {"id":"…"}
//! GET  /status    the tcpstatus JSON        GET /clients   the tcpclientlist JSON
//! GET  /metrics   Prometheus text           GET /healthz   ok (no key needed), or 503
//! GET  /presence?token=T[&count]    who a publish to T reaches (every node of a cluster)
//! POST /disconnect  id|sub|token [ban]     POST /revoke  jti|sub [exp]   (query or form)
//! GET  /          a live status page for a person
//! ```
//!
//! Errors are JSON, `{"error":"…"}`, with their status code.

pub mod metrics;
pub mod request;

use std::borrow::Cow;

use subtle::ConstantTimeEq;

use crate::event::{Publish, Receipt};
use crate::gate::{Order, OrderKind};
use crate::limits::{Limits, MAX_TOKEN_LEN};
use crate::pipeline::Query;
use crate::publish::{parse_json_publish, CommandError, JsonPublish, Targets};
use request::{MediaType, Method, Request};

/// The status page: one file, no outside assets.
const PAGE: &str = include_str!("page.html");

/// Bytes a publish's body may have beyond `--max-message`: room for the JSON or form around the
/// message, so that an oversized message gets the grammar's precise 413, not a cruder one.
pub const BODY_SLACK: usize = 4 * 1024;

/// A question the API asks the admin path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiQuery {
    /// `GET /status`.
    Status,
    /// `GET /clients`.
    Clients,
    /// `GET /metrics`.
    Metrics,
    /// `GET /healthz`.
    Health,
}

impl ApiQuery {
    /// What the shards are asked for it: their figures, or their client rows.
    pub fn query(self) -> Query {
        match self {
            ApiQuery::Clients => Query::ClientList,
            ApiQuery::Status | ApiQuery::Metrics | ApiQuery::Health => Query::Status,
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /publish`.
    Publish,
    /// A question, answered by the admin path.
    Ask(ApiQuery),
    /// `GET /presence`.
    Presence,
    /// `POST /disconnect`, `POST /revoke`.
    Order(OrderKind),
    /// `GET /`.
    Page,
}

/// An answer, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Its status code.
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Header lines beyond the usual, each ending in CRLF.
    pub extra: &'static str,
    /// Its body.
    pub body: Vec<u8>,
}

const JSON: &str = "application/json";

/// A publish's answer up to its `Content-Length` value ([`Response::encode_published`]).
const PUBLISHED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ";
/// After the length, up to the id, on a connection that stays open.
const PUBLISHED_KEEP_ALIVE: &[u8] =
    b"\r\nCache-Control: no-store\r\nConnection: keep-alive\r\n\r\n{\"id\":\"";
/// After the length, up to the id, on a connection that closes.
const PUBLISHED_CLOSE: &[u8] = b"\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{\"id\":\"";
/// The bytes of `{"id":""}`: a publish's body but its id.
const PUBLISHED_BODY_AROUND_ID: usize = 9;

impl Response {
    /// `200` with this body.
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status: 200, content_type, extra: "", body: body.into() }
    }

    /// `200` with a JSON body.
    pub fn json(body: String) -> Response {
        Response::ok(JSON, body)
    }

    /// `status` with `{"error": reason}`.
    pub fn error(status: u16, reason: &str) -> Response {
        let body = serde_json::json!({ "error": reason }).to_string().into_bytes();
        Response { status, content_type: JSON, extra: "", body }
    }

    /// `200` with `{"id":"…"}`: a publish's event id (a string, as SSE ids are). Built by
    /// hand: it is the answer to every publish, and a digit string needs no escaping.
    pub fn published(id: u64) -> Response {
        let body = [&br#"{"id":""#[..], itoa::Buffer::new().format(id).as_bytes(), br#""}"#].concat();
        Response::ok(JSON, body)
    }

    /// `202` with `{"queued":true}`: in a cluster while Redis is unreachable, a publish
    /// buffered until it is back, its id not known yet.
    pub fn queued() -> Response {
        Response { status: 202, content_type: JSON, extra: "", body: br#"{"queued":true}"#.to_vec() }
    }

    /// The answer to a publish whose fate the cluster's outbox decided.
    pub fn of_receipt(receipt: Receipt) -> Response {
        match receipt {
            Receipt::Sequenced(id) => Response::published(id),
            Receipt::Queued => Response::queued(),
            Receipt::Undeliverable => Response::error(500, "Redis gave the entry an id no event can have"),
        }
    }

    /// Appends the whole response, head and body, to `out`; `keep_alive` says whether the
    /// connection stays open. Written piece by piece into the connection's buffer: a pipelined
    /// batch of publishes gets its answers without an allocation each.
    pub fn encode_into(&self, keep_alive: bool, out: &mut Vec<u8>) {
        let (mut status, mut length) = (itoa::Buffer::new(), itoa::Buffer::new());
        let pieces: [&[u8]; 13] = [
            b"HTTP/1.1 ",
            status.format(self.status).as_bytes(),
            b" ",
            reason(self.status).as_bytes(),
            b"\r\nContent-Type: ",
            self.content_type.as_bytes(),
            b"\r\nContent-Length: ",
            length.format(self.body.len()).as_bytes(),
            b"\r\nCache-Control: no-store\r\nConnection: ",
            if keep_alive { b"keep-alive" } else { b"close" },
            b"\r\n",
            self.extra.as_bytes(),
            b"\r\n",
        ];
        pieces.iter().for_each(|piece| out.extend_from_slice(piece));
        out.extend_from_slice(&self.body);
    }

    /// Appends what `Response::published(id).encode_into(keep_alive, out)` appends, from a
    /// template: the answer to every publish, with nothing to build but the id's digits.
    pub fn encode_published(id: u64, keep_alive: bool, out: &mut Vec<u8>) {
        let mut digits = itoa::Buffer::new();
        let id = digits.format(id).as_bytes();
        // An id has 1 to 20 digits, so the body 10 to 29 bytes: its length is two digits.
        let body_len = PUBLISHED_BODY_AROUND_ID + id.len();
        let length = &[b'0' + (body_len / 10) as u8, b'0' + (body_len % 10) as u8];
        let rest = if keep_alive { PUBLISHED_KEEP_ALIVE } else { PUBLISHED_CLOSE };
        out.reserve(PUBLISHED_HEAD.len() + length.len() + rest.len() + id.len() + 2);
        for piece in [PUBLISHED_HEAD, length, rest, id, b"\"}"] {
            out.extend_from_slice(piece);
        }
    }

    /// The whole response in a buffer of its own.
    pub fn encode(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.body.len());
        self.encode_into(keep_alive, &mut out);
        out
    }
}

/// The reason phrase of the status codes the API answers with.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    }
}

/// The status page.
pub fn page() -> Response {
    Response::ok("text/html; charset=utf-8", PAGE)
}

/// What `request` asks for, or the answer that refuses it: a bad key before anything else (a
/// caller without the key learns nothing, not even which paths exist), then the path, then the
/// method.
pub fn route(request: &Request, key: Option<&[u8]>) -> Result<Route, Response> {
    let (route, method) = match request.path {
        "/healthz" => (Route::Ask(ApiQuery::Health), Method::Get),
        _ if !authorized(request, key) => {
            let mut refusal = Response::error(401, "a valid API key is needed");
            // Basic lets a browser ask its user for the key (any name, the key as password)
            // and send it with the status page's own requests too.
            refusal.extra = "WWW-Authenticate: Basic realm=\"hasses API\", charset=\"UTF-8\"\r\nWWW-Authenticate: Bearer\r\n";
            return Err(refusal);
        }
        "/publish" => (Route::Publish, Method::Post),
        "/status" => (Route::Ask(ApiQuery::Status), Method::Get),
        "/clients" => (Route::Ask(ApiQuery::Clients), Method::Get),
        "/metrics" => (Route::Ask(ApiQuery::Metrics), Method::Get),
        "/presence" => (Route::Presence, Method::Get),
        "/disconnect" => (Route::Order(OrderKind::Disconnect), Method::Post),
        "/revoke" => (Route::Order(OrderKind::Revoke), Method::Post),
        "/" => (Route::Page, Method::Get),
        _ => return Err(Response::error(404, "no such endpoint")),
    };
    if request.method != method {
        let mut refusal = Response::error(405, "method not allowed");
        refusal.extra = if method == Method::Post { "Allow: POST\r\n" } else { "Allow: GET\r\n" };
        return Err(refusal);
    }
    Ok(route)
}

/// Whether the request carries the key, when there is one; compared in time that does not
/// depend on where the first difference is.
fn authorized(request: &Request, key: Option<&[u8]>) -> bool {
    match (key, &request.key) {
        (None, _) => true,
        (Some(key), Some(given)) => bool::from(given.as_ref().ct_eq(key)),
        (Some(_), None) => false,
    }
}

/// The question `GET /presence?token=T[&count]` asks: `token` (1 to 128 bytes, decoded), and
/// `count` (any value, or none) for just the number.
pub fn presence_from(request: &Request) -> Result<Query, Response> {
    let (mut token, mut count) = (None, false);
    for (name, value) in form_urlencoded::parse(request.query.as_bytes()) {
        match name.as_ref() {
            "token" if token.is_none() => token = Some(value.into_owned()),
            "token" => return Err(Response::error(400, "token given twice")),
            "count" => count = true,
            other => return Err(Response::error(400, &format!("unknown parameter `{other}`"))),
        }
    }
    match token {
        Some(token) if !token.is_empty() && token.len() <= MAX_TOKEN_LEN => {
            Ok(Query::Presence { token, count })
        }
        Some(_) => Err(Response::error(400, &format!("token must be 1 to {MAX_TOKEN_LEN} bytes"))),
        None => Err(Response::error(400, "say which token: ?token=T")),
    }
}

/// The order a `POST /disconnect` or `POST /revoke` gives, from its query and its form body
/// (either or both), at `now` (Unix seconds).
pub fn order_from(kind: OrderKind, request: &Request, body: &[u8], now: u64) -> Result<Order, Response> {
    let form = match request.content_type {
        None if body.is_empty() => &[][..],
        Some(MediaType::Form) => body,
        _ => {
            return Err(Response::error(
                415,
                "send the parameters in the query or as application/x-www-form-urlencoded",
            ))
        }
    };
    let pairs = form_urlencoded::parse(request.query.as_bytes()).chain(form_urlencoded::parse(form));
    kind.parse(pairs, now).map_err(|e| Response::error(400, &e.to_string()))
}

/// The publish a `POST /publish` body asks for: JSON as on a control line, or a form with the
/// same fields, which is turned into that JSON so that one grammar checks both.
pub fn publish_from(request: &Request, body: &[u8], limits: &Limits) -> Result<Publish, Response> {
    let checked = match request.content_type {
        Some(MediaType::Json) => parse_json_publish(body, limits),
        Some(MediaType::Form) => form_publish(body)?.check(body, limits),
        _ => return Err(Response::error(415, "send application/json or application/x-www-form-urlencoded")),
    };
    checked.map_err(|e| match e {
        CommandError::MessageTooLong { .. } => Response::error(413, &e.to_string()),
        _ => Response::error(400, &e.to_string()),
    })
}

/// A form's fields as the JSON publish they stand for: `to` may repeat (several targets); any
/// other field given twice is refused, as it would be ambiguous; an unknown one too, as in JSON.
fn form_publish(body: &[u8]) -> Result<JsonPublish<'_>, Response> {
    let (mut to, mut data, mut except, mut event, mut retry) = (Targets::default(), None, None, None, None);
    for (name, value) in crate::http::form_fields(body) {
        let slot = match name.as_ref() {
            "to" => {
                to.push(value);
                continue;
            }
            "data" => &mut data,
            "except" => &mut except,
            "event" => &mut event,
            "retry" => &mut retry,
            other => return Err(Response::error(400, &format!("unknown field `{other}`"))),
        };
        if slot.replace(value).is_some() {
            return Err(Response::error(400, &format!("field `{name}` given twice")));
        }
    }
    if to.as_slice().is_empty() {
        return Err(Response::error(400, "missing field `to`"));
    }
    let data = data.ok_or_else(|| Response::error(400, "missing field `data`"))?;
    let retry = retry
        .map(|ms| {
            ms.parse::<u32>()
                .map_err(|_| Response::error(400, &format!("retry is not a number of milliseconds: {ms}")))
        })
        .transpose()?;
    let (except, event) = (except.map(Cow::into_owned), event.map(Cow::into_owned));
    Ok(JsonPublish::from_form(to, data, except, event, retry))
}

#[cfg(test)]
mod tests {
    use super::request::{parse, Parsed};
    use super::*;
    use crate::event::Target;

    fn request(bytes: &[u8]) -> (Request<'_>, Vec<u8>) {
        match parse(bytes, 1 << 20) {
            Ok(Parsed::Complete { request, .. }) => {
                let body = bytes[request.body.clone()].to_vec();
                (request, body)
            }
            other => panic!("{other:?}"),
        }
    }

    fn post(content_type: &str, body: &str) -> Result<Publish, Response> {
        let bytes = format!(
            "POST /publish HTTP/1.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (request, body) = request(bytes.as_bytes());
        publish_from(&request, &body, &Limits { max_message: 10 })
    }

    #[test]
    fn a_form_and_json_publish_the_same() {
        let form =
            post("application/x-www-form-urlencoded", "to=room1&to=user*&data=hi+there&event=chat&retry=5")
                .unwrap();
        let json = post(
            "application/json",
            r#"{"to":["room1","user*"],"data":"hi there","event":"chat","retry":5}"#,
        )
        .unwrap();
        assert_eq!(form, json);
        assert_eq!(
            form.audience.targets.as_slice(),
            [Target::Token("room1".into()), Target::Prefix("user".into())]
        );
        assert_eq!(form.retry, Some(5));
    }

    #[test]
    fn bad_publishes_get_their_status_and_reason() {
        let status = |ct: &str, body: &str| post(ct, body).unwrap_err().status;
        let form = "application/x-www-form-urlencoded";
        assert_eq!(status(form, "data=x"), 400, "to is required");
        assert_eq!(status(form, "to=a&data=x&data=y"), 400);
        assert_eq!(status(form, "to=a&data=x&retry=soon"), 400);
        assert_eq!(status(form, "to=a-b&data=x"), 400);
        assert_eq!(status(form, "to=a&data=12345678901"), 413);
        assert_eq!(status("application/json", "[1]"), 400);
        assert_eq!(status("text/plain", "a=b"), 415);
        let reason = post(form, "data=x").unwrap_err().body;
        assert!(String::from_utf8(reason).unwrap().contains("missing field `to`"));
        for body in ["to=a-b&data=x", "to=a&data=x&event=a%0Ab", "to=a*b&data=x"] {
            let reason = String::from_utf8(post(form, body).unwrap_err().body).unwrap();
            assert!(!reason.contains("JSON"), "a form's error speaks of its fields, not JSON: {reason}");
        }
    }

    #[test]
    fn routes_need_the_key_but_health() {
        let key = Some(&b"k"[..]);
        let route_of = |bytes: &[u8], key| route(&request(bytes).0, key).map_err(|r| r.status);
        assert_eq!(route_of(b"GET /healthz HTTP/1.1\r\n\r\n", key), Ok(Route::Ask(ApiQuery::Health)));
        assert_eq!(route_of(b"GET /status HTTP/1.1\r\n\r\n", key), Err(401));
        assert_eq!(route_of(b"GET /status HTTP/1.1\r\nX-API-Key: j\r\n\r\n", key), Err(401));
        assert_eq!(
            route_of(b"GET /status HTTP/1.1\r\nX-API-Key: k\r\n\r\n", key),
            Ok(Route::Ask(ApiQuery::Status))
        );
        assert_eq!(
            route_of(b"GET /status HTTP/1.1\r\nAuthorization: Bearer k\r\n\r\n", key),
            Ok(Route::Ask(ApiQuery::Status))
        );
        assert_eq!(route_of(b"GET /publish HTTP/1.1\r\n\r\n", None), Err(405));
        assert_eq!(route_of(b"POST /metrics HTTP/1.1\r\n\r\n", None), Err(405));
        assert_eq!(route_of(b"GET /nope HTTP/1.1\r\n\r\n", None), Err(404));
        assert_eq!(route_of(b"GET /presence?token=a HTTP/1.1\r\n\r\n", None), Ok(Route::Presence));
        assert_eq!(route_of(b"GET /presence?token=a HTTP/1.1\r\n\r\n", key), Err(401));
        assert_eq!(route_of(b"POST /disconnect HTTP/1.1\r\n\r\n", key), Err(401));
        assert_eq!(route_of(b"GET /disconnect?id=a HTTP/1.1\r\n\r\n", None), Err(405));
        assert_eq!(
            route_of(b"POST /revoke HTTP/1.1\r\nX-API-Key: k\r\n\r\n", key),
            Ok(Route::Order(OrderKind::Revoke))
        );
        assert_eq!(route_of(b"GET /?x HTTP/1.1\r\n\r\n", None), Ok(Route::Page));
    }

    #[test]
    fn presence_and_orders_read_their_parameters_or_say_what_is_wrong() {
        let presence = |target: &str| {
            let bytes = format!("GET {target} HTTP/1.1\r\n\r\n");
            presence_from(&request(bytes.as_bytes()).0)
        };
        assert_eq!(
            presence("/presence?token=room%201"),
            Ok(Query::Presence { token: "room 1".into(), count: false })
        );
        assert_eq!(
            presence("/presence?token=r&count"),
            Ok(Query::Presence { token: "r".into(), count: true })
        );
        let reason = |refusal: Response| (refusal.status, String::from_utf8(refusal.body).unwrap());
        assert_eq!(
            reason(presence("/presence").unwrap_err()),
            (400, r#"{"error":"say which token: ?token=T"}"#.into())
        );
        assert_eq!(reason(presence("/presence?token=").unwrap_err()).0, 400);
        assert_eq!(reason(presence("/presence?token=a&token=b").unwrap_err()).0, 400);
        assert!(reason(presence("/presence?token=a&x=1").unwrap_err()).1.contains("unknown parameter `x`"));
        let order = |target: &str, content_type: &str, body: &str| {
            let bytes = format!(
                "POST {target} HTTP/1.1\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let (request, body) = request(bytes.as_bytes());
            order_from(OrderKind::Disconnect, &request, &body, 100)
        };
        let form = "Content-Type: application/x-www-form-urlencoded\r\n";
        let expected = Ok(Order::Disconnect { who: crate::gate::Who::Id("u1".into()), ban_until: Some(160) });
        assert_eq!(order("/disconnect?id=u1&ban=60", "", ""), expected);
        assert_eq!(order("/disconnect", form, "id=u1&ban=60"), expected);
        assert_eq!(order("/disconnect?ban=60", form, "id=u1"), expected);
        assert_eq!(reason(order("/disconnect", form, "").unwrap_err()).0, 400);
        assert!(reason(order("/disconnect?id=a&sub=b", "", "").unwrap_err())
            .1
            .contains("give one of id, sub, token"));
        assert_eq!(
            reason(order("/disconnect", "Content-Type: application/json\r\n", "{}").unwrap_err()).0,
            415
        );
    }

    #[test]
    fn a_response_says_its_length_and_whether_the_connection_stays() {
        let mut refusal = Response::error(401, "no");
        refusal.extra = "WWW-Authenticate: Bearer\r\n";
        let text = String::from_utf8(refusal.encode(false)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\
             Cache-Control: no-store\r\nConnection: close\r\nWWW-Authenticate: Bearer\r\n\r\n{\"error\":\"no\"}"
        );
        assert_eq!(Response::published(42).body, br#"{"id":"42"}"#);
    }

    #[test]
    fn a_publishs_answer_from_its_template_is_the_one_it_stands_for() {
        for id in [0, 7, 42, 1_000_000, u64::MAX] {
            for keep_alive in [true, false] {
                let mut out = b"earlier".to_vec();
                Response::encode_published(id, keep_alive, &mut out);
                assert_eq!(out, [&b"earlier"[..], &Response::published(id).encode(keep_alive)].concat());
            }
        }
    }
}
