//! One client connection: its socket, where it is in its life, and what it subscribed to.
//!
//! Owns a connection's state machine (reading its request → streaming events → closing) and the
//! facts the client list reports. The shard drives it; a connection never touches another
//! connection, the subscription index, or anything shared between threads.

use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;

use super::outbox::Outbox;
use crate::http::Subscribe;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading its request head.
    Handshaking,
    /// Handshaked: receiving events.
    Streaming,
    /// Answered for the last time: write what is queued, then close.
    Closing,
}

impl Phase {
    /// The state code of the client list (`S:` in hasses' output).
    pub fn code(self) -> &'static str {
        match self {
            Phase::Handshaking => "NEW",
            Phase::Streaming => "SSE",
            Phase::Closing => "END",
        }
    }
}

/// A client connection owned by one shard.
#[derive(Debug)]
pub struct Connection {
    /// The socket.
    pub socket: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Unique within the shard for its whole run: tells this connection from a later one that
    /// reuses its slab key (timeouts hold a key and a serial).
    pub serial: u64,
    /// Where it is in its life.
    pub phase: Phase,
    /// The request bytes received so far: while handshaking, or a reinit request while
    /// streaming. Empty (no allocation) the rest of the time.
    pub request: Vec<u8>,
    /// Bytes the socket has not taken yet.
    pub outbox: Outbox,
    /// The interest the socket is registered with, to re-register only on change.
    pub registered: Interest,
    /// When it connected.
    pub connected_at: Instant,
    /// When it last handshaked (the first time, or its last reinit).
    pub handshaked_at: Option<Instant>,
    /// What it subscribed to and who it is; set by the handshake.
    pub client: Client,
    /// The shard's publish sequence number of the last message queued for it, so a client
    /// that matches a publish through several tokens gets it once.
    pub last_publish: u64,
}

/// What a handshaked client told us about itself, and what it has received.
#[derive(Debug, Default)]
pub struct Client {
    /// Its tokens joined by `-` (which no token contains, it is the separator they were split
    /// on): one allocation for them all, read rarely (index changes, the client list).
    tokens: Box<str>,
    /// Its unique id (`id=`), if it gave one.
    pub id: Option<Box<str>>,
    /// Its `User-Agent`, cut as hasses does.
    pub user_agent: Box<str>,
    /// Events queued for it.
    pub messages: u64,
    /// How many times it re-handshaked.
    pub reinits: u32,
}

impl Client {
    /// The client described by a subscription request.
    pub fn from_request(request: Subscribe) -> Self {
        Client {
            tokens: request.tokens.join("-").into_boxed_str(),
            id: request.id.map(String::into_boxed_str),
            user_agent: request.user_agent.into_boxed_str(),
            messages: 0,
            reinits: 0,
        }
    }
}

impl Client {
    /// Its tokens, without duplicates; `*` means every message.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.tokens.split('-').filter(|t| !t.is_empty())
    }
}

impl Connection {
    /// A connection that has just been accepted.
    pub fn accepted(socket: TcpStream, peer: SocketAddr, serial: u64, now: Instant) -> Self {
        Connection {
            socket,
            peer,
            serial,
            phase: Phase::Handshaking,
            request: Vec::new(),
            outbox: Outbox::default(),
            registered: Interest::READABLE,
            connected_at: now,
            handshaked_at: None,
            client: Client::default(),
            last_publish: 0,
        }
    }

    /// The interest its state calls for: always readable (to see the peer close, and requests),
    /// writable only while bytes wait.
    pub fn interest(&self) -> Interest {
        if self.outbox.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    /// True when it is due to be closed: it was answered for the last time and all is written.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Closing && self.outbox.is_empty()
    }

    /// True when `id` names this client.
    pub fn has_id(&self, id: &str) -> bool {
        self.client.id.as_deref() == Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_back_as_subscribed() {
        let request =
            Subscribe { tokens: vec!["*".into(), "room1".into()], id: None, user_agent: String::new() };
        let client = Client::from_request(request);
        assert_eq!(client.tokens().collect::<Vec<_>>(), vec!["*", "room1"]);
        assert_eq!(Client::default().tokens().count(), 0);
    }
}
