//! A real browser: headless Chromium (Debian package `chromium`) loads a page whose
//! `EventSource` subscribes to hasses on another origin (so CORS is exercised too), receives the
//! events published, each with its own id, and reconnects by itself when hasses restarts on the
//! same port, and resumes with every event once after `--max-age` closes its stream.
//!
//! The page (`tests/fixtures/eventsource.html`) is served by a small HTTP server inside the test,
//! on loopback, and reports everything its EventSource does with `fetch('/report')` to that same
//! server; the test reads the reports. Chromium runs with a fresh profile and without any of its
//! background network traffic, in a process group the test stops.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::Server;
use crate::programs::{chromium_command, Process, TempDir};

/// The page under test.
const PAGE: &str = include_str!("../fixtures/eventsource.html");
/// How long Chromium may take to start and open the stream (a cold start on a busy CI machine).
const BROWSER_START: Duration = Duration::from_secs(20);
/// How long an event may take to reach the page and be reported.
const DELIVERY: Duration = Duration::from_secs(5);
/// Chromium retries a dropped stream after 3 s unless the server says otherwise; allow for that
/// twice (a retry can hit the moment hasses is down) plus slack.
const RECONNECT: Duration = Duration::from_secs(10);

/// Serves a page and collects its reports.
pub(crate) struct PageServer {
    /// The port it listens on, on 127.0.0.1.
    pub(crate) port: u16,
    reports: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PageServer {
    /// Serves [`PAGE`].
    fn start() -> PageServer {
        PageServer::serving(PAGE)
    }

    /// Serves `page` on `GET /` (any query) and collects what it posts to `/report`.
    pub(crate) fn serving(page: &'static str) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the page server");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (reports, stop) = (Arc::clone(&reports), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let reports = Arc::clone(&reports);
                            std::thread::spawn(move || serve(stream, page, &reports));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(e) => panic!("page server accept: {e}"),
                    }
                }
            })
        };
        PageServer { port, reports, stop, thread: Some(thread) }
    }

    /// Every report so far, in the page's order.
    fn reports(&self) -> Vec<Value> {
        let mut reports = self.reports.lock().unwrap().clone();
        reports.sort_by_key(|r| r["seq"].as_u64());
        reports
    }

    /// Waits until `done` holds for the reports; panics with them (and Chromium's output) if
    /// it does not within `timeout`.
    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        browser: &Process,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let reports = self.reports();
            if done(&reports) {
                return reports;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not within {timeout:?}; the page reported {reports:#?}\n{}",
                    browser.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request: `page` on `GET /`, a report on `POST /report`, 404 otherwise.
fn serve(mut stream: TcpStream, page: &str, reports: &Mutex<Vec<Value>>) {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let request_line = head.lines().next().unwrap_or_default();
    let (status, content_type, content) =
        if request_line.starts_with("GET / ") || request_line.starts_with("GET /?") {
            ("200 OK", "text/html; charset=utf-8", page.as_bytes())
        } else if request_line.starts_with("POST /report ") {
            let report = serde_json::from_slice(&body[..length]).expect("a JSON report from the page");
            reports.lock().unwrap().push(report);
            ("204 No Content", "text/plain", &b""[..])
        } else {
            ("404 Not Found", "text/plain", &b""[..])
        };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        content.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(content));
}

/// Chromium on the test page, whose EventSource subscribes to `sse`.
fn open_page(pages: &PageServer, sse: &str, profile: &TempDir) -> Process {
    let sse = form_urlencoded::byte_serialize(sse.as_bytes()).collect::<String>();
    start_chromium(&format!("http://127.0.0.1:{}/?sse={sse}", pages.port), profile)
}

/// Headless Chromium on `url`, with a fresh profile in `profile` and no background traffic.
fn start_chromium(url: &str, profile: &TempDir) -> Process {
    let mut command = chromium_command(profile);
    command.arg(url);
    Process::spawn(command, "chromium", profile.join("chromium.log"))
}

fn messages(reports: &[Value]) -> Vec<(u64, String)> {
    reports
        .iter()
        .filter(|r| r["kind"] == "message")
        .map(|r| {
            let id = r["id"].as_str().and_then(|id| id.parse().ok());
            let id = id.unwrap_or_else(|| panic!("a message without a numeric lastEventId: {r}"));
            (id, r["data"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

fn count(reports: &[Value], kind: &str) -> usize {
    reports.iter().filter(|r| r["kind"] == kind).count()
}

#[test]
#[ignore = "needs chromium: run by the README's test command"]
fn eventsource_receives_events_and_reconnects_after_a_restart() {
    let server = Server::start(&[]);
    let sse_port = server.sse_port;
    let pages = PageServer::start();
    let profile = TempDir::new("chromium");
    let sse = format!("http://127.0.0.1:{sse_port}/sse?subscribe=room1-user42&id=tab1");
    let browser = open_page(&pages, &sse, &profile);

    pages.wait_for("the EventSource opens", BROWSER_START, &browser, |r| count(r, "open") == 1);
    server.wait_json("tcpstatus", "sseconncli", 1);
    server.publish("room1=first");
    server.publish("user42=second; *=third");
    server.publish("room1-tab1=not for the sender");
    server.publish("room2=not subscribed");
    server.publish("room*=fourth");
    let reports = pages.wait_for("four events arrive", DELIVERY, &browser, |r| messages(r).len() >= 4);
    let received = messages(&reports);
    let data: Vec<&str> = received.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(data, ["first", "second", "third", "fourth"], "in order, and only these");
    let ids: Vec<u64> = received.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "distinct, increasing ids: {ids:?}");

    // Restart hasses on the same port: the page's EventSource notices the end of the stream
    // and reconnects by itself.
    let mut server = server;
    server.stop();
    pages.wait_for("the EventSource notices the restart", DELIVERY, &browser, |r| count(r, "error") >= 1);
    let port = sse_port.to_string();
    let server = Server::start(&["--port", &port]);
    assert_eq!(server.sse_port, sse_port);
    pages.wait_for("the EventSource reconnects", RECONNECT, &browser, |r| count(r, "open") == 2);
    server.wait_json("tcpstatus", "sseconncli", 1);
    server.publish("room1=after the restart");
    let reports =
        pages.wait_for("an event after the restart", DELIVERY, &browser, |r| messages(r).len() >= 5);
    let (id, data) = messages(&reports)[4].clone();
    assert_eq!(data, "after the restart");
    assert!(id > *ids.last().unwrap(), "ids keep increasing across a restart: {id} after {ids:?}");
    assert!(
        reports.iter().all(|r| r["kind"] != "error" || r["state"] != 2),
        "the EventSource never gave up (readyState CLOSED): {reports:#?}"
    );
}

/// The page's EventSource loses its stream every 2 s (`--max-age`) while events go on being
/// published; it reconnects by itself with its last id, and ends up with every event once, in
/// order: resume, as a browser does it.
#[test]
#[ignore = "needs chromium: run by the README's test command"]
fn eventsource_resumes_after_losing_its_stream_with_every_event_once() {
    const EVENTS: usize = 60;
    let server = Server::start(&["--max-age", "2", "--retry", "100"]);
    let pages = PageServer::start();
    let profile = TempDir::new("chromium-resume");
    let sse = format!("http://127.0.0.1:{}/sse?subscribe=t", server.sse_port);
    let browser = open_page(&pages, &sse, &profile);
    pages.wait_for("the EventSource opens", BROWSER_START, &browser, |r| count(r, "open") == 1);
    for n in 0..EVENTS {
        server.publish(&format!("t={n}"));
        // Pacing, the point of the test: 60 events over ~5 s span the 2 s --max-age twice, so
        // some are published while the browser is reconnecting.
        std::thread::sleep(Duration::from_millis(80));
    }
    let reports = pages.wait_for("every event arrives", RECONNECT, &browser, |r| messages(r).len() >= EVENTS);
    let received = messages(&reports);
    let data: Vec<String> = received.iter().map(|(_, d)| d.clone()).collect();
    let expected: Vec<String> = (0..EVENTS).map(|n| n.to_string()).collect();
    assert_eq!(data, expected, "every event once, in order");
    assert!(received.windows(2).all(|w| w[0].0 < w[1].0), "increasing ids");
    assert!(count(&reports, "open") >= 2, "the stream was lost and resumed: {reports:#?}");
}

/// A page whose EventSource carries its token in the query (it cannot set headers): with a
/// token for its room it receives events; with a token for another room its `onerror` fires and
/// no event arrives.
#[test]
#[ignore = "needs chromium: run by the README's test command"]
fn eventsource_subscribes_with_an_access_token_and_is_refused_without_a_grant() {
    let secret = "browser-secret";
    let server = Server::start(&["--jwt-secret", secret]);
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let token = |room: &str| {
        let claims = serde_json::json!({ "exp": exp, "subscribe": [room] });
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    for (room, granted) in [("room1", true), ("room2", false)] {
        let pages = PageServer::start();
        let profile = TempDir::new("chromium-token");
        let sse =
            format!("http://127.0.0.1:{}/sse?subscribe=room1&access_token={}", server.sse_port, token(room));
        let browser = open_page(&pages, &sse, &profile);
        if granted {
            pages.wait_for("the EventSource opens", BROWSER_START, &browser, |r| count(r, "open") == 1);
            server.publish("room1=granted");
            let reports =
                pages.wait_for("the event arrives", DELIVERY, &browser, |r| !messages(r).is_empty());
            assert_eq!(messages(&reports)[0].1, "granted");
        } else {
            let reports =
                pages.wait_for("onerror fires", BROWSER_START, &browser, |r| count(r, "error") >= 1);
            server.publish("room1=not for a room2 token");
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!((count(&reports, "open"), messages(&pages.reports()).len()), (0, 0), "{reports:#?}");
        }
    }
}
