//! Delivering events: the hot path.
//!
//! Owns taking commands off the shard's channel and the delivery rules: a run of consecutive
//! events to one audience is offered in one pass over the recipients; a client gets an event
//! once (however many of its tokens match) and never one published before it subscribed;
//! all-but-sender skips the client with the sender's id; a client's queue is written as soon
//! as a run puts it over `--max-backlog`, and the shard takes no more commands while one stays
//! over (`stalls`). It does not close clients or decide when a stalled one is slow (`timers`).

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use crossbeam_channel::TryRecvError;
use tracing::debug;

use super::connection::{Client, Connection, Peer, Phase};
use super::keys::{ConnKey, StreamKey};
use super::Shard;
use crate::event::ResumeFrom;
use crate::figures::{DeliveryLatency, ShardFigures};
use crate::history::Replay;
use crate::pipeline::{Sequenced, ShardCommand};
use crate::sse;
use crate::sse::Frame;

/// A run of publishes is offered once it holds this many bytes: a burst of small events still
/// goes as one queue entry per client, while the most a run can put over a client's cap before
/// the shard tries to write stays small.
const RUN_BYTES: usize = 64 * 1024;

/// A run of events in this shard's own copy: one buffer holding them all. Every recipient takes
/// and drops references to it; on the frames the control thread built, every shard would fight
/// over one reference count's cache line.
struct Run {
    /// Every event, in order.
    all: Frame,
    /// Where each event starts in `all`.
    starts: Vec<usize>,
}

impl Run {
    /// The run's frames, as HTTP/1.1 streams get them (chunks).
    pub(super) fn new(run: &[Arc<Sequenced>]) -> Run {
        Run::of(run, |frame| frame)
    }

    /// The run's events as HTTP/2 streams get them: the SSE text, without the chunk framing.
    fn payloads(run: &[Arc<Sequenced>]) -> Run {
        Run::of(run, sse::chunk_text)
    }

    /// The run's copy of `bytes` of each frame: the frames read where they lie, no reference
    /// taken on them.
    fn of(run: &[Arc<Sequenced>], bytes: impl Fn(&[u8]) -> &[u8]) -> Run {
        let mut all = BytesMut::with_capacity(run.iter().map(|d| bytes(&d.frame).len()).sum());
        let mut starts = Vec::with_capacity(run.len());
        for delivery in run {
            starts.push(all.len());
            all.extend_from_slice(bytes(&delivery.frame));
        }
        Run { all: all.freeze(), starts }
    }

    /// The events from the `first`-th on, as one frame.
    pub(super) fn from(&self, first: usize) -> Frame {
        self.all.slice(self.starts[first]..)
    }
}

/// The recipients of a run of events, being offered them one stream at a time.
struct Recipients<'a> {
    /// Connections given bytes, to write once the drain is done.
    dirty: &'a mut Vec<ConnKey>,
    counters: &'a mut ShardFigures,
    /// Connections put over the cap, to write at once.
    over_cap: Vec<ConnKey>,
    /// The events: same audience, increasing ids.
    run: &'a [Arc<Sequenced>],
    /// The shard's copy of them, made for the first recipient (a targeted message has none on
    /// most shards).
    copy: Option<Run>,
    /// Its copy for HTTP/2 streams, made for the first of them.
    payloads: Option<Run>,
    /// The shard's clock's origin: an HTTP/2 stream's send reads now on it (when its window
    /// starts holding events back), once per run and only if the run reaches such a stream.
    started: Instant,
    /// Now, in the shard's milliseconds, once read.
    now: Option<u64>,
    /// HTTP/2 connections given events some window holds back.
    held_back: &'a mut Vec<ConnKey>,
    max_backlog: usize,
    /// How many recipients took the run from each of its events on (most take it whole).
    takers: &'a mut Vec<u64>,
}

impl Recipients<'_> {
    /// Offers the run to `stream`, carried by `conn`.
    fn offer(&mut self, stream: StreamKey, conn: &mut Connection) {
        let Some(slot) = stream.slot() else { return self.offer_http1(stream, conn) };
        let peer = conn.peer;
        let Some((h2, outbox)) = conn.multiplexed() else { return };
        let Some(state) = h2.stream_mut(slot) else { return };
        let data = &mut state.data;
        if data.phase != Phase::Streaming {
            return;
        }
        let Some(fresh) = self.fresh(&mut data.last_publish, &data.client) else { return };
        self.count(fresh, &mut data.client, peer);
        let run = self.payloads.get_or_insert_with(|| Run::payloads(self.run));
        let was_idle = outbox.is_empty();
        let started = self.started;
        let now = *self.now.get_or_insert_with(|| super::millis(started, Instant::now()));
        h2.send(slot, run.from(fresh), now, &mut |frame| outbox.push(frame));
        if h2.stalled_since().is_some() {
            self.held_back.push(stream.connection());
        }
        self.queued(stream.connection(), was_idle, outbox.len());
    }

    fn offer_http1(&mut self, stream: StreamKey, conn: &mut Connection) {
        if conn.phase != Phase::Streaming {
            return;
        }
        let Some(fresh) = self.fresh(&mut conn.last_publish, &conn.client) else { return };
        self.count(fresh, &mut conn.client, conn.peer);
        let run = self.copy.get_or_insert_with(|| Run::new(self.run));
        let was_idle = conn.outbox.is_empty();
        conn.outbox.push(run.from(fresh));
        self.queued(stream.connection(), was_idle, conn.outbox.len());
    }

    /// From which event on the run is new to a client whose last event was `last_publish`
    /// (stamped with the run's last), unless it has none new or is the all-but sender.
    fn fresh(&self, last_publish: &mut u64, client: &Client) -> Option<usize> {
        // Ids only grow: an id at or below the stamp was delivered already (through another of
        // its tokens) or published before this client handshaked.
        let fresh = self.run.iter().position(|d| d.id > *last_publish)?;
        let last = &self.run[self.run.len() - 1];
        *last_publish = last.id;
        if last.audience.except.as_deref().is_some_and(|id| client.has_id(id)) {
            return None;
        }
        Some(fresh)
    }

    /// Counts the events from `fresh` on as delivered to `client`.
    fn count(&mut self, fresh: usize, client: &mut Client, peer: Peer) {
        let taken = self.run.len() - fresh;
        self.takers[fresh] += 1;
        client.messages += taken as u64;
        self.counters.deliveries += taken as u64;
        if tracing::enabled!(tracing::Level::DEBUG) {
            for _ in 0..taken {
                debug!("Message sent to {peer} id: {}", client.id());
            }
        }
    }

    /// Notes a connection just given events, now holding `queued` bytes: over the cap, the
    /// shard writes at once rather than after the drain; otherwise one write after the drain
    /// carries the whole burst.
    fn queued(&mut self, key: ConnKey, was_idle: bool, queued: usize) {
        if queued > self.max_backlog {
            self.over_cap.push(key);
        } else if was_idle {
            self.dirty.push(key);
        }
    }
}

/// How long this shard's deliveries take: the events delivered since the last write, with how
/// many recipients took each, are counted once the writes that follow the drain are done.
#[derive(Debug, Default)]
pub(super) struct Latency {
    /// When each event delivered in this drain was sequenced, and to how many it went.
    pending: Vec<(Instant, u64)>,
    /// Kept between runs for its allocation.
    takers: Vec<u64>,
    /// Every delivery counted so far.
    pub(super) histogram: DeliveryLatency,
}

impl Latency {
    /// Notes the recipients each event of `run` went to (`takers`: how many took it from each
    /// event on).
    fn note(&mut self, run: &[Arc<Sequenced>]) {
        let mut recipients = 0;
        for (event, takers) in run.iter().zip(&self.takers) {
            recipients += takers;
            if recipients > 0 {
                self.pending.push((event.at, recipients));
            }
        }
    }

    /// Counts the events noted as delivered `now`, when their writes are done.
    fn written(&mut self, now: Instant) {
        for (at, recipients) in self.pending.drain(..) {
            self.histogram.observe(now.saturating_duration_since(at), recipients);
        }
    }
}

/// A resuming client's replay, as `frames` to go behind its response head, as one burst:
/// `event: reset` first when something it would have received is gone, then the kept events it
/// would have received, in id order. Returns the id after which live delivery takes over: every
/// event up to it is in the replay or was not for this client, and every later one reaches this
/// shard after the handshake, so there is no gap and no duplicate at the seam.
pub(super) fn queue_replay(
    client: &mut Client,
    from: ResumeFrom,
    replay: Replay,
    counters: &mut ShardFigures,
    frames: &mut Vec<Frame>,
) -> u64 {
    if replay.gap {
        let asked = match from {
            ResumeFrom::Earliest => "earliest".to_string(),
            ResumeFrom::After(id) => id.to_string(),
        };
        frames.push(sse::reset_event(&asked));
        counters.resumes_with_gap += 1;
    } else {
        counters.resumes_complete += 1;
    }
    let replayed = replay.frames.len() as u64;
    debug!(
        "Resume of {} from {from:?}: {replayed} events{}",
        client.id(),
        if replay.gap { " after a reset" } else { "" }
    );
    frames.extend(replay.frames);
    client.messages += replayed;
    counters.deliveries += replayed;
    replay.newest
}

impl Shard {
    /// Acts on every waiting command, then writes to each client that got new events in one go,
    /// so a burst of publishes reaches a client in one write. Consecutive publishes to the same
    /// audience are offered as one run: one pass over the recipients, one queue entry each.
    /// Stops early while a client is over its cap (see [`stalls`]): the rest waits on the channel.
    pub(super) fn drain_commands(&mut self) {
        self.commands_held = false;
        loop {
            if !self.stalls.is_empty() {
                self.commands_held = true;
                break;
            }
            match self.commands.try_recv() {
                Ok(command) => self.execute(command),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.start_wind_down();
                    break;
                }
            }
        }
        self.publish_run();
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if self.connections.contains(key) {
                self.flush(key);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
        if !self.latency.pending.is_empty() {
            self.latency.written(Instant::now());
        }
    }

    fn execute(&mut self, command: ShardCommand) {
        if !matches!(command, ShardCommand::Deliver(_)) {
            // Figures and lists must count the publishes sent before them.
            self.publish_run();
        }
        match command {
            ShardCommand::Deliver(delivery) => {
                if self.run.last().is_some_and(|last| last.audience != delivery.audience) {
                    self.publish_run();
                }
                self.run_bytes += delivery.frame.len();
                self.run.push(delivery);
                if self.run_bytes >= RUN_BYTES {
                    self.publish_run();
                }
            }
            ShardCommand::Ask(query, reply) => {
                let _ = reply.send(self.answer_query(&query));
            }
            ShardCommand::Shutdown => self.start_wind_down(),
        }
    }

    /// Offers the publishes gathered so far, and starts a new run.
    fn publish_run(&mut self) {
        let mut run = std::mem::take(&mut self.run);
        self.publish(&run);
        run.clear();
        self.run = run;
        self.run_bytes = 0;
    }

    /// Queues a run of events (same audience, increasing ids) for every matching client, once
    /// each; writes at once to those it put over the cap, and holds those still over it.
    fn publish(&mut self, run: &[Arc<Sequenced>]) {
        let Some(first) = run.first() else { return };
        self.latency.takers.clear();
        self.latency.takers.resize(run.len(), 0);
        let mut held_back = Vec::new();
        let mut recipients = Recipients {
            dirty: &mut self.dirty,
            counters: &mut self.counters,
            over_cap: Vec::new(),
            run,
            copy: None,
            payloads: None,
            started: self.started,
            now: None,
            held_back: &mut held_back,
            max_backlog: self.settings.max_backlog,
            takers: &mut self.latency.takers,
        };
        let connections = &mut self.connections;
        if first.audience.is_everyone() {
            let mut slots = Vec::new();
            for (key, conn) in connections.iter_mut() {
                let Some(h2) = conn.h2.as_deref() else {
                    recipients.offer(StreamKey::on(key), conn);
                    continue;
                };
                slots.clear();
                slots.extend(h2.streams().map(|(slot, _)| slot));
                for stream in slots.iter().filter_map(|&slot| StreamKey::multiplexed(key, slot)) {
                    recipients.offer(stream, conn);
                }
            }
        } else {
            // A client several targets match is offered the run again, and takes nothing twice.
            for target in &first.audience.targets {
                self.subscriptions.for_each_match(target, |stream| {
                    recipients.offer(stream, &mut connections[stream.connection()]);
                });
            }
        }
        let over_cap = recipients.over_cap;
        if !held_back.is_empty() {
            self.held_back.extend(held_back);
            self.reset_stalled_streams(super::millis(self.started, Instant::now()));
        }
        self.latency.note(run);
        for key in over_cap {
            self.flush(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use super::*;
    use crate::event::{Audience, Target};
    use crate::http::Subscribe;
    use crate::shard::agents::Agents;
    use crate::shard::connection::{Client, Peer};
    use crate::sse::encode_event;
    use smallvec::smallvec;

    /// A streaming client subscribed to `t` with this id, over a real loopback socket; the
    /// other end is returned so the socket stays open.
    fn client(id: &str) -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let other_end = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (socket, addr) = listener.accept().unwrap();
        let mut conn =
            Connection::accepted(mio::net::TcpStream::from_std(socket), None, Peer::new(addr), 1, 0);
        conn.phase = Phase::Streaming;
        let id = Some(id.to_string()).filter(|id| !id.is_empty());
        conn.client = Client::from_request(
            Subscribe { tokens: vec!["t".into()], id, user_agent: String::new(), resume: None, token: None },
            false,
            &mut Agents::default(),
        );
        (conn, other_end)
    }

    fn event(id: u64, except: Option<&str>, size: usize) -> Arc<Sequenced> {
        Arc::new(Sequenced {
            id,
            audience: Audience {
                targets: smallvec![Target::Token("t".into())],
                except: except.map(str::to_string),
            },
            frame: encode_event(id, "x".repeat(size).as_bytes()),
            at: Instant::now(),
        })
    }

    /// Offers `run` to `conns` as the shard does; returns (dirty, over the cap, deliveries).
    fn offer(
        run: &[Arc<Sequenced>],
        conns: &mut [&mut Connection],
        cap: usize,
    ) -> (Vec<usize>, Vec<usize>, u64) {
        let (mut dirty, mut counters) = (Vec::new(), ShardFigures::default());
        let mut takers = vec![0; run.len()];
        let mut held_back = Vec::new();
        let mut recipients = Recipients {
            dirty: &mut dirty,
            counters: &mut counters,
            over_cap: Vec::new(),
            run,
            copy: None,
            payloads: None,
            started: Instant::now(),
            now: None,
            held_back: &mut held_back,
            max_backlog: cap,
            takers: &mut takers,
        };
        for (key, conn) in conns.iter_mut().enumerate() {
            recipients.offer(StreamKey::on(ConnKey::new(key).unwrap()), conn);
        }
        let over_cap = recipients.over_cap;
        let index = |keys: Vec<ConnKey>| keys.into_iter().map(ConnKey::index).collect();
        (index(dirty), index(over_cap), counters.deliveries)
    }

    fn frames_len(run: &[Arc<Sequenced>]) -> usize {
        run.iter().map(|d| d.frame.len()).sum()
    }

    #[test]
    fn each_event_is_counted_once_per_recipient_that_took_it_when_the_writes_are_done() {
        let run = [event(1, None, 10), event(2, None, 10), event(3, None, 10)];
        let mut latency = Latency { takers: vec![2, 0, 1], ..Latency::default() };
        latency.note(&run);
        assert_eq!(latency.pending.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [2, 2, 3]);
        latency.written(run[0].at + Duration::from_millis(3));
        assert_eq!(latency.histogram.count(), 7);
        assert_eq!(latency.histogram.buckets[5], 7, "3 ms: at most 5 ms, over 2.5 ms");
        assert!(latency.pending.is_empty());
    }

    #[test]
    fn a_client_matched_twice_gets_an_event_once() {
        let (mut conn, _end) = client("a");
        let run = [event(1, None, 10)];
        assert_eq!(offer(&run, &mut [&mut conn], 1 << 20).2, 1);
        assert_eq!(offer(&run, &mut [&mut conn], 1 << 20).2, 0, "offered again through another token");
        assert_eq!(conn.outbox.len(), frames_len(&run));
        assert_eq!(conn.client.messages, 1);
    }

    #[test]
    fn a_client_gets_only_what_was_published_after_it_subscribed() {
        let (mut conn, _end) = client("a");
        conn.last_publish = 2;
        let run = [event(1, None, 10), event(2, None, 10), event(3, None, 10)];
        assert_eq!(offer(&run, &mut [&mut conn], 1 << 20).2, 1);
        assert_eq!(conn.outbox.len(), run[2].frame.len());
    }

    #[test]
    fn all_but_sender_skips_the_sender_only() {
        let (mut sender, _a) = client("me");
        let (mut other, _b) = client("you");
        let (mut anonymous, _c) = client("");
        let run = [event(1, Some("me"), 10)];
        let (dirty, _, deliveries) = offer(&run, &mut [&mut sender, &mut other, &mut anonymous], 1 << 20);
        assert_eq!((dirty, deliveries), (vec![1, 2], 2));
        assert!(sender.outbox.is_empty());
        assert_eq!(sender.last_publish, 1, "and it is not offered the event again");
    }

    #[test]
    fn a_run_goes_into_one_queue_entry_and_is_written_after_the_drain() {
        let (mut conn, _end) = client("a");
        let run: Vec<_> = (1..=100).map(|id| event(id, None, 50)).collect();
        let (dirty, over_cap, deliveries) = offer(&run, &mut [&mut conn], 1 << 20);
        assert_eq!((dirty, over_cap, deliveries), (vec![0], vec![], 100));
        let copy = Run::new(&run);
        let expected: Vec<u8> = run.iter().flat_map(|d| d.frame.to_vec()).collect();
        assert_eq!(copy.from(0), expected);
        assert_eq!(copy.from(99), run[99].frame);
    }

    #[test]
    fn a_client_put_over_the_cap_is_written_at_once_never_refused() {
        let (mut conn, _end) = client("a");
        let run: Vec<_> = (1..=10).map(|id| event(id, None, 1000)).collect();
        let (dirty, over_cap, deliveries) = offer(&run, &mut [&mut conn], 4000);
        assert_eq!((dirty, over_cap, deliveries), (vec![], vec![0], 10));
        assert_eq!(conn.outbox.len(), frames_len(&run), "every event queued, in order");
    }
}
