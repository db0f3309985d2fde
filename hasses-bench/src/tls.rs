//! `--tls`: the rustls client settings every connection shares (the certificate to trust,
//! TLS 1.3 and 1.2, ALPN `http/1.1`, or `h2` alone with `--http2`), the name to verify the server by, and with
//! `--tls-resume` the store of sessions to resume.
//!
//! Owns turning `--ca`, `--server-name` and `--tls-resume` into a `ClientConfig`; the receivers
//! drive the sessions themselves, non-blocking, in their own poll loops.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, NamedGroup, RootCertStore};

use crate::cli::Options;

/// What a receiver needs to open a TLS session.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    /// One per `--sse` address, in their order.
    servers: Vec<ServerTls>,
}

/// The settings for one `--sse` address's server.
#[derive(Debug, Clone)]
struct ServerTls {
    /// With `--tls-resume`, a store of tickets of this server's own: the servers of a cluster
    /// do not share their ticket keys, and share one name (the loopback address) on one host.
    config: Arc<ClientConfig>,
    /// The name to verify the server by.
    name: ServerName<'static>,
    /// The tickets to resume with (`--tls-resume`).
    tickets: Option<Arc<TicketPool>>,
}

impl TlsSetup {
    /// The settings `--tls`, `--ca` and `--server-name` ask for; `None` without `--tls`.
    pub fn from_options(opts: &Options) -> io::Result<Option<TlsSetup>> {
        if !opts.tls {
            return Ok(None);
        }
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let ca = opts.ca.as_ref().ok_or_else(|| invalid("--tls needs --ca FILE".into()))?;
        let mut roots = RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(ca).map_err(|e| invalid(format!("{}: {e}", ca.display())))?
        {
            let cert = cert.map_err(|e| invalid(format!("{}: {e}", ca.display())))?;
            roots.add(cert).map_err(|e| invalid(format!("{}: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(invalid(format!("{}: no PEM certificate in it", ca.display())));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map_err(|e| invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Only the protocol asked for: a server that does not speak it fails the handshake, or
        // chooses none, which the receiver refuses.
        config.alpn_protocols = vec![if opts.http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        let mut servers = Vec::new();
        for target in opts.sse.all() {
            // Each address's own IP, unless --server-name names them all.
            let name = opts.server_name.clone().unwrap_or_else(|| target.addr.ip().to_string());
            let name = ServerName::try_from(name.as_str())
                .map_err(|e| invalid(format!("--server-name {name}: {e}")))?
                .to_owned();
            // A ticket for each connection: the server sends two per handshake.
            let tickets = opts.tls_resume.then(|| Arc::new(TicketPool::new(2 * opts.connections as usize)));
            let mut config = config.clone();
            config.resumption = match &tickets {
                Some(pool) => {
                    rustls::client::Resumption::store(Arc::clone(pool) as Arc<dyn ClientSessionStore>)
                }
                // Every connection is a full handshake, as every new client's would be.
                None => rustls::client::Resumption::disabled(),
            };
            servers.push(ServerTls { config: Arc::new(config), name, tickets });
        }
        Ok(Some(TlsSetup { servers }))
    }

    /// From now on new sessions resume with the tickets collected so far (`--tls-resume`);
    /// until then every connection is new, and its handshake full.
    pub fn resume_from_now(&self) {
        for pool in self.servers.iter().filter_map(|s| s.tickets.as_ref()) {
            pool.resuming.store(true, Ordering::Relaxed);
        }
    }

    /// A new client session with the server at the `target`th `--sse` address (it sends its
    /// ClientHello at the first write); once resuming, it resumes a session from that server's
    /// pool when there is one.
    pub fn session(&self, target: usize) -> Result<ClientConnection, rustls::Error> {
        let server = &self.servers[target];
        ClientConnection::new(Arc::clone(&server.config), server.name.clone())
    }
}

/// TLS 1.3 tickets for many connections to one server. rustls' own store keeps 8 tickets a
/// server name, and a TLS 1.3 ticket is used once: of thousands of connections reconnecting to
/// one server, all but 8 would pay a full handshake. Each connection here stands for a client
/// of its own, so every ticket goes to a shared pool, and any connection takes one.
#[derive(Debug)]
struct TicketPool {
    tickets: Mutex<VecDeque<Tls13ClientSessionValue>>,
    limit: usize,
    /// Tickets are handed out: set for the reconnect phase. Before, each connection is a
    /// client's first, whose handshake is full.
    resuming: AtomicBool,
    /// TLS 1.2 sessions and key exchange hints: one per server serves every connection.
    others: ClientSessionMemoryCache,
}

impl TicketPool {
    /// Keeps at most `limit` tickets, the newest.
    fn new(limit: usize) -> TicketPool {
        TicketPool {
            tickets: Mutex::new(VecDeque::new()),
            limit,
            resuming: AtomicBool::new(false),
            others: ClientSessionMemoryCache::new(16),
        }
    }

    fn tickets(&self) -> std::sync::MutexGuard<'_, VecDeque<Tls13ClientSessionValue>> {
        // A panic elsewhere leaves the pool as good as it was: tickets are whole values.
        self.tickets.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ClientSessionStore for TicketPool {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.others.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.others.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.others.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.resuming.load(Ordering::Relaxed).then(|| self.others.tls12_session(server_name)).flatten()
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.others.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(&self, _server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut tickets = self.tickets();
        if tickets.len() == self.limit {
            tickets.pop_front();
        }
        tickets.push_back(value);
    }

    fn take_tls13_ticket(&self, _server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.resuming.load(Ordering::Relaxed).then(|| self.tickets().pop_front()).flatten()
    }
}
