//! Bursts: a client whose socket keeps taking bytes is never dropped, however large the burst;
//! a client that reads nothing is cut at the cap; memory stays bounded meanwhile.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::*;

/// Long enough for megabytes through a debug build on a loaded two-core machine.
const BURST_WAIT: Duration = Duration::from_secs(60);

/// `t=<n>:<size bytes>`: a numbered event whose data shows whether it arrived whole.
fn event_line(n: usize, size: usize) -> String {
    let number = format!("{n}:");
    format!("t={number}{}\n", "x".repeat(size.saturating_sub(number.len())))
}

/// Writes `count` events of `size` bytes down one control connection, as fast as it takes them.
fn publish_burst(port: u16, count: usize, size: usize) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut control = TcpStream::connect(("127.0.0.1", port)).unwrap();
        control.set_write_timeout(Some(BURST_WAIT)).unwrap();
        let mut batch = String::new();
        for n in 0..count {
            batch.push_str(&event_line(n, size));
            if batch.len() >= 64 * 1024 {
                control.write_all(batch.as_bytes()).unwrap();
                batch.clear();
            }
        }
        control.write_all(batch.as_bytes()).unwrap();
    })
}

/// Reads `count` events on its own thread, asserting each is whole and in order; hands the
/// client back, still connected.
fn read_all(mut client: SseClient, count: usize, size: usize) -> JoinHandle<SseClient> {
    thread::spawn(move || {
        for n in 0..count {
            let event = client.try_next_event(BURST_WAIT).unwrap_or_else(|why| panic!("event {n}: {why:?}"));
            let number = format!("{n}:");
            assert!(event.data.starts_with(&number), "event {n} out of order: {:.20}", event.data);
            assert_eq!(event.data.len(), size.max(number.len()), "event {n} not whole");
        }
        client
    })
}

/// Subscribes `readers` clients to `t`, publishes `count` events of `size` bytes in one burst,
/// and asserts every reader got every event and is still connected, and nobody was dropped.
fn burst_reaches_every_reader(readers: usize, count: usize, size: usize) {
    let server = Server::start(&[]);
    let clients: Vec<SseClient> =
        (0..readers).map(|i| server.subscribe(&format!("subscribe=t&id=r{i}"))).collect();
    server.wait_json("tcpstatus", "sseconncli", readers as u64);
    let reading: Vec<_> = clients.into_iter().map(|c| read_all(c, count, size)).collect();
    publish_burst(server.cport(), count, size).join().expect("the publisher wrote everything");
    let mut clients: Vec<SseClient> =
        reading.into_iter().map(|r| r.join().expect("a reader got it all")).collect();
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["droppedslowcli"], 0, "{status}");
    assert_eq!(status["sseconncli"], readers as u64, "{status}");
    server.publish("t=still here");
    for client in &mut clients {
        client.expect_data("still here");
    }
}

#[test]
fn one_reader_gets_a_burst_of_large_events() {
    burst_reaches_every_reader(1, 2500, 8000);
}

#[test]
fn twenty_readers_get_a_burst_of_large_events() {
    burst_reaches_every_reader(20, 400, 8000);
}

#[test]
fn fifty_readers_get_a_long_burst_of_small_events() {
    burst_reaches_every_reader(50, 20_000, 100);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A subscriber to `t` (id `deaf`) with a tiny receive buffer that reads nothing after the
/// handshake.
fn non_reader(server: &Server) -> SseClient {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.sse_port).parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut deaf = SseClient::from_stream(socket.into());
    deaf.handshake(get_request("subscribe=t&id=deaf").as_bytes());
    deaf
}

#[test]
fn a_client_that_reads_nothing_is_cut_while_readers_go_on_in_bounded_memory() {
    const COUNT: usize = 2500;
    const SIZE: usize = 8000;
    let server = Server::start(&[]);
    let mut deaf = non_reader(&server);
    let readers: Vec<SseClient> = (0..4).map(|i| server.subscribe(&format!("subscribe=t&id=r{i}"))).collect();
    server.wait_json("tcpstatus", "sseconncli", 5);
    let before = rss_kib(server.pid());

    let reading: Vec<_> = readers.into_iter().map(|c| read_all(c, COUNT, SIZE)).collect();
    let publishing = publish_burst(server.cport(), COUNT, SIZE);
    let mut peak = before;
    let deadline = Instant::now() + BURST_WAIT;
    while !publishing.is_finished() && Instant::now() < deadline {
        peak = peak.max(rss_kib(server.pid()));
        thread::sleep(Duration::from_millis(20));
    }
    publishing.join().expect("the publisher wrote everything");
    let _readers: Vec<SseClient> =
        reading.into_iter().map(|r| r.join().expect("a reader got it all")).collect();
    assert!(peak - before < 64 * 1024, "RSS grew by {} KiB during the burst", peak - before);

    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["droppedslowcli"], 1, "{status}");
    assert_eq!(status["sseconncli"], 4, "{status}");
    server.log.wait_for_line(|l| l.starts_with("Slow client dropped") && l.contains("id: deaf"), WAIT);
    assert!(deaf.wait_closed(WAIT), "the non-reader's connection was closed");
}

/// A client cut as too slow is reset, not closed: what the kernel had queued for it is thrown
/// away, so it stops receiving at once (it reads at most what its own receive buffer held) and
/// sees the cut as a reset; with a plain close it would go on receiving the server's whole send
/// buffer, megabytes, seconds after the log line.
#[test]
fn a_client_cut_as_too_slow_is_reset_and_gets_nothing_more() {
    let server = Server::start(&["--max-backlog", "65536"]);
    let mut deaf = non_reader(&server);
    let payload = "x".repeat(8000);
    let deadline = Instant::now() + BURST_WAIT;
    while server.tcp_json("tcpstatus")["droppedslowcli"] == 0 {
        assert!(Instant::now() < deadline, "the non-reader was never cut");
        server.control(&format!("t={payload}\n").repeat(64));
        thread::sleep(Duration::from_millis(100));
    }
    let (mut got, mut chunk) = (0, [0u8; 64 * 1024]);
    let ended = loop {
        match deaf.stream.read(&mut chunk) {
            Ok(0) => break None,
            Ok(n) => got += n,
            Err(e) => break Some(e.kind()),
        }
    };
    assert_eq!(ended, Some(std::io::ErrorKind::ConnectionReset), "after {got} bytes");
    assert!(got < 256 * 1024, "{got} bytes still arrived after the cut");
}

#[test]
fn a_stream_at_its_maximum_age_ends_with_the_last_chunk() {
    let server = Server::start(&["--max-age", "1"]);
    let mut client = server.subscribe("subscribe=t");
    let stream = read_to_eof(&mut client.stream, Vec::new(), WAIT).expect("the server closed the stream");
    assert!(stream.ends_with(b"0\r\n\r\n"), "no last chunk: {:?}", String::from_utf8_lossy(&stream));
    server.log.wait_for_line(|l| l.contains("maximum connection age reached"), WAIT);
}
