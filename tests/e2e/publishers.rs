//! Publishers that keep their control connection open (issue 10): a command is carried out as
//! soon as its newline or separator arrives, text with neither once its writer has been quiet for
//! [`LINE_QUIET`], and a line that arrives in pieces is still one line. The FIFO frames the same.
//!
//! No test bounds how soon something arrives: on a loaded machine anything may be late. To show
//! that a command went out without waiting for the quiet time, the publisher keeps a line in
//! progress (a byte every 100 ms) while the test waits, so the quiet time never comes.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use crate::common::{self, connect, NoEvent, Server, SseClient, TempFile, WAIT};
use hasses::control::LINE_QUIET;

/// Bytes that keep a line in progress without ever completing a command anyone receives.
const BUSY: &[u8] = b"busy=";

/// Waits for `arrived` (which may take up to 100 ms a call) to give something, while `publisher`
/// keeps a line in progress so that the quiet time never ends it: only an ending that arrived
/// can have completed the command awaited.
fn while_busy<T>(publisher: &mut impl Write, mut arrived: impl FnMut() -> Option<T>) -> T {
    publisher.write_all(BUSY).unwrap();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(value) = arrived() {
            return value;
        }
        publisher.write_all(b"x").unwrap();
    }
    panic!("nothing arrived within {WAIT:?} while the publisher kept its line going");
}

/// The data of the next event on `client`, while `publisher` keeps a line in progress.
fn next_data_while_busy(client: &mut SseClient, publisher: &mut impl Write) -> String {
    while_busy(publisher, || match client.try_next_event(Duration::from_millis(100)) {
        Ok(event) => Some(event.data),
        Err(NoEvent::Timeout) => None,
        Err(NoEvent::Closed) => panic!("the SSE client was closed"),
    })
}

#[test]
fn a_command_ended_by_the_separator_goes_out_without_a_newline_or_a_close() {
    let server = Server::start(&[]);
    let mut a = server.subscribe("subscribe=a");
    let mut publisher = connect(server.cport());
    publisher.write_all(b"a=one;").unwrap();
    assert_eq!(next_data_while_busy(&mut a, &mut publisher), "one");
    // Two commands in one write, the second one cut in two writes.
    publisher.write_all(b"\na=two;a=thr").unwrap();
    publisher.write_all(b"ee;").unwrap();
    assert_eq!(next_data_while_busy(&mut a, &mut publisher), "two");
    assert_eq!(next_data_while_busy(&mut a, &mut publisher), "three");
}

#[test]
fn a_tcp_command_ended_by_the_separator_is_answered_on_the_open_connection() {
    let server = Server::start(&[]);
    let _a = server.subscribe("subscribe=a");
    let mut publisher = connect(server.cport());
    let mut replies = publisher.try_clone().unwrap();
    replies.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    publisher.write_all(b"tcpnumberofclients;").unwrap();
    let mut reply = Vec::new();
    let reply = while_busy(&mut publisher, || {
        let mut chunk = [0; 256];
        match replies.read(&mut chunk) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read failed: {e}"),
        }
        reply.ends_with(b"\n").then(|| String::from_utf8(reply.clone()).unwrap())
    });
    assert_eq!(reply, "{\"numberofclients\":1}\n");
}

#[test]
fn text_with_no_ending_goes_out_once_its_writer_is_quiet() {
    let server = Server::start(&[]);
    let mut a = server.subscribe("subscribe=a");
    let mut publisher = connect(server.cport());
    let sent = Instant::now();
    publisher.write_all(b"a=two").unwrap();
    assert_eq!(a.next_data(), "two");
    assert!(sent.elapsed() >= LINE_QUIET, "went out after {:?}, before the quiet time", sent.elapsed());
    // What comes next is a new line, not the end of the one that went out.
    publisher.write_all(b"a=three\n").unwrap();
    assert_eq!(a.next_data(), "three");
    publisher.write_all(b"a=four").unwrap();
    assert_eq!(a.next_data(), "four");
}

#[test]
fn a_line_in_two_pieces_a_few_milliseconds_apart_is_one_message() {
    let server = Server::start(&[]);
    let mut a = server.subscribe("subscribe=a");
    let mut publisher = connect(server.cport());
    for (first, second) in [(&b"a=fi"[..], &b"ve\n"[..]), (b"a=si", b"x;"), (b"a=sev", b"en")] {
        publisher.write_all(first).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        publisher.write_all(second).unwrap();
    }
    assert_eq!(a.next_data(), "five");
    assert_eq!(a.next_data(), "six");
    assert_eq!(a.next_data(), "seven");
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["msgproccnt"], 3, "{status}");
    assert_eq!(status["msgrefusedcnt"], 0, "{status}");
}

#[test]
fn an_auth_line_is_never_cut_at_the_separator_and_commands_follow_at_once() {
    let server = Server::start(&["--control-secret", "s3cr;et"]);
    let mut a = server.subscribe("subscribe=a");
    let mut publisher = connect(server.cport());
    publisher.write_all(b"auth s3cr;et\na=one;").unwrap();
    assert_eq!(next_data_while_busy(&mut a, &mut publisher), "one");
    // Without its newline, the auth line is whole once the publisher is quiet.
    let mut quiet = connect(server.cport());
    quiet.write_all(b"auth s3cr;et").unwrap();
    std::thread::sleep(LINE_QUIET * 2);
    quiet.write_all(b"a=two;").unwrap();
    assert_eq!(next_data_while_busy(&mut a, &mut quiet), "two");
}

#[test]
fn the_fifo_frames_the_same() {
    let fifo = TempFile::new("publishers.fifo");
    let server = Server::start(&["--fifo", fifo.arg()]);
    let mut a = server.subscribe("subscribe=a");
    let mut writer = std::fs::OpenOptions::new().write(true).open(fifo.path()).unwrap();
    writer.write_all(b"a=one;").unwrap();
    assert_eq!(next_data_while_busy(&mut a, &mut writer), "one");
    writer.write_all(b"\n").unwrap();
    // A writer that writes no ending (or dies mid-line) is served once it is quiet, and its
    // text is not glued to the next writer's line.
    let sent = Instant::now();
    common::write_fifo(fifo.path(), b"a=two");
    assert_eq!(a.next_data(), "two");
    assert!(sent.elapsed() >= LINE_QUIET, "went out after {:?}, before the quiet time", sent.elapsed());
    common::write_fifo(fifo.path(), b"a=three\n");
    assert_eq!(a.next_data(), "three");
}
