//! Cluster mode: several nodes over one real `redis-server` act as one: every publish reaches
//! every node's subscribers once, in one order, with the same ids; a client resumes on any
//! node; Redis frozen or restarted loses nothing and duplicates nothing.
//!
//! Each test starts its own `redis-server` on a free port, in a directory of its own.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::*;
use crate::nginx::Nginx;
use crate::programs::{repo_file, EventStream};

/// The stream every node of a test writes and tails (`--cluster-key` left as it is).
const STREAM: &str = "hasses:events";

/// A `redis-server` of the test's own, stopped when dropped.
pub(crate) struct Redis {
    child: Child,
    port: u16,
    _dir: TempDir,
    args: Vec<String>,
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Redis {
    /// Starts one, with an append-only file or none, and these extra arguments.
    pub(crate) fn start(append_only: bool, extra: &[&str]) -> Redis {
        let port = free_port();
        let mut args = vec!["--port".to_string(), port.to_string()];
        args.extend(["--appendonly".into(), if append_only { "yes" } else { "no" }.into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Redis::launch(port, args)
    }

    /// Starts one that speaks TLS only, with this certificate and key.
    fn start_tls(cert: &Path, key: &Path) -> Redis {
        let port = free_port();
        let args = ["--port", "0", "--tls-port", &port.to_string(), "--tls-auth-clients", "no"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--tls-cert-file".into(), cert.display().to_string()])
            .chain(["--tls-key-file".into(), key.display().to_string()])
            .collect();
        Redis::launch(port, args)
    }

    /// Runs `redis-server` with these arguments, listening on `port` (loopback, no snapshots,
    /// in a directory of its own).
    fn launch(port: u16, mut args: Vec<String>) -> Redis {
        let dir = TempDir(temp_path("redis"));
        std::fs::create_dir_all(&dir.0).unwrap();
        args.extend(["--save", "", "--bind", "127.0.0.1"].map(String::from));
        args.extend(["--dir".into(), dir.0.display().to_string()]);
        let child = Redis::spawn(&args, port);
        Redis { child, port, _dir: dir, args }
    }

    fn spawn(args: &[String], port: u16) -> Child {
        let child = Command::new("redis-server")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        wait_until(WAIT, &format!("redis-server listens on {port}"), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        child
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The stream's length (`XLEN`, as an inline command: no client needed).
    fn stream_len(&self) -> u64 {
        let mut con = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        con.write_all(b"XLEN hasses:events\r\n").unwrap();
        let mut reply = String::new();
        BufReader::new(con).read_line(&mut reply).unwrap();
        reply
            .trim()
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("XLEN: {reply:?}"))
    }

    /// Waits (up to 15 s: a few of the nodes' 3 s beats) for the stream to hold at most `most`
    /// entries, and returns how many it holds.
    fn wait_trimmed_to(&self, most: u64) -> u64 {
        let mut len = 0;
        wait_until(Duration::from_secs(15), &format!("the stream holds {most} entries or fewer"), || {
            len = self.stream_len();
            len <= most
        });
        len
    }

    /// A connection to it, to look at the keys the nodes keep there.
    fn connection(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).unwrap();
        client.get_connection_with_timeout(WAIT).expect("connect to the test's redis-server")
    }

    /// The id of the stream's newest entry.
    fn newest(&self) -> String {
        let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut self.connection())
            .unwrap();
        newest.ids.first().map(|entry| entry.id.clone()).expect("the stream has an entry")
    }

    /// What each node keeps under `hasses:KIND:NODE`, by the node's process id. `node`: when
    /// its last beat began (ms); `read`: where its tail had read then. A node writes both at
    /// the start of each beat, then trims (a beat every 3 s).
    fn node_keys(&self, kind: &str) -> HashMap<u32, String> {
        let mut con = self.connection();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("hasses:{kind}:*")).query(&mut con).unwrap();
        let values: Vec<Option<String>> =
            if keys.is_empty() { Vec::new() } else { redis::cmd("MGET").arg(&keys).query(&mut con).unwrap() };
        // A node is HOST-PID-MS, and a host name may hold '-'.
        let pid = |key: &str| key.rsplit('-').nth(1).and_then(|pid| pid.parse().ok());
        keys.iter().zip(values).filter_map(|(key, value)| Some((pid(key)?, value?))).collect()
    }

    /// Waits until each of `nodes` has said, at a beat, that its tail has read the stream's
    /// newest entry (or later ones); returns when each of those beats began.
    fn wait_told_newest(&self, nodes: &[&Server]) -> HashMap<u32, u64> {
        let newest = self.newest();
        let mut beats = HashMap::new();
        wait_until(Duration::from_secs(15), &format!("every node says it read {newest}"), || {
            let (reads, began) = (self.node_keys("read"), self.node_keys("node"));
            beats =
                nodes.iter().filter_map(|n| Some((n.pid(), began.get(&n.pid())?.parse().ok()?))).collect();
            let read_newest =
                |n: &&Server| reads.get(&n.pid()).and_then(|r| entry_id(r)) >= entry_id(&newest);
            nodes.iter().all(read_newest) && beats.len() == nodes.len()
        });
        beats
    }

    /// Waits until each node has begun a beat after `beats`: the beats before, trim and all,
    /// are over (a node's beats follow one another on one thread).
    fn wait_beat_after(&self, beats: &HashMap<u32, u64>) {
        wait_until(Duration::from_secs(15), "every node beats again", || {
            let began = self.node_keys("node");
            beats.iter().all(|(pid, beat)| began.get(pid).and_then(|b| b.parse::<u64>().ok()) > Some(*beat))
        });
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Stops it as an operator would (SIGTERM: the append-only file is written out).
    pub(crate) fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and directory.
    pub(crate) fn restart(&mut self) {
        self.child = Redis::spawn(&self.args, self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node of the cluster on `redis`, with these extra flags.
fn node(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--cluster", url.as_str(), "--heartbeat", "1"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The next `count` events as (id, data).
fn events(client: &mut SseClient, count: usize) -> Vec<(u64, String)> {
    (0..count)
        .map(|_| {
            let event = client.next_event();
            (event.id, event.data)
        })
        .collect()
}

fn resume(server: &Server, query: &str, after: u64) -> SseClient {
    server.subscribe(&format!("{query}&lastEventId={after}"))
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn three_nodes_deliver_every_publish_once_in_one_order_with_the_same_ids() {
    let redis = Redis::start(false, &[]);
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    let mut clients: Vec<SseClient> = nodes.iter().map(|n| n.subscribe("subscribe=t")).collect();
    for (i, node) in nodes.iter().enumerate() {
        node.publish(&format!("t=from node {i}"));
    }
    let seen: Vec<_> = clients.iter_mut().map(|c| events(c, 3)).collect();
    assert!(seen.iter().all(|s| s == &seen[0]), "one order, the same ids everywhere: {seen:?}");
    let datas: HashSet<&str> = seen[0].iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(datas, HashSet::from(["from node 0", "from node 1", "from node 2"]));
    assert!(seen[0].windows(2).all(|w| w[0].0 < w[1].0), "ids increase");

    let lines: String = (0..200).map(|n| format!("t={n}\n")).collect();
    assert_eq!(nodes[1].control(&lines), "");
    let seen: Vec<_> = clients.iter_mut().map(|c| events(c, 200)).collect();
    let expected: Vec<String> = (0..200).map(|n| n.to_string()).collect();
    for s in &seen {
        assert_eq!(s.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), expected, "whole and in order");
        assert_eq!(s, &seen[0], "the same ids on every node");
    }
    let status = nodes[2].tcp_json("tcpstatus");
    assert_eq!(status["cluster"]["connected"], true);
    assert_eq!(status["cluster"]["nodes"], 3, "{status}");
    assert_eq!(status["cluster"]["buffered"], 0);
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn a_client_resumes_on_another_node_and_on_one_killed_and_restarted() {
    let redis = Redis::start(false, &[]);
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut witness = a.subscribe("subscribe=t");
    for n in 0..5 {
        a.publish(&format!("t={n}"));
    }
    let ids: Vec<u64> = events(&mut witness, 5).into_iter().map(|(id, _)| id).collect();
    let mut back = resume(&b, "subscribe=t", ids[1]);
    assert_eq!(events(&mut back, 3), events_of(&ids[2..], 2));
    b.publish("t=live");
    let live = back.next_event();
    assert_eq!((live.data.as_str(), live.event), ("live", None), "then live, no seam");

    // A node killed outright and started again reads the stream back before it serves.
    let mut c = node(&redis, &[]);
    c.signal(Signal::SIGKILL);
    c.wait_exit(WAIT);
    let c = node(&redis, &[]);
    let mut back = resume(&c, "subscribe=t", ids[1]);
    assert_eq!(events(&mut back, 3), events_of(&ids[2..], 2));
    // From before the stream's oldest entry: something may be gone, and the client is told.
    let mut before = resume(&c, "subscribe=t", ids[0] - 1);
    assert_eq!(before.next_event().event.as_deref(), Some("reset"));
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn the_stream_keeps_what_the_histories_keep_and_no_more() {
    let redis = Redis::start(false, STREAM_NODES_OF_2);
    let a = node(&redis, &["--history", "5"]);
    let b = node(&redis, &["--history", "5"]);
    let mut witness = a.subscribe("subscribe=t");
    publish_tagged(&a, "", 100);
    let ids: Vec<u64> = events(&mut witness, 100).into_iter().map(|(id, _)| id).collect();
    // The rings keep 5 of `t`: the stream keeps them (a stream node of 2 more, at most, with
    // `XTRIM MINID ~`), and what came before goes.
    assert!(redis.wait_trimmed_to(6) >= 5);
    // A node started now reads them back: a resume within them is whole, one from before is
    // told of the gap. Its start trims nothing it read, a beat later either.
    let c = node(&redis, &["--history", "5"]);
    publish_tagged(&a, "after c", 1);
    assert_eq!(witness.next_data(), "after c0");
    let beats = redis.wait_told_newest(&[&a, &b, &c]);
    redis.wait_beat_after(&beats);
    assert!(redis.stream_len() >= 5, "the newest 5 are kept: {}", redis.stream_len());
    let mut back = resume(&c, "subscribe=t", ids[96]);
    assert_eq!(events(&mut back, 3), events_of(&ids[97..], 97));
    let mut before = resume(&c, "subscribe=t", ids[50]);
    assert_eq!(before.next_event().event.as_deref(), Some("reset"));

    // By --history-memory: 100 events of 1,000 bytes, each to an audience of its own, in a
    // node keeping 8,000 bytes: the stream keeps the newest few, not the 100 each ring would.
    let redis = Redis::start(false, STREAM_NODES_OF_2);
    let small = node(&redis, &["--history-memory", "8000"]);
    let mut last = small.subscribe("subscribe=u99");
    let pad = "x".repeat(1000);
    let lines: String = (0..100).map(|n| format!("u{n}={pad}\n")).collect();
    assert_eq!(small.control(&lines), "");
    // The last one back from the stream: all 100 are in it, or were.
    assert_eq!(last.next_data(), pad);
    let kept = redis.wait_trimmed_to(9);
    assert!(kept >= 6, "most of --history-memory's worth is kept: {kept}");
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn a_node_that_stopped_reading_holds_the_trim_back_and_misses_nothing() {
    let redis = Redis::start(false, STREAM_NODES_OF_2);
    let a = node(&redis, &["--history", "5"]);
    let b = node(&redis, &["--history", "5"]);
    let mut client = b.subscribe("subscribe=t");
    publish_tagged(&a, "before", 10);
    assert_eq!(events(&mut client, 10).len(), 10);
    // `b` has said where it is (its beat, every 3 s), then stops reading.
    redis.wait_told_newest(&[&b]);
    b.signal(Signal::SIGSTOP);
    let mut witness = a.subscribe("subscribe=t");
    publish_tagged(&a, "", 100);
    // `a` read all 100 back from the stream, and a beat of it that knew so is over: it would
    // cut to 5 but for `b`'s position.
    assert_eq!(events(&mut witness, 100).len(), 100);
    let beat = redis.wait_told_newest(&[&a]);
    redis.wait_beat_after(&beat);
    assert!(redis.stream_len() >= 100, "nothing `b` has still to read goes: {}", redis.stream_len());
    b.signal(Signal::SIGCONT);
    let datas: Vec<String> = events(&mut client, 100).into_iter().map(|(_, d)| d).collect();
    assert_eq!(datas, (0..100).map(|n| n.to_string()).collect::<Vec<_>>(), "whole and in order");
    redis.wait_trimmed_to(6);
}

/// A stream entry id, `ms-seq`, in the stream's order.
fn entry_id(text: &str) -> Option<(u64, u64)> {
    let (ms, seq) = text.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The outbox's line when it finds Redis gone (or cannot reach it): from then on it holds
/// what is published.
fn outbox_lost_redis(line: &str) -> bool {
    (line.contains("Cluster: Redis at") && line.contains("unreachable"))
        || line.contains("cannot reach Redis at")
}

/// Redis' stream nodes of 2 entries: `XTRIM MINID ~` trims whole nodes, so its result is then
/// within 2 of the exact one.
const STREAM_NODES_OF_2: &[&str] = &["--stream-node-max-entries", "2"];

/// (id, "N") for these ids, numbered from `first`.
fn events_of(ids: &[u64], first: usize) -> Vec<(u64, String)> {
    ids.iter().enumerate().map(|(i, id)| (*id, (first + i).to_string())).collect()
}

/// Publishes `t=<tag><n>` on `node` `count` times, on one connection.
fn publish_tagged(node: &Server, tag: &str, count: usize) {
    let lines: String = (0..count).map(|n| format!("t={tag}{n}\n")).collect();
    assert_eq!(node.control(&lines), "");
}

/// Every client gets exactly these datas once, all in one order with the same ids.
fn assert_all_once(clients: &mut [SseClient], expected: &HashSet<String>) {
    let seen: Vec<_> = clients.iter_mut().map(|c| events(c, expected.len())).collect();
    for s in &seen {
        let datas: HashSet<String> = s.iter().map(|(_, d)| d.clone()).collect();
        assert_eq!(&datas, expected, "each once");
        assert_eq!(s, &seen[0], "one order, the same ids");
    }
    for client in clients {
        assert!(client.try_next_event(Duration::from_millis(500)).is_err(), "nothing twice");
    }
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn redis_frozen_then_thawed_loses_nothing_and_sends_nothing_twice() {
    let redis = Redis::start(false, &[]);
    let nodes = [node(&redis, &[]), node(&redis, &[])];
    let mut clients: Vec<SseClient> = nodes.iter().map(|n| n.subscribe("subscribe=t")).collect();
    let start = nodes[0].log.len();
    redis.signal(Signal::SIGSTOP);
    publish_tagged(&nodes[0], "a", 3);
    publish_tagged(&nodes[1], "b", 2);
    // Its outbox found that Redis does not answer (3 s without a reply) and holds on.
    nodes[0].log.wait_for_line_from(start, outbox_lost_redis, Duration::from_secs(15));
    let status = nodes[0].tcp_json("tcpstatus");
    assert_eq!(status["cluster"]["buffered"], 3, "held while Redis is frozen: {status}");
    redis.signal(Signal::SIGCONT);
    let expected = ["a0", "a1", "a2", "b0", "b1"].map(String::from).into();
    assert_all_once(&mut clients, &expected);
    for client in &mut clients {
        assert!(client.comments > 0, "heartbeats went on meanwhile");
    }
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn past_the_buffer_publishes_are_refused_while_redis_is_unreachable() {
    let redis = Redis::start(false, &[]);
    let node = node(&redis, &["--cluster-buffer", "3"]);
    let mut client = node.subscribe("subscribe=t");
    redis.signal(Signal::SIGSTOP);
    publish_tagged(&node, "a", 3);
    // Over the buffer: the node waits for room while it believes Redis is there, and refuses
    // once it has found it is not (no reply in time).
    let start = node.log.len();
    connect(node.cport()).write_all(b"t=over the buffer\n").unwrap();
    let refused = |l: &str| l.contains("Publish refused: cluster buffer full");
    node.log.wait_for_line_from(start, refused, Duration::from_secs(15));
    assert_eq!(node.tcp_json("tcpstatus")["msgrefusedcnt"], 1);
    redis.signal(Signal::SIGCONT);
    assert_all_once(std::slice::from_mut(&mut client), &["a0", "a1", "a2"].map(String::from).into());
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn redis_restarted_with_its_append_only_file_loses_nothing() {
    let mut redis = Redis::start(true, &[]);
    let nodes = [node(&redis, &[]), node(&redis, &[])];
    let mut clients: Vec<SseClient> = nodes.iter().map(|n| n.subscribe("subscribe=t")).collect();
    publish_tagged(&nodes[0], "before", 2);
    assert_all_once(&mut clients, &["before0", "before1"].map(String::from).into());
    let starts = nodes.each_ref().map(|node| node.log.len());
    redis.stop();
    publish_tagged(&nodes[0], "a", 2);
    publish_tagged(&nodes[1], "b", 2);
    // Both outboxes hold their publishes, Redis gone, before it comes back.
    for (node, start) in nodes.iter().zip(starts) {
        node.log.wait_for_line_from(start, outbox_lost_redis, WAIT);
    }
    redis.restart();
    assert_all_once(&mut clients, &["a0", "a1", "b0", "b1"].map(String::from).into());
    // What came before the restart is still there to resume from, on every node.
    let mut back = nodes[1].subscribe("subscribe=t&lastEventId=earliest");
    let datas: Vec<String> = events(&mut back, 6).into_iter().map(|(_, d)| d).collect();
    assert_eq!(&datas[..2], ["before0", "before1"]);
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn a_bad_url_refused_credentials_or_no_redis_stop_the_start_with_one_line() {
    let redis = Redis::start(false, &["--requirepass", "right"]);
    let wrong_password = format!("redis://:sesame@127.0.0.1:{}", redis.port);
    let nobody = format!("redis://127.0.0.1:{}", free_port());
    for (url, says) in [
        (wrong_password.as_str(), "redis://:***@127.0.0.1"),
        ("redis://127.0.0.1:notaport", "--cluster redis://127.0.0.1:notaport"),
        ("http://127.0.0.1:6379", "--cluster"),
        (nobody.as_str(), "--cluster redis://127.0.0.1"),
    ] {
        let (status, _, err) = run_to_exit(&["--port", "0", "--control-port", "0", "--cluster", url]);
        assert!(!status.success(), "{url}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {url}: {err}");
        assert!(lines[0].contains(says), "{url}: {err}");
        assert!(!err.contains("sesame"), "no password in the line: {err}");
    }
    let right = format!("redis://:right@127.0.0.1:{}", redis.port);
    let node = Server::start(&["--cluster", &right]);
    assert_eq!(node.tcp_json("tcpstatus")["cluster"]["connected"], true);
    // The tail logs in on its own connection too, and reads what is published.
    let mut client = node.subscribe("subscribe=t");
    node.publish("t=past the password");
    assert_eq!(client.next_data(), "past the password");
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn redis_restarted_without_its_data_is_a_new_epoch_told_to_resuming_clients() {
    let mut redis = Redis::start(false, &[]);
    let nodes = [node(&redis, &[]), node(&redis, &[])];
    let mut client = nodes[1].subscribe("subscribe=t");
    publish_tagged(&nodes[0], "old", 2);
    let old = events(&mut client, 2);
    let start = nodes[1].log.len();
    redis.stop();
    redis.restart();
    nodes[1].log.wait_for_line_from(start, |l| l.contains("a new epoch"), Duration::from_secs(10));
    publish_tagged(&nodes[0], "new", 1);
    let new = events(&mut client, 1);
    assert_eq!(new[0].1, "new0");
    assert!(new[0].0 > old[1].0, "ids still increase");
    let mut back = resume(&nodes[1], "subscribe=t", old[0].0);
    assert_eq!(back.next_event().event.as_deref(), Some("reset"), "what was lost is told");
    let mut now = resume(&nodes[1], "subscribe=t", new[0].0);
    publish_tagged(&nodes[0], "live", 1);
    assert_eq!(now.next_data(), "live0", "a resume from the new epoch is whole");
}

#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn rediss_reaches_redis_over_tls() {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("generate a certificate");
    let (cert, key) = (TempFile::new("redis-cert.pem"), TempFile::new("redis-key.pem"));
    std::fs::write(cert.path(), made.cert.pem()).unwrap();
    std::fs::write(key.path(), made.key_pair.serialize_pem()).unwrap();
    let redis = Redis::start_tls(cert.path(), key.path());
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let node = |trusted: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hasses"));
        command.args(["--port", "0", "--control-port", "0", "--workers", "2", "--cluster", &url]);
        if trusted {
            // The system's trusted certificates, as rustls-native-certs reads them.
            command.env("SSL_CERT_FILE", cert.path());
        }
        command
    };
    let server = Server::spawn_command(node(true)).listening(WAIT);
    let mut client = server.subscribe("subscribe=t");
    server.publish("t=over TLS");
    assert_eq!(client.next_data(), "over TLS");
    let mut untrusted = Server::spawn_command(node(false));
    let status = untrusted.wait_exit(WAIT).expect("an untrusted certificate stops the start");
    assert!(!status.success());
}

#[test]
#[ignore = "needs redis-server and nginx: run by the README's test command"]
fn three_nodes_behind_the_shipped_nginx_serve_as_one() {
    let redis = Redis::start(false, &[]);
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    let shipped = repo_file("deploy/cluster/nginx.conf");
    let at = shipped.find("location = /sse").expect("deploy/cluster/nginx.conf has the SSE location");
    let (mut upstream, location) = (shipped[..at].to_string(), &shipped[at..]);
    for (i, node) in nodes.iter().enumerate() {
        upstream =
            upstream.replace(&format!("10.0.0.1{}:8080", i + 1), &format!("127.0.0.1:{}", node.sse_port));
    }
    assert!(!upstream.contains("10.0.0."), "three nodes in the shipped upstream");
    let mut nginx = Nginx::start(&upstream, location);
    let mut streams: Vec<EventStream> =
        (0..3).map(|i| nginx.subscribe(&format!("subscribe=t&id=b{i}"), "")).collect();
    for node in &nodes {
        assert_eq!(
            node.wait_json("tcpstatus", "sseconncli", 1)["sseconncli"],
            1,
            "least_conn: one stream per node"
        );
    }
    nodes[2].publish("t=through any node");
    let got: Vec<(u64, String)> =
        streams.iter_mut().map(|s| s.expect_event(WAIT, || nginx.process.output())).collect();
    assert_eq!(got[0].1, "through any node");
    assert!(got.iter().all(|g| g == &got[0]), "the same event, the same id, on every node: {got:?}");
}

/// A publish over the HTTP API takes the stream's path too, and is answered as on one node,
/// `200 {"id":…}`, once Redis holds it: the id every node's subscribers see. A control
/// connection with acks gets the same id. Only while Redis is unreachable is a publish answered
/// `202 {"queued":true}` (`OK queued`), and delivered once Redis is back.
#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn an_http_publish_is_answered_with_the_id_redis_gave_it_and_queued_only_without_redis() {
    let mut redis = Redis::start(false, &[]);
    let nodes: Vec<Server> = (0..2).map(|_| node(&redis, &[])).collect();
    let mut clients: Vec<SseClient> = nodes.iter().map(|n| n.subscribe("subscribe=t")).collect();
    let publish = |data: &str| {
        let body = format!("to=t&data={data}");
        let request = format!(
            "POST /publish HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        crate::common::request(nodes[0].api_port(), request.as_bytes())
    };
    let reply = publish("over+http");
    assert_eq!(reply.head.status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let id: u64 = answer["id"].as_str().and_then(|id| id.parse().ok()).expect("an id");
    let seen: Vec<_> = clients.iter_mut().map(|c| events(c, 1)).collect();
    assert_eq!(seen[0], vec![(id, "over http".to_string())], "the answer's id is the event's");
    assert_eq!(seen[0], seen[1], "the same id on both nodes");

    let acked = nodes[1].control("ack on\nt=acked\n");
    let acked_id: u64 =
        acked.strip_prefix("OK ack on\nOK ").and_then(|r| r.trim_end().parse().ok()).expect(&acked);
    assert_eq!(events(&mut clients[0], 1), vec![(acked_id, "acked".to_string())]);

    redis.stop();
    // The outbox learns that Redis is gone from its next command: a publish or two may wait.
    let deadline = Instant::now() + WAIT;
    let mut sent = 0;
    let reply = loop {
        let reply = publish("while+away");
        sent += 1;
        if reply.head.status == 202 || Instant::now() > deadline {
            break reply;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(reply.head.status, 202, "queued while Redis is unreachable");
    assert_eq!(reply.body, br#"{"queued":true}"#);
    assert_eq!(nodes[0].control("ack on\nt=queued\n"), "OK ack on\nOK queued\n");
    redis.restart();
    // Behind `acked` and the publishes made while Redis was away.
    let back = (0..sent + 2).map(|_| clients[1].next_data()).find(|d| d == "queued");
    assert_eq!(back.as_deref(), Some("queued"), "delivered once Redis is back");
}

/// A node upgraded in place (SIGUSR2) under load: its clients resume on the new process with
/// every event once and no reset, the ids Redis gave; the publisher on its control port is
/// answered all along; another node's client sees the same events with the same ids.
#[test]
#[ignore = "needs redis-server: run by the README's test command"]
fn a_node_upgraded_in_place_loses_and_resets_no_one() {
    let redis = Redis::start(false, &[]);
    let other = node(&redis, &[]);
    let mut witness = other.subscribe("subscribe=t");
    let upgraded = node(&redis, &["--drain-secs", "1", "--history", "1000"]);
    let (_successor, ids) = crate::upgrade::upgrade_under_load_of(upgraded);
    let seen = events(&mut witness, ids.len());
    assert_eq!(seen.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids, "the same ids on the other node");
}
