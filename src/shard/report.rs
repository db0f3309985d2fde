//! A shard's answers to the admin path: its figures, a row per connection, who a token
//! reaches; and the one question that changes something, an order's streams to end.
//!
//! Read-only over the shard's state but for [`ShardQuery::End`]; formatting the rows is
//! `stats`' and `admin`'s business.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::time::Instant;

use tracing::info;

use super::connection::{Client, Connection, Stamp};
use super::keys::StreamKey;
use super::subscriptions::EVERYTHING;
use super::Shard;
use crate::event::Target;
use crate::figures::{ClientRow, ShardFigures};
use crate::gate::{unix_now, Who};
use crate::h2::frame::ErrorCode;
use crate::pipeline::{ShardAnswer, ShardQuery};
use crate::presence::{asked_target, PresenceRow};

impl Shard {
    /// This shard's part of an answer to the admin path.
    pub(super) fn answer_query(&mut self, query: &ShardQuery) -> ShardAnswer {
        match query {
            ShardQuery::Figures => {
                ShardAnswer::Figures(Box::new(self.figures()), Box::new(self.latency.histogram))
            }
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
    fn reached(&self, token: &str) -> BTreeSet<StreamKey> {
        let target = asked_target(token);
        if target == Target::All {
            return self.streams_where(|_| true).into_iter().collect();
        }
        let mut reached = BTreeSet::new();
        self.subscriptions.for_each_match(&target, |key: StreamKey| {
            reached.insert(key);
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
        let rows = self.reached(token).into_iter().filter_map(|stream| self.subscriber(stream));
        rows.map(|(client, handshaked_at, _)| {
            let age = handshaked_at.map_or(0, |at| u64::from(now.saturating_sub(at.seconds())));
            PresenceRow {
                id: client.id().to_owned(),
                sub: client.sub().then(|| client.id().to_owned()),
                since: unix.saturating_sub(age),
                node: None,
            }
        })
        .collect()
    }

    /// Ends the streams `who` names now; how many.
    fn end(&mut self, who: &Who) -> u64 {
        let ended: Vec<StreamKey> = match who {
            Who::Token(token) => {
                let mut keys = BTreeSet::new();
                self.subscriptions.for_each_exact(token, |key| {
                    keys.insert(key);
                });
                keys.into_iter().collect()
            }
            Who::Id(id) => self.streams_where(|client| client.has_id(id)),
            Who::Sub(sub) => self.streams_where(|client| client.sub() && client.has_id(sub)),
        };
        for &stream in &ended {
            match stream.slot() {
                None => self.close(stream.connection(), "disconnected by order"),
                Some(_) => {
                    info!(
                        "Stream reset: {} HTTP/2 (disconnected by order)",
                        self.connections[stream.connection()].peer
                    );
                    self.reset_stream(stream, ErrorCode::Cancel);
                }
            }
        }
        self.counters.disconnected += ended.len() as u64;
        ended.len() as u64
    }

    /// Every streaming stream whose client is `wanted`.
    fn streams_where(&self, wanted: impl Fn(&Client) -> bool) -> Vec<StreamKey> {
        self.connections
            .streaming()
            .filter(|(_, _, client, _)| wanted(client))
            .map(|(stream, ..)| stream)
            .collect()
    }

    /// A stream's client, when it subscribed, and the last event it was given.
    fn subscriber(&self, stream: StreamKey) -> Option<(&Client, Option<Stamp>, u64)> {
        subscriber_on(self.connections.get(stream.connection())?, stream)
    }

    fn figures(&self) -> ShardFigures {
        let (mut http2_connections, mut http2_streams) = (0, 0);
        for h2 in self.connections.iter().filter_map(|(_, conn)| conn.h2.as_deref()) {
            http2_connections += 1;
            http2_streams += h2.len() as u64;
        }
        ShardFigures {
            connections: self.connections.len() as u64,
            streaming: self.connections.streaming().count() as u64,
            http2_connections,
            http2_streams,
            auth_backend_waiting: self.waiting.len() as u64,
            ..self.counters
        }
    }

    fn client_rows(&self) -> Vec<ClientRow> {
        let now = self.seconds(Instant::now());
        let mut rows = Vec::new();
        for (key, conn) in self.connections.iter() {
            let Some(h2) = conn.h2.as_deref().filter(|h2| !h2.is_empty()) else {
                rows.extend(self.row(conn, StreamKey::on(key), now));
                continue;
            };
            rows.extend(
                h2.streams().filter_map(|(slot, _)| self.row(conn, StreamKey::multiplexed(key, slot)?, now)),
            );
        }
        rows
    }

    /// The row of `stream`, on `conn`: an HTTP/2 stream shares its connection's descriptor,
    /// address and TLS, and says its stream id.
    fn row(&self, conn: &Connection, stream: StreamKey, now: u32) -> Option<ClientRow> {
        let h2 = stream.slot().and_then(|slot| conn.h2.as_deref()?.stream(slot));
        let (client, handshaked_at, last_publish) = subscriber_on(conn, stream)?;
        let mut tokens: Vec<String> = client.tokens().map(str::to_string).collect();
        // hasses lists a wildcard subscriber's `*` first.
        tokens.sort_by_key(|t| t != EVERYTHING);
        Some(ClientRow {
            fd: conn.socket.as_raw_fd(),
            peer: conn.peer.addr(),
            state: h2.map_or_else(|| conn.state_code(), |h2| h2.data.phase.code()),
            tls: conn.tls_summary(),
            messages: client.messages,
            reinits: if h2.is_some() { 0 } else { u32::from(conn.reinits) },
            connected_secs: u64::from(now - conn.connected_at),
            handshaked_secs: handshaked_at.map(|at| u64::from(now - at.seconds())),
            id: client.id().to_string(),
            agent: client.user_agent().to_string(),
            tokens,
            worker: self.number,
            last_event_id: last_publish,
            sub: client.sub().then(|| client.id().to_string()),
            h2_stream: h2.map(|h2| h2.id),
        })
    }
}

/// The client of `stream` on `conn`, when it subscribed, and the last event it was given.
fn subscriber_on(conn: &Connection, stream: StreamKey) -> Option<(&Client, Option<Stamp>, u64)> {
    let Some(slot) = stream.slot() else {
        return Some((&conn.client, conn.handshaked_at, conn.last_publish));
    };
    let data = &conn.h2.as_deref()?.stream(slot)?.data;
    Some((&data.client, data.handshaked_at, data.last_publish))
}
