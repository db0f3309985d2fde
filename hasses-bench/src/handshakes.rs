//! `tls-handshakes`: what a TLS handshake costs a server, any server: hasses, or nginx
//! terminating TLS beside it (`benches/tls-nginx.sh`), read with the same client.
//!
//! Owns opening N connections one after the other, each a full handshake, a request for
//! `/` and its answer (the server's session tickets come before it), then with `--tls-resume`
//! N more, each resuming with a ticket of the first ones; and the server's CPU per handshake
//! for each. Connections are sequential: the figure is the server's CPU, not a rate.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rustls::ClientConnection;

use crate::sys::ServerProbe;
use crate::tls::TlsSetup;

/// How long one connection may take, handshake and answer.
const EACH: Duration = Duration::from_secs(5);

/// The server's CPU per handshake: full, and resumed when asked for.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeFigures {
    /// Full handshakes, µs of server CPU each.
    pub full_us: f64,
    /// Resumed ones (`--tls-resume`).
    pub resumed_us: Option<f64>,
}

/// Makes `count` connections to `addr` (the server being `pids`), then as many resuming them.
pub fn run(
    setup: &TlsSetup,
    addr: SocketAddr,
    count: u32,
    resume: bool,
    pids: &[u32],
) -> io::Result<HandshakeFigures> {
    let probe = ServerProbe::new(pids)?;
    let full_us = measure(&probe, count, || connect(setup, addr))?;
    let resumed_us = if resume {
        setup.resume_from_now();
        Some(measure(&probe, count, || connect(setup, addr))?)
    } else {
        None
    };
    Ok(HandshakeFigures { full_us, resumed_us })
}

/// The server's CPU per call of `one`, over `count` calls, in µs.
fn measure(probe: &ServerProbe, count: u32, mut one: impl FnMut() -> io::Result<()>) -> io::Result<f64> {
    let before = probe.cpu()?;
    for _ in 0..count {
        one()?;
    }
    Ok(probe.cpu()?.since(&before) * 1e6 / f64::from(count))
}

/// One connection: the handshake, `GET /` and its whole answer (to the close).
fn connect(setup: &TlsSetup, addr: SocketAddr) -> io::Result<()> {
    let mut socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(EACH))?;
    socket.set_nodelay(true)?;
    let mut session = setup.session(0).map_err(io::Error::other)?;
    while session.is_handshaking() {
        session.complete_io(&mut socket)?;
    }
    let mut tls = rustls::Stream::new(&mut session, &mut socket);
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    read_to_close(&mut session, &mut socket)
}

/// Reads the answer until the server closes (a close without `close_notify` is a close too).
fn read_to_close(session: &mut ClientConnection, socket: &mut TcpStream) -> io::Result<()> {
    let mut sink = [0u8; 4096];
    loop {
        match rustls::Stream::new(session, socket).read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// The figures, with the ratio of a resumed handshake to a full one.
pub fn table(figures: &HandshakeFigures) -> String {
    let mut out = format!("TLS handshakes   server CPU each\nfull           {:>10.1} µs\n", figures.full_us);
    if let Some(resumed) = figures.resumed_us {
        out +=
            &format!("resumed        {:>10.1} µs ({:.2}× a full one)\n", resumed, resumed / figures.full_us);
    }
    out
}
