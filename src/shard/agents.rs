//! The `User-Agent`s of a shard's clients, each text kept once.
//!
//! A browser's `User-Agent` is 100 to 190 bytes, and a site's clients send a few dozen
//! different ones: kept in each client's names, it was a third of an idle browser
//! connection's memory. The shard keeps each text once here, and a client holds a counted
//! reference to it (8 bytes). A text no client holds any more is let go of once the set has
//! doubled since it was last swept, so clients with ever-new agents cost at most twice what
//! the live ones hold. It knows nothing of connections.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A client's `User-Agent`, shared with every client of its shard that sent the same. A thin
/// pointer: the text's box sits behind the count.
#[derive(Debug, Clone)]
pub struct Agent(Arc<Box<str>>);

impl Agent {
    /// Its text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Agent {
    fn eq(&self, other: &Agent) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Agent {}

// As its text, so that the set is searched with a `&str`.
impl Hash for Agent {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for Agent {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// The set of texts (see the module doc).
#[derive(Debug, Default)]
pub struct Agents {
    known: HashSet<Agent>,
    /// How many were left at the last sweep.
    swept_at: usize,
}

/// Below this many texts, none is swept.
const SWEEP_FROM: usize = 64;

impl Agents {
    /// The shared `agent`; `None` for an empty one (no allocation for a client that sent none).
    pub fn share(&mut self, agent: &str) -> Option<Agent> {
        if agent.is_empty() {
            return None;
        }
        if let Some(known) = self.known.get(agent) {
            return Some(known.clone());
        }
        if self.known.len() >= (2 * self.swept_at).max(SWEEP_FROM) {
            self.sweep();
        }
        let agent = Agent(Arc::new(agent.into()));
        self.known.insert(agent.clone());
        Some(agent)
    }

    /// Lets go of the texts only this set holds.
    fn sweep(&mut self) {
        self.known.retain(|agent| Arc::strong_count(&agent.0) > 1);
        self.swept_at = self.known.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_with_the_same_agent_share_one_text() {
        let mut agents = Agents::default();
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36";
        let (a, b) = (agents.share(chrome).unwrap(), agents.share(chrome).unwrap());
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a.as_str(), chrome);
        assert!(agents.share("").is_none());
        assert_eq!(std::mem::size_of::<Option<Agent>>(), 8);
    }

    #[test]
    fn texts_nobody_holds_are_let_go_of_as_the_set_doubles() {
        let mut agents = Agents::default();
        let kept: Vec<Agent> = (0..10).filter_map(|i| agents.share(&format!("kept/{i}"))).collect();
        for i in 0..10_000 {
            // A client that comes and goes with an agent of its own.
            drop(agents.share(&format!("passing/{i}")));
            assert!(agents.known.len() <= SWEEP_FROM, "at {i}");
        }
        for agent in &kept {
            assert!(Arc::ptr_eq(&agents.share(agent.as_str()).unwrap().0, &agent.0), "a held text is kept");
        }
    }
}
