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
}
