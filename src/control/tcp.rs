//! The TCP control port: publishers' connections, their auth, and the answers they get.
//!
//! Owns accepting control connections, reading them into the shared line framing, the `auth`
//! gate (`--control-secret`, compared in constant time), and writing answers back: `ERR
//! unauthorized`, and the admin path's JSON, which arrives on a channel since the admin thread
//! answers questions. What a command means is the control thread's business, not this file's.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};

use super::command::auth_secret;
use super::lines::Piece;
use super::replies::Replies;
use super::table::Key;
use super::{watch, write_out, Control, Input, Source, Sources};
use crate::admin::{AnswerTo, Reply};
use crate::api::Response;
use crate::event::{Asker, PublisherKey, ReceiptTo};
use crate::nonblocking::attempt;

/// The answer to any line but a right `auth` on a connection that must authenticate first.
const UNAUTHORIZED: &[u8] = b"ERR unauthorized\n";

/// A TCP control connection.
pub(super) struct Publisher {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    /// Tells it from a later connection given the same slab key, for answers on their way.
    pub(super) serial: u64,
    pub(super) input: Input,
    /// Answers not yet written, and places for those to come (from the admin path, or a
    /// cluster's receipts): it is not closed before they are written.
    pub(super) replies: Replies,
    /// Every publish is answered (`ack on`).
    pub(super) acks: bool,
    /// No more input is taken (the peer finished sending, or it was refused): close once the
    /// replies are out.
    pub(super) done: bool,
    /// It may give commands: it sent the right `auth` line, or no secret is set.
    pub(super) authorized: bool,
    pub(super) registered: Interest,
}

impl Sources {
    /// Takes in every waiting control connection; with a secret (`needs_auth`) each must send
    /// `auth` first.
    pub(super) fn accept_publishers(&mut self, separator: u8, needs_auth: bool) {
        let Some(listener) = &self.listener else { return };
        loop {
            match attempt(|| listener.accept()) {
                Ok(Some((mut stream, peer))) => {
                    let registered = Interest::READABLE;
                    let token = self.publishers.next_key().token();
                    if let Err(e) = self.poll.registry().register(&mut stream, token, registered) {
                        warn!("Cannot watch control connection from {peer}: {e}");
                        continue;
                    }
                    debug!("Control connection from {peer}");
                    self.next_serial += 1;
                    self.publishers.insert(Publisher {
                        stream,
                        peer,
                        serial: self.next_serial,
                        input: Input::new(separator),
                        replies: Replies::default(),
                        acks: false,
                        done: false,
                        authorized: !needs_auth,
                        registered,
                    });
                }
                Ok(None) => return,
                Err(e) => return warn!("Control accept failed: {e}"),
            }
        }
    }

    /// Writes pending replies; closes a finished connection once they are out.
    pub(super) fn write_publisher(&mut self, key: PublisherKey) {
        let publisher = &mut self.publishers[key];
        if !write_out(&mut publisher.stream, publisher.replies.out()) {
            publisher.done = true;
        }
        if publisher.done && publisher.replies.is_empty() && !publisher.replies.awaiting() {
            debug!("Control connection from {} closed", publisher.peer);
            self.publishers.remove(key);
            return;
        }
        let token = key.token();
        let ready = publisher.replies.out();
        watch(self.poll.registry(), &mut publisher.stream, token, &mut publisher.registered, ready);
    }
}

impl Control {
    /// Queues the admin path's answers, and the cluster's receipts, on the connections that
    /// asked for them.
    pub(super) fn take_replies(&mut self) {
        while let Ok(reply) = self.admin.replies.try_recv() {
            self.reply(reply);
        }
        let receipts: Vec<_> = self.sequencer.receipts().collect();
        for (to, receipt) in receipts {
            match to {
                ReceiptTo::Line(to, place) => self.fill_reply(to, place, receipt.line().as_bytes()),
                ReceiptTo::Http(to) => self.api_reply(to, Response::of_receipt(receipt)),
            }
        }
    }

    /// Writes an answer to the connection that asked.
    fn reply(&mut self, reply: Reply) {
        match reply {
            Reply::Line(to, place, text) => self.fill_reply(to, place, text.as_bytes()),
            Reply::Http(to, response) => self.api_reply(to, response),
        }
    }

    /// Answers a question that cannot be carried out with why, as the admin path would.
    pub(super) fn refuse_question(&mut self, to: AnswerTo, error: &str) {
        match to {
            AnswerTo::Log => {}
            AnswerTo::Connection(asker, place) => self.reply(Reply::Line(
                asker,
                place,
                serde_json::json!({ "error": error }).to_string() + "\n",
            )),
            AnswerTo::Api(asker, _) | AnswerTo::ApiJson(asker) => {
                self.reply(Reply::Http(asker, Response::error(503, error)))
            }
        }
    }

    /// Puts an answer that came later in its place, and writes what is ready.
    fn fill_reply(&mut self, to: Asker<PublisherKey>, place: u64, answer: &[u8]) {
        let Some(publisher) = self.sources.publishers.get_mut(to.key).filter(|p| p.serial == to.serial)
        else {
            return;
        };
        publisher.replies.fill(place, answer);
        self.sources.write_publisher(to.key);
    }

    /// Keeps a place among a connection's answers for one that comes later.
    pub(super) fn answer_later(&mut self, key: PublisherKey) -> (Asker<PublisherKey>, u64) {
        let publisher = &mut self.sources.publishers[key];
        (Asker { key, serial: publisher.serial }, publisher.replies.later())
    }

    pub(super) fn handle_publisher(&mut self, key: PublisherKey) {
        if !self.sources.publishers.contains(key) {
            return;
        }
        if !self.sources.publishers[key].done {
            self.read_publisher(key);
        }
        self.sources.write_publisher(key);
    }

    pub(super) fn read_publisher(&mut self, key: PublisherKey) {
        if self.sources.paused {
            return;
        }
        let max_line = self.settings.limits.max_control_line();
        let source = Source::Tcp(key);
        let mut lines = std::mem::take(&mut self.sources.publishers[key].input.lines);
        let mut input = std::mem::take(&mut self.sources.read_buf);
        loop {
            match attempt(|| self.sources.publishers[key].stream.read(&mut input)) {
                Ok(Some(0)) => {
                    lines.finish(|piece| self.on_piece(Ok(piece), source));
                    self.sources.publishers[key].done = true;
                    break;
                }
                Ok(Some(n)) => {
                    self.sources.publishers[key].input.last_input = Instant::now();
                    lines.push(&input[..n], max_line, |piece| self.on_piece(piece, source));
                    if self.sources.publishers[key].done {
                        // Refused: nothing more is read; it is closed once the replies are out.
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    debug!("Control connection from {} failed: {e}", self.sources.publishers[key].peer);
                    self.sources.publishers[key].done = true;
                    self.sources.publishers[key].replies.out().clear();
                    break;
                }
            }
        }
        self.sources.read_buf = input;
        self.sources.publishers[key].input.lines = lines;
    }

    /// Whether a TCP connection's piece goes on to the commands: only once it is authorized.
    /// Before that, a right `auth` line authorizes it; anything else but a blank line is
    /// answered `ERR unauthorized` and the connection closed.
    pub(super) fn admit(&mut self, key: PublisherKey, piece: Piece<'_>) -> bool {
        let publisher = &mut self.sources.publishers[key];
        let given = piece.line().and_then(auth_secret);
        let refusal = match (&self.settings.secret, given) {
            (_, Some(_)) if publisher.authorized => {
                debug!("Control connection from {}: auth line ignored (already authorized)", publisher.peer);
                return false;
            }
            (_, None) if publisher.authorized => return true,
            (_, None) if piece.line().is_some_and(|line| line.trim_ascii().is_empty()) => return false,
            (Some(secret), Some(given)) if same_secret(given, secret.as_bytes()) => {
                publisher.authorized = true;
                debug!("Control connection from {} authenticated", publisher.peer);
                return false;
            }
            (_, Some(_)) => "wrong secret",
            (_, None) => "a command before auth",
        };
        info!("Control connection from {} refused: {refusal}", publisher.peer);
        publisher.replies.now(UNAUTHORIZED);
        publisher.done = true;
        false
    }

    /// Closes a connection that sent an HTTP request ([`speaks_http`](super::command::speaks_http)): a web page made a
    /// browser send it here. Nothing it sent from there on is read.
    pub(super) fn refuse_http(&mut self, key: PublisherKey) {
        self.refused += 1;
        let publisher = &mut self.sources.publishers[key];
        publisher.done = true;
        warn!(
            "Control connection from {} closed: it speaks HTTP (a web page or a proxy sent a request \
             to the control port?); nothing it sent from its request on is carried out",
            publisher.peer
        );
    }
}

/// Compares a given secret with the configured one in time that does not depend on where the
/// first difference is (only on the lengths).
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.ct_eq(secret).into()
}

/// Warns (whatever the log level) when the control port can be reached from other hosts and
/// asks for no secret.
pub(super) fn warn_if_exposed(addr: SocketAddr, has_secret: bool) {
    if reachable_unguarded(addr, has_secret) {
        warn!(
            "Control port {addr} is reachable from other hosts and has no --control-secret: anyone \
             who can connect can publish, list clients and change the log level"
        );
    }
}

/// Warns (whatever the log level) when the HTTP API can be reached from other hosts and asks
/// for no key.
pub(super) fn warn_if_api_exposed(addr: SocketAddr, has_key: bool) {
    if reachable_unguarded(addr, has_key) {
        warn!(
            "HTTP API {addr} is reachable from other hosts and has no --api-key: anyone who can \
             connect can publish and list clients"
        );
    }
}

/// Whether a listener on `addr` can be reached from other hosts and asks for nothing.
fn reachable_unguarded(addr: SocketAddr, guarded: bool) -> bool {
    !guarded && !addr.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3crett", b"s3cret"));
        assert!(!same_secret(b"s3crex", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
        assert!(!same_secret(b"s3cret\0", b"s3cret"));
        assert!(!same_secret(b"x", b""));
        assert!(same_secret(b"", b""));
    }
}
