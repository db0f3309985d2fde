//! The capacity benchmark, `hasses-bench`, run against the real server at a small N: every
//! scenario must complete with nothing lost, duplicated or misrouted.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The server, killed when dropped.
struct Server {
    child: Child,
    sse_port: u16,
    control_port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port at the end of `addr` (`[::]:PORT`, `127.0.0.1:PORT`).
fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Starts `program` with `args` (free ports) and reads the ports from its start-up lines: the
/// SSE port from the line holding `sse_label`, the control port from the one with `control_label`.
fn start(program: &Path, args: &[&str], sse_label: &str, control_label: &str) -> Server {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    // Keeps draining stderr after the start-up lines, so the server never blocks on it.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut sse_port, mut control_port) = (None, None);
    while sse_port.is_none() || control_port.is_none() {
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("{} did not report its ports", program.display());
            }
        };
        if let Some(rest) = line.split(sse_label).nth(1) {
            sse_port = rest.split_whitespace().next().and_then(port_of);
        }
        if let Some(rest) = line.split(control_label).nth(1) {
            control_port = rest.split_whitespace().next().and_then(port_of);
        }
    }
    Server { child, sse_port: sse_port.unwrap(), control_port: control_port.unwrap() }
}

/// Runs hasses-bench with `args` (split on white space) against `server`, its figures written as
/// JSON lines; asserts it succeeded, and returns its report and its lines.
fn run_bench(server: &Server, args: &str) -> (String, Vec<serde_json::Value>) {
    run_bench_on(&[server], server, &[server], args, &[])
}

/// Runs hasses-bench with `args` (split on white space) and `whole` (arguments as they are), its
/// connections spread over `sse`, its messages sent through `control`'s control port, the CPU
/// of `pids` summed, its figures written as JSON lines; asserts it succeeded, and returns its
/// report and its lines.
fn run_bench_on(
    sse: &[&Server],
    control: &Server,
    pids: &[&Server],
    args: &str,
    whole: &[&str],
) -> (String, Vec<serde_json::Value>) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let json =
        std::env::temp_dir().join(format!("hasses-bench-test-{}-{}.jsonl", control.child.id(), args[0]));
    let _ = std::fs::remove_file(&json);
    let list = |items: Vec<String>| items.join(",");
    let out = Command::new(crate::common::bench_tool::path())
        .args(&args)
        .args(whole)
        .args(["--sse", &list(sse.iter().map(|s| format!("127.0.0.1:{}", s.sse_port)).collect())])
        .args(["--control", &format!("127.0.0.1:{}", control.control_port)])
        .args(["--server-pid", &list(pids.iter().map(|s| s.child.id().to_string()).collect())])
        .arg("--json-out")
        .arg(&json)
        .output()
        .expect("run hasses-bench");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "hasses-bench failed:\n{report}");
    let text = std::fs::read_to_string(&json).expect("the JSON lines");
    let _ = std::fs::remove_file(&json);
    let lines = text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    (report, lines)
}

/// 50 connections, each one subscriber.
const FIFTY: [&str; 2] = ["-n", "50"];

/// Runs every scenario at N = 50 against `server`; each must complete with nothing lost.
fn all_scenarios_lose_nothing(server: &Server) {
    let lines = all_scenarios_lose_nothing_on(&[server], server, &[server], &FIFTY);
    assert_eq!(lines[0]["server_clients"], 50);
    // One address, one process: none of the figures of several.
    assert!(lines.iter().all(|l| l.get("sse_addresses").is_none() && l.get("server_cpu_s_each").is_none()));
}

/// Runs every scenario as [`run_bench_on`] does, over `load`'s 50 subscribers (50 connections,
/// or HTTP/2 streams over fewer); each must complete with nothing lost. Returns the JSON lines.
fn all_scenarios_lose_nothing_on(
    sse: &[&Server],
    control: &Server,
    pids: &[&Server],
    load: &[&str],
) -> Vec<serde_json::Value> {
    let scenarios = "all --quiet --messages 5 --interval-ms 20 --burst 20 --targeted 1000 \
                     --idle-secs 0.2 --timeout 30 --stall-secs 5";
    let (report, lines) = run_bench_on(sse, control, pids, scenarios, load);
    let names: Vec<&str> = lines.iter().map(|l| l["scenario"].as_str().unwrap_or("?")).collect();
    assert_eq!(names, ["connect", "idle", "broadcast", "burst", "targeted"], "{report}");
    for line in &lines {
        for key in ["lost", "duplicated", "misrouted", "id_errors", "closed", "connect_failed"] {
            assert_eq!(line[key], 0, "{key} in {line}\n{report}");
        }
        assert_eq!(line["ok"], true, "{line}\n{report}");
    }
    assert_eq!(lines[0]["handshaked"], 50, "{report}");
    assert_eq!(lines[2]["deliveries"], 50 * 5, "{report}");
    assert_eq!(lines[3]["deliveries"], 50 * 20, "{report}");
    assert_eq!(lines[4]["received"], 1000, "{report}");
    // Every targeted message's own latency, exact.
    let targeted = &lines[4];
    let p50 = targeted["last_receiver_ms_p50"].as_f64().unwrap_or(0.0);
    assert!(p50 > 0.0 && targeted["last_receiver_ms_max"].as_f64() >= Some(p50), "{report}");
    lines
}

/// The start-up flags of a plain server on free ports.
const PLAIN: [&str; 6] = ["--port", "0", "--control-port", "0", "--log-level", "0"];

fn hasses(args: &[&str]) -> Server {
    start(Path::new(env!("CARGO_BIN_EXE_hasses")), args, "SSE listening on ", "Control listening on ")
}

#[test]
fn all_scenarios_at_small_n_lose_nothing() {
    all_scenarios_lose_nothing(&hasses(&PLAIN));
}

/// Paced at 2,000 a second, 500 targeted messages take a quarter of a second, and each one's
/// publish-to-delivery latency is reported.
#[test]
fn targeted_at_a_paced_rate_reports_each_messages_latency() {
    let server = hasses(&PLAIN);
    let args = "targeted -n 50 --quiet --rate 2000 --targeted 500 --timeout 30 --stall-secs 5";
    let (report, lines) = run_bench(&server, args);
    let targeted = lines.last().expect("a line per phase");
    assert_eq!(targeted["scenario"], "targeted", "{report}");
    for key in ["lost", "duplicated", "misrouted", "id_errors", "closed"] {
        assert_eq!(targeted[key], 0, "{key} in {targeted}\n{report}");
    }
    assert_eq!((targeted["received"].as_u64(), targeted["rate_per_s"].as_u64()), (Some(500), Some(2000)));
    // The last is due 499/2000 s after the first: not all at once.
    assert!(targeted["all_received_s"].as_f64().is_some_and(|s| s >= 0.24), "{report}");
    let quantile = |q: &str| targeted[format!("last_receiver_ms_{q}")].as_f64().unwrap_or(-1.0);
    let (p50, p99, max) = (quantile("p50"), quantile("p99"), quantile("max"));
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{p50} {p99} {max}\n{report}");
    assert!(report.contains("(paced 2000/s)") && report.contains("p50/p99/max "), "{report}");
}

/// The presence phase polls the HTTP API's count, which must count every connection, and
/// times each poll.
#[test]
fn presence_counts_every_connection_and_times_each_poll() {
    let api = format!("127.0.0.1:{}", crate::common::free_port());
    let server = hasses(&[&PLAIN[..], &["--api-bind", &api]].concat());
    let args = format!("presence -n 50 --quiet --polls 200 --api {api} --timeout 30 --stall-secs 5");
    let (report, lines) = run_bench(&server, &args);
    let presence = lines.last().expect("a line per phase");
    assert_eq!(presence["scenario"], "presence", "{report}");
    let counts = ["polls", "presence_count", "expected_count"].map(|key| presence[key].as_u64());
    assert_eq!(counts, [Some(200), Some(50), Some(50)], "{report}");
    let (p50, max) = (presence["poll_ms_p50"].as_f64(), presence["poll_ms_max"].as_f64());
    assert!(p50.is_some_and(|p50| p50 > 0.0) && max >= p50, "{report}");
    assert!(report.contains("µs/poll"), "{report}");
}

/// The same server given twice counts as one: every scenario completes, nothing lost, and the
/// CPU of two processes is summed and kept each.
#[test]
fn the_same_server_twice_and_two_pids_lose_nothing() {
    let (server, other) = (hasses(&PLAIN), hasses(&PLAIN));
    let lines = all_scenarios_lose_nothing_on(&[&server, &server], &server, &[&server, &other], &FIFTY);
    assert_eq!(lines[0]["server_clients"], 50, "both addresses are the one server");
    for line in &lines {
        assert_eq!(line["sse_addresses"], 2, "{line}");
        let each = line["server_cpu_s_each"].as_array().map_or(0, Vec::len);
        assert_eq!(each, 2, "{line}");
    }
}

/// Over two servers, connection i goes to the (i mod 2)th: each has half.
#[test]
fn connections_spread_evenly_over_several_servers() {
    let (a, b) = (hasses(&PLAIN), hasses(&PLAIN));
    let (report, lines) = run_bench_on(&[&a, &b], &a, &[&a, &b], "connect -n 50 --quiet --timeout 30", &[]);
    assert_eq!(lines[0]["handshaked"], 50, "{report}");
    assert_eq!(lines[0]["server_clients"], 25, "the control server counts its own half\n{report}");
    assert!(!report.contains("warning"), "{report}");
    assert!(report.contains("server CPU s by process: "), "{report}");
}

/// A self-signed certificate for 127.0.0.1 and its key, in files.
fn certificate() -> (crate::common::TempFile, crate::common::TempFile) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("a certificate");
    let (cert, key) = (crate::common::TempFile::new("cert.pem"), crate::common::TempFile::new("key.pem"));
    std::fs::write(cert.path(), made.cert.pem()).unwrap();
    std::fs::write(key.path(), made.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

/// Over TLS, each connection verifies and resumes with its own server: tickets are kept per
/// address (two servers do not share their ticket keys), so every reconnect resumes.
#[test]
fn over_tls_each_server_resumes_its_own_sessions() {
    let (cert, key) = certificate();
    let mut args = PLAIN.to_vec();
    args.extend(["--no-api", "--tls-cert", cert.arg(), "--tls-key", key.arg()]);
    let (a, b) = (hasses(&args), hasses(&args));
    let bench = format!("connect -n 40 --quiet --timeout 30 --tls --tls-resume --ca {}", cert.arg());
    let (report, lines) = run_bench_on(&[&a, &b], &a, &[&a, &b], &bench, &[]);
    let names: Vec<&str> = lines.iter().map(|l| l["scenario"].as_str().unwrap_or("?")).collect();
    assert_eq!(names, ["connect", "reconnect"], "{report}");
    assert_eq!(lines[0]["tls_handshakes"], 40, "{report}");
    assert_eq!(lines[1]["tls_resumed_handshakes"], 40, "{report}");
}

/// Over HTTP/2, 10 connections of 5 streams each: every stream is a subscriber and a client of
/// the server's, every scenario loses nothing; h2c with prior knowledge on the plain port, and
/// h2 over TLS (ALPN), whose idle memory is told per connection and per stream.
#[test]
fn over_http2_every_stream_is_a_subscriber_and_loses_nothing() {
    let streams = ["-n", "10", "--http2", "--streams-per-connection", "5"];
    let plain = hasses(&PLAIN);
    let lines = all_scenarios_lose_nothing_on(&[&plain], &plain, &[&plain], &streams);
    assert_eq!(lines[0]["server_clients"], 50, "a stream is a client: {}", lines[0]);
    assert_eq!(lines[0]["streams_per_connection"], 5);
    let (cert, key) = certificate();
    let mut args = PLAIN.to_vec();
    args.extend(["--tls-cert", cert.arg(), "--tls-key", key.arg()]);
    let tls = hasses(&args);
    let over_tls = [&streams[..], &["--tls", "--ca", cert.arg()]].concat();
    let lines = all_scenarios_lose_nothing_on(&[&tls], &tls, &[&tls], &over_tls);
    assert_eq!(lines[0]["tls_handshakes"], 10, "one handshake a connection: {}", lines[0]);
    let idle = &lines[1];
    assert_eq!((idle["live_connections"].as_u64(), idle["live_streams"].as_u64()), (Some(10), Some(50)));
    let (per_connection, per_stream) = (&idle["rss_bytes_per_connection"], &idle["rss_bytes_per_stream"]);
    assert!(per_connection.is_number() && per_stream.is_number(), "{idle}");
}

/// Three nodes over one Redis: clients spread over them, messages published on the first,
/// every one delivered once, paced or not.
#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn a_cluster_of_three_nodes_loses_nothing() {
    let redis = crate::cluster::Redis::start(false, &[]);
    let url = redis.url();
    let mut args = PLAIN.to_vec();
    args.extend(["--no-api", "--cluster", &url]);
    let nodes = [hasses(&args), hasses(&args), hasses(&args)];
    let nodes: Vec<&Server> = nodes.iter().collect();
    let lines = all_scenarios_lose_nothing_on(&nodes, nodes[0], &nodes, &FIFTY);
    assert_eq!(lines[0]["server_clients"], 17, "node 1 holds connections 0, 3, ..., 48");
    let args = "targeted -n 60 --quiet --rate 1000 --targeted 300 --timeout 30 --stall-secs 5";
    let (report, lines) = run_bench_on(&nodes, nodes[0], &nodes, args, &[]);
    let targeted = lines.last().expect("a line per phase");
    assert_eq!(
        (targeted["ok"].as_bool(), targeted["received"].as_u64()),
        (Some(true), Some(300)),
        "{report}"
    );
    assert_eq!(targeted["server_cpu_s_each"].as_array().map(Vec::len), Some(3), "{report}");
}

/// The cluster's yardstick reads back every entry it appended, and says how long each took.
#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn stream_hop_reads_back_every_entry_and_times_it() {
    let redis = crate::cluster::Redis::start(false, &[]);
    let json = crate::common::TempFile::new("hop.jsonl");
    let out = Command::new(crate::common::bench_tool::path())
        .args(["stream-hop", "--redis", &redis.url(), "--rate", "2000", "--targeted", "400"])
        .args(["--json-out", json.arg()])
        .output()
        .expect("run hasses-bench");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json.path()).unwrap()).unwrap();
    assert_eq!((line["sent"].as_u64(), line["received"].as_u64()), (Some(400), Some(400)), "{report}");
    let (p50, p99) = (line["hop_ms_p50"].as_f64().unwrap(), line["hop_ms_p99"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99, "{line}");
    // Nobody listens there: one clear line, a failure.
    let nobody = format!("redis://127.0.0.1:{}", crate::common::free_port());
    let out = Command::new(crate::common::bench_tool::path())
        .args(["stream-hop", "--redis", &nobody, "--targeted", "10"])
        .output()
        .expect("run hasses-bench");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("--redis {nobody}")));
}

/// The yardstick serves the same traffic just as faithfully, or its figures would mean nothing.
#[test]
fn the_floor_server_serves_every_scenario() {
    let args = ["floor-server", "--sse", "127.0.0.1:0", "--control", "127.0.0.1:0"];
    let server = start(crate::common::bench_tool::path(), &args, "SSE on ", "control on ");
    all_scenarios_lose_nothing(&server);
}

/// 200 clients close, miss 100 events each, and resume with `Last-Event-ID`: every one gets
/// exactly its missed events, in order, without a reset, then a live event.
#[test]
fn resume_at_small_n_replays_every_missed_event_once() {
    let server = hasses(&PLAIN);
    let (report, lines) = run_bench(&server, "resume -n 200 --quiet --burst 20 --timeout 30 --stall-secs 5");
    let resume = lines.last().expect("a line per phase");
    assert_eq!(resume["scenario"], "resume", "{report}");
    for key in ["lost", "duplicated", "misrouted", "id_errors", "resets", "foreign", "closed"] {
        assert_eq!(resume[key], 0, "{key} in {resume}\n{report}");
    }
    assert_eq!(resume["resumed"], 200, "{report}");
    assert_eq!(resume["replayed"], 200 * 100, "{report}");
    assert_eq!(resume["live_after_replay"], 200, "{report}");
    assert!(resume["budget_us_per_resume"].as_f64().is_some_and(|b| b > 0.0), "{report}");
}

/// 200 clients, a publisher every 5 ms, and the server restarted (SIGTERM, then started again
/// on the same ports and history file): every client comes back and resumes exactly, with no
/// event lost, twice, out of order, and no reset.
#[test]
fn a_restart_with_the_history_file_loses_and_resets_no_one() {
    let file = crate::common::TempFile::new("history");
    let flags = ["--history-file", file.arg(), "--no-api", "--drain-secs", "1", "--log-level", "0"];
    let server = hasses(&[&["--port", "0", "--control-port", "0"][..], &flags].concat());
    let again = format!(
        "exec {} --port {} --control-port {} {}",
        env!("CARGO_BIN_EXE_hasses"),
        server.sse_port,
        server.control_port,
        flags.join(" ")
    );
    let (restart, report) = switch_loses_nothing(&server, "restart", &["--server-cmd", &again]);
    let back = restart["all_back_s"].as_f64().expect("all came back");
    assert!(restart["all_caught_up_s"].as_f64() >= Some(back), "{report}");
    assert!(restart["budget_us_per_return"].as_f64().is_some_and(|b| b > 0.0), "{report}");
}

/// The same with an upgrade in place (SIGUSR2) instead of a restart, and no history file: the
/// new process has the old one's history from the hand-over, and publishes are taken all along.
#[test]
fn an_upgrade_loses_and_resets_no_one_and_keeps_taking_publishes() {
    let server =
        hasses(&["--port", "0", "--control-port", "0", "--no-api", "--drain-secs", "1", "--log-level", "0"]);
    switch_loses_nothing(&server, "upgrade", &[]);
}

/// Runs the `scenario` (restart or upgrade) of 200 clients against `server` with `extra`
/// arguments, and checks nothing was lost, repeated, reordered or reset, every client came back
/// and publishing went on; returns its line and the whole report.
fn switch_loses_nothing(server: &Server, scenario: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let args = format!("{scenario} -n 200 --quiet --timeout 30 --stall-secs 5");
    let (report, lines) = run_bench_on(&[server], server, &[server], &args, extra);
    let line = lines.last().expect("a line per phase").clone();
    assert_eq!(line["scenario"], scenario, "{report}");
    for key in ["lost", "duplicated", "misrouted", "id_errors", "resets", "foreign", "closed"] {
        assert_eq!(line[key], 0, "{key} in {line}\n{report}");
    }
    assert_eq!(line["returned"], 200, "{report}");
    assert!(line["published"].as_u64() > Some(100), "published all along: {report}");
    (line, report)
}

/// publish-http publishes both ways, or one alone with --via (as benches/publish-instructions.sh
/// runs it), every publish answered, and reports each way it took.
#[test]
fn publish_http_reports_each_way_and_one_alone() {
    let api = format!("127.0.0.1:{}", crate::common::free_port());
    let server = hasses(&[&PLAIN[..], &["--api-bind", &api]].concat());
    let publish = |via: &str| {
        let out = Command::new(crate::common::bench_tool::path())
            .args(["publish-http", "--publishes", "300", "--via", via, "--api", &api])
            .args(["--control", &format!("127.0.0.1:{}", server.control_port)])
            .args(["--server-pid", &server.child.id().to_string()])
            .output()
            .expect("run hasses-bench");
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
        report
    };
    let both = publish("both");
    assert!(["control line", "HTTP API", "HTTP / control"].iter().all(|row| both.contains(row)), "{both}");
    let http = publish("http");
    assert!(http.contains("HTTP API") && !http.contains("control line") && !http.contains(" / "), "{http}");
    let line = publish("line");
    assert!(line.contains("control line") && !line.contains("HTTP API") && !line.contains(" / "), "{line}");
}

#[test]
fn help_documents_every_scenario() {
    let out =
        Command::new(crate::common::bench_tool::path()).arg("--help").output().expect("run hasses-bench");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for scenario in [
        "connect",
        "idle",
        "broadcast",
        "burst",
        "targeted",
        "all",
        "resume",
        "restart",
        "upgrade",
        "publish-http",
        "presence",
        "tls-handshakes",
        "floor-server",
        "stream-hop",
    ] {
        assert!(help.contains(scenario), "--help does not mention {scenario}:\n{help}");
    }
    for cluster in
        ["--rate", "(i mod k)th", "sum over them all", "server_cpu_s_each", "last_receiver_ms_p50", "--http2"]
    {
        assert!(help.contains(cluster), "--help does not mention {cluster}:\n{help}");
    }
}
