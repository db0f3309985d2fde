//! Resume: a client that comes back with `Last-Event-ID` (or the `lastEventId` query parameter)
//! gets exactly what it missed, told of a gap with `event: reset` when something is gone, and
//! then live events with no gap and no duplicate at the seam.

use std::process::Command;
use std::thread;

use crate::common::*;

/// A request for `/sse?QUERY` with extra header lines.
fn request_with(query: &str, headers: &[&str]) -> String {
    let plain = get_request(query);
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    plain.replacen("\r\n\r\n", &format!("\r\n{extra}\r\n"), 1)
}

/// Subscribes with these extra header lines.
fn subscribe_with(server: &Server, query: &str, headers: &[&str]) -> SseClient {
    let mut client = SseClient::connect(server.sse_port);
    client.handshake(request_with(query, headers).as_bytes());
    client
}

/// Publishes `t=0` … `t=N-1` and returns their ids, read by a client subscribed throughout.
fn publish_numbered(server: &Server, token: &str, count: usize) -> Vec<u64> {
    let mut witness = server.subscribe(&format!("subscribe={token}"));
    for n in 0..count {
        server.publish(&format!("{token}={n}"));
    }
    (0..count).map(|n| witness.expect_data(&n.to_string()).id).collect()
}

fn datas(client: &mut SseClient, count: usize) -> Vec<String> {
    (0..count).map(|_| client.next_data()).collect()
}

#[test]
fn last_event_id_replays_exactly_what_was_missed_then_live() {
    let server = Server::start(&[]);
    let ids = publish_numbered(&server, "t", 5);
    server.publish("other=not for t");
    let mut back = subscribe_with(&server, "subscribe=t", &[&format!("Last-Event-ID: {}", ids[1])]);
    assert_eq!(datas(&mut back, 3), ["2", "3", "4"]);
    server.publish("t=live");
    let live = back.next_event();
    assert_eq!((live.data.as_str(), live.event), ("live", None), "no reset, no duplicate, no gap");
    assert!(live.id > ids[4]);
}

#[test]
fn the_query_parameter_resumes_too_and_the_header_wins() {
    let server = Server::start(&[]);
    let ids = publish_numbered(&server, "t", 3);
    for name in ["lastEventId", "last_event_id", "lastEventID"] {
        let mut back = server.subscribe(&format!("subscribe=t&{name}={}", ids[0]));
        assert_eq!(datas(&mut back, 2), ["1", "2"], "{name}");
    }
    let query = format!("subscribe=t&lastEventId={}", ids[0]);
    let mut back = subscribe_with(&server, &query, &[&format!("Last-Event-ID: {}", ids[1])]);
    assert_eq!(back.next_data(), "2");
    let mut everything = server.subscribe("subscribe=t&lastEventId=earliest");
    assert_eq!(datas(&mut everything, 3), ["0", "1", "2"]);
}

#[test]
fn a_gap_is_told_first_with_the_id_asked_for() {
    let server = Server::start(&["--history", "2"]);
    let ids = publish_numbered(&server, "t", 5);
    let mut back = subscribe_with(&server, "subscribe=t", &[&format!("Last-Event-ID: {}", ids[0])]);
    let reset = back.next_event();
    assert_eq!(reset.event.as_deref(), Some("reset"));
    let told: serde_json::Value = serde_json::from_str(&reset.data).unwrap();
    assert_eq!(told, serde_json::json!({ "lastEventId": ids[0].to_string() }));
    assert_eq!(datas(&mut back, 2), ["3", "4"], "then what is still kept");

    // Nothing this client would have received is gone: no reset.
    let mut whole = subscribe_with(&server, "subscribe=t", &[&format!("Last-Event-ID: {}", ids[2])]);
    assert_eq!(whole.next_event().event, None);
}

#[test]
fn an_id_from_before_this_server_started_is_a_gap() {
    let server = Server::start(&[]);
    publish_numbered(&server, "t", 2);
    let mut back = subscribe_with(&server, "subscribe=t", &["Last-Event-ID: 1"]);
    assert_eq!(back.next_event().event.as_deref(), Some("reset"));
    assert_eq!(datas(&mut back, 2), ["0", "1"]);
}

#[test]
fn a_replay_follows_the_live_rules_all_but_sender_and_prefixes_included() {
    let server = Server::start(&[]);
    let first = publish_numbered(&server, "room1", 1)[0];
    for line in ["room1-me=not mine", "room*=prefix", "*=all", "room2=elsewhere", "room1=last"] {
        server.publish(line);
    }
    let mut witness = server.subscribe("subscribe=room1&lastEventId=earliest");
    assert_eq!(datas(&mut witness, 5), ["0", "not mine", "prefix", "all", "last"]);
    let mut me = server.subscribe(&format!("subscribe=room1&id=me&lastEventId={first}"));
    assert_eq!(datas(&mut me, 3), ["prefix", "all", "last"]);
}

#[test]
fn history_off_tells_every_resume_of_a_gap_that_may_exist() {
    let server = Server::start(&["--history", "0"]);
    let ids = publish_numbered(&server, "t", 2);
    let mut back = subscribe_with(&server, "subscribe=t", &[&format!("Last-Event-ID: {}", ids[0])]);
    assert_eq!(back.next_event().event.as_deref(), Some("reset"));
    server.publish("t=live");
    assert_eq!(back.next_data(), "live");
}

#[test]
fn a_last_event_id_that_is_no_id_is_refused() {
    let server = Server::start(&[]);
    let response = server.request(request_with("subscribe=t", &["Last-Event-ID: yesterday"]).as_bytes());
    assert_eq!(response.head.status_line, "HTTP/1.1 400 Bad Request");
    server.log.wait_for_line(|l| l.contains("Last-Event-ID is not an event id"), WAIT);
}

#[test]
fn retry_starts_every_stream() {
    let server = Server::start(&["--retry", "1500"]);
    let mut client = server.subscribe("subscribe=t");
    server.publish("t=x");
    client.expect_data("x");
    assert_eq!(client.retry, Some(1500));
}

/// A publisher goes on while a client reconnects again and again, each time from the last id it
/// saw: the events it holds at the end are every event, once each, in order.
#[test]
fn resumes_racing_publishes_lose_and_duplicate_nothing() {
    const EVENTS: usize = 3000;
    let server = Server::start(&[]);
    let port = server.cport();
    let publisher = thread::spawn(move || {
        for n in 0..EVENTS {
            control(port, &format!("t={n}"));
        }
    });
    let mut got: Vec<usize> = Vec::new();
    let mut last_id = None::<u64>;
    for _round in 0..200 {
        let mut client = match last_id {
            Some(id) => subscribe_with(&server, "subscribe=t", &[&format!("Last-Event-ID: {id}")]),
            None => server.subscribe("subscribe=t&lastEventId=earliest"),
        };
        for _ in 0..40 {
            let Ok(event) = client.try_next_event(WAIT) else { break };
            assert_eq!(event.event, None, "nothing was lost: no reset");
            got.push(event.data.parse().unwrap());
            last_id = Some(event.id);
            if got.len() == EVENTS {
                break;
            }
        }
        if got.len() == EVENTS {
            break;
        }
    }
    publisher.join().unwrap();
    assert_eq!(got, (0..EVENTS).collect::<Vec<_>>(), "every event once, in order");
}

#[test]
#[ignore = "needs curl: run by the README's test command"]
fn curl_resumes_with_the_header_and_the_query_parameter() {
    let server = Server::start(&[]);
    let ids = publish_numbered(&server, "t", 3);
    let url = |query: &str| format!("http://127.0.0.1:{}/sse?subscribe=t{query}", server.sse_port);
    let curl = |args: &[&str]| {
        let out =
            Command::new("curl").args(["-sN", "--max-time", "2"]).args(args).output().expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let by_header = curl(&["-H", &format!("Last-Event-ID: {}", ids[0]), &url("")]);
    let by_query = curl(&[&url(&format!("&lastEventId={}", ids[0]))]);
    for body in [by_header, by_query] {
        let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data, ["1", "2"], "{body}");
    }
}

#[test]
fn status_and_the_client_list_report_the_history_and_resumes() {
    let server = Server::start(&["--history", "1"]);
    let ids = publish_numbered(&server, "t", 3);
    let mut back = subscribe_with(&server, "subscribe=t&id=back", &[&format!("Last-Event-ID: {}", ids[0])]);
    assert_eq!(back.next_event().event.as_deref(), Some("reset"));
    let status = server.wait_json("tcpstatus", "resumecnt", 1);
    let counts = (status["resumegapcnt"].as_u64(), status["historyevents"].as_u64());
    assert_eq!(counts, (Some(1), Some(1)), "{status}");
    assert_eq!(status["historyoldest"], ids[2].to_string(), "{status}");
    let list = server.tcp_json("tcpclientlist");
    let row = list["clients"].as_array().unwrap().iter().find(|r| r["id"] == "back").cloned().unwrap();
    assert_eq!(row["lasteventid"], ids[2], "{list}");
    let block = server.status_block();
    assert!(block.iter().any(|l| l == "Resumed clients: 1 (told of a gap: 1)"), "{block:#?}");
}
