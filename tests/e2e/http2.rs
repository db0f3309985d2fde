//! HTTP/2 (issue 24) shown with real programs: headless Chromium's EventSources sharing one
//! connection as streams (and, over HTTP/1.1, stopping at six per origin), curl, nghttp and
//! h2load (Debian's nghttp2-client) streaming events and refused as HTTP/1.1 clients are, and a
//! strict client (Python's h2, `tests/fixtures/h2_strict.py`) for the protocol's errors and the
//! known attacks, each answered with the exact GOAWAY, RST_STREAM or status RFC 9113 and the
//! server's rules say.
//!
//! The programs run against hasses over TLS (ALPN `h2`, a certificate made here) or on the plain
//! port with prior knowledge. Streams are ended by `--max-age` where a program must exit by
//! itself; every wait has a deadline; every program is stopped by its drop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::browser::PageServer;
use crate::common::{self, Server, WAIT};
use crate::programs::{find_program, repo_path, Devtools, Process, TempDir};
use crate::tls::{tls_server, Files, Identity};

/// A hasses server, with the certificate files its TLS port serves when it has one.
struct H2Server {
    server: Server,
    files: Option<Files>,
}

impl H2Server {
    /// On the plain port (HTTP/1.1, and HTTP/2 with prior knowledge), with `extra` flags.
    fn plain(extra: &[&str]) -> H2Server {
        H2Server { server: Server::start(extra), files: None }
    }

    /// Over TLS (ALPN `h2` and `http/1.1`) with a fresh certificate for `localhost` and
    /// `127.0.0.1`, with `extra` flags.
    fn tls(extra: &[&str]) -> H2Server {
        let files = Files::new(&Identity::new());
        H2Server { server: tls_server(&files, extra), files: Some(files) }
    }

    /// `https://127.0.0.1:PORT` or `http://127.0.0.1:PORT`.
    fn base(&self) -> String {
        let scheme = if self.files.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.server.sse_port)
    }

    /// The certificate a client is to trust (TLS only).
    fn cert(&self) -> &Path {
        self.files.as_ref().expect("a TLS server").cert.path()
    }

    /// The client list's rows of HTTP/2 streams (`h2stream` set).
    fn stream_rows(&self) -> Vec<Value> {
        let list = self.server.tcp_json("tcpclientlist");
        let rows = list["clients"].as_array().unwrap_or_else(|| panic!("no clients array in {list}"));
        rows.iter().filter(|row| !row["h2stream"].is_null()).cloned().collect()
    }

    /// Waits until hasses counts `streams` HTTP/2 streams on `connections` connections, and
    /// returns the client list's stream rows; panics with the status, the list and `context`.
    fn wait_streams(&self, connections: u64, streams: u64, context: impl Fn() -> String) -> Vec<Value> {
        let expected = [connections, streams, streams].map(|n| json!(n));
        let mut status = Value::Null;
        let counted = common::holds_within(WAIT, || {
            status = self.server.tcp_json("tcpstatus");
            [&status["http2conncli"], &status["http2streams"], &status["sseconncli"]] == expected.each_ref()
        });
        assert!(
            counted,
            "not {connections} HTTP/2 connections with {streams} streams (http2conncli, http2streams, \
             sseconncli) within {WAIT:?}: {status}\n{}",
            context()
        );
        let rows = self.stream_rows();
        assert_eq!(rows.len() as u64, streams, "a client row per stream: {rows:#?}");
        rows
    }

    /// An HTTP/1.1 subscriber on the plain port gets an event: hasses serves on.
    fn serves_http1(&self) {
        let mut client = self.server.subscribe("subscribe=alive");
        self.server.publish("alive=still serving");
        client.expect_data("still serving");
    }
}

/// The connections (`fd`) of stream rows, each with its streams' ids (`h2stream`).
fn streams_by_connection(rows: &[Value]) -> BTreeMap<u64, BTreeSet<u64>> {
    let mut connections: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for row in rows {
        let fd = row["fd"].as_u64().unwrap_or_else(|| panic!("no fd in {row}"));
        let stream = row["h2stream"].as_u64().unwrap_or_else(|| panic!("h2stream not a number in {row}"));
        assert!(stream % 2 == 1, "a client's stream id is odd: {row}");
        assert!(
            connections.entry(fd).or_default().insert(stream),
            "stream {stream} twice on fd {fd}: {rows:#?}"
        );
    }
    connections
}

/// The `id` of each row, sorted.
fn client_ids(rows: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> =
        rows.iter().map(|row| row["id"].as_str().unwrap_or_default().to_owned()).collect();
    ids.sort();
    ids
}

/// Waits until `process` exits (its streams ended by `--max-age`), and returns everything it
/// wrote to `output`.
fn output_at_exit(process: &mut Process, output: &Path, within: Duration) -> String {
    if !common::holds_within(within, || !process.running()) {
        panic!("{} did not exit within {within:?}\n{}", output.display(), process.output());
    }
    std::fs::read_to_string(output).unwrap_or_else(|e| panic!("read {}: {e}", output.display()))
}

/// `(id, data)` of each event in an event-stream text, as a browser parses it (comments and
/// `retry:` skipped).
fn events(text: &str) -> Vec<(Option<u64>, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut id = None;
            let mut data = Vec::new();
            for line in block.lines() {
                match line.split_once(": ") {
                    Some(("id", value)) => id = value.parse().ok(),
                    Some(("data", value)) => data.push(value),
                    _ => {}
                }
            }
            (!data.is_empty()).then(|| (id, data.join("\n")))
        })
        .collect()
}

// ---- Chromium: ten EventSources of one page ----

/// The page that opens the EventSources.
const TABS_PAGE: &str = include_str!("../fixtures/eventsources.html");
/// How many EventSources the page opens.
const TABS: usize = 10;
/// Chromium's limit of HTTP/1.1 connections to one origin.
const PER_ORIGIN: usize = 6;
/// How long Chromium may take to start, open its streams and show an event (a cold start on a
/// busy machine).
const BROWSER_WAIT: Duration = Duration::from_secs(20);
/// `EventSource.readyState`.
const CONNECTING: u8 = 0;
const OPEN: u8 = 1;

/// What one of the page's EventSources did.
#[derive(Debug, Clone, Deserialize)]
struct Tab {
    state: u8,
    opened: u32,
    errors: u32,
    messages: Vec<String>,
}

/// Headless Chromium on the page, its EventSources subscribed to one hasses URL.
struct Tabs {
    devtools: Devtools,
    _pages: PageServer,
    _profile: TempDir,
}

impl Tabs {
    /// The page, opening [`TABS`] EventSources on `sse` (each with `&id=eN`), in Chromium
    /// started with `flags`.
    fn open(sse: &str, flags: &[&str]) -> Tabs {
        let pages = PageServer::serving(TABS_PAGE);
        let profile = TempDir::new("chromium-tabs");
        let sse = form_urlencoded::byte_serialize(sse.as_bytes()).collect::<String>();
        let url = format!("http://127.0.0.1:{}/?n={TABS}&sse={sse}", pages.port);
        let devtools = Devtools::launch_with(&url, &profile, flags);
        Tabs { devtools, _pages: pages, _profile: profile }
    }

    /// What each EventSource did so far (none while the page loads).
    fn summary(&mut self) -> Vec<Tab> {
        let text = self.devtools.evaluate("typeof summary === 'function' ? summary() : '[]'");
        let text = text.as_str().unwrap_or_else(|| panic!("summary() is not a string: {text}"));
        serde_json::from_str(text).unwrap_or_else(|e| panic!("summary() {text:?}: {e}"))
    }

    /// Waits until `done` holds for the EventSources; panics with them and Chromium's output.
    fn wait(&mut self, what: &str, done: impl Fn(&[Tab]) -> bool) -> Vec<Tab> {
        let mut last = Vec::new();
        if common::holds_within(BROWSER_WAIT, || {
            last = self.summary();
            done(&last)
        }) {
            return last;
        }
        panic!(
            "{what}: not within {BROWSER_WAIT:?}; the page's EventSources: {last:#?}\n{}",
            self.devtools.output()
        );
    }

    /// Closes the `i`-th EventSource.
    fn close(&mut self, i: usize) {
        assert_eq!(self.devtools.evaluate(&format!("closeSource({i})")), true);
    }
}

fn in_state(tabs: &[Tab], state: u8) -> usize {
    tabs.iter().filter(|tab| tab.state == state).count()
}

/// Over HTTP/1.1 a browser gives an origin six connections: the page's first six EventSources
/// open and stream, the other four wait (CONNECTING, no error, no connection at hasses) until
/// one of the six is closed and its connection is free.
#[test]
#[ignore = "needs chromium: run by the README's test command"]
fn over_http1_chromium_streams_six_eventsources_of_an_origin_and_the_seventh_waits() {
    let server = Server::start(&[]);
    let mut tabs = Tabs::open(&format!("http://127.0.0.1:{}/sse?subscribe=t", server.sse_port), &[]);
    tabs.wait("six EventSources open", |tabs| tabs.len() == TABS && in_state(tabs, OPEN) == PER_ORIGIN);
    assert_eq!(server.wait_json("tcpstatus", "sseconncli", PER_ORIGIN as u64)["sseconncli"], PER_ORIGIN);

    // What is shown is an absence: the other four stay waiting. Chromium opens a connection to
    // loopback in milliseconds; a second without a seventh is the browser's limit.
    std::thread::sleep(Duration::from_secs(1));
    let page = tabs.summary();
    let waiting = page.iter().filter(|tab| tab.state == CONNECTING && tab.opened == 0 && tab.errors == 0);
    assert_eq!(waiting.count(), TABS - PER_ORIGIN, "the rest wait, without an error: {page:#?}");
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["allconncli"], PER_ORIGIN, "no seventh connection reached hasses: {status}");
    let rows = server.tcp_json("tcpclientlist");
    let rows = rows["clients"].as_array().unwrap();
    assert!(rows.iter().all(|row| row["h2stream"].is_null()), "HTTP/1.1 rows have no stream: {rows:#?}");

    server.publish("t=to the open six");
    tabs.wait("the six open ones receive the event", |tabs| {
        tabs.iter().filter(|tab| tab.messages == ["to the open six"]).count() == PER_ORIGIN
    });

    let first_open = page.iter().position(|tab| tab.state == OPEN).unwrap();
    tabs.close(first_open);
    tabs.wait("a waiting EventSource opens on the freed connection", |tabs| {
        tabs.iter().filter(|tab| tab.opened == 1).count() == PER_ORIGIN + 1
            && in_state(tabs, OPEN) == PER_ORIGIN
    });
    server.wait_json("tcpstatus", "sseconncli", PER_ORIGIN as u64);
    server.publish("t=second");
    let page = tabs.wait("the open six receive the second event", |tabs| {
        tabs.iter()
            .filter(|tab| tab.state == OPEN && tab.messages.last().is_some_and(|m| m == "second"))
            .count()
            == PER_ORIGIN
    });
    assert!(page.iter().all(|tab| tab.errors == 0), "no EventSource saw an error: {page:#?}");
}

/// Over HTTP/2 the page's ten EventSources are ten streams of one connection: all open, all
/// receive every event, and hasses lists ten clients sharing one fd.
#[test]
#[ignore = "needs chromium: run by the README's test command"]
fn over_http2_chromium_streams_ten_eventsources_of_an_origin_on_one_connection() {
    let h2 = H2Server::tls(&[]);
    let sse = format!("https://localhost:{}/sse?subscribe=t", h2.server.sse_port);
    let mut tabs = Tabs::open(&sse, &["--ignore-certificate-errors"]);
    tabs.wait("all ten EventSources open", |tabs| tabs.len() == TABS && in_state(tabs, OPEN) == TABS);
    let rows = h2.wait_streams(1, TABS as u64, || tabs.devtools.output());
    let connections = streams_by_connection(&rows);
    assert_eq!(connections.len(), 1, "one connection (fd) for all ten: {rows:#?}");
    let expected: Vec<String> = (0..TABS).map(|n| format!("e{n}")).collect();
    assert_eq!(client_ids(&rows), expected);

    for n in 0..3 {
        h2.server.publish(&format!("t=event {n}"));
    }
    let every = ["event 0", "event 1", "event 2"];
    let page = tabs.wait("all ten receive every event", |tabs| tabs.iter().all(|tab| tab.messages == every));
    assert!(page.iter().all(|tab| tab.errors == 0 && tab.opened == 1), "{page:#?}");
}

// ---- curl ----

/// `curl -sS -N` with `flags`, writing after each transfer `[HTTP-VERSION STATUS NEW-CONNECTIONS]`.
fn curl(flags: &[&str], urls: &[String]) -> Command {
    let mut command = Command::new(find_program("curl", "curl"));
    command
        .args(["-sS", "-N", "--max-time", "30"])
        .args(["-w", "\n[%{http_version} %{http_code} %{num_connects}]\n"])
        .args(flags)
        .args(urls);
    command
}

/// The refusals curl is to get over HTTP/2: a bad query (`400`) and a wrong path (`404`), each
/// with its reason as the body, as HTTP/1.1 gives them.
fn refused_urls(h2: &H2Server) -> [(String, &'static str, &'static str); 2] {
    let base = h2.base();
    [
        (format!("{base}/sse?x=1"), "no subscribe token", "400"),
        (format!("{base}/other?subscribe=t"), "path \"/other\" not served", "404"),
    ]
}

/// curl (with `flags`) fetching a stream from `h2`, whose `--max-age` ends it: the events as
/// `id: N\ndata: …`, over HTTP/2. `before` is what curl wrote for the transfers before the
/// stream on the same connection, if any.
fn curl_streams_events(h2: &H2Server, mut curl: Command, before: &str) {
    let dir = TempDir::new("curl-h2");
    let output = dir.join("output");
    curl.arg(format!("{}/sse?subscribe=t&id=curl", h2.base()));
    let mut curl = Process::spawn(curl, "curl", output.clone());
    let rows = h2.wait_streams(1, 1, || curl.output());
    assert_eq!(client_ids(&rows), ["curl"]);
    h2.server.publish("t=one");
    h2.server.publish("t=two");
    let text = output_at_exit(&mut curl, &output, Duration::from_secs(20));

    let stream = text.strip_prefix(before).unwrap_or_else(|| panic!("{before:?} first:\n{text}"));
    let connects = if before.is_empty() { 1 } else { 0 };
    let stream = stream
        .strip_suffix(&format!("\n[2 200 {connects}]\n"))
        .unwrap_or_else(|| panic!("the stream over HTTP/2 ({connects} new connection):\n{text}"));
    let received = events(stream);
    let data: Vec<&str> = received.iter().map(|(_, data)| data.as_str()).collect();
    assert_eq!(data, ["one", "two"], "{text}");
    for (id, data) in &received {
        let id = id.unwrap_or_else(|| panic!("an event without an id: {text}"));
        assert!(stream.contains(&format!("id: {id}\ndata: {data}\n\n")), "the exact SSE text: {stream:?}");
    }
    h2.server.log.wait_for_line(
        |l| l.starts_with("Request refused from ") && l.ends_with(": 400 no subscribe token"),
        WAIT,
    );
}

/// Over TLS, one curl on one connection: the two refusals, then the stream, the connection
/// kept open by each refusal.
#[test]
#[ignore = "needs curl: run by the README's test command"]
fn curl_over_tls_streams_events_and_is_refused_over_http2_on_one_connection() {
    let h2 = H2Server::tls(&["--max-age", "3"]);
    let cert = h2.cert().to_str().unwrap().to_owned();
    let refused = refused_urls(&h2);
    let urls: Vec<String> = refused.iter().map(|(url, _, _)| url.clone()).collect();
    let before: String = refused
        .iter()
        .enumerate()
        .map(|(n, (_, why, status))| format!("{why}\n\n[2 {status} {}]\n", usize::from(n == 0)))
        .collect();
    curl_streams_events(&h2, curl(&["--http2", "--cacert", &cert], &urls), &before);
}

/// With prior knowledge on the plain port, a curl per request: Debian's curl 7.88.1 cannot
/// reuse a prior-knowledge connection (curl's issue 10634, fixed in 8.0.0: "Error in the HTTP2
/// framing layer" before the second request is sent); the TLS test shows the reuse.
#[test]
#[ignore = "needs curl: run by the README's test command"]
fn curl_with_prior_knowledge_streams_events_and_is_refused_over_http2() {
    let h2 = H2Server::plain(&["--max-age", "3"]);
    let flags = ["--http2-prior-knowledge"];
    for (url, why, status) in refused_urls(&h2) {
        let (exit, stdout, stderr) = common::run_bounded(curl(&flags, std::slice::from_ref(&url)), WAIT);
        assert!(exit.success(), "{url}: {exit}\n{stderr}");
        assert_eq!(stdout, format!("{why}\n\n[2 {status} 1]\n"), "{url}: {stderr}");
    }
    curl_streams_events(&h2, curl(&flags, &[]), "");
}

/// `--no-http2`: over TLS, curl asking for HTTP/2 is given HTTP/1.1 (no `h2` in ALPN); on the
/// plain port the HTTP/2 preface is refused as any request that is not HTTP/1.1.
#[test]
#[ignore = "needs curl: run by the README's test command"]
fn with_no_http2_curl_gets_http1_over_tls_and_prior_knowledge_is_refused() {
    let tls = H2Server::tls(&["--no-http2"]);
    let cert = tls.cert().to_str().unwrap().to_owned();
    let [(url, why, status), _] = refused_urls(&tls);
    let (exit, stdout, stderr) = common::run_bounded(curl(&["--http2", "--cacert", &cert], &[url]), WAIT);
    assert!(exit.success(), "{exit}: {stderr}");
    assert_eq!(stdout, format!("{why}\n\n[1.1 {status} 1]\n"), "{stderr}");

    let plain = H2Server::plain(&["--no-http2"]);
    let [(url, _, _), _] = refused_urls(&plain);
    let (exit, stdout, stderr) = common::run_bounded(curl(&["--http2-prior-knowledge"], &[url]), WAIT);
    assert!(!exit.success(), "the preface is not taken: {stdout}");
    plain.server.log.wait_for_line(
        |l| {
            l.starts_with("Request refused from ")
                && l.ends_with(": 501 not an HTTP request (invalid HTTP version)")
        },
        WAIT,
    );
    for server in [&tls.server, &plain.server] {
        assert_eq!(server.tcp_json("tcpstatus")["http2conncnt"], 0, "no connection spoke HTTP/2: {stderr}");
    }
}

// ---- nghttp and h2load ----

/// `nghttp -s` with five URIs: five concurrent streams on one connection, each gets the event,
/// each ends with `200` when `--max-age` ends it.
fn nghttp_streams_on_one_connection(h2: &H2Server) {
    const STREAMS: usize = 5;
    let dir = TempDir::new("nghttp");
    let output = dir.join("output");
    let mut command = Command::new(find_program("nghttp", "nghttp2-client"));
    command.arg("-s");
    let ids: Vec<String> = (0..STREAMS).map(|n| format!("n{n}")).collect();
    for id in &ids {
        command.arg(format!("{}/sse?subscribe=t&id={id}", h2.base()));
    }
    let mut nghttp = Process::spawn(command, "nghttp", output.clone());
    let rows = h2.wait_streams(1, STREAMS as u64, || nghttp.output());
    assert_eq!(streams_by_connection(&rows).len(), 1, "one connection: {rows:#?}");
    assert_eq!(client_ids(&rows), ids);
    h2.server.publish("t=hello");
    let text = output_at_exit(&mut nghttp, &output, Duration::from_secs(20));
    let received = events(&text);
    assert_eq!(received.len(), STREAMS, "the event once on each stream:\n{text}");
    let id = received[0].0.unwrap_or_else(|| panic!("an event without an id:\n{text}"));
    assert!(received.iter().all(|event| *event == (Some(id), "hello".to_owned())), "{text}");
    for id in &ids {
        let path = format!("/sse?subscribe=t&id={id}");
        assert!(
            text.lines()
                .any(|line| line.ends_with(&path) && line.split_whitespace().any(|word| word == "200")),
            "nghttp's statistics show {path} answered 200:\n{text}"
        );
    }
}

#[test]
#[ignore = "needs nghttp (nghttp2-client): run by the README's test command"]
fn nghttp_streams_concurrently_on_one_connection_over_tls() {
    nghttp_streams_on_one_connection(&H2Server::tls(&["--max-age", "3"]));
}

#[test]
#[ignore = "needs nghttp (nghttp2-client): run by the README's test command"]
fn nghttp_streams_concurrently_on_one_connection_with_prior_knowledge() {
    nghttp_streams_on_one_connection(&H2Server::plain(&["--max-age", "3"]));
}

/// h2load opens 4 connections × 5 streams: hasses lists 20 streams on 4 fds, delivers an event
/// to each, `--max-age` ends them all with success, the counters go back to zero, and hasses
/// serves on.
#[test]
#[ignore = "needs h2load (nghttp2-client): run by the README's test command"]
fn h2load_connections_times_streams_are_all_served_and_ended() {
    const CONNECTIONS: u64 = 4;
    const STREAMS: u64 = 5;
    const REQUESTS: u64 = CONNECTIONS * STREAMS;
    let h2 = H2Server::plain(&["--max-age", "3"]);
    let dir = TempDir::new("h2load");
    let output = dir.join("output");
    let mut command = Command::new(find_program("h2load", "nghttp2-client"));
    command
        .args(["-c", &CONNECTIONS.to_string(), "-m", &STREAMS.to_string(), "-n", &REQUESTS.to_string()])
        .arg(format!("{}/sse?subscribe=t&id=load", h2.base()));
    let mut h2load = Process::spawn(command, "h2load", output.clone());
    let rows = h2.wait_streams(CONNECTIONS, REQUESTS, || h2load.output());
    let connections = streams_by_connection(&rows);
    let per_connection: Vec<usize> = connections.values().map(BTreeSet::len).collect();
    assert_eq!(per_connection, vec![STREAMS as usize; CONNECTIONS as usize], "{rows:#?}");

    let before = h2.server.tcp_json("tcpstatus")["msgsendcnt"].as_u64().unwrap();
    h2.server.publish("t=load");
    let after = h2.server.wait_json("tcpstatus", "msgsendcnt", before + REQUESTS);
    assert_eq!(after["msgsendcnt"], before + REQUESTS, "the event queued to every stream: {after}");

    let text = output_at_exit(&mut h2load, &output, Duration::from_secs(30));
    let done = format!("requests: {REQUESTS} total, {REQUESTS} started, {REQUESTS} done, {REQUESTS} succeeded, 0 failed, 0 errored");
    assert!(text.contains(&done), "every stream ended well:\n{text}");
    assert!(text.contains(&format!("status codes: {REQUESTS} 2xx, 0 3xx, 0 4xx, 0 5xx")), "{text}");
    let status = h2.server.wait_json("tcpstatus", "http2conncli", 0);
    assert_eq!((&status["http2conncli"], &status["http2streams"]), (&json!(0), &json!(0)), "{status}");
    h2.serves_http1();
}

// ---- A strict client: Python's h2 ----

/// The strict client's script.
const STRICT: &str = "tests/fixtures/h2_strict.py";
/// Debian's own Python, which has python3-h2 (not a pyenv one first on `PATH`).
const PYTHON: &str = "/usr/bin/python3";

/// RFC 9113's error codes.
const NO_ERROR: u64 = 0x0;
const PROTOCOL_ERROR: u64 = 0x1;
const FLOW_CONTROL_ERROR: u64 = 0x3;
const FRAME_SIZE_ERROR: u64 = 0x6;
const REFUSED_STREAM: u64 = 0x7;
const CANCEL: u64 = 0x8;
const ENHANCE_YOUR_CALM: u64 = 0xb;

/// What the strict client saw in one scenario (see the script's `Observed`).
struct Seen(Value);

impl Seen {
    fn goaway_code(&self) -> Option<u64> {
        self.0["goaway"]["code"].as_u64()
    }

    fn closed(&self) -> bool {
        self.0["closed"] == true
    }

    fn status(&self, stream: u32) -> Option<u64> {
        self.0["statuses"][stream.to_string()].as_u64()
    }

    fn reset(&self, stream: u32) -> Option<u64> {
        self.0["resets"][stream.to_string()].as_u64()
    }

    fn data(&self, stream: u32) -> &str {
        self.0["data"][stream.to_string()].as_str().unwrap_or_default()
    }

    /// The client's address as hasses names it.
    fn peer(&self) -> String {
        format!("127.0.0.1:{}", self.0["local_port"])
    }
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl H2Server {
    /// Runs the strict client's `scenario` (with `--case case`) against this server, over TLS
    /// if it has it, and returns what it saw.
    fn strict(&self, scenario: &str, case: Option<&str>) -> Seen {
        let mut command = Command::new(PYTHON);
        command
            .arg(repo_path(STRICT))
            .arg(scenario)
            .args(["--port", &self.server.sse_port.to_string()])
            .args(["--control", &self.server.cport().to_string()])
            .args(["--server-pid", &self.server.pid().to_string()]);
        if let Some(files) = &self.files {
            command.arg("--tls").arg(files.cert.path());
        }
        if let Some(case) = case {
            command.args(["--case", case]);
        }
        let (status, stdout, stderr) = common::run_bounded(command, Duration::from_secs(60));
        if stderr.contains("No module named 'h2'") || stderr.contains("No module named 'hpack'") {
            panic!("{PYTHON} cannot import h2: install the Debian package python3-h2; .ci/test installs it\n{stderr}");
        }
        assert!(
            status.success(),
            "the strict client failed ({status}):\n{stderr}\nhasses:\n{}",
            self.server.log.dump()
        );
        let last = stdout.lines().last().unwrap_or_default();
        let seen = Seen(
            serde_json::from_str(last).unwrap_or_else(|e| panic!("not the client's JSON ({e}): {stdout:?}")),
        );
        if let Some(alpn) = seen.0.get("alpn") {
            assert_eq!(alpn, "h2", "hasses chose h2 in ALPN: {seen:?}");
        }
        seen
    }

    /// Asserts the connection got GOAWAY `code` and was closed, that hasses logged a line
    /// naming the client, and that it serves a new HTTP/2 client.
    fn assert_goaway(&self, seen: &Seen, code: u64) {
        assert_eq!(
            seen.goaway_code(),
            Some(code),
            "GOAWAY {code:#x}: {seen:?}\nhasses:\n{}",
            self.server.log.dump()
        );
        assert!(seen.closed(), "closed after the GOAWAY: {seen:?}");
        let peer = seen.peer();
        self.server.log.wait_for_line(|l| l.contains(&peer), WAIT);
        let status = self.server.tcp_json("tcpstatus");
        assert!(status["http2goawaycnt"].as_u64() >= Some(1), "the GOAWAY counted: {status}");
        self.assert_serves();
    }

    /// A new HTTP/2 client subscribes and gets an event.
    fn assert_serves(&self) {
        let seen = self.strict("subscribe", None);
        assert_eq!(seen.status(1), Some(200), "{seen:?}");
        assert!(seen.data(1).ends_with("\ndata: hello\n\n"), "{seen:?}");
    }
}

/// A stream as an HTTP/1.1 subscription: `200`, the event-stream headers with CORS, and DATA
/// carrying exactly the SSE text.
#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_subscribes_and_gets_the_event_stream() {
    let h2 = H2Server::tls(&[]);
    let seen = h2.strict("subscribe", None);
    assert_eq!(seen.status(1), Some(200), "{seen:?}");
    let headers = &seen.0["headers"]["1"];
    assert_eq!(headers["content-type"], "text/event-stream", "{seen:?}");
    assert_eq!(headers["cache-control"], "no-cache", "{seen:?}");
    assert_eq!(headers["access-control-allow-origin"], "*", "{seen:?}");
    for banned in ["connection", "transfer-encoding", "keep-alive"] {
        assert!(headers.get(banned).is_none(), "no connection-specific header {banned} in HTTP/2: {seen:?}");
    }
    let data = seen.0["data"]["1"].as_str().unwrap_or_default();
    let id = data.strip_prefix("id: ").and_then(|rest| rest.strip_suffix("\ndata: hello\n\n"));
    assert!(id.is_some_and(|id| id.parse::<u64>().is_ok()), "exactly `id: N\\ndata: hello\\n\\n`: {seen:?}");
    assert!(seen.0["h2_error"].is_null() && seen.0["goaway"].is_null(), "{seen:?}");
}

/// A preface that is not RFC 9113's: GOAWAY PROTOCOL_ERROR (garbage after `PRI *` on a TLS
/// connection that chose h2; a PING where the SETTINGS frame must be, on the plain port); an
/// HTTP/1.1 request on a connection that chose h2 is closed, with GOAWAY PROTOCOL_ERROR or
/// without a word (it is not HTTP/2 at all), never answered as HTTP/1.1.
#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_bad_preface_gets_goaway_protocol_error() {
    let tls = H2Server::tls(&[]);
    let seen = tls.strict("bad-preface", Some("garbage"));
    tls.assert_goaway(&seen, PROTOCOL_ERROR);

    let plain = H2Server::plain(&[]);
    let seen = plain.strict("bad-preface", Some("ping-first"));
    plain.assert_goaway(&seen, PROTOCOL_ERROR);

    let seen = tls.strict("bad-preface", Some("http1"));
    assert!(seen.closed(), "closed: {seen:?}");
    assert!(matches!(seen.goaway_code(), None | Some(PROTOCOL_ERROR)), "{seen:?}");
    assert!(!seen.0["received_text"].as_str().unwrap_or_default().contains("HTTP/1.1"), "{seen:?}");
}

/// Rapid Reset (CVE-2023-44487): streams opened and reset at once, as fast as hasses takes
/// them: GOAWAY ENHANCE_YOUR_CALM once over 200, and hasses serves on.
#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_rapid_reset_gets_goaway_enhance_your_calm() {
    let h2 = H2Server::tls(&[]);
    let seen = h2.strict("rapid-reset", None);
    h2.assert_goaway(&seen, ENHANCE_YOUR_CALM);
    assert!(seen.0["sent"].as_u64().is_some_and(|sent| sent > 200), "not before 200 resets: {seen:?}");
}

/// Rapid Reset as an attacker sends it, without waiting for anything: the GOAWAY still
/// arrives, and no stream gets a response that is not its own (a second HEADERS on a stream).
#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_unpaced_rapid_reset_gets_goaway_and_no_stray_responses() {
    let h2 = H2Server::plain(&[]);
    let seen = h2.strict("rapid-reset", Some("unpaced"));
    let frames = seen.0["header_frames"].as_object().unwrap();
    let repeated: Vec<_> = frames.iter().filter(|(_, n)| n.as_u64() > Some(1)).collect();
    assert!(repeated.is_empty(), "HEADERS frames on one stream ({{stream: frames}}): {repeated:?}; {seen:?}");
    h2.assert_goaway(&seen, ENHANCE_YOUR_CALM);
}

/// A header block that never ends (HEADERS without END_HEADERS, then CONTINUATION after
/// CONTINUATION): GOAWAY ENHANCE_YOUR_CALM.
#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_continuation_flood_gets_goaway_enhance_your_calm() {
    let h2 = H2Server::tls(&[]);
    let seen = h2.strict("continuation-flood", None);
    h2.assert_goaway(&seen, ENHANCE_YOUR_CALM);
}

#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_settings_flood_gets_goaway_enhance_your_calm() {
    let h2 = H2Server::plain(&[]);
    let seen = h2.strict("settings-flood", None);
    h2.assert_goaway(&seen, ENHANCE_YOUR_CALM);
}

#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_ping_flood_gets_goaway_enhance_your_calm() {
    let h2 = H2Server::plain(&[]);
    let seen = h2.strict("ping-flood", None);
    h2.assert_goaway(&seen, ENHANCE_YOUR_CALM);
}

#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_window_update_flood_gets_goaway_enhance_your_calm() {
    let h2 = H2Server::plain(&[]);
    let seen = h2.strict("window-update-flood", None);
    h2.assert_goaway(&seen, ENHANCE_YOUR_CALM);
}

/// SETTINGS_INITIAL_WINDOW_SIZE 0, two streams, a window given to one: the event reaches it,
/// the other is reset (CANCEL) after the stall time and logged, and the connection goes on
/// with the first.
#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_zero_window_stream_is_reset_while_the_other_streams_on() {
    let h2 = H2Server::tls(&[]);
    let seen = h2.strict("zero-window", None);
    assert!(seen.0["h2_error"].is_null(), "no data beyond a window, nothing else h2 refuses: {seen:?}");
    assert_eq!((seen.status(1), seen.status(3)), (Some(200), Some(200)), "{seen:?}");
    assert_eq!(seen.reset(3), Some(CANCEL), "the shut stream reset with CANCEL: {seen:?}");
    assert_eq!(seen.reset(1), None, "{seen:?}");
    let after = seen.0["reset_after_secs"].as_f64().unwrap_or_default();
    assert!(after >= 1.5, "reset after the stall time (2 s), not at once: {after} s; {seen:?}");
    let received: Vec<String> = events(seen.data(1)).into_iter().map(|(_, data)| data).collect();
    assert_eq!(received, ["first", "second"], "{seen:?}");
    assert_eq!(seen.data(3), "", "{seen:?}");
    assert!(seen.goaway_code().is_none() && !seen.closed(), "the connection stays: {seen:?}");
    h2.server.log.wait_for_line(|l| l.contains("Slow stream reset"), WAIT);
    let status = h2.server.tcp_json("tcpstatus");
    assert_eq!(status["droppedslowstreams"], 1, "the reset counted: {status}");
    assert_eq!(status["droppedslowcli"], 0, "the connection was not dropped: {status}");
}

/// A header block of a few KiB that decodes to 4 MB (one big entry of the dynamic table,
/// referred to a thousand times): that stream gets 431, and the next stream, encoded against
/// the same table, subscribes and streams.
#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_hpack_bomb_gets_431_and_the_connection_serves_on() {
    let h2 = H2Server::plain(&[]);
    let seen = h2.strict("hpack-bomb", None);
    assert_eq!(seen.status(1), Some(431), "{seen:?}");
    assert_eq!(seen.status(3), Some(200), "{seen:?}");
    assert!(seen.data(3).ends_with("\ndata: after the bomb\n\n"), "{seen:?}");
    assert!(seen.goaway_code().is_none() && !seen.closed() && seen.0["h2_error"].is_null(), "{seen:?}");
}

/// Frames that break RFC 9113, each on a connection of its own: the connection error the RFC
/// names, in a GOAWAY, then close.
#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_malformed_frames_get_the_rfcs_goaway() {
    let h2 = H2Server::plain(&[]);
    let cases = [
        ("window-update-length-3", FRAME_SIZE_ERROR),
        ("ping-length-7", FRAME_SIZE_ERROR),
        ("data-on-stream-0", PROTOCOL_ERROR),
        ("headers-on-even-stream", PROTOCOL_ERROR),
        ("data-on-idle-stream", PROTOCOL_ERROR),
        ("window-overflow", FLOW_CONTROL_ERROR),
    ];
    let mut wrong = Vec::new();
    for (case, code) in cases {
        let seen = h2.strict("malformed", Some(case));
        if seen.goaway_code() != Some(code) || !seen.closed() {
            wrong.push(format!("{case}: expected GOAWAY {code:#x} and close, saw {seen:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}\nhasses:\n{}", wrong.join("\n"), h2.server.log.dump());
    let status = h2.server.tcp_json("tcpstatus");
    assert_eq!(status["http2goawaycnt"], cases.len(), "each GOAWAY counted: {status}");
    h2.assert_serves();
}

/// `--http2-max-streams 2`: hasses says so in its SETTINGS, and a third stream is refused
/// (RST_STREAM REFUSED_STREAM) while the two stream on.
#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_stream_over_the_limit_is_refused() {
    let h2 = H2Server::plain(&["--http2-max-streams", "2"]);
    let seen = h2.strict("max-streams", None);
    assert_eq!(seen.0["server_settings"]["3"], 2, "SETTINGS_MAX_CONCURRENT_STREAMS: {seen:?}");
    assert_eq!((seen.status(1), seen.status(3)), (Some(200), Some(200)), "{seen:?}");
    assert_eq!(seen.reset(5), Some(REFUSED_STREAM), "{seen:?}");
    assert!(seen.goaway_code().is_none(), "{seen:?}");
}

/// A stop with HTTP/2 streams open: GOAWAY NO_ERROR, then each stream ends with END_STREAM
/// (after the `retry:` a drain tells), and the connection closes.
#[test]
#[ignore = "needs python3-h2: run by the README's test command"]
fn strict_client_at_a_stop_gets_goaway_no_error_and_each_stream_ends() {
    let mut h2 = H2Server::tls(&[]);
    let seen = h2.strict("drain", None);
    assert_eq!(seen.goaway_code(), Some(NO_ERROR), "{seen:?}");
    let mut ended: Vec<u64> = seen.0["ended"].as_array().unwrap().iter().filter_map(Value::as_u64).collect();
    ended.sort_unstable();
    assert_eq!(ended, [1, 3], "each stream ended with END_STREAM: {seen:?}");
    assert!(seen.reset(1).is_none() && seen.reset(3).is_none(), "ended, not reset: {seen:?}");
    for stream in [1, 3] {
        assert!(seen.data(stream).starts_with("retry: "), "told when to come back: {seen:?}");
    }
    assert!(seen.closed(), "{seen:?}");
    assert!(h2.server.wait_exit(WAIT).is_some_and(|status| status.success()), "{}", h2.server.log.dump());
}
