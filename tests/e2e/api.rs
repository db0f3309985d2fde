//! The HTTP API (issue 13): publishing over HTTP is publishing (same ids, same delivery), the
//! questions get the control port's JSON and Prometheus text, every refusal has its status
//! code, the key guards everything but `/healthz`, and no request, however broken or slow,
//! stops the server or holds up publishing.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hasses::figures::ShardFigures;

use crate::common::{self, Api, Reply, Server, TempFile, WAIT};

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

#[test]
fn an_http_publish_is_a_publish_with_its_id() {
    let server = Server::start(&[]);
    let mut room = server.subscribe("subscribe=room1&id=a");
    let mut other = server.subscribe("subscribe=room2&id=b");
    let mut api = Api::connect(&server);
    let reply = api.post(FORM, "to=room1&to=room2&data=hello+there&event=chat");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let id: u64 = reply.json()["id"].as_str().expect("the id as a string").parse().unwrap();
    for client in [&mut room, &mut other] {
        let event = client.next_event();
        assert_eq!(
            (event.id, event.event.as_deref(), event.data.as_str()),
            (id, Some("chat"), "hello there")
        );
    }
    // The same JSON a control line takes; `except` leaves the sender out.
    let reply = api.post(JSON, r#"{"to":"room1","except":"a","data":"not for a"}"#);
    assert_eq!(reply.status, 200);
    let reply = api.post(JSON, r#"{"to":["room1"],"data":"line 1\nline 2","retry":1500}"#);
    let json_id: u64 = reply.json()["id"].as_str().unwrap().parse().unwrap();
    let event = room.next_event();
    assert_eq!((event.id, event.data.as_str()), (json_id, "line 1\nline 2"));
    // A control-port publish in between takes the next id: one sequencer numbers both.
    server.publish("room1=from the control port");
    let control = room.expect_data("from the control port");
    assert!(control.id > json_id);
    let reply = api.post(FORM, "to=room1&data=after");
    let after: u64 = reply.json()["id"].as_str().unwrap().parse().unwrap();
    assert!(after > control.id);
    assert_eq!(room.expect_data("after").id, after);
    let status = api.get("/status", "").json();
    assert_eq!(status["msgproccnt"], 5);
    let metrics = api.get("/metrics", "").text();
    assert!(metrics.contains("hasses_messages_published_total{source=\"http\"} 4"), "{metrics}");
    assert!(metrics.contains("hasses_messages_published_total{source=\"tcp\"} 1"), "{metrics}");
}

#[test]
fn every_refusal_has_its_status_and_reason() {
    let server = Server::start(&["--max-message", "100"]);
    let mut api = Api::connect(&server);
    let refused = |reply: Reply, status: u16| {
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        reply.json()["error"].as_str().expect("an error text").to_owned()
    };
    let reply = api.post(FORM, "data=x");
    assert!(refused(reply, 400).contains("missing field `to`"));
    let reply = api.post(FORM, "to=a-b&data=x");
    assert!(refused(reply, 400).contains("'-'"));
    let reply = api.post(JSON, r#"{"to":"a","data":"x","date":1}"#);
    assert!(refused(reply, 400).contains("date"));
    let reply = api.post(FORM, &format!("to=a&data={}", "x".repeat(101)));
    assert!(refused(reply, 413).contains("over the 100-byte limit"));
    let reply = api.post("text/plain", "a=b");
    refused(reply, 415);
    let reply = api.get("/publish", "");
    refused(reply, 405);
    let reply = api.get("/nowhere", "");
    refused(reply, 404);
    let reply = api.send(b"POST /status HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(reply.header("allow"), Some("GET"));
    refused(reply, 405);
    // Every refusal so far kept the connection: it still answers.
    assert_eq!(api.get("/healthz", "").status, 200);
    // A body beyond what any publish needs is refused before it is sent, and the connection
    // closed: where the next request would start is unknown.
    let reply = api
        .send(b"POST /publish HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 999999\r\n\r\n");
    refused(reply, 413);
    assert!(api.closed_within(WAIT));
    let mut api = Api::connect(&server);
    let reply = api.send(format!("GET /status HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(9000)).as_bytes());
    refused(reply, 431);
    let mut api = Api::connect(&server);
    let reply = api.send(b"POST /publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    refused(reply, 411);
}

#[test]
fn the_questions_get_the_control_ports_answers() {
    let server = Server::start(&[]);
    let _client = server.subscribe("subscribe=room1&id=seen");
    let mut api = Api::connect(&server);
    let status = api.get("/status", "");
    assert_eq!(status.status, 200);
    let status = status.json();
    let tcp = server.tcp_json("tcpstatus");
    assert_eq!(status["allconncli"], 1);
    assert_eq!(status["workers"], tcp["workers"]);
    assert_eq!(status["version"], tcp["version"]);
    let clients = api.get("/clients", "").json();
    assert_eq!(clients, server.tcp_json("tcpclientlist"));
    assert_eq!(clients["clients"][0]["id"], "seen");
    let health = api.get("/healthz", "");
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    let metrics = api.get("/metrics", "");
    assert_eq!(metrics.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = metrics.text();
    for line in [
        "hasses_connections 1",
        "hasses_connections_accepted_total 1",
        &format!("hasses_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert_eq!(text.lines().filter(|l| l.starts_with("hasses_worker_connections{")).count(), 2);
    let page = api.get("/", "");
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.text().contains("<html"));
}

#[test]
fn a_keep_alive_connection_takes_many_requests_and_pipelined_ones_in_order() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=k");
    let mut api = Api::connect(&server);
    let mut ids = Vec::new();
    for n in 0..20 {
        let reply = api.post(FORM, &format!("to=k&data={n}"));
        assert_eq!(reply.header("connection"), Some("keep-alive"));
        ids.push(reply.json()["id"].as_str().unwrap().parse::<u64>().unwrap());
        assert_eq!(api.get("/healthz", "").status, 200);
    }
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(client.expect_data(&n.to_string()).id, *id);
    }
    // Three requests in one write: three answers, in order, the question's in the middle.
    let publish = "POST /publish HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\n\r\nto=k&data=";
    let pipelined = format!("{publish}GET /status HTTP/1.1\r\n\r\n{publish}");
    api.stream.write_all(pipelined.as_bytes()).unwrap();
    let first = api.read_reply().json();
    assert!(api.read_reply().json()["msgproccnt"].is_number());
    let third = api.read_reply().json();
    assert!(
        first["id"].as_str().unwrap().parse::<u64>().unwrap()
            < third["id"].as_str().unwrap().parse().unwrap()
    );
    // `Connection: close` is answered, then closed.
    let reply = api.get("/healthz", "Connection: close\r\n");
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(api.closed_within(WAIT));
}

/// A long pipelined burst of publishes on one connection, written while its answers are read:
/// the server's buffers fill both ways (it stops reading while its answers back up, and the
/// bytes it left in the socket are announced by no new event), yet every publish is answered.
#[test]
fn a_long_pipelined_burst_is_answered_whole() {
    const PUBLISHES: usize = 20_000;
    let server = Server::start(&[]);
    let api = Api::connect(&server);
    let mut reader = api.stream.try_clone().unwrap();
    let counting = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(60);
        let answers = |seen: &[u8]| seen.windows(17).filter(|w| w == b"HTTP/1.1 200 OK\r\n").count();
        while answers(&seen) < PUBLISHES && Instant::now() < deadline {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        answers(&seen)
    });
    let request =
        format!("POST /publish HTTP/1.1\r\nContent-Type: {FORM}\r\nContent-Length: 12\r\n\r\nto=nb&data=x");
    let mut writer = api.stream;
    for _ in 0..PUBLISHES / 100 {
        writer.write_all(request.repeat(100).as_bytes()).unwrap();
    }
    assert_eq!(counting.join().unwrap(), PUBLISHES);
}

#[test]
fn the_key_guards_everything_but_health() {
    let key_file = TempFile::new("api-key");
    std::fs::write(key_file.path(), "s3cret\n").unwrap();
    for flags in [&["--api-key", "s3cret"][..], &["--api-key-file", key_file.arg()]] {
        let server = Server::start(flags);
        let mut api = Api::connect(&server);
        for path in ["/status", "/clients", "/metrics", "/", "/nowhere"] {
            let reply = api.get(path, "");
            assert_eq!(reply.status, 401, "{path}");
            // A browser asks its user for the key; other clients send it as a bearer token.
            assert_eq!(
                reply.header("www-authenticate"),
                Some(r#"Basic realm="hasses API", charset="UTF-8""#)
            );
            assert!(reply.head.lines().any(|l| l.trim_end() == "WWW-Authenticate: Bearer"), "{}", reply.head);
            assert_eq!(api.get(path, "X-API-Key: wrong\r\n").status, 401, "{path}");
            assert_eq!(api.get(path, "Authorization: Bearer s3cre\r\n").status, 401, "{path}");
        }
        assert_eq!(api.post(FORM, "to=a&data=x").status, 401);
        assert_eq!(api.get("/healthz", "").status, 200);
        assert_eq!(api.get("/status", "X-API-Key: s3cret\r\n").status, 200);
        assert_eq!(api.get("/metrics", "Authorization: Bearer s3cret\r\n").status, 200);
        // base64("any:s3cret"): the key as a browser gives it, any user name.
        for path in ["/", "/status"] {
            assert_eq!(api.get(path, "Authorization: Basic YW55OnMzY3JldA==\r\n").status, 200, "{path}");
        }
        let request = "POST /publish HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\
                       Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\n\r\nto=a&data=";
        assert_eq!(api.send(request.as_bytes()).status, 200);
    }
}

#[test]
fn garbage_and_half_sent_requests_cost_only_their_connection() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=g");
    let mut garbage = Api::connect(&server);
    let reply = garbage.send(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 garbage\r\n\r\n");
    assert_eq!(reply.status, 400);
    assert!(garbage.closed_within(WAIT));
    let started = Instant::now();
    let mut half_head = Api::connect(&server);
    half_head.stream.write_all(b"GET /status HTTP/1.1\r\nHost: slow").unwrap();
    let mut half_body = Api::connect(&server);
    half_body
        .stream
        .write_all(b"POST /publish HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
        .unwrap();
    // Meanwhile everyone else is served.
    let mut api = Api::connect(&server);
    assert_eq!(api.post(FORM, "to=g&data=served").status, 200);
    client.expect_data("served");
    for half in [&mut half_head, &mut half_body] {
        assert!(half.closed_within(Duration::from_secs(13)), "a request that never completes is closed");
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(9), "closed after {waited:?}: before the request timeout");
    // A connection that closes mid-request is forgotten; the server goes on.
    let mut gone = Api::connect(&server);
    gone.stream.write_all(b"POST /publish HTTP/1.1\r\nContent-Length: 5\r\n\r\nto").unwrap();
    drop(gone);
    assert_eq!(api.post(FORM, "to=g&data=still").status, 200);
    client.expect_data("still");
}

#[test]
fn a_thousand_api_connections_while_publishing_goes_on() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=busy");
    let mut connections: Vec<Api> = (0..1000).map(|_| Api::connect(&server)).collect();
    // Every one of them is served, while the control port publishes in between.
    for (n, api) in connections.iter_mut().enumerate() {
        if n % 100 == 0 {
            server.publish(&format!("busy=control {n}"));
            client.expect_data(&format!("control {n}"));
        }
        let reply =
            if n % 2 == 0 { api.post(FORM, &format!("to=busy&data={n}")) } else { api.get("/healthz", "") };
        assert_eq!(reply.status, 200);
        if n % 2 == 0 {
            client.expect_data(&n.to_string());
        }
    }
    let status = connections[0].get("/status", "").json();
    assert_eq!(status["msgproccnt"], 510);
}

#[test]
fn legacy_flags_leave_the_api_off_and_modern_ones_can_turn_it_off() {
    let server = Server::start_exact(&["-p=0", "-murl=/sse", "-cp=0", "-nodaemon"]);
    assert_eq!(server.ready.api_port(), None, "{:?}", server.ready);
    let server = Server::start(&["--no-api"]);
    assert_eq!(server.ready.api_port(), None);
    let with_legacy =
        Server::start_exact(&["-p=0", "-murl=/sse", "-cp=0", "-nodaemon", "--api-bind", "127.0.0.1:0"]);
    assert!(with_legacy.ready.api_port().is_some());
    assert!(with_legacy.ready.value("STATUS").unwrap().contains(", API on 127.0.0.1:"));
}

#[test]
fn an_api_address_that_cannot_be_bound_stops_an_explicit_start_only() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, _, stderr) =
        common::run_to_exit(&["--port", "0", "--control-port", "0", "--api-bind", &addr]);
    assert!(!status.success());
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
}

/// curl, as an operator would type it (the README's examples).
#[test]
#[ignore = "needs curl: run by the README's test command"]
fn curl_publishes_and_asks() {
    let server = Server::start(&["--api-key", "k"]);
    let mut client = server.subscribe("subscribe=room1");
    let base = format!("http://127.0.0.1:{}", server.api_port());
    let curl = |args: &[&str]| {
        let output = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-H", "Authorization: Bearer k"])
            .args(args)
            .output()
            .expect("run curl");
        String::from_utf8(output.stdout).unwrap()
    };
    let out = curl(&["-d", "to=room1", "-d", "data=from curl", &format!("{base}/publish")]);
    assert!(out.starts_with("{\"id\":\"") && out.ends_with("\n200"), "{out}");
    client.expect_data("from curl");
    let out = curl(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"to":"room1","data":"json"}"#,
        &format!("{base}/publish"),
    ]);
    assert!(out.ends_with("\n200"), "{out}");
    client.expect_data("json");
    assert!(curl(&[&format!("{base}/status")]).ends_with("\n200"));
    assert!(curl(&["-X", "DELETE", &format!("{base}/publish")]).ends_with("\n405"));
    assert!(
        curl(&["-H", "Content-Type: text/plain", "-d", "x", &format!("{base}/publish")]).ends_with("\n415")
    );
}

/// Prometheus' own checker reads the metrics as a scrape would, and finds nothing to lint.
#[test]
#[ignore = "needs promtool: run by the README's test command"]
fn promtool_accepts_the_metrics() {
    let server = Server::start(&[]);
    let _client = server.subscribe("subscribe=m");
    server.publish("m=x");
    let metrics = Api::connect(&server).get("/metrics", "").body;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    promtool.stdin.take().unwrap().write_all(&metrics).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && said.is_empty(), "promtool: {said}");
}

/// The status page at `url` as headless Chromium has it once its scripts ran: virtual time
/// runs the page's timers (two polls and more) without waiting for them, and the DOM is dumped
/// once it is used up.
fn status_page(url: &str) -> String {
    let profile = crate::programs::TempDir::new("chromium-status-page");
    let output = crate::programs::chromium_command(&profile)
        .args(["--virtual-time-budget=4000", "--dump-dom"])
        .arg(url)
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The status page in a real browser: its scripts poll the API it came from and show the
/// connections per worker, a chart of publishes per second and the client list. Its table of
/// figures has every figure a shard declares, by its help text, with no edit to the page.
#[test]
#[ignore = "needs chromium: run by the README's test command"]
fn the_status_page_shows_the_figures_in_a_browser() {
    let server = Server::start(&[]);
    let _client = server.subscribe("subscribe=room1&id=watched");
    server.publish("room1=x");
    let dom = status_page(&format!("http://127.0.0.1:{}/", server.api_port()));
    assert!(dom.contains(r#"<b id="connections">1</b>"#), "{dom}");
    assert!(dom.contains(r#"<b id="workers">"#) && !dom.contains(r#"<b id="workers">–</b>"#), "{dom}");
    assert!(dom.contains("<polyline points="), "the charts are drawn: {dom}");
    assert!(dom.contains("<td>watched</td><td>room1</td>"), "the client list: {dom}");
    assert!(dom.contains(r#"<p id="error"></p>"#), "no request failed: {dom}");
    for figure in ShardFigures::FIGURES {
        let family = figure.metric.family;
        let series = match (family.label, figure.metric.value) {
            (Some(label), Some(value)) => format!("{label}=\"{value}\""),
            _ => String::new(),
        };
        let row = format!("<td>{}</td><td>{series}</td>", family.help);
        assert!(dom.contains(&row), "no figure {row:?} on the page: {dom}");
    }
}

/// With `--api-key`, the status page asks the browser for the key (Basic: any name, the key as
/// password), and the browser sends it with the page's own requests: given here in the URL, as
/// a user's answer to the prompt would be.
#[test]
#[ignore = "needs chromium: run by the README's test command"]
fn with_a_key_the_status_page_works_once_the_browser_has_it() {
    let server = Server::start(&["--api-key", "s3cret"]);
    let _client = server.subscribe("subscribe=room1&id=watched");
    let dom = status_page(&format!("http://operator:s3cret@127.0.0.1:{}/", server.api_port()));
    assert!(dom.contains(r#"<b id="connections">1</b>"#), "{dom}");
    assert!(dom.contains("<td>watched</td><td>room1</td>"), "the client list: {dom}");
    assert!(dom.contains(r#"<p id="error"></p>"#), "no request failed: {dom}");
}

/// The status page in a real browser, driven through the DevTools protocol: it shows the
/// figures, and its form publishes a test event that reaches a subscriber.
#[test]
#[ignore = "needs chromium: run by the README's test command"]
fn the_status_pages_form_publishes_an_event_a_subscriber_receives() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=room1&id=watched");
    let profile = crate::programs::TempDir::new("chromium-status-form");
    let url = format!("http://127.0.0.1:{}/", server.api_port());
    let mut page = crate::programs::Devtools::launch(&url, &profile);
    page.wait_until(r#"document.getElementById("connections").textContent === "1""#);
    page.wait_until(r#"!["", "–"].includes(document.getElementById("workers").textContent)"#);
    page.wait_until(r#"document.getElementById("clients").textContent.includes("watched")"#);
    assert_eq!(page.evaluate(r#"document.getElementById("error").textContent"#), "", "no request failed");

    let submitted = page.evaluate(
        r#"(() => {
            const form = document.getElementById("publish");
            form.elements.to.value = "room1";
            form.elements.data.value = "sent from the page";
            form.requestSubmit();
            return true;
        })()"#,
    );
    assert_eq!(submitted, true);
    match client.try_next_event(WAIT) {
        Ok(event) => assert_eq!(event.data, "sent from the page", "{event:?}"),
        Err(why) => panic!("the page's publish did not reach the subscriber ({why:?})\n{}", page.output()),
    }
    page.wait_until(r#"document.getElementById("published").textContent.startsWith("published, id ")"#);
}

/// The value of the series `name` (with its labels, as written) in metrics `text`.
fn metric_value(text: &str, name: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
    line.and_then(|l| l[name.len()..].trim().parse().ok()).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn the_delivery_latency_histogram_counts_every_delivery_once_written() {
    let server = Server::start(&[]);
    let mut clients: Vec<_> = (0..4).map(|_| server.subscribe("subscribe=lat")).collect();
    let mut other = server.subscribe("subscribe=elsewhere");
    for n in 0..5 {
        server.publish(&format!("lat={n}"));
    }
    server.publish("elsewhere=x");
    for client in &mut clients {
        (0..5).for_each(|n| drop(client.expect_data(&n.to_string())));
    }
    other.expect_data("x");
    let text = Api::connect(&server).get("/metrics", "").text();
    let count = metric_value(&text, "hasses_delivery_latency_seconds_count");
    assert_eq!(count, 21.0, "4 clients × 5 events, and 1: {text}");
    assert_eq!(count, metric_value(&text, "hasses_deliveries_total"));
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("hasses_delivery_latency_seconds_bucket"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 15, "14 bounds and +Inf");
    assert!(buckets.windows(2).all(|pair| pair[0] <= pair[1]), "cumulative: {buckets:?}");
    assert_eq!(buckets[14], count);
    let sum = metric_value(&text, "hasses_delivery_latency_seconds_sum");
    assert!(sum > 0.0 && sum < count * 1.0, "each took well under a second here: {sum}");
}
