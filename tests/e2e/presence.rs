//! Presence and throwing someone out (issue 23): who a publish to a token reaches, as a list
//! and as a count; join and leave events debounced across a reconnect; streams ended by id,
//! `sub` or token, a ban answered `204`, a revoked token answered `401` until it expires.
//! Over the HTTP API and the control port, alone and (with a real `redis-server`) over three
//! cluster nodes.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use crate::cluster::Redis;
use crate::common::*;

const SECRET: &str = "s3cret-for-presence";

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A token granting `room*` for ten minutes, with `extra` claims.
fn token(extra: Value) -> String {
    let mut claims = json!({ "exp": unix_now() + 600, "subscribe": ["room*"] });
    claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// One API request on a connection of its own: its status and its JSON body.
fn api(server: &Server, method: &str, target: &str, headers: &str) -> (u16, Value) {
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}Content-Length: 0\r\n\r\n"
    );
    let response = request_to(server.api_port(), &request);
    let body = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&response.body)));
    (response.head.status, body)
}

fn request_to(port: u16, request: &str) -> Response {
    crate::common::request(port, request.as_bytes())
}

fn ids(presence: &Value) -> Vec<String> {
    let clients = presence["clients"].as_array().unwrap_or_else(|| panic!("no clients: {presence}"));
    clients.iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
}

/// Polls `GET /presence?token=…&count` until it says `count`.
fn wait_count(server: &Server, token: &str, count: u64) {
    wait_until(WAIT, &format!("presence of {token} is {count}"), || {
        api(server, "GET", &format!("/presence?token={token}&count"), "").1["count"] == count
    });
}

/// The status a subscription gets: `200` streams (the connection is closed here).
fn status_of(server: &Server, query: &str, headers: &str) -> u16 {
    let mut client = SseClient::connect(server.sse_port);
    let request = get_request(query).replacen("\r\n\r\n", &format!("\r\n{headers}\r\n"), 1);
    client.send(request.as_bytes());
    client.read_head(WAIT).expect("an answer").status
}

#[test]
fn presence_lists_and_counts_the_clients_a_publish_reaches() {
    let server = Server::start(&[]);
    let started = unix_now();
    let a = server.subscribe("subscribe=room1&id=a");
    let _b = server.subscribe("subscribe=room1-room2&id=b");
    let _c = server.subscribe("subscribe=room2&id=c");
    let _everything = server.subscribe("subscribe=*&id=s");
    let _anonymous = server.subscribe("subscribe=room1");
    wait_count(&server, "room1", 4);
    let (status, presence) = api(&server, "GET", "/presence?token=room1", "");
    assert_eq!(status, 200, "{presence}");
    assert_eq!(presence["token"], "room1");
    assert_eq!(presence["count"], 4);
    assert_eq!(ids(&presence), ["", "a", "b", "s"], "each reached client once, the * one too");
    for client in presence["clients"].as_array().unwrap() {
        let since = client["since"].as_u64().unwrap();
        assert!((started.saturating_sub(1)..=unix_now()).contains(&since), "{client}");
        assert_eq!(client["sub"], Value::Null);
    }
    // Read as a publisher's target: a prefix, and * (everyone).
    assert_eq!(api(&server, "GET", "/presence?token=room*&count", "").1["count"], 5);
    assert_eq!(ids(&api(&server, "GET", "/presence?token=*", "").1), ["", "a", "b", "c", "s"]);
    // The control port answers the same; a client that goes is gone from both.
    assert_eq!(server.tcp_json("tcppresence:room1"), presence);
    assert_eq!(server.tcp_json("tcppresencecount:room2"), json!({"token": "room2", "count": 3}));
    drop(a);
    wait_count(&server, "room1", 3);
    assert_eq!(ids(&server.tcp_json("tcppresence:room1")), ["", "b", "s"]);
    assert_eq!(server.tcp_json("tcppresencecount:nobody")["count"], 1, "only the * client");
    // The log's form.
    let start = server.log.len();
    server.publish("presencecount:room2");
    server.log.wait_for_line_from(start, |l| l.contains(r#""count":3"#), WAIT);
}

#[test]
fn bad_presence_and_order_requests_are_told_why() {
    let server = Server::start(&["--api-key", "k3y"]);
    let key = "X-API-Key: k3y\r\n";
    let cases = [
        ("GET", "/presence", "say which token"),
        ("GET", "/presence?token=", "token must be 1 to 128 bytes"),
        ("GET", "/presence?token=a&who=1", "unknown parameter `who`"),
        ("POST", "/disconnect", "say which: one of id, sub, token"),
        ("POST", "/disconnect?id=a&token=b", "give one of id, sub, token, once"),
        ("POST", "/disconnect?id=a&ban=forever", "`ban` must be a whole number from 0 to 604800"),
        ("POST", "/revoke?jti=a&exp=5", "`exp` must be a whole number"),
        ("POST", "/revoke?id=a", "unknown parameter `id`"),
    ];
    for (method, target, reason) in cases {
        let start = server.log.len();
        let (status, body) = api(&server, method, target, key);
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body["error"].as_str().unwrap().contains(reason), "{target}: {body}");
        server.log.wait_for_line_from(start, |l| l.contains("refused") && l.contains(reason), WAIT);
    }
    // The API's key guards them like every other endpoint.
    assert_eq!(api(&server, "GET", "/presence?token=a", "").0, 401);
    assert_eq!(api(&server, "POST", "/disconnect?id=a", "").0, 401);
    assert_eq!(api(&server, "GET", "/disconnect?id=a", key).0, 405);
    // A bad order on the control port is answered, and skipped.
    let reply = server.control("disconnect id=a sub=b\ntcppresencecount:x\n");
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines.len(), 2, "{reply:?}");
    assert_eq!(lines[0], "ERR give one of id, sub, token, once");
    assert_eq!(serde_json::from_str::<Value>(lines[1]).unwrap(), json!({"token": "x", "count": 0}));
}

#[test]
fn disconnect_by_id_or_token_ends_exactly_those_streams() {
    let server = Server::start(&[]);
    let mut a = server.subscribe("subscribe=room1&id=a");
    let mut a_again = server.subscribe("subscribe=room9&id=a");
    let mut b = server.subscribe("subscribe=room1&id=b");
    let mut c = server.subscribe("subscribe=room2&id=c");
    let mut everything = server.subscribe("subscribe=*&id=s");
    wait_count(&server, "room1", 3);
    let (status, answer) = api(&server, "POST", "/disconnect?id=a", "");
    assert_eq!((status, answer), (200, json!({"disconnected": 2, "banned_until": null})));
    assert!(a.wait_closed(WAIT) && a_again.wait_closed(WAIT), "both of a's streams end");
    // By token: its subscribers, not the * one.
    assert_eq!(server.tcp_json("disconnect token=room1")["disconnected"], 1);
    assert!(b.wait_closed(WAIT));
    server.publish("room2=still here");
    c.expect_data("still here");
    everything.expect_data("still here");
    // Nothing left to end is no error.
    assert_eq!(server.tcp_json("disconnect id=a")["disconnected"], 0);
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["disconnectedcnt"], 3, "{status}");
}

#[test]
fn a_banned_client_reconnecting_gets_204_until_the_ban_ends() {
    let server = Server::start(&["--cors-base", "https://app.example"]);
    let mut a = server.subscribe("subscribe=room1&id=a");
    let (_, answer) = api(&server, "POST", "/disconnect", "");
    assert_eq!(answer["error"], "say which: one of id, sub, token");
    let request = "POST /disconnect HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
                   Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\n\r\nid=a&ban=60";
    let response = request_to(server.api_port(), request);
    let answer: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(answer["disconnected"], 1, "{answer}");
    let until = answer["banned_until"].as_u64().unwrap();
    assert!((unix_now() + 59..=unix_now() + 60).contains(&until), "{answer}");
    assert!(a.wait_closed(WAIT));
    let response = server.request(get_request("subscribe=room1&id=a").as_bytes());
    assert_eq!(response.head.status, 204, "EventSource stops retrying on 204");
    assert_eq!(response.head.header("access-control-allow-origin"), Some("https://app.example"));
    assert!(response.body.is_empty());
    assert_eq!(status_of(&server, "subscribe=room1&id=b", ""), 200, "another client is let in");
    // A ban by token keeps out anyone who asks for it; a ban of 1 s ends.
    assert_eq!(server.tcp_json("disconnect token=room7 ban=1")["disconnected"], 0);
    assert_eq!(status_of(&server, "subscribe=room2-room7&id=c", ""), 204);
    wait_until(WAIT, "the 1 s ban ends", || status_of(&server, "subscribe=room7&id=c", "") == 200);
    assert_eq!(server.tcp_json("tcpstatus")["bannedcnt"].as_u64().map(|n| n >= 2), Some(true));
}

#[test]
fn disconnect_by_sub_and_revoked_tokens_are_refused_until_they_expire() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let alice = token(json!({ "sub": "alice", "jti": "j-alice" }));
    let bob = token(json!({ "sub": "bob", "jti": "j-bob" }));
    let bearer = |token: &str| format!("Authorization: Bearer {token}\r\n");
    let mut alice_stream = SseClient::connect(server.sse_port);
    alice_stream.handshake(
        get_request("subscribe=room1")
            .replacen("\r\n\r\n", &format!("\r\n{}\r\n", bearer(&alice)), 1)
            .as_bytes(),
    );
    let mut bob_stream = SseClient::connect(server.sse_port);
    bob_stream.handshake(
        get_request("subscribe=room1")
            .replacen("\r\n\r\n", &format!("\r\n{}\r\n", bearer(&bob)), 1)
            .as_bytes(),
    );
    wait_count(&server, "room1", 2);
    let presence = server.tcp_json("tcppresence:room1");
    let subs: BTreeSet<&str> =
        presence["clients"].as_array().unwrap().iter().filter_map(|c| c["sub"].as_str()).collect();
    assert_eq!(subs, BTreeSet::from(["alice", "bob"]), "{presence}");
    // By sub: alice's stream ends, bob's goes on; with no ban, alice may come back.
    assert_eq!(api(&server, "POST", "/disconnect?sub=alice", "").1["disconnected"], 1);
    assert!(alice_stream.wait_closed(WAIT));
    assert_eq!(status_of(&server, "subscribe=room1", &bearer(&alice)), 200);
    // A revoked jti: 401 until the time given, then its token is good again.
    let exp = unix_now() + 2;
    let (status, answer) = api(&server, "POST", &format!("/revoke?jti=j-alice&exp={exp}"), "");
    assert_eq!((status, answer["revoked_until"].as_u64()), (200, Some(exp)), "{answer}");
    let refused = server.request(
        get_request("subscribe=room1")
            .replacen("\r\n\r\n", &format!("\r\n{}\r\n", bearer(&alice)), 1)
            .as_bytes(),
    );
    assert_eq!(refused.head.status, 401);
    assert_eq!(
        refused.head.header("www-authenticate"),
        Some(r#"Bearer realm="hasses", error="invalid_token""#)
    );
    assert!(String::from_utf8_lossy(&refused.body).contains("token revoked"));
    assert_eq!(
        status_of(&server, "subscribe=room1", &bearer(&token(json!({ "sub": "alice" })))),
        200,
        "another token"
    );
    wait_until(WAIT, "the revocation ends", || status_of(&server, "subscribe=room1", &bearer(&alice)) == 200);
    // A revoked sub: its streams end now, and its tokens are refused.
    let answer = server.tcp_json("revoke sub=bob");
    assert_eq!(answer["disconnected"], 1, "{answer}");
    assert!(bob_stream.wait_closed(WAIT));
    assert_eq!(status_of(&server, "subscribe=room1", &bearer(&bob)), 401);
    let refused = server.tcp_json("tcpstatus")["authrevokedcnt"].as_u64().unwrap();
    assert!(refused >= 2, "each refusal counted: {refused}");
}

#[test]
fn join_and_leave_reach_the_others_and_a_quick_reconnect_is_neither() {
    let server = Server::start(&["--presence-events", "--presence-debounce", "1"]);
    let mut watcher = server.subscribe("subscribe=room1&id=w");
    let mut u1 = server.subscribe("subscribe=room1-u1&id=u1");
    let join = watcher.next_event();
    assert_eq!((join.event.as_deref(), join.data.as_str()), (Some("join"), r#"{"id":"u1","sub":null}"#));
    assert!(join.id > 0, "an event like any other, with an id");
    // u1 hears nothing of itself (w's join may reach it, if published after u1 came).
    server.publish("room1=hello");
    let heard: Vec<String> =
        std::iter::repeat_with(|| u1.next_event().data).take_while(|d| d != "hello").collect();
    assert!(heard.iter().all(|data| data == r#"{"id":"w","sub":null}"#), "{heard:?}");
    assert_eq!(watcher.next_event().data, "hello");
    // A second tab is no join; closing one of two is no leave.
    let second = server.subscribe("subscribe=room1&id=u1");
    drop(second);
    // A reconnect within the debounce time: no leave, no join.
    drop(u1);
    let u1 = server.subscribe("subscribe=room1&id=u1");
    drop(u1);
    // Gone for good: one leave, once the debounce time has passed.
    let leave = watcher.next_event();
    assert_eq!((leave.event.as_deref(), leave.data.as_str()), (Some("leave"), r#"{"id":"u1","sub":null}"#));
    server.publish("room1=after");
    assert_eq!(watcher.next_event().data, "after", "nothing else came between");
    // Without an id there is nobody to announce.
    let anonymous = server.subscribe("subscribe=room1");
    drop(anonymous);
    server.publish("room1=last");
    assert_eq!(watcher.next_event().data, "last");
}

#[test]
fn without_presence_events_nobody_is_announced() {
    let server = Server::start(&[]);
    let mut watcher = server.subscribe("subscribe=room1&id=w");
    let other = server.subscribe("subscribe=room1&id=u1");
    drop(other);
    server.publish("room1=only this");
    assert_eq!(watcher.next_event().data, "only this");
}

/// A node of a cluster on `redis`.
fn node(redis: &Redis) -> Server {
    Server::start(&["--cluster", &redis.url(), "--heartbeat", "1"])
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn presence_and_disconnect_cover_every_node_of_a_cluster() {
    let redis = Redis::start(false, &[]);
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis)).collect();
    let mut clients: Vec<SseClient> =
        nodes.iter().enumerate().map(|(i, n)| n.subscribe(&format!("subscribe=room1&id=u{i}"))).collect();
    let mut twice = nodes[2].subscribe("subscribe=room1&id=u0");
    wait_until(WAIT, "every node counts its clients", || {
        api(&nodes[1], "GET", "/presence?token=room1&count", "").1["count"] == 4
    });
    let (status, presence) = api(&nodes[0], "GET", "/presence?token=room1", "");
    assert_eq!(status, 200, "{presence}");
    assert_eq!(ids(&presence), ["u0", "u0", "u1", "u2"]);
    assert_eq!(presence["nodes"].as_array().unwrap().len(), 3, "{presence}");
    assert_eq!(presence["unanswered"], 0);
    let on: BTreeSet<&str> =
        presence["clients"].as_array().unwrap().iter().map(|c| c["node"].as_str().unwrap()).collect();
    assert_eq!(on.len(), 3, "each row names its node: {presence}");
    // A disconnect given to one node ends the streams on every node; a ban holds on each.
    let answer = nodes[1].tcp_json("disconnect id=u0 ban=60");
    assert_eq!(answer["disconnected"], 2, "{answer}");
    assert!(clients[0].wait_closed(WAIT) && twice.wait_closed(WAIT));
    for node in &nodes {
        let response = node.request(get_request("subscribe=room1&id=u0").as_bytes());
        assert_eq!(response.head.status, 204, "banned on every node");
    }
    nodes[2].publish("room1=still here");
    for client in &mut clients[1..] {
        client.expect_data("still here");
    }
    assert_eq!(nodes[2].tcp_json("tcppresencecount:room1")["count"], 2);
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn a_revocation_given_to_one_node_holds_on_every_node() {
    let redis = Redis::start(false, &[]);
    let url = redis.url();
    let nodes: Vec<Server> =
        (0..3).map(|_| Server::start(&["--cluster", &url, "--jwt-secret", SECRET])).collect();
    let bearer = format!("Authorization: Bearer {}\r\n", token(json!({ "sub": "bob", "jti": "j1" })));
    let mut streams: Vec<SseClient> = nodes
        .iter()
        .map(|node| {
            let mut client = SseClient::connect(node.sse_port);
            client.handshake(
                get_request("subscribe=room1")
                    .replacen("\r\n\r\n", &format!("\r\n{bearer}\r\n"), 1)
                    .as_bytes(),
            );
            client
        })
        .collect();
    let (status, answer) = api(&nodes[2], "POST", "/revoke?sub=bob", "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["disconnected"].as_u64(), answer["unanswered"].as_u64()),
        (Some(3), Some(0)),
        "{answer}"
    );
    for (node, stream) in nodes.iter().zip(&mut streams) {
        assert!(stream.wait_closed(WAIT), "bob's stream ends on every node");
        assert_eq!(status_of(node, "subscribe=room1", &bearer), 401, "and his token is refused there");
    }
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn without_redis_a_cluster_question_is_refused_with_why_and_answered_again_once_it_is_back() {
    let mut redis = Redis::start(false, &[]);
    let node = node(&redis);
    let _client = node.subscribe("subscribe=room1&id=u1");
    wait_count(&node, "room1", 1);
    redis.stop();
    let (status, answer) = api(&node, "GET", "/presence?token=room1&count", "");
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("Redis")), "{answer}");
    // Asked again at once: refused at once, rather than another wait for Redis.
    let (status, answer) = api(&node, "GET", "/presence?token=room1&count", "");
    assert_eq!(status, 503, "{answer}");
    redis.restart();
    wait_count(&node, "room1", 1);
}

/// Join and leave over a cluster: a client that moves from one node to another within the
/// debounce time (a reconnect through a load balancer) is neither a leave nor a join, on any
/// node; one gone from its last node is one leave.
#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn a_client_moving_between_nodes_is_neither_a_leave_nor_a_join() {
    let redis = Redis::start(false, &[]);
    let flags =
        ["--cluster", &redis.url(), "--heartbeat", "1", "--presence-events", "--presence-debounce", "1"];
    let nodes: Vec<Server> = (0..3).map(|_| Server::start(&flags)).collect();
    let mut watcher = nodes[2].subscribe("subscribe=room1&id=w");
    let on_a = nodes[0].subscribe("subscribe=room1&id=u1");
    let join = watcher.next_event();
    assert_eq!((join.event.as_deref(), join.data.as_str()), (Some("join"), r#"{"id":"u1","sub":null}"#));
    // u1 comes back on another node before its first one's debounce ran out.
    let on_b = nodes[1].subscribe("subscribe=room1&id=u1");
    drop(on_a);
    // Past the first node's debounce: its leave was read by every tail, and let go.
    std::thread::sleep(Duration::from_millis(2500));
    nodes[0].publish("room1=still here");
    assert_eq!(watcher.next_event().data, "still here", "no leave and no join came before it");
    drop(on_b);
    let leave = watcher.next_event();
    assert_eq!((leave.event.as_deref(), leave.data.as_str()), (Some("leave"), r#"{"id":"u1","sub":null}"#));
    nodes[0].publish("room1=after");
    assert_eq!(watcher.next_event().data, "after");
}
