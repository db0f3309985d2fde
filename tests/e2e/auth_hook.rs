//! The auth hook (`--auth-url`): every subscription is put to the web backend first. A backend
//! in Rust here (any answer, or none), and a real PHP one with a real session.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use hasses::h2::frame::{ErrorCode, Kind};

use crate::common::*;
use crate::programs::{find_program, Devtools, TempDir};

/// What the test backend does with a question.
#[derive(Debug, Clone)]
enum Reply {
    /// Answers with this status and body.
    Answer(u16, String),
    /// Answers nothing until the backend is dropped.
    Hold,
}

/// A question the backend received: its header lines, names lowercased.
type Asked = Vec<(String, String)>;

/// A backend on a loopback port, answering each question as `decide` says from its
/// `X-Original-URI`, each on a thread of its own, and recording what it was asked.
struct Backend {
    port: u16,
    asked: Arc<Mutex<Vec<Asked>>>,
    stop: Arc<AtomicBool>,
}

/// What a test backend does with each connection: answers on it, recording what it is asked,
/// until the connection or the stop ends.
type Serve = fn(TcpStream, Serving);

/// What a backend's connection is served with.
struct Serving {
    decide: fn(&str) -> Reply,
    asked: Arc<Mutex<Vec<Asked>>>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start(decide: fn(&str) -> Reply) -> Backend {
        Backend::serving(decide, answer)
    }

    fn serving(decide: fn(&str) -> Reply, serve: Serve) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (record, stopped) = (Arc::clone(&asked), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let serving = Serving { decide, asked: Arc::clone(&record), stop: Arc::clone(&stopped) };
                std::thread::spawn(move || serve(stream, serving));
            }
        });
        Backend { port, asked, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/auth", self.port)
    }

    fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which then sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one question on `stream` and answers it (then closes), or holds it until the stop.
fn answer(mut stream: TcpStream, serving: Serving) {
    let Some(uri) = read_question(&mut stream, &serving.asked, 1) else { return };
    match (serving.decide)(&uri) {
        Reply::Answer(status, body) => {
            let response = format!(
                "HTTP/1.1 {status} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
        Reply::Hold => {
            // Bounded: the server gives up long before.
            for _ in 0..100 {
                if serving.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Keeps its connection for two questions, allowing both: the first answer with a length,
/// the second chunked; then closes it without a word, as a backend's keep-alive timeout does.
fn answer_twice(mut stream: TcpStream, serving: Serving) {
    if read_question(&mut stream, &serving.asked, 1).is_none()
        || stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").is_err()
        || read_question(&mut stream, &serving.asked, 2).is_none()
    {
        return;
    }
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1;x=y\r\n}\r\n0\r\n\r\n";
    let _ = stream.write_all(chunked.as_bytes());
}

/// Reads a question's head on `stream` and records its header lines, with `x-turn`: `turn`,
/// the question's place on its connection. Its `X-Original-URI`; `None` when none came.
fn read_question(stream: &mut TcpStream, asked: &Mutex<Vec<Asked>>, turn: usize) -> Option<String> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut headers: Asked = text
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let uri = headers.iter().find(|(n, _)| n == "x-original-uri").map(|(_, v)| v.clone()).unwrap_or_default();
    headers.push(("x-turn".to_owned(), turn.to_string()));
    asked.lock().unwrap().push(headers);
    Some(uri)
}

/// Answers by the subscription asked: `slow` is held, `down` is a 500, `refuse` a 403 with a
/// reason, `narrow` a grant of `room1` and `user*` only, `bad` a malformed grant, `soon` a
/// grant expiring in 2 s, `past` one that has expired, `who` fixes the id; the rest is allowed
/// as asked.
fn by_query(uri: &str) -> Reply {
    let has = |word: &str| uri.contains(word);
    if has("slow") {
        Reply::Hold
    } else if has("down") {
        Reply::Answer(500, "oops".into())
    } else if has("refuse") {
        Reply::Answer(403, "not in this room\n".into())
    } else if has("narrow") {
        Reply::Answer(200, r#"{"subscribe": ["room1", "user*"]}"#.into())
    } else if has("bad") {
        Reply::Answer(200, r#"{"subscribe": "room1"#.into())
    } else if has("soon") {
        let expires = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 2;
        Reply::Answer(200, format!(r#"{{"expires": {expires}}}"#))
    } else if has("past") {
        Reply::Answer(200, r#"{"expires": 1000}"#.into())
    } else if has("who") {
        Reply::Answer(200, r#"{"id": "alice"}"#.into())
    } else {
        Reply::Answer(200, String::new())
    }
}

/// Sends `request` and expects the connection to close without a byte of answer.
fn disconnected_without_answer(port: u16, request: &str) {
    let mut stream = connect(port);
    stream.write_all(request.as_bytes()).unwrap();
    let answer = read_to_eof(&mut stream, Vec::new(), WAIT * 2).expect("closed by the server");
    assert!(answer.is_empty(), "an answer came: {:?}", String::from_utf8_lossy(&answer));
}

/// A `GET` for `query` with extra header lines.
fn get_with(query: &str, headers: &[&str]) -> String {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    get_request(query).replacen("\r\n\r\n", &format!("\r\n{extra}\r\n"), 1)
}

fn hooked(backend: &Backend, extra: &[&str]) -> Server {
    let url = backend.url();
    let mut args = vec!["--auth-url", url.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn the_backend_is_asked_with_the_clients_credentials_and_allows() {
    let backend = Backend::start(by_query);
    let server = hooked(&backend, &[]);
    let request = get_with(
        "subscribe=room1&id=u1",
        &["Cookie: PHPSESSID=abc", "Authorization: Basic dTpw", "Origin: https://app.example"],
    );
    let mut client = SseClient::connect(server.sse_port);
    client.handshake(request.as_bytes());
    server.publish("room1=hello");
    client.expect_data("hello");
    let asked = backend.asked();
    let header = |name: &str| asked[0].iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(header("cookie"), Some("PHPSESSID=abc"));
    assert_eq!(header("authorization"), Some("Basic dTpw"));
    assert_eq!(header("origin"), Some("https://app.example"));
    assert_eq!(header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header("x-original-uri"), Some("/sse?subscribe=room1&id=u1"));
    let status = server.tcp_json("tcpstatus");
    assert_eq!(
        (status["authbackendasked"].as_u64(), status["authbackendallowed"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn a_kept_alive_connection_carries_several_questions_and_is_opened_again_once_closed() {
    let backend = Backend::serving(by_query, answer_twice);
    let server = hooked(&backend, &[]);
    // More subscriptions than twice the hook's threads: some thread finds its connection
    // closed by the backend after its second answer, and must ask on a new one.
    let subscriptions = 40;
    let _clients: Vec<SseClient> =
        (0..subscriptions).map(|i| server.subscribe(&format!("subscribe=room1&id=u{i}"))).collect();
    let asked = backend.asked();
    assert_eq!(asked.len(), subscriptions, "each asked once");
    let turn = |asked: &Asked| asked.iter().find(|(n, _)| n == "x-turn").map(|(_, v)| v.clone());
    assert!(asked.iter().any(|a| turn(a).as_deref() == Some("2")), "no connection was kept alive");
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["authbackendallowed"], subscriptions);
    assert_eq!(status["authbackendfailed"], 0);
}

#[test]
fn refusals_are_passed_on_and_grants_narrow_and_fix_the_id() {
    let backend = Backend::start(by_query);
    let server = hooked(&backend, &[]);
    let refused = server.request(get_request("subscribe=refuse").as_bytes());
    assert_eq!(refused.head.status, 403);
    assert_eq!(String::from_utf8_lossy(&refused.body), "refused by the backend (403): not in this room\n");
    // Narrowed: what the grant names goes through, anything more is refused, as with a JWT.
    let mut narrowed = server.subscribe("subscribe=room1-user42&narrow");
    let beyond = server.request(get_request("subscribe=room1-room2&narrow").as_bytes());
    assert_eq!(beyond.head.status, 403);
    assert!(String::from_utf8_lossy(&beyond.body).contains("token \"room2\" is not among the grants"));
    // The backend's id is the client's: taken without one, refused when another is asked.
    let _alice = server.subscribe("subscribe=room1&who");
    let other = server.request(get_request("subscribe=room1&who&id=bob").as_bytes());
    assert_eq!(other.head.status, 403);
    server.publish("room1=one");
    narrowed.expect_data("one");
    assert!(server.client_list().iter().any(|line| line.contains("alice")));
    let status = server.tcp_json("tcpstatus");
    assert_eq!(status["authbackendrefused"], 3);
    assert_eq!(status["authbackendallowed"], 2);
}

#[test]
fn a_backend_that_fails_gets_the_client_disconnected_without_an_answer() {
    let backend = Backend::start(by_query);
    let server = hooked(&backend, &[]);
    disconnected_without_answer(server.sse_port, &get_request("subscribe=down"));
    disconnected_without_answer(server.sse_port, &get_request("subscribe=bad"));
    let line = server.log.wait_for_line(|l| l.contains("not authorized: the auth backend failed"), WAIT);
    assert!(line.contains("it answered 500") || line.contains("not a grant"), "{line}");
    server.log.wait_for_line(|l| l.contains("its 200 answer is not a grant"), WAIT);
    assert_eq!(server.tcp_json("tcpstatus")["authbackendfailed"], 2);
    // No backend listening at all: the same, and the server goes on.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/auth", closed.local_addr().unwrap().port());
    drop(closed);
    let unreachable = Server::start(&["--auth-url", url.as_str()]);
    disconnected_without_answer(unreachable.sse_port, &get_request("subscribe=room1"));
    unreachable.log.wait_for_line(|l| l.contains("cannot reach it"), WAIT);
}

#[test]
fn a_grant_ends_its_stream_at_expires_and_an_expired_one_is_a_failure() {
    let backend = Backend::start(by_query);
    let server = hooked(&backend, &[]);
    disconnected_without_answer(server.sse_port, &get_request("subscribe=past"));
    server.log.wait_for_line(|l| l.contains("its grant's \"expires\" has passed"), WAIT);
    let mut client = server.subscribe("subscribe=soon");
    assert!(client.wait_closed(WAIT), "the stream ends at the grant's expires");
    server.log.wait_for_line(|l| l.contains("Stream ended") && l.contains("its token expired"), WAIT);
}

#[test]
fn a_reinit_is_put_to_the_backend_too() {
    let backend = Backend::start(by_query);
    let server = hooked(&backend, &["--reinit"]);
    let mut client = server.subscribe("subscribe=a");
    let reinit = |client: &mut SseClient, query: &str| {
        client.send(format!("GET /sse?{query} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        client.read_head(WAIT).expect("an answer on the same connection")
    };
    assert_eq!(reinit(&mut client, "subscribe=b").status, 200);
    server.publish("a=old;b=new");
    client.expect_data("new");
    assert_eq!(backend.asked().len(), 2);
    assert_eq!(reinit(&mut client, "subscribe=refuse").status, 403);
    assert!(client.wait_closed(WAIT));
}

#[test]
fn a_slow_backend_times_out_while_the_shard_serves_others() {
    let backend = Backend::start(by_query);
    // One worker: the parked handshake and the streaming client share its loop.
    let server = hooked(&backend, &["--auth-timeout", "1.5", "--workers", "1"]);
    let mut streaming = server.subscribe("subscribe=room1");
    let mut parked = connect(server.sse_port);
    parked.write_all(get_request("subscribe=slow-room1").as_bytes()).unwrap();
    assert_eq!(server.wait_json("tcpstatus", "authbackendwaiting", 1)["authbackendwaiting"], 1);
    for n in 0..3 {
        server.publish(&format!("room1=while-parked-{n}"));
        streaming.expect_data(&format!("while-parked-{n}"));
    }
    let answer = read_to_eof(&mut parked, Vec::new(), WAIT).expect("disconnected at --auth-timeout");
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    server.log.wait_for_line(|l| l.contains("no answer within --auth-timeout"), WAIT);
    let status = server.wait_json("tcpstatus", "authbackendwaiting", 0);
    assert_eq!(status["authbackendwaiting"], 0);
    assert_eq!(status["authbackendfailed"], 1);
}

#[test]
fn a_parked_client_that_goes_away_is_dropped_and_its_verdict_ignored() {
    let backend = Backend::start(by_query);
    let server = hooked(&backend, &["--auth-timeout", "3", "--workers", "1"]);
    let mut parked = connect(server.sse_port);
    parked.write_all(get_request("subscribe=slow").as_bytes()).unwrap();
    assert_eq!(server.wait_json("tcpstatus", "authbackendwaiting", 1)["authbackendwaiting"], 1);
    drop(parked);
    server.log.wait_for_line(|l| l.contains("went away while the auth backend was asked"), WAIT);
    let status = server.wait_json("tcpstatus", "authbackendwaiting", 0);
    assert_eq!(status["authbackendwaiting"], 0);
    assert_eq!(status["allconncli"], 0);
    // Its slot is taken by the next client, which a late verdict must not touch.
    let mut next = server.subscribe("subscribe=room1");
    server.publish("room1=still-here");
    next.expect_data("still-here");
}

#[test]
fn answers_are_cached_per_credentials_and_query() {
    let backend = Backend::start(by_query);
    let server = hooked(&backend, &["--auth-cache-secs", "60"]);
    for _ in 0..3 {
        let mut client = SseClient::connect(server.sse_port);
        client.handshake(get_with("subscribe=room1", &["Cookie: s=1"]).as_bytes());
    }
    let mut other = SseClient::connect(server.sse_port);
    other.handshake(get_with("subscribe=room1", &["Cookie: s=2"]).as_bytes());
    for _ in 0..2 {
        assert_eq!(server.request(get_request("subscribe=refuse").as_bytes()).head.status, 403);
    }
    assert_eq!(backend.asked().len(), 3, "s=1 once, s=2 once, the refusal once");
    let status = server.tcp_json("tcpstatus");
    assert_eq!(
        (status["authbackendasked"].as_u64(), status["authbackendcachehits"].as_u64()),
        (Some(3), Some(3))
    );
    let metrics = http_get(server.ready.api_port().unwrap(), "/metrics");
    assert!(metrics.contains("hasses_auth_backend_cache_hits_total 3"), "{metrics}");
    assert!(metrics.contains("hasses_auth_backend_verdicts_total{result=\"refused\"} 2"), "{metrics}");
}

#[test]
fn with_a_jwt_too_a_subscription_must_pass_both() {
    let backend = Backend::start(by_query);
    let server = hooked(&backend, &["--jwt-secret", "k"]);
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let token = encode(
        &Header::default(),
        &json!({ "exp": exp, "subscribe": ["room1", "refuse"], "sub": "carol" }),
        &EncodingKey::from_secret(b"k"),
    )
    .unwrap();
    let bearer = format!("Authorization: Bearer {token}");
    assert_eq!(server.request(get_request("subscribe=room1").as_bytes()).head.status, 401);
    assert_eq!(backend.asked().len(), 0, "a request the JWT refuses is not put to the backend");
    let refused = server.request(get_with("subscribe=refuse", &[&bearer]).as_bytes());
    assert_eq!(refused.head.status, 403);
    let mut client = SseClient::connect(server.sse_port);
    client.handshake(get_with("subscribe=room1", &[&bearer]).as_bytes());
    server.publish("room1=both");
    client.expect_data("both");
    // The backend's id (alice) must be the token's sub (carol).
    let mismatch = server.request(get_with("subscribe=room1&who=1", &[&bearer]).as_bytes());
    assert_eq!(mismatch.head.status, 403);
}

#[test]
fn a_malformed_auth_url_stops_the_start() {
    let (status, _, stderr) =
        run_to_exit(&["--port", "0", "--control-port", "0", "--auth-url", "localhost/auth"]);
    assert!(!status.success());
    assert!(stderr.contains("--auth-url: must be an http:// or https:// URL: localhost/auth"), "{stderr}");
}

/// A GET on the API; the body.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = connect(port);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let bytes = read_to_eof(&mut stream, Vec::new(), WAIT).expect("the API answers and closes");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// PHP's built-in server with a real session: `login.php` logs in as alice, `logout.php` out,
/// `auth.php` answers 200 with a grant for a logged-in session and 403 otherwise. Sessions are
/// kept in files, so a restart keeps them.
struct PhpBackend {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// While stopped, its port bound and not listening: a connection is refused, as with
    /// nothing there, and no test running beside this one can take the port before the restart.
    held: Option<socket2::Socket>,
}

const LOGIN: &str = "<?php session_start(); $_SESSION['user'] = 'alice'; echo \"logged in\\n\";";
const LOGOUT: &str = "<?php session_start(); session_destroy(); echo \"logged out\\n\";";
const AUTH: &str = r#"<?php
session_start();
if (empty($_SESSION['user'])) {
    http_response_code(403);
    echo "not logged in\n";
    exit;
}
header('Content-Type: application/json');
echo json_encode(['subscribe' => ['room1', $_SESSION['user'] . '*'], 'id' => $_SESSION['user'], 'expires' => time() + 3600]);
"#;

/// The application's page, served by PHP: the test drives it through DevTools.
const PAGE: &str = r#"<!doctype html><title>app</title>
<script>
// Opens an EventSource on `url` (credentials sent) and records what it does under `name`.
function listen(name, url) {
  const seen = { opens: 0, errors: 0, data: [], source: new EventSource(url, { withCredentials: true }) };
  seen.source.onopen = () => seen.opens++;
  seen.source.onerror = () => seen.errors++;
  seen.source.onmessage = (e) => seen.data.push(e.data);
  window[name] = seen;
  return true;
}
</script>"#;

impl PhpBackend {
    fn start() -> PhpBackend {
        let dir = TempDir::new("auth-hook-php");
        let pages = [("login.php", LOGIN), ("logout.php", LOGOUT), ("auth.php", AUTH), ("index.html", PAGE)];
        for (name, text) in pages {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::create_dir(dir.path().join("sessions")).unwrap();
        let mut php = PhpBackend { child: None, port: free_port(), dir, held: None };
        php.run();
        php
    }

    /// Starts `php -S` on its port and waits until it answers with the page (not another
    /// program that took the port).
    fn run(&mut self) {
        self.held = None;
        let root = self.dir.path();
        let child = Command::new(find_program("php", "php-cli"))
            .args(["-S", &format!("127.0.0.1:{}", self.port), "-t"])
            .arg(root)
            .arg("-d")
            .arg(format!("session.save_path={}", root.join("sessions").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start php -S");
        self.child = Some(child);
        wait_until(WAIT, "php -S answers with the page", || self.page().contains("function listen"));
    }

    /// `index.html` as whatever listens on the port answers it; empty when nothing does.
    fn page(&self) -> String {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return String::new() };
        let request = "GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return String::new();
        }
        let answer = read_to_eof(&mut stream, Vec::new(), WAIT).unwrap_or_default();
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Stops `php -S`, and holds its port for [`PhpBackend::run`].
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.held = Some(hold_port(self.port));
        }
    }

    fn url(&self, page: &str) -> String {
        format!("http://127.0.0.1:{}/{page}", self.port)
    }

    /// Logs in: the session cookie (`PHPSESSID=…`) the page set.
    fn login(&self) -> String {
        let mut stream = connect(self.port);
        write!(stream, "GET /login.php HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
        let answer = read_to_eof(&mut stream, Vec::new(), WAIT).expect("php answers");
        let text = String::from_utf8_lossy(&answer);
        let line = text
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .expect("a session cookie");
        line.split_once(':').unwrap().1.trim().split(';').next().unwrap().to_owned()
    }
}

/// `port` on 127.0.0.1, bound and not listening: nothing can connect, and nothing else binds it.
fn hold_port(port: u16) -> socket2::Socket {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    // php's accepted connections may wait in TIME_WAIT on the port.
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket.bind(&address.into()).expect("the stopped backend's port is free to hold");
    socket
}

impl Drop for PhpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
#[ignore = "needs php (Debian package php-cli)"]
fn a_php_session_authorizes_its_eventsource_and_a_stopped_backend_is_retried() {
    let mut php = PhpBackend::start();
    let url = php.url("auth.php");
    let server = Server::start(&["--auth-url", url.as_str(), "--auth-timeout", "2"]);
    let cookie = format!("Cookie: {}", php.login());
    let mut client = SseClient::connect(server.sse_port);
    client.handshake(get_with("subscribe=room1-alice42", &[&cookie]).as_bytes());
    server.publish("room1=for the room");
    client.expect_data("for the room");
    assert!(server.client_list().iter().any(|line| line.contains("alice")), "the backend's id");
    // Narrowed to the session's grants; refused without the session.
    let beyond = server.request(get_with("subscribe=room2", &[&cookie]).as_bytes());
    assert_eq!(beyond.head.status, 403);
    let anonymous = server.request(get_request("subscribe=room1").as_bytes());
    assert_eq!(anonymous.head.status, 403);
    assert!(String::from_utf8_lossy(&anonymous.body).contains("not logged in"));
    // The backend stopped: disconnected without an answer, so that EventSource retries.
    php.stop();
    disconnected_without_answer(server.sse_port, &get_with("subscribe=room1", &[&cookie]));
    // Back: the same session gets in.
    php.run();
    let mut again = SseClient::connect(server.sse_port);
    again.handshake(get_with("subscribe=room1", &[&cookie]).as_bytes());
    server.publish("room1=back");
    again.expect_data("back");
}

#[test]
#[ignore = "needs php (Debian package php-cli) and chromium"]
fn chromium_is_authorized_by_its_session_refused_logged_out_and_retries_a_stopped_backend() {
    let mut php = PhpBackend::start();
    let origin = format!("http://127.0.0.1:{}", php.port);
    let url = php.url("auth.php");
    let server =
        Server::start(&["--auth-url", url.as_str(), "--cors-base", origin.as_str(), "--retry", "500"]);
    let sse = |query: &str| json!(format!("http://127.0.0.1:{}/sse?{query}", server.sse_port));
    let profile = TempDir::new("chromium-auth-hook");
    let mut browser = Devtools::launch(&php.url("index.html"), &profile);
    browser.wait_until("typeof listen === 'function'");
    // Logged in: the session cookie authorizes the stream.
    browser.evaluate("fetch('/login.php').then((r) => r.ok)");
    browser.evaluate(&format!("listen('loggedIn', {})", sse("subscribe=room1")));
    browser.wait_until("loggedIn.opens === 1");
    server.publish("room1=hello browser");
    browser.wait_until("loggedIn.data.includes('hello browser')");
    browser.evaluate("loggedIn.source.close(), true");
    // Logged out: refused (403), and EventSource gives up for good.
    browser.evaluate("fetch('/logout.php').then((r) => r.ok)");
    browser.evaluate(&format!("listen('loggedOut', {})", sse("subscribe=room1")));
    browser.wait_until("loggedOut.errors >= 1 && loggedOut.source.readyState === EventSource.CLOSED");
    assert_eq!(browser.evaluate("loggedOut.opens"), json!(0));
    // The backend stopped: the browser is disconnected without an answer and keeps trying.
    browser.evaluate("fetch('/login.php').then((r) => r.ok)");
    php.stop();
    let failed = server.tcp_json("tcpstatus")["authbackendfailed"].as_u64().unwrap();
    browser.evaluate(&format!("listen('down', {})", sse("subscribe=room1")));
    let failures = || server.tcp_json("tcpstatus")["authbackendfailed"].as_u64().unwrap() - failed;
    wait_until(Duration::from_secs(15), "two tries disconnected", || failures() >= 2);
    assert_eq!(
        browser.evaluate("down.opens === 0 && down.source.readyState !== EventSource.CLOSED"),
        json!(true)
    );
    // Back: a retry gets in.
    php.run();
    browser.wait_until("down.opens === 1");
    server.publish("room1=back again");
    browser.wait_until("down.data.includes('back again')");
}

#[test]
fn each_http2_stream_is_put_to_the_backend_and_a_slow_one_is_reset_alone() {
    let backend = Backend::start(by_query);
    let server = hooked(&backend, &["--auth-timeout", "1"]);
    let mut client = crate::h2c::Client::connect(&server, &[]);
    client.get_with(1, "/sse?subscribe=room1&id=a", &[("cookie", "session=s1"), ("cookie", "theme=dark")]);
    client.get(3, "/sse?subscribe=refuse");
    client.get(5, "/sse?subscribe=slow");
    assert_eq!(client.until("stream 1's handshake", |f| f.is(Kind::Headers, 1)).status(), Some("200"));
    let refused = client.until("stream 3's refusal", |f| f.is(Kind::Headers, 3));
    assert_eq!(refused.status(), Some("403"));
    let reset = client.until("stream 5's reset", |f| f.is(Kind::RstStream, 5));
    assert_eq!(reset.code(), ErrorCode::RefusedStream as u32);
    server.publish("room1=still served");
    client.data_until(1, "data: still served");
    let asked = backend.asked();
    let first =
        asked.iter().find(|q| q.iter().any(|(n, v)| n == "x-original-uri" && v.contains("room1"))).unwrap();
    assert!(first.contains(&("cookie".into(), "session=s1; theme=dark".into())), "{first:?}");
}
