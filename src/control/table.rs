//! The control thread's connections of one kind, by a key of that kind's own type.
//!
//! A TCP publisher and an API client are both slab entries, but their keys are different types
//! ([`PublisherKey`], [`ApiKey`]), so one can never be taken for the other; and their tokens with
//! epoll are made here, in one place, from the kind and the key.

use std::marker::PhantomData;

use mio::Token;
use slab::Slab;

use crate::event::{ApiKey, PublisherKey};

/// A kind of connection's key: a slab place, typed.
pub trait Key: Copy {
    /// The key of slab place `index`.
    fn at(index: usize) -> Self;
    /// Its slab place.
    fn index(self) -> usize;
    /// Its token with epoll: publishers on even tokens, API clients on odd ones (the top of
    /// the range is the listeners', the FIFO's and the waker's, far above any slab place).
    fn token(self) -> Token;
}

impl Key for PublisherKey {
    fn at(index: usize) -> Self {
        PublisherKey(index)
    }
    fn index(self) -> usize {
        self.0
    }
    fn token(self) -> Token {
        Token(self.0 * 2)
    }
}

impl Key for ApiKey {
    fn at(index: usize) -> Self {
        ApiKey(index)
    }
    fn index(self) -> usize {
        self.0
    }
    fn token(self) -> Token {
        Token(self.0 * 2 + 1)
    }
}

/// The connection a token that is not a reserved one names.
pub enum Named {
    /// A TCP publisher.
    Publisher(PublisherKey),
    /// An API client.
    Api(ApiKey),
}

impl Named {
    /// What `token` names (the reserved tokens are matched before this is asked).
    pub fn of(token: Token) -> Named {
        match token.0 % 2 {
            0 => Named::Publisher(PublisherKey(token.0 / 2)),
            _ => Named::Api(ApiKey(token.0 / 2)),
        }
    }
}

/// Connections of one kind, by their typed key.
#[derive(Debug)]
pub struct Table<K, T> {
    slab: Slab<T>,
    _key: PhantomData<K>,
}

impl<K, T> Default for Table<K, T> {
    fn default() -> Self {
        Table { slab: Slab::new(), _key: PhantomData }
    }
}

impl<K: Key, T> Table<K, T> {
    /// The key the next connection will have.
    pub fn next_key(&self) -> K {
        K::at(self.slab.vacant_key())
    }

    /// Takes in a connection under [`Table::next_key`].
    pub fn insert(&mut self, value: T) -> K {
        K::at(self.slab.insert(value))
    }

    /// Takes a connection out.
    pub fn remove(&mut self, key: K) -> T {
        self.slab.remove(key.index())
    }

    /// Whether `key` names an open connection.
    pub fn contains(&self, key: K) -> bool {
        self.slab.contains(key.index())
    }

    /// The connection `key` names, if open.
    pub fn get(&self, key: K) -> Option<&T> {
        self.slab.get(key.index())
    }

    /// The connection `key` names, if open, to change.
    pub fn get_mut(&mut self, key: K) -> Option<&mut T> {
        self.slab.get_mut(key.index())
    }

    /// Every open connection with its key.
    pub fn iter(&self) -> impl Iterator<Item = (K, &T)> {
        self.slab.iter().map(|(index, value)| (K::at(index), value))
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}

impl<K: Key, T> std::ops::Index<K> for Table<K, T> {
    type Output = T;

    fn index(&self, key: K) -> &T {
        &self.slab[key.index()]
    }
}

impl<K: Key, T> std::ops::IndexMut<K> for Table<K, T> {
    fn index_mut(&mut self, key: K) -> &mut T {
        &mut self.slab[key.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_kind_and_key() {
        for n in [0, 1, 7, 4096] {
            assert!(
                matches!(Named::of(PublisherKey(n).token()), Named::Publisher(PublisherKey(k)) if k == n)
            );
            assert!(matches!(Named::of(ApiKey(n).token()), Named::Api(ApiKey(k)) if k == n));
        }
        assert_ne!(PublisherKey(3).token(), ApiKey(3).token());
    }

    #[test]
    fn keys_come_back_as_they_went_in() {
        let mut table: Table<ApiKey, &str> = Table::default();
        let next = table.next_key();
        assert_eq!(table.insert("a"), next);
        let b = table.insert("b");
        assert_eq!(table[b], "b");
        assert_eq!(table.remove(next), "a");
        assert!(!table.contains(next) && table.contains(b));
        assert_eq!(table.iter().map(|(k, v)| (k, *v)).collect::<Vec<_>>(), vec![(b, "b")]);
    }
}
