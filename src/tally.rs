//! One node's answer to a question every node of a cluster answers for its own clients
//! (presence, orders), made of its shards' parts; and the nodes' answers told as one.
//!
//! Owns gathering the shards' answers within a time (a shard that does not answer is left out,
//! and logged), a node's answer ([`NodeAnswer`]: what crosses Redis from a node to the one
//! that asked), and the JSON the asker gets. It asks nothing itself and holds no connection.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::gate::Order;
use crate::pipeline::{Query, ShardAnswer};
use crate::presence::PresenceRow;

/// Each shard's answer, if it comes within `timeout` (a shard that does not answer is logged).
pub fn collect(answers: &[Receiver<ShardAnswer>], timeout: Duration) -> Vec<Option<ShardAnswer>> {
    let deadline = Instant::now() + timeout;
    let collected: Vec<_> = answers.iter().map(|answer| answer.recv_deadline(deadline).ok()).collect();
    let late = collected.iter().filter(|answer| answer.is_none()).count();
    if late > 0 {
        warn!("{late} of {} workers did not answer within {timeout:?}", answers.len());
    }
    collected
}

/// One node's answer: its count (clients reached, or streams ended), its rows when asked for
/// them, or why it could not carry out an order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAnswer {
    /// The node's name (in cluster mode).
    pub node: Option<String>,
    /// Clients reached, or streams ended.
    pub count: u64,
    /// A row per client reached, when the question asked for them.
    pub clients: Option<Vec<PresenceRow>>,
    /// Why the node could not carry out the order, if it could not.
    pub error: Option<String>,
}

impl NodeAnswer {
    /// The answer of node `node` made of its shards' parts.
    pub fn of(node: Option<&str>, parts: Vec<ShardAnswer>) -> NodeAnswer {
        let mut answer = NodeAnswer { node: node.map(str::to_owned), ..NodeAnswer::default() };
        for part in parts {
            match part {
                ShardAnswer::Count(n) => answer.count += n,
                ShardAnswer::Presence(rows) => {
                    let clients = answer.clients.get_or_insert_with(Vec::new);
                    answer.count += rows.len() as u64;
                    clients
                        .extend(rows.into_iter().map(|row| PresenceRow { node: answer.node.clone(), ..row }));
                }
                ShardAnswer::Figures(..) | ShardAnswer::ClientList(_) => {}
            }
        }
        answer
    }

    /// A node that could not carry out the order.
    pub fn failed(node: Option<&str>, error: String) -> NodeAnswer {
        NodeAnswer { node: node.map(str::to_owned), error: Some(error), ..NodeAnswer::default() }
    }
}

/// The nodes' answers to a question, and how many nodes it reached (in a cluster).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Each node's answer that came in time.
    pub answers: Vec<NodeAnswer>,
    /// How many nodes heard the question (in a cluster).
    pub reached: Option<usize>,
}

impl Tally {
    /// The answer to `query` as JSON, or why an order failed on some node.
    pub fn json(&self, query: &Query) -> Result<serde_json::Value, String> {
        let errors: Vec<String> = self
            .answers
            .iter()
            .filter_map(|a| {
                a.error.as_ref().map(|e| format!("{}: {e}", a.node.as_deref().unwrap_or("this node")))
            })
            .collect();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let count: u64 = self.answers.iter().map(|a| a.count).sum();
        let mut json = match query {
            Query::Presence { token, count: true } => serde_json::json!({ "token": token, "count": count }),
            Query::Presence { token, count: false } => {
                let mut clients: Vec<&PresenceRow> =
                    self.answers.iter().flat_map(|a| a.clients.iter().flatten()).collect();
                clients.sort_by(|a, b| (&a.id, a.since).cmp(&(&b.id, b.since)));
                serde_json::json!({ "token": token, "count": count, "clients": clients })
            }
            Query::Order(order) => order_json(order, count),
            _ => serde_json::json!({ "count": count }),
        };
        if let Some(reached) = self.reached {
            let nodes: Vec<&str> = self.answers.iter().filter_map(|a| a.node.as_deref()).collect();
            json["nodes"] = serde_json::json!(nodes);
            json["unanswered"] = serde_json::json!(reached.saturating_sub(nodes.len()));
        }
        Ok(json)
    }
}

/// What an order did: the streams it ended, and until when its ban or revocation holds.
fn order_json(order: &Order, ended: u64) -> serde_json::Value {
    match order {
        Order::Disconnect { ban_until, .. } => {
            serde_json::json!({ "disconnected": ended, "banned_until": ban_until })
        }
        Order::Revoke { until, .. } => serde_json::json!({ "disconnected": ended, "revoked_until": until }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Who;

    fn row(id: &str, since: u64) -> PresenceRow {
        PresenceRow { id: id.into(), sub: None, since, node: None }
    }

    #[test]
    fn a_node_answer_sums_its_shards_and_names_itself_in_each_row() {
        let parts = vec![ShardAnswer::Presence(vec![row("b", 2)]), ShardAnswer::Presence(vec![row("a", 1)])];
        let answer = NodeAnswer::of(Some("n1"), parts);
        assert_eq!(answer.count, 2);
        assert!(answer.clients.iter().flatten().all(|r| r.node.as_deref() == Some("n1")));
        assert_eq!(NodeAnswer::of(None, vec![ShardAnswer::Count(3), ShardAnswer::Count(4)]).count, 7);
    }

    #[test]
    fn the_nodes_answers_are_told_as_one() {
        let presence = Query::Presence { token: "room1".into(), count: false };
        let one = NodeAnswer::of(None, vec![ShardAnswer::Presence(vec![row("b", 2), row("a", 1)])]);
        let alone = Tally { answers: vec![one], reached: None };
        assert_eq!(
            alone.json(&presence).unwrap(),
            serde_json::json!({"token": "room1", "count": 2, "clients": [
                {"id": "a", "sub": null, "since": 1}, {"id": "b", "sub": null, "since": 2}]})
        );
        let count = Query::Presence { token: "room1".into(), count: true };
        let nodes = Tally {
            answers: vec![
                NodeAnswer::of(Some("n1"), vec![ShardAnswer::Count(2)]),
                NodeAnswer::of(Some("n2"), vec![ShardAnswer::Count(5)]),
            ],
            reached: Some(3),
        };
        assert_eq!(
            nodes.json(&count).unwrap(),
            serde_json::json!({"token": "room1", "count": 7, "nodes": ["n1", "n2"], "unanswered": 1})
        );
        let order = Query::Order(Order::Disconnect { who: Who::Id("u".into()), ban_until: Some(9) });
        assert_eq!(
            nodes.json(&order).unwrap(),
            serde_json::json!({
            "disconnected": 7, "banned_until": 9, "nodes": ["n1", "n2"], "unanswered": 1})
        );
        let failed = Tally { answers: vec![NodeAnswer::failed(Some("n3"), "full".into())], reached: Some(1) };
        assert_eq!(failed.json(&order), Err("n3: full".into()));
    }
}
