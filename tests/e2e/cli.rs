//! The process (spec §1, §2, §6): the legacy command line, the config file, daemon mode and its
//! log file, signals and the pid file, and command lines that must be refused.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::{self, port_after, run_to_exit, wait_until, Server, SseClient, Stream, TempFile, WAIT};

/// Asserts a refused command line: non-zero exit, one line on stderr that contains `needle`.
fn assert_refused(args: &[&str], needle: &str) {
    let (status, out, err) = run_to_exit(args);
    assert!(!status.success(), "{args:?} must fail; stdout {out:?} stderr {err:?}");
    assert_eq!(err.lines().count(), 1, "one line for {args:?}: {err:?}");
    assert!(err.contains(needle), "{err:?} should name {needle:?} for {args:?}");
    assert!(out.is_empty(), "nothing on stdout for {args:?}: {out:?}");
}

#[test]
fn unknown_legacy_switch_is_refused() {
    assert_refused(&["-p=8080", "-murl=/sse", "-cp=8085", "-nodaemon", "-bogus"], "-bogus");
    let (status, _, _) = run_to_exit(&["-x"]);
    assert_eq!(status.code(), Some(1), "exit 1 as hasses does");
}

#[test]
fn relative_paths_are_refused() {
    for (flag, name) in [("-fifo=run/h.fifo", "-fifo"), ("-pidfile=h.pid", "-pidfile"), ("-l=h.log", "-l")] {
        let args = ["-p=0", "-murl=/sse", "-cp=1", "-nodaemon", flag];
        assert_refused(&args, "path must be absolute");
        assert_refused(&args, name);
    }
    assert_refused(&["--fifo", "relative.fifo"], "path must be absolute");
}

#[test]
fn missing_legacy_flags_are_refused() {
    assert_refused(&["-murl=/sse", "-cp=8085", "-nodaemon"], "-p");
    assert_refused(&["-p=8080", "-cp=8085", "-nodaemon"], "-murl");
    assert_refused(&["-p=8080", "-murl=/sse", "-nodaemon"], "-cp");
}

#[test]
fn bad_values_and_files_are_refused() {
    assert_refused(&["--workers", "0"], "--workers");
    assert_refused(&["--port", "99999"], "--port");
    assert_refused(&["--separator", "ab"], "--separator");
    assert_refused(&["--log-level", "3"], "--log-level");
    let file = TempFile::new("not-a-fifo");
    std::fs::write(file.path(), "x").unwrap();
    assert_refused(&["--port", "0", "--control-port", "0", "--fifo", file.arg()], "not a FIFO");
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    assert_refused(&["--port", "0", "--control-port", &port], &port);
    drop(taken);
    // An SSE port another server holds: SO_REUSEPORT must not let a second one share it.
    let first = Server::start(&[]);
    let port = first.sse_port.to_string();
    assert_refused(&["--port", &port, "--control-port", "0"], &port);
}

#[test]
fn bind_addresses_are_honoured() {
    let server = Server::start(&["--bind", "127.0.0.1"]);
    server
        .log
        .wait_for_line(|l| l == format!("SSE listening on 127.0.0.1:{} path /sse", server.sse_port), WAIT);
    let mut client = server.subscribe("subscribe=a");
    server.publish("a=v4");
    client.expect_data("v4");
    // The control port is on loopback unless asked otherwise.
    let server = Server::start(&["--control-bind", "0.0.0.0"]);
    server.log.wait_for_line(|l| l == format!("Control listening on 0.0.0.0:{}", server.cport()), WAIT);
    let server = Server::start(&[]);
    server.log.wait_for_line(|l| l == format!("Control listening on 127.0.0.1:{}", server.cport()), WAIT);
    server.log.wait_for_line(|l| l == format!("SSE listening on [::]:{} path /sse", server.sse_port), WAIT);
}

#[test]
fn legacy_and_modern_flags_mix() {
    let server = Server::start_exact(&[
        "-p=0",
        "--match-url",
        "/mixed",
        "--control-port",
        "0",
        "-nodaemon",
        "--workers",
        "3",
    ]);
    let mut client = SseClient::connect(server.sse_port);
    client.handshake(b"GET /mixed?subscribe=m HTTP/1.1\r\n\r\n");
    server.publish("m=mixed");
    client.expect_data("mixed");
    assert_eq!(server.tcp_json("tcpstatus")["workers"], 3);
}

#[test]
fn help_and_version_exit_0() {
    for flag in ["-h", "-help", "--help"] {
        let (status, out, _) = run_to_exit(&[flag]);
        assert!(status.success(), "{flag}");
        for documented in ["--port", "--max-backlog", "--handshake-timeout", "--workers", "--fifo"] {
            assert!(out.contains(documented), "{flag} documents {documented}");
        }
    }
    for flag in ["-v", "-V", "-version", "--version"] {
        let (status, out, _) = run_to_exit(&[flag]);
        assert!(status.success(), "{flag}");
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{flag}: {out:?}");
    }
}

#[test]
fn sigterm_exits_0_closes_clients_and_removes_the_pid_file() {
    // Ten rounds each: a shutdown race shows up in some runs only.
    for signal in [Signal::SIGTERM, Signal::SIGINT].repeat(10) {
        let pidfile = TempFile::new("hasses.pid");
        let mut server = Server::start(&["--pidfile", pidfile.arg()]);
        let written = std::fs::read_to_string(pidfile.path()).expect("the pid file");
        assert_eq!(written.trim(), server.pid().to_string());
        let mut client = server.subscribe("subscribe=a");
        server.signal(signal);
        let status = server.wait_exit(WAIT).unwrap_or_else(|| panic!("the server did not exit on {signal}"));
        assert!(status.success(), "exit 0 on {signal}: {status:?}");
        assert!(!pidfile.path().exists(), "the pid file is removed on {signal}");
        assert!(client.wait_closed(WAIT), "clients are closed on {signal}");
    }
}

#[test]
fn legacy_command_line_serves_a_curl_like_client_and_a_publish() {
    let server = Server::start_exact(&["-p=0", "-murl=/sse", "-cp=0", "-nodaemon"]);
    let (sse, control) = (server.sse_port, server.cport());
    // -nodaemon logs to stdout, without a prefix. The start-up lines may still be on their way
    // when the server is ready: wait for the last.
    server.log.wait_for_line(|l| l.starts_with("Control listening on "), WAIT);
    let lines = server.log.lines_with_stream();
    let listening =
        lines.iter().find(|(_, l)| l.starts_with("SSE listening on ")).expect("the start-up line");
    assert_eq!(listening.0, Stream::Stdout, "{lines:?}");
    assert!(lines
        .iter()
        .any(|(s, l)| *s == Stream::Stdout && l == &format!("Control listening on 127.0.0.1:{control}")));

    // What curl -N sends: no Connection header, Accept: */*.
    let mut client = SseClient::connect(sse);
    client.handshake(
        format!("GET /sse?subscribe=news HTTP/1.1\r\nHost: 127.0.0.1:{sse}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(common::control(control, "news=hi\n"), "");
    client.expect_data("hi");
}

#[test]
fn every_legacy_flag_together() {
    let fifo = TempFile::new("legacy.fifo");
    let pidfile = TempFile::new("legacy.pid");
    let args = [
        "-p=0".into(),
        "-murl=/events".into(),
        "-cp=0".into(),
        format!("-fifo={}", fifo.arg()),
        "-sep=|".into(),
        "-ra".into(),
        "-cors-base=https://legacy.example".into(),
        format!("-pidfile={}", pidfile.arg()),
        "-debug".into(),
        "-nodaemon".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start_exact(&args);
    let mut client = SseClient::connect(server.sse_port);
    let head = client.handshake(b"GET /events?subscribe=a HTTP/1.1\r\n\r\n").clone();
    assert_eq!(head.header("Access-Control-Allow-Origin"), Some("https://legacy.example"));
    common::write_fifo(fifo.path(), b"a=x;y|a=2\n");
    client.expect_data("x;y");
    client.expect_data("2");
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["loglevel"], 2, "{status}");
    assert_eq!(status["reinit"], true, "{status}");
    assert_eq!(std::fs::read_to_string(pidfile.path()).unwrap().trim(), server.pid().to_string());
    // -q: level 0.
    drop(client);
    server.stop();
    let quiet = Server::start_exact(&["-p=0", "-murl=/sse", "-cp=0", "-q", "-nodaemon"]);
    assert_eq!(quiet.tcp_json("tcpstatus")["loglevel"], 0);
}

#[test]
fn config_file_in_the_hasses_conf_format() {
    let conf = TempFile::new("hasses.conf");
    std::fs::write(
        conf.path(),
        "# hasses configuration\n-p=0\n\n-murl=/sse\n# the control port\n-cp=0\n-nodaemon\n",
    )
    .unwrap();
    let server = Server::start_exact(&["--config", conf.arg()]);
    let mut client = server.subscribe("subscribe=a");
    server.publish("a=from conf");
    client.expect_data("from conf");
}

/// Waits for a line containing `needle` in the file at `path`.
fn wait_for_file_line(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no {needle:?} in {}: {text:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the daemon whose pid is in the pid file, if it is still there.
struct Daemon<'a>(&'a Path);

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(self.0).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS hasses: `
fn has_hasses_prefix(line: &str) -> bool {
    let b = line.as_bytes();
    line.len() > 28
        && b[..19].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
        && &line[19..28] == " hasses: "
}

#[test]
fn legacy_without_nodaemon_daemonizes_and_logs_to_the_file() {
    let log = TempFile::new("daemon.log");
    let pidfile = TempFile::new("daemon.pid");
    let args = [
        "-p=0".into(),
        "-murl=/sse".into(),
        "-cp=0".into(),
        format!("-l={}", log.arg()),
        format!("-pidfile={}", pidfile.arg()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, out, err) = run_to_exit(&args);
    let _daemon = Daemon(pidfile.path());
    assert!(status.success(), "the launching process exits 0: {err}");
    assert!(out.is_empty() && err.is_empty(), "nothing on the terminal: {out:?} {err:?}");
    let line = wait_for_file_line(log.path(), "SSE listening on ");
    assert!(has_hasses_prefix(&line), "{line:?}");
    let sse = port_after(&line, "SSE listening on ").expect("the SSE port");
    let line = wait_for_file_line(log.path(), "Control listening on ");
    let control = port_after(&line, "Control listening on ").expect("the control port");
    let pid: i32 = std::fs::read_to_string(pidfile.path()).unwrap().trim().parse().expect("a pid");
    let mut client = SseClient::subscribe(sse, "subscribe=a");
    assert_eq!(common::control(control, "a=daemon\n"), "");
    client.expect_data("daemon");

    // SIGHUP reopens the log file (logrotate).
    let rotated = TempFile::new("daemon.log.1");
    std::fs::rename(log.path(), rotated.path()).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP).unwrap();
    // Its first line in the new file says it reopened; what follows goes there too.
    let line = wait_for_file_line(log.path(), "Log file reopened");
    assert!(has_hasses_prefix(&line), "{line:?}");
    assert_eq!(common::control(control, "status\n"), "");
    let line = wait_for_file_line(log.path(), "------- status of hasses -------");
    assert!(has_hasses_prefix(&line), "{line:?}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    wait_until(WAIT, "the daemon removes its pid file on SIGTERM", || !pidfile.path().exists());
}

#[test]
#[ignore = "needs curl and nc: run by the README's test command"]
fn readme_walkthrough_with_curl_and_nc() {
    let server = Server::start_exact(&["-p=0", "-murl=/sse", "-cp=0", "-nodaemon"]);
    let (sse, control) = (server.sse_port, server.cport());
    let mut curl = Command::new("curl")
        .args(["-sN", "--max-time", "10", &format!("http://127.0.0.1:{sse}/sse?subscribe=a")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl is installed (.ci/test installs it)");
    let (tx, rx) = mpsc::channel();
    let stdout = curl.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let handshaked = server.wait_json("tcpstatus", "sseconncli", 1);
    assert_eq!(handshaked["sseconncli"], 1, "curl handshaked");
    let mut nc = Command::new("nc")
        .args(["-q1", "127.0.0.1", &control.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("nc is installed (.ci/test installs it)");
    nc.stdin.take().unwrap().write_all(b"a=hi\n").unwrap();
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while !got.contains(&"data: hi".to_string()) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => got.push(line),
            Err(_) => break,
        }
    }
    let _ = nc.wait();
    let _ = curl.kill();
    let _ = curl.wait();
    assert!(got.contains(&"data: hi".to_string()), "curl printed {got:?}");
    assert!(got.first().is_some_and(|l| l.starts_with("id: ")), "curl printed {got:?}");
}
