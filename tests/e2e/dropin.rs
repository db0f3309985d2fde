//! A drop-in for hasses 1.30: what monitoring scripts, log watchers and old installs compare
//! or rely on, checked against the real binary. The values are hasses' (its status block,
//! client list and log lines, its `tcpstatus` words), except where the table in
//! docs/hasses-1.30.md says why not.

use std::time::Duration;

use crate::common::{self, Server, SseClient, TempFile, WAIT};

// ----- subscribing -----

#[test]
fn an_escaped_dash_is_part_of_a_token_not_a_separator() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=x%2Dy-z");
    assert_eq!(server.wait_json("tcpsubscribedclients:x-y", "subscribedclients", 1)["subscribedclients"], 1);
    assert_eq!(server.tcp_json("tcpsubscribedclients:x")["subscribedclients"], 0);
    assert_eq!(server.tcp_json("tcpsubscribedclients:z")["subscribedclients"], 1);
    let list = server.client_list();
    assert!(list.iter().any(|line| line == "  Subscribes: x-y,z"), "{list:?}");
    // `x=…` is for the token x; the token x-y is reached through its prefix.
    server.publish("x=not for x-y");
    server.publish("x*=for x-y");
    client.expect_data("for x-y");
    assert!(client.still_open_after(Duration::from_millis(100)));
}

// ----- what monitoring scripts and log watchers compare -----

#[test]
fn tcpstatus_names_the_mode_in_hasses_words() {
    let server = Server::start(&[]);
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["mode"], "unencrypted (http)", "{status}");
    let block = server.status_block();
    assert_eq!(block[6], "Mode: unencrypted (http)");
    assert_eq!(block[4], format!("Uid: {} (not set)", common::my_uid()));
}

#[test]
fn a_client_without_user_agent_has_no_agent_line() {
    let server = Server::start(&[]);
    let mut client = SseClient::connect(server.sse_port);
    client.handshake(b"GET /sse?subscribe=quiet&id=u7 HTTP/1.1\r\nHost: a\r\n\r\n");
    let list = server.client_list();
    let row = list.iter().position(|line| line.starts_with("#1 - <")).expect("a row");
    assert!(
        list[row + 1].starts_with("  Connection time: ") && list[row + 1].ends_with(" UniqId:u7"),
        "{list:?}"
    );
    assert_eq!(list[row + 2], "  Subscribes: quiet", "no Agent line, as hasses: {list:?}");
}

#[test]
fn operator_commands_are_confirmed_in_hasses_words_at_every_level() {
    let server = Server::start(&["--log-level", "0"]);
    let start = server.log.len();
    server.publish("reinit_enable;reinit_disable;loglevel_normal;loglevel_debug;loglevel_quiet");
    for expected in [
        "Reinit enabled.",
        "Reinit disabled.",
        "Set loglevel to normal.",
        "Set loglevel to the maximum.",
        "Set loglevel to the minimum.",
    ] {
        server.log.wait_for_line_from(start, |line| line == expected, WAIT);
    }
}

#[test]
fn debug_lines_are_written_for_operators() {
    let fifo = TempFile::new("dropin.fifo");
    let server = Server::start(&["--log-level", "2", "--fifo", fifo.arg()]);
    let start = server.log.len();
    server.publish("room1-u1=hello");
    let (_, line) = server.log.wait_for_line_from(start, |line| line.starts_with("Message "), WAIT);
    let (id, rest) = line["Message ".len()..].split_once(' ').expect(&line);
    assert!(id.parse::<u64>().is_ok(), "{line}");
    assert_eq!(rest, "to subscribers of \"room1\" except \"u1\": 5 bytes");
    common::write_fifo(fifo.path(), b"tcpsubscribedclients:room1\n");
    server.log.wait_for_line_from(
        start,
        |line| line == "Command ignored on the FIFO (it can only be answered over TCP): tcpsubscribedclients:room1",
        WAIT,
    );
    let debug_formatting =
        |line: &str| line.contains("Token(") || line.contains("Some(\"") || line.contains("TcpSub");
    assert!(!server.log.has_from(0, debug_formatting), "{}", server.log.dump());
}

// ----- an old install under the shipped unit -----

/// The last value of `Key=` in a unit file (a later line overrides an earlier one).
fn unit_setting(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

#[test]
fn the_unit_keeps_tmp_shared_so_an_old_fifo_path_reaches_publishers() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/hasses.service");
    let unit = std::fs::read_to_string(path).expect("the shipped unit");
    // A private /tmp would hide `-fifo=/tmp/…` from publishers, whose writes would create a
    // plain file there and be lost without an error.
    let private_tmp = unit_setting(&unit, "PrivateTmp").unwrap_or_default();
    assert!(!["yes", "true", "on", "1"].contains(&private_tmp.as_str()), "PrivateTmp={private_tmp}");
    // The host's /tmp is read-only to hasses: a missing FIFO there stops the start with a line
    // rather than becoming a FIFO nobody else sees.
    assert_eq!(unit_setting(&unit, "ProtectSystem").as_deref(), Some("strict"));
}

#[test]
fn an_old_config_uses_the_fifo_already_at_its_path() {
    let fifo = TempFile::new("old.fifo");
    nix::unistd::mkfifo(fifo.path(), nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let conf = TempFile::new("hasses.conf");
    let text = format!("# hasses 1.30\n-p=0\n-murl=/sse\n-fifo={}\n-nodaemon\n", fifo.arg());
    std::fs::write(conf.path(), text).unwrap();
    let server = Server::spawn(&["--config", conf.arg()]).listening(common::WAIT);
    let mut client = server.subscribe("subscribe=old");
    common::write_fifo(fifo.path(), b"old=through the old FIFO\n");
    client.expect_data("through the old FIFO");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(fifo.path()).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o600, "the FIFO is kept as it was, not made anew");
}
