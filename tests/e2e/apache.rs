//! Apache httpd (Debian package `apache2`) in front of hasses, configured with the shipped
//! `deploy/apache/hasses.conf`: events pass through at once (also where the site compresses
//! event streams), and heartbeats keep an idle stream open past the proxy's timeout.
//!
//! httpd runs in the foreground as this user (its children as `nobody` when that is root), on a
//! free loopback port, with every file in a temporary directory; the shipped `<Location>` is
//! included as it is, but for the upstream port and a `timeout=` of 2 s.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::Server;
use crate::programs::{find_program, repo_file, settings, End, EventStream, Item, Process, TempDir};

/// The shipped configuration's file.
const SHIPPED: &str = "deploy/apache/hasses.conf";
/// Where Debian's apache2 keeps its modules.
const MODULES: &str = "/usr/lib/apache2/modules";
/// The proxy timeout the tests give Apache instead of the shipped one.
const TIMEOUT_SECS: u64 = 2;
/// How quickly an event must come through the proxy.
const PROMPT: Duration = Duration::from_millis(1000);

/// A running httpd and the directory that holds its files.
struct Apache {
    port: u16,
    process: Process,
    _dir: TempDir,
}

impl Apache {
    /// Starts httpd with the shipped `<Location>` for hasses on `upstream_port`, plus `extra`
    /// server-wide directives.
    fn start(upstream_port: u16, extra: &str) -> Apache {
        let httpd = find_program("apache2", "apache2");
        for module in ["mod_mpm_event.so", "mod_proxy_http.so"] {
            assert!(
                Path::new(MODULES).join(module).exists(),
                "{MODULES}/{module} is missing: install the Debian package `apache2`"
            );
        }
        let user = if nix::unistd::geteuid().is_root() { "User nobody\nGroup nogroup\n" } else { "" };
        let (process, port, dir) = Process::start_listening("apache2", |dir, port| {
            let location = dir.write("hasses.conf", &shipped_location(upstream_port));
            let d = dir.path().display();
            let conf = format!(
                "ServerRoot {d}\nServerName 127.0.0.1\nListen 127.0.0.1:{port}\n\
                 PidFile {d}/httpd.pid\nErrorLog {d}/error.log\nLogLevel info\n\
                 Mutex file:{d} default\nDefaultRuntimeDir {d}\n{user}\
                 LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\n\
                 LoadModule authz_core_module {MODULES}/mod_authz_core.so\n\
                 LoadModule env_module {MODULES}/mod_env.so\n\
                 LoadModule filter_module {MODULES}/mod_filter.so\n\
                 LoadModule deflate_module {MODULES}/mod_deflate.so\n\
                 LoadModule proxy_module {MODULES}/mod_proxy.so\n\
                 LoadModule proxy_http_module {MODULES}/mod_proxy_http.so\n\
                 {extra}\n\
                 Include {}\n",
                location.display()
            );
            let conf = dir.write("httpd.conf", &conf);
            let mut command = Command::new(&httpd);
            command.arg("-f").arg(&conf).arg("-DFOREGROUND");
            command
        });
        Apache { port, process, _dir: dir }
    }

    /// Opens `GET /sse?QUERY` through httpd and asserts the event-stream answer.
    fn subscribe(&mut self, query: &str, extra_headers: &str) -> EventStream {
        EventStream::through(&self.process, self.port, query, extra_headers)
    }
}

/// The shipped `<Location>`, for hasses on `upstream_port` and with a short timeout.
fn shipped_location(upstream_port: u16) -> String {
    let text = repo_file(SHIPPED);
    let proxy_pass: Vec<&str> = settings(&text).filter(|line| line.starts_with("ProxyPass ")).collect();
    assert_eq!(proxy_pass.len(), 1, "{SHIPPED} has one ProxyPass");
    assert!(proxy_pass[0].contains(" timeout=90"), "{SHIPPED}: ProxyPass sets timeout=90");
    assert!(text.contains("127.0.0.1:8080"), "{SHIPPED} proxies to hasses on 127.0.0.1:8080");
    text.replace(" timeout=90", &format!(" timeout={TIMEOUT_SECS}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{upstream_port}"))
}

/// The next event's data through `apache`, skipping heartbeats.
fn expect_event(stream: &mut EventStream, apache: &Apache, server: &Server) -> String {
    stream
        .expect_event(PROMPT, || {
            format!("apache2:\n{}\nhasses:\n{}", apache.process.output(), server.log.dump())
        })
        .1
}

#[test]
#[ignore = "needs apache2: run by the README's test command"]
fn events_pass_through_at_once_uncompressed() {
    let server = Server::start(&["--heartbeat", "0"]);
    let mut apache = Apache::start(server.sse_port, "AddOutputFilterByType DEFLATE text/event-stream");
    let mut stream = apache.subscribe("subscribe=news", "Accept-Encoding: gzip\r\n");
    assert_eq!(stream.header("content-encoding"), None, "the stream is not compressed");
    for n in 0..5 {
        let sent = Instant::now();
        server.publish(&format!("news=event {n}"));
        assert_eq!(expect_event(&mut stream, &apache, &server), format!("event {n}"));
        assert!(sent.elapsed() < PROMPT, "event {n} took {:?}", sent.elapsed());
    }
}

#[test]
#[ignore = "needs apache2: run by the README's test command"]
fn heartbeats_keep_an_idle_stream_open_past_the_timeout() {
    let server = Server::start(&["--heartbeat", "0.5"]);
    let mut apache = Apache::start(server.sse_port, "");
    let mut stream = apache.subscribe("subscribe=quiet", "");
    let deadline = Instant::now() + Duration::from_secs(TIMEOUT_SECS) + Duration::from_millis(1500);
    let mut comments = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match stream.next_item(left) {
            Ok(Item::Comment(_)) => comments += 1,
            Ok(item) => panic!("nothing was published, yet {item:?} arrived"),
            Err(End::Timeout) => break,
            Err(End::Closed) => panic!("apache2 closed the idle stream\n{}", apache.process.output()),
        }
    }
    assert!(comments >= 4, "a heartbeat every 0.5 s, got {comments}");
    server.publish("quiet=still here");
    assert_eq!(expect_event(&mut stream, &apache, &server), "still here");
}

#[test]
#[ignore = "needs apache2: run by the README's test command"]
fn without_heartbeats_apache_closes_an_idle_stream() {
    // The other side of the test above: the shortened timeout is really in force.
    let server = Server::start(&["--heartbeat", "0"]);
    let mut apache = Apache::start(server.sse_port, "");
    let mut stream = apache.subscribe("subscribe=quiet", "");
    let end = stream.next_item(Duration::from_secs(TIMEOUT_SECS + 3));
    assert_eq!(end, Err(End::Closed), "apache2 ends an idle stream after its timeout");
}
