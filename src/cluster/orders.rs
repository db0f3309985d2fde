//! The questions every node answers for its own clients (presence, orders), over Redis.
//!
//! Owns both ends: the asking node's [`ClusterAsker`] (on the admin thread, which may wait)
//! publishes the question on the channel `PREFIX:ask` and reads the answers from a list of
//! its own; every node's [`Orders`] thread (`hasses-cluster-orders`, this node's too) hears
//! it, carries it out on its own shards (an order's ban or revocation first), and pushes its
//! answer to that list. `PUBLISH` says how many nodes heard the question, so the asker knows
//! how many answers to wait for, up to [`ANSWER_TIMEOUT`], and says which nodes answered.
//! Pub/sub keeps nothing: a node that is away from Redis when an order is given does not
//! hear it (the answer shows it among the nodes that did not answer).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{connect, why, ClusterSettings, ClusterShared};
use crate::broadcast::Fanout;
use crate::gate::unix_now;
use crate::pipeline::{Query, SharedState};
use crate::tally::{collect, NodeAnswer, Tally};

/// How long the asker waits for the nodes' answers.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a node gives its shards to answer: within the asker's wait.
const SHARD_TIMEOUT: Duration = Duration::from_millis(800);
/// How long an answer list outlives a question nobody waits for any more.
const ANSWER_TTL_SECS: u64 = 30;
/// How often the listener looks whether the node is stopping while no question comes.
const LISTEN_TICK: Duration = Duration::from_millis(500);
/// How long the listener waits before it connects again after losing Redis, and the asker
/// refuses questions at once after failing to reach it (rather than holding the admin thread,
/// and every status and health answer behind it, for a connect timeout per question).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// A question on the channel: from which node, where its answers go.
#[derive(Debug, Serialize, Deserialize)]
struct Asked {
    from: String,
    reply: String,
    query: Query,
}

/// The asking end, on the admin thread.
pub struct ClusterAsker {
    client: redis::Client,
    channel: String,
    /// This node's answer lists: `PREFIX:answers:NODE:N`.
    replies: String,
    node: String,
    con: Option<redis::Connection>,
    asked: u64,
    /// After a failure: questions are refused at once until then.
    quiet_until: Option<Instant>,
}

impl std::fmt::Debug for ClusterAsker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAsker")
            .field("channel", &self.channel)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl ClusterAsker {
    pub(super) fn new(client: redis::Client, settings: &ClusterSettings, node: &str) -> Self {
        ClusterAsker {
            client,
            channel: settings.ask_channel(),
            replies: format!("{}:answers:{node}", settings.key),
            node: node.to_owned(),
            con: None,
            asked: 0,
            quiet_until: None,
        }
    }

    /// Every node's answer to `query` that comes within a second (`ANSWER_TIMEOUT`); an error when
    /// Redis cannot be reached or no node heard it.
    pub fn ask(&mut self, query: &Query) -> Result<Tally, String> {
        if self.quiet_until.is_some_and(|until| Instant::now() < until) {
            return Err("Redis was unreachable a moment ago: try again in a second".to_owned());
        }
        let result = self.try_ask(query);
        if result.is_err() {
            // The next question starts on a new connection, a moment later.
            self.con = None;
            self.quiet_until = Some(Instant::now() + RECONNECT_AFTER);
        }
        result.map_err(|e| match e {
            Fault::Redis(e) => format!("Redis: {}", why(&e)),
            Fault::Nobody => "no node heard the question: is this node's listener connected?".to_owned(),
        })
    }

    fn try_ask(&mut self, query: &Query) -> Result<Tally, Fault> {
        if self.con.is_none() {
            self.con = Some(connect(&self.client)?);
        }
        let Some(con) = self.con.as_mut() else { return Err(Fault::Nobody) };
        self.asked += 1;
        let reply = format!("{}:{}", self.replies, self.asked);
        let asked = Asked { from: self.node.clone(), reply: reply.clone(), query: query.clone() };
        let message = serde_json::to_string(&asked).unwrap_or_default();
        let reached: usize = redis::cmd("PUBLISH").arg(&self.channel).arg(message).query(con)?;
        if reached == 0 {
            return Err(Fault::Nobody);
        }
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut answers = Vec::with_capacity(reached);
        while answers.len() < reached {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let popped: Option<(String, String)> =
                redis::cmd("BLPOP").arg(&reply).arg(left.as_secs_f64().max(0.01)).query(con)?;
            let Some((_, text)) = popped else { break };
            match serde_json::from_str::<NodeAnswer>(&text) {
                Ok(answer) => answers.push(answer),
                Err(e) => warn!("Cluster: an answer that is not one skipped ({e})"),
            }
        }
        redis::cmd("DEL").arg(&reply).query::<()>(con)?;
        Ok(Tally { answers, reached: Some(reached) })
    }
}

enum Fault {
    Redis(redis::RedisError),
    Nobody,
}

impl From<redis::RedisError> for Fault {
    fn from(e: redis::RedisError) -> Self {
        Fault::Redis(e)
    }
}

/// The answering end: this node's listener, on a thread of its own.
pub struct Orders {
    client: redis::Client,
    channel: String,
    node: String,
    fanout: Fanout,
    state: Arc<SharedState>,
    shared: Arc<ClusterShared>,
    /// Redis was lost and has not been reached since: said once, not at every retry.
    lost: bool,
}

impl Orders {
    pub(super) fn new(
        client: redis::Client,
        settings: &ClusterSettings,
        node: &str,
        fanout: Fanout,
        (state, shared): (Arc<SharedState>, Arc<ClusterShared>),
    ) -> Self {
        let channel = settings.ask_channel();
        Orders { client, channel, node: node.to_owned(), fanout, state, shared, lost: false }
    }

    /// Answers questions until the node stops, connecting again whenever Redis is lost.
    pub fn run(mut self) -> std::io::Result<()> {
        while !self.stopping() {
            if let Err(e) = self.listen() {
                if !std::mem::replace(&mut self.lost, true) {
                    warn!("Cluster: the listener for presence and orders lost Redis: {}", why(&e));
                }
                std::thread::sleep(RECONNECT_AFTER);
            }
        }
        Ok(())
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Relaxed)
    }

    fn listen(&mut self) -> redis::RedisResult<()> {
        let mut answers = connect(&self.client)?;
        let mut listening = connect(&self.client)?;
        let mut pubsub = listening.as_pubsub();
        pubsub.subscribe(&self.channel)?;
        pubsub.set_read_timeout(Some(LISTEN_TICK))?;
        if std::mem::take(&mut self.lost) {
            info!("Cluster: the listener for presence and orders reached Redis again");
        }
        while !self.stopping() {
            let message = match pubsub.get_message() {
                Ok(message) => message,
                Err(e) if e.is_timeout() => continue,
                Err(e) => return Err(e),
            };
            let payload: String = message.get_payload()?;
            let asked: Asked = match serde_json::from_str(&payload) {
                Ok(asked) => asked,
                Err(e) => {
                    warn!("Cluster: a question that is not one skipped ({e})");
                    continue;
                }
            };
            let answer = serde_json::to_string(&self.answer(&asked)).unwrap_or_default();
            redis::pipe()
                .cmd("RPUSH")
                .arg(&asked.reply)
                .arg(answer)
                .ignore()
                .cmd("EXPIRE")
                .arg(&asked.reply)
                .arg(ANSWER_TTL_SECS)
                .ignore()
                .query::<()>(&mut answers)?;
        }
        Ok(())
    }

    /// This node's answer: an order's ban or revocation in place first, then its shards'.
    fn answer(&mut self, asked: &Asked) -> NodeAnswer {
        let node = Some(self.node.as_str());
        if !asked.query.is_cluster_wide() {
            return NodeAnswer::failed(node, "not a question the cluster answers".into());
        }
        if let Query::Order(order) = &asked.query {
            info!("Cluster: order from {}: {order:?}", asked.from);
            let taken = self.state.gate.write().take(order, unix_now());
            if let Err(full) = taken {
                return NodeAnswer::failed(node, full.to_string());
            }
        }
        let Some(query) = asked.query.shard_query() else { return NodeAnswer::of(node, Vec::new()) };
        let answers = self.fanout.ask(&query);
        NodeAnswer::of(node, collect(&answers, SHARD_TIMEOUT).into_iter().flatten().collect())
    }
}
