//! Accepting connections: the connection limits, and pausing when out of descriptors.
//!
//! Owns admission: a new connection (and an HTTP/2 stream past a connection's first) is
//! counted, checked against `--max-connections` and the per-IP limit, given its TLS session and its handshake deadline, or refused with `503`. It
//! does not read requests (`request`) or touch streaming clients.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Interest;
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use super::connection::{Connection, Peer};
use super::tls_session::TlsSession;
use super::{seconds, Shard};
use crate::config::Config;
use crate::http::Overload;
use crate::nonblocking::attempt;

/// How long accepting pauses when the process is out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How often a worker out of descriptors says so.
const ACCEPT_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Open connections per client IP, server-wide. Locked on accept and close only, and only
/// when `--max-connections-per-ip` is set: never on the publish path.
#[derive(Debug)]
pub struct PerIpLimit {
    limit: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl PerIpLimit {
    /// At most `limit` (at least 1) connections from one IP.
    pub fn new(limit: u32) -> Self {
        PerIpLimit { limit, open: Mutex::new(HashMap::new()) }
    }

    /// The limit `--max-connections-per-ip` sets, if it is set.
    pub fn from_config(config: &Config) -> Option<Self> {
        let limit = config.max_connections_per_ip?;
        Some(PerIpLimit::new(u32::try_from(limit).unwrap_or(u32::MAX)))
    }

    /// Counts one more connection from `ip`, unless it already has its limit.
    fn try_open(&self, ip: IpAddr) -> bool {
        let mut open = self.open.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return false;
        }
        *count += 1;
        true
    }

    pub(super) fn close(&self, ip: IpAddr) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// Accepting paused for want of descriptors: until when, and how the pause is reported (once
/// per interval, not per failed accept).
#[derive(Debug, Default)]
pub(super) struct AcceptPause {
    /// Accepting is paused until then.
    pub(super) until: Option<Instant>,
    /// Accepts that failed since the last report.
    failures: u64,
    /// When the next report may be written.
    report_due: Option<Instant>,
}

impl AcceptPause {
    /// Pauses from `now`; the failed accepts so far, when it is time to report them.
    fn start(&mut self, now: Instant) -> Option<u64> {
        self.until = Some(now + ACCEPT_PAUSE);
        self.failures += 1;
        if self.report_due.is_some_and(|due| due > now) {
            return None;
        }
        self.report_due = Some(now + ACCEPT_REPORT_INTERVAL);
        Some(std::mem::take(&mut self.failures))
    }

    /// Ends a pause that is over at `now`; whether one ended.
    fn end_if_over(&mut self, now: Instant) -> bool {
        let over = self.until.is_some_and(|until| until <= now);
        if over {
            self.until = None;
        }
        over
    }
}

impl Shard {
    pub(super) fn accept_all(&mut self) {
        if self.accept_pause.until.is_some() {
            return;
        }
        loop {
            match attempt(|| self.listener.accept()) {
                // `[::]` listeners see IPv4 clients as `::ffff:a.b.c.d`; show them as hasses did.
                Ok(Some((socket, peer))) => self.admit(socket, Peer::new(peer)),
                Ok(None) => return,
                Err(e) if is_out_of_descriptors(&e) => return self.pause_accepting(&e),
                // The client gave up before we took it (ECONNABORTED and the like): next one.
                Err(e) => debug!("Accept failed on worker {}: {e}", self.number),
            }
        }
    }

    /// Out of descriptors: leave new connections queued in the kernel for a moment rather than
    /// spin on a listener that stays readable; report it once per interval, not per attempt.
    fn pause_accepting(&mut self, error: &io::Error) {
        if let Some(failures) = self.accept_pause.start(Instant::now()) {
            warn!(
                "Accepting paused on worker {}: {error} ({failures} times since the last report)",
                self.number
            );
        }
    }

    /// Accepts again once a pause is over: the kernel will not signal connections that were
    /// already queued while paused.
    pub(super) fn resume_accepting(&mut self, now: Instant) {
        if self.accept_pause.end_if_over(now) {
            self.accept_all();
        }
    }

    /// Takes back what [`Shard::admit`] counted for a connection: it closed, or could not be kept.
    pub(super) fn unaccount(&self, peer: Peer) {
        self.state.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(limit) = &self.per_ip {
            limit.close(peer.ip());
        }
    }

    /// Counts one more connection (or HTTP/2 stream) from `peer` against the limits, unless
    /// that would go over one.
    pub(super) fn account(&self, peer: Peer) -> Result<(), Overload> {
        let open = self.state.open.fetch_add(1, Ordering::Relaxed) + 1;
        if self.settings.max_connections.is_some_and(|max| open > max) {
            self.state.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Overload::Connections);
        }
        if self.per_ip.as_ref().is_some_and(|limit| !limit.try_open(peer.ip())) {
            self.state.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Overload::ConnectionsPerIp);
        }
        self.state.peak.fetch_max(open, Ordering::Relaxed);
        Ok(())
    }

    fn admit(&mut self, socket: mio::net::TcpStream, peer: Peer) {
        if let Err(overload) = self.account(peer) {
            return self.refuse(socket, peer, overload);
        }
        self.counters.accepted += 1;
        let tls = match self.settings.tls.as_ref().map(|tls| TlsSession::new(tls.config())).transpose() {
            Ok(tls) => tls.map(Box::new),
            Err(e) => {
                self.unaccount(peer);
                return warn!("Cannot start TLS for {peer}: {e}");
            }
        };
        let Some(key) = self.connections.next_key() else {
            self.unaccount(peer);
            return warn!("Connection from {peer} refused: the worker has no connection key left");
        };
        let now = Instant::now();
        let serial = self.new_serial();
        info!("Connection accepted: {peer} <{}> worker {}", socket.as_raw_fd(), self.number);
        self.connections.insert(Connection::accepted(socket, tls, peer, serial, seconds(self.started, now)));
        let conn = &mut self.connections[key];
        if let Err(e) = self.poll.registry().register(&mut conn.socket, key.token(), Interest::READABLE) {
            return self.close(key, &format!("cannot watch socket: {e}"));
        }
        let at = self.deadline(now, self.settings.handshake_timeout);
        self.timers.handshake_by(at, key, serial);
        if self.settings.read_on_accept {
            // The request is there already: read it now rather than after another wait. No
            // event said whether the peer closed after sending it: read to the end.
            self.read(key, true);
        }
    }

    /// Answers 503 to a connection over a limit, and closes it.
    fn refuse(&mut self, mut socket: mio::net::TcpStream, peer: Peer, overload: Overload) {
        self.counters.refused += 1;
        info!("Connection refused: {peer} ({overload})");
        // Take what it sent first: closing with unread bytes would reset the connection, and
        // the client could lose the answer. A fresh socket takes this small answer whole.
        let _ = socket.read(&mut self.read_buf[..]);
        let _ = socket.write(self.settings.responses.unavailable(overload));
        let _ = socket.shutdown(std::net::Shutdown::Write);
    }
}

/// EMFILE, ENFILE and their kin: the kind of accept failure that repeats until something closes.
fn is_out_of_descriptors(error: &io::Error) -> bool {
    use nix::libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
    matches!(error.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_reported_once_per_interval_and_ends_when_over() {
        let mut pause = AcceptPause::default();
        let t0 = Instant::now();
        assert_eq!(pause.start(t0), Some(1), "the first failure is reported");
        assert_eq!(pause.start(t0 + Duration::from_millis(10)), None);
        assert_eq!(pause.start(t0 + Duration::from_millis(20)), None);
        assert!(!pause.end_if_over(t0 + Duration::from_millis(21)));
        assert!(pause.end_if_over(t0 + Duration::from_millis(20) + ACCEPT_PAUSE));
        assert!(!pause.end_if_over(t0 + Duration::from_secs(1)), "it ended already");
        assert_eq!(pause.start(t0 + ACCEPT_REPORT_INTERVAL), Some(3), "two unreported, and this one");
    }
}
