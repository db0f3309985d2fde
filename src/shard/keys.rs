//! The names a shard gives its parts: a connection ([`ConnKey`]) and a stream ([`StreamKey`]).
//!
//! A connection is a socket the shard accepted; a stream is one subscriber's events on it. Over
//! HTTP/1.1 a connection carries at most one stream; over HTTP/2 up to
//! [`MAX_STREAMS_PER_CONNECTION`], each in a slot of the connection's session. Keys are 4 bytes:
//! the index holds one per subscription, so a stream key packs its connection (22 bits: 4
//! million connections a shard, far past what descriptors allow) and its slot (10 bits).

use mio::Token;

/// A connection: its place in the shard's slab, and its token with epoll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey(u32);

/// The bits of a stream key that name its connection.
const CONNECTION_BITS: u32 = 22;
/// The most streams one HTTP/2 connection may carry at once (its slots 0 to 1022; slot
/// 1023 of the key is the HTTP/1.1 stream).
pub const MAX_STREAMS_PER_CONNECTION: u32 = (1 << (32 - CONNECTION_BITS)) - 1;

impl ConnKey {
    /// The key of slab place `index`; `None` from 2^22 on (a shard holds far fewer: one
    /// descriptor each).
    pub fn new(index: usize) -> Option<ConnKey> {
        u32::try_from(index).ok().filter(|&key| key < 1 << CONNECTION_BITS).map(ConnKey)
    }

    /// Its place in the slab.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// Its token with epoll.
    pub fn token(self) -> Token {
        Token(self.index())
    }

    /// The connection a socket's token names; `None` for a token no connection can have.
    pub fn of_token(token: Token) -> Option<ConnKey> {
        ConnKey::new(token.0)
    }
}

/// A stream: one subscriber's events, on the connection that carries it: its slot in the top
/// bits, the connection in the low ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey(u32);

impl StreamKey {
    /// The stream an HTTP/1.1 connection `conn` carries, its only one.
    pub fn on(conn: ConnKey) -> StreamKey {
        StreamKey(MAX_STREAMS_PER_CONNECTION << CONNECTION_BITS | conn.0)
    }

    /// The HTTP/2 stream in `slot` of `conn`'s session; `None` for a slot past
    /// [`MAX_STREAMS_PER_CONNECTION`] (the session takes no more streams than that).
    pub fn multiplexed(conn: ConnKey, slot: usize) -> Option<StreamKey> {
        let slot = u32::try_from(slot).ok().filter(|&slot| slot < MAX_STREAMS_PER_CONNECTION)?;
        Some(StreamKey(slot << CONNECTION_BITS | conn.0))
    }

    /// The connection that carries it.
    pub fn connection(self) -> ConnKey {
        ConnKey(self.0 & ((1 << CONNECTION_BITS) - 1))
    }

    /// Its slot in its connection's HTTP/2 session; `None` for an HTTP/1.1 stream.
    pub fn slot(self) -> Option<usize> {
        let slot = self.0 >> CONNECTION_BITS;
        (slot != MAX_STREAMS_PER_CONNECTION).then_some(slot as usize)
    }

    /// Its 4 bytes, as a ticket to the auth backend carries it.
    pub fn raw(self) -> u32 {
        self.0
    }

    /// The stream whose [`StreamKey::raw`] is `raw`.
    pub fn from_raw(raw: u32) -> StreamKey {
        StreamKey(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_its_slab_place_and_token_and_never_a_reserved_token() {
        let key = ConnKey::new(7).unwrap();
        assert_eq!((key.index(), key.token()), (7, Token(7)));
        assert_eq!(ConnKey::of_token(Token(7)), Some(key));
        assert_eq!(ConnKey::of_token(Token(usize::MAX)), None);
        assert_eq!(ConnKey::new(1 << 22), None);
        assert_eq!(StreamKey::on(key).connection(), key);
        assert_eq!(StreamKey::on(key).slot(), None);
        let last = ConnKey::new((1 << 22) - 1).unwrap();
        let stream = StreamKey::multiplexed(last, 1022).unwrap();
        assert_eq!((stream.connection(), stream.slot()), (last, Some(1022)));
        assert_ne!(stream, StreamKey::on(last));
        assert_eq!(StreamKey::multiplexed(key, 1023), None);
        assert_eq!(StreamKey::from_raw(stream.raw()), stream);
        assert_eq!(std::mem::size_of::<StreamKey>(), 4);
    }
}
