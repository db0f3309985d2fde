//! The threads that ask the backend (`hasses-auth-N`), and the handle shards reach them by.
//!
//! Owns the blocking HTTP calls, the only I/O of the auth hook: a few threads take questions
//! from one bounded queue, so a slow backend holds up threads of its own, never a shard. Each
//! thread keeps its own connection to an `http://` backend alive (`client`); an `https://` one
//! is asked through one shared `ureq` agent, which keeps its TLS connections. Each answer goes
//! back on the asking shard's channel, and its waker is woken unless an earlier answer already
//! did and the shard has not yet looked. It does not decide what an answer means for the
//! connection: that is the shard's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use mio::Waker;
use parking_lot::Mutex;
use tracing::debug;
use ureq::Agent;

use super::client::{Client, Target};
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
    verdicts: Sender<Verdict>,
    /// Wakes the shard's loop to take them.
    waker: Arc<Waker>,
    /// Whether the shard was woken for verdicts it has not taken yet: answers that come in a
    /// burst wake it once.
    woken: Arc<AtomicBool>,
}

impl Reply {
    /// The way back to a shard: its verdicts' channel and the waker of its loop.
    pub fn new(verdicts: Sender<Verdict>, waker: Arc<Waker>) -> Reply {
        Reply { verdicts, waker, woken: Arc::new(AtomicBool::new(false)) }
    }

    /// Sends `verdict`, waking the shard if it was not woken since it last took verdicts.
    fn send(&self, verdict: Verdict) {
        // A shard that stopped has dropped its end: nobody is waiting.
        if self.verdicts.send(verdict).is_ok() && !self.woken.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// Said by the shard before it takes its verdicts: a verdict sent after is woken for.
    pub fn taking(&self) {
        self.woken.swap(false, Ordering::AcqRel);
    }
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
        let backends: Vec<Backend> = match Target::of(&settings.url) {
            Some(target) => (0..THREADS).map(|_| Backend::Plain(Client::new(target.clone()))).collect(),
            None => {
                let agent = tls_agent();
                let tls = |_| Backend::Tls { url: settings.url.clone(), agent: agent.clone() };
                (0..THREADS).map(tls).collect()
            }
        };
        for (number, backend) in backends.into_iter().enumerate() {
            let asker = Asker { backend, queue: queue.clone(), cache: cache.clone() };
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

/// How a thread reaches the backend.
enum Backend {
    /// An `http://` one: on a connection of the thread's own.
    Plain(Client),
    /// An `https://` one: through the agent all threads share.
    Tls { url: String, agent: Agent },
}

/// One thread's share of the asking.
struct Asker {
    backend: Backend,
    queue: Receiver<Job>,
    cache: Option<Arc<Mutex<Cache>>>,
}

impl Asker {
    /// Answers questions until the shards are gone.
    fn run(mut self) {
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
            job.reply.send(Verdict { ticket: job.ticket, answer });
        }
    }

    /// Asks the backend, giving it `left` to answer whole.
    fn ask(&mut self, question: &Question, left: Duration) -> Answer {
        match &mut self.backend {
            Backend::Plain(client) => match client.ask(&question.headers, left) {
                Ok(response) => read_answer(response.status, &response.body),
                Err(e) => Answer::Failed(e.to_string()),
            },
            Backend::Tls { url, agent } => ask_over_tls(agent, url, question, left),
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
