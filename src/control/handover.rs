//! The control thread's part of an upgrade: its sources packed for a new process, and taken in
//! there.
//!
//! Owns the order that makes an upgrade lose no publish: the listeners and the FIFO stop being
//! watched; every whole line and request already received is carried out; the answers owed
//! are written; then each source is handed over as a duplicate of its descriptor with what it
//! held of its input (a line in progress, a request in progress) and how it was set (`ack on`,
//! authorized). Whatever a publisher writes from then on waits in the kernel for the new
//! process. Until the main thread says the new process took over, nothing is read here; if it
//! did not, everything is watched again as before. It starts no process and touches no shard.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::api::ApiConnection;
use super::lines::{HeldLine, LineBuffer};
use super::replies::Replies;
use super::table::{Key, Named};
use super::tcp::Publisher;
use super::{Control, Input, API_LISTENER, FIFO, LISTENER, WAKER};
use crate::event::{ApiKey, PublisherKey};
use crate::forward::Relay;

/// How long the answers owed (the admin path's, a cluster's receipts) may take to come and be
/// written before the sources are packed without the connections still waiting for one.
const SETTLE: Duration = Duration::from_secs(2);

/// A TCP publisher as it is handed over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublisherState {
    /// Its address, for the log.
    pub peer: SocketAddr,
    /// Its line in progress.
    pub line: HeldLine,
    /// Every publish is answered.
    pub acks: bool,
    /// It sent the right `auth` line (or no secret was set).
    pub authorized: bool,
}

/// An API client as it is handed over: between requests, with what it sent of the next one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiState {
    /// Its address, for the log.
    pub peer: SocketAddr,
    /// Bytes of requests not yet taken.
    pub input: Vec<u8>,
}

/// The control thread's sources, as duplicates of their descriptors, for a new process.
#[derive(Debug, Default)]
pub struct ControlParcel {
    /// The control port's listener.
    pub listener: Option<OwnedFd>,
    /// The HTTP API's listener.
    pub api_listener: Option<OwnedFd>,
    /// The FIFO and its line in progress.
    pub fifo: Option<(OwnedFd, HeldLine)>,
    /// Open control connections.
    pub publishers: Vec<(OwnedFd, PublisherState)>,
    /// Open API connections.
    pub apis: Vec<(OwnedFd, ApiState)>,
    /// Who is on each token (`--presence-events`).
    pub present: Vec<crate::presence::Present>,
}

/// Connections a new process took over from its predecessor, to be watched from the start.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Control connections.
    pub publishers: Vec<(std::net::TcpStream, PublisherState)>,
    /// API connections.
    pub apis: Vec<(std::net::TcpStream, ApiState)>,
    /// The FIFO's line in progress.
    pub fifo_line: HeldLine,
}

/// Why the sources could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// A descriptor could not be duplicated (out of descriptors).
    #[error("cannot hand over the control sources: {0}")]
    Dup(std::io::Error),
    /// The control thread did not answer (it ended, or is stuck).
    #[error("the control thread did not hand over its sources")]
    NoAnswer,
}

/// What the main thread tells a control thread that packed its sources.
#[derive(Debug)]
pub enum Verdict {
    /// The new process serves them: let go of them, and have the shards drain until `until`,
    /// with every event live meanwhile: the ones the new process forwards on the feed (a lone
    /// node), or the ones a cluster's tail reads.
    Release(Option<Relay>, Instant),
    /// The new process did not start: watch them again and go on.
    Resume,
}

/// A request from the main thread, and where the parcel goes.
pub(super) type PackRequest = Sender<Result<ControlParcel, PackError>>;

/// The main thread's side of an upgrade, for the control thread.
#[derive(Debug, Clone)]
pub struct HandoverLink {
    pub(super) requests: Sender<PackRequest>,
    pub(super) verdicts: Sender<Verdict>,
    pub(super) waker: std::sync::Arc<mio::Waker>,
}

/// The control thread's side.
#[derive(Debug)]
pub(super) struct HandoverInbox {
    pub(super) requests: Receiver<PackRequest>,
    pub(super) verdicts: Receiver<Verdict>,
}

impl HandoverLink {
    /// Asks the control thread to stop reading and pack its sources; it then waits for
    /// [`HandoverLink::decide`].
    pub fn pack(&self, wait: Duration) -> Result<ControlParcel, PackError> {
        let (parcel, packed) = crossbeam_channel::bounded(1);
        self.requests.send(parcel).map_err(|_| PackError::NoAnswer)?;
        let _ = self.waker.wake();
        packed.recv_timeout(wait).map_err(|_| PackError::NoAnswer)?
    }

    /// Tells the control thread, waiting since [`HandoverLink::pack`], what became of the upgrade.
    pub fn decide(&self, verdict: Verdict) {
        let _ = self.verdicts.send(verdict);
    }
}

/// A pair of link and inbox.
pub(super) fn link(waker: std::sync::Arc<mio::Waker>) -> (HandoverLink, HandoverInbox) {
    let (requests, asked) = crossbeam_channel::bounded(1);
    let (verdicts, told) = crossbeam_channel::bounded(1);
    (HandoverLink { requests, verdicts, waker }, HandoverInbox { requests: asked, verdicts: told })
}

impl Control {
    /// Serves a request to pack, if one came: packs, hands the parcel over, and waits for the
    /// verdict. True when the sources were released (the thread ends).
    pub(super) fn hand_over_if_asked(&mut self) -> bool {
        let Ok(request) = self.handover.requests.try_recv() else { return false };
        let parcel = self.pack();
        let packed = parcel.is_ok();
        if request.send(parcel).is_err() || !packed {
            self.resume();
            return false;
        }
        match self.handover.verdicts.recv() {
            Ok(Verdict::Release(relay, until)) => {
                info!("Upgrade: the new process serves the control sources");
                self.sequencer.drain_shards();
                match relay {
                    Some(relay) => self.relay(relay, until),
                    None => std::thread::sleep(until.saturating_duration_since(Instant::now())),
                }
                self.sequencer.stop_cluster();
                true
            }
            Ok(Verdict::Resume) | Err(_) => {
                self.resume();
                false
            }
        }
    }

    /// Stops watching the listeners and the FIFO, carries out what was received, writes what is
    /// owed (for at most [`SETTLE`]), and duplicates every source.
    fn pack(&mut self) -> Result<ControlParcel, PackError> {
        self.sources.stop_listening();
        self.read_fifo();
        self.serve_every_connection();
        self.sources.paused = true;
        self.sequencer.wake();
        self.settle();
        let mut parcel = self.sources.parcel().map_err(PackError::Dup)?;
        parcel.present = self.presence.as_ref().map(|presence| presence.present()).unwrap_or_default();
        Ok(parcel)
    }

    /// Writes answers as they come until none is owed, or [`SETTLE`] passed.
    fn settle(&mut self) {
        let until = Instant::now() + SETTLE;
        let mut events = Events::with_capacity(256);
        while !self.sources.settled() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                warn!("Upgrade: answers still owed after {SETTLE:?}; those connections are closed");
                return;
            }
            if self.sources.poll.poll(&mut events, Some(left)).is_err() {
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => self.take_replies(),
                    LISTENER | API_LISTENER | FIFO => {}
                    token => match Named::of(token) {
                        Named::Publisher(key) if self.sources.publishers.contains(key) => {
                            self.sources.write_publisher(key)
                        }
                        Named::Api(key) if self.sources.apis.contains(key) => self.sources.write_api(key),
                        _ => {}
                    },
                }
            }
        }
    }

    /// Hands the draining shards the events the new process forwards: their streams get
    /// every event live until they are ended.
    fn relay(&mut self, mut relay: Relay, until: Instant) {
        while Instant::now() < until {
            let open = relay.take(|event| self.sequencer.deliver_forwarded(event));
            self.sequencer.wake();
            if !open {
                break;
            }
        }
    }

    /// Watches every source again after a failed upgrade, takes what arrived meanwhile, and
    /// wakes the shards for it: the event loop woke them before it asked for the handover,
    /// and sleeps next until a source stirs again.
    fn resume(&mut self) {
        warn!("Upgrade: the control sources are served here again");
        self.sources.paused = false;
        self.sources.listen_again();
        self.read_fifo();
        self.sources.accept_publishers(self.settings.separator, self.settings.secret.is_some());
        self.sources.accept_api();
        self.serve_every_connection();
        self.sequencer.wake();
    }

    /// Reads every control and API connection and carries out what it sent.
    fn serve_every_connection(&mut self) {
        let keys: Vec<PublisherKey> = self.sources.publishers.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.handle_publisher(key);
        }
        let keys: Vec<ApiKey> = self.sources.apis.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.serve_api(key);
        }
    }

    /// Takes in connections a predecessor handed over, as if they had just been accepted, and
    /// reads what they sent meanwhile.
    pub(super) fn adopt(&mut self, adopted: Adopted) -> std::io::Result<()> {
        if let Some(fifo) = &mut self.sources.fifo {
            fifo.input.lines = LineBuffer::resume(self.settings.separator, adopted.fifo_line);
        }
        let separator = self.settings.separator;
        for (stream, state) in adopted.publishers {
            stream.set_nonblocking(true)?;
            let key =
                self.sources.adopt_publisher(mio::net::TcpStream::from_std(stream), state, separator)?;
            self.handle_publisher(key);
        }
        for (stream, state) in adopted.apis {
            stream.set_nonblocking(true)?;
            let key = self.sources.adopt_api(mio::net::TcpStream::from_std(stream), state)?;
            self.serve_api(key);
        }
        self.read_fifo();
        Ok(())
    }
}

impl super::Sources {
    fn stop_listening(&mut self) {
        let registry = self.poll.registry();
        if let Some(listener) = &mut self.listener {
            let _ = registry.deregister(listener);
        }
        if let Some(listener) = &mut self.api_listener {
            let _ = registry.deregister(listener);
        }
        if let Some(fifo) = &self.fifo {
            use std::os::fd::AsRawFd;
            let _ = registry.deregister(&mut mio::unix::SourceFd(&fifo.file.as_raw_fd()));
        }
    }

    fn listen_again(&mut self) {
        let registry = self.poll.registry();
        let failed = |what: &str, e: std::io::Error| warn!("Upgrade: cannot watch the {what} again: {e}");
        if let Some(listener) = &mut self.listener {
            if let Err(e) = registry.register(listener, LISTENER, Interest::READABLE) {
                failed("control port", e);
            }
        }
        if let Some(listener) = &mut self.api_listener {
            if let Err(e) = registry.register(listener, API_LISTENER, Interest::READABLE) {
                failed("HTTP API", e);
            }
        }
        if let Some(fifo) = &self.fifo {
            use std::os::fd::AsRawFd;
            if let Err(e) =
                registry.register(&mut mio::unix::SourceFd(&fifo.file.as_raw_fd()), FIFO, Interest::READABLE)
            {
                failed("FIFO", e);
            }
        }
    }

    /// Whether no connection waits for an answer or has one to write.
    fn settled(&self) -> bool {
        let publishers = self.publishers.iter().all(|(_, p)| p.replies.is_empty() && !p.replies.awaiting());
        publishers && self.apis.iter().all(|(_, c)| c.is_idle())
    }

    /// Duplicates of every source's descriptor, with the state each goes on with. A connection
    /// still owed an answer, or that finished, is not handed over: it ends here.
    fn parcel(&self) -> std::io::Result<ControlParcel> {
        let dup = |fd: &dyn AsFd| fd.as_fd().try_clone_to_owned();
        let mut parcel = ControlParcel {
            listener: self.listener.as_ref().map(|l| dup(l)).transpose()?,
            api_listener: self.api_listener.as_ref().map(|l| dup(l)).transpose()?,
            fifo: self
                .fifo
                .as_ref()
                .map(|f| Ok::<_, std::io::Error>((dup(&f.file)?, f.input.lines.held())))
                .transpose()?,
            ..ControlParcel::default()
        };
        for (_, publisher) in self.publishers.iter() {
            if publisher.done || publisher.replies.awaiting() || !publisher.replies.is_empty() {
                continue;
            }
            let state = PublisherState {
                peer: publisher.peer,
                line: publisher.input.lines.held(),
                acks: publisher.acks,
                authorized: publisher.authorized,
            };
            parcel.publishers.push((dup(&publisher.stream)?, state));
        }
        for (_, conn) in self.apis.iter() {
            if let Some((peer, input)) = conn.handover_input() {
                parcel.apis.push((dup(conn.stream())?, ApiState { peer, input: input.to_vec() }));
            }
        }
        Ok(parcel)
    }

    fn adopt_publisher(
        &mut self,
        mut stream: mio::net::TcpStream,
        state: PublisherState,
        separator: u8,
    ) -> std::io::Result<PublisherKey> {
        let token = self.publishers.next_key().token();
        self.poll.registry().register(&mut stream, token, Interest::READABLE)?;
        self.next_serial += 1;
        let input = Input { lines: LineBuffer::resume(separator, state.line), last_input: Instant::now() };
        Ok(self.publishers.insert(Publisher {
            stream,
            peer: state.peer,
            serial: self.next_serial,
            input,
            replies: Replies::default(),
            acks: state.acks,
            done: false,
            authorized: state.authorized,
            registered: Interest::READABLE,
        }))
    }

    fn adopt_api(&mut self, mut stream: mio::net::TcpStream, state: ApiState) -> std::io::Result<ApiKey> {
        let token = self.apis.next_key().token();
        self.poll.registry().register(&mut stream, token, Interest::READABLE)?;
        self.next_serial += 1;
        Ok(self.apis.insert(ApiConnection::new(stream, state.peer, state.input, self.next_serial)))
    }
}
