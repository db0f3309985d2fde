//! A connection's life after the handshake (spec §4): reinit on and off, the handshake timeout,
//! the maximum age, slow clients dropped at the backlog cap, and closing.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{self, connect, Server, SseClient, WAIT};

/// Sends a reinit request and returns the response head that follows in the stream.
fn reinit(client: &mut SseClient, query: &str) -> common::Head {
    client.send(format!("GET /sse?{query} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n").as_bytes());
    client.read_head(WAIT).expect("a new response head on the same connection")
}

#[test]
fn reinit_replaces_subscriptions_on_the_same_connection() {
    let server = Server::start(&["--reinit"]);
    let mut client = server.subscribe("subscribe=a&id=first");
    server.publish("a=1");
    client.expect_data("1");

    let head = reinit(&mut client, "subscribe=b&id=second");
    assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    assert_eq!(head.header("Content-Type"), Some("text/event-stream"));
    assert_eq!(head.header("Transfer-Encoding"), Some("chunked"));
    server.publish("a=2;b=3;*-second=4;*-first=5");
    client.expect_data("3");
    client.expect_data("5");

    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["reinitcnt"], 1, "{status}");
    assert_eq!(status["sseconncli"], 1, "{status}");
    assert_eq!(status["allconncli"], 1, "{status}");
    let rows = server.tcp_json("tcpclientlist")["clients"].clone();
    assert_eq!(rows[0]["reinits"], 1, "{rows}");
    assert_eq!(rows[0]["tokens"], serde_json::json!(["b"]), "{rows}");
    assert_eq!(rows[0]["id"], "second", "{rows}");
    assert_eq!(server.tcp_json("tcpsubscribedclients:a")["subscribedclients"], 0);

    let start = server.log.len();
    server.publish("status;clientlist");
    server.log.wait_for_line_from(start, |l| l == "Total reinit connection: 1", WAIT);
    server.log.wait_for_line_from(
        start,
        |l| l.starts_with("#1 - <") && l.contains(" Reinit: 1 SSL:No"),
        WAIT,
    );
}

#[test]
fn reinit_request_may_arrive_in_pieces() {
    let server = Server::start(&["--reinit"]);
    let mut client = server.subscribe("subscribe=a");
    for piece in [&b"GE"[..], b"T /sse?subscr", b"ibe=c HTTP/1.1\r\n", b"\r\n"] {
        client.send(piece);
        std::thread::sleep(Duration::from_millis(30));
    }
    let head = client.read_head(WAIT).expect("the reinit response");
    assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    server.publish("a=old;c=new");
    client.expect_data("new");
}

#[test]
fn without_reinit_a_new_get_is_ignored() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=a");
    client.send(b"GET /sse?subscribe=b HTTP/1.1\r\n\r\n");
    // The next bytes must be an event chunk, not a response head.
    server.publish("b=no;a=still a");
    client.expect_data("still a");
    assert_eq!(server.tcp_json("tcpstatus")["reinitcnt"], 0);
}

#[test]
fn reinit_can_be_switched_at_run_time_and_only_get_counts() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=a");
    server.publish("reinit_enable");
    // Not a GET: ignored even with reinit allowed.
    client.send(b"POST /sse?subscribe=z HTTP/1.1\r\n\r\n");
    server.publish("z=no;a=one");
    client.expect_data("one");
    let head = reinit(&mut client, "subscribe=b");
    assert_eq!(head.status, 200);
    server.publish("reinit_disable");
    client.send(b"GET /sse?subscribe=c HTTP/1.1\r\n\r\n");
    server.publish("a=no;c=no;b=two");
    client.expect_data("two");
    assert_eq!(server.tcp_json("tcpstatus")["reinitcnt"], 1);
}

/// How long until the server closes `client`, or `None` if it is still open after `limit`.
fn closed_after(client: &mut SseClient, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    client.wait_closed(limit).then(|| started.elapsed())
}

/// How long a connection may stay open past a timeout of `seconds`. A deadline that only fires
/// at the shard's next event (the default heartbeat is 30 s away) or never shows as the limit
/// passing; a loaded machine may be a few seconds late, which is no bug.
fn past(seconds: u64) -> Duration {
    Duration::from_secs(seconds) + WAIT
}

#[test]
fn a_connection_that_does_not_handshake_is_closed_after_the_timeout() {
    let server = Server::start(&["--handshake-timeout", "1"]);
    let started = Instant::now();
    let mut silent = SseClient::connect(server.sse_port);
    let mut partial = SseClient::connect(server.sse_port);
    partial.send(b"GET /sse?subscribe=a HTTP/1.1\r\nHost: x\r\n");
    let mut streaming = server.subscribe("subscribe=a");
    assert!(closed_after(&mut silent, past(1)).is_some(), "the silent connection was closed");
    assert!(closed_after(&mut partial, past(1)).is_some(), "the unfinished request was closed");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "not before the timeout: {elapsed:?}");
    // A handshaked client is not subject to it.
    std::thread::sleep(Duration::from_millis(500));
    server.publish("a=alive");
    streaming.expect_data("alive");
    server.log.wait_for_line(|l| l.contains("handshake timeout"), WAIT);
    assert_eq!(server.wait_json("tcpnumberofclients", "numberofclients", 1)["numberofclients"], 1);
}

#[test]
fn a_handshaked_connection_is_closed_at_its_maximum_age() {
    let server = Server::start(&["--max-age", "1"]);
    let mut client = server.subscribe("subscribe=a");
    let started = Instant::now();
    server.publish("a=before");
    client.expect_data("before");
    let closed = closed_after(&mut client, past(1)).expect("closed at its maximum age");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "not before its age: {elapsed:?} ({closed:?})");
    assert_eq!(server.wait_json("tcpstatus", "sseconncli", 0)["sseconncli"], 0);
}

/// The ages wait in handshake order; the first one's stream closing before its age must not hold
/// up the next one's (its entry is taken out when it comes first, not when it would be due).
#[test]
fn a_stream_gone_before_its_age_does_not_hold_up_the_next() {
    let server = Server::start(&["--max-age", "2", "--workers", "1"]);
    let gone = server.subscribe("subscribe=a");
    let mut client = server.subscribe("subscribe=b");
    drop(gone);
    server.wait_json("tcpstatus", "sseconncli", 1);
    let started = Instant::now();
    closed_after(&mut client, past(2)).expect("closed at its maximum age");
    assert!(started.elapsed() >= Duration::from_millis(1500), "not before its age: {:?}", started.elapsed());
}

#[test]
fn a_reinit_restarts_the_age() {
    // The reinit comes halfway through the first age, and the check that the connection
    // outlived that age comes 0.3 s after it, 1.2 s before the reinit's: room for a slow machine
    // on either side.
    let server = Server::start(&["--max-age", "3", "--reinit"]);
    let mut client = server.subscribe("subscribe=a");
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let reinit_at = Instant::now();
    assert_eq!(reinit(&mut client, "subscribe=b").status, 200);
    // Past the first handshake's age, still open.
    std::thread::sleep(Duration::from_millis(3300).saturating_sub(started.elapsed()));
    server.publish("b=alive");
    client.expect_data("alive");
    closed_after(&mut client, past(3)).expect("closed at the reinit's age");
    let age = reinit_at.elapsed();
    assert!(age >= Duration::from_millis(2900), "closed before its age from the reinit: {age:?}");
}

#[test]
fn timeouts_beyond_the_clock_mean_never_and_crash_nothing() {
    // Deadlines this far off do not fit the clock: they must read as "never", not overflow.
    let huge = "10000000000000000000";
    let args = ["--max-age", huge, "--handshake-timeout", huge, "--heartbeat", huge, "--workers", "1"];
    let server = Server::start(&args);
    let mut half = connect(server.sse_port);
    half.write_all(b"GET /sse?subscribe=a HTTP/1.1\r\n").unwrap();
    let mut client = server.subscribe("subscribe=a");
    server.publish("a=still here");
    client.expect_data("still here");
    assert_eq!(server.tcp_json("tcpstatus")["allconncli"], 2);
}

#[test]
fn a_client_that_never_reads_is_dropped_at_the_backlog_cap() {
    let server = Server::start(&["--max-backlog", "65536"]);
    // The slow client: a tiny receive buffer, and it never reads after the handshake.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.sse_port).parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut slow = SseClient::from_stream(socket.into());
    slow.handshake(common::get_request("subscribe=t&id=slow").as_bytes());

    // The reader: reads everything, in order, on its own thread. The publisher waits for it
    // after each message, so it is never more than one message behind, however loaded the
    // machine: only the slow client can go over the cap.
    let mut reader = server.subscribe("subscribe=t&id=reader");
    let received = Arc::new(AtomicU32::new(0));
    let reading = {
        let received = Arc::clone(&received);
        std::thread::spawn(move || loop {
            let event = reader.next_event();
            if event.data == "done" {
                return reader;
            }
            let count = received.load(Ordering::SeqCst);
            assert_eq!(event.data.split(':').next(), Some(count.to_string().as_str()), "in order");
            received.store(count + 1, Ordering::SeqCst);
        })
    };
    let wait_for_reader = |count: u32| {
        let deadline = Instant::now() + WAIT;
        while received.load(Ordering::SeqCst) < count {
            assert!(Instant::now() < deadline, "the reader is stuck at {}", received.load(Ordering::SeqCst));
            std::thread::sleep(Duration::from_micros(200));
        }
    };

    let payload = "x".repeat(16 * 1024);
    let mut published = 0u32;
    let mut dropped = 0;
    while published < 2000 && dropped == 0 {
        server.publish(&format!("t={published}:{payload}"));
        published += 1;
        wait_for_reader(published);
        if published.is_multiple_of(8) {
            dropped = server.tcp_json("tcpstatus")["droppedslowcli"].as_u64().unwrap();
        }
    }
    assert_eq!(dropped, 1, "the slow client (only) was dropped, after {published} messages of 16 KiB");
    server.publish("t=done");
    let _reader = reading.join().expect("the reader received every message in order");
    assert_eq!(received.load(Ordering::SeqCst), published, "the reading client got every message");

    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["droppedslowcli"], 1, "{status}");
    assert_eq!(status["sseconncli"], 1, "{status}");
    assert!(slow.wait_closed(WAIT), "the slow client's connection was closed");
    server.log.wait_for_line(|l| l.contains("Slow client dropped") && l.contains("slow"), WAIT);
    let start = server.log.len();
    server.publish("status");
    server.log.wait_for_line_from(start, |l| l == "Dropped slow clients: 1", WAIT);
}

#[test]
fn a_closed_client_is_removed_from_every_subscription() {
    let server = Server::start(&[]);
    let gone = server.subscribe("subscribe=a-b-*&id=g");
    let mut stays = server.subscribe("subscribe=a");
    drop(gone);
    assert_eq!(server.wait_json("tcpstatus", "allconncli", 1)["allconncli"], 1);
    server.publish("a=1;b=2;*=3");
    stays.expect_data("1");
    stays.expect_data("3");
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["msgsendcnt"], 2, "{status}");
    assert_eq!(server.tcp_json("tcpsubscribedclients:b")["subscribedclients"], 0);
    server.log.wait_for_line(|l| l.starts_with("Connection closed"), WAIT);
}
