//! The rest of `deploy/`, with the real programs where there is one: logrotate (Debian package
//! `logrotate`) rotates the log of a running hasses with the shipped configuration and hasses
//! goes on in the new file; every kernel setting of the sysctl file exists and says why; and the
//! container's command line and health check, taken from the Dockerfile, run the server as the
//! original image does (no container engine runs here, so the image itself is not built).

use std::process::Command;

use crate::common::{self, NotifySocket, SseClient};
use crate::programs::{find_program, repo_file, wait_for_file_line, Process, TempDir};

#[test]
#[ignore = "needs logrotate: run by the README's test command"]
fn logrotate_rotates_the_log_and_hasses_reopens_it() {
    let logrotate = find_program("logrotate", "logrotate");
    let dir = TempDir::new("logrotate");
    let log = dir.join("hasses.log");
    let pidfile = dir.join("hasses.pid");

    // The shipped file, for a log and a pid file in the temporary directory, and a unit name
    // no machine has (the file tries systemd first, then the pid file).
    let shipped = repo_file("deploy/logrotate/hasses");
    let paths = "/var/log/hasses/hasses.log /var/log/hasses.log {";
    assert!(shipped.contains(paths), "deploy/logrotate/hasses rotates {paths}");
    let conf = shipped
        .replace(paths, &format!("{} {{", log.display()))
        .replace("/run/hasses/hasses.pid", &pidfile.display().to_string())
        .replace("/run/hasses.pid", &pidfile.display().to_string())
        .replace("hasses.service", "hasses-test-no-such-unit.service");
    let conf_path = dir.write("logrotate.conf", &conf);

    let mut command = Command::new(env!("CARGO_BIN_EXE_hasses"));
    command.args(["--port", "0", "--control-port", "0", "--workers", "1", "--log-level", "1"]);
    command.arg("--log-file").arg(&log).arg("--pidfile").arg(&pidfile);
    let notify = NotifySocket::new();
    let (server, ready) = Process::start_hasses(command, &notify, dir.join("output.log"));
    let sse_port = ready.sse_port();
    // The start-up lines are what logrotate moves to hasses.log.1.
    wait_for_file_line(&log, "Control listening on", &server);
    wait_for_file_line(&pidfile, &server.pid().to_string(), &server);

    let output = Command::new(&logrotate)
        .arg("--verbose")
        .arg("--force")
        .arg("--state")
        .arg(dir.join("logrotate.state"))
        .arg(&conf_path)
        .output()
        .expect("run logrotate");
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "logrotate failed:\n{said}");

    let rotated = std::fs::read_to_string(dir.join("hasses.log.1"))
        .unwrap_or_else(|e| panic!("no hasses.log.1 ({e}); logrotate said:\n{said}"));
    assert!(rotated.contains("SSE listening on"), "the old lines moved to hasses.log.1");
    // SIGHUP from the postrotate script: hasses opens a new file at the old path.
    wait_for_file_line(&log, "Log file reopened", &server);
    let _client = SseClient::subscribe(sse_port, "subscribe=rotated");
    wait_for_file_line(&log, "subscribes: rotated", &server);
    let old = std::fs::read_to_string(dir.join("hasses.log.1")).unwrap();
    assert!(!old.contains("subscribes: rotated"), "new lines go to the new file only");
}

#[test]
fn every_kernel_setting_exists_and_says_why() {
    let text = repo_file("deploy/sysctl/99-hasses.conf");
    let lines: Vec<&str> = text.lines().collect();
    let mut keys = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not `key = value`: {line}"));
        let (key, value) = (key.trim(), value.trim());
        assert!(!value.is_empty(), "{key} has a value");
        let proc_path = format!("/proc/sys/{}", key.replace('.', "/"));
        assert!(std::path::Path::new(&proc_path).exists(), "{key}: the kernel has no {proc_path}");
        assert!(i > 0 && lines[i - 1].trim_start().starts_with('#'), "{key} has a comment above it");
        keys.push(key.to_owned());
    }
    for needed in [
        "fs.file-max",
        "fs.nr_open",
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_mem",
    ] {
        assert!(keys.iter().any(|k| k == needed), "99-hasses.conf sets {needed}");
    }
}

/// The Dockerfile's instructions, continuation lines joined and comments left out.
fn dockerfile_instructions() -> Vec<String> {
    let text = repo_file("deploy/docker/Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if current.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current).trim().to_owned());
            }
        }
    }
    instructions
}

/// The JSON array after `prefix` in the one instruction that starts with it.
fn exec_form(instructions: &[String], prefix: &str) -> Vec<String> {
    let found: Vec<&String> = instructions.iter().filter(|i| i.starts_with(prefix)).collect();
    assert_eq!(found.len(), 1, "one {prefix} instruction");
    let json = &found[0][found[0].find('[').expect("exec form")..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{prefix}: not a JSON array ({e}): {json}"))
}

#[test]
fn the_container_command_line_runs_hasses_as_the_original_image() {
    let instructions = dockerfile_instructions();
    let entrypoint = exec_form(&instructions, "ENTRYPOINT ");
    let health = exec_form(&instructions, "HEALTHCHECK ");
    let exposed: Vec<&String> = instructions.iter().filter(|i| i.starts_with("EXPOSE ")).collect();
    assert_eq!(exposed, ["EXPOSE 8080"], "only the SSE port is published by -P");
    assert_eq!(entrypoint[0], "/usr/local/bin/hasses");
    let flag = |name: &str| entrypoint.iter().position(|w| w == name).map(|i| entrypoint[i + 1].as_str());
    assert_eq!(flag("--port"), Some("8080"));
    assert_eq!(flag("--control-port"), Some("8085"));
    assert_eq!(flag("--match-url"), Some("/sse"));

    // `docker run IMAGE ARGS` appends ARGS: here, free ports instead of 8080 and 8085.
    let dir = TempDir::new("container");
    let mut command = Command::new(env!("CARGO_BIN_EXE_hasses"));
    command.args(&entrypoint[1..]);
    command.args(["--port", "0", "--control-port", "0"]);
    let notify = NotifySocket::new();
    let (server, ready) = Process::start_hasses(command, &notify, dir.join("output.log"));
    let sse_port = ready.sse_port();
    let control = ready.address("X_HASSES_CONTROL").expect("a control port");
    assert_eq!(
        control.ip().to_string(),
        "0.0.0.0",
        "the control port listens on the container's addresses, for `-p`"
    );
    let control_port = control.port();

    let mut client = SseClient::subscribe(sse_port, "subscribe=room1");
    let head = client.head.clone().unwrap();
    assert_eq!(head.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(common::control(control_port, "room1=hello\n"), "");
    client.expect_data("hello");
    let log = std::fs::read_to_string(dir.join("output.log")).unwrap();
    assert!(!log.contains("Connection accepted"), "a quiet log (level 0):\n{log}");

    // The health check, against our port.
    let bash = find_program("bash", "bash");
    let args: Vec<String> = health.iter().map(|a| a.replace("/8080", &format!("/{sse_port}"))).collect();
    assert_eq!(args[0], "bash");
    let status = Command::new(bash).args(&args[1..]).status().expect("run the health check");
    assert!(status.success(), "the health check passes against a running hasses");
    drop(server);
    let args: Vec<String> =
        health.iter().map(|a| a.replace("/8080", &format!("/{}", common::free_port()))).collect();
    let status = Command::new("bash").args(&args[1..]).stderr(std::process::Stdio::null()).status().unwrap();
    assert!(!status.success(), "the health check fails when nothing listens");
}
