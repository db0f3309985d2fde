//! Reading a connection and acting on its request: the handshake, reinit, and the fixed answers.
//!
//! Owns what happens between bytes arriving and a client streaming: reading plain or TLS
//! sockets, judging the request head (through the pure [`http::judge`]), answering refusals,
//! HEAD and OPTIONS, and subscribing a client. It does not deliver events (`delivery`).

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use tracing::{debug, info};

use super::connection::{Client, Phase, Stamp};
use super::delivery::queue_replay;
use super::keys::{ConnKey, StreamKey};
use super::tls_session::Received;
use super::{seconds, Shard};
use crate::auth::Refusal;
use crate::event::ResumeFrom;
use crate::gate::{unix_now, Entry, Visitor};
use crate::h2::frame::PREFACE;
use crate::http::{self, Judgement, Subscribe};
use crate::nonblocking::attempt;
use crate::sse::Frame;

impl Shard {
    /// Reads until the socket has nothing more, acting on what arrives. A read shorter than
    /// the buffer emptied the socket: data arriving later raises a new edge, so the read that
    /// would only say `WouldBlock` (one syscall per request) is skipped, unless the peer may
    /// have closed (`hung_up`), which only a read of 0 bytes tells.
    pub(super) fn read(&mut self, key: ConnKey, hung_up: bool) {
        if self.connections[key].tls.is_some() {
            return self.read_tls(key, hung_up);
        }
        loop {
            let conn = &mut self.connections[key];
            match attempt(|| conn.socket.read(&mut self.read_buf[..])) {
                Ok(Some(0)) => return self.close(key, "closed by peer"),
                Ok(Some(n)) => {
                    self.received(key, n);
                    if !self.connections.contains(key) || (n < self.read_buf.len() && !hung_up) {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => return self.close(key, &e.to_string()),
            }
        }
    }

    /// Reads TLS records until the socket has nothing more, acting on the plaintext in them,
    /// then sends what TLS wants to (handshake messages, alerts). The shard's buffers take the
    /// ciphertext and the plaintext; the session keeps only an incomplete record. As for plain
    /// text, a read shorter than the room it had emptied the socket: the read that would only
    /// say `WouldBlock` is skipped unless the peer may have closed (`hung_up`).
    fn read_tls(&mut self, key: ConnKey, hung_up: bool) {
        loop {
            let conn = &mut self.connections[key];
            let Some(tls) = conn.tls.as_mut() else { return };
            let buffers = &mut self.tls_buffers;
            let Some(kept) = tls.restore_incoming(&mut buffers.input) else {
                return self.close(key, "TLS message too long");
            };
            let room = buffers.input.len() - kept;
            let n = match attempt(|| conn.socket.read(&mut buffers.input[kept..])) {
                Ok(Some(0)) => return self.close(key, "closed by peer"),
                Ok(Some(n)) => n,
                Ok(None) => {
                    // Nothing more: keep the incomplete record for the next read.
                    tls.keep_incoming(&buffers.input[..kept]);
                    break;
                }
                Err(e) => return self.close(key, &e.to_string()),
            };
            if tls.is_plaintext(&buffers.input[..kept + n]) {
                return self.refuse_plaintext(key, kept + n);
            }
            let was_handshaking = tls.is_handshaking();
            buffers.plain.clear();
            let received = match tls.receive(&mut buffers.input[..kept + n], &mut buffers.plain) {
                Ok(received) => received,
                Err(e) => {
                    // Tell the peer why (the alert rustls prepared), then give up on it.
                    tls.queue_alert();
                    let _ = tls.send(&mut conn.socket);
                    info!("TLS failed with {}: {e}", conn.peer);
                    return self.close(key, &format!("TLS error: {e}"));
                }
            };
            // A session's handshake ends once: counted when it does, full or resumed.
            if was_handshaking && !tls.is_handshaking() {
                self.counters.count_tls_handshake(tls.handshake_kind());
                if tls.alpn_protocol() == Some(b"h2") {
                    self.start_multiplexing(key);
                }
            }
            if !self.take_plaintext(key) {
                return;
            }
            if received == Received::Closed {
                return self.close(key, "closed by peer");
            }
            if n < room && !hung_up {
                break;
            }
        }
        self.flush(key);
    }

    /// Answers plain text on the HTTPS port (the first `n` bytes of the shard's TLS input),
    /// mostly an `http://` URL typed for an `https://` one, with a plain `400` that says so,
    /// rather than an alert the client cannot show. The connection goes on without its TLS
    /// session, so that the answer goes out as it is, then closes.
    fn refuse_plaintext(&mut self, key: ConnKey, n: usize) {
        let conn = &mut self.connections[key];
        conn.tls = None;
        // Only on this path: the address the client connected to, for a request without a Host.
        let local =
            conn.socket.local_addr().ok().map(|at| SocketAddr::new(at.ip().to_canonical(), at.port()));
        let reject = http::judge_not_tls(&self.tls_buffers.input[..n], &self.settings.route, local);
        self.answer(StreamKey::on(key), Judgement::Reject(reject));
    }

    /// Acts on the plaintext just decrypted, a `read_buf` at a time; false when the connection
    /// is gone.
    fn take_plaintext(&mut self, key: ConnKey) -> bool {
        let plain = std::mem::take(&mut self.tls_buffers.plain);
        for chunk in plain.chunks(self.read_buf.len()) {
            self.read_buf[..chunk.len()].copy_from_slice(chunk);
            self.received(key, chunk.len());
            if !self.connections.contains(key) {
                break;
            }
        }
        // Given back, to keep its allocation for the next read.
        self.tls_buffers.plain = plain;
        self.connections.contains(key)
    }

    /// Acts on `n` bytes just read into `read_buf`.
    fn received(&mut self, key: ConnKey, n: usize) {
        if self.connections[key].phase == Phase::Multiplexed {
            // Lent out and given back: the session's events need the shard.
            let bytes = std::mem::take(&mut self.read_buf);
            self.received_multiplexed(key, &bytes[..n]);
            self.read_buf = bytes;
            return;
        }
        // More plaintext in the TLS records that held a request now waiting for the backend.
        let takes_request = !self.waiting.holds(StreamKey::on(key))
            && match self.connections[key].phase {
                Phase::Handshaking => true,
                Phase::Streaming => self.wants_reinit(key, n),
                Phase::Closing | Phase::Multiplexed | Phase::Lingering => false,
            };
        let conn = &mut self.connections[key];
        if !takes_request {
            debug!("Data ignored from {} ({n} bytes)", conn.peer);
            return;
        }
        conn.request.extend(&self.read_buf[..n]);
        if conn.phase == Phase::Handshaking && self.settings.http2.is_some() {
            match preface(conn.request.bytes()) {
                Preface::Whole => {
                    let bytes = std::mem::take(&mut conn.request);
                    self.start_multiplexing(key);
                    return self.received_multiplexed(key, bytes.bytes());
                }
                Preface::Partial => return,
                Preface::No => {}
            }
        }
        let judgement = http::judge(conn.request.bytes(), &self.settings.route);
        if judgement != Judgement::Incomplete && tracing::enabled!(tracing::Level::DEBUG) {
            debug!("Request from {}: {}", conn.peer, request_line(conn.request.bytes()));
        }
        self.answer(StreamKey::on(key), judgement);
    }

    /// True when data from a streaming client is (the start of) a reinit request to act on.
    fn wants_reinit(&self, key: ConnKey, n: usize) -> bool {
        let conn = &self.connections[key];
        if !self.state.reinit.load(Ordering::Relaxed) {
            return false;
        }
        // A request in progress keeps accumulating; otherwise only a new `GET ` starts one.
        let data = &self.read_buf[..n];
        !conn.request.is_empty() || data.starts_with(b"GET ") || b"GET ".starts_with(data)
    }

    pub(super) fn answer(&mut self, key: StreamKey, judgement: Judgement) {
        let conn = &self.connections[key.connection()];
        let responses = &self.settings.responses;
        let reply = match judgement {
            Judgement::Incomplete => return,
            Judgement::Subscribe(request) => return self.subscribe(key, request),
            Judgement::Head => responses.head.clone(),
            Judgement::Options => responses.options.clone(),
            Judgement::Reject(reject) => {
                info!("Request refused from {}: {} {reject}", conn.peer, reject.status());
                responses.error(&reject)
            }
        };
        self.answer_last(key, reply);
    }

    /// A subscription request: checked against its token when subscriptions need one, put to
    /// the backend when it is asked, then the handshake.
    fn subscribe(&mut self, key: StreamKey, mut request: Subscribe) {
        let granted = match self
            .settings
            .auth
            .as_ref()
            .map(|auth| auth.check(request.token.as_deref(), &request.tokens, request.id.as_deref()))
        {
            None => None,
            Some(Ok(granted)) => Some(granted),
            Some(Err(refusal)) => return self.refuse_subscription(key, &refusal),
        };
        let sub = granted.as_ref().and_then(|granted| granted.sub.clone());
        request.id = request.id.or(sub.clone());
        let jti = granted.as_ref().and_then(|granted| granted.jti.as_deref());
        let visitor = Visitor { id: request.id.as_deref().unwrap_or(""), sub: sub.as_deref(), jti };
        // Before the backend is asked: a banned or revoked client costs it nothing.
        if !self.let_in(key, visitor, &request.tokens) {
            return;
        }
        self.authorize(key, request, granted);
    }

    /// Subscribes a client whose request passed every check: `sub` when its id is its grant's,
    /// its stream ending at `expires` (Unix seconds) if its grant does.
    pub(super) fn subscribe_granted(
        &mut self,
        key: StreamKey,
        request: Subscribe,
        sub: bool,
        expires: Option<u64>,
    ) {
        let resume = request.resume;
        let client = Client::from_request(request, sub, &mut self.agents);
        self.handshake(key, client, resume, expires);
    }

    /// Whether the gate lets this subscription in; if not, it is answered: `401` for a revoked
    /// token, `204 No Content` for a ban (which stops EventSource from retrying).
    pub(super) fn let_in(&mut self, key: StreamKey, visitor: Visitor<'_>, tokens: &[String]) -> bool {
        let entry = self.state.gate.read().judge(visitor, tokens.iter().map(String::as_str), unix_now());
        let peer = self.connections[key.connection()].peer;
        let reply = match entry {
            Entry::Open => return true,
            Entry::Revoked => {
                info!("Subscription refused from {peer}: token revoked");
                self.counters.auth_refused_revoked += 1;
                self.settings.responses.refusal(&Refusal::Invalid("token revoked".into()))
            }
            Entry::Banned => {
                info!("Subscription refused from {peer}: banned (204)");
                self.counters.banned += 1;
                self.settings.responses.banned.clone()
            }
        };
        self.answer_last(key, reply);
        false
    }

    /// Answers a subscription its token (or the backend) does not allow, as RFC 6750 says for
    /// a token, and counts it.
    pub(super) fn refuse_subscription(&mut self, key: StreamKey, refusal: &Refusal) {
        info!("Subscription refused from {}: {refusal}", self.connections[key.connection()].peer);
        self.counters.count_refusal(refusal);
        let reply = self.settings.responses.refusal(refusal);
        self.answer_last(key, reply);
    }

    /// Answers for the last time (a refusal, `HEAD`, `OPTIONS`); an HTTP/1.1 connection closes
    /// once the answer is out, an HTTP/2 stream ends with it.
    fn answer_last(&mut self, stream: StreamKey, reply: Bytes) {
        if stream.slot().is_some() {
            return self.answer_stream_last(stream, &reply);
        }
        let key = stream.connection();
        self.stop_streaming(stream);
        let conn = &mut self.connections[key];
        conn.request.clear();
        conn.phase = Phase::Closing;
        conn.outbox.push(reply);
        self.flush(key);
    }

    /// A first handshake or a reinit: (re)subscribes the client and sends the response head;
    /// a stream whose token `expires` (Unix seconds) ends then.
    fn handshake(
        &mut self,
        stream: StreamKey,
        mut client: Client,
        resume: Option<ResumeFrom>,
        expires: Option<u64>,
    ) {
        let now = Instant::now();
        let key = stream.connection();
        let reinit = stream.slot().is_none() && self.connections[key].phase == Phase::Streaming;
        if reinit {
            client.messages = self.connections[key].client.messages;
            self.stop_streaming(stream);
            self.counters.reinits += 1;
        } else {
            self.counters.handshakes += 1;
        }
        let conn = &self.connections[key];
        info!(
            "{} {} <{}> subscribes: {} id: {}",
            if reinit { "Reinit" } else { "Handshake" },
            conn.peer,
            conn.socket.as_raw_fd(),
            client.token_list(),
            client.id()
        );
        // Before the history and `published` are read: see `crate::reach` for why.
        let (reach, number) = (&self.state.reach, self.number);
        self.subscriptions.add(stream, client.tokens(), |token| reach.hold(number, token));
        let replay = resume
            .map(|from| (from, self.state.history.read().replay(from, client.tokens(), client.id(), now)));
        let mut frames = Vec::new();
        let last = match replay {
            Some((from, replay)) => queue_replay(&mut client, from, replay, &mut self.counters, &mut frames),
            None => self.state.published.load(Ordering::Acquire),
        };
        self.tell_presence(&client, true);
        let serial = match stream.slot() {
            None => self.handshake_connection(key, client, frames, last, reinit, now),
            Some(_) => {
                self.handshake_stream(stream, client, frames, last);
                self.h2_stream(stream).map_or(0, |state| state.serial)
            }
        };
        self.timers.age(stream, serial);
        if let Some(expires) = expires {
            let at = self.deadline(now, until_unix(expires));
            self.timers.expire_by(at, stream, serial);
        }
        self.flush(key);
    }

    /// An HTTP/1.1 handshake's writes: the response head, `retry:`, the `replay`; the
    /// connection's serial from now on.
    fn handshake_connection(
        &mut self,
        key: ConnKey,
        client: Client,
        replay: Vec<Frame>,
        last: u64,
        reinit: bool,
        now: Instant,
    ) -> u32 {
        let serial = if reinit { self.new_serial() } else { self.connections[key].serial };
        let conn = &mut self.connections[key];
        if reinit {
            conn.reinits = conn.reinits.saturating_add(1);
        }
        conn.client = client;
        conn.request.clear();
        conn.phase = Phase::Streaming;
        conn.handshaked_at = Some(Stamp::at(seconds(self.started, now)));
        conn.outbox.push(self.settings.responses.handshake.clone());
        if let Some(retry) = &self.settings.retry {
            conn.outbox.push(retry.clone());
        }
        for frame in replay {
            conn.outbox.push(frame);
        }
        conn.last_publish = last;
        conn.serial = serial;
        serial
    }
}

/// How the bytes a plain connection sent so far stand to HTTP/2's preface.
enum Preface {
    /// They start with it.
    Whole,
    /// They are its start: more must come to tell.
    Partial,
    /// They are not HTTP/2 (an HTTP/1.1 request).
    No,
}

fn preface(bytes: &[u8]) -> Preface {
    if bytes.starts_with(PREFACE) {
        Preface::Whole
    } else if !bytes.is_empty() && PREFACE.starts_with(bytes) {
        Preface::Partial
    } else {
        Preface::No
    }
}

/// How long from now until `unix_secs` (zero if it has passed).
fn until_unix(unix_secs: u64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Duration::from_secs(unix_secs).saturating_sub(now)
}

/// The first line of a request, for the debug log: printable, and short.
fn request_line(request: &[u8]) -> String {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(&line[..line.len().min(256)]).escape_debug().to_string()
}
