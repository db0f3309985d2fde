//! The HTTP side of the SSE port: judging a request head, and the fixed responses.
//!
//! Owns what hasses 1.30 answers to every request (status codes, their order of checks, the
//! exact handshake headers). Pure functions over bytes: the shard feeds it whatever a connection
//! has buffered so far and writes what it returns; nothing here reads or writes a socket.

use bytes::Bytes;

/// What to make of the bytes a connection has sent so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// The head has not ended yet (no blank line) and is still under the size cap: read more.
    Incomplete,
    /// `GET` on the path with valid subscriptions: answer with the handshake, then stream.
    Subscribe(Subscribe),
    /// `HEAD` on the path: answer with the event-stream headers, then close.
    Head,
    /// `OPTIONS` on the path or `*`: answer with the CORS headers, then close.
    Options,
    /// Anything else: answer with this error, then close.
    Reject(Reject),
}

/// A valid SSE subscription request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The tokens, percent-decoded, without duplicates, in request order; `*` means everything.
    pub tokens: Vec<String>,
    /// The client's unique id (`id=`), if it gave one.
    pub id: Option<String>,
    /// `User-Agent`, cut to [`crate::limits::MAX_AGENT_LEN`] bytes; empty when absent.
    pub user_agent: String,
}

/// Why a request is refused. `status()` says the HTTP status; `Display` says why, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    // Variants are the helper's to choose.
}

impl Reject {
    /// The HTTP status code this refusal is answered with (400, 404, 431 or 501).
    pub fn status(&self) -> u16 {
        todo!()
    }
}

/// What a request must look like to be served: the `-murl` path.
#[derive(Debug, Clone)]
pub struct Route {
    /// The path SSE clients request, e.g. `/sse`.
    pub path: String,
}

/// Judges the bytes received so far on a connection.
pub fn judge(received: &[u8], route: &Route) -> Judgement {
    todo!("{received:?} {route:?}")
}

/// The fixed responses, built once per server from the CORS base.
#[derive(Debug, Clone)]
pub struct Responses {
    /// `200` + event-stream headers, sent before the first event.
    pub handshake: Bytes,
    /// `200` + event-stream headers for `HEAD`.
    pub head: Bytes,
    /// `200` + CORS headers + `Allow` for `OPTIONS`.
    pub options: Bytes,
}

impl Responses {
    /// Builds every fixed response for this CORS base.
    pub fn new(cors_base: &str) -> Self {
        todo!("{cors_base}")
    }

    /// The complete error response (head and tiny HTML body) for `reject`.
    pub fn error(&self, reject: &Reject) -> Bytes {
        todo!("{reject:?}")
    }
}
