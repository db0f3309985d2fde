//! Publishing (spec §5.1, §5.3, §3.7): every target form over the TCP control port and the FIFO,
//! several messages per line, the separator, malformed parts, line framing, message sizes,
//! event ids, and order across shards.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::Duration;

use crate::common::{self, control_bytes, write_fifo, Server, SseClient, TempFile, WAIT};

/// Clients with distinct subscriptions and ids, by name.
struct Audience {
    clients: Vec<(&'static str, SseClient)>,
    syncs: usize,
    deliveries: u64,
    processed: u64,
}

/// (name, query)
const AUDIENCE: [(&str, &str); 5] = [
    ("A", "subscribe=room1&id=ua"),
    ("B", "subscribe=room2&id=ub"),
    ("C", "subscribe=other&id=uc"),
    ("S", "subscribe=*&id=us"),
    ("M", "subscribe=room1-room2-other&id=um"),
];

impl Audience {
    fn join(server: &Server) -> Audience {
        let clients = AUDIENCE.iter().map(|(name, query)| (*name, server.subscribe(query))).collect();
        Audience { clients, syncs: 0, deliveries: 0, processed: 0 }
    }

    /// Sends `line` then a `*=sync-N` marker through `send`, and returns, per client, the data
    /// of every event before the marker.
    fn deliver(&mut self, send: &dyn Fn(&str), line: &str) -> Vec<(&'static str, Vec<String>)> {
        self.syncs += 1;
        let marker = format!("sync-{}", self.syncs);
        send(&format!("{line}\n*={marker}\n"));
        self.processed += 1;
        self.deliveries += self.clients.len() as u64;
        let mut seen = Vec::new();
        for (name, client) in &mut self.clients {
            let mut got = Vec::new();
            let mut last_id = 0;
            for _ in 0..100 {
                let event = client.next_event();
                assert!(event.id > last_id, "ids strictly increase: {} after {last_id}", event.id);
                last_id = event.id;
                if event.data == marker {
                    break;
                }
                got.push(event.data);
            }
            seen.push((*name, got));
        }
        seen
    }

    /// Sends `line` (one message) and asserts exactly `who` received `data` once.
    fn expect(&mut self, send: &dyn Fn(&str), line: &str, data: &str, who: &[&str]) {
        let seen = self.deliver(send, line);
        self.processed += 1;
        self.deliveries += who.len() as u64;
        for (name, got) in seen {
            let want: Vec<String> = if who.contains(&name) { vec![data.to_string()] } else { vec![] };
            assert_eq!(got, want, "client {name} after {line:?}");
        }
    }
}

/// Every publish form, through `send` (TCP or FIFO); then checks the server's counts.
fn every_form(server: &Server, send: &dyn Fn(&str)) {
    let mut aud = Audience::join(server);
    aud.expect(send, "room1=m1", "m1", &["A", "S", "M"]);
    aud.expect(send, "*=m2", "m2", &["A", "B", "C", "S", "M"]);
    aud.expect(send, "room*=m3", "m3", &["A", "B", "S", "M"]);
    // What follows the `*` is ignored.
    aud.expect(send, "room*ignored=m4", "m4", &["A", "B", "S", "M"]);
    aud.expect(send, "room1-ua=m5", "m5", &["S", "M"]);
    aud.expect(send, "*-us=m6", "m6", &["A", "B", "C", "M"]);
    aud.expect(send, "room*-um=m7", "m7", &["A", "B", "S"]);
    // -UNIQ excludes a `*` subscriber too.
    aud.expect(send, "other-us=m8", "m8", &["C", "M"]);
    aud.expect(send, "nosuch=m9", "m9", &["S"]);
    aud.expect(send, "r*=m10", "m10", &["A", "B", "S", "M"]);
    aud.expect(send, "room1=a=b=c", "a=b=c", &["A", "S", "M"]);
    aud.expect(send, "room2=", "", &["B", "S", "M"]);
    aud.expect(send, "room1=with spaces", "with spaces", &["A", "S", "M"]);
    // Counted as processed although nobody receives it.
    aud.expect(send, "nosuch-us=m11", "m11", &[]);
    // A CR inside a message never reaches a `data:` line: it starts a new one.
    aud.expect(send, "room2=x\ry", "x\ny", &["B", "S", "M"]);

    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["msgproccnt"], aud.processed, "{status}");
    assert_eq!(status["msgsendcnt"], aud.deliveries, "{status}");
}

#[test]
fn every_form_over_tcp() {
    let server = Server::start(&[]);
    every_form(&server, &|text| assert_eq!(server.control(text), ""));
}

#[test]
fn every_form_over_the_fifo() {
    let fifo = TempFile::new("forms.fifo");
    let server = Server::start(&["--fifo", fifo.arg()]);
    server.log.wait_for_line(|l| l == format!("Control FIFO {}", fifo.arg()), WAIT);
    every_form(&server, &|text| write_fifo(fifo.path(), text.as_bytes()));
}

/// A shard offers consecutive publishes to one audience as one run: every rule must hold per
/// event all the same (exceptions, the wildcard, clients reached through several tokens).
#[test]
fn runs_of_publishes_to_one_audience_keep_every_rule() {
    let server = Server::start(&[]);
    let mut aud = Audience::join(&server);
    let send = |text: &str| assert_eq!(server.control(text), "");
    let line = "room1=1;room1=2;room2=3;room2=4;room1-ua=5;room1-ua=6;*=7;*=8;room1=9;room1=10";
    let seen = aud.deliver(&send, line);
    let want = |data: &[u32]| data.iter().map(u32::to_string).collect::<Vec<_>>();
    let everything = want(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    for (name, got) in seen {
        let expected = match name {
            "A" => want(&[1, 2, 7, 8, 9, 10]),
            "B" => want(&[3, 4, 7, 8]),
            "C" => want(&[7, 8]),
            _ => everything.clone(),
        };
        assert_eq!(got, expected, "client {name}");
    }
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["msgproccnt"], 11, "{status}");
    assert_eq!(status["msgsendcnt"], 6 + 4 + 2 + 10 + 10 + 5, "{status}");
}

#[test]
fn several_messages_per_line_in_order() {
    let server = Server::start(&[]);
    let mut a = server.subscribe("subscribe=a");
    let mut all = server.subscribe("subscribe=*");
    server.publish("a=1;b=2;a=3;*=4;;a=5");
    for data in ["1", "3", "4", "5"] {
        a.expect_data(data);
    }
    let mut last = 0;
    for data in ["1", "2", "3", "4", "5"] {
        let event = all.expect_data(data);
        assert!(event.id > last);
        last = event.id;
    }
    assert_eq!(server.tcp_json("tcpstatus")["msgproccnt"], 5);
}

#[test]
fn a_custom_separator_splits_lines_and_semicolons_are_data() {
    let fifo = TempFile::new("sep.fifo");
    let server = Server::start(&["--separator", "|", "--fifo", fifo.arg()]);
    let mut a = server.subscribe("subscribe=a");
    assert_eq!(server.control("a=x;y|a=second|tcpnumberofclients\n"), "{\"numberofclients\":1}\n");
    a.expect_data("x;y");
    a.expect_data("second");
    write_fifo(fifo.path(), b"a=f;1|a=f2\n");
    a.expect_data("f;1");
    a.expect_data("f2");
    // `;` no longer separates commands.
    let reply = server.control("tcpnumberofclients;tcpstatus\n");
    assert_eq!(reply, "", "'tcpnumberofclients;tcpstatus' is neither a command nor a message");
    let reply = server.control("tcpnumberofclients|tcpnumberofclients\n");
    assert_eq!(reply, "{\"numberofclients\":1}\n{\"numberofclients\":1}\n");
}

#[test]
fn malformed_parts_are_skipped_logged_and_not_counted() {
    let server = Server::start(&[]);
    let mut a = server.subscribe("subscribe=room1");
    let mut b = server.subscribe("subscribe=room2");
    let start = server.log.len();
    let long = "t".repeat(129);
    let line = format!("room1=ok1;junk;=empty;-ua=x;room1-=x;room1-u*=x;{long}=x;room2=ok2");
    server.publish(&line);
    a.expect_data("ok1");
    b.expect_data("ok2");
    server.publish("*=end");
    a.expect_data("end");
    b.expect_data("end");
    for part in ["junk", "=empty", "-ua=x", "room1-=x", "room1-u*=x", &long[..40]] {
        server.log.wait_for_line_from(start, |l| l.contains(part) && !l.contains("ok1"), WAIT);
    }
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["msgproccnt"], 3, "{status}");
    assert_eq!(status["msgsendcnt"], 4, "{status}");
}

#[test]
fn control_lines_are_framed_across_writes() {
    let server = Server::start(&[]);
    let mut a = server.subscribe("subscribe=room1");
    let mut b = server.subscribe("subscribe=room2");
    // A line split in pieces, then a last line without a newline before EOF.
    let pieces: [&[u8]; 4] = [b"room1=hel", b"lo\r\nroom", b"2=wor", b"ld"];
    assert_eq!(control_bytes(server.cport(), &pieces, Duration::from_millis(50)), "");
    a.expect_data("hello");
    b.expect_data("world");
    // A command split the same way is judged whole.
    let pieces: [&[u8]; 2] = [b"tcpnumber", b"ofclients\n"];
    assert_eq!(
        control_bytes(server.cport(), &pieces, Duration::from_millis(50)),
        "{\"numberofclients\":2}\n"
    );

    // A connection kept open: each line acts as it arrives.
    let mut publisher = common::connect(server.cport());
    publisher.write_all(b"room1=one\n").unwrap();
    a.expect_data("one");
    publisher.write_all(b"room1=tw").unwrap();
    // The point of the test: the line's two halves arrive in two reads.
    std::thread::sleep(Duration::from_millis(50));
    publisher.write_all(b"o\nroom1=three\n").unwrap();
    a.expect_data("two");
    a.expect_data("three");
}

#[test]
fn a_fifo_line_split_across_writes_is_one_line() {
    let fifo = TempFile::new("split.fifo");
    let server = Server::start(&["--fifo", fifo.arg()]);
    let mut a = server.subscribe("subscribe=room1");
    let mut writer = std::fs::OpenOptions::new().write(true).open(fifo.path()).unwrap();
    writer.write_all(b"room1=fi").unwrap();
    // The point of the test: the line's two halves arrive in two reads.
    std::thread::sleep(Duration::from_millis(50));
    writer.write_all(b"fo\nroom1=second\n").unwrap();
    drop(writer);
    a.expect_data("fifo");
    a.expect_data("second");
    // Writers come and go: a new writer still gets through.
    write_fifo(fifo.path(), b"room1=third\n");
    a.expect_data("third");
}

/// 64 KiB of text that is not one byte repeated, so a cut or a shift shows.
fn big_message(len: usize) -> String {
    (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

#[test]
fn a_64_kib_message_arrives_whole_and_a_longer_one_is_refused() {
    let server = Server::start(&[]);
    let mut a = server.subscribe("subscribe=a");
    let message = big_message(64 * 1024);
    server.publish(&format!("a={message}"));
    let event = a.next_event();
    assert_eq!(event.data.len(), message.len());
    assert!(event.data == message, "the 64 KiB message arrived changed");

    let start = server.log.len();
    server.publish(&format!("a={}", big_message(64 * 1024 + 1)));
    server.publish("a=after");
    a.expect_data("after");
    server.log.wait_for_line_from(start, |l| l.contains("65537"), WAIT);
    assert_eq!(server.tcp_json("tcpstatus")["msgproccnt"], 2);
}

#[test]
fn the_message_limit_is_configurable() {
    let server = Server::start(&["--max-message", "100"]);
    let mut a = server.subscribe("subscribe=a");
    server.publish(&format!("a={}", "x".repeat(101)));
    server.publish(&format!("a={}", "y".repeat(100)));
    a.expect_data(&"y".repeat(100));
    assert_eq!(server.tcp_json("tcpstatus")["msgproccnt"], 1);
}

#[test]
fn clients_that_have_not_handshaked_get_nothing() {
    let server = Server::start(&[]);
    let mut pending = SseClient::connect(server.sse_port);
    pending.send(b"GET /sse?subscribe=a HTTP/1.1\r\n");
    let mut a = server.subscribe("subscribe=a");
    server.publish("a=x;*=y");
    a.expect_data("x");
    a.expect_data("y");
    // Every shard answers after acting on what was sent before: all have published by now.
    assert_eq!(server.tcp_json("tcpstatus")["msgsendcnt"], 2);
    // Finishing the request now: the handshake, then only later messages.
    pending.send(b"\r\n");
    let head = pending.read_head(WAIT).expect("the handshake");
    assert_eq!(head.status, 200);
    server.publish("a=z");
    pending.expect_data("z");
    a.expect_data("z");
    assert_eq!(server.tcp_json("tcpstatus")["msgsendcnt"], 4);
}

#[test]
fn event_ids_increase_across_restarts() {
    let first = {
        let server = Server::start(&[]);
        let mut a = server.subscribe("subscribe=a");
        server.publish("a=1;a=2");
        let one = a.next_event().id;
        let two = a.next_event().id;
        assert!(two > one);
        two
    };
    let server = Server::start(&[]);
    let mut a = server.subscribe("subscribe=a");
    server.publish("a=3");
    let third = a.next_event().id;
    assert!(third > first, "an id after a restart ({third}) is above the last one before it ({first})");
}

#[test]
fn the_fifo_is_created_if_missing_and_kept_if_present() {
    let created = TempFile::new("created.fifo");
    let server = Server::start(&["--fifo", created.arg()]);
    let meta = std::fs::metadata(created.path()).expect("the FIFO was created");
    assert!(meta.file_type().is_fifo());
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:").map(|m| u32::from_str_radix(m.trim(), 8).unwrap()))
        .expect("the umask");
    assert_eq!(meta.permissions().mode() & 0o777, 0o666 & !umask, "mode 0666 less the umask");
    drop(server);

    let kept = TempFile::new("kept.fifo");
    nix::unistd::mkfifo(kept.path(), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let inode = std::fs::metadata(kept.path()).unwrap().ino();
    let server = Server::start(&["--fifo", kept.arg()]);
    let mut a = server.subscribe("subscribe=a");
    write_fifo(kept.path(), b"a=kept\n");
    a.expect_data("kept");
    let meta = std::fs::metadata(kept.path()).unwrap();
    assert_eq!(meta.ino(), inode, "the same FIFO");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "its mode untouched");
}

#[test]
fn tcp_commands_on_the_fifo_are_ignored_and_reports_still_work() {
    let fifo = TempFile::new("cmds.fifo");
    let server = Server::start(&["--fifo", fifo.arg()]);
    let mut a = server.subscribe("subscribe=a");
    let start = server.log.len();
    write_fifo(fifo.path(), b"tcpstatus;tcpnumberofclients;tcpclientlist;tcpsubscribedclients:a\na=after\n");
    a.expect_data("after");
    write_fifo(fifo.path(), b"numberofclients;subscribedclients:a;status\n");
    server.log.wait_for_line_from(start, |l| l == "Number of connected clients: 1", WAIT);
    server.log.wait_for_line_from(start, |l| l == "Client count subscribed for \"a\": 1", WAIT);
    server.log.wait_for_line_from(start, |l| l == "------- status of hasses -------", WAIT);
    assert!(!server.log.has_from(start, |l| l.starts_with('{')), "no JSON anywhere: {}", server.log.dump());
}

#[test]
fn a_thousand_messages_reach_clients_on_every_shard_in_order() {
    const WORKERS: u64 = 4;
    const MESSAGES: usize = 1000;
    let server = Server::start(&["--workers", "4", "--log-level", "0"]);
    // Connect until every worker holds at least two clients (the kernel spreads them).
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(server.subscribe("subscribe=t&id=c"));
        if clients.len() >= 16 {
            let list = server.tcp_json("tcpclientlist");
            let rows = list["clients"].as_array().expect("a client array");
            let per_worker = (0..WORKERS).map(|w| rows.iter().filter(|r| r["worker"] == w).count());
            if per_worker.clone().all(|n| n >= 2) {
                break;
            }
        }
    }
    let workers: BTreeSet<u64> = server.tcp_json("tcpclientlist")["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(workers, (0..WORKERS).collect(), "clients on every worker");

    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                let mut last = 0;
                for i in 0..MESSAGES {
                    let event = client.next_event();
                    assert_eq!(event.data, format!("msg-{i}"), "in order");
                    assert!(event.id > last, "ids strictly increase");
                    last = event.id;
                }
            })
        })
        .collect();
    let count = readers.len();
    let mut lines = String::new();
    for i in 0..MESSAGES {
        lines.push_str(&format!("t=msg-{i}\n"));
    }
    assert_eq!(server.control(&lines), "");
    for reader in readers {
        reader.join().expect("a client received every message in order");
    }
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["msgproccnt"], MESSAGES, "{status}");
    assert_eq!(status["msgsendcnt"], (MESSAGES * count) as u64, "{status}");
    assert_eq!(status["workers"], WORKERS, "{status}");
}

/// One server, one client table (spec §6): a message that a client on one worker has already
/// received was published before a handshake that starts afterwards, so the new client, on
/// whichever worker, must not get it.
#[test]
fn a_message_published_before_a_handshake_never_reaches_that_client() {
    let server = Server::start(&["--workers", "4"]);
    for round in 0..100 {
        let mut pending: Vec<SseClient> = (0..8).map(|_| SseClient::connect(server.sse_port)).collect();
        for client in &mut pending {
            client.send(b"GET /sse?subscribe=a HTTP/1.1\r\n");
        }
        let mut observer = server.subscribe("subscribe=a");
        let mut line = String::new();
        for i in 0..50 {
            line.push_str(&format!("a=before-{round}-{i};"));
        }
        server.publish(&line);
        for i in 0..50 {
            observer.expect_data(&format!("before-{round}-{i}"));
        }
        // No barrier here: the observer has every message, so each was published already.
        for client in &mut pending {
            client.send(b"\r\n");
        }
        for client in &mut pending {
            assert_eq!(client.read_head(WAIT).expect("the handshake").status, 200);
        }
        server.publish(&format!("a=after-{round}"));
        for client in &mut pending {
            client.expect_data(&format!("after-{round}"));
        }
        observer.expect_data(&format!("after-{round}"));
    }
}

/// A targeted event goes only to the workers that hold a subscriber of its tokens (issue 25);
/// every client it reaches, on whichever worker, still gets it, through rounds of closes and
/// subscribes in which tokens leave a worker and come back on it or on another.
#[test]
fn targeted_events_reach_every_matching_client_on_every_worker_through_churn() {
    const WORKERS: u64 = 4;
    let server = Server::start(&["--workers", "4", "--log-level", "0"]);
    let mut clients: Vec<(String, SseClient)> = Vec::new();
    let mut workers_seen = BTreeSet::new();
    for round in 0..6 {
        // Every other client closes; half of their tokens come back on new connections.
        let (closed, kept): (Vec<_>, Vec<_>) =
            clients.into_iter().enumerate().partition(|(n, _)| n % 2 == round % 2);
        clients = kept.into_iter().map(|(_, client)| client).collect();
        let closed: Vec<String> = closed.into_iter().map(|(_, (token, _))| token).collect();
        let open = server.wait_json("tcpnumberofclients", "numberofclients", clients.len() as u64);
        assert_eq!(open["numberofclients"], clients.len(), "round {round}: the closes were seen");
        let (back, gone) = closed.split_at(closed.len() / 2);
        let fresh = (0..12).map(|k| format!("u{round}x{k}"));
        for token in back.iter().cloned().chain(fresh) {
            let client = server.subscribe(&format!("subscribe={token}-room&id={token}"));
            clients.push((token, client));
        }
        let rows = server.tcp_json("tcpclientlist");
        workers_seen
            .extend(rows["clients"].as_array().unwrap().iter().map(|r| r["worker"].as_u64().unwrap()));
        // One event per token, one to each token now gone (nobody gets those), one to a prefix
        // every client's token starts, and one to the room.
        let mut lines: String = clients.iter().map(|(token, _)| format!("{token}=own-{round}\n")).collect();
        lines.extend(gone.iter().map(|token| format!("{token}=gone-{round}\n")));
        lines.push_str(&format!("u*=prefix-{round}\nroom=room-{round}\n"));
        assert_eq!(server.control(&lines), "");
        for (token, client) in &mut clients {
            for expected in [format!("own-{round}"), format!("prefix-{round}"), format!("room-{round}")] {
                let event =
                    client.try_next_event(WAIT).unwrap_or_else(|e| panic!("{token}, round {round}: {e:?}"));
                assert_eq!(event.data, expected, "{token}, round {round}");
            }
        }
    }
    assert_eq!(workers_seen, (0..WORKERS).collect(), "clients on every worker");
}
