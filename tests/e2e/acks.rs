//! What a publisher on the control port learns (issue 20): with `ack on`, or a JSON line's
//! `"ack":true`, every publish is answered `OK <id>` or `ERR <reason>`, in the order of its
//! lines; without, nothing changes for hasses' publishers. And what a web page cannot do: an
//! HTTP request sent to the control port closes that connection and publishes nothing.

use std::io::Write;
use std::time::Duration;

use crate::common::{connect, read_to_eof, Server, WAIT};

/// The id in an `OK <id>` answer.
fn acked_id(line: &str) -> u64 {
    line.strip_prefix("OK ").and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("not OK <id>: {line:?}"))
}

#[test]
fn with_acks_on_every_publish_is_answered_with_the_id_its_subscribers_see() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=a");
    let reply = server
        .control("ack on\na=one\n{\"to\":\"a\",\"data\":\"two\"}\na-=bad\na=three;a=four\nack off\na=five\n");
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines.len(), 7, "{reply}");
    assert_eq!(lines[0], "OK ack on");
    let ids: Vec<u64> = [1, 2, 4, 5].iter().map(|&i| acked_id(lines[i])).collect();
    assert!(lines[3].starts_with("ERR empty client id to except"), "{reply}");
    assert_eq!(lines[6], "OK ack off", "nothing for a=five: acks are off again");
    for (id, data) in ids.iter().zip(["one", "two", "three", "four"]) {
        let event = client.expect_data(data);
        assert_eq!(event.id, *id, "the answer's id is the event's");
    }
    client.expect_data("five");
}

#[test]
fn a_json_line_asks_for_its_own_answer_and_hasses_publishers_get_none() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=a");
    assert_eq!(server.control("a=quiet\nnot a command\n"), "", "no answers unless asked");
    let reply = server.control(
        "{\"to\":\"a\",\"data\":\"loud\",\"ack\":true}\n{\"to\":\"a-\",\"data\":\"x\",\"ack\":true}\n",
    );
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines.len(), 2, "{reply}");
    client.expect_data("quiet");
    assert_eq!(client.expect_data("loud").id, acked_id(lines[0]));
    assert!(lines[1].starts_with("ERR "), "a refused JSON line that asked is told why: {reply}");
}

#[test]
fn answers_keep_the_order_of_their_lines_beside_questions() {
    let server = Server::start(&[]);
    let reply = server.control("ack on\na=1\ntcpnumberofclients\na=2\n");
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines.len(), 4, "{reply}");
    assert_eq!(lines[2], "{\"numberofclients\":0}");
    assert!(acked_id(lines[1]) < acked_id(lines[3]));
}

#[test]
fn the_fifo_ignores_ack_with_a_log_line() {
    let fifo = crate::common::TempFile::new("ack.fifo");
    let server = Server::start(&["--fifo", fifo.arg()]);
    let mut client = server.subscribe("subscribe=a");
    crate::common::write_fifo(fifo.path(), b"ack on\na=x\n");
    client.expect_data("x");
    server.log.wait_for_line(|l| l.contains("ignored on the FIFO") && l.ends_with("ack on"), WAIT);
}

#[test]
fn an_http_request_to_the_control_port_is_closed_and_publishes_nothing() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=room1");
    // What `curl -d $'\nroom1=x\n' http://127.0.0.1:PORT/` sends, as a page's form or fetch can.
    let body = "\nroom1=x\n";
    let request = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\
         Content-Length: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n{body}",
        server.cport(),
        body.len()
    );
    let mut stream = connect(server.cport());
    stream.write_all(request.as_bytes()).unwrap();
    let reply = read_to_eof(&mut stream, Vec::new(), WAIT).expect("the server closes at once");
    assert!(reply.is_empty(), "nothing is answered: {:?}", String::from_utf8_lossy(&reply));
    let line = server.log.wait_for_line(|l| l.contains("speaks HTTP"), WAIT);
    assert!(line.starts_with("Control connection from 127.0.0.1:"), "{line}");
    // A request line cut at a `;` in its target is caught as well.
    let reply = server.control("GET /a;b HTTP/1.1\nHost: x\nroom1=y\n");
    assert_eq!(reply, "");
    server.publish("room1=after");
    assert_eq!(client.next_data(), "after", "neither x nor y was published");
    assert!(client.try_next_event(Duration::from_millis(300)).is_err());
}
