//! The backend's answers kept for `--auth-cache-secs`, by question (credentials and query).
//!
//! Owns when an answer may be reused and how much is kept: every answer lives the same time,
//! so the order they came in is the order they go, and a full cache lets its oldest go first.
//! Pure: the clock is passed in; the lock around it is the caller's.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{Answer, CacheKey};

/// The most answers kept.
pub const MAX_ANSWERS: usize = 10_000;
/// The most bytes of questions kept (cookies can be long).
pub const MAX_BYTES: usize = 16 << 20;

/// Answers by question, each for `ttl` from when it came.
#[derive(Debug)]
pub struct Cache {
    ttl: Duration,
    max_answers: usize,
    max_bytes: usize,
    answers: HashMap<CacheKey, (Instant, Answer)>,
    /// The questions in the order their answers came: the order they expire in.
    order: VecDeque<(Instant, CacheKey)>,
    /// The bytes of the questions kept.
    bytes: usize,
}

impl Cache {
    /// An empty cache whose answers live `ttl`, with the default bounds.
    pub fn new(ttl: Duration) -> Self {
        Cache::bounded(ttl, MAX_ANSWERS, MAX_BYTES)
    }

    fn bounded(ttl: Duration, max_answers: usize, max_bytes: usize) -> Self {
        Cache { ttl, max_answers, max_bytes, answers: HashMap::new(), order: VecDeque::new(), bytes: 0 }
    }

    /// The answer to `key` if one came less than `ttl` before `now`.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Answer> {
        let (at, answer) = self.answers.get(key)?;
        (now.saturating_duration_since(*at) < self.ttl).then(|| answer.clone())
    }

    /// Keeps `answer` to `key`, as of `now`, letting go of what expired and, when full, of the
    /// oldest. A failure is not kept, nor a question bigger than the whole cache.
    pub fn put(&mut self, key: CacheKey, answer: Answer, now: Instant) {
        self.expire(now);
        if !answer.is_cacheable() || key.len() > self.max_bytes || self.get(&key, now).is_some() {
            return;
        }
        while self.answers.len() >= self.max_answers || self.bytes + key.len() > self.max_bytes {
            self.evict_oldest();
        }
        self.order.push_back((now, key.clone()));
        let size = key.len();
        // An expired answer still kept (the pool's threads' clocks are read apart, so `order`
        // is only nearly sorted) is replaced, its bytes already counted.
        if self.answers.insert(key, (now, answer)).is_none() {
            self.bytes += size;
        }
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// Lets go of every answer older than `ttl` at `now`.
    fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= self.ttl) {
            self.pop_oldest();
        }
    }

    /// Lets go of the oldest answer kept.
    fn evict_oldest(&mut self) {
        while !self.pop_oldest() {}
    }

    /// Takes the oldest entry of `order` out, and its answer if it is still the one kept;
    /// true when an answer went (or nothing is left).
    fn pop_oldest(&mut self) -> bool {
        let Some((at, key)) = self.order.pop_front() else { return true };
        // Only the answer this entry put goes, not one that replaced it.
        if self.answers.get(&key).is_none_or(|(kept_at, _)| *kept_at != at) {
            return false;
        }
        self.answers.remove(&key);
        self.bytes -= key.len();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Refusal;
    use crate::auth_hook::{question, Grant};

    fn key(cookie: &str) -> CacheKey {
        let head = format!("GET /sse?subscribe=a HTTP/1.1\r\nCookie: {cookie}\r\n\r\n");
        question(head.as_bytes(), "127.0.0.1:1".parse().unwrap()).unwrap().key
    }

    fn allowed() -> Answer {
        Answer::Allowed(Grant::default())
    }

    #[test]
    fn an_answer_is_reused_for_its_time_only() {
        let start = Instant::now();
        let mut cache = Cache::new(Duration::from_secs(10));
        cache.put(key("s=1"), allowed(), start);
        cache.put(key("s=2"), Answer::Refused(Refusal::BackendForbidden("no".into())), start);
        assert_eq!(cache.get(&key("s=1"), start + Duration::from_secs(9)), Some(allowed()));
        assert!(cache.get(&key("s=2"), start).is_some());
        assert_eq!(cache.get(&key("s=3"), start), None);
        assert_eq!(cache.get(&key("s=1"), start + Duration::from_secs(10)), None);
        // Expired answers go at the next put, and the question can be answered anew.
        cache.put(key("s=1"), allowed(), start + Duration::from_secs(11));
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&key("s=1"), start + Duration::from_secs(12)).is_some());
    }

    #[test]
    fn failures_are_asked_again() {
        let mut cache = Cache::new(Duration::from_secs(10));
        let now = Instant::now();
        cache.put(key("s=1"), Answer::Failed("down".into()), now);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_lets_its_oldest_go() {
        let start = Instant::now();
        let mut cache = Cache::bounded(Duration::from_secs(60), 3, usize::MAX);
        for n in 0..5u64 {
            cache.put(key(&format!("s={n}")), allowed(), start + Duration::from_secs(n));
        }
        assert_eq!(cache.len(), 3);
        let later = start + Duration::from_secs(5);
        assert!(cache.get(&key("s=1"), later).is_none());
        assert!(cache.get(&key("s=2"), later).is_some() && cache.get(&key("s=4"), later).is_some());
    }

    #[test]
    fn the_questions_bytes_are_bounded_too() {
        let one = key("s=1").len();
        let start = Instant::now();
        let mut cache = Cache::bounded(Duration::from_secs(60), 100, 2 * one);
        for n in 0..4u64 {
            cache.put(key(&format!("s={n}")), allowed(), start);
        }
        assert_eq!(cache.len(), 2);
        cache.put(key(&"x".repeat(3 * one)), allowed(), start);
        assert_eq!(cache.len(), 2, "a question bigger than the cache is not kept");
    }
}
