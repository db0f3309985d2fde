//! A shard's answers to the admin path: its figures, a row per connection, who a token
//! reaches; and the one question that changes something, an order's streams to end.
//!
//! Read-only over the shard's state but for [`ShardQuery::End`]; formatting the rows is
//! `stats`' and `admin`'s business.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::connection::{Connection, Phase};
use super::keys::{ConnKey, StreamKey};
use super::subscriptions::EVERYTHING;
use super::Shard;
use crate::event::Target;
use crate::figures::{ClientRow, ShardFigures};
use crate::gate::{unix_now, Who};
use crate::pipeline::{ShardAnswer, ShardQuery};
use crate::presence::{asked_target, PresenceRow};

impl Shard {
    /// This shard's part of an answer to the admin path.
    pub(super) fn answer_query(&mut self, query: &ShardQuery) -> ShardAnswer {
        match query {
            ShardQuery::Figures => ShardAnswer::Figures(self.figures(), Box::new(self.latency.histogram)),
            ShardQuery::ClientList => ShardAnswer::ClientList(self.client_rows()),
            ShardQuery::CountSubscribed(token) => {
                ShardAnswer::Count(self.subscriptions.count_exact(token) as u64)
            }
            ShardQuery::CountReached(token) => ShardAnswer::Count(self.count_reached(token)),
            ShardQuery::Presence(token) => ShardAnswer::Presence(self.presence_rows(token)),
            ShardQuery::End(who) => ShardAnswer::Count(self.end(who)),
        }
    }

    /// The streaming connections a publish to `token` reaches, once each.
    fn reached(&self, token: &str) -> BTreeSet<ConnKey> {
        let target = asked_target(token);
        if target == Target::All {
            return self.streams_where(|_| true).into_iter().collect();
        }
        let mut reached = BTreeSet::new();
        self.subscriptions.for_each_match(&target, |key: StreamKey| {
            reached.insert(key.connection());
        });
        reached
    }

    /// How many streams a publish to `token` reaches: for a plain token from the index
    /// alone, for `*` and a prefix by counting them.
    fn count_reached(&self, token: &str) -> u64 {
        match asked_target(token) {
            Target::Token(token) => self.subscriptions.count_reached(&token) as u64,
            Target::All | Target::Prefix(_) => self.reached(token).len() as u64,
        }
    }

    fn presence_rows(&self, token: &str) -> Vec<PresenceRow> {
        let (now, unix) = (self.seconds(Instant::now()), unix_now());
        let rows = self.reached(token).into_iter().filter_map(|key| self.connections.get(key));
        rows.map(|conn| {
            let client = &conn.client;
            let age = conn.handshaked_at.map_or(0, |at| u64::from(now.saturating_sub(at)));
            PresenceRow {
                id: client.id().to_owned(),
                sub: client.sub.then(|| client.id().to_owned()),
                since: unix.saturating_sub(age),
                node: None,
            }
        })
        .collect()
    }

    /// Ends the streams `who` names now; how many.
    fn end(&mut self, who: &Who) -> u64 {
        let ended: Vec<ConnKey> = match who {
            Who::Token(token) => {
                let mut keys = BTreeSet::new();
                self.subscriptions.for_each_exact(token, |key| {
                    keys.insert(key.connection());
                });
                keys.into_iter().collect()
            }
            Who::Id(id) => self.streams_where(|conn| conn.has_id(id)),
            Who::Sub(sub) => self.streams_where(|conn| conn.client.sub && conn.has_id(sub)),
        };
        for &key in &ended {
            self.close(key, "disconnected by order");
        }
        self.counters.disconnected += ended.len() as u64;
        ended.len() as u64
    }

    fn streams_where(&self, wanted: impl Fn(&Connection) -> bool) -> Vec<ConnKey> {
        let streaming = self.connections.iter().filter(|(_, conn)| conn.phase == Phase::Streaming);
        streaming.filter(|(_, conn)| wanted(conn)).map(|(key, _)| key).collect()
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
            peer: conn.peer.addr(),
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
