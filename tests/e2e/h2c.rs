//! HTTP/2 with prior knowledge on the plain port (issue 24), through a small client written
//! here over the server's own frame layout: several EventSources on one connection, each a
//! subscriber with everything a connection has; a refusal ends its stream, not the connection;
//! a stream whose window stays shut is reset alone; `--max-age` ends a stream; the connection
//! limits count streams; a flood ends the connection. The same with real clients (curl, nghttp,
//! h2load, Python's h2, Chromium) is in `http2.rs`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hasses::h2::fields::encode_block;
use hasses::h2::frame::{self, setting, ErrorCode, Head, Kind, HEAD_LEN, PREFACE};

use crate::common::{Server, WAIT};

/// A client of one HTTP/2 connection: it writes frames and reads them one at a time.
pub struct Client {
    socket: TcpStream,
    decoder: loona_hpack::Decoder<'static>,
    input: Vec<u8>,
    /// Frames read while waiting for another, kept in order for the next wait: the server
    /// answers streams in the order their answers are ready, not the order a test asks.
    passed: Vec<Frame>,
}

/// A frame read: its header, and its payload (a header block decoded into `fields`).
#[derive(Debug)]
pub struct Frame {
    pub head: Head,
    pub payload: Vec<u8>,
    pub fields: Vec<(String, String)>,
}

impl Frame {
    pub fn is(&self, kind: Kind, stream: u32) -> bool {
        self.head.kind == kind as u8 && self.head.stream == stream
    }

    pub fn status(&self) -> Option<&str> {
        self.fields.iter().find(|(name, _)| name == ":status").map(|(_, value)| value.as_str())
    }

    /// The error code of a RST_STREAM, or of a GOAWAY.
    pub fn code(&self) -> u32 {
        let at = if self.head.kind == Kind::GoAway as u8 { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

impl Client {
    /// Connects with the preface and `settings`, and gives the connection a large window.
    pub fn connect(server: &Server, settings: &[(u16, u32)]) -> Client {
        let socket = TcpStream::connect(("127.0.0.1", server.sse_port)).expect("connect");
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut client =
            Client { socket, decoder: loona_hpack::Decoder::new(), input: Vec::new(), passed: Vec::new() };
        client.send(&[PREFACE, &frame::settings(settings), &frame::window_update(0, 1 << 30)].concat());
        client
    }

    fn send(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).expect("write to the server");
    }

    /// Opens `stream` with a GET of `path`.
    pub fn get(&mut self, stream: u32, path: &str) {
        self.get_with(stream, path, &[]);
    }

    /// Opens `stream` with a GET of `path` and these more fields.
    pub fn get_with(&mut self, stream: u32, path: &str, more: &[(&str, &str)]) {
        let fields = [
            (":method", &b"GET"[..]),
            (":scheme", b"http"),
            (":path", path.as_bytes()),
            (":authority", b"localhost"),
            ("user-agent", b"h2c-test"),
        ];
        let more = more.iter().map(|(name, value)| (*name, value.as_bytes()));
        let flags = frame::END_HEADERS | frame::END_STREAM;
        self.send(&frame::frame(Kind::Headers, flags, stream, &encode_block(fields.into_iter().chain(more))));
    }

    /// The next frame read (not one an earlier wait passed over), `None` when none came within
    /// `within` or the server closed.
    pub fn next(&mut self, within: Duration) -> Option<Frame> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(frame) = self.take() {
                return Some(frame);
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut chunk = [0; 16 * 1024];
            match self.socket.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
    }

    fn take(&mut self) -> Option<Frame> {
        let head = Head::parse(self.input.get(..HEAD_LEN)?.try_into().unwrap());
        let payload = self.input.get(HEAD_LEN..HEAD_LEN + head.len)?.to_vec();
        self.input.drain(..HEAD_LEN + head.len);
        let mut fields = Vec::new();
        if head.kind == Kind::Headers as u8 {
            self.decoder
                .decode_with_cb(&payload, |name, value| {
                    fields
                        .push((String::from_utf8_lossy(&name).into(), String::from_utf8_lossy(&value).into()))
                })
                .expect("the server's header block decodes");
        }
        Some(Frame { head, payload, fields })
    }

    /// The first frame `wanted` takes, of those passed over by earlier waits, then of those that
    /// come (the others kept for the next wait); panics when none comes in time.
    pub fn until(&mut self, what: &str, wanted: impl Fn(&Frame) -> bool) -> Frame {
        if let Some(at) = self.passed.iter().position(&wanted) {
            return self.passed.remove(at);
        }
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.next(Duration::from_millis(200)) {
                Some(frame) if wanted(&frame) => return frame,
                Some(frame) => self.passed.push(frame),
                None if self.closed() => panic!("the server closed the connection before {what}"),
                None => {}
            }
        }
        panic!("no {what} within {WAIT:?}")
    }

    /// The SSE text of the DATA frames on `stream`, until one holds `text`.
    pub fn data_until(&mut self, stream: u32, text: &str) -> String {
        let mut got = String::new();
        while !got.contains(text) {
            let frame =
                self.until(&format!("DATA with {text:?} on stream {stream}"), |f| f.is(Kind::Data, stream));
            got.push_str(&String::from_utf8_lossy(&frame.payload));
        }
        got
    }

    fn closed(&mut self) -> bool {
        let mut byte = [0; 1];
        self.socket.set_nonblocking(true).unwrap();
        let closed = matches!(self.socket.peek(&mut byte), Ok(0));
        self.socket.set_nonblocking(false).unwrap();
        closed
    }
}

/// Waits until the status says `key` is `expected`.
fn wait_status(server: &Server, key: &str, expected: u64) {
    let status = server.wait_json("tcpstatus", key, expected);
    assert_eq!(status[key], expected, "{key} in {status}");
}

#[test]
fn several_event_sources_share_one_connection_and_each_gets_every_event() {
    let server = Server::start(&[]);
    let mut client = Client::connect(&server, &[]);
    client.get(1, "/sse?subscribe=room&id=tab1");
    client.get(3, "/sse?subscribe=room-other&id=tab2");
    for stream in [1, 3] {
        let head = client.until("the handshake", |f| f.is(Kind::Headers, stream));
        assert_eq!(head.status(), Some("200"));
        assert!(
            head.fields.contains(&("content-type".into(), "text/event-stream".into())),
            "{:?}",
            head.fields
        );
        assert!(head.fields.iter().all(|(name, _)| name != "connection" && name != "transfer-encoding"));
    }
    wait_status(&server, "http2streams", 2);
    server.publish("room=hello");
    server.publish("other=just two");
    assert!(client.data_until(1, "data: hello").starts_with("id: "));
    let second = client.data_until(3, "data: just two");
    assert!(second.contains("data: hello\n\n"), "{second:?}");
    assert!(!second.contains("\r\n"), "no chunk framing inside DATA: {second:?}");

    let status = server.tcp_json("tcpstatus");
    assert_eq!((status["http2conncli"].as_u64(), status["sseconncli"].as_u64()), (Some(1), Some(2)));
    let list = server.tcp_json("tcpclientlist");
    let rows = list["clients"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{list}");
    assert_eq!(rows[0]["fd"], rows[1]["fd"], "one connection: {list}");
    let mut streams: Vec<u64> = rows.iter().map(|row| row["h2stream"].as_u64().unwrap()).collect();
    streams.sort();
    assert_eq!(streams, [1, 3]);
}

#[test]
fn a_refusal_ends_its_stream_with_the_reason_and_the_connection_goes_on() {
    let server = Server::start(&[]);
    let mut client = Client::connect(&server, &[]);
    client.get(1, "/sse?subscribe=");
    let head = client.until("the refusal", |f| f.is(Kind::Headers, 1));
    assert_eq!(head.status(), Some("400"));
    let body = client.until("the reason", |f| f.is(Kind::Data, 1));
    assert_eq!(String::from_utf8_lossy(&body.payload), "no subscribe token\n");
    client.get(3, "/nowhere");
    assert_eq!(client.until("the 404", |f| f.is(Kind::Headers, 3)).status(), Some("404"));
    client.get(5, "/sse?subscribe=t");
    assert_eq!(client.until("the handshake", |f| f.is(Kind::Headers, 5)).status(), Some("200"));
    wait_status(&server, "sseconncli", 1);
    server.publish("t=still here");
    client.data_until(5, "data: still here");
    server.log.wait_for_line(
        |line| line.contains("Subscription refused") || line.contains("Request refused"),
        WAIT,
    );
}

#[test]
fn a_stream_whose_window_stays_shut_is_reset_alone() {
    let server = Server::start(&[]);
    let mut client = Client::connect(&server, &[(setting::INITIAL_WINDOW_SIZE, 0)]);
    client.get(1, "/sse?subscribe=t&id=shut");
    client.get(3, "/sse?subscribe=t&id=open");
    client.send(&frame::window_update(3, 1 << 20));
    wait_status(&server, "sseconncli", 2);
    server.publish("t=first");
    client.data_until(3, "data: first");
    let reset = client.until("the shut stream's reset", |f| f.is(Kind::RstStream, 1));
    assert_eq!(reset.code(), ErrorCode::Cancel as u32);
    server.publish("t=second");
    client.data_until(3, "data: second");
    server.log.wait_for_line(|line| line.contains("Slow stream reset") && line.contains("stall time"), WAIT);
    assert_eq!(server.tcp_json("tcpstatus")["droppedslowstreams"], 1);
}

#[test]
fn max_age_ends_a_stream_and_not_its_connection() {
    let server = Server::start(&["--max-age", "1"]);
    let mut client = Client::connect(&server, &[]);
    client.get(1, "/sse?subscribe=t");
    let end = client.until("the stream's end", |f| f.is(Kind::Data, 1) && f.head.has(frame::END_STREAM));
    assert!(end.payload.is_empty());
    client.get(3, "/sse?subscribe=t");
    assert_eq!(client.until("a new stream", |f| f.is(Kind::Headers, 3)).status(), Some("200"));
}

#[test]
fn streams_count_against_the_connection_limits() {
    let server = Server::start(&["--max-connections-per-ip", "2"]);
    let mut client = Client::connect(&server, &[]);
    client.get(1, "/sse?subscribe=t");
    client.get(3, "/sse?subscribe=t");
    client.get(5, "/sse?subscribe=t");
    assert_eq!(client.until("stream 3", |f| f.is(Kind::Headers, 3)).status(), Some("200"));
    let refused = client.until("stream 5's refusal", |f| f.is(Kind::Headers, 5));
    assert_eq!(refused.status(), Some("503"));
    assert!(refused.fields.iter().any(|(name, _)| name == "retry-after"), "{:?}", refused.fields);
}

#[test]
fn a_flood_of_pings_is_told_to_calm_down_and_closed() {
    let server = Server::start(&[]);
    let mut client = Client::connect(&server, &[]);
    let ping = frame::frame(Kind::Ping, 0, 0, &[7; 8]);
    client.send(&ping.repeat(1200));
    let goaway = client.until("GOAWAY", |f| f.head.kind == Kind::GoAway as u8);
    assert_eq!(goaway.code(), ErrorCode::EnhanceYourCalm as u32);
    server.log.wait_for_line(|line| line.contains("flood of PING frames"), WAIT);
    assert!(client.next(WAIT).is_none(), "the connection closes after GOAWAY");
}

#[test]
fn without_http2_the_preface_is_refused_as_before() {
    let server = Server::start(&["--no-http2"]);
    let reply = server.request(&[PREFACE, &frame::settings(&[])].concat());
    assert_eq!(reply.head.status, 501, "{:?}", reply.head);
}

#[test]
fn a_stream_resumes_from_its_last_event_id() {
    let server = Server::start(&[]);
    server.publish("t=one");
    server.publish("t=two");
    let mut first = Client::connect(&server, &[]);
    first.get(1, "/sse?subscribe=t&lastEventId=earliest");
    let replay = first.data_until(1, "data: two");
    let id_of_one = replay.lines().next().unwrap().trim_start_matches("id: ").to_owned();
    let mut again = Client::connect(&server, &[]);
    again.get_with(1, "/sse?subscribe=t", &[("last-event-id", &id_of_one)]);
    let resumed = again.data_until(1, "data: two");
    assert!(!resumed.contains("data: one") && !resumed.contains("event: reset"), "{resumed:?}");
}

#[test]
fn a_disconnect_order_resets_its_stream_and_spares_the_connections_others() {
    let server = Server::start(&["--presence-events", "--presence-debounce", "0.2"]);
    let mut client = Client::connect(&server, &[]);
    client.get(1, "/sse?subscribe=room&id=watcher");
    client.get(3, "/sse?subscribe=room&id=u42");
    wait_status(&server, "sseconncli", 2);
    assert_eq!(server.tcp_json("tcppresencecount:room")["count"], 2);
    let answer = server.control("disconnect id=u42\n");
    assert!(answer.contains("\"disconnected\":1"), "{answer}");
    let reset = client.until("stream 3's reset", |f| f.is(Kind::RstStream, 3));
    assert_eq!(reset.code(), ErrorCode::Cancel as u32);
    client.data_until(1, "event: leave");
    server.publish("room=after");
    client.data_until(1, "data: after");
}

#[test]
fn a_stop_says_goaway_then_ends_each_stream_with_a_time_to_come_back() {
    let mut server = Server::start(&["--drain-secs", "1"]);
    let mut client = Client::connect(&server, &[]);
    client.get(1, "/sse?subscribe=t");
    client.get(3, "/sse?subscribe=t");
    wait_status(&server, "sseconncli", 2);
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let goaway = client.until("GOAWAY", |f| f.head.kind == Kind::GoAway as u8);
    assert_eq!((goaway.code(), &goaway.payload[..4]), (ErrorCode::NoError as u32, &3u32.to_be_bytes()[..]));
    for stream in [1, 3] {
        assert!(client.data_until(stream, "retry: ").contains("\n\n"));
        client.until("the stream's end", |f| f.is(Kind::Data, stream) && f.head.has(frame::END_STREAM));
    }
    assert!(client.next(WAIT).is_none(), "the connection closes once its streams ended");
    assert!(server.wait_exit(WAIT).is_some_and(|status| status.success()));
}

#[test]
fn a_stream_holding_back_more_than_the_backlog_is_reset_at_once() {
    let server = Server::start(&["--max-backlog", "4096"]);
    let mut client = Client::connect(&server, &[(setting::INITIAL_WINDOW_SIZE, 0)]);
    client.get(1, "/sse?subscribe=t");
    wait_status(&server, "sseconncli", 1);
    let started = Instant::now();
    server.publish(&format!("t={}", "x".repeat(5000)));
    let reset = client.until("the reset", |f| f.is(Kind::RstStream, 1));
    assert_eq!(reset.code(), ErrorCode::Cancel as u32);
    assert!(started.elapsed() < WAIT);
    server.log.wait_for_line(
        |line| line.contains("Slow stream reset") && line.contains("over --max-backlog"),
        WAIT,
    );
}

#[test]
fn a_connection_whose_socket_takes_nothing_is_dropped_as_a_slow_client() {
    let server = Server::start(&["--max-backlog", "65536"]);
    let mut deaf = Client::connect(&server, &[(setting::INITIAL_WINDOW_SIZE, frame::MAX_WINDOW)]);
    deaf.get(1, "/sse?subscribe=t&id=deaf");
    deaf.until("the handshake", |f| f.is(Kind::Headers, 1));
    wait_status(&server, "sseconncli", 1);
    // Never read again: the kernel's buffers fill, then the connection's queue.
    let mut control = TcpStream::connect(("127.0.0.1", server.cport())).unwrap();
    let line = format!("t={}\n", "x".repeat(60_000));
    for _ in 0..400 {
        if control.write_all(line.as_bytes()).is_err() {
            break;
        }
        if server.log.has_from(0, |l| l.starts_with("Slow client dropped")) {
            break;
        }
    }
    server.log.wait_for_line(|l| l.starts_with("Slow client dropped"), WAIT);
    assert_eq!(server.tcp_json("tcpstatus")["droppedslowcli"], 1);
    wait_status(&server, "http2conncli", 0);
}

#[test]
fn each_stream_gets_heartbeats_and_the_cors_headers() {
    let server = Server::start(&["--heartbeat", "1", "--cors-base", "https://app.example"]);
    let mut client = Client::connect(&server, &[]);
    client.get(1, "/sse?subscribe=t");
    client.get(3, "/sse?subscribe=u");
    for stream in [1, 3] {
        let head = client.until("the handshake", |f| f.is(Kind::Headers, stream));
        let origin = ("access-control-allow-origin".to_owned(), "https://app.example".to_owned());
        assert!(head.fields.contains(&origin), "{:?}", head.fields);
    }
    for stream in [1, 3] {
        assert_eq!(client.data_until(stream, ":\n\n"), ":\n\n");
    }
}
