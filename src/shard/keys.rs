//! The names a shard gives its parts: a connection ([`ConnKey`]) and a stream ([`StreamKey`]).
//!
//! A connection is a socket the shard accepted; a stream is one subscriber's events on it. Over
//! HTTP/1.1 a connection carries at most one stream, so a stream is named by its connection;
//! the index, delivery and the stream timers speak of streams all the same, so that a
//! connection carrying many (HTTP/2) changes this file, not them. Keys are 4 bytes: the index
//! holds one per subscription.

use mio::Token;

/// A connection: its place in the shard's slab, and its token with epoll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey(u32);

impl ConnKey {
    /// The key of slab place `index`; `None` past 2^32 - 2 (a shard holds far fewer: one
    /// descriptor each, and the top of the range is kept for the shard's own tokens).
    pub fn new(index: usize) -> Option<ConnKey> {
        u32::try_from(index).ok().filter(|&key| key < u32::MAX - 1).map(ConnKey)
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

/// A stream: one subscriber's events, on the connection that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey(ConnKey);

impl StreamKey {
    /// The stream `conn` carries (over HTTP/1.1, its only one).
    pub fn on(conn: ConnKey) -> StreamKey {
        StreamKey(conn)
    }

    /// The connection that carries it.
    pub fn connection(self) -> ConnKey {
        self.0
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
        assert_eq!(ConnKey::new(u32::MAX as usize - 1), None);
        assert_eq!(StreamKey::on(key).connection(), key);
        assert_eq!(std::mem::size_of::<StreamKey>(), 4);
    }
}
