//! HTTPS (issue 3): rustls and curl clients stream events over TLS on every worker; the status,
//! tcpstatus and client list say so; bad clients (plain HTTP, garbage, a stalled handshake,
//! TLS 1.1) are closed and logged while the others stream on, plain HTTP after a plain `400`
//! that says to use HTTPS; bad certificate files stop the start with one line naming the
//! file; SIGHUP reloads the certificate for new connections; the legacy `-ssl` flags serve TLS;
//! the capacity benchmark runs over TLS; reconnecting clients resume their session (tickets,
//! and the TLS 1.2 cache), across a reload too, and the handshake counters say how each went.
//!
//! Certificates are made here with rcgen (ECDSA P-256, for `localhost` and `127.0.0.1`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rustls::client::{ClientSessionMemoryCache, Resumption, Tls12Resumption};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, StreamOwned, SupportedProtocolVersion,
};

use crate::common::{self, connect, read_to_eof, run_to_exit, Server, SseClient, TempFile, Transport, WAIT};

/// A self-signed certificate and its key, PEM, for `localhost` and `127.0.0.1`.
pub(crate) struct Identity {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Identity {
    pub(crate) fn new() -> Identity {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("generate a certificate");
        Identity {
            cert_pem: made.cert.pem(),
            key_pem: made.key_pair.serialize_pem(),
            der: made.cert.der().clone(),
        }
    }
}

/// The certificate and key files the server is given, removed when dropped.
pub(crate) struct Files {
    pub(crate) cert: TempFile,
    key: TempFile,
}

impl Files {
    pub(crate) fn new(identity: &Identity) -> Files {
        let files = Files { cert: TempFile::new("cert.pem"), key: TempFile::new("key.pem") };
        files.write(identity);
        files
    }

    /// Replaces both files with `identity`'s.
    fn write(&self, identity: &Identity) {
        std::fs::write(self.cert.path(), &identity.cert_pem).unwrap();
        std::fs::write(self.key.path(), &identity.key_pem).unwrap();
    }

    /// `--tls-cert CERT --tls-key KEY`.
    fn flags(&self) -> [&str; 4] {
        ["--tls-cert", self.cert.arg(), "--tls-key", self.key.arg()]
    }
}

/// A TLS server on free ports (two workers) with `extra` flags.
pub(crate) fn tls_server(files: &Files, extra: &[&str]) -> Server {
    let args: Vec<&str> = files.flags().into_iter().chain(extra.iter().copied()).collect();
    let server = Server::start(&args);
    server.log.wait_for_line(|l| l.starts_with("SSE listening on ") && l.ends_with(" (https)"), WAIT);
    server
}

/// A client configuration trusting `trusted` only, offering `versions` and ALPN `http/1.1`.
fn client_config(trusted: &[&Identity], versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for identity in trusted {
        roots.add(identity.der.clone()).expect("a usable trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("supported versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// TLS 1.3 and 1.2, trusting `identity` only.
fn trusting(identity: &Identity) -> Arc<ClientConfig> {
    client_config(&[identity], rustls::DEFAULT_VERSIONS)
}

/// A rustls client stream, read by the same checking SSE client as plain connections.
type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl Transport for TlsStream {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

type TlsClient = SseClient<TlsStream>;

impl SseClient<TlsStream> {
    /// Connects to 127.0.0.1:`port` and completes the TLS handshake (verifying the server as
    /// `127.0.0.1`); the error is what the handshake failed with.
    fn connect(port: u16, config: Arc<ClientConfig>) -> std::io::Result<TlsClient> {
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let conn = ClientConnection::new(config, name).expect("a client session");
        let mut stream = StreamOwned::new(conn, connect(port));
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(SseClient::over(stream))
    }

    /// Connects, sends `GET /sse?QUERY`, and asserts the `200` handshake.
    fn subscribe(port: u16, config: Arc<ClientConfig>, query: &str) -> TlsClient {
        let mut client = TlsClient::connect(port, config).expect("the TLS handshake");
        client.handshake(common::get_request(query).as_bytes());
        client
    }

    /// The local address (the server names the client by it).
    fn local(&self) -> std::net::SocketAddr {
        self.stream.sock.local_addr().unwrap()
    }
}

/// `curl -sSN --cacert CERT https://127.0.0.1:PORT/sse?QUERY`, its stdout lines on a channel;
/// killed when dropped.
struct Curl {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Curl {
    fn start(port: u16, cacert: &Path, query: &str) -> Curl {
        let mut child = Command::new("curl")
            .args(["-sSN", "--max-time", "30", "--cacert"])
            .arg(cacert)
            .arg(format!("https://127.0.0.1:{port}/sse?{query}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run curl ({e}): this test needs Debian's curl package (apt-get install curl)")
            });
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Curl { child, lines }
    }

    /// Waits for the stdout line `wanted`, skipping others.
    fn expect_line(&self, wanted: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == wanted => return,
                Ok(_) => {}
                Err(_) => panic!("curl did not print {wanted:?}"),
            }
        }
    }
}

impl Drop for Curl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the log line `TLS failed with PEER: …` and returns it.
fn tls_failure_logged(server: &Server, peer: std::net::SocketAddr) -> String {
    let prefix = format!("TLS failed with {peer}: ");
    server.log.wait_for_line(|l| l.starts_with(&prefix), WAIT)
}

/// Sends `bytes` on a new plain connection, then reads until the server closes; returns what
/// came back and the client's address.
fn send_and_wait_close(port: u16, bytes: &[u8]) -> (Vec<u8>, std::net::SocketAddr) {
    let mut stream = connect(port);
    let local = stream.local_addr().unwrap();
    stream.write_all(bytes).expect("send");
    let answer = read_to_eof(&mut stream, Vec::new(), WAIT).expect("the server closes the connection");
    (answer, local)
}

/// A ClientHello as a TLS 1.1 client sends it: record and hello version 3.2, no
/// supported_versions extension, CBC suites only; with `signature_algorithms` (a TLS 1.2
/// extension, which a client capped at 1.1 may still send) when `sigalgs`.
fn tls11_client_hello(sigalgs: bool) -> Vec<u8> {
    let mut hello = vec![0x03, 0x02];
    hello.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    hello.push(0); // no session id
    hello.extend([0x00, 0x06, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x2f]);
    hello.extend([0x01, 0x00]); // null compression only
                                // supported_groups (secp256r1) and ec_point_formats (uncompressed), as such clients send.
    let mut extensions =
        vec![0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, 0x00, 0x0b, 0x00, 0x02, 0x01, 0x00];
    if sigalgs {
        // ecdsa_secp256r1_sha256
        extensions.extend([0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
    }
    hello.extend((extensions.len() as u16).to_be_bytes());
    hello.extend(extensions);
    let mut handshake = vec![0x01];
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x02];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// The first flight a rustls client sends (its ClientHello, as a TLS record).
fn real_client_hello(identity: &Identity) -> Vec<u8> {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = ClientConnection::new(trusting(identity), name).unwrap();
    let mut bytes = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut bytes).unwrap();
    }
    bytes
}

#[test]
#[ignore = "needs curl: run by the README's test command"]
fn rustls_and_curl_clients_receive_events_on_every_worker() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &["--workers", "2"]);
    let config = trusting(&identity);
    // Clients until both workers hold some (the kernel spreads them by address and port).
    let mut clients = Vec::new();
    let workers_used = |server: &Server| -> std::collections::BTreeSet<u64> {
        let list = server.tcp_json("tcpclientlist");
        list["clients"].as_array().unwrap().iter().map(|c| c["worker"].as_u64().unwrap()).collect()
    };
    while clients.len() < 4 || (workers_used(&server).len() < 2 && clients.len() < 40) {
        let client = TlsClient::subscribe(server.sse_port, Arc::clone(&config), "subscribe=news");
        assert_eq!(client.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN http/1.1");
        clients.push(client);
    }
    assert_eq!(workers_used(&server).len(), 2, "TLS clients on both workers");
    let curl = Curl::start(server.sse_port, files.cert.path(), "subscribe=news");
    let expected = clients.len() as u64 + 1;
    let status = server.wait_json("tcpstatus", "sseconncli", expected);
    assert_eq!(status["sseconncli"], expected, "every client handshaked: {status}");

    server.publish("news=first over TLS");
    server.publish("news=second");
    for client in &mut clients {
        client.expect_data("first over TLS");
        client.expect_data("second");
    }
    curl.expect_line("data: first over TLS");
    curl.expect_line("data: second");
    assert_eq!(server.tcp_json("tcpstatus")["msgsendcnt"], 2 * expected);
}

#[test]
fn large_messages_to_a_client_that_reads_late_arrive_whole_and_in_order() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &["--workers", "1"]);
    let mut client = TlsClient::subscribe(server.sse_port, trusting(&identity), "subscribe=big");
    // 12 messages of 60 KiB while the client does not read: far more than TLS may hold for it,
    // so the frames wait in its outbox and go out record by record as it reads.
    let messages: Vec<String> = (0..12)
        .map(|i| format!("{i}:{}", char::from(b'a' + i as u8).to_string().repeat(60 * 1024)))
        .collect();
    for message in &messages {
        server.publish(&format!("big={message}"));
    }
    // Every frame is queued for it (a shard counts a delivery when it queues it) before it reads.
    let status = server.wait_json("tcpstatus", "msgsendcnt", 12);
    assert_eq!(status["msgsendcnt"], 12, "{status}");
    for message in &messages {
        client.expect_data(message);
    }
    assert_eq!(server.tcp_json("tcpstatus")["droppedslowcli"], 0);
}

#[test]
fn status_tcpstatus_and_client_list_show_tls() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &[]);
    let status = server.status_block();
    let mode = status.iter().position(|l| l == "Mode: SSL encrypted (https)").expect("the mode line");
    assert_eq!(status[mode + 1], format!("SSL Cert key file: {}", files.cert.arg()));
    assert_eq!(status[mode + 2], format!("SSL Prvt key file: {}", files.key.arg()));
    assert_eq!(server.tcp_json("tcpstatus")["mode"], "SSL encrypted (https)");

    let mut tls13 = TlsClient::subscribe(server.sse_port, trusting(&identity), "subscribe=a&id=one");
    let tls12_config = client_config(&[&identity], &[&rustls::version::TLS12]);
    let mut tls12 = TlsClient::subscribe(server.sse_port, tls12_config, "subscribe=b&id=two");
    // A connection that has not finished its TLS handshake is listed in state SSL.
    let mut stalled = connect(server.sse_port);
    let hello = real_client_hello(&identity);
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();
    let stalled_peer = stalled.local_addr().unwrap();
    assert_eq!(server.wait_json("tcpstatus", "allconncli", 3)["allconncli"], 3);

    let list = server.client_list();
    let entry = |peer: std::net::SocketAddr| -> Vec<String> {
        let at = list
            .iter()
            .position(|l| l.contains(&format!(" info: {peer} ")))
            .unwrap_or_else(|| panic!("{peer} in the list: {list:#?}"));
        list[at..].iter().take_while(|l| !l.starts_with("  Subscribes:")).cloned().collect()
    };
    let one = entry(tls13.local());
    assert!(one[0].contains(" S:SSE ") && one[0].ends_with(" SSL:Yes"), "{one:?}");
    // The server's order of suites: AES-128-GCM with SHA-256 first (src/tls.rs, `provider`).
    assert!(one.contains(&"  SSL: TLSv1_3 TLS13_AES_128_GCM_SHA256".to_string()), "{one:?}");
    let two = entry(tls12.local());
    assert!(two[0].ends_with(" SSL:Yes"), "{two:?}");
    assert!(
        two.iter()
            .any(|l| l.starts_with("  SSL: TLSv1_2 TLS_ECDHE_ECDSA_WITH_") && l.ends_with("_GCM_SHA384")),
        "{two:?}"
    );
    let three = entry(stalled_peer);
    assert!(three[0].contains(" S:SSL ") && three[0].ends_with(" SSL:Yes"), "{three:?}");
    assert!(three.contains(&"  SSL: - -".to_string()), "{three:?}");

    let rows = server.tcp_json("tcpclientlist");
    let row = |id: &str| rows["clients"].as_array().unwrap().iter().find(|c| c["id"] == id).cloned().unwrap();
    assert_eq!(row("one")["tls"], "TLSv1_3 TLS13_AES_128_GCM_SHA256");
    assert!(row("two")["tls"].as_str().unwrap().starts_with("TLSv1_2 "), "{rows}");

    server.publish("a=to one");
    server.publish("b=to two");
    tls13.expect_data("to one");
    tls12.expect_data("to two");
}

#[test]
fn plain_http_garbage_and_tls11_are_closed_and_logged_while_others_stream() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &[]);
    let mut good = TlsClient::subscribe(server.sse_port, trusting(&identity), "subscribe=a");

    // Plain HTTP gets a plain answer (`plain_http_on_the_https_port_gets_a_plain_400_saying_so`).
    let (answer, _) = send_and_wait_close(server.sse_port, common::get_request("subscribe=a").as_bytes());
    assert!(answer.starts_with(b"HTTP/1.1 400 Bad Request\r\n"), "{}", String::from_utf8_lossy(&answer));

    // Pseudo-random bytes (a fixed seed, so a failure repeats). They start with 0xea, which
    // may start TLS (a hello in the SSLv2 format): rustls refuses them.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let garbage: Vec<u8> = (0..600)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect();
    let (_, peer) = send_and_wait_close(server.sse_port, &garbage);
    tls_failure_logged(&server, peer);

    // TLS 1.1 clients: one as OpenSSL's (no signature_algorithms), one that gets as far as the
    // version check. Each gets a fatal alert.
    for (sigalgs, why) in [(false, "SignatureAlgorithmsExtensionRequired"), (true, "Tls12NotOffered")] {
        let (answer, peer) = send_and_wait_close(server.sse_port, &tls11_client_hello(sigalgs));
        assert!(answer.len() >= 7 && answer[0] == 0x15 && answer[5] == 2, "a fatal alert: {answer:?}");
        let line = tls_failure_logged(&server, peer);
        assert!(line.ends_with(&format!("peer is incompatible: {why}")), "{line}");
    }

    // Every failure was a TLS one, none a timeout; the good client never noticed.
    assert_eq!(server.tcp_json("tcpstatus")["allconncli"], 1);
    server.publish("a=still here");
    good.expect_data("still here");
}

/// The body of the `400` plain HTTP gets on the HTTPS port, for a request to `host`.
fn use_https_body(host: &str) -> String {
    format!("this port speaks HTTPS: use https://{host}/sse\n")
}

/// Asserts the plain `400` for plain HTTP on the HTTPS port, saying `body`.
fn assert_use_https(answer: &[u8], body: &str) {
    let text = String::from_utf8_lossy(answer);
    let (head, got) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("an HTTP answer: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    let length = format!("Content-Length: {}", body.len());
    for header in ["Content-Type: text/plain; charset=utf-8", "Connection: close", &length] {
        assert!(head.split("\r\n").any(|line| line == header), "{header} in {head}");
    }
    assert_eq!(got, body);
}

#[test]
fn plain_http_on_the_https_port_gets_a_plain_400_saying_so() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &[]);
    let port = server.sse_port;
    let mut good = TlsClient::subscribe(port, trusting(&identity), "subscribe=a");

    // A request with `Host: 127.0.0.1` (no port): the URL names that host as it was asked for.
    let (answer, peer) = send_and_wait_close(port, common::get_request("subscribe=a").as_bytes());
    assert_use_https(&answer, &use_https_body("127.0.0.1"));
    let why = use_https_body("127.0.0.1");
    let logged = format!("Request refused from {peer}: 400 {}", why.trim_end());
    server.log.wait_for_line(|l| l == logged, WAIT);
    // No Host: the address the client connected to.
    let (answer, _) = send_and_wait_close(port, b"GET /sse?subscribe=a HTTP/1.1\r\n\r\n");
    assert_use_https(&answer, &use_https_body(&format!("127.0.0.1:{port}")));
    // Plain text that is no HTTP at all is told the same.
    let (answer, _) = send_and_wait_close(port, b"hello\n");
    assert!(answer.starts_with(b"HTTP/1.1 400 Bad Request\r\n"), "{}", String::from_utf8_lossy(&answer));

    // Real TLS clients never noticed, and new ones still come in.
    let mut late = TlsClient::subscribe(port, trusting(&identity), "subscribe=a");
    server.publish("a=still TLS");
    good.expect_data("still TLS");
    late.expect_data("still TLS");
    assert_eq!(server.tcp_json("tcpstatus")["allconncli"], 2);
}

#[test]
#[ignore = "needs curl: run by the README's test command"]
fn curl_with_an_http_url_for_the_https_port_is_told_to_use_https() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &[]);
    let port = server.sse_port;
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-i"])
        .arg(format!("http://127.0.0.1:{port}/sse?subscribe=a"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run curl ({e}): this test needs Debian's curl package (apt-get install curl)")
        });
    assert!(output.status.success(), "curl: {}", String::from_utf8_lossy(&output.stderr));
    assert_use_https(&output.stdout, &use_https_body(&format!("127.0.0.1:{port}")));
    let mut client = TlsClient::subscribe(port, trusting(&identity), "subscribe=a");
    server.publish("a=after curl");
    client.expect_data("after curl");
}

#[test]
#[ignore = "needs openssl: run by the README's test command"]
fn openssls_tls11_client_is_refused_while_others_stream() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &[]);
    let mut good = TlsClient::subscribe(server.sse_port, trusting(&identity), "subscribe=a");
    let output = Command::new("openssl")
        .args(["s_client", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-connect"])
        .arg(format!("127.0.0.1:{}", server.sse_port))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): this test needs Debian's openssl package (apt-get install openssl)")
        });
    assert!(!output.status.success(), "openssl -tls1_1 must fail");
    // An openssl built without TLS 1.1 refuses before it connects.
    let said = String::from_utf8_lossy(&output.stderr);
    if !said.contains("no protocols available") {
        server.log.wait_for_line(|l| l.contains("TLS failed with "), WAIT);
    }
    assert_eq!(server.tcp_json("tcpstatus")["allconncli"], 1, "the good client never noticed");
    server.publish("a=still here");
    good.expect_data("still here");
}

/// `config` with its own session store, resuming TLS 1.2 sessions as `tls12` says.
fn resuming(config: Arc<ClientConfig>, tls12: Tls12Resumption) -> Arc<ClientConfig> {
    let mut config = (*config).clone();
    config.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(8))).tls12_resumption(tls12);
    Arc::new(config)
}

/// Subscribes (by then the session's tickets have arrived: they come before the response) and
/// says how its handshake went.
fn handshake_kind(port: u16, config: &Arc<ClientConfig>) -> HandshakeKind {
    let client = TlsClient::subscribe(port, Arc::clone(config), "subscribe=a");
    client.stream.conn.handshake_kind().expect("a finished handshake")
}

#[test]
fn rustls_clients_resume_with_tickets_and_the_tls12_cache_across_a_reload() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &[]);
    let port = server.sse_port;
    let tls13 = resuming(trusting(&identity), Tls12Resumption::SessionIdOrTickets);
    let tls12_ticket = client_config(&[&identity], &[&rustls::version::TLS12]);
    let tls12_ticket = resuming(tls12_ticket, Tls12Resumption::SessionIdOrTickets);
    let tls12_id = client_config(&[&identity], &[&rustls::version::TLS12]);
    let tls12_id = resuming(tls12_id, Tls12Resumption::SessionIdOnly);
    for config in [&tls13, &tls12_ticket, &tls12_id] {
        assert_eq!(handshake_kind(port, config), HandshakeKind::Full);
        assert_eq!(handshake_kind(port, config), HandshakeKind::Resumed);
    }
    // The same certificate read again: tickets and cached sessions issued before still resume.
    let start = server.log.len();
    server.signal(Signal::SIGHUP);
    server.log.wait_for_line_from(start, |l| l == "TLS certificate and key reloaded", WAIT);
    for config in [&tls13, &tls12_ticket, &tls12_id] {
        assert_eq!(handshake_kind(port, config), HandshakeKind::Resumed);
    }
    let status = server.wait_json("tcpstatus", "tlsresumedhandshakes", 6);
    assert_eq!(status["tlsfullhandshakes"], 3, "{status}");
    assert!(server.status_block().contains(&"TLS handshakes: 3 full, 6 resumed".to_string()));
}

/// One TLS 1.3 ticket a handshake: each resumption brings the ticket for the next, and a client
/// holds one for every connection it made, so that as many as it had open can resume at once.
#[test]
fn each_tls13_handshake_leaves_one_ticket_for_the_next_resumption() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &[]);
    let port = server.sse_port;
    let config = resuming(trusting(&identity), Tls12Resumption::SessionIdOrTickets);
    assert_eq!(handshake_kind(port, &config), HandshakeKind::Full);
    for _ in 0..3 {
        assert_eq!(handshake_kind(port, &config), HandshakeKind::Resumed);
    }
    // Two handshakes, the second before the first's new ticket is read; then the requests.
    let kinds = |config: &Arc<ClientConfig>| {
        let connect = || TlsClient::connect(port, Arc::clone(config)).expect("the TLS handshake");
        let mut clients = [connect(), connect()];
        let kinds = clients.each_ref().map(|client| client.stream.conn.handshake_kind().expect("finished"));
        for client in &mut clients {
            client.handshake(common::get_request("subscribe=a").as_bytes());
        }
        kinds
    };
    // Two at once with the one ticket held: one resumes; then each left a ticket.
    assert_eq!(kinds(&config), [HandshakeKind::Resumed, HandshakeKind::Full]);
    assert_eq!(kinds(&config), [HandshakeKind::Resumed, HandshakeKind::Resumed]);
}

/// `openssl s_client` asking `HEAD /sse` (answered, then closed: by then it has the session's
/// tickets), saving its session to `session` or resuming the one saved there; its output.
fn openssl_session(port: u16, version: &str, session: &TempFile, save: bool) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", version, "-ign_eof", "-connect", &format!("127.0.0.1:{port}")])
        .args([if save { "-sess_out" } else { "-sess_in" }, session.arg()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): this test needs Debian's openssl package (apt-get install openssl)")
        });
    child.stdin.take().unwrap().write_all(b"HEAD /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
#[ignore = "needs openssl: run by the README's test command"]
fn openssl_resumes_its_session_over_tls13_and_tls12() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &[]);
    for (version, reused) in [("-tls1_3", "Reused, TLSv1.3"), ("-tls1_2", "Reused, TLSv1.2")] {
        let session = TempFile::new("session.pem");
        let first = openssl_session(server.sse_port, version, &session, true);
        assert!(first.contains("New, TLSv1.") && first.contains("HTTP/1.1 200 "), "{first}");
        let again = openssl_session(server.sse_port, version, &session, false);
        assert!(again.contains(reused), "{version}: {again}");
    }
    let status = server.wait_json("tcpstatus", "tlsresumedhandshakes", 2);
    assert_eq!(status["tlsfullhandshakes"], 2, "{status}");
}

#[test]
fn a_stalled_handshake_is_closed_at_the_handshake_timeout() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &["--handshake-timeout", "1"]);
    let mut good = TlsClient::subscribe(server.sse_port, trusting(&identity), "subscribe=a");
    let hello = real_client_hello(&identity);
    let mut stalled = connect(server.sse_port);
    let peer = stalled.local_addr().unwrap();
    let started = Instant::now();
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();
    // Within the timeout and a few seconds more a loaded machine may take; a deadline that only
    // fires at the shard's next event (the default heartbeat is 30 s away) would let it pass.
    read_to_eof(&mut stalled, Vec::new(), Duration::from_secs(1) + WAIT)
        .expect("closed at the handshake timeout");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "not before the timeout: {waited:?}");
    server.log.wait_for_line(
        |l| l.starts_with(&format!("Connection closed: {peer} ")) && l.ends_with("(handshake timeout)"),
        WAIT,
    );
    // The established client outlived its own handshake timeout and streams on.
    std::thread::sleep(Duration::from_millis(200));
    server.publish("a=after the timeout");
    good.expect_data("after the timeout");
}

#[test]
fn bad_certificate_files_stop_the_start_with_one_line_naming_the_file() {
    let identity = Identity::new();
    let other = Identity::new();
    let files = Files::new(&identity);
    let wrong_key = TempFile::new("wrong-key.pem");
    std::fs::write(wrong_key.path(), &other.key_pem).unwrap();
    let missing = TempFile::new("missing.pem");
    let directory = std::env::temp_dir();
    let directory = directory.to_str().unwrap();
    let (cert, key) = (files.cert.arg(), files.key.arg());
    let cases: [(&str, &str, &str, &str); 5] = [
        (missing.arg(), key, missing.arg(), "cannot read"),
        (directory, key, directory, "cannot read"),
        (key, key, key, "no certificate in it"),
        (cert, cert, cert, "no private key in it"),
        (cert, wrong_key.arg(), wrong_key.arg(), "does not match the certificate"),
    ];
    for (cert, key, named, problem) in cases {
        let args = ["--port", "0", "--control-port", "0", "--tls-cert", cert, "--tls-key", key];
        let (status, out, err) = run_to_exit(&args);
        assert_eq!(status.code(), Some(1), "exit 1 for {args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line for {args:?}: {err:?}");
        let prefix = format!("hasses: TLS: {named}: ");
        assert!(
            err.starts_with(&prefix) && err.contains(problem),
            "{err:?} should start {prefix:?} and say {problem:?}"
        );
        assert!(out.is_empty(), "nothing on stdout: {out:?}");
    }
    // The legacy flags are refused alike (-nodaemon logs to stdout, the refusal still goes to stderr).
    let (c, k) = (format!("-cert-file={cert}"), format!("-privatekey-file={}", wrong_key.arg()));
    let (status, _, err) = run_to_exit(&["-p=0", "-murl=/sse", "-cp=0", "-nodaemon", "-ssl", &c, &k]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.starts_with(&format!("hasses: TLS: {}: ", wrong_key.arg())), "{err:?}");
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_only() {
    let (a, b) = (Identity::new(), Identity::new());
    let files = Files::new(&a);
    let server = tls_server(&files, &[]);
    let mut first = TlsClient::subscribe(server.sse_port, trusting(&a), "subscribe=news");

    files.write(&b);
    let start = server.log.len();
    server.signal(Signal::SIGHUP);
    server.log.wait_for_line_from(start, |l| l == "TLS certificate and key reloaded", WAIT);

    // New connections get B: a client trusting only A fails, one trusting only B streams.
    let refused = TlsClient::connect(server.sse_port, trusting(&a)).err().expect("A is no longer served");
    assert!(
        refused.to_string().contains("UnknownIssuer") || refused.to_string().contains("certificate"),
        "{refused}"
    );
    let mut second = TlsClient::subscribe(server.sse_port, trusting(&b), "subscribe=news");
    assert_eq!(
        second.stream.conn.peer_certificates().unwrap()[0],
        b.der,
        "the new connection is served the new certificate"
    );
    server.publish("news=after the reload");
    second.expect_data("after the reload");
    first.expect_data("after the reload");

    // A broken file: the reload fails, says why, and B stays.
    std::fs::write(files.cert.path(), "not a certificate\n").unwrap();
    let start = server.log.len();
    server.signal(Signal::SIGHUP);
    let (_, line) = server.log.wait_for_line_from(start, |l| l.starts_with("TLS reload failed"), WAIT);
    assert!(line.contains(files.cert.arg()) && line.contains("no certificate"), "{line}");
    let mut third = TlsClient::subscribe(server.sse_port, trusting(&b), "subscribe=news");
    server.publish("news=after the failed reload");
    for client in [&mut first, &mut second, &mut third] {
        client.expect_data("after the failed reload");
    }
}

#[test]
fn legacy_ssl_flags_serve_tls() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let args = [
        "-p=0".into(),
        "-murl=/sse".into(),
        "-cp=0".into(),
        "-nodaemon".into(),
        "-ssl".into(),
        format!("-cert-file={}", files.cert.arg()),
        format!("-privatekey-file={}", files.key.arg()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_exact(&args);
    let sse = server.sse_port;
    server.log.wait_for_line(|l| l == format!("SSE listening on [::]:{sse} path /sse (https)"), WAIT);
    let mut client = TlsClient::subscribe(sse, trusting(&identity), "subscribe=legacy");
    server.publish("legacy=over -ssl");
    client.expect_data("over -ssl");
    // Answers other than the stream come whole over TLS, and then the connection closes.
    let mut other = TlsClient::connect(sse, trusting(&identity)).unwrap();
    other.stream.write_all(b"GET /elsewhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let head = other.read_head(WAIT).expect("an answer");
    assert!(head.status_line.starts_with("HTTP/1.1 404 "), "{head:?}");
    assert!(other.wait_closed(WAIT), "closed after the answer");
    // Plain HTTP is not served on that port: it is told so.
    let (answer, _) = send_and_wait_close(sse, common::get_request("subscribe=legacy").as_bytes());
    assert!(answer.starts_with(b"HTTP/1.1 400 Bad Request\r\n"), "{}", String::from_utf8_lossy(&answer));
}

#[test]
fn the_capacity_benchmark_runs_over_tls() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &["--log-level", "0"]);
    let json = TempFile::new("bench.jsonl");
    let out = Command::new(common::bench_tool::path())
        .args(["all", "-n", "40", "--quiet", "--tls", "--tls-resume", "--ca", files.cert.arg()])
        .args(["--sse", &format!("127.0.0.1:{}", server.sse_port)])
        .args(["--control", &format!("127.0.0.1:{}", server.cport())])
        .args(["--server-pid", &server.pid().to_string()])
        .args(["--messages", "3", "--interval-ms", "20", "--burst", "10", "--targeted", "400"])
        .args(["--idle-secs", "0.2", "--timeout", "30", "--stall-secs", "5", "--threads", "2"])
        .args(["--json-out", json.arg()])
        .output()
        .expect("run hasses-bench");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the bench over TLS failed:\n{report}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(json.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "{report}");
    let (connect, reconnect) = (&lines[0], &lines[1]);
    assert_eq!(connect["tls"], true, "{connect}");
    assert_eq!(connect["tls_handshakes"], 40, "{connect}");
    assert_eq!(connect["tls_resumed_handshakes"], 0, "{connect}");
    assert!(connect["tls_handshakes_per_s"].as_f64().unwrap() > 0.0, "{connect}");
    assert!(connect["server_cpu_us_per_tls_handshake"].as_f64().unwrap() > 0.0, "{connect}");
    // --tls-resume: every connection closed and opened again, resuming its session.
    assert_eq!(reconnect["scenario"], "reconnect", "{reconnect}");
    assert_eq!(reconnect["tls_resumed_handshakes"], 40, "{reconnect}");
    let status = server.tcp_json("tcpstatus");
    assert_eq!(
        (status["tlsfullhandshakes"].clone(), status["tlsresumedhandshakes"].clone()),
        (40.into(), 40.into())
    );
    assert!(lines[2]["rss_bytes_per_tls_connection"].is_number(), "{}", lines[2]);
    for line in &lines {
        assert_eq!(line["ok"], true, "{line}");
        assert_eq!(line["lost"], 0, "{line}");
    }
    assert!(report.contains("TLS hs/s"), "{report}");
}

/// `hasses-bench tls-handshakes` makes its full handshakes, then resumes each, one after the
/// other, and the server counts them as such.
#[test]
fn the_handshake_benchmark_makes_full_then_resumed_handshakes() {
    let identity = Identity::new();
    let files = Files::new(&identity);
    let server = tls_server(&files, &["--log-level", "0"]);
    let out = Command::new(common::bench_tool::path())
        .args(["tls-handshakes", "-n", "30", "--tls", "--tls-resume", "--ca", files.cert.arg()])
        .args(["--sse", &format!("127.0.0.1:{}", server.sse_port)])
        .args(["--server-pid", &server.pid().to_string()])
        .output()
        .expect("run hasses-bench");
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("full") && report.contains("resumed"), "{report}");
    let status = server.tcp_json("tcpstatus");
    assert_eq!(
        (status["tlsfullhandshakes"].clone(), status["tlsresumedhandshakes"].clone()),
        (30.into(), 30.into())
    );
}
