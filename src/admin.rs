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
use crate::cluster::{ClusterAsker, ClusterShared};
use crate::event::{ApiKey, Asker, PublisherKey};
use crate::figures::{ClientRow, ControlFigures, DeliveryLatency, ShardFigures};
use crate::history_file::FileFigures;
use crate::log::REPORT;
use crate::pipeline::{Query, ShardAnswer, SharedState};
use crate::stats::{self, Status};
use crate::tally::{collect, NodeAnswer, Tally};
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
    /// An HTTP response carrying the JSON a control connection would get (presence, orders),
    /// to the API connection that asked.
    ApiJson(Asker<ApiKey>),
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
    /// The history file's figures, with `--history-file`.
    pub history_file: Option<Arc<FileFigures>>,
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

/// The admin thread's state.
#[derive(Debug)]
pub struct Admin {
    questions: Receiver<Question>,
    replies: Sender<Reply>,
    /// Wakes the control thread when a reply is waiting for it.
    control: Arc<Waker>,
    facts: ServerFacts,
    state: Arc<SharedState>,
    /// In cluster mode: asks every node the questions they answer for their own clients.
    cluster: Option<ClusterAsker>,
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
        Admin { questions, replies, control, facts, state, cluster: None }
    }

    /// Asks every node of the cluster, through `asker`, the questions a cluster answers as one.
    pub fn with_cluster(self, asker: ClusterAsker) -> Self {
        Admin { cluster: Some(asker), ..self }
    }

    /// Answers questions in the order they came, until the control thread is gone.
    pub fn run(mut self) -> std::io::Result<()> {
        let questions = self.questions.clone();
        for question in &questions {
            let reply = match question.to {
                AnswerTo::Log => {
                    let text = self.answer(question);
                    text.lines().for_each(|line| info!(target: REPORT, "{line}"));
                    continue;
                }
                AnswerTo::Connection(asker, place) => Reply::Line(asker, place, self.answer(question) + "\n"),
                AnswerTo::Api(asker, query) => Reply::Http(asker, self.api_answer(query, question)),
                AnswerTo::ApiJson(asker) => Reply::Http(asker, self.json_response(question)),
            };
            if self.replies.send(reply).is_ok() {
                self.control.wake()?;
            }
        }
        Ok(())
    }

    /// The answer to `question`: log lines, or one line of JSON.
    fn answer(&mut self, question: Question) -> String {
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
            query @ (Query::Presence { .. } | Query::Order(_)) => {
                match self.tally(&query, parts).json(&query) {
                    Ok(answer) if json => answer.to_string(),
                    Ok(answer) => format!("{query:?}: {answer}"),
                    Err(error) if json => serde_json::json!({ "error": error }).to_string(),
                    Err(error) => format!("{query:?} failed: {error}"),
                }
            }
        }
    }

    /// Every node's answer to a question a cluster answers as one: alone, this node's shards'
    /// `parts`; in a cluster (where no shard was asked here), each node's, this one's too,
    /// through Redis.
    fn tally(&mut self, query: &Query, parts: Vec<ShardAnswer>) -> Tally {
        match &mut self.cluster {
            Some(cluster) => cluster.ask(query).unwrap_or_else(|error| {
                warn!("Cluster question unanswered: {error}");
                Tally { answers: vec![NodeAnswer::failed(None, error)], reached: Some(0) }
            }),
            None => Tally { answers: vec![NodeAnswer::of(None, parts)], reached: None },
        }
    }

    /// The HTTP response to a question answered with JSON: `503` when an order failed.
    fn json_response(&mut self, question: Question) -> Response {
        let parts = collect(&question.answers, ANSWER_TIMEOUT).into_iter().flatten().collect();
        let query = question.query;
        match self.tally(&query, parts).json(&query) {
            Ok(answer) => Response::json(answer.to_string()),
            Err(error) => {
                warn!("{query:?} failed: {error}");
                Response::error(503, &error)
            }
        }
    }

    /// The HTTP response to an API question.
    fn api_answer(&mut self, query: ApiQuery, question: Question) -> Response {
        match query {
            ApiQuery::Status | ApiQuery::Clients => Response::json(self.answer(question)),
            ApiQuery::Metrics => {
                let parts = collect(&question.answers, ANSWER_TIMEOUT);
                let latency = delivery_latency(parts.iter().flatten());
                let workers = parts.into_iter().map(|part| part.map(|p| figures(vec![p]))).collect();
                let history = self.state.history.read().figures();
                let cluster = self.facts.cluster.as_deref().map(ClusterShared::figures);
                let history_file = self.facts.history_file.as_deref().map(FileFigures::figures);
                let snapshot = metrics::Snapshot {
                    workers,
                    latency,
                    control: question.control,
                    history,
                    history_file,
                    cluster,
                };
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
            history_file: facts.history_file.as_deref().map(FileFigures::figures),
        }
    }
}

fn figures(parts: Vec<ShardAnswer>) -> ShardFigures {
    let mut total = ShardFigures::default();
    for part in parts {
        if let ShardAnswer::Figures(figures, _) = part {
            total += *figures;
        }
    }
    total
}

/// The shards' delivery latencies, added up.
fn delivery_latency<'a>(parts: impl Iterator<Item = &'a ShardAnswer>) -> DeliveryLatency {
    let mut total = DeliveryLatency::default();
    for part in parts {
        if let ShardAnswer::Figures(_, latency) = part {
            total += **latency;
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

#[cfg(test)]
mod tests {
    use crossbeam_channel::{bounded, unbounded};

    use super::*;
    use crate::api::metrics::CONTENT_TYPE;
    use crate::broadcast::tests::{state, TestShards};
    use crate::gate::{Order, Who};
    use crate::presence::PresenceRow;

    fn facts() -> ServerFacts {
        ServerFacts {
            user: None,
            started: Instant::now(),
            cors_base: String::new(),
            tls: None,
            workers: 3,
            cluster: None,
            history_file: None,
        }
    }

    /// An admin thread's state, its replies, and a stand-in for the control thread it wakes.
    fn admin() -> (Admin, Receiver<Reply>, TestShards, Sender<Question>) {
        let control = TestShards::new(1, 1);
        let (questions_in, questions) = unbounded();
        let (replies, replies_out) = unbounded();
        let admin = Admin::new(questions, replies, Arc::clone(&control.handles[0].waker), facts(), state(1));
        (admin, replies_out, control, questions_in)
    }

    /// Receivers that hold these shards' answers; `None` is a shard that is gone unanswered.
    fn answered(parts: Vec<Option<ShardAnswer>>) -> Vec<Receiver<ShardAnswer>> {
        parts
            .into_iter()
            .map(|part| {
                let (reply, answer) = bounded(1);
                if let Some(part) = part {
                    reply.send(part).unwrap();
                }
                answer
            })
            .collect()
    }

    fn question(query: Query, to: AnswerTo, parts: Vec<Option<ShardAnswer>>) -> Question {
        let control = ControlFigures { processed: 42, refused: 1, ..ControlFigures::default() };
        Question { query, control, to, answers: answered(parts) }
    }

    fn shard(connections: u64, streaming: u64) -> ShardAnswer {
        ShardAnswer::Figures(
            Box::new(ShardFigures { connections, streaming, deliveries: 10, ..ShardFigures::default() }),
            Box::default(),
        )
    }

    fn row(fd: i32, worker: usize) -> ClientRow {
        ClientRow {
            fd,
            peer: "127.0.0.1:40000".parse().unwrap(),
            state: "SSE",
            messages: 0,
            reinits: 0,
            connected_secs: 1,
            handshaked_secs: Some(1),
            id: format!("c{fd}"),
            agent: String::new(),
            tokens: vec!["t".into()],
            worker,
            tls: None,
            last_event_id: 0,
            sub: None,
            h2_stream: None,
        }
    }

    const JSON: AnswerTo = AnswerTo::Connection(Asker { key: PublisherKey(1), serial: 1 }, 0);

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn the_shards_parts_are_summed_or_merged_in_descriptor_order() {
        let total = figures(vec![shard(2, 1), shard(3, 2), ShardAnswer::Count(7)]);
        assert_eq!((total.connections, total.streaming, total.deliveries), (5, 3, 20));
        let rows = client_rows(vec![
            ShardAnswer::ClientList(vec![row(9, 0), row(4, 0)]),
            ShardAnswer::ClientList(vec![row(6, 1)]),
            ShardAnswer::Count(1),
        ]);
        assert_eq!(rows.iter().map(|r| (r.fd, r.worker)).collect::<Vec<_>>(), [(4, 0), (6, 1), (9, 0)]);
        assert_eq!(count(vec![ShardAnswer::Count(2), ShardAnswer::Count(5), shard(1, 1)]), 7);
    }

    #[test]
    fn status_answers_hasses_block_to_the_log_and_json_to_a_connection() {
        let (mut admin, ..) = admin();
        let parts = || vec![Some(shard(2, 1)), Some(shard(3, 2)), Some(shard(0, 0))];
        let status = json(&admin.answer(question(Query::Status, JSON, parts())));
        assert_eq!(status["allconncli"], 5);
        assert_eq!(status["sseconncli"], 3);
        assert_eq!(status["msgsendcnt"], 30);
        assert_eq!(status["msgproccnt"], 42, "the control thread's count, as it asked");
        assert_eq!(status["msgrefusedcnt"], 1);
        assert_eq!(status["workers"], 3);
        let lines = admin.answer(question(Query::Status, AnswerTo::Log, parts()));
        let lines: Vec<&str> = lines.lines().collect();
        assert_eq!(lines.first(), Some(&"------- status of hasses -------"));
        assert_eq!(lines.last(), Some(&"------------- end --------------"));
        assert!(lines.contains(&"Count of connected clients: 5"), "{lines:?}");
        assert!(lines.contains(&"Total message processed: 42"), "{lines:?}");
    }

    #[test]
    fn the_counts_and_the_client_list_answer_in_hasses_words_or_json() {
        let (mut admin, ..) = admin();
        let mut ask = |query: Query, to: AnswerTo, parts: Vec<ShardAnswer>| {
            admin.answer(question(query, to, parts.into_iter().map(Some).collect()))
        };
        let figures = || vec![shard(2, 1), shard(3, 2)];
        assert_eq!(ask(Query::NumberOfClients, AnswerTo::Log, figures()), "Number of connected clients: 5");
        assert_eq!(
            json(&ask(Query::NumberOfClients, JSON, figures())),
            serde_json::json!({"numberofclients": 5})
        );
        let counts = || vec![ShardAnswer::Count(1), ShardAnswer::Count(2)];
        let room = || Query::SubscribedClients("room1".into());
        assert_eq!(ask(room(), AnswerTo::Log, counts()), "Client count subscribed for \"room1\": 3");
        assert_eq!(
            json(&ask(room(), JSON, counts())),
            serde_json::json!({"subscribedclients": 3, "subscribedfor": "room1"})
        );
        let lists =
            || vec![ShardAnswer::ClientList(vec![row(8, 0)]), ShardAnswer::ClientList(vec![row(5, 1)])];
        let list = json(&ask(Query::ClientList, JSON, lists()));
        let fds: Vec<&serde_json::Value> =
            list["clients"].as_array().unwrap().iter().map(|c| &c["fd"]).collect();
        assert_eq!(fds, [5, 8]);
        let lines = ask(Query::ClientList, AnswerTo::Log, lists());
        let numbered: Vec<&str> = lines.lines().filter(|l| l.starts_with('#')).collect();
        assert_eq!(numbered.len(), 2, "{lines}");
        assert!(numbered[0].starts_with("#1 - <5>") && numbered[1].starts_with("#2 - <8>"), "{lines}");
    }

    #[test]
    fn presence_and_orders_are_answered_from_every_shard_as_one() {
        let (mut admin, ..) = admin();
        let rows = |id: &str| {
            ShardAnswer::Presence(vec![PresenceRow { id: id.into(), sub: None, since: 5, node: None }])
        };
        let presence = Query::Presence { token: "room1".into(), count: false };
        let answer =
            json(&admin.answer(question(presence.clone(), JSON, vec![Some(rows("b")), Some(rows("a"))])));
        assert_eq!((answer["count"].as_u64(), answer["clients"][0]["id"].as_str()), (Some(2), Some("a")));
        let line = admin.answer(question(presence, AnswerTo::Log, vec![Some(rows("a"))]));
        assert!(line.contains(r#""count":1"#), "{line}");
        let kick = Query::Order(Order::Disconnect { who: Who::Id("a".into()), ban_until: None });
        let api = AnswerTo::ApiJson(Asker { key: ApiKey(1), serial: 1 });
        let counts = vec![Some(ShardAnswer::Count(1)), Some(ShardAnswer::Count(2))];
        let response = admin.json_response(question(kick, api, counts));
        assert_eq!(response.status, 200);
        assert_eq!(json(&String::from_utf8(response.body).unwrap())["disconnected"], 3);
    }

    #[test]
    fn a_shard_that_does_not_answer_in_time_is_left_out() {
        // One answers at once, one too late, one never (its thread is gone).
        let (on_time, first) = bounded(1);
        let (late, second) = bounded(1);
        let (gone, third) = bounded::<ShardAnswer>(1);
        drop(gone);
        on_time.send(ShardAnswer::Count(1)).unwrap();
        let started = Instant::now();
        let answers = [first, second, third];
        let collected = collect(&answers, Duration::from_millis(50));
        assert!(started.elapsed() >= Duration::from_millis(50), "waited for the late one");
        late.send(ShardAnswer::Count(2)).unwrap();
        let got: Vec<Option<u64>> = collected
            .into_iter()
            .map(|part| part.map(|p| if let ShardAnswer::Count(n) = p { n } else { 99 }))
            .collect();
        assert_eq!(got, [Some(1), None, None]);
        // An answer is made of the parts that came.
        let (mut admin, ..) = admin();
        let answer = admin.answer(question(Query::NumberOfClients, JSON, vec![Some(shard(4, 4)), None]));
        assert_eq!(json(&answer)["numberofclients"], 4);
    }

    #[test]
    fn answers_go_back_to_who_asked_and_wake_the_control_thread() {
        let (admin, replies, mut control, questions) = admin();
        let (publisher, api) =
            (Asker { key: PublisherKey(5), serial: 8 }, Asker { key: ApiKey(5), serial: 8 });
        let ask = |query, to, parts| questions.send(question(query, to, parts)).unwrap();
        ask(Query::NumberOfClients, AnswerTo::Log, vec![Some(shard(1, 1))]);
        ask(
            Query::NumberOfClients,
            AnswerTo::Connection(publisher, 3),
            vec![Some(shard(1, 1)), Some(shard(1, 0))],
        );
        ask(Query::Status, AnswerTo::Api(api, ApiQuery::Health), vec![Some(shard(0, 0)), Some(shard(0, 0))]);
        ask(Query::Status, AnswerTo::Api(api, ApiQuery::Health), vec![Some(shard(0, 0)), None]);
        ask(Query::Status, AnswerTo::Api(api, ApiQuery::Metrics), vec![Some(shard(2, 2)), Some(shard(1, 1))]);
        drop(questions);
        admin.run().unwrap();
        let replies: Vec<Reply> = replies.try_iter().collect();
        assert_eq!(replies.len(), 4, "the log's answer goes to the log: {replies:?}");
        assert!(
            matches!(&replies[0], Reply::Line(a, 3, line) if *a == publisher && line == "{\"numberofclients\":2}\n")
        );
        let Reply::Http(to, healthy) = &replies[1] else { panic!("{:?}", replies[1]) };
        assert_eq!((*to, healthy.status, healthy.body.as_slice()), (api, 200, &b"ok\n"[..]));
        let Reply::Http(_, stuck) = &replies[2] else { panic!("{:?}", replies[2]) };
        assert_eq!(stuck.status, 503);
        assert!(String::from_utf8_lossy(&stuck.body).contains("1 of 2 workers"), "{stuck:?}");
        let Reply::Http(_, metrics) = &replies[3] else { panic!("{:?}", replies[3]) };
        assert_eq!((metrics.status, metrics.content_type), (200, CONTENT_TYPE));
        assert!(String::from_utf8_lossy(&metrics.body).contains("hasses_connections 3"));
        assert!(control.woken(0), "the control thread is woken for its replies");
    }
}
