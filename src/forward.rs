//! Events forwarded from a new process to the one it replaced, while that one drains (an
//! upgrade): its streams keep getting every event live until they are ended and come back.
//!
//! Owns the feed's two ends: [`Forward`] (the new process) queues each sequenced event as a
//! history file record and writes them, without ever waiting, once per round of the sequencer;
//! [`Relay`] (the old process) reads them back. The record format is the history file's, so an
//! event crosses with its id, audience and frame as they are. The feed is a help, not a duty:
//! when the old process is gone, or reads too slowly, it is dropped, and its clients get what
//! they missed in their replay on the new process.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tracing::{debug, warn};

use crate::history_file::{decode_record, encode_event, wall_ms, Decoded, Record, StoredEvent};
use crate::pipeline::Sequenced;

/// The most a slow predecessor may leave unread before the feed is dropped.
const MAX_UNREAD: usize = 16 << 20;
/// How long a [`Relay`] read waits before it looks at the clock again.
const READ_WAIT: Duration = Duration::from_millis(100);

/// The new process's end of the feed.
#[derive(Debug)]
pub struct Forward {
    socket: UnixStream,
    /// Records not yet written.
    unsent: Vec<u8>,
}

impl Forward {
    /// Forwards over `socket`, the predecessor's feed.
    pub fn new(socket: UnixStream) -> io::Result<Forward> {
        socket.set_nonblocking(true)?;
        Ok(Forward { socket, unsent: Vec::new() })
    }

    /// Queues `event` behind the others.
    pub fn push(&mut self, event: &Sequenced) {
        encode_event(event.id, wall_ms(), &event.audience, &event.frame, &mut self.unsent);
    }

    /// Writes what the socket takes now. False once the feed is over: the predecessor is gone
    /// (or reads so slowly that it is left to its clients' replays).
    pub fn flush(&mut self) -> bool {
        while !self.unsent.is_empty() {
            match self.socket.write(&self.unsent) {
                Ok(0) => return false,
                Ok(n) => {
                    self.unsent.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("Upgrade: the old process took its last forwarded event ({e})");
                    return false;
                }
            }
        }
        if self.unsent.len() > MAX_UNREAD {
            warn!("Upgrade: the old process reads forwarded events too slowly; its clients get the rest when back");
            return false;
        }
        true
    }
}

/// The old process's end of the feed.
#[derive(Debug)]
pub struct Relay {
    socket: UnixStream,
    received: Vec<u8>,
}

impl Relay {
    /// Reads from `socket`, the feed a successor writes.
    pub fn new(socket: UnixStream) -> io::Result<Relay> {
        socket.set_read_timeout(Some(READ_WAIT))?;
        Ok(Relay { socket, received: Vec::new() })
    }

    /// Waits a moment for events and hands each to `deliver`, in order. False once the feed
    /// ended (the successor closed it, or sent what is not a record).
    pub fn take(&mut self, mut deliver: impl FnMut(StoredEvent)) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match self.socket.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => self.received.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Err(_) => return false,
        }
        let mut at = 0;
        loop {
            match decode_record(&self.received[at..]) {
                Decoded::Record(Record::Event(event), used) => {
                    deliver(event);
                    at += used;
                }
                Decoded::Record(_, used) => at += used,
                Decoded::Incomplete => break,
                Decoded::Corrupt(why) => {
                    warn!("Upgrade: the forwarded events are damaged ({why}); no more are relayed");
                    return false;
                }
            }
        }
        self.received.drain(..at);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::event::{Audience, Target};
    use crate::sse::encode_event as frame;
    use smallvec::smallvec;

    fn event(id: u64) -> Sequenced {
        let audience = Audience { targets: smallvec![Target::Token("t".into())], except: None };
        Sequenced { id, audience, frame: frame(id, format!("e{id}").as_bytes()), at: Instant::now() }
    }

    #[test]
    fn events_cross_in_order_with_their_ids_audiences_and_frames() {
        let (new, old) = UnixStream::pair().unwrap();
        let mut forward = Forward::new(new).unwrap();
        let mut relay = Relay::new(old).unwrap();
        let sent: Vec<Arc<Sequenced>> = (1..=100).map(|id| Arc::new(event(id))).collect();
        for event in &sent {
            forward.push(event);
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < sent.len() && Instant::now() < deadline {
            assert!(forward.flush());
            assert!(relay.take(|event| got.push(event)));
        }
        for (event, sent) in got.iter().zip(&sent) {
            assert_eq!((event.id, &event.audience, &event.frame), (sent.id, &sent.audience, &sent.frame));
        }
        assert_eq!(got.len(), 100);
        drop(forward);
        assert!(!relay.take(|_| panic!("nothing more")), "the feed ended");
    }

    #[test]
    fn a_gone_predecessor_ends_the_feed() {
        let (new, old) = UnixStream::pair().unwrap();
        let mut forward = Forward::new(new).unwrap();
        drop(old);
        forward.push(&event(1));
        assert!(!forward.flush());
    }
}
