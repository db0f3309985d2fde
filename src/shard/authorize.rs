//! Subscriptions put to the backend (`--auth-url`): parking a handshake, and the verdict.
//!
//! Owns a handshake's wait for the backend: its question goes to the hook's threads (or is
//! answered from the cache), the connection stays registered but is not read, and the verdict
//! comes back on the shard's channel, woken by its waker. Then the subscription goes on within
//! the backend's grant, is refused with the backend's status, or, when no usable answer came by
//! `--auth-timeout`, is disconnected without one, so that its EventSource tries again. It does
//! not ask the backend itself (`auth_hook`'s threads do) nor judge its answers (`auth_hook`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use tracing::{info, warn};

use super::keys::{ConnKey, StreamKey};
use super::Shard;
use crate::auth::{self, Granted, Refusal};
use crate::auth_hook::{self, Answer, Grant, Job, Reply, Ticket, Verdict};
use crate::gate::Visitor;
use crate::h2::frame::ErrorCode;
use crate::http::Subscribe;

/// A subscription waiting for the backend.
#[derive(Debug)]
pub(super) struct Parked {
    /// The connection's serial when it was parked: a verdict for an older one is dropped.
    serial: u32,
    request: Subscribe,
    /// What its JWT granted, when subscriptions need one too.
    granted: Option<Granted>,
}

/// A shard's handshakes waiting for the backend, and where their verdicts arrive.
#[derive(Debug)]
pub(super) struct Waiting {
    parked: HashMap<StreamKey, Parked>,
    verdicts: Receiver<Verdict>,
    /// Given with each question: the way back to this shard.
    reply: Reply,
}

impl Waiting {
    /// Nothing waiting yet; verdicts arrive on `verdicts`, sent through `reply`.
    pub(super) fn new(verdicts: Receiver<Verdict>, reply: Reply) -> Self {
        Waiting { parked: HashMap::new(), verdicts, reply }
    }

    /// Whether the connection `key` waits for the backend.
    pub(super) fn holds(&self, key: StreamKey) -> bool {
        self.parked.contains_key(&key)
    }

    /// Forgets the connection `key` (it closed): a verdict for it is dropped when it comes.
    pub(super) fn forget(&mut self, key: StreamKey) {
        self.parked.remove(&key);
    }

    /// How many handshakes wait.
    pub(super) fn len(&self) -> usize {
        self.parked.len()
    }
}

impl Shard {
    /// Puts a subscription whose JWT (if one is needed) passed to the backend, if there is one:
    /// answered at once from the cache, else parked until the verdict. Without a backend, the
    /// subscription goes on as its JWT allows.
    pub(super) fn authorize(&mut self, key: StreamKey, request: Subscribe, granted: Option<Granted>) {
        let Some(hook) = self.settings.auth_hook.as_ref() else {
            let sub = granted.as_ref().is_some_and(|granted| granted.sub.is_some());
            return self.subscribe_granted(key, request, sub, granted.map(|granted| granted.expires));
        };
        let Some((question, serial)) = self.question(key) else {
            return self.close(key.connection(), "request head unreadable for the auth backend");
        };
        let parked = Parked { serial, request, granted };
        if let Some(answer) = hook.cached(&question) {
            self.counters.auth_backend_cache_hits += 1;
            return self.decide(key, parked, answer);
        }
        let now = Instant::now();
        let job = Job {
            question,
            ticket: Ticket { slot: key.raw() as usize, serial: parked.serial },
            reply: self.waiting.reply.clone(),
            deadline: now + hook.timeout,
        };
        if !hook.ask(job) {
            let why = format!("over {} subscriptions wait for the backend", auth_hook::QUEUE);
            return self.fail_authorization(key, &why);
        }
        self.counters.auth_backend_asked += 1;
        let at = self.deadline(now, hook.timeout);
        self.timers.authorize_by(at, key, parked.serial);
        self.waiting.parked.insert(key, parked);
    }

    /// Acts on every verdict the backend's threads sent.
    pub(super) fn take_verdicts(&mut self) {
        self.waiting.reply.taking();
        loop {
            let verdict = match self.waiting.verdicts.try_recv() {
                Ok(verdict) => verdict,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            };
            if let Some((key, parked)) = self.unpark(verdict.ticket.slot, verdict.ticket.serial) {
                self.decide(key, parked, verdict.answer);
            }
        }
    }

    /// Disconnects a parked handshake whose verdict did not come by `--auth-timeout`.
    pub(super) fn authorization_overdue(&mut self, key: StreamKey, serial: u32) {
        if self.unpark(key.raw() as usize, serial).is_some() {
            let why = format!("no answer within --auth-timeout ({:?})", self.auth_timeout());
            self.fail_authorization(key, &why);
        }
    }

    /// The parked handshake at `slot` if it is still the one with `serial`.
    fn unpark(&mut self, slot: usize, serial: u32) -> Option<(StreamKey, Parked)> {
        let key = StreamKey::from_raw(u32::try_from(slot).ok()?);
        if self.waiting.parked.get(&key)?.serial != serial {
            return None;
        }
        Some((key, self.waiting.parked.remove(&key)?))
    }

    /// What the backend's answer means for the subscription.
    fn decide(&mut self, key: StreamKey, parked: Parked, answer: Answer) {
        if answer.has_expired(auth_hook::unix_now()) {
            return self.fail_authorization(key, "its grant's \"expires\" has passed");
        }
        match answer {
            Answer::Allowed(grant) => self.admit_granted(key, parked, grant),
            Answer::Refused(refusal) => {
                self.counters.auth_backend_refused += 1;
                self.refuse_subscription(key, &refusal);
            }
            Answer::Failed(why) => self.fail_authorization(key, &why),
        }
    }

    /// Subscribes within the backend's grant (and the JWT's, when there is one): its targets,
    /// its id, the earlier of the two expiries.
    fn admit_granted(&mut self, key: StreamKey, parked: Parked, grant: Grant) {
        let Parked { mut request, granted, .. } = parked;
        let Grant { subscribe, id, expires } = grant;
        if let Err(why) =
            auth::within_grant(subscribe.as_deref(), id.as_deref(), &request.tokens, request.id.as_deref())
        {
            self.counters.auth_backend_refused += 1;
            return self.refuse_subscription(key, &Refusal::BackendForbidden(why));
        }
        self.counters.auth_backend_allowed += 1;
        let (jwt_sub, jwt_expires, jti) = match granted {
            Some(granted) => (granted.sub, Some(granted.expires), granted.jti),
            None => (None, None, None),
        };
        if let Some(fixed) = id.as_deref().filter(|fixed| request.id.as_deref() != Some(*fixed)) {
            // The backend named the client: its bans hold too.
            let visitor = Visitor { id: fixed, sub: Some(fixed), jti: jti.as_deref() };
            if !self.let_in(key, visitor, &request.tokens) {
                return;
            }
        }
        if id.is_some() {
            request.id = id.clone();
        }
        let expires = [jwt_expires, expires].into_iter().flatten().min();
        self.subscribe_granted(key, request, id.or(jwt_sub).is_some(), expires);
    }

    /// Disconnects a subscription without an answer: any answer but `200` would stop its
    /// EventSource for good, a dropped connection makes it try again.
    fn fail_authorization(&mut self, key: StreamKey, why: &str) {
        self.counters.auth_backend_failed += 1;
        warn!(
            "Subscription from {} not authorized: the auth backend failed: {why}; disconnected so that it retries",
            self.connections[key.connection()].peer
        );
        match key.slot() {
            None => self.close(key.connection(), "no answer from the auth backend"),
            // The stream alone: EventSource retries a stream reset before any answer.
            Some(_) => self.reset_stream(key, ErrorCode::RefusedStream),
        }
    }

    /// A parked client that went away: its verdict will find nothing.
    /// The question to the backend about `key`'s request, and the serial its answer must match.
    fn question(&self, key: StreamKey) -> Option<(auth_hook::Question, u32)> {
        let conn = self.connections.get(key.connection())?;
        match key.slot() {
            None => Some((auth_hook::question(conn.request.bytes(), conn.peer.addr())?, conn.serial)),
            Some(slot) => {
                let stream = &conn.h2.as_deref()?.stream(slot)?.data;
                let head = self.judging.as_ref()?;
                Some((auth_hook::question_of(&head.path, &head.headers(), conn.peer.addr()), stream.serial))
            }
        }
    }

    pub(super) fn gone_while_parked(&mut self, key: ConnKey) {
        info!("Client {} went away while the auth backend was asked", self.connections[key].peer);
        self.close(key, "closed by peer while waiting for the auth backend");
    }

    fn auth_timeout(&self) -> Duration {
        self.settings.auth_hook.as_ref().map_or(Duration::ZERO, |hook| hook.timeout)
    }
}
