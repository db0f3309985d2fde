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
    let args: Vec<&str> = args.split_whitespace().collect();
    let json =
        std::env::temp_dir().join(format!("hasses-bench-test-{}-{}.jsonl", server.child.id(), args[0]));
    let _ = std::fs::remove_file(&json);
    let out = Command::new(crate::common::bench_tool::path())
        .args(&args)
        .args(["--sse", &format!("127.0.0.1:{}", server.sse_port)])
        .args(["--control", &format!("127.0.0.1:{}", server.control_port)])
        .args(["--server-pid", &server.child.id().to_string()])
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

/// Runs every scenario at N = 50 against `server`; each must complete with nothing lost.
fn all_scenarios_lose_nothing(server: &Server) {
    let scenarios = "all -n 50 --quiet --messages 5 --interval-ms 20 --burst 20 --targeted 1000 \
                     --idle-secs 0.2 --timeout 30 --stall-secs 5";
    let (report, lines) = run_bench(server, scenarios);
    let names: Vec<&str> = lines.iter().map(|l| l["scenario"].as_str().unwrap_or("?")).collect();
    assert_eq!(names, ["connect", "idle", "broadcast", "burst", "targeted"], "{report}");
    for line in &lines {
        for key in ["lost", "duplicated", "misrouted", "id_errors", "closed", "connect_failed"] {
            assert_eq!(line[key], 0, "{key} in {line}\n{report}");
        }
        assert_eq!(line["ok"], true, "{line}\n{report}");
    }
    assert_eq!(lines[0]["handshaked"], 50, "{report}");
    assert_eq!(lines[0]["server_clients"], 50, "{report}");
    assert_eq!(lines[2]["deliveries"], 50 * 5, "{report}");
    assert_eq!(lines[3]["deliveries"], 50 * 20, "{report}");
    assert_eq!(lines[4]["received"], 1000, "{report}");
}

#[test]
fn all_scenarios_at_small_n_lose_nothing() {
    let args = ["--port", "0", "--control-port", "0", "--log-level", "0"];
    let server =
        start(Path::new(env!("CARGO_BIN_EXE_hasses")), &args, "SSE listening on ", "Control listening on ");
    all_scenarios_lose_nothing(&server);
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
    let args = ["--port", "0", "--control-port", "0", "--log-level", "0"];
    let server =
        start(Path::new(env!("CARGO_BIN_EXE_hasses")), &args, "SSE listening on ", "Control listening on ");
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

#[test]
fn help_documents_every_scenario() {
    let out =
        Command::new(crate::common::bench_tool::path()).arg("--help").output().expect("run hasses-bench");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for scenario in
        ["connect", "idle", "broadcast", "burst", "targeted", "all", "resume", "publish-http", "floor-server"]
    {
        assert!(help.contains(scenario), "--help does not mention {scenario}:\n{help}");
    }
}
