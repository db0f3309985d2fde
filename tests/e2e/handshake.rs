//! The SSE port's answers to every kind of request (spec §3): the handshake and its exact
//! headers, path matching, methods and versions, the `Connection` and `subscribe` checks, the
//! size cap, HEAD and OPTIONS, and requests that arrive in pieces.

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use crate::common::{self, get_request, read_to_eof, Response, Server, SseClient, WAIT};

/// The handshake headers hasses sends, in its order, for CORS base `*`, then ours.
const HANDSHAKE_HEADERS: [(&str, &str); 9] = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET"),
    ("Access-Control-Allow-Headers", "cache-control, last-event-id, X-Requested-With"),
    ("Cache-Control", "no-cache"),
    ("Keep-Alive", "timeout=300, max=100"),
    ("Connection", "Keep-Alive"),
    ("Transfer-Encoding", "chunked"),
    ("Content-Type", "text/event-stream"),
    ("X-Accel-Buffering", "no"),
];

/// Headers whose values are ours to choose.
const FREE_HEADERS: [&str; 2] = ["date", "server"];

fn assert_only_known_headers(response: &common::Head, known: &[&str]) {
    for name in response.names() {
        assert!(
            known.iter().any(|k| k.eq_ignore_ascii_case(&name)) || FREE_HEADERS.contains(&name.as_str()),
            "unexpected header {name} in {:?}",
            response.headers
        );
    }
}

/// Asserts an error response per §3.6: exact status line, `Content-Length` bytes of body,
/// `Connection: close` (the connection was closed: `request` read to EOF); the body is the
/// reason, one line of plain text (ours: hasses sent a tiny HTML page naming the status).
fn assert_error(response: &Response, status_line: &str) {
    assert_eq!(response.head.status_line, status_line, "{response:?}");
    let length: usize = response
        .head
        .header("Content-Length")
        .unwrap_or_else(|| panic!("no Content-Length in {response:?}"))
        .parse()
        .expect("a numeric Content-Length");
    assert_eq!(response.body.len(), length, "body length vs Content-Length: {response:?}");
    assert_eq!(response.head.header("Content-Type"), Some("text/plain; charset=utf-8"), "{response:?}");
    let body = String::from_utf8(response.body.clone()).expect("a UTF-8 body");
    assert!(body.len() > 1 && body.find('\n') == Some(body.len() - 1), "one line of reason: {body:?}");
    assert_eq!(response.head.header("Connection"), Some("close"), "{response:?}");
}

/// The body of a refusal: its reason, as the log line has it.
fn reason(response: &Response) -> &str {
    std::str::from_utf8(&response.body).expect("a UTF-8 body").trim_end_matches('\n')
}

fn get(path_and_query: &str, version: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {path_and_query} {version}\r\nHost: 127.0.0.1\r\n{extra_headers}\r\n").into_bytes()
}

#[test]
fn handshake_answers_200_with_the_exact_headers_then_streams() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=a");
    let head = client.head.clone().unwrap();
    assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    for (name, value) in HANDSHAKE_HEADERS {
        assert_eq!(head.header(name), Some(value), "header {name} in {:?}", head.headers);
    }
    let known: Vec<&str> = HANDSHAKE_HEADERS.iter().map(|(n, _)| *n).collect();
    assert_only_known_headers(&head, &known);
    assert!(head.header("Content-Length").is_none());
    server.publish("a=hello");
    client.expect_data("hello");
}

#[test]
fn handshake_headers_carry_the_cors_base() {
    let server = Server::start(&["--cors-base", "https://www.example.org"]);
    let client = server.subscribe("subscribe=a");
    let head = client.head.as_ref().unwrap();
    assert_eq!(head.header("Access-Control-Allow-Origin"), Some("https://www.example.org"));
}

#[test]
fn event_chunk_bytes_are_exact() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=a");
    server.publish("a=hello");
    // Read the raw bytes: `<hex>\r\nid: N\ndata: hello\n\n\r\n`.
    let mut raw = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !raw.ends_with(b"\n\n\r\n") && Instant::now() < deadline {
        let mut byte = [0u8; 1];
        use std::io::Read;
        client.stream.read_exact(&mut byte).expect("event bytes");
        raw.push(byte[0]);
    }
    let text = String::from_utf8(raw).unwrap();
    let (size, rest) = text.split_once("\r\n").expect("a chunk size line");
    let payload = rest.strip_suffix("\r\n").expect("chunk ends with CRLF");
    assert_eq!(usize::from_str_radix(size, 16).unwrap(), payload.len(), "{text:?}");
    let id = payload.strip_prefix("id: ").and_then(|p| p.strip_suffix("\ndata: hello\n\n")).expect(&text);
    assert!(id.parse::<u64>().is_ok(), "numeric id in {text:?}");
    assert!(size.chars().all(|c| c.is_ascii_hexdigit()), "{text:?}");
}

#[test]
fn connection_header_is_case_insensitive_and_optional() {
    let server = Server::start(&[]);
    for connection in [
        "Connection: keep-alive\r\n",
        "Connection: Keep-Alive\r\n",
        "connection: KEEP-ALIVE\r\n",
        "CONNECTION: keep-alive\r\n",
        "",
    ] {
        let mut client = SseClient::connect(server.sse_port);
        let request = get("/sse?subscribe=a", "HTTP/1.1", connection);
        client.send(&request);
        let head = client.read_head(WAIT).expect("a response");
        assert_eq!(head.status_line, "HTTP/1.1 200 OK", "with {connection:?}");
    }
}

#[test]
fn connection_close_is_400() {
    let server = Server::start(&[]);
    let response = server.request(&get("/sse?subscribe=a", "HTTP/1.1", "Connection: close\r\n"));
    assert_error(&response, "HTTP/1.1 400 Bad Request");
}

#[test]
fn missing_or_empty_subscribe_is_400() {
    let server = Server::start(&[]);
    // A client that subscribes first: hasses would let the next query-less request inherit its tokens.
    let _earlier = server.subscribe("subscribe=a");
    for target in ["/sse", "/sse?", "/sse?subscribe=", "/sse?subscribe", "/sse?id=x", "/sse?x=1&y=2"] {
        let response = server.request(&get(target, "HTTP/1.1", "Connection: keep-alive\r\n"));
        assert_error(&response, "HTTP/1.1 400 Bad Request");
    }
}

#[test]
fn path_must_match_exactly_else_404() {
    let server = Server::start(&[]);
    for target in ["/ssex?subscribe=a", "/sse/x?subscribe=a", "/SSE?subscribe=a", "/", "/other", "/ss", "sse"]
    {
        let response = server.request(&get(target, "HTTP/1.1", "Connection: keep-alive\r\n"));
        assert_error(&response, "HTTP/1.1 404 Not Found");
    }
    // `/sse?x` is a path match: it fails on `subscribe` instead.
    let response = server.request(&get("/sse?x", "HTTP/1.1", ""));
    assert_error(&response, "HTTP/1.1 400 Bad Request");
}

#[test]
fn get_checks_run_path_version_connection_subscribe() {
    let server = Server::start(&[]);
    // Path before version.
    assert_error(
        &server.request(&get("/other", "HTTP/1.0", "Connection: close\r\n")),
        "HTTP/1.1 404 Not Found",
    );
    // Version before Connection and subscribe.
    assert_error(
        &server.request(&get("/sse", "HTTP/1.0", "Connection: close\r\n")),
        "HTTP/1.1 501 Not Implemented",
    );
    // Connection before subscribe.
    let response = server.request(&get("/sse", "HTTP/1.1", "Connection: close\r\n"));
    assert_error(&response, "HTTP/1.1 400 Bad Request");
}

#[test]
fn unsupported_methods_and_versions_are_501_with_allow_and_cors() {
    let server = Server::start(&["--cors-base", "https://a.example"]);
    let requests: Vec<Vec<u8>> = vec![
        b"POST /sse?subscribe=a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"PUT /sse?subscribe=a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"DELETE /sse HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"TRACE /sse HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"BREW /sse HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"get /sse?subscribe=a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        // Unsupported methods get 501 on any path.
        b"POST /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        get("/sse?subscribe=a", "HTTP/1.0", "Connection: keep-alive\r\n"),
        get("/sse?subscribe=a", "HTTP/2.0", ""),
        get("/sse?subscribe=a", "http/1.1", ""),
        b"HEAD /sse HTTP/1.0\r\n\r\n".to_vec(),
        b"OPTIONS /sse HTTP/1.0\r\n\r\n".to_vec(),
    ];
    for request in requests {
        let response = server.request(&request);
        let what = String::from_utf8_lossy(&request).lines().next().unwrap().to_string();
        assert_error(&response, "HTTP/1.1 501 Not Implemented");
        assert_eq!(response.head.header("Allow"), Some("GET, HEAD"), "{what}");
        assert_eq!(response.head.header("Access-Control-Allow-Origin"), Some("https://a.example"), "{what}");
    }
}

#[test]
fn garbage_and_a_leading_nul_get_501_and_are_closed_at_once() {
    // The default 20 s handshake timeout: an answer within `request`'s read deadline (a few
    // seconds) can only be the 501, however loaded the machine.
    let server = Server::start(&[]);
    let garbage: [&[u8]; 4] = [
        b"\0GET /sse?subscribe=a HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\xff\xfe\xfd\r\n\r\n",
        b"\0",
    ];
    for bytes in garbage {
        let response = server.request(bytes);
        assert_error(&response, "HTTP/1.1 501 Not Implemented");
    }
}

#[test]
fn oversized_head_is_431_and_a_big_but_allowed_head_is_served() {
    let server = Server::start(&[]);
    // Over 8 KiB without ever ending: 431 as soon as the cap is passed.
    let mut endless = b"GET /sse?subscribe=a HTTP/1.1\r\nX-Filler: ".to_vec();
    endless.extend(std::iter::repeat_n(b'x', 9 * 1024));
    let response = server.request(&endless);
    assert_eq!(response.head.status_line, "HTTP/1.1 431 Request Header Fields Too Large", "{response:?}");
    assert_eq!(response.head.header("Connection"), Some("close"));

    // A complete head over the cap: 431 too.
    let mut complete = endless.clone();
    complete.extend_from_slice(b"\r\n\r\n");
    let response = server.request(&complete);
    assert_eq!(response.head.status_line, "HTTP/1.1 431 Request Header Fields Too Large", "{response:?}");

    // 7,000 bytes (hasses reset anything from 6,144 on, and then lost the next request): served.
    let agent = "A".repeat(7000);
    let mut client = SseClient::connect(server.sse_port);
    client.handshake(
        format!("GET /sse?subscribe=a HTTP/1.1\r\nHost: x\r\nUser-Agent: {agent}\r\n\r\n").as_bytes(),
    );
    let mut next = server.subscribe("subscribe=a");
    server.publish("a=both");
    client.expect_data("both");
    next.expect_data("both");
}

#[test]
fn head_on_the_path_is_200_without_body_then_close() {
    let server = Server::start(&[]);
    // Needs neither subscribe nor Connection: keep-alive.
    for request in [&b"HEAD /sse HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"HEAD /sse?subscribe=a HTTP/1.1\r\n\r\n"]
    {
        let response = server.request(request);
        assert_eq!(response.head.status_line, "HTTP/1.1 200 OK");
        assert_eq!(response.head.header("Content-Type"), Some("text/event-stream"));
        assert_eq!(response.head.header("Cache-Control"), Some("no-cache"));
        assert_eq!(response.head.header("Access-Control-Allow-Origin"), Some("*"));
        assert!(response.body.is_empty(), "HEAD has no body: {:?}", response.body);
    }
    assert_error(&server.request(b"HEAD /other HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
}

#[test]
fn options_on_the_path_or_star_is_200_with_cors_then_close() {
    let server = Server::start(&["--cors-base", "https://o.example"]);
    for request in
        [&b"OPTIONS /sse HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"]
    {
        let response = server.request(request);
        let what = String::from_utf8_lossy(request);
        assert_eq!(response.head.status_line, "HTTP/1.1 200 OK", "{what}");
        assert_eq!(response.head.header("Allow"), Some("GET, HEAD, OPTIONS"), "{what}");
        assert_eq!(response.head.header("Access-Control-Allow-Origin"), Some("https://o.example"), "{what}");
        assert_eq!(response.head.header("Access-Control-Allow-Methods"), Some("GET"), "{what}");
        assert_eq!(
            response.head.header("Access-Control-Allow-Headers"),
            Some("cache-control, last-event-id, X-Requested-With"),
            "{what}"
        );
        let length = response.head.header("Content-Length").unwrap_or("0");
        assert_eq!(length.parse::<usize>().unwrap(), response.body.len(), "{what}");
    }
    assert_error(&server.request(b"OPTIONS /other HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
}

#[test]
fn a_request_sent_byte_by_byte_is_judged_once_complete() {
    let server = Server::start(&[]);
    let mut client = SseClient::connect(server.sse_port);
    let request = get_request("subscribe=a&id=slow");
    for byte in request.as_bytes() {
        client.stream.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let head = client.read_head(WAIT).expect("the handshake");
    assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    server.publish("a=after bytes");
    client.expect_data("after bytes");

    // A refusal sent byte by byte is judged on the whole head too.
    let mut refused = SseClient::connect(server.sse_port);
    for byte in b"GET /sse?subscribe=a HTTP/1.1\r\nConnection: close\r\n\r\n" {
        refused.stream.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let head = refused.read_head(WAIT).expect("an answer");
    assert_eq!(head.status_line, "HTTP/1.1 400 Bad Request");
}

#[test]
fn bare_lf_line_endings_are_accepted() {
    let server = Server::start(&[]);
    let mut client = SseClient::connect(server.sse_port);
    client.handshake(b"GET /sse?subscribe=a HTTP/1.1\nHost: x\nConnection: keep-alive\n\n");
    server.publish("a=lf");
    client.expect_data("lf");
}

#[test]
fn query_values_are_percent_decoded_and_other_parameters_ignored() {
    let server = Server::start(&[]);
    let mut cafe = server.subscribe("foo=bar&subscribe=caf%C3%A9&id=u%31");
    let mut spaced = server.subscribe("subscribe=a+b&x=y");
    let mut plain = server.subscribe("subscribe=plain-caf%C3%A9");
    server.publish("café=x");
    cafe.expect_data("x");
    plain.expect_data("x");
    // id=u%31 is the id u1: excluded by -u1.
    server.publish("café-u1=only plain");
    plain.expect_data("only plain");
    server.publish("a b=spaced");
    spaced.expect_data("spaced");
    server.publish("*=end");
    cafe.expect_data("end");
    plain.expect_data("end");
    spaced.expect_data("end");
}

#[test]
fn tokens_up_to_128_bytes_are_accepted_longer_ones_refused() {
    let server = Server::start(&[]);
    let long = "t".repeat(128);
    let mut client = server.subscribe(&format!("subscribe={long}"));
    server.publish(&format!("{long}=long"));
    client.expect_data("long");
    let too_long = "t".repeat(129);
    let response = server.request(get_request(&format!("subscribe={too_long}")).as_bytes());
    assert_error(&response, "HTTP/1.1 400 Bad Request");
}

#[test]
fn data_after_the_handshake_is_ignored() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=a");
    client.send(b"hello there\r\n\r\nPOST / HTTP/1.1\r\n\r\n");
    server.publish("a=still here");
    client.expect_data("still here");
}

#[test]
fn clients_that_reset_after_a_bad_request_never_stop_the_server() {
    let server = Server::start(&[]);
    for _ in 0..50 {
        let stream = common::connect(server.sse_port);
        let socket = socket2::Socket::from(stream);
        socket.set_linger(Some(Duration::ZERO)).unwrap();
        let mut stream: std::net::TcpStream = socket.into();
        let _ = stream.write_all(b"POST /sse HTTP/1.1\r\n\r\n");
        drop(stream); // RST at once
    }
    // And a client that half-closes after its request still gets its answer.
    let mut stream = common::connect(server.sse_port);
    stream.write_all(b"GET /x HTTP/1.1\r\n\r\n").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let answer = read_to_eof(&mut stream, Vec::new(), WAIT).expect("an answer then close");
    assert!(answer.starts_with(b"HTTP/1.1 404 Not Found\r\n"), "{}", String::from_utf8_lossy(&answer));

    let mut client = server.subscribe("subscribe=a");
    server.publish("a=alive");
    client.expect_data("alive");
    let mut server = server;
    assert!(server.wait_exit(Duration::ZERO).is_none(), "the server is still running");
}

#[test]
fn refusals_and_handshakes_are_logged_at_level_1() {
    let server = Server::start(&[]);
    let _client = server.subscribe("subscribe=a&id=logme");
    server.log.wait_for_line(|l| l.contains("Connection accepted"), WAIT);
    server.log.wait_for_line(|l| l.contains("subscribes: a") && l.contains("logme"), WAIT);
    let _ = server.request(&get("/nope", "HTTP/1.1", ""));
    server.log.wait_for_line(|l| l.contains("404"), WAIT);
}

#[test]
fn a_refusal_says_why_in_its_body_as_the_log_does() {
    let server = Server::start(&[]);
    let cases: [(&[u8], &str, &str); 5] = [
        (&get("/sse?x=1", "HTTP/1.1", ""), "HTTP/1.1 400 Bad Request", "no subscribe token"),
        (
            &get("/sse?subscribe=a", "HTTP/1.1", "Connection: close\r\n"),
            "HTTP/1.1 400 Bad Request",
            "Connection: close on an event-stream request",
        ),
        // The query is left out: it may carry a token.
        (
            &get("/other?subscribe=a&access_token=secret", "HTTP/1.1", ""),
            "HTTP/1.1 404 Not Found",
            "path \"/other\" not served",
        ),
        (b"PUT /sse HTTP/1.1\r\n\r\n", "HTTP/1.1 501 Not Implemented", "method \"PUT\" not implemented"),
        (
            &get("/sse?subscribe=a", "HTTP/1.0", ""),
            "HTTP/1.1 501 Not Implemented",
            "HTTP/1.0 not supported, only HTTP/1.1",
        ),
    ];
    for (request, status_line, why) in cases {
        let response = server.request(request);
        assert_error(&response, status_line);
        assert_eq!(reason(&response), why);
        let status = &status_line["HTTP/1.1 ".len()..][..3];
        server.log.wait_for_line(
            |l| l.starts_with("Request refused from ") && l.ends_with(&format!(": {status} {why}")),
            WAIT,
        );
    }
    assert!(!server.log.dump().contains("secret"), "the query's token is not logged");
}
