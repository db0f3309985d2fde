//! `--presence-events`: the shards' changes in, join and leave events out.
//!
//! Owns the control thread's side of presence events: it reads what the shards tell of streams
//! that start and end, keeps the [`Roster`] (which decides, debounced, what is a join or a
//! leave), and publishes each notice through the sequencer like any publish, to the token's
//! subscribers but the client it is about. So in a cluster a notice goes through the stream,
//! and every node's tail reads it; each node debounces its own clients, and the tails deliver
//! a notice only when it changes who is here cluster-wide (`presence::ClusterRoster`).

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use smallvec::smallvec;
use tracing::warn;

use super::Control;
use crate::event::{Audience, Publish, Target};
use crate::presence::{Change, Notice, Roster};

/// The changes the shards send, and who is here.
pub struct PresenceEvents {
    changes: Receiver<Change>,
    roster: Roster,
    /// In a cluster: this node's name, in each notice for the tails to read.
    node: Option<String>,
}

impl PresenceEvents {
    /// Reads `changes`; a leave waits `debounce`.
    pub fn new(changes: Receiver<Change>, debounce: Duration) -> Self {
        PresenceEvents { changes, roster: Roster::new(debounce), node: None }
    }

    /// In a cluster: names this node in its notices, which every node's tail then reads.
    pub fn of_node(self, node: String) -> Self {
        PresenceEvents { node: Some(node), ..self }
    }

    /// Expects back the clients a predecessor had (an upgrade), for `away` (its drain and retry
    /// wait): only those that do not come back are announced, as leaves.
    pub fn expecting(mut self, present: Vec<crate::presence::Present>, away: Duration) -> Self {
        self.roster.expect_back(present, Instant::now(), away);
        self
    }

    /// Everyone here, for a successor.
    pub(super) fn present(&self) -> Vec<crate::presence::Present> {
        self.roster.present()
    }

    /// How long until the next leave may fall due; `None` without any.
    pub(super) fn next_due_left(&self) -> Option<Duration> {
        self.roster.next_due().map(|at| at.saturating_duration_since(Instant::now()))
    }
}

impl Control {
    /// Takes the shards' changes and publishes the joins and the leaves that fell due.
    pub(super) fn take_presence(&mut self) {
        let Some(presence) = &mut self.presence else { return };
        let now = Instant::now();
        let mut notices: Vec<Notice> =
            presence.changes.try_iter().flat_map(|change| presence.roster.change(change, now)).collect();
        notices.extend(presence.roster.due(now));
        let node = presence.node.clone();
        for notice in notices {
            self.publish_notice(notice, node.as_deref());
        }
    }

    fn publish_notice(&mut self, notice: Notice, node: Option<&str>) {
        let data = notice.data(node).into_bytes();
        let audience =
            Audience { targets: smallvec![Target::Token(notice.token.into())], except: Some(notice.id) };
        let publish =
            Publish { audience, message: data, event: Some(notice.kind.event().to_owned()), retry: None };
        if let Err(full) = self.sequencer.publish(publish, None) {
            warn!("Presence: a {} is not published: {full}", notice.kind.event());
        }
    }
}
