//! hasses under systemd, with the shipped `deploy/systemd/` files: `systemd-analyze` (Debian
//! package `systemd`) accepts the unit and its pinning drop-in and rates its sandbox as safe,
//! `systemd-sysusers` creates its user, and the unit's command line, with the shipped
//! `/etc/hasses.conf`, starts a server that speaks the sd-notify protocol (`READY=1` once every
//! listener is up, with a status naming their addresses; `STOPPING=1` at shutdown) and pins its workers within the `CPUAffinity=` set.
//!
//! No service manager runs here: the unit's command line is run by the test, which plays
//! systemd's part (the notification socket, the CPU affinity).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, NotifySocket, SseClient};
use crate::programs::{find_program, repo_file, repo_path, settings, Process, TempDir};

const UNIT: &str = "deploy/systemd/hasses.service";
const DROP_IN: &str = "deploy/systemd/pinning.conf";
const CONF: &str = "deploy/systemd/hasses.conf";
const SYSUSERS: &str = "deploy/systemd/hasses.sysusers";
/// Where the unit expects the binary.
const INSTALLED_BINARY: &str = "/usr/local/bin/hasses";

/// The value of `Key=` in the unit text (the last one: a later line overrides an earlier one).
fn unit_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    settings(text).filter_map(|line| line.strip_prefix(key)?.strip_prefix('=')).last()
}

/// The unit and its pinning drop-in copied to a temporary directory (as systemd finds drop-ins,
/// in `hasses.service.d/`), with ExecStart pointing at the binary under test.
fn unit_copy(dir: &TempDir) -> PathBuf {
    let unit = repo_file(UNIT);
    assert!(
        unit_value(&unit, "ExecStart").is_some_and(|line| line.starts_with(INSTALLED_BINARY)),
        "{UNIT}: ExecStart runs {INSTALLED_BINARY}"
    );
    let path = dir.write("hasses.service", &unit.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_hasses")));
    std::fs::create_dir(dir.join("hasses.service.d")).unwrap();
    std::fs::copy(repo_path(DROP_IN), dir.join("hasses.service.d/pinning.conf")).unwrap();
    path
}

/// Runs `command`, returning (success, stdout and stderr).
fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
#[ignore = "needs systemd-analyze: run by the README's test command"]
fn systemd_analyze_verify_accepts_the_unit_and_its_drop_in() {
    let analyze = find_program("systemd-analyze", "systemd");
    let dir = TempDir::new("unit");
    let unit = unit_copy(&dir);
    let (ok, output) = run(Command::new(&analyze).args(["verify", "--man=no"]).arg(&unit));
    // verify reports many problems (unknown keys, bad values) as warnings and still succeeds;
    // any line about our files is a failure. Lines about the system's own units are not ours.
    let ours: Vec<&str> = output.lines().filter(|line| line.contains("hasses")).collect();
    assert!(ok && ours.is_empty(), "systemd-analyze verify:\n{output}");
}

#[test]
fn the_unit_has_what_a_production_install_needs() {
    let unit = repo_file(UNIT);
    let value = |key| unit_value(&unit, key).unwrap_or_else(|| panic!("{UNIT} sets {key}="));
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("Restart"), "on-failure");
    assert_eq!(value("User"), "hasses", "a dedicated user");
    assert_eq!(value("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(value("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    let files: u64 = value("LimitNOFILE").parse().expect("LimitNOFILE is a number");
    assert!(files > 1_000_000, "LimitNOFILE={files} is enough for a million connections");
    let exec = value("ExecStart");
    assert!(exec.contains("-nodaemon"), "hasses stays in the foreground under systemd: {exec}");
    // `systemctl reload` upgrades in place; the new process's MAINPID= must be taken.
    assert_eq!(value("ExecReload"), "/bin/kill -USR2 $MAINPID");
    assert_eq!(value("NotifyAccess"), "all");
    // The history file lives in the unit's state directory, which systemd makes for its user.
    let state = format!("/var/lib/{}/", value("StateDirectory"));
    let conf = repo_file(CONF);
    let history = settings(&conf).find_map(|line| line.strip_prefix("--history-file "));
    assert!(history.is_some_and(|path| path.starts_with(&state)), "{CONF}: --history-file under {state}");
    let drop_in = repo_file(DROP_IN);
    assert!(unit_value(&drop_in, "CPUAffinity").is_some(), "{DROP_IN} sets CPUAffinity=");
    assert!(
        unit_value(&drop_in, "Environment").is_some_and(|v| v.contains("--pin-cpus")),
        "{DROP_IN}: --pin-cpus"
    );
}

#[test]
#[ignore = "needs systemd-analyze: run by the README's test command"]
fn systemd_analyze_rates_the_sandbox_as_safe() {
    let analyze = find_program("systemd-analyze", "systemd");
    let dir = TempDir::new("unit-security");
    let unit = unit_copy(&dir);
    // The exposure score goes from 0 (locked down) to 10 (unprotected); systemd calls up to
    // 2.9 "OK". The threshold is given in tenths.
    let (ok, output) =
        run(Command::new(&analyze).args(["security", "--offline=yes", "--threshold=29"]).arg(&unit));
    let overall = output.lines().find(|line| line.contains("Overall exposure")).unwrap_or_default();
    assert!(ok, "exposure above 2.9: {overall}\n{output}");
}

#[test]
#[ignore = "needs systemd-sysusers: run by the README's test command"]
fn systemd_sysusers_creates_the_user() {
    let sysusers = find_program("systemd-sysusers", "systemd");
    let root = TempDir::new("sysusers");
    std::fs::create_dir(root.join("etc")).unwrap();
    let (ok, output) = run(Command::new(&sysusers)
        .arg(format!("--root={}", root.path().display()))
        .arg(repo_path(SYSUSERS)));
    assert!(ok, "systemd-sysusers:\n{output}");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("an /etc/passwd");
    let entry = passwd.lines().find(|line| line.starts_with("hasses:")).expect("a hasses user");
    assert!(entry.ends_with(":/usr/sbin/nologin"), "no login shell: {entry}");
    let group = std::fs::read_to_string(root.join("etc/group")).expect("an /etc/group");
    assert!(group.lines().any(|line| line.starts_with("hasses:")), "a hasses group");
}

/// The unit's ExecStart with the binary under test, the shipped config file for
/// `/etc/hasses.conf`, `opts` for `$HASSES_OPTS`, then `extra`.
fn unit_command(opts: &str, extra: &[String]) -> Command {
    let unit = repo_file(UNIT);
    let exec = unit_value(&unit, "ExecStart").expect("an ExecStart");
    let conf = repo_path(CONF);
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some(INSTALLED_BINARY));
    let mut command = Command::new(env!("CARGO_BIN_EXE_hasses"));
    for word in words {
        match word {
            "$HASSES_OPTS" => {
                command.args(opts.split_whitespace());
            }
            "/etc/hasses.conf" => {
                command.arg(&conf);
            }
            other => {
                assert!(!other.contains('$'), "an environment variable the test does not know: {other}");
                command.arg(other);
            }
        }
    }
    command.args(extra);
    command
}

#[test]
fn the_unit_command_line_with_the_shipped_config_notifies_ready_and_stopping() {
    let dir = TempDir::new("notify");
    let notify = NotifySocket::new();
    let pidfile = dir.join("hasses.pid");
    // The ports and the pid file's directory differ from the shipped file's: a later flag wins.
    let history = dir.join("hasses.history").display().to_string();
    let extra = [
        "--port",
        "0",
        "--control-port",
        "0",
        "--pidfile",
        &pidfile.display().to_string(),
        "--history-file",
        &history,
    ]
    .map(str::to_owned);
    let (mut server, ready) =
        Process::start_hasses(unit_command("", &extra), &notify, dir.join("output.log"));
    // The shipped config's addresses, with the ports the kernel picked, for `systemctl status`.
    let (sse_port, control_port) = (ready.sse_port(), ready.control_port().expect("a control port"));
    let status = format!("SSE on [::]:{sse_port} path /sse, control on 127.0.0.1:{control_port}");
    assert_eq!(ready.value("STATUS"), Some(status.as_str()), "{ready:?}");
    // Ready means every listener is up: connecting must work at once, with no retry.
    let mut client = SseClient::subscribe(sse_port, "subscribe=room1");
    assert_eq!(common::control(control_port, "room1=ready\n"), "");
    client.expect_data("ready");
    let pid = std::fs::read_to_string(&pidfile).expect("the pid file");
    assert_eq!(pid.trim(), server.pid().to_string());

    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(notify.receive(common::WAIT).as_deref(), Some("STOPPING=1"), "{}", server.output());
    while server.running() && started.elapsed() < common::WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!server.running(), "hasses exits after SIGTERM\n{}", server.output());
    assert!(!pidfile.exists(), "the pid file is removed at exit");
    assert!(std::path::Path::new(&history).exists(), "the history file is written");
}

#[test]
fn notifies_an_abstract_socket_too() {
    let dir = TempDir::new("notify-abstract");
    let name = format!("hasses-test-{}-{}", std::process::id(), common::free_port());
    let notify = NotifySocket::abstract_named(&name);
    let mut command = Command::new(env!("CARGO_BIN_EXE_hasses"));
    command.args(["--port", "0", "--control-port", "0", "--workers", "1"]);
    let (_server, ready) = Process::start_hasses(command, &notify, dir.join("output.log"));
    SseClient::subscribe(ready.sse_port(), "subscribe=abstract");
}

/// The CPUs this test may run on (`Cpus_allowed_list` of /proc/self/status, e.g. `0-3,8`).
fn allowed_cpus(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("a Cpus_allowed_list line")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(first.parse::<usize>().unwrap()..=last.parse::<usize>().unwrap());
    }
    cpus
}

/// The worker threads of process `pid`: (worker number, the CPUs it may run on).
fn workers(pid: u32) -> Vec<(usize, Vec<usize>)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's threads") {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if let Some(number) = name.trim().strip_prefix("hasses-worker-") {
            let status = std::fs::read_to_string(task.join("status")).unwrap();
            found.push((number.parse().unwrap(), allowed_cpus(&status)));
        }
    }
    found.sort();
    found
}

#[test]
#[ignore = "needs taskset: run by the README's test command"]
fn pinned_workers_follow_the_cpu_affinity_of_the_drop_in() {
    // CPUAffinity= is the affinity the service starts with; taskset gives the same here.
    let taskset = find_program("taskset", "util-linux");
    let mine = allowed_cpus(&std::fs::read_to_string("/proc/self/status").unwrap());
    let set: Vec<usize> = mine[mine.len().saturating_sub(2)..].to_vec();
    let list = set.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let drop_in = repo_file(DROP_IN);
    let opts = unit_value(&drop_in, "Environment")
        .and_then(|env| env.trim_matches('"').strip_prefix("HASSES_OPTS="))
        .expect("the drop-in sets HASSES_OPTS");

    let dir = TempDir::new("pinning");
    let path = |name: &str| dir.join(name).display().to_string();
    let extra = ["--port", "0", "--control-port", "0", "--pidfile", &path("hasses.pid")];
    let history = ["--history-file", &path("hasses.history")];
    let words: Vec<String> = extra.iter().chain(&history).map(|w| w.to_string()).collect();
    let pinned = unit_command(opts, &words);
    let mut command = Command::new(taskset);
    command.args(["-c", &list]).arg(pinned.get_program()).args(pinned.get_args());
    let server = Process::spawn(command, "hasses", dir.join("output.log"));

    // A worker pins itself as it starts: wait for that, not just for the threads to exist.
    let expected: Vec<(usize, Vec<usize>)> = set.iter().enumerate().map(|(i, &cpu)| (i, vec![cpu])).collect();
    let deadline = Instant::now() + common::WAIT;
    let mut threads = workers(server.pid());
    while threads != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        threads = workers(server.pid());
    }
    assert_eq!(
        threads,
        expected,
        "one worker per CPU of the set ({list}), each pinned to its own\n{}",
        server.output()
    );
}
