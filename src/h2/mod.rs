//! HTTP/2 (RFC 9113), as an SSE server needs it: every stream a GET that stays open, events
//! sent as DATA under flow control, many streams on one connection.
//!
//! Pure protocol over bytes, below the shard: [`frame`] lays out frames, [`fields`] decodes a
//! request's header block and encodes a response's head, [`session`] is one connection's state.
//! Nothing here reads a socket, knows a subscription, or keeps time of its own; the shard
//! (`shard/multiplex.rs`) carries a session on each HTTP/2 connection and feeds it.

pub mod fields;
pub mod frame;
pub mod session;

pub use session::{ConnectionError, Event, Limits, Session};
