//! The admin path: answers to questions about the server, on a thread of its own.
//!
//! Owns gathering the shards' parts of an answer (status figures, client rows, subscriber
//! counts) and turning them into hasses' log lines or JSON. The control thread sends the shards
//! their question through the sequencer, in order behind the events before it, then hands the
//! question here and goes on: it never waits for an answer, and neither does a shard, which
//! answers when it reaches the question in its queue. So a client list of 100,000 rows, or a
//! shard holding its intake for a slow client, holds up no publish. A JSON answer goes back to
//! the control thread, which owns the connection that asked.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use tracing::{info, warn};

use crate::api::{metrics, ApiQuery, Response};
use crate::cluster::ClusterShared;
use crate::event::{ApiKey, Asker, PublisherKey};
use crate::figures::{ClientRow, ControlFigures, ShardFigures};
use crate::log::REPORT;
use crate::pipeline::{Query, ShardAnswer, ShardQuery, SharedState};
use crate::stats::{self, Status};
use crate::tls::TlsFiles;

/// How long the shards may take to answer one question; a shard that does not is left out of
/// the answer, and logged.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long every worker has to answer `/healthz` for the server to be healthy: a worker that
/// takes longer is stuck or far behind its queue.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Where an answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerTo {
    /// hasses' lines, to the log.
    Log,
    /// JSON, to the control connection that asked, as its answer with this place among its
    /// answers.
    Connection(Asker<PublisherKey>, u64),
    /// An HTTP response, to the API connection that asked.
    Api(Asker<ApiKey>, ApiQuery),
}

/// An answer on its way back to the connection that asked.
#[derive(Debug)]
pub enum Reply {
    /// To a control connection, as its answer with this place: one line of JSON, its newline
    /// included.
    Line(Asker<PublisherKey>, u64, String),
    /// To an API connection.
    Http(Asker<ApiKey>, Response),
}

/// What the status block says about the server's setup, fixed for its run.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    /// The user privileges were dropped to.
    pub user: Option<String>,
    /// When the server started.
    pub started: Instant,
    /// The CORS base.
    pub cors_base: String,
    /// The certificate and key served.
    pub tls: Option<TlsFiles>,
    /// How many workers serve clients.
    pub workers: usize,
    /// The cluster's figures, in cluster mode.
    pub cluster: Option<Arc<ClusterShared>>,
}

/// A question handed to the admin thread, its shards' answers on the way.
#[derive(Debug)]
pub struct Question {
    /// What is asked.
    pub query: Query,
    /// The control thread's counters when it asked.
    pub control: ControlFigures,
    /// Where the answer goes.
    pub to: AnswerTo,
    /// Each shard's answer, by shard number.
    pub answers: Vec<Receiver<ShardAnswer>>,
}

/// What each shard must be asked to answer `query`.
pub fn shard_query(query: &Query) -> ShardQuery {
    match query {
        Query::Status | Query::NumberOfClients => ShardQuery::Figures,
        Query::ClientList => ShardQuery::ClientList,
        Query::SubscribedClients(token) => ShardQuery::CountSubscribed(Arc::from(token.as_str())),
    }
}

/// The admin thread's state.
#[derive(Debug)]
pub struct Admin {
    questions: Receiver<Question>,
    replies: Sender<Reply>,
    /// Wakes the control thread when a reply is waiting for it.
    control: Arc<Waker>,
    facts: ServerFacts,
    state: Arc<SharedState>,
}

impl Admin {
    /// Answers `questions`; JSON replies go to `replies`, and `control` is woken for each.
    pub fn new(
        questions: Receiver<Question>,
        replies: Sender<Reply>,
        control: Arc<Waker>,
        facts: ServerFacts,
        state: Arc<SharedState>,
    ) -> Self {
        Admin { questions, replies, control, facts, state }
    }

    /// Answers questions in the order they came, until the control thread is gone.
    pub fn run(self) -> std::io::Result<()> {
        for question in &self.questions {
            let reply = match question.to {
                AnswerTo::Log => {
                    let text = self.answer(question);
                    text.lines().for_each(|line| info!(target: REPORT, "{line}"));
                    continue;
                }
                AnswerTo::Connection(asker, place) => Reply::Line(asker, place, self.answer(question) + "\n"),
                AnswerTo::Api(asker, query) => Reply::Http(asker, self.api_answer(query, question)),
            };
            if self.replies.send(reply).is_ok() {
                self.control.wake()?;
            }
        }
        Ok(())
    }

    /// The answer to `question`: log lines, or one line of JSON.
    fn answer(&self, question: Question) -> String {
        let parts = collect(&question.answers, ANSWER_TIMEOUT).into_iter().flatten().collect();
        let json = !matches!(question.to, AnswerTo::Log);
        match question.query {
            Query::Status => {
                let status = self.status(question.control, figures(parts));
                if json {
                    status.json().to_string()
                } else {
                    status.lines().join("\n")
                }
            }
            Query::ClientList => {
                let rows = client_rows(parts);
                if json {
                    stats::client_list_json(&rows).to_string()
                } else {
                    stats::client_list_lines(&rows).join("\n")
                }
            }
            Query::NumberOfClients => {
                let connections = figures(parts).connections;
                if json {
                    serde_json::json!({ "numberofclients": connections }).to_string()
                } else {
                    format!("Number of connected clients: {connections}")
                }
            }
            Query::SubscribedClients(token) => {
                let count = count(parts);
                if json {
                    serde_json::json!({ "subscribedclients": count, "subscribedfor": token }).to_string()
                } else {
                    format!("Client count subscribed for \"{token}\": {count}")
                }
            }
        }
    }

    /// The HTTP response to an API question.
    fn api_answer(&self, query: ApiQuery, question: Question) -> Response {
        match query {
            ApiQuery::Status | ApiQuery::Clients => Response::json(self.answer(question)),
            ApiQuery::Metrics => {
                let parts = collect(&question.answers, ANSWER_TIMEOUT);
                let workers = parts.into_iter().map(|part| part.map(|p| figures(vec![p]))).collect();
                let history = self.state.history.read().figures();
                let cluster = self.facts.cluster.as_deref().map(ClusterShared::figures);
                let snapshot = metrics::Snapshot { workers, control: question.control, history, cluster };
                Response::ok(metrics::CONTENT_TYPE, metrics::render(&snapshot))
            }
            ApiQuery::Health => {
                let late = collect(&question.answers, HEALTH_TIMEOUT).iter().filter(|p| p.is_none()).count();
                if late == 0 {
                    Response::ok("text/plain; charset=utf-8", "ok\n")
                } else {
                    let shards = question.answers.len();
                    Response::error(503, &format!("{late} of {shards} workers did not answer within 1 s"))
                }
            }
        }
    }

    /// The status block from the control thread's counters and the shards' figures.
    fn status(&self, control: ControlFigures, shards: ShardFigures) -> Status {
        let facts = &self.facts;
        Status {
            version: env!("CARGO_PKG_VERSION"),
            compiled: env!("HASSES_BUILD_DATE"),
            pid: std::process::id(),
            uid: nix::unistd::getuid().as_raw(),
            user: facts.user.clone(),
            running: facts.started.elapsed(),
            log_level: crate::log::level(),
            reinit: self.state.reinit.load(Ordering::Relaxed),
            cors_base: facts.cors_base.clone(),
            peak_connections: self.state.peak.load(Ordering::Relaxed),
            processed: control.processed,
            refused: control.refused,
            workers: facts.workers,
            shards,
            tls: facts.tls.clone(),
            history: self.state.history.read().figures(),
            cluster: facts.cluster.as_deref().map(ClusterShared::figures),
        }
    }
}

/// Each shard's answer, if it comes within `timeout` (a shard that does not answer is logged).
fn collect(answers: &[Receiver<ShardAnswer>], timeout: Duration) -> Vec<Option<ShardAnswer>> {
    let deadline = Instant::now() + timeout;
    let collected: Vec<_> = answers.iter().map(|answer| answer.recv_deadline(deadline).ok()).collect();
    let late = collected.iter().filter(|answer| answer.is_none()).count();
    if late > 0 {
        warn!("{late} of {} workers did not answer within {timeout:?}", answers.len());
    }
    collected
}

fn figures(parts: Vec<ShardAnswer>) -> ShardFigures {
    let mut total = ShardFigures::default();
    for part in parts {
        if let ShardAnswer::Figures(figures) = part {
            total += figures;
        }
    }
    total
}

fn client_rows(parts: Vec<ShardAnswer>) -> Vec<ClientRow> {
    let mut rows: Vec<ClientRow> = parts
        .into_iter()
        .flat_map(|part| match part {
            ShardAnswer::ClientList(rows) => rows,
            _ => Vec::new(),
        })
        .collect();
    rows.sort_by_key(|row| row.fd);
    rows
}

fn count(parts: Vec<ShardAnswer>) -> u64 {
    parts.into_iter().map(|part| if let ShardAnswer::Count(n) = part { n } else { 0 }).sum()
}
