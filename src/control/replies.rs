//! A control connection's answers, written in the order of the lines that asked for them.
//!
//! Some answers are known at once (`ERR …` for a malformed line, `OK <id>` from a single node),
//! others come later from another thread (the admin path's JSON, a cluster's receipt once Redis
//! holds the entry). A publisher reads one answer per line it sent, so an answer that comes
//! early waits behind the ones before it. Owns only the bytes: no socket, no clock.

use std::collections::VecDeque;

/// Answers to one connection: bytes ready to write, and places kept for answers to come.
#[derive(Debug, Default)]
pub struct Replies {
    /// Ready to write, in order.
    out: Vec<u8>,
    /// The answers after `out`, in order: `None` while one has not come.
    waiting: VecDeque<Option<Vec<u8>>>,
    /// The place of `waiting`'s first answer.
    first: u64,
}

impl Replies {
    /// An answer known now, after every answer asked for before it.
    pub fn now(&mut self, answer: &[u8]) {
        if self.waiting.is_empty() {
            self.out.extend_from_slice(answer);
        } else {
            self.waiting.push_back(Some(answer.to_vec()));
        }
    }

    /// Keeps a place for an answer that comes later; give it to [`Replies::fill`].
    pub fn later(&mut self) -> u64 {
        self.waiting.push_back(None);
        self.first + self.waiting.len() as u64 - 1
    }

    /// The answer for `place` came: it and every answer ready behind it move to the bytes to
    /// write. A place that is not kept (filled already) is ignored.
    pub fn fill(&mut self, place: u64, answer: &[u8]) {
        let Some(slot) = place.checked_sub(self.first).and_then(|at| self.waiting.get_mut(at as usize))
        else {
            return;
        };
        if slot.is_none() {
            *slot = Some(answer.to_vec());
        }
        while let Some(Some(_)) = self.waiting.front() {
            if let Some(Some(ready)) = self.waiting.pop_front() {
                self.out.extend_from_slice(&ready);
            }
            self.first += 1;
        }
    }

    /// Whether an answer has still to come: the connection is not closed before.
    pub fn awaiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The bytes ready to write; the writer drains what the socket took.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Whether nothing is ready to write.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Replies;

    #[test]
    fn answers_leave_in_the_order_of_their_lines() {
        let mut replies = Replies::default();
        replies.now(b"A\n");
        let b = replies.later();
        replies.now(b"C\n");
        let d = replies.later();
        assert_eq!(replies.out(), b"A\n");
        replies.fill(d, b"D\n");
        assert_eq!(replies.out(), b"A\n", "D waits behind B");
        assert!(replies.awaiting());
        replies.fill(b, b"B\n");
        assert_eq!(replies.out(), b"A\nB\nC\nD\n");
        assert!(!replies.awaiting());
        replies.now(b"E\n");
        assert_eq!(replies.out(), b"A\nB\nC\nD\nE\n");
    }

    #[test]
    fn places_stay_unique_across_fills() {
        let mut replies = Replies::default();
        let a = replies.later();
        replies.fill(a, b"a");
        let b = replies.later();
        assert_ne!(a, b);
        replies.fill(a, b"again");
        replies.fill(b + 7, b"unknown");
        replies.fill(b, b"b");
        assert_eq!(replies.out(), b"ab");
    }
}
