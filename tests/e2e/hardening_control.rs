//! Hardening of the control channel (issue 5): `--control-secret` and its `auth` line, the
//! warning for a control port reachable from other hosts, over-long control lines, and FIFO
//! lines left unfinished by their writer.

use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use crate::common::{connect, control_bytes, read_to_eof, write_fifo, Server, TempFile, WAIT};

const SECRET: &str = "s3cr;et";
const UNAUTHORIZED: &str = "ERR unauthorized\n";

/// `--max-message 100` makes the longest control line 100 + 2 × 128 + 64 bytes.
const MAX_LINE_AT_100: usize = 420;

fn with_secret() -> Server {
    Server::start(&["--control-secret", SECRET])
}

#[test]
fn with_a_secret_a_command_before_auth_is_refused_and_not_carried_out() {
    let server = with_secret();
    let mut a = server.subscribe("subscribe=a");
    assert_eq!(server.control("a=sneaky\n"), UNAUTHORIZED);
    assert_eq!(server.control("tcpstatus\n"), UNAUTHORIZED);
    // The first line decides: nothing after a refused line is looked at, not even a right auth.
    assert_eq!(server.control(&format!("status\nauth {SECRET}\na=later\n")), UNAUTHORIZED);
    let refusal = server.log.wait_for_line(|l| l.contains("refused: a command before auth"), WAIT);
    assert!(refusal.starts_with("Control connection from 127.0.0.1:"), "{refusal}");

    assert_eq!(server.control(&format!("auth {SECRET}\na=ok\n")), "");
    assert_eq!(a.next_data(), "ok", "a refused publish went through");
}

#[test]
fn the_refusal_is_written_before_the_connection_is_closed() {
    let server = with_secret();
    // The publisher keeps its side open: the server closes.
    let mut publisher = connect(server.cport());
    publisher.write_all(b"numberofclients\n").unwrap();
    let reply = read_to_eof(&mut publisher, Vec::new(), WAIT).expect("the server closes");
    assert_eq!(String::from_utf8(reply).unwrap(), UNAUTHORIZED);
}

#[test]
fn the_right_secret_is_accepted_silently_in_any_pieces() {
    let server = with_secret();
    let reply = server.control(&format!("auth {SECRET}\ntcpnumberofclients\n"));
    assert_eq!(reply, "{\"numberofclients\":0}\n");
    // CRLF, whitespace around it, a blank line first, and the line in pieces.
    let pieces: [&[u8]; 4] = [b"\r\n  au", b"th  s3c", b"r;et \r\ntcpnumberof", b"clients\r\n"];
    let reply = control_bytes(server.cport(), &pieces, Duration::from_millis(20));
    assert_eq!(reply, "{\"numberofclients\":0}\n");
    // Once authorized, a second auth line is ignored, never taken for a command or a publish.
    let reply = server.control(&format!("auth {SECRET}\nauth x=y\ntcpnumberofclients\n"));
    assert_eq!(reply, "{\"numberofclients\":0}\n");
}

#[test]
fn a_wrong_secret_is_refused() {
    let server = with_secret();
    for wrong in ["auth wrong", "auth s3cr", "auth s3cr;etX", "auth", "auth S3CR;ET", "authentication"] {
        let start = server.log.len();
        assert_eq!(server.control(&format!("{wrong}\ntcpstatus\n")), UNAUTHORIZED, "{wrong}");
        let why = if wrong.starts_with("auth ") || wrong == "auth" { "wrong secret" } else { "a command" };
        server.log.wait_for_line_from(start, |l| l.contains(&format!("refused: {why}")), WAIT);
    }
    // The secret never shows in the log.
    assert!(!server.log.has_from(0, |l| l.contains("s3cr")), "{}", server.log.dump());
}

#[test]
fn without_a_secret_no_auth_is_needed_and_auth_lines_are_ignored() {
    let server = Server::start(&[]);
    assert_eq!(server.control("tcpnumberofclients\n"), "{\"numberofclients\":0}\n");
    let reply = server.control("auth whatever\nauth a=b\ntcpnumberofclients\n");
    assert_eq!(reply, "{\"numberofclients\":0}\n");
    assert_eq!(server.tcp_json("tcpstatus")["msgproccnt"], 0, "an auth line was published");
}

#[test]
fn an_over_long_line_closes_that_connection_only() {
    let server = Server::start(&["--max-message", "100"]);
    let mut a = server.subscribe("subscribe=a");
    let mut steady = connect(server.cport());
    steady.write_all(b"a=one\n").unwrap();
    assert_eq!(a.next_data(), "one");

    let start = server.log.len();
    let mut long = connect(server.cport());
    // No newline needed: the line is refused as soon as it is known to be too long.
    long.write_all(&vec![b'x'; MAX_LINE_AT_100 + 1]).unwrap();
    let (_, line) = server.log.wait_for_line_from(start, |l| l.contains("longer than"), WAIT);
    assert!(line.starts_with("Control connection from 127.0.0.1:"), "{line}");
    assert!(line.ends_with(&format!("closed: control line longer than {MAX_LINE_AT_100} bytes")), "{line}");
    assert!(read_to_eof(&mut long, Vec::new(), WAIT).is_some(), "the connection stays open");
    // Whatever it sends now goes nowhere.
    let late = long.write_all(b"\na=from-the-closed-one\n");
    assert!(late.is_err() || read_to_eof(&mut long, Vec::new(), WAIT).is_some());

    // The other publisher, a new one and the SSE side all keep working.
    steady.write_all(b"a=two\n").unwrap();
    assert_eq!(a.next_data(), "two");
    server.publish("a=three");
    assert_eq!(a.next_data(), "three");
    let mut b = server.subscribe("subscribe=a");
    server.publish("a=four");
    assert_eq!(a.next_data(), "four");
    assert_eq!(b.next_data(), "four");
    steady.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut steady, Vec::new(), WAIT), Some(Vec::new()));
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["msgproccnt"], 4);
    assert_eq!(status["msgrefusedcnt"], 1);
}

#[test]
fn a_line_of_exactly_the_maximum_is_not_refused() {
    let server = Server::start(&["--max-message", "100"]);
    let mut a = server.subscribe("subscribe=a");
    // A valid publish padded with a blank part up to the limit.
    let publish = format!("a={}", "m".repeat(100));
    let line = format!("{publish};{}", " ".repeat(MAX_LINE_AT_100 - publish.len() - 1));
    assert_eq!(line.len(), MAX_LINE_AT_100);
    assert_eq!(control_bytes(server.cport(), &[line.as_bytes(), b"\n"], Duration::ZERO), "");
    assert_eq!(a.next_data(), "m".repeat(100));
}

#[test]
fn an_over_long_fifo_line_is_skipped_and_the_next_goes_through() {
    let fifo = TempFile::new("long.fifo");
    let server = Server::start(&["--max-message", "100", "--fifo", fifo.arg()]);
    let mut a = server.subscribe("subscribe=a");
    let mut text = format!("a={}\n", "x".repeat(MAX_LINE_AT_100)).into_bytes();
    text.extend_from_slice(b"a=after\n");
    write_fifo(fifo.path(), &text);
    assert_eq!(a.next_data(), "after");
    let expected = format!("Control FIFO: line skipped: control line longer than {MAX_LINE_AT_100} bytes");
    server.log.wait_for_line(|l| l == expected, WAIT);
}

#[test]
fn a_fifo_line_left_unfinished_is_delivered_after_the_quiet_time_and_never_glued() {
    let fifo = TempFile::new("unfinished.fifo");
    let server = Server::start(&["--fifo", fifo.arg()]);
    let mut a = server.subscribe("subscribe=room1");
    let written_at = Instant::now();
    // A writer that ends without a newline (`printf 'room1=hal' > fifo`): hasses serves it.
    write_fifo(fifo.path(), b"room1=hal");
    assert_eq!(a.next_data(), "hal");
    assert!(written_at.elapsed() >= Duration::from_millis(400), "complete after {:?}", written_at.elapsed());
    write_fifo(fifo.path(), b"room1=hello\n");
    assert_eq!(a.next_data(), "hello", "the unfinished bytes were glued to the next line");
    assert_eq!(server.tcp_json("tcpstatus")["msgrefusedcnt"], 0);
}

#[test]
fn an_over_long_fifo_line_whose_writer_died_is_refused_once() {
    let fifo = TempFile::new("long-abandoned.fifo");
    let server = Server::start(&["--max-message", "100", "--fifo", fifo.arg()]);
    let mut a = server.subscribe("subscribe=a");
    write_fifo(fifo.path(), format!("a={}", "x".repeat(MAX_LINE_AT_100)).as_bytes());
    server.log.wait_for_line(|l| l.starts_with("Control FIFO: line skipped"), WAIT);
    // Past the quiet second the skipping ends: the next line is whole, not taken for the tail.
    std::thread::sleep(Duration::from_millis(1300));
    write_fifo(fifo.path(), b"a=after\n");
    assert_eq!(a.next_data(), "after");
    assert_eq!(server.tcp_json("tcpstatus")["msgrefusedcnt"], 1);
    assert!(!server.log.has_from(0, |l| l.contains("incomplete line")), "{}", server.log.dump());
}

#[test]
fn a_slow_fifo_writer_within_the_quiet_time_keeps_its_line() {
    let fifo = TempFile::new("slow.fifo");
    let server = Server::start(&["--fifo", fifo.arg()]);
    let mut a = server.subscribe("subscribe=room1");
    let mut writer = std::fs::OpenOptions::new().write(true).open(fifo.path()).unwrap();
    for piece in [&b"room1=sl"[..], b"ow ", b"but ", b"whole\n"] {
        writer.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.next_data(), "slow but whole");
    assert!(!server.log.has_from(0, |l| l.contains("incomplete line")), "{}", server.log.dump());
}

/// The warning's start, before the address.
const EXPOSED: &str = "Control port ";

/// The warning, if the server gave it. It comes before `Control listening on`, the last start-up
/// line: this waits for that line, as the log may still be on its way when the server is ready.
fn exposed_warning(server: &Server) -> Option<String> {
    let (end, _) = server.log.wait_for_line_from(0, |l| l.starts_with("Control listening on "), WAIT);
    server.log.lines()[..end]
        .iter()
        .find(|l| l.starts_with(EXPOSED) && l.contains("--control-secret"))
        .cloned()
}

#[test]
fn a_control_port_on_all_interfaces_without_a_secret_is_warned_about() {
    // At log level 0 too: a warning always shows.
    let server = Server::start(&["--control-bind", "0.0.0.0", "--log-level", "0"]);
    let warning =
        exposed_warning(&server).unwrap_or_else(|| panic!("no warning; log:\n{}", server.log.dump()));
    let port = server.cport();
    assert!(
        warning.starts_with(&format!("Control port 0.0.0.0:{port} is reachable from other hosts")),
        "{warning}"
    );
    // Still a working control port (reached here over loopback).
    assert_eq!(server.control("tcpnumberofclients\n"), "{\"numberofclients\":0}\n");
}

#[test]
fn no_warning_on_loopback_or_with_a_secret() {
    let loopback = Server::start(&[]);
    let guarded = Server::start(&["--control-bind", "0.0.0.0", "--control-secret", SECRET]);
    for server in [&loopback, &guarded] {
        assert_eq!(exposed_warning(server), None, "{}", server.log.dump());
    }
    let reply = guarded.control(&format!("auth {SECRET}\ntcpnumberofclients\n"));
    assert_eq!(reply, "{\"numberofclients\":0}\n");
}

#[test]
fn the_fifo_needs_no_auth() {
    let fifo = TempFile::new("noauth.fifo");
    let server = Server::start(&["--control-secret", SECRET, "--fifo", fifo.arg()]);
    let mut a = server.subscribe("subscribe=a");
    write_fifo(fifo.path(), b"a=from-the-fifo\n");
    assert_eq!(a.next_data(), "from-the-fifo");
}

#[test]
fn many_refused_connections_leave_the_control_port_serving() {
    let server = with_secret();
    for _ in 0..50 {
        let mut stream = connect(server.cport());
        // Some never read their refusal and reset; the server must not mind.
        match stream.write_all(b"status\n") {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
            Err(e) => panic!("{e}"),
        }
    }
    let reply = server.control(&format!("auth {SECRET}\ntcpnumberofclients\n"));
    assert_eq!(reply, "{\"numberofclients\":0}\n");
}
