//! `publish-http`: what a publish costs over the HTTP API beside the same over the control port.
//!
//! Owns sending `--publishes` events, pipelined, first down one control connection as lines,
//! then down one keep-alive HTTP connection as `POST /publish` requests, each to a token nobody
//! subscribes to (so delivery costs nothing and the figure is parsing and sequencing), and
//! measuring publishes per second and the server's CPU per publish for each. The HTTP answers
//! are read and counted on a thread of their own while the requests go out.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use crate::cli::Via;
use crate::sys::ServerProbe;

/// Publishes are written in batches of this many, one `write` each.
const BATCH: usize = 100;
/// The data of every publish: the bench's usual 64 bytes.
const DATA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// One way of publishing, measured.
#[derive(Debug, Clone, Copy)]
pub struct PublishFigures {
    /// Publishes per second, from the first write until the server has taken the last.
    pub per_sec: f64,
    /// The server's CPU per publish, µs.
    pub cpu_us: f64,
}

/// Runs the measurements `via` asks for; the server is `pids` (their CPU summed), its control
/// port `control`, its API `api`.
pub fn run(
    count: usize,
    via: Via,
    pids: &[u32],
    control: SocketAddr,
    api: SocketAddr,
) -> io::Result<(Option<PublishFigures>, Option<PublishFigures>)> {
    let probe = ServerProbe::new(pids)?;
    let line = format!("nobody={DATA}\n");
    let by_line = via
        .lines()
        .then(|| measure(&probe, count, || publish_lines(control, &line, count)))
        .transpose()
        .map_err(|e| context("control port", e))?;
    let body = format!("to=nobody&data={DATA}");
    let request = format!(
        "POST /publish HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let by_http = via
        .http()
        .then(|| measure(&probe, count, || publish_http(api, &request, count)))
        .transpose()
        .map_err(|e| context("HTTP API", e))?;
    Ok((by_line, by_http))
}

fn context(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Times `publish` and takes the server's CPU it cost.
fn measure(
    probe: &ServerProbe,
    count: usize,
    publish: impl FnOnce() -> io::Result<()>,
) -> io::Result<PublishFigures> {
    let (cpu, start) = (probe.cpu()?, Instant::now());
    publish()?;
    let secs = start.elapsed().as_secs_f64();
    let cpu_secs = probe.cpu()?.since(&cpu);
    Ok(PublishFigures { per_sec: count as f64 / secs, cpu_us: cpu_secs * 1e6 / count as f64 })
}

/// Writes `count` lines down one connection, then asks `tcpstatus` on it: its answer comes
/// after every line before it was sequenced.
fn publish_lines(control: SocketAddr, line: &str, count: usize) -> io::Result<()> {
    let mut stream = TcpStream::connect(control)?;
    write_batches(&mut stream, line, count)?;
    stream.write_all(b"tcpstatus\n")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    if !answer.contains("msgproccnt") {
        return Err(io::Error::other(format!("no tcpstatus answer: {answer:?}")));
    }
    Ok(())
}

/// Sends `count` requests down one keep-alive connection while a thread reads their answers;
/// returns once all `count` said 200.
fn publish_http(api: SocketAddr, request: &str, count: usize) -> io::Result<()> {
    let mut stream = TcpStream::connect(api)?;
    let reader = stream.try_clone()?;
    let answers = std::thread::spawn(move || count_ok_answers(reader, count));
    write_batches(&mut stream, request, count)?;
    let ok = answers.join().map_err(|_| io::Error::other("the answer reader panicked"))??;
    if ok < count {
        return Err(io::Error::other(format!("{ok} of {count} publishes answered 200")));
    }
    Ok(())
}

fn write_batches(stream: &mut TcpStream, one: &str, count: usize) -> io::Result<()> {
    let batch = one.repeat(BATCH);
    for _ in 0..count / BATCH {
        stream.write_all(batch.as_bytes())?;
    }
    stream.write_all(one.repeat(count % BATCH).as_bytes())
}

/// Reads `count` HTTP answers; how many were 200.
fn count_ok_answers(stream: TcpStream, count: usize) -> io::Result<usize> {
    let mut reader = BufReader::new(stream);
    let mut ok = 0;
    for _ in 0..count {
        let (status, _body) = read_answer(&mut reader)?;
        ok += usize::from(status.starts_with("HTTP/1.1 200"));
    }
    Ok(ok)
}

/// Reads one HTTP answer: its status line, then its head, then its `Content-Length` body.
pub fn read_answer(reader: &mut impl BufRead) -> io::Result<(String, Vec<u8>)> {
    let (mut status, mut length, mut line) = (String::new(), 0usize, String::new());
    if reader.read_line(&mut status)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = Vec::with_capacity(length);
    reader.by_ref().take(length as u64).read_to_end(&mut body)?;
    Ok((status, body))
}

/// The figures side by side, with the ratio the issue sets a target for when both were taken.
pub fn table(by_line: Option<&PublishFigures>, by_http: Option<&PublishFigures>) -> String {
    let mut table = String::from("publish over     publishes/s   server CPU/publish\n");
    for (name, figures) in [("control line", by_line), ("HTTP API    ", by_http)] {
        if let Some(figures) = figures {
            table += &format!("{name}   {:>12.0}   {:>10.2} µs\n", figures.per_sec, figures.cpu_us);
        }
    }
    if let (Some(by_line), Some(by_http)) = (by_line, by_http) {
        table += &format!(
            "HTTP / control: {:.2}× the server CPU per publish (target: at most 1.3×)\n",
            by_http.cpu_us / by_line.cpu_us
        );
    }
    table
}
