//! The threads that ask the backend (`hasses-auth-N`), and the handle shards reach them by.
//!
//! Owns the blocking HTTP calls, the only I/O of the auth hook: a few threads share one `ureq`
//! agent (its connections to the backend kept alive) and take questions from one bounded
//! queue, so a slow backend holds up threads of its own, never a shard. Each answer goes back
//! on the asking shard's channel, with its waker. It does not decide what an answer means for
//! the connection: that is the shard's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use mio::Waker;
use parking_lot::Mutex;
use tracing::debug;
use ureq::Agent;

use super::{read_answer, unix_now, Answer, Cache, HookSettings, Question, MAX_ANSWER};

/// How many threads ask the backend at once.
pub const THREADS: usize = 16;
/// How many questions wait for a free thread, at most; one more is not asked.
pub const QUEUE: usize = 1024;

/// Why the hook's threads cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the auth hook's threads: {0}")]
pub struct HookError(#[from] std::io::Error);

/// Which parked handshake an answer is for: a shard's connection key and its serial, as the
/// shard gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The connection's place in its shard.
    pub slot: usize,
    /// The connection's serial when it was parked.
    pub serial: u32,
}

/// Where an answer goes: the asking shard's channel and the waker of its loop.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The shard's end of its verdicts' channel.
    pub verdicts: Sender<Verdict>,
    /// Wakes the shard's loop to take them.
    pub waker: Arc<Waker>,
}

/// One question for the backend.
#[derive(Debug)]
pub struct Job {
    /// What to ask.
    pub question: Question,
    /// Whose question it is.
    pub ticket: Ticket,
    /// Where the answer goes.
    pub reply: Reply,
    /// When the shard stops waiting: a question still queued then is not asked.
    pub deadline: Instant,
}

/// The backend's answer to a shard's question.
#[derive(Debug)]
pub struct Verdict {
    /// Whose question it was.
    pub ticket: Ticket,
    /// What the backend said.
    pub answer: Answer,
}

/// The shards' side of the hook: the queue to its threads, and the cache they fill.
#[derive(Debug)]
pub struct AuthHook {
    jobs: Sender<Job>,
    cache: Option<Arc<Mutex<Cache>>>,
    /// How long a handshake waits for its answer (`--auth-timeout`).
    pub timeout: Duration,
}

impl AuthHook {
    /// Starts the threads that ask the backend of `settings`. They are not joined at a stop:
    /// one may be waiting on the backend for up to `--auth-timeout`, and nothing of theirs needs
    /// finishing; they end with the process.
    pub fn start(settings: &HookSettings) -> Result<AuthHook, HookError> {
        let (jobs, queue) = bounded(QUEUE);
        let cache = settings.cache.map(|ttl| Arc::new(Mutex::new(Cache::new(ttl))));
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            // The backend is the web app's own address: no proxy from the environment.
            .proxy(None)
            .user_agent(concat!("hasses/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections(THREADS)
            .max_idle_connections_per_host(THREADS)
            .build()
            .into();
        for number in 0..THREADS {
            let asker = Asker {
                url: settings.url.clone(),
                agent: agent.clone(),
                queue: queue.clone(),
                cache: cache.clone(),
            };
            std::thread::Builder::new().name(format!("hasses-auth-{number}")).spawn(move || asker.run())?;
        }
        Ok(AuthHook { jobs, cache, timeout: settings.timeout })
    }

    /// The cached answer to `question`, if there is one and its grant has not expired.
    pub fn cached(&self, question: &Question) -> Option<Answer> {
        let answer = self.cache.as_ref()?.lock().get(&question.key, Instant::now())?;
        (!answer.has_expired(unix_now())).then_some(answer)
    }

    /// Queues `job` for the threads; false when [`QUEUE`] questions already wait.
    pub fn ask(&self, job: Job) -> bool {
        self.jobs.try_send(job).is_ok()
    }
}

/// One thread's share of the asking.
struct Asker {
    url: String,
    agent: Agent,
    queue: Receiver<Job>,
    cache: Option<Arc<Mutex<Cache>>>,
}

impl Asker {
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
            let answer = self.ask(&job.question, left);
            if let Some(cache) = self.cache.as_ref().filter(|_| !answer.has_expired(unix_now())) {
                cache.lock().put(job.question.key.clone(), answer.clone(), Instant::now());
            }
            // A shard that stopped has dropped its end: nobody is waiting.
            if job.reply.verdicts.send(Verdict { ticket: job.ticket, answer }).is_ok() {
                let _ = job.reply.waker.wake();
            }
        }
    }

    /// Asks the backend, giving it `left` to answer whole.
    fn ask(&self, question: &Question, left: Duration) -> Answer {
        let mut request = self.agent.get(&self.url);
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
