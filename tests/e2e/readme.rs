//! The README's first command, as a new user types it on a fresh clone: it builds the release
//! profile and starts the server, which serves an SSE handshake and an event.

use std::process::Command;
use std::time::Duration;

use crate::common::{self, Server};
use crate::programs::repo_file;

/// How long the release build (from nothing, on a small machine) and the start may take.
const BUILD: Duration = Duration::from_secs(20 * 60);

/// The words of the README's first command: the first line of its first code block, without
/// its comment.
fn first_command(readme: &str) -> Vec<String> {
    let block = readme.split("```sh\n").nth(1).expect("a ```sh code block in README.md");
    let line = block.lines().next().expect("a command in the first code block");
    line.split('#').next().unwrap_or_default().split_whitespace().map(str::to_owned).collect()
}

#[test]
#[ignore = "builds the release profile: run by the README's test command"]
fn the_first_command_starts_the_server_with_the_defaults() {
    let words = first_command(&repo_file("README.md"));
    let (program, args) = words.split_first().expect("a command");
    assert_eq!(program, "cargo", "the README's first command is a cargo command: {words:?}");
    // The command as written, then free ports instead of 8080, 8085 and 8086, which another program
    // (another test run) may hold: they go after `--`, so the command must pass nothing there.
    assert!(!args.iter().any(|a| a == "--"), "the README's first command takes no flags: {words:?}");
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(env!("CARGO_MANIFEST_DIR")).args(args);
    command.args(["--", "--port", "0", "--control-port", "0", "--api-bind", "127.0.0.1:0"]);
    let mut server = Server::spawn_command(command).listening(BUILD);

    // The defaults the README names: SSE on every address at /sse, control on loopback.
    let sse = format!("SSE listening on [::]:{} path /sse", server.sse_port);
    server.log.wait_for_line(|l| l == sse, common::WAIT);
    let control = format!("Control listening on 127.0.0.1:{}", server.cport());
    server.log.wait_for_line(|l| l == control, common::WAIT);
    let mut client = server.subscribe("subscribe=a");
    server.publish("a=hi");
    client.expect_data("hi");
    // `cargo run` has become the server (exec), so the signal reaches it.
    let status = server.stop().expect("the server exits on SIGTERM");
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}\n{}", server.log.dump());

    // What `cargo install` copies: small enough to copy around (issue 20: 41.8 MB with debug
    // information; line tables or symbols at most).
    let binary = crate::programs::repo_path("target/release/hasses");
    let size = std::fs::metadata(&binary).expect("the release binary").len();
    assert!(size <= MAX_BINARY, "{} is {size} bytes, over {MAX_BINARY}", binary.display());
}

/// The most the release binary may weigh: 6.4 MB at issue 20, 8.4 MB once it had the auth
/// hook's HTTPS client (ureq and Mozilla's roots) and the cluster tail's own connection; a
/// bound against debug information coming back, not a budget to fill.
const MAX_BINARY: u64 = 10 * 1024 * 1024;

/// The shell lines of the ```sh blocks of a Markdown text.
fn shell_lines(markdown: &str) -> Vec<&str> {
    markdown
        .split("```sh\n")
        .skip(1)
        .flat_map(|block| block.split("```").next().unwrap_or_default().lines())
        .collect()
}

/// The manuals a user copies commands from.
const MANUALS: [&str; 5] =
    ["README.md", "docs/design.md", "docs/cluster.md", "deploy/README.md", "deploy/docker/README.md"];

/// A publish piped into `nc` must end: without `-q1` (or `-N`) netcat waits for the server to
/// close, which a control connection never does, and the example hangs.
#[test]
fn every_nc_in_the_manuals_ends_once_its_input_is_sent() {
    for manual in MANUALS {
        for line in shell_lines(&repo_file(manual)) {
            let Some(nc) = line.split('|').map(str::trim).find(|command| command.starts_with("nc ")) else {
                continue;
            };
            let words: Vec<&str> = nc.split_whitespace().collect();
            assert!(
                words.iter().any(|w| w.starts_with("-q") || *w == "-N"),
                "{manual}: `{line}` waits for the server to close"
            );
        }
    }
}

/// Nodes started side by side on one machine need ports of their own, the HTTP API's too.
#[test]
fn the_cluster_example_gives_every_node_its_own_ports() {
    let readme = repo_file("README.md");
    let nodes: Vec<&str> = shell_lines(&readme)
        .into_iter()
        .filter(|line| line.contains("hasses") && line.contains("--cluster"))
        .collect();
    assert!(!nodes.is_empty(), "the README shows a cluster");
    for line in nodes {
        let words: Vec<&str> = line.split_whitespace().collect();
        for flag in ["--port", "--control-port", "--api-bind"] {
            let value = words.iter().position(|w| *w == flag).and_then(|at| words.get(at + 1));
            assert!(value.is_some_and(|v| v.contains('$')), "`{line}`: {flag} must differ per node");
        }
    }
}

/// The metrics' list in design.md names every family a worker's figures are declared in, so a
/// new one is documented where operators look for it.
#[test]
fn the_design_names_every_declared_metric() {
    let design = repo_file("docs/design.md");
    for figure in hasses::figures::ShardFigures::FIGURES {
        let name = figure.metric.family.name;
        let named = [format!("`{name}`"), format!("`{name}{{")];
        assert!(named.iter().any(|n| design.contains(n.as_str())), "docs/design.md does not name {name}");
    }
}

/// The README's flags table names every flag `--help` lists: a new flag cannot be left out of
/// the manual.
#[test]
fn the_flags_table_names_every_flag_of_help() {
    let (status, help, _) = crate::common::run_to_exit(&["--help"]);
    assert!(status.success());
    let readme = repo_file("README.md");
    let table: Vec<&str> = readme.lines().filter(|l| l.starts_with("| ")).collect();
    // A flag's line starts with its names and value, then two spaces and its description.
    let names = help.lines().map(str::trim_start).filter(|l| l.starts_with('-'));
    let flags =
        names.flat_map(|l| l.split("  ").next().unwrap_or_default().split_whitespace()).filter_map(|w| {
            let flag = w.trim_end_matches(',');
            (flag.starts_with("--") && flag.len() > 2).then_some(flag)
        });
    for flag in flags {
        let named =
            table.iter().any(|row| row.contains(&format!("`{flag}`")) || row.contains(&format!("`{flag} ")));
        assert!(named, "{flag} is in --help but not in the README's flags table");
    }
}
