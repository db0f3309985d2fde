//! The steady publisher of the restart scenario: one publish every `--publish-ms` through a
//! control connection of its own, broadcast and targeted in turn, each answered (`ack on`)
//! before the next goes.
//!
//! A publish counts as sent only once the server answered `OK`. One that got no answer (the
//! server went away under it) or was refused is sent again, with the same sequence number, on
//! the next try: so the receivers' loss counts hold against what the server took, and a
//! publish the server took without saying so shows as a duplicate. While the server is away,
//! each due publish tries to connect again. It runs on a thread of its own ([`Steady::start`]),
//! so that a server slow to answer holds only the publisher, never the orchestrator's clock.
//! It owns its connection and nothing else.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use crate::control::Control;
use crate::sys;

/// How long a connect to the control port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The publisher and what it sent.
pub struct Steady {
    addr: SocketAddr,
    payload: usize,
    /// Connections: targeted message k goes to connection k mod n.
    n: u64,
    every: Duration,
    next_at: Instant,
    control: Option<Control>,
    /// Broadcasts the server took (the next one's sequence number).
    pub bcast: u64,
    /// Targeted messages the server took (likewise).
    pub targeted: u64,
    /// Publishes the server answered with `ERR`, and the last answer.
    pub refused: (u64, Option<String>),
    /// When the server last took a publish.
    last_taken: Option<Instant>,
    /// The longest time between two publishes the server took.
    pub longest_gap: Duration,
}

impl Steady {
    /// A publisher to the control port at `addr`, going on from the sequence numbers `sent`
    /// (broadcast, targeted), one publish every `every` from now.
    pub fn new(addr: SocketAddr, payload: usize, n: u64, every: Duration, sent: (u64, u64)) -> Self {
        Steady {
            addr,
            payload,
            n,
            every,
            next_at: Instant::now(),
            control: None,
            bcast: sent.0,
            targeted: sent.1,
            refused: (0, None),
            last_taken: None,
            longest_gap: Duration::ZERO,
        }
    }

    /// Publishes on a thread of its own until stopped.
    pub fn start(mut self) -> Publishing {
        let taken = Arc::new(Taken::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopped) = (Arc::clone(&taken), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let next = self.tick();
                shared.bcast.store(self.bcast, Ordering::Relaxed);
                shared.targeted.store(self.targeted, Ordering::Relaxed);
                sleep(next.saturating_duration_since(Instant::now()));
            }
            self
        });
        Publishing { taken, stop, thread }
    }

    /// Publishes the next message if it is due (a failure drops the connection, for the next
    /// one to open a new one); returns when the next one is due.
    fn tick(&mut self) -> Instant {
        let now = Instant::now();
        if now >= self.next_at {
            self.next_at = now + self.every;
            if self.publish_one().is_err() {
                self.control = None;
            }
        }
        self.next_at
    }

    fn publish_one(&mut self) -> io::Result<()> {
        if self.control.is_none() {
            self.control = Some(Control::acked(self.addr, self.payload, CONNECT_TIMEOUT)?);
        }
        let control = self.control.as_mut().expect("just connected");
        let broadcast = (self.bcast + self.targeted).is_multiple_of(2);
        if broadcast {
            control.broadcast(self.bcast, sys::mono_ns());
        } else {
            control.targeted(self.targeted, self.targeted % self.n, sys::mono_ns());
        }
        control.flush()?;
        match control.answer()? {
            Ok(_) => {
                *(if broadcast { &mut self.bcast } else { &mut self.targeted }) += 1;
                let now = Instant::now();
                let since = self.last_taken.map_or(Duration::ZERO, |last| now - last);
                self.longest_gap = self.longest_gap.max(since);
                self.last_taken = Some(now);
            }
            Err(why) => self.refused = (self.refused.0 + 1, Some(why)),
        }
        Ok(())
    }
}

/// What the publisher got taken so far (sequence numbers, as [`Steady`]'s), while it runs.
#[derive(Debug, Default)]
struct Taken {
    bcast: AtomicU64,
    targeted: AtomicU64,
}

/// The publisher at work on its thread.
pub struct Publishing {
    taken: Arc<Taken>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Steady>,
}

impl Publishing {
    /// The broadcasts and the targeted messages taken so far (the next sequence numbers).
    pub fn taken(&self) -> (u64, u64) {
        (self.taken.bcast.load(Ordering::Relaxed), self.taken.targeted.load(Ordering::Relaxed))
    }

    /// Stops publishing (after the publish under way) and hands back what was sent.
    pub fn stop(self) -> Steady {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the publisher does not panic")
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use super::*;

    /// Reads `ack on`, then answers the next `answered` publish lines with `OK <n>` and returns
    /// every line after `ack on` that it read, the last one (if it stopped early) unanswered.
    fn serve_once(listener: &TcpListener, answered: usize, lines: usize) -> Vec<String> {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "ack on\n");
        writer.write_all(b"OK ack on\n").unwrap();
        let mut got = Vec::new();
        for n in 0..lines {
            line.clear();
            reader.read_line(&mut line).unwrap();
            got.push(line.split(':').next().unwrap().to_string());
            if n < answered {
                writer.write_all(format!("OK {n}\n").as_bytes()).unwrap();
            }
        }
        got
    }

    #[test]
    fn an_unanswered_publish_is_sent_again_with_its_number_on_a_new_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            // The first server takes a broadcast and goes away before answering the next line.
            let first = serve_once(&listener, 1, 2);
            let second = serve_once(&listener, 3, 3);
            (first, second)
        });
        let mut steady = Steady::new(addr, 0, 10, Duration::ZERO, (5, 7));
        let mut ticks = 0;
        while steady.bcast + steady.targeted < 5 + 7 + 4 {
            steady.tick();
            ticks += 1;
            assert!(ticks < 100, "taken: {} {}", steady.bcast, steady.targeted);
        }
        let (first, second) = server.join().unwrap();
        assert_eq!(first, ["all=b5", "c7=t7"], "broadcast and targeted in turn");
        assert_eq!(second, ["c7=t7", "all=b6", "c8=t8"], "the unanswered one again, then on");
        assert_eq!((steady.bcast, steady.targeted, steady.refused.0), (7, 9, 0));
    }
}
