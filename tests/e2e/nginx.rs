//! nginx (Debian package `nginx`) in front of hasses, configured with the shipped
//! `deploy/nginx/hasses.conf`: events pass through at once, heartbeats keep an idle stream open
//! past nginx's `proxy_read_timeout`, and a stopped hasses looks to browsers like a network error
//! (which they retry) rather than a 502 (which ends an EventSource for good).
//!
//! nginx runs in the foreground as this user, on a free loopback port, with every file in a
//! temporary directory; the shipped location block is included as it is, but for the upstream
//! port and a `proxy_read_timeout` of 2 s, so that timing out takes seconds, not minutes.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, Server};
use crate::programs::{find_program, repo_file, settings, End, EventStream, Item, Process, TempDir};

/// The shipped configuration's file.
const SHIPPED: &str = "deploy/nginx/hasses.conf";
/// The read timeout the tests give nginx instead of the shipped one.
const READ_TIMEOUT_SECS: u64 = 2;
/// How quickly an event must come through the proxy ("at once", with room for a loaded CI).
const PROMPT: Duration = Duration::from_millis(1000);

/// A running nginx and the directory that holds its files.
pub(crate) struct Nginx {
    port: u16,
    pub(crate) process: Process,
    _dir: TempDir,
}

impl Nginx {
    /// Starts nginx with `http` added to its `http { }` block and `server` inside its one
    /// `server { }` block (which listens on a free loopback port).
    pub(crate) fn start(http: &str, server: &str) -> Nginx {
        let nginx = find_program("nginx", "nginx");
        let (process, port, dir) = Process::start_listening("nginx", |dir, port| {
            let d = dir.path().display();
            let conf = format!(
                "worker_processes 1;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n\
                 access_log {d}/access.log;\n\
                 client_body_temp_path {d}/client_body;\n\
                 proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n\
                 {http}\n\
                 server {{\n\
                 listen 127.0.0.1:{port};\n\
                 {server}\n\
                 }}\n\
                 }}\n"
            );
            let conf = dir.write("nginx.conf", &conf);
            let mut command = Command::new(&nginx);
            command.arg("-p").arg(dir.path()).arg("-c").arg(&conf).arg("-e").arg(dir.join("error.log"));
            command.args(["-g", "daemon off;"]);
            command
        });
        Nginx { port, process, _dir: dir }
    }

    /// nginx in front of the hasses on `upstream_port`, with the shipped location block.
    fn shipped(upstream_port: u16, http: &str) -> Nginx {
        let dir = TempDir::new("nginx-include");
        let snippet = dir.write("hasses.conf", &shipped_location(upstream_port));
        let nginx = Nginx::start(http, &format!("include {};", snippet.display()));
        drop(dir); // nginx read the file while starting.
        nginx
    }

    /// Opens `GET /sse?QUERY` through nginx and asserts the event-stream answer.
    pub(crate) fn subscribe(&mut self, query: &str, extra_headers: &str) -> EventStream {
        EventStream::through(&self.process, self.port, query, extra_headers)
    }
}

/// The shipped location block, for hasses on `upstream_port` and with a short read timeout.
fn shipped_location(upstream_port: u16) -> String {
    let text = repo_file(SHIPPED);
    assert!(text.contains("127.0.0.1:8080"), "{SHIPPED} proxies to hasses on 127.0.0.1:8080");
    let timeouts = settings(&text).filter(|line| line.starts_with("proxy_read_timeout ")).count();
    assert_eq!(timeouts, 1, "{SHIPPED} sets proxy_read_timeout once");
    text.lines()
        .map(|line| {
            if line.trim_start().starts_with("proxy_read_timeout ") {
                format!("    proxy_read_timeout {READ_TIMEOUT_SECS}s;")
            } else {
                line.replace("127.0.0.1:8080", &format!("127.0.0.1:{upstream_port}"))
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The next event through `nginx`, skipping heartbeats: (id, data).
fn expect_event(
    stream: &mut EventStream,
    timeout: Duration,
    nginx: &Nginx,
    server: &Server,
) -> (u64, String) {
    stream.expect_event(timeout, || {
        format!("nginx:\n{}\nhasses:\n{}", nginx.process.output(), server.log.dump())
    })
}

#[test]
#[ignore = "needs nginx: run by the README's test command"]
fn events_pass_through_at_once() {
    let server = Server::start(&["--heartbeat", "0"]);
    let mut nginx = Nginx::shipped(server.sse_port, "");
    let mut stream = nginx.subscribe("subscribe=news&id=browser1", "");
    let mut last_id = 0;
    for n in 0..5 {
        let sent = Instant::now();
        server.publish(&format!("news=event {n}"));
        let (id, data) = expect_event(&mut stream, PROMPT, &nginx, &server);
        assert!(sent.elapsed() < PROMPT, "event {n} took {:?}", sent.elapsed());
        assert_eq!(data, format!("event {n}"));
        assert!(id > last_id, "ids increase: {id} after {last_id}");
        last_id = id;
    }
    // A message larger than nginx's proxy buffer (one memory page) arrives whole, at once.
    let big = "x".repeat(40_000);
    server.publish(&format!("news={big}"));
    let (_, data) = expect_event(&mut stream, PROMPT, &nginx, &server);
    assert_eq!(data.len(), big.len(), "the large event arrives whole");
    // Only what was published: no other event or comment is on the stream.
    assert_eq!(stream.next_item(Duration::from_millis(200)), Err(End::Timeout));
}

#[test]
#[ignore = "needs nginx: run by the README's test command"]
fn compression_elsewhere_on_the_site_does_not_hold_events_back() {
    // A site that compresses event streams would hold events until a compression block fills;
    // the shipped location turns compression off for the SSE path.
    let server = Server::start(&["--heartbeat", "0"]);
    let mut nginx =
        Nginx::shipped(server.sse_port, "gzip on; gzip_types text/event-stream; gzip_min_length 0;");
    let mut stream = nginx.subscribe("subscribe=news", "Accept-Encoding: gzip\r\n");
    assert_eq!(stream.header("content-encoding"), None, "the stream is not compressed");
    server.publish("news=hello");
    let (_, data) = expect_event(&mut stream, PROMPT, &nginx, &server);
    assert_eq!(data, "hello");
}

#[test]
#[ignore = "needs nginx: run by the README's test command"]
fn heartbeats_keep_an_idle_stream_open_past_the_read_timeout() {
    let server = Server::start(&["--heartbeat", "0.5"]);
    let mut nginx = Nginx::shipped(server.sse_port, "");
    let mut stream = nginx.subscribe("subscribe=quiet", "");
    let idle = Duration::from_secs(READ_TIMEOUT_SECS) + Duration::from_millis(1500);
    let deadline = Instant::now() + idle;
    let mut comments = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match stream.next_item(left) {
            Ok(Item::Comment(_)) => comments += 1,
            Ok(item) => panic!("nothing was published, yet {item:?} arrived"),
            Err(End::Timeout) => break,
            Err(End::Closed) => panic!(
                "nginx closed the idle stream after {comments} heartbeats\n{}\n{}",
                nginx.process.output(),
                server.log.dump()
            ),
        }
    }
    assert!(comments >= 4, "a heartbeat every 0.5 s for {idle:?}, got {comments}");
    server.publish("quiet=still here");
    let (_, data) = expect_event(&mut stream, PROMPT, &nginx, &server);
    assert_eq!(data, "still here");
}

#[test]
#[ignore = "needs nginx: run by the README's test command"]
fn without_heartbeats_nginx_closes_an_idle_stream() {
    // The other side of the test above: the shortened timeout is really in force.
    let server = Server::start(&["--heartbeat", "0"]);
    let mut nginx = Nginx::shipped(server.sse_port, "");
    let opened = Instant::now();
    let mut stream = nginx.subscribe("subscribe=quiet", "");
    let end = stream.next_item(Duration::from_secs(READ_TIMEOUT_SECS + 3));
    assert_eq!(end, Err(End::Closed), "nginx ends an idle stream after proxy_read_timeout");
    let after = opened.elapsed();
    assert!(after >= Duration::from_millis(READ_TIMEOUT_SECS * 1000 - 200), "closed after only {after:?}");
}

#[test]
#[ignore = "needs nginx: run by the README's test command"]
fn a_stopped_hasses_is_a_network_error_not_a_502() {
    // Nothing listens on the upstream port: nginx must close without a status line, which an
    // EventSource retries, instead of answering 502, after which it gives up.
    let mut nginx = Nginx::shipped(common::free_port(), "");
    let answer = EventStream::open(nginx.port, "/sse?subscribe=a", "");
    if let Some(answer) = answer {
        panic!("expected no answer, got status {}\n{}", answer.status, nginx.process.output());
    }
    assert!(nginx.process.running(), "nginx still runs");
}
