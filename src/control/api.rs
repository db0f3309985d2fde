//! The HTTP API's connections: a source of the control thread, beside the TCP port and the FIFO.
//!
//! Owns accepting API connections, reading their requests (parsed by [`crate::api`]), carrying
//! them out and writing the answers. A publish goes to the sequencer like a control line's and
//! is answered at once with its id; a question goes to the admin path, whose answer comes back
//! as a [`Reply::Http`](crate::admin::Reply) and is written here: nothing waits for it. A
//! connection answers its requests in order, so while an answer is out with the admin path it
//! reads no further request.
//!
//! Bounded everywhere: a request's head and body ([`crate::api::request`]), the connections
//! ([`MAX_API_CONNECTIONS`]), a request that does not arrive whole within [`REQUEST_TIMEOUT`],
//! a connection that says nothing for [`IDLE_TIMEOUT`]. Whatever a peer sends costs it its
//! connection at worst, never the server's.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::Interest;
use tracing::{debug, info, warn};

use super::table::Key;
use super::{watch, write_out, Accepted, Control, Sources};
use crate::admin::AnswerTo;
use crate::api::request::{parse, Parsed, Request, RequestError};
use crate::api::{self, order_from, presence_from, publish_from, route, Response, Route, BODY_SLACK};
use crate::event::{ApiKey, Asker, ReceiptTo};
use crate::gate::unix_now;
use crate::nonblocking::attempt;
use crate::pipeline::Query;

/// API connections open at once; beyond, a new one is answered 503 and closed.
pub const MAX_API_CONNECTIONS: usize = 4096;
/// A request must arrive whole this long after its first byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in progress is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// How often connections are checked against their deadlines: a timeout is that much late at
/// most, and the control thread is not woken per connection.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Unsent answers a connection may have before it is read no further: a client that pipelines
/// requests and reads no answers stops being read, and TCP tells it to slow down.
const MAX_UNSENT: usize = 256 * 1024;

/// An API connection.
pub(super) struct ApiConnection {
    stream: TcpStream,
    peer: SocketAddr,
    /// Tells it from a later connection given the same slab key, for answers on their way.
    serial: u64,
    /// Bytes received and not yet taken by a request.
    input: Vec<u8>,
    /// Answers not yet written.
    out: Vec<u8>,
    /// An answer is out with the admin path: the next request waits for it.
    awaiting: bool,
    /// Whether the connection stays open after the request being answered.
    keep_alive: bool,
    /// No more requests are taken: close once the answers are out.
    done: bool,
    /// When it is closed unless a request completes (or an answer is awaited).
    deadline: Instant,
    registered: Interest,
}

impl Sources {
    /// Takes in every waiting API connection, up to [`MAX_API_CONNECTIONS`].
    pub(super) fn accept_api(&mut self) {
        let Some(listener) = &self.api_listener else { return };
        loop {
            let (mut stream, peer) = match attempt(|| listener.accept()) {
                Ok(Some(accepted)) => accepted,
                Ok(None) => return,
                Err(e) => return warn!("API accept failed: {e}"),
            };
            if self.apis.len() >= MAX_API_CONNECTIONS {
                info!("API connection from {peer} refused: {MAX_API_CONNECTIONS} are open");
                let refusal = Response::error(503, "too many API connections").encode(false);
                let _ = stream.write(&refusal);
                continue;
            }
            let token = self.apis.next_key().token();
            if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE) {
                warn!("Cannot watch API connection from {peer}: {e}");
                continue;
            }
            debug!("API connection from {peer}");
            self.next_serial += 1;
            self.apis.insert(ApiConnection::new(stream, peer, Vec::new(), self.next_serial));
        }
    }

    /// Closes the connections whose deadline has passed: a request that did not come whole in
    /// time, or an idle connection.
    pub(super) fn sweep_api(&mut self, now: Instant) {
        let late: Vec<ApiKey> =
            self.apis.iter().filter(|(_, c)| !c.awaiting && c.deadline <= now).map(|(key, _)| key).collect();
        for key in late {
            let conn = &mut self.apis[key];
            if conn.input.is_empty() {
                debug!("API connection from {} closed: idle", conn.peer);
            } else {
                // It gets a word, though it is likely not listening.
                info!("API connection from {} closed: the request did not arrive whole in time", conn.peer);
                conn.answer(&Response::error(408, "the request did not arrive whole in time"));
                let _ = conn.stream.write(&conn.out);
            }
            let mut conn = self.apis.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    /// Writes pending answers; closes a finished connection once they are out.
    pub(super) fn write_api(&mut self, key: ApiKey) {
        let conn = &mut self.apis[key];
        if !write_out(&mut conn.stream, &mut conn.out) {
            conn.done = true;
            conn.keep_alive = false;
        }
        let finished = conn.done || !conn.keep_alive;
        if finished && conn.out.is_empty() && !conn.awaiting {
            debug!("API connection from {} closed", conn.peer);
            let mut conn = self.apis.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.stream);
            return;
        }
        let token = key.token();
        watch(self.poll.registry(), &mut conn.stream, token, &mut conn.registered, &conn.out);
    }
}

impl Control {
    /// Reads, answers what can be answered, writes; closes the connection when it is done.
    pub(super) fn serve_api(&mut self, key: ApiKey) {
        while self.sources.apis.contains(key) {
            let read_more = self.read_api(key);
            self.take_requests(key);
            self.sources.write_api(key);
            // A read that stopped at a full buffer rather than at WouldBlock leaves bytes epoll
            // will not announce again: go on while they can be taken. Answers backed up wait
            // for writability instead, which brings the connection back here.
            if !read_more || !self.sources.apis.get(key).is_some_and(ApiConnection::can_take_request) {
                return;
            }
        }
    }

    /// Writes the admin path's answer to the connection that asked, and goes on with its
    /// next request.
    pub(super) fn api_reply(&mut self, to: Asker<ApiKey>, response: Response) {
        let Some(conn) = self.sources.apis.get_mut(to.key).filter(|c| c.serial == to.serial) else { return };
        conn.awaiting = false;
        conn.answer(&response);
        self.serve_api(to.key);
    }

    /// Reads what has arrived, up to what one request may hold; whether there may be more.
    fn read_api(&mut self, key: ApiKey) -> bool {
        if self.sources.paused {
            return false;
        }
        let max_input = api::request::MAX_HEAD + self.max_api_body();
        let conn = &mut self.sources.apis[key];
        while !conn.done && conn.input.len() < max_input {
            match attempt(|| conn.stream.read(&mut self.sources.read_buf)) {
                Ok(Some(0)) => {
                    // The peer sent all it will: answer what it asked, then close.
                    conn.done = true;
                }
                Ok(Some(n)) => {
                    if conn.input.is_empty() {
                        conn.deadline = Instant::now() + REQUEST_TIMEOUT;
                    }
                    conn.input.extend_from_slice(&self.sources.read_buf[..n]);
                }
                Ok(None) => return false,
                Err(e) => {
                    debug!("API connection from {} failed: {e}", conn.peer);
                    conn.done = true;
                    conn.input.clear();
                    conn.out.clear();
                    conn.keep_alive = false;
                }
            }
        }
        !conn.done
    }

    fn max_api_body(&self) -> usize {
        self.settings.limits.max_message + BODY_SLACK
    }

    /// Carries out the whole requests received, in order, while answers may be given. The
    /// input is taken out of the connection while they are (carrying one out reads nothing),
    /// so a body is handed on where it lies, and the requests taken leave the buffer in one go
    /// at the end: a pipelined batch is not moved down the buffer once per request. The deadline
    /// is set once, after the last request carried out.
    fn take_requests(&mut self, key: ApiKey) {
        let max_body = self.max_api_body();
        let mut input = std::mem::take(&mut self.sources.apis[key].input);
        let (mut taken, mut carried_out) = (0, None);
        while self.sources.apis[key].can_take_request() {
            match parse(&input[taken..], max_body) {
                Ok(Parsed::Incomplete) => {
                    let conn = &self.sources.apis[key];
                    if conn.done && taken < input.len() {
                        debug!("API connection from {} closed in the middle of a request", conn.peer);
                        taken = input.len();
                    }
                    break;
                }
                Ok(Parsed::Complete { request, consumed }) => {
                    let body = &input[taken..][request.body.clone()];
                    taken += consumed;
                    carried_out = Some(taken);
                    self.sources.apis[key].keep_alive &= request.keep_alive;
                    self.carry_out(key, &request, body);
                }
                Err(e) => {
                    taken = input.len();
                    self.refuse_request(key, &e);
                    break;
                }
            }
        }
        let conn = &mut self.sources.apis[key];
        if let Some(end) = carried_out {
            let more = end < input.len();
            conn.deadline = Instant::now() + if more { REQUEST_TIMEOUT } else { IDLE_TIMEOUT };
        }
        input.drain(..taken);
        conn.input = input;
    }

    /// Answers a request that cannot be read, and closes the connection: where its next request
    /// would start is not known.
    fn refuse_request(&mut self, key: ApiKey, e: &RequestError) {
        let conn = &mut self.sources.apis[key];
        info!("API request from {} refused: {e}", conn.peer);
        conn.keep_alive = false;
        conn.answer(&Response::error(e.status(), &e.to_string()));
    }

    fn carry_out(&mut self, key: ApiKey, request: &Request, body: &[u8]) {
        let answer = match route(request, self.settings.api_key.as_deref()) {
            Ok(Route::Publish) => match publish_from(request, body, &self.settings.limits) {
                Ok(publish) => {
                    self.published.http += 1;
                    let asker = Asker { key, serial: self.sources.apis[key].serial };
                    match self.sequencer.publish(publish, Some(ReceiptTo::Http(asker))) {
                        Ok(Accepted::Sequenced(id)) => {
                            let conn = &mut self.sources.apis[key];
                            Response::encode_published(id, conn.keep_alive, &mut conn.out);
                            return;
                        }
                        // In a cluster the outbox answers, once Redis holds it.
                        Ok(Accepted::Queued) => {
                            self.sources.apis[key].awaiting = true;
                            return;
                        }
                        Err(full) => {
                            self.refused += 1;
                            Response::error(503, &full.to_string())
                        }
                    }
                }
                Err(refusal) => refusal,
            },
            Ok(Route::Page) => api::page(),
            Ok(Route::Presence) => match presence_from(request) {
                Ok(query) => return self.ask_for_api(key, query),
                Err(refusal) => refusal,
            },
            Ok(Route::Order(kind)) => match order_from(kind, request, body, unix_now()) {
                Ok(order) => {
                    info!("API order from {}: {order:?}", self.sources.apis[key].peer);
                    return self.ask_for_api(key, Query::Order(order));
                }
                Err(refusal) => refusal,
            },
            Ok(Route::Ask(query)) => {
                let conn = &mut self.sources.apis[key];
                conn.awaiting = true;
                let asker = Asker { key, serial: conn.serial };
                return self.ask(query.query(), AnswerTo::Api(asker, query));
            }
            Err(refusal) => refusal,
        };
        if answer.status >= 400 {
            let conn = &self.sources.apis[key];
            info!(
                "API request {} from {} refused: {}",
                request.path,
                conn.peer,
                String::from_utf8_lossy(&answer.body)
            );
        }
        self.sources.apis[key].answer(&answer);
    }

    /// Hands a question answered with its JSON to the admin path; the connection waits for it.
    fn ask_for_api(&mut self, key: ApiKey, query: Query) {
        let conn = &mut self.sources.apis[key];
        conn.awaiting = true;
        let asker = Asker { key, serial: conn.serial };
        self.ask(query, AnswerTo::ApiJson(asker));
    }
}

impl ApiConnection {
    /// Whether its next request may be carried out now: answers go out in order, and one that
    /// stops being read gets no more.
    fn can_take_request(&self) -> bool {
        !self.awaiting && self.keep_alive && self.out.len() < MAX_UNSENT
    }

    /// A connection from `peer`, between two requests, with `input` of the next: one just
    /// accepted, or one a predecessor handed over (an upgrade).
    pub(super) fn new(stream: TcpStream, peer: SocketAddr, input: Vec<u8>, serial: u64) -> ApiConnection {
        ApiConnection {
            stream,
            peer,
            serial,
            input,
            out: Vec::new(),
            awaiting: false,
            keep_alive: true,
            done: false,
            deadline: Instant::now() + IDLE_TIMEOUT,
            registered: Interest::READABLE,
        }
    }

    /// Whether it has nothing to write and waits for no answer.
    pub(super) fn is_idle(&self) -> bool {
        self.out.is_empty() && !self.awaiting
    }

    /// Its peer and what it sent of its next request, if a new process goes on with it: one
    /// between requests that stays open.
    pub(super) fn handover_input(&self) -> Option<(SocketAddr, &[u8])> {
        let goes_on = self.is_idle() && self.keep_alive && !self.done;
        goes_on.then_some((self.peer, &self.input[..]))
    }

    /// Its socket.
    pub(super) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn answer(&mut self, response: &Response) {
        response.encode_into(self.keep_alive, &mut self.out);
    }
}
