//! A stop that does not become a reconnect storm (issue 22, `--drain-secs`): at SIGTERM each
//! stream is told to come back after a random wait (`retry:`) and ended, a few at a time over
//! at most the drain time; a server with few streams stops at once; with `--drain-secs 0`, and
//! by default with hasses' legacy flags, every connection is closed at once as hasses did.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::{read_to_eof, Server, SseClient, WAIT};

/// What a stream received after its handshake, read to its end, and when it ended.
fn rest_of(client: &mut SseClient) -> (String, Instant) {
    let bytes = read_to_eof(&mut client.stream, Vec::new(), WAIT).expect("the stream ends");
    (String::from_utf8_lossy(&bytes).into_owned(), Instant::now())
}

/// The `retry:` a stream was told before its end, if any.
fn retry_of(rest: &str) -> Option<u32> {
    let at = rest.find("retry: ")? + "retry: ".len();
    rest[at..].split('\n').next()?.parse().ok()
}

#[test]
fn each_stream_is_told_when_to_come_back_then_ended_and_the_server_stops_at_once() {
    let mut server = Server::start(&[]);
    let mut clients: Vec<SseClient> =
        (0..30).map(|i| server.subscribe(&format!("subscribe=t&id=c{i}"))).collect();
    server.wait_json("tcpstatus", "sseconncli", 30);
    let stopped = Instant::now();
    server.signal(Signal::SIGTERM);
    let mut waits = Vec::new();
    for client in &mut clients {
        let (rest, _) = rest_of(client);
        assert!(rest.ends_with("0\r\n\r\n"), "the stream ends as HTTP says: {rest:?}");
        waits.push(retry_of(&rest).unwrap_or_else(|| panic!("no retry: {rest:?}")));
    }
    assert!(waits.iter().all(|w| (1000..6000).contains(w)), "{waits:?}");
    waits.sort_unstable();
    waits.dedup();
    assert!(waits.len() > 20, "the waits are drawn, not one for all: {waits:?}");
    let status = server.wait_exit(WAIT).expect("the server exits");
    assert!(status.success(), "{status:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "30 streams need no drain time: {:?}",
        stopped.elapsed()
    );
    server.log.wait_for_line(|l| l.contains("ending") && l.contains("streams over at most 5s"), WAIT);
}

#[test]
fn many_streams_end_spread_over_the_drain_time() {
    const STREAMS: usize = 1500;
    let mut server = Server::start(&["--drain-secs", "1.5", "--workers", "1"]);
    let mut clients: Vec<SseClient> =
        (0..STREAMS).map(|i| server.subscribe(&format!("subscribe=t&id=c{i}"))).collect();
    server.wait_json("tcpstatus", "sseconncli", STREAMS as u64);
    let stopped = Instant::now();
    server.signal(Signal::SIGTERM);
    // Read in the order they are ended (the shard ends them in its slab's order, as they came).
    let ended: Vec<Duration> = clients.iter_mut().map(|c| rest_of(c).1 - stopped).collect();
    let (first, last) = (ended[0], ended[STREAMS - 1]);
    assert!(first < Duration::from_millis(300), "the first ends at once: {first:?}");
    // 1,500 at 1,000 a second at the least: spread over the 1.5 s, not all at once.
    assert!(last > Duration::from_millis(1000) && last < Duration::from_millis(2500), "the last: {last:?}");
    assert!(server.wait_exit(WAIT).is_some_and(|s| s.success()));
}

#[test]
fn without_a_drain_time_every_connection_is_closed_at_once_as_hasses_did() {
    let modern = || Server::start(&["--drain-secs", "0"]);
    let legacy = || Server::start_exact(&["-p=0", "-murl=/sse", "-cp=0", "-nodaemon"]);
    for (flags, start) in [("--drain-secs 0", &modern as &dyn Fn() -> Server), ("legacy flags", &legacy)] {
        let mut server = start();
        let mut client = server.subscribe("subscribe=t");
        server.wait_json("tcpstatus", "sseconncli", 1);
        server.signal(Signal::SIGTERM);
        let (rest, _) = rest_of(&mut client);
        assert_eq!(retry_of(&rest), None, "{flags:?}: {rest:?}");
        assert!(server.wait_exit(WAIT).is_some(), "{flags:?}");
    }
}
