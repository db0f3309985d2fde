//! One client connection: its socket, where it is in its life, and what it subscribed to.
//!
//! Owns a connection's state machine (reading its request → streaming events → closing) and the
//! facts the client list reports. The shard drives it; a connection never touches another
//! connection, the subscription index, or anything shared between threads.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use compact_str::CompactString;
use slab::Slab;

use super::agents::{Agent, Agents};
use super::keys::{ConnKey, StreamKey};
use super::outbox::Outbox;
use super::tls_session::TlsSession;
use crate::h2::Session;
use crate::http::Subscribe;
use mio::net::TcpStream;
use mio::Interest;

/// Where a connection (or an HTTP/2 stream) is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Reading its request head (a stream: its request judged, not yet subscribed).
    #[default]
    Handshaking,
    /// Handshaked: receiving events.
    Streaming,
    /// Answered for the last time: write what is queued, then close (a stream: ending).
    Closing,
    /// Speaking HTTP/2: its streams have phases of their own.
    Multiplexed,
    /// Told GOAWAY and its writing side shut: read (and dropped) until the client closes, so
    /// that closing with its bytes unread does not reset the connection before it read ours.
    Lingering,
}

impl Phase {
    /// The state code of the client list (`S:` in hasses' output).
    pub fn code(self) -> &'static str {
        match self {
            Phase::Handshaking => "NEW",
            Phase::Streaming => "SSE",
            Phase::Closing | Phase::Lingering => "END",
            Phase::Multiplexed => "H2",
        }
    }
}

/// A connection's HTTP/2 session; its streams carry an [`H2Stream`] each.
pub type Multiplex = Session<H2Stream>;

/// What the shard keeps on an HTTP/2 stream: what a connection keeps on its one stream over
/// HTTP/1.1.
#[derive(Debug, Default)]
pub struct H2Stream {
    /// Where it is: its request judged (`Handshaking`), subscribed, or ending.
    pub phase: Phase,
    /// Tells this stream from a later one in the same slot (timers and tickets hold one); 0
    /// until its request is judged.
    pub serial: u32,
    /// What it subscribed to and who it is.
    pub client: Client,
    /// As [`super::connection::Connection::last_publish`].
    pub last_publish: u64,
    /// When it subscribed, in seconds on the shard's clock.
    pub handshaked_at: Option<Stamp>,
}

/// A shard's connections, by key: the one place that maps keys to slab places.
#[derive(Debug, Default)]
pub struct Connections(Slab<Connection>);

impl Connections {
    /// The key the next connection will have; `None` when no key is left (never, in practice:
    /// descriptors run out first).
    pub fn next_key(&self) -> Option<ConnKey> {
        ConnKey::new(self.0.vacant_key())
    }

    /// Takes in a connection under [`Connections::next_key`].
    pub fn insert(&mut self, conn: Connection) {
        self.0.insert(conn);
    }

    /// Takes a connection out.
    pub fn remove(&mut self, key: ConnKey) -> Connection {
        self.0.remove(key.index())
    }

    /// Whether `key` names an open connection.
    pub fn contains(&self, key: ConnKey) -> bool {
        self.0.contains(key.index())
    }

    /// The connection `key` names, if it is open.
    pub fn get(&self, key: ConnKey) -> Option<&Connection> {
        self.0.get(key.index())
    }

    /// The connection `key` names, if it is open, to change.
    pub fn get_mut(&mut self, key: ConnKey) -> Option<&mut Connection> {
        self.0.get_mut(key.index())
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Every open connection with its key.
    pub fn iter(&self) -> impl Iterator<Item = (ConnKey, &Connection)> {
        self.0.iter().filter_map(|(index, conn)| Some((ConnKey::new(index)?, conn)))
    }

    /// Every streaming stream, HTTP/1.1 or HTTP/2: its key, its connection, its client and its
    /// serial.
    pub fn streaming(&self) -> impl Iterator<Item = (StreamKey, &Connection, &Client, u32)> {
        self.iter().flat_map(|(key, conn)| {
            let http1 = (conn.h2.is_none() && conn.phase == Phase::Streaming)
                .then(|| (StreamKey::on(key), conn, &conn.client, conn.serial));
            let http2 = conn.h2.iter().flat_map(move |h2| {
                h2.streams().filter(|(_, s)| s.data.phase == Phase::Streaming).filter_map(move |(slot, s)| {
                    Some((StreamKey::multiplexed(key, slot)?, conn, &s.data.client, s.data.serial))
                })
            });
            http1.into_iter().chain(http2)
        })
    }

    /// Every open connection with its key, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnKey, &mut Connection)> {
        self.0.iter_mut().filter_map(|(index, conn)| Some((ConnKey::new(index)?, conn)))
    }
}

impl std::ops::Index<ConnKey> for Connections {
    type Output = Connection;

    fn index(&self, key: ConnKey) -> &Connection {
        &self.0[key.index()]
    }
}

impl std::ops::IndexMut<ConnKey> for Connections {
    fn index_mut(&mut self, key: ConnKey) -> &mut Connection {
        &mut self.0[key.index()]
    }
}

/// A client connection owned by one shard.
#[derive(Debug)]
pub struct Connection {
    /// The client's socket, non-blocking, registered with the shard's poll under its slab key.
    pub socket: TcpStream,
    /// Its TLS session on an HTTPS port; boxed, so a plain connection pays one pointer.
    pub tls: Option<Box<TlsSession>>,
    /// Its HTTP/2 session, once it speaks HTTP/2 (then `phase` is `Multiplexed`); boxed too.
    pub h2: Option<Box<Multiplex>>,
    /// The client's address.
    pub peer: Peer,
    /// Unique within the shard for its whole run: tells this connection from a later one that
    /// reuses its slab key (timeouts hold a key and a serial).
    pub serial: u32,
    /// Where it is in its life.
    pub phase: Phase,
    /// The request bytes received so far: while handshaking, or a reinit request while
    /// streaming.
    pub request: RequestBytes,
    /// Bytes the socket has not taken yet.
    pub outbox: Outbox,
    /// The interest the socket is registered with, to re-register only on change.
    pub registered: Interest,
    /// When it connected, in seconds on the shard's clock.
    pub connected_at: u32,
    /// When it last handshaked (the first time, or its last reinit), likewise.
    pub handshaked_at: Option<Stamp>,
    /// What it subscribed to and who it is; set by the handshake.
    pub client: Client,
    /// How many times it re-handshaked (counted up to 65,535).
    pub reinits: u16,
    /// The id of the last event queued for it, or of the last event published before its
    /// handshake: a client that matches a publish through several tokens gets it once, and a
    /// client never gets what was published before it subscribed.
    pub last_publish: u64,
}

/// A request's bytes as they arrive. A streaming connection holds none, most of its life, and
/// then costs its slot one pointer rather than an empty `Vec`'s three words: the slab holds a
/// slot per connection, idle ones included.
#[derive(Debug, Default)]
// The box is the point: one pointer in the slot while empty; a request pays its allocation.
#[allow(clippy::box_collection)]
pub struct RequestBytes(Option<Box<Vec<u8>>>);

impl RequestBytes {
    /// Adds bytes that arrived.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.0.get_or_insert_with(Box::default).extend_from_slice(bytes);
    }

    /// What arrived so far.
    pub fn bytes(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Whether nothing arrived.
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// Forgets them, and their room.
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

/// What a handshaked client told us about itself, and what it has received: 40 bytes, the
/// slot of every connection and of every HTTP/2 stream holds one.
#[derive(Debug, Default)]
pub struct Client {
    /// Whether its id is its token's `sub`, then its id and tokens: `+` or `-`, then
    /// `id \n token \n token…`. Neither contains a line break (the request reader refuses them);
    /// a token may contain a `-` (sent as `%2D`). Up to 24 bytes sit in the client itself, which
    /// holds hasses' `subscribe=room1-user42&id=abc` (17): an idle client's names cost no
    /// allocation of their own (32 bytes with malloc's header, for 8 more in the slot). Longer
    /// ones are one allocation. Read on the rare paths (index changes, client list, `-UNIQ`
    /// publishes).
    names: CompactString,
    /// Its `User-Agent`, shared with the shard's other clients that sent the same.
    agent: Option<Agent>,
    /// Events queued for it.
    pub messages: u64,
}

/// What starts a client's names when its id is its grant's `sub`.
const SUB: char = '+';

impl Client {
    /// The client described by a subscription request; `sub` when its id is its grant's.
    pub fn from_request(request: Subscribe, sub: bool, agents: &mut Agents) -> Self {
        let id = request.id.unwrap_or_default();
        // Written in place at its exact length: inline when it fits, else one allocation.
        let length = 1 + id.len() + request.tokens.iter().map(|token| 1 + token.len()).sum::<usize>();
        let mut names = CompactString::with_capacity(length);
        names.push(if sub { SUB } else { '-' });
        names.push_str(&id);
        for token in &request.tokens {
            names.push('\n');
            names.push_str(token);
        }
        Client { names, agent: agents.share(&request.user_agent), messages: 0 }
    }

    /// Its names, one a line, after the `sub` mark.
    fn lines(&self) -> std::str::Split<'_, char> {
        self.names.get(1..).unwrap_or("").split('\n')
    }

    /// Whether its id is its token's `sub`.
    pub fn sub(&self) -> bool {
        self.names.starts_with(SUB)
    }

    /// Its unique id (`id=`); empty when it gave none.
    pub fn id(&self) -> &str {
        self.lines().next().unwrap_or("")
    }

    /// Its `User-Agent`, cut as hasses does; empty when absent.
    pub fn user_agent(&self) -> &str {
        self.agent.as_ref().map_or("", Agent::as_str)
    }

    /// Its tokens, without duplicates; `*` means every message.
    pub fn tokens(&self) -> impl Iterator<Item = &str> + Clone {
        self.lines().skip(1).filter(|t| !t.is_empty())
    }

    /// True when `id` names this client.
    pub fn has_id(&self, id: &str) -> bool {
        !id.is_empty() && self.id() == id
    }

    /// Its tokens joined by `,`, as the handshake's log line lists them (without building the
    /// string: the line is formatted once, straight into the log's buffer).
    pub fn token_list(&self) -> TokenList<'_> {
        TokenList(self)
    }
}

/// A client's tokens, shown joined by `,`.
pub struct TokenList<'a>(&'a Client);

impl fmt::Display for TokenList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, token) in self.0.tokens().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(token)?;
        }
        Ok(())
    }
}

/// A second on the shard's seconds clock in 4 bytes, `Option<Stamp>` too (the clock's 0 is
/// kept as 1): a connection's and a stream's slot hold one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(NonZeroU32);

impl Stamp {
    /// Second `seconds` of the shard's clock.
    pub fn at(seconds: u32) -> Stamp {
        Stamp(NonZeroU32::MIN.saturating_add(seconds))
    }

    /// Its second on the shard's clock.
    pub fn seconds(self) -> u32 {
        self.0.get() - 1
    }
}

/// A client's address, as the log shows it (`1.2.3.4:5678`). Its `Display` is `SocketAddr`'s
/// without the formatter's padding machinery per number: the address is in three log lines per
/// connection, and formatting it there was a seventh of the server's own instructions.
///
/// Kept in 18 bytes (an IPv6 address, IPv4 as `::ffff:a.b.c.d`, and the port) rather than a
/// `SocketAddr`'s 32: every connection's slot holds one. An IPv6 scope id is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    ip: std::net::Ipv6Addr,
    port: u16,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Peer {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Peer { ip, port: addr.port() }
    }

    /// Its address (an IPv4 one as such).
    pub fn addr(self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.port)
    }

    /// Its IP address (an IPv4 one as such).
    pub fn ip(self) -> IpAddr {
        IpAddr::V6(self.ip).to_canonical()
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SocketAddr::V4(v4) = self.addr() else { return self.addr().fmt(f) };
        // Assembled on the stack and written once: `255.255.255.255:65535` at most.
        let mut text = [0u8; 21];
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            text[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        let mut digits = itoa::Buffer::new();
        for (i, octet) in v4.ip().octets().into_iter().enumerate() {
            if i > 0 {
                put(b".");
            }
            put(digits.format(octet).as_bytes());
        }
        put(b":");
        put(digits.format(v4.port()).as_bytes());
        f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?)
    }
}

impl Connection {
    /// A connection that has just been accepted.
    pub fn accepted(
        socket: TcpStream,
        tls: Option<Box<TlsSession>>,
        peer: Peer,
        serial: u32,
        now: u32,
    ) -> Self {
        Connection {
            socket,
            tls,
            h2: None,
            peer,
            serial,
            phase: Phase::Handshaking,
            request: RequestBytes::default(),
            outbox: Outbox::default(),
            registered: Interest::READABLE,
            connected_at: now,
            handshaked_at: None,
            client: Client::default(),
            reinits: 0,
            last_publish: 0,
        }
    }

    /// Its HTTP/2 session and the queue the session's frames go to, if it speaks HTTP/2.
    pub fn multiplexed(&mut self) -> Option<(&mut Multiplex, &mut Outbox)> {
        Some((self.h2.as_deref_mut()?, &mut self.outbox))
    }

    /// The interest its state calls for: always readable (to see the peer close, and requests),
    /// writable only while bytes wait, in the queue or inside TLS.
    pub fn interest(&self) -> Interest {
        if self.outbox.is_empty() && !self.tls_wants_write() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    /// True when it is due to be closed: it was answered for the last time and all is written.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Closing && self.outbox.is_empty() && !self.tls_wants_write()
    }

    fn tls_wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// The state code of the client list: `SSL` while its TLS handshake runs.
    pub fn state_code(&self) -> &'static str {
        match &self.tls {
            Some(tls) if tls.is_handshaking() => "SSL",
            _ => self.phase.code(),
        }
    }

    /// `TLSv1_3 TLS13_AES_256_GCM_SHA384`: the protocol and cipher suite, once agreed.
    pub fn tls_summary(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let version = tls.protocol_version().map_or("-".to_string(), |v| format!("{v:?}"));
        let suite = tls.negotiated_cipher_suite().map_or("-".to_string(), |s| format!("{:?}", s.suite()));
        Some(format!("{version} {suite}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_peer_shows_as_its_socket_address(ip: u32, port: u16, v6: u128) {
            for addr in [
                SocketAddr::from((std::net::Ipv4Addr::from(ip), port)),
                SocketAddr::from((std::net::Ipv6Addr::from(v6), port)),
            ] {
                prop_assert_eq!(Peer::new(addr).to_string(), SocketAddr::new(addr.ip().to_canonical(), port).to_string());
            }
        }
    }

    #[test]
    fn tokens_come_back_as_subscribed() {
        let request = Subscribe {
            tokens: vec!["*".into(), "room1".into(), "x-y".into()],
            id: None,
            user_agent: String::new(),
            resume: None,
            token: None,
        };
        let mut agents = Agents::default();
        let client = Client::from_request(request.clone(), false, &mut agents);
        assert_eq!(client.tokens().collect::<Vec<_>>(), vec!["*", "room1", "x-y"]);
        let user_agent = "Mozilla/5.0".to_string();
        let granted = Client::from_request(
            Subscribe { id: Some("u42".into()), user_agent, ..request },
            true,
            &mut agents,
        );
        assert_eq!((granted.user_agent(), client.user_agent()), ("Mozilla/5.0", ""));
        assert_eq!((granted.sub(), granted.id(), client.sub(), client.id()), (true, "u42", false, ""));
        assert_eq!(granted.tokens().count(), 3);
        assert_eq!((Client::default().sub(), Client::default().id()), (false, ""));
        assert_eq!((Stamp::at(0).seconds(), Stamp::at(u32::MAX).seconds()), (0, u32::MAX - 1));
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 4);
        assert_eq!(Client::default().tokens().count(), 0);
    }

    #[test]
    fn a_short_clients_names_sit_in_the_client() {
        let mut agents = Agents::default();
        let subscribe = |tokens: &[&str], id: &str| Subscribe {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            id: Some(id.into()),
            user_agent: String::new(),
            resume: None,
            token: None,
        };
        let hasses = Client::from_request(subscribe(&["room1", "user42"], "abc"), false, &mut agents);
        assert!(!hasses.names.is_heap_allocated(), "subscribe=room1-user42&id=abc fits");
        let long =
            Client::from_request(subscribe(&["room1", "user42"], "a-uuid-of-36-bytes"), false, &mut agents);
        assert!(long.names.is_heap_allocated());
        assert_eq!(
            (long.id(), long.tokens().collect::<Vec<_>>()),
            ("a-uuid-of-36-bytes", vec!["room1", "user42"])
        );
        assert_eq!(std::mem::size_of::<Client>(), 40);
    }
}
