//! A shard's settings: what the command line decided, fixed for the server's run.
//!
//! Built from the [`Config`] in one place and shared read-only by every shard. Anything that
//! changes at run time lives in [`crate::pipeline::SharedState`] instead.

use std::time::Duration;

use super::multiplex::Http2;
use crate::auth::Auth;
use crate::auth_hook::AuthHook;
use crate::config::Config;
use crate::http::{Responses, Route};
use crate::pipeline::PresenceLink;
use crate::sse::{self, Frame};
use crate::tls::Tls;

/// What every shard reads and never changes.
#[derive(Debug)]
pub struct Settings {
    /// The path SSE clients request.
    pub route: Route,
    /// The fixed responses.
    pub responses: Responses,
    /// A client whose unsent bytes stay above this after a write holds up its shard's intake.
    pub max_backlog: usize,
    /// A connection that has not handshaked after this long is closed.
    pub handshake_timeout: Duration,
    /// A handshaked connection's stream is ended this long after its last handshake.
    pub max_age: Duration,
    /// Every streaming client with nothing queued gets a comment this often.
    pub heartbeat: Option<Duration>,
    /// At a stop, how long streams' closes are spread over (`--drain-secs`); `None`: at once.
    pub drain: Option<Duration>,
    /// The kernel hands over connections with their request already there (`--defer-accept`).
    pub read_on_accept: bool,
    /// Serve HTTPS with these settings.
    pub tls: Option<Tls>,
    /// Connections beyond this many open at once are refused with 503.
    pub max_connections: Option<u64>,
    /// The `retry:` chunk every stream starts with (`--retry`).
    pub retry: Option<Frame>,
    /// Subscriptions need a token this checks (`--jwt-secret`, `--jwt-key`).
    pub auth: Option<Auth>,
    /// Subscriptions are put to the backend through this (`--auth-url`).
    pub auth_hook: Option<AuthHook>,
    /// Streams that start and end are told here (`--presence-events`); set by the server.
    pub presence: Option<PresenceLink>,
    /// HTTP/2, unless `--no-http2`.
    pub http2: Option<Http2>,
}

impl Settings {
    /// The settings `config` asks for, serving HTTPS with `tls`, checking tokens with `auth`
    /// and putting subscriptions to the backend through `auth_hook` when given (all made by the
    /// server at start, where a bad file stops it).
    pub fn new(config: &Config, tls: Option<Tls>, auth: Option<Auth>, auth_hook: Option<AuthHook>) -> Self {
        let responses = Responses::new(&config.cors_base, auth.is_some() || auth_hook.is_some());
        Settings {
            route: Route { path: config.match_url.clone() },
            http2: config.http2_max_streams.map(|max| Http2::new(max, &responses)),
            responses,
            max_backlog: config.max_backlog,
            handshake_timeout: config.handshake_timeout,
            max_age: config.max_age,
            heartbeat: config.heartbeat,
            drain: config.drain,
            read_on_accept: config.defer_accept.is_some(),
            tls,
            max_connections: config.max_connections.map(|max| max as u64),
            retry: config.retry.map(sse::retry_chunk),
            auth,
            auth_hook,
            presence: None,
        }
    }
}
