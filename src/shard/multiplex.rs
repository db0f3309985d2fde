//! A shard's HTTP/2 connections: each carries an [`h2::Session`] whose streams are subscribers.
//!
//! Owns what HTTP/2 changes in a connection's life: taking it up (the preface on the plain
//! port, ALPN `h2` on the TLS port), feeding the session what was read and acting on its events,
//! answering a stream (the HTTP/1.1 responses re-encoded), subscribing one, ending and resetting
//! one, and the streams a client stopped reading. Everything a stream shares with an HTTP/1.1
//! subscription (the judging, tokens, the backend, the index, delivery, timers) is reached
//! through the same [`StreamKey`]s. It does not decode frames (`h2`).

use std::collections::BTreeSet;
use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::connection::{Client, H2Stream, Phase, Stamp};
use super::keys::{ConnKey, StreamKey};
use super::stalls::STALL_TIMEOUT;
use super::{millis, Shard};
use crate::h2::fields::{self, BlockError, RequestHead};
use crate::h2::frame::ErrorCode;
use crate::h2::{Event, Limits, Session};
use crate::http::{self, Judgement, Overload, Reject, Responses};
use crate::limits::MAX_REQUEST_HEAD;
use crate::sse::{self, Frame};

/// What the shard's HTTP/2 connections are set up with.
#[derive(Debug, Clone)]
pub struct Http2 {
    /// The session's limits.
    pub limits: Limits,
    /// The handshake's head as an HTTP/2 header block, encoded once.
    pub handshake: Bytes,
}

impl Http2 {
    /// HTTP/2 with at most `max_streams` streams a connection, answering as `responses` do.
    pub fn new(max_streams: u32, responses: &Responses) -> Http2 {
        let handshake = fields::response(&responses.handshake).expect("the handshake is a response head");
        Http2 {
            limits: Limits { max_streams, max_header_list: MAX_REQUEST_HEAD },
            handshake: Bytes::from(handshake.block),
        }
    }
}

impl Shard {
    /// Takes `key` up as HTTP/2: our SETTINGS go out first.
    pub(super) fn start_multiplexing(&mut self, key: ConnKey) {
        let Some(http2) = &self.settings.http2 else { return };
        let conn = &mut self.connections[key];
        let outbox = &mut conn.outbox;
        conn.h2 = Some(Box::new(Session::new(http2.limits, &mut |frame| outbox.push(frame))));
        conn.phase = Phase::Multiplexed;
        conn.request.clear();
        self.counters.http2_connections_opened += 1;
        debug!("HTTP/2 with {}", conn.peer);
    }

    /// Feeds `bytes` read from an HTTP/2 connection to its session and acts on what it found.
    pub(super) fn received_multiplexed(&mut self, key: ConnKey, bytes: &[u8]) {
        let now = millis(self.started, Instant::now());
        let Some((h2, outbox)) = self.connections[key].multiplexed() else { return };
        let mut events = Vec::new();
        let received = h2.receive(bytes, now, &mut events, &mut |frame| outbox.push(frame));
        for event in events {
            match event {
                Event::Request { slot, head } => self.stream_request(key, slot, head),
                Event::Reset { slot, data } => {
                    if let Some(stream) = StreamKey::multiplexed(key, slot) {
                        self.stream_gone(stream, &data);
                    }
                }
                Event::Malformed { id, why } => {
                    info!("Request refused from {}: HTTP/2 stream {id}: {why}", self.connections[key].peer)
                }
                Event::GoAway => debug!("HTTP/2 GOAWAY from {}", self.connections[key].peer),
            }
            if !self.connections.contains(key) {
                return;
            }
        }
        if let Err(error) = received {
            info!("HTTP/2 connection with {} ended: {error}", self.connections[key].peer);
            self.counters.http2_goaways += 1;
            return self.end_multiplexed(key, error.code);
        }
        self.flush(key);
    }

    /// An HTTP/2 connection's handshake deadline came: one without a stream goes (as a
    /// connection that sent no request does), one with streams is looked at again a handshake
    /// timeout later. So a connection whose last stream ended goes within two timeouts.
    pub(super) fn idle_multiplexed(&mut self, key: ConnKey, now: Instant) {
        let conn = &self.connections[key];
        if conn.h2.as_deref().is_some_and(|h2| h2.is_empty()) {
            info!("HTTP/2 connection with {} ended: no stream open", conn.peer);
            return self.end_multiplexed(key, ErrorCode::NoError);
        }
        let (serial, at) = (conn.serial, self.deadline(now, self.settings.handshake_timeout));
        self.timers.handshake_by(at, key, serial);
    }

    /// Tells the client GOAWAY with `code`, ends every stream, and closes once that is out.
    pub(super) fn end_multiplexed(&mut self, key: ConnKey, code: ErrorCode) {
        self.stop_streams(key);
        let Some((h2, outbox)) = self.connections[key].multiplexed() else { return };
        h2.goaway(code, &mut |frame| outbox.push(frame));
        let conn = &mut self.connections[key];
        conn.phase = Phase::Closing;
        let serial = conn.serial;
        let at = self.deadline(Instant::now(), self.settings.handshake_timeout);
        self.timers.handshake_by(at, key, serial);
        self.flush(key);
    }

    /// Shuts the writing side of `key`, whose GOAWAY is out, and reads until the client closes
    /// (or the deadline [`Shard::end_multiplexed`] set): closing at once, with what it sent
    /// still unread, would reset the connection, and the client could lose the GOAWAY.
    pub(super) fn linger(&mut self, key: ConnKey) {
        let conn = &mut self.connections[key];
        conn.h2 = None;
        conn.phase = Phase::Lingering;
        if let Err(e) = conn.socket.shutdown(std::net::Shutdown::Write) {
            self.close(key, &format!("cannot shut its writing side: {e}"));
        }
    }

    /// Takes every stream of `key` out of the index (its connection is ending).
    pub(super) fn stop_streams(&mut self, key: ConnKey) {
        let slots: Vec<usize> = match self.connections[key].h2.as_deref() {
            Some(h2) => h2.streams().map(|(slot, _)| slot).collect(),
            None => return,
        };
        for stream in slots.into_iter().filter_map(|slot| StreamKey::multiplexed(key, slot)) {
            self.waiting.forget(stream);
            self.stop_streaming(stream);
        }
    }

    /// A stream the client reset, or one reset by us: out of the index, and no longer waited
    /// for.
    fn stream_gone(&mut self, stream: StreamKey, data: &H2Stream) {
        self.waiting.forget(stream);
        if data.phase == Phase::Streaming {
            self.unsubscribe(stream, &data.client);
        }
    }

    /// A request opened a stream: judged as an HTTP/1.1 request with the same head would be.
    fn stream_request(&mut self, key: ConnKey, slot: usize, head: Result<RequestHead, BlockError>) {
        let Some(stream) = StreamKey::multiplexed(key, slot) else { return };
        if let Err(overload) = self.charge_streams(key) {
            self.counters.refused += 1;
            info!(
                "Request refused from {}: HTTP/2 stream over a limit ({overload})",
                self.connections[key].peer
            );
            let reply = self.settings.responses.unavailable(overload).clone();
            return self.answer_stream_last(stream, &reply);
        }
        let serial = self.new_serial();
        let judgement = match head {
            Ok(head) => {
                let judgement =
                    http::judge_multiplexed(&head.method, &head.path, &head.headers(), &self.settings.route);
                if tracing::enabled!(tracing::Level::DEBUG) {
                    debug!(
                        "Request from {}: {} {} (HTTP/2)",
                        self.connections[key].peer, head.method, head.path
                    );
                }
                if let Some(h2) = self.h2_stream(stream) {
                    h2.serial = serial;
                }
                self.judging = Some(head);
                judgement
            }
            Err(_) => Judgement::Reject(Reject::HeadTooLarge),
        };
        self.answer(stream, judgement);
        self.judging = None;
    }

    /// Counts `key`'s streams past its first against the connection limits, as connections,
    /// as a new one is judged: takes back what ended streams were counted for, and counts the
    /// new one; an error when it is over a limit (and is then refused).
    fn charge_streams(&mut self, key: ConnKey) -> Result<(), Overload> {
        let conn = &self.connections[key];
        let (peer, charged) = (conn.peer, self.charged.get(&key).copied().unwrap_or(0));
        // The streams judged before this one (a serial is given when a stream is judged): with
        // it, that many are past the first. Several may have come in one read.
        let wanted =
            conn.h2.as_deref().map_or(0, |h2| h2.streams().filter(|(_, s)| s.data.serial != 0).count());
        let wanted = u16::try_from(wanted).unwrap_or(u16::MAX);
        for _ in wanted..charged {
            self.unaccount(peer);
        }
        let mut counted = charged.min(wanted);
        let result = (counted..wanted).try_for_each(|_| {
            self.account(peer)?;
            counted += 1;
            Ok(())
        });
        match counted {
            0 => self.charged.remove(&key),
            _ => self.charged.insert(key, counted),
        };
        result
    }

    /// Takes back what `key`'s streams were counted for (the connection is closing).
    pub(super) fn uncharge_streams(&mut self, key: ConnKey) {
        let Some(charged) = self.charged.remove(&key) else { return };
        let peer = self.connections[key].peer;
        for _ in 0..charged {
            self.unaccount(peer);
        }
    }

    /// The shard's state of HTTP/2 stream `stream`, if it is open.
    pub(super) fn h2_stream(&mut self, stream: StreamKey) -> Option<&mut H2Stream> {
        let conn = self.connections.get_mut(stream.connection())?;
        Some(&mut conn.h2.as_deref_mut()?.stream_mut(stream.slot()?)?.data)
    }

    /// Answers HTTP/2 stream `stream` for the last time with `reply`, an HTTP/1.1 response,
    /// re-encoded; the connection stays.
    pub(super) fn answer_stream_last(&mut self, stream: StreamKey, reply: &Bytes) {
        let (key, Some(slot)) = (stream.connection(), stream.slot()) else { return };
        self.stop_streaming(stream);
        self.waiting.forget(stream);
        let now = millis(self.started, Instant::now());
        let Some((h2, outbox)) = self.connections[key].multiplexed() else { return };
        let mut push = |frame| outbox.push(frame);
        match fields::response(reply) {
            Some(response) if response.body.is_empty() => h2.respond(slot, &response.block, true, &mut push),
            Some(response) => {
                h2.respond(slot, &response.block, false, &mut push);
                h2.send(slot, Bytes::from(response.body), now, &mut push);
                h2.finish(slot, now, &mut push);
            }
            None => {
                h2.reset(slot, ErrorCode::InternalError, &mut push);
            }
        }
        self.flush(key);
    }

    /// Subscribes HTTP/2 stream `stream`: the handshake's head, then its `retry:` and replay,
    /// as an HTTP/1.1 handshake sends them.
    pub(super) fn handshake_stream(
        &mut self,
        stream: StreamKey,
        client: Client,
        replay: Vec<Frame>,
        last: u64,
    ) {
        let (key, Some(slot)) = (stream.connection(), stream.slot()) else { return };
        let now = Instant::now();
        let (handshaked_at, at) = (self.seconds(now), millis(self.started, now));
        let retry = self.settings.retry.clone();
        let Some(http2) = &self.settings.http2 else { return };
        let Some((h2, outbox)) = self.connections[key].multiplexed() else { return };
        let mut push = |frame| outbox.push(frame);
        h2.respond(slot, &http2.handshake, false, &mut push);
        for frame in retry.into_iter().chain(replay) {
            h2.send(slot, sse::chunk_payload(&frame), at, &mut push);
        }
        let Some(state) = h2.stream_mut(slot) else { return };
        let data = &mut state.data;
        data.client = client;
        data.phase = Phase::Streaming;
        data.handshaked_at = Some(Stamp::at(handshaked_at));
        data.last_publish = last;
        self.held_back(key);
    }

    /// Sends `frame` (a chunk, as HTTP/1.1 streams get it) on HTTP/2 stream `stream`.
    pub(super) fn send_on_stream(&mut self, stream: StreamKey, frame: &Frame) {
        let (key, Some(slot)) = (stream.connection(), stream.slot()) else { return };
        let now = millis(self.started, Instant::now());
        let Some((h2, outbox)) = self.connections[key].multiplexed() else { return };
        h2.send(slot, sse::chunk_payload(frame), now, &mut |frame| outbox.push(frame));
        self.held_back(key);
    }

    /// Ends HTTP/2 stream `stream` (END_STREAM once what it holds back is out); its
    /// connection goes on.
    pub(super) fn finish_stream(&mut self, stream: StreamKey) {
        let (key, Some(slot)) = (stream.connection(), stream.slot()) else { return };
        self.stop_streaming(stream);
        let now = millis(self.started, Instant::now());
        let Some((h2, outbox)) = self.connections[key].multiplexed() else { return };
        h2.finish(slot, now, &mut |frame| outbox.push(frame));
    }

    /// Resets HTTP/2 stream `stream` with `code`, at once.
    pub(super) fn reset_stream(&mut self, stream: StreamKey, code: ErrorCode) {
        let (key, Some(slot)) = (stream.connection(), stream.slot()) else { return };
        self.stop_streaming(stream);
        self.waiting.forget(stream);
        let Some((h2, outbox)) = self.connections[key].multiplexed() else { return };
        h2.reset(slot, code, &mut |frame| outbox.push(frame));
        self.flush(key);
    }

    /// Notes that `key` may have a stream holding data back, to be watched for a stall.
    pub(super) fn held_back(&mut self, key: ConnKey) {
        let holds = self.connections[key].h2.as_deref().is_some_and(|h2| h2.stalled_since().is_some());
        if holds {
            self.held_back.insert(key);
        }
    }

    /// Resets the HTTP/2 streams whose client let their window stay shut with events waiting
    /// for the stall time, or with more than `--max-backlog` waiting: a stalled stream never
    /// holds its connection's others, nor the shard (its events wait on it, not on the socket).
    pub(super) fn reset_stalled_streams(&mut self, now: u64) {
        let since = now.saturating_sub(STALL_TIMEOUT.as_millis() as u64);
        let watched = std::mem::take(&mut self.held_back);
        let mut still = BTreeSet::new();
        for key in watched {
            let Some(h2) = self.connections.get(key).and_then(|conn| conn.h2.as_deref()) else { continue };
            let most = self.settings.max_backlog;
            let stalled: Vec<(usize, usize)> =
                h2.stalled(since, most).into_iter().map(|slot| (slot, h2.held(slot))).collect();
            for (slot, held) in stalled {
                let Some(stream) = StreamKey::multiplexed(key, slot) else { continue };
                let why =
                    if held > most { "over --max-backlog" } else { "its window shut past the stall time" };
                warn!("Slow stream reset: {} ({held} bytes held back, {why})", self.connections[key].peer);
                self.counters.dropped_slow_streams += 1;
                self.reset_stream(stream, ErrorCode::Cancel);
            }
            let holds = self
                .connections
                .get(key)
                .and_then(|c| c.h2.as_deref())
                .is_some_and(|h2| h2.stalled_since().is_some());
            if holds {
                still.insert(key);
            }
        }
        self.held_back.extend(still);
    }

    /// When the stream waiting longest for its window will have stalled.
    pub(super) fn next_stream_stall(&self) -> Option<u64> {
        let timeout = STALL_TIMEOUT.as_millis() as u64;
        self.held_back
            .iter()
            .filter_map(|&key| self.connections.get(key)?.h2.as_deref()?.stalled_since())
            .min()
            .map(|since| since.saturating_add(timeout))
    }
}
