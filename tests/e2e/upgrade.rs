//! Replacing the binary with no gap (issue 22, SIGUSR2 / `systemctl reload`): the running server
//! hands its sockets, its publishers' connections and its history to a new process of the
//! binary, then drains; the clients come back to the new one and resume. Nothing is refused,
//! lost, duplicated or reordered, and nobody gets `event: reset`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::*;
use crate::programs::{find_program, Process, TempDir};

/// Events published in each test.
const EVENTS: usize = 150;
/// How long a whole upgrade may take here: the drain time and the clients' returns.
const UPGRADE: Duration = Duration::from_secs(20);

/// A process the test did not start (the server's successor): stopped with SIGTERM when dropped.
pub(crate) struct Successor(Pid);

impl Successor {
    /// The new process's pid, from its readiness message (`MAINPID=`, which systemd takes it
    /// as the service's main process by).
    fn announced(server: &Server) -> Successor {
        let deadline = Instant::now() + UPGRADE;
        while Instant::now() < deadline {
            let Some(message) = server.notify.receive(Duration::from_millis(100)) else { continue };
            if let Some(pid) = message.lines().find_map(|line| line.strip_prefix("MAINPID=")) {
                assert!(message.lines().any(|line| line == "READY=1"), "{message}");
                return Successor(Pid::from_raw(pid.parse().expect("a pid")));
            }
        }
        panic!("no MAINPID= from a new process; log:\n{}", server.log.dump());
    }

    fn is_running(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0)).unwrap_or_default();
        // A zombie is as good as gone: its parent ended before reaping it.
        !stat.is_empty() && !stat.split(") ").nth(1).is_some_and(|rest| rest.starts_with('Z'))
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGTERM);
        let deadline = Instant::now() + WAIT;
        while self.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.is_running() {
            let _ = kill(self.0, Signal::SIGKILL);
        }
    }
}

/// How many events a follower is to get, once the test knows.
type Expected = Arc<parking_lot::Mutex<Option<usize>>>;

/// A subscriber (`query`) that behaves as EventSource does: on a close it reconnects after the
/// `retry:` it was told, with `Last-Event-ID`, until it got the events expected or the time is
/// up. Returns every event, and how many times it connected.
fn follower(port: u16, query: &'static str, expected: Expected) -> JoinHandle<(Vec<Event>, usize)> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + UPGRADE + UPGRADE;
        let mut events: Vec<Event> = Vec::new();
        let mut connects = 0;
        let done = |events: &[Event]| expected.lock().is_some_and(|count| events.len() >= count);
        while !done(&events) && Instant::now() < deadline {
            let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            connects += 1;
            let mut client = SseClient::from_stream(stream);
            let mut request = get_request(query);
            if let Some(seen) = events.iter().rev().find(|e| e.id != 0) {
                request = request.replacen("\r\n\r\n", &format!("\r\nLast-Event-ID: {}\r\n\r\n", seen.id), 1);
            }
            client.send(request.as_bytes());
            if client.read_head(WAIT).is_none() {
                continue;
            }
            while !done(&events) && Instant::now() < deadline {
                match client.try_next_event(Duration::from_millis(200)) {
                    Ok(event) => events.push(event),
                    Err(NoEvent::Timeout) => {}
                    Err(NoEvent::Closed) => break,
                }
            }
            // As EventSource: the wait the server asked for (bounded here), else a short one.
            let wait = client.retry.map_or(100, |ms| ms.min(3000));
            std::thread::sleep(Duration::from_millis(u64::from(wait)));
        }
        (events, connects)
    })
}

/// A publisher's pace: an event every few milliseconds, through the switch; the last third
/// only once the test saw the new process serve (`go_on`), so that some surely go to it.
fn pace(n: usize, go_on: &AtomicBool) {
    std::thread::sleep(Duration::from_millis(4));
    while n == 2 * EVENTS / 3 && !go_on.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Publishes `t=0` … `t=EVENTS-1` on one control connection with `ack on`, a few milliseconds
/// apart, and returns the ids it was answered.
fn publisher(port: u16, go_on: Arc<AtomicBool>, sent: Arc<AtomicUsize>) -> JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the control port");
        stream.set_read_timeout(Some(UPGRADE)).unwrap();
        let mut answers = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        stream.write_all(b"ack on\n").unwrap();
        answers.read_line(&mut line).unwrap();
        assert_eq!(line, "OK ack on\n");
        let mut ids = Vec::new();
        for n in 0..EVENTS {
            pace(n, &go_on);
            stream.write_all(format!("t={n}\n").as_bytes()).unwrap();
            line.clear();
            answers.read_line(&mut line).expect("an answer to every publish");
            let id = line.strip_prefix("OK ").and_then(|id| id.trim().parse().ok());
            ids.push(id.unwrap_or_else(|| panic!("publish {n} answered {line:?}")));
            sent.store(n + 1, Ordering::Relaxed);
        }
        ids
    })
}

/// Upgrades `server` while [`publisher`] publishes on its control port, a quarter of the way
/// through; returns the new process, once the old one ended well, and the ids of the events.
fn upgrade_while_publishing(server: &mut Server) -> (Successor, Vec<u64>) {
    let go_on = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let publishing = publisher(server.cport(), Arc::clone(&go_on), Arc::clone(&sent));
    wait_until(WAIT, "the publisher is under way", || sent.load(Ordering::Relaxed) >= EVENTS / 4);
    server.signal(Signal::SIGUSR2);
    let successor = Successor::announced(server);
    go_on.store(true, Ordering::Relaxed);
    let status = server.wait_exit(UPGRADE).expect("the old process ends once it drained");
    assert!(status.success(), "{status:?}");
    (successor, publishing.join().expect("the publisher got an answer to every line"))
}

/// Runs an upgrade under load on a server started with `extra`: followers on `t`, a publisher
/// through it; checks every follower got every event once, in order, without a reset. Returns
/// the new process and the ids of the events.
fn upgrade_under_load(extra: &[&str]) -> (Successor, Vec<u64>) {
    upgrade_under_load_of(Server::start(&[&["--drain-secs", "1", "--history", "1000"], extra].concat()))
}

/// [`upgrade_under_load`] of a server already started (a cluster's node, say).
pub(crate) fn upgrade_under_load_of(mut server: Server) -> (Successor, Vec<u64>) {
    let expected = Expected::default();
    let followers: Vec<_> =
        (0..20).map(|_| follower(server.sse_port, "subscribe=t", Arc::clone(&expected))).collect();
    wait_until(WAIT, "20 subscribers", || server.tcp_json("tcpstatus")["allconncli"] == 20);
    let (successor, ids) = upgrade_while_publishing(&mut server);
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "ids grow across the upgrade: {ids:?}");
    *expected.lock() = Some(EVENTS);
    let expected: Vec<String> = (0..EVENTS).map(|n| n.to_string()).collect();
    for follower in followers {
        let (events, connects) = follower.join().unwrap();
        let resets = events.iter().filter(|e| e.event.as_deref() == Some("reset")).count();
        let datas: Vec<String> =
            events.iter().filter(|e| e.event.is_none()).map(|e| e.data.clone()).collect();
        assert_eq!(resets, 0, "no reset: {events:?}");
        assert_eq!(datas, expected, "every event once, in order");
        assert_eq!(
            events.iter().map(|e| e.id).collect::<Vec<_>>(),
            ids,
            "with the ids the publisher was told"
        );
        assert!(connects >= 2, "the stream was drained to the new process");
    }
    let log = server.log.dump();
    assert!(log.contains(&format!("Upgrade: pid {} serves; draining", successor.0)), "{log}");
    assert!(log.contains("Upgrade: serving; the old process drains its clients"), "{log}");
    assert!(!log.contains("Shutting down"), "the old process did not stop the service: {log}");
    (successor, ids)
}

#[test]
fn an_upgrade_under_load_loses_refuses_and_repeats_nothing() {
    upgrade_under_load(&[]);
}

#[test]
fn after_an_upgrade_the_new_process_writes_the_history_file_and_a_restart_resumes_from_it() {
    let file = TempFile::new("history");
    let (successor, ids) = upgrade_under_load(&["--history-file", file.arg()]);
    drop(successor);
    let restarted = Server::start(&["--history-file", file.arg(), "--history", "1000"]);
    let mut client = SseClient::connect(restarted.sse_port);
    let request =
        get_request("subscribe=t").replacen("\r\n\r\n", &format!("\r\nLast-Event-ID: {}\r\n\r\n", ids[9]), 1);
    client.handshake(request.as_bytes());
    for (n, id) in ids.iter().enumerate().skip(10) {
        let event = client.next_event();
        assert_eq!((event.id, event.data, event.event), (*id, n.to_string(), None));
    }
}

#[test]
fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let (config, mut server, mut client) = serving_from_a_config_file();
    // The configuration the new process reads is broken.
    std::fs::write(config.path(), "--no-such-flag\n").unwrap();
    server.signal(Signal::SIGUSR2);
    let failed = server.log.wait_for_line(|line| line.contains("Upgrade failed, serving on"), UPGRADE);
    assert!(failed.contains("exited before it served"), "{failed}");
    server.publish("t=still here");
    client.expect_data("still here");
    let answer = server.control("t=and here\n");
    assert_eq!(answer, "", "the control port still serves");
    client.expect_data("and here");
    assert!(server.stop().is_some_and(|status| status.success()));
}

/// A publish that arrives while the control sources are handed over is delivered once the
/// upgrade fails: the control thread that takes them back wakes the shards for it. The new
/// process reads its configuration from a FIFO, so that the test knows when the sources are
/// packed (the process has started and opened it) and decides when the process fails.
#[test]
fn a_publish_made_while_an_upgrade_fails_is_delivered() {
    let (config, mut server, mut client) = serving_from_a_config_file();
    std::fs::remove_file(config.path()).unwrap();
    nix::unistd::mkfifo(config.path(), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    server.signal(Signal::SIGUSR2);
    let mut new_config = open_fifo_once_read(config.path());
    let mut publisher = TcpStream::connect(("127.0.0.1", server.cport())).unwrap();
    publisher.write_all(b"t=while handed over\n").unwrap();
    publisher.shutdown(std::net::Shutdown::Write).unwrap();
    new_config.write_all(b"--no-such-flag\n").unwrap();
    drop(new_config);
    server.log.wait_for_line(|line| line.contains("Upgrade failed, serving on"), UPGRADE);
    client.expect_data("while handed over");
    assert_eq!(read_to_eof(&mut publisher, Vec::new(), WAIT), Some(Vec::new()), "no reply");
    assert!(server.stop().is_some_and(|status| status.success()));
}

/// A server whose flags are in a configuration file (which a new process reads again), with a
/// client subscribed to `t`.
fn serving_from_a_config_file() -> (TempFile, Server, SseClient) {
    let config = TempFile::new("hasses.conf");
    std::fs::write(config.path(), "--port 0\n").unwrap();
    let server =
        Server::start(&["--config", config.arg(), "--control-port", "0", "--api-bind", "127.0.0.1:0"]);
    let client = server.subscribe("subscribe=t");
    (config, server, client)
}

/// The FIFO at `path` opened for writing, once a process opened it for reading.
fn open_fifo_once_read(path: &std::path::Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Instant::now() + UPGRADE;
    loop {
        let opened = std::fs::OpenOptions::new().write(true).custom_flags(nix::libc::O_NONBLOCK).open(path);
        match opened {
            Ok(file) => return file,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENXIO), "{e}");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("no process opened {} to read it: {e}", path.display()),
        }
    }
}

/// Publishes `SOURCE=0` … on a keep-alive HTTP API connection, returning the ids answered.
fn http_publisher(server: &Server, go_on: Arc<AtomicBool>) -> JoinHandle<Vec<u64>> {
    let mut api = Api::connect(server);
    std::thread::spawn(move || {
        let mut ids = Vec::new();
        for n in 0..EVENTS {
            pace(n, &go_on);
            let reply = api.post("application/x-www-form-urlencoded", &format!("to=h&data={n}"));
            assert_eq!(reply.status, 200, "{reply:?}");
            ids.push(reply.json()["id"].as_str().and_then(|id| id.parse().ok()).expect("an id"));
        }
        ids
    })
}

/// Writes `f=0` … to the FIFO, each in one write, on one open descriptor.
fn fifo_writer(path: std::path::PathBuf, go_on: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut fifo = std::fs::OpenOptions::new().write(true).open(path).expect("open the FIFO");
        for n in 0..EVENTS {
            pace(n, &go_on);
            fifo.write_all(format!("f={n}\n").as_bytes()).expect("write to the FIFO");
        }
    })
}

#[test]
fn every_publisher_goes_on_through_an_upgrade_on_the_connection_it_has() {
    let fifo = TempFile::new("upgrade.fifo");
    let mut server = Server::start(&["--drain-secs", "1", "--history", "1000", "--fifo", fifo.arg()]);
    let expected = Expected::default();
    let subscriber = follower(server.sse_port, "subscribe=t-h-f", Arc::clone(&expected));
    wait_until(WAIT, "the subscriber", || server.tcp_json("tcpstatus")["allconncli"] == 1);
    let go_on = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let tcp = publisher(server.cport(), Arc::clone(&go_on), Arc::clone(&sent));
    let http = http_publisher(&server, Arc::clone(&go_on));
    let written = fifo_writer(fifo.path().to_path_buf(), Arc::clone(&go_on));
    wait_until(WAIT, "the publishers are under way", || sent.load(Ordering::Relaxed) >= EVENTS / 4);
    server.signal(Signal::SIGUSR2);
    let _successor = Successor::announced(&server);
    go_on.store(true, Ordering::Relaxed);
    assert!(server.wait_exit(UPGRADE).is_some_and(|status| status.success()));
    let tcp_ids = tcp.join().expect("the control publisher got every answer");
    let http_ids = http.join().expect("the API publisher got every answer");
    written.join().expect("the FIFO writer");
    *expected.lock() = Some(3 * EVENTS);
    let (events, _) = subscriber.join().unwrap();
    assert!(events.iter().all(|e| e.event.is_none()), "no reset: {events:?}");
    let numbers: Vec<String> = (0..EVENTS).map(|n| n.to_string()).collect();
    let by_id = |ids: &[u64]| -> Vec<String> {
        ids.iter()
            .map(|id| events.iter().find(|e| e.id == *id).map_or("missing".into(), |e| e.data.clone()))
            .collect()
    };
    assert_eq!(by_id(&tcp_ids), numbers, "every control line once");
    assert_eq!(by_id(&http_ids), numbers, "every HTTP publish once");
    let fifo_datas: Vec<String> = events
        .iter()
        .filter(|e| !tcp_ids.contains(&e.id) && !http_ids.contains(&e.id))
        .map(|e| e.data.clone())
        .collect();
    assert_eq!(fifo_datas, numbers, "every FIFO line once, in order");
    assert!(events.windows(2).all(|pair| pair[0].id < pair[1].id), "in order, none twice");
}

/// npm's `eventsource` (the EventSource of Node programs), installed once under `target/`.
fn npm_eventsource() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("npm-eventsource");
    let module = dir.join("node_modules/eventsource");
    if !module.exists() {
        let npm = find_program("npm", "npm");
        let (status, out, err) = run_bounded(
            {
                let mut command = std::process::Command::new(npm);
                command
                    .args(["install", "--no-audit", "--no-fund", "--prefix"])
                    .arg(&dir)
                    .arg("eventsource@2.0.2");
                command
            },
            Duration::from_secs(120),
        );
        assert!(status.success(), "npm install eventsource: {out}{err}");
    }
    module
}

/// Node running `count` EventSources of npm's `eventsource` on `url`: a line per open, message
/// (`CLIENT message ID DATA`) and reset.
const EVENTSOURCE_CLIENTS: &str = r#"
const EventSource = require(process.argv[2]);
for (let i = 0; i < Number(process.argv[4]); i++) {
  const source = new EventSource(process.argv[3]);
  source.onopen = () => console.log(`${i} open`);
  source.onmessage = (e) => console.log(`${i} message ${e.lastEventId} ${e.data}`);
  source.addEventListener('reset', () => console.log(`${i} reset`));
}
"#;

#[test]
#[ignore = "needs node and npm (Debian packages nodejs, npm) and npm's eventsource: run by the README's test command"]
fn npm_eventsource_and_curl_clients_resume_through_an_upgrade_with_no_reset() {
    const CLIENTS: usize = 10;
    let mut server = Server::start(&["--drain-secs", "1", "--history", "1000"]);
    let dir = TempDir::new("eventsource");
    let script = dir.write("clients.js", EVENTSOURCE_CLIENTS);
    let url = format!("http://127.0.0.1:{}/sse?subscribe=t", server.sse_port);
    let mut node = std::process::Command::new(find_program("node", "nodejs"));
    node.arg(script).arg(npm_eventsource()).arg(&url).arg(CLIENTS.to_string());
    let output = dir.join("clients.out");
    let clients = Process::spawn(node, "node", output.clone());
    let lines = || std::fs::read_to_string(&output).unwrap_or_default();
    wait_until(WAIT, "every EventSource open", || lines().matches(" open").count() >= CLIENTS);
    let curl = std::process::Command::new(find_program("curl", "curl"))
        .args(["-sN", "--max-time", "30", &url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    wait_until(WAIT, "curl subscribed", || server.tcp_json("tcpstatus")["allconncli"] == CLIENTS as u64 + 1);
    let (successor, ids) = upgrade_while_publishing(&mut server);
    // curl's stream was drained: it ended as HTTP says, with a `retry:` first.
    let drained = curl.wait_with_output().expect("curl ends with the drained stream");
    assert!(drained.status.success(), "curl: {drained:?}");
    let before = String::from_utf8_lossy(&drained.stdout).into_owned();
    assert!(before.contains("retry: "), "{before}");
    let last_seen: u64 = before.lines().rev().find_map(|l| l.strip_prefix("id: ")).unwrap().parse().unwrap();
    let resumed = std::process::Command::new(find_program("curl", "curl"))
        .args(["-sN", "--max-time", "2", "-H", &format!("Last-Event-ID: {last_seen}"), &url])
        .output()
        .expect("curl resumes");
    let after = String::from_utf8_lossy(&resumed.stdout).into_owned();
    let datas = |text: &str| -> Vec<String> {
        text.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_owned).collect()
    };
    let expected: Vec<String> = (0..EVENTS).map(|n| n.to_string()).collect();
    assert_eq!(
        [datas(&before), datas(&after)].concat(),
        expected,
        "curl: every event once, across the upgrade"
    );
    assert!(!after.contains("event: reset"), "{after}");
    // Every EventSource came back on its own and got everything, with the publisher's ids.
    wait_until(UPGRADE, "every EventSource got every event", || {
        lines().matches(" message ").count() >= CLIENTS * EVENTS
    });
    let text = lines();
    assert!(!text.contains("reset"), "no EventSource was told of a gap:\n{text}");
    for client in 0..CLIENTS {
        let got: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| line.strip_prefix(&format!("{client} message ")))
            .map(|rest| {
                let (id, data) = rest.split_once(' ').unwrap();
                (id.parse().unwrap(), data.to_owned())
            })
            .collect();
        let want: Vec<(u64, String)> = ids.iter().copied().zip(expected.iter().cloned()).collect();
        assert_eq!(got, want, "EventSource {client}");
        assert!(text.matches(&format!("{client} open")).count() >= 2, "it reconnected to the new process");
    }
    drop((clients, successor));
}

/// While the old process drains, the new one forwards it every event: a stream not yet ended
/// gets what is published meanwhile live, and after its end resumes on the new process from
/// there, with nothing twice.
#[test]
fn streams_still_draining_get_the_new_processs_events_live() {
    // 1,200 streams on one worker are ended one a millisecond: over about a second.
    let mut server = Server::start(&["--drain-secs", "2", "--workers", "1", "--history", "1000"]);
    let mut clients: Vec<SseClient> = (0..1200).map(|_| server.subscribe("subscribe=t")).collect();
    wait_until(WAIT, "1,200 subscribers", || server.tcp_json("tcpstatus")["allconncli"] == 1200);
    server.signal(Signal::SIGUSR2);
    let successor = Successor::announced(&server);
    let new_control = server.cport();
    let answer = control(new_control, "ack on\nt=live\n");
    let id = answer.lines().nth(1).and_then(|l| l.strip_prefix("OK ")).and_then(|id| id.parse::<u64>().ok());
    let id = id.unwrap_or_else(|| panic!("answered {answer:?}"));
    let mut live = 0;
    for client in &mut clients {
        let rest =
            read_to_eof(&mut client.stream, Vec::new(), UPGRADE).expect("the old process ends the stream");
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.ends_with("0\r\n\r\n"), "{rest}");
        if rest.contains(&format!("id: {id}\n")) {
            live += 1;
            assert_eq!(rest.matches("data: live").count(), 1, "once: {rest}");
        }
    }
    assert!(live > 600, "most streams ended after the publish got it live: {live} of 1200");
    assert!(server.wait_exit(UPGRADE).is_some_and(|status| status.success()));
    drop(successor);
}

/// With `--presence-events`, an upgrade is no one's join or leave: the new process expects the
/// old one's clients back, and they come.
#[test]
fn an_upgrade_is_no_join_and_no_leave() {
    let mut server = Server::start(&["--drain-secs", "1", "--history", "1000", "--presence-events"]);
    let observed = Expected::default();
    let observer = follower(server.sse_port, "subscribe=t&id=observer", Arc::clone(&observed));
    wait_until(WAIT, "the observer", || server.tcp_json("tcpstatus")["allconncli"] == 1);
    let others = Expected::default();
    let queries = ["subscribe=t&id=c0", "subscribe=t&id=c1", "subscribe=t&id=c2", "subscribe=t&id=c3"];
    let clients: Vec<_> =
        queries.iter().map(|query| follower(server.sse_port, query, Arc::clone(&others))).collect();
    wait_until(WAIT, "every client", || server.tcp_json("tcpstatus")["allconncli"] == 5);
    server.signal(Signal::SIGUSR2);
    let successor = Successor::announced(&server);
    assert!(server.wait_exit(UPGRADE).is_some_and(|status| status.success()));
    // Once every stream is back on the new process, an event closes the observer's record.
    let new_control = server.cport();
    wait_until(UPGRADE, "every client back", || tcp_json(new_control, "tcpstatus")["allconncli"] == 5);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(control(new_control, "t=after\n"), "");
    *observed.lock() = Some(queries.len() + 1);
    *others.lock() = Some(0);
    let (events, connects) = observer.join().unwrap();
    clients.into_iter().for_each(|client| drop(client.join().unwrap()));
    let named: Vec<(&str, &str)> =
        events.iter().filter_map(|e| Some((e.event.as_deref()?, e.data.as_str()))).collect();
    assert_eq!(named.len(), queries.len(), "the 4 joins before the upgrade, nothing after: {named:?}");
    assert!(named.iter().all(|(kind, _)| *kind == "join"), "{named:?}");
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("after"));
    assert!(connects >= 2, "the observer came back too");
    drop(successor);
}
