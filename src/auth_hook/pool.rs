//! What asks the backend, and the handle shards reach it by.
//!
//! Owns the one bounded queue of questions, starting what takes them (the `plain` loop,
//! `hasses-auth`, for an `http://` backend; for an `https://` one, [`THREADS`] threads
//! `hasses-auth-N` asking through one shared `ureq` agent, which does TLS and keeps its
//! connections alive), and the way back: each answer goes on the asking shard's channel, its
//! bell rung. A slow backend holds up the hook's own connections or threads, never a shard.
//! It does not decide what an answer means for the connection: that is the shard's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use mio::{Poll, Waker};
use parking_lot::Mutex;
use tracing::debug;
use ureq::Agent;

use super::client::Target;
use super::job::{Bell, Job, Verdict};
use super::plain;
use super::{read_answer, unix_now, Answer, Cache, HookSettings, Question, MAX_ANSWER};

/// How many threads ask the backend at once.
pub const THREADS: usize = 16;
/// How many questions wait for a free thread, at most; one more is not asked.
pub const QUEUE: usize = 1024;

/// Why the hook's threads cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the auth hook's threads: {0}")]
pub struct HookError(#[from] std::io::Error);

/// The shards' side of the hook: the queue to its threads, and the cache they fill.
#[derive(Debug)]
pub struct AuthHook {
    jobs: Sender<Job>,
    /// The plain loop's bell, for an `http://` backend.
    bell: Option<Bell>,
    cache: Option<Arc<Mutex<Cache>>>,
    /// How long a handshake waits for its answer (`--auth-timeout`).
    pub timeout: Duration,
}

impl AuthHook {
    /// Starts what asks the backend of `settings`: one loop for an `http://` one, [`THREADS`]
    /// threads for an `https://` one. They are not joined at a stop: one may be waiting on the
    /// backend for up to `--auth-timeout`, and nothing of theirs needs finishing; they end with
    /// the process.
    pub fn start(settings: &HookSettings) -> Result<AuthHook, HookError> {
        let (jobs, queue) = bounded(QUEUE);
        let cache = settings.cache.map(|ttl| Arc::new(Mutex::new(Cache::new(ttl))));
        let bell = match Target::of(&settings.url) {
            Some(target) => {
                let poll = Poll::new()?;
                let bell = Bell::new(Arc::new(Waker::new(poll.registry(), plain::WAKER)?));
                let asker = plain::Asker::new(poll, bell.clone(), queue, cache.clone(), target);
                std::thread::Builder::new().name("hasses-auth".to_owned()).spawn(move || asker.run())?;
                Some(bell)
            }
            None => {
                let agent = tls_agent();
                for number in 0..THREADS {
                    let asker = TlsAsker {
                        url: settings.url.clone(),
                        agent: agent.clone(),
                        queue: queue.clone(),
                        cache: cache.clone(),
                    };
                    std::thread::Builder::new()
                        .name(format!("hasses-auth-{number}"))
                        .spawn(move || asker.run())?;
                }
                None
            }
        };
        Ok(AuthHook { jobs, bell, cache, timeout: settings.timeout })
    }

    /// The cached answer to `question`, if there is one and its grant has not expired.
    pub fn cached(&self, question: &Question) -> Option<Answer> {
        let answer = self.cache.as_ref()?.lock().get(&question.key, Instant::now())?;
        (!answer.has_expired(unix_now())).then_some(answer)
    }

    /// Queues `job` for the threads; false when [`QUEUE`] questions already wait.
    pub fn ask(&self, job: Job) -> bool {
        let queued = self.jobs.try_send(job).is_ok();
        if let (true, Some(bell)) = (queued, &self.bell) {
            bell.ring();
        }
        queued
    }
}

/// One thread's share of asking an `https://` backend.
struct TlsAsker {
    url: String,
    agent: Agent,
    queue: Receiver<Job>,
    cache: Option<Arc<Mutex<Cache>>>,
}

impl TlsAsker {
    /// Answers questions until the shards are gone.
    fn run(self) {
        while let Ok(job) = self.queue.recv() {
            // The shard gave up on a question still queued at its deadline, and said so.
            let Some(left) =
                job.deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero())
            else {
                debug!("Auth hook: a question waited past its deadline, not asked");
                continue;
            };
            let answer = ask_over_tls(&self.agent, &self.url, &job.question, left);
            if let Some(cache) = self.cache.as_ref().filter(|_| !answer.has_expired(unix_now())) {
                cache.lock().put(job.question.key.clone(), answer.clone(), Instant::now());
            }
            job.reply.send(Verdict { ticket: job.ticket, answer });
        }
    }
}

/// The agent all threads share for an `https://` backend, its connections kept alive.
fn tls_agent() -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        // The backend is the web app's own address: no proxy from the environment.
        .proxy(None)
        .user_agent(concat!("hasses/", env!("CARGO_PKG_VERSION")))
        .max_idle_connections(THREADS)
        .max_idle_connections_per_host(THREADS)
        .build()
        .into()
}

/// Asks an `https://` backend through `agent`, giving it `left` to answer whole.
fn ask_over_tls(agent: &Agent, url: &str, question: &Question, left: Duration) -> Answer {
    let mut request = agent.get(url);
    for (name, value) in &question.headers {
        request = request.header(*name, value.as_slice());
    }
    let response = request.config().timeout_global(Some(left)).build().call();
    let mut response = match response {
        Ok(response) => response,
        Err(e) => return Answer::Failed(describe(&e)),
    };
    let status = response.status().as_u16();
    match response.body_mut().with_config().limit(MAX_ANSWER).read_to_vec() {
        Ok(body) => read_answer(status, &body),
        Err(e) => Answer::Failed(format!("its answer cannot be read: {}", describe(&e))),
    }
}

/// What went wrong asking, in words for the log.
fn describe(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Timeout(_) => "no answer within --auth-timeout".to_owned(),
        ureq::Error::Io(e) => format!("cannot reach it: {e}"),
        ureq::Error::BodyExceedsLimit(limit) => format!("its answer is over {limit} bytes"),
        other => other.to_string(),
    }
}
