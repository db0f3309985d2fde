//! Richer events (issue 12): a control line that is a JSON object publishes with several
//! targets, an event type, a reconnection time and multi-line data, over the TCP control port
//! and the FIFO alike; every hasses line keeps its meaning; every bad field is refused with a
//! log line and counted, and the rest of the input goes on.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::common::{self, read_to_eof, write_fifo, Server, SseClient, TempFile, WAIT};

/// Every event `client` gets before the one whose data is `marker`, each without its `id:` line
/// (checked to come first), as its lines were sent.
fn events_before(client: &mut SseClient, marker: &str) -> Vec<Vec<String>> {
    let mut events = Vec::new();
    loop {
        let mut event = client.next_lines();
        assert!(event[0].starts_with("id: "), "{event:?}");
        event.remove(0);
        if event == [format!("data: {marker}")] {
            return events;
        }
        events.push(event);
    }
}

/// Sends `text`, then a `*=MARKER` line, through `send`; returns the marker.
fn with_marker(send: &dyn Fn(&[u8]), text: &str) -> String {
    static SYNCS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let marker = format!("sync-{}", SYNCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    send(format!("{text}*={marker}\n").as_bytes());
    marker
}

fn lines(list: &[&str]) -> Vec<String> {
    list.iter().map(|line| line.to_string()).collect()
}

/// Every JSON form and the hasses line that looks like one, through `send` (TCP or FIFO).
fn json_forms(server: &Server, send: &dyn Fn(&[u8])) {
    let mut clients = [
        server.subscribe("subscribe=room1-user42&id=both"),
        server.subscribe("subscribe=room2&id=other"),
        server.subscribe("subscribe=%7Bx"),
    ];
    // What `text` brings each client: [both, other, brace].
    let mut publish = |text: &str| {
        let marker = with_marker(send, text);
        clients.each_mut().map(|client| events_before(client, &marker))
    };
    let data = |d: &str| vec![format!("data: {d}")];
    let nothing = Vec::<Vec<String>>::new;

    // Two targets that both match one client: one copy, with every field on the wire.
    let line = r#"{"to":["room1","user*"],"event":"chat","retry":2500,"data":"line 1\nline 2\r\nline 3"}"#;
    let expected = lines(&["event: chat", "retry: 2500", "data: line 1", "data: line 2", "data: line 3"]);
    assert_eq!(publish(&format!("{line}\n")), [vec![expected], nothing(), nothing()]);

    // A `;` in JSON data is data; the next line is cut at its separators as always.
    let [both, ..] = publish("{\"to\":\"room1\",\"data\":\"a;b=c;\"}\nroom1=d;room1=e\n");
    assert_eq!(both, [data("a;b=c;"), data("d"), data("e")]);

    // `except`, and a `*` target; no `event:` nor `retry:` unless asked.
    let got = publish("{\"to\":\"*\",\"except\":\"both\",\"data\":\"not you\"}\n");
    assert_eq!(got, [nothing(), vec![data("not you")], vec![data("not you")]]);

    // Not a JSON object: hasses' publish to the token `{x`, as ever.
    assert_eq!(publish("{x=1\n"), [nothing(), nothing(), vec![data("1")]]);
}

#[test]
fn json_publishes_over_tcp() {
    let server = Server::start(&[]);
    let port = server.cport();
    json_forms(&server, &|text| {
        assert_eq!(common::control_bytes(port, &[text], Duration::ZERO), "", "a publish gets no reply");
    });
    assert_eq!(server.tcp_json("tcpstatus")["msgrefusedcnt"], 0);
}

#[test]
fn json_publishes_over_the_fifo() {
    let fifo = TempFile::new("events.fifo");
    let server = Server::start(&["--fifo", fifo.arg()]);
    server.log.wait_for_line(|l| l == format!("Control FIFO {}", fifo.arg()), WAIT);
    json_forms(&server, &|text| write_fifo(fifo.path(), text));
    assert_eq!(server.tcp_json("tcpstatus")["msgrefusedcnt"], 0);
}

/// Each bad line, and what its log line must say.
fn bad_lines() -> Vec<(String, &'static str)> {
    let long = |c: &str, n: usize| c.repeat(n);
    vec![
        (r#"{"to":"room1","date":"x"}"#.into(), "unknown field `date`"),
        (r#"{"to":"room1"}"#.into(), "missing field `data`"),
        (r#"{"to":5,"data":"x"}"#.into(), "expected a target or an array of targets"),
        (r#"{"to":[],"data":"x"}"#.into(), r#""to" names no target"#),
        (r#"{"to":"","data":"x"}"#.into(), "empty target token"),
        (r#"{"to":"room1-both","data":"x"}"#.into(), r#"target "room1-both" holds a '-'"#),
        (r#"{"to":"room*1","data":"x"}"#.into(), "has a '*' before its end"),
        (format!(r#"{{"to":"{}","data":"x"}}"#, long("t", 129)), "target token is 129 bytes"),
        (format!(r#"{{"to":"room1","except":"{}","data":"x"}}"#, long("u", 65)), "client id is 65 bytes"),
        (
            format!(r#"{{"to":"room1","data":"{}"}}"#, long("d", 101)),
            "message is 101 bytes, over the 100-byte",
        ),
        (r#"{"to":"room1","data":"x","event":"a\nid: 1"}"#.into(), r#""event" holds a line break"#),
        (format!(r#"{{"to":"room1","data":"x","event":"{}"}}"#, long("e", 129)), r#""event" is 129 bytes"#),
        (r#"{"to":"room1","data":"x","retry":-5}"#.into(), "invalid value: integer `-5`, expected u32"),
        (r#"{"to":"room1","data":"x","retry":"soon"}"#.into(), "expected u32"),
        (r#"{"to":"room1","data":"x""#.into(), "not JSON (EOF while parsing an object"),
    ]
}

/// Sends every bad line and a good one after them through `send`: each bad one is skipped with
/// a log line naming its fault and counted as refused; the good one goes through.
fn bad_fields(server: &Server, send: &dyn Fn(&[u8])) {
    let mut client = server.subscribe("subscribe=room1&id=both");
    let start = server.log.len();
    let bad = bad_lines();
    let text: String = bad.iter().map(|(line, _)| format!("{line}\n")).collect();
    let marker = with_marker(send, &format!("{text}room1=after\n"));
    assert_eq!(events_before(&mut client, &marker), [vec!["data: after".to_string()]]);
    for (_, says) in &bad {
        let refused = |l: &str| l.starts_with("Malformed control command skipped: ") && l.contains(says);
        let found = server.log.find_from(start, refused, WAIT);
        assert!(found.is_some(), "no log line says {says:?}; log:\n{}", server.log.dump());
    }
    assert_eq!(server.tcp_json("tcpstatus")["msgrefusedcnt"], bad.len());
}

#[test]
fn every_bad_field_over_tcp_is_refused_and_the_rest_goes_on() {
    let server = Server::start(&["--max-message", "100"]);
    let port = server.cport();
    bad_fields(&server, &|text| {
        assert_eq!(common::control_bytes(port, &[text], Duration::ZERO), "");
    });
}

#[test]
fn every_bad_field_over_the_fifo_is_refused_and_the_rest_goes_on() {
    let fifo = TempFile::new("bad-events.fifo");
    let server = Server::start(&["--max-message", "100", "--fifo", fifo.arg()]);
    server.log.wait_for_line(|l| l == format!("Control FIFO {}", fifo.arg()), WAIT);
    bad_fields(&server, &|text| write_fifo(fifo.path(), text));
}

/// A publisher that keeps its connection open and never ends its JSON line: the separators in
/// it do not cut it, and the quiet time completes it.
#[test]
fn an_unended_json_line_is_one_command_after_the_quiet_time() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=room1");
    let mut publisher = common::connect(server.cport());
    let written_at = Instant::now();
    publisher.write_all(br#"{"to":"room1","data":"a;b;"#).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    publisher.write_all(br#"c"}"#).unwrap();
    let event = client.next_lines();
    assert_eq!(event[1..], ["data: a;b;c"]);
    assert!(written_at.elapsed() >= Duration::from_millis(400), "complete after {:?}", written_at.elapsed());
    publisher.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut publisher, Vec::new(), WAIT), Some(Vec::new()));
    assert_eq!(server.tcp_json("tcpstatus")["msgproccnt"], 1);
}
