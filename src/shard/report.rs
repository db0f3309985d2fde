//! A shard's answers to the admin path: its figures and a row per connection.
//!
//! Read-only over the shard's state; formatting the rows is `stats`' business.

use std::os::fd::AsRawFd;
use std::time::Instant;

use super::connection::{Connection, Phase};
use super::subscriptions::EVERYTHING;
use super::Shard;
use crate::figures::{ClientRow, ShardFigures};
use crate::pipeline::{ShardAnswer, ShardQuery};

impl Shard {
    /// This shard's part of an answer to the admin path.
    pub(super) fn answer_query(&self, query: &ShardQuery) -> ShardAnswer {
        match query {
            ShardQuery::Figures => ShardAnswer::Figures(self.figures(), Box::new(self.latency.histogram)),
            ShardQuery::ClientList => ShardAnswer::ClientList(self.client_rows()),
            ShardQuery::CountSubscribed(token) => {
                ShardAnswer::Count(self.subscriptions.count_exact(token) as u64)
            }
        }
    }

    fn figures(&self) -> ShardFigures {
        let streaming = self.connections.iter().filter(|(_, c)| c.phase == Phase::Streaming).count();
        ShardFigures {
            connections: self.connections.len() as u64,
            streaming: streaming as u64,
            auth_backend_waiting: self.waiting.len() as u64,
            ..self.counters
        }
    }

    fn client_rows(&self) -> Vec<ClientRow> {
        let now = self.seconds(Instant::now());
        self.connections.iter().map(|(_, conn)| self.row(conn, now)).collect()
    }

    fn row(&self, conn: &Connection, now: u32) -> ClientRow {
        let client = &conn.client;
        let mut tokens: Vec<String> = client.tokens().map(str::to_string).collect();
        // hasses lists a wildcard subscriber's `*` first.
        tokens.sort_by_key(|t| t != EVERYTHING);
        ClientRow {
            fd: conn.socket.as_raw_fd(),
            peer: conn.peer.0,
            state: conn.state_code(),
            tls: conn.tls_summary(),
            messages: client.messages,
            reinits: client.reinits,
            connected_secs: u64::from(now - conn.connected_at),
            handshaked_secs: conn.handshaked_at.map(|at| u64::from(now - at)),
            id: client.id().to_string(),
            agent: client.user_agent().to_string(),
            tokens,
            worker: self.number,
            last_event_id: conn.last_publish,
            sub: client.sub.then(|| client.id().to_string()),
        }
    }
}
