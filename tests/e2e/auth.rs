//! Subscriber authorization: with `--jwt-secret` or `--jwt-key`, a subscription needs a signed
//! token whose grants cover what it asks; refusals are answered as RFC 6750 says, and a stream
//! ends when its token expires.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hasses::h2::frame::Kind;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::common::*;

const SECRET: &str = "s3cret-for-tests";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims that grant `subscribe` for ten minutes, with `extra` fields on top.
fn claims(subscribe: &[&str], extra: Value) -> Value {
    let mut claims = json!({ "exp": unix_now() + 600, "subscribe": subscribe });
    claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    claims
}

fn hs256(claims: &Value) -> String {
    encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn with_secret() -> Server {
    Server::start(&["--jwt-secret", SECRET])
}

/// A `GET` for `query` with extra header lines.
fn get_with(query: &str, headers: &[&str]) -> String {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    get_request(query).replacen("\r\n\r\n", &format!("\r\n{extra}\r\n"), 1)
}

/// Subscribes with a bearer token and asserts the handshake.
fn subscribe_bearer(server: &Server, query: &str, token: &str) -> SseClient {
    let mut client = SseClient::connect(server.sse_port);
    client.handshake(get_with(query, &[&format!("Authorization: Bearer {token}")]).as_bytes());
    client
}

/// The refusal of `request`: its status and its `WWW-Authenticate` challenge.
fn refusal(server: &Server, request: &str) -> (u16, String) {
    let response = server.request(request.as_bytes());
    let challenge = response.head.header("www-authenticate").unwrap_or_default().to_owned();
    (response.head.status, challenge)
}

const NO_TOKEN: &str = r#"Bearer realm="hasses""#;
const INVALID: &str = r#"Bearer realm="hasses", error="invalid_token""#;
const SCOPE: &str = r#"Bearer realm="hasses", error="insufficient_scope""#;

#[test]
fn without_a_token_401_and_the_bare_challenge() {
    let server = with_secret();
    assert_eq!(refusal(&server, &get_request("subscribe=room1")), (401, NO_TOKEN.into()));
    let line = server.log.wait_for_line(|l| l.starts_with("Subscription refused from 127.0.0.1:"), WAIT);
    assert!(line.ends_with("no token"), "{line}");
    assert_eq!(server.tcp_json("tcpstatus")["authrefusedcnt"], 1);
}

#[test]
fn a_bad_token_401_invalid_token_never_logged() {
    let server = with_secret();
    let expired = hs256(&json!({ "exp": unix_now() - 120, "subscribe": ["*"] }));
    let wrong_key =
        encode(&Header::default(), &claims(&["*"], json!({})), &EncodingKey::from_secret(b"other")).unwrap();
    for token in [expired.as_str(), wrong_key.as_str(), "garbage", "a.b.c"] {
        let request = get_with("subscribe=room1", &[&format!("Authorization: Bearer {token}")]);
        assert_eq!(refusal(&server, &request), (401, INVALID.into()), "{token}");
    }
    let log = server.log.dump();
    assert!(!log.contains(&expired) && !log.contains(&wrong_key), "a token in the log: {log}");
    server.log.wait_for_line(|l| l.ends_with("invalid token: expired"), WAIT);
}

#[test]
fn a_token_refusal_says_why_in_its_body_never_with_the_token() {
    let server = with_secret();
    let expired = hs256(&json!({ "exp": unix_now() - 120, "subscribe": ["*"] }));
    let granted = hs256(&claims(&["room1"], json!({})));
    let cases = [
        (get_request("subscribe=room1"), "no token"),
        (
            get_with("subscribe=room1", &[&format!("Authorization: Bearer {expired}")]),
            "invalid token: expired",
        ),
        (
            get_with("subscribe=room2", &[&format!("Authorization: Bearer {granted}")]),
            "not granted: token \"room2\" is not among the grants",
        ),
    ];
    for (request, why) in cases {
        let response = server.request(request.as_bytes());
        assert_eq!(response.head.header("Content-Type"), Some("text/plain; charset=utf-8"));
        assert_eq!(response.head.header("Content-Length"), Some(&*(why.len() + 1).to_string()));
        assert_eq!(String::from_utf8_lossy(&response.body), format!("{why}\n"));
        server.log.wait_for_line(|l| l.starts_with("Subscription refused from ") && l.ends_with(why), WAIT);
    }
}

#[test]
fn grants_decide_what_a_token_may_listen_to() {
    let server = with_secret();
    let token = hs256(&claims(&["room1", "user*"], json!({})));
    let mut granted = subscribe_bearer(&server, "subscribe=room1-user42", &token);
    server.publish("room1=a;user42=b");
    assert_eq!((granted.next_data(), granted.next_data()), ("a".into(), "b".into()));
    for query in ["subscribe=room2", "subscribe=room1-other", "subscribe=*"] {
        let request = get_with(query, &[&format!("Authorization: Bearer {token}")]);
        assert_eq!(refusal(&server, &request), (403, SCOPE.into()), "{query}");
    }
    let everything = hs256(&claims(&["*"], json!({})));
    let mut all = subscribe_bearer(&server, "subscribe=*", &everything);
    server.publish("anything=c");
    assert_eq!(all.next_data(), "c");
}

#[test]
fn the_token_may_come_in_the_query_or_a_cookie() {
    let server = with_secret();
    let token = hs256(&claims(&["room1"], json!({})));
    let mut by_query = server.subscribe(&format!("subscribe=room1&access_token={token}"));
    let mut by_cookie = SseClient::connect(server.sse_port);
    by_cookie.handshake(
        get_with("subscribe=room1", &[&format!("Cookie: theme=x; hasses_token={token}")]).as_bytes(),
    );
    server.publish("room1=both");
    assert_eq!((by_query.next_data(), by_cookie.next_data()), ("both".into(), "both".into()));
}

#[test]
fn sub_is_the_client_id() {
    let server = with_secret();
    let token = hs256(&claims(&["room1"], json!({ "sub": "u42" })));
    assert_eq!(
        refusal(&server, &get_with("subscribe=room1&id=u43", &[&format!("Authorization: Bearer {token}")])),
        (403, SCOPE.into())
    );
    let mut same = subscribe_bearer(&server, "subscribe=room1&id=u42", &token);
    let mut taken = subscribe_bearer(&server, "subscribe=room1", &token);
    server.publish("room1-u42=not for u42;room1=for u42");
    assert_eq!((same.next_data(), taken.next_data()), ("for u42".into(), "for u42".into()));
    let list = server.tcp_json("tcpclientlist");
    let subs: Vec<&Value> = list["clients"].as_array().unwrap().iter().map(|row| &row["sub"]).collect();
    assert_eq!(subs, [&json!("u42"), &json!("u42")], "{list}");
}

#[test]
fn a_stream_ends_when_its_token_expires() {
    let server = with_secret();
    let token = hs256(&json!({ "exp": unix_now() + 2, "subscribe": ["room1"] }));
    let started = Instant::now();
    let mut client = subscribe_bearer(&server, "subscribe=room1", &token);
    let rest =
        read_to_eof(&mut client.stream, Vec::new(), Duration::from_secs(10)).expect("closed by the server");
    assert!(rest.ends_with(b"0\r\n\r\n"), "the last chunk, then close: {:?}", String::from_utf8_lossy(&rest));
    assert!(started.elapsed() >= Duration::from_secs(1), "not before its expiry");
    server.log.wait_for_line(|l| l.contains("(its token expired)"), WAIT);
}

#[test]
fn public_keys_sign_rs256_and_es256_and_no_key_confusion() {
    for (public, private, alg) in [
        ("rsa-public.pem", "rsa-private.pem", Algorithm::RS256),
        ("ec-public.pem", "ec-private-pkcs8.pem", Algorithm::ES256),
    ] {
        let server = Server::start(&["--jwt-key", fixture(public).to_str().unwrap()]);
        let pem = std::fs::read(fixture(private)).unwrap();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let token = encode(&Header::new(alg), &claims(&["room1"], json!({})), &key).unwrap();
        let mut client = subscribe_bearer(&server, "subscribe=room1", &token);
        server.publish("room1=signed");
        assert_eq!(client.next_data(), "signed", "{alg:?}");
        // The public key as an HMAC secret, and no signature at all: both refused.
        let public_pem = std::fs::read(fixture(public)).unwrap();
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims(&["room1"], json!({})),
            &EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        // {"alg":"none","typ":"JWT"}, the same claims, no signature.
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", token.split('.').nth(1).unwrap());
        for bad in [confused, unsigned] {
            let request = get_with("subscribe=room1", &[&format!("Authorization: Bearer {bad}")]);
            assert_eq!(refusal(&server, &request), (401, INVALID.into()), "{alg:?}");
        }
    }
}

#[test]
fn a_key_that_is_no_key_stops_the_start_with_one_line() {
    let html = fixture("../eventsource.html");
    let (status, _, stderr) =
        run_to_exit(&["--port", "0", "--control-port", "0", "--jwt-key", html.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stderr.contains("not a PEM RSA, EC or Ed25519 public key"), "{stderr}");
}

#[test]
fn a_named_origin_may_send_its_cookie_when_tokens_are_needed() {
    let server = Server::start(&["--jwt-secret", SECRET, "--cors-base", "https://app.example"]);
    let token = hs256(&claims(&["room1"], json!({})));
    let client = subscribe_bearer(&server, "subscribe=room1", &token);
    let head = client.head.as_ref().unwrap();
    assert_eq!(head.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(head.header("access-control-allow-origin"), Some("https://app.example"));
}

#[test]
fn an_http2_stream_carries_its_token_in_its_authorization_field() {
    let server = with_secret();
    let mut client = crate::h2c::Client::connect(&server, &[]);
    let token = hs256(&claims(&["room1"], json!({})));
    client.get_with(1, "/sse?subscribe=room1", &[("authorization", &format!("Bearer {token}"))]);
    client.get(3, "/sse?subscribe=room1");
    assert_eq!(client.until("stream 1's handshake", |f| f.is(Kind::Headers, 1)).status(), Some("200"));
    let refused = client.until("stream 3's refusal", |f| f.is(Kind::Headers, 3));
    assert_eq!(refused.status(), Some("401"));
    assert!(refused.fields.contains(&("www-authenticate".into(), NO_TOKEN.into())), "{:?}", refused.fields);
    server.wait_json("tcpstatus", "sseconncli", 1);
    server.publish("room1=granted");
    client.data_until(1, "data: granted");
}
