//! The control commands (spec §5.2, §5.4, §5.5): each report's exact text in the log, each
//! `tcp…` reply's JSON, with values checked against what the test did.

use std::net::TcpStream;

use crate::common::{self, my_uid, Server, SseClient, LIST_LAST, STATUS_FIRST, STATUS_LAST, WAIT};

/// `HH:MM:SS` under a minute: the running time of a test server.
fn assert_short_running_time(value: &str) {
    let ok =
        value.len() == 8 && value.starts_with("00:00:") && value[6..].chars().all(|c| c.is_ascii_digit());
    assert!(ok, "running time {value:?}");
}

/// The address a client's connection has as seen by the server (the client's local address).
fn peer_of(stream: &TcpStream) -> String {
    stream.local_addr().unwrap().to_string()
}

/// The scene for the figures: two handshaked clients, one connection that has not handshaked,
/// one client that came and went; three messages published.
struct Scene {
    server: Server,
    a: SseClient,
    star: SseClient,
    raw: TcpStream,
}

fn scene(extra: &[&str]) -> Scene {
    let server = Server::start(extra);
    let mut a = server.subscribe("subscribe=a&id=one");
    let mut star = server.subscribe("subscribe=b-*-c");
    let raw = common::connect(server.sse_port);
    let gone = server.subscribe("subscribe=b");
    assert_eq!(server.wait_json("tcpnumberofclients", "numberofclients", 4)["numberofclients"], 4);
    drop(gone);
    assert_eq!(server.wait_json("tcpnumberofclients", "numberofclients", 3)["numberofclients"], 3);
    server.publish("a=1;b=2;*=3");
    a.expect_data("1");
    a.expect_data("3");
    star.expect_data("1");
    star.expect_data("2");
    star.expect_data("3");
    Scene { server, a, star, raw }
}

#[test]
fn status_block_has_hasses_labels_and_true_values() {
    let scene = scene(&[]);
    let block = scene.server.status_block();
    let expected_prefixes = [
        STATUS_FIRST.to_string(),
        format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Compiled: ".into(),
        format!("Pid: {}", scene.server.pid()),
        format!("Uid: {} (not set)", my_uid()),
        "Running time: ".into(),
        "Mode: unencrypted (http)".into(),
        "Loglevel: 1".into(),
        "Reinit allowed: no".into(),
        "CORS-base url: *".into(),
        "Count of connected clients: 3".into(),
        "Current registred SSE clients: 2".into(),
        "Maximum number of connections: 4".into(),
        "Total client handshaked: 3".into(),
        "Total reinit connection: 0".into(),
        "Total message processed: 3".into(),
        "Total message sent: 5".into(),
    ];
    assert!(block.len() > expected_prefixes.len(), "{block:#?}");
    for (line, expected) in block.iter().zip(&expected_prefixes) {
        if expected.ends_with(": ") {
            assert!(line.starts_with(expected.as_str()), "{line:?} should start with {expected:?}");
        } else {
            assert_eq!(line, expected, "in {block:#?}");
        }
    }
    // `Compiled: Mmm dd yyyy`, as C's __DATE__.
    let compiled = block[2].strip_prefix("Compiled: ").unwrap();
    let parts: Vec<&str> = compiled.split(' ').filter(|p| !p.is_empty()).collect();
    assert_eq!(parts.len(), 3, "{compiled:?}");
    assert_eq!(compiled.len(), 11, "{compiled:?}");
    assert_short_running_time(block[5].strip_prefix("Running time: ").unwrap());
    // Our own lines come after the original ones.
    assert!(block.contains(&"Dropped slow clients: 0".to_string()), "{block:#?}");
    assert!(block.contains(&"Worker threads: 2".to_string()), "{block:#?}");
    assert_eq!(block.last().unwrap(), STATUS_LAST);
}

#[test]
fn status_reflects_settings() {
    let server = Server::start(&["--reinit", "--cors-base", "https://x.example", "--log-level", "2"]);
    let block = server.status_block();
    assert_eq!(block[7], "Loglevel: 2");
    assert_eq!(block[8], "Reinit allowed: yes");
    assert_eq!(block[9], "CORS-base url: https://x.example");
    assert_eq!(block[10], "Count of connected clients: 0");
    assert_eq!(block[12], "Maximum number of connections: 0");
}

#[test]
fn tcpstatus_has_every_key_with_true_values() {
    let scene = scene(&[]);
    let status = scene.server.tcp_json("tcpstatus");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status}");
    assert_short_running_time(status["runningtime"].as_str().expect("runningtime is text"));
    assert!(status["mode"].as_str().is_some_and(|m| m.contains("http")), "{status}");
    assert_eq!(status["loglevel"], 1, "{status}");
    assert_eq!(status["allconncli"], 3, "{status}");
    assert_eq!(status["sseconncli"], 2, "{status}");
    assert_eq!(status["maxconncli"], 4, "{status}");
    assert_eq!(status["msgproccnt"], 3, "{status}");
    assert_eq!(status["msgsendcnt"], 5, "{status}");
    assert_eq!(status["droppedslowcli"], 0, "{status}");
    // The peak never goes down; the counts follow closes.
    drop(scene.raw);
    drop(scene.a);
    let status = scene.server.wait_json("tcpstatus", "allconncli", 1);
    assert_eq!(status["allconncli"], 1, "{status}");
    assert_eq!(status["sseconncli"], 1, "{status}");
    assert_eq!(status["maxconncli"], 4, "{status}");
    drop(scene.star);
}

#[test]
fn client_list_text_has_hasses_layout_and_values() {
    let scene = scene(&[]);
    // A User-Agent for one of them, through a client of its own.
    let mut agent = SseClient::connect(scene.server.sse_port);
    agent.handshake(b"GET /sse?subscribe=x&id=ag HTTP/1.1\r\nUser-Agent: Mozilla/5.0 (Test)\r\n\r\n");
    let block = scene.server.client_list();
    assert_eq!(block[1], "List of clients:");
    assert_eq!(block.last().unwrap(), LIST_LAST);
    let rows = &block[2..block.len() - 1];
    assert_eq!(rows.iter().filter(|l| l.starts_with('#')).count(), 4, "four clients: {block:#?}");
    // Rows are found by the client's port; the address format is checked last.
    let find = |stream: &TcpStream| -> Vec<String> {
        let port = stream.local_addr().unwrap().port();
        let at = rows
            .iter()
            .position(|l| l.starts_with('#') && l.contains(&format!(":{port} S:")))
            .unwrap_or_else(|| panic!("no row for port {port} in {block:#?}"));
        let end = rows[at + 1..].iter().position(|l| l.starts_with('#')).map_or(rows.len(), |n| at + 1 + n);
        rows[at..end].to_vec()
    };
    let check = |row: &[String], state: &str, messages: u32, id: &str, agent: &str, subscribes: &str| {
        let (number, rest) = row[0].split_once(" - <").expect(&row[0]);
        assert!(number.starts_with('#'), "{row:?}");
        let (fd, rest) = rest.split_once("> info: ").expect(&row[0]);
        assert!(fd.parse::<u32>().is_ok(), "{row:?}");
        let tail = format!(" S:{state} Err: 0 Messages: {messages} Reinit: 0 SSL:No");
        assert!(rest.ends_with(&tail), "{:?} should end with {tail:?}", row[0]);
        let times = row[1].strip_prefix("  Connection time: ").expect(&row[1]);
        let (connected, rest) = times.split_once("  Handshaked time: ").expect(&row[1]);
        assert_short_running_time(connected);
        let (handshaked, uniq) = rest.split_once(" UniqId:").expect(&row[1]);
        assert_short_running_time(handshaked);
        assert_eq!(uniq, id, "{row:?}");
        // As hasses: no Agent line for a client that sent none.
        let agent_line: Vec<String> =
            [agent].iter().filter(|a| !a.is_empty()).map(|a| format!("  Agent: {a}")).collect();
        assert_eq!(row[2..row.len() - 1], agent_line, "{row:?}");
        assert_eq!(row[row.len() - 1], format!("  Subscribes: {subscribes}"));
    };
    check(&find(&scene.a.stream), "SSE", 2, "one", "hasses-test", "a");
    check(&find(&scene.star.stream), "SSE", 3, "", "hasses-test", "*,b,c");
    check(&find(&scene.raw), "NEW", 0, "", "", "");
    check(&find(&agent.stream), "SSE", 0, "ag", "Mozilla/5.0 (Test)", "x");
    // Rows are numbered from 1.
    let numbers: Vec<&str> =
        rows.iter().filter(|l| l.starts_with('#')).map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(numbers, ["#1", "#2", "#3", "#4"]);
    // An IPv4 client is shown as hasses shows it: `127.0.0.1:PORT`.
    for stream in [&scene.a.stream, &scene.star.stream, &scene.raw, &agent.stream] {
        let peer = peer_of(stream);
        assert!(find(stream)[0].contains(&format!(" info: {peer} S:")), "{peer} in {block:#?}");
    }
}

#[test]
fn tcpclientlist_is_json_with_the_same_facts() {
    let scene = scene(&[]);
    let list = scene.server.tcp_json("tcpclientlist");
    let rows = list["clients"].as_array().expect("clients array");
    assert_eq!(rows.len(), 3, "{list}");
    let find = |stream: &TcpStream| {
        let port = format!(":{}", stream.local_addr().unwrap().port());
        rows.iter()
            .find(|r| r["peer"].as_str().is_some_and(|p| p.ends_with(&port)))
            .unwrap_or_else(|| panic!("no row for port {port} in {list}"))
            .clone()
    };
    let a = find(&scene.a.stream);
    assert_eq!(a["state"], "SSE");
    assert_eq!(a["messages"], 2);
    assert_eq!(a["reinits"], 0);
    assert_eq!(a["id"], "one");
    assert_eq!(a["agent"], "hasses-test");
    assert_eq!(a["tokens"], serde_json::json!(["a"]));
    assert!(a["handshaked_secs"].is_u64(), "{a}");
    let star = find(&scene.star.stream);
    assert_eq!(star["messages"], 3);
    assert_eq!(star["tokens"], serde_json::json!(["*", "b", "c"]));
    assert_eq!(star["id"], "");
    let raw = find(&scene.raw);
    assert_eq!(raw["state"], "NEW");
    assert_eq!(raw["messages"], 0);
    assert_eq!(raw["tokens"], serde_json::json!([]));
    assert!(raw["handshaked_secs"].is_null(), "{raw}");
    for row in rows {
        assert!(row["fd"].is_u64() && row["worker"].as_u64().is_some_and(|w| w < 2), "{row}");
    }
    // The same address as the text list: `127.0.0.1:PORT` for an IPv4 client.
    for stream in [&scene.a.stream, &scene.star.stream, &scene.raw] {
        assert_eq!(find(stream)["peer"], peer_of(stream), "{list}");
    }
}

#[test]
fn number_of_clients_counts_every_connection() {
    let server = Server::start(&[]);
    assert_eq!(server.control("tcpnumberofclients\n"), "{\"numberofclients\":0}\n");
    let _a = server.subscribe("subscribe=a");
    let _raw = common::connect(server.sse_port);
    let mut half = SseClient::connect(server.sse_port);
    half.send(b"GET /sse?subscribe=a HTTP/1.1\r\n");
    assert_eq!(server.wait_json("tcpnumberofclients", "numberofclients", 3)["numberofclients"], 3);
    let start = server.log.len();
    server.publish("numberofclients");
    server.log.wait_for_line_from(start, |l| l == "Number of connected clients: 3", WAIT);
}

#[test]
fn subscribed_clients_counts_exact_tokens_only() {
    let server = Server::start(&[]);
    let _one = server.subscribe("subscribe=a");
    let _two = server.subscribe("subscribe=a-b");
    let _star = server.subscribe("subscribe=*-b");
    let gone = server.subscribe("subscribe=a-c");
    let start = server.log.len();
    server.publish("subscribedclients:a;subscribedclients:b;subscribedclients:c;subscribedclients:zzz");
    for line in [
        "Client count subscribed for \"a\": 3",
        "Client count subscribed for \"b\": 2",
        "Client count subscribed for \"c\": 1",
        "Client count subscribed for \"zzz\": 0",
    ] {
        server.log.wait_for_line_from(start, |l| l == line, WAIT);
    }
    assert_eq!(
        server.tcp_json("tcpsubscribedclients:a"),
        serde_json::json!({"subscribedclients": 3, "subscribedfor": "a"})
    );
    // A `pre*` is not a subscription count: nobody subscribed to exactly "a*".
    assert_eq!(server.tcp_json("tcpsubscribedclients:a*")["subscribedclients"], 0);
    // A closed client leaves every subscription at once.
    drop(gone);
    let reply = server.wait_json("tcpsubscribedclients:c", "subscribedclients", 0);
    assert_eq!(reply, serde_json::json!({"subscribedclients": 0, "subscribedfor": "c"}));
    assert_eq!(server.tcp_json("tcpsubscribedclients:a")["subscribedclients"], 2);
}

#[test]
fn json_replies_escape_the_token() {
    let server = Server::start(&[]);
    for token in ["a\"b", "back\\slash", "tab\there", "ü"] {
        let reply = server.tcp_json(&format!("tcpsubscribedclients:{token}"));
        assert_eq!(reply, serde_json::json!({"subscribedclients": 0, "subscribedfor": token}));
    }
}

#[test]
fn several_tcp_commands_on_one_line_reply_in_order_one_line_each() {
    let server = Server::start(&[]);
    let _a = server.subscribe("subscribe=a");
    let reply = server.control("tcpnumberofclients;tcpsubscribedclients:a;tcpstatus\ntcpclientlist\n");
    let lines: Vec<&str> = reply.split_terminator('\n').collect();
    assert!(reply.ends_with('\n'), "{reply:?}");
    assert_eq!(lines.len(), 4, "{reply:?}");
    let values: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).expect(l)).collect();
    assert_eq!(values[0], serde_json::json!({"numberofclients": 1}));
    assert_eq!(values[1], serde_json::json!({"subscribedclients": 1, "subscribedfor": "a"}));
    assert_eq!(values[2]["sseconncli"], 1);
    assert_eq!(values[3]["clients"].as_array().map(Vec::len), Some(1));
}

#[test]
fn loglevel_commands_change_what_is_logged() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=a&id=dbgclient");
    let flush = |server: &Server| -> usize {
        // A report after the fact: the log writer keeps order, so earlier lines are in by then.
        let start = server.log.len();
        server.publish("numberofclients");
        server.log.wait_for_line_from(start, |l| l.starts_with("Number of connected clients"), WAIT).0
    };
    // Level 1: no line per delivery.
    let start = flush(&server);
    server.publish("a=normal");
    client.expect_data("normal");
    let end = flush(&server);
    assert!(!server.log.lines_from(start + 1)[..end - start - 1].iter().any(|l| l.contains("dbgclient")));

    server.publish("loglevel_debug");
    assert_eq!(server.tcp_json("tcpstatus")["loglevel"], 2);
    let start = server.log.len();
    server.publish("a=debug");
    client.expect_data("debug");
    server.log.wait_for_line_from(start, |l| l.contains("dbgclient"), WAIT);
    assert_eq!(server.status_block()[7], "Loglevel: 2");

    server.publish("loglevel_quiet");
    assert_eq!(server.tcp_json("tcpstatus")["loglevel"], 0);
    let start = flush(&server);
    let quiet = server.subscribe("subscribe=q");
    drop(quiet);
    server.wait_json("tcpnumberofclients", "numberofclients", 1);
    let end = flush(&server);
    let between = &server.log.lines_from(start + 1)[..end - start - 1];
    assert!(between.is_empty(), "nothing but reports at level 0: {between:#?}");
    // Reports are written at every level.
    assert_eq!(server.status_block()[7], "Loglevel: 0");

    server.publish("loglevel_normal");
    assert_eq!(server.tcp_json("tcpstatus")["loglevel"], 1);
    let start = server.log.len();
    let _normal = server.subscribe("subscribe=n");
    server.log.wait_for_line_from(start, |l| l.starts_with("Connection accepted"), WAIT);
}

#[test]
fn debug_level_logs_request_lines() {
    let server = Server::start(&["--log-level", "2"]);
    let start = server.log.len();
    let _client = server.subscribe("subscribe=reqline&id=r1");
    server.log.wait_for_line_from(start, |l| l.contains("GET /sse?subscribe=reqline&id=r1"), WAIT);
}

#[test]
fn reinit_commands_switch_the_setting() {
    let server = Server::start(&[]);
    assert_eq!(server.tcp_json("tcpstatus")["reinit"], false);
    server.publish("reinit_enable");
    assert_eq!(server.status_block()[8], "Reinit allowed: yes");
    assert_eq!(server.tcp_json("tcpstatus")["reinit"], true);
    server.publish("reinit_disable");
    assert_eq!(server.status_block()[8], "Reinit allowed: no");
    assert_eq!(server.tcp_json("tcpstatus")["reinit"], false);
}

#[test]
fn command_words_are_exact() {
    let server = Server::start(&[]);
    let mut a = server.subscribe("subscribe=a");
    // Not commands, and without '=' not messages: nothing happens, nothing is answered.
    assert_eq!(server.control("TCPSTATUS\ntcpstatusx\nTcpNumberOfClients\n"), "");
    server.publish("a=still fine");
    a.expect_data("still fine");
    assert_eq!(server.tcp_json("tcpstatus")["msgproccnt"], 1);
}

#[test]
fn user_agent_is_kept_up_to_190_characters() {
    let server = Server::start(&[]);
    let agent: String = (0..300).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let mut client = SseClient::connect(server.sse_port);
    client.handshake(format!("GET /sse?subscribe=a HTTP/1.1\r\nUser-Agent: {agent}\r\n\r\n").as_bytes());
    let rows = server.tcp_json("tcpclientlist")["clients"].clone();
    assert_eq!(rows[0]["agent"], agent[..190], "{rows}");
    let block = server.client_list();
    assert_eq!(block[4], format!("  Agent: {}", &agent[..190]));
}

#[test]
#[ignore = "needs an IPv6 loopback (::1), which some containers lack: run by the README's test command"]
fn ipv6_clients_are_served_and_listed() {
    let server = Server::start(&[]);
    let stream = TcpStream::connect(("::1", server.sse_port))
        .unwrap_or_else(|e| panic!("cannot connect to ::1 ({e}): this test needs an IPv6 loopback"));
    let peer = stream.local_addr().unwrap().to_string();
    assert!(peer.starts_with("[::1]:"), "{peer}");
    let mut client = SseClient::from_stream(stream);
    client.handshake(common::get_request("subscribe=six").as_bytes());
    server.publish("six=over ipv6");
    client.expect_data("over ipv6");
    let block = server.client_list();
    assert!(block[2].contains(&format!(" info: {peer} S:SSE ")), "{block:#?}");
}

#[test]
#[ignore = "needs root and the user nobody: run by the README's test command (as root)"]
fn user_flag_drops_privileges_after_binding() {
    assert_eq!(my_uid(), 0, "only root can drop privileges: run this test as root");
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("a user nobody (Debian's base-passwd has one)");
    let server = Server::start(&["--user", "nobody"]);
    let block = server.status_block();
    assert_eq!(block[4], format!("Uid: {} (nobody)", nobody.uid.as_raw()));
    let mut client = server.subscribe("subscribe=a");
    server.publish("a=as nobody");
    client.expect_data("as nobody");
}
