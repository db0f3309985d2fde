//! From a numbered event to every shard: framing it once, keeping it for resume, and the
//! fan-out over the shards' channels. The sequencer's last step alone; in cluster mode the
//! tail's as well (each has a [`Broadcast`] of its own over the same shards' channels), since
//! the stream decides ids there. Below both, so that neither imports the other.
//!
//! Owns the order of commands to each shard and when shards are woken: a batch of commands is
//! sent, then each shard that got one is woken once. An event to `*` goes to every shard; a
//! targeted one only to the shards that hold a subscriber it can reach ([`crate::reach`], read
//! after `published` is set: that order is what keeps it exact). A shard whose queue is full
//! (it is holding for a slow client) makes the sender wait: that is the backpressure that
//! reaches publishers. It does not parse or decide anything, and it never waits for an answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use tracing::{debug, warn};

use crate::event::{Audience, Publish};
use crate::forward::Forward;
use crate::pipeline::{Sequenced, ShardAnswer, ShardCommand, ShardHandle, ShardQuery, SharedState};
use crate::reach::ShardSet;
use crate::sse::{encode, EventFields, Frame};

/// Frames an event whose id is decided, keeps it, and hands it to every shard: the
/// sequencer's last step alone; in cluster mode the tail's, since the stream decides ids.
#[derive(Debug)]
pub struct Broadcast {
    /// Public to the sequencer, which asks the shards through it too.
    pub(crate) fanout: Fanout,
    state: Arc<SharedState>,
    /// The history writer's channel, with `--history-file`.
    disk: Option<Sender<Arc<Sequenced>>>,
    /// After an upgrade, while the old process drains: its feed.
    forward: Option<Forward>,
    /// The shards a targeted event reaches (kept to reuse its room).
    reached: ShardSet,
}

impl Broadcast {
    /// Delivers to these shards, keeping events in `state`'s history.
    pub fn new(shards: Vec<ShardHandle>, state: Arc<SharedState>) -> Self {
        Broadcast {
            fanout: Fanout::new(shards),
            state,
            disk: None,
            forward: None,
            reached: ShardSet::default(),
        }
    }

    /// Hands every kept event to the history writer too (`--history-file`). Its channel is
    /// bounded: a disk that far behind holds the sender, as a full shard does.
    pub fn keep_on_disk(&mut self, disk: Sender<Arc<Sequenced>>) {
        self.disk = Some(disk);
    }

    /// Frames the event once, keeps it, and hands it to every shard it can reach; they are woken
    /// by [`Broadcast::wake`].
    pub fn deliver(&mut self, id: u64, publish: Publish) {
        debug!("Message {id} to subscribers of {publish}: {} bytes", publish.message.len());
        let frame = frame(id, &publish);
        self.deliver_framed(id, publish.audience, frame);
    }

    /// [`Broadcast::deliver`] of an event framed already: one a successor sequenced and
    /// forwarded while this process drains.
    pub fn deliver_framed(&mut self, id: u64, audience: Audience, frame: Frame) {
        // One clock read for both: on a VM it costs a good part of what the event does.
        let now = Instant::now();
        // Kept before any shard can see it: a resume that reads the history then finds every
        // event its shard may already have delivered to others (see `shard::delivery`).
        self.state.history.write().append(id, &audience, &frame, now);
        // Likewise: a fresh handshake from now on is later than this event.
        self.state.published.store(id, Ordering::Release);
        let event = Arc::new(Sequenced { id, audience, frame, at: now });
        if let Some(disk) = &self.disk {
            // A writer that is gone has logged why; delivery goes on.
            let _ = disk.send(Arc::clone(&event));
        }
        if let Some(forward) = &mut self.forward {
            forward.push(&event);
        }
        if event.audience.is_everyone() {
            self.fanout.publish(event);
        } else {
            // Only now, with `published` set: see `crate::reach`.
            let count = self.fanout.shard_count();
            self.state.reach.shards_for(&event.audience, count, &mut self.reached);
            self.fanout.publish_to(event, &self.reached);
        }
    }

    /// Delivers an event read from the cluster's stream, unless it was: ids only grow, so one
    /// at or below the last delivered was.
    pub fn deliver_new(&mut self, id: u64, publish: Publish) {
        if id > self.state.published.load(Ordering::Relaxed) {
            self.deliver(id, publish);
        }
    }

    /// Forwards every event to the process this one replaced, while it drains (an upgrade).
    pub fn forward_to(&mut self, forward: Forward) {
        self.forward = Some(forward);
    }

    /// The stream lost what came before now: a resume from before is told of a gap.
    pub fn new_epoch(&mut self) {
        self.state.history.write().new_epoch();
    }

    /// Wakes the shards that were sent something since the last wake, and writes what is to
    /// be forwarded.
    pub fn wake(&mut self) {
        self.fanout.wake();
        if self.forward.as_mut().is_some_and(|forward| !forward.flush()) {
            self.forward = None;
        }
    }
}

/// The event's frame: what every client it reaches is sent, and what history keeps.
pub fn frame(id: u64, publish: &Publish) -> Frame {
    encode(&EventFields {
        id: Some(id),
        event: publish.event.as_deref(),
        retry: publish.retry,
        data: Some(&publish.message),
    })
}

/// One sender's side of every shard's channel.
#[derive(Debug)]
pub struct Fanout {
    shards: Vec<ShardHandle>,
    unwoken: Vec<bool>,
}

impl Fanout {
    /// Fans out to these shards.
    pub fn new(shards: Vec<ShardHandle>) -> Self {
        let unwoken = vec![false; shards.len()];
        Fanout { shards, unwoken }
    }

    /// How many shards there are.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Queues the event on every shard; they are woken by [`Fanout::wake`].
    pub fn publish(&mut self, event: Arc<Sequenced>) {
        for shard in 0..self.shards.len() {
            self.send(shard, ShardCommand::Deliver(Arc::clone(&event)));
        }
    }

    /// Queues the event on these shards only; they are woken by [`Fanout::wake`].
    pub fn publish_to(&mut self, event: Arc<Sequenced>, shards: &ShardSet) {
        for shard in (0..self.shards.len()).filter(|&shard| shards.contains(shard)) {
            self.send(shard, ShardCommand::Deliver(Arc::clone(&event)));
        }
    }

    /// Sends one command to every shard.
    pub fn broadcast(&mut self, command: impl Fn() -> ShardCommand) {
        for shard in 0..self.shards.len() {
            self.send(shard, command());
        }
        self.wake();
    }

    /// Wakes every shard that was sent something since the last wake.
    pub fn wake(&mut self) {
        for (shard, unwoken) in self.shards.iter().zip(self.unwoken.iter_mut()) {
            if std::mem::take(unwoken) {
                if let Err(e) = shard.waker.wake() {
                    warn!("Cannot wake a worker: {e}");
                }
            }
        }
    }

    /// Asks every shard, after everything sent before; each shard's answer arrives on its own
    /// receiver (so that who answered what is known), which whoever wants the answers reads (the
    /// admin path), not the caller.
    pub fn ask(&mut self, query: &ShardQuery) -> Vec<Receiver<ShardAnswer>> {
        let mut answers = Vec::with_capacity(self.shards.len());
        for shard in 0..self.shards.len() {
            let (reply, answer) = bounded(1);
            self.send(shard, ShardCommand::Ask(query.clone(), reply));
            answers.push(answer);
        }
        self.wake();
        answers
    }

    /// Sends without ever sleeping on a shard that was not woken: when its queue is full, wake
    /// it first, then wait for room.
    fn send(&mut self, shard: usize, command: ShardCommand) {
        let handle = &self.shards[shard];
        let command = match handle.commands.try_send(command) {
            Ok(()) => {
                self.unwoken[shard] = true;
                return;
            }
            Err(TrySendError::Full(command)) => command,
            Err(TrySendError::Disconnected(_)) => return,
        };
        let _ = handle.waker.wake();
        if handle.commands.send(command).is_ok() {
            self.unwoken[shard] = true;
        }
    }
}

/// Shards as the control side sees them, for the tests of everything that sends to shards
/// (here, the sequencer, the cluster's tail, the admin path): real channels and real wakers on
/// real polls, whose other ends the test holds to see what each shard was sent and whether it
/// was woken. No sockets, no shard threads.
#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use crossbeam_channel::Receiver;
    use mio::{Events, Poll, Token, Waker};

    use super::*;
    use crate::event::{Audience, ResumeFrom, Target};
    use crate::history::{History, HistoryLimits};
    use crate::pipeline::ShardAnswer;
    use smallvec::smallvec;

    const WAKE: Token = Token(0);
    /// The longest a test waits for something another thread does.
    const PATIENCE: Duration = Duration::from_secs(5);

    /// The other ends of some shards' channels and wakers.
    pub(crate) struct TestShards {
        /// What the control side holds.
        pub(crate) handles: Vec<ShardHandle>,
        /// Each shard's queue, by shard number.
        pub(crate) inboxes: Vec<Receiver<ShardCommand>>,
        polls: Vec<Poll>,
    }

    impl TestShards {
        /// `count` shards, each with a queue of `capacity` commands.
        pub(crate) fn new(count: usize, capacity: usize) -> TestShards {
            let mut shards = TestShards { handles: Vec::new(), inboxes: Vec::new(), polls: Vec::new() };
            for _ in 0..count {
                let poll = Poll::new().unwrap();
                let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
                let (commands, inbox) = bounded(capacity);
                shards.handles.push(ShardHandle { commands, waker });
                shards.inboxes.push(inbox);
                shards.polls.push(poll);
            }
            shards
        }

        /// Whether `shard` was woken since the last look (a few wakes in between count once).
        pub(crate) fn woken(&mut self, shard: usize) -> bool {
            self.woken_within(shard, Duration::ZERO)
        }

        /// Whether `shard` is woken within a few seconds (by another thread).
        pub(crate) fn woken_soon(&mut self, shard: usize) -> bool {
            self.woken_within(shard, PATIENCE)
        }

        fn woken_within(&mut self, shard: usize, timeout: Duration) -> bool {
            let mut events = Events::with_capacity(4);
            self.polls[shard].poll(&mut events, Some(timeout)).unwrap();
            events.iter().any(|event| event.token() == WAKE)
        }

        /// Which shards were woken since the last look.
        pub(crate) fn woken_all(&mut self) -> Vec<bool> {
            (0..self.polls.len()).map(|shard| self.woken(shard)).collect()
        }

        /// What `shard` was sent and has not taken, in order, in a few words each.
        pub(crate) fn sent(&self, shard: usize) -> Vec<String> {
            self.inboxes[shard].try_iter().map(|command| describe(&command)).collect()
        }
    }

    /// A command in a few words: `deliver ID`, `ask`, `shutdown`.
    pub(crate) fn describe(command: &ShardCommand) -> String {
        match command {
            ShardCommand::Deliver(event) => format!("deliver {}", event.id),
            ShardCommand::Ask(..) => "ask".to_string(),
            ShardCommand::Shutdown => "shutdown".to_string(),
        }
    }

    /// `token=data`.
    pub(crate) fn publish(token: &str, data: &str) -> Publish {
        Publish {
            audience: Audience { targets: smallvec![Target::Token(token.into())], except: None },
            message: data.as_bytes().to_vec(),
            event: None,
            retry: None,
        }
    }

    /// The state of a server whose first event id is `first_id`, keeping plenty.
    pub(crate) fn state(first_id: u64) -> Arc<SharedState> {
        let limits =
            HistoryLimits { per_audience: 100, max_age: Duration::from_secs(3600), max_bytes: 1 << 20 };
        Arc::new(SharedState::new(false, History::new(limits, first_id, Instant::now())))
    }

    /// Gives each of the first `shards` shards a `*` subscriber in `state`'s view: every event
    /// reaches every shard, as it did before targeted events went only where they reach.
    pub(crate) fn everyone_listens(state: &SharedState, shards: usize) {
        (0..shards).for_each(|shard| state.reach.hold(shard, crate::reach::EVERYTHING));
    }

    /// What a client of `token` resuming after `after` is owed: whether it is told of a gap,
    /// and the ids of the events it gets.
    pub(crate) fn resume(state: &SharedState, token: &str, after: u64) -> (bool, Vec<String>) {
        let replay =
            state.history.read().replay(ResumeFrom::After(after), [token].into_iter(), "", Instant::now());
        let ids = replay
            .frames
            .iter()
            .filter_map(|frame| {
                let text = String::from_utf8_lossy(frame);
                let id = text.split("id: ").nth(1)?.split('\n').next()?.to_string();
                Some(id)
            })
            .collect();
        (replay.gap, ids)
    }

    fn sequenced(id: u64) -> Arc<Sequenced> {
        Arc::new(Sequenced {
            id,
            audience: publish("t", "").audience,
            frame: Frame::from_static(b"x"),
            at: Instant::now(),
        })
    }

    #[test]
    fn every_shard_gets_every_command_in_order_and_the_event_is_shared_not_copied() {
        let shards = TestShards::new(3, 16);
        let mut fanout = Fanout::new(shards.handles.clone());
        assert_eq!(fanout.shard_count(), 3);
        fanout.publish(sequenced(1));
        fanout.publish(sequenced(2));
        fanout.broadcast(|| ShardCommand::Shutdown);
        let mut firsts = Vec::new();
        for inbox in &shards.inboxes {
            let commands: Vec<ShardCommand> = inbox.try_iter().collect();
            let described: Vec<String> = commands.iter().map(describe).collect();
            assert_eq!(described, ["deliver 1", "deliver 2", "shutdown"]);
            let ShardCommand::Deliver(first) = &commands[0] else { unreachable!() };
            firsts.push(Arc::clone(first));
        }
        assert!(firsts.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])), "one event for every shard");
    }

    #[test]
    fn a_batch_wakes_each_shard_that_was_sent_something_once() {
        let mut shards = TestShards::new(3, 16);
        let mut fanout = Fanout::new(shards.handles.clone());
        fanout.publish(sequenced(1));
        fanout.publish(sequenced(2));
        assert_eq!(shards.woken_all(), [false; 3], "not before the batch ends");
        fanout.wake();
        assert_eq!(shards.woken_all(), [true; 3]);
        fanout.wake();
        assert_eq!(shards.woken_all(), [false; 3], "nothing new: nobody is woken");
        // A shard that is gone is neither sent to nor woken; the others go on.
        shards.inboxes.remove(1);
        shards.inboxes.insert(1, bounded(1).1);
        fanout.publish(sequenced(3));
        fanout.wake();
        assert_eq!(shards.woken_all(), [true, false, true]);
        assert_eq!(shards.sent(0), ["deliver 1", "deliver 2", "deliver 3"]);
    }

    #[test]
    fn ask_gives_one_receiver_per_shard_behind_what_was_sent_before() {
        let mut shards = TestShards::new(3, 16);
        let mut fanout = Fanout::new(shards.handles.clone());
        fanout.publish(sequenced(1));
        let answers = fanout.ask(&ShardQuery::Figures);
        assert_eq!(answers.len(), 3);
        assert_eq!(shards.woken_all(), [true; 3], "a question does not wait for the next batch");
        // Each shard answers on the channel its question carries: who answered what is known.
        for (shard, inbox) in shards.inboxes.iter().enumerate() {
            assert!(matches!(inbox.try_recv(), Ok(ShardCommand::Deliver(e)) if e.id == 1));
            let Ok(ShardCommand::Ask(ShardQuery::Figures, reply)) = inbox.try_recv() else {
                panic!("shard {shard} was not asked behind the event")
            };
            reply.send(ShardAnswer::Count(shard as u64 * 10)).unwrap();
        }
        for (shard, answer) in answers.iter().enumerate() {
            assert!(matches!(answer.try_recv(), Ok(ShardAnswer::Count(n)) if n == shard as u64 * 10));
        }
    }

    #[test]
    fn a_full_queue_makes_the_sender_wake_the_shard_then_wait_for_room() {
        let mut shards = TestShards::new(1, 1);
        let mut fanout = Fanout::new(shards.handles.clone());
        fanout.publish(sequenced(1));
        assert!(!shards.woken(0));
        let sent = AtomicBool::new(false);
        // Asserted once the queue has room: a failed assertion in the scope would leave the
        // sender waiting.
        let (woken, waited, first) = std::thread::scope(|scope| {
            let sender = scope.spawn(|| {
                fanout.publish(sequenced(2));
                sent.store(true, Ordering::SeqCst);
            });
            // Woken by the sender itself, which otherwise would sleep on a shard that sleeps.
            let woken = shards.woken_soon(0);
            let waited = !sent.load(Ordering::SeqCst);
            let first = shards.inboxes[0].recv_timeout(PATIENCE).map(|c| describe(&c));
            sender.join().unwrap();
            (woken, waited, first)
        });
        assert!(woken, "the shard with a full queue is woken");
        assert!(waited, "the sender waits for room");
        assert_eq!(first.as_deref(), Ok("deliver 1"));
        assert!(sent.load(Ordering::SeqCst));
        assert_eq!(shards.sent(0), ["deliver 2"]);
        fanout.wake();
        assert!(shards.woken(0), "what went in after the wait is woken for too");
    }

    #[test]
    fn an_event_is_kept_and_published_before_any_shard_can_see_it() {
        let mut shards = TestShards::new(2, 1);
        let state = state(1);
        everyone_listens(&state, 2);
        let mut broadcast = Broadcast::new(shards.handles.clone(), Arc::clone(&state));
        // Shard 0's queue is full: delivering blocks on it, before any shard has the event.
        shards.handles[0].commands.send(ShardCommand::Shutdown).unwrap();
        // What is seen while the event is on its way, asserted once the shard has taken its
        // queue: a failed assertion in the scope would leave the delivering thread waiting.
        let (woken, others_empty, published, resumed) = std::thread::scope(|scope| {
            let delivering = scope.spawn(|| broadcast.deliver(100, publish("t", "hello")));
            let seen = (
                shards.woken_soon(0),
                shards.inboxes[1].is_empty(),
                state.published.load(Ordering::Acquire),
                resume(&state, "t", 99),
            );
            assert_eq!(
                shards.inboxes[0].recv_timeout(PATIENCE).map(|c| describe(&c)).ok().as_deref(),
                Some("shutdown")
            );
            delivering.join().unwrap();
            seen
        });
        assert!(woken, "the shard with a full queue is woken");
        assert!(others_empty, "no shard has the event yet");
        assert_eq!(published, 100, "a handshake from then on is later than the event");
        assert_eq!(resumed, (false, vec!["100".to_string()]), "a resume from then on finds it");
        let Ok(ShardCommand::Deliver(event)) = shards.inboxes[1].try_recv() else { panic!("not delivered") };
        assert_eq!(event.frame, frame(100, &publish("t", "hello")), "the frame a resume gets too");
        assert_eq!(event.audience, publish("t", "hello").audience);
        assert_eq!(shards.sent(0), ["deliver 100"]);
    }

    #[test]
    fn a_targeted_event_goes_only_to_the_shards_holding_its_tokens_and_wakes_only_them() {
        let mut shards = TestShards::new(3, 16);
        let state = state(1);
        let mut broadcast = Broadcast::new(shards.handles.clone(), Arc::clone(&state));
        state.reach.hold(1, "t");
        state.reach.hold(2, "user42");
        broadcast.deliver(5, publish("t", "to t"));
        broadcast.wake();
        assert_eq!(shards.woken_all(), [false, true, false]);
        let mut prefixed = publish("t", "to user*");
        prefixed.audience.targets = smallvec![Target::Prefix("user".into())];
        broadcast.deliver(6, prefixed);
        broadcast.deliver(7, publish("nobody", "to no shard"));
        let mut everyone = publish("t", "to *");
        everyone.audience.targets = smallvec![Target::All];
        broadcast.deliver(8, everyone);
        broadcast.wake();
        assert_eq!(shards.woken_all(), [true, true, true]);
        assert_eq!(shards.sent(0), ["deliver 8"]);
        assert_eq!(shards.sent(1), ["deliver 5", "deliver 8"]);
        assert_eq!(shards.sent(2), ["deliver 6", "deliver 8"]);
        // Kept for resume whoever held its token: a client may resume from anywhere.
        assert_eq!(resume(&state, "nobody", 1), (false, vec!["7".to_string(), "8".to_string()]));
    }

    #[test]
    fn deliver_new_skips_the_ids_at_or_below_the_last_delivered() {
        let shards = TestShards::new(2, 16);
        let state = state(1);
        everyone_listens(&state, 2);
        let mut broadcast = Broadcast::new(shards.handles.clone(), Arc::clone(&state));
        broadcast.deliver_new(10, publish("t", "10"));
        broadcast.deliver_new(10, publish("t", "10 again"));
        broadcast.deliver_new(7, publish("t", "7, late"));
        broadcast.deliver_new(11, publish("t", "11"));
        for shard in 0..2 {
            assert_eq!(shards.sent(shard), ["deliver 10", "deliver 11"]);
        }
        assert_eq!(resume(&state, "t", 1), (false, vec!["10".to_string(), "11".to_string()]));
        assert_eq!(state.published.load(Ordering::Acquire), 11);
    }

    #[test]
    fn a_new_epoch_tells_a_resume_from_before_it_of_a_gap() {
        let shards = TestShards::new(1, 16);
        let state = state(1);
        let mut broadcast = Broadcast::new(shards.handles.clone(), Arc::clone(&state));
        broadcast.deliver(5, publish("t", "old"));
        assert_eq!(resume(&state, "t", 4), (false, vec!["5".to_string()]));
        broadcast.new_epoch();
        broadcast.deliver(9, publish("t", "new"));
        assert_eq!(resume(&state, "t", 4), (true, vec!["5".to_string(), "9".to_string()]));
        assert_eq!(resume(&state, "t", 5), (true, vec!["9".to_string()]), "what was lost may be after 5");
        assert_eq!(resume(&state, "t", 6), (false, vec!["9".to_string()]));
    }
}
