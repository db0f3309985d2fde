//! What operations rely on: heartbeats on idle streams, and readiness told to systemd.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::common::{self, connect, get_request, Server};

const HEARTBEAT: &[u8] = b"3\r\n:\n\n\r\n";

/// Reads from a fresh subscription for `window`, returning everything that arrived.
fn stream_for(server: &Server, window: Duration) -> Vec<u8> {
    let mut stream = connect(server.sse_port);
    std::io::Write::write_all(&mut stream, get_request("subscribe=idle").as_bytes()).unwrap();
    let deadline = Instant::now() + window;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
    received
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn an_idle_stream_gets_heartbeat_comments() {
    let server = Server::start(&["--heartbeat", "0.3", "--workers", "1"]);
    let received = stream_for(&server, Duration::from_millis(1500));
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&received));
    let beats = count(&received, HEARTBEAT);
    assert!((2..=6).contains(&beats), "{beats} heartbeats in 1.5 s at 0.3 s");
    // Comments are not messages: nothing was sent as far as the figures go.
    assert_eq!(server.tcp_json("tcpstatus")["msgsendcnt"], 0);
}

#[test]
fn heartbeat_zero_sends_none() {
    let server = Server::start(&["--heartbeat", "0"]);
    let received = stream_for(&server, Duration::from_millis(800));
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(count(&received, HEARTBEAT), 0);
}

#[test]
fn readiness_and_stopping_are_told_to_systemd() {
    // Server::start has waited for READY=1 and taken the ports from its message.
    let mut server = Server::start(&["--log-level", "0", "--bind", "127.0.0.1"]);
    let (sse, control, api) = (server.sse_port, server.cport(), server.api_port());
    let ready = &server.ready;
    let expected =
        format!("SSE on 127.0.0.1:{sse} path /sse, control on 127.0.0.1:{control}, API on 127.0.0.1:{api}");
    assert_eq!(ready.value("STATUS"), Some(expected.as_str()), "what `systemctl status` shows");
    assert_eq!(ready.value("X_HASSES_SSE"), Some(format!("127.0.0.1:{sse}").as_str()));
    assert_eq!(ready.value("X_HASSES_CONTROL"), Some(format!("127.0.0.1:{control}").as_str()));
    assert_eq!(ready.value("X_HASSES_API"), Some(format!("127.0.0.1:{api}").as_str()));
    server.signal(nix::sys::signal::SIGTERM);
    assert_eq!(server.notify.receive(common::WAIT).as_deref(), Some("STOPPING=1"));
    assert!(server.wait_exit(common::WAIT).is_some_and(|status| status.success()));
}

#[test]
fn deferred_accepts_still_serve_and_leave_silent_connections_uncounted() {
    let server = Server::start(&["--defer-accept", "5"]);
    let _silent = connect(server.sse_port);
    let mut client = server.subscribe("subscribe=a");
    server.publish("a=hello");
    client.expect_data("hello");
    // The kernel holds the silent connection until it sends its request.
    assert_eq!(server.tcp_json("tcpnumberofclients")["numberofclients"], 1);
}
